/* lua_crypto.c - CSPRNG, digests, codecs, AEAD and signed tokens; the "engine.crypto" module.
 *
 * OpenSSL failures are translated to ENG_ECRYPTO (C API) or a Lua error (they mean the
 * library is broken, not that the input is bad). Codecs are written here rather than using
 * EVP_DecodeBlock, which ignores whitespace and padding mistakes; only canonical encodings
 * decode, so every accepted string has exactly one meaning. */
#include "lua_crypto.h"
#include "text.h"

#include <limits.h>
#include <pthread.h>
#include <stdint.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>
#include <openssl/sha.h>

#include "buf.h"
#include "clock.h"
#include "error.h"
#include "keys.h"
#include "lua_common.h"
#include "lua_json.h"

#define DIGEST_LEN 32
#define UUID_POOL_SIZE 4096 /* 256 UUIDs per RAND_bytes call: its fixed cost showed in profiles at 16 */
#define UUID_RAW_LEN 16

#define SEAL_VERSION 0x01
#define SEAL_NONCE_LEN 12
#define SEAL_TAG_LEN 16
#define SEAL_HEADER_LEN (1 + SEAL_NONCE_LEN)
#define SEAL_OVERHEAD (SEAL_HEADER_LEN + SEAL_TAG_LEN)
#define SEAL_FAILED "cannot open sealed data"

#define TOKEN_PREFIX "v1."
#define TOKEN_PREFIX_LEN 3
#define TOKEN_TAG_B64_LEN 43 /* base64url of 32 bytes, unpadded */
#define TOKEN_BUF_MT "engine.crypto.jsonbuf"

/* ---- random ---- */

int eng_crypto_random(void *buf, size_t n) {
  while (n > 0) { /* RAND_bytes takes an int */
    int chunk = n > INT_MAX ? INT_MAX : (int)n;
    if (RAND_bytes(buf, chunk) != 1) return ENG_ECRYPTO;
    buf = (unsigned char *)buf + chunk;
    n -= (size_t)chunk;
  }
  return 0;
}

/* Per-thread pool so a request id costs a memcpy, not a trip into the DRBG. After fork the
 * child (whose only thread is the forking one) drops the pool it shares with the parent,
 * so the two processes never hand out the same ids. */
static _Thread_local unsigned char uuid_pool[UUID_POOL_SIZE];
static _Thread_local size_t uuid_pool_pos = UUID_POOL_SIZE;
static pthread_once_t uuid_atfork_once = PTHREAD_ONCE_INIT;

static void uuid_pool_drop(void) {
  OPENSSL_cleanse(uuid_pool, sizeof uuid_pool);
  uuid_pool_pos = UUID_POOL_SIZE;
}

static void uuid_atfork_register(void) { pthread_atfork(NULL, NULL, uuid_pool_drop); }

static const char HEX_DIGITS[] = "0123456789abcdef";

int eng_crypto_uuid4(char out[37]) {
  unsigned char raw[UUID_RAW_LEN];
  pthread_once(&uuid_atfork_once, uuid_atfork_register);
  if (uuid_pool_pos + UUID_RAW_LEN > UUID_POOL_SIZE) {
    if (RAND_bytes(uuid_pool, UUID_POOL_SIZE) != 1) return ENG_ECRYPTO;
    uuid_pool_pos = 0;
  }
  memcpy(raw, uuid_pool + uuid_pool_pos, UUID_RAW_LEN);
  memset(uuid_pool + uuid_pool_pos, 0, UUID_RAW_LEN); /* each byte is used once */
  uuid_pool_pos += UUID_RAW_LEN;
  raw[6] = (unsigned char)((raw[6] & 0x0f) | 0x40); /* version 4 */
  raw[8] = (unsigned char)((raw[8] & 0x3f) | 0x80); /* variant 10xx (RFC 4122) */
  char *p = out;
  for (int i = 0; i < UUID_RAW_LEN; i++) {
    if (i == 4 || i == 6 || i == 8 || i == 10) *p++ = '-';
    *p++ = HEX_DIGITS[raw[i] >> 4];
    *p++ = HEX_DIGITS[raw[i] & 0x0f];
  }
  *p = '\0';
  return 0;
}

/* ---- codecs ---- */

size_t eng_crypto_hex_encode(const unsigned char *in, size_t n, char *out) {
  for (size_t i = 0; i < n; i++) {
    out[2 * i] = HEX_DIGITS[in[i] >> 4];
    out[2 * i + 1] = HEX_DIGITS[in[i] & 0x0f];
  }
  return 2 * n;
}

int eng_crypto_hex_decode(const char *s, size_t len, unsigned char *out, size_t *out_len,
                          const char **errmsg) {
  if (len % 2 != 0) {
    *errmsg = "odd hex length";
    return ENG_EPARSE;
  }
  for (size_t i = 0; i < len; i += 2) {
    int hi = eng_hex_digit(s[i]), lo = eng_hex_digit(s[i + 1]);
    if (hi < 0 || lo < 0) {
      *errmsg = "invalid hex character";
      return ENG_EPARSE;
    }
    out[i / 2] = (unsigned char)(hi << 4 | lo);
  }
  *out_len = len / 2;
  return 0;
}

static const char B64_STD[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
static const char B64_URL[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

size_t eng_crypto_b64_encode(const unsigned char *in, size_t n, int url, char *out) {
  const char *abc = url ? B64_URL : B64_STD;
  size_t i = 0, o = 0;
  for (; i + 3 <= n; i += 3) {
    uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8 | in[i + 2];
    out[o++] = abc[v >> 18];
    out[o++] = abc[(v >> 12) & 63];
    out[o++] = abc[(v >> 6) & 63];
    out[o++] = abc[v & 63];
  }
  if (n - i == 1) {
    uint32_t v = (uint32_t)in[i] << 16;
    out[o++] = abc[v >> 18];
    out[o++] = abc[(v >> 12) & 63];
    if (!url) {
      out[o++] = '=';
      out[o++] = '=';
    }
  } else if (n - i == 2) {
    uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8;
    out[o++] = abc[v >> 18];
    out[o++] = abc[(v >> 12) & 63];
    out[o++] = abc[(v >> 6) & 63];
    if (!url) out[o++] = '=';
  }
  return o;
}

static int b64_value(char c, int url) {
  if (c >= 'A' && c <= 'Z') return c - 'A';
  if (c >= 'a' && c <= 'z') return c - 'a' + 26;
  if (c >= '0' && c <= '9') return c - '0' + 52;
  if (c == (url ? '-' : '+')) return 62;
  if (c == (url ? '_' : '/')) return 63;
  return -1;
}

#define B64_FAIL(msg) \
  do {                \
    *errmsg = (msg);  \
    return ENG_EPARSE; \
  } while (0)

int eng_crypto_b64_decode(const char *s, size_t len, int url, unsigned char *out,
                          size_t *out_len, const char **errmsg) {
  size_t data_len = len, o = 0;
  if (!url) {
    if (len % 4 != 0) B64_FAIL("invalid base64 length");
    if (len > 0 && s[len - 1] == '=') data_len--;
    if (len > 1 && s[len - 2] == '=') data_len--;
  }
  /* Data characters must leave 0, 2 or 3 in the last group (1 cannot hold a whole byte). */
  if (data_len % 4 == 1) B64_FAIL(url ? "invalid base64url length" : "invalid base64 padding");
  uint32_t acc = 0;
  for (size_t i = 0; i < data_len; i++) {
    int v = b64_value(s[i], url);
    if (v < 0) B64_FAIL(url ? "invalid base64url character" : "invalid base64 character");
    acc = acc << 6 | (uint32_t)v;
    if (i % 4 == 3) {
      out[o++] = (unsigned char)(acc >> 16);
      out[o++] = (unsigned char)(acc >> 8);
      out[o++] = (unsigned char)acc;
      acc = 0;
    }
  }
  /* A partial group's unused low bits must be zero, or two strings would decode alike. */
  switch (data_len % 4) {
  case 2:
    if (acc & 0x0f) B64_FAIL("non-canonical base64 trailing bits");
    out[o++] = (unsigned char)(acc >> 4);
    break;
  case 3:
    if (acc & 0x03) B64_FAIL("non-canonical base64 trailing bits");
    out[o++] = (unsigned char)(acc >> 10);
    out[o++] = (unsigned char)(acc >> 2);
    break;
  default:
    break;
  }
  *out_len = o;
  return 0;
}

/* ---- one-shot OpenSSL helpers (no Lua calls inside: they may free on every path) ---- */

static int hmac_sha256(const unsigned char *key, size_t key_len, const void *msg, size_t msg_len,
                       unsigned char out[DIGEST_LEN]) {
  unsigned int out_len = 0;
  if (key_len > INT_MAX) return ENG_EINVAL;
  if (!HMAC(EVP_sha256(), key, (int)key_len, msg, msg_len, out, &out_len) ||
      out_len != DIGEST_LEN)
    return ENG_ECRYPTO;
  return 0;
}

/* AES-256-GCM over `header` (authenticated, not encrypted) + aad, then pt -> ct + tag. */
static int gcm_seal(const unsigned char *key, const unsigned char *nonce,
                    const unsigned char *header, size_t header_len, const unsigned char *aad,
                    size_t aad_len, const unsigned char *pt, size_t pt_len, unsigned char *ct,
                    unsigned char tag[SEAL_TAG_LEN]) {
  int rc = ENG_ECRYPTO, n = 0;
  EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new();
  if (!ctx) return ENG_ENOMEM;
  if (EVP_EncryptInit_ex(ctx, EVP_aes_256_gcm(), NULL, key, nonce) != 1) goto cleanup;
  if (EVP_EncryptUpdate(ctx, NULL, &n, header, (int)header_len) != 1) goto cleanup;
  if (aad_len > 0 && EVP_EncryptUpdate(ctx, NULL, &n, aad, (int)aad_len) != 1) goto cleanup;
  if (pt_len > 0 && EVP_EncryptUpdate(ctx, ct, &n, pt, (int)pt_len) != 1) goto cleanup;
  if (EVP_EncryptFinal_ex(ctx, ct + n, &n) != 1) goto cleanup;
  if (EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_GET_TAG, SEAL_TAG_LEN, tag) != 1) goto cleanup;
  rc = 0;
cleanup:
  EVP_CIPHER_CTX_free(ctx);
  return rc;
}

/* Inverse of gcm_seal; on any failure `pt` is wiped so unauthenticated bytes never escape. */
static int gcm_open(const unsigned char *key, const unsigned char *nonce,
                    const unsigned char *header, size_t header_len, const unsigned char *aad,
                    size_t aad_len, const unsigned char *ct, size_t ct_len,
                    const unsigned char tag[SEAL_TAG_LEN], unsigned char *pt) {
  int rc = ENG_ECRYPTO, n = 0;
  unsigned char tag_copy[SEAL_TAG_LEN];
  EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new();
  if (!ctx) return ENG_ENOMEM;
  memcpy(tag_copy, tag, SEAL_TAG_LEN); /* the ctrl takes a non-const pointer */
  if (EVP_DecryptInit_ex(ctx, EVP_aes_256_gcm(), NULL, key, nonce) != 1) goto cleanup;
  if (EVP_DecryptUpdate(ctx, NULL, &n, header, (int)header_len) != 1) goto cleanup;
  if (aad_len > 0 && EVP_DecryptUpdate(ctx, NULL, &n, aad, (int)aad_len) != 1) goto cleanup;
  if (ct_len > 0 && EVP_DecryptUpdate(ctx, pt, &n, ct, (int)ct_len) != 1) goto cleanup;
  if (EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_TAG, SEAL_TAG_LEN, tag_copy) != 1) goto cleanup;
  if (EVP_DecryptFinal_ex(ctx, pt + n, &n) != 1) goto cleanup;
  rc = 0;
cleanup:
  EVP_CIPHER_CTX_free(ctx);
  if (rc != 0 && ct_len > 0) OPENSSL_cleanse(pt, ct_len);
  return rc;
}

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
  if (!eng_keys_ready()) luaL_error(L, "engine.crypto: the server key is not loaded");
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
  if (eng_crypto_random(p, (size_t)n) != 0) return luaL_error(L, "random generator failure");
  luaL_pushresultsize(&b, (size_t)n);
  return 1;
}

static int l_uuid4(lua_State *L) {
  char id[37];
  if (eng_crypto_uuid4(id) != 0) return luaL_error(L, "random generator failure");
  lua_pushlstring(L, id, 36);
  return 1;
}

static int l_sha256(lua_State *L) {
  size_t len;
  const char *s = check_string(L, 1, &len);
  unsigned char md[DIGEST_LEN];
  SHA256((const unsigned char *)s, len, md);
  lua_pushlstring(L, (const char *)md, DIGEST_LEN);
  return 1;
}

static int l_hmac_sha256(lua_State *L) {
  size_t key_len, msg_len;
  const char *key = check_string(L, 1, &key_len);
  const char *msg = check_string(L, 2, &msg_len);
  unsigned char md[DIGEST_LEN];
  luaL_argcheck(L, key_len <= INT_MAX, 1, "key too long");
  if (hmac_sha256((const unsigned char *)key, key_len, msg, msg_len, md) != 0)
    return luaL_error(L, "hmac_sha256 failed");
  lua_pushlstring(L, (const char *)md, DIGEST_LEN);
  return 1;
}

static int l_equals(lua_State *L) {
  size_t la, lb;
  const char *a = check_string(L, 1, &la);
  const char *b = check_string(L, 2, &lb);
  lua_pushboolean(L, la == lb && CRYPTO_memcmp(a, b, la) == 0);
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

/* A random 96-bit nonce per message keeps the GCM nonce-reuse risk negligible well past
 * the number of secrets this engine will ever seal under one key. */
static int l_seal(lua_State *L) {
  size_t pt_len, aad_len;
  const char *pt = check_string(L, 1, &pt_len);
  const char *aad = opt_string(L, 2, &aad_len);
  luaL_argcheck(L, pt_len <= ENG_CRYPTO_SEAL_MAX, 1, "plaintext too large");
  luaL_argcheck(L, aad_len <= ENG_CRYPTO_SEAL_MAX, 2, "aad too large");
  require_keys(L);
  luaL_Buffer b;
  unsigned char *out = (unsigned char *)luaL_buffinitsize(L, &b, SEAL_OVERHEAD + pt_len);
  out[0] = SEAL_VERSION;
  if (eng_crypto_random(out + 1, SEAL_NONCE_LEN) != 0)
    return luaL_error(L, "random generator failure");
  if (gcm_seal(eng_keys_seal_key(), out + 1, out, 1, (const unsigned char *)aad, aad_len,
               (const unsigned char *)pt, pt_len, out + SEAL_HEADER_LEN,
               out + SEAL_HEADER_LEN + pt_len) != 0)
    return luaL_error(L, "seal failed");
  luaL_pushresultsize(&b, SEAL_OVERHEAD + pt_len);
  return 1;
}

static int l_open(lua_State *L) {
  size_t len, aad_len;
  const unsigned char *in = (const unsigned char *)check_string(L, 1, &len);
  const char *aad = opt_string(L, 2, &aad_len);
  require_keys(L);
  if (len < SEAL_OVERHEAD || in[0] != SEAL_VERSION || aad_len > ENG_CRYPTO_SEAL_MAX ||
      len - SEAL_OVERHEAD > ENG_CRYPTO_SEAL_MAX)
    return push_fail(L, SEAL_FAILED);
  size_t ct_len = len - SEAL_OVERHEAD;
  luaL_Buffer b;
  unsigned char *out = (unsigned char *)luaL_buffinitsize(L, &b, ct_len);
  if (gcm_open(eng_keys_seal_key(), in + 1, in, 1, (const unsigned char *)aad, aad_len,
               in + SEAL_HEADER_LEN, ct_len, in + SEAL_HEADER_LEN + ct_len, out) != 0)
    return push_fail(L, SEAL_FAILED);
  luaL_pushresultsize(&b, ct_len);
  return 1;
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
  if (now > INT64_MAX - ttl_ms) return luaL_error(L, "sign: expiry out of range");
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
    return luaL_error(L, "sign: payload cannot be encoded as JSON: %s",
                      msg ? msg : eng_strerror(rc));
  if (json->len > ENG_TOKEN_MAX ||
      TOKEN_PREFIX_LEN + ENG_CRYPTO_B64_ENCODED_LEN(json->len) + 1 + TOKEN_TAG_B64_LEN >
          ENG_TOKEN_MAX)
    return luaL_error(L, "sign: token would exceed %d bytes", ENG_TOKEN_MAX);

  char token[ENG_TOKEN_MAX + 1];
  size_t n = TOKEN_PREFIX_LEN;
  memcpy(token, TOKEN_PREFIX, TOKEN_PREFIX_LEN);
  n += eng_crypto_b64_encode((const unsigned char *)json->data, json->len, 1, token + n);
  eng_buf_free(json);
  unsigned char tag[DIGEST_LEN];
  if (hmac_sha256(eng_keys_token_key(), ENG_KEY_LEN, token, n, tag) != 0)
    return luaL_error(L, "sign: hmac failed");
  token[n++] = '.';
  n += eng_crypto_b64_encode(tag, DIGEST_LEN, 1, token + n);
  lua_pushlstring(L, token, n);
  return 1;
}

/* Shape (prefix, parts, base64) first, then the signature, and only then is the (now
 * authenticated) payload parsed as JSON, so a forger never reaches the JSON decoder. */
static int l_verify(lua_State *L) {
  size_t len;
  const char *tok = check_string(L, 1, &len);
  require_keys(L);
  if (len > ENG_TOKEN_MAX || len < TOKEN_PREFIX_LEN ||
      memcmp(tok, TOKEN_PREFIX, TOKEN_PREFIX_LEN) != 0)
    return push_fail(L, "malformed");
  const char *body = tok + TOKEN_PREFIX_LEN;
  const char *dot = memchr(body, '.', len - TOKEN_PREFIX_LEN);
  if (!dot || dot == body) return push_fail(L, "malformed");
  size_t signed_len = (size_t)(dot - tok), tag_b64_len = len - signed_len - 1;
  unsigned char tag[ENG_CRYPTO_B64_DECODED_MAX(TOKEN_TAG_B64_LEN)], expect[DIGEST_LEN];
  size_t tag_len = 0;
  const char *msg = NULL;
  if (tag_b64_len != TOKEN_TAG_B64_LEN ||
      eng_crypto_b64_decode(dot + 1, tag_b64_len, 1, tag, &tag_len, &msg) != 0 ||
      tag_len != DIGEST_LEN)
    return push_fail(L, "malformed");
  unsigned char json[ENG_CRYPTO_B64_DECODED_MAX(ENG_TOKEN_MAX)];
  size_t json_len = 0;
  if (eng_crypto_b64_decode(body, signed_len - TOKEN_PREFIX_LEN, 1, json, &json_len, &msg) != 0)
    return push_fail(L, "malformed");
  if (hmac_sha256(eng_keys_token_key(), ENG_KEY_LEN, tok, signed_len, expect) != 0)
    return luaL_error(L, "verify: hmac failed");
  if (CRYPTO_memcmp(tag, expect, DIGEST_LEN) != 0) return push_fail(L, "bad_signature");

  int nret = eng_json_decode(L, (const char *)json, json_len);
  if (nret != 1) {
    lua_pop(L, nret);
    return push_fail(L, "malformed");
  }
  if (!lua_istable(L, -1)) return push_fail(L, "malformed");
  lua_pushliteral(L, "exp");
  lua_rawget(L, -2);
  int isint = lua_isinteger(L, -1); /* the decoder gives integers for integer literals */
  lua_Integer exp = isint ? lua_tointeger(L, -1) : 0;
  lua_pop(L, 1);
  if (!isint) return push_fail(L, "malformed");
  if (eng_clock_now_ms() >= (int64_t)exp) return push_fail(L, "expired");
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
                                   {"sign", l_sign},
                                   {"verify", l_verify},
                                   {NULL, NULL}};
  luaL_newlib(L, funcs);
  return 1;
}
