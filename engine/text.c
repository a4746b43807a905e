/* text.c - UTF-8 validation and the JSON string escaper (see text.h). */
#include "text.h"
#include "error.h"

size_t eng_utf8_len(const unsigned char *p, size_t avail) {
  unsigned c = p[0];
  unsigned lo = 0x80, hi = 0xBF;
  if (c < 0x80)
    return 1;
  if (c < 0xC2) /* continuation byte, or C0/C1 which only start overlongs */
    return 0;
  if (c < 0xE0)
    return avail >= 2 && (p[1] & 0xC0) == 0x80 ? 2 : 0;
  if (c < 0xF0) {
    if (c == 0xE0)
      lo = 0xA0; /* E0 80..9F would be overlong */
    else if (c == 0xED)
      hi = 0x9F; /* ED A0..BF would be a surrogate */
    if (avail < 3 || p[1] < lo || p[1] > hi || (p[2] & 0xC0) != 0x80)
      return 0;
    return 3;
  }
  if (c < 0xF5) {
    if (c == 0xF0)
      lo = 0x90; /* F0 80..8F would be overlong */
    else if (c == 0xF4)
      hi = 0x8F; /* F4 90.. would exceed U+10FFFF */
    if (avail < 4 || p[1] < lo || p[1] > hi || (p[2] & 0xC0) != 0x80 || (p[3] & 0xC0) != 0x80)
      return 0;
    return 4;
  }
  return 0;
}

int eng_utf8_valid(const char *s, size_t n) {
  const unsigned char *p = (const unsigned char *)s;
  for (size_t i = 0; i < n;) {
    if (p[i] < 0x80) {
      i++;
      continue;
    }
    size_t l = eng_utf8_len(p + i, n - i);
    if (l == 0)
      return 0;
    i += l;
  }
  return 1;
}

/* Validates and escapes in one pass, copying runs of plain bytes at once (this is the
 * hot path of engine.json's encoder, so no per-byte appends). */
int eng_json_escape(eng_buf *b, const char *s, size_t n, eng_json_escape_mode mode) {
  static const char hex[] = "0123456789abcdef";
  const unsigned char *p = (const unsigned char *)s;
  size_t i = 0, run = 0;

  if (eng_buf_reserve(b, n + 2) != 0 || eng_buf_append_char(b, '"') != 0)
    return ENG_ENOMEM;
  while (i < n) {
    unsigned c = p[i];
    char esc[6];
    size_t len = 2;
    if (c >= 0x20 && c != '"' && c != '\\' && c < 0x80) {
      i++;
      continue;
    }
    if (c >= 0x80) {
      size_t sl = eng_utf8_len(p + i, n - i);
      if (sl != 0) {
        i += sl;
        continue;
      }
      if (mode == ENG_JSON_STRICT)
        return ENG_EINVAL;
      if (eng_buf_append(b, s + run, i - run) != 0 || eng_buf_append(b, "\\ufffd", 6) != 0)
        return ENG_ENOMEM;
      run = ++i;
      continue;
    }
    if (eng_buf_append(b, s + run, i - run) != 0)
      return ENG_ENOMEM;
    esc[0] = '\\';
    switch (c) {
    case '"':
      esc[1] = '"';
      break;
    case '\\':
      esc[1] = '\\';
      break;
    case '\b':
      esc[1] = 'b';
      break;
    case '\f':
      esc[1] = 'f';
      break;
    case '\n':
      esc[1] = 'n';
      break;
    case '\r':
      esc[1] = 'r';
      break;
    case '\t':
      esc[1] = 't';
      break;
    default:
      esc[1] = 'u';
      esc[2] = '0';
      esc[3] = '0';
      esc[4] = hex[c >> 4];
      esc[5] = hex[c & 0xF];
      len = 6;
      break;
    }
    if (eng_buf_append(b, esc, len) != 0)
      return ENG_ENOMEM;
    run = ++i;
  }
  if (eng_buf_append(b, s + run, n - run) != 0 || eng_buf_append_char(b, '"') != 0)
    return ENG_ENOMEM;
  return 0;
}
