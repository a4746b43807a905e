/* lua_db.h - the Lua module `engine.db`: query, one, exec, tx over the worker's eng_db.
 *
 * The Lua API (see lua_db.c for the details):
 *   db.query(sql, ...)  -> array of row tables (column name -> value), always encodes as a JSON array
 *   db.one(sql, ...)    -> the first row table, or nil
 *   db.exec(sql, ...)   -> changes, last_insert_rowid
 *   db.exec_many(sql, rows [, consts]) -> total changes: sql once per row of the array rows
 *                          (one prepare; a row that raises stops the rest, so call it inside db.tx).
 *                          Named parameters (:name) bind rows[i].name, or consts.name when the row
 *                          has none (nil: NULL); positional ones bind rows[i][1..n] (nil: NULL)
 *   db.tx(fn, ...)      -> fn's results; fn runs in BEGIN IMMEDIATE (or a SAVEPOINT when nested),
 *                          rolled back when it raises, and the error is re-raised unchanged
 *   db.is_error(e), db.kind(e) -> helpers for the error tables raised by the functions above
 *   db.backend()        -> "sqlite" or "postgresql": which one the calls above go to
 * With a PostgreSQL pool attached (eng_lua_db_attach_pg) the same calls go to lua_db_pg.c: see
 * there and the README for what differs (exec's second result, error codes, tx isolation).
 * Parameters are bound, never spliced: `?`/`?NNN` from the extra arguments, or `:name`/`@name`/
 * `$name` from a single table argument. NULL reads back as engine.json.null. */
#ifndef ENG_LUA_DB_H
#define ENG_LUA_DB_H

#include <lua.h>

#include "db.h"

/* Makes db the connection the engine.db functions of L use (a light userdata in L's registry).
 * NULL detaches: every engine.db call then raises "no database connection". The caller keeps
 * ownership of db and must detach (or close L) before closing db. */
void eng_lua_db_attach(lua_State *L, eng_db *db);

/* ---- PostgreSQL (lua_db_pg.c): the same functions over a pool (pg.h) ---- */
typedef struct eng_pg eng_pg;

/* Makes pg the pool engine.db uses in L's state in place of SQLite (NULL detaches); the runtime
 * attaches it (eng_runtime_set_pg). Borrowed: detach before closing the pool. */
void eng_lua_db_attach_pg(lua_State *L, eng_pg *pg);
/* The attached pool, or NULL. Never raises. */
eng_pg *eng_lua_db_pg(lua_State *L);
/* 1 when the running thread of L is inside db.tx on PostgreSQL. Never raises. */
int eng_lua_db_pg_in_tx(lua_State *L);
/* After a script call: gives back the connection of a db.tx whose thread died inside it (a blown
 * budget stops the code that would have; the thread's to-be-closed variables are not run then).
 * Never raises. */
void eng_lua_db_pg_after_call(lua_State *L);
/* The engine.db functions on the pool (lua_db.c dispatches to them; same stack contract). */
int eng_lua_pg_query(lua_State *L, eng_pg *pg);
int eng_lua_pg_one(lua_State *L, eng_pg *pg);
int eng_lua_pg_exec(lua_State *L, eng_pg *pg);
int eng_lua_pg_tx(lua_State *L);
int eng_lua_pg_exec_many(lua_State *L);
/* Pushes an engine.db error table {message = "db: "..msg, kind, sql = the value at index sql}
 * with the metatable every such table has; the caller adds its backend's code. */
void eng_lua_db_push_error(lua_State *L, const char *msg, const char *kind, int sql);

/* Opener for "engine.db": pushes the module table, returns 1. */
int eng_luaopen_db(lua_State *L);

#endif
