/* test_db.c - the SQLite connection layer: open pragmas, statement cache, request cleanup,
 * migrations (order, records, checksums, refusals, atomic failure, concurrent migrators), the
 * checkpointer thread. */
#define _XOPEN_SOURCE 700
#include <ftw.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "check.h"
#include "tmpdir.h"
#include "query_int.h"
#include "db.h"
#include "db_migrate.h"
#include "error.h"

#define MIG_0001 "CREATE TABLE a (id INTEGER PRIMARY KEY, v TEXT NOT NULL);\n"
#define MIG_0001_SHA "1431c6d1072779b31e5d8e4a64517e0bf12079ff40c6662e89373d5107a5eb78"
/* 0002 inserts into a: it fails unless 0001 ran before it. */
#define MIG_0002                                                                       \
  "CREATE TABLE b (id INTEGER PRIMARY KEY, a_id INTEGER NOT NULL REFERENCES a(id));\n" \
  "INSERT INTO a (v) VALUES ('first');\n"                                              \
  "INSERT INTO b (a_id) VALUES (1);\n"
#define MIG_0002_SHA "d4cc470c70e29065aa5569d7ee842c56cda73537b047a6ff6ea51f57d15a7e1f"
#define MIG_0003_BAD "CREATE TABLE c (x INTEGER);\nSELEC nonsense;\n"

static const char *query_text(sqlite3 *h, const char *sql) {
  static char out[256];
  sqlite3_stmt *st = NULL;
  snprintf(out, sizeof out, "(none)");
  if (sqlite3_prepare_v2(h, sql, -1, &st, NULL) == SQLITE_OK && sqlite3_step(st) == SQLITE_ROW)
    snprintf(out, sizeof out, "%s", sqlite3_column_text(st, 0) ? (const char *)sqlite3_column_text(st, 0) : "NULL");
  sqlite3_finalize(st);
  return out;
}

static int contains(const char *s, const char *needle) { return s && strstr(s, needle) != NULL; }

static void test_open_sets_wal_fk_and_full_sync(void) {
  eng_db *db = NULL;
  char *err = NULL;
  CHECK_INT(eng_db_open(&db, path_in("open.db"), NULL, &err), 0);
  CHECK(err == NULL);
  if (!db)
    return;
  sqlite3 *h = eng_db_handle(db);
  CHECK_STR(query_text(h, "PRAGMA journal_mode"), "wal");
  CHECK_INT(query_int(h, "PRAGMA foreign_keys"), 1);
  CHECK_INT(query_int(h, "PRAGMA synchronous"), 2);
  eng_db_close(db);

  eng_db_options o = {.synchronous = "NORMAL", .busy_timeout_ms = 250};
  CHECK_INT(eng_db_open(&db, path_in("open.db"), &o, &err), 0);
  if (db) {
    CHECK_INT(query_int(eng_db_handle(db), "PRAGMA synchronous"), 1);
    eng_db_close(db);
  }

  CHECK_INT(eng_db_open(&db, ":memory:", NULL, &err), 0);
  if (db) {
    CHECK_STR(query_text(eng_db_handle(db), "PRAGMA journal_mode"), "memory");
    CHECK_INT(query_int(eng_db_handle(db), "PRAGMA foreign_keys"), 1);
    eng_db_close(db);
  }
}

static long long now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

typedef struct releaser {
  eng_db *db;
  int rc;
} releaser;

static void *release_later(void *arg) {
  releaser *r = arg;
  struct timespec ts = {0, 30 * 1000000L};
  nanosleep(&ts, NULL);
  r->rc = sqlite3_exec(eng_db_handle(r->db), "COMMIT", NULL, NULL, NULL);
  return NULL;
}

/* The busy handler waits for the write lock up to busy_timeout_ms, and gets it once released. */
static void test_busy_timeout_waits_then_gives_up(void) {
  eng_db *a = NULL, *b = NULL;
  eng_db_options o = {.busy_timeout_ms = 250};
  CHECK_INT(eng_db_open(&a, path_in("busy.db"), NULL, NULL), 0);
  CHECK_INT(eng_db_open(&b, path_in("busy.db"), &o, NULL), 0);
  if (!a || !b)
    goto cleanup;
  CHECK_INT(sqlite3_exec(eng_db_handle(a), "CREATE TABLE t (x); BEGIN IMMEDIATE", NULL, NULL, NULL), SQLITE_OK);
  long long t0 = now_ms();
  CHECK_INT(sqlite3_exec(eng_db_handle(b), "BEGIN IMMEDIATE", NULL, NULL, NULL), SQLITE_BUSY);
  long long waited = now_ms() - t0;
  CHECK(waited >= 250 && waited < 2000);

  releaser r = {a, -1};
  pthread_t th;
  pthread_create(&th, NULL, release_later, &r);
  CHECK_INT(sqlite3_exec(eng_db_handle(b), "BEGIN IMMEDIATE", NULL, NULL, NULL), SQLITE_OK);
  pthread_join(th, NULL);
  CHECK_INT(r.rc, SQLITE_OK);
  CHECK_INT(sqlite3_exec(eng_db_handle(b), "COMMIT", NULL, NULL, NULL), SQLITE_OK);
cleanup:
  eng_db_close(b);
  eng_db_close(a);
}

static void test_open_sets_cache_and_mmap(void) {
  eng_db *db = NULL;
  char *err = NULL;
  unsetenv(ENG_DB_CACHE_ENV);
  unsetenv(ENG_DB_MMAP_ENV);
  CHECK_INT(eng_db_open(&db, path_in("cache.db"), NULL, &err), 0);
  if (db) {
    CHECK_INT(query_int(eng_db_handle(db), "PRAGMA cache_size"), -1024LL * ENG_DB_CACHE_DEFAULT_MB);
    CHECK_INT(query_int(eng_db_handle(db), "PRAGMA mmap_size"), 1048576LL * ENG_DB_MMAP_DEFAULT_MB);
    eng_db_close(db);
  }
  eng_db_options o = {.cache_mb = 3, .mmap_mb = -1};
  CHECK_INT(eng_db_open(&db, path_in("cache.db"), &o, &err), 0);
  if (db) {
    CHECK_INT(query_int(eng_db_handle(db), "PRAGMA cache_size"), -3072);
    CHECK_INT(query_int(eng_db_handle(db), "PRAGMA mmap_size"), 0);
    eng_db_close(db);
  }
  /* The environment applies to options left at 0; 0 in the environment turns each off. */
  setenv(ENG_DB_CACHE_ENV, "7", 1);
  setenv(ENG_DB_MMAP_ENV, "0", 1);
  CHECK_INT(eng_db_open(&db, path_in("cache.db"), NULL, &err), 0);
  if (db) {
    CHECK_INT(query_int(eng_db_handle(db), "PRAGMA cache_size"), -7168);
    CHECK_INT(query_int(eng_db_handle(db), "PRAGMA mmap_size"), 0);
    eng_db_close(db);
  }
  setenv(ENG_DB_MMAP_ENV, "12x", 1);
  CHECK_INT(eng_db_open(&db, path_in("cache.db"), NULL, &err), ENG_EINVAL);
  CHECK(db == NULL);
  CHECK_STR(err, "db: APIENGINE_DB_MMAP_MB must be a whole number of MiB from 0 to 65536, not \"12x\"");
  free(err);
  unsetenv(ENG_DB_CACHE_ENV);
  unsetenv(ENG_DB_MMAP_ENV);
  o = (eng_db_options){.cache_mb = ENG_DB_SIZE_MAX_MB + 1};
  CHECK_INT(eng_db_open(&db, path_in("cache.db"), &o, &err), ENG_EINVAL);
  free(err);
}

static void test_open_rejects_bad_options_and_paths(void) {
  eng_db *db = (eng_db *)1;
  char *err = NULL;
  eng_db_options o = {.synchronous = "FAST"};
  CHECK_INT(eng_db_open(&db, path_in("bad.db"), &o, &err), ENG_EINVAL);
  CHECK(db == NULL);
  CHECK_STR(err, "db: synchronous must be FULL, NORMAL or OFF, not \"FAST\"");
  free(err);

  o = (eng_db_options){.stmt_cache_size = 2};
  CHECK_INT(eng_db_open(&db, path_in("bad.db"), &o, &err), ENG_EINVAL);
  free(err);
  o = (eng_db_options){.busy_timeout_ms = -1};
  CHECK_INT(eng_db_open(&db, path_in("bad.db"), &o, &err), ENG_EINVAL);
  free(err);

  CHECK_INT(eng_db_open(&db, path_in("no/such/dir/x.db"), NULL, &err), ENG_EDB);
  CHECK(db == NULL);
  CHECK(contains(err, "db: cannot open"));
  free(err);
}

static void test_stmt_cache_reuses_resets_and_evicts_lru(void) {
  eng_db *db = NULL;
  eng_db_options o = {.stmt_cache_size = 4};
  sqlite3_stmt *s1, *s2, *s3;
  const char *emsg = NULL;
  uint64_t sa, sb, sc, sd, se, x;

  CHECK_INT(eng_db_open(&db, ":memory:", &o, NULL), 0);
  if (!db)
    return;
  sqlite3 *h = eng_db_handle(db);
  CHECK_INT(sqlite3_exec(h, "CREATE TABLE t (x INTEGER); INSERT INTO t VALUES (1), (2), (3)", NULL, NULL, NULL),
            SQLITE_OK);

  /* Same text -> the same statement; the length counts, not a NUL. */
  CHECK_INT(eng_db_prepare(db, "SELECT x FROM t ORDER BY x", 26, &s1, &emsg), 0);
  CHECK_INT(eng_db_prepare(db, "SELECT x FROM t ORDER BY x DESC", 26, &s2, &emsg), 0);
  CHECK(s1 == s2);
  CHECK_INT(eng_db_prepare(db, "SELECT x FROM t ORDER BY x DESC", 31, &s3, &emsg), 0);
  CHECK(s3 != s1);

  /* A fetched statement starts from the beginning, with its bindings cleared. */
  CHECK_INT(eng_db_prepare(db, "SELECT x FROM t ORDER BY x", 26, &s1, &emsg), 0);
  CHECK_INT(sqlite3_step(s1), SQLITE_ROW);
  CHECK_INT(sqlite3_step(s1), SQLITE_ROW);
  CHECK_INT(sqlite3_column_int(s1, 0), 2);
  CHECK_INT(eng_db_prepare(db, "SELECT x FROM t ORDER BY x", 26, &s2, &emsg), 0);
  CHECK_INT(sqlite3_step(s2), SQLITE_ROW);
  CHECK_INT(sqlite3_column_int(s2, 0), 1);
  CHECK_INT(eng_db_prepare(db, "SELECT ?1", 9, &s1, &emsg), 0);
  sqlite3_bind_int(s1, 1, 7);
  CHECK_INT(eng_db_prepare(db, "SELECT ?1", 9, &s1, &emsg), 0);
  CHECK_INT(sqlite3_step(s1), SQLITE_ROW);
  CHECK_INT(sqlite3_column_type(s1, 0), SQLITE_NULL);

  /* LRU: A B C D fill the cache (with the 3 above gone); touching A makes B the oldest. */
  CHECK_INT(eng_db_prepare_ex(db, "SELECT 'A'", 10, &s1, &sa, &emsg), 0);
  CHECK_INT(eng_db_prepare_ex(db, "SELECT 'B'", 10, &s1, &sb, &emsg), 0);
  CHECK_INT(eng_db_prepare_ex(db, "SELECT 'C'", 10, &s1, &sc, &emsg), 0);
  CHECK_INT(eng_db_prepare_ex(db, "SELECT 'D'", 10, &s1, &sd, &emsg), 0);
  CHECK_INT(eng_db_prepare_ex(db, "SELECT 'A'", 10, &s1, &x, &emsg), 0);
  CHECK(x == sa);
  CHECK_INT(eng_db_prepare_ex(db, "SELECT 'E'", 10, &s1, &se, &emsg), 0); /* evicts B */
  CHECK_INT(eng_db_prepare_ex(db, "SELECT 'A'", 10, &s1, &x, &emsg), 0);
  CHECK(x == sa);
  CHECK_INT(eng_db_prepare_ex(db, "SELECT 'B'", 10, &s1, &x, &emsg), 0); /* re-prepared, evicts C */
  CHECK(x != sb && x > se);
  CHECK_INT(eng_db_prepare_ex(db, "SELECT 'D'", 10, &s1, &x, &emsg), 0);
  CHECK(x == sd);
  CHECK_INT(eng_db_prepare_ex(db, "SELECT 'C'", 10, &s1, &x, &emsg), 0);
  CHECK(x != sc);
  CHECK_INT(sqlite3_step(s1), SQLITE_ROW);
  CHECK_STR((const char *)sqlite3_column_text(s1, 0), "C");

  /* Errors. */
  CHECK_INT(eng_db_prepare(db, "SELEC 1", 7, &s1, &emsg), ENG_EDB);
  CHECK(s1 == NULL);
  CHECK_STR(emsg, "near \"SELEC\": syntax error");
  CHECK_INT(sqlite3_extended_errcode(h), SQLITE_ERROR);
  CHECK_INT(eng_db_prepare(db, "  -- nothing\n", 13, &s1, &emsg), ENG_EDB);
  CHECK_STR(emsg, "empty SQL statement");
  CHECK_INT(eng_db_prepare(db, "SELECT 1; SELECT 2", 18, &s1, &emsg), ENG_EDB);
  CHECK_STR(emsg, "more than one SQL statement in one call");
  CHECK_INT(eng_db_prepare(db, "SELECT 1; -- trailing comment\n", 30, &s1, &emsg), 0);
  CHECK(s1 != NULL);
  eng_db_close(db);
}

/* The cache hashes eight bytes a step: texts that differ only in one byte, at every position
 * around the word boundaries, and texts that are prefixes of each other must each get their own
 * statement, and the same text (from another buffer) the same one. */
static void test_stmt_cache_tells_texts_apart_at_every_length(void) {
  eng_db *db = NULL;
  eng_db_options o = {.stmt_cache_size = 256};
  sqlite3_stmt *first[40], *st;
  char sql[64], again[64];
  const char *emsg = NULL;

  CHECK_INT(eng_db_open(&db, ":memory:", &o, NULL), 0);
  if (!db)
    return;
  /* "SELECT n" padded with n spaces: texts of every length from 8 to 38, across the 8-byte steps,
   * each its own statement. */
  for (int n = 0; n < 30; n++) {
    int len = snprintf(sql, sizeof sql, "SELECT %d%*s", n, n, "");
    CHECK_INT(eng_db_prepare(db, sql, (size_t)len, &first[n], &emsg), 0);
    CHECK_INT(sqlite3_step(first[n]), SQLITE_ROW);
    CHECK_INT(sqlite3_column_int(first[n], 0), n);
    for (int m = 0; m < n; m++)
      CHECK(first[m] != first[n]);
  }
  for (int n = 0; n < 30; n++) {
    int len = snprintf(again, sizeof again, "SELECT %d%*sXYZ", n, n, ""); /* longer buffer, same len */
    CHECK_INT(eng_db_prepare(db, again, (size_t)len - 3, &st, &emsg), 0);
    CHECK(st == first[n]);
  }
  /* One differing byte at each position 0..16 of a 17-byte text. */
  sqlite3_stmt *one[17];
  for (int i = 0; i < 17; i++) {
    memcpy(sql, "SELECT 12345678  ", 17);
    if (sql[i] == ' ')
      sql[i] = '\t';
    else if (sql[i] >= '1' && sql[i] <= '8')
      sql[i] = '9';
    else
      sql[i] = (char)(sql[i] == 'S' ? 's' : sql[i] == 'E' ? 'e' : sql[i] == 'L' ? 'l' : sql[i] == 'C' ? 'c' : 't');
    CHECK_INT(eng_db_prepare(db, sql, 17, &one[i], &emsg), 0);
    for (int m = 0; m < i; m++)
      CHECK(one[m] != one[i]);
  }
  eng_db_close(db);
}

static void test_after_request_resets_and_rolls_back(void) {
  eng_db *db = NULL;
  sqlite3_stmt *st;
  CHECK_INT(eng_db_open(&db, path_in("after.db"), NULL, NULL), 0);
  if (!db)
    return;
  sqlite3 *h = eng_db_handle(db);
  CHECK_INT(sqlite3_exec(h, "CREATE TABLE t (x INTEGER); INSERT INTO t VALUES (1), (2), (3)", NULL, NULL, NULL),
            SQLITE_OK);
  CHECK_INT(eng_db_after_request(db), 0);

  CHECK_INT(eng_db_prepare(db, "SELECT x FROM t", 15, &st, NULL), 0);
  CHECK_INT(sqlite3_step(st), SQLITE_ROW);
  CHECK_INT(sqlite3_stmt_busy(st), 1);
  CHECK_INT(sqlite3_exec(h, "BEGIN; INSERT INTO t VALUES (4)", NULL, NULL, NULL), SQLITE_OK);
  CHECK_INT(sqlite3_get_autocommit(h), 0);
  CHECK_INT(eng_db_after_request(db), 1);
  CHECK_INT(sqlite3_stmt_busy(st), 0);
  CHECK_INT(sqlite3_get_autocommit(h), 1);
  CHECK_INT(query_int(h, "SELECT count(*) FROM t"), 3);
  CHECK_INT(eng_db_after_request(db), 0);

  /* close rolls back an open transaction too */
  CHECK_INT(sqlite3_exec(h, "BEGIN; INSERT INTO t VALUES (5)", NULL, NULL, NULL), SQLITE_OK);
  eng_db_close(db);
  db = NULL;
  CHECK_INT(eng_db_open(&db, path_in("after.db"), NULL, NULL), 0);
  if (db) {
    CHECK_INT(query_int(eng_db_handle(db), "SELECT count(*) FROM t"), 3);
    eng_db_close(db);
  }
}

static void test_migrations(void) {
  eng_db *db = NULL;
  char *err = NULL;
  int applied = -1;
  char dir[256];
  snprintf(dir, sizeof dir, "%s", path_in("schema"));

  mkdir(dir, 0700);
  write_file("schema/0001_init.sql", MIG_0001);
  write_file("schema/0002_b.sql", MIG_0002);
  write_file("schema/README.md", "not a migration");
  write_file("schema/001_short.sql", "garbage");
  write_file("schema/0003x.sql", "garbage");
  write_file("schema/0004_.sql", "garbage");
  write_file("schema/0005_b.sql~", "garbage");
  mkdir(path_in("schema/0006_dir.sql"), 0700);

  CHECK_INT(eng_db_open(&db, path_in("mig.db"), NULL, NULL), 0);
  if (!db)
    return;
  sqlite3 *h = eng_db_handle(db);

  /* applies both files, in order (0002 inserts into 0001's table) and records them */
  CHECK_INT(eng_db_migrate(db, dir, &applied, &err), 0);
  CHECK(err == NULL);
  CHECK_INT(applied, 2);
  CHECK_INT(query_int(h, "SELECT count(*) FROM b"), 1);
  CHECK_INT(query_int(h, "SELECT count(*) FROM _migrations"), 2);
  CHECK_STR(query_text(h, "SELECT name FROM _migrations WHERE id = 1"), "0001_init.sql");
  CHECK_STR(query_text(h, "SELECT checksum FROM _migrations WHERE id = 1"), MIG_0001_SHA);
  CHECK_STR(query_text(h, "SELECT name FROM _migrations WHERE id = 2"), "0002_b.sql");
  CHECK_STR(query_text(h, "SELECT checksum FROM _migrations WHERE id = 2"), MIG_0002_SHA);
  CHECK_INT(query_int(h,
                      "SELECT count(*) FROM _migrations WHERE applied_at GLOB "
                      "'[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]T[0-9][0-9]:[0-9][0-9]:[0-9][0-9].[0-9][0-9][0-9]Z'"),
            2);

  /* re-run: nothing to do */
  CHECK_INT(eng_db_migrate(db, dir, &applied, &err), 0);
  CHECK_INT(applied, 0);

  /* a changed file is refused */
  write_file("schema/0002_b.sql", MIG_0002 "-- edited\n");
  CHECK_INT(eng_db_migrate(db, dir, &applied, &err), ENG_ECONFIG);
  {
    char want[512];
    snprintf(want, sizeof want,
             "db: migration %s/0002_b.sql was changed after it was applied (sha256 d4cc470c70e2 when "
             "applied, ",
             dir);
    CHECK(strncmp(err ? err : "", want, strlen(want)) == 0);
    CHECK(contains(err, "/0002_b.sql was changed after it was applied (sha256 d4cc470c70e2 when applied, "));
    CHECK(contains(err, " now): put the file back as it was (from version control or the release it came with) and "
                        "make the change in a new migration numbered after the last one"));
  }
  CHECK_INT(applied, 0);
  free(err);
  write_file("schema/0002_b.sql", MIG_0002);

  /* a recorded migration the directory lacks is refused */
  CHECK_INT(sqlite3_exec(h, "INSERT INTO _migrations VALUES (9, '0009_gone.sql', 'x', 'y')", NULL, NULL, NULL),
            SQLITE_OK);
  CHECK_INT(eng_db_migrate(db, dir, &applied, &err), ENG_ECONFIG);
  CHECK(contains(err, "records migration 0009_gone.sql (id 9), which is not in"));
  CHECK(contains(err, ": if it came from another schema directory (an overlay: --schema schema:my-schema), give the "
                      "same --schema as the start that applied it"));
  free(err);
  CHECK_INT(sqlite3_exec(h, "DELETE FROM _migrations WHERE id = 9", NULL, NULL, NULL), SQLITE_OK);

  /* a failing third migration leaves neither its table nor a record */
  write_file("schema/0003_c.sql", MIG_0003_BAD);
  CHECK_INT(eng_db_migrate(db, dir, &applied, &err), ENG_EDB);
  {
    char want[512];
    snprintf(want, sizeof want, "db: migration %s/0003_c.sql:2 failed: near \"SELEC\": syntax error", dir);
    CHECK_STR(err, want);
  }
  free(err);
  CHECK_INT(applied, 0);
  CHECK_INT(query_int(h, "SELECT count(*) FROM sqlite_master WHERE name = 'c'"), 0);
  CHECK_INT(query_int(h, "SELECT count(*) FROM _migrations"), 2);
  CHECK_INT(sqlite3_get_autocommit(h), 1);

  /* from scratch: the two good ones stay applied, the bad one does not */
  eng_db *db2 = NULL;
  CHECK_INT(eng_db_open(&db2, path_in("mig2.db"), NULL, NULL), 0);
  if (db2) {
    CHECK_INT(eng_db_migrate(db2, dir, &applied, &err), ENG_EDB);
    free(err);
    CHECK_INT(applied, 2);
    CHECK_INT(query_int(eng_db_handle(db2), "SELECT group_concat(id, '') FROM _migrations"), 12);
    CHECK_INT(query_int(eng_db_handle(db2), "SELECT count(*) FROM sqlite_master WHERE name = 'c'"), 0);
    eng_db_close(db2);
  }
  remove(path_in("schema/0003_c.sql"));

  /* a new file numbered below an applied one is refused */
  write_file("schema/0000_early.sql", "CREATE TABLE early (x INTEGER);\n");
  CHECK_INT(eng_db_migrate(db, dir, &applied, &err), ENG_ECONFIG);
  CHECK(contains(err, "0000_early.sql is numbered below"));
  free(err);
  remove(path_in("schema/0000_early.sql"));

  /* two files with one number are refused before anything runs */
  write_file("schema/0003_one.sql", "CREATE TABLE one (x INTEGER);\n");
  write_file("schema/0003_two.sql", "CREATE TABLE two (x INTEGER);\n");
  CHECK_INT(eng_db_migrate(db, dir, &applied, &err), ENG_ECONFIG);
  CHECK_STR(err, "db: migrations 0003_one.sql and 0003_two.sql share the number 0003");
  free(err);
  CHECK_INT(applied, 0);
  CHECK_INT(query_int(h, "SELECT count(*) FROM sqlite_master WHERE name IN ('one', 'two')"), 0);
  remove(path_in("schema/0003_two.sql"));
  CHECK_INT(eng_db_migrate(db, dir, &applied, &err), 0);
  CHECK_INT(applied, 1);
  CHECK_INT(query_int(h, "SELECT count(*) FROM sqlite_master WHERE name = 'one'"), 1);

  /* a missing directory */
  CHECK_INT(eng_db_migrate(db, path_in("nope"), &applied, &err), ENG_EIO);
  CHECK(contains(err, "cannot open schema directory"));
  free(err);
  eng_db_close(db);
}

typedef struct migrator {
  const char *path, *dir;
  int rc, applied;
} migrator;

static void *migrate_thread(void *arg) {
  migrator *m = arg;
  eng_db *db = NULL;
  char *err = NULL;
  m->rc = eng_db_open(&db, m->path, NULL, &err);
  if (m->rc == 0)
    m->rc = eng_db_migrate(db, m->dir, &m->applied, &err);
  if (err)
    fprintf(stderr, "migrator: %s\n", err);
  free(err);
  eng_db_close(db);
  return NULL;
}

static void test_concurrent_migrators_apply_each_once(void) {
  char dir[256], name[64], sql[128];
  snprintf(dir, sizeof dir, "%s", path_in("schema_c"));
  mkdir(dir, 0700);
  for (int i = 1; i <= 8; i++) {
    snprintf(name, sizeof name, "schema_c/%04d_t%d.sql", i, i);
    snprintf(sql, sizeof sql, "CREATE TABLE t%d (x INTEGER);\n", i);
    write_file(name, sql);
  }
  migrator m[3];
  pthread_t th[3];
  for (int i = 0; i < 3; i++) {
    m[i] = (migrator){.path = strdup(path_in("conc_mig.db")), .dir = dir, .rc = -1, .applied = -1};
    pthread_create(&th[i], NULL, migrate_thread, &m[i]);
  }
  int total = 0;
  for (int i = 0; i < 3; i++) {
    pthread_join(th[i], NULL);
    CHECK_INT(m[i].rc, 0);
    total += m[i].applied;
    free((char *)m[i].path);
  }
  CHECK_INT(total, 8);
  eng_db *db = NULL;
  CHECK_INT(eng_db_open(&db, path_in("conc_mig.db"), NULL, NULL), 0);
  if (db) {
    CHECK_INT(query_int(eng_db_handle(db), "SELECT count(*) FROM _migrations"), 8);
    eng_db_close(db);
  }
}

/* Several schema directories form one numbered sequence (an operator's overlay). */
static void test_migration_overlay(void) {
  mkdir(path_in("base"), 0700);
  mkdir(path_in("extra"), 0700);
  write_file("base/0001_a.sql", "CREATE TABLE ov_a (x INTEGER);\n");
  write_file("base/0003_c.sql", "INSERT INTO ov_b (x) VALUES (3);\n"); /* needs 0002 from extra first */
  write_file("extra/0002_b.sql", "CREATE TABLE ov_b (x INTEGER);\n");
  char dirs[600];
  snprintf(dirs, sizeof dirs, "%s:%s", path_in("base"), path_in("extra"));
  eng_db *db = NULL;
  char *err = NULL;
  int applied = 0;
  CHECK_INT(eng_db_open(&db, path_in("overlay.db"), NULL, NULL), 0);
  if (!db)
    return;
  CHECK_INT(eng_db_migrate(db, dirs, &applied, &err), 0);
  CHECK_INT(applied, 3);
  CHECK_INT(query_int(eng_db_handle(db), "SELECT group_concat(id, '') FROM _migrations"), 123);
  CHECK_INT(query_int(eng_db_handle(db), "SELECT x FROM ov_b"), 3);
  /* the base alone no longer matches what the database records */
  CHECK_INT(eng_db_migrate(db, path_in("base"), &applied, &err), ENG_ECONFIG);
  CHECK(contains(err, "records migration 0002_b.sql"));
  free(err);
  /* one number in two directories is refused */
  write_file("extra/0003_dup.sql", "SELECT 1;\n");
  CHECK_INT(eng_db_migrate(db, dirs, &applied, &err), ENG_ECONFIG);
  CHECK(contains(err, "0003_c.sql and ") && contains(err, "0003_dup.sql share the number 0003"));
  free(err);
  eng_db_close(db);
}

/* eng_db_inspect reads without writing (a missing file stays missing); eng_db_migrate_ex stops
 * at a number; eng_db_engine_fact keeps the first value. */
static void test_inspect_limit_and_facts(void) {
  eng_db *db = NULL;
  eng_db_state st;
  char *err = NULL, *stored = NULL;
  int applied = -1;
  const char *dir = path_in("ischema");
  char *dirs = strdup(dir);
  mkdir(dirs, 0700);
  write_file("ischema/0001_init.sql", MIG_0001);
  write_file("ischema/0002_b.sql", MIG_0002);

  CHECK_INT(eng_db_inspect(path_in("inspect.db"), dirs, &st, &err), 0);
  CHECK_INT(st.exists, 0);
  CHECK_INT(st.npending, 2);
  CHECK_INT(st.max_applied_id, -1);
  CHECK(st.fingerprint == NULL);
  if (st.npending == 2) {
    char want[300];
    snprintf(want, sizeof want, "%s/0002_b.sql", dirs);
    CHECK_STR(st.pending[1], want);
  }
  eng_db_state_free(&st);
  CHECK_INT(access(path_in("inspect.db"), F_OK), -1);

  /* up to 0001 only, quietly */
  CHECK_INT(eng_db_open(&db, path_in("inspect.db"), NULL, NULL), 0);
  if (!db) {
    free(dirs);
    return;
  }
  eng_db_migrate_options mo = {.limit = 1, .max_id = 1, .quiet = 1};
  CHECK_INT(eng_db_migrate_ex(db, dirs, &mo, &applied, &err), 0);
  CHECK_INT(applied, 1);
  CHECK_INT(query_int(eng_db_handle(db), "SELECT count(*) FROM sqlite_master WHERE name = 'b'"), 0);
  mo.max_id = -1; /* none */
  CHECK_INT(eng_db_migrate_ex(db, dirs, &mo, &applied, &err), 0);
  CHECK_INT(applied, 0);

  CHECK_INT(eng_db_engine_fact(db, "k", "first", &stored, &err), 0);
  CHECK_STR(stored, "first");
  free(stored);
  CHECK_INT(eng_db_engine_fact(db, "k", "second", &stored, &err), 0);
  CHECK_STR(stored, "first");
  free(stored);
  CHECK_INT(eng_db_engine_fact(db, "key_fingerprint", "abc123", &stored, &err), 0);
  free(stored);

  CHECK_INT(eng_db_inspect(path_in("inspect.db"), dirs, &st, &err), 0);
  CHECK_INT(st.exists, 1);
  CHECK_INT(st.applied, 1);
  CHECK_INT(st.max_applied_id, 1);
  CHECK_INT(st.npending, 1);
  CHECK_STR(st.fingerprint, "abc123");
  eng_db_state_free(&st);

  /* a changed applied migration: the same refusal as eng_db_migrate */
  write_file("ischema/0001_init.sql", "CREATE TABLE a (id INTEGER PRIMARY KEY);\n");
  CHECK_INT(eng_db_inspect(path_in("inspect.db"), dirs, &st, &err), ENG_ECONFIG);
  CHECK(err && strstr(err, "/0001_init.sql was changed after it was applied"));
  free(err);
  err = NULL;
  eng_db_close(db);
  free(dirs);
}

static long long file_size(const char *path) {
  struct stat st;
  return stat(path, &st) == 0 ? (long long)st.st_size : -1;
}

static void sleep_ms(long ms) {
  struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
  nanosleep(&ts, NULL);
}

/* A connection opened with no_autocheckpoint leaves every commit in the WAL, however big; the
 * checkpointer copies it into the database file on its own thread, rewinds a WAL that passed
 * restart_bytes (the next commit writes at its start: the file does not grow), and empties it
 * when stopped, while the writer's connection is still open (so it is not SQLite's checkpoint at
 * the last close). */
static void test_checkpointer_moves_the_wal_off_the_writers(void) {
  const char *path = path_in("ckpt.db");
  char wal[300];
  snprintf(wal, sizeof wal, "%s-wal", path);
  eng_db *w = NULL, *plain = NULL;
  eng_db_checkpointer *cp = NULL;
  eng_db_checkpoint_stats st;
  char *err = NULL;
  eng_db_options o = {.no_autocheckpoint = 1};
  CHECK_INT(eng_db_open(&w, path, &o, &err), 0);
  CHECK_INT(eng_db_open(&plain, path, NULL, &err), 0);
  if (!w || !plain)
    goto cleanup;
  sqlite3 *h = eng_db_handle(w);
  CHECK_INT(query_int(h, "PRAGMA wal_autocheckpoint"), 0);
  CHECK_INT(query_int(eng_db_handle(plain), "PRAGMA wal_autocheckpoint"), 1000);
  CHECK_INT(query_int(h, "PRAGMA journal_size_limit"), ENG_DB_JOURNAL_LIMIT_BYTES);
  eng_db_close(plain);
  plain = NULL;

  /* About 1,500 pages in one commit: SQLite's default would checkpoint at 1,000. */
  CHECK_INT(sqlite3_exec(h,
                         "CREATE TABLE big (x BLOB); WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n "
                         "WHERE i < 1500) INSERT INTO big SELECT randomblob(3000) FROM n",
                         NULL, NULL, NULL),
            SQLITE_OK);
  long long wal_full = file_size(wal);
  CHECK(wal_full > 1500LL * 4096);
  CHECK(file_size(path) < 64 * 1024); /* nothing copied yet */

  eng_db_checkpointer_options co = {.interval_ms = 20, .restart_bytes = 1024 * 1024};
  CHECK_INT(eng_db_checkpointer_start(&cp, path, &co, &err), 0);
  CHECK(err == NULL);
  if (!cp)
    goto cleanup;
  /* The start's no-op commit (note_database_size) added one frame; nothing shrinks the file. */
  CHECK_INT(file_size(wal), wal_full + 4096 + 24);
  wal_full = file_size(wal);
  long long t0 = now_ms();
  do {
    sleep_ms(10);
    eng_db_checkpointer_stats(cp, &st);
  } while (st.restarts < 1 && now_ms() - t0 < 5000);
  CHECK(st.passive >= 1);
  CHECK(st.restarts >= 1);
  CHECK_INT(st.busy, 0);
  CHECK(st.wal_frames_max >= 1500);
  CHECK(file_size(path) > 1500LL * 3000);
  CHECK_INT(query_int(h, "SELECT count(*) FROM big"), 1500);

  /* The WAL was rewound: the next commits write at its start and the file keeps its size; the
   * stop's final checkpoint empties it. */
  CHECK_INT(sqlite3_exec(h, "INSERT INTO big VALUES (x'01')", NULL, NULL, NULL), SQLITE_OK);
  CHECK_INT(file_size(wal), wal_full);
  eng_db_checkpointer_stop(cp);
  cp = NULL;
  CHECK_INT(file_size(wal), 0);
  CHECK_INT(query_int(h, "SELECT count(*) FROM big"), 1501);

  /* Refusals: no file, a file that does not exist (never created), options out of range. */
  CHECK_INT(eng_db_checkpointer_start(&cp, ":memory:", NULL, &err), ENG_EINVAL);
  CHECK(cp == NULL);
  free(err);
  CHECK_INT(eng_db_checkpointer_start(&cp, path_in("none.db"), NULL, &err), ENG_EDB);
  CHECK(cp == NULL);
  CHECK(file_size(path_in("none.db")) == -1);
  free(err);
  co = (eng_db_checkpointer_options){.interval_ms = 60001};
  CHECK_INT(eng_db_checkpointer_start(&cp, path, &co, &err), ENG_EINVAL);
  free(err);
  err = NULL;
cleanup:
  eng_db_checkpointer_stop(cp);
  eng_db_close(plain);
  eng_db_close(w);
}

/* The checkpointer holds a read transaction between checkpoints (db.c: the read anchor). Other
 * connections must still see every commit at once, checkpoints must still copy the WAL, and two
 * checkpointers on one database (a handover) must not starve each other's checkpoints. */
static void test_checkpointer_anchor_keeps_reads_fresh_and_checkpoints_going(void) {
  const char *path = path_in("anchor.db");
  eng_db *w = NULL, *r = NULL;
  eng_db_checkpointer *cp1 = NULL, *cp2 = NULL;
  eng_db_checkpoint_stats s1, s2;
  char *err = NULL;
  eng_db_options o = {.no_autocheckpoint = 1};
  CHECK_INT(eng_db_open(&w, path, &o, &err), 0);
  CHECK_INT(eng_db_open(&r, path, &o, &err), 0);
  if (!w || !r)
    goto cleanup;
  sqlite3 *hw = eng_db_handle(w), *hr = eng_db_handle(r);
  CHECK_INT(sqlite3_exec(hw, "CREATE TABLE t (x INTEGER)", NULL, NULL, NULL), SQLITE_OK);
  eng_db_checkpointer_options co = {.interval_ms = 10};
  CHECK_INT(eng_db_checkpointer_start(&cp1, path, &co, &err), 0);
  if (!cp1)
    goto cleanup;
  long long t0 = now_ms();
  do { /* the first tick copies the WAL and takes the anchor */
    sleep_ms(10);
    eng_db_checkpointer_stats(cp1, &s1);
  } while (s1.passive < 1 && now_ms() - t0 < 5000);
  CHECK(s1.passive >= 1);
  sleep_ms(30);

  /* Each commit is visible to the other connection at once, anchor held or not. */
  for (int i = 1; i <= 20; i++) {
    char sql[64];
    snprintf(sql, sizeof sql, "INSERT INTO t VALUES (%d)", i);
    CHECK_INT(sqlite3_exec(hw, sql, NULL, NULL, NULL), SQLITE_OK);
    CHECK_INT(query_int(hr, "SELECT count(*) FROM t"), i);
    CHECK_INT(query_int(hr, "SELECT max(x) FROM t"), i);
    if (i % 5 == 0)
      sleep_ms(25);
  }

  /* A second checkpointer on the same database: commits keep being copied into the file. */
  CHECK_INT(eng_db_checkpointer_start(&cp2, path, &co, &err), 0);
  if (!cp2)
    goto cleanup;
  eng_db_checkpointer_stats(cp1, &s1);
  eng_db_checkpointer_stats(cp2, &s2);
  unsigned long long before = s1.passive + s2.passive;
  int copied_rounds = 0;
  for (int round = 0; round < 10; round++) {
    CHECK_INT(sqlite3_exec(hw, "INSERT INTO t VALUES (0)", NULL, NULL, NULL), SQLITE_OK);
    t0 = now_ms();
    unsigned long long now;
    do {
      sleep_ms(5);
      eng_db_checkpointer_stats(cp1, &s1);
      eng_db_checkpointer_stats(cp2, &s2);
      now = s1.passive + s2.passive;
    } while (now == before && now_ms() - t0 < 5000);
    copied_rounds += now > before;
    before = now;
  }
  CHECK_INT(copied_rounds, 10);
  CHECK_INT(query_int(hr, "SELECT count(*) FROM t"), 30);
cleanup:
  eng_db_checkpointer_stop(cp2);
  eng_db_checkpointer_stop(cp1);
  eng_db_close(r);
  eng_db_close(w);
  free(err);
}

int main(void) {
  if (tmpdir_make("/tmp/eng_test_db_XXXXXX") != 0)
    return 1;
  test_open_sets_wal_fk_and_full_sync();
  test_open_sets_cache_and_mmap();
  test_busy_timeout_waits_then_gives_up();
  test_open_rejects_bad_options_and_paths();
  test_stmt_cache_reuses_resets_and_evicts_lru();
  test_stmt_cache_tells_texts_apart_at_every_length();
  test_after_request_resets_and_rolls_back();
  test_migrations();
  test_concurrent_migrators_apply_each_once();
  test_migration_overlay();
  test_inspect_limit_and_facts();
  test_checkpointer_moves_the_wal_off_the_writers();
  test_checkpointer_anchor_keeps_reads_fresh_and_checkpoints_going();
  tmpdir_remove();
  return check_summary("test_db");
}
