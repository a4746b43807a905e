/* lua_db.c - the Lua module `engine.db` over the worker's eng_db (db.h).
 *
 * Every statement runs inside a protected call (statement_body under lua_pcall), so whatever
 * raises while it is mid-step - a SQLite error, a bad parameter, running out of memory while
 * building rows - the statement is reset and its bindings cleared before the error goes on.
 * Nothing malloc'd is held across a call that can raise: rows are built on the Lua stack.
 *
 * Column names are cached per prepared statement in a registry table keyed by the statement
 * pointer; an entry is trusted only while the statement's process-unique serial (db.h) and its
 * SQLite re-prepare count are unchanged, so an evicted-and-reprepared statement at the same
 * address, or one SQLite re-prepared after a schema change, gets fresh names. The table holds one
 * entry per statement address ever seen; the allocator reuses the addresses of finalized
 * statements, so in practice it stays near the statement cache's size.
 *
 * The time budget: the runtime's SQLite progress handler interrupts a statement still running
 * past the handler's deadline (lua_runtime.c); the SQLITE_INTERRUPT that comes back is raised as
 * the budget error, not as a db error, so the answer is a 503. The rollback of a failed db.tx is
 * exempt (eng_lua_budget_sql_hold): it must finish. */
#include "lua_db.h"
#include "lua_runtime_int.h"

#include <lauxlib.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "error.h"
#include "log.h"
#include "lua_common.h"
#include "metrics.h"

#define ERROR_MT "engine.db.error"
#define FAILURE_MSG_MAX 512 /* SQLite's message, copied when it must outlive a rollback */

#define SQL_BEGIN "BEGIN IMMEDIATE"
#define SQL_COMMIT "COMMIT"
#define SQL_ROLLBACK "ROLLBACK"
#define SQL_SAVEPOINT "SAVEPOINT eng_tx"
#define SQL_RELEASE "RELEASE eng_tx"
#define SQL_ROLLBACK_TO "ROLLBACK TO eng_tx"

/* Registry keys: their addresses are unique. */
static const char db_key = 'd';    /* light userdata: the attached eng_db (NULL when detached) */
static const char names_key = 'n'; /* table: stmt light userdata -> {names..., [0]=serial, [-1]=reprepares} */

enum { MODE_QUERY, MODE_ONE, MODE_EXEC };

typedef struct call_state {
  eng_db *db;
  sqlite3_stmt *st; /* set as soon as it is fetched, so the caller can reset it on error */
  int mode;
} call_state;

typedef struct db_failure {
  int code;
  char msg[FAILURE_MSG_MAX];
} db_failure;

void eng_lua_db_attach(lua_State *L, eng_db *db) {
  lua_pushlightuserdata(L, db);
  lua_rawsetp(L, LUA_REGISTRYINDEX, &db_key);
}

static eng_db *check_db(lua_State *L) {
  lua_rawgetp(L, LUA_REGISTRYINDEX, &db_key);
  eng_db *db = lua_touserdata(L, -1);
  lua_pop(L, 1);
  if (!db)
    luaL_error(L, "no database connection");
  return db;
}

/* ---- errors ---- */

static const char *error_kind(int code) {
  switch (code) {
  case SQLITE_CONSTRAINT_UNIQUE:
    return "unique";
  case SQLITE_CONSTRAINT_PRIMARYKEY:
    return "primary_key";
  case SQLITE_CONSTRAINT_FOREIGNKEY:
    return "foreign_key";
  case SQLITE_CONSTRAINT_CHECK:
    return "check";
  case SQLITE_CONSTRAINT_NOTNULL:
    return "not_null";
  default:
    break;
  }
  switch (code & 0xff) {
  case SQLITE_BUSY:
    return "busy";
  case SQLITE_READONLY:
  case SQLITE_FULL:
  case SQLITE_IOERR:
    return "unavailable";
  case SQLITE_CONSTRAINT:
    return "constraint";
  default:
    return "error";
  }
}

static int error_tostring(lua_State *L) {
  if (lua_type(L, 1) != LUA_TTABLE || lua_getfield(L, 1, "message") != LUA_TSTRING)
    lua_pushliteral(L, "db: error");
  return 1;
}

static void push_error_mt(lua_State *L) {
  if (luaL_newmetatable(L, ERROR_MT)) {
    lua_pushcfunction(L, error_tostring);
    lua_setfield(L, -2, "__tostring");
    lua_pushboolean(L, 0); /* shared by every db error: no script may change it for the others */
    lua_setfield(L, -2, "__metatable");
  }
}

void eng_lua_db_push_error(lua_State *L, const char *msg, const char *kind, int sql) {
  sql = lua_absindex(L, sql);
  lua_createtable(L, 0, 4);
  lua_pushfstring(L, "db: %s", msg);
  lua_setfield(L, -2, "message");
  lua_pushstring(L, kind);
  lua_setfield(L, -2, "kind");
  lua_pushvalue(L, sql);
  lua_setfield(L, -2, "sql");
  push_error_mt(L);
  lua_setmetatable(L, -2);
}

/* Raises {message = "db: "..msg, code, kind, sql} with the error metatable. sql is the stack
 * index of the SQL string, or 0 to use sql_text. */
static int raise_failure(lua_State *L, int code, const char *msg, int sql, const char *sql_text) {
  if ((code & 0xff) == SQLITE_INTERRUPT)
    eng_lua_budget_check(L); /* our progress handler stopped it: the budget error instead */
  int primary = code & 0xff;
  if (primary == SQLITE_READONLY || primary == SQLITE_FULL || primary == SQLITE_IOERR)
    eng_lua_storage_failed(L, code); /* the database cannot store writes now: a 503, not a 500 */
  if (!sql) {
    lua_pushstring(L, sql_text);
    sql = -1;
  }
  eng_lua_db_push_error(L, msg, error_kind(code), sql);
  lua_pushinteger(L, code);
  lua_setfield(L, -2, "code");
  return lua_error(L);
}

/* The code for a failed eng_db_prepare: SQLite's own, or the closest one for our refusals. */
static int prepare_failure_code(eng_db *db, int rc) {
  if (rc == ENG_ETOOBIG)
    return SQLITE_TOOBIG;
  if (rc == ENG_ENOMEM)
    return SQLITE_NOMEM;
  int code = sqlite3_extended_errcode(eng_db_handle(db));
  return code == SQLITE_OK ? SQLITE_ERROR : code;
}

static int is_db_error(lua_State *L, int idx) {
  if (lua_type(L, idx) != LUA_TTABLE || !lua_getmetatable(L, idx))
    return 0;
  luaL_getmetatable(L, ERROR_MT);
  int same = lua_rawequal(L, -1, -2);
  lua_pop(L, 2);
  return same;
}

static int l_is_error(lua_State *L) {
  lua_pushboolean(L, is_db_error(L, 1));
  return 1;
}

static int l_kind(lua_State *L) {
  if (!is_db_error(L, 1)) {
    lua_pushnil(L);
    return 1;
  }
  lua_getfield(L, 1, "kind");
  return 1;
}

/* ---- binding ---- */

static void bind_value(lua_State *L, sqlite3_stmt *st, int param, int idx) {
  int rc;
  switch (lua_type(L, idx)) {
  case LUA_TNIL:
    rc = sqlite3_bind_null(st, param);
    break;
  case LUA_TBOOLEAN:
    rc = sqlite3_bind_int(st, param, lua_toboolean(L, idx));
    break;
  case LUA_TNUMBER:
    if (lua_isinteger(L, idx))
      rc = sqlite3_bind_int64(st, param, (sqlite3_int64)lua_tointeger(L, idx));
    else
      rc = sqlite3_bind_double(st, param, (double)lua_tonumber(L, idx));
    break;
  case LUA_TSTRING: {
    size_t len;
    const char *s = lua_tolstring(L, idx, &len);
    rc = sqlite3_bind_text64(st, param, s, (sqlite3_uint64)len, SQLITE_TRANSIENT, SQLITE_UTF8);
    break;
  }
  case LUA_TLIGHTUSERDATA:
    if (eng_lua_isnull(L, idx)) {
      rc = sqlite3_bind_null(st, param);
      break;
    }
    /* fall through */
  default:
    luaL_error(L, "cannot bind a %s (parameter %d)", luaL_typename(L, idx), param);
    return;
  }
  if (rc != SQLITE_OK)
    raise_failure(L, rc, sqlite3_errstr(rc), 1, NULL);
}

/* Binds the call's extra arguments (stack first .. first+nargs-1). A single table argument binds
 * :name/@name/$name parameters by name (raw lookups without the prefix; a missing key is NULL);
 * otherwise the arguments bind ?/?NNN in order and their count must match. */
static void bind_params(lua_State *L, sqlite3_stmt *st, int first, int nargs) {
  int np = sqlite3_bind_parameter_count(st);
  const char *name = np > 0 ? sqlite3_bind_parameter_name(st, 1) : NULL;
  if (nargs == 1 && lua_type(L, first) == LUA_TTABLE && name && name[0] != '?') {
    for (int i = 1; i <= np; i++) {
      name = sqlite3_bind_parameter_name(st, i);
      if (!name || name[0] == '?')
        luaL_error(L, "parameter %d is positional, but parameters were given by name", i);
      lua_pushstring(L, name + 1);
      lua_rawget(L, first);
      bind_value(L, st, i, lua_gettop(L));
      lua_pop(L, 1);
    }
    return;
  }
  if (nargs != np)
    luaL_error(L, "statement has %d parameter%s, got %d value%s", np, np == 1 ? "" : "s", nargs, nargs == 1 ? "" : "s");
  for (int i = 1; i <= np; i++)
    bind_value(L, st, i, first + i - 1);
}

/* ---- rows ---- */

static void push_column(lua_State *L, sqlite3_stmt *st, int i) {
  switch (sqlite3_column_type(st, i)) {
  case SQLITE_INTEGER:
    lua_pushinteger(L, (lua_Integer)sqlite3_column_int64(st, i));
    break;
  case SQLITE_FLOAT:
    lua_pushnumber(L, (lua_Number)sqlite3_column_double(st, i));
    break;
  case SQLITE_TEXT:
  case SQLITE_BLOB: {
    /* column_text/blob first, then column_bytes (SQLite's documented order). */
    const void *p = sqlite3_column_type(st, i) == SQLITE_TEXT ? (const void *)sqlite3_column_text(st, i)
                                                              : sqlite3_column_blob(st, i);
    int n = sqlite3_column_bytes(st, i);
    if (!p && n > 0)
      luaL_error(L, "db: out of memory reading column %d", i + 1);
    lua_pushlstring(L, p ? p : "", (size_t)n);
    break;
  }
  default:
    eng_lua_pushnull(L);
    break;
  }
}

/* Pushes st's column-name table (t[1..ncols]) from the cache, or builds and caches it. Called
 * after the first step, when SQLite has re-prepared the statement if the schema changed. */
static void push_names(lua_State *L, sqlite3_stmt *st, uint64_t serial, int ncols) {
  lua_Integer reprepares = sqlite3_stmt_status(st, SQLITE_STMTSTATUS_REPREPARE, 0);
  if (lua_rawgetp(L, LUA_REGISTRYINDEX, &names_key) != LUA_TTABLE) {
    lua_pop(L, 1);
    lua_newtable(L);
    lua_pushvalue(L, -1);
    lua_rawsetp(L, LUA_REGISTRYINDEX, &names_key);
  }
  int cache = lua_gettop(L);
  if (lua_rawgetp(L, cache, st) == LUA_TTABLE) {
    int t = lua_gettop(L);
    lua_rawgeti(L, t, 0);
    lua_rawgeti(L, t, -1);
    int fresh = lua_tointeger(L, -2) == (lua_Integer)serial && lua_tointeger(L, -1) == reprepares &&
                lua_rawlen(L, t) == (lua_Unsigned)ncols;
    lua_pop(L, 2);
    if (fresh) {
      lua_remove(L, cache);
      return;
    }
  }
  lua_pop(L, 1);
  lua_createtable(L, ncols, 2);
  for (int i = 0; i < ncols; i++) {
    const char *name = sqlite3_column_name(st, i);
    if (!name)
      luaL_error(L, "db: out of memory reading column names");
    lua_pushstring(L, name);
    lua_rawseti(L, -2, i + 1);
  }
  lua_pushinteger(L, (lua_Integer)serial);
  lua_rawseti(L, -2, 0);
  lua_pushinteger(L, reprepares);
  lua_rawseti(L, -2, -1);
  lua_pushvalue(L, -1);
  lua_rawsetp(L, cache, st);
  lua_remove(L, cache);
}

/* Pushes the current row as {name = value}; duplicate column names keep the last value. */
static void push_row(lua_State *L, sqlite3_stmt *st, int ncols, int names) {
  lua_createtable(L, 0, ncols);
  for (int i = 0; i < ncols; i++) {
    lua_rawgeti(L, names, i + 1);
    push_column(L, st, i);
    lua_rawset(L, -3);
  }
}

/* ---- statements ---- */

static int raise_step_failure(lua_State *L, eng_db *db, int rc) {
  sqlite3 *h = eng_db_handle(db);
  int code = sqlite3_extended_errcode(h);
  return raise_failure(L, code != SQLITE_OK ? code : rc, sqlite3_errmsg(h), 1, NULL);
}

/* apiengine_db_query_duration_seconds: each statement a script runs (and db.tx's BEGIN, COMMIT,
 * ROLLBACK), from before its first step to after its last, on the monotonic clock; for db.query
 * that includes reading its rows into Lua. SQLite's own profile timing reads the VFS clock, to the
 * millisecond. Two clock reads (vDSO, tens of ns) a statement, none when metrics are off. */
static uint64_t query_start(void) {
  if (!eng_metrics_enabled())
    return 0;
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec + 1; /* never 0 */
}

static void query_done(uint64_t t0) {
  if (t0 == 0)
    return;
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  uint64_t now = (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec + 1;
  eng_metrics_db_query((double)(now - t0) / 1e9);
}

/* Protected part of query/one/exec. Stack: sql, params..., call_state light userdata. */
static int statement_body(lua_State *L) {
  call_state *cs = lua_touserdata(L, -1);
  lua_pop(L, 1);
  int nargs = lua_gettop(L) - 1;
  size_t len;
  const char *sql = lua_tolstring(L, 1, &len);
  const char *emsg = NULL;
  uint64_t serial = 0;
  int rc = eng_db_prepare_ex(cs->db, sql, len, &cs->st, &serial, &emsg);
  if (rc != 0)
    return raise_failure(L, prepare_failure_code(cs->db, rc), emsg, 1, NULL);
  sqlite3_stmt *st = cs->st;
  bind_params(L, st, 2, nargs);

  if (cs->mode == MODE_EXEC) {
    sqlite3 *h = eng_db_handle(cs->db);
    sqlite3_int64 before = sqlite3_total_changes64(h);
    uint64_t t0 = query_start();
    while ((rc = sqlite3_step(st)) == SQLITE_ROW)
      ;
    query_done(t0);
    if (rc != SQLITE_DONE)
      return raise_step_failure(L, cs->db, rc);
    /* sqlite3_changes64 keeps the count of the last INSERT/UPDATE/DELETE, so a statement that
     * changed nothing (DDL, a SELECT, an UPDATE matching no row) must report 0 itself. */
    lua_pushinteger(L, sqlite3_total_changes64(h) != before ? sqlite3_changes64(h) : 0);
    lua_pushinteger(L, sqlite3_last_insert_rowid(h));
    return 2;
  }

  /* The column count, like the names, is read after the first step: SQLite re-prepares a
   * statement during the step when the schema changed (SELECT * after ADD COLUMN). */
  int ncols = 0;
  int names = 0;
  if (cs->mode == MODE_ONE) {
    uint64_t t0 = query_start();
    rc = sqlite3_step(st);
    query_done(t0);
    if (rc == SQLITE_DONE) {
      lua_pushnil(L);
      return 1;
    }
    if (rc != SQLITE_ROW)
      return raise_step_failure(L, cs->db, rc);
    ncols = sqlite3_column_count(st);
    push_names(L, st, serial, ncols);
    push_row(L, st, ncols, lua_gettop(L));
    return 1;
  }

  lua_newtable(L);
  eng_lua_push_array_mt(L);
  lua_setmetatable(L, -2);
  int result = lua_gettop(L);
  lua_Integer n = 0;
  uint64_t t0 = query_start();
  while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
    if (!names) {
      ncols = sqlite3_column_count(st);
      push_names(L, st, serial, ncols);
      names = lua_gettop(L);
    }
    push_row(L, st, ncols, names);
    lua_rawseti(L, result, ++n);
  }
  query_done(t0);
  if (rc != SQLITE_DONE)
    return raise_step_failure(L, cs->db, rc);
  lua_settop(L, result);
  return 1;
}

static int run_statement(lua_State *L, int mode) {
  call_state cs = {check_db(L), NULL, mode};
  luaL_checktype(L, 1, LUA_TSTRING);
  int n = lua_gettop(L);
  lua_pushcfunction(L, statement_body);
  lua_insert(L, 1);
  lua_pushlightuserdata(L, &cs);
  int status = lua_pcall(L, n + 1, LUA_MULTRET, 0);
  if (cs.st) {
    /* Ends the read transaction a half-read query holds and frees the bound copies now. */
    sqlite3_reset(cs.st);
    sqlite3_clear_bindings(cs.st);
  }
  if (status != LUA_OK)
    return lua_error(L);
  return lua_gettop(L);
}

/* Protected part of exec_many. Stack: sql, rows, consts (table or nil), call_state. */
static int exec_many_body(lua_State *L) {
  call_state *cs = lua_touserdata(L, -1);
  lua_pop(L, 1);
  size_t len;
  const char *sql = lua_tolstring(L, 1, &len);
  const char *emsg = NULL;
  int rc = eng_db_prepare(cs->db, sql, len, &cs->st, &emsg);
  if (rc != 0)
    return raise_failure(L, prepare_failure_code(cs->db, rc), emsg, 1, NULL);
  sqlite3_stmt *st = cs->st;
  sqlite3 *h = eng_db_handle(cs->db);
  int np = sqlite3_bind_parameter_count(st);
  const char *first = np > 0 ? sqlite3_bind_parameter_name(st, 1) : NULL;
  int by_name = first && first[0] != '?';
  int has_consts = lua_istable(L, 3);
  int names = lua_gettop(L) + 1; /* the parameter names as Lua strings, pushed once */
  luaL_checkstack(L, np + 4, "too many parameters");
  for (int i = 1; by_name && i <= np; i++) {
    const char *name = sqlite3_bind_parameter_name(st, i);
    if (!name || name[0] == '?')
      luaL_error(L, "parameter %d is positional, but parameters were given by name", i);
    lua_pushstring(L, name + 1);
  }
  lua_Integer n = (lua_Integer)lua_rawlen(L, 2), changed = 0;
  for (lua_Integer r = 1; r <= n; r++) {
    if (lua_rawgeti(L, 2, r) != LUA_TTABLE)
      luaL_error(L, "db.exec_many: row %d is a %s, not a table", (int)r, luaL_typename(L, -1));
    int row = lua_gettop(L);
    if (!by_name && (lua_Integer)lua_rawlen(L, row) > np)
      luaL_error(L, "db.exec_many: row %d has more values than the statement's %d parameters", (int)r, np);
    for (int i = 1; i <= np; i++) {
      if (by_name) {
        lua_pushvalue(L, names + i - 1);
        if (lua_rawget(L, row) == LUA_TNIL && has_consts) {
          lua_pop(L, 1);
          lua_pushvalue(L, names + i - 1);
          lua_rawget(L, 3);
        }
      } else {
        lua_rawgeti(L, row, i);
      }
      bind_value(L, st, i, lua_gettop(L));
      lua_pop(L, 1);
    }
    lua_pop(L, 1);
    sqlite3_int64 before = sqlite3_total_changes64(h);
    uint64_t t0 = query_start();
    while ((rc = sqlite3_step(st)) == SQLITE_ROW)
      ;
    query_done(t0);
    if (rc != SQLITE_DONE)
      return raise_step_failure(L, cs->db, rc);
    if (sqlite3_total_changes64(h) != before)
      changed += sqlite3_changes64(h);
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
  }
  lua_pushinteger(L, changed);
  return 1;
}

/* db.exec_many(sql, rows [, consts]) -> total changes: runs one statement once per row. */
static int l_exec_many(lua_State *L) {
  if (eng_lua_db_pg(L))
    return eng_lua_pg_exec_many(L);
  call_state cs = {check_db(L), NULL, MODE_EXEC};
  luaL_checktype(L, 1, LUA_TSTRING);
  luaL_checktype(L, 2, LUA_TTABLE);
  if (!lua_isnoneornil(L, 3))
    luaL_checktype(L, 3, LUA_TTABLE);
  lua_settop(L, 3);
  lua_pushcfunction(L, exec_many_body);
  lua_insert(L, 1);
  lua_pushlightuserdata(L, &cs);
  int status = lua_pcall(L, 4, 1, 0);
  if (cs.st) {
    sqlite3_reset(cs.st);
    sqlite3_clear_bindings(cs.st);
  }
  if (status != LUA_OK)
    return lua_error(L);
  return 1;
}

/* With a PostgreSQL pool attached, the calls go to lua_db_pg.c. */
static int l_query(lua_State *L) {
  eng_pg *pg = eng_lua_db_pg(L);
  return pg ? eng_lua_pg_query(L, pg) : run_statement(L, MODE_QUERY);
}
static int l_one(lua_State *L) {
  eng_pg *pg = eng_lua_db_pg(L);
  return pg ? eng_lua_pg_one(L, pg) : run_statement(L, MODE_ONE);
}
static int l_exec(lua_State *L) {
  eng_pg *pg = eng_lua_db_pg(L);
  return pg ? eng_lua_pg_exec(L, pg) : run_statement(L, MODE_EXEC);
}

static int l_backend(lua_State *L) {
  lua_pushstring(L, eng_lua_db_pg(L) ? "postgresql" : "sqlite");
  return 1;
}

/* ---- transactions ---- */

static void set_failure(db_failure *f, int code, const char *msg) {
  f->code = code;
  snprintf(f->msg, sizeof f->msg, "%s", msg ? msg : "unknown error");
}

/* Runs a transaction-control statement in C (nothing here raises). */
static int run_control(eng_db *db, const char *sql, db_failure *f) {
  sqlite3 *h = eng_db_handle(db);
  sqlite3_stmt *st;
  const char *emsg = NULL;
  int rc = eng_db_prepare(db, sql, strlen(sql), &st, &emsg);
  if (rc != 0) {
    set_failure(f, prepare_failure_code(db, rc), emsg);
    return -1;
  }
  uint64_t t0 = query_start();
  rc = sqlite3_step(st);
  query_done(t0);
  if (rc != SQLITE_DONE) {
    int code = sqlite3_extended_errcode(h);
    set_failure(f, code != SQLITE_OK ? code : rc, sqlite3_errmsg(h));
  }
  sqlite3_reset(st);
  return rc == SQLITE_DONE ? 0 : -1;
}

/* Undoes the transaction (or savepoint) db.tx opened. SQLite may already have rolled the whole
 * transaction back by itself (on some I/O or memory errors, or an interrupted write): then there
 * is nothing to undo. Runs even past the deadline (the budget's progress handler holds off). */
static void undo_tx(lua_State *L, eng_db *db, int nested) {
  db_failure f;
  if (sqlite3_get_autocommit(eng_db_handle(db)))
    return;
  eng_lua_budget_sql_hold(L, 1);
  if (nested) {
    if (run_control(db, SQL_ROLLBACK_TO, &f) != 0 || run_control(db, SQL_RELEASE, &f) != 0)
      eng_log_warn("db: rolling back a nested transaction failed: %s", f.msg);
  } else if (run_control(db, SQL_ROLLBACK, &f) != 0) {
    eng_log_warn("db: rolling back a transaction failed: %s", f.msg);
  }
  eng_lua_budget_sql_hold(L, -1);
}

/* db.tx(fn, ...): fn(...) inside BEGIN IMMEDIATE, or inside a savepoint when a transaction is
 * already open. fn must not yield (lua_pcall forbids it, which is right: a transaction must not
 * stay open while the worker serves another request on the same connection). */
static int l_tx(lua_State *L) {
  if (eng_lua_db_pg(L))
    return eng_lua_pg_tx(L);
  eng_db *db = check_db(L);
  luaL_checktype(L, 1, LUA_TFUNCTION);
  int nested = !sqlite3_get_autocommit(eng_db_handle(db));
  const char *begin = nested ? SQL_SAVEPOINT : SQL_BEGIN;
  const char *end = nested ? SQL_RELEASE : SQL_COMMIT;
  db_failure f;

  if (run_control(db, begin, &f) != 0)
    return raise_failure(L, f.code, f.msg, 0, begin);
  int status = lua_pcall(L, lua_gettop(L) - 1, LUA_MULTRET, 0);
  if (status != LUA_OK) {
    undo_tx(L, db, nested);
    return lua_error(L); /* the original error object, unchanged */
  }
  if (run_control(db, end, &f) != 0) {
    undo_tx(L, db, nested);
    return raise_failure(L, f.code, f.msg, 0, end);
  }
  return lua_gettop(L);
}

int eng_luaopen_db(lua_State *L) {
  static const luaL_Reg fns[] = {
      {"query", l_query},
      {"one", l_one},
      {"exec", l_exec},
      {"tx", l_tx},
      {"is_error", l_is_error},
      {"kind", l_kind},
      {"exec_many", l_exec_many},
      {"backend", l_backend},
      {NULL, NULL},
  };
  push_error_mt(L);
  lua_pop(L, 1);
  eng_lua_push_array_mt(L);
  lua_pop(L, 1);
  luaL_newlib(L, fns);
  return 1;
}
