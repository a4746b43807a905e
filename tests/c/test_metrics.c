/* test_metrics.c - the metrics registry (engine/metrics.c): sums over shards, bounded label
 * spaces (methods, statuses, routes, script label sets), the text format's escaping, and exact
 * counts written by threads while another renders. */
#include "check.h"
#include "error.h"
#include "metrics.h"

#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#define NTHREADS 4
#define NINCS 100000

/* The rendered exposition (a static buffer, replaced at each call). */
static const char *render(void) {
  static eng_buf b;
  eng_buf_free(&b);
  CHECK_INT(eng_metrics_render(&b), 0);
  eng_buf_append_char(&b, '\0');
  return b.data ? b.data : "";
}

/* Whether the exposition has this exact line. */
static int has_line(const char *text, const char *line) {
  size_t n = strlen(line);
  for (const char *p = text; (p = strstr(p, line)) != NULL; p++)
    if ((p == text || p[-1] == '\n') && p[n] == '\n')
      return 1;
  return 0;
}

#define CHECK_LINE(line)                                               \
  do {                                                                 \
    const char *t_ = render();                                         \
    if (!has_line(t_, line))                                           \
      fprintf(stderr, "missing line: %s\n--- in:\n%s---\n", line, t_); \
    CHECK(has_line(t_, line));                                         \
  } while (0)

static void test_records_nothing_without_a_shard(void) {
  CHECK(!eng_metrics_enabled());
  eng_metrics_request("/a", "GET", 200, 0.001); /* no shard: a no-op, no crash */
  CHECK_INT(eng_metrics_enable(0), ENG_EINVAL);
  CHECK_INT(eng_metrics_enable(ENG_METRICS_MAX_SHARDS + 1), ENG_EINVAL);
}

static void test_sums_requests_over_shards_with_bounded_labels(void) {
  CHECK_INT(eng_metrics_enable(2), 0);
  eng_metrics_bind_shard(0);
  eng_metrics_request("/a/{id}", "GET", 200, 0.001953125); /* binary fractions: an exact sum */
  eng_metrics_request("/a/{id}", "GET", 200, 0.125);
  eng_metrics_request(NULL, "BREW", 404, 0.0001);
  eng_metrics_request("/a/{id}", "POST", 299, 20);
  eng_metrics_bind_shard(1);
  eng_metrics_request("/a/{id}", "GET", 200, 0.00390625);
  eng_metrics_script_error("/a/{id}");
  eng_metrics_budget_exceeded(1);
  CHECK_LINE("apiengine_requests_total{method=\"GET\",route=\"/a/{id}\",status=\"200\"} 3");
  CHECK_LINE("apiengine_requests_total{method=\"other\",route=\"unmatched\",status=\"404\"} 1");
  CHECK_LINE("apiengine_requests_total{method=\"POST\",route=\"/a/{id}\",status=\"other\"} 1");
  CHECK_LINE("apiengine_request_duration_seconds_bucket{route=\"/a/{id}\",le=\"0.0025\"} 1");
  CHECK_LINE("apiengine_request_duration_seconds_bucket{route=\"/a/{id}\",le=\"0.005\"} 2");
  CHECK_LINE("apiengine_request_duration_seconds_bucket{route=\"/a/{id}\",le=\"0.25\"} 3");
  CHECK_LINE("apiengine_request_duration_seconds_bucket{route=\"/a/{id}\",le=\"10\"} 3");
  CHECK_LINE("apiengine_request_duration_seconds_bucket{route=\"/a/{id}\",le=\"+Inf\"} 4");
  CHECK_LINE("apiengine_request_duration_seconds_count{route=\"/a/{id}\"} 4");
  CHECK_LINE("apiengine_request_duration_seconds_sum{route=\"/a/{id}\"} 20.130859375");
  CHECK_LINE("apiengine_script_errors_total{route=\"/a/{id}\"} 1");
  CHECK_LINE("apiengine_budget_exceeded_total{kind=\"memory\"} 1");
  CHECK_LINE("apiengine_budget_exceeded_total{kind=\"time\"} 0");
  CHECK_LINE("# TYPE apiengine_requests_total counter");
}

static void test_connection_gauge_moves_between_shards(void) {
  /* A connection counted idle on one worker and closed on another still sums right (the
   * decrement wraps in its shard). */
  eng_metrics_bind_shard(0);
  eng_metrics_conn_state(ENG_METRICS_CONN_NONE, ENG_METRICS_CONN_IDLE);
  eng_metrics_conn_state(ENG_METRICS_CONN_NONE, ENG_METRICS_CONN_IDLE);
  CHECK_LINE("apiengine_connections{state=\"idle\"} 2");
  eng_metrics_bind_shard(1);
  eng_metrics_conn_state(ENG_METRICS_CONN_IDLE, ENG_METRICS_CONN_ACTIVE);
  CHECK_LINE("apiengine_connections{state=\"idle\"} 1");
  CHECK_LINE("apiengine_connections{state=\"active\"} 1");
  eng_metrics_conn_state(ENG_METRICS_CONN_ACTIVE, ENG_METRICS_CONN_NONE);
  eng_metrics_bind_shard(0);
  eng_metrics_conn_state(ENG_METRICS_CONN_IDLE, ENG_METRICS_CONN_NONE);
  CHECK_LINE("apiengine_connections{state=\"idle\"} 0");
  CHECK_LINE("apiengine_connections{state=\"active\"} 0");
  eng_metrics_lua_memory(12345);
  CHECK_LINE("apiengine_lua_memory_bytes{worker=\"0\"} 12345");
  CHECK_LINE("apiengine_lua_memory_bytes{worker=\"1\"} 0");
}

static void test_a_reused_pattern_address_finds_its_own_route(void) {
  /* Recording finds a route by the pattern's address first (a per-thread cache): one buffer
   * holding two patterns in turn, as a reload may reuse memory, counts each under its own. */
  eng_metrics_bind_shard(0);
  char pat[32];
  strcpy(pat, "/reused/a");
  eng_metrics_request(pat, "GET", 200, 0.001);
  eng_metrics_request(pat, "GET", 200, 0.001);
  strcpy(pat, "/reused/b");
  eng_metrics_request(pat, "GET", 200, 0.001);
  eng_metrics_script_error(pat);
  strcpy(pat, "/reused/a");
  eng_metrics_request(pat, "GET", 200, 0.001);
  CHECK_LINE("apiengine_requests_total{method=\"GET\",route=\"/reused/a\",status=\"200\"} 3");
  CHECK_LINE("apiengine_requests_total{method=\"GET\",route=\"/reused/b\",status=\"200\"} 1");
  CHECK_LINE("apiengine_script_errors_total{route=\"/reused/b\"} 1");
  CHECK(strstr(render(), "apiengine_script_errors_total{route=\"/reused/a\"}") == NULL);
}

static void test_routes_past_the_cap_count_as_other(void) {
  eng_metrics_bind_shard(0);
  char pat[32];
  for (int i = 0; i < ENG_METRICS_MAX_ROUTES + 10; i++) {
    snprintf(pat, sizeof pat, "/r%d", i);
    eng_metrics_request(pat, "GET", 200, 0.001);
  }
  CHECK_LINE("apiengine_requests_total{method=\"GET\",route=\"/r0\",status=\"200\"} 1");
  /* /a/{id}, /reused/a and /reused/b took three places: the last 13 patterns are "other" */
  CHECK_LINE("apiengine_requests_total{method=\"GET\",route=\"other\",status=\"200\"} 13");
  snprintf(pat, sizeof pat, "/r%d", ENG_METRICS_MAX_ROUTES + 9);
  const char *t = render();
  CHECK(strstr(t, pat) == NULL);
}

static void test_script_metrics_are_checked_and_bounded(void) {
  const char *why = NULL;
  int id = -1, again = -2, s = -1;
  const char *labels[] = {"plan", "region"};
  CHECK_INT(eng_metrics_declare(ENG_METRIC_COUNTER, "apiengine_x", "h", NULL, 0, NULL, 0, &id, &why), ENG_EINVAL);
  CHECK_INT(eng_metrics_declare(ENG_METRIC_COUNTER, "a b", "h", NULL, 0, NULL, 0, &id, &why), ENG_EINVAL);
  const char *le[] = {"le"};
  CHECK_INT(eng_metrics_declare(ENG_METRIC_COUNTER, "x_total", "h", le, 1, NULL, 0, &id, &why), ENG_EINVAL);
  CHECK_INT(eng_metrics_declare(ENG_METRIC_COUNTER, "x_total", "Some \\ help\nhere", labels, 2, NULL, 0, &id, &why), 0);
  CHECK_INT(eng_metrics_declare(ENG_METRIC_COUNTER, "x_total", "other help", labels, 2, NULL, 0, &again, &why), 0);
  CHECK_INT(again, id);
  CHECK_INT(eng_metrics_declare(ENG_METRIC_GAUGE, "x_total", "h", labels, 2, NULL, 0, &again, &why), ENG_EEXISTS);
  const char *v[] = {"a\"b\\c\nd", "eu"};
  size_t lens[] = {strlen(v[0]), 2};
  CHECK_INT(eng_metrics_series(id, v, lens, &s, &why), 0);
  eng_metrics_bind_shard(0);
  eng_metrics_series_add(s, 1.5);
  eng_metrics_bind_shard(1);
  eng_metrics_series_add(s, 2);
  CHECK_LINE("x_total{plan=\"a\\\"b\\\\c\\nd\",region=\"eu\"} 3.5");
  CHECK_LINE("# HELP x_total Some \\\\ help\\nhere");
  /* 100 label sets, then refusals; the old ones still resolve. */
  char buf[16];
  const char *vv[] = {buf, "eu"};
  size_t ll[2] = {0, 2};
  int refused = 0, made = 0;
  for (int i = 0; i < ENG_METRICS_MAX_SERIES + 5; i++) {
    ll[0] = (size_t)snprintf(buf, sizeof buf, "p%d", i);
    int rc = eng_metrics_series(id, vv, ll, &s, &why);
    if (rc == 0)
      made++;
    else if (rc == ENG_ETOOBIG)
      refused++;
  }
  CHECK_INT(made, ENG_METRICS_MAX_SERIES - 1); /* the escaped one above is the 100th */
  CHECK_INT(refused, 6);
  CHECK_INT(eng_metrics_series(id, v, lens, &s, &why), 0);
  const double b[] = {0.5, 0.25};
  CHECK_INT(eng_metrics_declare(ENG_METRIC_HISTOGRAM, "h_seconds", "h", NULL, 0, b, 2, &id, &why), ENG_EINVAL);
  const double ok[] = {0.25, 0.5};
  CHECK_INT(eng_metrics_declare(ENG_METRIC_HISTOGRAM, "h_seconds", "h", NULL, 0, ok, 2, &id, &why), 0);
  CHECK_INT(eng_metrics_series(id, NULL, NULL, &s, &why), 0);
  eng_metrics_series_add(s, 0.3);
  CHECK_LINE("h_seconds_bucket{le=\"0.25\"} 0");
  CHECK_LINE("h_seconds_bucket{le=\"0.5\"} 1");
  CHECK_LINE("h_seconds_bucket{le=\"+Inf\"} 1");
  CHECK_LINE("h_seconds_count 1");
}

static void *hammer(void *arg) {
  eng_metrics_bind_shard((int)(intptr_t)arg);
  for (int i = 0; i < NINCS; i++)
    eng_metrics_request("/r0", "PUT", 204, 0.0001); /* "/r0": the route cap is reached by now */
  return NULL;
}

static void test_threads_count_exactly_while_rendered(void) {
  eng_metrics_disable();
  CHECK_INT(eng_metrics_enable(NTHREADS), 0);
  pthread_t t[NTHREADS];
  for (int i = 0; i < NTHREADS; i++)
    CHECK_INT(pthread_create(&t[i], NULL, hammer, (void *)(intptr_t)i), 0);
  for (int i = 0; i < 20; i++)
    (void)render(); /* concurrent scrapes see partial sums, never torn values */
  for (int i = 0; i < NTHREADS; i++)
    pthread_join(t[i], NULL);
  char line[128];
  snprintf(line, sizeof line, "apiengine_requests_total{method=\"PUT\",route=\"/r0\",status=\"204\"} %d",
           NTHREADS * NINCS);
  CHECK_LINE(line);
  eng_metrics_disable();
}

int main(void) {
  test_records_nothing_without_a_shard();
  test_sums_requests_over_shards_with_bounded_labels();
  test_connection_gauge_moves_between_shards();
  test_a_reused_pattern_address_finds_its_own_route();
  test_routes_past_the_cap_count_as_other();
  test_script_metrics_are_checked_and_bounded();
  test_threads_count_exactly_while_rendered();
  return check_summary("test_metrics");
}
