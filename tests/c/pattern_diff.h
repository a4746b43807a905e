/* pattern_diff.h - runs the same call through Lua's own string functions (lstrlib) and the
 * engine's (lua_pattern.c, lua_budget.c) and compares what comes back: the number of results,
 * each result's type and value (math.type for numbers), or, when both raise, the error messages.
 * Shared by tests/c/test_pattern.c and tests/fuzz/fuzz_pattern.c.
 *
 * pdiff_open makes a plain state, keeps Lua's string.find, match, gmatch, gsub, rep, table.sort
 * and move in the registry table "orig", installs the engine's over them (eng_lua_budget_install)
 * and keeps those in "mine". Calls run outside any budgeted run, so the deadline checks are
 * no-ops here. */
#ifndef ENG_PATTERN_DIFF_H
#define ENG_PATTERN_DIFF_H

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>
#include <lualib.h>

#include "lua_runtime_int.h"

#define PDIFF_GMATCH_MAX 64 /* iterations of a gmatch compared */

typedef struct pdiff {
  lua_State *L;
  long calls, mismatches;
  int quiet; /* do not print mismatches */
} pdiff;

static const char *const pdiff_string_names[] = {"find", "match", "gmatch", "gsub", "rep", NULL};
static const char *const pdiff_table_names[] = {"sort", "move", NULL};

static inline void pdiff_copy(lua_State *L, const char *lib, const char *const *names) {
  lua_getglobal(L, lib);
  for (int i = 0; names[i]; i++) {
    lua_getfield(L, -1, names[i]);
    lua_setfield(L, -3, names[i]);
  }
  lua_pop(L, 1);
}

/* Copies string.find, ..., table.sort, table.move into a new table stored as registry[key]. */
static inline void pdiff_keep(lua_State *L, const char *key) {
  lua_newtable(L);
  pdiff_copy(L, "string", pdiff_string_names);
  pdiff_copy(L, "table", pdiff_table_names);
  lua_setfield(L, LUA_REGISTRYINDEX, key);
}

/* Calls go through this Lua function, so an argument error names the function the same way for
 * both ('f', from the call site) instead of by where it is found in package.loaded. */
static const char pdiff_caller[] = "return function(f, ...) return select(1, f(...)) end";

static inline int pdiff_open(pdiff *d) {
  memset(d, 0, sizeof *d);
  d->L = luaL_newstate();
  if (d->L == NULL)
    return -1;
  luaL_openlibs(d->L);
  pdiff_keep(d->L, "orig");
  eng_lua_budget_install(d->L);
  pdiff_keep(d->L, "mine");
  if (luaL_loadstring(d->L, pdiff_caller) != LUA_OK || lua_pcall(d->L, 0, 1, 0) != LUA_OK)
    return -1;
  lua_setfield(d->L, LUA_REGISTRYINDEX, "caller");
  return 0;
}

static inline void pdiff_close(pdiff *d) {
  if (d->L)
    lua_close(d->L);
  d->L = NULL;
}

/* Calls registry[which][fn] on a copy of the nargs values at base+1.. under pcall; leaves the
 * results (or the error object) above base + nargs and returns their count, negated on error. */
static inline int pdiff_run(lua_State *L, const char *which, const char *fn, int base, int nargs) {
  int top = lua_gettop(L);
  lua_getfield(L, LUA_REGISTRYINDEX, "caller");
  lua_getfield(L, LUA_REGISTRYINDEX, which);
  lua_getfield(L, -1, fn);
  lua_remove(L, -2);
  for (int i = 1; i <= nargs; i++)
    lua_pushvalue(L, base + i);
  int st = lua_pcall(L, nargs + 1, LUA_MULTRET, 0);
  int n = lua_gettop(L) - top;
  return st == LUA_OK ? n : -1;
}

/* Do the values at a and b agree (same type and value; functions and tables by identity
 * unless both are iterators, which the caller compares by running them)? */
static inline int pdiff_same(lua_State *L, int a, int b) {
  int ta = lua_type(L, a), tb = lua_type(L, b);
  if (ta != tb)
    return 0;
  switch (ta) {
  case LUA_TNUMBER:
    if (lua_isinteger(L, a) != lua_isinteger(L, b))
      return 0;
    if (lua_isinteger(L, a))
      return lua_tointeger(L, a) == lua_tointeger(L, b);
    return lua_tonumber(L, a) == lua_tonumber(L, b) || (isnan(lua_tonumber(L, a)) && isnan(lua_tonumber(L, b)));
  case LUA_TSTRING: {
    size_t la, lb;
    const char *sa = lua_tolstring(L, a, &la), *sb = lua_tolstring(L, b, &lb);
    return la == lb && memcmp(sa, sb, la) == 0;
  }
  case LUA_TFUNCTION:
    return 1; /* gmatch iterators: compared by running them */
  default:
    return lua_rawequal(L, a, b);
  }
}

static inline void pdiff_print_value(lua_State *L, int idx) {
  size_t len;
  const char *s = luaL_tolstring(L, idx, &len);
  fprintf(stderr, " [%s]", luaL_typename(L, idx));
  fputc(' ', stderr);
  for (size_t i = 0; i < len && i < 200; i++)
    fputc(s[i] >= 32 && s[i] < 127 ? s[i] : '?', stderr);
  if (len > 200)
    fprintf(stderr, "...(%zu bytes)", len);
  lua_pop(L, 1);
}

static inline void pdiff_report(pdiff *d, const char *fn, int base, int nargs, int na, int nb) {
  lua_State *L = d->L;
  d->mismatches++;
  if (d->quiet)
    return;
  fprintf(stderr, "mismatch in %s(", fn);
  for (int i = 1; i <= nargs; i++)
    pdiff_print_value(L, base + i);
  fprintf(stderr, " )\n  lua:   %s", na < 0 ? "error" : "");
  int a = base + nargs + 1, b = a + (na < 0 ? 1 : na);
  for (int i = 0; i < (na < 0 ? 1 : na); i++)
    pdiff_print_value(L, a + i);
  fprintf(stderr, "\n  engine: %s", nb < 0 ? "error" : "");
  for (int i = 0; i < (nb < 0 ? 1 : nb); i++)
    pdiff_print_value(L, b + i);
  fputc('\n', stderr);
}

/* Compares the two result lists above base + nargs (na then nb values; negative: one error
 * object). Returns 1 when they agree. */
static inline int pdiff_agree(lua_State *L, int base, int nargs, int na, int nb) {
  if ((na < 0) != (nb < 0))
    return 0;
  int a = base + nargs + 1;
  if (na < 0)
    return pdiff_same(L, a, a + 1);
  if (na != nb)
    return 0;
  for (int i = 0; i < na; i++)
    if (!pdiff_same(L, a + i, a + na + i))
      return 0;
  return 1;
}

/* Runs string.<fn>(the nargs values on L's top) both ways and compares; for gmatch, also every
 * iteration (up to PDIFF_GMATCH_MAX). Pops the arguments; returns 1 when they agree. */
static inline int pdiff_call(pdiff *d, const char *fn, int nargs) {
  lua_State *L = d->L;
  luaL_checkstack(L, 2 * nargs + 80, "pdiff");
  int base = lua_gettop(L) - nargs;
  d->calls++;
  int na = pdiff_run(L, "orig", fn, base, nargs);
  int nb = pdiff_run(L, "mine", fn, base, nargs);
  int ok = pdiff_agree(L, base, nargs, na, nb);
  if (!ok)
    pdiff_report(d, fn, base, nargs, na, nb);
  if (ok && na == 1 && strcmp(fn, "gmatch") == 0) {
    int ita = base + nargs + 1, itb = ita + 1;
    for (int i = 0; ok && i < PDIFF_GMATCH_MAX; i++) {
      int top = lua_gettop(L);
      lua_pushvalue(L, ita);
      int sa = lua_pcall(L, 0, LUA_MULTRET, 0);
      int ca = lua_gettop(L) - top;
      lua_pushvalue(L, itb);
      int sb = lua_pcall(L, 0, LUA_MULTRET, 0);
      int cb = lua_gettop(L) - top - ca;
      /* pdiff_agree expects the results right above an argument list: use an empty one */
      ok = pdiff_agree(L, top, 0, sa == LUA_OK ? ca : -1, sb == LUA_OK ? cb : -1);
      if (!ok)
        pdiff_report(d, "gmatch (iteration)", top, 0, sa == LUA_OK ? ca : -1, sb == LUA_OK ? cb : -1);
      int done = sa != LUA_OK || ca == 0 || lua_isnil(L, top + 1);
      lua_settop(L, top);
      if (done)
        break;
    }
  }
  lua_settop(L, base);
  return ok;
}

#endif
