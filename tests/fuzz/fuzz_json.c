/* fuzz_json.c - libFuzzer target for engine.json (engine/lua_json.c).
 *
 * Decodes arbitrary bytes; whatever decodes must encode (unless nested deeper than the encoder
 * allows), and the encoding must be a fixed point: decode(encode(v)) encodes to the same bytes.
 * Build: CC=clang cmake -DAPIENGINE_FUZZ=ON ... --target fuzz_json (see tests/c/json.cmake). */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>
#include <lua.h>

#include "buf.h"
#include "error.h"
#include "lua_json.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  static lua_State *L;
  eng_buf first = {0}, second = {0};
  const char *msg = NULL;
  int rc;

  if (L == NULL)
    L = luaL_newstate();
  lua_settop(L, 0);
  if (eng_json_decode(L, (const char *)data, size) != 1)
    goto cleanup;
  rc = eng_json_encode(L, 1, &first, &msg);
  if (rc == ENG_ETOOBIG)
    goto cleanup; /* legal: decode allows deeper nesting than encode */
  if (rc != 0) {
    fprintf(stderr, "decoded value failed to encode: %s\n", msg);
    abort();
  }
  if (eng_json_decode(L, first.data, first.len) != 1) {
    fprintf(stderr, "own output failed to decode: %s\n", lua_tostring(L, -1));
    abort();
  }
  if (eng_json_encode(L, -1, &second, &msg) != 0 || second.len != first.len ||
      memcmp(first.data, second.data, first.len) != 0) {
    fprintf(stderr, "encoding is not a fixed point\n");
    abort();
  }

cleanup:
  eng_buf_free(&first);
  eng_buf_free(&second);
  lua_settop(L, 0);
  return 0;
}
