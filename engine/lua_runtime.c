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
 * logs anything that still escapes. */
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
static void *l_alloc(void *ud, void *ptr, size_t osize, size_t nsize) {
  eng_runtime *rt = ud;
  size_t old = ptr ? osize : 0;
  if (nsize == 0) {
    free(ptr);
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
  void *p = realloc(ptr, nsize);
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
} run;

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
  r->st = lua_resume(co, L, nargs, &r->nres);
  r->yielded = r->st == LUA_YIELD;
  if (r->yielded) {
    lua_settop(co, 0);
    r->st = LUA_ERRRUN;
  }
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

/* After any script call: statements reset, no transaction left open. */
static void after_call(eng_runtime *rt) {
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
  hook_call h = {
      .rt = rt, .status = status, .code = code, .message = message, .request_id = request_id, .at = at, .resp = resp};
  if (eng_lua_protect(L, error_hook_p, &h, 0) != LUA_OK) {
    log_glue_error(L, "error hook", request_id);
    run_abandon(rt, &h.run);
    default_error_body(status, code, message, request_id, resp);
  }
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
  int hooks; /* run the request hooks (there are some) */
  int blown; /* a call of this request blew the time or memory budget: no after hooks */
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
  run_budgeted(c->rt, L, nargs, c->deadline, &c->run);
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
static void take_answer(call *c, lua_State *L, int base, const char *who) {
  const char *why = NULL;
  int isnum = 0;
  lua_Integer status = lua_type(L, base + 1) == LUA_TNUMBER ? lua_tointegerx(L, base + 1, &isnum) : 0;
  if (!isnum || status < 100 || status > 599)
    why = "must return an HTTP status (integer 100..599) first";
  else if ((why = take_headers(L, base + 3, c->resp)) == NULL)
    why = take_body(L, base + 2, c->resp);
  if (why) {
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
      if (call_script(c, L, 1, 3)) {
        char who[300];
        snprintf(who, sizeof who, "%s %s", lr->req->method, lr->m->pattern);
        take_answer(c, L, lua_gettop(L) - 3, who);
      }
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
  run_abandon(rt, &c->run);
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
void eng_runtime_handle_in(eng_runtime *rt, lua_State *L, const eng_http_request *req, const char *peer,
                           const char *request_id, eng_response *resp) {
  int top = lua_gettop(L);
  rt->route = NULL;
  int method = eng_router_method(req->method, strlen(req->method));
  eng_route_match m;
  char small[512];
  char *scratch = req->path_len < sizeof small ? small : malloc(req->path_len + 1);
  if (scratch == NULL) {
    eng_runtime_error_in(rt, L, 500, "internal_error", "out of memory", request_id, resp);
    return;
  }
  eng_router_match(rt->router, method, req->url.data, req->path_len, scratch, &m);
  call c = {.rt = rt,
            .lr = {.req = req, .m = &m, .peer = peer, .request_id = request_id},
            .at = {.path = req->url.data, .path_len = req->path_len, .route = m.pattern},
            .resp = resp};
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
  if (eng_lua_protect(L, handle_p, &c, 0) != LUA_OK)
    handle_failed(rt, L, &c);
  if (rt->live == &c.lr)
    rt->live = c.lr.prev;
  after_call(rt);
  rt->request_id = NULL;
  lua_settop(L, top);
done:
  if (scratch != small)
    free(scratch);
}

void eng_runtime_handle(eng_runtime *rt, const eng_http_request *req, const char *peer, const char *request_id,
                        eng_response *resp) {
  eng_runtime_handle_in(rt, rt->L, req, peer, request_id, resp);
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
  if (opt->scripts_dir && (rc = eng_runtime_load_scripts(rt, opt->scripts_dir, err)) != 0)
    goto fail;
  *out = rt;
  return 0;
fail:
  eng_runtime_free(rt);
  return rc;
}

void eng_runtime_free(eng_runtime *rt) {
  if (rt == NULL)
    return;
  if (rt->db) /* the connection outlives us: its progress handler must not point here */
    sqlite3_progress_handler(eng_db_handle(rt->db), 0, NULL, NULL);
  if (rt->L)
    lua_close(rt->L);
  eng_router_free(rt->router);
  free(rt->scripts_dir);
  free(rt);
}

lua_State *eng_runtime_lua(eng_runtime *rt) { return rt->L; }

void eng_runtime_set_db(eng_runtime *rt, eng_db *db) {
  if (rt->db && rt->db != db)
    sqlite3_progress_handler(eng_db_handle(rt->db), 0, NULL, NULL);
  rt->db = db;
  if (db)
    sqlite3_progress_handler(eng_db_handle(db), ENG_DB_PROGRESS_OPS, db_progress, rt);
  eng_lua_db_attach(rt->L, db);
}

size_t eng_runtime_memory(const eng_runtime *rt) { return rt->mem_used; }

/* The state is in generational mode: a minor collection runs only as it allocates, so a
 * spike's garbage (big strings, tables) would stay until the next requests. Out of any
 * budgeted run: the deadline is ENG_NO_DEADLINE, so the allocator refuses nothing. */
void eng_runtime_collect(eng_runtime *rt) {
  if (rt && rt->L)
    lua_gc(rt->L, LUA_GCCOLLECT);
}

const char *eng_runtime_route(const eng_runtime *rt) { return rt->route; }
