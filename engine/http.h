/* http.h - HTTP/1.1 request parsing (llhttp glue), limits and response heads.
 *
 * An eng_http_parser turns bytes into complete requests, one at a time, and
 * enforces the size limits as bytes arrive. It knows nothing about sockets:
 * the server feeds it what it reads, and the tests feed it strings. */
#ifndef ENG_HTTP_H
#define ENG_HTTP_H

#include "buf.h"

#include <llhttp.h>
#include <stddef.h>
#include <stdint.h>

#define ENG_HTTP_DEFAULT_MAX_HEADER_BYTES (16u * 1024u)
#define ENG_HTTP_DEFAULT_MAX_URL_BYTES (8u * 1024u)
#define ENG_HTTP_DEFAULT_MAX_BODY_BYTES (1024u * 1024u)
#define ENG_HTTP_MAX_HEADERS 100
#define ENG_HTTP_REQUEST_ID_MAX 128

typedef struct eng_http_limits {
  size_t max_header_bytes; /* all header names + values (431) */
  size_t max_url_bytes;    /* request target (414) */
  size_t max_body_bytes;   /* body, decoded from chunks (413) */
} eng_http_limits;

void eng_http_limits_default(eng_http_limits *lim);

typedef struct eng_http_header {
  const char *name; /* lowercased; points into the request's header buffer */
  size_t name_len;
  const char *value;
  size_t value_len;
} eng_http_header;

typedef struct eng_http_request {
  const char *method; /* static string from llhttp */
  int http_major, http_minor;
  int keep_alive; /* after this request, per HTTP version and Connection */
  eng_buf url;    /* raw request target */
  size_t path_len; /* bytes of url before '?' or '#' */
  eng_buf hbuf;   /* header storage: "name\0value\0" pairs, names lowercased */
  int nheaders;
  eng_buf body;
} eng_http_request;

/* Result of eng_http_parser_feed. */
enum { ENG_HTTP_NEED_MORE = 0, ENG_HTTP_REQUEST = 1, ENG_HTTP_ERROR = 2 };

typedef struct eng_http_parser {
  llhttp_t parser;
  const eng_http_limits *limits;
  eng_http_request req;
  size_t header_bytes;
  int in_field;           /* inside a header name */
  int want_continue;      /* headers asked for 100-continue and the body has not come */
  int in_message;         /* between message begin and complete */
  int error_status;       /* 400, 413, 414, 431 when feed returned ENG_HTTP_ERROR */
  const char *error_code; /* "bad_request", ... */
  const char *error_reason;
} eng_http_parser;

/* limits is borrowed and must outlive the parser. */
void eng_http_parser_init(eng_http_parser *p, const eng_http_limits *limits);
/* Releases the request buffers (the parser can be re-used after init). Small ones
 * go to a per-thread stash that later requests on the same thread start from. */
void eng_http_parser_free(eng_http_parser *p);
/* Releases buffer memory while idle between requests (keeps idle connections small). */
void eng_http_parser_trim(eng_http_parser *p);

/* Feeds bytes. *consumed says how many were used:
 * - ENG_HTTP_REQUEST: p->req is complete; handle it, call eng_http_parser_next,
 *   then feed the rest (data + *consumed).
 * - ENG_HTTP_NEED_MORE: everything was consumed.
 * - ENG_HTTP_ERROR: error_status/error_code/error_reason are set; answer and close. */
int eng_http_parser_feed(eng_http_parser *p, const char *data, size_t len, size_t *consumed);
/* After handling an ENG_HTTP_REQUEST: clears the request and resumes the parser. */
void eng_http_parser_next(eng_http_parser *p);

/* Iterates headers: start with *pos = 0; returns 0 at the end. */
int eng_http_next_header(const eng_http_request *req, size_t *pos, eng_http_header *out);
/* Case-insensitive header lookup in a parsed request (name given lowercase). NULL if absent. */
int eng_http_find_header(const eng_http_request *req, const char *lname, eng_http_header *out);

/* True when s (len bytes) is an acceptable client request id: 1..128 printable ASCII. */
int eng_http_request_id_ok(const char *s, size_t len);

const char *eng_http_reason(int status);

/* Appends a response head: status line, Date, Server-less minimal headers,
 * Content-Type, Content-Length, X-Request-Id, Connection (when closing or when
 * an HTTP/1.0 client keeps alive), then `extra` (already "Name: value\r\n" lines) and the blank line. */
int eng_http_write_head(eng_buf *out, int status, int http_minor, int keep_alive, const char *content_type,
                        size_t content_length, const char *request_id, const char *extra, size_t extra_len);

#endif
