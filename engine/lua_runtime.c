/* lua_runtime.c - Lua states, budgets, dispatch and the error hook (see lua_runtime.h).
 *
 * Budgets: every handler runs in a coroutine with a count hook. The hook
 * checks a monotonic deadline every ENG_HOOK_COUNT instructions; once the
 * deadline passes it raises on every instruction, so a script that catches the
 * error with pcall cannot keep running. The allocator enforces the memory cap
 * for the whole state and refuses growth past it (Lua raises "not enough
 * memory"). Either way the flag set here turns the answer into a 503.
 *
 * The hook only runs between VM instructions, so C work that is long in one call
 * checks the deadline itself: the allocator refuses large growth past it, the SQL
 * progress handler interrupts statements past it, and the library functions that
 * can loop for long in C (patterns, string.rep, table.sort, table.move: see
 * lua_budget.c, lua_pattern.c) call eng_lua_budget_check now and then. Script code
 * that Lua would run with the hook off is kept out or bounded: finalizers are
 * refused, xpcall's message handler is skipped once the budget is blown (it would
 * run inside the hook's error), an error object's __tostring and a failed
 * handler's to-be-closed variables run under the same deadline (or not at all
 * once it is blown). The hook is set on the main state too, so every thread a
 * script creates, even at load time, inherits it; between runs it does nothing.
 *
 * Protected glue: the C between calls into Lua (building the state, pushing a
 * request, reading a handler's results, formatting a traceback) allocates on
 * the state too, so it runs inside lua_pcall of a C function (eng_lua_protect,
 * like lua.c's pmain). A memory error there becomes a 500/503 answer or a
 * start-up error. Values are read off a finished coroutine only after they are
 * moved to the calling thread: an error raised on a coroutine that is not
 * running would go to the main thread's handler, not to ours. A panic handler
 * logs anything that still escapes.
 *
 * Suspension: a route handler may yield to the engine (eng_lua_async_yield: a marker no script
 * can make first). Only the handler: the before hooks have run to completion by then and the
 * after hooks run once it answers, so the C glue between them is split where the handler
 * returns (handle_p up to the handler, resume_p after it). The suspended call moves off the C
 * stack into an eng_pending (its thread and request table anchored in the registry, its own
 * answer buffer); a timer at the request's deadline answers 503 and closes the thread, so the
 * wait counts against the budget like running code. The runtime counts its pending requests
 * and eng_runtime_free defers to the last of them (a reload swaps runtimes under them). */
#include "lua_runtime_int.h"
#include "db.h"
#include "lua_common.h"
#include "error.h"
#include "log.h"
#include "lua_config.h"
#include "lua_db.h"
#include "lua_json.h"
#include "metrics.h"
#include "text.h"

#include <lauxlib.h>
#include <lualib.h>

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#define ENG_HOOK_COUNT 1000                      /* instructions between deadline checks */
#define ENG_ALLOC_CHECK_BYTES ((size_t)64 << 10) /* growth to this size or more checks the deadline */
#define ENG_DB_PROGRESS_OPS 1000                 /* SQLite VM instructions between deadline checks */

static int64_t mono_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ---- allocator and budget ---------------------------------------------------------------- */

/* 1 when a budgeted run is in progress and past its deadline; marks the budget blown. */
static int deadline_passed(eng_runtime *rt) {
  if (rt->deadline_ms == ENG_NO_DEADLINE)
    return 0;
  if (!rt->budget_blown && mono_ms() > rt->deadline_ms)
    rt->budget_blown = 1;
  return rt->budget_blown;
}

/* Large growth past the deadline is refused like growth past the cap (Lua raises a memory
 * error), so C work that builds big results (string.rep, table.concat, gsub, ..) stops there:
 * such work allocates in proportion to what it does. Small allocations are not checked: the
 * count hook covers the Lua code that makes them. */
/* Small blocks. A request makes and drops a few hundred small objects (strings, tables, their
 * parts); glibc's per-thread cache holds only seven blocks of a size, so most of those went
 * through its arena code (about a tenth of a default-API request's instructions were malloc and
 * free). Lua tells the allocator every block's size when it frees or resizes it, so the state
 * keeps its freed blocks of up to ENG_POOL_MAX bytes in lists by size class and hands them out
 * again: a block of n <= ENG_POOL_MAX bytes is always a pool block of its class's size, a larger
 * one a malloc'd block of exactly its size. The lists hold at most ENG_POOL_KEEP bytes (more is
 * freed) and are emptied when the worker goes idle (eng_runtime_collect) and with the state.
 * Under AddressSanitizer there is no pool, so that a use after free inside Lua still shows. */
/* Classes match the sizes glibc hands out (chunks of 16-byte steps, 8 bytes of each its header:
 * 24, 40, 56, ... usable bytes), so that a pooled block takes no more memory than malloc(n)
 * would. */
#define POOL_BASE (ENG_POOL_GRAIN + 8)
static size_t pool_class(size_t n) {
  return n <= POOL_BASE ? 0 : (n - POOL_BASE + ENG_POOL_GRAIN - 1) / ENG_POOL_GRAIN;
}
static size_t pool_size(size_t c) { return POOL_BASE + c * ENG_POOL_GRAIN; }

static void *block_alloc(eng_runtime *rt, size_t n) {
  if (!ENG_POOL || n > ENG_POOL_MAX)
    return malloc(n);
  size_t c = pool_class(n);
  eng_pool_block *b = rt->pool[c];
  if (b == NULL)
    return malloc(pool_size(c));
  rt->pool[c] = b->next;
  rt->pool_bytes -= pool_size(c);
  return b;
}

static void block_free(eng_runtime *rt, void *p, size_t n) {
  if (!ENG_POOL || n > ENG_POOL_MAX || rt->pool_bytes >= ENG_POOL_KEEP) {
    free(p);
    return;
  }
  size_t c = pool_class(n);
  eng_pool_block *b = p;
  b->next = rt->pool[c];
  rt->pool[c] = b;
  rt->pool_bytes += pool_size(c);
}

static void pool_release(eng_runtime *rt) {
  for (size_t c = 0; c < ENG_POOL_CLASSES; c++)
    while (rt->pool[c] != NULL) {
      eng_pool_block *b = rt->pool[c];
      rt->pool[c] = b->next;
      free(b);
    }
  rt->pool_bytes = 0;
}

/* A resize within one class keeps the block; across classes (or to or from a large block) it
 * moves. Large to large is realloc's, which may grow in place. */
static void *block_realloc(eng_runtime *rt, void *p, size_t o, size_t n) {
  if (p == NULL)
    return block_alloc(rt, n);
  if (!ENG_POOL || (o > ENG_POOL_MAX && n > ENG_POOL_MAX))
    return realloc(p, n);
  if (o <= ENG_POOL_MAX && n <= ENG_POOL_MAX && pool_class(o) == pool_class(n))
    return p;
  void *q = block_alloc(rt, n);
  if (q == NULL)
    return NULL;
  memcpy(q, p, o < n ? o : n);
  block_free(rt, p, o);
  return q;
}

static void *l_alloc(void *ud, void *ptr, size_t osize, size_t nsize) {
  eng_runtime *rt = ud;
  size_t old = ptr ? osize : 0;
  if (nsize == 0) {
    if (ptr)
      block_free(rt, ptr, osize);
    rt->mem_used -= old;
    return NULL;
  }
  if (nsize > old) {
    if (rt->mem_used + (nsize - old) > rt->mem_limit) {
      rt->mem_blown = 1;
      return NULL;
    }
    if (nsize >= ENG_ALLOC_CHECK_BYTES && deadline_passed(rt))
      return NULL;
  }
  void *p = block_realloc(rt, ptr, old, nsize);
  if (p == NULL)
    return NULL;
  rt->mem_used = rt->mem_used - old + nsize;
  return p;
}

static void budget_hook(lua_State *L, lua_Debug *ar);

/* Raises the budget error of what is running: a handler's or a load's (never returns). The
 * count hook of L then raises on every instruction, so pcall cannot swallow it. */
static int raise_budget(lua_State *L, eng_runtime *rt) {
  lua_sethook(L, budget_hook, LUA_MASKCOUNT, 1);
  if (rt->loading) {
    /* A load error reads file:line first, like a syntax error: the innermost line of script
     * code running (the hook has no caller level of its own to point at). */
    lua_Debug ar;
    int found = 0;
    for (int level = 0; !found && lua_getstack(L, level, &ar); level++)
      if (lua_getinfo(L, "Sl", &ar) && ar.currentline > 0) {
        /* the whole path of a file chunk ("@path"), not short_src's 60 characters */
        lua_pushfstring(L, "%s:%d: ", ar.source[0] == '@' ? ar.source + 1 : ar.short_src, ar.currentline);
        found = 1;
      }
    if (!found)
      lua_pushliteral(L, "");
    return luaL_error(L,
                      "%sload budget exceeded (%d ms): loading the scripts took too long (--load-budget-ms or "
                      "APIENGINE_LOAD_BUDGET_MS sets the budget)",
                      lua_tostring(L, -1), rt->load_budget_ms);
  }
  return luaL_error(L, "script budget exceeded (%d ms)", rt->budget_ms);
}

static void budget_hook(lua_State *L, lua_Debug *ar) {
  (void)ar;
  eng_runtime *rt = eng_rt(L);
  if (deadline_passed(rt))
    raise_budget(L, rt);
  /* A thread the hook fired on every instruction in a blown run (a script's coroutine kept
   * for later) goes back to the normal rate. */
  if (lua_gethookcount(L) != ENG_HOOK_COUNT)
    lua_sethook(L, budget_hook, LUA_MASKCOUNT, ENG_HOOK_COUNT);
}

/* The runtime of L found through the registry (NULL for a state eng_runtime_new did not
 * make): the C checks below are reached from functions a plain test state opens too, where
 * the extra space holds nothing. */
static const char rt_key = 'r';

static eng_runtime *rt_of(lua_State *L) {
  lua_rawgetp(L, LUA_REGISTRYINDEX, &rt_key);
  eng_runtime *rt = lua_touserdata(L, -1);
  lua_pop(L, 1);
  return rt;
}

void eng_lua_budget_check(lua_State *L) {
  eng_runtime *rt = rt_of(L);
  if (rt == NULL || !deadline_passed(rt))
    return;
  raise_budget(L, rt);
}

int64_t eng_lua_budget_left(lua_State *L) {
  eng_runtime *rt = rt_of(L);
  if (rt == NULL || rt->deadline_ms == ENG_NO_DEADLINE)
    return 0;
  if (deadline_passed(rt))
    raise_budget(L, rt);
  int64_t left = rt->deadline_ms - mono_ms();
  return left > 0 ? left : 1;
}

int eng_lua_budget_raise(lua_State *L) {
  eng_runtime *rt = rt_of(L);
  if (rt == NULL)
    return luaL_error(L, "script budget exceeded");
  rt->budget_blown = 1;
  return raise_budget(L, rt);
}

void eng_lua_budget_load(eng_runtime *rt, int on, int64_t *saved_deadline) {
  if (on) {
    *saved_deadline = rt->deadline_ms;
    rt->budget_blown = rt->mem_blown = 0;
    rt->deadline_ms = mono_ms() + rt->load_budget_ms;
    rt->loading = 1;
  } else {
    rt->deadline_ms = *saved_deadline;
    rt->loading = 0;
  }
}

void eng_runtime_set_load_budget(eng_runtime *rt, int ms) {
  rt->load_budget_ms = ms > 0 ? ms : ENG_RUNTIME_LOAD_BUDGET_MS;
}

int eng_lua_budget_over(lua_State *L) {
  eng_runtime *rt = rt_of(L);
  return rt != NULL && deadline_passed(rt);
}

void eng_lua_storage_failed(lua_State *L, int sqlite_code) {
  eng_runtime *rt = rt_of(L);
  if (rt)
    rt->storage_code = sqlite_code;
}

/* The cause of a storage failure, for its log line. */
static const char *storage_cause(int code) {
  if (code == ENG_STORAGE_PG_DOWN)
    return "PostgreSQL unavailable: no connection to the server (an outage, a restart, the pool closing)";
  switch (code & 0xff) {
  case SQLITE_READONLY:
    return "SQLITE_READONLY: the database cannot be written (a read-only file, directory or connection)";
  case SQLITE_FULL:
    return "SQLITE_FULL: the disk is full, or the database reached its size limit";
  default:
    return "SQLITE_IOERR: the disk reported an I/O error";
  }
}

void eng_lua_budget_sql_hold(lua_State *L, int delta) {
  eng_runtime *rt = rt_of(L);
  if (rt)
    rt->sql_hold += delta;
}

/* SQLite's progress handler on the worker's connection: a statement still running past the
 * deadline is interrupted (SQLITE_INTERRUPT; lua_db.c turns that into the budget error). */
static int db_progress(void *ud) {
  eng_runtime *rt = ud;
  return rt->sql_hold == 0 && deadline_passed(rt);
}

/* The last resort for an error raised outside every protected call. There should be none
 * (see the top of this file); if one is left, the log says what it was before Lua aborts
 * the process, which it does when this returns. */
static int panic(lua_State *L) {
  const char *msg = lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : "(error object is not a string)";
  eng_log(ENG_LOG_ERROR, "Lua panic (an error outside any protected call): %s", msg);
  return 0;
}

/* ---- budgeted runs ------------------------------------------------------------------------- */

/* One call of run_budgeted, until run_release. */
typedef struct run {
  lua_State *co;          /* the thread it ran on; NULL before run_budgeted and after run_release */
  int shared;             /* co is rt->co, taken (rt->co_busy), rather than a fresh thread anchored on L */
  int yielded;            /* the function yielded: an error with no error object on co */
  int st;                 /* lua_resume's status, LUA_YIELD turned into LUA_ERRRUN */
  int nres;               /* results on co's stack when st is LUA_OK */
  int64_t outer_deadline; /* rt->deadline_ms before this run (a nested run restores it) */
  int may_suspend;        /* the function may yield to the engine (a route handler, with a loop) */
  int suspended;          /* it did: st is LUA_YIELD, op and arg say what it waits for */
  const eng_async_op *op;
  lua_Integer arg;
  void *ctx;
} run;

/* The first value of an engine yield (eng_lua_async_yield): a light userdata no script can
 * make, so a script's own coroutine.yield out of a handler cannot pass for one. */
static const char async_marker = 'y';

/* Resumes co (nargs values on its top, or its function and arguments on a fresh start) under
 * the deadline already set, and sorts out a yield: the engine's (when the run may suspend)
 * leaves r->suspended set and co's stack empty; any other is an error with no error object. */
static void run_resume(eng_runtime *rt, lua_State *L, lua_State *co, int nargs, run *r) {
  lua_State *outer = rt->suspendable;
  rt->suspendable = r->may_suspend ? co : NULL;
  r->st = lua_resume(co, L, nargs, &r->nres);
  rt->suspendable = outer;
  r->yielded = r->suspended = 0;
  if (r->st != LUA_YIELD)
    return;
  if (r->may_suspend && r->nres == 4 && lua_touserdata(co, -4) == &async_marker) {
    r->op = lua_touserdata(co, -3);
    r->arg = lua_tointeger(co, -2);
    r->ctx = lua_touserdata(co, -1);
    lua_settop(co, 0);
    r->suspended = 1;
    return;
  }
  r->yielded = 1;
  lua_settop(co, 0);
  r->st = LUA_ERRRUN;
}

/* Runs the function below nargs arguments on L's top in a coroutine under the
 * budget, until deadline (monotonic ms: the calls of one request share one). On return r says how it went; the results (or the error object) are on
 * r->co's stack. The caller takes them (take_results, push_error_text), calls
 * run_release and restores L's top (a fresh thread is anchored there).
 *
 * A new thread per call (a lua_State and its stack) was a large share of a small
 * request's cost, so one coroutine per runtime is reused: once a call returns
 * normally the thread is back at its base level with status LUA_OK, and with its
 * stack emptied lua_resume starts the next function on it. A call that fails,
 * yields or blows a budget leaves it unusable, so run_release drops it. While it
 * runs (a handler calls back into the runtime: the in-process test client) the
 * nested call gets a fresh thread. */
static void run_budgeted(eng_runtime *rt, lua_State *L, int nargs, int64_t deadline, run *r) {
  lua_State *co;
  if (rt->co_busy) {
    co = lua_newthread(L);
    lua_insert(L, -(nargs + 2));
    r->shared = 0;
  } else {
    if (rt->co == NULL) {
      lua_State *fresh = lua_newthread(L);
      int ref = luaL_ref(L, LUA_REGISTRYINDEX); /* if this raises, rt->co stays NULL */
      rt->co = fresh;
      rt->co_ref = ref;
    }
    co = rt->co;
    rt->co_busy = 1;
    r->shared = 1;
  }
  r->co = co;
  lua_xmove(L, co, nargs + 1);
  rt->budget_blown = 0;
  rt->mem_blown = 0;
  rt->storage_code = 0;
  r->outer_deadline = rt->deadline_ms;
  rt->deadline_ms = deadline;
  /* The hook stays on co after the call: closing a failed call's to-be-closed variables
   * (run_close) runs under it too. */
  lua_sethook(co, budget_hook, LUA_MASKCOUNT, ENG_HOOK_COUNT);
  run_resume(rt, L, co, nargs, r);
}

/* Ends a run_budgeted call whose results have been taken: the reusable coroutine is
 * emptied for the next call after a clean return, dropped otherwise. */
static void run_release(eng_runtime *rt, run *r) {
  lua_State *co = r->co;
  if (co == NULL)
    return;
  r->co = NULL;
  rt->deadline_ms = r->outer_deadline;
  if (!r->shared)
    return; /* a fresh thread: garbage once the caller restores L's top */
  rt->co_busy = 0;
  if (r->st == LUA_OK && !rt->budget_blown && !rt->mem_blown) {
    lua_settop(co, 0);
    return;
  }
  luaL_unref(rt->L, LUA_REGISTRYINDEX, rt->co_ref);
  rt->co_ref = LUA_NOREF;
  rt->co = NULL;
}

/* Closes the to-be-closed variables a failed call left on its thread, under the call's
 * deadline (the hook is still on the thread). Not once the budget is blown: the hook may have
 * stopped the thread from inside itself, where Lua leaves hooks off, and the closing methods
 * would run unbounded; they are dropped with the thread (as for any coroutine nobody closes). */
static void run_close(eng_runtime *rt, run *r) {
  if (!rt->budget_blown)
    lua_resetthread(r->co);
}

/* Releases a run its caller could not finish (the glue raised): whatever is left on the
 * thread is dropped with it. */
static void run_abandon(eng_runtime *rt, run *r) {
  if (r->co == NULL)
    return;
  run_close(rt, r);
  r->st = LUA_ERRRUN;
  run_release(rt, r);
}

/* Moves the first `want` results of a clean run onto L (nil for missing ones) and
 * releases the run. */
static void take_results(eng_runtime *rt, lua_State *L, run *r, int want) {
  luaL_checkstack(L, want, "results");
  int n = r->nres < want ? r->nres : want;
  lua_settop(r->co, lua_gettop(r->co) - r->nres + n);
  lua_xmove(r->co, L, n);
  for (int i = n; i < want; i++)
    lua_pushnil(L);
  run_release(rt, r);
}

/* Pushes the text of the error object at L's top: a string as it is, else what its __tostring
 * gives. The metamethod is script code: it runs protected and under the failed run's deadline
 * (the count hook set on L for the call, L's own hook put back after), so neither an error nor
 * a loop in it escapes. */
static const char *push_error_string(lua_State *L) {
  if (lua_type(L, -1) == LUA_TSTRING)
    return lua_pushvalue(L, -1), lua_tostring(L, -1);
  const char *what = luaL_typename(L, -1);
  if (luaL_getmetafield(L, -1, "__tostring") == LUA_TNIL)
    return lua_pushfstring(L, "(error object is a %s value)", what);
  lua_pushvalue(L, -2);
  lua_Hook hook = lua_gethook(L);
  int mask = lua_gethookmask(L), count = lua_gethookcount(L);
  lua_sethook(L, budget_hook, LUA_MASKCOUNT, ENG_HOOK_COUNT);
  int st = lua_pcall(L, 1, 1, 0);
  lua_sethook(L, hook, mask, count);
  if (st == LUA_OK && lua_type(L, -1) == LUA_TSTRING)
    return lua_tostring(L, -1);
  const char *why = st != LUA_OK && lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : "it returned no string";
  const char *msg = lua_pushfstring(L, "(error object is a %s value; its __tostring failed: %s)", what, why);
  lua_remove(L, -2);
  return msg;
}

/* Pushes on L the message of a failed run with the traceback of its thread (one value). */
static void push_error_text(lua_State *L, const run *r) {
  luaL_checkstack(L, 6, "error text");
  int base = lua_gettop(L);
  if (r->yielded)
    lua_pushliteral(L, "handler yielded: coroutine.yield is not allowed across the handler boundary");
  else
    lua_xmove(r->co, L, 1);
  const char *msg = push_error_string(L);
  luaL_traceback(L, r->co, msg, 0);
  lua_replace(L, base + 1);
  lua_settop(L, base + 1);
}

/* ---- answers ------------------------------------------------------------------------------- */

/* Copies a handler's headers table (at the absolute index idx of L) into resp; NULL or a message. */
static const char *take_headers(lua_State *L, int idx, eng_response *resp) {
  if (lua_isnoneornil(L, idx))
    return NULL;
  if (!lua_istable(L, idx))
    return "headers must be a table";
  lua_pushnil(L);
  while (lua_next(L, idx)) {
    size_t kn, vn;
    if (lua_type(L, -2) != LUA_TSTRING || (lua_type(L, -1) != LUA_TSTRING && lua_type(L, -1) != LUA_TNUMBER)) {
      lua_pop(L, 2);
      return "header names and values must be strings";
    }
    const char *k = lua_tolstring(L, -2, &kn);
    lua_pushvalue(L, -1); /* a number becomes a string in the copy, not under lua_next's feet */
    const char *v = lua_tolstring(L, -1, &vn);
    const char *why = NULL;
    if (eng_response_add_header(resp, k, kn, v, vn, &why) != 0) {
      lua_pop(L, 3);
      return why;
    }
    lua_pop(L, 2);
  }
  return NULL;
}

static void json_str(eng_buf *b, const char *s) { eng_json_escape(b, s, strlen(s), ENG_JSON_REPLACE); }

static void default_error_body(int status, const char *code, const char *message, const char *request_id,
                               eng_response *resp) {
  resp->status = status;
  eng_buf_reset(&resp->body);
  strcpy(resp->content_type, "application/json");
  eng_buf_append_str(&resp->body, "{\"error\":{\"code\":");
  json_str(&resp->body, code);
  eng_buf_append_str(&resp->body, ",\"message\":");
  json_str(&resp->body, message);
  eng_buf_append_str(&resp->body, "},\"request_id\":");
  json_str(&resp->body, request_id);
  eng_buf_append_char(&resp->body, '}');
}

/* Fills resp->body from the value at the absolute index idx of L (table -> JSON, string ->
 * bytes). NULL or a message. */
static const char *take_body(lua_State *L, int idx, eng_response *resp) {
  int t = lua_type(L, idx);
  if (t == LUA_TNONE || t == LUA_TNIL)
    return NULL;
  if (t == LUA_TSTRING) {
    size_t n;
    const char *s = lua_tolstring(L, idx, &n);
    if (eng_buf_append(&resp->body, s, n) != 0)
      return "out of memory";
    if (!resp->content_type[0])
      strcpy(resp->content_type, "text/plain; charset=utf-8");
    return NULL;
  }
  const char *why = NULL;
  if (eng_json_encode(L, idx, &resp->body, &why) != 0)
    return why ? why : "cannot encode the body as JSON";
  if (!resp->content_type[0])
    strcpy(resp->content_type, "application/json");
  return NULL;
}

/* After any script call: statements reset, no transaction left open (on PostgreSQL: no
 * connection held by a db.tx whose thread died). */
static void after_call(eng_runtime *rt) {
  if (rt->pg)
    eng_lua_db_pg_after_call(rt->L);
  if (rt->db && eng_db_after_request(rt->db) == 1)
    eng_log(ENG_LOG_WARN, "request %s: handler left a transaction open: rolled back",
            rt->request_id ? rt->request_id : "-");
}

/* Logs that the glue of a request failed (the error object is on L's top). */
static void log_glue_error(lua_State *L, const char *what, const char *request_id) {
  const char *msg = lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : "(error object is not a string)";
  char line[512];
  int n = snprintf(line, sizeof line, "%s: %s", what, msg);
  eng_log_msg(ENG_LOG_ERROR, request_id, line, n < 0 ? 0 : (size_t)n < sizeof line ? (size_t)n : sizeof line - 1);
}

/* ---- the error hook (route.on_error) -------------------------------------------------------- */

typedef struct hook_call {
  eng_runtime *rt;
  int status;
  const char *code, *message, *request_id;
  const eng_error_place *at; /* may be NULL */
  eng_response *resp;
  run run;
} hook_call;

/* The error hook's call and the reading of its answer; under eng_lua_protect. */
static int error_hook_p(lua_State *L) {
  hook_call *h = lua_touserdata(L, 1);
  eng_runtime *rt = h->rt;
  lua_rawgeti(L, LUA_REGISTRYINDEX, rt->error_hook);
  lua_pushinteger(L, h->status);
  lua_pushstring(L, h->code);
  lua_pushstring(L, h->message);
  lua_pushstring(L, h->request_id);
  if (h->at && h->at->path)
    lua_pushlstring(L, h->at->path, h->at->path_len);
  else
    lua_pushnil(L);
  lua_pushstring(L, h->at ? h->at->route : NULL);
  run_budgeted(rt, L, 6, mono_ms() + rt->budget_ms, &h->run);
  if (h->run.st != LUA_OK) {
    push_error_text(L, &h->run);
    eng_log(ENG_LOG_ERROR, "error hook failed: %s", lua_tostring(L, -1));
    run_close(rt, &h->run);
    run_release(rt, &h->run);
    default_error_body(h->status, h->code, h->message, h->request_id, h->resp);
    return 0;
  }
  take_results(rt, L, &h->run, 2);
  int base = lua_gettop(L) - 2;
  const char *why = take_headers(L, base + 2, h->resp);
  if (why == NULL)
    why = take_body(L, base + 1, h->resp);
  if (why == NULL) {
    if (!h->resp->content_type[0])
      strcpy(h->resp->content_type, "application/json");
  } else {
    eng_log(ENG_LOG_ERROR, "error hook returned a bad answer: %s", why);
    default_error_body(h->status, h->code, h->message, h->request_id, h->resp);
  }
  return 0;
}

void eng_runtime_error_at(eng_runtime *rt, lua_State *L, int status, const char *code, const char *message,
                          const char *request_id, const eng_error_place *at, eng_response *resp) {
  resp->status = status;
  eng_buf_reset(&resp->body);
  resp->content_type[0] = '\0';
  if (rt->error_hook == LUA_NOREF) {
    default_error_body(status, code, message, request_id, resp);
    return;
  }
  int top = lua_gettop(L);
  const char *saved = rt->request_id;
  rt->request_id = request_id;
  rt->dispatching++;
  hook_call h = {
      .rt = rt, .status = status, .code = code, .message = message, .request_id = request_id, .at = at, .resp = resp};
  if (eng_lua_protect(L, error_hook_p, &h, 0) != LUA_OK) {
    log_glue_error(L, "error hook", request_id);
    run_abandon(rt, &h.run);
    default_error_body(status, code, message, request_id, resp);
  }
  rt->dispatching--;
  after_call(rt);
  rt->request_id = saved;
  lua_settop(L, top);
}

void eng_runtime_error_in(eng_runtime *rt, lua_State *L, int status, const char *code, const char *message,
                          const char *request_id, eng_response *resp) {
  eng_runtime_error_at(rt, L, status, code, message, request_id, NULL, resp);
}

void eng_runtime_error(eng_runtime *rt, int status, const char *code, const char *message, const char *request_id,
                       eng_response *resp) {
  eng_runtime_error_in(rt, rt->L, status, code, message, request_id, resp);
}

/* ---- dispatch ------------------------------------------------------------------------------ */

/* One request on its way through the hooks and the handler. The before hooks, the handler and
 * the after hooks share one deadline: the request's budget. */
typedef struct call {
  eng_runtime *rt;
  eng_live_request lr; /* req, route match, peer, request id */
  eng_error_place at;  /* path and route, for the error hook */
  eng_response *resp;
  run run;
  int64_t deadline;
  int bad; /* the parameters' UTF-8 check: 0, ENG_EPARSE (bad_why says which) or another error */
  const char *bad_why;
  int hooks;       /* run the request hooks (there are some) */
  int blown;       /* a call of this request blew the time or memory budget: no after hooks */
  int async;       /* the caller takes a pending answer (eng_runtime_handle_async) */
  int may_suspend; /* the handler running now may suspend */
  int suspended;   /* it did: co_ref and req_ref anchor its thread and request table */
  int co_ref, req_ref;
} call;

static void call_error(call *c, lua_State *L, int status, const char *code, const char *message) {
  eng_runtime_error_at(c->rt, L, status, code, message, c->lr.request_id, &c->at, c->resp);
}

/* Logs a failed script call and answers 500 or 503. */
static void script_failed(call *c, lua_State *L) {
  eng_runtime *rt = c->rt;
  int blown = rt->budget_blown || rt->mem_blown;
  c->blown |= blown;
  int storage = blown ? 0 : rt->storage_code;
  if (storage) { /* one line with the cause; the traceback would say nothing more useful */
    char line[256];
    int n = snprintf(line, sizeof line, "storage unavailable: a write could not be stored (%s); answered 503",
                     storage_cause(storage));
    eng_log_msg(ENG_LOG_ERROR, c->lr.request_id, line,
                n < 0                     ? 0
                : (size_t)n < sizeof line ? (size_t)n
                                          : sizeof line - 1);
  } else {
    push_error_text(L, &c->run);
    size_t len;
    const char *text = lua_tolstring(L, -1, &len);
    eng_log_msg(ENG_LOG_ERROR, c->lr.request_id, text, len);
    lua_pop(L, 1);
  }
  run_close(rt, &c->run);
  run_release(rt, &c->run);
  eng_buf_reset(&c->resp->headers);
  c->resp->content_type[0] = '\0';
  if (!storage)
    eng_metrics_script_error(rt->route);
  if (storage) {
    eng_buf_appendf(&c->resp->headers, "Retry-After: %d\r\n", ENG_STORAGE_RETRY_AFTER_S);
    call_error(c, L, 503, "storage_unavailable", "the database cannot store writes right now; try again later");
  } else if (blown) {
    eng_metrics_budget_exceeded(rt->mem_blown);
    if (rt->mem_blown)
      lua_gc(L, LUA_GCCOLLECT);
    call_error(c, L, 503, "budget_exceeded",
               rt->mem_blown ? "script memory budget exceeded" : "script time budget exceeded");
  } else {
    call_error(c, L, 500, "internal_error", "internal server error");
  }
}

/* Calls the function below nargs arguments on L's top under the request's deadline. 1 with
 * its first nres results on L's top; 0 when it failed, answered (script_failed) and logged. */
static int call_script(call *c, lua_State *L, int nargs, int nres) {
  c->run.may_suspend = c->may_suspend;
  run_budgeted(c->rt, L, nargs, c->deadline, &c->run);
  c->run.may_suspend = 0;
  if (c->run.suspended) {
    c->suspended = 1;
    return 0;
  }
  if (c->run.st != LUA_OK) {
    script_failed(c, L);
    return 0;
  }
  take_results(c->rt, L, &c->run, nres);
  return 1;
}

/* Logs that a script returned a bad answer and answers 500. who: "GET /x" or "before hook
 * scripts/cors.lua:12". */
static void bad_answer(call *c, lua_State *L, const char *who, const char *why) {
  char msg[320];
  int n = snprintf(msg, sizeof msg, "%s: %s", who, why);
  eng_log_msg(ENG_LOG_ERROR, c->lr.request_id, msg, n < 0 ? 0 : (size_t)n < sizeof msg ? (size_t)n : sizeof msg - 1);
  eng_buf_reset(&c->resp->headers);
  c->resp->content_type[0] = '\0';
  eng_buf_reset(&c->resp->body);
  eng_metrics_script_error(c->rt->route);
  call_error(c, L, 500, "internal_error", "internal server error");
}

/* Writes "before hook file:line" for the function at idx into out. */
static void hook_name(lua_State *L, int idx, const char *kind, char *out, size_t size) {
  lua_Debug ar;
  lua_pushvalue(L, idx);
  lua_getinfo(L, ">S", &ar);
  snprintf(out, size, "%s hook %s:%d", kind, ar.short_src, ar.linedefined);
}

/* Reads `status, body, headers` (at base+1..base+3 of L) into the answer. */
/* who names the answerer for the log line of a bad answer; NULL for the route's handler, whose
 * "METHOD /pattern" is formatted only then (every request paid for an snprintf otherwise). */
static void take_answer(call *c, lua_State *L, int base, const char *who) {
  const char *why = NULL;
  int isnum = 0;
  lua_Integer status = lua_type(L, base + 1) == LUA_TNUMBER ? lua_tointegerx(L, base + 1, &isnum) : 0;
  if (!isnum || status < 100 || status > 599)
    why = "must return an HTTP status (integer 100..599) first";
  else if ((why = take_headers(L, base + 3, c->resp)) == NULL)
    why = take_body(L, base + 2, c->resp);
  if (why) {
    char handler[300];
    if (!who) {
      snprintf(handler, sizeof handler, "%s %s", c->lr.req->method, c->lr.m->pattern);
      who = handler;
    }
    bad_answer(c, L, who, why);
    return;
  }
  c->resp->status = (int)status;
  if (!c->resp->content_type[0])
    strcpy(c->resp->content_type, "application/json");
}

/* Runs the before hooks in order until one answers. 1 when the request is answered (by a
 * hook, or with the error of a failed one), 0 to go on. */
static int run_before_hooks(call *c, lua_State *L, int req_idx) {
  eng_runtime *rt = c->rt;
  if (!c->hooks || rt->before_hooks == LUA_NOREF)
    return 0;
  lua_rawgeti(L, LUA_REGISTRYINDEX, rt->before_hooks);
  int list = lua_gettop(L);
  lua_Integer n = (lua_Integer)lua_rawlen(L, list); /* hooks added meanwhile count from the next request */
  for (lua_Integer i = 1; i <= n; i++) {
    lua_rawgeti(L, list, i);
    lua_pushvalue(L, req_idx);
    if (!call_script(c, L, 1, 3))
      return 1;
    int base = lua_gettop(L) - 3;
    if (lua_isnil(L, base + 1)) {
      lua_settop(L, list);
      continue;
    }
    char who[300];
    lua_rawgeti(L, list, i);
    hook_name(L, -1, "before", who, sizeof who);
    lua_pop(L, 1);
    take_answer(c, L, base, who);
    return 1;
  }
  lua_settop(L, list - 1);
  return 0;
}

/* Removes the lines of header name (any case) from a "Name: value\r\n" list. */
static void drop_header(eng_buf *h, const char *name, size_t len) {
  size_t i = 0;
  while (i < h->len) {
    const char *line = h->data + i;
    const char *end = memchr(line, '\n', h->len - i);
    size_t line_len = end ? (size_t)(end - line) + 1 : h->len - i;
    if (line_len > len && line[len] == ':' && strncasecmp(line, name, len) == 0) {
      memmove(h->data + i, h->data + i + line_len, h->len - i - line_len);
      h->len -= line_len;
    } else {
      i += line_len;
    }
  }
}

/* Pushes the answer's headers as a table of lowercase name -> value (Content-Type included). */
static void push_answer_headers(lua_State *L, const eng_response *resp) {
  lua_newtable(L);
  if (resp->content_type[0]) {
    lua_pushstring(L, resp->content_type);
    lua_setfield(L, -2, "content-type");
  }
  const char *p = resp->headers.data, *end = p + resp->headers.len;
  while (p && p < end) {
    const char *colon = memchr(p, ':', (size_t)(end - p));
    const char *eol = memchr(p, '\r', (size_t)(end - p));
    if (colon == NULL || eol == NULL || colon > eol)
      break;
    luaL_Buffer b;
    char *lower = luaL_buffinitsize(L, &b, (size_t)(colon - p));
    for (const char *q = p; q < colon; q++)
      *lower++ = (char)(*q >= 'A' && *q <= 'Z' ? *q - 'A' + 'a' : *q);
    luaL_pushresultsize(&b, (size_t)(colon - p));
    const char *v = colon + 1;
    while (v < eol && *v == ' ')
      v++;
    lua_pushlstring(L, v, (size_t)(eol - v));
    lua_rawset(L, -3);
    p = eol + 2;
  }
}

/* Sets the headers of the table at idx in the answer, each replacing a header of that name.
 * NULL or a message. */
static const char *set_headers(lua_State *L, int idx, eng_response *resp) {
  if (!lua_istable(L, idx))
    return "must return nil or a table of headers";
  lua_pushnil(L);
  while (lua_next(L, idx)) {
    if (lua_type(L, -2) == LUA_TSTRING) {
      size_t n;
      const char *k = lua_tolstring(L, -2, &n);
      drop_header(&resp->headers, k, n);
    }
    lua_pop(L, 1);
  }
  return take_headers(L, idx, resp);
}

/* Runs the after hooks in order on the answer. A failing one answers 500 (503) and ends them. */
static void run_after_hooks(call *c, lua_State *L, int req_idx) {
  eng_runtime *rt = c->rt;
  if (!c->hooks || rt->after_hooks == LUA_NOREF || c->blown)
    return;
  lua_rawgeti(L, LUA_REGISTRYINDEX, rt->after_hooks);
  int list = lua_gettop(L);
  lua_Integer n = (lua_Integer)lua_rawlen(L, list);
  for (lua_Integer i = 1; i <= n; i++) {
    lua_rawgeti(L, list, i);
    lua_pushvalue(L, req_idx);
    lua_pushinteger(L, c->resp->status);
    push_answer_headers(L, c->resp);
    if (!call_script(c, L, 3, 1))
      return;
    const char *why = lua_isnil(L, -1) ? NULL : set_headers(L, lua_gettop(L), c->resp);
    if (why) {
      char who[300];
      lua_rawgeti(L, list, i);
      hook_name(L, -1, "after", who, sizeof who);
      bad_answer(c, L, who, why);
      return;
    }
    lua_settop(L, list);
  }
}

/* Reads the handler's `status, body, headers` (L's top three) into the answer. */
static void take_handler_answer(call *c, lua_State *L) { take_answer(c, L, lua_gettop(L) - 3, NULL); }

/* The handler yielded to the engine: anchors its thread and the request table in the registry
 * (the reusable coroutine becomes this request's own: the next request makes a new one) so
 * the request can outlive this call. Raises on memory errors (handle_failed cleans up). */
static void anchor_suspended(call *c, lua_State *L, int req_idx) {
  eng_runtime *rt = c->rt;
  lua_pushvalue(L, req_idx);
  c->req_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  lua_pushthread(c->run.co);
  lua_xmove(c->run.co, L, 1);
  c->co_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  if (c->run.shared) {
    luaL_unref(L, LUA_REGISTRYINDEX, rt->co_ref);
    rt->co_ref = LUA_NOREF;
    rt->co = NULL;
    rt->co_busy = 0;
  }
  rt->deadline_ms = c->run.outer_deadline;
}

/* The request's hooks and handler, and the reading of the answers; under eng_lua_protect. */
static int handle_p(lua_State *L) {
  call *c = lua_touserdata(L, 1);
  eng_runtime *rt = c->rt;
  const eng_live_request *lr = &c->lr;
  eng_lua_request_push(rt, L, &c->lr);
  int req_idx = lua_gettop(L);
  if (!run_before_hooks(c, L, req_idx)) {
    if (lr->m->status == 404) {
      call_error(c, L, 404, "not_found", "no route for this path");
    } else if (lr->m->status == 405) {
      char allow[96];
      eng_router_allow_string(lr->m->allow, allow, sizeof allow);
      eng_buf_appendf(&c->resp->headers, "Allow: %s\r\n", allow);
      call_error(c, L, 405, "method_not_allowed", "method not allowed for this path");
    } else if (c->bad == ENG_EPARSE) {
      call_error(c, L, 400, "bad_request", c->bad_why);
    } else if (c->bad != 0) {
      call_error(c, L, 500, "internal_error", "out of memory");
    } else {
      lua_rawgeti(L, LUA_REGISTRYINDEX, lr->m->handler);
      lua_pushvalue(L, req_idx);
      c->may_suspend = c->async && rt->loop != NULL;
      int ok = call_script(c, L, 1, 3);
      c->may_suspend = 0;
      if (c->suspended) {
        anchor_suspended(c, L, req_idx);
        return 0;
      }
      if (ok)
        take_handler_answer(c, L);
    }
  }
  lua_settop(L, req_idx);
  run_after_hooks(c, L, req_idx);
  return 0;
}

/* handle_p raised (a memory error in the glue, error object on L's top): drop what it left
 * half done and answer 503 when the memory budget was blown, 500 otherwise. */
static void handle_failed(eng_runtime *rt, lua_State *L, call *c) {
  log_glue_error(L, "request", c->lr.request_id);
  lua_pop(L, 1);
  if (c->suspended && c->run.op->drop) /* yielded, but its wait will never start */
    c->run.op->drop(c->run.ctx);
  run_abandon(rt, &c->run);
  luaL_unref(L, LUA_REGISTRYINDEX, c->req_ref); /* a half-done suspension: LUA_NOREF is a no-op */
  luaL_unref(L, LUA_REGISTRYINDEX, c->co_ref);
  c->req_ref = c->co_ref = LUA_NOREF;
  c->suspended = 0;
  eng_buf_reset(&c->resp->headers);
  c->resp->content_type[0] = '\0';
  eng_metrics_script_error(rt->route);
  if (rt->mem_blown) {
    eng_metrics_budget_exceeded(1);
    lua_gc(L, LUA_GCCOLLECT);
    call_error(c, L, 503, "budget_exceeded", "script memory budget exceeded");
  } else {
    call_error(c, L, 500, "internal_error", "internal server error");
  }
}

/* Request hooks run for every request the router sees: matched, 404 and 405 (a CORS preflight
 * is an OPTIONS request to a route that declares none), and a request whose parameters are not
 * UTF-8, before the engine answers it 400. Without hooks, the engine's own answers need no Lua
 * but the error hook. The health and readiness paths never get here: the caller answers them
 * first (conn.c, test.c), so no hook stands between a load balancer and them. */
/* ---- suspended requests -------------------------------------------------------------------- */

/* A request whose handler yielded to the engine: the call (with its own answer, route match and
 * copies of the request id and peer) moved off the C stack. Owned by the runtime until done is
 * called or it is abandoned; its memory goes once both timers are closed. */
struct eng_pending {
  call c;
  eng_runtime *rt;
  lua_State *L;  /* the thread the dispatch glue runs on when it resumes */
  lua_State *co; /* the handler's thread (anchored by c.co_ref) */
  const eng_async_op *op;
  eng_route_match m;
  eng_response resp;
  eng_pending_done_fn done;
  void *ud;
  const char *route; /* the matched pattern (the router's) */
  uv_timer_t deadline, wake;
  int open_handles;
  int waiting; /* op started and not stopped */
  char *rid, *peer, *scratch;
};

/* Removes lr from the runtime's live requests wherever it is (suspended requests end in any
 * order, not innermost first). */
static void live_unlink(eng_runtime *rt, eng_live_request *lr) {
  for (eng_live_request **at = &rt->live; *at; at = &(*at)->prev)
    if (*at == lr) {
      *at = lr->prev;
      return;
    }
}

static void runtime_destroy(eng_runtime *rt);
static void pending_expired(uv_timer_t *t);

static void pending_closed(uv_handle_t *h) {
  eng_pending *p = h->data;
  if (--p->open_handles > 0)
    return;
  eng_runtime *rt = p->rt;
  free(p);
  if (--rt->npending == 0 && rt->dying)
    runtime_destroy(rt);
}

static void pending_stop_wait(eng_pending *p) {
  if (p->waiting && p->op->stop)
    p->op->stop(p, p->c.run.ctx);
  p->waiting = 0;
}

/* Ends p: drops its Lua anchors and its place among the live requests, stops its timers, hands
 * the answer to done (answer = 1) and frees it once its timers are closed. */
static void pending_end(eng_pending *p, int answer) {
  eng_runtime *rt = p->rt;
  pending_stop_wait(p);
  uv_timer_stop(&p->deadline);
  live_unlink(rt, &p->c.lr);
  luaL_unref(rt->L, LUA_REGISTRYINDEX, p->c.co_ref); /* luaL_unref does not allocate */
  luaL_unref(rt->L, LUA_REGISTRYINDEX, p->c.req_ref);
  p->c.co_ref = p->c.req_ref = LUA_NOREF;
  if (answer)
    p->done(p->ud, &p->resp, p->rid, p->route);
  eng_response_free(&p->resp);
  uv_close((uv_handle_t *)&p->deadline, pending_closed);
  uv_close((uv_handle_t *)&p->wake, pending_closed);
}

/* Closes the suspended thread of p (its to-be-closed variables run under the request's
 * deadline, already past when it expired: the count hook stops them). */
static void pending_close_thread(eng_pending *p) {
  eng_runtime *rt = p->rt;
  int64_t saved = rt->deadline_ms;
  int blown = rt->budget_blown, mem = rt->mem_blown;
  rt->deadline_ms = p->c.deadline;
  rt->budget_blown = rt->mem_blown = 0;
  (void)lua_resetthread(p->co);
  rt->deadline_ms = saved;
  rt->budget_blown = blown;
  rt->mem_blown = mem;
}

/* Starts p's wait (op) and arms its deadline. 0 or an ENG_E* code. */
static int pending_wait(eng_pending *p) {
  uv_update_time(p->rt->loop); /* a long handler ran since the loop last read the clock */
  int64_t left = p->c.deadline - mono_ms();
  int rc = p->op->start(p, p->rt->loop, p->c.run.arg, p->c.run.ctx);
  if (rc != 0)
    return rc;
  p->waiting = 1;
  return uv_timer_start(&p->deadline, pending_expired, left > 0 ? (uint64_t)left : 0, 0) == 0 ? 0 : ENG_EIO;
}
/* The request's deadline passed while its handler waited: 503 budget_exceeded, the thread
 * closed; whatever the wait would have brought is dropped with it. */
static void pending_expired(uv_timer_t *t) {
  eng_pending *p = t->data;
  eng_runtime *rt = p->rt;
  lua_State *L = p->L;
  int top = lua_gettop(L);
  const char *saved_rid = rt->request_id, *saved_route = rt->route;
  pending_stop_wait(p);
  rt->dispatching++;
  pending_close_thread(p);
  rt->request_id = p->rid;
  rt->route = p->route;
  char line[160];
  int n = snprintf(line, sizeof line, "script budget exceeded (%d ms) while the handler waited (%s)", rt->budget_ms,
                   p->op->name);
  eng_log_msg(ENG_LOG_ERROR, p->rid, line, n < 0 ? 0 : (size_t)n < sizeof line ? (size_t)n : sizeof line - 1);
  eng_metrics_script_error(p->route);
  eng_metrics_budget_exceeded(0);
  p->c.blown = 1;
  eng_buf_reset(&p->resp.headers);
  p->resp.content_type[0] = '\0';
  call_error(&p->c, L, 503, "budget_exceeded", "script time budget exceeded");
  rt->dispatching--;
  after_call(rt);
  lua_settop(L, top);
  rt->request_id = saved_rid;
  rt->route = saved_route;
  pending_end(p, 1);
}

/* The resumed handler and the rest of its request (its answer, the after hooks); under
 * eng_lua_protect. */
static int resume_p(lua_State *L) {
  eng_pending *p = lua_touserdata(L, 1);
  call *c = &p->c;
  eng_runtime *rt = p->rt;
  run *r = &c->run;
  *r = (run){.co = p->co, .may_suspend = 1, .outer_deadline = rt->deadline_ms};
  rt->budget_blown = rt->mem_blown = 0;
  rt->storage_code = 0;
  rt->deadline_ms = c->deadline;
  run_resume(rt, L, p->co, 0, r);
  if (r->suspended) {
    c->suspended = 1;
    rt->deadline_ms = r->outer_deadline;
    r->co = NULL;
    return 0;
  }
  lua_rawgeti(L, LUA_REGISTRYINDEX, c->req_ref);
  int req_idx = lua_gettop(L);
  if (r->st != LUA_OK) {
    script_failed(c, L);
  } else {
    take_results(rt, L, r, 3);
    take_handler_answer(c, L);
  }
  lua_settop(L, req_idx);
  run_after_hooks(c, L, req_idx);
  return 0;
}

void eng_pending_wake(eng_pending *p) {
  eng_runtime *rt = p->rt;
  lua_State *L = p->L;
  int top = lua_gettop(L);
  const char *saved_rid = rt->request_id, *saved_route = rt->route;
  p->waiting = 0;
  p->c.suspended = 0;
  rt->request_id = p->rid;
  rt->route = p->route;
  rt->dispatching++;
  if (eng_lua_protect(L, resume_p, p, 0) != LUA_OK)
    handle_failed(rt, L, &p->c);
  rt->dispatching--;
  after_call(rt);
  lua_settop(L, top);
  rt->request_id = saved_rid;
  rt->route = saved_route;
  if (p->c.suspended) { /* waits again */
    p->op = p->c.run.op;
    if (pending_wait(p) == 0)
      return;
    pending_stop_wait(p);
    rt->dispatching++;
    pending_close_thread(p);
    rt->dispatching--;
    eng_log_msg(ENG_LOG_ERROR, p->rid, "cannot start the handler's wait", 31);
    call_error(&p->c, L, 500, "internal_error", "internal server error");
    lua_settop(L, top);
  }
  pending_end(p, 1);
}

void eng_pending_abandon(eng_pending *p) {
  pending_stop_wait(p);
  p->rt->dispatching++;
  pending_close_thread(p);
  p->rt->dispatching--;
  pending_end(p, 0);
}

uv_timer_t *eng_pending_timer(eng_pending *p) { return &p->wake; }

int eng_runtime_pending(const eng_runtime *rt) { return rt->npending; }

void eng_runtime_set_loop(eng_runtime *rt, uv_loop_t *loop) { rt->loop = loop; }

void eng_runtime_set_loop_idle(eng_runtime *rt, int idle) { rt->loop_idle = idle; }

int eng_lua_can_run_loop(lua_State *L) {
  eng_runtime *rt = rt_of(L);
  return rt != NULL && rt->loop != NULL && rt->loop_idle && rt->dispatching == 0;
}

const char *eng_lua_async_refusal(lua_State *L, const eng_async_op *op) {
  eng_runtime *rt = rt_of(L);
  if (rt == NULL || rt->suspendable == NULL)
    return "only a route handler may wait (not a request hook, the error hook, a script being loaded, or a "
           "runtime without an event loop)";
  if (L != rt->suspendable)
    return "cannot wait inside a coroutine the script created: call it from the handler itself";
  if (!op->in_tx && ((rt->db && !sqlite3_get_autocommit(eng_db_handle(rt->db))) || eng_lua_db_pg_in_tx(L)))
    return "cannot wait inside db.tx: the transaction would stay open while the worker serves other requests";
  if (!lua_isyieldable(L))
    return "cannot wait inside a call from C (xpcall's handler, a metamethod, a sort comparator)";
  return NULL;
}

int eng_lua_async_yield(lua_State *L, const eng_async_op *op, lua_Integer arg, void *ctx, lua_KFunction k,
                        lua_KContext kctx) {
  const char *why = eng_lua_async_refusal(L, op);
  if (why)
    return luaL_error(L, "%s: %s", op->name, why);
  lua_pushlightuserdata(L, (void *)&async_marker);
  lua_pushlightuserdata(L, (void *)op);
  lua_pushinteger(L, arg);
  lua_pushlightuserdata(L, ctx);
  return lua_yieldk(L, 4, kctx, k);
}

/* Moves a suspended call off the C stack into an eng_pending and starts its wait. NULL when
 * that fails (memory, the loop): the caller answers 500; the anchors are then dropped here. */
static eng_pending *suspend(call *c, lua_State *L, const char *scratch, eng_pending_done_fn done, void *ud) {
  eng_runtime *rt = c->rt;
  size_t path = c->lr.req->path_len + 1, peer = strlen(c->lr.peer) + 1, rid = strlen(c->lr.request_id) + 1;
  eng_pending *p = calloc(1, sizeof *p + path + peer + rid);
  lua_State *co = c->run.co;
  if (p == NULL)
    goto fail;
  p->rt = rt;
  p->L = L;
  p->co = co;
  p->op = c->run.op;
  p->done = done;
  p->ud = ud;
  p->scratch = (char *)(p + 1);
  p->peer = p->scratch + path;
  p->rid = p->peer + peer;
  memcpy(p->scratch, scratch, path);
  memcpy(p->peer, c->lr.peer, peer);
  memcpy(p->rid, c->lr.request_id, rid);
  p->m = *c->lr.m;
  for (int i = 0; i < p->m.nparams; i++) /* the decoded values live in the scratch copy */
    p->m.params[i].value = p->scratch + (p->m.params[i].value - scratch);
  p->route = p->m.pattern;
  eng_response_init(&p->resp);
  p->c = *c;
  p->c.lr.m = &p->m;
  p->c.lr.peer = p->peer;
  p->c.lr.request_id = p->rid;
  p->c.resp = &p->resp;
  p->c.run.co = NULL;
  p->c.suspended = 0;
  if (uv_timer_init(rt->loop, &p->deadline) != 0 || uv_timer_init(rt->loop, &p->wake) != 0)
    goto fail; /* cannot fail on a live loop (uv_timer_init only fills the handle) */
  p->deadline.data = p->wake.data = p;
  p->open_handles = 2;
  rt->npending++;
  /* Its place among the live requests: where the call's own entry was (innermost). */
  live_unlink(rt, &c->lr);
  p->c.lr.prev = rt->live;
  rt->live = &p->c.lr;
  if (pending_wait(p) != 0) {
    pending_stop_wait(p);
    pending_close_thread(p);
    pending_end(p, 0);
    return NULL;
  }
  return p;
fail:
  free(p);
  if (c->run.op->drop) /* yielded, but its wait never started */
    c->run.op->drop(c->run.ctx);
  int64_t saved = rt->deadline_ms;
  rt->deadline_ms = c->deadline;
  (void)lua_resetthread(co);
  rt->deadline_ms = saved;
  luaL_unref(L, LUA_REGISTRYINDEX, c->co_ref);
  luaL_unref(L, LUA_REGISTRYINDEX, c->req_ref);
  return NULL;
}

/* Request hooks run for every request the router sees: matched, 404 and 405 (a CORS preflight
 * is an OPTIONS request to a route that declares none), and a request whose parameters are not
 * UTF-8, before the engine answers it 400. Without hooks, the engine's own answers need no Lua
 * but the error hook. The health and readiness paths never get here: the caller answers them
 * first (conn.c, test.c), so no hook stands between a load balancer and them. done == NULL:
 * the handler may not suspend. Returns 1 when it did (*out set), else 0. */
static int handle_common(eng_runtime *rt, lua_State *L, const eng_http_request *req, const char *peer,
                         const char *request_id, eng_response *resp, eng_pending_done_fn done, void *ud,
                         eng_pending **out) {
  int top = lua_gettop(L);
  int suspended = 0;
  rt->route = NULL;
  int method = eng_router_method(req->method, strlen(req->method));
  eng_route_match m;
  char small[512];
  char *scratch = req->path_len < sizeof small ? small : malloc(req->path_len + 1);
  if (scratch == NULL) {
    eng_runtime_error_in(rt, L, 500, "internal_error", "out of memory", request_id, resp);
    return 0;
  }
  eng_router_match(rt->router, method, req->url.data, req->path_len, scratch, &m);
  call c = {.rt = rt,
            .lr = {.req = req, .m = &m, .peer = peer, .request_id = request_id},
            .at = {.path = req->url.data, .path_len = req->path_len, .route = m.pattern},
            .resp = resp,
            .async = done != NULL,
            .co_ref = LUA_NOREF,
            .req_ref = LUA_NOREF};
  /* Scripts get parameters as strings they may echo in JSON: ill-formed UTF-8 is the client's
   * error (400 naming the parameter), not a 500 from the encoder later. */
  char why[160];
  if (m.status == 200) {
    c.bad = eng_http_query_check_utf8(req, why, sizeof why);
    for (int i = 0; c.bad == 0 && i < m.nparams; i++)
      if (!eng_utf8_valid(m.params[i].value, m.params[i].value_len)) {
        snprintf(why, sizeof why, "path parameter '%.*s' is not valid UTF-8", (int)m.params[i].name_len,
                 m.params[i].name);
        c.bad = ENG_EPARSE;
      }
    c.bad_why = why;
  }
  c.hooks = rt->before_hooks != LUA_NOREF || rt->after_hooks != LUA_NOREF;
  if (!c.hooks && (m.status != 200 || c.bad != 0)) { /* answered without Lua (but the error hook) */
    if (m.status == 405) {
      char allow[96];
      eng_router_allow_string(m.allow, allow, sizeof allow);
      eng_buf_appendf(&resp->headers, "Allow: %s\r\n", allow);
      call_error(&c, L, 405, "method_not_allowed", "method not allowed for this path");
    } else if (m.status == 404) {
      call_error(&c, L, 404, "not_found", "no route for this path");
    } else if (c.bad == ENG_EPARSE) {
      call_error(&c, L, 400, "bad_request", why);
    } else {
      call_error(&c, L, 500, "internal_error", "out of memory");
    }
    goto done;
  }
  rt->request_id = request_id;
  rt->route = m.status == 200 && c.bad == 0 ? m.pattern : NULL; /* NULL: metrics say `unmatched` */
  rt->budget_blown = rt->mem_blown = 0; /* so a failure before the handler runs reads today's flags */
  c.deadline = mono_ms() + rt->budget_ms;
  rt->dispatching++;
  if (eng_lua_protect(L, handle_p, &c, 0) != LUA_OK)
    handle_failed(rt, L, &c);
  rt->dispatching--;
  if (c.suspended) {
    lua_settop(L, top);
    eng_pending *p = suspend(&c, L, scratch, done, ud);
    if (p != NULL) {
      *out = p;
      suspended = 1;
    } else {
      eng_log_msg(ENG_LOG_ERROR, request_id, "cannot start the handler's wait", 31);
      call_error(&c, L, 500, "internal_error", "internal server error");
    }
  }
  live_unlink(rt, &c.lr);
  after_call(rt);
  rt->request_id = NULL;
  lua_settop(L, top);
done:
  if (scratch != small)
    free(scratch);
  return suspended;
}

void eng_runtime_handle_in(eng_runtime *rt, lua_State *L, const eng_http_request *req, const char *peer,
                           const char *request_id, eng_response *resp) {
  (void)handle_common(rt, L, req, peer, request_id, resp, NULL, NULL, NULL);
}

void eng_runtime_handle(eng_runtime *rt, const eng_http_request *req, const char *peer, const char *request_id,
                        eng_response *resp) {
  (void)handle_common(rt, rt->L, req, peer, request_id, resp, NULL, NULL, NULL);
}

int eng_runtime_handle_async(eng_runtime *rt, const eng_http_request *req, const char *peer, const char *request_id,
                             eng_response *resp, eng_pending_done_fn done, void *ud, eng_pending **out) {
  return handle_common(rt, rt->L, req, peer, request_id, resp, done, ud, out);
}

int eng_runtime_handle_async_in(eng_runtime *rt, lua_State *L, const eng_http_request *req, const char *peer,
                                const char *request_id, eng_response *resp, eng_pending_done_fn done, void *ud,
                                eng_pending **out) {
  return handle_common(rt, L, req, peer, request_id, resp, done, ud, out);
}

/* ---- state ----------------------------------------------------------------------------------- */

typedef struct init_ctx {
  eng_runtime *rt;
  const eng_runtime_options *opt;
} init_ctx;

/* Everything state creation does on the new state; under eng_lua_protect. */
static int init_p(lua_State *L) {
  const init_ctx *c = lua_touserdata(L, 1);
  const eng_runtime_options *opt = c->opt;
  lua_pushlightuserdata(L, c->rt);
  lua_rawsetp(L, LUA_REGISTRYINDEX, &rt_key);
  luaL_openlibs(L);
  eng_lua_modules_preload(L, 1);
  eng_lua_load_sandbox(L, opt->test_mode);
  eng_lua_db_attach(L, NULL); /* the registry slot exists from here on: later attaches do not allocate */
  eng_lua_db_attach_pg(L, NULL);
  eng_lua_request_init(c->rt, L);
  eng_lua_config_unpack(L, opt->settings ? opt->settings->data : NULL, opt->settings ? opt->settings->len : 0);
  eng_lua_load_freeze(L, opt->test_mode);
  if (!opt->test_mode) {
    eng_lua_config_copies(L);
    /* The metatables every request shares: one changed by a script would change the requests
     * after it (getmetatable(req).__index = nil). Protected, getmetatable gives false. */
    lua_rawgeti(L, LUA_REGISTRYINDEX, c->rt->req_mt);
    lua_rawgeti(L, LUA_REGISTRYINDEX, c->rt->headers_mt);
    eng_lua_push_array_mt(L);
    for (int i = 0; i < 3; i++) {
      lua_pushboolean(L, 0);
      lua_setfield(L, -2, "__metatable");
      lua_pop(L, 1);
    }
  }
  if (opt->db)
    eng_runtime_set_db(c->rt, opt->db);
  return 0;
}

int eng_runtime_new(eng_runtime **out, const eng_runtime_options *opt, char **err) {
  *err = NULL;
  eng_runtime *rt = calloc(1, sizeof *rt);
  if (rt == NULL)
    return eng_errorf(err, ENG_ENOMEM, "out of memory");
  rt->budget_ms = opt->budget_ms > 0 ? opt->budget_ms : 1000;
  eng_runtime_set_load_budget(rt, opt->load_budget_ms);
  rt->mem_limit = opt->memory_limit ? opt->memory_limit : (size_t)256 << 20;
  rt->error_hook = LUA_NOREF;
  rt->before_hooks = rt->after_hooks = LUA_NOREF;
  rt->co_ref = LUA_NOREF;
  rt->deadline_ms = ENG_NO_DEADLINE;
  int rc = 0;
  lua_State *L = rt->L = lua_newstate(l_alloc, rt);
  if (L == NULL || eng_router_new(&rt->router) != 0 ||
      (opt->scripts_dir && (rt->scripts_dir = strdup(opt->scripts_dir)) == NULL)) {
    rc = eng_errorf(err, ENG_ENOMEM, "out of memory");
    goto fail;
  }
  *(eng_runtime **)lua_getextraspace(L) = rt;
  lua_atpanic(L, panic);
  lua_sethook(L, budget_hook, LUA_MASKCOUNT, ENG_HOOK_COUNT); /* inherited by every thread */
  lua_gc(L, LUA_GCGEN, 0, 0);
  init_ctx ic = {.rt = rt, .opt = opt};
  int st = eng_lua_protect(L, init_p, &ic, 0);
  if (st != LUA_OK) {
    rc = eng_errorf(err, st == LUA_ERRMEM ? ENG_ENOMEM : ENG_ELUA, "cannot set up the Lua state: %s",
                    lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : "error");
    goto fail;
  }
  if (opt->pg)
    eng_runtime_set_pg(rt, opt->pg);
  rt->loop = opt->pg ? opt->idle_loop : NULL;
  rt->loop_idle = rt->loop != NULL;
  rc = opt->scripts_dir ? eng_runtime_load_scripts(rt, opt->scripts_dir, err) : 0;
  rt->loop = NULL;
  rt->loop_idle = 0;
  if (rc != 0)
    goto fail;
  pool_release(rt); /* what the load's collections freed: the pool is for the requests' churn */
  *out = rt;
  return 0;
fail:
  eng_runtime_free(rt);
  return rc;
}

void eng_runtime_free(eng_runtime *rt) {
  if (rt == NULL)
    return;
  if (rt->npending > 0) {
    rt->dying = 1; /* the last suspended request frees it (pending_closed) */
    return;
  }
  runtime_destroy(rt);
}

static void runtime_destroy(eng_runtime *rt) {
  /* A runtime a reload replaced (dying) left the connection's progress handler to its successor. */
  if (rt->db && !rt->dying) /* the connection outlives us: its progress handler must not point here */
    sqlite3_progress_handler(eng_db_handle(rt->db), 0, NULL, NULL);
  if (rt->L)
    lua_close(rt->L);
  pool_release(rt);
  eng_router_free(rt->router);
  free(rt->scripts_dir);
  free(rt);
}

lua_State *eng_runtime_lua(eng_runtime *rt) { return rt->L; }

void eng_runtime_set_db(eng_runtime *rt, eng_db *db) {
  if (rt->db && rt->db != db)
    sqlite3_progress_handler(eng_db_handle(rt->db), 0, NULL, NULL);
  rt->db = db;
  if (db && rt->pg) {
    rt->pg = NULL;
    eng_lua_db_attach_pg(rt->L, NULL);
  }
  if (db)
    sqlite3_progress_handler(eng_db_handle(db), ENG_DB_PROGRESS_OPS, db_progress, rt);
  eng_lua_db_attach(rt->L, db);
}

void eng_runtime_set_pg(eng_runtime *rt, eng_pg *pg) {
  if (pg)
    eng_runtime_set_db(rt, NULL);
  rt->pg = pg;
  eng_lua_db_attach_pg(rt->L, pg);
}

size_t eng_runtime_memory(const eng_runtime *rt) { return rt->mem_used; }

/* The state is in generational mode: a minor collection runs only as it allocates, so a
 * spike's garbage (big strings, tables) would stay until the next requests. Out of any
 * budgeted run: the deadline is ENG_NO_DEADLINE, so the allocator refuses nothing. */
void eng_runtime_collect(eng_runtime *rt) {
  if (rt == NULL)
    return;
  if (rt->L)
    lua_gc(rt->L, LUA_GCCOLLECT);
  pool_release(rt); /* what the collection freed, and the blocks kept since the last idle time */
}

const char *eng_runtime_route(const eng_runtime *rt) { return rt->route; }
