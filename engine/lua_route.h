/* lua_route.h - the route table of a runtime, with where each handler came from.
 *
 * engine.route (lua_route.c) records, for every route a script registers, the place of the
 * handler function and of the call that registered it, and for route.replace the place of the
 * call and of the handler it displaced. `apiengine routes` and `apiengine check` print it;
 * the start-up line counts it. */
#ifndef ENG_LUA_ROUTE_H
#define ENG_LUA_ROUTE_H

#include <stddef.h>

typedef struct eng_runtime eng_runtime;

typedef struct eng_route_info {
  int method;        /* ENG_M_* (router.h) */
  char *pattern;     /* as first registered */
  char *handler;     /* "file:line" where the routed function is defined, or "[C]" for a C function */
  char *registered;  /* "file:line" of the route.get/add call, or NULL */
  char *replaced_at; /* "file:line" of the last route.replace call, or NULL */
  char *replaced;    /* "file:line" of the handler the first route.replace displaced, or NULL */
} eng_route_info;

/* The routes of rt's last script load, sorted by pattern then method, in a malloc'd array
 * (*out, *n) the caller frees with eng_route_infos_free. Runs protected on rt's state: call it
 * between requests. ENG_ENOMEM with *err (malloc'd) on failure. */
int eng_runtime_routes(eng_runtime *rt, eng_route_info **out, size_t *n, char **err);
void eng_route_infos_free(eng_route_info *r, size_t n);

/* A request hook (route.before / route.after) of rt's last script load. */
typedef struct eng_hook_info {
  const char *kind; /* "before" or "after" (static) */
  char *handler;    /* "file:line" where the hook function is defined, or "[C]" */
} eng_hook_info;

/* The hooks of rt's last script load, before hooks then after hooks, each in the order they
 * run, in a malloc'd array (*out, *n; NULL, 0 when none) the caller frees with
 * eng_hook_infos_free. Runs protected on rt's state: call it between requests. ENG_ENOMEM
 * with *err (malloc'd) on failure. */
int eng_runtime_hooks(eng_runtime *rt, eng_hook_info **out, size_t *n, char **err);
void eng_hook_infos_free(eng_hook_info *h, size_t n);

#endif
