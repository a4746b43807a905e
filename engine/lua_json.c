/* lua_json.c - JSON encode/decode against the Lua stack (see lua_json.h).
 *
 * Both directions are recursive descent in C with explicit depth limits, so hostile input can
 * neither overflow the C stack nor exhaust the Lua stack. Memory discipline: nothing here holds
 * malloc'd memory across a call that may raise. The encoder writes into the caller's eng_buf
 * (owned by the caller) and keeps its key-sorting scratch on the C stack, moving to a Lua
 * userdata on the Lua stack only when an encode needs more keys than fit there; the
 * decoder builds unescaped strings in a luaL_Buffer. A Lua memory error therefore leaks nothing.
 *
 * Assumes the C locale for numbers ('.' as the decimal point), like the rest of the engine. */
#include "lua_json.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>

#include "error.h"
#include "lua_common.h"
#include "text.h"

/* The Lua module's reusable encode buffer is released after a call that grew it beyond this. */
#define ENCODE_BUF_KEEP (64 * 1024)
#define ENCODE_BOX_MT "engine.json.encode_buffer"

/* ---------------------------------------------------------------------------------------------
 * UTF-8 */

/* Writes code point cp (a scalar value, not a surrogate) as UTF-8 to o; returns the length. */
static size_t utf8_put(unsigned long cp, char *o) {
  if (cp < 0x80) {
    o[0] = (char)cp;
    return 1;
  }
  if (cp < 0x800) {
    o[0] = (char)(0xC0 | (cp >> 6));
    o[1] = (char)(0x80 | (cp & 0x3F));
    return 2;
  }
  if (cp < 0x10000) {
    o[0] = (char)(0xE0 | (cp >> 12));
    o[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
    o[2] = (char)(0x80 | (cp & 0x3F));
    return 3;
  }
  o[0] = (char)(0xF0 | (cp >> 18));
  o[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
  o[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
  o[3] = (char)(0x80 | (cp & 0x3F));
  return 4;
}

/* ---------------------------------------------------------------------------------------------
 * Encoder */

typedef struct keyref {
  const char *s; /* owned by a table key of the value being encoded: stays valid, nothing mutates it */
  size_t len;
  int slot; /* absolute stack index of the value, or 0: look it up by key (encode_table says when) */
} keyref;

/* Keys an encode can sort without allocating: enough for the objects APIs usually answer with
 * (all open objects together), so most encodes create no garbage for the scratch. */
#define ENG_JSON_LOCAL_KEYS 32

/* An object's first this many values stay on the Lua stack while it is encoded, so its members
 * need no second lookup by key (re-hashing each key string); the rest are looked up. Bounded so
 * that a huge object cannot exhaust the Lua stack (two slots per value kept). */
#define ENG_JSON_STACK_VALUES 32

/* Up to this many keys are sorted in place (insertion sort); more go to qsort. */
#define ENG_JSON_INSERTION_SORT_MAX 16
typedef struct encoder {
  lua_State *L;
  eng_buf *out;
  const char *errmsg;
  const void *mt; /* the array metatable (lua_topointer), fetched when a table first has one */
  int mt_fetched;
  int scratch;    /* absolute stack index of the keyref userdata (nil until local overflows) */
  keyref *keys;   /* a stack of keys, one segment per open object: first eng_json_encode's local
                      array (not zeroed: only keys[0 .. nkeys) are read), then the userdata's memory */
  size_t nkeys;   /* keys in use */
  size_t capkeys; /* keys that fit */
  int depth;      /* tables currently open */
} encoder;

static int encode_value(encoder *e, int idx);

static int enc_fail(encoder *e, int rc, const char *msg) {
  e->errmsg = msg;
  return rc;
}

/* Appends n bytes. Most appends are a few bytes into a buffer with room: those are copied here,
 * keeping eng_buf's trailing NUL, instead of going through eng_buf_append. */
static inline int put(encoder *e, const char *s, size_t n) {
  eng_buf *b = e->out;
  if (b->cap - b->len > n) {
    memcpy(b->data + b->len, s, n);
    b->len += n;
    b->data[b->len] = '\0';
    return 0;
  }
  if (eng_buf_append(b, s, n) != 0)
    return enc_fail(e, ENG_ENOMEM, "out of memory");
  return 0;
}

#define PUT_LIT(e, lit) put((e), (lit), sizeof(lit) - 1)

/* Grows the key scratch past the local array by replacing the userdata in its stack slot (the old one
 * becomes garbage). */
static int keys_push(encoder *e, const char *s, size_t len, int slot) {
  if (e->nkeys == e->capkeys) {
    size_t cap = e->capkeys * 2;
    if (cap > SIZE_MAX / sizeof(keyref))
      return enc_fail(e, ENG_ENOMEM, "out of memory");
    keyref *k = lua_newuserdatauv(e->L, cap * sizeof(keyref), 0);
    if (e->nkeys)
      memcpy(k, e->keys, e->nkeys * sizeof(keyref));
    lua_replace(e->L, e->scratch);
    e->keys = k;
    e->capkeys = cap;
  }
  e->keys[e->nkeys].s = s;
  e->keys[e->nkeys].len = len;
  e->keys[e->nkeys].slot = slot;
  e->nkeys++;
  return 0;
}

/* Byte-wise order, a proper prefix first. */
static int keyref_cmp(const void *a, const void *b) {
  const keyref *x = a, *y = b;
  size_t n = x->len < y->len ? x->len : y->len;
  int c = n ? memcmp(x->s, y->s, n) : 0;
  if (c != 0)
    return c;
  return (x->len > y->len) - (x->len < y->len);
}

/* Bytes that stand for themselves inside a JSON string: printable ASCII but '"' and '\\'. */
static const unsigned char plain_byte[256] = {
    ['\x20'] = 1, ['!'] = 1, ['#'] = 1, ['$'] = 1,    ['%'] = 1, ['&'] = 1, ['\''] = 1, ['('] = 1, [')'] = 1, ['*'] = 1,
    ['+'] = 1,    [','] = 1, ['-'] = 1, ['.'] = 1,    ['/'] = 1, ['0'] = 1, ['1'] = 1,  ['2'] = 1, ['3'] = 1, ['4'] = 1,
    ['5'] = 1,    ['6'] = 1, ['7'] = 1, ['8'] = 1,    ['9'] = 1, [':'] = 1, [';'] = 1,  ['<'] = 1, ['='] = 1, ['>'] = 1,
    ['?'] = 1,    ['@'] = 1, ['A'] = 1, ['B'] = 1,    ['C'] = 1, ['D'] = 1, ['E'] = 1,  ['F'] = 1, ['G'] = 1, ['H'] = 1,
    ['I'] = 1,    ['J'] = 1, ['K'] = 1, ['L'] = 1,    ['M'] = 1, ['N'] = 1, ['O'] = 1,  ['P'] = 1, ['Q'] = 1, ['R'] = 1,
    ['S'] = 1,    ['T'] = 1, ['U'] = 1, ['V'] = 1,    ['W'] = 1, ['X'] = 1, ['Y'] = 1,  ['Z'] = 1, ['['] = 1, [']'] = 1,
    ['^'] = 1,    ['_'] = 1, ['`'] = 1, ['a'] = 1,    ['b'] = 1, ['c'] = 1, ['d'] = 1,  ['e'] = 1, ['f'] = 1, ['g'] = 1,
    ['h'] = 1,    ['i'] = 1, ['j'] = 1, ['k'] = 1,    ['l'] = 1, ['m'] = 1, ['n'] = 1,  ['o'] = 1, ['p'] = 1, ['q'] = 1,
    ['r'] = 1,    ['s'] = 1, ['t'] = 1, ['u'] = 1,    ['v'] = 1, ['w'] = 1, ['x'] = 1,  ['y'] = 1, ['z'] = 1, ['{'] = 1,
    ['|'] = 1,    ['}'] = 1, ['~'] = 1, ['\x7f'] = 1,
};

/* Most strings an API answers with (keys, ids, names, e-mail addresses, timestamps) are plain
 * ASCII: those are copied between quotes in one go. Anything else (escapes, UTF-8 to check) goes
 * to eng_json_escape, which owns the rules. */
/* Sorts keys[0..n) by keyref_cmp: insertion sort for the few keys of a typical object (no
 * indirect calls), qsort past ENG_JSON_INSERTION_SORT_MAX. */
static void sort_keys(keyref *keys, size_t n) {
  if (n > ENG_JSON_INSERTION_SORT_MAX) {
    qsort(keys, n, sizeof(keyref), keyref_cmp);
    return;
  }
  for (size_t i = 1; i < n; i++) {
    keyref k = keys[i];
    size_t j = i;
    while (j > 0 && keyref_cmp(&keys[j - 1], &k) > 0) {
      keys[j] = keys[j - 1];
      j--;
    }
    keys[j] = k;
  }
}

static int encode_string(encoder *e, const char *str, size_t len) {
  const unsigned char *p = (const unsigned char *)str;
  size_t i = 0;
  while (i < len && plain_byte[p[i]])
    i++;
  if (i == len) {
    eng_buf *b = e->out;
    if (eng_buf_reserve(b, len + 2) != 0)
      return enc_fail(e, ENG_ENOMEM, "out of memory");
    char *o = b->data + b->len;
    o[0] = '"';
    memcpy(o + 1, str, len);
    o[len + 1] = '"';
    o[len + 2] = '\0';
    b->len += len + 2;
    return 0;
  }
  int rc = eng_json_escape(e->out, str, len, ENG_JSON_STRICT);
  if (rc == ENG_EINVAL)
    return enc_fail(e, rc, "invalid UTF-8 in string");
  if (rc != 0)
    return enc_fail(e, ENG_ENOMEM, "out of memory");
  return 0;
}

/* Shortest of %.15g/%.16g/%.17g that reads back as the same double (%.17g always does), then
 * made to look like a float (".0" appended) so that decoding gives a float back. */
static int encode_float(encoder *e, double d) {
  static const char *const fmts[] = {"%.15g", "%.16g", "%.17g"};
  char tmp[48];
  int n = 0;
  if (!isfinite(d))
    return enc_fail(e, ENG_EINVAL, "cannot encode NaN or infinity");
  for (size_t i = 0; i < sizeof fmts / sizeof fmts[0]; i++) {
    n = snprintf(tmp, sizeof tmp - 2, fmts[i], d);
    if (strtod(tmp, NULL) == d)
      break;
  }
  if (n <= 0 || (size_t)n >= sizeof tmp - 2)
    return enc_fail(e, ENG_EINVAL, "cannot format number");
  if (strpbrk(tmp, ".e") == NULL) {
    tmp[n++] = '.';
    tmp[n++] = '0';
  }
  return put(e, tmp, (size_t)n);
}

/* The decimal digits of v (as %lld prints it) without snprintf, which cost more than the rest
 * of encoding a small row. */
static int encode_integer(encoder *e, lua_Integer v) {
  char tmp[24];
  char *end = tmp + sizeof tmp, *o = end;
  /* Negated as unsigned: well defined for the most negative value too. */
  unsigned long long u = v < 0 ? 0ULL - (unsigned long long)v : (unsigned long long)v;
  do {
    *--o = (char)('0' + u % 10);
    u /= 10;
  } while (u != 0);
  if (v < 0)
    *--o = '-';
  return put(e, o, (size_t)(end - o));
}

static int encode_number(encoder *e, int idx) {
  if (lua_isinteger(e->L, idx))
    return encode_integer(e, lua_tointeger(e->L, idx));
  return encode_float(e, (double)lua_tonumber(e->L, idx));
}

/* Elements 1..n of the table at idx, a missing one as null. */
static int encode_array(encoder *e, int idx, lua_Unsigned n) {
  lua_State *L = e->L;
  int rc;
  if ((rc = PUT_LIT(e, "[")) != 0)
    return rc;
  for (lua_Unsigned i = 1; i <= n; i++) {
    if (i > 1 && (rc = PUT_LIT(e, ",")) != 0)
      return rc;
    lua_rawgeti(L, idx, (lua_Integer)i);
    rc = encode_value(e, lua_gettop(L));
    lua_pop(L, 1);
    if (rc != 0)
      return rc;
  }
  return PUT_LIT(e, "]");
}

/* The keys of the object being encoded are keys[base .. base+count), already sorted. Nested
 * objects push their keys above and may move the scratch, so it is re-read on every step. */
static int encode_object(encoder *e, int idx, size_t base, size_t count) {
  lua_State *L = e->L;
  int rc;
  if ((rc = PUT_LIT(e, "{")) != 0)
    return rc;
  for (size_t i = 0; i < count; i++) {
    keyref k = e->keys[base + i];
    if (i > 0 && (rc = PUT_LIT(e, ",")) != 0)
      return rc;
    if ((rc = encode_string(e, k.s, k.len)) != 0 || (rc = PUT_LIT(e, ":")) != 0)
      return rc;
    if (k.slot != 0) {
      rc = encode_value(e, k.slot);
    } else {
      lua_pushlstring(L, k.s, k.len);
      lua_rawget(L, idx);
      rc = encode_value(e, lua_gettop(L));
      lua_pop(L, 1);
    }
    if (rc != 0)
      return rc;
  }
  return PUT_LIT(e, "}");
}

/* A table is an array when it carries the array metatable, or when its keys are exactly 1..n;
 * otherwise an object, and then every key must be a string. One traversal classifies the keys
 * and collects the string ones for sorting; the first ENG_JSON_STACK_VALUES pairs stay on the
 * stack (key, then value) for encode_object, and the stack goes back to its height at the end. */
static int encode_table(encoder *e, int idx) {
  lua_State *L = e->L;
  size_t base = e->nkeys, count = 0;
  lua_Integer maxk = 0;
  int all_pos_int = 1, all_str = 1, rc;
  int top = lua_gettop(L);

  if (e->depth >= ENG_JSON_MAX_ENCODE_DEPTH)
    return enc_fail(e, ENG_ETOOBIG, "cycle or nesting deeper than 128");
  if (!lua_checkstack(L, 4))
    return enc_fail(e, ENG_ENOMEM, "Lua stack exhausted");
  e->depth++;

  if (lua_getmetatable(L, idx)) {
    if (!e->mt_fetched) { /* the registry keeps it alive, so its address stays valid */
      luaL_getmetatable(L, ENG_JSON_ARRAY_MT);
      e->mt = lua_topointer(L, -1);
      e->mt_fetched = e->mt != NULL;
      lua_pop(L, 1);
    }
    int is_array = e->mt != NULL && lua_topointer(L, -1) == e->mt;
    lua_pop(L, 1);
    if (is_array) {
      rc = encode_array(e, idx, lua_rawlen(L, idx));
      goto done;
    }
  }

  lua_pushnil(L);
  while (lua_next(L, idx) != 0) {
    int slot = 0;
    count++;
    if (lua_type(L, -2) == LUA_TSTRING) {
      all_pos_int = 0;
      if (all_str) {
        size_t kl;
        const char *ks = lua_tolstring(L, -2, &kl); /* a string already: no conversion */
        if (count <= ENG_JSON_STACK_VALUES && lua_checkstack(L, 3))
          slot = lua_gettop(L);
        if ((rc = keys_push(e, ks, kl, slot)) != 0)
          goto done;
      }
    } else {
      all_str = 0;
      if (lua_isinteger(L, -2)) {
        lua_Integer k = lua_tointeger(L, -2);
        if (k < 1)
          all_pos_int = 0;
        else if (k > maxk)
          maxk = k;
      } else {
        all_pos_int = 0;
      }
    }
    if (slot != 0)
      lua_pushvalue(L, -2); /* keeps key and value where they are; the copy of the key goes on */
    else
      lua_pop(L, 1);
  }

  if (count == 0) {
    rc = PUT_LIT(e, "{}");
  } else if (all_pos_int && (lua_Unsigned)maxk == count) {
    rc = encode_array(e, idx, (lua_Unsigned)count);
  } else if (!all_str) {
    rc = enc_fail(e, ENG_EINVAL, "table key must be a string");
  } else {
    sort_keys(e->keys + base, count);
    rc = encode_object(e, idx, base, count);
  }

done:
  lua_settop(L, top);
  e->nkeys = base;
  e->depth--;
  return rc;
}

static int encode_value(encoder *e, int idx) {
  lua_State *L = e->L;
  switch (lua_type(L, idx)) {
  case LUA_TNONE:
  case LUA_TNIL:
    return PUT_LIT(e, "null");
  case LUA_TBOOLEAN:
    return lua_toboolean(L, idx) ? PUT_LIT(e, "true") : PUT_LIT(e, "false");
  case LUA_TNUMBER:
    return encode_number(e, idx);
  case LUA_TSTRING: {
    size_t len;
    const char *s = lua_tolstring(L, idx, &len);
    return encode_string(e, s, len);
  }
  case LUA_TTABLE:
    return encode_table(e, idx);
  case LUA_TLIGHTUSERDATA:
    if (lua_touserdata(L, idx) == NULL)
      return PUT_LIT(e, "null");
    return enc_fail(e, ENG_EINVAL, "cannot encode a light userdata");
  case LUA_TFUNCTION:
    return enc_fail(e, ENG_EINVAL, "cannot encode a function");
  case LUA_TUSERDATA:
    return enc_fail(e, ENG_EINVAL, "cannot encode a userdata");
  case LUA_TTHREAD:
    return enc_fail(e, ENG_EINVAL, "cannot encode a thread");
  default:
    return enc_fail(e, ENG_EINVAL, "cannot encode this value");
  }
}

int eng_json_encode(lua_State *L, int idx, eng_buf *out, const char **errmsg) {
  int top = lua_gettop(L);
  encoder e;
  keyref local[ENG_JSON_LOCAL_KEYS];
  int rc;

  memset(&e, 0, sizeof e);
  e.L = L;
  e.out = out;
  e.keys = local;
  e.capkeys = ENG_JSON_LOCAL_KEYS;
  idx = lua_absindex(L, idx);
  if (!lua_checkstack(L, 8)) {
    if (errmsg)
      *errmsg = "Lua stack exhausted";
    return ENG_ENOMEM;
  }
  lua_pushnil(L);
  e.scratch = lua_gettop(L);

  rc = encode_value(&e, idx);
  lua_settop(L, top);
  if (rc != 0 && errmsg)
    *errmsg = e.errmsg;
  return rc;
}

/* ---------------------------------------------------------------------------------------------
 * Decoder */

typedef struct decoder {
  lua_State *L;
  const unsigned char *start, *p, *end;
  const char *err; /* static description of the first error */
  size_t errpos;   /* its 0-based byte offset */
  int depth;       /* arrays/objects currently open */
  int mt;          /* absolute stack index of the array metatable */
} decoder;

static int parse_value(decoder *d);

static int dec_fail(decoder *d, const unsigned char *at, const char *what) {
  d->err = what;
  d->errpos = (size_t)(at - d->start);
  return -1;
}

static void skip_ws(decoder *d) {
  const unsigned char *p = d->p, *end = d->end;
  while (p < end && (*p == ' ' || *p == '\n' || *p == '\r' || *p == '\t'))
    p++;
  d->p = p;
}

static int is_digit(const unsigned char *p, const unsigned char *end) { return p < end && *p >= '0' && *p <= '9'; }

static long hex4(const unsigned char *p) {
  long v = 0;
  for (int i = 0; i < 4; i++) {
    unsigned c = p[i];
    if (c >= '0' && c <= '9')
      v = v * 16 + (long)(c - '0');
    else if ((c | 0x20) >= 'a' && (c | 0x20) <= 'f')
      v = v * 16 + (long)((c | 0x20) - 'a' + 10);
    else
      return -1;
  }
  return v;
}

/* Strictly the RFC 8259 grammar. Integers that fit int64 stay integers; everything else goes
 * through strtod on a bounded copy. noinline: keeps the copy out of parse_value's recursive frames. */
__attribute__((noinline)) static int parse_number(decoder *d) {
  const unsigned char *s = d->p, *p = d->p, *end = d->end;
  int is_float = 0;
  char tmp[ENG_JSON_MAX_NUMBER_LEN + 1];
  size_t n;
  double v;

  if (*p == '-')
    p++;
  if (!is_digit(p, end))
    return dec_fail(d, p, "expected a digit");
  if (*p == '0') {
    p++;
    if (is_digit(p, end))
      return dec_fail(d, p, "leading zero in number");
  } else {
    while (is_digit(p, end))
      p++;
  }
  if (p < end && *p == '.') {
    is_float = 1;
    p++;
    if (!is_digit(p, end))
      return dec_fail(d, p, "expected a digit after the decimal point");
    while (is_digit(p, end))
      p++;
  }
  if (p < end && (*p == 'e' || *p == 'E')) {
    is_float = 1;
    p++;
    if (p < end && (*p == '+' || *p == '-'))
      p++;
    if (!is_digit(p, end))
      return dec_fail(d, p, "expected a digit in the exponent");
    while (is_digit(p, end))
      p++;
  }
  d->p = p;

  if (!is_float) {
    const unsigned char *q = s;
    int neg = *q == '-';
    uint64_t mag = 0;
    int overflow = 0;
    if (neg)
      q++;
    for (; q < p; q++) {
      unsigned dg = (unsigned)(*q - '0');
      if (mag > (UINT64_MAX - dg) / 10) {
        overflow = 1;
        break;
      }
      mag = mag * 10 + dg;
    }
    if (!overflow && !neg && mag <= (uint64_t)LUA_MAXINTEGER) {
      lua_pushinteger(d->L, (lua_Integer)mag);
      return 0;
    }
    if (!overflow && neg && mag <= (uint64_t)LUA_MAXINTEGER + 1) {
      lua_pushinteger(d->L, mag == (uint64_t)LUA_MAXINTEGER + 1 ? LUA_MININTEGER : -(lua_Integer)mag);
      return 0;
    }
  }

  n = (size_t)(p - s);
  if (n > ENG_JSON_MAX_NUMBER_LEN)
    return dec_fail(d, s, "number too long");
  memcpy(tmp, s, n);
  tmp[n] = '\0';
  v = strtod(tmp, NULL);
  if (isinf(v))
    return dec_fail(d, s, "number out of range");
  lua_pushnumber(d->L, (lua_Number)v);
  return 0;
}

/* A string without escapes is pushed straight from the input. Otherwise the closing quote is
 * found first, which bounds the unescaped length (every escape shrinks), and the string is
 * built in a luaL_Buffer of that size. noinline: the luaL_Buffer stays out of recursive frames. */
__attribute__((noinline)) static int parse_string(decoder *d) {
  const unsigned char *open = d->p, *s = d->p + 1, *p = s, *q, *end = d->end;
  luaL_Buffer b;
  char *w, *o;

  while (p < end) {
    unsigned c = *p;
    if (c == '"') {
      lua_pushlstring(d->L, (const char *)s, (size_t)(p - s));
      d->p = p + 1;
      return 0;
    }
    if (c == '\\')
      break;
    if (c < 0x20)
      return dec_fail(d, p, "control character in string");
    if (c < 0x80) {
      p++;
    } else {
      size_t sl = eng_utf8_len(p, (size_t)(end - p));
      if (sl == 0)
        return dec_fail(d, p, "invalid UTF-8 in string");
      p += sl;
    }
  }
  if (p == end)
    return dec_fail(d, open, "unterminated string");

  for (q = p; q < end && *q != '"';) {
    if (*q == '\\') {
      if (end - q < 2)
        return dec_fail(d, open, "unterminated string");
      q += 2;
    } else {
      q++;
    }
  }
  if (q >= end)
    return dec_fail(d, open, "unterminated string");

  w = luaL_buffinitsize(d->L, &b, (size_t)(q - s));
  memcpy(w, s, (size_t)(p - s));
  o = w + (p - s);
  while (p < q) {
    unsigned c = *p;
    if (c == '\\') {
      const unsigned char *esc = p++; /* p < q: the scan above skipped the escaped byte */
      switch (*p) {
      case '"':
        *o++ = '"';
        break;
      case '\\':
        *o++ = '\\';
        break;
      case '/':
        *o++ = '/';
        break;
      case 'b':
        *o++ = '\b';
        break;
      case 'f':
        *o++ = '\f';
        break;
      case 'n':
        *o++ = '\n';
        break;
      case 'r':
        *o++ = '\r';
        break;
      case 't':
        *o++ = '\t';
        break;
      case 'u': {
        long cp = q - p > 4 ? hex4(p + 1) : -1, lo;
        if (cp < 0)
          return dec_fail(d, esc, "invalid \\u escape");
        p += 4;
        if (cp >= 0xDC00 && cp <= 0xDFFF)
          return dec_fail(d, esc, "lone surrogate in \\u escape");
        if (cp >= 0xD800 && cp <= 0xDBFF) {
          if (q - p <= 6 || p[1] != '\\' || p[2] != 'u' || (lo = hex4(p + 3)) < 0xDC00 || lo > 0xDFFF)
            return dec_fail(d, esc, "lone surrogate in \\u escape");
          cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
          p += 6;
        }
        o += utf8_put((unsigned long)cp, o);
        break;
      }
      default:
        return dec_fail(d, esc, "invalid escape in string");
      }
      p++;
    } else if (c < 0x20) {
      return dec_fail(d, p, "control character in string");
    } else if (c < 0x80) {
      *o++ = (char)c;
      p++;
    } else {
      size_t sl = eng_utf8_len(p, (size_t)(q - p));
      if (sl == 0)
        return dec_fail(d, p, "invalid UTF-8 in string");
      memcpy(o, p, sl);
      o += sl;
      p += sl;
    }
  }
  luaL_pushresultsize(&b, (size_t)(o - w));
  d->p = q + 1;
  return 0;
}

static int literal(decoder *d, const char *word, size_t n) {
  if ((size_t)(d->end - d->p) < n || memcmp(d->p, word, n) != 0)
    return dec_fail(d, d->p, "invalid literal");
  d->p += n;
  return 0;
}

static int open_container(decoder *d) {
  if (d->depth >= ENG_JSON_MAX_DECODE_DEPTH)
    return dec_fail(d, d->p, "nesting deeper than 512");
  if (!lua_checkstack(d->L, 4))
    return dec_fail(d, d->p, "nesting too deep for the Lua stack");
  d->depth++;
  d->p++;
  return 0;
}

static int parse_array(decoder *d) {
  lua_State *L = d->L;
  if (open_container(d) != 0)
    return -1;
  lua_createtable(L, 0, 0);
  lua_pushvalue(L, d->mt);
  lua_setmetatable(L, -2);
  skip_ws(d);
  if (d->p < d->end && *d->p == ']') {
    d->p++;
    d->depth--;
    return 0;
  }
  for (lua_Integer i = 1;; i++) {
    if (parse_value(d) != 0)
      return -1;
    lua_rawseti(L, -2, i);
    skip_ws(d);
    if (d->p == d->end)
      return dec_fail(d, d->p, "unexpected end of input");
    if (*d->p == ']')
      break;
    if (*d->p != ',')
      return dec_fail(d, d->p, "expected ',' or ']'");
    d->p++;
  }
  d->p++;
  d->depth--;
  return 0;
}

/* An object's first ENG_JSON_STAGE_PAIRS members wait on the Lua stack until its size is known
 * (or that many have come), then go into a table made with room for them: filled one by one, a
 * table of three keys was rehashed three times, which cost more than parsing it (a token's
 * claims, decoded on every authenticated request). */
#define ENG_JSON_STAGE_PAIRS 16

/* Makes the object's table from the n pairs staged above base (room for size keys) and puts it
 * at base + 1 in their place; returns that index. */
static int table_from_stage(lua_State *L, int base, int n, int size) {
  lua_createtable(L, 0, size);
  for (int i = 0; i < n; i++) {
    lua_pushvalue(L, base + 1 + 2 * i);
    lua_pushvalue(L, base + 2 + 2 * i);
    lua_rawset(L, -3); /* in document order: a duplicate key overwrites, the last one wins */
  }
  lua_replace(L, base + 1);
  lua_settop(L, base + 1);
  return base + 1;
}

static int parse_object(decoder *d) {
  lua_State *L = d->L;
  if (open_container(d) != 0)
    return -1;
  int base = lua_gettop(L), staged = 0, table = 0; /* table: its stack index once made */
  if (!lua_checkstack(L, 2 * ENG_JSON_STAGE_PAIRS + 2)) {
    lua_createtable(L, 0, 0);
    table = lua_gettop(L);
  }
  skip_ws(d);
  if (d->p < d->end && *d->p == '}') {
    if (!table)
      lua_createtable(L, 0, 0);
    d->p++;
    d->depth--;
    return 0;
  }
  for (;;) {
    skip_ws(d);
    if (d->p == d->end)
      return dec_fail(d, d->p, "unexpected end of input");
    if (*d->p != '"')
      return dec_fail(d, d->p, "expected a string key");
    if (parse_string(d) != 0)
      return -1;
    skip_ws(d);
    if (d->p == d->end)
      return dec_fail(d, d->p, "unexpected end of input");
    if (*d->p != ':')
      return dec_fail(d, d->p, "expected ':'");
    d->p++;
    if (parse_value(d) != 0)
      return -1;
    if (table)
      lua_rawset(L, table); /* a duplicate key overwrites: the last one wins */
    else if (++staged == ENG_JSON_STAGE_PAIRS)
      table = table_from_stage(L, base, staged, 2 * ENG_JSON_STAGE_PAIRS);
    skip_ws(d);
    if (d->p == d->end)
      return dec_fail(d, d->p, "unexpected end of input");
    if (*d->p == '}')
      break;
    if (*d->p != ',')
      return dec_fail(d, d->p, "expected ',' or '}'");
    d->p++;
  }
  if (!table)
    table_from_stage(L, base, staged, staged);
  d->p++;
  d->depth--;
  return 0;
}

/* Pushes exactly one value and returns 0, or returns -1 with the error recorded (the stack may
 * then hold partial results; eng_json_decode discards them). */
static int parse_value(decoder *d) {
  skip_ws(d);
  if (d->p == d->end)
    return dec_fail(d, d->p, "unexpected end of input");
  switch (*d->p) {
  case '{':
    return parse_object(d);
  case '[':
    return parse_array(d);
  case '"':
    return parse_string(d);
  case 't':
    if (literal(d, "true", 4) != 0)
      return -1;
    lua_pushboolean(d->L, 1);
    return 0;
  case 'f':
    if (literal(d, "false", 5) != 0)
      return -1;
    lua_pushboolean(d->L, 0);
    return 0;
  case 'n':
    if (literal(d, "null", 4) != 0)
      return -1;
    eng_lua_pushnull(d->L);
    return 0;
  case '-':
  case '0':
  case '1':
  case '2':
  case '3':
  case '4':
  case '5':
  case '6':
  case '7':
  case '8':
  case '9':
    return parse_number(d);
  default:
    return dec_fail(d, d->p, "unexpected character");
  }
}

int eng_json_decode(lua_State *L, const char *text, size_t len) {
  int base = lua_gettop(L);
  decoder d;
  int rc;

  memset(&d, 0, sizeof d);
  d.L = L;
  d.start = d.p = (const unsigned char *)text;
  d.end = d.start + len;
  luaL_checkstack(L, 4, "JSON decode");
  eng_lua_push_array_mt(L);
  d.mt = base + 1;

  rc = parse_value(&d);
  if (rc == 0) {
    skip_ws(&d);
    if (d.p != d.end)
      rc = dec_fail(&d, d.p, "unexpected data after the value");
  }
  if (rc == 0) {
    lua_replace(L, base + 1); /* the value takes the metatable's slot */
    lua_settop(L, base + 1);
    return 1;
  }
  lua_settop(L, base);
  lua_pushnil(L);
  lua_pushfstring(L, "invalid JSON at byte %I: %s", (lua_Integer)d.errpos, d.err);
  return 2;
}

/* ---------------------------------------------------------------------------------------------
 * Lua module */

/* encode's reusable output buffer, an upvalue; freed by __gc. `busy` guards against re-entry
 * from a Lua finalizer that runs during an allocation inside encode and calls encode itself. */
typedef struct encode_box {
  eng_buf buf;
  int busy;
} encode_box;

static int encode_box_gc(lua_State *L) {
  encode_box *box = lua_touserdata(L, 1);
  eng_buf_free(&box->buf);
  return 0;
}

static encode_box *encode_box_new(lua_State *L) {
  encode_box *box = lua_newuserdatauv(L, sizeof *box, 0);
  memset(box, 0, sizeof *box);
  if (luaL_newmetatable(L, ENCODE_BOX_MT)) {
    lua_pushcfunction(L, encode_box_gc);
    lua_setfield(L, -2, "__gc");
  }
  lua_setmetatable(L, -2);
  return box;
}

/* encode(v) -> string; raises on a value that cannot be encoded (a programming error). */
static int l_encode(lua_State *L) {
  encode_box *box = lua_touserdata(L, lua_upvalueindex(1));
  const char *msg = "cannot encode";
  int rc;
  luaL_checkany(L, 1);
  lua_settop(L, 1);
  if (box->busy)
    box = encode_box_new(L);
  box->busy = 1;
  eng_buf_reset(&box->buf);
  if (lua_type(L, 1) == LUA_TSTRING) {
    /* Scripts that assemble JSON themselves encode one string at a time: that needs none of
     * eng_json_encode's stack set-up (a third of such a call). */
    encoder e = {.L = L, .out = &box->buf};
    size_t len;
    const char *str = lua_tolstring(L, 1, &len);
    rc = encode_string(&e, str, len);
    if (rc != 0)
      msg = e.errmsg;
  } else {
    rc = eng_json_encode(L, 1, &box->buf, &msg);
  }
  box->busy = 0;
  if (rc == 0)
    lua_pushlstring(L, box->buf.data, box->buf.len);
  if (box->buf.cap > ENCODE_BUF_KEEP)
    eng_buf_free(&box->buf);
  if (rc != 0)
    return luaL_error(L, "%s", msg);
  return 1;
}

/* decode(s) -> value | nil, message; raises when s is not a string. */
static int l_decode(lua_State *L) {
  size_t len;
  const char *s;
  luaL_checktype(L, 1, LUA_TSTRING);
  s = lua_tolstring(L, 1, &len);
  return eng_json_decode(L, s, len);
}

/* array([t]) -> t (or a new table) marked as a JSON array; replaces any metatable t had. */
static int l_array(lua_State *L) {
  if (lua_isnoneornil(L, 1)) {
    lua_settop(L, 0);
    lua_createtable(L, 0, 0);
  } else {
    luaL_checktype(L, 1, LUA_TTABLE);
    lua_settop(L, 1);
  }
  eng_lua_push_array_mt(L);
  lua_setmetatable(L, 1);
  return 1;
}

/* is_array(v) -> true when v is a table carrying the array metatable. */
static int l_is_array(lua_State *L) {
  int yes = 0;
  if (lua_type(L, 1) == LUA_TTABLE && lua_getmetatable(L, 1)) {
    luaL_getmetatable(L, ENG_JSON_ARRAY_MT);
    yes = lua_rawequal(L, -1, -2);
  }
  lua_pushboolean(L, yes);
  return 1;
}

int eng_luaopen_json(lua_State *L) {
  static const luaL_Reg fns[] = {
      {"decode", l_decode},
      {"array", l_array},
      {"is_array", l_is_array},
      {NULL, NULL},
  };
  eng_lua_push_array_mt(L);
  lua_pop(L, 1);
  luaL_newlib(L, fns);
  encode_box_new(L);
  lua_pushcclosure(L, l_encode, 1);
  lua_setfield(L, -2, "encode");
  eng_lua_pushnull(L);
  lua_setfield(L, -2, "null");
  return 1;
}
