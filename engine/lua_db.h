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

/* Opener for "engine.db": pushes the module table, returns 1. */
int eng_luaopen_db(lua_State *L);

#endif
