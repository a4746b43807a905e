/* lua_runtime_int.h - internal to the Lua layer: the eng_runtime struct and the functions
 * its files call in each other. Only engine/lua_*.c and the white-box tests/c/test_runtime.c
 * include it; everything else uses lua_runtime.h.
 *
 *   lua_runtime.c  state creation, budgets (allocator, count hook, budgeted runs, the deadline
 *                  checks of long C work, the SQL progress handler), dispatch (suspended
 *                  handlers included), the error hook
 *   lua_async.c    the waits a handler suspends on (engine.time.sleep)
 *   lua_load.c     script loading: files, overlays, require, text-only load, the sandbox
 *   lua_budget.c   the standard library functions that could run past the deadline in one C
 *                  call or without hooks, replaced by budget-aware ones (string.rep, table.sort,
 *                  table.move, xpcall, setmetatable, coroutine.create/wrap)
 *   lua_pattern.c  string.find/match/gmatch/gsub: Lua's patterns with deadline checks
 *   lua_request.c  the lazy request table handed to handlers
 *   lua_route.c    engine.route      lua_log.c  engine.log      lua_config.c  engine.config
 *   lua_modules.c  the table of engine modules registered in package.preload
 *
 * Every function declared below but eng_rt, eng_lua_protect and eng_lua_budget_over may raise
 * (memory errors at least): call it from Lua or under eng_lua_protect, never between protected
 * calls. */
#ifndef ENG_LUA_RUNTIME_INT_H
#define ENG_LUA_RUNTIME_INT_H

#include "lua_runtime.h"

#include <lua.h>
#include <stdint.h>
#include <uv.h>

/* A request whose handler is running: what its table's lazy fields are built from
 * (see lua_request.c). Lives on the C stack of eng_runtime_handle_in. */
typedef struct eng_live_request {
  const void *table; /* lua_topointer of the request table */
  const eng_http_request *req;
  const eng_route_match *m;
  const char *peer, *request_id;
  struct eng_live_request *prev; /* the request of the enclosing handler (test client), or NULL */
} eng_live_request;

/* The state's small blocks (lua_runtime.c's allocator): size classes ENG_POOL_GRAIN bytes apart up
 * to ENG_POOL_MAX, each a list of freed blocks kept for the next allocation of that class, at most
 * ENG_POOL_KEEP bytes in all. ENG_POOL is 0 (no pool) under AddressSanitizer. */
#if defined(__SANITIZE_ADDRESS__)
#define ENG_POOL 0
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define ENG_POOL 0
#endif
#endif
#ifndef ENG_POOL
#define ENG_POOL 1
#endif
#define ENG_POOL_KEEP ((size_t)1 << 20)
#define ENG_POOL_GRAIN 16
#define ENG_POOL_MAX 256
#define ENG_POOL_CLASSES (ENG_POOL_MAX / ENG_POOL_GRAIN)
typedef struct eng_pool_block {
  struct eng_pool_block *next;
} eng_pool_block;

struct eng_runtime {
  lua_State *L;
  eng_pool_block *pool[ENG_POOL_CLASSES]; /* freed small blocks by class (see l_alloc) */
  size_t pool_bytes;                      /* bytes held in pool, at most ENG_POOL_KEEP */
  eng_router *router;                     /* routes of the loaded scripts (lua_route.c adds, lua_load.c replaces) */
  eng_db *db;                             /* borrowed; NULL when detached */
  eng_pg *pg;                             /* borrowed; NULL when detached (engine.db on PostgreSQL) */
  char *scripts_dir;                      /* "dir[:dir...]" of the last load, for require (lua_load.c); may be NULL */
  int budget_ms;
  int load_budget_ms;         /* of eng_runtime_load_scripts (lua_load.c) */
  int loading;                /* a load is in progress: budget errors name the load budget */
  size_t mem_used, mem_limit; /* the allocator's count and cap, for the whole state */
  int budget_blown, mem_blown;
  int64_t deadline_ms;      /* of the budgeted run in progress (monotonic ms); ENG_NO_DEADLINE between runs */
  int storage_code;         /* SQLite code of a write the database could not store in this run, or 0 */
  int sql_hold;             /* > 0: the SQL progress handler lets statements finish (lua_db.c's rollbacks) */
  int error_hook;           /* registry ref of route.on_error's function, or LUA_NOREF */
  int before_hooks;         /* registry refs of the route.before / route.after functions: arrays in */
  int after_hooks;          /* registration order, or LUA_NOREF when there is none (lua_route.c) */
  int req_mt;               /* registry ref: metatable of request tables (lua_request.c) */
  int headers_mt;           /* registry ref: metatable of header tables */
  int key_method, key_path; /* registry refs: the key strings of the eagerly set request fields */
  eng_live_request *live;   /* requests whose handlers are running, innermost first */
  const char *request_id;   /* of the request being handled (for engine.log), or NULL */
  const char *route;        /* pattern of the last request's route (the router's), NULL: none */
  lua_State *co;            /* the reusable handler coroutine, or NULL (see run_budgeted in lua_runtime.c) */
  int co_ref;               /* its registry ref (the anchor), or LUA_NOREF */
  int co_busy;              /* co is running a call right now */
  uv_loop_t *loop;          /* where suspended handlers wait (borrowed), or NULL: none may */
  lua_State *suspendable;   /* the handler thread running now that may suspend, or NULL */
  int npending;             /* suspended requests (eng_pending) not yet released */
  int dispatching;          /* > 0: a request, a resumed handler or the error hook is running */
  int loop_idle;            /* the owner's loop is not running: engine.db may run it (eng_runtime_set_loop_idle) */
  int dying;                /* eng_runtime_free was called while npending > 0 */
};

/* ---- lua_runtime.c: suspension (see lua_runtime.h's suspendable handlers) ----
 *
 * A primitive that waits (engine.time.sleep in lua_async.c, a query in lua_db_pg.c) calls
 * eng_lua_async_yield with its operation: the handler's coroutine yields a marker only C can
 * make (a light userdata), the operation, one integer and a context pointer; the dispatcher
 * recognises the marker (any other yield out of a handler stays an error), keeps the request
 * (eng_pending) and calls op->start on the loop. The operation calls eng_pending_wake once its
 * wait is over; op->stop cancels it (deadline, abandon) and after stop it must not wake. A wait
 * that was yielded but never started (the suspension itself failed) gets op->drop instead, so
 * whatever the context owns (a query in flight) is let go either way. */
typedef struct eng_async_op {
  const char *name; /* for error messages: "engine.time.sleep" */
  /* Starts the wait: 0, or an ENG_E* code (the request is then answered 500; drop is not called:
   * start cleans up after itself). ctx: what the yield carried. */
  int (*start)(eng_pending *p, uv_loop_t *loop, lua_Integer arg, void *ctx);
  void (*stop)(eng_pending *p, void *ctx);
  void (*drop)(void *ctx); /* may be NULL (nothing to let go) */
  int in_tx;               /* may wait inside db.tx (the transaction's own queries) */
} eng_async_op;

/* Yields the running handler to the engine for op with arg and ctx (from a C function: `return
 * eng_lua_async_yield(...)`). When the wait ends the handler resumes in k(L, LUA_YIELD, kctx)
 * (lua_yieldk's continuation; k NULL: the C function returns no values). Raises a clear error
 * where no wait is allowed: outside a route handler (hooks, the error hook, load time, no loop),
 * in a coroutine the script made, inside db.tx (unless op->in_tx), or under a C call that cannot
 * yield (xpcall, a metamethod); check with eng_lua_async_refusal first when a refusal must not
 * raise (ctx owns something). */
int eng_lua_async_yield(lua_State *L, const eng_async_op *op, lua_Integer arg, void *ctx, lua_KFunction k,
                        lua_KContext kctx);

/* NULL when L may yield op right now, else why not (a static message naming op's kind of wait).
 * Never raises. */
const char *eng_lua_async_refusal(lua_State *L, const eng_async_op *op);

/* 1 when L may instead wait for the loop in place (uv_run): nothing of the runtime is being
 * dispatched (no request, hook, or error hook running) and the owner said its loop is idle
 * (eng_runtime_set_loop_idle). Never raises. */
int eng_lua_can_run_loop(lua_State *L);

/* Resumes the suspended handler of p (no values returned to it). Call from the loop only. */
void eng_pending_wake(eng_pending *p);

/* A timer that belongs to p, initialised on the runtime's loop, for the operation's use (its
 * data field is p); closed with p. */
uv_timer_t *eng_pending_timer(eng_pending *p);

/* The milliseconds left of L's budgeted run (at least 1), or 0 when none is in progress (spec
 * code, the CLI). Raises the budget error when it is already over. Needs one free stack slot. */
int64_t eng_lua_budget_left(lua_State *L);

/* Marks the run of L blown and raises the budget error (a wait that ran out of time in C, a
 * PostgreSQL query past its timeout). Never returns. */
int eng_lua_budget_raise(lua_State *L);

/* The runtime of a Lua state created by eng_runtime_new (any of its threads). */
static inline eng_runtime *eng_rt(lua_State *L) { return *(eng_runtime **)lua_getextraspace(L); }

/* Runs fn(L) with ud as its one argument (a light userdata) under lua_pcall, like lua.c's
 * pmain: the C glue between calls into Lua allocates on the state too, and a memory error
 * there must become an answer or a start-up error, not a panic. Leaves nresults results,
 * or the error object, on L's top; returns the lua_pcall status. Needs two free stack
 * slots (any C function called by Lua has them). */
static inline int eng_lua_protect(lua_State *L, lua_CFunction fn, void *ud, int nresults) {
  lua_pushcfunction(L, fn);
  lua_pushlightuserdata(L, ud);
  return lua_pcall(L, 1, nresults, 0);
}

/* ---- lua_runtime.c: the time budget of C code ----
 *
 * The count hook stops Lua code at the deadline; C code that can run long in one call (pattern
 * matching, big copies, sorts) checks the deadline itself now and then through these. They find
 * the runtime through the registry, so they are safe (no-ops) in a plain lua_State that opened
 * the same functions (the C tests and fuzz targets). */

#define ENG_NO_DEADLINE INT64_MAX

/* Raises the budget error ("script budget exceeded (N ms)") when a budgeted run of L's runtime
 * is past its deadline or already blown, and makes the count hook of L raise on every
 * instruction, so a script's pcall cannot swallow it. Returns (does nothing) otherwise: between
 * runs, and in states eng_runtime_new did not make. Needs one free stack slot. */
void eng_lua_budget_check(lua_State *L);

/* 1 when a budgeted run of L's runtime is past its deadline (which marks it blown), else 0.
 * Never raises. Needs one free stack slot. */
int eng_lua_budget_over(lua_State *L);

/* Starts (or ends, with on = 0) the budget of a script load: the deadline is now plus the load
 * budget, the flags are cleared, and budget errors say the load budget was exceeded. What was
 * in force before is kept in *saved_deadline and put back at the end. Never raises. */
void eng_lua_budget_load(eng_runtime *rt, int on, int64_t *saved_deadline);

/* lua_db.c reports a write the database could not store (SQLITE_READONLY, SQLITE_FULL,
 * SQLITE_IOERR: the disk, not the request): if the handler then fails, the answer is 503 with
 * Retry-After (ENG_STORAGE_RETRY_AFTER_S) and one log line naming the cause. Never raises. */
#define ENG_STORAGE_RETRY_AFTER_S 30
void eng_lua_storage_failed(lua_State *L, int sqlite_code);
#define ENG_STORAGE_PG_DOWN (-1) /* eng_lua_storage_failed's code for a PostgreSQL pool that is down */

/* lua_db.c brackets the statements that undo a failed transaction with +1 / -1: while any is
 * running, the SQL progress handler does not interrupt statements past the deadline (a rollback
 * must finish). No-op in states eng_runtime_new did not make. */
void eng_lua_budget_sql_hold(lua_State *L, int delta);

/* ---- lua_async.c ---- */

#define ENG_SLEEP_MAX_MS 3600000 /* engine.time.sleep's longest wait (the budget ends most sooner) */

/* engine.time.sleep(ms): suspends the route handler for ms milliseconds (a timer on the
 * runtime's loop); the worker serves other requests meanwhile. */
int eng_lua_time_sleep(lua_State *L);

/* ---- lua_budget.c ---- */

/* Replaces, in L's global environment and the string metatable's __index, the functions that
 * would run past the deadline in one C call (string.find, match, gmatch, gsub, rep; table.sort,
 * move) or run script code with the count hook off (xpcall's message handler, __gc finalizers,
 * to-be-closed variables of a coroutine the hook stopped) by budget-aware ones (lua_budget.c). */
void eng_lua_budget_install(lua_State *L);

/* ---- lua_pattern.c ---- */

/* Sets find, match, gmatch and gsub in the table at idx to the engine's pattern functions: Lua
 * 5.4's semantics (results and error messages of lstrlib), with eng_lua_budget_check every few
 * thousand matcher steps. */
void eng_lua_pattern_set(lua_State *L, int idx);

/* ---- lua_load.c ---- */

/* Installs the budget-aware library functions (eng_lua_budget_install), makes load()
 * text-only, puts the scripts searcher into package.searchers and, unless test_mode, takes
 * away process control, the file system and most of debug. */
void eng_lua_load_sandbox(lua_State *L, int test_mode);
/* Once the state is set up: makes the standard library, package and the global table read-only
 * to scripts (proxies, see lua_load.c), rawset refuse them, reading an undeclared global an
 * error, and the proxy of _G the environment of every chunk loaded from then on. In test_mode
 * busted keeps the real globals: the scripts' chunks (and their load) get a frozen copy. */
void eng_lua_load_freeze(lua_State *L, int test_mode);
/* Replaces the table at idx with a read-only proxy of it; name is for error messages. */
void eng_lua_load_readonly(lua_State *L, int idx, const char *name);
/* Makes a read-only proxy of the table at idx (left there) that require and package.loaded give
 * scripts in its place once the state is frozen (eng_lua_load_freeze). */
void eng_lua_load_register_readonly(lua_State *L, int idx, const char *name);

/* ---- lua_request.c ---- */

/* Creates the metatables and key strings request tables use (rt->req_mt, ...). */
void eng_lua_request_init(eng_runtime *rt, lua_State *L);
/* Pushes the request table of lr->req (method and path set, the other fields built on
 * first read) and makes lr the innermost live request. The caller fills lr's req, m,
 * peer and request_id first and unlinks lr (rt->live = lr->prev) once the handler is done;
 * if this raises, lr is not linked. */
void eng_lua_request_push(eng_runtime *rt, lua_State *L, eng_live_request *lr);

/* ---- lua_route.c ---- */

/* Drops the request hooks and the error hook (route.before, route.after, route.on_error): a
 * script load starts without them, as it starts with a fresh router. */
void eng_lua_route_reset_hooks(eng_runtime *rt, lua_State *L);

/* ---- lua_modules.c ---- */

/* Registers every engine module (engine.json, engine.route, ...) in package.preload; with
 * readonly, require gives scripts a read-only proxy of each (eng_lua_load_register_readonly). */
void eng_lua_modules_preload(lua_State *L, int readonly);

#endif
