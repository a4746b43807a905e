/* test_metrics_render.c - the whole exposition of a registry in a known state, byte for byte.
 * The scrape caches label text and formats numbers by hand for speed; this pins its output to
 * the text the printf-based renderer gave (captured from it), every line and its order: the
 * engine's metrics with several routes (an escaped pattern, unmatched, statuses outside the
 * list), two shards, negative gauges, and script counters, gauges and histograms whose values
 * need %.15g, %.17g, exponents, infinities and NaN. Its own binary: the registry is one per
 * process, and this state must be the first. */
#include "check.h"
#include "metrics.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

static int series(int id, const char *a, const char *b) {
  const char *v[] = {a, b};
  size_t lens[] = {a ? strlen(a) : 0, b ? strlen(b) : 0};
  const char *why = NULL;
  int s = -1;
  CHECK_INT(eng_metrics_series(id, v, lens, &s, &why), 0);
  return s;
}

static void fill(void) {
  CHECK_INT(eng_metrics_enable(2), 0);
  eng_metrics_bind_shard(0);
  eng_metrics_request("/hello", "GET", 200, 0.0001);
  eng_metrics_request("/hello", "GET", 200, 0.003);
  eng_metrics_request("/hello", "HEAD", 200, 0.7);
  eng_metrics_request("/v2/\"q\"\\{id}", "DELETE", 418, 12);
  eng_metrics_request(NULL, "BREW", 404, 0.1);
  eng_metrics_request(NULL, "GET", 599, 0.1 + 0.2);
  eng_metrics_script_error("/v2/\"q\"\\{id}");
  eng_metrics_budget_exceeded(0);
  eng_metrics_conn_state(ENG_METRICS_CONN_NONE, ENG_METRICS_CONN_IDLE);
  eng_metrics_conn_state(ENG_METRICS_CONN_IDLE, ENG_METRICS_CONN_ACTIVE);
  eng_metrics_lua_memory(18446744073709551615u);
  eng_metrics_db_query(1e-7);
  eng_metrics_db_busy_wait();
  eng_metrics_bind_shard(1);
  eng_metrics_request("/hello", "GET", 200, 1.0 / 3.0);
  eng_metrics_request("/registered/but/never/answered", NULL, 100, 0);    /* counted: it shows */
  eng_metrics_conn_state(ENG_METRICS_CONN_ACTIVE, ENG_METRICS_CONN_NONE); /* idle -1 here, +1 there */
  eng_metrics_conn_state(ENG_METRICS_CONN_NONE, ENG_METRICS_CONN_CLOSING);
  eng_metrics_script_error("/errors/only"); /* a route with no answer: only its error count shows */
  eng_metrics_lua_memory(0);
  eng_metrics_db_query(123456789.125);
  eng_metrics_reload("done");
  eng_metrics_reload("refused");
  eng_metrics_reload("refused");

  const char *why = NULL;
  int c = -1, g = -1, h = -1, h2 = -1;
  const char *two[] = {"plan", "region"};
  const char *one[] = {"k"};
  CHECK_INT(
      eng_metrics_declare(ENG_METRIC_COUNTER, "app_things_total", "Things.\\ Two\nlines", two, 2, NULL, 0, &c, &why),
      0);
  CHECK_INT(eng_metrics_declare(ENG_METRIC_GAUGE, "app:level", "A gauge.", NULL, 0, NULL, 0, &g, &why), 0);
  const double bounds[] = {-1.5, 0, 1e-9, 0.1, 123456789012345678.0, 1e300};
  CHECK_INT(eng_metrics_declare(ENG_METRIC_HISTOGRAM, "app_sizes", "Sizes.", one, 1, bounds, 6, &h, &why), 0);
  CHECK_INT(eng_metrics_declare(ENG_METRIC_HISTOGRAM, "app_plain_seconds", "", NULL, 0, NULL, 0, &h2, &why), 0);
  int c1 = series(c, "free", "eu"), c2 = series(c, "a\"b\\c\nd", ""), g1 = series(g, NULL, NULL);
  int hs1 = series(h, "x", NULL), hs2 = series(h, "", NULL), hp = series(h2, NULL, NULL);
  eng_metrics_bind_shard(0);
  eng_metrics_series_add(c1, 0.1);
  eng_metrics_series_add(c1, 0.2);
  eng_metrics_series_add(c2, 1e21);
  eng_metrics_series_set(g1, -2.5e-5);
  eng_metrics_series_add(hs1, -3);
  eng_metrics_series_add(hs1, 5e-10);
  eng_metrics_series_add(hs1, 1e301);
  eng_metrics_series_add(hp, 0.25);
  eng_metrics_bind_shard(1);
  eng_metrics_series_add(c2, 7);
  eng_metrics_series_set(g1, -INFINITY);
  eng_metrics_series_add(hs2, NAN);
  eng_metrics_series_add(hs1, 0.1);
}

/* The exposition, one line per string (one literal would pass the length C99 promises). */
static const char *const expected[] = {
    "# HELP apiengine_build_info The running engine's version (always 1).\n",
    "# TYPE apiengine_build_info gauge\n",
    "apiengine_build_info{version=\"" APIENGINE_VERSION "\"} 1\n",
    "# HELP apiengine_requests_total Requests answered, by method, route pattern (unmatched: no route) and status.\n",
    "# TYPE apiengine_requests_total counter\n",
    "apiengine_requests_total{method=\"GET\",route=\"unmatched\",status=\"other\"} 1\n",
    "apiengine_requests_total{method=\"other\",route=\"unmatched\",status=\"404\"} 1\n",
    "apiengine_requests_total{method=\"GET\",route=\"/hello\",status=\"200\"} 3\n",
    "apiengine_requests_total{method=\"HEAD\",route=\"/hello\",status=\"200\"} 1\n",
    "apiengine_requests_total{method=\"DELETE\",route=\"/v2/\\\"q\\\"\\\\{id}\",status=\"other\"} 1\n",
    "apiengine_requests_total{method=\"other\",route=\"/registered/but/never/answered\",status=\"100\"} 1\n",
    "# HELP apiengine_request_duration_seconds Time from a request's first byte to its answer, by route pattern.\n",
    "# TYPE apiengine_request_duration_seconds histogram\n",
    "apiengine_request_duration_seconds_bucket{route=\"unmatched\",le=\"0.0005\"} 0\n",
    "apiengine_request_duration_seconds_bucket{route=\"unmatched\",le=\"0.001\"} 0\n",
    "apiengine_request_duration_seconds_bucket{route=\"unmatched\",le=\"0.0025\"} 0\n",
    "apiengine_request_duration_seconds_bucket{route=\"unmatched\",le=\"0.005\"} 0\n",
    "apiengine_request_duration_seconds_bucket{route=\"unmatched\",le=\"0.01\"} 0\n",
    "apiengine_request_duration_seconds_bucket{route=\"unmatched\",le=\"0.025\"} 0\n",
    "apiengine_request_duration_seconds_bucket{route=\"unmatched\",le=\"0.05\"} 0\n",
    "apiengine_request_duration_seconds_bucket{route=\"unmatched\",le=\"0.1\"} 1\n",
    "apiengine_request_duration_seconds_bucket{route=\"unmatched\",le=\"0.25\"} 1\n",
    "apiengine_request_duration_seconds_bucket{route=\"unmatched\",le=\"0.5\"} 2\n",
    "apiengine_request_duration_seconds_bucket{route=\"unmatched\",le=\"1\"} 2\n",
    "apiengine_request_duration_seconds_bucket{route=\"unmatched\",le=\"2.5\"} 2\n",
    "apiengine_request_duration_seconds_bucket{route=\"unmatched\",le=\"5\"} 2\n",
    "apiengine_request_duration_seconds_bucket{route=\"unmatched\",le=\"10\"} 2\n",
    "apiengine_request_duration_seconds_bucket{route=\"unmatched\",le=\"+Inf\"} 2\n",
    "apiengine_request_duration_seconds_sum{route=\"unmatched\"} 0.4\n",
    "apiengine_request_duration_seconds_count{route=\"unmatched\"} 2\n",
    "apiengine_request_duration_seconds_bucket{route=\"/hello\",le=\"0.0005\"} 1\n",
    "apiengine_request_duration_seconds_bucket{route=\"/hello\",le=\"0.001\"} 1\n",
    "apiengine_request_duration_seconds_bucket{route=\"/hello\",le=\"0.0025\"} 1\n",
    "apiengine_request_duration_seconds_bucket{route=\"/hello\",le=\"0.005\"} 2\n",
    "apiengine_request_duration_seconds_bucket{route=\"/hello\",le=\"0.01\"} 2\n",
    "apiengine_request_duration_seconds_bucket{route=\"/hello\",le=\"0.025\"} 2\n",
    "apiengine_request_duration_seconds_bucket{route=\"/hello\",le=\"0.05\"} 2\n",
    "apiengine_request_duration_seconds_bucket{route=\"/hello\",le=\"0.1\"} 2\n",
    "apiengine_request_duration_seconds_bucket{route=\"/hello\",le=\"0.25\"} 2\n",
    "apiengine_request_duration_seconds_bucket{route=\"/hello\",le=\"0.5\"} 3\n",
    "apiengine_request_duration_seconds_bucket{route=\"/hello\",le=\"1\"} 4\n",
    "apiengine_request_duration_seconds_bucket{route=\"/hello\",le=\"2.5\"} 4\n",
    "apiengine_request_duration_seconds_bucket{route=\"/hello\",le=\"5\"} 4\n",
    "apiengine_request_duration_seconds_bucket{route=\"/hello\",le=\"10\"} 4\n",
    "apiengine_request_duration_seconds_bucket{route=\"/hello\",le=\"+Inf\"} 4\n",
    "apiengine_request_duration_seconds_sum{route=\"/hello\"} 1.0364333333333333\n",
    "apiengine_request_duration_seconds_count{route=\"/hello\"} 4\n",
    "apiengine_request_duration_seconds_bucket{route=\"/v2/\\\"q\\\"\\\\{id}\",le=\"0.0005\"} 0\n",
    "apiengine_request_duration_seconds_bucket{route=\"/v2/\\\"q\\\"\\\\{id}\",le=\"0.001\"} 0\n",
    "apiengine_request_duration_seconds_bucket{route=\"/v2/\\\"q\\\"\\\\{id}\",le=\"0.0025\"} 0\n",
    "apiengine_request_duration_seconds_bucket{route=\"/v2/\\\"q\\\"\\\\{id}\",le=\"0.005\"} 0\n",
    "apiengine_request_duration_seconds_bucket{route=\"/v2/\\\"q\\\"\\\\{id}\",le=\"0.01\"} 0\n",
    "apiengine_request_duration_seconds_bucket{route=\"/v2/\\\"q\\\"\\\\{id}\",le=\"0.025\"} 0\n",
    "apiengine_request_duration_seconds_bucket{route=\"/v2/\\\"q\\\"\\\\{id}\",le=\"0.05\"} 0\n",
    "apiengine_request_duration_seconds_bucket{route=\"/v2/\\\"q\\\"\\\\{id}\",le=\"0.1\"} 0\n",
    "apiengine_request_duration_seconds_bucket{route=\"/v2/\\\"q\\\"\\\\{id}\",le=\"0.25\"} 0\n",
    "apiengine_request_duration_seconds_bucket{route=\"/v2/\\\"q\\\"\\\\{id}\",le=\"0.5\"} 0\n",
    "apiengine_request_duration_seconds_bucket{route=\"/v2/\\\"q\\\"\\\\{id}\",le=\"1\"} 0\n",
    "apiengine_request_duration_seconds_bucket{route=\"/v2/\\\"q\\\"\\\\{id}\",le=\"2.5\"} 0\n",
    "apiengine_request_duration_seconds_bucket{route=\"/v2/\\\"q\\\"\\\\{id}\",le=\"5\"} 0\n",
    "apiengine_request_duration_seconds_bucket{route=\"/v2/\\\"q\\\"\\\\{id}\",le=\"10\"} 0\n",
    "apiengine_request_duration_seconds_bucket{route=\"/v2/\\\"q\\\"\\\\{id}\",le=\"+Inf\"} 1\n",
    "apiengine_request_duration_seconds_sum{route=\"/v2/\\\"q\\\"\\\\{id}\"} 12\n",
    "apiengine_request_duration_seconds_count{route=\"/v2/\\\"q\\\"\\\\{id}\"} 1\n",
    "apiengine_request_duration_seconds_bucket{route=\"/registered/but/never/answered\",le=\"0.0005\"} 1\n",
    "apiengine_request_duration_seconds_bucket{route=\"/registered/but/never/answered\",le=\"0.001\"} 1\n",
    "apiengine_request_duration_seconds_bucket{route=\"/registered/but/never/answered\",le=\"0.0025\"} 1\n",
    "apiengine_request_duration_seconds_bucket{route=\"/registered/but/never/answered\",le=\"0.005\"} 1\n",
    "apiengine_request_duration_seconds_bucket{route=\"/registered/but/never/answered\",le=\"0.01\"} 1\n",
    "apiengine_request_duration_seconds_bucket{route=\"/registered/but/never/answered\",le=\"0.025\"} 1\n",
    "apiengine_request_duration_seconds_bucket{route=\"/registered/but/never/answered\",le=\"0.05\"} 1\n",
    "apiengine_request_duration_seconds_bucket{route=\"/registered/but/never/answered\",le=\"0.1\"} 1\n",
    "apiengine_request_duration_seconds_bucket{route=\"/registered/but/never/answered\",le=\"0.25\"} 1\n",
    "apiengine_request_duration_seconds_bucket{route=\"/registered/but/never/answered\",le=\"0.5\"} 1\n",
    "apiengine_request_duration_seconds_bucket{route=\"/registered/but/never/answered\",le=\"1\"} 1\n",
    "apiengine_request_duration_seconds_bucket{route=\"/registered/but/never/answered\",le=\"2.5\"} 1\n",
    "apiengine_request_duration_seconds_bucket{route=\"/registered/but/never/answered\",le=\"5\"} 1\n",
    "apiengine_request_duration_seconds_bucket{route=\"/registered/but/never/answered\",le=\"10\"} 1\n",
    "apiengine_request_duration_seconds_bucket{route=\"/registered/but/never/answered\",le=\"+Inf\"} 1\n",
    "apiengine_request_duration_seconds_sum{route=\"/registered/but/never/answered\"} 0\n",
    "apiengine_request_duration_seconds_count{route=\"/registered/but/never/answered\"} 1\n",
    "# HELP apiengine_script_errors_total Handler calls that raised an error or blew a budget (answered 500 or 503), "
    "by route pattern.\n",
    "# TYPE apiengine_script_errors_total counter\n",
    "apiengine_script_errors_total{route=\"/v2/\\\"q\\\"\\\\{id}\"} 1\n",
    "apiengine_script_errors_total{route=\"/errors/only\"} 1\n",
    "# HELP apiengine_budget_exceeded_total Handler calls stopped by their time or memory budget.\n",
    "# TYPE apiengine_budget_exceeded_total counter\n",
    "apiengine_budget_exceeded_total{kind=\"time\"} 1\n",
    "apiengine_budget_exceeded_total{kind=\"memory\"} 0\n",
    "# HELP apiengine_connections Open client connections: idle (keep-alive, between requests), active (a request in "
    "progress), closing (answered, lingering before the close).\n",
    "# TYPE apiengine_connections gauge\n",
    "apiengine_connections{state=\"idle\"} 0\n",
    "apiengine_connections{state=\"active\"} 0\n",
    "apiengine_connections{state=\"closing\"} 1\n",
    "# HELP apiengine_lua_memory_bytes Bytes held by each worker's Lua state, after its last request.\n",
    "# TYPE apiengine_lua_memory_bytes gauge\n",
    "apiengine_lua_memory_bytes{worker=\"0\"} 18446744073709551615\n",
    "apiengine_lua_memory_bytes{worker=\"1\"} 0\n",
    "# HELP apiengine_db_busy_waits_total Times a database statement found the database locked by another connection "
    "and waited.\n",
    "# TYPE apiengine_db_busy_waits_total counter\n",
    "apiengine_db_busy_waits_total 1\n",
    "# HELP apiengine_db_query_duration_seconds Time SQLite spent running each statement (measured by SQLite to the "
    "millisecond).\n",
    "# TYPE apiengine_db_query_duration_seconds histogram\n",
    "apiengine_db_query_duration_seconds_bucket{le=\"0.0005\"} 1\n",
    "apiengine_db_query_duration_seconds_bucket{le=\"0.001\"} 1\n",
    "apiengine_db_query_duration_seconds_bucket{le=\"0.0025\"} 1\n",
    "apiengine_db_query_duration_seconds_bucket{le=\"0.005\"} 1\n",
    "apiengine_db_query_duration_seconds_bucket{le=\"0.01\"} 1\n",
    "apiengine_db_query_duration_seconds_bucket{le=\"0.025\"} 1\n",
    "apiengine_db_query_duration_seconds_bucket{le=\"0.05\"} 1\n",
    "apiengine_db_query_duration_seconds_bucket{le=\"0.1\"} 1\n",
    "apiengine_db_query_duration_seconds_bucket{le=\"0.25\"} 1\n",
    "apiengine_db_query_duration_seconds_bucket{le=\"0.5\"} 1\n",
    "apiengine_db_query_duration_seconds_bucket{le=\"1\"} 1\n",
    "apiengine_db_query_duration_seconds_bucket{le=\"2.5\"} 1\n",
    "apiengine_db_query_duration_seconds_bucket{le=\"5\"} 1\n",
    "apiengine_db_query_duration_seconds_bucket{le=\"10\"} 1\n",
    "apiengine_db_query_duration_seconds_bucket{le=\"+Inf\"} 2\n",
    "apiengine_db_query_duration_seconds_sum 123456789.1250001\n",
    "apiengine_db_query_duration_seconds_count 2\n",
    "# HELP apiengine_reloads_total SIGHUP reloads: done (every worker took the new scripts), partial (some kept the "
    "old ones), refused (the check failed; nothing changed).\n",
    "# TYPE apiengine_reloads_total counter\n",
    "apiengine_reloads_total{result=\"done\"} 1\n",
    "apiengine_reloads_total{result=\"partial\"} 0\n",
    "apiengine_reloads_total{result=\"refused\"} 2\n",
    "# HELP app_things_total Things.\\\\ Two\\nlines\n",
    "# TYPE app_things_total counter\n",
    "app_things_total{plan=\"free\",region=\"eu\"} 0.30000000000000004\n",
    "app_things_total{plan=\"a\\\"b\\\\c\\nd\",region=\"\"} 1e+21\n",
    "# HELP app:level A gauge.\n",
    "# TYPE app:level gauge\n",
    "app:level -Inf\n",
    "# HELP app_sizes Sizes.\n",
    "# TYPE app_sizes histogram\n",
    "app_sizes_bucket{k=\"x\",le=\"-1.5\"} 1\n",
    "app_sizes_bucket{k=\"x\",le=\"0\"} 1\n",
    "app_sizes_bucket{k=\"x\",le=\"1e-09\"} 2\n",
    "app_sizes_bucket{k=\"x\",le=\"0.1\"} 3\n",
    "app_sizes_bucket{k=\"x\",le=\"1.2345678901234568e+17\"} 3\n",
    "app_sizes_bucket{k=\"x\",le=\"1e+300\"} 3\n",
    "app_sizes_bucket{k=\"x\",le=\"+Inf\"} 4\n",
    "app_sizes_sum{k=\"x\"} 1e+301\n",
    "app_sizes_count{k=\"x\"} 4\n",
    "app_sizes_bucket{k=\"\",le=\"-1.5\"} 1\n",
    "app_sizes_bucket{k=\"\",le=\"0\"} 1\n",
    "app_sizes_bucket{k=\"\",le=\"1e-09\"} 1\n",
    "app_sizes_bucket{k=\"\",le=\"0.1\"} 1\n",
    "app_sizes_bucket{k=\"\",le=\"1.2345678901234568e+17\"} 1\n",
    "app_sizes_bucket{k=\"\",le=\"1e+300\"} 1\n",
    "app_sizes_bucket{k=\"\",le=\"+Inf\"} 1\n",
    "app_sizes_sum{k=\"\"} NaN\n",
    "app_sizes_count{k=\"\"} 1\n",
    "# HELP app_plain_seconds \n",
    "# TYPE app_plain_seconds histogram\n",
    "app_plain_seconds_bucket{le=\"0.0005\"} 0\n",
    "app_plain_seconds_bucket{le=\"0.001\"} 0\n",
    "app_plain_seconds_bucket{le=\"0.0025\"} 0\n",
    "app_plain_seconds_bucket{le=\"0.005\"} 0\n",
    "app_plain_seconds_bucket{le=\"0.01\"} 0\n",
    "app_plain_seconds_bucket{le=\"0.025\"} 0\n",
    "app_plain_seconds_bucket{le=\"0.05\"} 0\n",
    "app_plain_seconds_bucket{le=\"0.1\"} 0\n",
    "app_plain_seconds_bucket{le=\"0.25\"} 1\n",
    "app_plain_seconds_bucket{le=\"0.5\"} 1\n",
    "app_plain_seconds_bucket{le=\"1\"} 1\n",
    "app_plain_seconds_bucket{le=\"2.5\"} 1\n",
    "app_plain_seconds_bucket{le=\"5\"} 1\n",
    "app_plain_seconds_bucket{le=\"10\"} 1\n",
    "app_plain_seconds_bucket{le=\"+Inf\"} 1\n",
    "app_plain_seconds_sum 0.25\n",
    "app_plain_seconds_count 1\n",
};
int main(int argc, char **argv) {
  fill();
  eng_buf b = {0};
  CHECK_INT(eng_metrics_render(&b), 0);
  if (argc > 1 && strcmp(argv[1], "--print") == 0) { /* how `expected` was made */
    fwrite(b.data, 1, b.len, stdout);
    return 0;
  }
  /* Line by line, so a failure names the first line that differs. */
  size_t at = 0, nlines = sizeof expected / sizeof expected[0];
  for (size_t i = 0; i < nlines; i++) {
    size_t n = strlen(expected[i]);
    if (at + n > b.len || memcmp(b.data + at, expected[i], n) != 0) {
      fprintf(stderr, "line %zu differs: expected %s--- rendered from there:\n%.*s---\n", i + 1, expected[i],
              (int)(b.len - at), b.data + at);
      CHECK(0);
      break;
    }
    at += n;
  }
  CHECK(at == b.len); /* and nothing after the last line */
  /* A second scrape of the same state is the same text (nothing cached goes stale). */
  eng_buf again = {0};
  CHECK_INT(eng_metrics_render(&again), 0);
  CHECK(again.len == b.len && memcmp(again.data, b.data, b.len) == 0);
  eng_buf_free(&b);
  eng_buf_free(&again);
  eng_metrics_disable();
  return check_summary("test_metrics_render");
}
