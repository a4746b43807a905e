/* metrics_cost.c - nanoseconds the metrics add to one request: what conn.c calls per answered
 * request with metrics on (the request count and duration, the Lua memory gauge), in a loop on
 * one bound shard. bench/metrics prints it beside the engine's CPU time per request. */
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
  if (n <= 0 || eng_metrics_enable(1) != 0)
    return 1;
  eng_metrics_bind_shard(0);
  const char *routes[] = {"/hello", "/v2/integrations/{customer_id}", "/row/{id}", "/calls"};
  for (int i = 0; i < 4; i++) /* interned once, as a server's first requests do */
    eng_metrics_request(routes[i], "GET", 200, 0.0001);
  double t0 = now_s();
  for (long i = 0; i < n; i++) {
    eng_metrics_request(routes[i & 3], "GET", 200, 0.0001 * (double)(i & 15));
    eng_metrics_lua_memory((size_t)i);
  }
  double dt = now_s() - t0;
  printf("%.1f\n", dt * 1e9 / (double)n);
  eng_metrics_disable();
  return 0;
}
