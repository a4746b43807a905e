/* lua_runtime.h - one Lua state per worker: scripts, routes, budgets, dispatch.
 *
 * The runtime owns its lua_State and its router. It is not thread-safe: each
 * worker thread has its own. Every call into Lua is protected, and so is the C
 * glue around those calls: a script error, a blown budget or a memory error
 * becomes a 500 / 503 response and a log line with the traceback and request
 * id, never a crash. The files behind it: lua_runtime_int.h. */
#ifndef ENG_LUA_RUNTIME_H
#define ENG_LUA_RUNTIME_H

#include "buf.h"
#include "http.h"
#include "router.h"

#include <lua.h>
#include <stddef.h>
#include <uv.h>

typedef struct eng_db eng_db;
typedef struct eng_runtime eng_runtime;
typedef struct eng_pg eng_pg; /* pg.h */

#define ENG_RUNTIME_LOAD_BUDGET_MS 30000 /* the default load budget (config.h's ENG_DEFAULT_LOAD_BUDGET_MS) */

typedef struct eng_runtime_options {
  const char *scripts_dir; /* loaded at creation (server mode), "dir[:dir...]"; may be NULL */
  const eng_buf *settings; /* engine.config's settings as eng_config_load packed them
                              (eng_config.settings); borrowed for the call; NULL: none */
  int budget_ms;           /* per handler call */
  int load_budget_ms;      /* for loading the scripts, all of them, in each eng_runtime_load_scripts;
                              0: ENG_RUNTIME_LOAD_BUDGET_MS */
  size_t memory_limit;     /* bytes for the whole Lua state */
  int test_mode;           /* full standard library, writable globals, system package paths (busted) */
  eng_db *db;              /* attached before the scripts load, so they can read it at start-up; may be NULL */
  eng_pg *pg;              /* the same for PostgreSQL (in place of db); may be NULL */
  uv_loop_t *idle_loop;    /* pg's loop, when it is not running during this call: the load may run it to
                              wait for a query; NULL (a reload inside the running loop): a query at load
                              time is refused. Only for the load: eng_runtime_set_loop comes after. */
} eng_runtime_options;

/* Creates the state, opens the engine modules and, when scripts_dir is set,
 * loads every scripts_dir/ *.lua file in name order. A load or runtime error in
 * a script, or a load that runs past load_budget_ms or the memory cap, fails with
 * ENG_ELUA and *err = a malloc'd message naming file:line;
 * a state that cannot be built (memory) with ENG_ENOMEM and a message. opt and
 * what it points to are borrowed for the call (opt->db: until detached). */
int eng_runtime_new(eng_runtime **out, const eng_runtime_options *opt, char **err);
/* Frees the runtime, or, while requests of it are suspended (eng_runtime_handle_async), marks it
 * to be freed once the last of them has ended (answered or abandoned): a reload swaps in a new
 * runtime without waiting for them. Either way the caller must not use rt afterwards. */
void eng_runtime_free(eng_runtime *rt);

/* The libuv loop a suspended handler waits on (engine.time.sleep's timer, the request's
 * deadline timer); borrowed, must outlive the runtime's suspended requests. Without a loop
 * (NULL, the default) a handler cannot suspend: engine.time.sleep raises. */
void eng_runtime_set_loop(eng_runtime *rt, uv_loop_t *loop);

/* Tells the runtime whether its loop is idle on this thread (idle = 1: not inside uv_run, as at
 * start-up or in the test harness between requests). Only then may engine.db on PostgreSQL wait
 * for a query by running the loop itself where the caller cannot yield (script load, spec code,
 * the CLI); off by default, so a reload inside a running worker refuses instead of re-entering
 * uv_run. Request dispatch never runs the loop, whatever this says. */
void eng_runtime_set_loop_idle(eng_runtime *rt, int idle);

/* The runtime's main Lua state (owned by the runtime). */
lua_State *eng_runtime_lua(eng_runtime *rt);
/* The connection engine.db uses (borrowed; NULL detaches). Does not allocate on the
 * state, so it may be called between protected calls. Sets the connection's SQLite progress
 * handler (a statement still running past a handler's deadline is interrupted) and takes it
 * off again on detach and in eng_runtime_free: detach or free the runtime before closing db. */
void eng_runtime_set_db(eng_runtime *rt, eng_db *db);
/* A PostgreSQL pool (pg.h) on the runtime's loop, for engine.db in place of SQLite (borrowed;
 * NULL detaches). A runtime has at most one of the two attached: attaching one detaches the
 * other. Detach or free the runtime before closing the pool. */
void eng_runtime_set_pg(eng_runtime *rt, eng_pg *pg);

/* Sets the load budget of later eng_runtime_load_scripts calls (ms; 0: the default). */
void eng_runtime_set_load_budget(eng_runtime *rt, int ms);

/* Loads the route scripts of dirs (as eng_runtime_new does), replacing the routes
 * already registered. dirs is one directory or several separated by ':', an
 * overlay: the first directory's *.lua files run in name order, a same-named
 * file of a later directory taking the place of an earlier one, then each later
 * directory's other files in name order; `require` searches the last directory
 * first. The whole load runs under the load budget (the count hook and the deadline checks of
 * long C work, as a handler runs under its budget) and the memory cap: past either it stops
 * with ENG_ELUA and a message naming the file:line and the setting that sets the limit.
 * ENG_ELUA (or ENG_EINVAL, ENG_ETOOBIG) with a malloc'd *err on failure. */
int eng_runtime_load_scripts(eng_runtime *rt, const char *dirs, char **err);

/* Routes and runs one request. Always fills resp (errors become responses); resp must
 * be empty or reset (eng_response_reset). req, peer and request_id are borrowed. */
void eng_runtime_handle(eng_runtime *rt, const eng_http_request *req, const char *peer, const char *request_id,
                        eng_response *resp);

/* ---- suspendable handlers ----
 *
 * A route handler may wait for I/O without blocking the worker (engine.time.sleep): its
 * coroutine yields to the engine, the wait runs on the runtime's loop, and the handler resumes
 * when it ends. Only the handler suspends: before hooks, after hooks and the error hook run to
 * completion (a wait there raises). The request's budget covers the wait: at its deadline a
 * waiting request is answered 503 budget_exceeded and its coroutine closed. */
typedef struct eng_pending eng_pending;

/* Called once with the answer of a suspended request: resp, request_id and route (the matched
 * pattern, or NULL) are borrowed for the call. The callback may start the next request on the
 * same runtime; it must not call eng_pending_abandon(p). */
typedef void (*eng_pending_done_fn)(void *ud, eng_response *resp, const char *request_id, const char *route);

/* eng_runtime_handle that lets the handler suspend. Returns 0 when resp is filled (the
 * synchronous path, no allocation more than eng_runtime_handle), or 1 when the handler is
 * suspended: *out is set, resp is left empty, and done(ud, ...) is called later from the loop
 * with the answer, unless eng_pending_abandon(*out) is called first. req must stay valid (and
 * unchanged) until then; peer and request_id are copied. */
int eng_runtime_handle_async(eng_runtime *rt, const eng_http_request *req, const char *peer, const char *request_id,
                             eng_response *resp, eng_pending_done_fn done, void *ud, eng_pending **out);

/* The same from a running Lua thread L of the runtime's state (the in-process test client):
 * the handler resumes on L, which must be running (blocked in the loop) whenever the loop
 * wakes the request, until done is called. */
int eng_runtime_handle_async_in(eng_runtime *rt, lua_State *L, const eng_http_request *req, const char *peer,
                                const char *request_id, eng_response *resp, eng_pending_done_fn done, void *ud,
                                eng_pending **out);

/* Drops a suspended request whose answer nobody wants any more (its connection closed): its
 * wait stops, its coroutine is closed (to-be-closed variables run under what is left of its
 * budget), done is never called. p is invalid afterwards. */
void eng_pending_abandon(eng_pending *p);

/* Requests suspended on the runtime right now. */
int eng_runtime_pending(const eng_runtime *rt);

/* Fills resp with the engine's own error answer, shaped by the script error hook
 * when one is set (route.on_error). Keeps headers already in resp (Allow, ...). */
void eng_runtime_error(eng_runtime *rt, int status, const char *code, const char *message, const char *request_id,
                       eng_response *resp);

/* The same, run from the Lua thread L of this runtime's state (a C function called
 * by a script, e.g. the in-process test client): L must be the running thread. */
void eng_runtime_handle_in(eng_runtime *rt, lua_State *L, const eng_http_request *req, const char *peer,
                           const char *request_id, eng_response *resp);
void eng_runtime_error_in(eng_runtime *rt, lua_State *L, int status, const char *code, const char *message,
                          const char *request_id, eng_response *resp);

/* Where an engine error answer arose, for the error hook's path and route arguments: the raw
 * request path (path_len bytes, not NUL-terminated; NULL: none known) and the pattern of the
 * route the router matched (NULL: none, a 404). Borrowed for the call. */
typedef struct eng_error_place {
  const char *path;
  size_t path_len;
  const char *route;
} eng_error_place;

/* eng_runtime_error_in with the place (at may be NULL: the hook gets nil for both). */
void eng_runtime_error_at(eng_runtime *rt, lua_State *L, int status, const char *code, const char *message,
                          const char *request_id, const eng_error_place *at, eng_response *resp);

/* The pattern of the route that answered the last eng_runtime_handle (borrowed from the router,
 * valid until the runtime is freed), or NULL when none did (404, 405, 400). */
const char *eng_runtime_route(const eng_runtime *rt);

/* Bytes the Lua state currently holds. */
size_t eng_runtime_memory(const eng_runtime *rt);

/* A full garbage collection of the state, between requests (the worker calls it once it has
 * been idle for a while, so the garbage of its last requests does not stay until the next
 * one). Script finalizers are refused at load, so no script code runs. */
void eng_runtime_collect(eng_runtime *rt);

#endif
