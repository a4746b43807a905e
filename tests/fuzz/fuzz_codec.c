/* fuzz_codec.c - libFuzzer target for the hex, base64 and base64url codecs (engine/crypto.c).
 *
 * The first byte picks the codec; the rest is decoded. Invariants: a decode never writes past
 * the bound its header gives, and only canonical text decodes, so whatever decodes encodes back
 * to exactly the input (for hex: in lower case); encoding any bytes decodes back to them. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "crypto.h"
#include "error.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static char lower(char c) { return c >= 'A' && c <= 'Z' ? (char)(c + 32) : c; }

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < 1)
    return 0;
  int kind = data[0] % 3; /* 0 hex, 1 base64, 2 base64url */
  const char *s = (const char *)data + 1;
  size_t n = size - 1;
  size_t cap = kind == 0 ? n / 2 + 1 : ENG_CRYPTO_B64_DECODED_MAX(n) + 1;
  unsigned char *out = malloc(cap);
  char *back = malloc(2 * size + ENG_CRYPTO_B64_ENCODED_LEN(size) + 8); /* any encoding of data or out */
  if (out == NULL || back == NULL)
    goto out;
  size_t out_len = 0, back_len;
  const char *why = NULL;
  int rc = kind == 0 ? eng_crypto_hex_decode(s, n, out, &out_len, &why)
                     : eng_crypto_b64_decode(s, n, kind == 2, out, &out_len, &why);
  if (rc != 0) {
    if (why == NULL)
      abort(); /* a refusal always says why */
    goto roundtrip;
  }
  if (out_len >= cap)
    abort();
  back_len =
      kind == 0 ? eng_crypto_hex_encode(out, out_len, back) : eng_crypto_b64_encode(out, out_len, kind == 2, back);
  if (back_len != n)
    abort();
  for (size_t i = 0; i < n; i++)
    if ((kind == 0 ? lower(s[i]) : s[i]) != back[i])
      abort();
roundtrip:
  /* Any bytes encode, and decode back to themselves. */
  back_len = kind == 0 ? eng_crypto_hex_encode(data, size, back) : eng_crypto_b64_encode(data, size, kind == 2, back);
  free(out);
  out = malloc(size + 1);
  if (out == NULL)
    goto out;
  out_len = 0;
  rc = kind == 0 ? eng_crypto_hex_decode(back, back_len, out, &out_len, &why)
                 : eng_crypto_b64_decode(back, back_len, kind == 2, out, &out_len, &why);
  if (rc != 0 || out_len != size || memcmp(out, data, size) != 0)
    abort();
out:
  free(out);
  free(back);
  return 0;
}
