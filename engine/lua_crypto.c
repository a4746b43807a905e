/* lua_crypto.c - the "engine.crypto" module: argument checks and results over crypto.h, and
 * the signed tokens (sign/verify), which join the primitives, the token key and engine.json.
 *
 * Failures of the primitives are translated to a Lua error (they mean OpenSSL is broken, not
 * that the input is bad); bad input data returns nil, message. verify keeps the claims of the
 * tokens it accepted, per state (see "verified tokens"). */
#include "lua_crypto.h"

#include <limits.h>
#include <stdint.h>
#include <string.h>

#include "buf.h"
#include "clock.h"
#include "crypto.h"
#include "error.h"
#include "keys.h"
#include "lua_common.h"
#include "lua_json.h"

#define DIGEST_LEN ENG_CRYPTO_SHA256_LEN
#define SEAL_FAILED "cannot open sealed data"

#define TOKEN_PREFIX "v1."
#define TOKEN_PREFIX_LEN 3
#define TOKEN_TAG_B64_LEN 43 /* base64url of 32 bytes, unpadded */
#define TOKEN_BUF_MT "engine.crypto.jsonbuf"

/* ---- Lua helpers ---- */

/* Strings only: a number is not silently taken as its decimal text. */
static const char *check_string(lua_State *L, int arg, size_t *len) {
  luaL_checktype(L, arg, LUA_TSTRING);
  return lua_tolstring(L, arg, len);
}

static const char *opt_string(lua_State *L, int arg, size_t *len) {
  if (lua_isnoneornil(L, arg)) {
    *len = 0;
    return "";
  }
  return check_string(L, arg, len);
}

static void require_keys(lua_State *L) {
  if (!eng_keys_ready())
    luaL_error(L, "engine.crypto: the server key is not loaded");
}

static int push_fail(lua_State *L, const char *msg) {
  lua_pushnil(L);
  lua_pushstring(L, msg);
  return 2;
}

/* ---- Lua functions ---- */

static int l_random_bytes(lua_State *L) {
  lua_Integer n = luaL_checkinteger(L, 1);
  luaL_argcheck(L, n >= 1 && n <= ENG_CRYPTO_RANDOM_MAX, 1, "must be between 1 and 65536");
  luaL_Buffer b;
  char *p = luaL_buffinitsize(L, &b, (size_t)n);
  if (eng_crypto_random(p, (size_t)n) != 0)
    return luaL_error(L, "random generator failure");
  luaL_pushresultsize(&b, (size_t)n);
  return 1;
}

static int l_uuid4(lua_State *L) {
  char id[37];
  if (eng_crypto_uuid4(id) != 0)
    return luaL_error(L, "random generator failure");
  lua_pushlstring(L, id, 36);
  return 1;
}

static int l_sha256(lua_State *L) {
  size_t len;
  const char *s = check_string(L, 1, &len);
  unsigned char md[DIGEST_LEN];
  if (eng_crypto_sha256(s, len, md) != 0)
    return luaL_error(L, "sha256 failed");
  lua_pushlstring(L, (const char *)md, DIGEST_LEN);
  return 1;
}

static int l_hmac_sha256(lua_State *L) {
  size_t key_len, msg_len;
  const char *key = check_string(L, 1, &key_len);
  const char *msg = check_string(L, 2, &msg_len);
  unsigned char md[DIGEST_LEN];
  luaL_argcheck(L, key_len <= INT_MAX, 1, "key too long");
  if (eng_crypto_hmac_sha256(key, key_len, msg, msg_len, md) != 0)
    return luaL_error(L, "hmac_sha256 failed");
  lua_pushlstring(L, (const char *)md, DIGEST_LEN);
  return 1;
}

static int l_equals(lua_State *L) {
  size_t la, lb;
  const char *a = check_string(L, 1, &la);
  const char *b = check_string(L, 2, &lb);
  lua_pushboolean(L, la == lb && eng_crypto_equal(a, b, la));
  return 1;
}

static int l_to_hex(lua_State *L) {
  size_t len;
  const char *s = check_string(L, 1, &len);
  luaL_argcheck(L, len <= (SIZE_MAX - 1) / 2, 1, "too long");
  luaL_Buffer b;
  char *out = luaL_buffinitsize(L, &b, 2 * len);
  luaL_pushresultsize(&b, eng_crypto_hex_encode((const unsigned char *)s, len, out));
  return 1;
}

static int l_from_hex(lua_State *L) {
  size_t len, out_len = 0;
  const char *s = check_string(L, 1, &len), *msg = NULL;
  luaL_Buffer b;
  char *out = luaL_buffinitsize(L, &b, len / 2);
  if (eng_crypto_hex_decode(s, len, (unsigned char *)out, &out_len, &msg) != 0)
    return push_fail(L, msg);
  luaL_pushresultsize(&b, out_len);
  return 1;
}

static int to_base64(lua_State *L, int url) {
  size_t len;
  const char *s = check_string(L, 1, &len);
  luaL_argcheck(L, len <= SIZE_MAX / 4 * 3 - 3, 1, "too long");
  luaL_Buffer b;
  char *out = luaL_buffinitsize(L, &b, ENG_CRYPTO_B64_ENCODED_LEN(len));
  luaL_pushresultsize(&b, eng_crypto_b64_encode((const unsigned char *)s, len, url, out));
  return 1;
}

static int from_base64(lua_State *L, int url) {
  size_t len, out_len = 0;
  const char *s = check_string(L, 1, &len), *msg = NULL;
  luaL_Buffer b;
  char *out = luaL_buffinitsize(L, &b, ENG_CRYPTO_B64_DECODED_MAX(len));
  if (eng_crypto_b64_decode(s, len, url, (unsigned char *)out, &out_len, &msg) != 0)
    return push_fail(L, msg);
  luaL_pushresultsize(&b, out_len);
  return 1;
}

static int l_to_base64(lua_State *L) { return to_base64(L, 0); }
static int l_from_base64(lua_State *L) { return from_base64(L, 0); }
static int l_to_base64url(lua_State *L) { return to_base64(L, 1); }
static int l_from_base64url(lua_State *L) { return from_base64(L, 1); }

static int l_seal(lua_State *L) {
  size_t pt_len, aad_len;
  const char *pt = check_string(L, 1, &pt_len);
  const char *aad = opt_string(L, 2, &aad_len);
  luaL_argcheck(L, pt_len <= ENG_CRYPTO_SEAL_MAX, 1, "plaintext too large");
  luaL_argcheck(L, aad_len <= ENG_CRYPTO_SEAL_MAX, 2, "aad too large");
  require_keys(L);
  luaL_Buffer b;
  unsigned char *out = (unsigned char *)luaL_buffinitsize(L, &b, ENG_CRYPTO_SEAL_OVERHEAD + pt_len);
  if (eng_crypto_seal(eng_keys_seal_key(), aad, aad_len, pt, pt_len, out) != 0)
    return luaL_error(L, "seal failed");
  luaL_pushresultsize(&b, ENG_CRYPTO_SEAL_OVERHEAD + pt_len);
  return 1;
}

/* Opens sealed bytes with the current key, then each previous one. The index of the key that
 * opened them (*pt_len set), or -1 (out zeroed where written). len is within the bounds. */
static int open_any(const unsigned char *in, size_t len, const char *aad, size_t aad_len, unsigned char *out,
                    size_t *pt_len) {
  for (int i = 0; i < eng_keys_count(); i++)
    if (eng_crypto_open(eng_keys_seal_key_at(i), aad, aad_len, in, len, out, pt_len) == 0)
      return i;
  return -1;
}

static int sealed_len_ok(size_t len) {
  return len >= ENG_CRYPTO_SEAL_OVERHEAD && len - ENG_CRYPTO_SEAL_OVERHEAD <= ENG_CRYPTO_SEAL_MAX;
}

static int l_open(lua_State *L) {
  size_t len, aad_len;
  const unsigned char *in = (const unsigned char *)check_string(L, 1, &len);
  const char *aad = opt_string(L, 2, &aad_len);
  require_keys(L);
  /* eng_crypto_open refuses these too; checked first so no buffer is sized from them. */
  if (!sealed_len_ok(len))
    return push_fail(L, SEAL_FAILED);
  size_t pt_len = 0;
  luaL_Buffer b;
  unsigned char *out = (unsigned char *)luaL_buffinitsize(L, &b, len - ENG_CRYPTO_SEAL_OVERHEAD);
  if (open_any(in, len, aad, aad_len, out, &pt_len) < 0)
    return push_fail(L, SEAL_FAILED);
  luaL_pushresultsize(&b, pt_len);
  return 1;
}

/* crypto.reseal(sealed [, aad]) -> sealed again under the current key, or false when the current
 * key sealed it already, or nil, message when no loaded key opens it. The plaintext never
 * reaches Lua. */
static int l_reseal(lua_State *L) {
  size_t len, aad_len, pt_len = 0;
  const unsigned char *in = (const unsigned char *)check_string(L, 1, &len);
  const char *aad = opt_string(L, 2, &aad_len);
  require_keys(L);
  if (!sealed_len_ok(len))
    return push_fail(L, SEAL_FAILED);
  unsigned char *pt = lua_newuserdatauv(L, len, 0); /* collected with the state, wiped below */
  int k = open_any(in, len, aad, aad_len, pt, &pt_len);
  if (k < 0)
    return push_fail(L, SEAL_FAILED);
  if (k == 0) {
    eng_crypto_wipe(pt, len);
    lua_pushboolean(L, 0);
    return 1;
  }
  luaL_Buffer b;
  unsigned char *out = (unsigned char *)luaL_buffinitsize(L, &b, ENG_CRYPTO_SEAL_OVERHEAD + pt_len);
  int rc = eng_crypto_seal(eng_keys_seal_key(), aad, aad_len, pt, pt_len, out);
  eng_crypto_wipe(pt, len);
  if (rc != 0)
    return luaL_error(L, "seal failed");
  luaL_pushresultsize(&b, ENG_CRYPTO_SEAL_OVERHEAD + pt_len);
  return 1;
}

/* crypto.sealed_column(table, column [, aad]): declares a column that holds crypto.seal output,
 * for `apiengine rekey` (lua_rekey.c). aad: nil (none), the name of a column of the same row, or
 * a function(row) -> aad string. Kept in the registry table ENG_SEALED_COLUMNS as
 * { table =, column =, aad = } entries; declaring the same column again replaces the entry. */
static int l_sealed_column(lua_State *L) {
  size_t tlen, clen;
  const char *table = check_string(L, 1, &tlen);
  const char *column = check_string(L, 2, &clen);
  luaL_argcheck(L, tlen > 0 && tlen <= 128 && strlen(table) == tlen, 1, "must be a table name (1..128 bytes)");
  luaL_argcheck(L, clen > 0 && clen <= 128 && strlen(column) == clen, 2, "must be a column name (1..128 bytes)");
  int t = lua_type(L, 3);
  luaL_argcheck(L, t == LUA_TNONE || t == LUA_TNIL || t == LUA_TSTRING || t == LUA_TFUNCTION, 3,
                "must be nil, a column name or a function(row)");
  lua_settop(L, 3);
  (void)luaL_getsubtable(L, LUA_REGISTRYINDEX, ENG_SEALED_COLUMNS); /* 4: the list */
  lua_Integer n = (lua_Integer)lua_rawlen(L, 4), at = n + 1;
  for (lua_Integer i = 1; i <= n; i++) {
    lua_rawgeti(L, 4, i);
    lua_getfield(L, -1, "table");
    lua_getfield(L, -2, "column");
    int same = strcmp(lua_tostring(L, -2), table) == 0 && strcmp(lua_tostring(L, -1), column) == 0;
    lua_pop(L, 3);
    if (same) {
      at = i;
      break;
    }
  }
  lua_createtable(L, 0, 3);
  lua_pushvalue(L, 1);
  lua_setfield(L, -2, "table");
  lua_pushvalue(L, 2);
  lua_setfield(L, -2, "column");
  lua_pushvalue(L, 3);
  lua_setfield(L, -2, "aad");
  lua_rawseti(L, 4, at);
  return 0;
}

/* The JSON buffer lives in a userdata so a raising encoder cannot leak it (__gc frees it). */
static int jsonbuf_gc(lua_State *L) {
  eng_buf_free(luaL_checkudata(L, 1, TOKEN_BUF_MT));
  return 0;
}

static eng_buf *push_jsonbuf(lua_State *L) {
  eng_buf *buf = lua_newuserdatauv(L, sizeof *buf, 0);
  memset(buf, 0, sizeof *buf);
  if (luaL_newmetatable(L, TOKEN_BUF_MT)) {
    lua_pushcfunction(L, jsonbuf_gc);
    lua_setfield(L, -2, "__gc");
  }
  lua_setmetatable(L, -2);
  return buf;
}

static int l_sign(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  lua_Integer ttl = luaL_checkinteger(L, 2);
  luaL_argcheck(L, ttl >= 1 && ttl <= ENG_TOKEN_MAX_TTL_S, 2, "ttl out of range");
  require_keys(L);
  int64_t now = eng_clock_now_ms(), ttl_ms = (int64_t)ttl * 1000;
  if (now > INT64_MAX - ttl_ms)
    return luaL_error(L, "sign: expiry out of range");
  lua_settop(L, 2);

  lua_newtable(L); /* 3: shallow copy of the payload, plus exp */
  lua_pushnil(L);
  while (lua_next(L, 1) != 0) {
    lua_pushvalue(L, -2);
    lua_insert(L, -2);
    lua_rawset(L, 3);
  }
  lua_pushinteger(L, (lua_Integer)(now + ttl_ms));
  lua_setfield(L, 3, "exp");

  eng_buf *json = push_jsonbuf(L); /* 4 */
  const char *msg = NULL;
  int rc = eng_json_encode(L, 3, json, &msg);
  if (rc != 0)
    return luaL_error(L, "sign: payload cannot be encoded as JSON: %s", msg ? msg : eng_strerror(rc));
  if (json->len > ENG_TOKEN_MAX ||
      TOKEN_PREFIX_LEN + ENG_CRYPTO_B64_ENCODED_LEN(json->len) + 1 + TOKEN_TAG_B64_LEN > ENG_TOKEN_MAX)
    return luaL_error(L, "sign: token would exceed %d bytes", ENG_TOKEN_MAX);

  char token[ENG_TOKEN_MAX + 1];
  size_t n = TOKEN_PREFIX_LEN;
  memcpy(token, TOKEN_PREFIX, TOKEN_PREFIX_LEN);
  n += eng_crypto_b64_encode((const unsigned char *)json->data, json->len, 1, token + n);
  eng_buf_free(json);
  unsigned char tag[DIGEST_LEN];
  if (eng_crypto_hmac_sha256(eng_keys_token_key(), ENG_KEY_LEN, token, n, tag) != 0)
    return luaL_error(L, "sign: hmac failed");
  token[n++] = '.';
  n += eng_crypto_b64_encode(tag, DIGEST_LEN, 1, token + n);
  lua_pushlstring(L, token, n);
  return 1;
}

/* ---- verified tokens ----
 *
 * Every authenticated request verifies its token, and a client sends the same token again and
 * again: base64, the HMAC and the JSON of its claims were about a sixth of a default-API read's
 * instructions. So each state keeps the claims of up to VERIFIED_MAX tokens it has verified,
 * found by the token's exact bytes (a Lua table keyed by the token string), together with a copy
 * of the token keys loaded when they were verified: when the loaded keys differ in any way
 * (another key, one more, one less), everything kept is dropped first, so a token is only ever
 * accepted from the cache under the keys that verified it. What verify answers does not change:
 * a kept token passed every check but its expiry, and the expiry is checked on every call; the
 * caller gets a fresh table with the same claims. Claims that hold a table (a nested payload) are
 * not kept, as a shallow copy would share it. At VERIFIED_MAX tokens, the table starts over. The
 * box (the state's userdata, verify's upvalue) wipes its key copies when the state closes. */
#define VERIFIED_MAX 256
#define VERIFIED_MT "engine.crypto.verified"

typedef struct verified {
  int nkeys; /* the token keys the kept claims were verified under */
  unsigned char keys[ENG_KEYS_MAX][ENG_KEY_LEN];
  int count; /* tokens kept (the box's user value: token string -> claims) */
} verified;

static int verified_gc(lua_State *L) {
  verified *v = luaL_checkudata(L, 1, VERIFIED_MT);
  eng_crypto_wipe(v, sizeof *v);
  return 0;
}

/* Pushes the table of kept tokens, emptied first when the loaded token keys are not the ones it
 * was filled under. */
static void push_verified(lua_State *L, verified *v) {
  int n = eng_keys_count(), same = n == v->nkeys && n <= ENG_KEYS_MAX;
  for (int i = 0; same && i < n; i++)
    same = memcmp(v->keys[i], eng_keys_token_key_at(i), ENG_KEY_LEN) == 0;
  if (!same) {
    eng_crypto_wipe(v->keys, sizeof v->keys);
    v->nkeys = n <= ENG_KEYS_MAX ? n : 0;
    for (int i = 0; i < v->nkeys; i++)
      memcpy(v->keys[i], eng_keys_token_key_at(i), ENG_KEY_LEN);
    v->count = 0;
    lua_newtable(L);
    lua_setiuservalue(L, lua_upvalueindex(1), 1);
  }
  lua_getiuservalue(L, lua_upvalueindex(1), 1);
}

/* Pushes a shallow copy of the table at idx (room for n keys); returns 0 instead, pushing
 * nothing, when a value is a table and copy_tables is 0. */
static int push_claims_copy(lua_State *L, int idx, int n, int copy_tables) {
  idx = lua_absindex(L, idx);
  if (!copy_tables) {
    lua_pushnil(L);
    while (lua_next(L, idx) != 0) {
      int t = lua_type(L, -1);
      lua_pop(L, 1);
      if (t == LUA_TTABLE) {
        lua_pop(L, 1);
        return 0;
      }
    }
  }
  lua_createtable(L, 0, n);
  lua_pushnil(L);
  while (lua_next(L, idx) != 0) {
    lua_pushvalue(L, -2);
    lua_insert(L, -2);
    lua_rawset(L, -4);
  }
  return 1;
}

/* The exp claim of the claims table at idx: 1 and *exp when it is an integer. */
static int claims_exp(lua_State *L, int idx, lua_Integer *exp) {
  lua_pushliteral(L, "exp");
  lua_rawget(L, idx < 0 ? idx - 1 : idx);
  int isint = lua_isinteger(L, -1); /* the decoder gives integers for integer literals */
  *exp = isint ? lua_tointeger(L, -1) : 0;
  lua_pop(L, 1);
  return isint;
}

/* Shape (prefix, parts, base64) first, then the signature, and only then is the (now
 * authenticated) payload parsed as JSON, so a forger never reaches the JSON decoder. A token
 * verified before under the same keys skips all that (see verified tokens above). */
static int l_verify(lua_State *L) {
  size_t len;
  const char *tok = check_string(L, 1, &len);
  require_keys(L);
  lua_settop(L, 1);
  verified *v = lua_touserdata(L, lua_upvalueindex(1));
  push_verified(L, v); /* 2: the kept tokens */
  lua_pushvalue(L, 1);
  if (lua_rawget(L, 2) == LUA_TTABLE) { /* 3: the kept claims */
    lua_Integer exp = 0;
    (void)claims_exp(L, 3, &exp);
    if (eng_clock_now_ms() >= (int64_t)exp)
      return push_fail(L, "expired");
    push_claims_copy(L, 3, 4, 1);
    return 1;
  }
  lua_pop(L, 1);
  if (len > ENG_TOKEN_MAX || len < TOKEN_PREFIX_LEN || memcmp(tok, TOKEN_PREFIX, TOKEN_PREFIX_LEN) != 0)
    return push_fail(L, "malformed");
  const char *body = tok + TOKEN_PREFIX_LEN;
  const char *dot = memchr(body, '.', len - TOKEN_PREFIX_LEN);
  if (!dot || dot == body)
    return push_fail(L, "malformed");
  size_t signed_len = (size_t)(dot - tok), tag_b64_len = len - signed_len - 1;
  unsigned char tag[ENG_CRYPTO_B64_DECODED_MAX(TOKEN_TAG_B64_LEN)], expect[DIGEST_LEN];
  size_t tag_len = 0;
  const char *msg = NULL;
  if (tag_b64_len != TOKEN_TAG_B64_LEN || eng_crypto_b64_decode(dot + 1, tag_b64_len, 1, tag, &tag_len, &msg) != 0 ||
      tag_len != DIGEST_LEN)
    return push_fail(L, "malformed");
  unsigned char json[ENG_CRYPTO_B64_DECODED_MAX(ENG_TOKEN_MAX)];
  size_t json_len = 0;
  if (eng_crypto_b64_decode(body, signed_len - TOKEN_PREFIX_LEN, 1, json, &json_len, &msg) != 0)
    return push_fail(L, "malformed");
  int good = 0; /* the current key, then each previous one */
  for (int i = 0; i < eng_keys_count() && !good; i++) {
    if (eng_crypto_hmac_sha256(eng_keys_token_key_at(i), ENG_KEY_LEN, tok, signed_len, expect) != 0)
      return luaL_error(L, "verify: hmac failed");
    good = eng_crypto_equal(tag, expect, DIGEST_LEN);
  }
  if (!good)
    return push_fail(L, "bad_signature");

  int nret = eng_json_decode(L, (const char *)json, json_len);
  if (nret != 1) {
    lua_pop(L, nret);
    return push_fail(L, "malformed");
  }
  if (!lua_istable(L, -1))
    return push_fail(L, "malformed");
  lua_Integer exp = 0;
  if (!claims_exp(L, -1, &exp))
    return push_fail(L, "malformed");
  if (eng_clock_now_ms() >= (int64_t)exp)
    return push_fail(L, "expired");
  /* 3: the claims. Kept as a copy (the caller may change what it gets). */
  if (push_claims_copy(L, 3, 4, 0)) {
    if (v->count >= VERIFIED_MAX) {
      lua_newtable(L);
      lua_setiuservalue(L, lua_upvalueindex(1), 1);
      lua_getiuservalue(L, lua_upvalueindex(1), 1);
      lua_replace(L, 2);
      v->count = 0;
    }
    lua_pushvalue(L, 1);
    lua_insert(L, -2);
    lua_rawset(L, 2);
    v->count++;
  }
  lua_settop(L, 3);
  return 1;
}

int eng_luaopen_crypto(lua_State *L) {
  static const luaL_Reg funcs[] = {{"random_bytes", l_random_bytes},
                                   {"uuid4", l_uuid4},
                                   {"sha256", l_sha256},
                                   {"hmac_sha256", l_hmac_sha256},
                                   {"equals", l_equals},
                                   {"to_hex", l_to_hex},
                                   {"from_hex", l_from_hex},
                                   {"to_base64", l_to_base64},
                                   {"from_base64", l_from_base64},
                                   {"to_base64url", l_to_base64url},
                                   {"from_base64url", l_from_base64url},
                                   {"seal", l_seal},
                                   {"open", l_open},
                                   {"reseal", l_reseal},
                                   {"sealed_column", l_sealed_column},
                                   {"sign", l_sign},
                                   {NULL, NULL}};
  luaL_newlib(L, funcs);
  verified *v = lua_newuserdatauv(L, sizeof *v, 1); /* verify's upvalue: the kept tokens */
  memset(v, 0, sizeof *v);
  if (luaL_newmetatable(L, VERIFIED_MT)) {
    lua_pushcfunction(L, verified_gc);
    lua_setfield(L, -2, "__gc");
  }
  lua_setmetatable(L, -2);
  lua_newtable(L);
  lua_setiuservalue(L, -2, 1);
  lua_pushcclosure(L, l_verify, 1);
  lua_setfield(L, -2, "verify");
  return 1;
}
