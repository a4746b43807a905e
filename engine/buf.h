/* buf.h - a growable byte buffer: pointer, length, capacity.
 *
 * The buffer owns `data` (malloc'd). A zeroed eng_buf is a valid empty buffer.
 * Appending functions return 0 or ENG_ENOMEM; on failure the buffer is unchanged.
 * `data` is always NUL-terminated after a successful append (not counted in len),
 * so it can be handed to functions that want a C string. */
#ifndef ENG_BUF_H
#define ENG_BUF_H

#include <stddef.h>
#include <stdarg.h>

typedef struct eng_buf {
  char *data;
  size_t len;
  size_t cap;
} eng_buf;

int eng_buf_reserve(eng_buf *b, size_t extra);
int eng_buf_append(eng_buf *b, const void *p, size_t n);
int eng_buf_append_str(eng_buf *b, const char *s);
int eng_buf_append_char(eng_buf *b, char c);
int eng_buf_appendf(eng_buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void eng_buf_reset(eng_buf *b); /* len = 0, keeps the memory */
void eng_buf_free(eng_buf *b);  /* releases the memory, back to the zero state */

#endif
