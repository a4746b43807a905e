/* crypto.c - CSPRNG, UUID v4, codecs, digests, AEAD and key derivation over OpenSSL.
 *
 * The one file of the core that includes OpenSSL. Codecs are written here rather than using
 * EVP_DecodeBlock, which ignores whitespace and padding mistakes; only canonical encodings
 * decode, so every accepted string has exactly one meaning. No function here calls back into
 * anything that can unwind (Lua), so each frees what it allocated on every path. */
#include "crypto.h"

#include <limits.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>

#include "error.h"
#include "text.h"

#define UUID_POOL_SIZE 4096 /* 256 UUIDs per RAND_bytes call: its fixed cost showed in profiles at 16 */
#define UUID_RAW_LEN 16

/* ---- random ---- */

int eng_crypto_random(void *buf, size_t n) {
  while (n > 0) { /* RAND_bytes takes an int */
    int chunk = n > INT_MAX ? INT_MAX : (int)n;
    if (RAND_bytes(buf, chunk) != 1)
      return ENG_ECRYPTO;
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

int eng_crypto_uuid4(char out[ENG_CRYPTO_UUID_LEN + 1]) {
  unsigned char raw[UUID_RAW_LEN];
  pthread_once(&uuid_atfork_once, uuid_atfork_register);
  if (uuid_pool_pos + UUID_RAW_LEN > UUID_POOL_SIZE) {
    if (RAND_bytes(uuid_pool, UUID_POOL_SIZE) != 1)
      return ENG_ECRYPTO;
    uuid_pool_pos = 0;
  }
  memcpy(raw, uuid_pool + uuid_pool_pos, UUID_RAW_LEN);
  memset(uuid_pool + uuid_pool_pos, 0, UUID_RAW_LEN); /* each byte is used once */
  uuid_pool_pos += UUID_RAW_LEN;
  raw[6] = (unsigned char)((raw[6] & 0x0f) | 0x40); /* version 4 */
  raw[8] = (unsigned char)((raw[8] & 0x3f) | 0x80); /* variant 10xx (RFC 4122) */
  char *p = out;
  for (int i = 0; i < UUID_RAW_LEN; i++) {
    if (i == 4 || i == 6 || i == 8 || i == 10)
      *p++ = '-';
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

int eng_crypto_hex_decode(const char *s, size_t len, unsigned char *out, size_t *out_len, const char **errmsg) {
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
    if (!url)
      out[o++] = '=';
  }
  return o;
}

/* Each byte's 6-bit value in the standard and the URL alphabet, 0xff for a byte that is not in
 * it: one load per character instead of a chain of range tests (a token's signature check
 * decodes about 130 characters per request). Filled from the alphabets once. */
static unsigned char b64_rev[2][256];
static pthread_once_t b64_rev_once = PTHREAD_ONCE_INIT;

static void b64_rev_fill(void) {
  memset(b64_rev, 0xff, sizeof b64_rev);
  for (unsigned char i = 0; i < 64; i++) {
    b64_rev[0][(unsigned char)B64_STD[i]] = i;
    b64_rev[1][(unsigned char)B64_URL[i]] = i;
  }
}

#define B64_FAIL(msg)  \
  do {                 \
    *errmsg = (msg);   \
    return ENG_EPARSE; \
  } while (0)

int eng_crypto_b64_decode(const char *s, size_t len, int url, unsigned char *out, size_t *out_len,
                          const char **errmsg) {
  size_t data_len = len, o = 0;
  if (!url) {
    if (len % 4 != 0)
      B64_FAIL("invalid base64 length");
    if (len > 0 && s[len - 1] == '=')
      data_len--;
    if (len > 1 && s[len - 2] == '=')
      data_len--;
  }
  /* Data characters must leave 0, 2 or 3 in the last group (1 cannot hold a whole byte). */
  if (data_len % 4 == 1)
    B64_FAIL(url ? "invalid base64url length" : "invalid base64 padding");
  (void)pthread_once(&b64_rev_once, b64_rev_fill);
  const unsigned char *rev = b64_rev[url ? 1 : 0];
  const unsigned char *in = (const unsigned char *)s;
  size_t i = 0;
  /* Whole groups: four lookups, one test (0xff in any of them sets a bit above the 24 of data). */
  for (; i + 4 <= data_len; i += 4) {
    uint32_t a = rev[in[i]], b = rev[in[i + 1]], c = rev[in[i + 2]], d = rev[in[i + 3]];
    if ((a | b | c | d) & 0xc0)
      B64_FAIL(url ? "invalid base64url character" : "invalid base64 character");
    uint32_t v = a << 18 | b << 12 | c << 6 | d;
    out[o++] = (unsigned char)(v >> 16);
    out[o++] = (unsigned char)(v >> 8);
    out[o++] = (unsigned char)v;
  }
  uint32_t acc = 0;
  for (; i < data_len; i++) {
    unsigned char v = rev[in[i]];
    if (v == 0xff)
      B64_FAIL(url ? "invalid base64url character" : "invalid base64 character");
    acc = acc << 6 | v;
  }
  /* A partial group's unused low bits must be zero, or two strings would decode alike. */
  switch (data_len % 4) {
  case 2:
    if (acc & 0x0f)
      B64_FAIL("non-canonical base64 trailing bits");
    out[o++] = (unsigned char)(acc >> 4);
    break;
  case 3:
    if (acc & 0x03)
      B64_FAIL("non-canonical base64 trailing bits");
    out[o++] = (unsigned char)(acc >> 10);
    out[o++] = (unsigned char)(acc >> 2);
    break;
  default:
    break;
  }
  *out_len = o;
  return 0;
}

/* ---- algorithms ---- */

/* OpenSSL 3 looks EVP_sha256(), EVP_aes_256_gcm() and the HMAC of HMAC() up in its provider
 * store at every init, under a lock every worker shares: about 2.5-3 us per HMAC + AES-GCM on
 * the project's machine, more with two threads. Fetched once here, an init costs no lookup.
 * Should a fetch fail (no default provider), the implicit objects still work, only slower. The
 * fetched objects live as long as the process. */
static pthread_once_t algs_once = PTHREAD_ONCE_INIT;
static EVP_MD *alg_sha256;
static EVP_CIPHER *alg_aes_gcm;

static void algs_fetch(void) {
  alg_sha256 = EVP_MD_fetch(NULL, "SHA2-256", NULL);
  alg_aes_gcm = EVP_CIPHER_fetch(NULL, "AES-256-GCM", NULL);
}

static const EVP_MD *sha256_md(void) {
  (void)pthread_once(&algs_once, algs_fetch);
  return alg_sha256 ? alg_sha256 : EVP_sha256();
}

static const EVP_CIPHER *aes_gcm_cipher(void) {
  (void)pthread_once(&algs_once, algs_fetch);
  return alg_aes_gcm ? alg_aes_gcm : EVP_aes_256_gcm();
}

/* ---- digests, comparison, key derivation ---- */

/* SHA-256 over the default provider fails only when OpenSSL cannot allocate its context; the
 * caller then gets ENG_ECRYPTO (a Lua error, a failed start), never a wrong digest. */
int eng_crypto_sha256(const void *data, size_t len, unsigned char out[ENG_CRYPTO_SHA256_LEN]) {
  unsigned int out_len = 0;
  if (!EVP_Digest(data, len, out, &out_len, sha256_md(), NULL) || out_len != ENG_CRYPTO_SHA256_LEN)
    return ENG_ECRYPTO;
  return 0;
}

#define SHA256_BLOCK 64

/* ---- keyed states kept per thread ----
 *
 * Every authenticated request checks a token's HMAC under the same key and most open a sealed
 * secret under the same key. Setting a key up is a good part of each: for HMAC, hashing
 * K ^ ipad and K ^ opad (two of the five SHA-256 blocks of a token's check) and an EVP context;
 * for AES-GCM, the key schedule, the GHASH tables and a context (about half of an open: 2.0 ->
 * 0.8 us measured on the project's machine). So each thread keeps, for the last few keys it used,
 * the HMAC states after the key block and an AES-GCM decryption context with the key set; a call
 * under a kept key copies (HMAC) or re-initialises with its nonce (GCM) instead. Keys are found
 * by their bytes, so a changed key is simply another key, and the least recently filled entry
 * makes room. The cache holds copies of key material: it is wiped when its thread ends. Anything
 * that fails here (no memory) falls back to the uncached path, which gives the same result. */
#define KEYED_SLOTS 4

typedef struct hmac_slot {
  unsigned char key[SHA256_BLOCK];
  size_t key_len;            /* at most SHA256_BLOCK: longer keys are not kept */
  EVP_MD_CTX *inner, *outer; /* after K ^ ipad, K ^ opad; NULL: the slot is free */
} hmac_slot;

typedef struct gcm_slot {
  unsigned char key[ENG_CRYPTO_KEY_LEN];
  EVP_CIPHER_CTX *dec; /* key set, for decryption; NULL: the slot is free */
} gcm_slot;

typedef struct keyed_cache {
  hmac_slot hmac[KEYED_SLOTS];
  unsigned hmac_next;
  EVP_MD_CTX *work; /* the context an HMAC runs in (a copy of a slot's) */
  gcm_slot gcm[KEYED_SLOTS];
  unsigned gcm_next;
} keyed_cache;

static pthread_key_t keyed_key;
static int keyed_key_ok;
static pthread_once_t keyed_once = PTHREAD_ONCE_INIT;

static void hmac_slot_clear(hmac_slot *h) {
  EVP_MD_CTX_free(h->inner);
  EVP_MD_CTX_free(h->outer);
  h->inner = h->outer = NULL;
  OPENSSL_cleanse(h->key, sizeof h->key);
  h->key_len = 0;
}

static void gcm_slot_clear(gcm_slot *g) {
  EVP_CIPHER_CTX_free(g->dec);
  g->dec = NULL;
  OPENSSL_cleanse(g->key, sizeof g->key);
}

static void keyed_cache_free(void *p) {
  keyed_cache *c = p;
  for (int i = 0; i < KEYED_SLOTS; i++) {
    hmac_slot_clear(&c->hmac[i]);
    gcm_slot_clear(&c->gcm[i]);
  }
  EVP_MD_CTX_free(c->work);
  free(c);
}

static void keyed_key_make(void) { keyed_key_ok = pthread_key_create(&keyed_key, keyed_cache_free) == 0; }

/* This thread's cache, made on first use; NULL when it cannot be. */
static keyed_cache *keyed_cache_get(void) {
  (void)pthread_once(&keyed_once, keyed_key_make);
  if (!keyed_key_ok)
    return NULL;
  keyed_cache *c = pthread_getspecific(keyed_key);
  if (c != NULL)
    return c;
  c = calloc(1, sizeof *c);
  if (c == NULL)
    return NULL;
  c->work = EVP_MD_CTX_new();
  if (c->work == NULL || pthread_setspecific(keyed_key, c) != 0) {
    keyed_cache_free(c);
    return NULL;
  }
  return c;
}

/* ctx = SHA-256 after absorbing the block k ^ x. */
static int absorb_pad(EVP_MD_CTX *ctx, const unsigned char k[SHA256_BLOCK], unsigned char x) {
  unsigned char pad[SHA256_BLOCK];
  for (size_t i = 0; i < SHA256_BLOCK; i++)
    pad[i] = (unsigned char)(k[i] ^ x);
  int ok = EVP_DigestInit_ex2(ctx, sha256_md(), NULL) && EVP_DigestUpdate(ctx, pad, SHA256_BLOCK);
  OPENSSL_cleanse(pad, sizeof pad);
  return ok;
}

/* The slot of this key (len <= SHA256_BLOCK), filled when it is not kept yet; NULL on failure. */
static hmac_slot *hmac_slot_for(keyed_cache *c, const void *key, size_t len) {
  for (int i = 0; i < KEYED_SLOTS; i++) {
    hmac_slot *h = &c->hmac[i];
    if (h->inner != NULL && h->key_len == len && (len == 0 || CRYPTO_memcmp(h->key, key, len) == 0))
      return h;
  }
  hmac_slot *h = &c->hmac[c->hmac_next];
  c->hmac_next = (c->hmac_next + 1) % KEYED_SLOTS;
  hmac_slot_clear(h);
  unsigned char k[SHA256_BLOCK] = {0};
  if (len > 0)
    memcpy(k, key, len);
  h->inner = EVP_MD_CTX_new();
  h->outer = EVP_MD_CTX_new();
  int ok = h->inner && h->outer && absorb_pad(h->inner, k, 0x36) && absorb_pad(h->outer, k, 0x5c);
  if (ok) {
    memcpy(h->key, k, sizeof k);
    h->key_len = len;
  }
  OPENSSL_cleanse(k, sizeof k);
  if (!ok) {
    hmac_slot_clear(h);
    return NULL;
  }
  return h;
}

/* HMAC from a slot's states: H(outer || H(inner || msg)). */
static int hmac_from_slot(EVP_MD_CTX *work, const hmac_slot *h, const void *msg, size_t msg_len,
                          unsigned char out[ENG_CRYPTO_SHA256_LEN]) {
  unsigned char inner[ENG_CRYPTO_SHA256_LEN];
  unsigned int n = 0, m = 0;
  int ok = EVP_MD_CTX_copy_ex(work, h->inner) && (msg_len == 0 || EVP_DigestUpdate(work, msg, msg_len)) &&
           EVP_DigestFinal_ex(work, inner, &n) && n == ENG_CRYPTO_SHA256_LEN && EVP_MD_CTX_copy_ex(work, h->outer) &&
           EVP_DigestUpdate(work, inner, sizeof inner) && EVP_DigestFinal_ex(work, out, &m) &&
           m == ENG_CRYPTO_SHA256_LEN;
  OPENSSL_cleanse(inner, sizeof inner);
  return ok;
}

/* HMAC (RFC 2104) over the fetched SHA-256: H((K ^ opad) || H((K ^ ipad) || msg)), K the key
 * zero-padded to the block (hashed first when longer). Written out on EVP digests because
 * HMAC() fetches its MAC and digest by name at every call. A key of at most a block is kept
 * with its states (above); this is the path without them. */
static int hmac_uncached(const void *key, size_t key_len, const void *msg, size_t msg_len,
                         unsigned char out[ENG_CRYPTO_SHA256_LEN]) {
  unsigned char k[SHA256_BLOCK] = {0}, pad[SHA256_BLOCK], inner[ENG_CRYPTO_SHA256_LEN];
  unsigned int n = 0;
  int rc = ENG_ECRYPTO;
  if (key_len > SHA256_BLOCK) {
    if (eng_crypto_sha256(key, key_len, k) != 0)
      return ENG_ECRYPTO;
  } else if (key_len > 0) {
    memcpy(k, key, key_len);
  }
  const EVP_MD *md = sha256_md();
  EVP_MD_CTX *ctx = EVP_MD_CTX_new();
  if (!ctx) {
    rc = ENG_ENOMEM;
    goto done;
  }
  for (size_t i = 0; i < SHA256_BLOCK; i++)
    pad[i] = (unsigned char)(k[i] ^ 0x36);
  if (!EVP_DigestInit_ex2(ctx, md, NULL) || !EVP_DigestUpdate(ctx, pad, SHA256_BLOCK) ||
      (msg_len > 0 && !EVP_DigestUpdate(ctx, msg, msg_len)) || !EVP_DigestFinal_ex(ctx, inner, &n) ||
      n != ENG_CRYPTO_SHA256_LEN)
    goto done;
  for (size_t i = 0; i < SHA256_BLOCK; i++)
    pad[i] = (unsigned char)(k[i] ^ 0x5c);
  if (!EVP_DigestInit_ex2(ctx, md, NULL) || !EVP_DigestUpdate(ctx, pad, SHA256_BLOCK) ||
      !EVP_DigestUpdate(ctx, inner, sizeof inner) || !EVP_DigestFinal_ex(ctx, out, &n) || n != ENG_CRYPTO_SHA256_LEN)
    goto done;
  rc = 0;
done:
  EVP_MD_CTX_free(ctx);
  OPENSSL_cleanse(k, sizeof k);
  OPENSSL_cleanse(pad, sizeof pad);
  OPENSSL_cleanse(inner, sizeof inner);
  return rc;
}

int eng_crypto_hmac_sha256(const void *key, size_t key_len, const void *msg, size_t msg_len,
                           unsigned char out[ENG_CRYPTO_SHA256_LEN]) {
  if (key_len > INT_MAX)
    return ENG_EINVAL;
  keyed_cache *c = key_len <= SHA256_BLOCK ? keyed_cache_get() : NULL;
  hmac_slot *h = c ? hmac_slot_for(c, key, key_len) : NULL;
  if (h != NULL && hmac_from_slot(c->work, h, msg, msg_len, out))
    return 0;
  return hmac_uncached(key, key_len, msg, msg_len, out);
}

int eng_crypto_equal(const void *a, const void *b, size_t n) { return CRYPTO_memcmp(a, b, n) == 0; }

void eng_crypto_wipe(void *p, size_t n) { OPENSSL_cleanse(p, n); }

int eng_crypto_derive_key(const unsigned char master[ENG_CRYPTO_KEY_LEN], const char *label,
                          unsigned char out[ENG_CRYPTO_KEY_LEN]) {
  _Static_assert(ENG_CRYPTO_KEY_LEN == ENG_CRYPTO_SHA256_LEN, "a derived key is one HMAC-SHA256");
  return eng_crypto_hmac_sha256(master, ENG_CRYPTO_KEY_LEN, label, strlen(label), out) == 0 ? 0 : ENG_ECRYPTO;
}

/* ---- AEAD ---- */

/* AES-256-GCM over `header` (authenticated, not encrypted) + aad, then pt -> ct + tag. */
static int gcm_seal(const unsigned char *key, const unsigned char *nonce, const unsigned char *header,
                    size_t header_len, const unsigned char *aad, size_t aad_len, const unsigned char *pt, size_t pt_len,
                    unsigned char *ct, unsigned char tag[ENG_CRYPTO_SEAL_TAG_LEN]) {
  int rc = ENG_ECRYPTO, n = 0;
  EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new();
  if (!ctx)
    return ENG_ENOMEM;
  if (EVP_EncryptInit_ex2(ctx, aes_gcm_cipher(), key, nonce, NULL) != 1)
    goto cleanup;
  if (EVP_EncryptUpdate(ctx, NULL, &n, header, (int)header_len) != 1)
    goto cleanup;
  if (aad_len > 0 && EVP_EncryptUpdate(ctx, NULL, &n, aad, (int)aad_len) != 1)
    goto cleanup;
  if (pt_len > 0 && EVP_EncryptUpdate(ctx, ct, &n, pt, (int)pt_len) != 1)
    goto cleanup;
  if (EVP_EncryptFinal_ex(ctx, ct + n, &n) != 1)
    goto cleanup;
  if (EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_GET_TAG, ENG_CRYPTO_SEAL_TAG_LEN, tag) != 1)
    goto cleanup;
  rc = 0;
cleanup:
  EVP_CIPHER_CTX_free(ctx);
  return rc;
}

/* This thread's decryption context with key set (see the keyed states above), or NULL. */
static EVP_CIPHER_CTX *gcm_dec_for(const unsigned char key[ENG_CRYPTO_KEY_LEN]) {
  keyed_cache *c = keyed_cache_get();
  if (c == NULL)
    return NULL;
  for (int i = 0; i < KEYED_SLOTS; i++)
    if (c->gcm[i].dec != NULL && CRYPTO_memcmp(c->gcm[i].key, key, ENG_CRYPTO_KEY_LEN) == 0)
      return c->gcm[i].dec;
  gcm_slot *g = &c->gcm[c->gcm_next];
  c->gcm_next = (c->gcm_next + 1) % KEYED_SLOTS;
  gcm_slot_clear(g);
  g->dec = EVP_CIPHER_CTX_new();
  if (g->dec == NULL || EVP_DecryptInit_ex2(g->dec, aes_gcm_cipher(), key, NULL, NULL) != 1) {
    gcm_slot_clear(g);
    return NULL;
  }
  memcpy(g->key, key, ENG_CRYPTO_KEY_LEN);
  return g->dec;
}

/* Inverse of gcm_seal; on any failure `pt` is wiped so unauthenticated bytes never escape. A
 * kept context (key set) only takes the nonce, which starts a fresh message; without one, a
 * context of its own is made and freed. */
static int gcm_open(const unsigned char *key, const unsigned char *nonce, const unsigned char *header,
                    size_t header_len, const unsigned char *aad, size_t aad_len, const unsigned char *ct, size_t ct_len,
                    const unsigned char tag[ENG_CRYPTO_SEAL_TAG_LEN], unsigned char *pt) {
  int rc = ENG_ECRYPTO, n = 0;
  unsigned char tag_copy[ENG_CRYPTO_SEAL_TAG_LEN];
  EVP_CIPHER_CTX *kept = gcm_dec_for(key), *own = NULL, *ctx = kept;
  if (ctx == NULL && (ctx = own = EVP_CIPHER_CTX_new()) == NULL)
    return ENG_ENOMEM;
  memcpy(tag_copy, tag, ENG_CRYPTO_SEAL_TAG_LEN); /* the ctrl takes a non-const pointer */
  if (kept ? EVP_DecryptInit_ex2(ctx, NULL, NULL, nonce, NULL) != 1
           : EVP_DecryptInit_ex2(ctx, aes_gcm_cipher(), key, nonce, NULL) != 1)
    goto cleanup;
  if (EVP_DecryptUpdate(ctx, NULL, &n, header, (int)header_len) != 1)
    goto cleanup;
  if (aad_len > 0 && EVP_DecryptUpdate(ctx, NULL, &n, aad, (int)aad_len) != 1)
    goto cleanup;
  if (ct_len > 0 && EVP_DecryptUpdate(ctx, pt, &n, ct, (int)ct_len) != 1)
    goto cleanup;
  if (EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_TAG, ENG_CRYPTO_SEAL_TAG_LEN, tag_copy) != 1)
    goto cleanup;
  if (EVP_DecryptFinal_ex(ctx, pt + n, &n) != 1)
    goto cleanup;
  rc = 0;
cleanup:
  EVP_CIPHER_CTX_free(own);
  if (rc != 0 && ct_len > 0)
    OPENSSL_cleanse(pt, ct_len);
  return rc;
}

/* A random 96-bit nonce per message keeps the GCM nonce-reuse risk negligible well past
 * the number of secrets this engine will ever seal under one key. */
int eng_crypto_seal(const unsigned char key[ENG_CRYPTO_KEY_LEN], const void *aad, size_t aad_len, const void *pt,
                    size_t pt_len, unsigned char *out) {
  if (pt_len > ENG_CRYPTO_SEAL_MAX || aad_len > ENG_CRYPTO_SEAL_MAX)
    return ENG_ETOOBIG;
  out[0] = ENG_CRYPTO_SEAL_VERSION;
  if (eng_crypto_random(out + 1, ENG_CRYPTO_SEAL_NONCE_LEN) != 0)
    return ENG_ECRYPTO;
  return gcm_seal(key, out + 1, out, 1, aad, aad_len, pt, pt_len, out + ENG_CRYPTO_SEAL_HEADER_LEN,
                  out + ENG_CRYPTO_SEAL_HEADER_LEN + pt_len);
}

int eng_crypto_open(const unsigned char key[ENG_CRYPTO_KEY_LEN], const void *aad, size_t aad_len,
                    const unsigned char *sealed, size_t len, unsigned char *out, size_t *out_len) {
  if (len < ENG_CRYPTO_SEAL_OVERHEAD || sealed[0] != ENG_CRYPTO_SEAL_VERSION || aad_len > ENG_CRYPTO_SEAL_MAX ||
      len - ENG_CRYPTO_SEAL_OVERHEAD > ENG_CRYPTO_SEAL_MAX)
    return ENG_ECRYPTO;
  size_t ct_len = len - ENG_CRYPTO_SEAL_OVERHEAD;
  int rc = gcm_open(key, sealed + 1, sealed, 1, aad, aad_len, sealed + ENG_CRYPTO_SEAL_HEADER_LEN, ct_len,
                    sealed + ENG_CRYPTO_SEAL_HEADER_LEN + ct_len, out);
  if (rc == 0)
    *out_len = ct_len;
  return rc;
}
