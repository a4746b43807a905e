/* lua_runtime.c - Lua states, route scripts, budgets and dispatch (see lua_runtime.h).
 *
 * Budgets: every handler runs in a coroutine with a count hook. The hook
 * checks a monotonic deadline every ENG_HOOK_COUNT instructions; once the
 * deadline passes it raises on every instruction, so a script that catches the
 * error with pcall cannot keep running. The allocator enforces the memory cap
 * for the whole state and refuses growth past it (Lua raises "not enough
 * memory"). Either way the flag set here turns the answer into a 503. */
#include "lua_runtime.h"
#include "text.h"
#include "db.h"
#include "error.h"
#include "files.h"
#include "log.h"
#include "lua_common.h"
#include "lua_crypto.h"
#include "lua_db.h"
#include "lua_json.h"

#include <lauxlib.h>
#include <lualib.h>

#include <ctype.h>
#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#define ENG_HOOK_COUNT 1000        /* instructions between deadline checks */
#define ENG_MAX_SCRIPT_BYTES (16u << 20)
#define ENG_MAX_SCRIPTS 1024

/* A request whose handler is running: what its table's lazy fields are built from
 * (see push_request). Lives on the C stack of eng_runtime_handle_in. */
typedef struct live_request {
  const void *table; /* lua_topointer of the request table */
  const eng_http_request *req;
  const eng_route_match *m;
  const char *peer, *request_id;
  struct live_request *prev; /* the request of the enclosing handler (test client), or NULL */
} live_request;

struct eng_runtime {
  lua_State *L;
  eng_router *router;
  eng_db *db;
  char *scripts_dir;
  int budget_ms;
  size_t mem_used, mem_limit;
  int in_request; /* limits apply to allocations only while a script runs a request */
  int budget_blown, mem_blown;
  int64_t deadline_ms;
  int error_hook; /* registry ref or LUA_NOREF */
  int req_mt;     /* registry ref: metatable of request tables */
  int headers_mt; /* registry ref: metatable of header tables */
  int key_method, key_path; /* registry refs: the key strings of the eagerly set request fields */
  live_request *live; /* requests whose handlers are running, innermost first */
  const char *request_id; /* of the request being handled (for engine.log) */
  lua_State *co;  /* the reusable handler coroutine, or NULL (see run_budgeted) */
  int co_ref;     /* its registry ref (the anchor), or LUA_NOREF */
  int co_busy;    /* co is running a call right now */
  const eng_http_limits *limits;
  int test_mode;
};

static int64_t mono_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static eng_runtime *RT(lua_State *L) { return *(eng_runtime **)lua_getextraspace(L); }

/* ---- allocator and budget ---------------------------------------------------------------- */

static void *l_alloc(void *ud, void *ptr, size_t osize, size_t nsize) {
  eng_runtime *rt = ud;
  size_t old = ptr ? osize : 0;
  if (nsize == 0) {
    free(ptr);
    rt->mem_used -= old;
    return NULL;
  }
  if (nsize > old && rt->mem_used + (nsize - old) > rt->mem_limit) {
    rt->mem_blown = 1;
    return NULL;
  }
  void *p = realloc(ptr, nsize);
  if (p == NULL)
    return NULL;
  rt->mem_used = rt->mem_used - old + nsize;
  return p;
}

static void budget_hook(lua_State *L, lua_Debug *ar) {
  (void)ar;
  eng_runtime *rt = RT(L);
  if (rt->budget_blown || mono_ms() > rt->deadline_ms) {
    rt->budget_blown = 1;
    lua_sethook(L, budget_hook, LUA_MASKCOUNT, 1);
    luaL_error(L, "script budget exceeded (%d ms)", rt->budget_ms);
  }
}

/* Turns the error object at the top of co into a message with a traceback (pushed on L). */
static void push_error_text(lua_State *L, lua_State *co) {
  const char *msg;
  if (lua_type(co, -1) == LUA_TSTRING) {
    msg = lua_tostring(co, -1);
  } else if (luaL_callmeta(co, -1, "__tostring") && lua_type(co, -1) == LUA_TSTRING) {
    msg = lua_tostring(co, -1);
  } else {
    msg = lua_pushfstring(co, "(error object is a %s value)", luaL_typename(co, -1));
  }
  luaL_traceback(L, co, msg, 0);
}

/* Runs the function below nargs arguments on L's top in a coroutine under the
 * budget. On return *co holds the thread and the results are on its stack; the
 * caller reads them, then calls run_release and restores L's top (a fresh thread
 * is anchored there). Returns the lua_resume status; LUA_YIELD is turned into an
 * error.
 *
 * A new thread per call (a lua_State and its stack) was a large share of a small
 * request's cost, so one coroutine per runtime is reused: once a call returns
 * normally the thread is back at its base level with status LUA_OK, and with its
 * stack emptied lua_resume starts the next function on it. A call that fails,
 * yields or blows a budget leaves it unusable, so run_release drops it. While it
 * runs (a handler calls back into the runtime: the in-process test client) the
 * nested call gets a fresh thread. */
static int run_budgeted(eng_runtime *rt, lua_State *L, int nargs, lua_State **co_out, int *nres) {
  lua_State *co;
  if (rt->co_busy) {
    co = lua_newthread(L);
    lua_insert(L, -(nargs + 2));
  } else {
    if (rt->co == NULL) {
      rt->co = lua_newthread(L);
      rt->co_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    }
    co = rt->co;
    rt->co_busy = 1;
  }
  lua_xmove(L, co, nargs + 1);
  rt->budget_blown = 0;
  rt->mem_blown = 0;
  rt->deadline_ms = mono_ms() + rt->budget_ms;
  rt->in_request = 1;
  lua_sethook(co, budget_hook, LUA_MASKCOUNT, ENG_HOOK_COUNT);
  int st = lua_resume(co, L, nargs, nres);
  lua_sethook(co, NULL, 0, 0);
  rt->in_request = 0;
  if (st == LUA_YIELD) {
    lua_settop(co, 0);
    lua_pushliteral(co, "handler yielded: coroutine.yield is not allowed across the handler boundary");
    st = LUA_ERRRUN;
  }
  *co_out = co;
  return st;
}

/* Ends a run_budgeted call whose results have been read: the reusable coroutine is
 * emptied for the next call after a clean return, dropped otherwise. */
static void run_release(eng_runtime *rt, lua_State *co, int st) {
  if (co != rt->co)
    return; /* a fresh thread: garbage once the caller restores L's top */
  rt->co_busy = 0;
  if (st == LUA_OK && !rt->budget_blown && !rt->mem_blown) {
    lua_settop(co, 0);
    return;
  }
  luaL_unref(rt->L, LUA_REGISTRYINDEX, rt->co_ref);
  rt->co_ref = LUA_NOREF;
  rt->co = NULL;
}

/* ---- engine.route -------------------------------------------------------------------------- */

static int route_add_method(lua_State *L, int method, int pattern_idx, int fn_idx) {
  eng_runtime *rt = RT(L);
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

#define ROUTE_FN(name, M)                                                  \
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
  int *slot = eng_router_slot(RT(L)->router, method, luaL_checkstring(L, 2));
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
  int *slot = eng_router_slot(RT(L)->router, method, pattern);
  if (slot == NULL)
    return luaL_error(L, "route %s %s: not routed, nothing to replace", eng_router_method_name(method), pattern);
  lua_pushvalue(L, 3);
  int ref = luaL_ref(L, LUA_REGISTRYINDEX);
  luaL_unref(L, LUA_REGISTRYINDEX, *slot);
  *slot = ref;
  return 0;
}

static int route_on_error(lua_State *L) {
  eng_runtime *rt = RT(L);
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
  static const luaL_Reg fns[] = {{"get", route_get},         {"head", route_head},     {"post", route_post},
                                 {"put", route_put},         {"patch", route_patch},   {"delete", route_delete},
                                 {"options", route_options}, {"add", route_add},       {"on_error", route_on_error},
                                 {"handler", route_handler}, {"replace", route_replace},
                                 {NULL, NULL}};
  luaL_newlib(L, fns);
  return 1;
}

/* ---- engine.log ---------------------------------------------------------------------------- */

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
  eng_log_msg(level, RT(L)->request_id, msg, len);
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

/* ---- engine.config ------------------------------------------------------------------------- */

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

static int load_settings(lua_State *L, const char *file, char **err) {
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

/* ---- script loading ------------------------------------------------------------------------ */

/* Loads path as a text chunk named "@path"; pushes the function or an error message. */
static int load_text_file(lua_State *L, const char *path) {
  size_t len = 0;
  char *src = NULL;
  if (eng_file_read(path, ENG_MAX_SCRIPT_BYTES, &src, &len) != 0) {
    lua_pushfstring(L, "cannot read %s", path);
    return LUA_ERRFILE;
  }
  lua_pushfstring(L, "@%s", path);
  int st = luaL_loadbufferx(L, src, len, lua_tostring(L, -1), "t");
  free(src);
  lua_remove(L, -2);
  return st;
}

/* package.searchers entry: modules from the scripts directories (last first), text only. */
static int search_scripts(lua_State *L) {
  eng_runtime *rt = RT(L);
  const char *name = luaL_checkstring(L, 1);
  eng_dirs dl;
  if (rt->scripts_dir == NULL || eng_dirs_split(&dl, rt->scripts_dir) != 0) {
    lua_pushliteral(L, "no scripts directory");
    return 1;
  }
  luaL_Buffer b;
  luaL_buffinit(L, &b);
  for (const char *p = name; *p; p++)
    luaL_addchar(&b, *p == '.' ? '/' : *p);
  luaL_pushresult(&b);
  const char *rel = lua_tostring(L, -1);
  const char *tries[2] = {"%s/%s.lua", "%s/%s/init.lua"};
  for (int d = dl.n - 1; d >= 0; d--) {
    for (int i = 0; i < 2; i++) {
      const char *path = lua_pushfstring(L, tries[i], dl.dirs[d], rel);
      struct stat st;
      if (stat(path, &st) == 0 && S_ISREG(st.st_mode)) {
        if (load_text_file(L, path) != LUA_OK)
          return luaL_error(L, "error loading module '%s':\n\t%s", name, lua_tostring(L, -1));
        lua_pushstring(L, path);
        return 2;
      }
      lua_pop(L, 1);
    }
  }
  lua_pushfstring(L, "no file '%s.lua' in the scripts directories (%s)", rel, rt->scripts_dir);
  return 1;
}

/* load() that refuses binary chunks. */
static int text_load(lua_State *L) {
  int nargs = lua_gettop(L);
  if (nargs < 2)
    lua_settop(L, 2); /* chunk, chunkname (nil) */
  int base = lua_gettop(L);
  lua_pushvalue(L, lua_upvalueindex(1));
  lua_pushvalue(L, 1);
  lua_pushvalue(L, 2);
  lua_pushliteral(L, "t");
  /* env only when given: an explicit nil env would be used as the chunk's _ENV. */
  for (int i = 4; i <= nargs; i++)
    lua_pushvalue(L, i);
  lua_call(L, 3 + (nargs > 3 ? nargs - 3 : 0), LUA_MULTRET);
  return lua_gettop(L) - base;
}

static int global_newindex(lua_State *L) {
  return luaL_error(L, "assignment to undeclared global '%s' (use local)", luaL_tolstring(L, 2, NULL));
}

static void sandbox(lua_State *L, int test_mode) {
  /* Binary chunks never load: load() is text-only in every mode. */
  lua_getglobal(L, "load");
  lua_pushcclosure(L, text_load, 1);
  lua_setglobal(L, "load");

  lua_getglobal(L, "package");
  lua_getfield(L, -1, "searchers");
  if (test_mode) {
    /* busted needs the system paths and C modules; scripts come first. */
    int n = (int)lua_rawlen(L, -1);
    for (int i = n; i >= 2; i--) {
      lua_rawgeti(L, -1, i);
      lua_rawseti(L, -2, i + 1);
    }
    lua_pushcfunction(L, search_scripts);
    lua_rawseti(L, -2, 2);
  } else {
    lua_newtable(L);
    lua_rawgeti(L, -2, 1); /* preload */
    lua_rawseti(L, -2, 1);
    lua_pushcfunction(L, search_scripts);
    lua_rawseti(L, -2, 2);
    lua_setfield(L, -3, "searchers");
    lua_pushliteral(L, "");
    lua_setfield(L, -3, "cpath");
    lua_pushnil(L);
    lua_setfield(L, -3, "loadlib");
  }
  lua_pop(L, 2);
  if (test_mode)
    return;

  /* Server mode: no process control, no file system, no debug library. */
  static const char *const os_drop[] = {"exit", "execute", "remove", "rename", "tmpname", "setlocale", NULL};
  lua_getglobal(L, "os");
  for (int i = 0; os_drop[i]; i++) {
    lua_pushnil(L);
    lua_setfield(L, -2, os_drop[i]);
  }
  lua_pop(L, 1);
  static const char *const g_drop[] = {"io", "dofile", "loadfile", NULL};
  for (int i = 0; g_drop[i]; i++) {
    lua_pushnil(L);
    lua_setglobal(L, g_drop[i]);
  }
  /* debug keeps traceback only; io and debug leave package.loaded too. */
  lua_newtable(L);
  lua_getglobal(L, "debug");
  lua_getfield(L, -1, "traceback");
  lua_setfield(L, -3, "traceback");
  lua_pop(L, 1);
  lua_getglobal(L, "package");
  lua_getfield(L, -1, "loaded");
  lua_pushvalue(L, -3);
  lua_setfield(L, -2, "debug");
  lua_pushnil(L);
  lua_setfield(L, -2, "io");
  lua_pop(L, 2);
  lua_setglobal(L, "debug");
}

static void lock_globals(lua_State *L) {
  lua_pushglobaltable(L);
  lua_newtable(L);
  lua_pushcfunction(L, global_newindex);
  lua_setfield(L, -2, "__newindex");
  lua_setmetatable(L, -2);
  lua_pop(L, 1);
}

static int msgh(lua_State *L) {
  const char *msg = lua_tostring(L, 1);
  if (msg == NULL) {
    if (luaL_callmeta(L, 1, "__tostring") && lua_type(L, -1) == LUA_TSTRING)
      msg = lua_tostring(L, -1);
    else
      msg = lua_pushfstring(L, "(error object is a %s value)", luaL_typename(L, 1));
  }
  luaL_traceback(L, L, msg, 1);
  return 1;
}

static int cmp_script(const void *a, const void *b);

static void unref_handler(int handler, void *ud) { luaL_unref((lua_State *)ud, LUA_REGISTRYINDEX, handler); }

static int healthz(lua_State *L) {
  lua_pushinteger(L, 200);
  lua_createtable(L, 0, 1);
  lua_pushliteral(L, "ok");
  lua_setfield(L, -2, "status");
  return 2;
}

typedef struct script {
  char *name; /* file name, the overlay key */
  char *path;
} script;

static int cmp_script(const void *a, const void *b) {
  return strcmp(((const script *)a)->name, ((const script *)b)->name);
}

/* Adds dir's *.lua files to the list, sorted by name: a name already listed
 * (from an earlier directory) keeps its place and takes this path. */
static int list_scripts(const char *dir, script **list, size_t *n, char **err) {
  DIR *d = opendir(dir);
  if (d == NULL) {
    char tmp[512];
    snprintf(tmp, sizeof tmp, "cannot open scripts directory '%s'", dir);
    *err = strdup(tmp);
    return ENG_ELUA;
  }
  size_t first_new = *n;
  int rc = 0;
  struct dirent *e;
  while (rc == 0 && (e = readdir(d)) != NULL) {
    size_t len = strlen(e->d_name);
    if (len < 5 || e->d_name[0] == '.' || strcmp(e->d_name + len - 4, ".lua") != 0)
      continue;
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
    size_t i = 0;
    while (i < first_new && strcmp((*list)[i].name, e->d_name) != 0)
      i++;
    if (i < first_new) { /* overlay: same name, later directory */
      char *p = strdup(path);
      if (p == NULL) {
        rc = ENG_ENOMEM;
        break;
      }
      free((*list)[i].path);
      (*list)[i].path = p;
      continue;
    }
    if (*n == ENG_MAX_SCRIPTS) {
      *err = strdup("too many scripts");
      rc = ENG_ETOOBIG;
      break;
    }
    script *grown = realloc(*list, (*n + 1) * sizeof **list);
    if (grown == NULL) {
      rc = ENG_ENOMEM;
      break;
    }
    *list = grown;
    grown[*n].name = strdup(e->d_name);
    grown[*n].path = strdup(path);
    (*n)++;
    if (!grown[*n - 1].name || !grown[*n - 1].path)
      rc = ENG_ENOMEM;
  }
  closedir(d);
  if (rc == ENG_ENOMEM && *err == NULL)
    *err = strdup("out of memory");
  if (rc == 0)
    qsort(*list + first_new, *n - first_new, sizeof **list, cmp_script);
  return rc;
}

int eng_runtime_load_scripts(eng_runtime *rt, const char *dirs, char **err) {
  lua_State *L = rt->L;
  int rc = 0;
  script *list = NULL;
  size_t n = 0;
  eng_dirs dl;
  *err = NULL;

  if (eng_dirs_split(&dl, dirs) != 0) {
    *err = strdup("the scripts setting must name 1 to 16 directories separated by ':'");
    return ENG_EINVAL;
  }
  /* Fresh router: drop the old routes and their references. */
  eng_router *fresh;
  if (eng_router_new(&fresh) != 0) {
    *err = strdup("out of memory");
    return ENG_ENOMEM;
  }
  if (rt->router) {
    eng_router_each_handler(rt->router, unref_handler, L);
    eng_router_free(rt->router);
  }
  rt->router = fresh;
  if (dirs != rt->scripts_dir) {
    free(rt->scripts_dir);
    rt->scripts_dir = strdup(dirs);
  }

  /* Base directory's scripts in name order (overlaid ones in their place), then
   * each later directory's new scripts: an overlay can wrap the routes below it. */
  for (int i = 0; rc == 0 && i < dl.n; i++)
    rc = list_scripts(dl.dirs[i], &list, &n, err);

  for (size_t i = 0; rc == 0 && i < n; i++) {
    lua_pushcfunction(L, msgh);
    if (load_text_file(L, list[i].path) != LUA_OK || lua_pcall(L, 0, 0, -2) != LUA_OK) {
      *err = strdup(lua_tostring(L, -1) ? lua_tostring(L, -1) : "script error");
      rc = ENG_ELUA;
      lua_pop(L, 2);
      break;
    }
    lua_pop(L, 1);
  }
  for (size_t i = 0; i < n; i++) {
    free(list[i].name);
    free(list[i].path);
  }
  free(list);
  if (rc == 0) {
    /* /healthz is the engine's unless a script answers it. */
    eng_route_match m;
    char scratch[16];
    eng_router_match(rt->router, ENG_M_GET, "/healthz", 8, scratch, &m);
    if (m.status == 404) {
      lua_pushcfunction(L, healthz);
      int ref = luaL_ref(L, LUA_REGISTRYINDEX);
      const char *why;
      eng_router_add(rt->router, ENG_M_GET, "/healthz", ref, &why);
    }
  }
  return rc;
}

/* ---- state ----------------------------------------------------------------------------------- */

static int req_index(lua_State *L);

static void preload(lua_State *L, const char *name, lua_CFunction fn) {
  luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_PRELOAD_TABLE);
  lua_pushcfunction(L, fn);
  lua_setfield(L, -2, name);
  lua_pop(L, 1);
}

static int headers_index(lua_State *L) {
  size_t len;
  const char *k = lua_tolstring(L, 2, &len);
  if (k == NULL)
    return 0;
  char low[256];
  if (len >= sizeof low)
    return 0;
  for (size_t i = 0; i < len; i++)
    low[i] = (char)tolower((unsigned char)k[i]);
  lua_pushlstring(L, low, len);
  lua_rawget(L, 1);
  return 1;
}

int eng_runtime_new(eng_runtime **out, const eng_runtime_options *opt, char **err) {
  *err = NULL;
  eng_runtime *rt = calloc(1, sizeof *rt);
  if (rt == NULL) {
    *err = strdup("out of memory");
    return ENG_ENOMEM;
  }
  rt->budget_ms = opt->budget_ms > 0 ? opt->budget_ms : 1000;
  rt->mem_limit = opt->memory_limit ? opt->memory_limit : (size_t)256 << 20;
  rt->error_hook = LUA_NOREF;
  rt->co_ref = LUA_NOREF;
  rt->limits = opt->limits;
  rt->test_mode = opt->test_mode;
  int rc = 0;
  lua_State *L = rt->L = lua_newstate(l_alloc, rt);
  if (L == NULL || eng_router_new(&rt->router) != 0) {
    *err = strdup("out of memory");
    rc = ENG_ENOMEM;
    goto fail;
  }
  *(eng_runtime **)lua_getextraspace(L) = rt;
  lua_gc(L, LUA_GCGEN, 0, 0);
  luaL_openlibs(L);
  preload(L, "engine.json", eng_luaopen_json);
  preload(L, "engine.db", eng_luaopen_db);
  preload(L, "engine.crypto", eng_luaopen_crypto);
  preload(L, "engine.time", eng_luaopen_time);
  preload(L, "engine.log", eng_luaopen_log);
  preload(L, "engine.config", eng_luaopen_config);
  preload(L, "engine.route", eng_luaopen_route);
  if (opt->scripts_dir)
    rt->scripts_dir = strdup(opt->scripts_dir);
  sandbox(L, opt->test_mode);
  eng_lua_db_attach(L, NULL);

  lua_createtable(L, 0, 1);
  lua_pushcfunction(L, headers_index);
  lua_setfield(L, -2, "__index");
  rt->headers_mt = luaL_ref(L, LUA_REGISTRYINDEX);
  lua_createtable(L, 0, 1);
  lua_pushcfunction(L, req_index);
  lua_setfield(L, -2, "__index");
  rt->req_mt = luaL_ref(L, LUA_REGISTRYINDEX);
  lua_pushliteral(L, "method");
  rt->key_method = luaL_ref(L, LUA_REGISTRYINDEX);
  lua_pushliteral(L, "path");
  rt->key_path = luaL_ref(L, LUA_REGISTRYINDEX);

  if ((rc = load_settings(L, opt->config_file, err)) != 0)
    goto fail;
  if (!opt->test_mode)
    lock_globals(L);
  if (opt->db)
    eng_runtime_set_db(rt, opt->db);
  if (opt->scripts_dir && (rc = eng_runtime_load_scripts(rt, opt->scripts_dir, err)) != 0)
    goto fail;
  *out = rt;
  return 0;
fail:
  eng_runtime_free(rt);
  return rc;
}

void eng_runtime_free(eng_runtime *rt) {
  if (rt == NULL)
    return;
  if (rt->L)
    lua_close(rt->L);
  eng_router_free(rt->router);
  free(rt->scripts_dir);
  free(rt);
}

lua_State *eng_runtime_lua(eng_runtime *rt) { return rt->L; }

void eng_runtime_set_db(eng_runtime *rt, eng_db *db) {
  rt->db = db;
  eng_lua_db_attach(rt->L, db);
}

size_t eng_runtime_memory(const eng_runtime *rt) { return rt->mem_used; }

eng_runtime *eng_runtime_of(lua_State *L) { return RT(L); }

void eng_runtime_request_id(const eng_http_request *req, char out[ENG_HTTP_REQUEST_ID_MAX + 1]) {
  eng_http_header h;
  if (req && eng_http_find_header(req, "x-request-id", &h) && eng_http_request_id_ok(h.value, h.value_len)) {
    memcpy(out, h.value, h.value_len);
    out[h.value_len] = '\0';
    return;
  }
  eng_crypto_uuid4(out);
}

const eng_http_limits *eng_runtime_limits(const eng_runtime *rt) { return rt->limits; }

void eng_response_init(eng_response *r) { memset(r, 0, sizeof *r); }

void eng_response_reset(eng_response *r) {
  r->status = 0;
  eng_buf_reset(&r->headers);
  eng_buf_reset(&r->body);
  r->content_type[0] = '\0';
}

void eng_response_free(eng_response *r) {
  eng_buf_free(&r->headers);
  eng_buf_free(&r->body);
}

/* ---- requests ---------------------------------------------------------------------------- */

static int req_json(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  lua_getfield(L, 1, "body");
  size_t len;
  const char *body = lua_tolstring(L, -1, &len);
  if (body == NULL || len == 0) {
    lua_pushnil(L);
    lua_pushliteral(L, "empty body");
    return 2;
  }
  return eng_json_decode(L, body, len);
}

/* Pushes the form-decoded s ('+' is a space; a bad %-escape stays as it is). */
static void push_form_decoded(lua_State *L, const char *s, size_t n) {
  luaL_Buffer b;
  luaL_buffinit(L, &b);
  for (size_t i = 0; i < n; i++) {
    int hi, lo;
    if (s[i] == '+') {
      luaL_addchar(&b, ' ');
    } else if (s[i] == '%' && i + 2 < n && (hi = eng_hex_digit((unsigned char)s[i + 1])) >= 0 && (lo = eng_hex_digit((unsigned char)s[i + 2])) >= 0) {
      luaL_addchar(&b, (char)(hi * 16 + lo));
      i += 2;
    } else {
      luaL_addchar(&b, s[i]);
    }
  }
  luaL_pushresult(&b);
}

static void push_query(lua_State *L, const char *q, size_t n) {
  lua_newtable(L);
  size_t i = 0;
  while (i < n) {
    size_t j = i;
    while (j < n && q[j] != '&' && q[j] != '#')
      j++;
    if (j > i) {
      size_t eq = i;
      while (eq < j && q[eq] != '=')
        eq++;
      push_form_decoded(L, q + i, eq - i);
      if (eq < j)
        push_form_decoded(L, q + eq + 1, j - eq - 1);
      else
        lua_pushliteral(L, "");
      lua_rawset(L, -3);
    }
    if (j < n && q[j] == '#')
      break;
    i = j + 1;
  }
}

static void push_params(lua_State *L, const eng_route_match *m) {
  lua_createtable(L, 0, m->nparams);
  for (int i = 0; i < m->nparams; i++) {
    lua_pushlstring(L, m->params[i].name, m->params[i].name_len);
    lua_pushlstring(L, m->params[i].value, m->params[i].value_len);
    lua_rawset(L, -3);
  }
}

static void push_headers(eng_runtime *rt, lua_State *L, const eng_http_request *req) {
  lua_createtable(L, 0, req->nheaders);
  size_t pos = 0;
  eng_http_header h;
  while (eng_http_next_header(req, &pos, &h)) {
    lua_pushlstring(L, h.name, h.name_len);
    lua_pushvalue(L, -1);
    if (lua_rawget(L, -3) == LUA_TSTRING) { /* repeated header: join with ", " */
      lua_pushliteral(L, ", ");
      lua_pushlstring(L, h.value, h.value_len);
      lua_concat(L, 3);
    } else {
      lua_pop(L, 1);
      lua_pushlstring(L, h.value, h.value_len);
    }
    lua_rawset(L, -3);
  }
  lua_rawgeti(L, LUA_REGISTRYINDEX, rt->headers_mt);
  lua_setmetatable(L, -2);
}

/* The request table is built lazily. A handler of a small route reads a field or
 * two, and building all of them up front (five tables and a dozen strings per
 * request, then their garbage) was the largest part of such a request's cost. Only
 * method and path are set at once; params, query, headers, body, request_id, peer
 * and route are built by the metatable's __index on first read, from the C request
 * still held by the running handler, and stored in the table with rawset so later
 * reads are plain lookups.
 *
 * The C request lives only while its handler runs: a field first read after that
 * (a request kept past its handler) raises an error rather than touching freed
 * memory. What scripts see differently from a plain table: rawget, next and pairs
 * show only the fields built so far, and a lazy field set to nil comes back on the
 * next read. */
enum { F_NONE, F_JSON, F_PARAMS, F_QUERY, F_HEADERS, F_BODY, F_REQUEST_ID, F_PEER, F_ROUTE };

static int request_field(const char *k, size_t n) {
  static const struct {
    const char *name;
    size_t len;
    int field;
  } fields[] = {{"params", 6, F_PARAMS}, {"query", 5, F_QUERY},       {"headers", 7, F_HEADERS},
                {"body", 4, F_BODY},     {"json", 4, F_JSON},         {"request_id", 10, F_REQUEST_ID},
                {"peer", 4, F_PEER},     {"route", 5, F_ROUTE}};
  for (size_t i = 0; i < sizeof fields / sizeof fields[0]; i++)
    if (fields[i].len == n && memcmp(fields[i].name, k, n) == 0)
      return fields[i].field;
  return F_NONE;
}

static int req_index(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  if (lua_type(L, 2) != LUA_TSTRING)
    return 0;
  size_t n;
  const char *k = lua_tolstring(L, 2, &n);
  int field = request_field(k, n);
  if (field == F_NONE)
    return 0;
  if (field == F_JSON) { /* a method, shared: not stored in the table */
    lua_pushcfunction(L, req_json);
    return 1;
  }
  eng_runtime *rt = RT(L);
  const void *self = lua_topointer(L, 1);
  const live_request *lr = rt->live;
  while (lr != NULL && lr->table != self)
    lr = lr->prev;
  if (lr == NULL)
    return luaL_error(L, "req.%s read after the request's handler returned", k);
  const eng_http_request *req = lr->req;
  switch (field) {
  case F_PARAMS:
    push_params(L, lr->m);
    break;
  case F_QUERY:
    if (req->path_len < req->url.len && req->url.data[req->path_len] == '?')
      push_query(L, req->url.data + req->path_len + 1, req->url.len - req->path_len - 1);
    else
      lua_newtable(L);
    break;
  case F_HEADERS:
    push_headers(rt, L, req);
    break;
  case F_BODY:
    lua_pushlstring(L, req->body.data ? req->body.data : "", req->body.len);
    break;
  case F_REQUEST_ID:
    lua_pushstring(L, lr->request_id);
    break;
  case F_PEER:
    lua_pushstring(L, lr->peer);
    break;
  default: /* F_ROUTE */
    lua_pushstring(L, lr->m->pattern ? lr->m->pattern : "");
    break;
  }
  lua_pushvalue(L, 2);
  lua_pushvalue(L, -2);
  lua_rawset(L, 1);
  return 1;
}

/* Pushes the request table of lr->req and makes lr the innermost live request
 * (the caller unlinks it when the handler is done). */
static void push_request(eng_runtime *rt, lua_State *L, live_request *lr) {
  lua_createtable(L, 0, 4); /* method, path and two lazy fields before the first rehash */
  lua_rawgeti(L, LUA_REGISTRYINDEX, rt->key_method);
  lua_pushstring(L, lr->req->method);
  lua_rawset(L, -3);
  lua_rawgeti(L, LUA_REGISTRYINDEX, rt->key_path);
  lua_pushlstring(L, lr->req->url.data, lr->req->path_len);
  lua_rawset(L, -3);
  lua_rawgeti(L, LUA_REGISTRYINDEX, rt->req_mt);
  lua_setmetatable(L, -2);
  lr->table = lua_topointer(L, -1);
  lr->prev = rt->live;
  rt->live = lr;
}

static int valid_header_name(const char *s, size_t n) {
  if (n == 0 || n > 128)
    return 0;
  for (size_t i = 0; i < n; i++) {
    unsigned char c = (unsigned char)s[i];
    if (!(isalnum(c) || strchr("!#$%&'*+-.^_`|~", c)))
      return 0;
  }
  return 1;
}

static int valid_header_value(const char *s, size_t n) {
  for (size_t i = 0; i < n; i++) {
    unsigned char c = (unsigned char)s[i];
    if ((c < 0x20 && c != '\t') || c == 0x7f)
      return 0;
  }
  return 1;
}

static int reserved_header(const char *s, size_t n) {
  static const char *const names[] = {"content-length", "transfer-encoding", "connection", "date", "x-request-id", NULL};
  for (int i = 0; names[i]; i++)
    if (strlen(names[i]) == n && strncasecmp(names[i], s, n) == 0)
      return 1;
  return 0;
}

/* Copies a handler's headers table (at idx on co) into resp; NULL or a message. */
static const char *take_headers(lua_State *co, int idx, eng_response *resp) {
  if (lua_isnoneornil(co, idx))
    return NULL;
  if (!lua_istable(co, idx))
    return "headers must be a table";
  lua_pushnil(co);
  while (lua_next(co, idx)) {
    size_t kn, vn;
    if (lua_type(co, -2) != LUA_TSTRING || (lua_type(co, -1) != LUA_TSTRING && lua_type(co, -1) != LUA_TNUMBER)) {
      lua_pop(co, 2);
      return "header names and values must be strings";
    }
    const char *k = lua_tolstring(co, -2, &kn);
    lua_pushvalue(co, -1);
    const char *v = lua_tolstring(co, -1, &vn);
    if (!valid_header_name(k, kn) || !valid_header_value(v, vn)) {
      lua_pop(co, 3);
      return "invalid header name or value";
    }
    if (kn == 12 && strncasecmp(k, "content-type", 12) == 0) {
      if (vn >= sizeof resp->content_type) {
        lua_pop(co, 3);
        return "Content-Type too long";
      }
      memcpy(resp->content_type, v, vn);
      resp->content_type[vn] = '\0';
    } else if (!reserved_header(k, kn)) {
      eng_buf_append(&resp->headers, k, kn);
      eng_buf_append(&resp->headers, ": ", 2);
      eng_buf_append(&resp->headers, v, vn);
      eng_buf_append(&resp->headers, "\r\n", 2);
    }
    lua_pop(co, 2);
  }
  return NULL;
}

static void json_str(eng_buf *b, const char *s) { eng_json_escape(b, s, strlen(s), ENG_JSON_REPLACE); }

static void default_error_body(int status, const char *code, const char *message, const char *request_id,
                               eng_response *resp) {
  resp->status = status;
  eng_buf_reset(&resp->body);
  strcpy(resp->content_type, "application/json");
  eng_buf_append_str(&resp->body, "{\"error\":{\"code\":");
  json_str(&resp->body, code);
  eng_buf_append_str(&resp->body, ",\"message\":");
  json_str(&resp->body, message);
  eng_buf_append_str(&resp->body, "},\"request_id\":");
  json_str(&resp->body, request_id);
  eng_buf_append_char(&resp->body, '}');
}

/* Fills resp->body from the value at idx on co (table -> JSON, string -> bytes). NULL or a message. */
static const char *take_body(lua_State *co, int idx, eng_response *resp) {
  int t = lua_type(co, idx);
  if (t == LUA_TNONE || t == LUA_TNIL)
    return NULL;
  if (t == LUA_TSTRING) {
    size_t n;
    const char *s = lua_tolstring(co, idx, &n);
    if (eng_buf_append(&resp->body, s, n) != 0)
      return "out of memory";
    if (!resp->content_type[0])
      strcpy(resp->content_type, "text/plain; charset=utf-8");
    return NULL;
  }
  const char *why = NULL;
  if (eng_json_encode(co, idx, &resp->body, &why) != 0)
    return why ? why : "cannot encode the body as JSON";
  if (!resp->content_type[0])
    strcpy(resp->content_type, "application/json");
  return NULL;
}

/* After any script call: statements reset, no transaction left open. */
static void after_call(eng_runtime *rt) {
  if (rt->db && eng_db_after_request(rt->db) == 1)
    eng_log(ENG_LOG_WARN, "request %s: handler left a transaction open: rolled back",
            rt->request_id ? rt->request_id : "-");
}

/* Logs a failed script call and answers 500 or 503. */
static void script_failed(eng_runtime *rt, lua_State *L, lua_State *co, int st, const char *request_id,
                          eng_response *resp) {
  int blown = rt->budget_blown || rt->mem_blown;
  push_error_text(L, co);
  size_t len;
  const char *text = lua_tolstring(L, -1, &len);
  eng_log_msg(ENG_LOG_ERROR, request_id, text, len);
  lua_pop(L, 1);
  lua_resetthread(co);
  run_release(rt, co, st);
  eng_buf_reset(&resp->headers);
  resp->content_type[0] = '\0';
  if (blown) {
    if (rt->mem_blown)
      lua_gc(L, LUA_GCCOLLECT);
    eng_runtime_error_in(rt, L, 503, "budget_exceeded", rt->mem_blown ? "script memory budget exceeded"
                                                                : "script time budget exceeded", request_id, resp);
  } else {
    eng_runtime_error_in(rt, L, 500, "internal_error", "internal server error", request_id, resp);
  }
}

void eng_runtime_error_in(eng_runtime *rt, lua_State *L, int status, const char *code, const char *message,
                          const char *request_id, eng_response *resp) {
  resp->status = status;
  eng_buf_reset(&resp->body);
  resp->content_type[0] = '\0';
  if (rt->error_hook == LUA_NOREF) {
    default_error_body(status, code, message, request_id, resp);
    return;
  }
  int top = lua_gettop(L);
  const char *saved = rt->request_id;
  rt->request_id = request_id;
  lua_rawgeti(L, LUA_REGISTRYINDEX, rt->error_hook);
  lua_pushinteger(L, status);
  lua_pushstring(L, code);
  lua_pushstring(L, message);
  lua_pushstring(L, request_id);
  lua_State *co;
  int nres = 0;
  int st = run_budgeted(rt, L, 4, &co, &nres);
  const char *why = NULL;
  if (st != LUA_OK) {
    push_error_text(L, co);
    eng_log(ENG_LOG_ERROR, "error hook failed: %s", lua_tostring(L, -1));
    lua_resetthread(co);
    run_release(rt, co, st);
    default_error_body(status, code, message, request_id, resp);
  } else {
    int base = lua_gettop(co) - nres;
    if ((why = take_headers(co, base + 2, resp)) == NULL)
      why = take_body(co, base + 1, resp);
    run_release(rt, co, st);
    if (why == NULL) {
      if (!resp->content_type[0])
        strcpy(resp->content_type, "application/json");
    } else {
      eng_log(ENG_LOG_ERROR, "error hook returned a bad answer: %s", why);
      default_error_body(status, code, message, request_id, resp);
    }
  }
  after_call(rt);
  rt->request_id = saved;
  lua_settop(L, top);
}

void eng_runtime_handle_in(eng_runtime *rt, lua_State *L, const eng_http_request *req, const char *peer,
                           const char *request_id, eng_response *resp) {
  int top = lua_gettop(L);
  int method = eng_router_method(req->method, strlen(req->method));
  eng_route_match m;
  char small[512];
  char *scratch = req->path_len < sizeof small ? small : malloc(req->path_len + 1);
  if (scratch == NULL) {
    eng_runtime_error_in(rt, L, 500, "internal_error", "out of memory", request_id, resp);
    return;
  }
  eng_router_match(rt->router, method, req->url.data, req->path_len, scratch, &m);
  if (m.status == 404) {
    eng_runtime_error_in(rt, L, 404, "not_found", "no route for this path", request_id, resp);
    goto done;
  }
  if (m.status == 405) {
    char allow[96];
    eng_router_allow_string(m.allow, allow, sizeof allow);
    eng_buf_appendf(&resp->headers, "Allow: %s\r\n", allow);
    eng_runtime_error_in(rt, L, 405, "method_not_allowed", "method not allowed for this path", request_id, resp);
    goto done;
  }
  rt->request_id = request_id;
  lua_rawgeti(L, LUA_REGISTRYINDEX, m.handler);
  live_request lr = {.req = req, .m = &m, .peer = peer, .request_id = request_id};
  push_request(rt, L, &lr);
  lua_State *co;
  int nres = 0;
  int st = run_budgeted(rt, L, 1, &co, &nres);
  if (st != LUA_OK) {
    script_failed(rt, L, co, st, request_id, resp);
  } else {
    int base = lua_gettop(co) - nres;
    const char *why = NULL;
    int isnum = 0;
    lua_Integer status = nres >= 1 && lua_type(co, base + 1) == LUA_TNUMBER ? lua_tointegerx(co, base + 1, &isnum) : 0;
    if (!isnum || status < 100 || status > 599)
      why = "handler must return an HTTP status (integer 100..599) first";
    else if ((why = take_headers(co, base + 3, resp)) == NULL)
      why = take_body(co, base + 2, resp);
    run_release(rt, co, st);
    if (why) {
      char msg[256];
      int n = snprintf(msg, sizeof msg, "%s %s: %s", req->method, m.pattern, why);
      eng_log_msg(ENG_LOG_ERROR, request_id, msg, n > 0 ? (size_t)n : 0);
      eng_buf_reset(&resp->headers);
      eng_runtime_error_in(rt, L, 500, "internal_error", "internal server error", request_id, resp);
    } else {
      resp->status = (int)status;
      if (!resp->content_type[0])
        strcpy(resp->content_type, "application/json");
    }
  }
  rt->live = lr.prev;
  after_call(rt);
  rt->request_id = NULL;
  lua_settop(L, top);
done:
  if (scratch != small)
    free(scratch);
}

void eng_runtime_error(eng_runtime *rt, int status, const char *code, const char *message, const char *request_id,
                       eng_response *resp) {
  eng_runtime_error_in(rt, rt->L, status, code, message, request_id, resp);
}

void eng_runtime_handle(eng_runtime *rt, const eng_http_request *req, const char *peer, const char *request_id,
                        eng_response *resp) {
  eng_runtime_handle_in(rt, rt->L, req, peer, request_id, resp);
}
