/* test_router.c - static-over-param precedence, 404/405/Allow, params, bad patterns. */
#include "check.h"
#include "error.h"
#include "router.h"

#include <string.h>

static eng_route_match m;
static char scratch[1024];

static void match(eng_router *r, int method, const char *path) {
  eng_router_match(r, method, path, strlen(path), scratch, &m);
}

static const char *param(const char *name) {
  static char out[256];
  for (int i = 0; i < m.nparams; i++) {
    if (m.params[i].name_len == strlen(name) && memcmp(m.params[i].name, name, m.params[i].name_len) == 0) {
      memcpy(out, m.params[i].value, m.params[i].value_len);
      out[m.params[i].value_len] = '\0';
      return out;
    }
  }
  return NULL;
}

/* The routes every case matches against. */
static eng_router *build(void) {
  eng_router *r;
  const char *why;
  if (eng_router_new(&r) != 0)
    return NULL;
  CHECK_INT(eng_router_add(r, ENG_M_POST, "/v2/integrations/token", 1, &why), 0);
  CHECK_INT(eng_router_add(r, ENG_M_GET, "/v2/integrations/customer", 2, &why), 0);
  CHECK_INT(eng_router_add(r, ENG_M_POST, "/v2/integrations/customer", 3, &why), 0);
  CHECK_INT(eng_router_add(r, ENG_M_GET, "/v2/integrations/{customer_id}", 4, &why), 0);
  CHECK_INT(eng_router_add(r, ENG_M_DELETE, "/v2/integrations/{customer_id}", 5, &why), 0);
  CHECK_INT(eng_router_add(r, ENG_M_GET, "/v2/integrations/{customer_id}/usage", 6, &why), 0);
  CHECK_INT(eng_router_add(r, ENG_M_GET, "/", 7, &why), 0);
  CHECK_INT(eng_router_add(r, ENG_M_GET, "/a/{x}/c", 8, &why), 0);
  CHECK_INT(eng_router_add(r, ENG_M_GET, "/a/b/d", 9, &why), 0);
  return r;
}

static void test_static_wins_over_param(eng_router *r) {
  char allow[96];
  /* Static wins over the parameter. */
  match(r, ENG_M_GET, "/v2/integrations/customer");
  CHECK_INT(m.status, 200);
  CHECK_INT(m.handler, 2);
  CHECK_INT(m.nparams, 0);
  CHECK_STR(m.pattern, "/v2/integrations/customer");

  /* The static route decides even for another method: 405 with its Allow, not the param route. */
  match(r, ENG_M_GET, "/v2/integrations/token");
  CHECK_INT(m.status, 405);
  eng_router_allow_string(m.allow, allow, sizeof allow);
  CHECK_STR(allow, "POST");
  match(r, ENG_M_PUT, "/v2/integrations/customer");
  CHECK_INT(m.status, 405);
  eng_router_allow_string(m.allow, allow, sizeof allow);
  CHECK_STR(allow, "GET, HEAD, POST");
}

static void test_params_decoded(eng_router *r) {
  char allow[96];
  /* Parameters, decoded. */
  match(r, ENG_M_GET, "/v2/integrations/abc-123");
  CHECK_INT(m.status, 200);
  CHECK_INT(m.handler, 4);
  CHECK_STR(param("customer_id"), "abc-123");
  match(r, ENG_M_GET, "/v2/integrations/a%20b%2Fc/usage");
  CHECK_INT(m.status, 200);
  CHECK_INT(m.handler, 6);
  CHECK_STR(param("customer_id"), "a b/c");
  match(r, ENG_M_DELETE, "/v2/integrations/x");
  CHECK_INT(m.handler, 5);
  match(r, ENG_M_POST, "/v2/integrations/x");
  CHECK_INT(m.status, 405);
  eng_router_allow_string(m.allow, allow, sizeof allow);
  CHECK_STR(allow, "GET, HEAD, DELETE");
}

static void test_head_falls_back_to_get(eng_router *r) {
  /* HEAD falls back to GET. */
  match(r, ENG_M_HEAD, "/v2/integrations/customer");
  CHECK_INT(m.status, 200);
  CHECK_INT(m.handler, 2);
}

static void test_backtracking(eng_router *r) {
  /* Backtracking: /a/b/c has no static route under b -> the param route matches. */
  match(r, ENG_M_GET, "/a/b/c");
  CHECK_INT(m.status, 200);
  CHECK_INT(m.handler, 8);
  CHECK_STR(param("x"), "b");
  match(r, ENG_M_GET, "/a/b/d");
  CHECK_INT(m.handler, 9);
}

static void test_root_unknown_and_bad_paths(eng_router *r) {
  /* Root, unknown paths, trailing slash, empty segments, bad escapes. */
  match(r, ENG_M_GET, "/");
  CHECK_INT(m.status, 200);
  CHECK_INT(m.handler, 7);
  match(r, ENG_M_GET, "/nope");
  CHECK_INT(m.status, 404);
  match(r, ENG_M_GET, "/v2/integrations/customer/");
  CHECK_INT(m.status, 404);
  match(r, ENG_M_GET, "/v2/integrations//usage");
  CHECK_INT(m.status, 404);
  match(r, ENG_M_GET, "/v2/integrations/%zz");
  CHECK_INT(m.status, 404);
  match(r, ENG_M_GET, "/v2/integrations/%4");
  CHECK_INT(m.status, 404);
  match(r, -1, "/v2/integrations/customer");
  CHECK_INT(m.status, 405);
  match(r, ENG_M_GET, "");
  CHECK_INT(m.status, 404);
}

static void test_bad_patterns_and_duplicates(eng_router *r) {
  const char *why;
  /* Bad patterns and duplicates. */
  CHECK_INT(eng_router_add(r, ENG_M_GET, "/v2/integrations/customer", 10, &why), ENG_EEXISTS);
  CHECK_INT(eng_router_add(r, ENG_M_DELETE, "/v2/integrations/{customer_id}", 10, &why), ENG_EEXISTS);
  CHECK_INT(eng_router_add(r, ENG_M_GET, "no-slash", 10, &why), ENG_EINVAL);
  CHECK_INT(eng_router_add(r, ENG_M_GET, "/a//b", 10, &why), ENG_EINVAL);
  CHECK_INT(eng_router_add(r, ENG_M_GET, "/a/{x", 10, &why), ENG_EINVAL);
  CHECK_INT(eng_router_add(r, ENG_M_GET, "/a/pre{x}", 10, &why), ENG_EINVAL);
  CHECK_INT(eng_router_add(r, ENG_M_GET, "/a/{x-y}", 10, &why), ENG_EINVAL);
  CHECK_INT(eng_router_add(r, ENG_M_GET, "/a/b c", 10, &why), ENG_EINVAL);
  CHECK_INT(eng_router_add(r, 99, "/ok", 10, &why), ENG_EINVAL);
  /* A failed add leaves no half-built route behind. */
  match(r, ENG_M_GET, "/a/b c");
  CHECK_INT(m.status, 404);
}

/* Two patterns share one tree node per position, so a parameter there has one name: a second
 * name would hand the later route's handler its parameter under the first route's name. */
static void test_param_names_agree(eng_router *r) {
  const char *why = NULL;
  CHECK_INT(eng_router_add(r, ENG_M_GET, "/c/{id}/orders", 20, &why), 0);
  CHECK_INT(eng_router_add(r, ENG_M_GET, "/c/{customer_id}", 21, &why), ENG_EINVAL);
  CHECK(why != NULL && strstr(why, "another name") != NULL);
  CHECK_INT(eng_router_add(r, ENG_M_POST, "/v2/integrations/{other_name}", 22, &why), ENG_EINVAL);
  CHECK_INT(eng_router_add(r, ENG_M_GET, "/c/{id}/orders/{order_id}", 23, &why), 0);
  CHECK_INT(eng_router_add(r, ENG_M_GET, "/c/{id}", 24, &why), 0);
  /* Nothing of the refused routes was added. */
  match(r, ENG_M_POST, "/v2/integrations/x");
  CHECK_INT(m.status, 405);
  match(r, ENG_M_GET, "/c/42");
  CHECK_INT(m.handler, 24);
  CHECK_STR(param("id"), "42");
  match(r, ENG_M_GET, "/c/42/orders/7");
  CHECK_STR(param("id"), "42");
  CHECK_STR(param("order_id"), "7");
}

static void test_slots_by_shape(eng_router *r) {
  /* Slots by pattern shape: parameter names do not matter; replace in place. */
  int *slot = eng_router_slot(r, ENG_M_GET, "/v2/integrations/{any_name}");
  CHECK(slot != NULL && *slot == 4);
  *slot = 40;
  match(r, ENG_M_GET, "/v2/integrations/x");
  CHECK_INT(m.handler, 40);
  CHECK(eng_router_slot(r, ENG_M_PUT, "/v2/integrations/{id}") == NULL);
  CHECK(eng_router_slot(r, ENG_M_GET, "/v2/integrations/nothing") == NULL);
  CHECK(eng_router_slot(r, ENG_M_GET, "/v2/integrations/customer/") == NULL);
  CHECK(eng_router_slot(r, ENG_M_GET, "/") != NULL);
  CHECK(eng_router_slot(r, 99, "/") == NULL);
}

static void test_methods_by_name(eng_router *r) {
  (void)r;
  /* Methods by name. */
  CHECK_INT(eng_router_method("DELETE", 6), ENG_M_DELETE);
  CHECK_INT(eng_router_method("delete", 6), -1);
  CHECK_INT(eng_router_method("PROPFIND", 8), -1);
}

static void test_too_many_segments(eng_router *r) {
  /* Too many segments: no match, no crash. */
  char deep[1024] = "";
  for (int i = 0; i < 100; i++)
    strcat(deep, "/x");
  match(r, ENG_M_GET, deep);
  CHECK_INT(m.status, 404);
}

int main(void) {
  static void (*const cases[])(eng_router *) = {
      test_static_wins_over_param,
      test_params_decoded,
      test_head_falls_back_to_get,
      test_backtracking,
      test_root_unknown_and_bad_paths,
      test_bad_patterns_and_duplicates,
      test_param_names_agree,
      test_slots_by_shape,
      test_methods_by_name,
      test_too_many_segments,
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    eng_router *r = build();
    CHECK(r != NULL);
    if (r == NULL)
      break;
    cases[i](r);
    eng_router_free(r);
  }
  return check_summary("test_router");
}
