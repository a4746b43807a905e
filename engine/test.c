/* test.c - `apiengine test`: busted inside the engine, plus the engine.testing module.
 *
 * The specs run in one test-mode runtime (full standard library, writable
 * globals), so engine.db, engine.crypto, ... are the real C modules and
 * in-process requests go through the same parser, limits, router and handler
 * path as the server. engine.testing is the C half of the spec helper
 * (engine.spec, embedded from engine/lua/spec.lua). */
#define _GNU_SOURCE 1 /* nftw */
#include "clock.h"
#include "crypto.h"
#include "db.h"
#include "db_levels.h"
#include "error.h"
#include "http.h"
#include "keys.h"
#include "limit.h"
#include "log.h"
#include "lua_common.h"
#include "lua_runtime.h"
#include "pg.h"
#include "pg_migrate.h"
#include "pq_load.h"

#include <lauxlib.h>
#include <lualib.h>
#include <sqlite3.h>

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <netinet/in.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

extern char **environ;
extern const char eng_spec_lua[]; /* generated from engine/lua/spec.lua */
extern const size_t eng_spec_lua_len;

int eng_test_main(int argc, char **argv);

typedef struct test_state {
  eng_runtime *rt;
  uv_loop_t loop; /* where a suspended handler of an in-process request waits (t_request runs it) */
  eng_db *db;
  eng_pg *pg; /* in place of db when APIENGINE_TEST_DB names a PostgreSQL database (or testing.open_pg) */
  eng_http_limits limits;
  char schema_dir[1024];
  char scripts_dir[1024];
} test_state;

static test_state *TS(lua_State *L) { return lua_touserdata(L, lua_upvalueindex(1)); }

/* The server's workers answer the health and readiness paths before routing and before any Lua
 * (conn.c, server_metrics.c eng_health_fill); the in-process client does the same for the
 * default paths, with the same bodies, so a spec sees what a load balancer would (no hook, no
 * script route of the same path). Ready: the database is open and answers a read. Returns 1
 * when it answered. */
static int health_answer(test_state *ts, const eng_http_request *req, eng_response *resp) {
  if (strcmp(req->method, "GET") != 0 && strcmp(req->method, "HEAD") != 0)
    return 0;
  int healthz = req->path_len == 8 && memcmp(req->url.data, "/healthz", 8) == 0;
  int readyz = req->path_len == 7 && memcmp(req->url.data, "/readyz", 7) == 0;
  if (!healthz && !readyz)
    return 0;
  int ready =
      ts->pg != NULL || (ts->db != NULL && sqlite3_exec(eng_db_handle(ts->db), "SELECT 1 FROM sqlite_schema LIMIT 1",
                                                        NULL, NULL, NULL) == SQLITE_OK);
  resp->status = healthz || ready ? 200 : 503;
  strcpy(resp->content_type, "application/json");
  eng_buf_reset(&resp->body);
  eng_buf_append_str(&resp->body, healthz ? "{\"status\":\"ok\"}"
                                  : ready ? "{\"status\":\"ready\"}"
                                          : "{\"status\":\"not_ready\",\"reason\":\"database\"}");
  return 1;
}

/* One in-process request: its raw bytes, parser and answer, from start_request to push_answer. */
typedef struct inreq {
  eng_buf raw;
  eng_http_parser hp;
  eng_response resp;
  char rid[ENG_HTTP_REQUEST_ID_MAX + 1];
  int head;     /* HEAD or a status without a body */
  int done;     /* answered: 0 while suspended, else the order in which it was (1, 2, ...) */
  int *counter; /* of the batch, for done */
} inreq;

/* The answer of a suspended in-process request: moved into its inreq's response. */
static void request_done(void *ud, eng_response *resp, const char *request_id, const char *route) {
  (void)request_id;
  (void)route;
  inreq *q = ud;
  eng_response tmp = q->resp;
  q->resp = *resp;
  *resp = tmp; /* the pending request frees what was ours (empty) */
  q->done = ++*q->counter;
}

/* Checks the headers table at idx (raises on a bad one; nothing is held yet). */
static void check_headers(lua_State *L, int idx, int *has_length, int *has_host) {
  *has_length = *has_host = 0;
  if (!lua_istable(L, idx))
    return;
  lua_pushnil(L);
  while (lua_next(L, idx)) {
    if (lua_type(L, -2) != LUA_TSTRING || (lua_type(L, -1) != LUA_TSTRING && lua_type(L, -1) != LUA_TNUMBER))
      luaL_error(L, "headers must map names to strings");
    const char *k = lua_tostring(L, -2);
    lua_pushvalue(L, -1);
    const char *v = lua_tostring(L, -1);
    if (strpbrk(k, "\r\n:") || strpbrk(v, "\r\n"))
      luaL_error(L, "header %s: CR, LF (and ':' in names) are not allowed", k);
    if (strcasecmp(k, "content-length") == 0 || strcasecmp(k, "transfer-encoding") == 0)
      *has_length = 1;
    if (strcasecmp(k, "host") == 0)
      *has_host = 1;
    lua_pop(L, 2);
  }
}

/* Builds q's raw request from method, target, headers, body at base..base+3 (checked already)
 * and parses it. 0, or -1 for an incomplete request (q is then freed). */
static int build_request(test_state *ts, lua_State *L, int base, inreq *q) {
  const char *method = lua_tostring(L, base), *target = lua_tostring(L, base + 1);
  size_t blen = 0;
  const char *body = lua_isstring(L, base + 3) ? lua_tolstring(L, base + 3, &blen) : NULL;
  int has_length, has_host;
  check_headers(L, base + 2, &has_length, &has_host);
  eng_buf_appendf(&q->raw, "%s %s HTTP/1.1\r\n%s", method, target, has_host ? "" : "Host: in-process\r\n");
  if (lua_istable(L, base + 2)) {
    lua_pushnil(L);
    while (lua_next(L, base + 2)) {
      lua_pushvalue(L, -1);
      eng_buf_appendf(&q->raw, "%s: %s\r\n", lua_tostring(L, -3), lua_tostring(L, -1));
      lua_pop(L, 2);
    }
  }
  if (!has_length &&
      (body || strcmp(method, "POST") == 0 || strcmp(method, "PUT") == 0 || strcmp(method, "PATCH") == 0))
    eng_buf_appendf(&q->raw, "Content-Length: %zu\r\n", blen);
  eng_buf_append(&q->raw, "\r\n", 2);
  if (body)
    eng_buf_append(&q->raw, body, blen);
  eng_http_parser_init(&q->hp, &ts->limits);
  eng_response_init(&q->resp);
  q->head = strcmp(method, "HEAD") == 0;
  return 0;
}

static void free_request(inreq *q) {
  eng_http_parser_free(&q->hp);
  eng_response_free(&q->resp);
  eng_buf_free(&q->raw);
}

/* Feeds q's bytes and starts answering it: 1 when its handler suspended (request_done answers
 * it from the loop), 0 when answered, -1 when the request is incomplete. */
static int start_request(test_state *ts, lua_State *L, inreq *q, const char *peer) {
  size_t used = 0;
  int r = eng_http_parser_feed(&q->hp, q->raw.data, q->raw.len, &used);
  eng_http_request_id(r == ENG_HTTP_REQUEST || q->hp.req.nheaders ? &q->hp.req : NULL, q->rid);
  if (r == ENG_HTTP_REQUEST) {
    eng_pending *p = NULL;
    if (!health_answer(ts, &q->hp.req, &q->resp) &&
        eng_runtime_handle_async_in(ts->rt, L, &q->hp.req, peer, q->rid, &q->resp, request_done, q, &p))
      return 1;
  } else if (r == ENG_HTTP_ERROR) {
    eng_runtime_error_in(ts->rt, L, q->hp.error_status, q->hp.error_code, q->hp.error_reason, q->rid, &q->resp);
  } else {
    return -1;
  }
  q->done = ++*q->counter;
  return 0;
}

/* Pushes status, headers, body of q's answer. */
static void push_answer(lua_State *L, inreq *q) {
  eng_response *resp = &q->resp;
  int head = q->head || !eng_http_status_has_body(resp->status);
  lua_pushinteger(L, resp->status);
  lua_createtable(L, 0, 6);
  lua_pushstring(L, resp->content_type[0] ? resp->content_type : "application/json");
  lua_setfield(L, -2, "content-type");
  lua_pushstring(L, q->rid);
  lua_setfield(L, -2, "x-request-id");
  if (eng_http_status_has_body(resp->status)) {
    lua_pushinteger(L, (lua_Integer)resp->body.len);
    lua_setfield(L, -2, "content-length");
  }
  /* Extra headers: "Name: value\r\n" lines, names lowercased. */
  const char *p = resp->headers.data, *end = p ? p + resp->headers.len : NULL;
  while (p && p < end) {
    const char *colon = memchr(p, ':', (size_t)(end - p));
    const char *eol = memchr(p, '\r', (size_t)(end - p));
    if (!colon || !eol || colon > eol)
      break;
    luaL_Buffer nb;
    luaL_buffinit(L, &nb);
    for (const char *c = p; c < colon; c++)
      luaL_addchar(&nb, (char)((*c >= 'A' && *c <= 'Z') ? *c + 32 : *c));
    luaL_pushresult(&nb);
    const char *v = colon + 1;
    while (v < eol && *v == ' ')
      v++;
    lua_pushlstring(L, v, (size_t)(eol - v));
    lua_rawset(L, -3);
    p = eol + 2;
  }
  lua_pushlstring(L, head ? "" : (resp->body.data ? resp->body.data : ""), head ? 0 : resp->body.len);
}

/* testing.request(method, target, headers, body [, peer]) -> status, headers, body, logged
 * (logged: what the engine logged at error level while answering, or nil) */
static int t_request(lua_State *L) {
  test_state *ts = TS(L);
  luaL_checkstring(L, 1);
  luaL_checkstring(L, 2);
  luaL_optstring(L, 4, NULL);
  const char *peer = luaL_optstring(L, 5, "127.0.0.1:0"); /* the client's "address:port" */
  int has_length, has_host;
  check_headers(L, 3, &has_length, &has_host); /* first, so nothing below raises while memory is held */
  int counter = 0;
  inreq q = {.counter = &counter};
  build_request(ts, L, 1, &q);
  /* What the engine logs at error level while it answers (a script's error and traceback)
   * comes back with the answer, so a failing spec shows why. */
  eng_buf logged = {0};
  eng_log_capture(&logged);
  int r = start_request(ts, L, &q, peer);
  /* A handler that suspends (engine.time.sleep, a PostgreSQL query) is waited for here: the
   * loop runs until it answers (its deadline bounds that), then once more to close the
   * request's timers. */
  if (r == 1) {
    while (!q.done)
      uv_run(&ts->loop, UV_RUN_ONCE);
    uv_run(&ts->loop, UV_RUN_NOWAIT);
  }
  eng_log_capture(NULL);
  if (r < 0) {
    eng_buf_free(&logged);
    free_request(&q);
    return luaL_error(L, "incomplete request");
  }
  push_answer(L, &q);
  if (logged.len > 0)
    lua_pushlstring(L, logged.data, logged.len);
  else
    lua_pushnil(L);
  eng_buf_free(&logged);
  free_request(&q);
  return 4;
}

#define REQUESTS_MAX 64

/* testing.requests{ {method, target, headers, body [, peer]}, ... } -> { {status=, headers=,
 * body=, order=}, ... }: starts every request before waiting for any, so handlers that suspend
 * are in flight together on the one loop (order: 1 for the first answered). logged: what the
 * engine logged at error level meanwhile, or nil (second result). */
static int t_requests(lua_State *L) {
  test_state *ts = TS(L);
  luaL_checktype(L, 1, LUA_TTABLE);
  lua_Unsigned len = lua_rawlen(L, 1);
  if (len < 1 || len > REQUESTS_MAX)
    return luaL_argerror(L, 1, "1..64 requests");
  size_t n = (size_t)len;
  lua_settop(L, 1);
  luaL_checkstack(L, (int)n * 5 + 8, "requests");
  for (int i = 1; i <= (int)n; i++) { /* unpacked and checked first: nothing raises once memory is held */
    if (lua_rawgeti(L, 1, i) != LUA_TTABLE)
      return luaL_error(L, "request %d is not a table", i);
    int t = lua_gettop(L);
    for (int k = 1; k <= 5; k++)
      lua_rawgeti(L, t, k);
    lua_remove(L, t);
    int base = lua_gettop(L) - 4;
    if (!lua_isstring(L, base) || !lua_isstring(L, base + 1))
      return luaL_error(L, "request %d: method and target expected", i);
    int has_length, has_host;
    check_headers(L, base + 2, &has_length, &has_host);
  }
  int counter = 0;
  inreq *qs = calloc(n, sizeof *qs);
  if (!qs)
    return luaL_error(L, "out of memory");
  for (int i = 0; i < (int)n; i++) {
    qs[i].counter = &counter;
    build_request(ts, L, 2 + i * 5, &qs[i]);
  }
  eng_buf logged = {0};
  eng_log_capture(&logged);
  int incomplete = 0;
  for (int i = 0; i < (int)n; i++) {
    const char *peer = lua_isstring(L, 2 + i * 5 + 4) ? lua_tostring(L, 2 + i * 5 + 4) : "127.0.0.1:0";
    if (start_request(ts, L, &qs[i], peer) < 0) {
      qs[i].done = ++counter;
      incomplete = i + 1;
    }
  }
  while (counter < (int)n)
    uv_run(&ts->loop, UV_RUN_ONCE);
  uv_run(&ts->loop, UV_RUN_NOWAIT);
  eng_log_capture(NULL);
  lua_settop(L, 1);
  lua_createtable(L, (int)n, 0);
  for (int i = 0; i < (int)n && !incomplete; i++) {
    lua_createtable(L, 0, 4);
    push_answer(L, &qs[i]);
    lua_setfield(L, -4, "body");
    lua_setfield(L, -3, "headers");
    lua_setfield(L, -2, "status");
    lua_pushinteger(L, qs[i].done);
    lua_setfield(L, -2, "order");
    lua_rawseti(L, -2, i + 1);
  }
  if (logged.len > 0)
    lua_pushlstring(L, logged.data, logged.len);
  else
    lua_pushnil(L);
  eng_buf_free(&logged);
  for (int i = 0; i < (int)n; i++)
    free_request(&qs[i]);
  free(qs);
  if (incomplete)
    return luaL_error(L, "request %d is incomplete", incomplete);
  return 2;
}

/* ---- PostgreSQL in place of SQLite ---- */

static void pool_closed(void *data) { *(int *)data = 1; }

/* Detaches and closes the pool, running the loop until its memory is gone. */
static void close_pg(test_state *ts) {
  if (ts->pg == NULL)
    return;
  eng_runtime_set_pg(ts->rt, NULL);
  int done = 0;
  eng_pg_close(ts->pg, pool_closed, &done);
  ts->pg = NULL;
  while (!done)
    uv_run(&ts->loop, UV_RUN_ONCE);
}

static void close_all(test_state *ts) {
  eng_runtime_set_db(ts->rt, NULL);
  eng_db_close(ts->db);
  ts->db = NULL;
  close_pg(ts);
}

/* Empties the database of conninfo (DROP SCHEMA public CASCADE), applies schema_dir's migrations
 * (none when NULL) and attaches a fresh pool on the harness's loop. */
static int open_pg(test_state *ts, const char *conninfo, const char *schema, int *applied, char **err) {
  close_all(ts);
  *applied = 0;
  int rc = eng_pq_load(err);
  if (rc != 0)
    return rc;
  PGconn *c = PQconnectdb(conninfo);
  if (PQstatus(c) != CONNECTION_OK) {
    rc = eng_errorf(err, ENG_EIO, "%s", PQerrorMessage(c));
  } else {
    PGresult *r = PQexec(c, "SET client_min_messages = warning; DROP SCHEMA IF EXISTS public CASCADE; "
                            "CREATE SCHEMA public");
    if (PQresultStatus(r) != PGRES_COMMAND_OK)
      rc = eng_errorf(err, ENG_EIO, "resetting the database: %s", PQerrorMessage(c));
    PQclear(r);
  }
  PQfinish(c);
  if (rc == 0 && schema)
    rc = eng_pg_migrate(conninfo, schema, applied, err);
  if (rc == 0)
    rc = eng_pg_open(&ts->pg, &ts->loop, conninfo, NULL, err);
  if (rc == 0) {
    /* The harness's loop runs only while a request or a query waits: connections still being
     * made when a spec then spins for seconds (budget tests) would time out on stale loop time
     * and mark the pool down. So the pool is made here, up front. */
    eng_pg_stats st;
    for (eng_pg_get_stats(ts->pg, &st); st.connecting > 0; eng_pg_get_stats(ts->pg, &st))
      uv_run(&ts->loop, UV_RUN_ONCE);
    eng_runtime_set_pg(ts->rt, ts->pg);
  }
  return rc;
}

/* testing.open_db(path [, schema_dir]) -> migrations applied; replaces the current database.
 * With APIENGINE_TEST_DB set (a libpq connection string) that PostgreSQL database is emptied
 * and used instead of path. */
static int t_open_db(lua_State *L) {
  test_state *ts = TS(L);
  const char *path = luaL_checkstring(L, 1);
  const char *schema = luaL_optstring(L, 2, ts->schema_dir);
  const char *pgdb = getenv("APIENGINE_TEST_DB");
  char *err = NULL;
  int applied = 0;
  int rc;
  if (pgdb && pgdb[0]) {
    rc = open_pg(ts, pgdb, schema, &applied, &err);
    path = pgdb;
  } else {
    close_all(ts);
    eng_db_options o = {0};
    rc = eng_db_open(&ts->db, path, &o, &err);
    if (rc == 0)
      rc = eng_db_migrate(ts->db, schema, &applied, &err);
  }
  if (rc != 0) {
    lua_pushfstring(L, "open_db %s: %s", path, err ? err : eng_strerror(rc));
    free(err);
    close_all(ts);
    return lua_error(L);
  }
  if (ts->db)
    eng_runtime_set_db(ts->rt, ts->db);
  lua_pushinteger(L, applied);
  return 1;
}

/* testing.fold_levels() -> {chunks =, moved =, folds =}: folds the leveled key tables of the
 * SQLite database open_db opened (db_levels.h) until every level is within its limit, as the
 * server's checkpointer thread does in the background, on the same connection. */
static int t_fold_levels(lua_State *L) {
  test_state *ts = TS(L);
  if (!ts->db)
    return luaL_error(L, "fold_levels: no SQLite database is open (testing.open_db)");
  eng_db_levels *lv = NULL;
  if (eng_db_levels_new(&lv, eng_db_handle(ts->db)) != 0)
    return luaL_error(L, "fold_levels: out of memory");
  char *err = NULL;
  int rc, passes = 0;
  while ((rc = eng_db_levels_pass(lv, 64, &err)) > 0 && ++passes < 100000)
    ;
  eng_db_levels_stats st;
  eng_db_levels_get_stats(lv, &st);
  eng_db_levels_free(lv);
  if (rc < 0) {
    lua_pushfstring(L, "fold_levels: %s", err ? err : eng_strerror(rc));
    free(err);
    return lua_error(L);
  }
  lua_createtable(L, 0, 3);
  lua_pushinteger(L, (lua_Integer)st.chunks);
  lua_setfield(L, -2, "chunks");
  lua_pushinteger(L, (lua_Integer)st.moved);
  lua_setfield(L, -2, "moved");
  lua_pushinteger(L, (lua_Integer)st.folds);
  lua_setfield(L, -2, "folds");
  return 1;
}

/* testing.open_pg(conninfo [, schema_dir]) -> migrations applied: that PostgreSQL database,
 * emptied, in place of the current database (schema_dir false: no migrations). */
static int t_open_pg(lua_State *L) {
  test_state *ts = TS(L);
  const char *conninfo = luaL_checkstring(L, 1);
  const char *schema = lua_toboolean(L, 2) ? luaL_checkstring(L, 2) : lua_isnone(L, 2) ? ts->schema_dir : NULL;
  char *err = NULL;
  int applied = 0;
  int rc = open_pg(ts, conninfo, schema, &applied, &err);
  if (rc != 0) {
    lua_pushfstring(L, "open_pg: %s", err ? err : eng_strerror(rc));
    free(err);
    close_all(ts);
    return lua_error(L);
  }
  lua_pushinteger(L, applied);
  return 1;
}

/* testing.backend() -> "postgresql" when APIENGINE_TEST_DB selects PostgreSQL for open_db, else
 * "sqlite" (db.backend() says what is attached now). */
static int t_backend(lua_State *L) {
  const char *pgdb = getenv("APIENGINE_TEST_DB");
  lua_pushstring(L, pgdb && pgdb[0] ? "postgresql" : "sqlite");
  return 1;
}

/* testing.pg_stats() -> the attached pool's counters (pg.h's eng_pg_stats), or nil. */
static int t_pg_stats(lua_State *L) {
  test_state *ts = TS(L);
  if (!ts->pg) {
    lua_pushnil(L);
    return 1;
  }
  eng_pg_stats st;
  eng_pg_get_stats(ts->pg, &st);
  lua_createtable(L, 0, 10);
  lua_pushinteger(L, st.size);
  lua_setfield(L, -2, "size");
  lua_pushinteger(L, st.idle);
  lua_setfield(L, -2, "idle");
  lua_pushinteger(L, st.running);
  lua_setfield(L, -2, "running");
  lua_pushinteger(L, st.held);
  lua_setfield(L, -2, "held");
  lua_pushinteger(L, st.waiting);
  lua_setfield(L, -2, "waiting");
  lua_pushinteger(L, st.healthy);
  lua_setfield(L, -2, "healthy");
  lua_pushinteger(L, (lua_Integer)st.cancels);
  lua_setfield(L, -2, "cancels");
  return 1;
}

static int t_close_db(lua_State *L) {
  close_all(TS(L));
  return 0;
}

static int t_load_scripts(lua_State *L) {
  test_state *ts = TS(L);
  const char *dir = luaL_checkstring(L, 1);
  lua_Integer load_ms = luaL_optinteger(L, 2, 0); /* the load budget for this load; 0: the default */
  luaL_argcheck(L, load_ms >= 0 && load_ms <= 3600000, 2, "load budget out of range (0..3600000 ms)");
  char *err = NULL;
  eng_runtime_set_load_budget(ts->rt, (int)load_ms);
  int rc = eng_runtime_load_scripts(ts->rt, dir, &err);
  eng_runtime_set_load_budget(ts->rt, 0);
  if (rc != 0) {
    lua_pushstring(L, err ? err : "cannot load scripts");
    free(err);
    return lua_error(L);
  }
  return 0;
}

/* testing.limits{max_body_bytes=, max_header_bytes=, max_url_bytes=} for in-process requests. */
static int t_limits(lua_State *L) {
  test_state *ts = TS(L);
  if (lua_istable(L, 1)) {
    /* A key the in-process client does not apply is refused, never silently ignored. */
    lua_pushnil(L);
    while (lua_next(L, 1)) {
      const char *k = lua_type(L, -2) == LUA_TSTRING ? lua_tostring(L, -2) : "?";
      if (strcmp(k, "max_body_bytes") != 0 && strcmp(k, "max_header_bytes") != 0 && strcmp(k, "max_url_bytes") != 0)
        return luaL_error(L,
                          "spec.app: limits.%s is not a limit of the in-process client (it takes max_body_bytes, "
                          "max_header_bytes, max_url_bytes; budgets: spec.server{args={\"--budget-ms\", ...}})",
                          k);
      lua_pop(L, 1);
    }
    lua_getfield(L, 1, "max_body_bytes");
    ts->limits.max_body_bytes = (size_t)luaL_optinteger(L, -1, (lua_Integer)ts->limits.max_body_bytes);
    lua_getfield(L, 1, "max_header_bytes");
    ts->limits.max_header_bytes = (size_t)luaL_optinteger(L, -1, (lua_Integer)ts->limits.max_header_bytes);
    lua_getfield(L, 1, "max_url_bytes");
    ts->limits.max_url_bytes = (size_t)luaL_optinteger(L, -1, (lua_Integer)ts->limits.max_url_bytes);
    lua_pop(L, 3);
  } else {
    eng_http_limits_default(&ts->limits);
  }
  return 0;
}

static int t_freeze(lua_State *L) {
  eng_clock_freeze(luaL_checkinteger(L, 1));
  return 0;
}
static int t_advance(lua_State *L) {
  eng_clock_advance(luaL_checkinteger(L, 1));
  return 0;
}
static int t_reset_clock(lua_State *L) {
  (void)L;
  eng_clock_reset();
  return 0;
}

/* testing.use_key(master): loads a 32-byte master key (a string); nil unloads the key store,
 * so specs can use known keys and see the state before a key is loaded. */
static int t_use_key(lua_State *L) {
  if (lua_isnoneornil(L, 1)) {
    eng_keys_clear();
    return 0;
  }
  size_t len;
  const char *key = luaL_checklstring(L, 1, &len);
  luaL_argcheck(L, len == ENG_KEY_LEN, 1, "32 bytes expected");
  eng_keys_set((const unsigned char *)key);
  return 0;
}

/* testing.derived_keys() -> token key, seal key (raw), or nothing while no key is loaded. */
static int t_derived_keys(lua_State *L) {
  if (!eng_keys_ready())
    return 0;
  lua_pushlstring(L, (const char *)eng_keys_token_key(), ENG_KEY_LEN);
  lua_pushlstring(L, (const char *)eng_keys_seal_key(), ENG_KEY_LEN);
  return 2;
}

static int t_exe(lua_State *L) {
  char buf[4096];
  ssize_t n = readlink("/proc/self/exe", buf, sizeof buf - 1);
  if (n < 0)
    return luaL_error(L, "readlink /proc/self/exe: %s", strerror(errno));
  lua_pushlstring(L, buf, (size_t)n);
  return 1;
}

static int t_mkdtemp(lua_State *L) {
  char tmpl[] = "/tmp/apiengine-test-XXXXXX";
  if (mkdtemp(tmpl) == NULL)
    return luaL_error(L, "mkdtemp: %s", strerror(errno));
  lua_pushstring(L, tmpl);
  return 1;
}

static int rm_one(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
  (void)st;
  (void)flag;
  (void)ftw;
  return remove(path);
}

static int t_rmtree(lua_State *L) {
  const char *path = luaL_checkstring(L, 1);
  if (strncmp(path, "/tmp/", 5) != 0)
    return luaL_error(L, "rmtree refuses paths outside /tmp: %s", path);
  nftw(path, rm_one, 16, FTW_DEPTH | FTW_PHYS);
  return 0;
}

/* A loopback port that was free a moment ago. */
static int t_free_port(lua_State *L) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  socklen_t len = sizeof a;
  if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof a) != 0 || getsockname(fd, (struct sockaddr *)&a, &len) != 0) {
    if (fd >= 0)
      close(fd);
    return luaL_error(L, "free_port: %s", strerror(errno));
  }
  close(fd);
  lua_pushinteger(L, ntohs(a.sin_port));
  return 1;
}

/* testing.spawn({argv...}, logfile [, env table]) -> pid; stdout and stderr go to logfile. */
static int t_spawn(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  const char *log = luaL_checkstring(L, 2);
  int n = (int)lua_rawlen(L, 1);
  if (n < 1 || n > 62)
    return luaL_error(L, "spawn: argv must have 1..62 entries");
  char *argv[64];
  for (int i = 0; i < n; i++) {
    lua_rawgeti(L, 1, i + 1);
    argv[i] = (char *)luaL_checkstring(L, -1); /* anchored in the argv table */
    lua_pop(L, 1);
  }
  argv[n] = NULL;
  /* Environment: overrides first (getenv takes the first match), then ours. */
  char *envp[512];
  int ne = 0;
  lua_newtable(L); /* anchors the strings */
  int anchor = lua_gettop(L);
  if (lua_istable(L, 3)) {
    lua_pushnil(L);
    while (lua_next(L, 3)) {
      if (lua_type(L, -2) == LUA_TSTRING && ne < 256) {
        lua_pushvalue(L, -1);
        envp[ne++] = (char *)lua_pushfstring(L, "%s=%s", lua_tostring(L, -3), lua_tostring(L, -1));
        lua_rawseti(L, anchor, ne);
        lua_pop(L, 1);
      }
      lua_pop(L, 1);
    }
  }
  for (char **e = environ; *e && ne < 510; e++)
    envp[ne++] = *e;
  envp[ne] = NULL;
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addopen(&fa, 1, log, O_WRONLY | O_CREAT | O_APPEND, 0644);
  posix_spawn_file_actions_adddup2(&fa, 1, 2);
  pid_t pid;
  int rc = posix_spawn(&pid, argv[0], &fa, NULL, argv, envp);
  posix_spawn_file_actions_destroy(&fa);
  if (rc != 0)
    return luaL_error(L, "spawn %s: %s", argv[0], strerror(rc));
  lua_pushinteger(L, pid);
  return 1;
}

static int t_kill(lua_State *L) {
  pid_t pid = (pid_t)luaL_checkinteger(L, 1);
  int sig = (int)luaL_optinteger(L, 2, SIGTERM);
  lua_pushboolean(L, kill(pid, sig) == 0);
  return 1;
}

/* testing.wait(pid, timeout_ms) -> exit code (or 128+signal), or nil on timeout. */
static int t_wait(lua_State *L) {
  pid_t pid = (pid_t)luaL_checkinteger(L, 1);
  lua_Integer timeout = luaL_optinteger(L, 2, 10000);
  for (lua_Integer waited = 0;; waited += 10) {
    int st;
    pid_t r = waitpid(pid, &st, WNOHANG);
    if (r == pid) {
      lua_pushinteger(L, WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st));
      return 1;
    }
    if (r < 0)
      return luaL_error(L, "waitpid: %s", strerror(errno));
    if (waited >= timeout)
      return 0;
    struct timespec ts = {0, 10 * 1000 * 1000};
    nanosleep(&ts, NULL);
  }
}

static int t_sleep(lua_State *L) {
  lua_Integer ms = luaL_checkinteger(L, 1);
  struct timespec ts = {(time_t)(ms / 1000), (long)(ms % 1000) * 1000000L};
  nanosleep(&ts, NULL);
  return 0;
}

/* testing.limit_clear(): forgets every engine.limit bucket and counter (spec.app does, with
 * its fresh database, so counts from one block never leak into the next). */
static int t_limit_clear(lua_State *L) {
  (void)L;
  eng_limit_clear();
  return 0;
}

static int t_memory(lua_State *L) {
  lua_pushinteger(L, (lua_Integer)eng_runtime_memory(TS(L)->rt));
  return 1;
}

static int open_testing(lua_State *L) {
  static const luaL_Reg fns[] = {{"request", t_request},
                                 {"requests", t_requests},
                                 {"open_db", t_open_db},
                                 {"fold_levels", t_fold_levels},
                                 {"close_db", t_close_db},
                                 {"open_pg", t_open_pg},
                                 {"backend", t_backend},
                                 {"pg_stats", t_pg_stats},
                                 {"load_scripts", t_load_scripts},
                                 {"limits", t_limits},
                                 {"freeze", t_freeze},
                                 {"advance", t_advance},
                                 {"reset_clock", t_reset_clock},
                                 {"exe", t_exe},
                                 {"mkdtemp", t_mkdtemp},
                                 {"rmtree", t_rmtree},
                                 {"free_port", t_free_port},
                                 {"spawn", t_spawn},
                                 {"kill", t_kill},
                                 {"wait", t_wait},
                                 {"sleep", t_sleep},
                                 {"memory", t_memory},
                                 {"limit_clear", t_limit_clear},
                                 {"use_key", t_use_key},
                                 {"derived_keys", t_derived_keys},
                                 {NULL, NULL}};
  luaL_newlibtable(L, fns);
  lua_pushvalue(L, lua_upvalueindex(1));
  luaL_setfuncs(L, fns, 1);
  test_state *ts = TS(L);
  lua_pushstring(L, ts->scripts_dir);
  lua_setfield(L, -2, "scripts_dir");
  lua_pushstring(L, ts->schema_dir);
  lua_setfield(L, -2, "schema_dir");
  return 1;
}

static int open_spec(lua_State *L) {
  if (luaL_loadbufferx(L, eng_spec_lua, eng_spec_lua_len, "@engine/lua/spec.lua", "t") != LUA_OK)
    return lua_error(L);
  lua_call(L, 0, 1);
  return 1;
}

/* os.exit replacement: unwinds back here so the database and state close cleanly. */
static int test_exit(lua_State *L) {
  int code;
  if (lua_isboolean(L, 1))
    code = lua_toboolean(L, 1) ? 0 : 1;
  else
    code = (int)luaL_optinteger(L, 1, 0);
  lua_pushliteral(L, "apiengine.test.exit");
  lua_pushinteger(L, code);
  lua_rawset(L, LUA_REGISTRYINDEX);
  lua_pushliteral(L, "__apiengine_test_exit__");
  return lua_error(L);
}

/* busted options followed by a separate value (so the value is not taken for a path). */
static int takes_value(const char *opt) {
  static const char *const with_value[] = {"-o",
                                           "--output",
                                           "-p",
                                           "--pattern",
                                           "--exclude-pattern",
                                           "--filter",
                                           "--filter-out",
                                           "-t",
                                           "--tags",
                                           "--exclude-tags",
                                           "-m",
                                           "--lpath",
                                           "--cpath",
                                           "-r",
                                           "--run",
                                           "-e",
                                           "--loaders",
                                           "--helper",
                                           "-C",
                                           "--directory",
                                           "--seed",
                                           "--repeat",
                                           "-f",
                                           "--config-file",
                                           "--lang",
                                           "--name",
                                           "-Xoutput",
                                           "-Xhelper",
                                           NULL};
  if (strchr(opt, '='))
    return 0;
  for (int i = 0; with_value[i]; i++)
    if (strcmp(opt, with_value[i]) == 0)
      return 1;
  return 0;
}

static void usage(void) {
  printf("usage: apiengine test [--scripts DIR] [--schema DIR] [busted options] [PATH...]\n\n"
         "Runs busted specs (default: tests/) inside the engine: engine.db, engine.crypto, ... are\n"
         "the real modules; require \"engine.spec\" gives the spec helper (see README).\n"
         "busted options pass through: --pattern, --filter, --exclude-tags, --tags, -o OUTPUT, ...\n"
         "  --scripts DIR   default scripts directory for spec.app() (default: scripts)\n"
         "  --schema DIR    default migrations directory (default: schema)\n");
}

typedef struct setup_ctx {
  test_state *ts;
  char **bargs;
  int nb;
} setup_ctx;

/* The test runner's additions to the runtime's state (engine.testing, engine.spec,
 * os.exit, arg), under lua_pcall so a memory error is a message, not a panic. */
static int setup_p(lua_State *L) {
  const setup_ctx *sc = lua_touserdata(L, 1);
  luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_PRELOAD_TABLE);
  lua_pushlightuserdata(L, sc->ts);
  lua_pushcclosure(L, open_testing, 1);
  lua_setfield(L, -2, "engine.testing");
  lua_pushcfunction(L, open_spec);
  lua_setfield(L, -2, "engine.spec");
  lua_pop(L, 1);
  lua_getglobal(L, "os");
  lua_pushcfunction(L, test_exit);
  lua_setfield(L, -2, "exit");
  lua_pop(L, 1);

  /* arg as busted expects it */
  lua_createtable(L, sc->nb, 1);
  lua_pushstring(L, "apiengine test");
  lua_rawseti(L, -2, 0);
  for (int i = 0; i < sc->nb; i++) {
    lua_pushstring(L, sc->bargs[i]);
    lua_rawseti(L, -2, i + 1);
  }
  lua_setglobal(L, "arg");
  return 0;
}

/* The shell's APIENGINE_* settings must not reach the specs: a spec states the settings it
 * runs with (spec.app{settings=}, spec.server{env=}), and APIENGINE_ADMIN_KEY=x ./dev test
 * used to fail the specs that create customers. Only the test command's own variables stay
 * (APIENGINE_TEST_DB: the PostgreSQL database testing.open_db uses in place of SQLite). */
static void clean_environment(void) {
  static const char prefix[] = "APIENGINE_";
  char name[256];
  for (size_t i = 0; environ[i] != NULL;) {
    const char *eq = strchr(environ[i], '=');
    size_t n = eq ? (size_t)(eq - environ[i]) : strlen(environ[i]);
    if (strncmp(environ[i], prefix, sizeof prefix - 1) != 0 || n >= sizeof name) {
      i++;
      continue;
    }
    memcpy(name, environ[i], n);
    name[n] = '\0';
    if (strcmp(name, "APIENGINE_TEST_LOG") == 0 || strcmp(name, "APIENGINE_LOG_LEVEL") == 0 ||
        strcmp(name, "APIENGINE_TEST_DB") == 0) {
      i++;
      continue;
    }
    unsetenv(name); /* environ shifts down: look at index i again */
  }
}

int eng_test_main(int argc, char **argv) {
  test_state ts;
  memset(&ts, 0, sizeof ts);
  snprintf(ts.scripts_dir, sizeof ts.scripts_dir, "%s", "scripts");
  snprintf(ts.schema_dir, sizeof ts.schema_dir, "%s", "schema");
  eng_http_limits_default(&ts.limits);
  eng_log_level level = ENG_LOG_WARN;
  const char *lvl = getenv("APIENGINE_LOG_LEVEL");
  if (lvl)
    eng_log_parse_level(lvl, &level);
  eng_log_setup(level, 0);
  /* Engine log lines (expected errors of failure-path specs) would drown busted's
   * report: they go to APIENGINE_TEST_LOG, or nowhere. */
  const char *log_path = getenv("APIENGINE_TEST_LOG");
  int log_fd = open(log_path && *log_path ? log_path : "/dev/null", O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  if (log_fd >= 0)
    eng_log_set_fd(log_fd);
  clean_environment();

  /* Split engine options from busted's. */
  char **bargs = calloc((size_t)argc + 2, sizeof *bargs);
  int nb = 0, has_path = 0;
  for (int i = 2; i < argc; i++) {
    if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
      usage();
      free(bargs);
      return 0;
    }
    if ((strcmp(argv[i], "--scripts") == 0 || strcmp(argv[i], "--schema") == 0) && i + 1 < argc) {
      char *dst = strcmp(argv[i], "--scripts") == 0 ? ts.scripts_dir : ts.schema_dir;
      snprintf(dst, 1024, "%s", argv[i + 1]);
      i++;
      continue;
    }
    bargs[nb++] = argv[i];
    if (argv[i][0] == '-') {
      if (takes_value(argv[i]) && i + 1 < argc)
        bargs[nb++] = argv[++i];
    } else {
      has_path = 1;
    }
  }
  if (!has_path)
    bargs[nb++] = "tests";

  unsigned char key[32];
  eng_crypto_random(key, sizeof key);
  eng_keys_set(key);

  eng_runtime_options ro = {.budget_ms = 1000, .memory_limit = (size_t)256 << 20, .test_mode = 1};
  char *err = NULL;
  if (uv_loop_init(&ts.loop) != 0) {
    fprintf(stderr, "apiengine test: cannot create an event loop\n");
    free(bargs);
    return 1;
  }
  if (eng_runtime_new(&ts.rt, &ro, &err) != 0) {
    fprintf(stderr, "apiengine test: %s\n", err ? err : "cannot create the Lua state");
    free(err);
    free(bargs);
    (void)uv_loop_close(&ts.loop);
    return 1;
  }
  eng_runtime_set_loop(ts.rt, &ts.loop);
  eng_runtime_set_loop_idle(ts.rt, 1); /* spec code runs outside uv_run: engine.db may wait in it */
  lua_State *L = eng_runtime_lua(ts.rt);
  setup_ctx sc = {.ts = &ts, .bargs = bargs, .nb = nb};
  lua_pushcfunction(L, setup_p);
  lua_pushlightuserdata(L, &sc);
  int st = lua_pcall(L, 1, 0, 0);
  free(bargs);
  if (st != LUA_OK) {
    fprintf(stderr, "apiengine test: %s\n", lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : "set-up failed");
    eng_runtime_free(ts.rt);
    (void)uv_loop_close(&ts.loop);
    if (log_fd >= 0)
      close(log_fd);
    return 1;
  }

  static const char boot[] = "require 'busted.runner'({ standalone = false })";
  int code = 0;
  if (luaL_loadbufferx(L, boot, sizeof boot - 1, "@apiengine-test", "t") != LUA_OK || lua_pcall(L, 0, 0, 0) != LUA_OK) {
    const char *msg = lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : NULL;
    if (msg && strstr(msg, "__apiengine_test_exit__")) {
      lua_pushliteral(L, "apiengine.test.exit");
      lua_rawget(L, LUA_REGISTRYINDEX);
      code = (int)lua_tointeger(L, -1);
    } else {
      fprintf(stderr, "apiengine test: %s\n", msg ? msg : "error");
      code = 1;
    }
  }
  close_all(&ts);
  uv_run(&ts.loop, UV_RUN_DEFAULT); /* nothing is left waiting: closes what is still closing */
  eng_runtime_free(ts.rt);
  (void)uv_loop_close(&ts.loop);
  if (log_fd >= 0)
    close(log_fd);
  return code;
}
