/* pg_server.h - a throwaway PostgreSQL for a C test (tests/support/pg.sh: initdb in a temporary
 * directory, a Unix socket only, a watchdog owned by this process), started once per test
 * program and stopped at exit. Header-only, like check.h: one test program includes it once. */
#ifndef ENG_TEST_PG_SERVER_H
#define ENG_TEST_PG_SERVER_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static char pgdir[256];      /* the server's directory (its socket lives there) */
static char pg_script[1024]; /* tests/support/pg.sh */

/* pg.sh VERB DIR (stop, pause, resume); its exit status. */
static int pg_cmd(const char *verb) {
  char cmd[2048];
  snprintf(cmd, sizeof cmd, "'%s' %s '%s'", pg_script, verb, pgdir);
  return system(cmd);
}

static void stop_server(void) {
  if (pgdir[0] && pg_cmd("stop") != 0)
    fprintf(stderr, "pg.sh stop failed\n");
  pgdir[0] = '\0';
}

/* Starts the server and writes the conninfo of its postgres database to out; -1 when it cannot. */
static int start_server(char *out, size_t size) {
  const char *src = getenv("ENG_SOURCE_DIR");
  snprintf(pg_script, sizeof pg_script, "%s/tests/support/pg.sh", src ? src : ".");
  char cmd[2048];
  snprintf(cmd, sizeof cmd, "'%s' start %ld", pg_script, (long)getpid());
  FILE *p = popen(cmd, "r");
  if (!p)
    return -1;
  char line[256] = "";
  char *got = fgets(line, sizeof line, p);
  int rc = pclose(p);
  if (!got || rc != 0)
    return -1;
  line[strcspn(line, "\n")] = '\0';
  snprintf(pgdir, sizeof pgdir, "%s", line);
  atexit(stop_server);
  snprintf(out, size, "host=%s user=postgres dbname=postgres", pgdir);
  return 0;
}

#endif
