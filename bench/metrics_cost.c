/* metrics_cost.c - what the metrics cost, in loops on one thread: the nanoseconds recording adds
 * to one request (what conn.c calls per answered request with metrics on: the request count and
 * duration, the connection gauge's two moves, the Lua memory gauge, on one bound shard), and the
 * microseconds one scrape spends rendering the exposition with the series a /hello run leaves
 * (the engine's fixed metrics, /hello's request count and histogram, 32 open connections).
 * Prints "RECORD_NS RENDER_US RENDER_BYTES"; bench/metrics puts them beside the engine's CPU time
 * per request and the metrics thread's CPU time per scrape. */
#include "metrics.h"

#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
  long n = argc > 1 ? strtol(argv[1], NULL, 10) : 20000000L;
  long renders = argc > 2 ? strtol(argv[2], NULL, 10) : 20000L;
  if (n <= 0 || renders <= 0 || eng_metrics_enable(1) != 0)
    return 1;
  eng_metrics_bind_shard(0);

  /* The scrape first, while the registry holds only what a /hello run leaves in it (routes are
   * never removed, and the scrape walks every route it knows). */
  for (int i = 0; i < 32; i++)
    eng_metrics_conn_state(ENG_METRICS_CONN_NONE, ENG_METRICS_CONN_IDLE);
  for (long i = 0; i < 1000000; i++)
    eng_metrics_request("/hello", "GET", 200, 0.00005 * (double)(i & 63));
  eng_metrics_lua_memory(1893273);
  eng_buf b = {0};
  double t0 = now_s();
  for (long i = 0; i < renders; i++) {
    eng_buf_reset(&b);
    if (eng_metrics_render(&b) != 0)
      return 1;
  }
  double render_us = (now_s() - t0) * 1e6 / (double)renders;

  const char *routes[] = {"/hello", "/v2/integrations/{customer_id}", "/row/{id}", "/calls"};
  for (int i = 0; i < 4; i++) /* interned once, as a server's first requests do */
    eng_metrics_request(routes[i], "GET", 200, 0.0001);
  t0 = now_s();
  for (long i = 0; i < n; i++) {
    eng_metrics_conn_state(ENG_METRICS_CONN_IDLE, ENG_METRICS_CONN_ACTIVE);
    eng_metrics_request(routes[i & 3], "GET", 200, 0.0001 * (double)(i & 15));
    eng_metrics_lua_memory((size_t)i);
    eng_metrics_conn_state(ENG_METRICS_CONN_ACTIVE, ENG_METRICS_CONN_IDLE);
  }
  double record_ns = (now_s() - t0) * 1e9 / (double)n;
  printf("%.1f %.2f %zu\n", record_ns, render_us, b.len);
  eng_buf_free(&b);
  eng_metrics_disable();
  return 0;
}
