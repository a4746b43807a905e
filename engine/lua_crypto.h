/* lua_crypto.h - the Lua module "engine.crypto", a binding over crypto.h (primitives) and
 * keys.h (the server key), plus the signed-token format, which joins them with engine.json.
 *
 * Lua API (eng_luaopen_crypto, also declared in lua_common.h). Wrong argument types raise;
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
 *   open(sealed [, aad])      -> plaintext | nil, "cannot open sealed data"; tries the current
 *                                key, then each previous one (keys.h)
 *   reseal(sealed [, aad])    -> sealed again under the current key | false (the current key
 *                                sealed it) | nil, "cannot open sealed data"
 *   sealed_column(table, column [, aad]) declares a column of crypto.seal output for
 *                                `apiengine rekey` (lua_rekey.h); aad: nil, a column name of the
 *                                row, or function(row) -> string
 *   sign(payload, ttl_s)      -> "v1.<b64url(json)>.<b64url(HMAC-SHA256(token key,
 *                                "v1." .. b64url(json)))>", json = payload (shallow copy)
 *                                plus "exp" = now_ms + ttl_s*1000 (eng_clock_now_ms).
 *                                1 <= ttl_s <= ENG_TOKEN_MAX_TTL_S; raises if the payload
 *                                cannot be encoded or the token would exceed ENG_TOKEN_MAX.
 *   verify(token)             -> (signature checked under the current key, then each previous one)
 *                                payload table (with exp) | nil, "malformed" |
 *                                nil, "bad_signature" | nil, "expired" (now_ms >= exp)
 *   seal/open/sign/verify raise if the key store (keys.h) is not ready. */
#ifndef ENG_LUA_CRYPTO_H
#define ENG_LUA_CRYPTO_H

#include <lua.h>

/* The primitives are in crypto.h; included so files that reached them through this header
 * (lua_runtime.c's request id) keep building until they include crypto.h themselves. */
#include "crypto.h"

#define ENG_CRYPTO_RANDOM_MAX 65536 /* random_bytes(n) upper bound */
#define ENG_TOKEN_MAX 4096          /* longest token verify() accepts */
#define ENG_TOKEN_MAX_TTL_S (10LL * 366 * 24 * 3600)
#define ENG_SEALED_COLUMNS "engine.crypto.sealed_columns" /* registry: crypto.sealed_column's list */

/* Opener for "engine.crypto": pushes the module table, returns 1. */
int eng_luaopen_crypto(lua_State *L);

#endif
