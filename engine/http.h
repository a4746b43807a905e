/* http.h - HTTP/1.1 request parsing (llhttp glue), limits, query strings, responses.
 *
 * An eng_http_parser turns bytes into complete requests, one at a time, and
 * enforces the size limits as bytes arrive. It knows nothing about sockets:
 * the server feeds it what it reads, and the tests feed it strings.
 *
 * http.c: the parser, header lookup, query-string and form decoding, header checks,
 * response heads. http_response.c: eng_response (what a handler or the engine answers)
 * and the request id of an answer. Nothing here touches Lua. */
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
  int keep_alive;  /* after this request, per HTTP version and Connection */
  eng_buf url;     /* raw request target */
  size_t path_len; /* bytes of url before '?' or '#' */
  eng_buf hbuf;    /* header storage: "name\0value\0" pairs, names lowercased */
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
  size_t field_len;       /* bytes of the current header name so far */
  int value_ended;        /* the current value's last span stopped before the end of the fed bytes */
  const char *feed_end;   /* end of the bytes being fed (obs-fold detection) */
  int want_continue;      /* headers asked for 100-continue and the body has not come */
  int in_message;         /* between message begin and complete */
  int headers_done;       /* the current message's headers are complete (its body, if any, is arriving) */
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

/* ---- query strings and forms ---------------------------------------------------------------- */

/* One name=value item of a query string or form body, still encoded; the pointers are
 * borrowed from the string being split. */
typedef struct eng_http_param {
  const char *name;
  size_t name_len;
  const char *value; /* "" (value_len 0) when the item has no '=' */
  size_t value_len;
} eng_http_param;

/* The query string of req: the bytes of the request target after the '?' that ends its path
 * (a '#' and what follows included), or NULL with *len = 0 when the target has none. */
const char *eng_http_query(const eng_http_request *req, size_t *len);

/* Iterates the items of a query string q (n bytes, no leading '?'): split at '&', ending at
 * the first '#'; empty items are skipped; a name runs to the first '='. Start with *pos = 0;
 * returns 1 with *out set, or 0 at the end. */
int eng_http_query_next(const char *q, size_t n, size_t *pos, eng_http_param *out);

/* Form-decodes s (n bytes) into out, which has room for n bytes (decoding never grows): '+'
 * is a space, %XX a byte (hex digits of either case), a '%' not followed by two hex digits
 * stays as it is. Returns the decoded length. out may be s (decoding in place). */
size_t eng_http_form_decode(const char *s, size_t n, char *out);

/* Checks that every name and value of req's query string form-decodes to well-formed UTF-8
 * (scripts see them as strings they may echo in JSON). Returns 0, or ENG_EPARSE with why
 * (why_size bytes) naming the first bad parameter ("query parameter 'q' is not valid UTF-8";
 * a name that is not valid UTF-8 itself is not repeated), or ENG_ENOMEM. */
int eng_http_query_check_utf8(const eng_http_request *req, char *why, size_t why_size);

/* ---- response headers ----------------------------------------------------------------------- */

#define ENG_HTTP_HEADER_NAME_MAX 128

/* True when s (n bytes) may be sent as a header name: 1..ENG_HTTP_HEADER_NAME_MAX token
 * characters (RFC 9110 tchar: letters, digits and !#$%&'*+-.^_`|~). */
int eng_http_header_name_ok(const char *s, size_t n);
/* True when s (n bytes, may be 0) may be sent as a header value: no control character but
 * tab, no DEL (so no CR, LF or NUL: a value cannot split the response). */
int eng_http_header_value_ok(const char *s, size_t n);
/* True for the headers the engine writes itself, in any case: Content-Length,
 * Transfer-Encoding, Connection, Date, X-Request-Id. A handler's are dropped. */
int eng_http_header_reserved(const char *s, size_t n);

const char *eng_http_reason(int status);

/* 0 for the statuses whose answers never carry a body: 1xx, 204, 304. The head then has no
 * Content-Length and the caller sends no body (whatever the handler returned), so the
 * stream never desynchronises. */
int eng_http_status_has_body(int status);

/* Appends a response head: status line, Date, Server-less minimal headers,
 * Content-Type, Content-Length (not for 1xx, 204, 304), X-Request-Id, Connection (when closing or when
 * an HTTP/1.0 client keeps alive), then `extra` (already "Name: value\r\n" lines) and the blank line. */
int eng_http_write_head(eng_buf *out, int status, int http_minor, int keep_alive, const char *content_type,
                        size_t content_length, const char *request_id, const char *extra, size_t extra_len);

/* ---- responses (http_response.c) ------------------------------------------------------------ */

#define ENG_RESPONSE_CONTENT_TYPE_MAX 127

/* What is answered to one request. Owns its buffers; a zeroed one (eng_response_init) is
 * valid and empty. The server keeps one per worker and resets it between requests. */
typedef struct eng_response {
  int status;
  eng_buf headers; /* extra "Name: value\r\n" lines (the handler's, Allow, ...) */
  eng_buf body;
  char content_type[ENG_RESPONSE_CONTENT_TYPE_MAX + 1]; /* "" until set (written as application/json) */
} eng_response;

void eng_response_init(eng_response *r);
/* Empties r for the next answer, keeping its buffers' memory. */
void eng_response_reset(eng_response *r);
/* Releases the buffers; r is back to the init state. */
void eng_response_free(eng_response *r);

/* Adds a header a script set (name and value borrowed, n bytes each). Content-Type goes to
 * r->content_type; a reserved header (eng_http_header_reserved) is dropped; any other is
 * appended to r->headers. Returns 0, ENG_EINVAL with a static *why ("invalid header name or
 * value", "Content-Type too long"), or ENG_ENOMEM (*why "out of memory"); r is unchanged on
 * failure. */
int eng_response_add_header(eng_response *r, const char *name, size_t name_len, const char *value, size_t value_len,
                            const char **why);

/* The request id of the answer to req: the client's X-Request-Id when eng_http_request_id_ok
 * accepts it, else a new UUID v4 ("-" in the unlikely case the CSPRNG fails). req may be NULL
 * (nothing parsed). out always ends with a NUL. */
void eng_http_request_id(const eng_http_request *req, char out[ENG_HTTP_REQUEST_ID_MAX + 1]);

#endif
