/* lua_time.c - the "engine.time" module: argument checks and results over clock.h. */
#include "lua_time.h"

#include <stdint.h>

#include "clock.h"
#include "lua_common.h"
#include "lua_runtime_int.h"

static int l_now(lua_State *L) {
  lua_pushinteger(L, (lua_Integer)eng_clock_now_ms());
  return 1;
}

static int l_format(lua_State *L) {
  int isint = 0;
  lua_Integer ms = lua_type(L, 1) == LUA_TNUMBER ? lua_tointegerx(L, 1, &isint) : 0;
  if (!isint)
    return luaL_argerror(L, 1, "integer milliseconds expected");
  char out[ENG_CLOCK_FORMAT_MAX];
  eng_clock_format((int64_t)ms, out);
  lua_pushstring(L, out);
  return 1;
}

static int l_parse(lua_State *L) {
  luaL_checktype(L, 1, LUA_TSTRING);
  size_t len;
  const char *s = lua_tolstring(L, 1, &len);
  int64_t ms;
  int is_date;
  const char *msg;
  if (eng_clock_parse(s, len, &ms, &is_date, &msg) != 0) {
    lua_pushnil(L);
    lua_pushstring(L, msg);
    return 2;
  }
  lua_pushinteger(L, (lua_Integer)ms);
  lua_pushboolean(L, is_date);
  return 2;
}

int eng_luaopen_time(lua_State *L) {
  static const luaL_Reg funcs[] = {
      {"now", l_now}, {"format", l_format}, {"parse", l_parse}, {"sleep", eng_lua_time_sleep}, {NULL, NULL}};
  luaL_newlib(L, funcs);
  return 1;
}
