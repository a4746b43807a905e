/* http_response.c - what the engine answers: eng_response and the request id (see http.h).
 *
 * Kept apart from the parser (http.c) because the request id needs the CSPRNG: the parser's
 * tests and fuzz target link http.c alone. */
#include "http.h"
#include "error.h"
#include "crypto.h"

#include <string.h>
#include <strings.h>

void eng_response_init(eng_response *r) { memset(r, 0, sizeof *r); }

void eng_response_reset(eng_response *r) {
  r->status = 0;
  eng_buf_reset(&r->headers);
  eng_buf_reset(&r->body);
  r->content_type[0] = '\0';
}

void eng_response_free(eng_response *r) {
  eng_buf_free(&r->headers);
  eng_buf_free(&r->body);
}

int eng_response_add_header(eng_response *r, const char *name, size_t name_len, const char *value, size_t value_len,
                            const char **why) {
  if (!eng_http_header_name_ok(name, name_len) || !eng_http_header_value_ok(value, value_len)) {
    *why = "invalid header name or value";
    return ENG_EINVAL;
  }
  if (name_len == 12 && strncasecmp(name, "content-type", 12) == 0) {
    if (value_len > ENG_RESPONSE_CONTENT_TYPE_MAX) {
      *why = "Content-Type too long";
      return ENG_EINVAL;
    }
    memcpy(r->content_type, value, value_len);
    r->content_type[value_len] = '\0';
    return 0;
  }
  if (eng_http_header_reserved(name, name_len))
    return 0;
  /* One reserve, so the appends below cannot fail half-way through the line. */
  if (eng_buf_reserve(&r->headers, name_len + value_len + 4) != 0) {
    *why = "out of memory";
    return ENG_ENOMEM;
  }
  eng_buf_append(&r->headers, name, name_len);
  eng_buf_append(&r->headers, ": ", 2);
  eng_buf_append(&r->headers, value, value_len);
  eng_buf_append(&r->headers, "\r\n", 2);
  return 0;
}

void eng_http_request_id(const eng_http_request *req, char out[ENG_HTTP_REQUEST_ID_MAX + 1]) {
  eng_http_header h;
  if (req && eng_http_find_header(req, "x-request-id", &h) && eng_http_request_id_ok(h.value, h.value_len)) {
    memcpy(out, h.value, h.value_len);
    out[h.value_len] = '\0';
    return;
  }
  if (eng_crypto_uuid4(out) != 0)
    strcpy(out, "-");
}
