/* fuzz_http.c - libFuzzer target for the HTTP layer's parsers (engine/http.c).
 *
 * The first byte picks a split size; the rest is fed to one parser in pieces of
 * that size, handling every complete request as the server does (next, then the
 * rest) until an error or the end. Invariants: the parser never consumes more
 * than it was given, never reports a request past the limits, and headers it
 * indexes stay inside the header buffer. Each request's query string is split
 * and form-decoded, and its headers go through the checks a handler's headers
 * pass; the whole input also goes to the decoder and the checks directly, since
 * the parser keeps most bytes from reaching them. Invariants there: decoding
 * never grows and gives the same in place; a query item lies inside its string;
 * a name or value the checks accept cannot carry CR, LF or NUL (no response
 * splitting), and a name no ':' or space either. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "http.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Decodes s both ways and checks they agree and do not grow. */
static void check_decode(const char *s, size_t n) {
  char *out = malloc(n + 1), *inplace = malloc(n + 1);
  if (out == NULL || inplace == NULL)
    abort();
  size_t a = eng_http_form_decode(s, n, out);
  memcpy(inplace, s, n);
  size_t b = eng_http_form_decode(inplace, n, inplace);
  if (a > n || a != b || memcmp(out, inplace, a) != 0)
    abort();
  free(out);
  free(inplace);
}

static void check_query(const char *q, size_t n) {
  size_t pos = 0, items = 0;
  eng_http_param p;
  while (eng_http_query_next(q, n, &pos, &p)) {
    if (p.name < q || p.name + p.name_len > q + n || pos > n || ++items > n)
      abort();
    if (p.value_len && (p.value < q || p.value + p.value_len > q + n))
      abort();
    check_decode(p.name, p.name_len);
    check_decode(p.value, p.value_len);
  }
}

static void check_header(const char *name, size_t name_len, const char *value, size_t value_len) {
  if (eng_http_header_name_ok(name, name_len) &&
      (name_len == 0 || name_len > ENG_HTTP_HEADER_NAME_MAX || memchr(name, ':', name_len) ||
       memchr(name, ' ', name_len) || memchr(name, '\r', name_len) || memchr(name, '\n', name_len) ||
       memchr(name, '\0', name_len)))
    abort();
  if (eng_http_header_value_ok(value, value_len) &&
      (memchr(value, '\r', value_len) || memchr(value, '\n', value_len) || memchr(value, '\0', value_len)))
    abort();
  (void)eng_http_header_reserved(name, name_len);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < 1)
    return 0;
  size_t step = (size_t)data[0] + 1;
  const char *p = (const char *)data + 1;
  size_t left = size - 1;

  /* The input itself: a query string, a header split at its middle. */
  check_query(p, left);
  check_header(p, left / 2, p + left / 2, left - left / 2);

  eng_http_limits lim = {.max_header_bytes = 2048, .max_url_bytes = 512, .max_body_bytes = 4096};
  eng_http_parser hp;
  eng_http_parser_init(&hp, &lim);
  while (left > 0) {
    size_t n = left < step ? left : step, used = 0;
    int r = eng_http_parser_feed(&hp, p, n, &used);
    if (used > n)
      abort();
    p += used;
    left -= used;
    if (r == ENG_HTTP_ERROR) {
      if (hp.error_status < 400 || hp.error_status > 599)
        abort();
      break;
    }
    if (r == ENG_HTTP_REQUEST) {
      if (hp.req.url.len > lim.max_url_bytes || hp.req.body.len > lim.max_body_bytes ||
          hp.req.path_len > hp.req.url.len)
        abort();
      size_t pos = 0;
      eng_http_header h;
      while (eng_http_next_header(&hp.req, &pos, &h)) {
        if (h.name < hp.req.hbuf.data || h.value + h.value_len > hp.req.hbuf.data + hp.req.hbuf.len)
          abort();
        check_header(h.name, h.name_len, h.value, h.value_len);
      }
      size_t qlen;
      const char *q = eng_http_query(&hp.req, &qlen);
      if (q != NULL) {
        if (q < hp.req.url.data || q + qlen > hp.req.url.data + hp.req.url.len)
          abort();
        check_query(q, qlen);
        char why[160];
        int u = eng_http_query_check_utf8(&hp.req, why, sizeof why);
        if (u != 0 && u != ENG_EPARSE && u != ENG_ENOMEM)
          abort();
        if (u == ENG_EPARSE && strstr(why, "not valid UTF-8") == NULL)
          abort();
      }
      check_query(hp.req.body.data ? hp.req.body.data : "", hp.req.body.len); /* a form body */
      eng_http_parser_next(&hp);
      eng_http_parser_trim(&hp);
    }
  }
  eng_http_parser_free(&hp);
  return 0;
}
