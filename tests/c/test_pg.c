/* test_pg.c - the PostgreSQL pool (pg.h) against a real, throwaway server (tests/support/pg.sh):
 * placeholder translation, SQLSTATE kinds, type round trips, one prepare per text and connection,
 * FIFO waiting, concurrency on a pool of N, deadlines (cancel while the loop keeps serving a
 * timer), held connections and transactions, serialization failures, killed backends, an outage
 * with fail-fast answers and reconnection, closing with requests in flight. */
#define _GNU_SOURCE
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>
#include <uv.h>

#include "check.h"
#include "pg_server.h"
#include "error.h"
#include "pg.h"

static uv_loop_t *loop;
static char conninfo[512];
static int seq; /* completion order */
static int ticks;
static void tick(uv_timer_t *t) {
  (void)t;
  ticks++;
}

#define SQL(text) text, strlen(text) /* a literal and its length */

/* ---- the throwaway server ---- */

/* ---- waiting for answers ---- */

typedef struct waiter {
  int done;
  int order;
  eng_pg_result *res;
  eng_pg_conn *conn;
  uint64_t at_ms;
} waiter;

static void on_done(eng_pg_result *res, eng_pg_conn *conn, void *data) {
  waiter *w = data;
  w->done = 1;
  w->order = ++seq;
  w->conn = conn;
  w->at_ms = uv_now(loop);
  eng_pg_result_keep(res);
  w->res = res;
}

static void wait_for(waiter *w) {
  while (!w->done)
    uv_run(loop, UV_RUN_ONCE);
}

static void wake(uv_timer_t *t) { (void)t; } /* only wakes the loop up */

static void run_ms(uint64_t ms) { /* runs the loop for about ms */
  uv_update_time(loop);
  uint64_t end = uv_now(loop) + ms;
  uv_timer_t t;
  uv_timer_init(loop, &t);
  uv_timer_start(&t, wake, ms, 0);
  while (uv_now(loop) < end)
    uv_run(loop, UV_RUN_ONCE);
  uv_close((uv_handle_t *)&t, NULL);
  uv_run(loop, UV_RUN_NOWAIT);
}

static eng_pg_result *run(eng_pg *pg, eng_pg_conn *c, const char *sql, const eng_pg_value *v, int n, int timeout) {
  waiter w = {0};
  char *err = NULL;
  int rc = eng_pg_query(pg, c, sql, strlen(sql), v, n, timeout, on_done, &w, NULL, &err);
  if (rc != 0) {
    fprintf(stderr, "eng_pg_query(%s): %s\n", sql, err ? err : eng_strerror(rc));
    free(err);
    return NULL;
  }
  CHECK(!w.done); /* never inside the call */
  wait_for(&w);
  if (eng_pg_result_code(w.res) != 0 && getenv("TEST_PG_VERBOSE"))
    fprintf(stderr, "%s: %s (%s)\n", sql, eng_pg_result_message(w.res), eng_pg_result_sqlstate(w.res));
  return w.res;
}

static int ok(eng_pg *pg, eng_pg_conn *c, const char *sql) {
  eng_pg_result *r = run(pg, c, sql, NULL, 0, 0);
  int code = r ? eng_pg_result_code(r) : -1;
  if (code != 0)
    fprintf(stderr, "failed: %s: %s\n", sql, r ? eng_pg_result_message(r) : "not submitted");
  eng_pg_result_free(r);
  return code == 0;
}

static int64_t scalar(eng_pg *pg, eng_pg_conn *c, const char *sql, const eng_pg_value *v, int n) {
  eng_pg_result *r = run(pg, c, sql, v, n, 0);
  int64_t x = r && eng_pg_result_code(r) == 0 ? eng_pg_result_int(r, 0, 0) : -999;
  eng_pg_result_free(r);
  return x;
}

static eng_pg_conn *acquire(eng_pg *pg) {
  waiter w = {0};
  CHECK_INT(eng_pg_acquire(pg, 0, on_done, &w, NULL), 0);
  CHECK(!w.done);
  wait_for(&w);
  CHECK_INT(eng_pg_result_code(w.res), 0);
  eng_pg_result_free(w.res);
  return w.conn;
}

static eng_pg *open_pool(int size, const eng_pg_options *base) {
  eng_pg_options o = base ? *base : (eng_pg_options){0};
  o.size = size;
  eng_pg *pg = NULL;
  char *err = NULL;
  CHECK_INT(eng_pg_open(&pg, loop, conninfo, &o, &err), 0);
  free(err);
  return pg;
}

static void closed(void *data) { *(int *)data = 1; }

static void close_pool(eng_pg *pg) {
  int done = 0;
  eng_pg_close(pg, closed, &done);
  for (int i = 0; !done && i < 1000; i++)
    uv_run(loop, UV_RUN_ONCE);
  if (!done)
    uv_print_all_handles(loop, stderr);
  CHECK(done);
}

static eng_pg_value vint(int64_t i) { return (eng_pg_value){.type = ENG_PG_INT, .i = i}; }
static eng_pg_value vfloat(double f) { return (eng_pg_value){.type = ENG_PG_FLOAT, .f = f}; }
static eng_pg_value vtext(const char *s) { return (eng_pg_value){.type = ENG_PG_TEXT, .s = s, .len = strlen(s)}; }
static eng_pg_value vblob(const void *p, size_t n) { return (eng_pg_value){.type = ENG_PG_BLOB, .s = p, .len = n}; }
static eng_pg_value vbool(int b) { return (eng_pg_value){.type = ENG_PG_BOOL, .i = b}; }
static eng_pg_value vnull(void) { return (eng_pg_value){.type = ENG_PG_NULL}; }

/* ---- without a server ---- */

static void check_translation(const char *sql, const char *want, int nparams, const char *names) {
  eng_pg_stmt *st = NULL;
  char *err = NULL;
  int rc = eng_pg_translate(sql, strlen(sql), &st, &err);
  CHECK_INT(rc, 0);
  if (rc) {
    fprintf(stderr, "  translating %s: %s\n", sql, err);
    free(err);
    return;
  }
  CHECK_STR(st->pg_sql, want);
  CHECK_INT(st->nparams, nparams);
  char got[256] = "";
  for (int i = 0; st->names && i < st->nparams; i++)
    snprintf(got + strlen(got), sizeof got - strlen(got), "%s%s", i ? "," : "", st->names[i]);
  CHECK_STR(got, names);
  eng_pg_stmt_free(st);
}

static void check_refused(const char *sql, int code, const char *msg_part) {
  eng_pg_stmt *st = NULL;
  char *err = NULL;
  CHECK_INT(eng_pg_translate(sql, strlen(sql), &st, &err), code);
  CHECK(st == NULL);
  CHECK(err && strstr(err, msg_part));
  free(err);
}

static void test_translate_placeholders(void) {
  check_translation("SELECT ?, ?", "SELECT $1, $2", 2, "");
  check_translation("SELECT :a, :b, :a", "SELECT $1, $2, $1", 2, "a,b");
  check_translation("SELECT '?', ':x', ?", "SELECT '?', ':x', $1", 1, "");
  check_translation("SELECT 'it''s ? :x', ?", "SELECT 'it''s ? :x', $1", 1, "");
  check_translation("SELECT E'\\' ? :x', ?", "SELECT E'\\' ? :x', $1", 1, "");
  check_translation("SELECT e'a\\\\', ?", "SELECT e'a\\\\', $1", 1, ""); /* ends with an escaped backslash */
  check_translation("SELECT \"col?\", \"a\"\":b\" FROM t WHERE x = :x",
                    "SELECT \"col?\", \"a\"\":b\" FROM t WHERE x = $1", 1, "x");
  check_translation("SELECT 1 -- what? :no\n, :a", "SELECT 1 -- what? :no\n, $1", 1, "a");
  check_translation("SELECT /* ? /* nested ? */ :x */ ?", "SELECT /* ? /* nested ? */ :x */ $1", 1, "");
  check_translation("SELECT $$ ? :a $$, $tag$ it's ? $tag$, ?", "SELECT $$ ? :a $$, $tag$ it's ? $tag$, $1", 1, "");
  check_translation("SELECT x::text, :y::int", "SELECT x::text, $1::int", 1, "y");
  check_translation("SELECT arr[1:2] FROM t", "SELECT arr[1:2] FROM t", 0, "");
  check_translation("SELECT $1, $2, $1", "SELECT $1, $2, $1", 2, "");
  check_translation("SELECT a$b, :n", "SELECT a$b, $1", 1, "n");
  check_translation("SELECT :name_1, :_x, :name_1", "SELECT $1, $2, $1", 2, "name_1,_x");
  check_translation("SELECT 'abc ?", "SELECT 'abc ?", 0, ""); /* unterminated: the server says so */
  check_translation("SELECT :\xc3\xb1o", "SELECT $1", 1, "\xc3\xb1o");
  check_translation("INSERT INTO t (a, b) VALUES (:a, :b) ON CONFLICT (a) DO UPDATE SET b = excluded.b",
                    "INSERT INTO t (a, b) VALUES ($1, $2) ON CONFLICT (a) DO UPDATE SET b = excluded.b", 2, "a,b");
  /* Right after a name or a number, $n gets a space: `a$1` would be one identifier (fuzz_pgsql). */
  check_translation("SELECT a?, 1?", "SELECT a $1, 1 $2", 2, "");
  check_translation("SELECT x:y, (:z)", "SELECT x $1, ($2)", 2, "y,z");
  /* ?NNN is parameter NNN, as in SQLite; a bare ? is one past the highest so far (fuzz_pgsql: ?1
   * became $11). */
  check_translation("SELECT ?2, ?1, ?", "SELECT $2, $1, $3", 3, "");
  check_translation("SELECT ?, ?1, ?12", "SELECT $1, $1, $12", 12, "");
  check_refused("SELECT ?0", ENG_EPARSE, "numbers run from 1");
  check_refused("SELECT ?70000", ENG_ETOOBIG, "numbers run from 1");
  check_refused("SELECT ?, :a", ENG_EPARSE, "mixes ? and :name");
  check_refused("SELECT $1, ?", ENG_EPARSE, "mixes $n");
  check_refused("SELECT $70000", ENG_ETOOBIG, "at most");
}

/* Random texts over the characters the translator treats specially: it never reads or writes out
 * of bounds (the ASan pass), a text without '?' or ':' comes back unchanged, and a text without
 * quotes, dollar signs or comments keeps no '?'. */
static void test_translate_random_texts(void) {
  static const char alphabet[] = "?:$'\"-/*E\\\n a1_;([])";
  uint32_t x = 12345;
  char sql[80];
  int translated = 0;
  for (int n = 0; n < 20000; n++) {
    x = x * 1103515245u + 12345u;
    size_t len = (x >> 16) % sizeof sql;
    for (size_t i = 0; i < len; i++) {
      x = x * 1103515245u + 12345u;
      sql[i] = alphabet[(x >> 16) % (sizeof alphabet - 1)];
    }
    eng_pg_stmt *st = NULL;
    char *err = NULL;
    int rc = eng_pg_translate(sql, len, &st, &err);
    if (rc == 0) {
      translated++;
      CHECK(st->len == len && memcmp(st->sql, sql, len) == 0);
      if (!memchr(sql, '?', len) && !memchr(sql, ':', len) &&
          (strlen(st->pg_sql) != len || memcmp(st->pg_sql, sql, len) != 0))
        CHECK(!"a text without placeholders changed");
      if (!memchr(sql, '\'', len) && !memchr(sql, '"', len) && !memchr(sql, '$', len) && !memchr(sql, '-', len) &&
          !memchr(sql, '/', len) && strchr(st->pg_sql, '?'))
        CHECK(!"a ? outside quotes and comments was left");
      eng_pg_stmt_free(st);
    } else {
      CHECK(rc == ENG_EPARSE && err != NULL);
      free(err);
    }
  }
  CHECK(translated > 10000);
}

static void test_kinds_from_sqlstate(void) {
  CHECK_INT(eng_pg_kind_of("23505", "users_email_key"), ENG_PG_KIND_UNIQUE);
  CHECK_INT(eng_pg_kind_of("23505", "users_pkey"), ENG_PG_KIND_PRIMARY_KEY);
  CHECK_INT(eng_pg_kind_of("23503", NULL), ENG_PG_KIND_FOREIGN_KEY);
  CHECK_INT(eng_pg_kind_of("23514", NULL), ENG_PG_KIND_CHECK);
  CHECK_INT(eng_pg_kind_of("23502", NULL), ENG_PG_KIND_NOT_NULL);
  CHECK_INT(eng_pg_kind_of("23P01", NULL), ENG_PG_KIND_CONSTRAINT);
  CHECK_INT(eng_pg_kind_of("40001", NULL), ENG_PG_KIND_SERIALIZATION);
  CHECK_INT(eng_pg_kind_of("40P01", NULL), ENG_PG_KIND_SERIALIZATION);
  CHECK_INT(eng_pg_kind_of("55P03", NULL), ENG_PG_KIND_BUSY);
  CHECK_INT(eng_pg_kind_of("53300", NULL), ENG_PG_KIND_BUSY);
  CHECK_INT(eng_pg_kind_of("08006", NULL), ENG_PG_KIND_UNAVAILABLE);
  CHECK_INT(eng_pg_kind_of("57P01", NULL), ENG_PG_KIND_UNAVAILABLE);
  CHECK_INT(eng_pg_kind_of("42601", NULL), ENG_PG_KIND_ERROR);
  CHECK_INT(eng_pg_kind_of(NULL, NULL), ENG_PG_KIND_ERROR);
  CHECK_STR(eng_pg_kind_name(ENG_PG_KIND_FOREIGN_KEY), "foreign_key");
  CHECK_STR(eng_pg_kind_name(ENG_PG_KIND_SERIALIZATION), "serialization");
}

static void test_open_refuses_bad_options(void) {
  eng_pg *pg = NULL;
  char *err = NULL;
  eng_pg_options o = {.size = ENG_PG_POOL_MAX + 1};
  CHECK_INT(eng_pg_open(&pg, loop, "host=/nonexistent", &o, &err), ENG_EINVAL);
  CHECK(pg == NULL);
  CHECK(err && strstr(err, "pool size"));
  free(err);
  err = NULL;
  o = (eng_pg_options){.backoff_min_ms = 500, .backoff_max_ms = 100};
  CHECK_INT(eng_pg_open(&pg, loop, "host=/nonexistent", &o, &err), ENG_EINVAL);
  CHECK(err && strstr(err, "maximum back-off"));
  free(err);
}

/* ---- against the server ---- */

static void test_type_round_trips(void) {
  eng_pg *pg = open_pool(1, NULL);
  unsigned char bytes[256];
  for (int i = 0; i < 256; i++)
    bytes[i] = (unsigned char)i;
  eng_pg_value v[] = {vint(32767),
                      vint(-2147483647 - 1),
                      vint(INT64_MIN),
                      vfloat(1.5),
                      vfloat(0.1),
                      vint(12345678901234),
                      vfloat(3.25),
                      vtext("h\xc3\xa9llo ' \" \\ ?"),
                      vblob(bytes, sizeof bytes),
                      vbool(1),
                      vnull(),
                      vblob("", 0),
                      vtext("")};
  eng_pg_result *r = run(pg, NULL,
                         "SELECT ?::int2 AS a, ?::int4 AS b, ?::int8 AS c, ?::float4 AS d, ?::float8 AS e,"
                         " ?::numeric AS f, ?::numeric AS g, ?::text AS h, ?::bytea AS i, ?::boolean AS j,"
                         " ?::int AS k, ?::bytea AS l, ?::text AS m, 'Infinity'::float8 AS n,"
                         " 123456789012345678901234567890::numeric AS o, false AS p,"
                         " '2026-01-02 03:04:05+00'::timestamptz AS q, '{\"a\":1}'::jsonb AS r",
                         v, 13, 0);
  CHECK(r && eng_pg_result_code(r) == 0);
  if (!r || eng_pg_result_code(r) != 0) {
    eng_pg_result_free(r);
    close_pool(pg);
    return;
  }
  CHECK_INT(eng_pg_result_rows(r), 1);
  CHECK_INT(eng_pg_result_cols(r), 18);
  CHECK_STR(eng_pg_result_name(r, 0), "a");
  CHECK_STR(eng_pg_result_name(r, 17), "r");
  CHECK(eng_pg_result_name(r, 18) == NULL);
  CHECK_INT(eng_pg_result_type(r, 0, 0), ENG_PG_INT);
  CHECK_INT(eng_pg_result_int(r, 0, 0), 32767);
  CHECK_INT(eng_pg_result_type(r, 0, 1), ENG_PG_INT);
  CHECK_INT(eng_pg_result_int(r, 0, 1), -2147483647 - 1);
  CHECK_INT(eng_pg_result_type(r, 0, 2), ENG_PG_INT);
  CHECK(eng_pg_result_int(r, 0, 2) == INT64_MIN);
  CHECK_INT(eng_pg_result_type(r, 0, 3), ENG_PG_FLOAT);
  CHECK(eng_pg_result_float(r, 0, 3) == 1.5);
  CHECK_INT(eng_pg_result_type(r, 0, 4), ENG_PG_FLOAT);
  CHECK(eng_pg_result_float(r, 0, 4) == 0.1);
  CHECK_INT(eng_pg_result_type(r, 0, 5), ENG_PG_INT); /* a whole numeric */
  CHECK_INT(eng_pg_result_int(r, 0, 5), 12345678901234);
  CHECK_INT(eng_pg_result_type(r, 0, 6), ENG_PG_FLOAT);
  CHECK(eng_pg_result_float(r, 0, 6) == 3.25);
  size_t n = 0;
  CHECK_INT(eng_pg_result_type(r, 0, 7), ENG_PG_TEXT);
  CHECK_STR(eng_pg_result_text(r, 0, 7, &n), "h\xc3\xa9llo ' \" \\ ?");
  CHECK_INT(n, strlen("h\xc3\xa9llo ' \" \\ ?"));
  CHECK_INT(eng_pg_result_type(r, 0, 8), ENG_PG_BLOB);
  CHECK_INT(eng_pg_result_blob_len(r, 0, 8), 256);
  unsigned char back[256] = {0};
  CHECK_INT(eng_pg_result_blob(r, 0, 8, back), 256);
  CHECK(memcmp(back, bytes, 256) == 0);
  CHECK_INT(eng_pg_result_type(r, 0, 9), ENG_PG_BOOL);
  CHECK_INT(eng_pg_result_int(r, 0, 9), 1);
  CHECK_INT(eng_pg_result_type(r, 0, 10), ENG_PG_NULL);
  CHECK(eng_pg_result_text(r, 0, 10, &n) == NULL);
  CHECK_INT(eng_pg_result_type(r, 0, 11), ENG_PG_BLOB);
  CHECK_INT(eng_pg_result_blob_len(r, 0, 11), 0);
  CHECK_INT(eng_pg_result_type(r, 0, 12), ENG_PG_TEXT);
  CHECK_STR(eng_pg_result_text(r, 0, 12, &n), "");
  CHECK_INT(eng_pg_result_type(r, 0, 13), ENG_PG_FLOAT);
  CHECK(eng_pg_result_float(r, 0, 13) > 1e308);
  CHECK_INT(eng_pg_result_type(r, 0, 14), ENG_PG_FLOAT); /* a whole numeric past int64 */
  CHECK_INT(eng_pg_result_type(r, 0, 15), ENG_PG_BOOL);
  CHECK_INT(eng_pg_result_int(r, 0, 15), 0);
  CHECK_INT(eng_pg_result_type(r, 0, 16), ENG_PG_TEXT);
  CHECK_STR(eng_pg_result_text(r, 0, 16, NULL), "2026-01-02 03:04:05+00");
  CHECK_INT(eng_pg_result_type(r, 0, 17), ENG_PG_TEXT);
  CHECK_STR(eng_pg_result_text(r, 0, 17, NULL), "{\"a\": 1}");
  CHECK_INT(eng_pg_result_type(r, 1, 0), ENG_PG_NULL); /* out of range */
  CHECK_INT(eng_pg_result_affected(r), 0);             /* a SELECT changes nothing */
  eng_pg_result_free(r);

  /* Through a table: the same values stored and read back, and the counts of changed rows. */
  CHECK(ok(
      pg, NULL,
      "CREATE TABLE rt (i2 int2, i4 int4, i8 int8, f4 float4, f8 float8, num numeric, t text, b bytea, bo boolean)"));
  eng_pg_value row[] = {vint(-7),     vint(70000),           vint(INT64_MAX),   vfloat(-2.5), vfloat(1e-300),
                        vfloat(12.5), vtext("\xe2\x82\xac"), vblob(bytes, 256), vbool(0)};
  r = run(pg, NULL, "INSERT INTO rt VALUES (:i2, :i4, :i8, :f4, :f8, :num, :t, :b, :bo)", row, 9, 0);
  CHECK(r && eng_pg_result_code(r) == 0 && eng_pg_result_affected(r) == 1);
  eng_pg_result_free(r);
  r = run(pg, NULL, "SELECT * FROM rt", NULL, 0, 0);
  CHECK(r && eng_pg_result_rows(r) == 1);
  if (r && eng_pg_result_rows(r) == 1) {
    CHECK_INT(eng_pg_result_int(r, 0, 0), -7);
    CHECK_INT(eng_pg_result_int(r, 0, 1), 70000);
    CHECK(eng_pg_result_int(r, 0, 2) == INT64_MAX);
    CHECK(eng_pg_result_float(r, 0, 3) == -2.5);
    CHECK(eng_pg_result_float(r, 0, 4) == 1e-300);
    CHECK_INT(eng_pg_result_type(r, 0, 5), ENG_PG_FLOAT);
    CHECK(eng_pg_result_float(r, 0, 5) == 12.5);
    CHECK_STR(eng_pg_result_text(r, 0, 6, NULL), "\xe2\x82\xac");
    memset(back, 0, sizeof back);
    CHECK_INT(eng_pg_result_blob(r, 0, 7, back), 256);
    CHECK(memcmp(back, bytes, 256) == 0);
    CHECK_INT(eng_pg_result_type(r, 0, 8), ENG_PG_BOOL);
    CHECK_INT(eng_pg_result_int(r, 0, 8), 0);
  }
  eng_pg_result_free(r);
  r = run(pg, NULL, "UPDATE rt SET i2 = i2 + 1 WHERE i2 = 1000", NULL, 0, 0);
  CHECK(r && eng_pg_result_code(r) == 0 && eng_pg_result_affected(r) == 0);
  eng_pg_result_free(r);

  /* bytea in the old escape output format decodes to the same bytes. */
  eng_pg_conn *c = acquire(pg);
  CHECK(ok(pg, c, "SET bytea_output = 'escape'"));
  eng_pg_value b = vblob(bytes, 256);
  r = run(pg, c, "SELECT ?::bytea", &b, 1, 0);
  CHECK(r && eng_pg_result_type(r, 0, 0) == ENG_PG_BLOB);
  if (r) {
    CHECK_INT(eng_pg_result_blob_len(r, 0, 0), 256);
    memset(back, 0, sizeof back);
    CHECK_INT(eng_pg_result_blob(r, 0, 0, back), 256);
    CHECK(memcmp(back, bytes, 256) == 0);
  }
  eng_pg_result_free(r);
  CHECK(ok(pg, c, "RESET bytea_output"));
  CHECK_INT(eng_pg_release(c), 0);
  CHECK(ok(pg, NULL, "DROP TABLE rt"));
  close_pool(pg);
}

static void test_booleans_fit_boolean_and_integer_columns(void) {
  eng_pg *pg = open_pool(1, NULL);
  CHECK(ok(pg, NULL, "CREATE TABLE flags (b boolean, i int, t text)"));
  eng_pg_value v[] = {vbool(1), vbool(1), vbool(0)};
  eng_pg_result *r = run(pg, NULL, "INSERT INTO flags VALUES (?, ?, ?)", v, 3, 0);
  CHECK(r && eng_pg_result_code(r) == 0 && eng_pg_result_affected(r) == 1);
  eng_pg_result_free(r);
  r = run(pg, NULL, "SELECT b, i, t FROM flags", NULL, 0, 0);
  CHECK(r && eng_pg_result_type(r, 0, 0) == ENG_PG_BOOL && eng_pg_result_int(r, 0, 0) == 1);
  CHECK(r && eng_pg_result_type(r, 0, 1) == ENG_PG_INT && eng_pg_result_int(r, 0, 1) == 1);
  CHECK(r && strcmp(eng_pg_result_text(r, 0, 2, NULL), "0") == 0);
  eng_pg_result_free(r);
  CHECK(ok(pg, NULL, "DROP TABLE flags"));
  close_pool(pg);
}

static void test_named_parameters_bind_in_translation_order(void) {
  eng_pg *pg = open_pool(1, NULL);
  const char *sql = "SELECT :b::int * 10 + :a::int AS s, :b::int AS b";
  const eng_pg_stmt *st = NULL;
  CHECK_INT(eng_pg_statement(pg, sql, strlen(sql), &st, NULL), 0);
  CHECK(st && st->nparams == 2 && st->names);
  if (st && st->names) {
    CHECK_STR(st->names[0], "b");
    CHECK_STR(st->names[1], "a");
  }
  eng_pg_value v[] = {vint(4), vint(2)}; /* b, a */
  CHECK_INT(scalar(pg, NULL, sql, v, 2), 42);
  const eng_pg_stmt *again = NULL;
  CHECK_INT(eng_pg_statement(pg, sql, strlen(sql), &again, NULL), 0);
  CHECK(again == st); /* translated once: the cached translation */
  close_pool(pg);
}

static void check_error(eng_pg *pg, const char *sql, eng_pg_kind kind, const char *sqlstate) {
  eng_pg_result *r = run(pg, NULL, sql, NULL, 0, 0);
  CHECK(r != NULL);
  if (!r)
    return;
  CHECK_INT(eng_pg_result_code(r), ENG_EDB);
  CHECK_STR(eng_pg_kind_name(eng_pg_result_kind(r)), eng_pg_kind_name(kind));
  CHECK_STR(eng_pg_result_sqlstate(r), sqlstate);
  CHECK(strlen(eng_pg_result_message(r)) > 0 && !strstr(eng_pg_result_message(r), "ERROR:"));
  eng_pg_result_free(r);
}

static void test_errors_map_to_kinds_and_the_pool_keeps_serving(void) {
  eng_pg *pg = open_pool(2, NULL);
  CHECK(ok(pg, NULL, "CREATE TABLE p (id int PRIMARY KEY, email text UNIQUE, n int CHECK (n > 0), v text NOT NULL)"));
  CHECK(ok(pg, NULL, "CREATE TABLE ch (pid int REFERENCES p(id))"));
  CHECK(ok(pg, NULL, "INSERT INTO p VALUES (1, 'a@x', 1, 'v')"));
  check_error(pg, "INSERT INTO p VALUES (2, 'a@x', 1, 'v')", ENG_PG_KIND_UNIQUE, "23505");
  check_error(pg, "INSERT INTO p VALUES (1, 'b@x', 1, 'v')", ENG_PG_KIND_PRIMARY_KEY, "23505");
  check_error(pg, "INSERT INTO ch VALUES (99)", ENG_PG_KIND_FOREIGN_KEY, "23503");
  check_error(pg, "INSERT INTO p VALUES (3, 'c@x', 0, 'v')", ENG_PG_KIND_CHECK, "23514");
  check_error(pg, "INSERT INTO p VALUES (4, 'd@x', 1, NULL)", ENG_PG_KIND_NOT_NULL, "23502");
  check_error(pg, "SELEC 1", ENG_PG_KIND_ERROR, "42601");
  check_error(pg, "SELECT * FROM no_such_table", ENG_PG_KIND_ERROR, "42P01");
  check_error(pg, "SELECT 1; SELECT 2", ENG_PG_KIND_ERROR, "42601"); /* one statement only */
  CHECK_INT(scalar(pg, NULL, "SELECT count(*) FROM p", NULL, 0), 1);

  /* Refused before anything is sent: the callback never fires. */
  waiter w = {0};
  char *err = NULL;
  eng_pg_value one = vint(1);
  CHECK_INT(eng_pg_query(pg, NULL, SQL("SELECT ?, ?"), &one, 1, 0, on_done, &w, NULL, &err), ENG_EINVAL);
  CHECK(err && strstr(err, "2 parameters, got 1 value"));
  free(err);
  err = NULL;
  eng_pg_value nul = {.type = ENG_PG_TEXT, .s = "a\0b", .len = 3};
  CHECK_INT(eng_pg_query(pg, NULL, SQL("SELECT ?"), &nul, 1, 0, on_done, &w, NULL, &err), ENG_EINVAL);
  CHECK(err && strstr(err, "NUL"));
  free(err);
  err = NULL;
  CHECK_INT(eng_pg_query(pg, NULL, SQL("SELECT ?, :a"), NULL, 0, 0, on_done, &w, NULL, &err), ENG_EPARSE);
  free(err);
  CHECK_INT(eng_pg_query(pg, NULL, SQL("SELECT 1"), NULL, 0, -1, on_done, &w, NULL, NULL), ENG_EINVAL);
  run_ms(20);
  CHECK(!w.done);
  CHECK(ok(pg, NULL, "DROP TABLE ch, p"));
  close_pool(pg);
}

static void test_each_text_is_prepared_once_per_connection(void) {
  eng_pg *pg = open_pool(1, NULL);
  eng_pg_stats st;
  for (int i = 0; i < 5; i++) {
    eng_pg_value v = vint(i);
    CHECK_INT(scalar(pg, NULL, "SELECT ?::int + 1", &v, 1), i + 1);
  }
  eng_pg_get_stats(pg, &st);
  CHECK_INT(st.prepares, 1);
  CHECK_INT(scalar(pg, NULL, "SELECT count(*) FROM pg_prepared_statements", NULL, 0), 2); /* itself too */
  eng_pg_get_stats(pg, &st);
  CHECK_INT(st.prepares, 2);
  /* A failed prepare is not recorded, and is tried again next time. */
  check_error(pg, "SELECT * FROM later_table", ENG_PG_KIND_ERROR, "42P01");
  CHECK(ok(pg, NULL, "CREATE TEMP TABLE later_table (x int)"));
  CHECK(ok(pg, NULL, "SELECT * FROM later_table"));
  eng_pg_get_stats(pg, &st);
  CHECK_INT(st.prepares, 4); /* the two statements above it, and this one */
  close_pool(pg);
}

static void test_stale_prepared_statements_are_prepared_again(void) {
  eng_pg *pg = open_pool(1, NULL);
  eng_pg_stats st;
  CHECK_INT(scalar(pg, NULL, "SELECT 11", NULL, 0), 11);
  CHECK(ok(pg, NULL, "DEALLOCATE ALL")); /* what a script may do: the pool's names are gone */
  CHECK_INT(scalar(pg, NULL, "SELECT 11", NULL, 0), 11);
  eng_pg_get_stats(pg, &st);
  CHECK_INT(st.prepares, 3); /* SELECT 11, DEALLOCATE ALL, SELECT 11 again */

  CHECK(ok(pg, NULL, "CREATE TABLE grow (a int)"));
  CHECK(ok(pg, NULL, "INSERT INTO grow VALUES (1)"));
  eng_pg_result *r = run(pg, NULL, "SELECT * FROM grow", NULL, 0, 0);
  CHECK(r && eng_pg_result_cols(r) == 1);
  eng_pg_result_free(r);
  CHECK(ok(pg, NULL, "ALTER TABLE grow ADD COLUMN b int DEFAULT 2"));
  r = run(pg, NULL, "SELECT * FROM grow", NULL, 0, 0); /* "cached plan must not change result type" */
  CHECK(r && eng_pg_result_code(r) == 0 && eng_pg_result_cols(r) == 2 && eng_pg_result_int(r, 0, 1) == 2);
  eng_pg_result_free(r);
  CHECK(ok(pg, NULL, "DROP TABLE grow"));
  close_pool(pg);
}

/* Past the statement cache's size a text is still run (translated per call, sent unnamed). */
static void test_texts_past_the_statement_cache(void) {
  eng_pg_options o = {.stmt_cache = 2};
  eng_pg *pg = open_pool(1, &o);
  for (int round = 0; round < 2; round++) {
    eng_pg_value v = vint(round);
    CHECK_INT(scalar(pg, NULL, "SELECT ?::int + 1", &v, 1), round + 1);
    CHECK_INT(scalar(pg, NULL, "SELECT ?::int + 2", &v, 1), round + 2);
    eng_pg_value named[] = {vint(round), vint(3)};
    CHECK_INT(scalar(pg, NULL, "SELECT :a::int + :b::int", named, 2), round + 3);
  }
  eng_pg_stats st;
  eng_pg_get_stats(pg, &st);
  CHECK_INT(st.prepares, 2);
  const char *sql = "SELECT :a::int + :b::int";
  const eng_pg_stmt *t = NULL;
  CHECK_INT(eng_pg_statement(pg, sql, strlen(sql), &t, NULL), 0);
  CHECK(t && t->id == 0 && t->nparams == 2 && strcmp(t->names[1], "b") == 0);
  eng_pg_stmt_free(t); /* not cached: the caller's */
  close_pool(pg);
}

/* Waiting on a lock in the database (an advisory lock, as migrations on several nodes take) waits
 * on the socket, not on the loop. */
static void test_lock_wait_does_not_block_the_loop(void) {
  eng_pg *pg = open_pool(2, NULL);
  eng_pg_conn *a = acquire(pg), *b = acquire(pg);
  CHECK(ok(pg, a, "SELECT pg_advisory_lock(4242)"));
  CHECK_INT(scalar(pg, b, "SELECT pg_try_advisory_lock(4242)::int", NULL, 0), 0);
  waiter w = {0};
  CHECK_INT(eng_pg_query(pg, b, SQL("SELECT pg_advisory_lock(4242)"), NULL, 0, 0, on_done, &w, NULL, NULL), 0);
  uv_timer_t t;
  uv_timer_init(loop, &t);
  uv_timer_start(&t, tick, 10, 10);
  ticks = 0;
  run_ms(200);
  CHECK(!w.done); /* still waiting for the lock */
  CHECK(ticks >= 10);
  CHECK(ok(pg, a, "SELECT pg_advisory_unlock(4242)"));
  wait_for(&w);
  CHECK(eng_pg_result_code(w.res) == 0);
  eng_pg_result_free(w.res);
  CHECK_INT(scalar(pg, b, "SELECT pg_advisory_unlock(4242)::int", NULL, 0), 1);
  uv_close((uv_handle_t *)&t, NULL);
  CHECK_INT(eng_pg_release(a), 0);
  CHECK_INT(eng_pg_release(b), 0);
  close_pool(pg);
}

/* Deadlines that fall just as the statement ends: a cancel still on its way must never hit the
 * next statement on that connection. Each deadline-less query must succeed; each one with a
 * deadline either succeeds or times out; every callback fires once, and no connection is lost. */
static void test_deadlines_racing_the_answer(void) {
  eng_pg *pg = open_pool(1, NULL);
  CHECK_INT(scalar(pg, NULL, "SELECT 1", NULL, 0), 1);
  enum { N = 40 };
  int timeouts = 0, answered = 0, wrong = 0;
  for (int i = 0; i < N; i++) {
    waiter racing = {0}, plain = {0};
    eng_pg_value v = vint(i);
    CHECK_INT(
        eng_pg_query(pg, NULL, SQL("SELECT pg_sleep(0.004), ?::int"), &v, 1, 3 + i % 4, on_done, &racing, NULL, NULL),
        0);
    CHECK_INT(eng_pg_query(pg, NULL, SQL("SELECT ?::int AS i"), &v, 1, 0, on_done, &plain, NULL, NULL), 0);
    wait_for(&racing);
    wait_for(&plain);
    if (eng_pg_result_kind(racing.res) == ENG_PG_KIND_TIMEOUT)
      timeouts++;
    else if (eng_pg_result_code(racing.res) == 0)
      answered++;
    if (eng_pg_result_code(plain.res) != 0 || eng_pg_result_int(plain.res, 0, 0) != i) {
      fprintf(stderr, "  query %d after a deadline: %s\n", i, eng_pg_result_message(plain.res));
      wrong++;
    }
    eng_pg_result_free(racing.res);
    eng_pg_result_free(plain.res);
  }
  CHECK_INT(wrong, 0);
  CHECK_INT(timeouts + answered, N);
  CHECK(timeouts > 0);
  eng_pg_stats st;
  eng_pg_get_stats(pg, &st);
  CHECK_INT(st.connects, 1);
  printf("racing deadlines: %d of %d timed out, %d answered; every query after them answered\n", timeouts, N, answered);
  close_pool(pg);
}

/* Completion order of requests on a pool of one: exactly the order they were submitted. */
static int order_log[16], order_n;
static void on_order(eng_pg_result *res, eng_pg_conn *conn, void *data) {
  (void)conn;
  order_log[order_n++] = eng_pg_result_code(res) == 0 ? (int)(intptr_t)data : -1;
  if (conn)
    eng_pg_release(conn); /* an acquire: give it straight back */
}

static void test_fifo_when_more_requesters_than_connections(void) {
  eng_pg *pg = open_pool(1, NULL);
  order_n = 0;
  for (int i = 0; i < 12; i++) {
    eng_pg_value v = vint(i);
    if (i % 4 == 3)
      CHECK_INT(eng_pg_acquire(pg, 0, on_order, (void *)(intptr_t)i, NULL), 0);
    else
      CHECK_INT(eng_pg_query(pg, NULL, SQL("SELECT pg_sleep(0.001), ?::int"), &v, 1, 0, on_order, (void *)(intptr_t)i,
                             NULL, NULL),
                0);
  }
  eng_pg_stats st;
  eng_pg_get_stats(pg, &st);
  CHECK(st.waiting >= 11);
  while (order_n < 12)
    uv_run(loop, UV_RUN_ONCE);
  for (int i = 0; i < 12; i++)
    CHECK_INT(order_log[i], i);
  close_pool(pg);
}

static int max_running, max_waiting;
static void sample(uv_timer_t *t) {
  eng_pg_stats st;
  eng_pg_get_stats(t->data, &st);
  if (st.running > max_running)
    max_running = st.running;
  if (st.waiting > max_waiting)
    max_waiting = st.waiting;
}

static void test_pool_of_four_runs_four_at_once(void) {
  eng_pg *pg = open_pool(4, NULL);
  CHECK_INT(scalar(pg, NULL, "SELECT 1", NULL, 0), 1);
  run_ms(50); /* all four connected */
  waiter w[16] = {{0}};
  max_running = max_waiting = 0;
  uv_timer_t t;
  uv_timer_init(loop, &t);
  t.data = pg;
  uv_timer_start(&t, sample, 5, 5);
  uv_update_time(loop);
  uint64_t t0 = uv_now(loop);
  for (int i = 0; i < 16; i++) {
    eng_pg_value v = vint(i);
    CHECK_INT(eng_pg_query(pg, NULL, SQL("SELECT ?::int AS i, pg_sleep(0.1)"), &v, 1, 0, on_done, &w[i], NULL, NULL),
              0);
  }
  for (int i = 0; i < 16; i++)
    wait_for(&w[i]);
  uint64_t took = uv_now(loop) - t0;
  uv_close((uv_handle_t *)&t, NULL);
  for (int i = 0; i < 16; i++) {
    CHECK(eng_pg_result_code(w[i].res) == 0 && eng_pg_result_int(w[i].res, 0, 0) == i);
    eng_pg_result_free(w[i].res);
  }
  /* 16 queries of 100 ms on 4 connections: 4 rounds, not 16. */
  CHECK(took >= 390 && took < 1200);
  CHECK_INT(max_running, 4);
  CHECK(max_waiting >= 11);
  printf("16 x pg_sleep(0.1) on a pool of 4: %llu ms\n", (unsigned long long)took);
  close_pool(pg);
}

/* Throughput on one loop: a statement that waits 5 ms in the server, 800 of them at once on a pool
 * of 16 (a loop that blocked on each would answer 200 per second), and a trivial one on 4. */
static int counted;
static void on_count(eng_pg_result *res, eng_pg_conn *conn, void *data) {
  (void)conn;
  if (eng_pg_result_code(res) == 0)
    (*(int *)data)++;
  counted++;
}

static double per_second(eng_pg *pg, const char *sql, int n) {
  int good = 0;
  counted = 0;
  uv_update_time(loop);
  uint64_t t0 = uv_now(loop);
  for (int i = 0; i < n; i++)
    CHECK_INT(eng_pg_query(pg, NULL, sql, strlen(sql), NULL, 0, 0, on_count, &good, NULL, NULL), 0);
  while (counted < n)
    uv_run(loop, UV_RUN_ONCE);
  uv_update_time(loop);
  CHECK_INT(good, n);
  uint64_t ms = uv_now(loop) - t0;
  return ms ? 1000.0 * n / (double)ms : 1e9;
}

static void test_throughput_on_one_loop(void) {
  eng_pg *pg = open_pool(16, NULL);
  CHECK_INT(scalar(pg, NULL, "SELECT 1", NULL, 0), 1);
  run_ms(100);                                  /* all sixteen connected */
  per_second(pg, "SELECT pg_sleep(0.005)", 32); /* prepared on every connection */
  double slow = per_second(pg, "SELECT pg_sleep(0.005)", 800);
  CHECK(slow > 600); /* three times what a blocking loop could do, with room for a loaded machine */
  close_pool(pg);
  pg = open_pool(4, NULL);
  CHECK_INT(scalar(pg, NULL, "SELECT 1", NULL, 0), 1);
  run_ms(50);
  double fast = per_second(pg, "SELECT 1", 4000);
  printf("one loop: %.0f statements/s of pg_sleep(0.005) on a pool of 16, %.0f/s of SELECT 1 on a pool of 4\n", slow,
         fast);
  close_pool(pg);
}

static void test_deadline_cancels_while_the_loop_serves(void) {
  eng_pg_options o = {.cancel_grace_ms = 8000};
  eng_pg *pg = open_pool(1, &o);
  CHECK_INT(scalar(pg, NULL, "SELECT 1", NULL, 0), 1);
  uv_timer_t t;
  uv_timer_init(loop, &t);
  uv_timer_start(&t, tick, 10, 10);
  ticks = 0;
  uv_update_time(loop);
  uint64_t t0 = uv_now(loop);
  eng_pg_result *r = run(pg, NULL, "SELECT pg_sleep(10)", NULL, 0, 300);
  uint64_t took = uv_now(loop) - t0;
  int ticks_during = ticks;
  CHECK(r && eng_pg_result_kind(r) == ENG_PG_KIND_TIMEOUT);
  CHECK(took >= 295 && took < 1000);
  CHECK(ticks_during >= 10); /* the loop kept serving its timer meanwhile (blocked, it would tick once) */
  eng_pg_result_free(r);
  /* The cancel reached the server: the one connection serves again long before pg_sleep(10) ends
   * and before the drain grace (8 s) would have made a new connection. */
  t0 = uv_now(loop);
  CHECK_INT(scalar(pg, NULL, "SELECT 2", NULL, 0), 2);
  CHECK(uv_now(loop) - t0 < 1500);
  eng_pg_stats st;
  eng_pg_get_stats(pg, &st);
  CHECK_INT(st.cancels, 1);
  CHECK_INT(st.connects, 1);
  printf("pg_sleep(10) with a 300 ms deadline: answered in %llu ms, %d ticks of a 10 ms timer meanwhile\n",
         (unsigned long long)took, ticks_during);

  /* Waiting for a connection counts too: the only one is held. */
  eng_pg_conn *c = acquire(pg);
  t0 = uv_now(loop);
  r = run(pg, NULL, "SELECT 3", NULL, 0, 100);
  CHECK(r && eng_pg_result_kind(r) == ENG_PG_KIND_TIMEOUT);
  CHECK(r && strstr(eng_pg_result_message(r), "waiting"));
  CHECK(uv_now(loop) - t0 >= 95);
  eng_pg_result_free(r);

  /* A held connection's query past its deadline: the holder's next statement waits for the
   * drain, then runs on the same connection (still held: the transaction is the holder's). */
  CHECK(ok(pg, c, "BEGIN"));
  r = run(pg, c, "SELECT pg_sleep(10)", NULL, 0, 200);
  CHECK(r && eng_pg_result_kind(r) == ENG_PG_KIND_TIMEOUT);
  eng_pg_result_free(r);
  CHECK(eng_pg_conn_in_tx(c));
  t0 = uv_now(loop);
  CHECK(ok(pg, c, "ROLLBACK"));
  CHECK(uv_now(loop) - t0 < 1500);
  CHECK(!eng_pg_conn_in_tx(c));
  CHECK_INT(eng_pg_release(c), 0);
  CHECK_INT(scalar(pg, NULL, "SELECT 4", NULL, 0), 4);
  uv_close((uv_handle_t *)&t, NULL);
  close_pool(pg);
}

static void sleep_work(uv_work_t *w) {
  (void)w;
  usleep(800 * 1000);
}
static void sleep_done(uv_work_t *w, int status) {
  (void)status;
  free(w);
}

/* A cancel that cannot get through (here: libuv's thread pool is busy) does not keep the
 * connection out of service: past the grace it is closed and made again, whether the cancelled
 * statement goes on (pg_sleep(10)) or ends by itself meanwhile (pg_sleep(0.08)). */
static void test_cancel_that_hangs_costs_the_connection_only(void) {
  eng_pg_options o = {.cancel_grace_ms = 100};
  eng_pg *pg = open_pool(1, &o);
  CHECK_INT(scalar(pg, NULL, "SELECT 1", NULL, 0), 1);
  const char *sql[] = {"SELECT pg_sleep(10)", "SELECT pg_sleep(0.08)"};
  for (int k = 0; k < 2; k++) {
    for (int i = 0; i < 4; i++) { /* UV_THREADPOOL_SIZE is 4 (main) */
      uv_work_t *w = calloc(1, sizeof *w);
      CHECK(w && uv_queue_work(loop, w, sleep_work, sleep_done) == 0);
    }
    eng_pg_result *r = run(pg, NULL, sql[k], NULL, 0, 50);
    CHECK(r && eng_pg_result_kind(r) == ENG_PG_KIND_TIMEOUT);
    eng_pg_result_free(r);
    uv_update_time(loop);
    uint64_t t0 = uv_now(loop);
    CHECK_INT(scalar(pg, NULL, "SELECT 5", NULL, 0), 5);
    uint64_t took = uv_now(loop) - t0;
    CHECK(took >= 60 && took < 500); /* after the grace, well before the thread pool is free again */
    if (took < 60 || took >= 500)
      fprintf(stderr, "  case %d: served again after %llu ms\n", k, (unsigned long long)took);
    eng_pg_stats st;
    eng_pg_get_stats(pg, &st);
    CHECK_INT(st.connects, 2 + k);
    CHECK_INT(st.cancels, 1 + k);
    run_ms(800); /* the thread pool free again, the late cancel back */
  }
  close_pool(pg);
}

/* A request its caller abandons: its callback never fires, and what it held is let go. */
static void test_abandoned_requests_let_go(void) {
  eng_pg *pg = open_pool(1, NULL);
  CHECK_INT(scalar(pg, NULL, "SELECT 1", NULL, 0), 1);
  eng_pg_stats st;

  /* Running: the statement is cancelled, and the connection serves the next one soon. */
  waiter w[4] = {{0}};
  eng_pg_req *req = NULL;
  CHECK_INT(eng_pg_query(pg, NULL, SQL("SELECT pg_sleep(10)"), NULL, 0, 0, on_done, &w[0], &req, NULL), 0);
  CHECK(req != NULL);
  run_ms(50);
  eng_pg_abandon(req);
  uv_update_time(loop);
  uint64_t t0 = uv_now(loop);
  CHECK_INT(scalar(pg, NULL, "SELECT 2", NULL, 0), 2);
  CHECK(uv_now(loop) - t0 < 1500);
  eng_pg_get_stats(pg, &st);
  CHECK_INT(st.cancels, 1);
  CHECK_INT(st.connects, 1);

  /* Waiting in the queue behind a held connection: it leaves the queue. */
  eng_pg_conn *c = acquire(pg);
  CHECK_INT(eng_pg_query(pg, NULL, SQL("SELECT 3"), NULL, 0, 0, on_done, &w[1], &req, NULL), 0);
  eng_pg_get_stats(pg, &st);
  CHECK_INT(st.waiting, 1);
  eng_pg_abandon(req);
  eng_pg_get_stats(pg, &st);
  CHECK_INT(st.waiting, 0);

  /* Running on a held connection: the connection stays held, and its holder's next statement
   * runs once the cancelled one has drained. */
  CHECK(ok(pg, c, "BEGIN"));
  CHECK_INT(eng_pg_query(pg, c, SQL("SELECT pg_sleep(10)"), NULL, 0, 0, on_done, &w[2], &req, NULL), 0);
  run_ms(50);
  eng_pg_abandon(req);
  CHECK(ok(pg, c, "ROLLBACK"));
  CHECK_INT(eng_pg_release(c), 0);

  /* An acquire answered inside the call but not yet delivered: the connection comes back. */
  CHECK_INT(eng_pg_acquire(pg, 0, on_done, &w[3], &req), 0);
  eng_pg_abandon(req);
  eng_pg_result *r = run(pg, NULL, "SELECT 4", NULL, 0, 2000); /* the pool's one connection is free */
  CHECK(r && eng_pg_result_code(r) == 0 && eng_pg_result_int(r, 0, 0) == 4);
  eng_pg_result_free(r);
  run_ms(50);
  for (int i = 0; i < 4; i++) {
    CHECK(!w[i].done); /* none of the abandoned callbacks fired */
    if (w[i].done)
      fprintf(stderr, "  abandoned request %d answered: %s\n", i, eng_pg_result_message(w[i].res));
  }
  close_pool(pg);
}

static void test_held_connection_and_rollback_on_release(void) {
  eng_pg *pg = open_pool(2, NULL);
  CHECK(ok(pg, NULL, "CREATE TABLE tx (v int)"));
  eng_pg_conn *c = acquire(pg);
  CHECK(c != NULL);
  CHECK(ok(pg, c, "BEGIN"));
  CHECK(ok(pg, c, "INSERT INTO tx VALUES (1)"));
  CHECK_INT(scalar(pg, c, "SELECT count(*) FROM tx", NULL, 0), 1);
  CHECK_INT(scalar(pg, NULL, "SELECT count(*) FROM tx", NULL, 0), 0); /* the other connection: not yet */
  CHECK(ok(pg, c, "COMMIT"));
  CHECK_INT(scalar(pg, NULL, "SELECT count(*) FROM tx", NULL, 0), 1);

  /* Only one query at a time on a held connection, and no release while it runs. */
  waiter w = {0};
  CHECK_INT(eng_pg_query(pg, c, SQL("SELECT pg_sleep(0.05)"), NULL, 0, 0, on_done, &w, NULL, NULL), 0);
  CHECK_INT(eng_pg_query(pg, c, SQL("SELECT 1"), NULL, 0, 0, on_done, &w, NULL, NULL), ENG_EINVAL);
  CHECK_INT(eng_pg_release(c), ENG_EINVAL);
  wait_for(&w);
  CHECK(w.conn == c && eng_pg_result_code(w.res) == 0);
  eng_pg_result_free(w.res);

  /* Released inside a transaction: rolled back before anyone else gets the connection. */
  CHECK(ok(pg, c, "BEGIN"));
  CHECK(ok(pg, c, "INSERT INTO tx VALUES (2)"));
  CHECK_INT(eng_pg_conn_in_tx(c), 1);
  CHECK_INT(eng_pg_release(c), 0);
  CHECK_INT(eng_pg_release(c), ENG_EINVAL); /* not held any more */
  close_pool(pg);
  pg = open_pool(1, NULL);
  c = acquire(pg);
  CHECK(ok(pg, c, "BEGIN"));
  CHECK(ok(pg, c, "INSERT INTO tx VALUES (3)"));
  CHECK_INT(eng_pg_release(c), 0);
  /* The pool's one connection: had the insert not been rolled back, this would count it. */
  CHECK_INT(scalar(pg, NULL, "SELECT count(*) FROM tx", NULL, 0), 1);
  /* A pooled query that leaves a transaction open is rolled back too. */
  CHECK(ok(pg, NULL, "BEGIN"));
  CHECK(ok(pg, NULL, "SELECT set_config('apiengine.probe', 'in_tx', true)"));
  /* Inside the BEGIN's transaction the local setting would still hold. */
  eng_pg_result *r = run(pg, NULL, "SELECT current_setting('apiengine.probe', true)", NULL, 0, 0);
  CHECK(r && eng_pg_result_code(r) == 0 && strcmp(eng_pg_result_text(r, 0, 0, NULL), "") == 0);
  eng_pg_result_free(r);
  CHECK(ok(pg, NULL, "DROP TABLE tx"));
  close_pool(pg);
}

static void test_serialization_failure_has_its_kind(void) {
  eng_pg *pg = open_pool(2, NULL);
  CHECK(ok(pg, NULL, "CREATE TABLE s (v int)"));
  eng_pg_conn *a = acquire(pg), *b = acquire(pg);
  CHECK(a && b && a != b);
  CHECK(ok(pg, a, "BEGIN ISOLATION LEVEL SERIALIZABLE"));
  CHECK(ok(pg, b, "BEGIN ISOLATION LEVEL SERIALIZABLE"));
  CHECK_INT(scalar(pg, a, "SELECT count(*) FROM s", NULL, 0), 0);
  CHECK_INT(scalar(pg, b, "SELECT count(*) FROM s", NULL, 0), 0);
  CHECK(ok(pg, a, "INSERT INTO s VALUES (1)"));
  CHECK(ok(pg, b, "INSERT INTO s VALUES (2)"));
  CHECK(ok(pg, a, "COMMIT"));
  eng_pg_result *r = run(pg, b, "COMMIT", NULL, 0, 0);
  CHECK(r && eng_pg_result_kind(r) == ENG_PG_KIND_SERIALIZATION);
  CHECK(r && strcmp(eng_pg_result_sqlstate(r), "40001") == 0);
  eng_pg_result_free(r);
  CHECK_INT(eng_pg_release(a), 0);
  CHECK_INT(eng_pg_release(b), 0);
  CHECK_INT(scalar(pg, NULL, "SELECT count(*) FROM s", NULL, 0), 1);
  CHECK(ok(pg, NULL, "DROP TABLE s"));
  close_pool(pg);
}

static void test_killed_backend_then_reconnect(void) {
  eng_pg *pg = open_pool(2, NULL);
  eng_pg *killer = open_pool(1, NULL);
  eng_pg_stats st;

  /* A held connection whose backend is killed: its next query fails UNAVAILABLE; released, it
   * is made again. */
  eng_pg_conn *c = acquire(pg);
  int64_t pid = scalar(pg, c, "SELECT pg_backend_pid()", NULL, 0);
  eng_pg_value v = vint(pid);
  CHECK_INT(scalar(killer, NULL, "SELECT pg_terminate_backend(?::int)::int", &v, 1), 1);
  run_ms(100);
  eng_pg_result *r = run(pg, c, "SELECT 1", NULL, 0, 0);
  CHECK(r && eng_pg_result_kind(r) == ENG_PG_KIND_UNAVAILABLE);
  eng_pg_result_free(r);
  CHECK_INT(eng_pg_release(c), 0);
  run_ms(200);
  eng_pg_get_stats(pg, &st);
  CHECK_INT(st.connects, 3);
  CHECK_INT(st.idle, 2);

  /* A backend killed mid-query: that query fails UNAVAILABLE at once, the next one works. */
  waiter w = {0};
  CHECK_INT(eng_pg_query(pg, NULL, SQL("SELECT pg_sleep(5)"), NULL, 0, 0, on_done, &w, NULL, NULL), 0);
  run_ms(100);
  uv_update_time(loop);
  uint64_t t0 = uv_now(loop);
  CHECK(scalar(killer, NULL,
               "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(5)'", NULL,
               0) == 1);
  wait_for(&w);
  CHECK(w.at_ms - t0 < 1000);
  CHECK(eng_pg_result_kind(w.res) == ENG_PG_KIND_UNAVAILABLE);
  eng_pg_result_free(w.res);
  CHECK_INT(scalar(pg, NULL, "SELECT 5", NULL, 0), 5);

  /* An idle pooled connection whose backend dies is noticed and made again before it is used. */
  run_ms(100);
  eng_pg_get_stats(pg, &st);
  uint64_t before = st.connects;
  eng_pg_conn *c1 = acquire(pg), *c2 = acquire(pg);
  eng_pg_value pids[2] = {vint(scalar(pg, c1, "SELECT pg_backend_pid()", NULL, 0)),
                          vint(scalar(pg, c2, "SELECT pg_backend_pid()", NULL, 0))};
  CHECK_INT(eng_pg_release(c1), 0);
  CHECK_INT(eng_pg_release(c2), 0);
  CHECK_INT(
      scalar(killer, NULL, "SELECT (pg_terminate_backend(?::int) AND pg_terminate_backend(?::int))::int", pids, 2), 1);
  run_ms(300);
  eng_pg_get_stats(pg, &st);
  CHECK_INT(st.connects, before + 2);
  CHECK_INT(st.idle, 2);
  CHECK_INT(scalar(pg, NULL, "SELECT 6", NULL, 0), 6);
  close_pool(killer);
  close_pool(pg);
}

static void test_outage_fails_fast_and_recovers(void) {
  eng_pg_options o = {.backoff_min_ms = 50, .backoff_max_ms = 200};
  eng_pg *pg = open_pool(2, &o);
  CHECK_INT(scalar(pg, NULL, "SELECT 1", NULL, 0), 1);
  CHECK_INT(pg_cmd("pause"), 0);
  run_ms(300);
  eng_pg_stats st;
  eng_pg_get_stats(pg, &st);
  CHECK_INT(st.healthy, 0);
  uv_update_time(loop);
  uint64_t t0 = uv_now(loop);
  eng_pg_result *r = run(pg, NULL, "SELECT 1", NULL, 0, 5000);
  CHECK(r && eng_pg_result_kind(r) == ENG_PG_KIND_UNAVAILABLE);
  CHECK(uv_now(loop) - t0 < 100); /* at once, not at the 5 s deadline */
  eng_pg_result_free(r);
  CHECK_INT(pg_cmd("resume"), 0);
  /* Back within a few back-offs (at most 200 ms apart). */
  uv_update_time(loop);
  t0 = uv_now(loop);
  int64_t got = -1;
  while (got != 7 && uv_now(loop) - t0 < 5000) {
    run_ms(50);
    got = scalar(pg, NULL, "SELECT 7", NULL, 0);
  }
  CHECK_INT(got, 7);
  printf("outage: served again %llu ms after the server came back\n", (unsigned long long)(uv_now(loop) - t0));
  eng_pg_get_stats(pg, &st);
  CHECK_INT(st.healthy, 1);
  close_pool(pg);

  /* A server that was never there: every request fails fast, and the pool closes cleanly. */
  eng_pg *none = NULL;
  CHECK_INT(eng_pg_open(&none, loop, "host=/nonexistent-apiengine user=postgres", &o, NULL), 0);
  r = run(none, NULL, "SELECT 1", NULL, 0, 0);
  CHECK(r && eng_pg_result_kind(r) == ENG_PG_KIND_UNAVAILABLE);
  eng_pg_result_free(r);
  close_pool(none);
}

/* A server that accepts the connection and never answers: the attempt times out. */
static void test_connect_timeout(void) {
  char dir[] = "/tmp/apiengine-pgmute.XXXXXX";
  CHECK(mkdtemp(dir) != NULL);
  struct sockaddr_un sa = {.sun_family = AF_UNIX};
  snprintf(sa.sun_path, sizeof sa.sun_path, "%s/.s.PGSQL.5432", dir);
  int fd = socket(AF_UNIX, SOCK_STREAM, 0);
  CHECK(fd >= 0 && bind(fd, (struct sockaddr *)&sa, sizeof sa) == 0 && listen(fd, 8) == 0);
  char ci[256];
  snprintf(ci, sizeof ci, "host=%s user=postgres", dir);
  eng_pg_options o = {.size = 1, .connect_timeout_ms = 200, .backoff_min_ms = 50, .backoff_max_ms = 100};
  eng_pg *pg = NULL;
  CHECK_INT(eng_pg_open(&pg, loop, ci, &o, NULL), 0);
  uv_update_time(loop);
  uint64_t t0 = uv_now(loop);
  eng_pg_result *r = run(pg, NULL, "SELECT 1", NULL, 0, 0);
  uint64_t took = uv_now(loop) - t0;
  CHECK(r && eng_pg_result_kind(r) == ENG_PG_KIND_UNAVAILABLE && strstr(eng_pg_result_message(r), "timed out"));
  CHECK(took >= 190 && took < 1000);
  eng_pg_result_free(r);
  run_ms(300); /* a few more attempts, each timing out */
  close_pool(pg);
  close(fd);
  CHECK_INT(unlink(sa.sun_path), 0);
  CHECK_INT(rmdir(dir), 0);
}

static void test_close_fails_what_is_in_flight(void) {
  eng_pg *pg = open_pool(1, NULL);
  CHECK_INT(scalar(pg, NULL, "SELECT 1", NULL, 0), 1);
  waiter a = {0}, b = {0};
  CHECK_INT(eng_pg_query(pg, NULL, SQL("SELECT pg_sleep(5)"), NULL, 0, 0, on_done, &a, NULL, NULL), 0);
  CHECK_INT(eng_pg_query(pg, NULL, SQL("SELECT 2"), NULL, 0, 0, on_done, &b, NULL, NULL), 0);
  run_ms(50);
  int done = 0;
  eng_pg_close(pg, closed, &done);
  CHECK(a.done && b.done); /* inside eng_pg_close */
  CHECK(a.res && eng_pg_result_kind(a.res) == ENG_PG_KIND_UNAVAILABLE);
  CHECK(b.res && eng_pg_result_kind(b.res) == ENG_PG_KIND_UNAVAILABLE);
  eng_pg_result_free(a.res);
  eng_pg_result_free(b.res);
  while (!done)
    uv_run(loop, UV_RUN_ONCE);
}

#define RUN(test)                                                                \
  do {                                                                           \
    uv_update_time(loop);                                                        \
    uint64_t t0_ = uv_now(loop);                                                 \
    test();                                                                      \
    uv_update_time(loop);                                                        \
    printf("%-60s %5llu ms\n", #test, (unsigned long long)(uv_now(loop) - t0_)); \
  } while (0)

int main(void) {
  setvbuf(stdout, NULL, _IONBF, 0);
  setenv("UV_THREADPOOL_SIZE", "4", 1); /* before the first use of the pool */
  alarm(100);                           /* a hung test dies; the server's watchdog then removes it */
  loop = uv_default_loop();
  RUN(test_translate_placeholders);
  RUN(test_translate_random_texts);
  RUN(test_kinds_from_sqlstate);
  RUN(test_open_refuses_bad_options);
  if (start_server(conninfo, sizeof conninfo) != 0) {
    fprintf(stderr, "test_pg: cannot start a throwaway PostgreSQL (tests/support/pg.sh)\n");
    return 1;
  }
  RUN(test_type_round_trips);
  RUN(test_booleans_fit_boolean_and_integer_columns);
  RUN(test_named_parameters_bind_in_translation_order);
  RUN(test_errors_map_to_kinds_and_the_pool_keeps_serving);
  RUN(test_each_text_is_prepared_once_per_connection);
  RUN(test_stale_prepared_statements_are_prepared_again);
  RUN(test_texts_past_the_statement_cache);
  RUN(test_lock_wait_does_not_block_the_loop);
  RUN(test_fifo_when_more_requesters_than_connections);
  RUN(test_pool_of_four_runs_four_at_once);
  RUN(test_throughput_on_one_loop);
  RUN(test_deadline_cancels_while_the_loop_serves);
  RUN(test_deadlines_racing_the_answer);
  RUN(test_cancel_that_hangs_costs_the_connection_only);
  RUN(test_abandoned_requests_let_go);
  RUN(test_held_connection_and_rollback_on_release);
  RUN(test_serialization_failure_has_its_kind);
  RUN(test_killed_backend_then_reconnect);
  RUN(test_outage_fails_fast_and_recovers);
  RUN(test_connect_timeout);
  RUN(test_close_fails_what_is_in_flight);
  uv_run(loop, UV_RUN_NOWAIT);
  int closed_all = uv_loop_close(loop);
  CHECK_INT(closed_all, 0); /* every handle closed */
  if (closed_all)
    uv_print_all_handles(loop, stderr);
  stop_server();
  return check_summary("test_pg");
}
