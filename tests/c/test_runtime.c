/* test_runtime.c - the runtime's protected glue: a memory error (or any raise) in the C
 * between calls into Lua becomes a 500/503 answer or a start-up error, the runtime keeps
 * serving afterwards, and the log says what happened. White-box: it reads and squeezes the
 * runtime's memory cap (lua_runtime_int.h) to make an allocation fail at a chosen point. */
#define _XOPEN_SOURCE 700
#include <fcntl.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <lauxlib.h>

#include "check.h"
#include "tmpdir.h"
#include "error.h"
#include "http.h"
#include "log.h"
#include "lua_runtime_int.h"

static char log_path[128];
static eng_runtime *squeezed; /* the runtime whose cap squeeze() lowers */
static size_t saved_limit;

/* squeeze(): from a handler, caps the state well below what it holds now, so the next
 * allocation on it fails even after the emergency collection Lua tries first (which frees
 * the request table once the handler has returned). The test puts the cap back after the
 * request. */
static int squeeze(lua_State *L) {
  (void)L;
  saved_limit = squeezed->mem_limit;
  squeezed->mem_limit = squeezed->mem_used / 2;
  return 0;
}

static int open_squeeze(lua_State *L) {
  lua_pushcfunction(L, squeeze);
  return 1;
}

/* A server-mode runtime with the one script `source` loaded, where require(module) gives what
 * opener returns. */
static eng_runtime *runtime_with_module(const char *source, const char *module, lua_CFunction opener) {
  char path[128];
  snprintf(path, sizeof path, "%s/routes.lua", tmpdir);
  FILE *f = fopen(path, "w");
  fputs(source, f);
  fclose(f);
  eng_runtime_options o = {.budget_ms = 1000, .memory_limit = (size_t)64 << 20};
  eng_runtime *rt = NULL;
  char *err = NULL;
  CHECK_INT(eng_runtime_new(&rt, &o, &err), 0);
  lua_State *L = eng_runtime_lua(rt);
  luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_PRELOAD_TABLE);
  lua_pushcfunction(L, opener);
  lua_setfield(L, -2, module);
  lua_pop(L, 1);
  CHECK_INT(eng_runtime_load_scripts(rt, tmpdir, &err), 0);
  if (err)
    fprintf(stderr, "load: %s\n", err);
  free(err);
  return rt;
}

/* The same with require "test.squeeze". */
static eng_runtime *runtime_with(const char *source) {
  eng_runtime *rt = runtime_with_module(source, "test.squeeze", open_squeeze);
  squeezed = rt;
  return rt;
}

/* Runs "GET target" through the runtime; returns the status, body in resp. */
static int get(eng_runtime *rt, const char *target, eng_response *resp) {
  char raw[256];
  snprintf(raw, sizeof raw, "GET %s HTTP/1.1\r\nHost: t\r\nX-Request-Id: rid-1\r\n\r\n", target);
  eng_http_limits lim;
  eng_http_limits_default(&lim);
  eng_http_parser hp;
  eng_http_parser_init(&hp, &lim);
  size_t used;
  CHECK_INT(eng_http_parser_feed(&hp, raw, strlen(raw), &used), ENG_HTTP_REQUEST);
  eng_response_reset(resp);
  int top = lua_gettop(eng_runtime_lua(rt));
  eng_runtime_handle(rt, &hp.req, "127.0.0.1:1", "rid-1", resp);
  CHECK_INT(lua_gettop(eng_runtime_lua(rt)), top);
  if (saved_limit) { /* squeeze() ran: undo it */
    rt->mem_limit = saved_limit;
    saved_limit = 0;
  }
  eng_http_parser_free(&hp);
  return resp->status;
}

static int log_has(const char *needle) {
  char buf[65536];
  FILE *f = fopen(log_path, "r");
  size_t n = f ? fread(buf, 1, sizeof buf - 1, f) : 0;
  if (f)
    fclose(f);
  buf[n] = '\0';
  return strstr(buf, needle) != NULL;
}

static int body_has(const eng_response *r, const char *needle) {
  return r->body.data != NULL && strstr(r->body.data, needle) != NULL;
}

static void test_memory_error_before_the_handler_is_a_503(void) {
  eng_runtime *rt = runtime_with("local route = require 'engine.route'\n"
                                 "route.get('/ok', function(req) return 200, { ok = true } end)\n");
  eng_response r;
  eng_response_init(&r);
  lua_gc(eng_runtime_lua(rt), LUA_GCCOLLECT);
  size_t limit = rt->mem_limit;
  rt->mem_limit = rt->mem_used; /* the request table cannot be built */
  CHECK_INT(get(rt, "/ok", &r), 503);
  CHECK(body_has(&r, "\"budget_exceeded\""));
  CHECK(body_has(&r, "\"request_id\":\"rid-1\""));
  CHECK(log_has("request: not enough memory"));
  rt->mem_limit = limit;
  CHECK_INT(get(rt, "/ok", &r), 200);
  CHECK(body_has(&r, "{\"ok\":true}"));
  CHECK(rt->live == NULL);
  eng_response_free(&r);
  eng_runtime_free(rt);
}

static void test_memory_error_reading_results_is_a_503(void) {
  eng_runtime *rt = runtime_with("local route = require 'engine.route'\n"
                                 "local squeeze = require 'test.squeeze'\n"
                                 "route.get('/squeeze', function(req)\n"
                                 "  local body, headers = { a = 1 }, { ['X-Float'] = 1.5 }\n"
                                 "  squeeze() -- converting 1.5 to a header string must allocate\n"
                                 "  return 200, body, headers\n"
                                 "end)\n"
                                 "route.get('/ok', function(req) return 200, { ok = true } end)\n");
  eng_response r;
  eng_response_init(&r);
  CHECK_INT(get(rt, "/squeeze", &r), 503);
  CHECK(body_has(&r, "script memory budget exceeded"));
  CHECK_INT(r.headers.len, 0);
  CHECK_INT(get(rt, "/ok", &r), 200);
  CHECK_INT(get(rt, "/ok", &r), 200); /* the reused coroutine still works */
  eng_response_free(&r);
  eng_runtime_free(rt);
}

static void test_memory_error_in_the_error_hook_gives_the_default_answer(void) {
  eng_runtime *rt = runtime_with("local route = require 'engine.route'\n"
                                 "local squeeze = require 'test.squeeze'\n"
                                 "route.on_error(function(status, code, message, rid)\n"
                                 "  local headers = { ['X-Float'] = 2.5 }\n"
                                 "  squeeze()\n"
                                 "  return { shaped = true }, headers\n"
                                 "end)\n");
  eng_response r;
  eng_response_init(&r);
  CHECK_INT(get(rt, "/nope", &r), 404);
  CHECK(body_has(&r, "{\"error\":{\"code\":\"not_found\""));
  CHECK(!body_has(&r, "shaped"));
  CHECK(log_has("error hook: not enough memory"));
  eng_response_free(&r);
  eng_runtime_free(rt);
}

static void test_error_object_whose_tostring_raises_is_a_500(void) {
  eng_runtime *rt = runtime_with("local route = require 'engine.route'\n"
                                 "route.get('/bad-error', function(req)\n"
                                 "  error(setmetatable({}, { __tostring = function() error('tostring failed') end }))\n"
                                 "end)\n"
                                 "route.get('/ok', function(req) return 200, { ok = true } end)\n");
  eng_response r;
  eng_response_init(&r);
  CHECK_INT(get(rt, "/bad-error", &r), 500);
  CHECK(body_has(&r, "\"internal_error\""));
  CHECK(log_has("tostring failed"));
  CHECK_INT(get(rt, "/ok", &r), 200);
  eng_response_free(&r);
  eng_runtime_free(rt);
}

/* ---- suspendable handlers (eng_runtime_handle_async) ---- */

typedef struct answer {
  int calls, status;
  char body[256], rid[64];
} answer;

static void on_done(void *ud, eng_response *resp, const char *request_id, const char *route) {
  (void)route;
  answer *a = ud;
  a->calls++;
  a->status = resp->status;
  snprintf(a->body, sizeof a->body, "%.*s", (int)resp->body.len, resp->body.data ? resp->body.data : "");
  snprintf(a->rid, sizeof a->rid, "%s", request_id);
}

/* Starts "GET target" with the async API: 1 when suspended (*p set), else 0 (resp filled). The
 * parser stays alive in *hp until the caller frees it (the request must outlive the wait). */
static int get_async(eng_runtime *rt, eng_http_parser *hp, const char *target, eng_response *resp, answer *a,
                     eng_pending **p) {
  char raw[256];
  snprintf(raw, sizeof raw, "GET %s HTTP/1.1\r\nHost: t\r\nX-Request-Id: rid-async\r\n\r\n", target);
  eng_http_limits lim;
  eng_http_limits_default(&lim);
  eng_http_parser_init(hp, &lim);
  size_t used;
  CHECK_INT(eng_http_parser_feed(hp, raw, strlen(raw), &used), ENG_HTTP_REQUEST);
  eng_response_reset(resp);
  int top = lua_gettop(eng_runtime_lua(rt));
  int suspended = eng_runtime_handle_async(rt, &hp->req, "127.0.0.1:1", "rid-async", resp, on_done, a, p);
  CHECK_INT(lua_gettop(eng_runtime_lua(rt)), top);
  return suspended;
}

static const char *SLEEPER = "local route = require 'engine.route'\n"
                             "local time = require 'engine.time'\n"
                             "route.get('/nap/{ms}', function(req)\n"
                             "  time.sleep(math.tointeger(tonumber(req.params.ms)))\n"
                             "  return 200, { napped = req.params.ms }\n"
                             "end)\n"
                             "route.get('/ok', function(req) return 200, { ok = true } end)\n";

static void test_a_sleeping_handler_suspends_and_answers_through_done(void) {
  eng_runtime *rt = runtime_with(SLEEPER);
  uv_loop_t loop;
  CHECK_INT(uv_loop_init(&loop), 0);
  eng_runtime_set_loop(rt, &loop);
  eng_response r;
  eng_response_init(&r);
  eng_http_parser hp;
  answer a = {0};
  eng_pending *p = NULL;
  CHECK_INT(get_async(rt, &hp, "/nap/20", &r, &a, &p), 1);
  CHECK(p != NULL);
  CHECK_INT(r.body.len, 0);
  CHECK_INT(eng_runtime_pending(rt), 1);
  CHECK(rt->live != NULL); /* its request table still reads its fields */
  /* the synchronous path is untouched meanwhile */
  CHECK_INT(get(rt, "/ok", &r), 200);
  CHECK_INT(a.calls, 0);
  CHECK_INT(uv_run(&loop, UV_RUN_DEFAULT), 0);
  CHECK_INT(a.calls, 1);
  CHECK_INT(a.status, 200);
  CHECK(strcmp(a.body, "{\"napped\":\"20\"}") == 0);
  CHECK(strcmp(a.rid, "rid-async") == 0);
  CHECK_INT(eng_runtime_pending(rt), 0);
  CHECK(rt->live == NULL);
  eng_http_parser_free(&hp);
  /* without done (eng_runtime_handle) a handler cannot wait: a 500 naming why */
  CHECK_INT(get(rt, "/nap/1", &r), 500);
  CHECK(log_has("engine.time.sleep: only a route handler may wait"));
  eng_response_free(&r);
  eng_runtime_free(rt);
  CHECK_INT(uv_loop_close(&loop), 0);
}

static void test_free_waits_for_the_last_suspended_request(void) {
  eng_runtime *rt = runtime_with(SLEEPER);
  uv_loop_t loop;
  CHECK_INT(uv_loop_init(&loop), 0);
  eng_runtime_set_loop(rt, &loop);
  eng_response r;
  eng_response_init(&r);
  eng_http_parser hp;
  answer a = {0};
  eng_pending *p = NULL;
  CHECK_INT(get_async(rt, &hp, "/nap/10", &r, &a, &p), 1);
  eng_runtime_free(rt); /* a reload: the runtime lives on until the request ends */
  CHECK_INT(uv_run(&loop, UV_RUN_DEFAULT), 0);
  CHECK_INT(a.calls, 1);
  CHECK_INT(a.status, 200); /* answered by the freed runtime's scripts; then it went (ASan) */
  eng_http_parser_free(&hp);
  eng_response_free(&r);
  CHECK_INT(uv_loop_close(&loop), 0);
}

static void test_an_abandoned_request_never_answers(void) {
  eng_runtime *rt = runtime_with(SLEEPER);
  uv_loop_t loop;
  CHECK_INT(uv_loop_init(&loop), 0);
  eng_runtime_set_loop(rt, &loop);
  eng_response r;
  eng_response_init(&r);
  eng_http_parser hp;
  answer a = {0};
  eng_pending *p = NULL;
  CHECK_INT(get_async(rt, &hp, "/nap/5000", &r, &a, &p), 1);
  eng_pending_abandon(p);
  CHECK_INT(uv_run(&loop, UV_RUN_DEFAULT), 0); /* its timers are closed: nothing keeps the loop */
  CHECK_INT(a.calls, 0);
  CHECK_INT(eng_runtime_pending(rt), 0);
  CHECK(rt->live == NULL);
  CHECK_INT(get(rt, "/ok", &r), 200);
  eng_http_parser_free(&hp);
  eng_response_free(&r);
  eng_runtime_free(rt);
  CHECK_INT(uv_loop_close(&loop), 0);
}

/* ---- an operation with a context and a continuation (what lua_db_pg.c's queries use) ---- */

typedef struct ctx_wait {
  int value;
} ctx_wait;

static int ctx_starts, ctx_stops, ctx_freed;

static void ctx_over(uv_timer_t *t) { eng_pending_wake(t->data); }

static int ctx_start(eng_pending *p, uv_loop_t *loop, lua_Integer ms, void *ctx) {
  (void)loop;
  ((ctx_wait *)ctx)->value = 42; /* what the wait "brings" */
  ctx_starts++;
  return uv_timer_start(eng_pending_timer(p), ctx_over, (uint64_t)ms, 0) == 0 ? 0 : ENG_EIO;
}

static void ctx_stop(eng_pending *p, void *ctx) {
  uv_timer_stop(eng_pending_timer(p));
  ctx_stops++;
  ctx_freed++;
  free(ctx);
}

static const eng_async_op ctx_op = {.name = "test.wait", .start = ctx_start, .stop = ctx_stop, .drop = NULL};

/* The continuation: the wait's result becomes the C function's return value; frees the ctx. */
static int ctx_k(lua_State *L, int status, lua_KContext k) {
  (void)status;
  ctx_wait *w = (ctx_wait *)k;
  lua_pushinteger(L, w->value);
  free(w);
  ctx_freed++;
  return 1;
}

static int ctx_wait_fn(lua_State *L) {
  lua_Integer ms = luaL_checkinteger(L, 1);
  ctx_wait *w = calloc(1, sizeof *w);
  return eng_lua_async_yield(L, &ctx_op, ms, w, ctx_k, (lua_KContext)w);
}

static int open_wait(lua_State *L) {
  lua_pushcfunction(L, ctx_wait_fn);
  return 1;
}

static const char *WAITER = "local route = require 'engine.route'\n"
                            "local wait = require 'test.wait'\n"
                            "route.get('/w/{ms}', function(req)\n"
                            "  local v = wait(math.tointeger(tonumber(req.params.ms)))\n"
                            "  return 200, { v = v }\n"
                            "end)\n";

static void test_a_wait_with_a_context_resumes_through_its_continuation(void) {
  eng_runtime *rt = runtime_with_module(WAITER, "test.wait", open_wait);
  uv_loop_t loop;
  CHECK_INT(uv_loop_init(&loop), 0);
  eng_runtime_set_loop(rt, &loop);
  eng_response r;
  eng_response_init(&r);
  eng_http_parser hp;
  answer a = {0};
  eng_pending *p = NULL;
  CHECK_INT(get_async(rt, &hp, "/w/5", &r, &a, &p), 1);
  CHECK_INT(ctx_starts, 1);
  CHECK_INT(uv_run(&loop, UV_RUN_DEFAULT), 0);
  CHECK_INT(a.calls, 1);
  CHECK_INT(a.status, 200);
  CHECK(strcmp(a.body, "{\"v\":42}") == 0);
  CHECK_INT(ctx_freed, 1); /* by the continuation */
  CHECK_INT(ctx_stops, 0);
  eng_http_parser_free(&hp);
  /* abandoned: stop gets the context (and frees it); the continuation never runs */
  a = (answer){0};
  CHECK_INT(get_async(rt, &hp, "/w/5000", &r, &a, &p), 1);
  eng_pending_abandon(p);
  CHECK_INT(uv_run(&loop, UV_RUN_DEFAULT), 0);
  CHECK_INT(a.calls, 0);
  CHECK_INT(ctx_stops, 1);
  CHECK_INT(ctx_freed, 2);
  eng_http_parser_free(&hp);
  eng_response_free(&r);
  eng_runtime_free(rt);
  CHECK_INT(uv_loop_close(&loop), 0);
}

static void test_state_too_small_to_build_is_a_start_up_error(void) {
  eng_runtime_options o = {.budget_ms = 1000, .memory_limit = 16 * 1024};
  eng_runtime *rt = NULL;
  char *err = NULL;
  CHECK_INT(eng_runtime_new(&rt, &o, &err), ENG_ENOMEM);
  CHECK(rt == NULL);
  CHECK(err != NULL);
  free(err);
}

/* Lua's own count of its memory (what collectgarbage("count") reads). */
static size_t lua_count(eng_runtime *rt) {
  lua_State *L = eng_runtime_lua(rt);
  return (size_t)lua_gc(L, LUA_GCCOUNT) * 1024 + (size_t)lua_gc(L, LUA_GCCOUNTB);
}

/* The allocator's small-block lists: blocks are handed out again (strings and tables grown and
 * shrunk through every size class and past the largest come back intact), the state's count
 * stays what Lua counts, the lists hold at most ENG_POOL_KEEP bytes, and going idle
 * (eng_runtime_collect) empties them. */
static void test_small_blocks_are_reused_intact(void) {
  eng_runtime *rt =
      runtime_with("local route = require 'engine.route'\n"
                   "route.get('/churn', function()\n"
                   "  local bad, keep = 0, {}\n"
                   "  for round = 1, 20 do\n"
                   "    local strs, t = {}, {}\n"
                   "    for n = 1, 300 do strs[n] = string.rep(string.char(65 + (n + round) % 26), n) end\n"
                   "    for i = 1, 600 do t[i] = i * round end\n"
                   "    for i = 600, 1, -1 do t[i] = nil end\n"
                   "    for i = 1, 40 do t['k' .. i] = { i, round, strs[i] } end\n"
                   "    for n = 1, 300 do\n"
                   "      local s = strs[n]\n"
                   "      if #s ~= n or s ~= string.rep(string.char(65 + (n + round) % 26), n) then bad = bad + 1 end\n"
                   "    end\n"
                   "    for i = 1, 40 do\n"
                   "      local e = t['k' .. i]\n"
                   "      if e[1] ~= i or e[2] ~= round or e[3] ~= strs[i] then bad = bad + 1 end\n"
                   "    end\n"
                   "    keep[round % 3] = t\n"
                   "  end\n"
                   "  return 200, { bad = bad }\n"
                   "end)\n");
  eng_response resp;
  eng_response_init(&resp);
  for (int i = 0; i < 5; i++) {
    CHECK_INT(get(rt, "/churn", &resp), 200);
    CHECK_STR(resp.body.data, "{\"bad\":0}");
    CHECK(rt->mem_used == lua_count(rt));
    CHECK(rt->pool_bytes <= ENG_POOL_KEEP);
  }
  if (ENG_POOL)
    CHECK(rt->pool_bytes > 0);
  else
    CHECK(rt->pool_bytes == 0);
  eng_runtime_collect(rt);
  CHECK(rt->pool_bytes == 0);
  for (int c = 0; c < ENG_POOL_CLASSES; c++)
    CHECK(rt->pool[c] == NULL);
  CHECK(rt->mem_used == lua_count(rt));
  CHECK_INT(get(rt, "/churn", &resp), 200);
  CHECK_STR(resp.body.data, "{\"bad\":0}");
  eng_response_free(&resp);
  eng_runtime_free(rt);
}

int main(void) {
  if (tmpdir_make("/tmp/apiengine-runtime-XXXXXX") != 0)
    return 1;
  snprintf(log_path, sizeof log_path, "%s.log", tmpdir);
  int fd = open(log_path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  eng_log_set_fd(fd);
  test_memory_error_before_the_handler_is_a_503();
  test_memory_error_reading_results_is_a_503();
  test_memory_error_in_the_error_hook_gives_the_default_answer();
  test_error_object_whose_tostring_raises_is_a_500();
  test_state_too_small_to_build_is_a_start_up_error();
  test_small_blocks_are_reused_intact();
  test_a_sleeping_handler_suspends_and_answers_through_done();
  test_free_waits_for_the_last_suspended_request();
  test_an_abandoned_request_never_answers();
  test_a_wait_with_a_context_resumes_through_its_continuation();
  close(fd);
  unlink(log_path);
  tmpdir_remove();
  return check_summary("test_runtime");
}
