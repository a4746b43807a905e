/* lua_metrics.c - the "engine.metrics" module: a script's own metrics, kept in C (metrics.h) and
 * served with the engine's on --metrics-listen.
 *
 *   metrics.counter(name, help [, labels])            -> counter   c:inc([n,] [label_values])
 *   metrics.gauge(name, help [, labels])              -> gauge     g:set(v [, label_values])
 *                                                                  g:inc([n,] [..]) g:dec([n,] [..])
 *   metrics.histogram(name, help [, labels [, buckets]]) -> histogram  h:observe(v [, label_values])
 *
 * labels is a list of label names; label_values a table naming a value (string or number) for
 * each of them, and nothing else. Declaring the same name again (each worker loads the scripts,
 * and again at each reload) gives the same metric, so the scrape adds every worker's values; a
 * different type, labels or buckets raise. Wrong arguments raise; a new label set past the
 * metric's cap is refused: the call returns nil and a message (nothing is counted). Recording is
 * a no-op when the server runs without --metrics-listen (and in `apiengine test`). */
#include "error.h"
#include "lua_common.h"
#include "metrics.h"

#include <lauxlib.h>
#include <math.h>
#include <string.h>

static const char *const type_names[] = {"engine.metrics.counter", "engine.metrics.gauge", "engine.metrics.histogram"};

typedef struct metric {
  int id;
} metric;

static metric *check_metric(lua_State *L, eng_metric_type type) { return luaL_checkudata(L, 1, type_names[type]); }

/* Reads the label names at idx (a list of strings, or nil) into names; pushes nothing (the
 * strings stay alive in the table, which the caller's stack holds). */
static int label_names(lua_State *L, int idx, const char *names[ENG_METRICS_MAX_LABELS]) {
  if (lua_isnoneornil(L, idx))
    return 0;
  luaL_checktype(L, idx, LUA_TTABLE);
  lua_Integer n = luaL_len(L, idx);
  luaL_argcheck(L, n <= ENG_METRICS_MAX_LABELS, idx, "at most 8 label names");
  for (lua_Integer i = 1; i <= n; i++) {
    if (lua_rawgeti(L, idx, i) != LUA_TSTRING)
      luaL_argerror(L, idx, "label names must be strings");
    names[i - 1] = lua_tostring(L, -1);
    lua_pop(L, 1); /* still referenced by the table */
  }
  return (int)n;
}

static int declare(lua_State *L, eng_metric_type type) {
  const char *name = luaL_checkstring(L, 1);
  const char *help = luaL_checkstring(L, 2);
  const char *names[ENG_METRICS_MAX_LABELS];
  int nlabels = label_names(L, 3, names);
  double buckets[ENG_METRICS_MAX_BUCKETS];
  int nb = 0;
  if (type == ENG_METRIC_HISTOGRAM && !lua_isnoneornil(L, 4)) {
    luaL_checktype(L, 4, LUA_TTABLE);
    lua_Integer n = luaL_len(L, 4);
    luaL_argcheck(L, n >= 1 && n <= ENG_METRICS_MAX_BUCKETS, 4, "from 1 to 30 bucket bounds");
    for (lua_Integer i = 1; i <= n; i++) {
      if (lua_rawgeti(L, 4, i) != LUA_TNUMBER)
        luaL_argerror(L, 4, "bucket bounds must be numbers");
      buckets[i - 1] = lua_tonumber(L, -1);
      lua_pop(L, 1);
    }
    nb = (int)n;
  }
  int id = -1;
  const char *why = NULL;
  if (eng_metrics_declare(type, name, help, names, nlabels, buckets, nb, &id, &why) != 0)
    return luaL_error(L, "metrics.%s('%s'): %s",
                      type == ENG_METRIC_COUNTER ? "counter"
                      : type == ENG_METRIC_GAUGE ? "gauge"
                                                 : "histogram",
                      name, why);
  metric *m = lua_newuserdatauv(L, sizeof *m, 0);
  m->id = id;
  luaL_setmetatable(L, type_names[type]);
  return 1;
}

static int l_counter(lua_State *L) { return declare(L, ENG_METRIC_COUNTER); }
static int l_gauge(lua_State *L) { return declare(L, ENG_METRIC_GAUGE); }
static int l_histogram(lua_State *L) { return declare(L, ENG_METRIC_HISTOGRAM); }

/* The series of m for the label values at idx (a table, or none/nil for a metric without
 * labels). Raises on a missing, extra or ill-typed value; returns 0 with *series, or pushes nil
 * and the message and returns 2 (a new label set refused). */
static int series_of(lua_State *L, const metric *m, int idx, int *series) {
  int n = eng_metrics_family_labels(m->id);
  const char *values[ENG_METRICS_MAX_LABELS] = {0};
  size_t lens[ENG_METRICS_MAX_LABELS] = {0};
  if (n == 0) {
    int empty = lua_isnoneornil(L, idx);
    if (!empty && lua_istable(L, idx)) {
      lua_pushnil(L);
      empty = lua_next(L, idx) == 0;
      lua_settop(L, idx);
    }
    luaL_argcheck(L, empty, idx, "this metric has no labels");
  } else {
    luaL_checktype(L, idx, LUA_TTABLE);
    luaL_checkstack(L, n, "label values");
    for (int i = 0; i < n; i++) {
      const char *label = eng_metrics_family_label(m->id, i);
      int t = lua_getfield(L, idx, label);
      if (t != LUA_TSTRING && t != LUA_TNUMBER)
        return luaL_error(L, "label '%s' needs a string or number value (got %s)", label, lua_typename(L, t));
      values[i] = lua_tolstring(L, -1, &lens[i]); /* a number becomes a string in place: a copy */
    }
    int count = 0;
    lua_pushnil(L);
    while (lua_next(L, idx)) {
      lua_pop(L, 1);
      count++;
    }
    if (count != n)
      return luaL_error(L, "label values name a label this metric does not have (it has %d)", n);
  }
  const char *why = NULL;
  if (eng_metrics_series(m->id, values, lens, series, &why) != 0) {
    lua_pushnil(L);
    lua_pushstring(L, why);
    return 2;
  }
  return 0;
}

/* c:inc([n,] [labels]) and g:inc / g:dec: the amount (default 1) and where the labels are. */
static double amount(lua_State *L, int *labels_idx) {
  if (lua_type(L, 2) == LUA_TNUMBER) {
    *labels_idx = 3;
    return lua_tonumber(L, 2);
  }
  luaL_argcheck(L, lua_isnoneornil(L, 2) || lua_istable(L, 2), 2, "a number or the label values");
  *labels_idx = 2;
  return 1;
}

static int add(lua_State *L, eng_metric_type type, double sign) {
  metric *m = check_metric(L, type);
  int lidx;
  double v = amount(L, &lidx) * sign;
  luaL_argcheck(L, isfinite(v), 2, "the amount must be finite");
  if (type == ENG_METRIC_COUNTER)
    luaL_argcheck(L, v >= 0, 2, "a counter only goes up");
  int s, r = series_of(L, m, lidx, &s);
  if (r)
    return r;
  eng_metrics_series_add(s, v);
  lua_pushboolean(L, 1);
  return 1;
}

static int c_inc(lua_State *L) { return add(L, ENG_METRIC_COUNTER, 1); }
static int g_inc(lua_State *L) { return add(L, ENG_METRIC_GAUGE, 1); }
static int g_dec(lua_State *L) { return add(L, ENG_METRIC_GAUGE, -1); }

static int g_set(lua_State *L) {
  metric *m = check_metric(L, ENG_METRIC_GAUGE);
  double v = luaL_checknumber(L, 2);
  luaL_argcheck(L, isfinite(v), 2, "the value must be finite");
  int s, r = series_of(L, m, 3, &s);
  if (r)
    return r;
  eng_metrics_series_set(s, v);
  lua_pushboolean(L, 1);
  return 1;
}

static int h_observe(lua_State *L) {
  metric *m = check_metric(L, ENG_METRIC_HISTOGRAM);
  double v = luaL_checknumber(L, 2);
  luaL_argcheck(L, isfinite(v), 2, "the value must be finite");
  int s, r = series_of(L, m, 3, &s);
  if (r)
    return r;
  eng_metrics_series_add(s, v);
  lua_pushboolean(L, 1);
  return 1;
}

static void new_type(lua_State *L, eng_metric_type type, const luaL_Reg *methods) {
  luaL_newmetatable(L, type_names[type]);
  lua_newtable(L);
  luaL_setfuncs(L, methods, 0);
  lua_setfield(L, -2, "__index");
  lua_pushboolean(L, 0);
  lua_setfield(L, -2, "__metatable"); /* getmetatable gives false: scripts cannot reach it */
  lua_pop(L, 1);
}

int eng_luaopen_metrics(lua_State *L) {
  static const luaL_Reg counter_m[] = {{"inc", c_inc}, {NULL, NULL}};
  static const luaL_Reg gauge_m[] = {{"set", g_set}, {"inc", g_inc}, {"dec", g_dec}, {NULL, NULL}};
  static const luaL_Reg hist_m[] = {{"observe", h_observe}, {NULL, NULL}};
  static const luaL_Reg funcs[] = {
      {"counter", l_counter}, {"gauge", l_gauge}, {"histogram", l_histogram}, {NULL, NULL}};
  new_type(L, ENG_METRIC_COUNTER, counter_m);
  new_type(L, ENG_METRIC_GAUGE, gauge_m);
  new_type(L, ENG_METRIC_HISTOGRAM, hist_m);
  luaL_newlib(L, funcs);
  return 1;
}
