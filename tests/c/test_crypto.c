/* test_crypto.c - engine/crypto.c and engine/keys.c: known-answer vectors, codecs, uuid4,
 * constant-time comparison, AEAD seal/open, key derivation and the key file.
 * The engine.crypto Lua module over them (argument checks, signed tokens) is tested in
 * tests/spec/engine_crypto_spec.lua. */
#define _GNU_SOURCE 1 /* memmem */
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/evp.h>
#include <openssl/hmac.h>

#include "check.h"
#include "crypto.h"
#include "error.h"
#include "keys.h"

static const unsigned char KEY_A[ENG_KEY_LEN] = {1,  2,  3,  4,  5,  6,  7,  8,  9,  10, 11, 12, 13, 14, 15, 16,
                                                 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31, 32};
static unsigned char KEY_B[ENG_KEY_LEN];

/* ---- codecs, uuid4, random bytes ---- */

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

static void test_codecs(void) {
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

static void test_uuid(void) {
  enum { N = 1000 };
  static char ids[N][37];
  int format_ok = 1;
  for (int i = 0; i < N; i++) {
    CHECK_INT(eng_crypto_uuid4(ids[i]), 0);
    const char *u = ids[i];
    if (strlen(u) != 36 || u[14] != '4' || !strchr("89ab", u[19]))
      format_ok = 0;
    for (int j = 0; j < 36; j++) {
      int dash = j == 8 || j == 13 || j == 18 || j == 23;
      if (dash ? u[j] != '-' : !is_hex_lower(u[j]))
        format_ok = 0;
    }
  }
  CHECK(format_ok);
  qsort(ids, N, sizeof ids[0], cmp_ids);
  int dup = 0;
  for (int i = 1; i < N; i++)
    dup += strcmp(ids[i - 1], ids[i]) == 0;
  CHECK_INT(dup, 0);

  unsigned char a[32] = {0}, b[32] = {0};
  CHECK_INT(eng_crypto_random(a, sizeof a), 0);
  CHECK_INT(eng_crypto_random(b, sizeof b), 0);
  CHECK(memcmp(a, b, sizeof a) != 0);
}

/* ---- digests, comparison, derivation ---- */

static const char *hex_of(const unsigned char *raw, size_t n) {
  static char out[2 * 64 + 1];
  out[eng_crypto_hex_encode(raw, n, out)] = '\0';
  return out;
}

static void test_digests(void) {
  unsigned char md[ENG_CRYPTO_SHA256_LEN];
  CHECK(eng_crypto_sha256("abc", 3, md) == 0);
  CHECK_STR(hex_of(md, sizeof md), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  CHECK(eng_crypto_sha256("", 0, md) == 0);
  CHECK_STR(hex_of(md, sizeof md), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  /* RFC 4231 test case 2 */
  static const char msg[] = "what do ya want for nothing?";
  CHECK_INT(eng_crypto_hmac_sha256("Jefe", 4, msg, sizeof msg - 1, md), 0);
  CHECK_STR(hex_of(md, sizeof md), "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
  /* RFC 4231 test cases 1 (a 20-byte key) and 6 (a key longer than the block: hashed first) */
  unsigned char k1[20], k6[131];
  memset(k1, 0x0b, sizeof k1);
  memset(k6, 0xaa, sizeof k6);
  CHECK_INT(eng_crypto_hmac_sha256(k1, sizeof k1, "Hi There", 8, md), 0);
  CHECK_STR(hex_of(md, sizeof md), "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7");
  static const char m6[] = "Test Using Larger Than Block-Size Key - Hash Key First";
  CHECK_INT(eng_crypto_hmac_sha256(k6, sizeof k6, m6, sizeof m6 - 1, md), 0);
  CHECK_STR(hex_of(md, sizeof md), "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54");
  /* A key of exactly one block is used as it is; an empty key and message still authenticate. */
  unsigned char k64[64];
  memset(k64, 0x42, sizeof k64);
  CHECK_INT(eng_crypto_hmac_sha256(k64, sizeof k64, "", 0, md), 0);
  CHECK_STR(hex_of(md, sizeof md), "bf64e6883dbe3b4b2668390800cedbf8d96dce1b3a66688efd3d75593f3eeed0");
  CHECK_INT(eng_crypto_hmac_sha256("", 0, "", 0, md), 0);
  CHECK_STR(hex_of(md, sizeof md), "b613679a0814d9ec772f95d778c35fc5ff1697c493715653c6c712144292c5ad");
  /* The length is checked before the key is read. */
  CHECK_INT(eng_crypto_hmac_sha256("k", (size_t)INT_MAX + 1, msg, 1, md), ENG_EINVAL);
}

static void test_equal(void) {
  CHECK_INT(eng_crypto_equal("abc", "abc", 3), 1);
  CHECK_INT(eng_crypto_equal("", "", 0), 1);
  CHECK_INT(eng_crypto_equal("abc", "abd", 3), 0);
  CHECK_INT(eng_crypto_equal("xbc", "abc", 3), 0);
  CHECK_INT(eng_crypto_equal("a\0b", "a\0c", 3), 0);
}

static void test_derive_key(void) {
  unsigned char tk[ENG_CRYPTO_KEY_LEN], sk[ENG_CRYPTO_KEY_LEN], mac[ENG_CRYPTO_SHA256_LEN];
  static const char label[] = "apiengine token v1";
  CHECK_INT(eng_crypto_derive_key(KEY_A, label, tk), 0);
  CHECK_INT(eng_crypto_hmac_sha256(KEY_A, sizeof KEY_A, label, sizeof label - 1, mac), 0);
  CHECK(memcmp(tk, mac, sizeof tk) == 0);
  CHECK_INT(eng_crypto_derive_key(KEY_A, "apiengine seal v1", sk), 0);
  CHECK(memcmp(tk, sk, sizeof tk) != 0);
  /* keys.c keeps exactly these derived keys. */
  eng_keys_set(KEY_A);
  CHECK(memcmp(eng_keys_token_key(), tk, sizeof tk) == 0);
  CHECK(memcmp(eng_keys_seal_key(), sk, sizeof sk) == 0);
  eng_keys_clear();
}

/* ---- AEAD ---- */

/* Seals pt (n bytes) with aad under key into a malloc'd buffer the caller frees. */
static unsigned char *seal(const unsigned char *key, const char *aad, const void *pt, size_t n) {
  unsigned char *out = malloc(n + ENG_CRYPTO_SEAL_OVERHEAD);
  if (!out)
    abort();
  CHECK_INT(eng_crypto_seal(key, aad, aad ? strlen(aad) : 0, pt, n, out), 0);
  return out;
}

/* Opens sealed (len bytes); returns 1 when it opens to exactly want (want_len bytes). */
static int opens_to(const unsigned char *key, const char *aad, const unsigned char *sealed, size_t len,
                    const void *want, size_t want_len) {
  unsigned char *out = malloc(len + 1);
  size_t n = 12345;
  if (!out)
    abort();
  int ok = eng_crypto_open(key, aad, aad ? strlen(aad) : 0, sealed, len, out, &n) == 0 && n == want_len &&
           memcmp(out, want, n) == 0;
  free(out);
  return ok;
}

/* 1 when opening fails with ENG_ECRYPTO and leaves no plaintext in the output buffer. */
static int refused(const unsigned char *key, const char *aad, const unsigned char *sealed, size_t len) {
  unsigned char out[4096];
  size_t n = 12345;
  memset(out, 0x5a, sizeof out);
  if (len > sizeof out + ENG_CRYPTO_SEAL_OVERHEAD)
    abort();
  if (eng_crypto_open(key, aad, aad ? strlen(aad) : 0, sealed, len, out, &n) != ENG_ECRYPTO)
    return 0;
  size_t written = len >= ENG_CRYPTO_SEAL_OVERHEAD ? len - ENG_CRYPTO_SEAL_OVERHEAD : 0;
  for (size_t i = 0; i < written; i++)
    if (out[i] != 0 && out[i] != 0x5a)
      return 0;
  return n == 12345;
}

static void test_seal_open(void) {
  unsigned char big[2000];
  for (size_t i = 0; i < sizeof big; i++)
    big[i] = i % 2 ? 0xff : 0x00;
  const struct {
    const void *p;
    size_t n;
  } pts[] = {{"", 0}, {"x", 1}, {"hello, world", 12}, {big, sizeof big}};
  for (size_t i = 0; i < sizeof pts / sizeof pts[0]; i++) {
    unsigned char *s = seal(KEY_A, NULL, pts[i].p, pts[i].n);
    CHECK_INT(s[0], ENG_CRYPTO_SEAL_VERSION);
    CHECK(opens_to(KEY_A, NULL, s, pts[i].n + ENG_CRYPTO_SEAL_OVERHEAD, pts[i].p, pts[i].n));
    CHECK(opens_to(KEY_A, "", s, pts[i].n + ENG_CRYPTO_SEAL_OVERHEAD, pts[i].p, pts[i].n));
    if (pts[i].n >= 8) /* the ciphertext does not hold the plaintext */
      CHECK(memmem(s, pts[i].n + ENG_CRYPTO_SEAL_OVERHEAD, pts[i].p, pts[i].n) == NULL);
    free(s);
  }
  unsigned char *s1 = seal(KEY_A, NULL, "same", 4), *s2 = seal(KEY_A, NULL, "same", 4);
  CHECK(memcmp(s1 + 1, s2 + 1, ENG_CRYPTO_SEAL_NONCE_LEN) != 0); /* fresh nonces */
  free(s1);
  free(s2);

  size_t len = 6 + ENG_CRYPTO_SEAL_OVERHEAD;
  unsigned char *s = seal(KEY_A, "user:42", "secret", 6);
  CHECK(opens_to(KEY_A, "user:42", s, len, "secret", 6));
  CHECK(refused(KEY_A, "user:43", s, len));
  CHECK(refused(KEY_A, NULL, s, len));
  unsigned char *plain = seal(KEY_A, NULL, "secret", 6);
  CHECK(refused(KEY_A, "user:42", plain, len));
  free(plain);
  /* a flipped bit anywhere (version, nonce, ciphertext, tag) fails */
  int failures = 0;
  for (size_t i = 0; i < len; i++) {
    for (int bit = 1; bit <= 128; bit <<= 7) { /* the lowest and the highest bit */
      s[i] ^= (unsigned char)bit;
      failures += refused(KEY_A, "user:42", s, len);
      s[i] ^= (unsigned char)bit;
    }
  }
  CHECK_INT(failures, 2 * len);
  CHECK(refused(KEY_A, "user:42", s, len - 1));
  CHECK(refused(KEY_A, "user:42", s, 0));
  unsigned char ones[ENG_CRYPTO_SEAL_OVERHEAD - 1];
  memset(ones, 1, sizeof ones);
  CHECK(refused(KEY_A, NULL, ones, sizeof ones));
  unsigned char *extended = malloc(len + 1);
  if (!extended)
    abort();
  memcpy(extended, s, len);
  extended[len] = 'x';
  CHECK(refused(KEY_A, "user:42", extended, len + 1));
  extended[0] = 2;
  CHECK(refused(KEY_A, "user:42", extended, len)); /* version 2 */
  free(extended);
  CHECK(refused(KEY_B, "user:42", s, len));
  CHECK(opens_to(KEY_A, "user:42", s, len, "secret", 6));
  free(s);
  /* Sizes are checked before anything is read or written. */
  unsigned char dummy[1];
  CHECK_INT(eng_crypto_seal(KEY_A, NULL, 0, dummy, (size_t)ENG_CRYPTO_SEAL_MAX + 1, dummy), ENG_ETOOBIG);
  CHECK_INT(eng_crypto_seal(KEY_A, dummy, (size_t)ENG_CRYPTO_SEAL_MAX + 1, dummy, 0, dummy), ENG_ETOOBIG);
}

/* ---- key store ---- */

static void test_not_ready(void) {
  CHECK_INT(eng_keys_ready(), 0);
  CHECK(eng_keys_token_key() == NULL);
  CHECK(eng_keys_seal_key() == NULL);
  eng_keys_set(KEY_A);
  CHECK_INT(eng_keys_ready(), 1);
  eng_keys_clear();
  CHECK_INT(eng_keys_ready(), 0);
  CHECK(eng_keys_token_key() == NULL);
  CHECK(eng_keys_seal_key() == NULL);
}

/* What tokens signed and secrets sealed under the loaded keys need later: the token key (a
 * token verifies exactly when its HMAC key is the same) and a secret sealed under the seal
 * key. Stands in for crypto.sign/seal now and crypto.verify/open after a key change. */
typedef struct key_witness {
  unsigned char token_key[ENG_KEY_LEN];
  unsigned char sealed[8 + ENG_CRYPTO_SEAL_OVERHEAD];
  size_t sealed_len;
  char text[8];
} key_witness;

static void witness_take(key_witness *w, const char *text) {
  size_t n = strlen(text);
  if (n >= sizeof w->text)
    abort();
  memcpy(w->text, text, n + 1);
  memcpy(w->token_key, eng_keys_token_key(), ENG_KEY_LEN);
  CHECK_INT(eng_crypto_seal(eng_keys_seal_key(), NULL, 0, text, n, w->sealed), 0);
  w->sealed_len = n + ENG_CRYPTO_SEAL_OVERHEAD;
}

/* 1 when tokens signed at witness_take still verify under the loaded keys. */
static int witness_verifies(const key_witness *w) {
  return memcmp(w->token_key, eng_keys_token_key(), ENG_KEY_LEN) == 0;
}

/* 1 when the secret sealed at witness_take still opens under the loaded keys. */
static int witness_opens(const key_witness *w) {
  return opens_to(eng_keys_seal_key(), NULL, w->sealed, w->sealed_len, w->text, strlen(w->text));
}

static char tmpdir[64];

/* Returns tmpdir/name in a malloc'd string the caller frees. */
static char *path_in_tmp(const char *name) {
  size_t n = strlen(tmpdir) + strlen(name) + 2;
  char *p = malloc(n);
  if (!p)
    abort();
  snprintf(p, n, "%s/%s", tmpdir, name);
  return p;
}

static void test_keys_file(void) {
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

  key_witness saved;
  witness_take(&saved, "kept");
  /* Another key in between, then a restart: the same file gives the same key back. */
  eng_keys_set(KEY_B);
  CHECK(!witness_verifies(&saved)); /* other key: a saved token would be a bad signature */
  CHECK_INT(eng_keys_init("", key_path, &err), 0);
  CHECK(witness_verifies(&saved)); /* a token survives re-init */
  CHECK(witness_opens(&saved));    /* a sealed secret survives re-init */

  /* The file holds the master key: configuring the same bytes gives the same keys. */
  char text[80] = {0};
  int fd = open(key_path, O_RDONLY);
  CHECK(fd >= 0);
  CHECK_INT(read(fd, text, sizeof text - 1), 65);
  close(fd);
  CHECK(text[64] == '\n');
  text[64] = '\0';
  CHECK_INT(eng_keys_init(text, "/nonexistent/dir/x.key", &err), 0);
  CHECK(witness_opens(&saved)); /* configured hex = file */

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
  CHECK(witness_opens(&saved)); /* a failed init keeps the keys */

  /* Malformed files. */
  static const char *const bad_contents[] = {"", "abc\n", "zz", NULL};
  char long_text[70];
  memset(long_text, 'a', sizeof long_text);
  for (int i = 0; i < 5; i++) {
    const char *content = bad_contents[i < 3 ? i : 0];
    size_t n = strlen(content);
    if (i == 3) {
      content = long_text;
      n = 63;
    } /* one hex char short */
    if (i == 4) {
      content = long_text;
      n = 66;
    } /* 66 hex chars */
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

static void test_keys_configured(void) {
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
  key_witness cfg;
  witness_take(&cfg, "cfg");
  const char *const same[] = {std, url, url_padded, std_unpadded};
  for (int i = 0; i < 4; i++) {
    eng_keys_set(KEY_B);
    CHECK_INT(eng_keys_init(same[i], NULL, &err), 0);
    CHECK(err == NULL);
    CHECK(witness_opens(&cfg)); /* same key, other spelling */
  }
  /* Upper-case hex is the same key too. */
  char upper[65];
  for (int i = 0; i < 65; i++)
    upper[i] = (char)(hexkey[i] >= 'a' ? hexkey[i] - 32 : hexkey[i]);
  CHECK_INT(eng_keys_init(upper, NULL, &err), 0);
  CHECK(witness_opens(&cfg)); /* upper-case hex */

  char short_hex[64], long_hex[70], bad_char[65], b64_31[48], spaced[67];
  snprintf(short_hex, sizeof short_hex, "%.63s", hexkey);
  snprintf(long_hex, sizeof long_hex, "%s00", hexkey);
  snprintf(bad_char, sizeof bad_char, "%.63sg", hexkey);
  b64_31[eng_crypto_b64_encode(raw, 31, 0, b64_31)] = '\0';
  snprintf(spaced, sizeof spaced, " %s\n", hexkey);
  const char *const bad[] = {
      "short", short_hex, long_hex, bad_char, b64_31, spaced, "!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!="};
  for (int i = 0; i < 7; i++) {
    CHECK_INT(eng_keys_init(bad[i], "/nonexistent/ignored", &err), ENG_ECONFIG);
    CHECK(err && strstr(err, "configured server key is invalid"));
    CHECK(err && !strstr(err, bad[i]) && !strstr(err, hexkey) && !strstr(err, "fb"));
    free(err);
    err = NULL;
  }
  CHECK(witness_opens(&cfg)); /* a bad configured key keeps the loaded one */
}

/* The fingerprint: one per key, not a derived key, and nothing without a key. Loading without
 * creating leaves a missing key file missing. */
static void test_keys_fingerprint_and_no_create(void) {
  char *err = NULL;
  char a[ENG_KEY_FINGERPRINT_HEX + 1], again[ENG_KEY_FINGERPRINT_HEX + 1], b[ENG_KEY_FINGERPRINT_HEX + 1];
  char hex[2 * ENG_KEY_LEN + 1];
  unsigned char key_a[ENG_KEY_LEN];
  memset(key_a, 0x11, sizeof key_a);
  eng_keys_clear();
  CHECK_INT(eng_keys_fingerprint(a), ENG_EINVAL);

  eng_keys_set(key_a);
  CHECK_INT(eng_keys_fingerprint(a), 0);
  CHECK_INT(strlen(a), ENG_KEY_FINGERPRINT_HEX);
  eng_keys_set(KEY_B);
  CHECK_INT(eng_keys_fingerprint(b), 0);
  CHECK(strcmp(a, b) != 0);
  /* The same key, configured as text: the same fingerprint, and not a derived key's hex. */
  hex[eng_crypto_hex_encode(key_a, sizeof key_a, hex)] = '\0';
  eng_key_source src = 0;
  CHECK_INT(eng_keys_load(hex, NULL, 0, &src, &err), 0);
  CHECK_INT(src, ENG_KEY_CONFIGURED);
  CHECK_INT(eng_keys_fingerprint(again), 0);
  CHECK_STR(again, a);
  char derived[2 * ENG_KEY_LEN + 1];
  derived[eng_crypto_hex_encode(eng_keys_token_key(), ENG_KEY_LEN, derived)] = '\0';
  CHECK(strcmp(derived, a) != 0);
  derived[eng_crypto_hex_encode(eng_keys_seal_key(), ENG_KEY_LEN, derived)] = '\0';
  CHECK(strcmp(derived, a) != 0);

  /* No key file and create = 0: ENG_ENOTFOUND, no file, the loaded key kept. */
  char *missing = path_in_tmp("missing.key");
  CHECK_INT(eng_keys_load(NULL, missing, 0, &src, &err), ENG_ENOTFOUND);
  CHECK(err && strstr(err, "does not exist"));
  free(err);
  err = NULL;
  CHECK_INT(access(missing, F_OK), -1);
  CHECK_INT(eng_keys_fingerprint(again), 0);
  CHECK_STR(again, a);
  /* create = 1 makes it; loading it again says it came from the file. */
  CHECK_INT(eng_keys_load(NULL, missing, 1, &src, &err), 0);
  CHECK_INT(src, ENG_KEY_CREATED);
  CHECK_INT(eng_keys_fingerprint(b), 0);
  CHECK_INT(eng_keys_load(NULL, missing, 0, &src, &err), 0);
  CHECK_INT(src, ENG_KEY_FILE);
  CHECK_INT(eng_keys_fingerprint(again), 0);
  CHECK_STR(again, b);
  CHECK_INT(unlink(missing), 0);
  free(missing);
}

/* Rotation: "current,previous" (and the key file's lines) load both keys, the current one first;
 * each key keeps its own fingerprint and subkeys; bad lists are refused without naming a key. */
static void test_keys_rotation(void) {
  char *err = NULL;
  unsigned char key_a[ENG_KEY_LEN], key_c[ENG_KEY_LEN];
  memset(key_a, 0x11, sizeof key_a);
  memset(key_c, 0x33, sizeof key_c);
  char fa[ENG_KEY_FINGERPRINT_HEX + 1], fc[ENG_KEY_FINGERPRINT_HEX + 1], got[ENG_KEY_FINGERPRINT_HEX + 1];
  unsigned char seal_a[ENG_KEY_LEN], token_a[ENG_KEY_LEN];
  eng_keys_set(key_a);
  CHECK_INT(eng_keys_count(), 1);
  eng_keys_fingerprint(fa);
  memcpy(seal_a, eng_keys_seal_key(), ENG_KEY_LEN);
  memcpy(token_a, eng_keys_token_key(), ENG_KEY_LEN);
  eng_keys_set(key_c);
  eng_keys_fingerprint(fc);

  char ha[65], hc[65], list[200];
  ha[eng_crypto_hex_encode(key_a, ENG_KEY_LEN, ha)] = '\0';
  hc[eng_crypto_hex_encode(key_c, ENG_KEY_LEN, hc)] = '\0';
  snprintf(list, sizeof list, "%s, %s", hc, ha);
  CHECK_INT(eng_keys_load(list, NULL, 0, NULL, &err), 0);
  CHECK_INT(eng_keys_count(), 2);
  CHECK_INT(eng_keys_fingerprint(got), 0);
  CHECK_STR(got, fc); /* the first is the current key */
  CHECK_INT(eng_keys_fingerprint_at(1, got), 0);
  CHECK_STR(got, fa);
  CHECK_INT(eng_keys_fingerprint_at(2, got), ENG_EINVAL);
  CHECK_INT(eng_keys_find_fingerprint(fa), 1);
  CHECK_INT(eng_keys_find_fingerprint(fc), 0);
  CHECK_INT(eng_keys_find_fingerprint("00"), -1);
  CHECK_INT(eng_keys_find_fingerprint(NULL), -1);
  CHECK(memcmp(eng_keys_seal_key_at(1), seal_a, ENG_KEY_LEN) == 0);
  CHECK(memcmp(eng_keys_token_key_at(1), token_a, ENG_KEY_LEN) == 0);
  CHECK(eng_keys_seal_key_at(2) == NULL);

  /* The key file: one key a line, the current one first. */
  char *path = path_in_tmp("two.key");
  int fd = open(path, O_WRONLY | O_CREAT | O_EXCL, 0600);
  CHECK(fd >= 0);
  snprintf(list, sizeof list, "%s\n%s\n", ha, hc);
  CHECK_INT(write(fd, list, strlen(list)), (long long)strlen(list));
  close(fd);
  CHECK_INT(eng_keys_load(NULL, path, 0, NULL, &err), 0);
  CHECK_INT(eng_keys_count(), 2);
  CHECK_INT(eng_keys_find_fingerprint(fa), 0);
  CHECK_INT(eng_keys_find_fingerprint(fc), 1);
  CHECK_INT(unlink(path), 0);
  free(path);

  /* Nine keys, a bad previous key, the same key twice: refused, the loaded keys kept. */
  char nine[9 * 66 + 1] = "";
  for (int i = 0; i < 9; i++) {
    char k[67];
    snprintf(k, sizeof k, "%s%02x%.62s", i ? "," : "", i, ha);
    strcat(nine, k);
  }
  CHECK_INT(eng_keys_load(nine, NULL, 0, NULL, &err), ENG_ECONFIG);
  CHECK(err && strstr(err, "more than 8 keys"));
  free(err);
  err = NULL;
  snprintf(list, sizeof list, "%s,%.63s", hc, ha);
  CHECK_INT(eng_keys_load(list, NULL, 0, NULL, &err), ENG_ECONFIG);
  CHECK(err && strstr(err, "previous key 1 (item 2 of the list) is invalid") && !strstr(err, hc));
  free(err);
  err = NULL;
  snprintf(list, sizeof list, "%s,%s", ha, ha);
  CHECK_INT(eng_keys_load(list, NULL, 0, NULL, &err), ENG_ECONFIG);
  CHECK(err && strstr(err, "items 1 and 2 of the list are the same key"));
  free(err);
  err = NULL;
  CHECK_INT(eng_keys_count(), 2);
  CHECK_INT(eng_keys_find_fingerprint(fa), 0);
}

/* ---- keyed states (crypto.c keeps, per thread, the HMAC states and an AES-GCM context of
 * the last KEYED_SLOTS keys) ---- */

#define KEYED_KEYS 6 /* more keys than the cache keeps, so entries are replaced and made again */

/* HMAC under keys of every kind (empty, short, one block, longer than a block: not kept), in
 * turn, three rounds, against OpenSSL's own HMAC: a kept key's states give the same MAC as a
 * fresh one, and a key that replaced another does not answer for it. Returns the mismatches. */
static int hmac_rounds(void) {
  static const size_t key_lens[KEYED_KEYS] = {0, 1, 20, 32, 64, 65};
  static const size_t msg_lens[] = {0, 1, 55, 56, 64, 130};
  unsigned char key[80], msg[130], md[ENG_CRYPTO_SHA256_LEN], want[EVP_MAX_MD_SIZE];
  int bad = 0;
  for (int round = 0; round < 3; round++)
    for (int k = 0; k < KEYED_KEYS; k++)
      for (size_t m = 0; m < sizeof msg_lens / sizeof msg_lens[0]; m++) {
        memset(key, 0x10 + k, sizeof key);
        memset(msg, 'a' + (int)m, sizeof msg);
        unsigned int want_len = 0;
        if (HMAC(EVP_sha256(), key, (int)key_lens[k], msg, msg_lens[m], want, &want_len) == NULL ||
            eng_crypto_hmac_sha256(key, key_lens[k], msg, msg_lens[m], md) != 0 || want_len != sizeof md ||
            memcmp(md, want, sizeof md) != 0)
          bad++;
      }
  return bad;
}

/* Secrets sealed under KEYED_KEYS keys, opened in turn, three rounds: each opens under its own
 * key only, and a tampered copy is refused without spoiling the next open under that key.
 * Returns the failures. */
static int gcm_rounds(void) {
  unsigned char keys[KEYED_KEYS][ENG_CRYPTO_KEY_LEN], *sealed[KEYED_KEYS];
  char text[KEYED_KEYS][16];
  int bad = 0;
  for (int k = 0; k < KEYED_KEYS; k++) {
    memset(keys[k], 0x60 + k, ENG_CRYPTO_KEY_LEN);
    snprintf(text[k], sizeof text[k], "secret-%d", k);
    sealed[k] = seal(keys[k], "aad", text[k], strlen(text[k]));
  }
  for (int round = 0; round < 3; round++)
    for (int k = 0; k < KEYED_KEYS; k++) {
      size_t len = strlen(text[k]) + ENG_CRYPTO_SEAL_OVERHEAD;
      unsigned char tampered[64];
      memcpy(tampered, sealed[k], len);
      tampered[ENG_CRYPTO_SEAL_HEADER_LEN] ^= 1;
      bad += !opens_to(keys[k], "aad", sealed[k], len, text[k], strlen(text[k]));
      bad += !refused(keys[(k + 1) % KEYED_KEYS], "aad", sealed[k], len);
      bad += !refused(keys[k], "aad", tampered, len);
      bad += !refused(keys[k], "other", sealed[k], len);
      bad += !opens_to(keys[k], "aad", sealed[k], len, text[k], strlen(text[k]));
    }
  for (int k = 0; k < KEYED_KEYS; k++)
    free(sealed[k]);
  return bad;
}

static void *keyed_thread(void *arg) {
  int *bad = arg;
  *bad = hmac_rounds() + gcm_rounds();
  return NULL;
}

static void test_keyed_states(void) {
  CHECK_INT(hmac_rounds(), 0);
  CHECK_INT(gcm_rounds(), 0);
  /* Another thread has its own states (and frees them when it ends: the sanitizer pass would
   * report a leak), and this thread's still give the same answers afterwards. */
  pthread_t t;
  int bad = -1;
  CHECK_INT(pthread_create(&t, NULL, keyed_thread, &bad), 0);
  CHECK_INT(pthread_join(t, NULL), 0);
  CHECK_INT(bad, 0);
  CHECK_INT(hmac_rounds(), 0);
  CHECK_INT(gcm_rounds(), 0);
}

int main(void) {
  memset(KEY_B, 0x42, sizeof KEY_B);
  snprintf(tmpdir, sizeof tmpdir, "/tmp/test_crypto.XXXXXX");
  if (!mkdtemp(tmpdir)) {
    perror("mkdtemp");
    return 1;
  }
  test_not_ready();
  test_codecs();
  test_uuid();
  test_digests();
  test_equal();
  test_derive_key();
  test_seal_open();
  test_keyed_states();
  test_keys_file();
  test_keys_configured();
  test_keys_fingerprint_and_no_create();
  test_keys_rotation();

  CHECK_INT(rmdir(tmpdir), 0); /* every file the test made is gone */
  return check_summary("test_crypto");
}
