/* test_lua_db.c - the Lua module engine.db: parameters, type round trips, errors and their kinds,
 * transactions (nested too), request cleanup, column-name cache staleness, and two workers
 * writing the same file at once. Lua-side checks use eq(), which raises on a mismatch; the C
 * side CHECKs that each chunk ran without error. */
#define _XOPEN_SOURCE 700
#include <ftw.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>
#include <lualib.h>

#include "check.h"
#include "db.h"
#include "lua_common.h"
#include "lua_db.h"

static char tmpdir[64];

static const char prelude[] =
    "function eq(got, want, what)\n"
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

static int rm_entry(const char *p, const struct stat *sb, int flag, struct FTW *ftw) {
  (void)sb, (void)flag, (void)ftw;
  return remove(p);
}

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

static const char types_chunk[] =
    "local db = require 'engine.db'\n"
    "db.exec('CREATE TABLE t (id INTEGER PRIMARY KEY, i INTEGER, f REAL, s TEXT, b BLOB, n TEXT)')\n"
    "local ch, id = db.exec('INSERT INTO t (i, f, s, b, n) VALUES (?, ?, ?, ?, ?)', 42, 1.5, 'hello', 'a\\0b', nil)\n"
    "eq(ch, 1, 'changes'); eq(id, 1, 'rowid')\n"
    "local r = db.one('SELECT * FROM t WHERE id = ?', 1)\n"
    "eq(r.id, 1, 'id'); eq(r.i, 42, 'i'); eq(r.f, 1.5, 'f'); eq(r.s, 'hello', 's')\n"
    "eq(r.b, 'a\\0b', 'b'); eq(#r.b, 3, '#b'); eq(r.n, null, 'n')\n"
    "local keys = 0; for k in pairs(r) do keys = keys + 1 end; eq(keys, 6, 'keys incl. the null one')\n"
    /* integer vs float both ways; REAL affinity turns 2 into 2.0; a float 3.0 in an INTEGER column is 3 */
    "ch, id = db.exec('INSERT INTO t (i, f, s, n) VALUES (?, ?, ?, ?)', 3.0, 2, 'x\\0y\\0', null)\n"
    "eq(id, 2, 'rowid 2')\n"
    "r = db.one('SELECT i, f, s, n, typeof(s) AS ts FROM t WHERE id = 2')\n"
    "eq(r.i, 3, 'float 3.0 in INTEGER column'); eq(r.f, 2.0, 'integer 2 in REAL column')\n"
    "eq(r.s, 'x\\0y\\0', 'NULs in text'); eq(r.ts, 'text', 'bound as text'); eq(r.n, null, 'json null binds NULL')\n"
    "r = db.one('SELECT ? AS big, ? AS small, ? AS t, ? AS f, ? AS d, 0.5 AS h, x\\'00ff\\' AS blob, ? AS e',\n"
    "  math.maxinteger, math.mininteger, true, false, 1e300, '')\n"
    "eq(r.big, math.maxinteger, 'maxinteger'); eq(r.small, math.mininteger, 'mininteger')\n"
    "eq(r.t, 1, 'true'); eq(r.f, 0, 'false'); eq(r.d, 1e300, 'double'); eq(r.h, 0.5, 'literal float')\n"
    "eq(r.blob, '\\0\\255', 'blob'); eq(r.e, '', 'empty string')\n"
    /* named parameters, all three prefixes; a missing key binds NULL */
    "r = db.one('SELECT id FROM t WHERE i = :i AND s = @s AND f = $f', {i = 42, s = 'hello', f = 1.5})\n"
    "eq(r.id, 1, 'named')\n"
    "r = db.one('SELECT :x IS NULL AS missing, :y AS y, :y || :y AS yy', {y = 'a\\0'})\n"
    "eq(r.missing, 1, 'missing named is NULL'); eq(r.y, 'a\\0', 'named NUL'); eq(r.yy, 'a\\0a\\0', 'named reused')\n"
    "r = db.one('SELECT ?2 AS a, ?1 AS b', 'x', 'y')\n"
    "eq(r.a, 'y', '?2'); eq(r.b, 'x', '?1')\n"
    /* query: array-marked, empty too */
    "local mt = debug.getregistry()['engine.json.array']\n"
    "local rows = db.query('SELECT id, i FROM t ORDER BY id')\n"
    "eq(#rows, 2, '#rows'); eq(getmetatable(rows), mt, 'array mt'); eq(rows[1].id, 1, 'row 1'); eq(rows[2].i, 3, 'row 2')\n"
    "rows = db.query('SELECT id FROM t WHERE id > ?', 99)\n"
    "eq(#rows, 0, 'empty'); eq(getmetatable(rows), mt, 'empty array mt'); eq(next(rows), nil, 'no entries')\n"
    "eq(db.one('SELECT id FROM t WHERE id > 99'), nil, 'one: no row')\n"
    "eq(select('#', db.one('SELECT id FROM t WHERE id > 99')), 1, 'one returns exactly nil')\n"
    /* exec counts */
    "ch = db.exec('UPDATE t SET s = ? WHERE id > ?', 'z', 0); eq(ch, 2, 'update 2')\n"
    "ch, id = db.exec('UPDATE t SET s = ? WHERE id > ?', 'z', 99); eq(ch, 0, 'update none'); eq(id, 2, 'last rowid')\n"
    "ch = db.exec('CREATE TABLE other (x)'); eq(ch, 0, 'ddl changes nothing')\n"
    "ch = db.exec('SELECT * FROM t'); eq(ch, 0, 'exec of a select')\n"
    "ch = db.exec('DELETE FROM t WHERE id = 2'); eq(ch, 1, 'delete')\n";

static const char bad_calls_chunk[] =
    "local db = require 'engine.db'\n"
    "local e = fails(db.one, 'SELECT ?', {})\n"
    "eq(e, 'cannot bind a table (parameter 1)', 'table param')\n"
    "e = fails(db.one, 'SELECT ?, ?', 1, print)\n"
    "eq(e, 'cannot bind a function (parameter 2)', 'function param')\n"
    "e = fails(db.one, 'SELECT ?, ?', 1)\n"
    "eq(e, 'statement has 2 parameters, got 1 value', 'too few')\n"
    "e = fails(db.one, 'SELECT ?3', 1)\n"
    "eq(e, 'statement has 3 parameters, got 1 value', '?NNN counts the highest')\n"
    "e = fails(db.one, 'SELECT 1', 2)\n"
    "eq(e, 'statement has 0 parameters, got 1 value', 'too many')\n"
    "e = fails(db.one, 'SELECT :a, ?', {a = 1})\n"
    "eq(e, 'parameter 2 is positional, but parameters were given by name', 'mixed')\n"
    "fails(db.one, 42)\n"
    "e = fails(db.query, 'SELEC 1')\n"
    "eq(db.is_error(e), true, 'is_error'); eq(db.kind(e), 'error', 'kind'); eq(e.code, 1, 'code')\n"
    "eq(e.message, 'db: near \"SELEC\": syntax error', 'message'); eq(e.sql, 'SELEC 1', 'sql')\n"
    "eq(tostring(e), 'db: near \"SELEC\": syntax error', '__tostring')\n"
    "e = fails(db.exec, 'SELECT 1; SELECT 2')\n"
    "eq(e.message, 'db: more than one SQL statement in one call', 'two statements')\n"
    "eq(db.is_error('x'), false, 'string'); eq(db.is_error({kind = 'unique'}), false, 'lookalike')\n"
    "eq(db.kind({}), nil, 'kind of non-error')\n"
    /* a query failing on its second row leaves no statement mid-step (checked from C) */
    "db.exec('CREATE TABLE ov (v INTEGER)'); db.exec('INSERT INTO ov VALUES (1), (2)')\n"
    "e = fails(db.query, 'SELECT CASE WHEN v > 1 THEN abs(-9223372036854775807 - 1) ELSE v END AS x FROM ov ORDER BY v')\n"
    "eq(e.message, 'db: integer overflow', 'overflow')\n"
    "eq(db.one('SELECT v FROM ov ORDER BY v').v, 1, 'one stops after a row')\n";

static const char kinds_chunk[] =
    "local db = require 'engine.db'\n"
    "db.exec('CREATE TABLE p (id INTEGER PRIMARY KEY, email TEXT UNIQUE, age INTEGER CHECK (age >= 0), name TEXT NOT NULL)')\n"
    "db.exec('CREATE TABLE c (id INTEGER PRIMARY KEY, p_id INTEGER NOT NULL REFERENCES p(id))')\n"
    "db.exec('INSERT INTO p VALUES (1, ?, 1, ?)', 'a@x', 'a')\n"
    "local function kind_of(sql, ...) local e = fails(db.exec, sql, ...); return db.kind(e), e.code, e.message end\n"
    "local k, c, m = kind_of('INSERT INTO p VALUES (2, ?, 1, ?)', 'a@x', 'b')\n"
    "eq(k, 'unique', 'unique'); eq(c, 2067, 'unique code'); eq(m, 'db: UNIQUE constraint failed: p.email', 'msg')\n"
    "k, c = kind_of('INSERT INTO p VALUES (1, ?, 1, ?)', 'b@x', 'b')\n"
    "eq(k, 'primary_key', 'pk'); eq(c, 1555, 'pk code')\n"
    "k, c = kind_of('INSERT INTO c VALUES (1, 99)')\n"
    "eq(k, 'foreign_key', 'fk'); eq(c, 787, 'fk code')\n"
    "k, c = kind_of('INSERT INTO p VALUES (3, ?, -1, ?)', 'c@x', 'c')\n"
    "eq(k, 'check', 'check'); eq(c, 275, 'check code')\n"
    "k, c = kind_of('INSERT INTO p VALUES (4, ?, 1, NULL)', 'd@x')\n"
    "eq(k, 'not_null', 'not null'); eq(c, 1299, 'not null code')\n"
    "db.exec('CREATE TRIGGER nope BEFORE INSERT ON c BEGIN SELECT RAISE(ABORT, \\'no\\'); END')\n"
    "k, c = kind_of('INSERT INTO c VALUES (2, 1)')\n"
    "eq(k, 'constraint', 'other constraint'); eq(c, 1811, 'trigger code')\n"
    "eq(db.one('SELECT count(*) AS n FROM p').n, 1, 'nothing inserted')\n";

static const char tx_chunk[] =
    "local db = require 'engine.db'\n"
    "db.exec('CREATE TABLE x (v INTEGER)')\n"
    "local function values() local out = {}\n"
    "  for _, r in ipairs(db.query('SELECT v FROM x ORDER BY v')) do out[#out + 1] = r.v end\n"
    "  return table.concat(out, ',') end\n"
    "local a, b, c = db.tx(function(p, q) db.exec('INSERT INTO x VALUES (?)', p); return p + q, 'ok' end, 1, 2)\n"
    "eq(a, 3, 'result 1'); eq(b, 'ok', 'result 2'); eq(c, nil, 'no third'); eq(values(), '1', 'committed')\n"
    "eq(select('#', db.tx(function() end)), 0, 'no results')\n"
    "local err = {}\n"
    "local e = fails(db.tx, function() db.exec('INSERT INTO x VALUES (2)'); error(err) end)\n"
    "eq(rawequal(e, err), true, 'same error table'); eq(values(), '1', 'rolled back')\n"
    "e = fails(db.tx, function() db.exec('INSERT INTO x VALUES (3)'); error('boom', 0) end)\n"
    "eq(e, 'boom', 'same error string'); eq(values(), '1', 'rolled back 2')\n"
    "e = fails(db.tx, function() db.exec('INSERT INTO x VALUES (4)'); db.exec('INSERT INTO nope VALUES (1)') end)\n"
    "eq(db.is_error(e), true, 'db error passes through'); eq(e.message, 'db: no such table: nope', 'its message')\n"
    "eq(values(), '1', 'rolled back 3')\n"
    /* nested: the inner failure is caught, the outer commits */
    "db.tx(function()\n"
    "  db.exec('INSERT INTO x VALUES (10)')\n"
    "  local ok, ie = pcall(db.tx, function() db.exec('INSERT INTO x VALUES (11)'); error('inner', 0) end)\n"
    "  eq(ok, false, 'inner failed'); eq(ie, 'inner', 'inner error')\n"
    "  eq(values(), '1,10', 'inner rows gone inside')\n"
    "  db.tx(function() db.exec('INSERT INTO x VALUES (12)') end)\n"
    "end)\n"
    "eq(values(), '1,10,12', 'outer kept, inner gone')\n"
    /* an outer rollback also undoes a released inner savepoint */
    "fails(db.tx, function() db.tx(function() db.exec('INSERT INTO x VALUES (20)') end); error('outer') end)\n"
    "eq(values(), '1,10,12', 'outer rollback')\n"
    /* a failing COMMIT (deferred foreign key) rolls back and raises a db error */
    "db.exec('CREATE TABLE par (id INTEGER PRIMARY KEY)')\n"
    "db.exec('CREATE TABLE chi (pid INTEGER REFERENCES par(id) DEFERRABLE INITIALLY DEFERRED)')\n"
    "e = fails(db.tx, function() db.exec('INSERT INTO chi VALUES (5)') end)\n"
    "eq(db.kind(e), 'foreign_key', 'commit fk'); eq(e.sql, 'COMMIT', 'commit sql')\n"
    "eq(db.one('SELECT count(*) AS n FROM chi').n, 0, 'commit failure rolled back')\n"
    "e = fails(db.tx, 42)\n"
    /* yielding inside tx is refused and rolls back */
    "local co = coroutine.wrap(function() return pcall(db.tx, function() db.exec('INSERT INTO x VALUES (30)'); coroutine.yield() end) end)\n"
    "local ok = co(); eq(ok, false, 'yield refused'); eq(values(), '1,10,12', 'yield rolled back')\n";

static const char names_chunk[] =
    "local db = require 'engine.db'\n"
    "db.exec('CREATE TABLE r (a INTEGER)'); db.exec('INSERT INTO r VALUES (1)')\n"
    "local q = 'SELECT * FROM r'\n"
    "eq(db.one(q).a, 1, 'before')\n"
    "eq(db.query(q)[1].a, 1, 'before, cached')\n"
    "db.exec('ALTER TABLE r RENAME COLUMN a TO b')\n"
    "local row = db.one(q); eq(row.b, 1, 'renamed'); eq(row.a, nil, 'old name gone')\n"
    "db.exec('ALTER TABLE r ADD COLUMN c TEXT')\n"
    "row = db.query(q)[1]; eq(row.b, 1, 'b'); eq(row.c, null, 'added column present as null')\n";

static const char many_chunk[] =
    "local db = require 'engine.db'\n"
    "db.exec('CREATE TABLE m (id INTEGER PRIMARY KEY, a TEXT, b INTEGER, c TEXT NOT NULL)')\n"
    /* named: each row's fields, then consts for what the row lacks; a missing one is NULL */
    "local n = db.exec_many('INSERT INTO m (a, b, c) VALUES (:a, :b, :c)',\n"
    "  { {a = 'x', b = 1}, {b = 2}, {a = 'z', c = 'own'} }, {c = 'const', a = 'A'})\n"
    "eq(n, 3, 'changes')\n"
    "local rows = db.query('SELECT a, b, c FROM m ORDER BY id')\n"
    "eq(rows[1].a, 'x', 'r1 a'); eq(rows[1].b, 1, 'r1 b'); eq(rows[1].c, 'const', 'r1 const')\n"
    "eq(rows[2].a, 'A', 'r2 const a'); eq(rows[3].b, null, 'r3 missing b is NULL'); eq(rows[3].c, 'own', 'r3 c')\n"
    /* positional: rows are arrays, a hole is NULL */
    "n = db.exec_many('INSERT INTO m (a, b, c) VALUES (?, ?, ?)', { {'p', 7, 'q'}, {nil, 8, 'r'} })\n"
    "eq(n, 2, 'positional changes')\n"
    "eq(db.one('SELECT count(*) AS n FROM m WHERE a IS NULL AND b = 8').n, 1, 'hole is NULL')\n"
    "eq(db.exec_many('UPDATE m SET b = b + 1 WHERE b = ?', { {7}, {99}, {1} }), 2, 'counts only real changes')\n"
    "eq(db.exec_many('INSERT INTO m (c) VALUES (?)', {}), 0, 'no rows')\n"
    /* a failing row raises the db error; inside db.tx nothing stays */
    "local e = fails(db.tx, function()\n"
    "  db.exec_many('INSERT INTO m (a, c) VALUES (?, ?)', { {'t1', 'ok'}, {'t2', nil}, {'t3', 'never'} })\n"
    "end)\n"
    "eq(db.kind(e), 'not_null', 'kind'); eq(db.one(\"SELECT count(*) AS n FROM m WHERE a LIKE 't%'\").n, 0, 'rolled back')\n"
    "eq(tostring(fails(db.exec_many, 'INSERT INTO m (c) VALUES (?)', { {'a'}, 5 })):match('row 2 is a number') ~= nil,\n"
    "  true, 'row type')\n"
    "eq(tostring(fails(db.exec_many, 'INSERT INTO m (c) VALUES (?)', { {'a', 'b'} })):match('more values') ~= nil,\n"
    "  true, 'too many values')\n"
    "fails(db.exec_many, 'INSERT INTO m (c) VALUES (?)')\n"
    "fails(db.exec_many, 'INSERT INTO m (c) VALUES (?)', {}, 'consts')\n";

static const char keys_chunk[] =
    "local db = require 'engine.db'\n"
    "local SCAN = 'SELECT seq, g, k FROM kl WHERE seq > ? ORDER BY seq'\n"
    "db.exec('CREATE TABLE kl (seq INTEGER PRIMARY KEY AUTOINCREMENT, g TEXT NOT NULL, k TEXT NOT NULL)')\n"
    "eq(db.keys_sync(SCAN), 0, 'empty')\n"
    "db.exec_many('INSERT INTO kl (g, k) VALUES (?, ?)', { {'c1', 's1'}, {'c1', 's2'}, {'c2', 's1'} })\n"
    "eq(db.keys_sync(SCAN), 3, 'synced')\n"
    "local new = db.keys_unseen(SCAN, 'c1', {'s1', 's3', 's2', 's3'})\n"
    "eq(#new, 4, '#'); eq(new[1], false, 's1 seen'); eq(new[2], true, 's3 new'); eq(new[3], false, 's2 seen')\n"
    "eq(new[4], true, 'the set is not changed by the answer')\n"
    "eq(db.keys_unseen(SCAN, 'c3', {'s1'})[1], true, 'other group')\n"
    "eq(#db.keys_unseen(SCAN, 'c1', {}), 0, 'no keys')\n"
    /* inside db.tx: fine before the transaction writes, refused after */
    "eq(fails(db.tx, function()\n"
    "  eq(db.keys_unseen(SCAN, 'c2', {'s1'})[1], false, 'in tx')\n"
    "  db.exec(\"INSERT INTO kl (g, k) VALUES ('c2', 'uncommitted')\")\n"
    "  local e = fails(db.keys_unseen, SCAN, 'c2', {'s1'})\n"
    "  eq(tostring(e):match('before the transaction writes') ~= nil, true, 'refused after a write')\n"
    "  error('undo', 0)\n"
    "end), 'undo', 'rolled back')\n"
    "eq(db.keys_unseen(SCAN, 'c2', {'uncommitted'})[1], true, 'rolled back row never entered the set')\n"
    "db.exec('BEGIN')\n"
    "eq(tostring(fails(db.keys_sync, SCAN)):match('not in a BEGIN') ~= nil, true, 'raw BEGIN refused')\n"
    "db.exec('ROLLBACK')\n"
    "eq(tostring(fails(db.keys_unseen, SCAN, 'c1', {'a', 5})):match('key 2 is a number') ~= nil, true, 'key type')\n"
    "eq(db.kind(fails(db.keys_sync, 'SELECT nope')), 'error', 'bad scan SQL')\n";

static void test_lua_api(void) {
  eng_db *db = NULL;
  char path[128];
  snprintf(path, sizeof path, "%s/api.db", tmpdir);
  CHECK_INT(eng_db_open(&db, path, NULL, NULL), 0);
  if (!db)
    return;
  sqlite3 *h = eng_db_handle(db);
  lua_State *L = new_state(db);

  CHECK(run(L, "types", types_chunk, 0, NULL));
  CHECK(run(L, "bad_calls", bad_calls_chunk, 0, NULL));
  CHECK_INT(busy_statements(h), 0);
  CHECK(run(L, "kinds", kinds_chunk, 0, NULL));
  CHECK(run(L, "tx", tx_chunk, 0, NULL));
  CHECK_INT(sqlite3_get_autocommit(h), 1);
  CHECK(run(L, "names", names_chunk, 0, NULL));
  CHECK_INT(busy_statements(h), 0);
  CHECK(run(L, "many", many_chunk, 0, NULL));
  CHECK_INT(busy_statements(h), 0);
  CHECK(run(L, "keys", keys_chunk, 0, NULL));
  CHECK_INT(busy_statements(h), 0);
  CHECK_INT(sqlite3_get_autocommit(h), 1);

  /* a transaction left open by a handler is rolled back after the request */
  CHECK(run(L, "left_open",
            "local db = require 'engine.db'\n"
            "db.exec('BEGIN'); db.exec('INSERT INTO x VALUES (99)')\n",
            0, NULL));
  CHECK_INT(sqlite3_get_autocommit(h), 0);
  CHECK_INT(eng_db_after_request(db), 1);
  CHECK_INT(sqlite3_get_autocommit(h), 1);
  CHECK(run(L, "after", "eq(require('engine.db').one('SELECT count(*) AS n FROM x WHERE v = 99').n, 0, 'gone')", 0,
            NULL));
  CHECK_INT(eng_db_after_request(db), 0);

  /* detached: every call raises */
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

static const char writer_chunk[] = "local db = require 'engine.db'\n"
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

/* Two workers insert the same 400 keys (each in its own order, in batches of 20) with the
 * keys_unseen check under db.tx: each key must be stored exactly once. */
static const char ingest_chunk[] =
    "local db = require 'engine.db'\n"
    "local w = ...\n"
    "local SCAN = 'SELECT seq, g, k FROM ing WHERE seq > ? ORDER BY seq'\n"
    "local stored = 0\n"
    "for b = 0, 19 do\n"
    "  local keys = {}\n"
    "  for i = 1, 20 do\n"
    "    local n = w == 1 and b * 20 + i or 401 - (b * 20 + i)\n"
    "    keys[i] = 'k' .. n\n"
    "  end\n"
    "  db.keys_sync(SCAN)\n"
    "  db.tx(function()\n"
    "    local new, rows = db.keys_unseen(SCAN, 'cust', keys), {}\n"
    "    for i = 1, #keys do if new[i] then rows[#rows + 1] = {keys[i], w} end end\n"
    "    stored = stored + db.exec_many(\"INSERT INTO ing (g, k, w) VALUES ('cust', ?, ?)\", rows)\n"
    "  end)\n"
    "end\n";

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
                         "w INTEGER NOT NULL)",
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
            "eq(db.one('SELECT count(DISTINCT k) AS n FROM ing').n, 400, 'distinct keys')\n",
            0, NULL));
  lua_close(L);
  eng_db_close(db);
}

int main(void) {
  snprintf(tmpdir, sizeof tmpdir, "/tmp/eng_test_lua_db_XXXXXX");
  if (!mkdtemp(tmpdir)) {
    perror("mkdtemp");
    return 1;
  }
  test_lua_api();
  test_two_workers_write_the_same_file();
  test_two_workers_store_each_key_once();
  nftw(tmpdir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
  return check_summary("test_lua_db");
}
