/* fuzz_http.c - libFuzzer target for the request parser glue (engine/http.c).
 *
 * The first byte picks a split size; the rest is fed to one parser in pieces of
 * that size, handling every complete request as the server does (next, then the
 * rest) until an error or the end. Invariants: the parser never consumes more
 * than it was given, never reports a request past the limits, and headers it
 * indexes stay inside the header buffer. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "http.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < 1)
    return 0;
  size_t step = (size_t)data[0] + 1;
  const char *p = (const char *)data + 1;
  size_t left = size - 1;
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
      if (hp.req.url.len > lim.max_url_bytes || hp.req.body.len > lim.max_body_bytes || hp.req.path_len > hp.req.url.len)
        abort();
      size_t pos = 0;
      eng_http_header h;
      while (eng_http_next_header(&hp.req, &pos, &h))
        if (h.name < hp.req.hbuf.data || h.value + h.value_len > hp.req.hbuf.data + hp.req.hbuf.len)
          abort();
      eng_http_parser_next(&hp);
      eng_http_parser_trim(&hp);
    }
  }
  eng_http_parser_free(&hp);
  return 0;
}
