/* lua_load.c - route scripts into a runtime's state: reading files, directory overlays,
 * the package.searchers entry for the scripts directories, text-only load(), the sandbox
 * (read-only globals, standard library and engine modules; os.getenv without secrets) and the
 * load budget (see lua_runtime.h for eng_runtime_load_scripts, lua_runtime_int.h for the rest).
 *
 * Scripts are loaded as text only, with the chunk name "@path", so tracebacks read
 * scripts/customer.lua:42. */
#include "lua_runtime_int.h"
#include "error.h"
#include "files.h"

#include <lauxlib.h>
#include <lualib.h>

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>

#define ENG_MAX_SCRIPT_BYTES (16u << 20)
#define ENG_MAX_SCRIPTS 1024

static const char script_env_key = 'e'; /* registry: the environment of script chunks (test mode) */

/* Loads path as a text chunk named "@path"; pushes the function or an error message.
 * The name is pushed before the file is read, so nothing raises while the source is held.
 * Under `apiengine test` the chunk's _ENV is the scripts' read-only view of the globals (in the
 * server that is the registry's globals, which every chunk gets anyway). */
static int load_text_file(lua_State *L, const char *path) {
  const char *chunkname = lua_pushfstring(L, "@%s", path);
  size_t len = 0;
  char *src = NULL;
  if (eng_file_read(path, ENG_MAX_SCRIPT_BYTES, &src, &len) != 0) {
    lua_pop(L, 1);
    lua_pushfstring(L, "cannot read %s", path);
    return LUA_ERRFILE;
  }
  int st = luaL_loadbufferx(L, src, len, chunkname, "t"); /* reports errors, never raises */
  free(src);
  lua_remove(L, -2);
  if (st == LUA_OK) {
    if (lua_rawgetp(L, LUA_REGISTRYINDEX, &script_env_key) == LUA_TTABLE)
      lua_setupvalue(L, -2, 1);
    else
      lua_pop(L, 1);
  }
  return st;
}

/* package.searchers entry: modules from the scripts directories (last first), text only. */
static int search_scripts(lua_State *L) {
  eng_runtime *rt = eng_rt(L);
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

/* ---- read-only tables -------------------------------------------------------------------------
 *
 * A script sees the standard library, the engine's modules and the global table through proxies:
 * empty tables whose metatable reads from the real table (__index is the table itself, so a read
 * costs one more table lookup and no call), refuses writes (__newindex), lists the real keys
 * (__pairs, __len) and is protected (__metatable), so setmetatable cannot take the lock off. The
 * proxy being empty, every write reaches __newindex, existing keys included (`ipairs = nil`);
 * rawset refuses proxies (it would add keys to the proxy that shadow the real ones). The real
 * tables are reachable only from C: every reference a script can reach points at a proxy (_G and
 * its fields, package and its tables, the registry's globals that chunks get as _ENV). The real
 * package.loaded keeps the real tables, because Lua's tracebacks and argument errors look function
 * names up there ("string.find", "engine.db.exec"); scripts see it only through a proxy that maps
 * them (mapped_index, proxy_next) and through require, which maps its result (guarded_require). */

static const char proxy_mark = 'p';  /* key (its address) set in every proxy's metatable */
static const char proxies_key = 'm'; /* registry: real table -> its proxy, for the frozen ones */

/* Pushes the registry's real -> proxy table, made on first use. */
static void push_proxies(lua_State *L) {
  if (lua_rawgetp(L, LUA_REGISTRYINDEX, &proxies_key) == LUA_TTABLE)
    return;
  lua_pop(L, 1);
  lua_newtable(L);
  lua_pushvalue(L, -1);
  lua_rawsetp(L, LUA_REGISTRYINDEX, &proxies_key);
}

/* Replaces the value at L's top with its proxy when it is a frozen table. */
static void to_proxy(lua_State *L) {
  if (lua_type(L, -1) != LUA_TTABLE)
    return;
  lua_rawgetp(L, LUA_REGISTRYINDEX, &proxies_key);
  if (lua_type(L, -1) == LUA_TTABLE) {
    lua_pushvalue(L, -2);
    if (lua_rawget(L, -2) == LUA_TTABLE) {
      lua_replace(L, -3);
      lua_pop(L, 1);
      return;
    }
    lua_pop(L, 1);
  }
  lua_pop(L, 1);
}

static int is_proxy(lua_State *L, int idx) {
  if (!lua_getmetatable(L, idx))
    return 0;
  int yes = lua_rawgetp(L, -1, &proxy_mark) != LUA_TNIL;
  lua_pop(L, 2);
  return yes;
}

/* __newindex of a proxy; upvalue 1: its name ("string", "engine.db", "_G"). */
static int readonly_newindex(lua_State *L) {
  const char *name = lua_tostring(L, lua_upvalueindex(1));
  const char *key = luaL_tolstring(L, 2, NULL);
  if (strcmp(name, "_G") != 0)
    return luaL_error(L, "%s is read-only: cannot set '%s' (keep your own values in a local table)", name, key);
  lua_pushvalue(L, 2);
  if (lua_rawget(L, lua_upvalueindex(2)) == LUA_TNIL)
    return luaL_error(L, "assignment to undeclared global '%s' (use local)", key);
  return luaL_error(L, "global '%s' is read-only (use a local of your own)", key);
}

/* The iterator __pairs hands out: next() over the real table (upvalue 1), which stays hidden. */
static int proxy_next(lua_State *L) {
  lua_settop(L, 2);
  if (lua_next(L, lua_upvalueindex(1))) {
    to_proxy(L);
    return 2;
  }
  lua_pushnil(L);
  return 1;
}

static int proxy_pairs(lua_State *L) {
  lua_pushvalue(L, lua_upvalueindex(1));
  lua_pushcclosure(L, proxy_next, 1);
  lua_pushvalue(L, 1);
  lua_pushnil(L);
  return 3;
}

static int proxy_len(lua_State *L) {
  lua_pushinteger(L, (lua_Integer)lua_rawlen(L, lua_upvalueindex(1)));
  return 1;
}

/* __index of package.loaded's proxy: the real table (upvalue 1) holds the real standard library
 * (Lua's tracebacks find function names there), which scripts get as proxies. */
static int mapped_index(lua_State *L) {
  lua_settop(L, 2);
  lua_rawget(L, lua_upvalueindex(1));
  to_proxy(L);
  return 1;
}

/* require for scripts: what Lua's require (upvalue 1) gives, the standard library as proxies. */
static int guarded_require(lua_State *L) {
  int n = lua_gettop(L);
  lua_pushvalue(L, lua_upvalueindex(1));
  lua_insert(L, 1);
  lua_call(L, n, LUA_MULTRET);
  if (lua_gettop(L) > 0) {
    lua_pushvalue(L, 1);
    to_proxy(L);
    lua_replace(L, 1);
  }
  return lua_gettop(L);
}

/* The proxy of the table at idx (left there), its reads through fn when not NULL. */
static void readonly_ex(lua_State *L, int idx, const char *name, lua_CFunction index_fn) {
  idx = lua_absindex(L, idx);
  lua_newtable(L);          /* the proxy */
  lua_createtable(L, 0, 6); /* its metatable */
  lua_pushvalue(L, idx);
  if (index_fn)
    lua_pushcclosure(L, index_fn, 1);
  lua_setfield(L, -2, "__index");
  lua_pushstring(L, name);
  lua_pushvalue(L, idx);
  lua_pushcclosure(L, readonly_newindex, 2);
  lua_setfield(L, -2, "__newindex");
  lua_pushvalue(L, idx);
  lua_pushcclosure(L, proxy_pairs, 1);
  lua_setfield(L, -2, "__pairs");
  lua_pushvalue(L, idx);
  lua_pushcclosure(L, proxy_len, 1);
  lua_setfield(L, -2, "__len");
  lua_pushboolean(L, 0);
  lua_setfield(L, -2, "__metatable");
  lua_pushboolean(L, 1);
  lua_rawsetp(L, -2, &proxy_mark);
  lua_setmetatable(L, -2);
  lua_replace(L, idx);
}

void eng_lua_load_readonly(lua_State *L, int idx, const char *name) { readonly_ex(L, idx, name, NULL); }

/* Makes the table at idx read-only (a proxy, left at idx) and records real -> proxy. */
static void freeze_table(lua_State *L, int idx, const char *name, lua_CFunction index_fn) {
  idx = lua_absindex(L, idx);
  push_proxies(L);
  lua_pushvalue(L, idx);
  readonly_ex(L, idx, name, index_fn);
  lua_pushvalue(L, idx);
  lua_rawset(L, -3);
  lua_pop(L, 1);
}

void eng_lua_load_register_readonly(lua_State *L, int idx, const char *name) {
  lua_pushvalue(L, idx);
  freeze_table(L, -1, name, NULL);
  lua_pop(L, 1);
}

/* rawset that refuses the read-only proxies. */
static int guarded_rawset(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  luaL_checkany(L, 2);
  luaL_checkany(L, 3);
  if (is_proxy(L, 1))
    return luaL_error(L, "rawset: the table is read-only (globals, the standard library and the engine's modules)");
  lua_settop(L, 3);
  lua_rawset(L, 1);
  return 1;
}

/* collectgarbage for scripts: "count" and "isrunning" only. The collector is the worker's, for
 * every request after this one: "stop" would let memory grow to the cap, and a full "collect"
 * of a large state is C work no budget stops. */
static int guarded_collectgarbage(lua_State *L) {
  const char *opt = luaL_optstring(L, 1, "collect");
  if (strcmp(opt, "count") != 0 && strcmp(opt, "isrunning") != 0)
    return luaL_error(L,
                      "collectgarbage('%s') is not for scripts: the engine runs the collector (\"count\" and "
                      "\"isrunning\" answer)",
                      opt);
  lua_pushvalue(L, lua_upvalueindex(1));
  lua_insert(L, 1);
  lua_call(L, lua_gettop(L) - 1, LUA_MULTRET);
  return lua_gettop(L);
}

/* load for scripts under `apiengine test`: the global load (upvalue 1), with the scripts' view
 * of the globals (upvalue 2) as the default environment instead of busted's. */
static int script_load(lua_State *L) {
  int n = lua_gettop(L);
  if (n < 4) {
    lua_settop(L, 3);
    lua_pushvalue(L, lua_upvalueindex(2));
    n = 4;
  }
  lua_pushvalue(L, lua_upvalueindex(1));
  lua_insert(L, 1);
  lua_call(L, n, LUA_MULTRET);
  return lua_gettop(L);
}

/* __index of the real global table: reading a global that does not exist is an error. */
static int undeclared_read(lua_State *L) {
  return luaL_error(L, "undeclared global '%s' (a typo? globals are the standard library only)",
                    luaL_tolstring(L, 2, NULL));
}

/* Names of environment variables os.getenv does not show scripts: see filtered_getenv. */
static int secret_env_name(const char *name) {
  if (strncmp(name, "APIENGINE_", 10) == 0)
    return 1;
  static const char *const words[] = {"KEY", "SECRET", "TOKEN", "PASSW", "CREDENTIAL", NULL};
  for (int i = 0; words[i]; i++) {
    size_t n = strlen(words[i]);
    for (const char *p = name; *p; p++)
      if (strncasecmp(p, words[i], n) == 0)
        return 1;
  }
  return 0;
}

/* os.getenv for scripts: nil for the engine's own variables (APIENGINE_*: settings are read with
 * engine.config.get, which never gives the server key) and for any variable whose name says it
 * holds a secret (KEY, SECRET, TOKEN, PASSW(OR)D, CREDENTIAL, in any case), so a script cannot
 * read APIENGINE_KEY, APIENGINE_ADMIN_KEY or the like of other programs. */
static int filtered_getenv(lua_State *L) {
  size_t len;
  const char *name = luaL_checklstring(L, 1, &len);
  const char *v = strlen(name) == len && !secret_env_name(name) ? getenv(name) : NULL;
  if (v)
    lua_pushstring(L, v);
  else
    lua_pushnil(L);
  return 1;
}

void eng_lua_load_sandbox(lua_State *L, int test_mode) {
  /* The library functions that could outrun the time budget are replaced in every mode, so
   * scripts behave under busted as they do in the server. */
  eng_lua_budget_install(L);

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

  /* Scripts never read the server key or other secrets from the environment, in any mode. */
  lua_getglobal(L, "os");
  lua_pushcfunction(L, filtered_getenv);
  lua_setfield(L, -2, "getenv");
  lua_pop(L, 1);
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

void eng_lua_load_freeze(lua_State *L, int test_mode) {
  static const char *const libs[] = {"string", "table", "math", "os", "coroutine", "utf8", "debug", NULL};
  lua_pushglobaltable(L);
  if (test_mode) {
    /* busted keeps the real globals: the scripts get a copy of them (the standard library and
     * what the sandbox set, as busted has not run yet), frozen as the server's are. */
    int real = lua_gettop(L);
    lua_newtable(L);
    lua_pushnil(L);
    while (lua_next(L, real)) {
      lua_pushvalue(L, -2);
      lua_insert(L, -2);
      lua_rawset(L, real + 1);
    }
    lua_remove(L, real);
  }
  int g = lua_gettop(L);

  lua_pushcfunction(L, guarded_rawset);
  lua_setfield(L, g, "rawset");
  lua_getfield(L, g, "require");
  lua_pushcclosure(L, guarded_require, 1);
  lua_setfield(L, g, "require");
  if (!test_mode) { /* under busted the collector is the test run's, and specs drive it */
    lua_getfield(L, g, "collectgarbage");
    lua_pushcclosure(L, guarded_collectgarbage, 1);
    lua_setfield(L, g, "collectgarbage");
  }

  /* The standard library: _G.string is the proxy; package.loaded keeps the real table (Lua's
   * tracebacks look function names up there), which scripts see as the proxy. */
  for (int i = 0; libs[i]; i++) {
    if (lua_getfield(L, g, libs[i]) != LUA_TTABLE) {
      lua_pop(L, 1);
      continue;
    }
    freeze_table(L, -1, libs[i], NULL);
    lua_setfield(L, g, libs[i]);
  }

  /* package: require reads the real table (its upvalue) with raw access, so scripts get a copy
   * whose loaded, preload and searchers are proxies. */
  lua_getfield(L, g, "package");
  int pkg = lua_gettop(L);
  lua_newtable(L);
  int view = lua_gettop(L);
  lua_pushnil(L);
  while (lua_next(L, pkg)) {
    lua_pushvalue(L, -2);
    lua_insert(L, -2);
    if (lua_type(L, -1) == LUA_TTABLE) {
      const char *k = lua_tostring(L, -2);
      lua_pushfstring(L, "package.%s", k ? k : "?");
      readonly_ex(L, -2, lua_tostring(L, -1), k && strcmp(k, "loaded") == 0 ? mapped_index : NULL);
      lua_pop(L, 1);
    }
    lua_rawset(L, view);
  }
  readonly_ex(L, view, "package", NULL); /* the view's slot now holds the proxy */
  push_proxies(L);
  lua_pushvalue(L, pkg);
  lua_pushvalue(L, view);
  lua_rawset(L, -3); /* require "package" gives the proxy too */
  lua_pop(L, 1);
  lua_pushvalue(L, view);
  lua_setfield(L, g, "package");
  lua_pop(L, 2);

  /* The string metatable: s:rep() keeps working, getmetatable("") gives nothing to change. */
  lua_pushliteral(L, "");
  if (lua_getmetatable(L, -1)) {
    lua_pushboolean(L, 0);
    lua_setfield(L, -2, "__metatable");
    lua_pop(L, 1);
  }
  lua_pop(L, 1);

  /* The globals: reading an undeclared one raises with its name; the proxy is _G and _ENV of
   * every chunk loaded from here on (the registry's globals). */
  lua_newtable(L);
  lua_pushcfunction(L, undeclared_read);
  lua_setfield(L, -2, "__index");
  lua_setmetatable(L, g);
  lua_pushvalue(L, g);
  freeze_table(L, -1, "_G", NULL);
  lua_pushvalue(L, -1);
  lua_setfield(L, g, "_G");
  if (test_mode) {
    lua_getfield(L, g, "load");
    lua_pushvalue(L, -2);
    lua_pushcclosure(L, script_load, 2);
    lua_setfield(L, g, "load");
    push_proxies(L); /* require "_G" and package.loaded._G give scripts their view, not busted's */
    lua_pushglobaltable(L);
    lua_pushvalue(L, -3);
    lua_rawset(L, -3);
    lua_pop(L, 1);
    lua_rawsetp(L, LUA_REGISTRYINDEX, &script_env_key);
  } else {
    lua_rawseti(L, LUA_REGISTRYINDEX, LUA_RIDX_GLOBALS);
  }
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

static void unref_handler(int handler, void *ud) { luaL_unref((lua_State *)ud, LUA_REGISTRYINDEX, handler); }

/* Pushes the chunk of the script whose path is given as a light userdata, or raises
 * its load error; under eng_lua_protect (the chunk name and the source allocate). */
static int load_p(lua_State *L) {
  if (load_text_file(L, lua_touserdata(L, 1)) != LUA_OK)
    return lua_error(L);
  return 1;
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
  if (d == NULL)
    return eng_errorf(err, ENG_ELUA, "cannot open scripts directory '%s'", dir);
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
      rc = eng_errorf(err, ENG_ETOOBIG, "too many scripts");
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
    eng_errorf(err, rc, "out of memory");
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

  if (eng_dirs_split(&dl, dirs) != 0)
    return eng_errorf(err, ENG_EINVAL, "the scripts setting must name 1 to %d directories separated by ':'",
                      ENG_DIRS_MAX);
  /* Fresh router: drop the old routes and their references. */
  eng_router *fresh;
  if (eng_router_new(&fresh) != 0)
    return eng_errorf(err, ENG_ENOMEM, "out of memory");
  if (rt->router) {
    eng_router_each_handler(rt->router, unref_handler, L);
    eng_router_free(rt->router);
  }
  rt->router = fresh;
  eng_lua_route_reset_hooks(rt, L); /* the hooks go with the routes */
  if (dirs != rt->scripts_dir) {
    free(rt->scripts_dir);
    rt->scripts_dir = strdup(dirs);
  }

  /* Base directory's scripts in name order (overlaid ones in their place), then
   * each later directory's new scripts: an overlay can wrap the routes below it. */
  for (int i = 0; rc == 0 && i < dl.n; i++)
    rc = list_scripts(dl.dirs[i], &list, &n, err);

  /* The whole load runs under the load budget and the memory cap: a top-level loop stops with
   * its file:line instead of hanging the start, the reload or the check. */
  int64_t saved_deadline;
  eng_lua_budget_load(rt, 1, &saved_deadline);
  for (size_t i = 0; rc == 0 && i < n; i++) {
    lua_pushcfunction(L, msgh);
    if (eng_lua_protect(L, load_p, list[i].path, 1) != LUA_OK || lua_pcall(L, 0, 0, -2) != LUA_OK) {
      const char *msg = lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : "script error";
      if (rt->mem_blown) /* Lua's memory error names no file: say which one and what the cap is */
        rc = eng_errorf(err, ENG_ELUA,
                        "%s: loading it passed the memory cap of the Lua state (%zu MiB; --memory-limit-mb or "
                        "APIENGINE_MEMORY_LIMIT_MB sets it): %s",
                        list[i].path, rt->mem_limit >> 20, msg);
      else
        rc = eng_errorf(err, ENG_ELUA, "%s", msg);
      lua_pop(L, 2);
      break;
    }
    lua_pop(L, 1);
  }
  eng_lua_budget_load(rt, 0, &saved_deadline);
  if (rc != 0 && rt->mem_blown)
    lua_gc(L, LUA_GCCOLLECT);
  for (size_t i = 0; i < n; i++) {
    free(list[i].name);
    free(list[i].path);
  }
  free(list);
  /* No route of the engine's own here: the health and readiness paths are answered before any
   * script, by the worker (conn.c) and by the in-process test client (test.c). */
  return rc;
}
