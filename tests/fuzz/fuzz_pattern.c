/* fuzz_pattern.c - libFuzzer target: the engine's string.find, match, gmatch and gsub
 * (engine/lua_pattern.c) must answer exactly what Lua's own answer, error messages included
 * (the comparison is tests/c/pattern_diff.h, shared with tests/c/test_pattern.c).
 *
 * Input: byte 0 picks the call (and whether an init argument, byte 1, is passed); the rest is
 * subject, pattern and replacement separated by 0xff bytes. Subjects and patterns are kept short
 * and patterns to a few repetitions: the backtracking both matchers do is polynomial in the
 * subject length with the number of repetitions as the exponent, and this target looks for
 * differences, not for slow patterns (those are what the deadline checks are for). */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../c/pattern_diff.h"

#define MAX_SUBJECT 32
#define MAX_PATTERN 48
#define MAX_REPETITIONS 4

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* The next piece of data up to a 0xff byte (or the end). */
static size_t piece(const uint8_t **data, size_t *size, const char **out) {
  const uint8_t *end = memchr(*data, 0xff, *size);
  size_t n = end ? (size_t)(end - *data) : *size;
  *out = (const char *)*data;
  *data += n + (end ? 1 : 0);
  *size -= n + (end ? 1 : 0);
  return n;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  static pdiff d;
  static const char fns[] = "repl_table = { a = 'A', b = false, x = 1.5, ab = {} }\n"
                            "function repl_fn(...)\n"
                            "  local t = table.pack(...)\n"
                            "  for i = 1, t.n do t[i] = tostring(t[i]) end\n"
                            "  return #t % 3 == 0 and nil or table.concat(t, ',', 1, t.n)\n"
                            "end\n";
  if (d.L == NULL && (pdiff_open(&d) != 0 || luaL_dostring(d.L, fns) != LUA_OK))
    abort();
  if (size < 2)
    return 0;
  int call = data[0] % 6, with_init = data[0] & 0x80;
  int init = (int)data[1] - 128;
  data += 2;
  size -= 2;
  const char *s, *p, *r;
  size_t ls = piece(&data, &size, &s), lp = piece(&data, &size, &p), lr = piece(&data, &size, &r);
  if (ls > MAX_SUBJECT || lp > MAX_PATTERN)
    return 0;
  int reps = 0;
  for (size_t i = 0; i < lp; i++)
    reps += p[i] == '*' || p[i] == '+' || p[i] == '-' || p[i] == '?';
  if (reps > MAX_REPETITIONS)
    return 0;

  lua_State *L = d.L;
  lua_pushlstring(L, s, ls);
  lua_pushlstring(L, p, lp);
  int nargs = 2;
  const char *fn = "find";
  switch (call) {
  case 0:
    break;
  case 1: /* plain */
    lua_pushinteger(L, init);
    lua_pushboolean(L, 1);
    nargs = 4;
    with_init = 0;
    break;
  case 2:
    fn = "match";
    break;
  case 3:
    fn = "gmatch";
    break;
  case 4:
    fn = "gsub";
    lua_pushlstring(L, r, lr);
    nargs = 3;
    break;
  default:
    fn = "gsub";
    lua_getglobal(L, lr % 2 ? "repl_table" : "repl_fn");
    nargs = 3;
    break;
  }
  if (with_init) {
    lua_pushinteger(L, init);
    nargs++;
  }
  if (!pdiff_call(&d, fn, nargs))
    abort();
  return 0;
}
