/* lua_log.c - the Lua module "engine.log": log lines from scripts.
 *
 * Lua API (eng_luaopen_log, declared in lua_common.h):
 *   log.error/warn/info/debug(msg)          one line at that level (msg through tostring)
 *   log.error/warn/info/debug(fmt, ...)     string.format(fmt, ...)
 * Lines carry the request id of the request being handled, if any (log.h formats them). */
#include "lua_runtime_int.h"
#include "log.h"
#include "lua_common.h"

#include <lauxlib.h>

static int log_at(lua_State *L, eng_log_level level) {
  if (!eng_log_enabled(level))
    return 0;
  int n = lua_gettop(L);
  const char *msg;
  size_t len;
  if (n > 1) {
    /* string.format(fmt, ...) */
    lua_getglobal(L, "string");
    lua_getfield(L, -1, "format");
    lua_remove(L, -2);
    lua_insert(L, 1);
    lua_call(L, n, 1);
    msg = lua_tolstring(L, -1, &len);
  } else {
    msg = luaL_tolstring(L, 1, &len);
  }
  eng_log_msg(level, eng_rt(L)->request_id, msg, len);
  return 0;
}
static int log_error(lua_State *L) { return log_at(L, ENG_LOG_ERROR); }
static int log_warn(lua_State *L) { return log_at(L, ENG_LOG_WARN); }
static int log_info(lua_State *L) { return log_at(L, ENG_LOG_INFO); }
static int log_debug(lua_State *L) { return log_at(L, ENG_LOG_DEBUG); }

int eng_luaopen_log(lua_State *L) {
  static const luaL_Reg fns[] = {
      {"error", log_error}, {"warn", log_warn}, {"info", log_info}, {"debug", log_debug}, {NULL, NULL}};
  luaL_newlib(L, fns);
  return 1;
}
