/* test_http.c - the llhttp glue: requests, pipelining, chunked bodies, limits, malformed input. */
#include "check.h"
#include "http.h"

#include <stdlib.h>
#include <string.h>

static eng_http_limits lim;

/* Feeds s in pieces of `step` bytes; returns the feed result of the first non-NEED_MORE. */
static int feed_all(eng_http_parser *p, const char *s, size_t step, size_t *at) {
  size_t len = strlen(s), off = 0;
  while (off < len) {
    size_t n = len - off < step ? len - off : step, used = 0;
    int r = eng_http_parser_feed(p, s + off, n, &used);
    off += used;
    if (r != ENG_HTTP_NEED_MORE) {
      *at = off;
      return r;
    }
  }
  *at = off;
  return ENG_HTTP_NEED_MORE;
}

static const char *hdr(eng_http_parser *p, const char *name) {
  static char out[512];
  eng_http_header h;
  if (!eng_http_find_header(&p->req, name, &h))
    return NULL;
  memcpy(out, h.value, h.value_len);
  out[h.value_len] = '\0';
  return out;
}

static void test_simple(void) {
  eng_http_parser p;
  size_t at;
  for (size_t step = 1; step <= 64; step *= 4) { /* byte-by-byte too */
    eng_http_parser_init(&p, &lim);
    const char *req = "POST /v2/x?a=1 HTTP/1.1\r\nHost: h\r\nX-Empty:\r\nContent-Type: application/json\r\n"
                      "Content-Length: 7\r\n\r\n{\"a\":1}";
    CHECK_INT(feed_all(&p, req, step, &at), ENG_HTTP_REQUEST);
    CHECK_INT(at, strlen(req));
    CHECK_STR(p.req.method, "POST");
    CHECK_INT(p.req.path_len, 5);
    CHECK_INT(p.req.url.len, 9);
    CHECK_INT(p.req.body.len, 7);
    CHECK(memcmp(p.req.body.data, "{\"a\":1}", 7) == 0);
    CHECK_STR(hdr(&p, "content-type"), "application/json");
    CHECK_STR(hdr(&p, "x-empty"), "");
    CHECK_STR(hdr(&p, "host"), "h");
    CHECK_INT(p.req.nheaders, 4);
    CHECK_INT(p.req.keep_alive, 1);
    eng_http_parser_free(&p);
  }
}

static void test_pipelined_and_close(void) {
  eng_http_parser p;
  eng_http_parser_init(&p, &lim);
  const char *two = "GET /1 HTTP/1.1\r\nHost: h\r\n\r\nGET /2 HTTP/1.1\r\nConnection: close\r\n\r\n";
  size_t len = strlen(two), used = 0;
  CHECK_INT(eng_http_parser_feed(&p, two, len, &used), ENG_HTTP_REQUEST);
  CHECK_INT(used, strlen("GET /1 HTTP/1.1\r\nHost: h\r\n\r\n"));
  CHECK(p.req.url.len == 2 && memcmp(p.req.url.data, "/1", 2) == 0);
  CHECK_INT(p.req.keep_alive, 1);
  eng_http_parser_next(&p);
  size_t used2 = 0;
  CHECK_INT(eng_http_parser_feed(&p, two + used, len - used, &used2), ENG_HTTP_REQUEST);
  CHECK_INT(used + used2, len);
  CHECK(p.req.url.len == 2 && memcmp(p.req.url.data, "/2", 2) == 0);
  CHECK_INT(p.req.keep_alive, 0);
  eng_http_parser_free(&p);

  /* HTTP/1.0: close unless keep-alive is asked for. */
  size_t at;
  eng_http_parser_init(&p, &lim);
  CHECK_INT(feed_all(&p, "GET / HTTP/1.0\r\n\r\n", 100, &at), ENG_HTTP_REQUEST);
  CHECK_INT(p.req.keep_alive, 0);
  CHECK_INT(p.req.http_minor, 0);
  eng_http_parser_free(&p);
  eng_http_parser_init(&p, &lim);
  CHECK_INT(feed_all(&p, "GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", 100, &at), ENG_HTTP_REQUEST);
  CHECK_INT(p.req.keep_alive, 1);
  eng_http_parser_free(&p);
}

static void test_chunked(void) {
  eng_http_parser p;
  size_t at;
  eng_http_parser_init(&p, &lim);
  const char *req = "POST /c HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n";
  CHECK_INT(feed_all(&p, req, 3, &at), ENG_HTTP_REQUEST);
  CHECK_INT(p.req.body.len, 11);
  CHECK(memcmp(p.req.body.data, "hello world", 11) == 0);
  eng_http_parser_free(&p);
}

static void test_continue(void) {
  eng_http_parser p;
  size_t at;
  eng_http_parser_init(&p, &lim);
  CHECK_INT(feed_all(&p, "POST /c HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n", 100, &at),
            ENG_HTTP_NEED_MORE);
  CHECK_INT(p.want_continue, 1);
  CHECK_INT(feed_all(&p, "ok", 100, &at), ENG_HTTP_REQUEST);
  CHECK_INT(p.want_continue, 0);
  eng_http_parser_free(&p);
  eng_http_parser_init(&p, &lim);
  CHECK_INT(feed_all(&p, "POST /c HTTP/1.1\r\nExpect: something-else\r\nContent-Length: 2\r\n\r\nok", 100, &at),
            ENG_HTTP_ERROR);
  CHECK_INT(p.error_status, 417);
  eng_http_parser_free(&p);
}

static void expect_error(const char *req, int status, size_t step) {
  eng_http_parser p;
  size_t at;
  eng_http_parser_init(&p, &lim);
  int r = feed_all(&p, req, step, &at);
  CHECK_INT(r, ENG_HTTP_ERROR);
  CHECK_INT(p.error_status, status);
  eng_http_parser_free(&p);
}

static void test_limits(void) {
  eng_http_limits small = {.max_header_bytes = 64, .max_url_bytes = 32, .max_body_bytes = 10};
  eng_http_limits saved = lim;
  lim = small;
  expect_error("GET /aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa HTTP/1.1\r\n\r\n", 414, 5);
  expect_error("GET / HTTP/1.1\r\nX: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n", 431, 7);
  /* Content-Length past the limit: refused at the headers, before any body byte. */
  expect_error("POST / HTTP/1.1\r\nContent-Length: 11\r\n\r\n", 413, 100);
  /* Chunked past the limit: refused as the bytes arrive. */
  expect_error("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n6\r\nhello \r\n6\r\nworld!\r\n0\r\n\r\n", 413, 4);
  lim = saved;
  /* Exactly at the limit is fine. */
  eng_http_parser p;
  size_t at;
  eng_http_limits exact = {.max_header_bytes = 1024, .max_url_bytes = 4, .max_body_bytes = 3};
  eng_http_parser_init(&p, &exact);
  CHECK_INT(feed_all(&p, "POST /abc HTTP/1.1\r\nContent-Length: 3\r\n\r\nxyz", 2, &at), ENG_HTTP_REQUEST);
  eng_http_parser_free(&p);
  /* Too many headers. */
  char many[8192] = "GET / HTTP/1.1\r\n";
  for (int i = 0; i < ENG_HTTP_MAX_HEADERS + 1; i++)
    strcat(many, "A: b\r\n");
  strcat(many, "\r\n");
  expect_error(many, 431, 1000);
}

static void test_malformed(void) {
  expect_error("GARBAGE\r\n\r\n", 400, 100);
  expect_error("GET / HTTP/1.1\r\nBad Header\r\n\r\n", 400, 100);
  expect_error("GET / HTTP/9.9\r\n\r\n", 400, 100);
  expect_error("GET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", 400, 100);
  expect_error("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", 400, 100);
  expect_error("GET http://example.com/ HTTP/1.1\r\n\r\n", 400, 100);
  expect_error("GET / HTTP/1.1\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n", 400, 100);
}

static void test_request_id_and_head(void) {
  CHECK(eng_http_request_id_ok("abc-123", 7));
  CHECK(!eng_http_request_id_ok("", 0));
  CHECK(!eng_http_request_id_ok("a b", 3));
  CHECK(!eng_http_request_id_ok("a\x01", 2));
  char big[200];
  memset(big, 'a', sizeof big);
  CHECK(eng_http_request_id_ok(big, 128));
  CHECK(!eng_http_request_id_ok(big, 129));

  eng_buf b = {0};
  CHECK_INT(eng_http_write_head(&b, 404, 1, 1, "application/json", 12, "rid", "Allow: GET\r\n", 12), 0);
  CHECK(strncmp(b.data, "HTTP/1.1 404 Not Found\r\nDate: ", 30) == 0);
  CHECK(strstr(b.data, "\r\nContent-Type: application/json\r\nContent-Length: 12\r\nX-Request-Id: rid\r\n") != NULL);
  CHECK(strstr(b.data, "Connection:") == NULL);
  CHECK(strstr(b.data, "Allow: GET\r\n\r\n") != NULL);
  eng_buf_reset(&b);
  CHECK_INT(eng_http_write_head(&b, 200, 0, 1, "text/plain", 0, "r", NULL, 0), 0);
  CHECK(strstr(b.data, "Connection: keep-alive\r\n") != NULL);
  eng_buf_reset(&b);
  CHECK_INT(eng_http_write_head(&b, 200, 1, 0, "text/plain", 0, "r", NULL, 0), 0);
  CHECK(strstr(b.data, "Connection: close\r\n") != NULL);
  eng_buf_free(&b);
}

int main(void) {
  eng_http_limits_default(&lim);
  test_simple();
  test_pipelined_and_close();
  test_chunked();
  test_continue();
  test_limits();
  test_malformed();
  test_request_id_and_head();
  return check_summary("test_http");
}
