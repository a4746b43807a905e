/* lua_route.c - the Lua module "engine.route": handlers per method and path pattern.
 *
 * Lua API (eng_luaopen_route, declared in lua_common.h):
 *   route.get/head/post/put/patch/delete/options(pattern, fn)  registers fn for the pattern
 *   route.add(method, pattern, fn)      the same with the method as a string
 *   route.handler(method, pattern)      -> the function routed there, or nil
 *   route.replace(method, pattern, fn)  swaps the handler of an existing route
 *   route.on_error(fn | nil)            shapes the engine's own error answers (lua_runtime.c)
 *   route.before(fn), route.after(fn)   request hooks, run in registration order around every
 *                                       handler and every 404/405/400 the router decides
 *                                       (dispatch in lua_runtime.c)
 * Patterns and their errors are the router's (router.h). Handlers are held as registry
 * references in the runtime's router; loading the scripts again drops them (lua_load.c).
 *
 * Provenance (lua_route.h): every registration and replacement is also recorded in a registry
 * table, keyed by the route's shape (method and pattern with parameter names blanked, as the
 * router matches it), with where the handler is defined, where it was registered and what a
 * route.replace displaced. The table belongs to one router; a script load that makes a new
 * router starts a new table. Listing keeps only the records whose route the router still holds
 * with that very handler, so a stale record never shows. */
#include "lua_route.h"
#include "lua_runtime_int.h"
#include "error.h"
#include "lua_common.h"

#include <lauxlib.h>

#include <stdlib.h>
#include <string.h>

/* ---- provenance ----------------------------------------------------------------------------- */

static const char records_key = 'r'; /* registry: {router = light userdata, byshape = {shape -> record}} */

/* Pushes the byshape table of rt's router, making a new one when the router changed. */
static void push_records(lua_State *L, eng_runtime *rt) {
  if (lua_rawgetp(L, LUA_REGISTRYINDEX, &records_key) == LUA_TTABLE) {
    lua_getfield(L, -1, "router");
    int same = lua_touserdata(L, -1) == (void *)rt->router;
    lua_pop(L, 1);
    if (same) {
      lua_getfield(L, -1, "byshape");
      lua_remove(L, -2);
      return;
    }
  }
  lua_pop(L, 1);
  lua_createtable(L, 0, 2);
  lua_pushlightuserdata(L, rt->router);
  lua_setfield(L, -2, "router");
  lua_newtable(L);
  lua_pushvalue(L, -1);
  lua_setfield(L, -3, "byshape");
  lua_insert(L, -2);
  lua_rawsetp(L, LUA_REGISTRYINDEX, &records_key);
}

/* Pushes "METHOD /a/{}/b": the pattern as the router tells routes apart. */
static void push_shape(lua_State *L, int method, const char *pattern) {
  luaL_Buffer b;
  luaL_buffinit(L, &b);
  luaL_addstring(&b, eng_router_method_name(method));
  luaL_addchar(&b, ' ');
  for (const char *p = pattern; *p; p++) {
    luaL_addchar(&b, *p);
    if (*p == '{' && (p == pattern || p[-1] == '/')) {
      const char *close = strchr(p, '}');
      if (close && (close[1] == '/' || close[1] == '\0'))
        p = close - 1; /* the loop adds the '}' next */
    }
  }
  luaL_pushresult(&b);
}

/* Pushes "file:line" of a Lua source position, or short_src when the chunk is no file. */
static void push_place(lua_State *L, const lua_Debug *ar, int line) {
  if (ar->source && ar->source[0] == '@')
    lua_pushfstring(L, "%s:%d", ar->source + 1, line);
  else
    lua_pushfstring(L, "%s:%d", ar->short_src, line);
}

/* Pushes where the function at idx is defined. */
static void push_defined(lua_State *L, int idx) {
  lua_Debug ar;
  lua_pushvalue(L, idx);
  lua_getinfo(L, ">S", &ar);
  if (strcmp(ar.what, "C") == 0)
    lua_pushliteral(L, "[C]");
  else
    push_place(L, &ar, ar.linedefined);
}

/* Pushes where the running C function was called from (the script line), or nil. */
static void push_caller(lua_State *L) {
  lua_Debug ar;
  if (lua_getstack(L, 1, &ar) && lua_getinfo(L, "Sl", &ar) && ar.currentline > 0)
    push_place(L, &ar, ar.currentline);
  else
    lua_pushnil(L);
}

static void record_add(lua_State *L, int method, const char *pattern, int fn_idx, int ref) {
  eng_runtime *rt = eng_rt(L);
  push_records(L, rt);
  push_shape(L, method, pattern);
  lua_createtable(L, 0, 5);
  lua_pushinteger(L, method);
  lua_setfield(L, -2, "m");
  lua_pushstring(L, pattern);
  lua_setfield(L, -2, "p");
  lua_pushinteger(L, ref);
  lua_setfield(L, -2, "ref");
  push_defined(L, fn_idx);
  lua_setfield(L, -2, "h");
  push_caller(L);
  lua_setfield(L, -2, "at");
  lua_rawset(L, -3);
  lua_pop(L, 1);
}

static void record_replace(lua_State *L, int method, const char *pattern, int fn_idx, int ref) {
  eng_runtime *rt = eng_rt(L);
  push_records(L, rt);
  push_shape(L, method, pattern);
  lua_pushvalue(L, -1);
  if (lua_rawget(L, -3) != LUA_TTABLE) { /* routed without a record: make one */
    lua_pop(L, 1);
    lua_createtable(L, 0, 7);
    lua_pushinteger(L, method);
    lua_setfield(L, -2, "m");
    lua_pushstring(L, pattern);
    lua_setfield(L, -2, "p");
    lua_pushvalue(L, -2);
    lua_pushvalue(L, -2);
    lua_rawset(L, -5);
  }
  lua_remove(L, -2); /* the shape */
  if (lua_getfield(L, -1, "orig") == LUA_TNIL) {
    lua_getfield(L, -2, "h");
    lua_setfield(L, -3, "orig");
  }
  lua_pop(L, 1);
  lua_pushinteger(L, ref);
  lua_setfield(L, -2, "ref");
  push_defined(L, fn_idx);
  lua_setfield(L, -2, "h");
  push_caller(L);
  lua_setfield(L, -2, "rat");
  lua_pop(L, 2);
}

typedef struct list_ctx {
  eng_runtime *rt;
  eng_route_info *out;
  size_t n, cap;
} list_ctx;

/* strdup of the string field name of the table on top, NULL when absent; raises on no memory. */
static char *dup_field(lua_State *L, const char *name) {
  char *copy = NULL;
  if (lua_getfield(L, -1, name) == LUA_TSTRING && (copy = strdup(lua_tostring(L, -1))) == NULL)
    luaL_error(L, "out of memory");
  lua_pop(L, 1);
  return copy;
}

static eng_route_info *list_next(lua_State *L, list_ctx *c) {
  if (c->n == c->cap) {
    size_t cap = c->cap ? c->cap * 2 : 32;
    eng_route_info *grown = realloc(c->out, cap * sizeof *grown);
    if (grown == NULL)
      luaL_error(L, "out of memory");
    c->out = grown;
    c->cap = cap;
  }
  eng_route_info *r = &c->out[c->n++];
  memset(r, 0, sizeof *r);
  return r;
}

/* Copies the live records into c (under eng_lua_protect; c->out[0..n) is the caller's to free). */
static int list_p(lua_State *L) {
  list_ctx *c = lua_touserdata(L, 1);
  eng_router *router = c->rt->router;
  if (router == NULL)
    return 0;
  push_records(L, c->rt);
  lua_pushnil(L);
  while (lua_next(L, -2)) {
    lua_getfield(L, -1, "m");
    int method = (int)lua_tointeger(L, -1);
    lua_getfield(L, -2, "p");
    const char *pattern = lua_tostring(L, -1);
    lua_getfield(L, -3, "ref");
    int ref = (int)lua_tointeger(L, -1);
    int *slot = pattern ? eng_router_slot(router, method, pattern) : NULL;
    lua_pop(L, 3);
    if (slot != NULL && *slot == ref) {
      eng_route_info *r = list_next(L, c);
      r->method = method;
      r->pattern = dup_field(L, "p");
      r->handler = dup_field(L, "h");
      r->registered = dup_field(L, "at");
      r->replaced_at = dup_field(L, "rat");
      r->replaced = dup_field(L, "orig");
    }
    lua_pop(L, 1);
  }
  return 0;
}

static int cmp_info(const void *a, const void *b) {
  const eng_route_info *x = a, *y = b;
  int c = strcmp(x->pattern ? x->pattern : "", y->pattern ? y->pattern : "");
  return c ? c : (x->method > y->method) - (x->method < y->method);
}

void eng_route_infos_free(eng_route_info *r, size_t n) {
  for (size_t i = 0; i < n; i++) {
    free(r[i].pattern);
    free(r[i].handler);
    free(r[i].registered);
    free(r[i].replaced_at);
    free(r[i].replaced);
  }
  free(r);
}

int eng_runtime_routes(eng_runtime *rt, eng_route_info **out, size_t *n, char **err) {
  list_ctx c = {.rt = rt};
  lua_State *L = rt->L;
  int top = lua_gettop(L);
  *err = NULL;
  if (eng_lua_protect(L, list_p, &c, 0) != LUA_OK) {
    lua_settop(L, top);
    eng_route_infos_free(c.out, c.n);
    return eng_errorf(err, ENG_ENOMEM, "cannot list the routes: out of memory");
  }
  lua_settop(L, top);
  if (c.n > 1)
    qsort(c.out, c.n, sizeof *c.out, cmp_info);
  *out = c.out;
  *n = c.n;
  return 0;
}

typedef struct hooks_ctx {
  eng_runtime *rt;
  eng_hook_info *out;
  size_t n;
} hooks_ctx;

/* Copies the hooks' places into c (under eng_lua_protect; c->out[0..n) is the caller's to free). */
static int hooks_p(lua_State *L) {
  hooks_ctx *c = lua_touserdata(L, 1);
  int refs[2] = {c->rt->before_hooks, c->rt->after_hooks};
  static const char *const kinds[2] = {"before", "after"};
  size_t total = 0;
  for (int k = 0; k < 2; k++)
    if (refs[k] != LUA_NOREF) {
      lua_rawgeti(L, LUA_REGISTRYINDEX, refs[k]);
      total += lua_rawlen(L, -1);
      lua_pop(L, 1);
    }
  if (total == 0)
    return 0;
  if ((c->out = calloc(total, sizeof *c->out)) == NULL)
    return luaL_error(L, "out of memory");
  for (int k = 0; k < 2; k++) {
    if (refs[k] == LUA_NOREF)
      continue;
    lua_rawgeti(L, LUA_REGISTRYINDEX, refs[k]);
    lua_Integer len = (lua_Integer)lua_rawlen(L, -1);
    for (lua_Integer i = 1; i <= len && c->n < total; i++) {
      lua_rawgeti(L, -1, i);
      push_defined(L, lua_gettop(L));
      eng_hook_info *h = &c->out[c->n++];
      h->kind = kinds[k];
      if ((h->handler = strdup(lua_tostring(L, -1))) == NULL)
        return luaL_error(L, "out of memory");
      lua_pop(L, 2);
    }
    lua_pop(L, 1);
  }
  return 0;
}

void eng_hook_infos_free(eng_hook_info *h, size_t n) {
  for (size_t i = 0; i < n; i++)
    free(h[i].handler);
  free(h);
}

int eng_runtime_hooks(eng_runtime *rt, eng_hook_info **out, size_t *n, char **err) {
  hooks_ctx c = {.rt = rt};
  lua_State *L = rt->L;
  int top = lua_gettop(L);
  *err = NULL;
  *out = NULL;
  *n = 0;
  if (eng_lua_protect(L, hooks_p, &c, 0) != LUA_OK) {
    lua_settop(L, top);
    eng_hook_infos_free(c.out, c.n);
    return eng_errorf(err, ENG_ENOMEM, "cannot list the hooks: out of memory");
  }
  lua_settop(L, top);
  *out = c.out;
  *n = c.n;
  return 0;
}

/* ---- the module ----------------------------------------------------------------------------- */

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
  record_add(L, method, pattern, fn_idx, ref);
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
  record_replace(L, method, pattern, 3, ref);
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

/* Appends the function at 1 to the hook array *ref (made on first use). */
static int add_hook(lua_State *L, int *ref) {
  luaL_checktype(L, 1, LUA_TFUNCTION);
  if (*ref == LUA_NOREF) {
    lua_newtable(L);
    *ref = luaL_ref(L, LUA_REGISTRYINDEX);
  }
  lua_rawgeti(L, LUA_REGISTRYINDEX, *ref);
  lua_pushvalue(L, 1);
  lua_rawseti(L, -2, (lua_Integer)lua_rawlen(L, -2) + 1);
  return 0;
}

static int route_before(lua_State *L) { return add_hook(L, &eng_rt(L)->before_hooks); }
static int route_after(lua_State *L) { return add_hook(L, &eng_rt(L)->after_hooks); }

void eng_lua_route_reset_hooks(eng_runtime *rt, lua_State *L) {
  luaL_unref(L, LUA_REGISTRYINDEX, rt->before_hooks);
  luaL_unref(L, LUA_REGISTRYINDEX, rt->after_hooks);
  luaL_unref(L, LUA_REGISTRYINDEX, rt->error_hook);
  rt->before_hooks = rt->after_hooks = rt->error_hook = LUA_NOREF;
}

int eng_luaopen_route(lua_State *L) {
  static const luaL_Reg fns[] = {{"get", route_get},           {"head", route_head},
                                 {"post", route_post},         {"put", route_put},
                                 {"patch", route_patch},       {"delete", route_delete},
                                 {"options", route_options},   {"add", route_add},
                                 {"on_error", route_on_error}, {"handler", route_handler},
                                 {"replace", route_replace},   {"before", route_before},
                                 {"after", route_after},       {NULL, NULL}};
  luaL_newlib(L, fns);
  return 1;
}
