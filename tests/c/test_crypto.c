/* test_crypto.c - engine/keys.c and engine/lua_crypto.c: known-answer vectors, codecs,
 * uuid4, AEAD seal/open, signed tokens and the key file. */
#include <fcntl.h>
#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "check.h"
#include "clock.h"
#include "error.h"
#include "keys.h"
#include "lua_common.h"
#include "lua_crypto.h"

/* ---- harness ---- */

static int lua_check(lua_State *L) {
  if (lua_toboolean(L, 1)) {
    check_passed_++;
  } else {
    check_failed_++;
    lua_Debug ar;
    int line = lua_getstack(L, 1, &ar) && lua_getinfo(L, "Sl", &ar) ? ar.currentline : -1;
    fprintf(stderr, "%s:%d: check failed: %s\n", line >= 0 ? ar.short_src : "?", line,
            luaL_optstring(L, 2, "?"));
  }
  return 0;
}

/* eq(got, want, label): raw equality, printing both on failure. */
static int lua_eq(lua_State *L) {
  lua_settop(L, 3);
  if (lua_rawequal(L, 1, 2)) {
    check_passed_++;
    return 0;
  }
  check_failed_++;
  lua_Debug ar;
  int line = lua_getstack(L, 1, &ar) && lua_getinfo(L, "Sl", &ar) ? ar.currentline : -1;
  fprintf(stderr, "%s:%d: %s: got %s, want %s\n", line >= 0 ? ar.short_src : "?", line,
          luaL_optstring(L, 3, "?"), luaL_tolstring(L, 1, NULL), luaL_tolstring(L, 2, NULL));
  return 0;
}

/* The derived token key, so tests can forge correctly signed tokens with odd payloads. */
static int lua_token_key(lua_State *L) {
  lua_pushlstring(L, (const char *)eng_keys_token_key(), ENG_KEY_LEN);
  return 1;
}

static int lua_seal_key(lua_State *L) {
  lua_pushlstring(L, (const char *)eng_keys_seal_key(), ENG_KEY_LEN);
  return 1;
}

static int lua_freeze(lua_State *L) {
  eng_clock_freeze((int64_t)luaL_checkinteger(L, 1));
  return 0;
}

static int lua_advance(lua_State *L) {
  eng_clock_advance((int64_t)luaL_checkinteger(L, 1));
  return 0;
}

static int lua_reset(lua_State *L) {
  (void)L;
  eng_clock_reset();
  return 0;
}

static lua_State *new_state(void) {
  lua_State *L = luaL_newstate();
  luaL_openlibs(L);
  luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_PRELOAD_TABLE);
  lua_pushcfunction(L, eng_luaopen_crypto);
  lua_setfield(L, -2, "engine.crypto");
  lua_pushcfunction(L, eng_luaopen_time);
  lua_setfield(L, -2, "engine.time");
  lua_pop(L, 1);
  lua_register(L, "check", lua_check);
  lua_register(L, "eq", lua_eq);
  lua_register(L, "token_key", lua_token_key);
  lua_register(L, "seal_key", lua_seal_key);
  lua_register(L, "freeze", lua_freeze);
  lua_register(L, "advance", lua_advance);
  lua_register(L, "reset_clock", lua_reset);
  return L;
}

/* Runs a chunk (it sees `crypto` and `hex` as locals via the prelude); an uncaught error
 * counts as one failed check. */
static void run_lua(lua_State *L, const char *name, const char *code) {
  static const char prelude[] = "local crypto = require 'engine.crypto'; local hex = crypto.to_hex; ";
  size_t n = strlen(prelude) + strlen(code);
  char *chunk = malloc(n + 1);
  if (!chunk) abort();
  memcpy(chunk, prelude, sizeof prelude - 1);
  memcpy(chunk + sizeof prelude - 1, code, strlen(code) + 1);
  int rc = luaL_loadbufferx(L, chunk, n, name, "t");
  free(chunk);
  if (rc == LUA_OK) rc = lua_pcall(L, 0, 0, 0);
  if (rc != LUA_OK) {
    fprintf(stderr, "%s: uncaught error: %s\n", name, lua_tostring(L, -1));
    lua_pop(L, 1);
  }
  CHECK(rc == LUA_OK);
}

/* ---- C API ---- */

static const char *b64(const char *in, int url) {
  static char out[256];
  size_t n = eng_crypto_b64_encode((const unsigned char *)in, strlen(in), url, out);
  out[n] = '\0';
  return out;
}

/* Decodes s; returns the decoded text or "ERR:<message>". */
static const char *unb64(const char *s, int url) {
  static char out[256];
  const char *msg = NULL;
  size_t n = 0;
  if (eng_crypto_b64_decode(s, strlen(s), url, (unsigned char *)out, &n, &msg) != 0) {
    snprintf(out, sizeof out, "ERR:%s", msg);
    return out;
  }
  out[n] = '\0';
  return out;
}

static void test_codecs_c(void) {
  /* RFC 4648 section 10. */
  static const char *const plain[] = {"", "f", "fo", "foo", "foob", "fooba", "foobar"};
  static const char *const std[] = {"", "Zg==", "Zm8=", "Zm9v", "Zm9vYg==", "Zm9vYmE=", "Zm9vYmFy"};
  static const char *const url[] = {"", "Zg", "Zm8", "Zm9v", "Zm9vYg", "Zm9vYmE", "Zm9vYmFy"};
  for (int i = 0; i < 7; i++) {
    CHECK_STR(b64(plain[i], 0), std[i]);
    CHECK_STR(b64(plain[i], 1), url[i]);
    CHECK_STR(unb64(std[i], 0), plain[i]);
    CHECK_STR(unb64(url[i], 1), plain[i]);
    CHECK_INT(ENG_CRYPTO_B64_ENCODED_LEN(strlen(plain[i])), strlen(std[i]));
  }
  CHECK_STR(b64("\xfb\xff", 0), "+/8=");
  CHECK_STR(b64("\xfb\xff", 1), "-_8");
  CHECK_STR(unb64("+/8=", 0), "\xfb\xff");
  CHECK_STR(unb64("-_8", 1), "\xfb\xff");
  CHECK_STR(unb64("-_8=", 0), "ERR:invalid base64 character");
  CHECK_STR(unb64("+/8", 1), "ERR:invalid base64url character");
  CHECK_STR(unb64("Zg=", 0), "ERR:invalid base64 length");
  CHECK_STR(unb64("Zg", 0), "ERR:invalid base64 length");
  CHECK_STR(unb64("Z===", 0), "ERR:invalid base64 character");
  CHECK_STR(unb64("====", 0), "ERR:invalid base64 character");
  CHECK_STR(unb64("Zm=v", 0), "ERR:invalid base64 character");
  CHECK_STR(unb64("Zh==", 0), "ERR:non-canonical base64 trailing bits");
  CHECK_STR(unb64("Zm9=", 0), "ERR:non-canonical base64 trailing bits");
  CHECK_STR(unb64("Zm 9v", 0), "ERR:invalid base64 length");
  CHECK_STR(unb64("Zm\n9", 0), "ERR:invalid base64 character");
  CHECK_STR(unb64("Zg==", 1), "ERR:invalid base64url character");
  CHECK_STR(unb64("Zm9vY", 1), "ERR:invalid base64url length");
  CHECK_STR(unb64("Zh", 1), "ERR:non-canonical base64 trailing bits");

  char hx[16];
  unsigned char raw[8];
  size_t n = 0;
  const char *msg = NULL;
  CHECK_INT(eng_crypto_hex_encode((const unsigned char *)"\x00\xab\xff", 3, hx), 6);
  CHECK(memcmp(hx, "00abff", 6) == 0);
  CHECK_INT(eng_crypto_hex_decode("00ABff", 6, raw, &n, &msg), 0);
  CHECK_INT(n, 3);
  CHECK(memcmp(raw, "\x00\xab\xff", 3) == 0);
  CHECK_INT(eng_crypto_hex_decode("abc", 3, raw, &n, &msg), ENG_EPARSE);
  CHECK_STR(msg, "odd hex length");
  CHECK_INT(eng_crypto_hex_decode("0g", 2, raw, &n, &msg), ENG_EPARSE);
  CHECK_STR(msg, "invalid hex character");
}

static int is_hex_lower(char c) { return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'); }

static int cmp_ids(const void *a, const void *b) { return strcmp(a, b); }

static void test_uuid_c(void) {
  enum { N = 1000 };
  static char ids[N][37];
  int format_ok = 1;
  for (int i = 0; i < N; i++) {
    CHECK_INT(eng_crypto_uuid4(ids[i]), 0);
    const char *u = ids[i];
    if (strlen(u) != 36 || u[14] != '4' || !strchr("89ab", u[19])) format_ok = 0;
    for (int j = 0; j < 36; j++) {
      int dash = j == 8 || j == 13 || j == 18 || j == 23;
      if (dash ? u[j] != '-' : !is_hex_lower(u[j])) format_ok = 0;
    }
  }
  CHECK(format_ok);
  qsort(ids, N, sizeof ids[0], cmp_ids);
  int dup = 0;
  for (int i = 1; i < N; i++) dup += strcmp(ids[i - 1], ids[i]) == 0;
  CHECK_INT(dup, 0);

  unsigned char a[32] = {0}, b[32] = {0};
  CHECK_INT(eng_crypto_random(a, sizeof a), 0);
  CHECK_INT(eng_crypto_random(b, sizeof b), 0);
  CHECK(memcmp(a, b, sizeof a) != 0);
}

/* ---- Lua: primitives ---- */

static void test_primitives_lua(lua_State *L) {
  run_lua(L, "=kat",
          "eq(hex(crypto.sha256('abc')), "
          "'ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad', 'sha256 abc')\n"
          "eq(hex(crypto.sha256('')), "
          "'e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855', 'sha256 empty')\n"
          "eq(#crypto.sha256('abc'), 32, 'sha256 is raw')\n"
          /* RFC 4231 test case 2 */
          "eq(hex(crypto.hmac_sha256('Jefe', 'what do ya want for nothing?')), "
          "'5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843', 'hmac rfc4231 #2')\n"
          "check(not pcall(crypto.sha256, 12), 'sha256 raises on a number')\n"
          "check(not pcall(crypto.hmac_sha256, 'k'), 'hmac raises without message')\n");

  run_lua(L, "=random",
          "eq(#crypto.random_bytes(1), 1, 'one byte')\n"
          "eq(#crypto.random_bytes(65536), 65536, 'max bytes')\n"
          "check(crypto.random_bytes(16) ~= crypto.random_bytes(16), 'random differs')\n"
          "check(not pcall(crypto.random_bytes, 0), '0 raises')\n"
          "check(not pcall(crypto.random_bytes, 65537), '65537 raises')\n"
          "check(not pcall(crypto.random_bytes, -1), 'negative raises')\n"
          "check(not pcall(crypto.random_bytes, 1.5), 'float raises')\n"
          "check(not pcall(crypto.random_bytes), 'missing raises')\n");

  run_lua(L, "=uuid",
          "local seen = {}\n"
          "for i = 1, 1000 do\n"
          "  local u = crypto.uuid4()\n"
          "  check(u:match('^%x%x%x%x%x%x%x%x%-%x%x%x%x%-4%x%x%x%-[89ab]%x%x%x%-"
          "%x%x%x%x%x%x%x%x%x%x%x%x$') and u == u:lower(), 'uuid shape ' .. u)\n"
          "  check(not seen[u], 'uuid unique')\n"
          "  seen[u] = true\n"
          "end\n");

  run_lua(L, "=equals",
          "eq(crypto.equals('abc', 'abc'), true, 'same')\n"
          "eq(crypto.equals('', ''), true, 'both empty')\n"
          "eq(crypto.equals('abc', 'abd'), false, 'last byte differs')\n"
          "eq(crypto.equals('abc', 'abcd'), false, 'prefix')\n"
          "eq(crypto.equals('abc', ''), false, 'empty vs non-empty')\n"
          "eq(crypto.equals('a\\0b', 'a\\0c'), false, 'after NUL')\n"
          "check(not pcall(crypto.equals, 'a', nil), 'nil raises')\n"
          "check(not pcall(crypto.equals, 1, 1), 'numbers raise')\n");

  run_lua(L, "=codecs",
          "local plain = {'', 'f', 'fo', 'foo', 'foob', 'fooba', 'foobar'}\n"
          "local std = {'', 'Zg==', 'Zm8=', 'Zm9v', 'Zm9vYg==', 'Zm9vYmE=', 'Zm9vYmFy'}\n"
          "local url = {'', 'Zg', 'Zm8', 'Zm9v', 'Zm9vYg', 'Zm9vYmE', 'Zm9vYmFy'}\n"
          "for i = 1, #plain do\n"
          "  eq(crypto.to_base64(plain[i]), std[i], 'to_base64 ' .. plain[i])\n"
          "  eq(crypto.from_base64(std[i]), plain[i], 'from_base64 ' .. std[i])\n"
          "  eq(crypto.to_base64url(plain[i]), url[i], 'to_base64url ' .. plain[i])\n"
          "  eq(crypto.from_base64url(url[i]), plain[i], 'from_base64url ' .. url[i])\n"
          "end\n"
          "eq(crypto.to_base64('\\251\\255'), '+/8=', 'std alphabet')\n"
          "eq(crypto.to_base64url('\\251\\255'), '-_8', 'url alphabet')\n"
          "eq(crypto.to_hex('\\0\\171\\255'), '00abff', 'to_hex')\n"
          "eq(crypto.from_hex('00ABff'), '\\0\\171\\255', 'from_hex mixed case')\n"
          "eq(crypto.to_hex(''), '', 'empty hex')\n"
          "eq(crypto.from_hex(''), '', 'empty unhex')\n"
          "local all = {} for i = 0, 255 do all[#all + 1] = string.char(i) end\n"
          "all = table.concat(all)\n"
          "eq(crypto.from_hex(crypto.to_hex(all)), all, 'hex round trip')\n"
          "eq(crypto.from_base64(crypto.to_base64(all)), all, 'base64 round trip')\n"
          "eq(crypto.from_base64url(crypto.to_base64url(all)), all, 'base64url round trip')\n"
          "local function bad(f, s, want)\n"
          "  local v, err = f(s)\n"
          "  eq(v, nil, 'rejects ' .. s)\n"
          "  eq(err, want, 'message for ' .. s)\n"
          "end\n"
          "bad(crypto.from_hex, 'abc', 'odd hex length')\n"
          "bad(crypto.from_hex, 'zz', 'invalid hex character')\n"
          "bad(crypto.from_hex, ' 00', 'odd hex length')\n"
          "bad(crypto.from_base64, 'Zg=', 'invalid base64 length')\n"
          "bad(crypto.from_base64, 'Zg', 'invalid base64 length')\n"
          "bad(crypto.from_base64, 'Z===', 'invalid base64 character')\n"
          "bad(crypto.from_base64, 'Zm=v', 'invalid base64 character')\n"
          "bad(crypto.from_base64, 'Zm9v\\n', 'invalid base64 length')\n"
          "bad(crypto.from_base64, 'Zh==', 'non-canonical base64 trailing bits')\n"
          "bad(crypto.from_base64, '-_8=', 'invalid base64 character')\n"
          "bad(crypto.from_base64url, 'Zg==', 'invalid base64url character')\n"
          "bad(crypto.from_base64url, 'Zg=', 'invalid base64url character')\n"
          "bad(crypto.from_base64url, '+/8', 'invalid base64url character')\n"
          "bad(crypto.from_base64url, 'Zm9vY', 'invalid base64url length')\n"
          "bad(crypto.from_base64url, 'Zh', 'non-canonical base64 trailing bits')\n"
          "for _, f in ipairs({crypto.from_hex, crypto.from_base64, crypto.from_base64url,\n"
          "                    crypto.to_hex, crypto.to_base64, crypto.to_base64url}) do\n"
          "  check(not pcall(f, 12), 'number raises')\n"
          "  check(not pcall(f, nil), 'nil raises')\n"
          "  check(not pcall(f, {}), 'table raises')\n"
          "end\n");
}

/* ---- Lua: keyed functions ---- */

static const unsigned char KEY_A[ENG_KEY_LEN] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11,
                                                 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22,
                                                 23, 24, 25, 26, 27, 28, 29, 30, 31, 32};
static unsigned char KEY_B[ENG_KEY_LEN];

static int lua_use_key(lua_State *L) {
  eng_keys_set(luaL_checkinteger(L, 1) == 1 ? KEY_A : KEY_B);
  return 0;
}

static void test_not_ready(lua_State *L) {
  CHECK_INT(eng_keys_ready(), 0);
  CHECK(eng_keys_token_key() == NULL);
  run_lua(L, "=not_ready",
          "for _, name in ipairs({'seal', 'open', 'verify'}) do\n"
          "  local ok, err = pcall(crypto[name], 'x')\n"
          "  check(not ok and tostring(err):find('server key is not loaded', 1, true), name)\n"
          "end\n"
          "check(not pcall(crypto.sign, {}, 60), 'sign raises')\n"
          "eq(#crypto.sha256('x'), 32, 'unkeyed functions work without a key')\n");
}

static void test_seal_lua(lua_State *L) {
  run_lua(L, "=seal",
          "use_key(1)\n"
          "local FAIL = 'cannot open sealed data'\n"
          "for _, pt in ipairs({'', 'x', 'hello, world', string.rep('\\0\\255', 1000)}) do\n"
          "  local s = crypto.seal(pt)\n"
          "  eq(#s, 1 + 12 + #pt + 16, 'sealed length')\n"
          "  eq(s:byte(1), 1, 'version byte')\n"
          "  eq(crypto.open(s), pt, 'round trip ' .. #pt)\n"
          "  eq(crypto.open(s, ''), pt, 'empty aad is no aad')\n"
          "  if #pt >= 8 then check(not s:find(pt, 1, true), 'ciphertext hides plaintext') end\n"
          "end\n"
          "local s1, s2 = crypto.seal('same'), crypto.seal('same')\n"
          "check(s1 ~= s2, 'two seals differ')\n"
          "check(s1:sub(2, 13) ~= s2:sub(2, 13), 'nonces differ')\n"
          "local s = crypto.seal('secret', 'user:42')\n"
          "eq(crypto.open(s, 'user:42'), 'secret', 'with aad')\n"
          "local v, err = crypto.open(s, 'user:43')\n"
          "eq(v, nil, 'wrong aad') eq(err, FAIL, 'wrong aad message')\n"
          "v, err = crypto.open(s)\n"
          "eq(v, nil, 'missing aad') eq(err, FAIL, 'missing aad message')\n"
          "v = crypto.open(crypto.seal('secret'), 'user:42')\n"
          "eq(v, nil, 'unexpected aad')\n"
          /* a flipped bit anywhere (version, nonce, ciphertext, tag) fails */
          "local failures = 0\n"
          "for i = 1, #s do\n"
          "  for _, bit in ipairs({1, 128}) do\n"
          "    local b = s:byte(i) ~ bit\n"
          "    local t = s:sub(1, i - 1) .. string.char(b) .. s:sub(i + 1)\n"
          "    local r, e = crypto.open(t, 'user:42')\n"
          "    if r == nil and e == FAIL then failures = failures + 1 end\n"
          "  end\n"
          "end\n"
          "eq(failures, 2 * #s, 'every flipped bit fails')\n"
          "eq(crypto.open(s:sub(1, -2), 'user:42'), nil, 'truncated')\n"
          "eq(crypto.open(s .. 'x', 'user:42'), nil, 'extended')\n"
          "eq(crypto.open('', 'user:42'), nil, 'empty')\n"
          "eq(crypto.open(string.rep('\\1', 28)), nil, 'shorter than overhead')\n"
          "eq(crypto.open('\\2' .. s:sub(2), 'user:42'), nil, 'version 2')\n"
          "use_key(2)\n"
          "v, err = crypto.open(s, 'user:42')\n"
          "eq(v, nil, 'wrong key') eq(err, FAIL, 'wrong key message')\n"
          "use_key(1)\n"
          "eq(crypto.open(s, 'user:42'), 'secret', 'right key again')\n"
          "check(not pcall(crypto.seal, 1), 'seal raises on a number')\n"
          "check(not pcall(crypto.seal, 'x', 1), 'seal raises on a number aad')\n"
          "check(not pcall(crypto.open, nil), 'open raises on nil')\n");
}

static void test_tokens_lua(lua_State *L) {
  /* KEY_A is bytes 1..32; each subkey is HMAC(master, label). */
  run_lua(L, "=derivation",
          "use_key(1)\n"
          "local master = {} for i = 1, 32 do master[i] = string.char(i) end\n"
          "master = table.concat(master)\n"
          "eq(token_key(), crypto.hmac_sha256(master, 'apiengine token v1'), 'token key')\n"
          "eq(seal_key(), crypto.hmac_sha256(master, 'apiengine seal v1'), 'seal key')\n");
  run_lua(L, "=tokens",
          "use_key(1)\n"
          "local T0 = 1718445600000\n"

          "freeze(T0)\n"
          "local tok = crypto.sign({sub = 'user-1', role = 'admin', n = 7}, 60)\n"
          "local p64, t64 = tok:match('^v1%.([%w_-]+)%.([%w_-]+)$')\n"
          "check(p64 and t64, 'token shape')\n"
          "eq(#t64, 43, 'tag length')\n"
          /* tag = HMAC(token key, 'v1.' .. payload part), computed independently */
          "eq(crypto.from_base64url(t64), crypto.hmac_sha256(token_key(), 'v1.' .. p64), "
          "'tag definition')\n"
          "local json = crypto.from_base64url(p64)\n"
          "check(json:find('\"exp\":' .. (T0 + 60000), 1, true), 'exp in JSON: ' .. json)\n"
          "check(json:find('\"sub\":\"user-1\"', 1, true), 'sub in JSON')\n"
          "local p, err = crypto.verify(tok)\n"
          "check(type(p) == 'table', 'verifies: ' .. tostring(err))\n"
          "eq(p.sub, 'user-1', 'sub') eq(p.role, 'admin', 'role') eq(p.n, 7, 'n')\n"
          "eq(p.exp, T0 + 60000, 'exp') eq(math.type(p.exp), 'integer', 'exp is an integer')\n"
          /* the payload table given to sign is not modified; exp is overridden */
          "local src = {exp = 1, x = true}\n"
          "local tok2 = crypto.sign(src, 1)\n"
          "eq(src.exp, 1, 'caller table untouched')\n"
          "eq(crypto.verify(tok2).exp, T0 + 1000, 'exp overridden')\n"
          /* expiry */
          "advance(59999)\n"
          "check(crypto.verify(tok), 'valid 1 ms before expiry')\n"
          "advance(1)\n"
          "local v, e = crypto.verify(tok)\n"
          "eq(v, nil, 'expired at exp') eq(e, 'expired', 'expired reason')\n"
          "freeze(T0)\n"
          /* tampering */
          "local function reason(t) local r, why = crypto.verify(t) return r == nil and why or 'ok' end\n"
          "local other = crypto.sign({sub = 'user-2', role = 'admin', n = 7}, 60)\n"
          "local o64 = other:match('^v1%.([%w_-]+)%.')\n"
          "eq(reason('v1.' .. o64 .. '.' .. t64), 'bad_signature', 'swapped payload')\n"
          "local flipped = (t64:sub(1, 1) == 'A' and 'B' or 'A') .. t64:sub(2)\n"
          "eq(reason('v1.' .. p64 .. '.' .. flipped), 'bad_signature', 'tampered tag')\n"
          "local pflip = (p64:sub(1, 1) == 'e' and 'f' or 'e') .. p64:sub(2)\n"
          "eq(reason('v1.' .. pflip .. '.' .. t64), 'bad_signature', 'tampered payload')\n"
          "eq(reason('v1.' .. crypto.to_base64url('not json') .. '.' .. t64), 'bad_signature', "
          "'signature checked before JSON')\n"
          "eq(reason(tok:sub(1, -2)), 'malformed', 'truncated tag')\n"
          "eq(reason(tok .. 'A'), 'malformed', 'extended tag')\n"
          "eq(reason(tok:sub(1, #tok - 44)), 'malformed', 'no tag')\n"
          "use_key(2)\n"
          "eq(reason(tok), 'bad_signature', 'foreign key')\n"
          "local foreign = crypto.sign({sub = 'x'}, 60)\n"
          "use_key(1)\n"
          "eq(reason(foreign), 'bad_signature', 'token from another key')\n"
          "eq(reason('v1.' .. p64 .. '.' .. t64), 'ok', 'reassembled original')\n"
          /* garbage */
          "for _, g in ipairs({'', 'v1', 'v1.', 'v1..', 'v2.x.y', 'v1.x.y', 'v1..' .. t64,\n"
          "    'V1.' .. p64 .. '.' .. t64, 'v2.' .. p64 .. '.' .. t64, 'v1.' .. p64 .. '.' .. t64 .. '.',\n"
          "    'v1.' .. p64 .. '.x.' .. t64, 'v1.' .. p64 .. '=.' .. t64, 'v1.' .. p64 .. '.' .. t64 .. '=',\n"
          "    'v1.' .. string.rep('A', 4997), string.rep('v1.', 2000), '\\0'}) do\n"
          "  eq(reason(g), 'malformed', 'garbage ' .. g:sub(1, 40))\n"
          "end\n"
          /* correctly signed but unusable payloads */
          "local function forge(json)\n"
          "  local body = 'v1.' .. crypto.to_base64url(json)\n"
          "  return body .. '.' .. crypto.to_base64url(crypto.hmac_sha256(token_key(), body))\n"
          "end\n"
          "eq(reason(forge('{\"exp\":' .. (T0 + 1) .. '}')), 'ok', 'forged helper works')\n"
          "eq(reason(forge('{\"exp\":' .. T0 .. '}')), 'expired', 'exp == now is expired')\n"
          "for _, j in ipairs({'', 'not json', '{', '[1,2]', '\"s\"', '42', 'null', '{}',\n"
          "    '{\"exp\":\"9999999999999\"}', '{\"exp\":1.5e13}', '{\"exp\":null}', '{\"exp\":true}',\n"
          "    '{\"ex\":9999999999999}'}) do\n"
          "  eq(reason(forge(j)), 'malformed', 'payload ' .. j)\n"
          "end\n"
          /* a token just under the limit verifies; a payload too large to sign raises */
          "local big = crypto.sign({d = string.rep('a', 2900)}, 60)\n"
          "check(#big <= 4096, 'big token within limit') eq(reason(big), 'ok', 'big token')\n"
          "check(not pcall(crypto.sign, {d = string.rep('a', 3100)}, 60), 'oversized raises')\n"
          "check(not pcall(crypto.sign, {}, 0), 'ttl 0 raises')\n"
          "check(not pcall(crypto.sign, {}, 1.5), 'fractional ttl raises')\n"
          "check(not pcall(crypto.sign, {}, 10 * 366 * 86400 + 1), 'huge ttl raises')\n"
          "check(not pcall(crypto.sign, 'x', 60), 'string payload raises')\n"
          "check(not pcall(crypto.sign, {f = print}, 60), 'unencodable payload raises')\n"
          "check(not pcall(crypto.verify, 42), 'verify raises on a number')\n"
          "reset_clock()\n"
          "local live = crypto.sign({}, 60)\n"
          "eq(reason(live), 'ok', 'real clock')\n");
}

/* ---- key store ---- */

static char tmpdir[64];

/* Returns tmpdir/name in a malloc'd string the caller frees. */
static char *path_in_tmp(const char *name) {
  size_t n = strlen(tmpdir) + strlen(name) + 2;
  char *p = malloc(n);
  if (!p) abort();
  snprintf(p, n, "%s/%s", tmpdir, name);
  return p;
}

static void test_keys_file(lua_State *L) {
  char *err = NULL;
  char *key_path = path_in_tmp("db.sqlite.key"), *key_tmp = path_in_tmp("db.sqlite.key.tmp");
  char *bad_path = path_in_tmp("bad.key"), *fresh = path_in_tmp("fresh.key");
  char *fresh_tmp = path_in_tmp("fresh.key.tmp");
  /* First start: the file is created with mode 0600 and 64 hex chars + newline. */
  CHECK_INT(eng_keys_init(NULL, key_path, &err), 0);
  CHECK(err == NULL);
  CHECK_INT(eng_keys_ready(), 1);
  struct stat st;
  CHECK_INT(stat(key_path, &st), 0);
  CHECK_INT(st.st_mode & 0777, 0600);
  CHECK_INT(st.st_size, 65);
  CHECK_INT(access(key_tmp, F_OK), -1);
  CHECK(memcmp(eng_keys_token_key(), eng_keys_seal_key(), ENG_KEY_LEN) != 0);

  run_lua(L, "=keys_before", "saved_token = crypto.sign({k = 1}, 3600)\n"
                             "saved_sealed = crypto.seal('kept')\n");
  /* Another key in between, then a restart: the same file gives the same key back. */
  eng_keys_set(KEY_B);
  run_lua(L, "=keys_other", "eq(select(2, crypto.verify(saved_token)), 'bad_signature', 'other key')\n");
  CHECK_INT(eng_keys_init("", key_path, &err), 0);
  run_lua(L, "=keys_after", "local p = crypto.verify(saved_token)\n"
                            "eq(p and p.k, 1, 'token survives re-init')\n"
                            "eq(crypto.open(saved_sealed), 'kept', 'sealed survives re-init')\n");

  /* The file holds the master key: configuring the same bytes gives the same keys. */
  char text[80] = {0};
  int fd = open(key_path, O_RDONLY);
  CHECK(fd >= 0);
  CHECK_INT(read(fd, text, sizeof text - 1), 65);
  close(fd);
  CHECK(text[64] == '\n');
  text[64] = '\0';
  CHECK_INT(eng_keys_init(text, "/nonexistent/dir/x.key", &err), 0);
  run_lua(L, "=keys_configured", "eq(crypto.open(saved_sealed), 'kept', 'configured hex = file')\n");

  /* Group-readable file refused, key store unchanged. */
  CHECK_INT(chmod(key_path, 0640), 0);
  CHECK_INT(eng_keys_init(NULL, key_path, &err), ENG_ECONFIG);
  CHECK(err && strstr(err, "chmod 600") && strstr(err, key_path));
  CHECK(err && !strstr(err, text));
  free(err);
  err = NULL;
  CHECK_INT(chmod(key_path, 0604), 0);
  CHECK_INT(eng_keys_init(NULL, key_path, &err), ENG_ECONFIG);
  free(err);
  err = NULL;
  CHECK_INT(eng_keys_ready(), 1);
  run_lua(L, "=keys_unchanged", "eq(crypto.open(saved_sealed), 'kept', 'failed init keeps keys')\n");

  /* Malformed files. */
  static const char *const bad_contents[] = {"", "abc\n", "zz", NULL};
  char long_text[70];
  memset(long_text, 'a', sizeof long_text);
  for (int i = 0; i < 5; i++) {
    const char *content = bad_contents[i < 3 ? i : 0];
    size_t n = strlen(content);
    if (i == 3) { content = long_text; n = 63; }     /* one hex char short */
    if (i == 4) { content = long_text; n = 66; }     /* 66 hex chars */
    unlink(bad_path);
    fd = open(bad_path, O_WRONLY | O_CREAT | O_EXCL, 0600);
    CHECK(fd >= 0);
    CHECK_INT(write(fd, content, n), (long long)n);
    close(fd);
    CHECK_INT(eng_keys_init(NULL, bad_path, &err), ENG_ECONFIG);
    CHECK(err && strstr(err, "malformed"));
    free(err);
    err = NULL;
  }
  /* A stale temporary file is reported, not silently replaced. */
  fd = open(fresh_tmp, O_WRONLY | O_CREAT | O_EXCL, 0600);
  CHECK(fd >= 0);
  close(fd);
  CHECK_INT(eng_keys_init(NULL, fresh, &err), ENG_ECONFIG);
  CHECK(err && strstr(err, "fresh.key.tmp"));
  free(err);
  err = NULL;
  unlink(fresh_tmp);
  /* Unwritable location. */
  CHECK_INT(eng_keys_init(NULL, "/nonexistent/dir/x.key", &err), ENG_EIO);
  CHECK(err != NULL);
  free(err);
  err = NULL;
  CHECK_INT(eng_keys_init(NULL, NULL, &err), ENG_ECONFIG);
  free(err);
  err = NULL;
  CHECK_INT(eng_keys_init(NULL, key_path, NULL), ENG_ECONFIG); /* err may be NULL */
  CHECK_INT(access(fresh, F_OK), -1);
  unlink(key_path);
  unlink(bad_path);
  free(key_path);
  free(key_tmp);
  free(bad_path);
  free(fresh);
  free(fresh_tmp);
}

static void test_keys_configured(lua_State *L) {
  char *err = NULL;
  /* 32 bytes chosen so the base64 and base64url spellings differ ('+', '/' vs '-', '_'). */
  unsigned char raw[ENG_KEY_LEN];
  memset(raw, 0xfb, sizeof raw);
  raw[1] = 0xff;
  char hexkey[65], std[48], url[48];
  hexkey[eng_crypto_hex_encode(raw, sizeof raw, hexkey)] = '\0';
  std[eng_crypto_b64_encode(raw, sizeof raw, 0, std)] = '\0';
  url[eng_crypto_b64_encode(raw, sizeof raw, 1, url)] = '\0';
  CHECK_INT(strlen(std), 44);
  CHECK_INT(strlen(url), 43);
  char url_padded[64], std_unpadded[64];
  snprintf(url_padded, sizeof url_padded, "%s=", url);
  snprintf(std_unpadded, sizeof std_unpadded, "%.43s", std);

  CHECK_INT(eng_keys_init(hexkey, NULL, &err), 0);
  run_lua(L, "=cfg_hex", "cfg_sealed = crypto.seal('cfg')\n");
  const char *const same[] = {std, url, url_padded, std_unpadded};
  for (int i = 0; i < 4; i++) {
    eng_keys_set(KEY_B);
    CHECK_INT(eng_keys_init(same[i], NULL, &err), 0);
    CHECK(err == NULL);
    run_lua(L, "=cfg_same", "eq(crypto.open(cfg_sealed), 'cfg', 'same key, other spelling')\n");
  }
  /* Upper-case hex is the same key too. */
  char upper[65];
  for (int i = 0; i < 65; i++) upper[i] = (char)(hexkey[i] >= 'a' ? hexkey[i] - 32 : hexkey[i]);
  CHECK_INT(eng_keys_init(upper, NULL, &err), 0);
  run_lua(L, "=cfg_upper", "eq(crypto.open(cfg_sealed), 'cfg', 'upper-case hex')\n");

  char short_hex[64], long_hex[70], bad_char[65], b64_31[48], spaced[67];
  snprintf(short_hex, sizeof short_hex, "%.63s", hexkey);
  snprintf(long_hex, sizeof long_hex, "%s00", hexkey);
  snprintf(bad_char, sizeof bad_char, "%.63sg", hexkey);
  b64_31[eng_crypto_b64_encode(raw, 31, 0, b64_31)] = '\0';
  snprintf(spaced, sizeof spaced, " %s\n", hexkey);
  const char *const bad[] = {"short", short_hex, long_hex, bad_char, b64_31, spaced,
                             "!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!="};
  for (int i = 0; i < 7; i++) {
    CHECK_INT(eng_keys_init(bad[i], "/nonexistent/ignored", &err), ENG_ECONFIG);
    CHECK(err && strstr(err, "configured server key is invalid"));
    CHECK(err && !strstr(err, bad[i]) && !strstr(err, hexkey) && !strstr(err, "fb"));
    free(err);
    err = NULL;
  }
  run_lua(L, "=cfg_kept", "eq(crypto.open(cfg_sealed), 'cfg', 'bad config keeps the key')\n");
}

int main(void) {
  memset(KEY_B, 0x42, sizeof KEY_B);
  snprintf(tmpdir, sizeof tmpdir, "/tmp/test_crypto.XXXXXX");
  if (!mkdtemp(tmpdir)) {
    perror("mkdtemp");
    return 1;
  }
  test_codecs_c();
  test_uuid_c();

  lua_State *L = new_state();
  lua_register(L, "use_key", lua_use_key);
  test_not_ready(L);
  test_primitives_lua(L);
  test_seal_lua(L);
  test_tokens_lua(L);
  test_keys_file(L);
  test_keys_configured(L);
  lua_close(L);

  CHECK_INT(rmdir(tmpdir), 0); /* every file the test made is gone */
  eng_clock_reset();
  return check_summary("test_crypto");
}
