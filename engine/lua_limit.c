/* lua_limit.c - the "engine.limit" module: token buckets and fixed-window counters shared by
 * the workers (limit.h).
 *
 *   limit.take(name, key, rate, burst [, cost])  -> true, tokens left
 *                                                 | false, retry_after (whole seconds, >= 1)
 *   limit.hit(name, key, window_seconds [, n])   -> count, window_start_ms, last_hit_ms
 *                                                 counts n (default 1) hits in key's window
 *   limit.count(name, key, window_seconds)       -> the same without counting; 0 (and no
 *                                                 times) when no window is running
 *   limit.reset(name, key)                       forgets that bucket or counter
 *
 * name says which limit ("token-ip"), key whose bucket ("203.0.113.7"); rate is tokens per
 * second (> 0), burst the bucket's size (>= 1), cost what this call takes (default 1). The
 * buckets live in C, shared by every worker of the process, bounded (least recently used ones
 * are forgotten past ENG_LIMIT_KEYS); time is engine.time's clock, so spec.clock moves it. */
#include "clock.h"
#include "error.h"
#include "limit.h"
#include "lua_common.h"

#include <lauxlib.h>
#include <string.h>

/* name .. "\0" .. key into out; raises when too long. */
static size_t bucket_key(lua_State *L, char out[ENG_LIMIT_KEY_MAX]) {
  size_t nlen, klen;
  const char *name = luaL_checklstring(L, 1, &nlen);
  const char *key = luaL_checklstring(L, 2, &klen);
  luaL_argcheck(L, nlen > 0, 1, "a limit needs a name");
  if (nlen + 1 + klen > ENG_LIMIT_KEY_MAX)
    luaL_error(L, "limit name and key too long (at most %d bytes together)", ENG_LIMIT_KEY_MAX - 1);
  memcpy(out, name, nlen);
  out[nlen] = '\0';
  memcpy(out + nlen + 1, key, klen);
  return nlen + 1 + klen;
}

static int l_take(lua_State *L) {
  char key[ENG_LIMIT_KEY_MAX];
  size_t n = bucket_key(L, key);
  double rate = luaL_checknumber(L, 3), burst = luaL_checknumber(L, 4), cost = luaL_optnumber(L, 5, 1);
  luaL_argcheck(L, rate > 0 && rate < 1e12, 3, "rate must be a positive number of tokens a second");
  luaL_argcheck(L, burst >= 1 && burst < 1e12, 4, "burst must be at least 1");
  luaL_argcheck(L, cost > 0 && cost <= burst, 5, "cost must be positive and at most burst");
  int64_t retry_ms = 0;
  double left = 0;
  int rc = eng_limit_take(key, n, rate, burst, cost, eng_clock_now_ms(), &retry_ms, &left);
  if (rc < 0)
    return luaL_error(L, "limit.take: %s", eng_strerror(rc));
  lua_pushboolean(L, rc);
  if (rc)
    lua_pushnumber(L, left);
  else
    lua_pushinteger(L, (lua_Integer)((retry_ms + 999) / 1000 > 0 ? (retry_ms + 999) / 1000 : 1));
  return 2;
}

/* A window in seconds (> 0, a fraction allowed) as whole ms, at least 1. */
static int64_t window_arg(lua_State *L, int idx) {
  double s = luaL_checknumber(L, idx);
  luaL_argcheck(L, s > 0 && s < 1e9, idx, "window must be a positive number of seconds");
  int64_t ms = (int64_t)(s * 1000.0 + 0.5);
  return ms < 1 ? 1 : ms;
}

static int push_window(lua_State *L, int rc, const eng_limit_window *w, const char *what) {
  if (rc < 0)
    return luaL_error(L, "limit.%s: %s", what, eng_strerror(rc));
  if (rc == 0) {
    lua_pushinteger(L, 0);
    return 1;
  }
  lua_pushinteger(L, (lua_Integer)w->count);
  lua_pushinteger(L, (lua_Integer)w->start_ms);
  lua_pushinteger(L, (lua_Integer)w->last_ms);
  return 3;
}

static int l_hit(lua_State *L) {
  char key[ENG_LIMIT_KEY_MAX];
  size_t n = bucket_key(L, key);
  int64_t window_ms = window_arg(L, 3);
  lua_Integer add = luaL_optinteger(L, 4, 1);
  luaL_argcheck(L, add >= 1 && add <= ENG_LIMIT_HITS_MAX, 4, "n must be a positive integer");
  eng_limit_window w;
  return push_window(L, eng_limit_hit(key, n, window_ms, (int64_t)add, eng_clock_now_ms(), &w), &w, "hit");
}

static int l_count(lua_State *L) {
  char key[ENG_LIMIT_KEY_MAX];
  size_t n = bucket_key(L, key);
  int64_t window_ms = window_arg(L, 3);
  eng_limit_window w;
  return push_window(L, eng_limit_hit(key, n, window_ms, 0, eng_clock_now_ms(), &w), &w, "count");
}

static int l_reset(lua_State *L) {
  char key[ENG_LIMIT_KEY_MAX];
  size_t n = bucket_key(L, key);
  eng_limit_reset(key, n);
  return 0;
}

int eng_luaopen_limit(lua_State *L) {
  static const luaL_Reg funcs[] = {
      {"take", l_take}, {"hit", l_hit}, {"count", l_count}, {"reset", l_reset}, {NULL, NULL}};
  luaL_newlib(L, funcs);
  return 1;
}
