/* test_pg_migrate.c - PostgreSQL at start-up (pg_migrate.h) against a throwaway server
 * (tests/support/pg.sh): .pg.sql variants, statements split past quotes and dollar quoting,
 * a failing statement's file:line, the refusals shared with SQLite, concurrent migrators applying
 * each migration once, the engine's facts, inspection, and passwords masked in a conninfo. */
#define _GNU_SOURCE
#include <ftw.h>
#include <libpq-fe.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "check.h"
#include "tmpdir.h"
#include "pg_server.h"
#include "error.h"
#include "pg_migrate.h"

static char admin[512]; /* the server's postgres database */

/* ---- the throwaway server and its databases ---- */

/* Runs sql on conninfo; returns the first value of the first row (static), "" for none, or
 * "(error: ...)" . */
static const char *q(const char *conninfo, const char *sql) {
  static char out[512];
  PGconn *c = PQconnectdb(conninfo);
  PGresult *r = PQexec(c, sql);
  ExecStatusType st = PQresultStatus(r);
  if (st == PGRES_TUPLES_OK && PQntuples(r) > 0)
    snprintf(out, sizeof out, "%s", PQgetvalue(r, 0, 0));
  else if (st == PGRES_TUPLES_OK || st == PGRES_COMMAND_OK)
    out[0] = '\0';
  else
    snprintf(out, sizeof out, "(error: %s)", PQerrorMessage(c));
  PQclear(r);
  PQfinish(c);
  return out;
}

/* A fresh database; *conninfo for it. */
static void fresh_db(const char *name, char *conninfo, size_t cap) {
  char sql[256];
  snprintf(sql, sizeof sql, "CREATE DATABASE %s", name);
  CHECK_STR(q(admin, sql), "");
  snprintf(conninfo, cap, "host=%s user=postgres dbname=%s", pgdir, name);
}

static int contains(const char *s, const char *needle) { return s && strstr(s, needle) != NULL; }

#define RUN(fn)                           \
  do {                                    \
    printf("test_pg_migrate: %s\n", #fn); \
    fn();                                 \
  } while (0)

/* ---- cases ---- */

static void test_redact_masks_passwords(void) {
  char out[256];
  CHECK_STR(eng_pg_conninfo_redact("postgresql://app:s3cret@db.example:5432/eng?sslmode=require", out, sizeof out),
            "postgresql://app:***@db.example:5432/eng?sslmode=require");
  CHECK_STR(eng_pg_conninfo_redact("postgres://app:p@ss@db/eng", out, sizeof out), "postgres://app:***@db/eng");
  CHECK_STR(eng_pg_conninfo_redact("postgresql://app@db/eng?password=hush&sslmode=disable", out, sizeof out),
            "postgresql://app@db/eng?password=***&sslmode=disable");
  CHECK_STR(eng_pg_conninfo_redact("postgresql:///eng?host=/run/pg", out, sizeof out),
            "postgresql:///eng?host=/run/pg");
  CHECK_STR(eng_pg_conninfo_redact("host=/tmp user=app password=hush dbname=eng", out, sizeof out),
            "host=/tmp user=app password=*** dbname=eng");
  CHECK_STR(eng_pg_conninfo_redact("password = 'a b\\' c' host=x", out, sizeof out), "password = *** host=x");
  CHECK_STR(eng_pg_conninfo_redact("/var/lib/apiengine/engine.db", out, sizeof out), "/var/lib/apiengine/engine.db");
  /* cut short, still terminated */
  CHECK_STR(eng_pg_conninfo_redact("host=/tmp password=hush", out, 12), "host=/tmp p");
}

#define M1_SQL "CREATE TABLE a (id INTEGER PRIMARY KEY);\n" /* SQLite's: PostgreSQL must not run it */
#define M1_PG                                                                          \
  "-- the PostgreSQL variant; a comment with a ; in it\n"                              \
  "CREATE TABLE a (id BIGSERIAL PRIMARY KEY, note TEXT NOT NULL DEFAULT 'x;y');\n"     \
  "/* block ; /* nested ; */ still comment ; */\n"                                     \
  "CREATE FUNCTION a_count() RETURNS bigint LANGUAGE plpgsql AS $body$\n"              \
  "BEGIN\n"                                                                            \
  "  RETURN (SELECT count(*) FROM a); -- ; inside the dollar quote\n"                  \
  "END;\n"                                                                             \
  "$body$;\n"                                                                          \
  "INSERT INTO a (note) VALUES (E'it\\'s; fine'), ('two''s; fine'), ($$dollar; $$);\n" \
  "CREATE TABLE \"odd;name\" (x INTEGER);\n"
#define M2_PGONLY "INSERT INTO \"odd;name\" (x) SELECT a_count();\n"

static void test_applies_pg_variants_in_order(void) {
  char ci[512], dir[512], *err = NULL;
  int applied = -1;
  fresh_db("variants", ci, sizeof ci);
  snprintf(dir, sizeof dir, "%s", path_in("v"));
  mkdir(dir, 0700);
  write_file("v/0001_init.sql", M1_SQL);
  write_file("v/0001_init.pg.sql", M1_PG);
  write_file("v/0002_pgonly.pg.sql", M2_PGONLY);
  write_file("v/0003_plain.sql", "CREATE TABLE plain (x INTEGER);\n");
  write_file("v/0004_.pg.sql", "garbage: not a migration name");
  write_file("v/README.md", "not a migration");

  CHECK_INT(eng_pg_migrate(ci, dir, &applied, &err), 0);
  CHECK(err == NULL);
  if (err)
    fprintf(stderr, "%s\n", err);
  free(err);
  err = NULL;
  CHECK_INT(applied, 3);
  CHECK_STR(q(ci, "SELECT string_agg(id || ':' || name, ',' ORDER BY id) FROM _migrations"),
            "1:0001_init.pg.sql,2:0002_pgonly.pg.sql,3:0003_plain.sql");
  CHECK_STR(q(ci, "SELECT string_agg(note, '|' ORDER BY id) FROM a"), "it's; fine|two's; fine|dollar; ");
  CHECK_STR(q(ci, "SELECT x FROM \"odd;name\""), "3");
  CHECK_STR(q(ci, "SELECT count(*) FROM plain"), "0");
  /* checksum = sha256 of the .pg.sql bytes; applied_at in SQLite's form */
  CHECK_STR(q(ci, "SELECT checksum = encode(sha256(convert_to($m$" M1_PG "$m$, 'UTF8')), 'hex') FROM _migrations "
                  "WHERE id = 1"),
            "t");
  CHECK_STR(q(ci, "SELECT count(*) FROM _migrations WHERE length(checksum) = 64 AND "
                  "applied_at ~ '^\\d{4}-\\d\\d-\\d\\dT\\d\\d:\\d\\d:\\d\\d\\.\\d{3}Z$'"),
            "3");

  /* again: nothing to do */
  applied = -1;
  CHECK_INT(eng_pg_migrate(ci, dir, &applied, &err), 0);
  CHECK_INT(applied, 0);
  free(err);
  err = NULL;

  /* a .pg.sql added beside an applied .sql: PostgreSQL records names, so it reads as a rename */
  write_file("v/0003_plain.pg.sql", "CREATE TABLE plain (x BIGINT);\n");
  CHECK_INT(eng_pg_migrate(ci, dir, &applied, &err), ENG_ECONFIG);
  CHECK(contains(err, "records migration 0003_plain.sql (id 3), which is not in"));
  CHECK(contains(err, "0003_plain.pg.sql has that number now"));
  free(err);
  err = NULL;
  unlink(path_in("v/0003_plain.pg.sql"));

  /* a .pg.sql whose name differs from the .sql of its number: two files, one number */
  write_file("v/0005_x.sql", "SELECT 1;\n");
  write_file("v/0005_y.pg.sql", "SELECT 1;\n");
  CHECK_INT(eng_pg_migrate(ci, dir, &applied, &err), ENG_ECONFIG);
  CHECK(contains(err, "migrations 0005_x.sql and 0005_y.pg.sql share the number 0005"));
  free(err);
  err = NULL;
  unlink(path_in("v/0005_x.sql"));
  unlink(path_in("v/0005_y.pg.sql"));

  /* the same refusals as SQLite: a changed file, a missing one, one numbered below the applied */
  write_file("v/0002_pgonly.pg.sql", M2_PGONLY "-- edited\n");
  CHECK_INT(eng_pg_migrate(ci, dir, &applied, &err), ENG_ECONFIG);
  CHECK(contains(err, "0002_pgonly.pg.sql was changed after it was applied"));
  free(err);
  err = NULL;
  write_file("v/0002_pgonly.pg.sql", M2_PGONLY);
  CHECK_STR(q(ci, "INSERT INTO _migrations VALUES (9, '0009_gone.sql', 'x', 'y')"), "");
  CHECK_INT(eng_pg_migrate(ci, dir, &applied, &err), ENG_ECONFIG);
  CHECK(contains(err, "records migration 0009_gone.sql (id 9), which is not in"));
  free(err);
  err = NULL;
  CHECK_INT(eng_pg_migrate(ci, dir, &applied, &err), ENG_ECONFIG); /* nothing changed meanwhile */
  free(err);
  err = NULL;
  CHECK_STR(q(ci, "DELETE FROM _migrations WHERE id = 9"), "");
  write_file("v/0000_early.pg.sql", "CREATE TABLE early (x INTEGER);\n");
  CHECK_INT(eng_pg_migrate(ci, dir, &applied, &err), ENG_ECONFIG);
  CHECK(contains(err, "migration 0000_early.pg.sql is numbered below migrations already applied (up to 0003)"));
  free(err);
  err = NULL;
  CHECK_STR(q(ci, "SELECT to_regclass('early') IS NULL"), "t");
  unlink(path_in("v/0000_early.pg.sql"));
  CHECK_INT(eng_pg_migrate(ci, dir, &applied, &err), 0);
  free(err);
}

static void test_failing_statement_names_its_line(void) {
  char ci[512], dir[512], *err = NULL;
  int applied = -1;
  fresh_db("failing", ci, sizeof ci);
  snprintf(dir, sizeof dir, "%s", path_in("f"));
  mkdir(dir, 0700);
  write_file("f/0001_ok.pg.sql", "CREATE TABLE t (id INTEGER PRIMARY KEY);\nINSERT INTO t VALUES (1);\n");
  /* line 5: PostgreSQL points at the unknown column (a position inside a statement that starts on
   * line 3, after a multi-byte character, so positions count characters, not bytes) */
  write_file("f/0002_bad.pg.sql", "CREATE TABLE u (x INTEGER);\n"
                                  "-- ünïcödé comment\n"
                                  "SELECT 'é',\n"
                                  "  id,\n"
                                  "  no_such_column\n"
                                  "FROM t;\n");
  CHECK_INT(eng_pg_migrate(ci, dir, &applied, &err), ENG_EDB);
  CHECK_INT(applied, 1);
  char want[700];
  snprintf(want, sizeof want, "db: migration %s/0002_bad.pg.sql:5 failed: column \"no_such_column\" does not exist",
           dir);
  CHECK_STR(err, want);
  free(err);
  err = NULL;
  /* rolled back whole: u is gone, 0001 stays */
  CHECK_STR(q(ci, "SELECT to_regclass('u') IS NULL"), "t");
  CHECK_STR(q(ci, "SELECT string_agg(name, ',') FROM _migrations"), "0001_ok.pg.sql");

  /* no position (a unique violation): the line where the statement starts */
  write_file("f/0002_bad.pg.sql", "CREATE TABLE u (x INTEGER);\n\n  INSERT INTO t\n  VALUES (1);\n");
  CHECK_INT(eng_pg_migrate(ci, dir, &applied, &err), ENG_EDB);
  CHECK(contains(err, "/0002_bad.pg.sql:3 failed: duplicate key value violates unique constraint \"t_pkey\""));
  free(err);
  err = NULL;
  CHECK_STR(q(ci, "SELECT to_regclass('u') IS NULL"), "t");

  /* a COMMIT inside would commit half a migration without its record: refused before it runs */
  write_file("f/0002_bad.pg.sql", "CREATE TABLE u (x INTEGER);\nCOMMIT;\nCREATE TABLE v (x INTEGER);\n");
  CHECK_INT(eng_pg_migrate(ci, dir, &applied, &err), ENG_ECONFIG);
  CHECK(contains(err, "/0002_bad.pg.sql:2 controls the transaction (BEGIN, COMMIT, ROLLBACK ...)"));
  free(err);
  err = NULL;
  CHECK_STR(q(ci, "SELECT to_regclass('u') IS NULL"), "t");
  /* a savepoint and its rollback stay inside the migration's transaction */
  write_file("f/0002_bad.pg.sql", "SAVEPOINT s;\nCREATE TABLE u (x INTEGER);\nROLLBACK TO SAVEPOINT s;\n"
                                  "CREATE TABLE v (x INTEGER);\n");
  CHECK_INT(eng_pg_migrate(ci, dir, &applied, &err), 0);
  free(err);
  err = NULL;
  CHECK_STR(q(ci, "SELECT to_regclass('u') IS NULL AND to_regclass('v') IS NOT NULL"), "t");
}

typedef struct mig_arg {
  const char *ci, *dir;
  int rc, applied;
} mig_arg;

static void *migrate_thread(void *p) {
  mig_arg *a = p;
  char *err = NULL;
  a->rc = eng_pg_migrate(a->ci, a->dir, &a->applied, &err);
  if (err)
    fprintf(stderr, "migrator: %s\n", err);
  free(err);
  return NULL;
}

/* Each migration counts its runs; without the lock, several migrators would run one twice (or
 * fail on CREATE TABLE). pg_sleep widens the window. */
static void test_concurrent_migrators_apply_each_once(void) {
  char ci[512], dir[512];
  enum { N = 4 };
  fresh_db("together", ci, sizeof ci);
  snprintf(dir, sizeof dir, "%s", path_in("c"));
  mkdir(dir, 0700);
  write_file("c/0001_runs.pg.sql",
             "CREATE TABLE runs (id INTEGER);\nSELECT pg_sleep(0.2);\nINSERT INTO runs VALUES (1);\n");
  write_file("c/0002_more.pg.sql", "SELECT pg_sleep(0.1);\nINSERT INTO runs VALUES (2);\n");
  write_file("c/0003_last.sql", "INSERT INTO runs VALUES (3);\n");
  pthread_t t[N];
  mig_arg a[N];
  for (int i = 0; i < N; i++) {
    a[i] = (mig_arg){ci, dir, -1, -1};
    pthread_create(&t[i], NULL, migrate_thread, &a[i]);
  }
  int total = 0;
  for (int i = 0; i < N; i++) {
    pthread_join(t[i], NULL);
    CHECK_INT(a[i].rc, 0);
    total += a[i].applied;
  }
  CHECK_INT(total, 3);
  CHECK_STR(q(ci, "SELECT string_agg(id::text, ',' ORDER BY id) FROM runs"), "1,2,3");
  CHECK_STR(q(ci, "SELECT count(*) FROM _migrations"), "3");
  /* the lock is let go: nobody holds it afterwards */
  CHECK_STR(q(ci, "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'"), "0");
}

static void test_facts_and_inspect(void) {
  char ci[512], dir[512], *err = NULL, *stored = NULL;
  eng_db_state st;
  fresh_db("facts", ci, sizeof ci);
  snprintf(dir, sizeof dir, "%s", path_in("i"));
  mkdir(dir, 0700);
  write_file("i/0001_a.pg.sql", "CREATE TABLE a (x INTEGER);\n");
  write_file("i/0002_b.sql", "CREATE TABLE b (x INTEGER);\n");

  /* nothing yet: everything pending, no fingerprint, nothing written */
  CHECK_INT(eng_pg_inspect(ci, dir, &st, &err), 0);
  CHECK_INT(st.exists, 1);
  CHECK_INT(st.applied, 0);
  CHECK_INT(st.max_applied_id, -1);
  CHECK_INT(st.npending, 2);
  if (st.npending == 2) {
    CHECK(contains(st.pending[0], "/0001_a.pg.sql"));
    CHECK(contains(st.pending[1], "/0002_b.sql"));
  }
  CHECK(st.fingerprint == NULL);
  eng_db_state_free(&st);
  CHECK_STR(q(ci, "SELECT to_regclass('_migrations') IS NULL AND to_regclass('_engine') IS NULL"), "t");

  CHECK_INT(eng_pg_engine_fact(ci, "key_fingerprint", "aaaa1111", &stored, &err), 0);
  CHECK_STR(stored, "aaaa1111");
  free(stored);
  stored = NULL;
  /* a second value does not replace the first: the caller compares */
  CHECK_INT(eng_pg_engine_fact(ci, "key_fingerprint", "bbbb2222", &stored, &err), 0);
  CHECK_STR(stored, "aaaa1111");
  free(stored);
  stored = NULL;

  eng_db_migrate_options o = {.limit = 1, .max_id = 1, .quiet = 1};
  int applied = -1;
  CHECK_INT(eng_pg_migrate_ex(ci, dir, &o, &applied, &err), 0);
  CHECK_INT(applied, 1);
  CHECK_INT(eng_pg_inspect(ci, dir, &st, &err), 0);
  CHECK_INT(st.applied, 1);
  CHECK_INT(st.max_applied_id, 1);
  CHECK_INT(st.npending, 1);
  CHECK_STR(st.fingerprint, "aaaa1111");
  eng_db_state_free(&st);

  CHECK_INT(eng_pg_engine_fact_set(ci, "key_fingerprint", "cccc3333", &err), 0);
  CHECK_STR(q(ci, "SELECT value FROM _engine WHERE key = 'key_fingerprint'"), "cccc3333");

  /* a changed applied file is refused by inspect too */
  write_file("i/0001_a.pg.sql", "CREATE TABLE a (x BIGINT);\n");
  CHECK_INT(eng_pg_inspect(ci, dir, &st, &err), ENG_ECONFIG);
  CHECK(contains(err, "0001_a.pg.sql was changed after it was applied"));
  free(err);
  err = NULL;

  /* no server there: ENG_EDB with libpq's reason */
  char none[600];
  snprintf(none, sizeof none, "host=%s/nowhere user=postgres dbname=postgres", pgdir);
  CHECK_INT(eng_pg_migrate(none, dir, &applied, &err), ENG_EDB);
  CHECK(contains(err, "db: cannot connect to PostgreSQL: "));
  free(err);
}

int main(void) {
  setvbuf(stdout, NULL, _IONBF, 0);
  alarm(100);
  if (tmpdir_make("/tmp/test_pg_migrate.XXXXXX") != 0)
    return 1;
  RUN(test_redact_masks_passwords);
  if (start_server(admin, sizeof admin) != 0) {
    fprintf(stderr, "test_pg_migrate: cannot start a throwaway PostgreSQL (tests/support/pg.sh)\n");
    return 1;
  }
  RUN(test_applies_pg_variants_in_order);
  RUN(test_failing_statement_names_its_line);
  RUN(test_concurrent_migrators_apply_each_once);
  RUN(test_facts_and_inspect);
  tmpdir_remove();
  stop_server();
  return check_summary("test_pg_migrate");
}
