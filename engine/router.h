/* router.h - method + path routing with {param} segments.
 *
 * Patterns are absolute paths split on '/': each segment is either static text
 * or `{name}` (a whole segment). Matching prefers a static segment over a
 * parameter at every level and backtracks, so `/v2/integrations/customer`
 * wins over `/v2/integrations/{customer_id}`. The first path node that has any
 * handler decides the answer: its handler for the method (HEAD falls back to
 * GET), or 405 with the node's methods. A handler is an opaque int (the Lua
 * runtime stores registry references). */
#ifndef ENG_ROUTER_H
#define ENG_ROUTER_H

#include <stddef.h>

enum { ENG_M_GET = 0, ENG_M_HEAD, ENG_M_POST, ENG_M_PUT, ENG_M_PATCH, ENG_M_DELETE, ENG_M_OPTIONS, ENG_M_COUNT_ };

#define ENG_ROUTER_MAX_PARAMS 16   /* per pattern */
#define ENG_ROUTER_MAX_SEGMENTS 64 /* per pattern or path */
#define ENG_ROUTER_MAX_PATTERN 1024

typedef struct eng_router eng_router;

typedef struct eng_route_param {
  const char *name; /* borrowed from the router */
  size_t name_len;
  const char *value; /* percent-decoded, in the caller's scratch buffer */
  size_t value_len;
} eng_route_param;

typedef struct eng_route_match {
  int status;     /* 200 (handler found), 404 or 405 */
  int handler;    /* valid when status == 200 */
  unsigned allow; /* bit mask of ENG_M_* at the matched node (405 answers and Allow) */
  int nparams;
  eng_route_param params[ENG_ROUTER_MAX_PARAMS];
  const char *pattern; /* the matched pattern, borrowed from the router (status 200/405) */
} eng_route_match;

int eng_router_new(eng_router **out);
void eng_router_free(eng_router *r);

/* Maps a method name ("GET", ...) to ENG_M_*; -1 when the router does not know it. */
int eng_router_method(const char *name, size_t len);
const char *eng_router_method_name(int method);

/* Adds a route. The pattern is copied. Errors: ENG_EINVAL (bad pattern or method, or a
 * {name} where an earlier route has a parameter of another name: one tree node serves
 * both, so names must agree; *errmsg says why), ENG_EEXISTS (same method and same
 * pattern already routed), ENG_ENOMEM. Nothing is added on error. */
int eng_router_add(eng_router *r, int method, const char *pattern, int handler, const char **errmsg);

/* The handler slot of an existing route, found by pattern shape (parameter names
 * ignored), or NULL when that method and pattern are not routed. Writing through
 * the pointer replaces the handler (the caller releases the old one). */
int *eng_router_slot(eng_router *r, int method, const char *pattern);

/* Matches a raw request path (no query string). scratch must hold at least
 * path_len + 1 bytes: parameter values are decoded into it and point there.
 * A path with a malformed %-escape or too many segments matches nothing (404). */
void eng_router_match(const eng_router *r, int method, const char *path, size_t path_len, char *scratch,
                      eng_route_match *m);

/* Writes "GET, HEAD, POST" for an allow mask into out (>= 64 bytes). */
void eng_router_allow_string(unsigned allow, char *out, size_t size);

/* Calls fn for every handler stored (to release references). */
void eng_router_each_handler(const eng_router *r, void (*fn)(int handler, void *ud), void *ud);

#endif
