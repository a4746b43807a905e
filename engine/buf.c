/* buf.c - growable byte buffer (see buf.h). */
#include "buf.h"
#include "error.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int eng_buf_reserve(eng_buf *b, size_t extra) {
  if (extra > SIZE_MAX - b->len - 1)
    return ENG_ENOMEM;
  size_t need = b->len + extra + 1; /* +1: the trailing NUL */
  if (need <= b->cap)
    return 0;
  size_t cap = b->cap ? b->cap : 64;
  while (cap < need)
    cap = cap > SIZE_MAX / 2 ? need : cap * 2;
  char *p = realloc(b->data, cap);
  if (p == NULL)
    return ENG_ENOMEM;
  b->data = p;
  b->cap = cap;
  return 0;
}

int eng_buf_append(eng_buf *b, const void *p, size_t n) {
  if (eng_buf_reserve(b, n) != 0)
    return ENG_ENOMEM;
  if (n)
    memcpy(b->data + b->len, p, n);
  b->len += n;
  b->data[b->len] = '\0';
  return 0;
}

int eng_buf_append_str(eng_buf *b, const char *s) { return eng_buf_append(b, s, strlen(s)); }

int eng_buf_append_char(eng_buf *b, char c) { return eng_buf_append(b, &c, 1); }

int eng_buf_appendf(eng_buf *b, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  char small[256];
  int n = vsnprintf(small, sizeof small, fmt, ap);
  va_end(ap);
  if (n < 0)
    return ENG_EINVAL;
  if ((size_t)n < sizeof small)
    return eng_buf_append(b, small, (size_t)n);
  if (eng_buf_reserve(b, (size_t)n) != 0)
    return ENG_ENOMEM;
  va_start(ap, fmt);
  vsnprintf(b->data + b->len, (size_t)n + 1, fmt, ap);
  va_end(ap);
  b->len += (size_t)n;
  return 0;
}

void eng_buf_reset(eng_buf *b) {
  b->len = 0;
  if (b->data)
    b->data[0] = '\0';
}

void eng_buf_free(eng_buf *b) {
  free(b->data);
  b->data = NULL;
  b->len = b->cap = 0;
}
