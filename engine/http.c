/* http.c - llhttp glue (see http.h).
 *
 * The parser pauses itself at the end of every message (on_message_complete
 * returns HPE_PAUSED), so requests are handed out one at a time outside
 * llhttp's callbacks: pipelined requests are answered strictly in order and a
 * handler never runs with the parser mid-callback. */
#include "http.h"
#include "error.h"
#include "text.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

/* Request buffers are released whenever a connection goes idle, so an idle keep-alive
 * connection holds none; but then a busy worker mallocs and frees the URL and header
 * buffers of every request (a few percent of a small request). Released buffers of at
 * most ENG_HTTP_STASH_BYTES go to a stash of the thread instead, and the next message
 * parsed on that thread (on any connection) starts with them. The memory is the
 * thread's, bounded by the constants below, and freed when the thread exits. */
#define ENG_HTTP_STASH_BUFS 16
#define ENG_HTTP_STASH_BYTES 1024u

typedef struct buf_stash {
  int n;
  eng_buf bufs[ENG_HTTP_STASH_BUFS];
} buf_stash;

static _Thread_local buf_stash stash;
static _Thread_local int stash_armed; /* this thread's stash_key value is set */
static pthread_key_t stash_key;       /* its value only arms stash_drain at thread exit */
static pthread_once_t stash_once = PTHREAD_ONCE_INIT;
static int stash_key_ok;

static void stash_drain(void *unused) {
  (void)unused;
  while (stash.n > 0)
    eng_buf_free(&stash.bufs[--stash.n]);
}

static void stash_key_create(void) { stash_key_ok = pthread_key_create(&stash_key, stash_drain) == 0; }

/* Gives b an empty stashed buffer when it has none (b stays zeroed if the stash is empty). */
static void buf_take(eng_buf *b) {
  if (b->data == NULL && stash.n > 0)
    *b = stash.bufs[--stash.n];
}

/* Releases b's memory: into the stash when it is small and there is room, else free. */
static void buf_release(eng_buf *b) {
  if (b->data == NULL)
    return;
  if (b->cap <= ENG_HTTP_STASH_BYTES && stash.n < ENG_HTTP_STASH_BUFS) {
    if (!stash_armed) { /* the thread's first stashed buffer */
      pthread_once(&stash_once, stash_key_create);
      if (!stash_key_ok || pthread_setspecific(stash_key, &stash) != 0) {
        eng_buf_free(b);
        return;
      }
      stash_armed = 1;
    }
    b->len = 0;
    stash.bufs[stash.n++] = *b;
    *b = (eng_buf){0};
    return;
  }
  eng_buf_free(b);
}

void eng_http_limits_default(eng_http_limits *lim) {
  lim->max_header_bytes = ENG_HTTP_DEFAULT_MAX_HEADER_BYTES;
  lim->max_url_bytes = ENG_HTTP_DEFAULT_MAX_URL_BYTES;
  lim->max_body_bytes = ENG_HTTP_DEFAULT_MAX_BODY_BYTES;
}

static eng_http_parser *P(llhttp_t *h) { return (eng_http_parser *)h->data; }

static int fail(eng_http_parser *p, int status, const char *code, const char *reason) {
  p->error_status = status;
  p->error_code = code;
  p->error_reason = reason;
  return HPE_USER;
}

static int on_message_begin(llhttp_t *h) {
  eng_http_parser *p = P(h);
  p->in_message = 1;
  p->headers_done = 0;
  buf_take(&p->req.url);
  buf_take(&p->req.hbuf);
  return 0;
}

static int on_url(llhttp_t *h, const char *at, size_t len) {
  eng_http_parser *p = P(h);
  if (len > p->limits->max_url_bytes || p->req.url.len > p->limits->max_url_bytes - len)
    return fail(p, 414, "uri_too_long", "request target too long");
  if (eng_buf_append(&p->req.url, at, len) != 0)
    return fail(p, 500, "internal_error", "out of memory");
  return 0;
}

static int header_bytes(eng_http_parser *p, size_t len) {
  if (len > p->limits->max_header_bytes || p->header_bytes > p->limits->max_header_bytes - len)
    return fail(p, 431, "headers_too_large", "request headers too large");
  p->header_bytes += len;
  return 0;
}

static int on_header_field(llhttp_t *h, const char *at, size_t len) {
  eng_http_parser *p = P(h);
  if (header_bytes(p, len))
    return HPE_USER;
  eng_http_request *r = &p->req;
  if (!p->in_field) {
    if (r->nheaders == ENG_HTTP_MAX_HEADERS)
      return fail(p, 431, "headers_too_large", "too many request headers");
    r->nheaders++;
    p->in_field = 1;
  }
  p->field_len += len;
  char lower[256];
  while (len) {
    size_t n = len < sizeof lower ? len : sizeof lower;
    for (size_t i = 0; i < n; i++) {
      char c = at[i];
      lower[i] = (c >= 'A' && c <= 'Z') ? (char)(c + 32) : c;
    }
    if (eng_buf_append(&r->hbuf, lower, n) != 0)
      return fail(p, 500, "internal_error", "out of memory");
    at += n;
    len -= n;
  }
  return 0;
}

/* Names and values are NUL-terminated as they complete: llhttp calls the
 * *_complete callbacks even for an empty value. */
static int on_header_field_complete(llhttp_t *h) {
  eng_http_parser *p = P(h);
  if (p->field_len == 0) /* ": value" */
    return fail(p, 400, "bad_request", "empty header name");
  p->in_field = 0;
  p->field_len = 0;
  if (eng_buf_append_char(&p->req.hbuf, '\0') != 0)
    return fail(p, 500, "internal_error", "out of memory");
  return 0;
}

static int on_header_value(llhttp_t *h, const char *at, size_t len) {
  eng_http_parser *p = P(h);
  if (header_bytes(p, len))
    return HPE_USER;
  /* obs-fold (a line starting with a space or tab continues the value): llhttp accepts it and
   * hands the continuation over as another span of the same value. A value's span stops early
   * only at its CR, so a second span after one that stopped inside the fed bytes is a fold.
   * RFC 9112 lets a server refuse it; nginx does. */
  if (p->value_ended)
    return fail(p, 400, "bad_request", "obsolete line folding in a header");
  p->value_ended = at + len < p->feed_end;
  if (eng_buf_append(&p->req.hbuf, at, len) != 0)
    return fail(p, 500, "internal_error", "out of memory");
  return 0;
}

static int on_header_value_complete(llhttp_t *h) {
  eng_http_parser *p = P(h);
  p->value_ended = 0;
  if (eng_buf_append_char(&p->req.hbuf, '\0') != 0)
    return fail(p, 500, "internal_error", "out of memory");
  return 0;
}

static int ieq(const char *a, size_t alen, const char *b) {
  size_t blen = strlen(b);
  if (alen != blen)
    return 0;
  for (size_t i = 0; i < alen; i++) {
    char c = a[i];
    if (c >= 'A' && c <= 'Z')
      c = (char)(c + 32);
    if (c != b[i])
      return 0;
  }
  return 1;
}

static int on_headers_complete(llhttp_t *h) {
  eng_http_parser *p = P(h);
  eng_http_request *r = &p->req;
  r->method = llhttp_method_name((llhttp_method_t)h->method);
  r->http_major = h->http_major;
  r->http_minor = h->http_minor;
  size_t n = 0;
  while (n < r->url.len && r->url.data[n] != '?' && r->url.data[n] != '#')
    n++;
  r->path_len = n;
  if (r->http_major != 1)
    return fail(p, 505, "http_version_not_supported", "only HTTP/1.0 and HTTP/1.1 are served here");
  if (r->url.len == 0 || r->url.data[0] != '/')
    return fail(p, 400, "bad_request", "request target must be an absolute path");
  /* Connection: Upgrade (h2c, websocket) is ignored: the request is answered as an ordinary
   * one and the connection stays HTTP/1.1 (llhttp would otherwise stop parsing after it). */
  h->upgrade = 0;
  eng_http_header hd;
  size_t pos = 0;
  int hosts = 0;
  while (eng_http_next_header(r, &pos, &hd)) {
    if (hd.name_len == 4 && memcmp(hd.name, "host", 4) == 0)
      hosts++;
    else if (hd.name_len == 17 && memcmp(hd.name, "transfer-encoding", 17) == 0 &&
             !ieq(hd.value, hd.value_len, "chunked"))
      return fail(p, 501, "not_implemented", "only the chunked transfer coding is supported");
  }
  if (hosts > 1 || (hosts == 0 && r->http_minor >= 1))
    return fail(p, 400, "bad_request", hosts ? "more than one Host header" : "HTTP/1.1 request without Host");
  /* Reject bodies that cannot fit before reading them. */
  if ((h->flags & F_CONTENT_LENGTH) && h->content_length > p->limits->max_body_bytes)
    return fail(p, 413, "payload_too_large", "request body too large");
  eng_http_header ex;
  if (eng_http_find_header(r, "expect", &ex) && ex.value_len > 0) {
    if (!ieq(ex.value, ex.value_len, "100-continue"))
      return fail(p, 417, "expectation_failed", "only 'Expect: 100-continue' is supported");
    if (r->http_major == 1 && r->http_minor >= 1)
      p->want_continue = 1;
  }
  p->headers_done = 1;
  return 0;
}

static int on_body(llhttp_t *h, const char *at, size_t len) {
  eng_http_parser *p = P(h);
  eng_http_request *r = &p->req;
  p->want_continue = 0;
  if (len > p->limits->max_body_bytes || r->body.len > p->limits->max_body_bytes - len)
    return fail(p, 413, "payload_too_large", "request body too large");
  buf_take(&r->body);
  if (eng_buf_append(&r->body, at, len) != 0)
    return fail(p, 500, "internal_error", "out of memory");
  return 0;
}

/* A chunk's declared size is known before its bytes: refuse it there, not after reading them. */
static int on_chunk_header(llhttp_t *h) {
  eng_http_parser *p = P(h);
  if (h->content_length > p->limits->max_body_bytes - p->req.body.len)
    return fail(p, 413, "payload_too_large", "request body too large");
  return 0;
}

static int on_message_complete(llhttp_t *h) {
  eng_http_parser *p = P(h);
  p->want_continue = 0;
  p->in_message = 0;
  p->req.keep_alive = llhttp_should_keep_alive(h);
  return HPE_PAUSED;
}

static const llhttp_settings_t settings = {
    .on_message_begin = on_message_begin,
    .on_url = on_url,
    .on_header_field = on_header_field,
    .on_header_value = on_header_value,
    .on_header_field_complete = on_header_field_complete,
    .on_header_value_complete = on_header_value_complete,
    .on_headers_complete = on_headers_complete,
    .on_body = on_body,
    .on_chunk_header = on_chunk_header,
    .on_message_complete = on_message_complete,
};

void eng_http_parser_init(eng_http_parser *p, const eng_http_limits *limits) {
  memset(p, 0, sizeof *p);
  p->limits = limits;
  llhttp_init(&p->parser, HTTP_REQUEST, &settings);
  p->parser.data = p;
}

static void req_clear(eng_http_request *r) {
  eng_buf_reset(&r->url);
  eng_buf_reset(&r->hbuf);
  eng_buf_reset(&r->body);
  r->nheaders = 0;
  r->path_len = 0;
  r->method = NULL;
}

void eng_http_parser_free(eng_http_parser *p) {
  buf_release(&p->req.url);
  buf_release(&p->req.hbuf);
  buf_release(&p->req.body);
}

void eng_http_parser_trim(eng_http_parser *p) {
  if (!p->in_message)
    eng_http_parser_free(p);
}

int eng_http_parser_feed(eng_http_parser *p, const char *data, size_t len, size_t *consumed) {
  p->feed_end = data + len;
  llhttp_errno_t err = llhttp_execute(&p->parser, data, len);
  if (err == HPE_OK) {
    *consumed = len;
    return ENG_HTTP_NEED_MORE;
  }
  if (err == HPE_PAUSED) {
    const char *pos = llhttp_get_error_pos(&p->parser);
    *consumed = pos ? (size_t)(pos - data) : len;
    return ENG_HTTP_REQUEST;
  }
  *consumed = len;
  /* Our callbacks record their own status (413, 414, 431, 417) before failing; on_headers_complete
   * cannot return HPE_USER, so llhttp reports its failure under another code. */
  if (p->error_status == 0) {
    p->error_status = 400;
    p->error_code = "bad_request";
    p->error_reason = "malformed HTTP request";
    if (err == HPE_INVALID_METHOD) /* unknown methods are a client error too, but a clear one */
      p->error_reason = "unsupported HTTP method";
    if (err == HPE_INVALID_VERSION)
      p->error_reason = "unsupported HTTP version";
  }
  return ENG_HTTP_ERROR;
}

void eng_http_parser_next(eng_http_parser *p) {
  req_clear(&p->req);
  p->header_bytes = 0;
  p->in_field = 0;
  p->field_len = 0;
  p->value_ended = 0;
  p->want_continue = 0;
  p->headers_done = 0;
  llhttp_resume(&p->parser);
}

int eng_http_next_header(const eng_http_request *req, size_t *pos, eng_http_header *out) {
  const char *base = req->hbuf.data;
  size_t len = req->hbuf.len;
  if (base == NULL || *pos >= len)
    return 0;
  out->name = base + *pos;
  out->name_len = strnlen(out->name, len - *pos);
  *pos += out->name_len + 1;
  if (*pos >= len) {
    out->value = "";
    out->value_len = 0;
    return 1;
  }
  out->value = base + *pos;
  out->value_len = strnlen(out->value, len - *pos);
  *pos += out->value_len + 1;
  return 1;
}

int eng_http_find_header(const eng_http_request *req, const char *lname, eng_http_header *out) {
  size_t n = strlen(lname), pos = 0;
  while (eng_http_next_header(req, &pos, out))
    if (out->name_len == n && memcmp(out->name, lname, n) == 0)
      return 1;
  return 0;
}

int eng_http_request_id_ok(const char *s, size_t len) {
  if (len == 0 || len > ENG_HTTP_REQUEST_ID_MAX)
    return 0;
  for (size_t i = 0; i < len; i++)
    if ((unsigned char)s[i] < 0x21 || (unsigned char)s[i] > 0x7e)
      return 0;
  return 1;
}

/* ---- query strings and forms ---------------------------------------------------------------- */

const char *eng_http_query(const eng_http_request *req, size_t *len) {
  if (req->path_len < req->url.len && req->url.data[req->path_len] == '?') {
    *len = req->url.len - req->path_len - 1;
    return req->url.data + req->path_len + 1;
  }
  *len = 0;
  return NULL;
}

int eng_http_query_next(const char *q, size_t n, size_t *pos, eng_http_param *out) {
  size_t i = *pos;
  while (i < n) {
    size_t j = i;
    while (j < n && q[j] != '&' && q[j] != '#')
      j++;
    size_t next = j < n && q[j] == '&' ? j + 1 : n; /* a '#' ends the query */
    if (j > i) {
      size_t eq = i;
      while (eq < j && q[eq] != '=')
        eq++;
      out->name = q + i;
      out->name_len = eq - i;
      out->value = eq < j ? q + eq + 1 : "";
      out->value_len = eq < j ? j - eq - 1 : 0;
      *pos = next;
      return 1;
    }
    i = next;
  }
  *pos = n;
  return 0;
}

int eng_http_query_check_utf8(const eng_http_request *req, char *why, size_t why_size) {
  size_t n, pos = 0;
  const char *q = eng_http_query(req, &n);
  char small[256];
  char *buf = n <= sizeof small ? small : malloc(n);
  eng_http_param p;
  int rc = 0;
  if (q == NULL)
    return 0;
  if (buf == NULL)
    return ENG_ENOMEM;
  while (rc == 0 && eng_http_query_next(q, n, &pos, &p)) {
    size_t name_len = eng_http_form_decode(p.name, p.name_len, buf);
    if (!eng_utf8_valid(buf, name_len)) {
      snprintf(why, why_size, "a query parameter name is not valid UTF-8");
      rc = ENG_EPARSE;
    } else if (!eng_utf8_valid(buf + name_len, eng_http_form_decode(p.value, p.value_len, buf + name_len))) {
      if (name_len <= 64)
        snprintf(why, why_size, "query parameter '%.*s' is not valid UTF-8", (int)name_len, buf);
      else
        snprintf(why, why_size, "the value of a query parameter is not valid UTF-8");
      rc = ENG_EPARSE;
    }
  }
  if (buf != small)
    free(buf);
  return rc;
}

size_t eng_http_form_decode(const char *s, size_t n, char *out) {
  size_t o = 0;
  for (size_t i = 0; i < n; i++) {
    int hi, lo;
    if (s[i] == '+') {
      out[o++] = ' ';
    } else if (s[i] == '%' && i + 2 < n && (hi = eng_hex_digit((unsigned char)s[i + 1])) >= 0 &&
               (lo = eng_hex_digit((unsigned char)s[i + 2])) >= 0) {
      out[o++] = (char)(hi * 16 + lo);
      i += 2;
    } else {
      out[o++] = s[i];
    }
  }
  return o;
}

/* ---- response headers ----------------------------------------------------------------------- */

/* ASCII only and spelled out: isalnum follows the locale, and strchr(set, c) also finds
 * the set's terminating NUL, which let a NUL byte through in a name. */
static int is_tchar(unsigned char c) {
  return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
         (c != '\0' && strchr("!#$%&'*+-.^_`|~", c) != NULL);
}

int eng_http_header_name_ok(const char *s, size_t n) {
  if (n == 0 || n > ENG_HTTP_HEADER_NAME_MAX)
    return 0;
  for (size_t i = 0; i < n; i++)
    if (!is_tchar((unsigned char)s[i]))
      return 0;
  return 1;
}

int eng_http_header_value_ok(const char *s, size_t n) {
  for (size_t i = 0; i < n; i++) {
    unsigned char c = (unsigned char)s[i];
    if ((c < 0x20 && c != '\t') || c == 0x7f)
      return 0;
  }
  return 1;
}

int eng_http_header_reserved(const char *s, size_t n) {
  static const char *const names[] = {"content-length", "transfer-encoding", "connection",
                                      "date",           "x-request-id",      NULL};
  for (int i = 0; names[i]; i++)
    if (strlen(names[i]) == n && strncasecmp(names[i], s, n) == 0)
      return 1;
  return 0;
}

const char *eng_http_reason(int status) {
  switch (status) {
  case 100:
    return "Continue";
  case 200:
    return "OK";
  case 201:
    return "Created";
  case 202:
    return "Accepted";
  case 204:
    return "No Content";
  case 301:
    return "Moved Permanently";
  case 302:
    return "Found";
  case 304:
    return "Not Modified";
  case 400:
    return "Bad Request";
  case 401:
    return "Unauthorized";
  case 403:
    return "Forbidden";
  case 404:
    return "Not Found";
  case 405:
    return "Method Not Allowed";
  case 408:
    return "Request Timeout";
  case 409:
    return "Conflict";
  case 410:
    return "Gone";
  case 413:
    return "Content Too Large";
  case 414:
    return "URI Too Long";
  case 415:
    return "Unsupported Media Type";
  case 417:
    return "Expectation Failed";
  case 422:
    return "Unprocessable Content";
  case 429:
    return "Too Many Requests";
  case 431:
    return "Request Header Fields Too Large";
  case 500:
    return "Internal Server Error";
  case 501:
    return "Not Implemented";
  case 502:
    return "Bad Gateway";
  case 503:
    return "Service Unavailable";
  case 504:
    return "Gateway Timeout";
  case 505:
    return "HTTP Version Not Supported";
  default:
    return "Unknown";
  }
}

/* The Date header changes once a second: format it once a second per thread.
 * *len is its length (29 bytes for years 1000..9999, but measured, not assumed). */
static const char *http_date(size_t *len) {
  static _Thread_local time_t last;
  static _Thread_local char buf[40];
  static _Thread_local size_t buf_len;
  time_t now = time(NULL);
  if (now != last || buf_len == 0) {
    struct tm tm;
    gmtime_r(&now, &tm);
    buf_len = strftime(buf, sizeof buf, "%a, %d %b %Y %H:%M:%S GMT", &tm);
    last = now;
  }
  *len = buf_len;
  return buf;
}

/* Writes v in decimal so that it ends at end; returns where it starts. */
static char *put_decimal(char *end, unsigned long long v) {
  do {
    *--end = (char)('0' + v % 10);
    v /= 10;
  } while (v != 0);
  return end;
}

static char *put_bytes(char *p, const char *s, size_t n) {
  memcpy(p, s, n);
  return p + n;
}

#define PUT_LIT(p, lit) put_bytes((p), (lit), sizeof(lit) - 1)

int eng_http_status_has_body(int status) {
  return !((status >= 100 && status < 200) || status == 204 || status == 304);
}

/* Every answer goes through here, so the head is assembled with one reserve and
 * memcpy of measured pieces: formatting it with vsnprintf was about a tenth of a
 * small request's cost. */
int eng_http_write_head(eng_buf *out, int status, int http_minor, int keep_alive, const char *content_type,
                        size_t content_length, const char *request_id, const char *extra, size_t extra_len) {
  char status_digits[24], length_digits[24];
  char *status_end = status_digits + sizeof status_digits, *length_end = length_digits + sizeof length_digits;
  char *status_start =
      put_decimal(status_end, status < 0 ? 0ull - (unsigned long long)status : (unsigned long long)status);
  if (status < 0)
    *--status_start = '-';
  char *length_start = put_decimal(length_end, content_length);
  const char *reason = eng_http_reason(status);
  size_t date_len;
  const char *date = http_date(&date_len);
  size_t reason_len = strlen(reason), type_len = strlen(content_type), id_len = strlen(request_id);
  static const char l_close[] = "Connection: close\r\n", l_keep[] = "Connection: keep-alive\r\n";
  const char *connection = !keep_alive ? l_close : http_minor == 0 ? l_keep : "";
  size_t connection_len = !keep_alive ? sizeof l_close - 1 : http_minor == 0 ? sizeof l_keep - 1 : 0;
  if (extra == NULL)
    extra_len = 0;

  static const char l_status[] = "HTTP/1.1 ", l_date[] = "\r\nDate: ", l_type[] = "\r\nContent-Type: ",
                    l_length[] = "\r\nContent-Length: ", l_id[] = "\r\nX-Request-Id: ";
  /* 1xx and 204 must not carry Content-Length (RFC 9110 8.6), and none of them a body. */
  int has_body = eng_http_status_has_body(status);
  size_t length_part = has_body ? sizeof l_length - 1 + (size_t)(length_end - length_start) : 0;
  size_t need = sizeof l_status - 1 + (size_t)(status_end - status_start) + 1 + reason_len + sizeof l_date - 1 +
                date_len + sizeof l_type - 1 + type_len + length_part + sizeof l_id - 1 + id_len + 2 + connection_len +
                extra_len + 2;
  if (eng_buf_reserve(out, need) != 0)
    return ENG_ENOMEM;
  char *p = out->data + out->len;
  p = PUT_LIT(p, l_status);
  p = put_bytes(p, status_start, (size_t)(status_end - status_start));
  *p++ = ' ';
  p = put_bytes(p, reason, reason_len);
  p = PUT_LIT(p, l_date);
  p = put_bytes(p, date, date_len);
  p = PUT_LIT(p, l_type);
  p = put_bytes(p, content_type, type_len);
  if (has_body) {
    p = PUT_LIT(p, l_length);
    p = put_bytes(p, length_start, (size_t)(length_end - length_start));
  }
  p = PUT_LIT(p, l_id);
  p = put_bytes(p, request_id, id_len);
  p = PUT_LIT(p, "\r\n");
  p = put_bytes(p, connection, connection_len);
  if (extra_len)
    p = put_bytes(p, extra, extra_len);
  p = PUT_LIT(p, "\r\n");
  out->len += need;
  *p = '\0'; /* eng_buf keeps its data NUL-terminated */
  return 0;
}
