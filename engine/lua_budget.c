/* lua_budget.c - the standard library as route scripts get it, made to respect the time
 * budget (eng_lua_budget_install, lua_runtime_int.h; the budget itself is in lua_runtime.c).
 *
 * The count hook stops Lua code at the deadline, but not a single long C call, nor script code
 * Lua runs with hooks off. What is replaced, and why:
 *
 *   string.find, match, gmatch, gsub  lua_pattern.c: a matcher that checks the deadline while it
 *                                     backtracks (lstrlib's can run for hours in one call)
 *   string.rep     builds its result a chunk at a time, checking the deadline between chunks, and
 *                  answers "" at once for an empty result (lstrlib loops n times even then)
 *   table.sort     without a comparator, sorts with a C one that checks the deadline every
 *                  SORT_CHECK_UNITS comparisons (long strings count for more; calling it makes such a
 *                  sort about twice as slow); a C function given as comparator is wrapped the same way
 *   table.move     the same moves, checking the deadline every MOVE_CHECK_ITEMS elements (a range of
 *                  2^40 nils was one C loop)
 *   xpcall         the message handler is not called once the budget is blown: the budget error
 *                  is raised from inside the count hook, where Lua turns hooks off, and a message
 *                  handler called for it would run unbounded
 *   setmetatable   refuses a metatable with __gc: finalizers run with hooks off, at any later time
 *   coroutine.create, coroutine.wrap  run the body under a pcall inside the new coroutine, so a
 *                  coroutine the hook stops closes its to-be-closed variables there (hooks back
 *                  on) instead of later in coroutine.close or wrap's cleanup (hooks still off)
 *
 * Everything else behaves as in Lua 5.4, argument errors included. */
#include "lua_runtime_int.h"

#include <lauxlib.h>

#include <limits.h>
#include <string.h>

#define REP_MAX ((size_t)INT_MAX)   /* lstrlib's limit: "resulting string too large" */
#define REP_CHUNK ((size_t)1 << 20) /* bytes string.rep copies between deadline checks */
#define SORT_CHECK_UNITS 1024       /* comparisons (1 KiB of strings compared: one more) between checks */
#define MOVE_CHECK_ITEMS 4096       /* elements table.move moves between deadline checks */
#define GC_REFUSED "__gc metamethods are not allowed in scripts: finalizers run outside the time budget"

/* ---- string.rep ---- */

/* The result is periodic (s then sep, period l + lsep): once the first period is written, the
 * rest is copies of what is already there, doubling up to REP_CHUNK bytes at a time. Copying
 * from the start is right while the written part is a whole number of periods, so every copy
 * but the last one is. */
static int budget_rep(lua_State *L) {
  size_t l, lsep;
  const char *s = luaL_checklstring(L, 1, &l);
  lua_Integer n = luaL_checkinteger(L, 2);
  const char *sep = luaL_optlstring(L, 3, "", &lsep);
  if (n <= 0 || (l == 0 && lsep == 0)) {
    lua_pushliteral(L, "");
    return 1;
  }
  if (l + lsep < l || l + lsep > REP_MAX / (lua_Unsigned)n)
    return luaL_error(L, "resulting string too large");
  size_t total = (size_t)n * l + (size_t)(n - 1) * lsep, period = l + lsep;
  luaL_Buffer b;
  char *out = luaL_buffinitsize(L, &b, total);
  memcpy(out, s, l);
  size_t done = l;
  if (done < total) {
    memcpy(out + done, sep, lsep);
    done += lsep;
  }
  while (done < total) {
    size_t piece = done;
    if (piece > REP_CHUNK)
      piece = period >= REP_CHUNK ? period : REP_CHUNK - REP_CHUNK % period;
    if (piece > total - done)
      piece = total - done;
    memcpy(out + done, out, piece);
    done += piece;
    if (piece >= REP_CHUNK / 2)
      eng_lua_budget_check(L);
  }
  luaL_pushresultsize(&b, total);
  return 1;
}

/* ---- table.sort and table.move ---- */

/* lua_type(L, idx) is a table, or has a metatable with each of the named fields (raw); else
 * raises the table library's "table expected" error. */
static void check_tablelike(lua_State *L, int idx, const char *const *fields) {
  if (lua_type(L, idx) == LUA_TTABLE)
    return;
  int ok = lua_getmetatable(L, idx);
  for (; ok && *fields; fields++) {
    lua_pushstring(L, *fields);
    ok = lua_rawget(L, -2) != LUA_TNIL;
    lua_pop(L, 1);
  }
  if (ok)
    lua_pop(L, 1);
  else
    luaL_checktype(L, idx, LUA_TTABLE);
}

/* Counts `work` down from `every`, checking the deadline each time it runs out. */
static void budget_tick(lua_State *L, int *left, int work, int every) {
  if ((*left -= work) <= 0) {
    *left = every;
    eng_lua_budget_check(L);
  }
}

/* The comparator table.sort uses when the script gives none: a < b, with the deadline check.
 * Comparing strings costs up to the shorter one's length: long ones count for more. */
static int sort_less(lua_State *L) {
  int work = 1;
  if (lua_type(L, 1) == LUA_TSTRING && lua_type(L, 2) == LUA_TSTRING) {
    size_t la = lua_rawlen(L, 1), lb = lua_rawlen(L, 2), kib = (la < lb ? la : lb) >> 10;
    work += kib < SORT_CHECK_UNITS ? (int)kib : SORT_CHECK_UNITS;
  }
  budget_tick(L, lua_touserdata(L, lua_upvalueindex(1)), work, SORT_CHECK_UNITS);
  lua_pushboolean(L, lua_compare(L, 1, 2, LUA_OPLT));
  return 1;
}

/* A C function given as comparator (upvalue 2), with the deadline check. */
static int sort_call(lua_State *L) {
  budget_tick(L, lua_touserdata(L, lua_upvalueindex(1)), 1, SORT_CHECK_UNITS);
  lua_settop(L, 2);
  lua_pushvalue(L, lua_upvalueindex(2));
  lua_insert(L, 1);
  lua_call(L, 2, 1);
  return 1;
}

/* table.sort(t [, comp]): upvalues Lua's sort, the check counter, sort_less. A Lua comparator
 * runs under the count hook already and goes through unchanged. */
static int budget_sort(lua_State *L) {
  static const char *const rw[] = {"__index", "__newindex", "__len", NULL};
  check_tablelike(L, 1, rw);
  int t = lua_type(L, 2);
  if (t == LUA_TNONE || t == LUA_TNIL) {
    lua_settop(L, 1);
    lua_pushvalue(L, lua_upvalueindex(3));
  } else if (t != LUA_TFUNCTION) {
    /* Lua's sort checks the comparator only when there are two elements or more. */
    if (luaL_len(L, 1) > 1)
      luaL_checktype(L, 2, LUA_TFUNCTION);
    return 0;
  } else if (lua_iscfunction(L, 2)) {
    lua_settop(L, 2);
    lua_pushvalue(L, lua_upvalueindex(2));
    lua_insert(L, 2);
    lua_pushcclosure(L, sort_call, 2);
  } else {
    lua_settop(L, 2);
  }
  lua_pushvalue(L, lua_upvalueindex(1));
  lua_insert(L, 1);
  lua_call(L, 2, 0);
  return 0;
}

/* table.move(a1, f, e, t [, a2]): a2[t], ..., a2[t + e - f] = a1[f], ..., a1[e], one element at a
 * time through the metamethods, backwards when the ranges overlap with t past f in the same
 * table (as Lua's does, so metamethods see the same order). */
static int budget_move(lua_State *L) {
  static const char *const r[] = {"__index", NULL}, *const w[] = {"__newindex", NULL};
  lua_Integer f = luaL_checkinteger(L, 2);
  lua_Integer e = luaL_checkinteger(L, 3);
  lua_Integer t = luaL_checkinteger(L, 4);
  int tt = !lua_isnoneornil(L, 5) ? 5 : 1;
  check_tablelike(L, 1, r);
  check_tablelike(L, tt, w);
  if (e >= f) {
    luaL_argcheck(L, f > 0 || e < LUA_MAXINTEGER + f, 3, "too many elements to move");
    lua_Integer n = e - f + 1;
    luaL_argcheck(L, t <= LUA_MAXINTEGER - n + 1, 4, "destination wrap around");
    int forward = t > e || t <= f || (tt != 1 && !lua_compare(L, 1, tt, LUA_OPEQ));
    int left = MOVE_CHECK_ITEMS;
    for (lua_Integer i = 0; i < n; i++) {
      lua_Integer k = forward ? i : n - 1 - i;
      lua_geti(L, 1, f + k);
      lua_seti(L, tt, t + k);
      budget_tick(L, &left, 1, MOVE_CHECK_ITEMS);
    }
  }
  lua_pushvalue(L, tt);
  return 1;
}

/* ---- xpcall, setmetatable ---- */

/* The message handler xpcall installs around the script's (upvalue 1). */
static int guarded_handler(lua_State *L) {
  if (eng_lua_budget_over(L))
    return 1; /* the error as it is */
  lua_pushvalue(L, lua_upvalueindex(1));
  lua_insert(L, 1);
  lua_call(L, lua_gettop(L) - 1, 1);
  return 1;
}

static int finish_xpcall(lua_State *L, int status, lua_KContext extra) {
  if (status != LUA_OK && status != LUA_YIELD) {
    lua_pushboolean(L, 0);
    lua_pushvalue(L, -2);
    return 2;
  }
  return lua_gettop(L) - (int)extra;
}

/* xpcall(f, msgh, ...): true and f's results, or false and what msgh made of the error. */
static int budget_xpcall(lua_State *L) {
  int n = lua_gettop(L);
  luaL_checktype(L, 2, LUA_TFUNCTION);
  lua_pushvalue(L, 2);
  lua_pushcclosure(L, guarded_handler, 1);
  lua_replace(L, 2);
  lua_pushboolean(L, 1);
  lua_pushvalue(L, 1);
  lua_rotate(L, 3, 2); /* msgh, true, f, args... */
  return finish_xpcall(L, lua_pcallk(L, n - 2, LUA_MULTRET, 2, 2, finish_xpcall), 2);
}

static int budget_setmetatable(lua_State *L) {
  int t = lua_type(L, 2);
  luaL_checktype(L, 1, LUA_TTABLE);
  luaL_argexpected(L, t == LUA_TNIL || t == LUA_TTABLE, 2, "nil or table");
  if (luaL_getmetafield(L, 1, "__metatable") != LUA_TNIL)
    return luaL_error(L, "cannot change a protected metatable");
  if (t == LUA_TTABLE) {
    lua_pushliteral(L, "__gc");
    if (lua_rawget(L, 2) != LUA_TNIL) /* raw, as Lua looks it up to mark the table for finalization */
      return luaL_argerror(L, 2, GC_REFUSED);
    lua_pop(L, 1);
  }
  lua_settop(L, 2);
  lua_setmetatable(L, 1);
  return 1;
}

/* ---- coroutine.create, coroutine.wrap ---- */

static int body_finish(lua_State *L, int status, lua_KContext ctx) {
  (void)ctx;
  if (status != LUA_OK && status != LUA_YIELD)
    return lua_error(L); /* the error object, unchanged: the coroutine dies with hooks on */
  return lua_gettop(L);
}

/* A coroutine's body: the script's function (upvalue 1) under a yieldable pcall. */
static int guarded_body(lua_State *L) {
  lua_pushvalue(L, lua_upvalueindex(1));
  lua_insert(L, 1);
  return body_finish(L, lua_pcallk(L, lua_gettop(L) - 1, LUA_MULTRET, 0, 0, body_finish), 0);
}

/* coroutine.create or coroutine.wrap (Lua's, upvalue 1) with the body guarded. */
static int budget_cocreate(lua_State *L) {
  luaL_checktype(L, 1, LUA_TFUNCTION);
  lua_settop(L, 1);
  lua_pushcclosure(L, guarded_body, 1);
  lua_pushvalue(L, lua_upvalueindex(1));
  lua_insert(L, 1);
  lua_call(L, 1, 1);
  return 1;
}

/* ---- installing ---- */

/* t[name] = a closure of fn over the value t[name] had (Lua's function). t at idx. */
static void wrap_field(lua_State *L, int idx, const char *name, lua_CFunction fn) {
  lua_getfield(L, idx, name);
  lua_pushcclosure(L, fn, 1);
  lua_setfield(L, idx, name);
}

static void set_string_functions(lua_State *L, int idx) {
  eng_lua_pattern_set(L, idx);
  lua_pushcfunction(L, budget_rep);
  lua_setfield(L, idx, "rep");
}

void eng_lua_budget_install(lua_State *L) {
  luaL_checkstack(L, 8, "budget install");
  int top = lua_gettop(L);
  lua_getglobal(L, "string");
  int string = lua_gettop(L);
  set_string_functions(L, string);
  lua_pushliteral(L, ""); /* s:find(...) looks in the string metatable's __index */
  if (lua_getmetatable(L, -1) && lua_getfield(L, -1, "__index") == LUA_TTABLE && !lua_rawequal(L, -1, string))
    set_string_functions(L, lua_gettop(L));

  lua_getglobal(L, "table");
  int table = lua_gettop(L);
  lua_getfield(L, table, "sort");
  int *left = lua_newuserdatauv(L, sizeof *left, 0);
  *left = SORT_CHECK_UNITS;
  lua_pushvalue(L, -1);
  lua_pushcclosure(L, sort_less, 1);
  lua_pushcclosure(L, budget_sort, 3);
  lua_setfield(L, table, "sort");
  lua_pushcfunction(L, budget_move);
  lua_setfield(L, table, "move");

  lua_getglobal(L, "coroutine");
  wrap_field(L, lua_gettop(L), "create", budget_cocreate);
  wrap_field(L, lua_gettop(L), "wrap", budget_cocreate);

  lua_pushcfunction(L, budget_xpcall);
  lua_setglobal(L, "xpcall");
  lua_pushcfunction(L, budget_setmetatable);
  lua_setglobal(L, "setmetatable");
  lua_settop(L, top);
}
