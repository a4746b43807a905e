/* lua_config.c - the Lua module "engine.config": script settings.
 *
 * Lua API (eng_luaopen_config, declared in lua_common.h):
 *   config.get(name [, default])  APIENGINE_<NAME> from the environment (a string), else the
 *                                 config file's settings[name], else default
 *   config.settings()             the settings table itself (tests may change it) */
#include "lua_runtime_int.h"
#include "error.h"
#include "lua_common.h"

#include <lauxlib.h>

#include <ctype.h>
#include <stdlib.h>
#include <string.h>

#define SETTINGS_KEY "engine.config.settings"

/* config.get(name [, default]): APIENGINE_<NAME> from the environment, else the
 * config file's settings[name], else default. */
static int config_get(lua_State *L) {
  size_t len;
  const char *name = luaL_checklstring(L, 1, &len);
  lua_settop(L, 2); /* the default, or nil */
  char env[160] = "APIENGINE_";
  if (len < sizeof env - 11) {
    size_t o = 10;
    for (size_t i = 0; i < len; i++)
      env[o++] = (char)toupper((unsigned char)name[i]);
    env[o] = '\0';
    const char *v = getenv(env);
    if (v && *v) {
      lua_pushstring(L, v);
      return 1;
    }
  }
  lua_getfield(L, LUA_REGISTRYINDEX, SETTINGS_KEY);
  lua_getfield(L, -1, name);
  if (lua_isnil(L, -1))
    lua_pushvalue(L, 2);
  return 1;
}

/* config.settings(): the settings table itself (tests may change it). */
static int config_settings(lua_State *L) {
  lua_getfield(L, LUA_REGISTRYINDEX, SETTINGS_KEY);
  return 1;
}

int eng_luaopen_config(lua_State *L) {
  static const luaL_Reg fns[] = {{"get", config_get}, {"settings", config_settings}, {NULL, NULL}};
  luaL_newlib(L, fns);
  return 1;
}

int eng_lua_config_load(lua_State *L, const char *file, char **err) {
  if (file == NULL) {
    lua_newtable(L);
    lua_setfield(L, LUA_REGISTRYINDEX, SETTINGS_KEY);
    return 0;
  }
  if (luaL_loadfilex(L, file, "t") != LUA_OK) {
    *err = strdup(lua_tostring(L, -1));
    lua_pop(L, 1);
    return ENG_ECONFIG;
  }
  lua_newtable(L);
  lua_setupvalue(L, -2, 1);
  if (lua_pcall(L, 0, 1, 0) != LUA_OK) {
    *err = strdup(lua_tostring(L, -1));
    lua_pop(L, 1);
    return ENG_ECONFIG;
  }
  if (lua_istable(L, -1))
    lua_getfield(L, -1, "settings");
  else
    lua_pushnil(L);
  if (!lua_istable(L, -1)) {
    lua_pop(L, 1);
    lua_newtable(L);
  }
  lua_setfield(L, LUA_REGISTRYINDEX, SETTINGS_KEY);
  lua_pop(L, 1);
  return 0;
}
