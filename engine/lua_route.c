/* lua_route.c - the Lua module "engine.route": handlers per method and path pattern.
 *
 * Lua API (eng_luaopen_route, declared in lua_common.h):
 *   route.get/head/post/put/patch/delete/options(pattern, fn)  registers fn for the pattern
 *   route.add(method, pattern, fn)      the same with the method as a string
 *   route.handler(method, pattern)      -> the function routed there, or nil
 *   route.replace(method, pattern, fn)  swaps the handler of an existing route
 *   route.on_error(fn | nil)            shapes the engine's own error answers (lua_runtime.c)
 * Patterns and their errors are the router's (router.h). Handlers are held as registry
 * references in the runtime's router; loading the scripts again drops them (lua_load.c). */
#include "lua_runtime_int.h"
#include "error.h"
#include "lua_common.h"

#include <lauxlib.h>

static int route_add_method(lua_State *L, int method, int pattern_idx, int fn_idx) {
  eng_runtime *rt = eng_rt(L);
  const char *pattern = luaL_checkstring(L, pattern_idx);
  luaL_checktype(L, fn_idx, LUA_TFUNCTION);
  lua_pushvalue(L, fn_idx);
  int ref = luaL_ref(L, LUA_REGISTRYINDEX);
  const char *why = NULL;
  int rc = eng_router_add(rt->router, method, pattern, ref, &why);
  if (rc != 0) {
    luaL_unref(L, LUA_REGISTRYINDEX, ref);
    return luaL_error(L, "route %s %s: %s", eng_router_method_name(method), pattern, why ? why : eng_strerror(rc));
  }
  return 0;
}

#define ROUTE_FN(name, M) \
  static int route_##name(lua_State *L) { return route_add_method(L, M, 1, 2); }
ROUTE_FN(get, ENG_M_GET)
ROUTE_FN(head, ENG_M_HEAD)
ROUTE_FN(post, ENG_M_POST)
ROUTE_FN(put, ENG_M_PUT)
ROUTE_FN(patch, ENG_M_PATCH)
ROUTE_FN(delete, ENG_M_DELETE)
ROUTE_FN(options, ENG_M_OPTIONS)

static int method_arg(lua_State *L, int idx);
static int route_add(lua_State *L) { return route_add_method(L, method_arg(L, 1), 2, 3); }

static int method_arg(lua_State *L, int idx) {
  size_t len;
  const char *m = luaL_checklstring(L, idx, &len);
  int method = eng_router_method(m, len);
  if (method < 0)
    return luaL_argerror(L, idx, "unknown method (GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS)");
  return method;
}

/* route.handler(method, pattern) -> the function routed there, or nil. Lets a script
 * wrap a route another script registered (see route.replace). */
static int route_handler(lua_State *L) {
  int method = method_arg(L, 1);
  int *slot = eng_router_slot(eng_rt(L)->router, method, luaL_checkstring(L, 2));
  if (slot == NULL)
    return 0;
  lua_rawgeti(L, LUA_REGISTRYINDEX, *slot);
  return 1;
}

/* route.replace(method, pattern, fn): swaps the handler of an existing route. */
static int route_replace(lua_State *L) {
  int method = method_arg(L, 1);
  const char *pattern = luaL_checkstring(L, 2);
  luaL_checktype(L, 3, LUA_TFUNCTION);
  int *slot = eng_router_slot(eng_rt(L)->router, method, pattern);
  if (slot == NULL)
    return luaL_error(L, "route %s %s: not routed, nothing to replace", eng_router_method_name(method), pattern);
  lua_pushvalue(L, 3);
  int ref = luaL_ref(L, LUA_REGISTRYINDEX);
  luaL_unref(L, LUA_REGISTRYINDEX, *slot);
  *slot = ref;
  return 0;
}

static int route_on_error(lua_State *L) {
  eng_runtime *rt = eng_rt(L);
  if (!lua_isnoneornil(L, 1))
    luaL_checktype(L, 1, LUA_TFUNCTION);
  luaL_unref(L, LUA_REGISTRYINDEX, rt->error_hook);
  rt->error_hook = LUA_NOREF;
  if (!lua_isnoneornil(L, 1)) {
    lua_pushvalue(L, 1);
    rt->error_hook = luaL_ref(L, LUA_REGISTRYINDEX);
  }
  return 0;
}

int eng_luaopen_route(lua_State *L) {
  static const luaL_Reg fns[] = {{"get", route_get},         {"head", route_head},       {"post", route_post},
                                 {"put", route_put},         {"patch", route_patch},     {"delete", route_delete},
                                 {"options", route_options}, {"add", route_add},         {"on_error", route_on_error},
                                 {"handler", route_handler}, {"replace", route_replace}, {NULL, NULL}};
  luaL_newlib(L, fns);
  return 1;
}
