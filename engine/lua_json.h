/* lua_json.h - the JSON codec behind `engine.json`, working directly on the Lua stack.
 *
 * Mapping (both directions):
 *   JSON null   <-> engine.json.null (the light userdata NULL, see lua_common.h); Lua nil encodes as null
 *   true/false  <-> booleans
 *   numbers     <-> integers (math.type "integer") when the literal has no fraction or exponent and
 *                   fits in int64, floats otherwise; floats always encode with a '.' or an 'e'
 *   strings     <-> strings, which must be valid UTF-8 (no overlongs, no surrogates, <= U+10FFFF)
 *   arrays      <-> tables carrying the ENG_JSON_ARRAY_MT metatable (the decoder sets it), or plain
 *                   tables whose keys are exactly 1..n
 *   objects     <-> tables with string keys; encoded with keys sorted byte-wise (deterministic)
 * An empty plain table encodes as {}; use engine.json.array() for [].
 *
 * Neither function calls Lua code (no metamethods are consulted) and neither keeps a reference
 * to the Lua state after it returns. */
#ifndef ENG_LUA_JSON_H
#define ENG_LUA_JSON_H

#include <stddef.h>

#include <lua.h>

#include "buf.h"

/* Tables nested deeper than this (counting the outermost as 1) are refused when encoding; this
 * is also how a cycle is detected. */
#define ENG_JSON_MAX_ENCODE_DEPTH 128
/* Arrays/objects nested deeper than this are refused when decoding (before any C stack risk). */
#define ENG_JSON_MAX_DECODE_DEPTH 512
/* A number literal longer than this many bytes is refused when decoding. */
#define ENG_JSON_MAX_NUMBER_LEN 1024

/* Encodes the Lua value at idx (absolute or relative) as JSON, appending to out.
 * Returns 0, or a negative ENG_E* code with *errmsg set to a static message:
 *   ENG_EINVAL  the value cannot be represented ("cannot encode a function",
 *               "invalid UTF-8 in string", "table key must be a string",
 *               "cannot encode NaN or infinity", ...)
 *   ENG_ETOOBIG "cycle or nesting deeper than 128"
 *   ENG_ENOMEM  out grew beyond memory, or the Lua stack could not grow
 * On error, out may hold partial output: the caller resets it. The Lua stack is left as it was.
 * Never raises a Lua error except out-of-memory from Lua itself (and then leaks nothing). */
int eng_json_encode(lua_State *L, int idx, eng_buf *out, const char **errmsg);

/* Decodes the JSON text [text, text+len) (need not be NUL-terminated; borrowed for the call).
 * On success pushes the value and returns 1. On invalid input pushes nil and a message
 * "invalid JSON at byte N: <what>" (N is the 0-based offset of the offending byte) and returns 2.
 * Raises only Lua's out-of-memory error. */
int eng_json_decode(lua_State *L, const char *text, size_t len);

/* Pushes the module table: encode, decode, null, array, is_array. Also declared in lua_common.h. */
int eng_luaopen_json(lua_State *L);

#endif
