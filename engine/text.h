/* text.h - small text helpers shared by the parsers and writers of the core:
 * hex digits (router, query strings, hex decoding), UTF-8 validation and the one
 * JSON string escaper (engine.json, JSON log lines, fallback error bodies). */
#ifndef ENG_TEXT_H
#define ENG_TEXT_H

#include <stddef.h>

#include "buf.h"

/* The value of one hex digit (either case), or -1. */
static inline int eng_hex_digit(int c) {
  if (c >= '0' && c <= '9')
    return c - '0';
  if (c >= 'a' && c <= 'f')
    return c - 'a' + 10;
  if (c >= 'A' && c <= 'F')
    return c - 'A' + 10;
  return -1;
}

/* Length (1..4) of the well-formed UTF-8 sequence at p, which has avail >= 1 bytes, or 0 when
 * it is ill-formed: stray continuation byte, overlong form, surrogate (U+D800..DFFF), beyond
 * U+10FFFF, or truncated (the table of well-formed sequences in Unicode 3.9). */
size_t eng_utf8_len(const unsigned char *p, size_t avail);

/* 1 when the n bytes at s are well-formed UTF-8 throughout, else 0. */
int eng_utf8_valid(const char *s, size_t n);

typedef enum eng_json_escape_mode {
  ENG_JSON_STRICT,  /* ill-formed UTF-8 fails with ENG_EINVAL (engine.json) */
  ENG_JSON_REPLACE, /* each ill-formed byte becomes U+FFFD (logs, error bodies: always valid JSON) */
} eng_json_escape_mode;

/* Appends s (n bytes) to b as a JSON string with its quotes: '"', '\\' and control
 * characters escaped, well-formed UTF-8 copied as it is. Returns 0, ENG_ENOMEM, or
 * ENG_EINVAL (ENG_JSON_STRICT only); on failure b may hold part of the string. */
int eng_json_escape(eng_buf *b, const char *s, size_t n, eng_json_escape_mode mode);

#endif
