/* lua_config.c - the Lua module "engine.config" and the packed form of the settings
 * (see lua_config.h).
 *
 * Why not JSON text: settings are whatever data the config file builds, and engine.json
 * would refuse some of it (strings that are not UTF-8, NaN, tables with mixed, sparse or
 * non-string keys, cycles) or change it (a table used twice would come back as two, arrays
 * would come back with the JSON array metatable). The packed form brings it all back as it
 * was:
 *
 *   value = 's' <u64 length> <bytes>      a string
 *         | 'i' <int64> | 'f' <double>    an integer / a float (host byte order: the bytes
 *                                         never leave the process)
 *         | 'b' <0 | 1>                   a boolean
 *         | '{' (<key value> <value>)* '}' a table, numbered 1, 2, ... in the order its '{' comes
 *         | 'r' <u64 number>              a table already started (used twice, or a cycle)
 */
#include "lua_config.h"
#include "error.h"
#include "lua_common.h"

#include <lauxlib.h>

#include <ctype.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define SETTINGS_KEY "engine.config.settings"

static const char copies_key = 'c'; /* registry: true when scripts get copies of table settings */

/* Replaces the value at L's top, when it is a table, with a deep copy (a table met twice, or in
 * a cycle, copied once: seen maps originals to copies). Keys are copied too: settings may have
 * table keys. Nesting is bounded by ENG_SETTINGS_MAX_DEPTH (eng_lua_config_unpack). */
static void copy_top(lua_State *L, int seen) {
  if (lua_type(L, -1) != LUA_TTABLE)
    return;
  lua_pushvalue(L, -1);
  if (lua_rawget(L, seen) == LUA_TTABLE) {
    lua_remove(L, -2);
    return;
  }
  lua_pop(L, 1);
  luaL_checkstack(L, 8, "settings nested too deep");
  int src = lua_gettop(L);
  lua_newtable(L);
  lua_pushvalue(L, src);
  lua_pushvalue(L, src + 1);
  lua_rawset(L, seen);
  lua_pushnil(L);
  while (lua_next(L, src)) { /* src dst k v */
    lua_pushvalue(L, -2);
    copy_top(L, seen); /* src dst k v k' */
    lua_insert(L, -2);
    copy_top(L, seen); /* src dst k k' v' */
    lua_rawset(L, src + 1);
  }
  lua_remove(L, src);
}

/* In the server, a table setting is handed out as a copy: a script that changed the settings'
 * own tables (config.settings().admin_key = nil) would change them for every request after it. */
static void hand_out(lua_State *L) {
  if (lua_type(L, -1) != LUA_TTABLE)
    return;
  int copies = lua_rawgetp(L, LUA_REGISTRYINDEX, &copies_key) == LUA_TBOOLEAN;
  lua_pop(L, 1);
  if (!copies)
    return;
  lua_newtable(L);
  lua_insert(L, -2);
  copy_top(L, lua_gettop(L) - 1);
  lua_remove(L, -2);
}

void eng_lua_config_copies(lua_State *L) {
  lua_pushboolean(L, 1);
  lua_rawsetp(L, LUA_REGISTRYINDEX, &copies_key);
}

/* 1 when name (len bytes) is the server key's: "key" or "key_*" in any case, the settings
 * whose variables are APIENGINE_KEY and APIENGINE_KEY_*. */
static int is_key_name(const char *name, size_t len) {
  return len >= 3 && strncasecmp(name, "key", 3) == 0 && (len == 3 || name[3] == '_');
}

/* config.get(name [, default]): APIENGINE_<NAME> from the environment, else the
 * config file's settings[name], else default. Names are letters, digits and '_' (anything
 * else could name another variable: "key\0x" would read APIENGINE_KEY); the server key's
 * names raise: scripts never see the key. */
static int config_get(lua_State *L) {
  size_t len;
  const char *name = luaL_checklstring(L, 1, &len);
  for (size_t i = 0; i < len; i++)
    if (!isalnum((unsigned char)name[i]) && name[i] != '_')
      return luaL_argerror(L, 1, "a setting name is letters, digits and '_'");
  if (is_key_name(name, len))
    return luaL_error(L,
                      "engine.config: '%s' is the server key, which scripts cannot read (use engine.crypto: "
                      "seal, open, sign, verify)",
                      name);
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
  else
    hand_out(L);
  return 1;
}

/* config.settings(): the settings table itself (tests may change it); a copy in the server. */
static int config_settings(lua_State *L) {
  lua_getfield(L, LUA_REGISTRYINDEX, SETTINGS_KEY);
  hand_out(L);
  return 1;
}

int eng_luaopen_config(lua_State *L) {
  static const luaL_Reg fns[] = {{"get", config_get}, {"settings", config_settings}, {NULL, NULL}};
  luaL_newlib(L, fns);
  return 1;
}

/* ---- packing (in the config file's state, config.c) ----------------------------------------- */

typedef struct packer {
  lua_State *L;
  eng_buf *out;
  int seen;         /* stack index of a table: table -> its number */
  uint64_t ntables; /* tables numbered so far */
  char path[256];   /* "settings.a[2]" of the value being packed, for messages */
  size_t path_len;
  char **err;
} packer;

static int put(packer *p, const void *data, size_t n) {
  if (eng_buf_append(p->out, data, n) != 0)
    return eng_errorf(p->err, ENG_ENOMEM, "out of memory");
  return 0;
}

static int put_tag(packer *p, char tag, const void *data, size_t n) {
  int rc = put(p, &tag, 1);
  return rc ? rc : put(p, data, n);
}

/* Appends the key at idx to the path: ".name" for a string, "[n]" for an integer. */
static void path_push(packer *p, int idx) {
  size_t room = sizeof p->path - p->path_len;
  int n;
  if (lua_type(p->L, idx) == LUA_TSTRING)
    n = snprintf(p->path + p->path_len, room, ".%s", lua_tostring(p->L, idx));
  else if (lua_isinteger(p->L, idx))
    n = snprintf(p->path + p->path_len, room, "[%lld]", (long long)lua_tointeger(p->L, idx));
  else
    n = snprintf(p->path + p->path_len, room, "[%s]", luaL_typename(p->L, idx));
  if (n >= 0 && (size_t)n < room) {
    p->path_len += (size_t)n;
  } else { /* too long for the message: cut it short, visibly */
    memcpy(p->path + sizeof p->path - 4, "...", 4);
    p->path_len = sizeof p->path - 1;
  }
}

static int pack_value(packer *p, int idx, int depth, int is_key);

static int pack_table(packer *p, int idx, int depth) {
  lua_State *L = p->L;
  lua_pushvalue(L, idx);
  if (lua_rawget(L, p->seen) == LUA_TNUMBER) { /* started already: shared, or a cycle */
    uint64_t n = (uint64_t)lua_tointeger(L, -1);
    lua_pop(L, 1);
    return put_tag(p, 'r', &n, sizeof n);
  }
  lua_pop(L, 1);
  if (depth > ENG_SETTINGS_MAX_DEPTH)
    return eng_errorf(p->err, ENG_ECONFIG, "%s: tables nested deeper than %d", p->path, ENG_SETTINGS_MAX_DEPTH);
  luaL_checkstack(L, 6, "settings nested too deep");
  lua_pushvalue(L, idx);
  lua_pushinteger(L, (lua_Integer)++p->ntables);
  lua_rawset(L, p->seen);
  int rc = put(p, "{", 1);
  lua_pushnil(L);
  while (rc == 0 && lua_next(L, idx)) {
    int top = lua_gettop(L);
    size_t mark = p->path_len;
    if ((rc = pack_value(p, top - 1, depth + 1, 1)) == 0) {
      path_push(p, top - 1);
      rc = pack_value(p, top, depth + 1, 0);
    }
    p->path_len = mark;
    p->path[mark] = '\0';
    lua_pop(L, 1);
  }
  if (rc != 0)
    return rc;
  return put(p, "}", 1);
}

static int pack_value(packer *p, int idx, int depth, int is_key) {
  lua_State *L = p->L;
  switch (lua_type(L, idx)) {
  case LUA_TSTRING: {
    size_t n;
    const char *s = lua_tolstring(L, idx, &n);
    uint64_t len = n;
    int rc = put_tag(p, 's', &len, sizeof len);
    return rc ? rc : put(p, s, n);
  }
  case LUA_TNUMBER:
    if (lua_isinteger(L, idx)) {
      int64_t v = (int64_t)lua_tointeger(L, idx);
      return put_tag(p, 'i', &v, sizeof v);
    } else {
      double v = (double)lua_tonumber(L, idx);
      return put_tag(p, 'f', &v, sizeof v);
    }
  case LUA_TBOOLEAN: {
    unsigned char b = (unsigned char)lua_toboolean(L, idx);
    return put_tag(p, 'b', &b, 1);
  }
  case LUA_TTABLE:
    return pack_table(p, lua_absindex(L, idx), depth);
  default:
    return eng_errorf(p->err, ENG_ECONFIG, "%s %s a %s: settings hold only strings, numbers, booleans and tables",
                      p->path, is_key ? "has a key that is" : "is", luaL_typename(L, idx));
  }
}

int eng_lua_config_pack(lua_State *L, int idx, eng_buf *out, char **err) {
  *err = NULL;
  int top = lua_gettop(L);
  idx = lua_absindex(L, idx);
  packer p = {.L = L, .out = out, .path = "settings", .path_len = 8, .err = err};
  eng_buf_reset(out);
  lua_newtable(L);
  p.seen = lua_gettop(L);
  int rc = pack_table(&p, idx, 1);
  lua_settop(L, top);
  if (rc != 0)
    eng_buf_reset(out);
  return rc;
}

/* ---- unpacking (in each worker's state) --------------------------------------------------------- */

typedef struct unpacker {
  const char *p, *end;
  int tables; /* stack index: number -> table */
  uint64_t ntables;
} unpacker;

/* Raises (never returns): the bytes are not ones eng_lua_config_pack made. */
static int corrupt(lua_State *L) { return luaL_error(L, "engine.config: corrupt packed settings"); }

static void take(lua_State *L, unpacker *u, void *dst, size_t n) {
  if ((size_t)(u->end - u->p) < n)
    corrupt(L);
  memcpy(dst, u->p, n);
  u->p += n;
}

static void unpack_value(lua_State *L, unpacker *u, int depth) {
  char tag;
  take(L, u, &tag, 1);
  luaL_checkstack(L, 4, "settings nested too deep");
  switch (tag) {
  case 's': {
    uint64_t n;
    take(L, u, &n, sizeof n);
    if ((uint64_t)(u->end - u->p) < n)
      corrupt(L);
    lua_pushlstring(L, u->p, (size_t)n);
    u->p += n;
    return;
  }
  case 'i': {
    int64_t v;
    take(L, u, &v, sizeof v);
    lua_pushinteger(L, (lua_Integer)v);
    return;
  }
  case 'f': {
    double v;
    take(L, u, &v, sizeof v);
    lua_pushnumber(L, (lua_Number)v);
    return;
  }
  case 'b': {
    unsigned char b;
    take(L, u, &b, 1);
    lua_pushboolean(L, b != 0);
    return;
  }
  case 'r': {
    uint64_t n;
    take(L, u, &n, sizeof n);
    if (n < 1 || n > u->ntables)
      corrupt(L);
    lua_rawgeti(L, u->tables, (lua_Integer)n);
    return;
  }
  case '{':
    if (depth > ENG_SETTINGS_MAX_DEPTH)
      corrupt(L);
    lua_newtable(L);
    lua_pushvalue(L, -1);
    lua_rawseti(L, u->tables, (lua_Integer)++u->ntables);
    while (u->p < u->end && *u->p != '}') {
      unpack_value(L, u, depth + 1);
      if (lua_isnil(L, -1))
        corrupt(L);
      unpack_value(L, u, depth + 1);
      lua_rawset(L, -3);
    }
    if (u->p == u->end)
      corrupt(L);
    u->p++;
    return;
  default:
    corrupt(L);
  }
}

void eng_lua_config_unpack(lua_State *L, const char *data, size_t len) {
  if (data == NULL || len == 0) {
    lua_newtable(L);
  } else {
    lua_newtable(L);
    unpacker u = {.p = data, .end = data + len, .tables = lua_gettop(L)};
    unpack_value(L, &u, 1);
    if (u.p != u.end || !lua_istable(L, -1))
      corrupt(L);
    lua_remove(L, u.tables);
  }
  lua_setfield(L, LUA_REGISTRYINDEX, SETTINGS_KEY);
}

/* ---- the config file -------------------------------------------------------------------- */

typedef struct file_ctx {
  const char *path;
  eng_config_file_fn fn;
  void *ud;
  eng_buf *settings;
  char **err;
  int rc;
} file_ctx;

/* The whole read, run under lua_pcall (eng_lua_config_read_file). Failures set f->rc and *f->err. */
static int read_file_p(lua_State *L) {
  file_ctx *f = lua_touserdata(L, 1);
  const char *path = f->path;
  char **err = f->err;
  int rc = 0;
  /* Text only, no globals: the file is data. */
  if (luaL_loadfilex(L, path, "t") != LUA_OK) {
    rc = eng_errorf(err, ENG_ECONFIG, "config file: %s", lua_tostring(L, -1));
    goto done;
  }
  lua_newtable(L);
  lua_setupvalue(L, -2, 1); /* _ENV = {} */
  if (lua_pcall(L, 0, 1, 0) != LUA_OK) {
    rc = eng_errorf(err, ENG_ECONFIG, "config file: %s", lua_tostring(L, -1));
    goto done;
  }
  if (!lua_istable(L, -1)) {
    rc = eng_errorf(err, ENG_ECONFIG, "config file %s must return a table", path);
    goto done;
  }
  lua_pushnil(L);
  while (lua_next(L, -2)) {
    if (lua_type(L, -2) != LUA_TSTRING) {
      rc = eng_errorf(err, ENG_ECONFIG, "config file %s: keys must be strings", path);
      goto done;
    }
    const char *k = lua_tostring(L, -2);
    if (strcmp(k, "settings") != 0) {
      int t = lua_type(L, -1);
      const char *v = NULL;
      if (t == LUA_TBOOLEAN)
        v = lua_toboolean(L, -1) ? "on" : "off";
      else if (t == LUA_TNUMBER || t == LUA_TSTRING)
        v = lua_tostring(L, -1);
      if ((rc = f->fn(f->ud, k, v, err)) != 0)
        goto done;
    }
    lua_pop(L, 1);
  }
  /* Scripts read `settings` through engine.config; a value that is not a table means none. */
  eng_buf_reset(f->settings);
  lua_getfield(L, -1, "settings");
  if (lua_istable(L, -1)) {
    char *why = NULL;
    if (eng_lua_config_pack(L, -1, f->settings, &why) != 0)
      rc = eng_errorf(err, ENG_ECONFIG, "config file %s: %s", path, why ? why : "out of memory");
    free(why);
  }
done:
  f->rc = rc;
  return 0;
}

int eng_lua_config_read_file(const char *path, eng_config_file_fn fn, void *ud, eng_buf *settings, char **err) {
  lua_State *L = luaL_newstate();
  if (L == NULL)
    return eng_errorf(err, ENG_ENOMEM, "out of memory");
  file_ctx f = {.path = path, .fn = fn, .ud = ud, .settings = settings, .err = err};
  lua_pushcfunction(L, read_file_p);
  lua_pushlightuserdata(L, &f);
  if (lua_pcall(L, 1, 0, 0) != LUA_OK && f.rc == 0) { /* raised outside the file's own code */
    free(*err);
    f.rc = eng_errorf(err, ENG_ECONFIG, "config file %s: %s", path, lua_tostring(L, -1));
  }
  lua_close(L);
  return f.rc;
}
