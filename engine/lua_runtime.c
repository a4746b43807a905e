/* lua_runtime.c - Lua states, route scripts, budgets and dispatch (see lua_runtime.h).
 *
 * Budgets: every handler runs in a coroutine with a count hook. The hook
 * checks a monotonic deadline every ENG_HOOK_COUNT instructions; once the
 * deadline passes it raises on every instruction, so a script that catches the
 * error with pcall cannot keep running. The allocator enforces the memory cap
 * for the whole state and refuses growth past it (Lua raises "not enough
 * memory"). Either way the flag set here turns the answer into a 503. */
#include "lua_runtime_int.h"
#include "db.h"
#include "error.h"
#include "log.h"
#include "lua_common.h"
#include "lua_config.h"
#include "lua_crypto.h"
#include "lua_db.h"
#include "lua_json.h"
#include "text.h"

#include <lauxlib.h>
#include <lualib.h>

#include <ctype.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define ENG_HOOK_COUNT 1000 /* instructions between deadline checks */

static int64_t mono_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ---- allocator and budget ---------------------------------------------------------------- */

static void *l_alloc(void *ud, void *ptr, size_t osize, size_t nsize) {
  eng_runtime *rt = ud;
  size_t old = ptr ? osize : 0;
  if (nsize == 0) {
    free(ptr);
    rt->mem_used -= old;
    return NULL;
  }
  if (nsize > old && rt->mem_used + (nsize - old) > rt->mem_limit) {
    rt->mem_blown = 1;
    return NULL;
  }
  void *p = realloc(ptr, nsize);
  if (p == NULL)
    return NULL;
  rt->mem_used = rt->mem_used - old + nsize;
  return p;
}

static void budget_hook(lua_State *L, lua_Debug *ar) {
  (void)ar;
  eng_runtime *rt = eng_rt(L);
  if (rt->budget_blown || mono_ms() > rt->deadline_ms) {
    rt->budget_blown = 1;
    lua_sethook(L, budget_hook, LUA_MASKCOUNT, 1);
    luaL_error(L, "script budget exceeded (%d ms)", rt->budget_ms);
  }
}

/* Turns the error object at the top of co into a message with a traceback (pushed on L). */
static void push_error_text(lua_State *L, lua_State *co) {
  const char *msg;
  if (lua_type(co, -1) == LUA_TSTRING) {
    msg = lua_tostring(co, -1);
  } else if (luaL_callmeta(co, -1, "__tostring") && lua_type(co, -1) == LUA_TSTRING) {
    msg = lua_tostring(co, -1);
  } else {
    msg = lua_pushfstring(co, "(error object is a %s value)", luaL_typename(co, -1));
  }
  luaL_traceback(L, co, msg, 0);
}

/* Runs the function below nargs arguments on L's top in a coroutine under the
 * budget. On return *co holds the thread and the results are on its stack; the
 * caller reads them, then calls run_release and restores L's top (a fresh thread
 * is anchored there). Returns the lua_resume status; LUA_YIELD is turned into an
 * error.
 *
 * A new thread per call (a lua_State and its stack) was a large share of a small
 * request's cost, so one coroutine per runtime is reused: once a call returns
 * normally the thread is back at its base level with status LUA_OK, and with its
 * stack emptied lua_resume starts the next function on it. A call that fails,
 * yields or blows a budget leaves it unusable, so run_release drops it. While it
 * runs (a handler calls back into the runtime: the in-process test client) the
 * nested call gets a fresh thread. */
static int run_budgeted(eng_runtime *rt, lua_State *L, int nargs, lua_State **co_out, int *nres) {
  lua_State *co;
  if (rt->co_busy) {
    co = lua_newthread(L);
    lua_insert(L, -(nargs + 2));
  } else {
    if (rt->co == NULL) {
      rt->co = lua_newthread(L);
      rt->co_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    }
    co = rt->co;
    rt->co_busy = 1;
  }
  lua_xmove(L, co, nargs + 1);
  rt->budget_blown = 0;
  rt->mem_blown = 0;
  rt->deadline_ms = mono_ms() + rt->budget_ms;
  lua_sethook(co, budget_hook, LUA_MASKCOUNT, ENG_HOOK_COUNT);
  int st = lua_resume(co, L, nargs, nres);
  lua_sethook(co, NULL, 0, 0);
  if (st == LUA_YIELD) {
    lua_settop(co, 0);
    lua_pushliteral(co, "handler yielded: coroutine.yield is not allowed across the handler boundary");
    st = LUA_ERRRUN;
  }
  *co_out = co;
  return st;
}

/* Ends a run_budgeted call whose results have been read: the reusable coroutine is
 * emptied for the next call after a clean return, dropped otherwise. */
static void run_release(eng_runtime *rt, lua_State *co, int st) {
  if (co != rt->co)
    return; /* a fresh thread: garbage once the caller restores L's top */
  rt->co_busy = 0;
  if (st == LUA_OK && !rt->budget_blown && !rt->mem_blown) {
    lua_settop(co, 0);
    return;
  }
  luaL_unref(rt->L, LUA_REGISTRYINDEX, rt->co_ref);
  rt->co_ref = LUA_NOREF;
  rt->co = NULL;
}

/* ---- state ----------------------------------------------------------------------------------- */

int eng_runtime_new(eng_runtime **out, const eng_runtime_options *opt, char **err) {
  *err = NULL;
  eng_runtime *rt = calloc(1, sizeof *rt);
  if (rt == NULL) {
    *err = strdup("out of memory");
    return ENG_ENOMEM;
  }
  rt->budget_ms = opt->budget_ms > 0 ? opt->budget_ms : 1000;
  rt->mem_limit = opt->memory_limit ? opt->memory_limit : (size_t)256 << 20;
  rt->error_hook = LUA_NOREF;
  rt->co_ref = LUA_NOREF;
  int rc = 0;
  lua_State *L = rt->L = lua_newstate(l_alloc, rt);
  if (L == NULL || eng_router_new(&rt->router) != 0) {
    *err = strdup("out of memory");
    rc = ENG_ENOMEM;
    goto fail;
  }
  *(eng_runtime **)lua_getextraspace(L) = rt;
  lua_gc(L, LUA_GCGEN, 0, 0);
  luaL_openlibs(L);
  eng_lua_modules_preload(L);
  if (opt->scripts_dir)
    rt->scripts_dir = strdup(opt->scripts_dir);
  eng_lua_load_sandbox(L, opt->test_mode);
  eng_lua_db_attach(L, NULL);

  eng_lua_request_init(rt, L);

  eng_lua_config_unpack(L, opt->settings ? opt->settings->data : NULL, opt->settings ? opt->settings->len : 0);
  if (!opt->test_mode)
    eng_lua_load_lock_globals(L);
  if (opt->db)
    eng_runtime_set_db(rt, opt->db);
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
  if (rt->L)
    lua_close(rt->L);
  eng_router_free(rt->router);
  free(rt->scripts_dir);
  free(rt);
}

lua_State *eng_runtime_lua(eng_runtime *rt) { return rt->L; }

void eng_runtime_set_db(eng_runtime *rt, eng_db *db) {
  rt->db = db;
  eng_lua_db_attach(rt->L, db);
}

size_t eng_runtime_memory(const eng_runtime *rt) { return rt->mem_used; }

/* Copies a handler's headers table (at idx on co) into resp; NULL or a message. */
static const char *take_headers(lua_State *co, int idx, eng_response *resp) {
  if (lua_isnoneornil(co, idx))
    return NULL;
  if (!lua_istable(co, idx))
    return "headers must be a table";
  lua_pushnil(co);
  while (lua_next(co, idx)) {
    size_t kn, vn;
    if (lua_type(co, -2) != LUA_TSTRING || (lua_type(co, -1) != LUA_TSTRING && lua_type(co, -1) != LUA_TNUMBER)) {
      lua_pop(co, 2);
      return "header names and values must be strings";
    }
    const char *k = lua_tolstring(co, -2, &kn);
    lua_pushvalue(co, -1);
    const char *v = lua_tolstring(co, -1, &vn);
    const char *why = NULL;
    if (eng_response_add_header(resp, k, kn, v, vn, &why) != 0) {
      lua_pop(co, 3);
      return why;
    }
    lua_pop(co, 2);
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

/* Fills resp->body from the value at idx on co (table -> JSON, string -> bytes). NULL or a message. */
static const char *take_body(lua_State *co, int idx, eng_response *resp) {
  int t = lua_type(co, idx);
  if (t == LUA_TNONE || t == LUA_TNIL)
    return NULL;
  if (t == LUA_TSTRING) {
    size_t n;
    const char *s = lua_tolstring(co, idx, &n);
    if (eng_buf_append(&resp->body, s, n) != 0)
      return "out of memory";
    if (!resp->content_type[0])
      strcpy(resp->content_type, "text/plain; charset=utf-8");
    return NULL;
  }
  const char *why = NULL;
  if (eng_json_encode(co, idx, &resp->body, &why) != 0)
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

/* Logs a failed script call and answers 500 or 503. */
static void script_failed(eng_runtime *rt, lua_State *L, lua_State *co, int st, const char *request_id,
                          eng_response *resp) {
  int blown = rt->budget_blown || rt->mem_blown;
  push_error_text(L, co);
  size_t len;
  const char *text = lua_tolstring(L, -1, &len);
  eng_log_msg(ENG_LOG_ERROR, request_id, text, len);
  lua_pop(L, 1);
  lua_resetthread(co);
  run_release(rt, co, st);
  eng_buf_reset(&resp->headers);
  resp->content_type[0] = '\0';
  if (blown) {
    if (rt->mem_blown)
      lua_gc(L, LUA_GCCOLLECT);
    eng_runtime_error_in(rt, L, 503, "budget_exceeded", rt->mem_blown ? "script memory budget exceeded"
                                                                : "script time budget exceeded", request_id, resp);
  } else {
    eng_runtime_error_in(rt, L, 500, "internal_error", "internal server error", request_id, resp);
  }
}

void eng_runtime_error_in(eng_runtime *rt, lua_State *L, int status, const char *code, const char *message,
                          const char *request_id, eng_response *resp) {
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
  lua_rawgeti(L, LUA_REGISTRYINDEX, rt->error_hook);
  lua_pushinteger(L, status);
  lua_pushstring(L, code);
  lua_pushstring(L, message);
  lua_pushstring(L, request_id);
  lua_State *co;
  int nres = 0;
  int st = run_budgeted(rt, L, 4, &co, &nres);
  const char *why = NULL;
  if (st != LUA_OK) {
    push_error_text(L, co);
    eng_log(ENG_LOG_ERROR, "error hook failed: %s", lua_tostring(L, -1));
    lua_resetthread(co);
    run_release(rt, co, st);
    default_error_body(status, code, message, request_id, resp);
  } else {
    int base = lua_gettop(co) - nres;
    if ((why = take_headers(co, base + 2, resp)) == NULL)
      why = take_body(co, base + 1, resp);
    run_release(rt, co, st);
    if (why == NULL) {
      if (!resp->content_type[0])
        strcpy(resp->content_type, "application/json");
    } else {
      eng_log(ENG_LOG_ERROR, "error hook returned a bad answer: %s", why);
      default_error_body(status, code, message, request_id, resp);
    }
  }
  after_call(rt);
  rt->request_id = saved;
  lua_settop(L, top);
}

void eng_runtime_handle_in(eng_runtime *rt, lua_State *L, const eng_http_request *req, const char *peer,
                           const char *request_id, eng_response *resp) {
  int top = lua_gettop(L);
  int method = eng_router_method(req->method, strlen(req->method));
  eng_route_match m;
  char small[512];
  char *scratch = req->path_len < sizeof small ? small : malloc(req->path_len + 1);
  if (scratch == NULL) {
    eng_runtime_error_in(rt, L, 500, "internal_error", "out of memory", request_id, resp);
    return;
  }
  eng_router_match(rt->router, method, req->url.data, req->path_len, scratch, &m);
  if (m.status == 404) {
    eng_runtime_error_in(rt, L, 404, "not_found", "no route for this path", request_id, resp);
    goto done;
  }
  if (m.status == 405) {
    char allow[96];
    eng_router_allow_string(m.allow, allow, sizeof allow);
    eng_buf_appendf(&resp->headers, "Allow: %s\r\n", allow);
    eng_runtime_error_in(rt, L, 405, "method_not_allowed", "method not allowed for this path", request_id, resp);
    goto done;
  }
  rt->request_id = request_id;
  lua_rawgeti(L, LUA_REGISTRYINDEX, m.handler);
  eng_live_request lr = {.req = req, .m = &m, .peer = peer, .request_id = request_id};
  eng_lua_request_push(rt, L, &lr);
  lua_State *co;
  int nres = 0;
  int st = run_budgeted(rt, L, 1, &co, &nres);
  if (st != LUA_OK) {
    script_failed(rt, L, co, st, request_id, resp);
  } else {
    int base = lua_gettop(co) - nres;
    const char *why = NULL;
    int isnum = 0;
    lua_Integer status = nres >= 1 && lua_type(co, base + 1) == LUA_TNUMBER ? lua_tointegerx(co, base + 1, &isnum) : 0;
    if (!isnum || status < 100 || status > 599)
      why = "handler must return an HTTP status (integer 100..599) first";
    else if ((why = take_headers(co, base + 3, resp)) == NULL)
      why = take_body(co, base + 2, resp);
    run_release(rt, co, st);
    if (why) {
      char msg[256];
      int n = snprintf(msg, sizeof msg, "%s %s: %s", req->method, m.pattern, why);
      eng_log_msg(ENG_LOG_ERROR, request_id, msg, n > 0 ? (size_t)n : 0);
      eng_buf_reset(&resp->headers);
      eng_runtime_error_in(rt, L, 500, "internal_error", "internal server error", request_id, resp);
    } else {
      resp->status = (int)status;
      if (!resp->content_type[0])
        strcpy(resp->content_type, "application/json");
    }
  }
  rt->live = lr.prev;
  after_call(rt);
  rt->request_id = NULL;
  lua_settop(L, top);
done:
  if (scratch != small)
    free(scratch);
}

void eng_runtime_error(eng_runtime *rt, int status, const char *code, const char *message, const char *request_id,
                       eng_response *resp) {
  eng_runtime_error_in(rt, rt->L, status, code, message, request_id, resp);
}

void eng_runtime_handle(eng_runtime *rt, const eng_http_request *req, const char *peer, const char *request_id,
                        eng_response *resp) {
  eng_runtime_handle_in(rt, rt->L, req, peer, request_id, resp);
}
