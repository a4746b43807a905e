/* crypto.h - the cryptographic primitives of the core, in plain C (no Lua).
 *
 * CSPRNG bytes, UUID v4, hex / base64 / base64url codecs, SHA-256, HMAC-SHA256, constant-time
 * comparison, AES-256-GCM seal/open and key derivation. crypto.c is the one file of the core
 * that includes OpenSSL: its failures are translated there to ENG_ECRYPTO (they mean the
 * library is broken or out of memory, not that the input is bad). The Lua module
 * "engine.crypto" (lua_crypto.c) and the key store (keys.c) are built on these.
 *
 * Every function is thread-safe. Inputs are borrowed for the call and never retained; outputs
 * go to caller-provided buffers of the documented size. Decoders accept only the canonical
 * encoding, so every accepted string has exactly one meaning. */
#ifndef ENG_CRYPTO_H
#define ENG_CRYPTO_H

#include <stddef.h>

#define ENG_CRYPTO_SHA256_LEN 32 /* SHA-256 and HMAC-SHA256 output */
#define ENG_CRYPTO_KEY_LEN 32    /* AES-256-GCM keys and derived keys */
#define ENG_CRYPTO_UUID_LEN 36   /* text form, without the NUL */

/* Fills buf with n bytes straight from RAND_bytes (use this for secrets).
 * Returns 0 or ENG_ECRYPTO. */
int eng_crypto_random(void *buf, size_t n);

/* Writes a lowercase canonical UUID v4 and a NUL into out. Fast: bytes come from a small
 * per-thread pool refilled by RAND_bytes (reset in a forked child). Meant for identifiers
 * such as request ids, not for secrets. Returns 0 or ENG_ECRYPTO. Thread-safe. */
int eng_crypto_uuid4(char out[ENG_CRYPTO_UUID_LEN + 1]);

/* Hex: encode writes 2*n chars (no NUL) and returns that count. decode reads len chars
 * (either case) into out (>= len/2 bytes), sets *out_len; 0, or ENG_EPARSE with a static
 * *errmsg ("odd hex length", "invalid hex character"). */
size_t eng_crypto_hex_encode(const unsigned char *in, size_t n, char *out);
int eng_crypto_hex_decode(const char *s, size_t len, unsigned char *out, size_t *out_len, const char **errmsg);

/* Base64 (url = 0: standard alphabet, padded) or base64url (url = 1: no padding).
 * ENG_CRYPTO_B64_ENCODED_LEN is exact for url = 0 and an upper bound for url = 1;
 * encode returns the number of chars written (no NUL). decode writes at most
 * ENG_CRYPTO_B64_DECODED_MAX(len) bytes; 0, or ENG_EPARSE with a static *errmsg.
 * Only the canonical encoding is accepted (padding exactly right, unused bits zero). */
#define ENG_CRYPTO_B64_ENCODED_LEN(n) (((n) + 2) / 3 * 4)
#define ENG_CRYPTO_B64_DECODED_MAX(len) ((len) / 4 * 3 + 3)
size_t eng_crypto_b64_encode(const unsigned char *in, size_t n, int url, char *out);
int eng_crypto_b64_decode(const char *s, size_t len, int url, unsigned char *out, size_t *out_len, const char **errmsg);

/* SHA-256 of len bytes at data into out. Returns 0, or ENG_ECRYPTO when OpenSSL cannot
 * allocate (out is then not a digest). */
int eng_crypto_sha256(const void *data, size_t len, unsigned char out[ENG_CRYPTO_SHA256_LEN]);

/* HMAC-SHA256(key, msg) into out. Returns 0, ENG_EINVAL (key_len > INT_MAX) or ENG_ECRYPTO.
 * The calling thread keeps the states of the last few keys of up to 64 bytes (a copy of each,
 * wiped when the thread ends), so repeated calls under one key skip its set-up. */
int eng_crypto_hmac_sha256(const void *key, size_t key_len, const void *msg, size_t msg_len,
                           unsigned char out[ENG_CRYPTO_SHA256_LEN]);

/* 1 when the n bytes at a and b are equal, else 0, in time that depends on n only. Callers
 * comparing strings of different lengths decide "not equal" before calling. */
int eng_crypto_equal(const void *a, const void *b, size_t n);

/* Overwrites n bytes at p with zeros in a way the compiler cannot drop (for key material). */
void eng_crypto_wipe(void *p, size_t n);

/* A subkey for one purpose: out = HMAC-SHA256(master, label), label a NUL-terminated string,
 * so keys derived under different labels are independent. Returns 0 or ENG_ECRYPTO. */
int eng_crypto_derive_key(const unsigned char master[ENG_CRYPTO_KEY_LEN], const char *label,
                          unsigned char out[ENG_CRYPTO_KEY_LEN]);

/* Sealed data (AES-256-GCM, a fresh random 96-bit nonce per message):
 *   0x01 (version) | 12-byte nonce | ciphertext (as long as the plaintext) | 16-byte tag
 * The version byte is authenticated as associated data, followed by the caller's aad. */
#define ENG_CRYPTO_SEAL_VERSION 0x01
#define ENG_CRYPTO_SEAL_NONCE_LEN 12
#define ENG_CRYPTO_SEAL_TAG_LEN 16
#define ENG_CRYPTO_SEAL_HEADER_LEN (1 + ENG_CRYPTO_SEAL_NONCE_LEN)
#define ENG_CRYPTO_SEAL_OVERHEAD (ENG_CRYPTO_SEAL_HEADER_LEN + ENG_CRYPTO_SEAL_TAG_LEN)
#define ENG_CRYPTO_SEAL_MAX (64u * 1024 * 1024) /* largest plaintext (and aad) accepted */

/* Seals pt_len bytes at pt under key, binding aad (aad_len 0: none; aad may then be NULL),
 * into out, which has room for pt_len + ENG_CRYPTO_SEAL_OVERHEAD bytes (all of them are
 * written on success). Returns 0, ENG_ETOOBIG (pt_len or aad_len over ENG_CRYPTO_SEAL_MAX),
 * ENG_ENOMEM or ENG_ECRYPTO (random generator or cipher failure). */
int eng_crypto_seal(const unsigned char key[ENG_CRYPTO_KEY_LEN], const void *aad, size_t aad_len, const void *pt,
                    size_t pt_len, unsigned char *out);

/* Opens len bytes of sealed data under key and the same aad into out, which has room for
 * len - ENG_CRYPTO_SEAL_OVERHEAD bytes (nothing is written when len is shorter than the
 * overhead); sets *out_len. Returns 0, or ENG_ECRYPTO for anything that is not authentic:
 * too short, unknown version, wrong key or aad, any changed byte, sizes over
 * ENG_CRYPTO_SEAL_MAX; ENG_ENOMEM if OpenSSL cannot allocate. On failure out holds zeros
 * where it was written, so unauthenticated bytes never escape. Like HMAC, the calling thread
 * keeps a context (and a copy) of the last few keys it opened with until it ends. */
int eng_crypto_open(const unsigned char key[ENG_CRYPTO_KEY_LEN], const void *aad, size_t aad_len,
                    const unsigned char *sealed, size_t len, unsigned char *out, size_t *out_len);

#endif
