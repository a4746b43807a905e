/* fuzz_router.c - libFuzzer target for engine/router.c.
 *
 * Input: lines. Lines starting with '+' add a pattern (errors are fine), the
 * others are matched as paths with every method. Invariants: a 200 match has a
 * handler that was added, parameter values lie inside the scratch buffer, the
 * parameter names are the {name} segments of the matched pattern in order (a
 * route never reads its parameters under another route's names), and a 405
 * reports a non-empty Allow set. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "router.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* 1 when m's parameter names are exactly the {name} segments of m->pattern. */
static int names_match_pattern(const eng_route_match *m) {
  int i = 0;
  for (const char *p = m->pattern; (p = strchr(p, '{')) != NULL; i++) {
    const char *close = strchr(p, '}');
    if (close == NULL || i >= m->nparams)
      return 0;
    size_t n = (size_t)(close - p - 1);
    if (m->params[i].name_len != n || memcmp(m->params[i].name, p + 1, n) != 0)
      return 0;
    p = close;
  }
  return i == m->nparams;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  eng_router *r;
  if (eng_router_new(&r) != 0)
    return 0;
  const char *why;
  eng_router_add(r, ENG_M_GET, "/v2/integrations/{customer_id}", 1, &why);
  eng_router_add(r, ENG_M_POST, "/v2/integrations/token", 2, &why);
  eng_router_add(r, ENG_M_GET, "/v2/integrations/{customer_id}/usage", 3, &why);
  int next_handler = 10;
  char *copy = malloc(size + 1);
  char *scratch = malloc(size + 1);
  if (copy == NULL || scratch == NULL)
    goto out;
  memcpy(copy, data, size);
  copy[size] = '\0';
  for (char *line = copy, *end; line && *line; line = end) {
    end = strchr(line, '\n');
    if (end)
      *end++ = '\0';
    if (line[0] == '+') {
      eng_router_add(r, next_handler % ENG_M_COUNT_, line + 1, next_handler, &why);
      next_handler++;
      continue;
    }
    size_t len = strlen(line);
    for (int m = -1; m < ENG_M_COUNT_; m++) {
      eng_route_match mt;
      eng_router_match(r, m, line, len, scratch, &mt);
      if (mt.status == 200 && (mt.handler < 1 || mt.handler >= next_handler || !names_match_pattern(&mt)))
        abort();
      if (mt.status == 405 && mt.allow == 0)
        abort();
      for (int i = 0; i < mt.nparams; i++)
        if (mt.params[i].value < scratch || mt.params[i].value + mt.params[i].value_len > scratch + len)
          abort();
    }
  }
out:
  free(copy);
  free(scratch);
  eng_router_free(r);
  return 0;
}
