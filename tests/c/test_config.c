/* test_config.c - defaults, config file, environment and flag precedence, bad values. */
#include "check.h"
#include "config.h"
#include "error.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int load(eng_config *c, int argc, char **argv, char **err) {
  int help, version;
  eng_config_init(c);
  return eng_config_load(c, argc, argv, 0, &help, &version, err);
}

int main(void) {
  eng_config c;
  char *err = NULL;

  CHECK_INT(load(&c, 0, NULL, &err), 0);
  CHECK_STR(c.listen_host, "127.0.0.1");
  CHECK_INT(c.port, 8080);
  CHECK_INT(c.limits.max_header_bytes, 16384);
  CHECK_INT(c.limits.max_url_bytes, 8192);
  CHECK_INT(c.limits.max_body_bytes, 1048576);
  CHECK_INT(c.header_timeout_ms, 10000);
  CHECK_INT(c.idle_timeout_ms, 60000);
  CHECK_INT(c.budget_ms, 1000);
  CHECK_INT(c.memory_limit, 256u << 20);
  CHECK_STR(c.synchronous, "FULL");
  CHECK(c.workers >= 1);
  eng_config_free(&c);

  char file[] = "/tmp/apiengine-config-XXXXXX";
  int fd = mkstemp(file);
  FILE *f = fdopen(fd, "w");
  fputs("return { listen = '0.0.0.0:9000', workers = 3, budget_ms = 50, access_log = false,\n"
        "  settings = { admin_key = 'x' } }\n", f);
  fclose(f);
  setenv("APIENGINE_WORKERS", "5", 1);
  char *argv1[] = {"--config", file, "--budget-ms", "70", "--log-format=json"};
  CHECK_INT(load(&c, 5, argv1, &err), 0);
  CHECK_STR(c.listen_host, "0.0.0.0"); /* file */
  CHECK_INT(c.port, 9000);
  CHECK_INT(c.workers, 5);   /* env beats file */
  CHECK_INT(c.budget_ms, 70); /* flag beats file */
  CHECK_INT(c.access_log, 0);
  CHECK_INT(c.log_json, 1);
  eng_config_free(&c);
  unsetenv("APIENGINE_WORKERS");

  char *bad1[] = {"--workers", "0"};
  CHECK_INT(load(&c, 2, bad1, &err), ENG_ECONFIG);
  CHECK(err && strstr(err, "from 1 to 256") != NULL);
  free(err);
  err = NULL;
  eng_config_free(&c);
  char *bad2[] = {"--nope"};
  CHECK_INT(load(&c, 1, bad2, &err), ENG_ECONFIG);
  CHECK(err && strstr(err, "unknown option '--nope'") != NULL);
  free(err);
  err = NULL;
  eng_config_free(&c);
  char *bad3[] = {"--listen", "nohostport"};
  CHECK_INT(load(&c, 2, bad3, &err), ENG_ECONFIG);
  free(err);
  err = NULL;
  eng_config_free(&c);
  char *bad4[] = {"--listen"};
  CHECK_INT(load(&c, 1, bad4, &err), ENG_ECONFIG);
  CHECK(err && strstr(err, "needs a value") != NULL);
  free(err);
  err = NULL;
  eng_config_free(&c);
  char *v6[] = {"--listen", "[::1]:8081"};
  CHECK_INT(load(&c, 2, v6, &err), 0);
  CHECK_STR(c.listen_host, "::1");
  CHECK_INT(c.port, 8081);
  eng_config_free(&c);

  /* A key in the environment is never echoed in errors. */
  f = fopen(file, "w");
  fputs("return { unknown_thing = 1 }\n", f);
  fclose(f);
  char *argv2[] = {"--config", file};
  CHECK_INT(load(&c, 2, argv2, &err), ENG_ECONFIG);
  CHECK(err && strstr(err, "unknown setting 'unknown_thing'") != NULL);
  free(err);
  err = NULL;
  eng_config_free(&c);
  f = fopen(file, "w");
  fputs("return { workers = \n", f);
  fclose(f);
  CHECK_INT(load(&c, 2, argv2, &err), ENG_ECONFIG);
  CHECK(err && strstr(err, "config file") != NULL);
  free(err);
  eng_config_free(&c);
  unlink(file);
  return check_summary("test_config");
}
