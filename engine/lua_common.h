/* lua_common.h - conventions shared by the engine's Lua modules.
 *
 * JSON null: the light userdata NULL. It is unique, needs no allocation, and
 * every module (json, db, ...) agrees on it without coordination. Scripts see
 * it as `engine.json.null`.
 *
 * JSON arrays: a table whose metatable is the registry's ENG_JSON_ARRAY_MT is
 * encoded as an array even when empty; the decoder marks arrays with it too.
 *
 * Module openers follow the luaopen_ convention: they push the module table
 * and return 1. lua_modules.c registers them in package.preload under the names
 * in the comments. */
#ifndef ENG_LUA_COMMON_H
#define ENG_LUA_COMMON_H

#include <lua.h>
#include <lauxlib.h>

#define ENG_JSON_ARRAY_MT "engine.json.array"

static inline void eng_lua_pushnull(lua_State *L) { lua_pushlightuserdata(L, NULL); }

static inline int eng_lua_isnull(lua_State *L, int idx) {
  return lua_type(L, idx) == LUA_TLIGHTUSERDATA && lua_touserdata(L, idx) == NULL;
}

/* Pushes the array metatable (created on first use). */
static inline void eng_lua_push_array_mt(lua_State *L) {
  if (luaL_newmetatable(L, ENG_JSON_ARRAY_MT)) {
    lua_pushliteral(L, "array");
    lua_setfield(L, -2, "__name");
  }
}

int eng_luaopen_json(lua_State *L);    /* "engine.json"   lua_json.c   */
int eng_luaopen_crypto(lua_State *L);  /* "engine.crypto" lua_crypto.c */
int eng_luaopen_time(lua_State *L);    /* "engine.time"   lua_time.c   */
int eng_luaopen_db(lua_State *L);      /* "engine.db"     lua_db.c     */
int eng_luaopen_log(lua_State *L);     /* "engine.log"    lua_log.c    */
int eng_luaopen_config(lua_State *L);  /* "engine.config" lua_config.c */
int eng_luaopen_route(lua_State *L);   /* "engine.route"  lua_route.c  */
int eng_luaopen_limit(lua_State *L);   /* "engine.limit"  lua_limit.c  */
int eng_luaopen_metrics(lua_State *L); /* "engine.metrics" lua_metrics.c */

#endif
