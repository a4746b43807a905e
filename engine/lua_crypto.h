/* lua_crypto.h - OpenSSL-backed primitives for the core, and the Lua module "engine.crypto".
 *
 * Lua API (eng_luaopen_crypto, declared in lua_common.h). Wrong argument types raise;
 * bad data returns nil, message.
 *   random_bytes(n)           -> n bytes from RAND_bytes, 1 <= n <= 65536 (else raises)
 *   uuid4()                   -> "xxxxxxxx-xxxx-4xxx-[89ab]xxx-xxxxxxxxxxxx" (lowercase)
 *   sha256(s), hmac_sha256(key, msg) -> raw 32-byte strings
 *   equals(a, b)              -> boolean; constant time in the contents (different lengths
 *                                are false without looking at the contents)
 *   to_hex(s) / from_hex(s)   -> lowercase hex; from_hex accepts either case
 *   to_base64 / from_base64   -> RFC 4648 standard alphabet, padded (padding required)
 *   to_base64url / from_base64url -> URL-safe alphabet, no padding ('=' rejected)
 *     The from_ functions return nil, message on odd length, bad characters, bad padding or
 *     non-zero unused trailing bits (only the canonical encoding is accepted).
 *   seal(plaintext [, aad])   -> 0x01 | 12-byte random nonce | ciphertext | 16-byte tag,
 *                                AES-256-GCM under the derived seal key; the version byte is
 *                                authenticated too. plaintext <= ENG_CRYPTO_SEAL_MAX.
 *   open(sealed [, aad])      -> plaintext | nil, "cannot open sealed data"
 *   sign(payload, ttl_s)      -> "v1.<b64url(json)>.<b64url(HMAC-SHA256(token key,
 *                                "v1." .. b64url(json)))>", json = payload (shallow copy)
 *                                plus "exp" = now_ms + ttl_s*1000 (eng_clock_now_ms).
 *                                1 <= ttl_s <= ENG_TOKEN_MAX_TTL_S; raises if the payload
 *                                cannot be encoded or the token would exceed ENG_TOKEN_MAX.
 *   verify(token)             -> payload table (with exp) | nil, "malformed" |
 *                                nil, "bad_signature" | nil, "expired" (now_ms >= exp)
 *   seal/open/sign/verify raise if the key store (keys.h) is not ready. */
#ifndef ENG_LUA_CRYPTO_H
#define ENG_LUA_CRYPTO_H

#include <stddef.h>

#define ENG_CRYPTO_RANDOM_MAX 65536            /* random_bytes(n) upper bound */
#define ENG_CRYPTO_SEAL_MAX (64u * 1024 * 1024) /* largest plaintext seal() accepts */
#define ENG_TOKEN_MAX 4096                      /* longest token verify() accepts */
#define ENG_TOKEN_MAX_TTL_S (10LL * 366 * 24 * 3600)

/* Fills buf with n bytes straight from RAND_bytes (use this for secrets).
 * Returns 0 or ENG_ECRYPTO. */
int eng_crypto_random(void *buf, size_t n);

/* Writes a lowercase canonical UUID v4 and a NUL into out. Fast: bytes come from a small
 * per-thread pool refilled by RAND_bytes (reset in a forked child). Meant for identifiers
 * such as request ids, not for secrets. Returns 0 or ENG_ECRYPTO. Thread-safe. */
int eng_crypto_uuid4(char out[37]);

/* Hex: encode writes 2*n chars (no NUL) and returns that count. decode reads len chars
 * (either case) into out (>= len/2 bytes), sets *out_len; 0, or ENG_EPARSE with a static
 * *errmsg. */
size_t eng_crypto_hex_encode(const unsigned char *in, size_t n, char *out);
int eng_crypto_hex_decode(const char *s, size_t len, unsigned char *out, size_t *out_len,
                          const char **errmsg);

/* Base64 (url = 0: standard alphabet, padded) or base64url (url = 1: no padding).
 * ENG_CRYPTO_B64_ENCODED_LEN is exact for url = 0 and an upper bound for url = 1;
 * encode returns the number of chars written (no NUL). decode writes at most
 * ENG_CRYPTO_B64_DECODED_MAX(len) bytes; 0, or ENG_EPARSE with a static *errmsg.
 * Only the canonical encoding is accepted (padding exactly right, unused bits zero). */
#define ENG_CRYPTO_B64_ENCODED_LEN(n) (((n) + 2) / 3 * 4)
#define ENG_CRYPTO_B64_DECODED_MAX(len) ((len) / 4 * 3 + 3)
size_t eng_crypto_b64_encode(const unsigned char *in, size_t n, int url, char *out);
int eng_crypto_b64_decode(const char *s, size_t len, int url, unsigned char *out,
                          size_t *out_len, const char **errmsg);

#endif
