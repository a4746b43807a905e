/* lua_modules.c - the engine's Lua modules, registered from one table (like Lua's linit.c).
 *
 * Adding a module is one file plus one line: write engine/lua_<name>.c with an opener
 * `int eng_luaopen_<name>(lua_State *L)` that pushes the module table (declared in
 * lua_common.h or the module's own header), then add {"engine.<name>", eng_luaopen_<name>}
 * to `modules` below. Scripts get it with require "engine.<name>". */
#include "lua_runtime_int.h"
#include "lua_common.h"

#include <lauxlib.h>

static const luaL_Reg modules[] = {
    {"engine.json", eng_luaopen_json},       /* lua_json.c   */
    {"engine.db", eng_luaopen_db},           /* lua_db.c     */
    {"engine.crypto", eng_luaopen_crypto},   /* lua_crypto.c */
    {"engine.time", eng_luaopen_time},       /* lua_time.c   */
    {"engine.log", eng_luaopen_log},         /* lua_log.c    */
    {"engine.config", eng_luaopen_config},   /* lua_config.c */
    {"engine.route", eng_luaopen_route},     /* lua_route.c  */
    {"engine.limit", eng_luaopen_limit},     /* lua_limit.c  */
    {"engine.metrics", eng_luaopen_metrics}, /* lua_metrics.c */
    {NULL, NULL},
};

/* The preload entry of a module when modules are read-only: the opener (upvalue 1), and a
 * read-only proxy of the table it made, which require gives scripts, so no script can change
 * engine.db (or any module) for the scripts after it. package.loaded keeps the real table, where
 * Lua's tracebacks and argument errors find the functions' names ("engine.db.exec"). */
static int open_readonly(lua_State *L) {
  const char *name = luaL_checkstring(L, 1);
  lua_pushvalue(L, lua_upvalueindex(1));
  lua_call(L, 0, 1);
  if (lua_istable(L, -1))
    eng_lua_load_register_readonly(L, -1, name);
  return 1;
}

void eng_lua_modules_preload(lua_State *L, int readonly) {
  luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_PRELOAD_TABLE);
  for (const luaL_Reg *m = modules; m->func != NULL; m++) {
    lua_pushcfunction(L, m->func);
    if (readonly)
      lua_pushcclosure(L, open_readonly, 1);
    lua_setfield(L, -2, m->name);
  }
  lua_pop(L, 1);
}
