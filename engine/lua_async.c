/* lua_async.c - the waits a route handler can suspend on (see lua_runtime_int.h's
 * eng_async_op): engine.time.sleep, a timer on the worker's loop. The suspension itself (the
 * engine's yield, keeping the request, resuming it, its deadline) is lua_runtime.c's. */
#include "error.h"
#include "lua_runtime_int.h"

#include <lauxlib.h>

static void sleep_over(uv_timer_t *t) { eng_pending_wake(t->data); }

static int sleep_start(eng_pending *p, uv_loop_t *loop, lua_Integer ms, void *ctx) {
  (void)loop; /* the timer is p's, already on it */
  (void)ctx;
  return uv_timer_start(eng_pending_timer(p), sleep_over, (uint64_t)ms, 0) == 0 ? 0 : ENG_EIO;
}

static void sleep_stop(eng_pending *p, void *ctx) {
  (void)ctx;
  uv_timer_stop(eng_pending_timer(p));
}

static const eng_async_op sleep_op = {.name = "engine.time.sleep", .start = sleep_start, .stop = sleep_stop};

int eng_lua_time_sleep(lua_State *L) {
  int isint = 0;
  lua_Integer ms = lua_type(L, 1) == LUA_TNUMBER ? lua_tointegerx(L, 1, &isint) : 0;
  if (!isint || ms < 0 || ms > ENG_SLEEP_MAX_MS)
    return luaL_argerror(L, 1, "integer milliseconds (0..3600000) expected");
  return eng_lua_async_yield(L, &sleep_op, ms, NULL, NULL, 0);
}
