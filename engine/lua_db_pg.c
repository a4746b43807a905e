/* lua_db_pg.c - engine.db on PostgreSQL: the same Lua API as lua_db.c, over the worker's pool
 * (pg.h), never blocking the worker's loop.
 *
 * Waiting: a statement is submitted to the pool and the caller waits for its callback in one of
 * two ways. A route handler yields (eng_lua_async_yield with a continuation): the worker serves
 * other requests meanwhile and the handler resumes in query_k, which turns the result into Lua
 * values. Where nothing may yield and the owner's loop is idle (script load at start-up, spec
 * code, the CLI: eng_lua_can_run_loop), the call runs the loop itself until the callback fires.
 * Anywhere else (a request hook, the error hook, a coroutine the script made, xpcall's handler, a
 * reload inside a running worker) it raises before submitting anything.
 *
 * Ownership: a submitted statement's wait (pgwait) is malloc'd; the callback keeps the result in
 * it, and whoever reads it frees both: the continuation, the synchronous waiter, or the async
 * op's stop/drop when the request ends first (deadline, client gone, runtime freed), which
 * abandons a statement still in flight (eng_pg_abandon). The result is read into Lua under a
 * protected call after the wait is freed, so a memory error leaks nothing.
 *
 * Transactions and exec_many are Lua (the chunk below) over three C primitives: acquire (a held
 * connection in a box whose __close and __gc give it back), backoff (a short wait between
 * serialization retries, on the loop) and the statements themselves, which run on the held
 * connection of the calling thread when it has one (the registry's held table: thread -> box).
 * Lua's pcall may yield, so db.tx's function may run queries that suspend the handler. */
#include "lua_db.h"
#include "lua_runtime_int.h"

#include <lauxlib.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "lua_common.h"
#include "pg.h"
#include "text.h"

#define BOX_MT "engine.db.pgconn"
#define TX_ATTEMPTS 10        /* db.tx runs its function at most this often on serialization failures */
#define TX_BACKOFF_MAX_MS 20  /* each retry waits a random 1..attempt*5 ms, at most this */
#define SYNC_TIMEOUT_MS 60000 /* a synchronous wait without a budget (spec code, the CLI) */

/* Registry keys: their addresses are unique. */
static const char pg_key = 'p';   /* light userdata: the attached eng_pg (NULL when detached) */
static const char held_key = 'h'; /* table (weak keys): thread -> box of the connection its db.tx holds */
static const char api_key = 'a';  /* table: the Lua half (tx, exec_many) */

enum { MODE_QUERY, MODE_ONE, MODE_EXEC, MODE_ACQUIRE, MODE_SLEEP };

/* A held connection as Lua sees it. */
typedef struct pgbox {
  eng_pg *pg;        /* the pool it came from: a box that outlives its pool gives nothing back */
  eng_pg_conn *conn; /* NULL once given back */
} pgbox;

/* One submitted wait; see the ownership note at the top. */
typedef struct pgwait {
  int mode;
  int done;
  eng_pg_req *req;      /* in flight, or NULL */
  eng_pg_result *res;   /* the callback's result: kept (ours to free) unless borrowed */
  int borrowed;         /* res is the pool's: the continuation runs inside the callback, which frees it */
  pgbox *box;           /* MODE_ACQUIRE: where the held connection goes (anchored on the waiter's stack) */
  eng_pending *p;       /* the suspended request to wake, or NULL (synchronous) */
  lua_State *main;      /* the state's main thread, for the registry refs */
  int sql_ref, box_ref; /* registry refs of the SQL text and (MODE_ACQUIRE) the box: a continuation
                           does not see the stack of the call that yielded */
} pgwait;

void eng_lua_db_attach_pg(lua_State *L, eng_pg *pg) {
  lua_pushlightuserdata(L, pg);
  lua_rawsetp(L, LUA_REGISTRYINDEX, &pg_key);
}

eng_pg *eng_lua_db_pg(lua_State *L) {
  lua_rawgetp(L, LUA_REGISTRYINDEX, &pg_key);
  eng_pg *pg = lua_touserdata(L, -1);
  lua_pop(L, 1);
  return pg;
}

static pgbox *held_box(lua_State *L) {
  if (lua_rawgetp(L, LUA_REGISTRYINDEX, &held_key) != LUA_TTABLE) {
    lua_pop(L, 1);
    return NULL;
  }
  lua_pushthread(L);
  lua_rawget(L, -2);
  pgbox *b = lua_touserdata(L, -1);
  lua_pop(L, 2);
  return b && b->conn ? b : NULL;
}

int eng_lua_db_pg_in_tx(lua_State *L) { return eng_lua_db_pg(L) != NULL && held_box(L) != NULL; }

/* ---- waiting ---- */

/* A wait for L's caller; the SQL text is on L's top (popped). Raises when out of memory. */
static pgwait *wait_new(lua_State *L, int mode) {
  lua_State *main = eng_rt(L)->L;
  int sql_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  pgwait *w = calloc(1, sizeof *w);
  if (w == NULL) {
    luaL_unref(L, LUA_REGISTRYINDEX, sql_ref);
    luaL_error(L, "db: out of memory");
    return NULL;
  }
  w->mode = mode;
  w->main = main;
  w->sql_ref = sql_ref;
  w->box_ref = LUA_NOREF;
  return w;
}

static void wait_free(pgwait *w) {
  if (w->res && !w->borrowed)
    eng_pg_result_free(w->res);
  luaL_unref(w->main, LUA_REGISTRYINDEX, w->sql_ref); /* does not allocate */
  luaL_unref(w->main, LUA_REGISTRYINDEX, w->box_ref);
  free(w);
}

/* The pool's callback. A suspended handler is resumed right here (its continuation reads res
 * while the pool still owns it); a synchronous waiter reads it after the callback has returned,
 * so it keeps it. */
static void on_done(eng_pg_result *res, eng_pg_conn *conn, void *data) {
  pgwait *w = data;
  w->req = NULL;
  w->done = 1;
  w->res = res;
  if (w->mode == MODE_ACQUIRE && conn)
    w->box->conn = conn; /* the box (on the waiter's stack) owns it from here on */
  eng_pending *p = w->p;
  w->p = NULL;
  if (p) {
    w->borrowed = 1;
    eng_pending_wake(p); /* runs the continuation, which frees w: do not touch w after this */
  } else {
    eng_pg_result_keep(res);
  }
}

static void backoff_over(uv_timer_t *t) { eng_pending_wake(t->data); }

static int op_start(eng_pending *p, uv_loop_t *loop, lua_Integer arg, void *ctx) {
  (void)loop;
  pgwait *w = ctx;
  if (w->mode == MODE_SLEEP)
    return uv_timer_start(eng_pending_timer(p), backoff_over, (uint64_t)arg, 0) == 0 ? 0 : ENG_EIO;
  w->p = p;
  return 0;
}

/* The request ended while the statement was in flight (or before its wait began). */
static void op_drop(void *ctx) {
  pgwait *w = ctx;
  if (w->req)
    eng_pg_abandon(w->req); /* an acquire not yet delivered gives its connection back */
  wait_free(w);
}

static void op_stop(eng_pending *p, void *ctx) {
  pgwait *w = ctx;
  if (w->mode == MODE_SLEEP)
    uv_timer_stop(eng_pending_timer(p));
  op_drop(ctx);
}

static const eng_async_op query_op = {
    .name = "engine.db", .start = op_start, .stop = op_stop, .drop = op_drop, .in_tx = 1};

/* How the caller will wait: 1 yield, 0 run the loop; raises (before anything is submitted) where
 * it can do neither. */
static int wait_how(lua_State *L) {
  const char *why = eng_lua_async_refusal(L, &query_op);
  if (why == NULL)
    return 1;
  if (eng_lua_can_run_loop(L))
    return 0;
  return luaL_error(L,
                    "engine.db on PostgreSQL: this code cannot wait for the database (%s); a request hook, the "
                    "error hook, a coroutine the script made, xpcall's handler and a reload inside a running "
                    "worker cannot: query from the route handler itself",
                    why);
}

/* The timeout of a statement: what is left of the budget, or SYNC_TIMEOUT_MS outside one. */
static int wait_timeout(lua_State *L) {
  int64_t left = eng_lua_budget_left(L);
  if (left <= 0)
    return SYNC_TIMEOUT_MS;
  return left > ENG_PG_TIMEOUT_MAX_MS ? ENG_PG_TIMEOUT_MAX_MS : (int)left;
}

static void run_loop_until(lua_State *L, pgwait *w) {
  uv_loop_t *loop = eng_rt(L)->loop;
  while (!w->done)
    uv_run(loop, UV_RUN_ONCE);
}

/* ---- errors ---- */

/* Pushes the error table lua_db.c raises for SQLite ({message, kind, sql}, its metatable) with
 * code = the SQLSTATE (none for the pool's own errors). */
static void push_error(lua_State *L, const char *msg, const char *sqlstate, const char *kind, int sql) {
  eng_lua_db_push_error(L, msg, kind, sql);
  if (sqlstate && sqlstate[0]) {
    lua_pushstring(L, sqlstate);
    lua_setfield(L, -2, "code");
  }
}

/* ---- reading a result ---- */

static void push_value(lua_State *L, const eng_pg_result *res, int row, int col) {
  switch (eng_pg_result_type(res, row, col)) {
  case ENG_PG_INT:
  case ENG_PG_BOOL: /* 0/1, as SQLite keeps booleans */
    lua_pushinteger(L, (lua_Integer)eng_pg_result_int(res, row, col));
    break;
  case ENG_PG_FLOAT:
    lua_pushnumber(L, (lua_Number)eng_pg_result_float(res, row, col));
    break;
  case ENG_PG_BLOB: {
    size_t n = eng_pg_result_blob_len(res, row, col);
    luaL_Buffer b;
    unsigned char *dst = (unsigned char *)luaL_buffinitsize(L, &b, n);
    eng_pg_result_blob(res, row, col, dst);
    luaL_pushresultsize(&b, n);
    break;
  }
  case ENG_PG_TEXT: {
    size_t n = 0;
    const char *s = eng_pg_result_text(res, row, col, &n);
    lua_pushlstring(L, s ? s : "", n);
    break;
  }
  default:
    eng_lua_pushnull(L);
    break;
  }
}

static void push_row(lua_State *L, const eng_pg_result *res, int row, int ncols, int names) {
  lua_createtable(L, 0, ncols);
  for (int c = 0; c < ncols; c++) {
    lua_rawgeti(L, names, c + 1);
    push_value(L, res, row, c);
    lua_rawset(L, -3);
  }
}

typedef struct conv {
  eng_pg_result *res;
  int mode;
  int failed;
} conv;

/* Pushes the results of c->res for c->mode, or (c->failed) the error table; under lua_pcall with
 * the conv and the SQL text (for the error's sql field) as its arguments. */
static int convert_p(lua_State *L) {
  conv *c = lua_touserdata(L, 1);
  const eng_pg_result *res = c->res;
  if (eng_pg_result_code(res) != 0) {
    c->failed = 1;
    push_error(L, eng_pg_result_message(res), eng_pg_result_sqlstate(res), eng_pg_kind_name(eng_pg_result_kind(res)),
               2);
    return 1;
  }
  if (c->mode == MODE_ACQUIRE)
    return 0;
  int rows = eng_pg_result_rows(res), ncols = eng_pg_result_cols(res);
  if (c->mode == MODE_EXEC) {
    lua_pushinteger(L, (lua_Integer)eng_pg_result_affected(res));
    if (rows > 0 && ncols > 0) /* RETURNING: its first column of the first row */
      push_value(L, res, 0, 0);
    else
      lua_pushnil(L);
    return 2;
  }
  if (c->mode == MODE_ONE && rows == 0) {
    lua_pushnil(L);
    return 1;
  }
  lua_createtable(L, ncols, 0);
  int names = lua_gettop(L);
  for (int i = 0; i < ncols; i++) {
    lua_pushstring(L, eng_pg_result_name(res, i));
    lua_rawseti(L, names, i + 1);
  }
  if (c->mode == MODE_ONE) {
    push_row(L, res, 0, ncols, names);
    return 1;
  }
  lua_createtable(L, rows, 0);
  eng_lua_push_array_mt(L);
  lua_setmetatable(L, -2);
  for (int r = 0; r < rows; r++) {
    push_row(L, res, r, ncols, names);
    lua_rawseti(L, -2, r + 1);
  }
  return 1;
}

/* Turns the finished wait w into the caller's results (or raises its error); frees w. */
static int finish(lua_State *L, pgwait *w) {
  eng_pg_result *res = w->res;
  int mode = w->mode, borrowed = w->borrowed;
  w->res = NULL;
  if (!lua_checkstack(L, 6)) {
    wait_free(w);
    if (res && !borrowed)
      eng_pg_result_free(res);
    return luaL_error(L, "db: out of memory");
  }
  if (mode == MODE_ACQUIRE)
    lua_rawgeti(L, LUA_REGISTRYINDEX, w->box_ref);
  lua_rawgeti(L, LUA_REGISTRYINDEX, w->sql_ref);
  wait_free(w);
  if (mode == MODE_SLEEP) {
    lua_pop(L, 1);
    return 0;
  }
  int sql = lua_gettop(L);
  conv c = {.res = res, .mode = mode};
  lua_pushcfunction(L, convert_p);
  lua_pushlightuserdata(L, &c);
  lua_pushvalue(L, sql);
  int st = lua_pcall(L, 2, LUA_MULTRET, 0);
  eng_pg_kind kind = eng_pg_result_kind(res);
  if (!borrowed)
    eng_pg_result_free(res);
  if (st != LUA_OK)
    return lua_error(L);
  if (c.failed) {
    if (kind == ENG_PG_KIND_TIMEOUT && eng_lua_budget_left(L) != 0)
      return eng_lua_budget_raise(L); /* the request's budget ran out while the database worked */
    if (kind == ENG_PG_KIND_UNAVAILABLE)
      eng_lua_storage_failed(L, ENG_STORAGE_PG_DOWN); /* no server: a 503 if the handler fails */
    return lua_error(L);
  }
  if (mode == MODE_ACQUIRE) {
    lua_settop(L, sql - 1);
    return 1; /* the box */
  }
  return lua_gettop(L) - sql;
}

static int query_k(lua_State *L, int status, lua_KContext k) {
  (void)status;
  return finish(L, (pgwait *)k);
}

/* ---- statements ---- */

typedef struct bind_ctx {
  eng_pg *pg;
  const eng_pg_stmt *st;
  int first, nargs;
  eng_pg_value *vals; /* in a userdata the protected call leaves on the stack */
} bind_ctx;

static void to_value(lua_State *L, int idx, eng_pg_value *v, int param) {
  memset(v, 0, sizeof *v);
  switch (lua_type(L, idx)) {
  case LUA_TNIL:
    v->type = ENG_PG_NULL;
    return;
  case LUA_TBOOLEAN:
    v->type = ENG_PG_BOOL;
    v->i = lua_toboolean(L, idx);
    return;
  case LUA_TNUMBER:
    if (lua_isinteger(L, idx)) {
      v->type = ENG_PG_INT;
      v->i = (int64_t)lua_tointeger(L, idx);
    } else {
      v->type = ENG_PG_FLOAT;
      v->f = (double)lua_tonumber(L, idx);
    }
    return;
  case LUA_TSTRING:
    v->s = lua_tolstring(L, idx, &v->len);
    /* PostgreSQL's text holds neither NUL nor bytes that are not UTF-8: such a string is binary
     * data, sent as bytea. */
    v->type = memchr(v->s, '\0', v->len) || !eng_utf8_valid(v->s, v->len) ? ENG_PG_BLOB : ENG_PG_TEXT;
    return;
  case LUA_TLIGHTUSERDATA:
    if (eng_lua_isnull(L, idx)) {
      v->type = ENG_PG_NULL;
      return;
    }
    /* fall through */
  default:
    luaL_error(L, "cannot bind a %s (parameter %d)", luaL_typename(L, idx), param);
  }
}

/* Fills the values of the statement's $1..$n from the call's arguments, as lua_db.c binds them:
 * one table argument for :name parameters (raw lookups; missing: NULL), else `?` in order.
 * The named values stay on the stack (the strings are borrowed until the submit). */
static int bind_p(lua_State *L) {
  bind_ctx *b = lua_touserdata(L, 1);
  const eng_pg_stmt *st = b->st;
  int np = st->nparams;
  b->vals = lua_newuserdatauv(L, sizeof(eng_pg_value) * (size_t)(np > 0 ? np : 1), 0);
  if (b->nargs == 1 && lua_type(L, b->first) == LUA_TTABLE && st->names) {
    luaL_checkstack(L, np + 4, "too many parameters");
    for (int i = 0; i < np; i++) {
      lua_pushstring(L, st->names[i]);
      lua_rawget(L, b->first);
      to_value(L, lua_gettop(L), &b->vals[i], i + 1);
      lua_pop(L, 1); /* the string stays referenced by the argument table */
    }
    return 1;
  }
  if (st->names && np > 0)
    luaL_error(L, "statement has named parameters (:%s): pass one table of values", st->names[0]);
  if (b->nargs != np)
    luaL_error(L, "statement has %d parameter%s, got %d value%s", np, np == 1 ? "" : "s", b->nargs,
               b->nargs == 1 ? "" : "s");
  for (int i = 0; i < np; i++)
    to_value(L, b->first + i, &b->vals[i], i + 1);
  return 1;
}

static int raise_submit(lua_State *L, int rc, char *err) {
  lua_pushfstring(L, "%s", err ? err : eng_strerror(rc));
  free(err);
  push_error(L, lua_tostring(L, -1), NULL, "error", 1);
  return lua_error(L);
}

/* query/one/exec: stack sql, args... */
static int run_pg(lua_State *L, eng_pg *pg, int mode) {
  luaL_checktype(L, 1, LUA_TSTRING);
  int nargs = lua_gettop(L) - 1;
  int yield = wait_how(L);
  int timeout = wait_timeout(L);
  pgbox *box = held_box(L);
  size_t len;
  const char *sql = lua_tolstring(L, 1, &len);
  char *err = NULL;
  const eng_pg_stmt *st = NULL;
  int rc = eng_pg_statement(pg, sql, len, &st, &err);
  if (rc != 0)
    return raise_submit(L, rc, err);
  bind_ctx b = {.pg = pg, .st = st, .first = 2, .nargs = nargs};
  luaL_checkstack(L, nargs + 4, "db");
  lua_pushcfunction(L, bind_p);
  lua_pushlightuserdata(L, &b);
  for (int i = 2; i <= nargs + 1; i++) /* bind_p sees them at 2.. as well */
    lua_pushvalue(L, i);
  int status = lua_pcall(L, nargs + 1, 1, 0); /* leaves the values' userdata on the stack */
  int np = st->nparams;
  eng_pg_stmt_free(st); /* a no-op for a cached translation */
  if (status != LUA_OK)
    return lua_error(L);
  lua_pushvalue(L, 1);
  pgwait *w = wait_new(L, mode);
  rc = eng_pg_query(pg, box ? box->conn : NULL, sql, len, b.vals, np, timeout, on_done, w, &w->req, &err);
  if (rc != 0) {
    wait_free(w);
    return raise_submit(L, rc, err);
  }
  lua_settop(L, nargs + 1); /* the bound strings were copied by the submit */
  if (yield)
    return eng_lua_async_yield(L, &query_op, 0, w, query_k, (lua_KContext)w);
  run_loop_until(L, w);
  return finish(L, w);
}

int eng_lua_pg_query(lua_State *L, eng_pg *pg) { return run_pg(L, pg, MODE_QUERY); }
int eng_lua_pg_one(lua_State *L, eng_pg *pg) { return run_pg(L, pg, MODE_ONE); }
int eng_lua_pg_exec(lua_State *L, eng_pg *pg) { return run_pg(L, pg, MODE_EXEC); }

/* ---- held connections ---- */

static void box_release(lua_State *L, pgbox *b) {
  if (b->conn && b->pg == eng_lua_db_pg(L))
    (void)eng_pg_release(b->conn); /* rolls back a transaction left open */
  b->conn = NULL;
}

static int box_close(lua_State *L) {
  box_release(L, luaL_checkudata(L, 1, BOX_MT));
  return 0;
}

void eng_lua_db_pg_after_call(lua_State *L) {
  if (lua_rawgetp(L, LUA_REGISTRYINDEX, &held_key) != LUA_TTABLE) {
    lua_pop(L, 1);
    return;
  }
  int held = lua_gettop(L);
  lua_pushnil(L);
  while (lua_next(L, held)) {
    lua_State *th = lua_tothread(L, -2);
    pgbox *b = lua_touserdata(L, -1);
    lua_pop(L, 1);
    if (th && lua_status(th) != LUA_OK && lua_status(th) != LUA_YIELD) { /* died inside db.tx */
      if (b)
        box_release(L, b);
      lua_pushvalue(L, -1);
      lua_pushnil(L);
      lua_rawset(L, held); /* clearing an existing field: allowed during lua_next, no allocation */
    }
  }
  lua_pop(L, 1);
}

/* _acquire() -> box holding a connection of its own (waits like a statement). */
static int l_acquire(lua_State *L) {
  eng_pg *pg = eng_lua_db_pg(L);
  if (!pg)
    return luaL_error(L, "no database connection");
  lua_settop(L, 0);
  lua_pushliteral(L, "(acquire a connection)"); /* the sql of an error */
  int yield = wait_how(L);
  int timeout = wait_timeout(L);
  pgbox *b = lua_newuserdatauv(L, sizeof *b, 0);
  b->pg = pg;
  b->conn = NULL;
  luaL_setmetatable(L, BOX_MT);
  int box_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  pgwait *w = wait_new(L, MODE_ACQUIRE); /* takes the SQL text on the top */
  w->box = b;
  w->box_ref = box_ref; /* w owns the ref from here on */
  if (eng_pg_acquire(pg, timeout, on_done, w, &w->req) != 0) {
    wait_free(w);
    return luaL_error(L, "db: cannot wait for a connection");
  }
  if (yield)
    return eng_lua_async_yield(L, &query_op, 0, w, query_k, (lua_KContext)w);
  run_loop_until(L, w);
  return finish(L, w);
}

/* _release(box): gives the connection back at once (also done by __close and __gc). */
static int l_release(lua_State *L) {
  box_release(L, luaL_checkudata(L, 1, BOX_MT));
  return 0;
}

static void sync_timer_over(uv_timer_t *t) {
  pgwait *w = t->data;
  w->done = 1;
}

static void sync_timer_closed(uv_handle_t *h) {
  pgwait *w = h->data;
  w->done = 1;
}

/* _backoff(ms): waits on the loop (a serialization retry's pause), never sleeping the thread. */
static int l_backoff(lua_State *L) {
  lua_Integer ms = luaL_checkinteger(L, 1);
  luaL_argcheck(L, ms >= 0 && ms <= 1000, 1, "0..1000 ms");
  int yield = wait_how(L);
  lua_pushliteral(L, "(retry back-off)");
  pgwait *w = wait_new(L, MODE_SLEEP);
  if (yield)
    return eng_lua_async_yield(L, &query_op, ms, w, query_k, (lua_KContext)w);
  uv_loop_t *loop = eng_rt(L)->loop;
  uv_timer_t t;
  uv_timer_init(loop, &t);
  t.data = w;
  uv_timer_start(&t, sync_timer_over, (uint64_t)ms, 0);
  run_loop_until(L, w);
  w->done = 0;
  uv_close((uv_handle_t *)&t, sync_timer_closed);
  run_loop_until(L, w);
  wait_free(w);
  return 0;
}

typedef struct names_ctx {
  const eng_pg_stmt *st;
} names_ctx;

static int names_p(lua_State *L) {
  names_ctx *n = lua_touserdata(L, 1);
  const eng_pg_stmt *st = n->st;
  if (!st->names) {
    lua_pushnil(L);
  } else {
    lua_createtable(L, st->nparams, 0);
    for (int i = 0; i < st->nparams; i++) {
      lua_pushstring(L, st->names[i]);
      lua_rawseti(L, -2, i + 1);
    }
  }
  lua_pushinteger(L, st->nparams);
  return 2;
}

/* _names(sql) -> the array of the :names in $ order (nil for `?` parameters), their count. */
static int l_names(lua_State *L) {
  eng_pg *pg = eng_lua_db_pg(L);
  if (!pg)
    return luaL_error(L, "no database connection");
  size_t len;
  const char *sql = luaL_checklstring(L, 1, &len);
  names_ctx n = {NULL};
  char *err = NULL;
  int rc = eng_pg_statement(pg, sql, len, &n.st, &err);
  if (rc != 0)
    return raise_submit(L, rc, err);
  int st = eng_lua_protect(L, names_p, &n, 2);
  eng_pg_stmt_free(n.st);
  if (st != LUA_OK)
    return lua_error(L);
  return 2;
}

/* The policy half: db.tx and db.exec_many. Upvalue-free; gets its primitives as arguments. */
static const char tx_lua[] =
    "local exec, acquire, release, backoff, names, held, attempts, backoff_max = ...\n"
    "local pack, unpack, running, random = table.pack, table.unpack, coroutine.running, math.random\n"
    "local error, pcall, type, rawget = error, pcall, type, rawget\n"
    "local function serialization(e)\n"
    "  return type(e) == 'table' and rawget(e, 'kind') == 'serialization'\n"
    "end\n"
    "local function tx(fn, ...)\n"
    "  if type(fn) ~= 'function' then error('bad argument #1 to \\'tx\\' (function expected, got ' .. type(fn) .. ')', "
    "2) end\n"
    "  local th = running()\n"
    "  local box = held[th]\n"
    "  if box then -- nested: a savepoint, no retry inside\n"
    "    exec('SAVEPOINT eng_tx')\n"
    "    local r = pack(pcall(fn, ...))\n"
    "    if not r[1] then\n"
    "      pcall(exec, 'ROLLBACK TO eng_tx'); pcall(exec, 'RELEASE eng_tx')\n"
    "      error(r[2], 0)\n"
    "    end\n"
    "    exec('RELEASE eng_tx')\n"
    "    return unpack(r, 2, r.n)\n"
    "  end\n"
    "  for attempt = 1, attempts do\n"
    "    local conn <close> = acquire()\n"
    "    held[th] = conn\n"
    "    local r = pack(pcall(function(...)\n"
    "      exec('BEGIN ISOLATION LEVEL SERIALIZABLE')\n"
    "      local out = pack(fn(...))\n"
    "      exec('COMMIT')\n"
    "      return out\n"
    "    end, ...))\n"
    "    held[th] = nil\n"
    "    release(conn) -- rolled back by the pool when still open\n"
    "    if r[1] then return unpack(r[2], 1, r[2].n) end\n"
    "    if attempt == attempts or not serialization(r[2]) then error(r[2], 0) end\n"
    "    local most = attempt * 5\n"
    "    backoff(random(1, most < backoff_max and most or backoff_max))\n"
    "  end\n"
    "end\n"
    "local function exec_many(sql, rows, consts)\n"
    "  if type(sql) ~= 'string' then error('bad argument #1 to \\'exec_many\\' (string expected)', 2) end\n"
    "  if type(rows) ~= 'table' then error('bad argument #2 to \\'exec_many\\' (table expected)', 2) end\n"
    "  if consts ~= nil and type(consts) ~= 'table' then error('bad argument #3 to \\'exec_many\\' (table expected)', "
    "2) end\n"
    "  local ns, np = names(sql)\n"
    "  local total = 0\n"
    "  for i = 1, #rows do\n"
    "    local row = rawget(rows, i)\n"
    "    if type(row) ~= 'table' then error(('db.exec_many: row %d is a %s, not a table'):format(i, type(row)), 2) "
    "end\n"
    "    local n\n"
    "    if ns then\n"
    "      local t = {}\n"
    "      for _, name in ipairs(ns) do\n"
    "        local v = rawget(row, name)\n"
    "        if v == nil and consts then v = rawget(consts, name) end\n"
    "        t[name] = v\n"
    "      end\n"
    "      n = exec(sql, t)\n"
    "    else\n"
    "      if #row > np then error(('db.exec_many: row %d has more values than the statement\\'s %d "
    "parameters'):format(i, np), 2) end\n"
    "      n = exec(sql, unpack(row, 1, np))\n"
    "    end\n"
    "    total = total + n\n"
    "  end\n"
    "  return total\n"
    "end\n"
    "return { tx = tx, exec_many = exec_many }\n";

static int l_exec_plain(lua_State *L) {
  eng_pg *pg = eng_lua_db_pg(L);
  if (!pg)
    return luaL_error(L, "no database connection");
  return run_pg(L, pg, MODE_EXEC);
}

/* Pushes the Lua half's table (built once per state). */
static void push_api(lua_State *L) {
  if (lua_rawgetp(L, LUA_REGISTRYINDEX, &api_key) == LUA_TTABLE)
    return;
  lua_pop(L, 1);
  if (luaL_newmetatable(L, BOX_MT)) {
    lua_pushcfunction(L, box_close);
    lua_setfield(L, -2, "__close");
    lua_pushcfunction(L, box_close);
    lua_setfield(L, -2, "__gc");
    lua_pushboolean(L, 0);
    lua_setfield(L, -2, "__metatable");
  }
  lua_pop(L, 1);
  if (luaL_loadbufferx(L, tx_lua, sizeof tx_lua - 1, "=engine.db(postgresql)", "t") != LUA_OK)
    lua_error(L);
  lua_pushcfunction(L, l_exec_plain);
  lua_pushcfunction(L, l_acquire);
  lua_pushcfunction(L, l_release);
  lua_pushcfunction(L, l_backoff);
  lua_pushcfunction(L, l_names);
  lua_newtable(L); /* held: weak keys, so a dropped thread does not stay */
  lua_createtable(L, 0, 1);
  lua_pushliteral(L, "k");
  lua_setfield(L, -2, "__mode");
  lua_setmetatable(L, -2);
  lua_pushvalue(L, -1);
  lua_rawsetp(L, LUA_REGISTRYINDEX, &held_key);
  lua_pushinteger(L, TX_ATTEMPTS);
  lua_pushinteger(L, TX_BACKOFF_MAX_MS);
  lua_call(L, 8, 1);
  lua_pushvalue(L, -1);
  lua_rawsetp(L, LUA_REGISTRYINDEX, &api_key);
}

static int api_k(lua_State *L, int status, lua_KContext k) {
  (void)status;
  (void)k;
  return lua_gettop(L);
}

/* Calls the Lua half's function name with the arguments; lua_callk, so its queries may yield. */
static int call_api(lua_State *L, const char *name) {
  push_api(L);
  lua_getfield(L, -1, name);
  lua_remove(L, -2);
  lua_insert(L, 1);
  lua_callk(L, lua_gettop(L) - 1, LUA_MULTRET, 0, api_k);
  return lua_gettop(L);
}

int eng_lua_pg_tx(lua_State *L) { return call_api(L, "tx"); }
int eng_lua_pg_exec_many(lua_State *L) { return call_api(L, "exec_many"); }
