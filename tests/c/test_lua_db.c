/* test_lua_db.c - what of the Lua module engine.db only C can check: no statement left mid-step
 * and no transaction left open after failing calls, request cleanup (eng_db_after_request), a
 * detached module, and two workers (threads, each its own connection) writing one file at once.
 * The Lua API itself (parameters, types, errors and their kinds, transactions, exec_many, column
 * names, key sets) is specified in tests/spec/engine_db_spec.lua. Lua-side checks use eq(), which
 * raises on a mismatch; the C side CHECKs that each chunk ran without error. */
#define _XOPEN_SOURCE 700
#include <ftw.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>
#include <lualib.h>

#include "check.h"
#include "tmpdir.h"
#include "db.h"
#include "lua_common.h"
#include "lua_db.h"

static const char prelude[] = "function eq(got, want, what)\n"
                              "  if got ~= want or math.type(got) ~= math.type(want) then\n"
                              "    error(string.format('%s: got %s (%s), want %s (%s)', what, tostring(got),\n"
                              "      math.type(got) or type(got), tostring(want), math.type(want) or type(want)), 2)\n"
                              "  end\n"
                              "end\n"
                              "function fails(f, ...)\n"
                              "  local ok, e = pcall(f, ...)\n"
                              "  if ok then error('expected an error', 2) end\n"
                              "  return e\n"
                              "end\n";

static int traceback(lua_State *L) {
  luaL_traceback(L, L, luaL_tolstring(L, 1, NULL), 1);
  return 1;
}

/* Runs chunk with the given integer arguments; returns 1 when it ran without error. */
static int run(lua_State *L, const char *name, const char *code, int nargs, const lua_Integer *args) {
  lua_pushcfunction(L, traceback);
  int base = lua_gettop(L);
  int ok = luaL_loadbufferx(L, code, strlen(code), name, "t") == LUA_OK;
  if (ok) {
    for (int i = 0; i < nargs; i++)
      lua_pushinteger(L, args[i]);
    ok = lua_pcall(L, nargs, 0, base) == LUA_OK;
  }
  if (!ok)
    fprintf(stderr, "%s: %s\n", name, lua_tostring(L, -1));
  lua_settop(L, base - 1);
  return ok;
}

static lua_State *new_state(eng_db *db) {
  lua_State *L = luaL_newstate();
  luaL_openlibs(L);
  luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_PRELOAD_TABLE);
  lua_pushcfunction(L, eng_luaopen_db);
  lua_setfield(L, -2, "engine.db");
  lua_pop(L, 1);
  eng_lua_pushnull(L);
  lua_setglobal(L, "null");
  eng_lua_db_attach(L, db);
  if (luaL_dostring(L, prelude) != LUA_OK)
    fprintf(stderr, "prelude: %s\n", lua_tostring(L, -1));
  return L;
}

static int busy_statements(sqlite3 *h) {
  int n = 0;
  for (sqlite3_stmt *st = sqlite3_next_stmt(h, NULL); st; st = sqlite3_next_stmt(h, st))
    n += sqlite3_stmt_busy(st) != 0;
  return n;
}

/* Opens tmpdir/name with a Lua state attached to it; returns NULL (after a failed CHECK) if it
 * cannot. */
static eng_db *open_db(const char *name, lua_State **L) {
  eng_db *db = NULL;
  char path[128];
  snprintf(path, sizeof path, "%s/%s", tmpdir, name);
  CHECK_INT(eng_db_open(&db, path, NULL, NULL), 0);
  *L = db ? new_state(db) : NULL;
  return db;
}

/* The Lua side of these calls is asserted in tests/spec/engine_db_spec.lua; what only C can see
 * is checked here: after each failing call, no statement of the connection is left mid-step
 * (sqlite3_stmt_busy) and no transaction is left open (sqlite3_get_autocommit). */
static const char rows_chunk[] =
    "local db = require 'engine.db'\n"
    "db.exec('CREATE TABLE ov (v INTEGER)'); db.exec('INSERT INTO ov VALUES (1), (2)')\n"
    "fails(db.one, 'SELECT ?', {})\n"
    "fails(db.one, 'SELECT ?, ?', 1)\n"
    "fails(db.query, 'SELEC 1')\n"
    "local e = fails(db.query,\n"
    "  'SELECT CASE WHEN v > 1 THEN abs(-9223372036854775807 - 1) ELSE v END AS x FROM ov ORDER BY v')\n"
    "eq(e.message, 'db: integer overflow', 'overflow on the second row')\n"
    "eq(db.one('SELECT v FROM ov ORDER BY v').v, 1, 'one stops after a row')\n"
    "eq(db.query('SELECT * FROM ov')[2].v, 2, 'query')\n";

static const char tx_chunk[] =
    "local db = require 'engine.db'\n"
    "db.exec('CREATE TABLE x (v INTEGER)')\n"
    "fails(db.tx, function() db.exec('INSERT INTO x VALUES (2)'); error('boom', 0) end)\n"
    "fails(db.tx, function() db.exec('INSERT INTO x VALUES (4)'); db.exec('INSERT INTO nope VALUES (1)') end)\n"
    "fails(db.tx, function() db.tx(function() db.exec('INSERT INTO x VALUES (20)') end); error('outer') end)\n"
    "db.exec('CREATE TABLE par (id INTEGER PRIMARY KEY)')\n"
    "db.exec('CREATE TABLE chi (pid INTEGER REFERENCES par(id) DEFERRABLE INITIALLY DEFERRED)')\n"
    "eq(db.kind(fails(db.tx, function() db.exec('INSERT INTO chi VALUES (5)') end)), 'foreign_key', 'commit')\n"
    "local co = coroutine.wrap(function()\n"
    "  return pcall(db.tx, function() db.exec('INSERT INTO x VALUES (30)'); coroutine.yield() end)\n"
    "end)\n"
    "eq(co(), false, 'yield refused')\n";

static const char many_chunk[] =
    "local db = require 'engine.db'\n"
    "db.exec('CREATE TABLE m (id INTEGER PRIMARY KEY, a TEXT, c TEXT NOT NULL)')\n"
    "eq(db.kind(fails(db.tx, function()\n"
    "  db.exec_many('INSERT INTO m (a, c) VALUES (?, ?)', { {'t1', 'ok'}, {'t2', nil}, {'t3', 'never'} })\n"
    "end)), 'not_null', 'failing row')\n"
    "fails(db.exec_many, 'INSERT INTO m (c) VALUES (?)', { {'a'}, 5 })\n"
    "fails(db.exec_many, 'INSERT INTO m (c) VALUES (?)', { {'a', 'b'} })\n";

static void test_failed_calls_leave_no_statement_busy_and_no_transaction_open(void) {
  static const struct {
    const char *name, *code;
  } steps[] = {{"rows", rows_chunk}, {"tx", tx_chunk}, {"many", many_chunk}};
  lua_State *L = NULL;
  eng_db *db = open_db("clean.db", &L);
  if (!db)
    return;
  sqlite3 *h = eng_db_handle(db);
  for (size_t i = 0; i < sizeof steps / sizeof steps[0]; i++) {
    CHECK(run(L, steps[i].name, steps[i].code, 0, NULL));
    CHECK_INT(busy_statements(h), 0);
    CHECK_INT(sqlite3_get_autocommit(h), 1);
  }
  lua_close(L);
  eng_db_close(db);
}

/* A transaction left open by a handler is rolled back after the request (eng_db_after_request). */
static void test_after_request_rolls_back_what_a_script_left_open(void) {
  lua_State *L = NULL;
  eng_db *db = open_db("left_open.db", &L);
  if (!db)
    return;
  sqlite3 *h = eng_db_handle(db);
  CHECK(run(L, "left_open",
            "local db = require 'engine.db'\n"
            "db.exec('CREATE TABLE x (v INTEGER)')\n"
            "db.exec('BEGIN'); db.exec('INSERT INTO x VALUES (99)')\n",
            0, NULL));
  CHECK_INT(sqlite3_get_autocommit(h), 0);
  CHECK_INT(eng_db_after_request(db), 1);
  CHECK_INT(sqlite3_get_autocommit(h), 1);
  CHECK(run(L, "after", "eq(require('engine.db').one('SELECT count(*) AS n FROM x WHERE v = 99').n, 0, 'gone')", 0,
            NULL));
  CHECK_INT(eng_db_after_request(db), 0);
  lua_close(L);
  eng_db_close(db);
}

/* Detached (eng_lua_db_attach(L, NULL)): every call raises. */
static void test_detached_module_raises(void) {
  lua_State *L = NULL;
  eng_db *db = open_db("detached.db", &L);
  if (!db)
    return;
  eng_lua_db_attach(L, NULL);
  CHECK(run(L, "detached",
            "local db = require 'engine.db'\n"
            "eq(fails(db.one, 'SELECT 1'), 'no database connection', 'one')\n"
            "eq(fails(db.tx, function() end), 'no database connection', 'tx')\n",
            0, NULL));
  lua_close(L);
  eng_db_close(db);
}

typedef struct writer {
  const char *path;
  lua_Integer id;
  int ok;
} writer;

static const char writer_chunk[] =
    "local db = require 'engine.db'\n"
    "local w = ...\n"
    "for i = 1, 500 do\n"
    "  db.tx(function() db.exec('INSERT INTO hits (worker, n) VALUES (?, ?)', w, i) end)\n"
    "end\n";

static void *writer_thread(void *arg) {
  writer *w = arg;
  eng_db *db = NULL;
  char *err = NULL;
  if (eng_db_open(&db, w->path, NULL, &err) != 0) {
    fprintf(stderr, "writer: %s\n", err);
    free(err);
    return NULL;
  }
  lua_State *L = new_state(db);
  w->ok = run(L, "writer", writer_chunk, 1, &w->id);
  lua_close(L);
  eng_db_close(db);
  return NULL;
}

static void test_two_workers_write_the_same_file(void) {
  char path[128];
  eng_db *db = NULL;
  snprintf(path, sizeof path, "%s/conc.db", tmpdir);
  CHECK_INT(eng_db_open(&db, path, NULL, NULL), 0);
  if (!db)
    return;
  CHECK_INT(sqlite3_exec(eng_db_handle(db), "CREATE TABLE hits (worker INTEGER NOT NULL, n INTEGER NOT NULL)", NULL,
                         NULL, NULL),
            SQLITE_OK);
  writer w[2] = {{path, 1, 0}, {path, 2, 0}};
  pthread_t th[2];
  for (int i = 0; i < 2; i++)
    pthread_create(&th[i], NULL, writer_thread, &w[i]);
  for (int i = 0; i < 2; i++)
    pthread_join(th[i], NULL);
  CHECK_INT(w[0].ok, 1);
  CHECK_INT(w[1].ok, 1);
  lua_State *L = new_state(db);
  CHECK(run(L, "count",
            "local db = require 'engine.db'\n"
            "eq(db.one('SELECT count(*) AS n FROM hits').n, 1000, 'rows')\n"
            "eq(db.one('SELECT count(DISTINCT n) AS n FROM hits WHERE worker = 1').n, 500, 'worker 1')\n"
            "eq(db.one('SELECT count(DISTINCT n) AS n FROM hits WHERE worker = 2').n, 500, 'worker 2')\n",
            0, NULL));
  lua_close(L);
  eng_db_close(db);
}

/* Two workers insert the same 400 keys (each in its own order, in batches of 20) under db.tx
 * with INSERT ... ON CONFLICT DO NOTHING on a unique index: each key must be stored exactly once,
 * and the changes each reports must add up to 400. */
static const char ingest_chunk[] = "local db = require 'engine.db'\n"
                                   "local w = ...\n"
                                   "local stored = 0\n"
                                   "for b = 0, 19 do\n"
                                   "  local rows = {}\n"
                                   "  for i = 1, 20 do\n"
                                   "    local n = w == 1 and b * 20 + i or 401 - (b * 20 + i)\n"
                                   "    rows[i] = {'k' .. n, w}\n"
                                   "  end\n"
                                   "  db.tx(function()\n"
                                   "    stored = stored + db.exec_many(\"INSERT INTO ing (g, k, w) VALUES ('cust', ?, "
                                   "?) ON CONFLICT (g, k) DO NOTHING\", rows)\n"
                                   "  end)\n"
                                   "end\n"
                                   "db.exec('INSERT INTO ing_counts (w, n) VALUES (?, ?)', w, stored)\n";

static void *ingest_thread(void *arg) {
  writer *w = arg;
  eng_db *db = NULL;
  if (eng_db_open(&db, w->path, NULL, NULL) != 0)
    return NULL;
  lua_State *L = new_state(db);
  w->ok = run(L, "ingest", ingest_chunk, 1, &w->id);
  lua_close(L);
  eng_db_close(db);
  return NULL;
}

static void test_two_workers_store_each_key_once(void) {
  char path[128];
  eng_db *db = NULL;
  snprintf(path, sizeof path, "%s/ingest.db", tmpdir);
  CHECK_INT(eng_db_open(&db, path, NULL, NULL), 0);
  if (!db)
    return;
  CHECK_INT(sqlite3_exec(eng_db_handle(db),
                         "CREATE TABLE ing (seq INTEGER PRIMARY KEY AUTOINCREMENT, g TEXT NOT NULL, k TEXT NOT NULL, "
                         "w INTEGER NOT NULL); CREATE UNIQUE INDEX ing_key ON ing(g, k); "
                         "CREATE TABLE ing_counts (w INTEGER PRIMARY KEY, n INTEGER NOT NULL)",
                         NULL, NULL, NULL),
            SQLITE_OK);
  writer w[2] = {{path, 1, 0}, {path, 2, 0}};
  pthread_t th[2];
  for (int i = 0; i < 2; i++)
    pthread_create(&th[i], NULL, ingest_thread, &w[i]);
  for (int i = 0; i < 2; i++)
    pthread_join(th[i], NULL);
  CHECK_INT(w[0].ok, 1);
  CHECK_INT(w[1].ok, 1);
  lua_State *L = new_state(db);
  CHECK(run(L, "once",
            "local db = require 'engine.db'\n"
            "eq(db.one('SELECT count(*) AS n FROM ing').n, 400, 'rows')\n"
            "eq(db.one('SELECT count(DISTINCT k) AS n FROM ing').n, 400, 'distinct keys')\n"
            "eq(db.one('SELECT sum(n) AS n FROM ing_counts').n, 400, 'changes reported')\n",
            0, NULL));
  lua_close(L);
  eng_db_close(db);
}

int main(void) {
  if (tmpdir_make("/tmp/eng_test_lua_db_XXXXXX") != 0)
    return 1;
  test_failed_calls_leave_no_statement_busy_and_no_transaction_open();
  test_after_request_rolls_back_what_a_script_left_open();
  test_detached_module_raises();
  test_two_workers_write_the_same_file();
  test_two_workers_store_each_key_once();
  tmpdir_remove();
  return check_summary("test_lua_db");
}
