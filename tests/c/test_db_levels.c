/* test_db_levels.c - leveled key tables (db_levels.h): the hash, engine_key64()'s framing, and the
 * fold: limits kept, every key kept, resumable in chunks, put off by a writer, refused settings. */
#define _XOPEN_SOURCE 700
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "tmpdir.h"
#include "query_int.h"
#include "db.h"
#include "db_levels.h"
#include "error.h"

static void exec_ok(sqlite3 *h, const char *sql) {
  char *msg = NULL;
  int rc = sqlite3_exec(h, sql, NULL, NULL, &msg);
  if (rc != SQLITE_OK)
    fprintf(stderr, "exec %s: %s\n", sql, msg ? msg : "?");
  CHECK_INT(rc, SQLITE_OK);
  sqlite3_free(msg);
}

/* The reference vector of the SipHash paper (Aumasson, Bernstein; appendix A): key 00..0f,
 * message 00..0e. And the empty message under the same key. */
static void test_siphash_vectors(void) {
  uint8_t key[16], msg[15];
  for (int i = 0; i < 16; i++)
    key[i] = (uint8_t)i;
  for (int i = 0; i < 15; i++)
    msg[i] = (uint8_t)i;
  CHECK(eng_siphash24(key, msg, 15) == 0xa129ca6149be45e5ULL);
  CHECK(eng_siphash24(key, msg, 0) == 0x726fdb47dd0e0e31ULL);
  CHECK(eng_key64("x", 1) == eng_key64("x", 1));
  CHECK(eng_key64("x", 1) != eng_key64("y", 1));
}

static void test_key64_function(void) {
  sqlite3 *h = NULL;
  CHECK_INT(sqlite3_open(":memory:", &h), SQLITE_OK);
  CHECK_INT(eng_db_levels_register(h), SQLITE_OK);
  CHECK_INT(query_int(h, "SELECT engine_key64('ab', 'c') <> engine_key64('a', 'bc')"), 1);
  CHECK_INT(query_int(h, "SELECT engine_key64(NULL) <> engine_key64('')"), 1);
  CHECK_INT(query_int(h, "SELECT engine_key64(1) <> engine_key64('1')"), 1);
  CHECK_INT(query_int(h, "SELECT engine_key64(x'6162') <> engine_key64('ab')"), 1);
  CHECK_INT(query_int(h, "SELECT engine_key64('c1', 'sid') = engine_key64('c1', 'sid')"), 1);
  /* one text argument: type byte 3, length 2 (4 bytes, little-endian), "ab" */
  const uint8_t framed[] = {SQLITE_TEXT, 2, 0, 0, 0, 'a', 'b'};
  CHECK(query_int(h, "SELECT engine_key64('ab')") == (long long)eng_key64(framed, sizeof framed));
  /* a key over 64 KiB is an error, not a truncated hash */
  sqlite3_stmt *st = NULL;
  CHECK_INT(sqlite3_prepare_v2(h, "SELECT engine_key64(zeroblob(65537))", -1, &st, NULL), SQLITE_OK);
  CHECK_INT(sqlite3_step(st), SQLITE_ERROR);
  CHECK_STR(sqlite3_errmsg(h), "engine_key64: an argument is longer than 65536 bytes");
  sqlite3_finalize(st);
  sqlite3_close(h);
}

/* n keys at level 0 of t, seqs base + 1 ...: h spread over the whole range (the extremes included), some h twice. */
static void fill(sqlite3 *h, int base, int n) {
  exec_ok(h, "BEGIN");
  sqlite3_stmt *st = NULL;
  CHECK_INT(sqlite3_prepare_v2(h, "INSERT INTO t (lvl, h, seq) VALUES (0, ?, ?)", -1, &st, NULL), SQLITE_OK);
  for (int i = base; i < base + n; i++) {
    int64_t hv = i == 0 ? INT64_MIN : i == 1 ? INT64_MAX : (int64_t)eng_key64(&i, sizeof i);
    if (i % 97 == 5)
      hv = 12345; /* the same h for several seqs: a collision */
    sqlite3_bind_int64(st, 1, hv);
    sqlite3_bind_int64(st, 2, i + 1);
    CHECK_INT(sqlite3_step(st), SQLITE_DONE);
    sqlite3_reset(st);
  }
  sqlite3_finalize(st);
  exec_ok(h, "COMMIT");
}

#define KEYS_SUM "SELECT count(*) * 1000003 + sum(seq) + sum(h % 1000) FROM t"

static void test_fold(void) {
  sqlite3 *h = NULL, *other = NULL;
  CHECK_INT(sqlite3_open(path_in("fold.db"), &h), SQLITE_OK);
  exec_ok(h, "PRAGMA journal_mode=WAL");
  eng_db_levels *lv = NULL;
  CHECK_INT(eng_db_levels_new(&lv, h), 0);
  char *err = NULL;
  /* no _engine_levels: nothing to do */
  CHECK_INT(eng_db_levels_pass(lv, 8, &err), 0);
  CHECK(err == NULL);

  exec_ok(h, "CREATE TABLE _engine_levels (tbl TEXT PRIMARY KEY, l0 INTEGER NOT NULL, fanout INTEGER NOT NULL, "
             "levels INTEGER NOT NULL)");
  exec_ok(h, "CREATE TABLE t (lvl INTEGER NOT NULL, h INTEGER NOT NULL, seq INTEGER NOT NULL, "
             "PRIMARY KEY (lvl, h, seq)) WITHOUT ROWID");
  /* level 0 up to 1,000 keys, level 1 up to 4,000, level 2 the rest: 10,000 keys go down in
   * several chunks of ENG_LEVELS_CHUNK each */
  exec_ok(h, "INSERT INTO _engine_levels VALUES ('t', 1000, 4, 3)");
  fill(h, 0, 10000);
  long long sum = query_int(h, KEYS_SUM);

  /* a writer holding the lock puts the fold off; nothing moves meanwhile */
  CHECK_INT(sqlite3_open(path_in("fold.db"), &other), SQLITE_OK);
  exec_ok(other, "BEGIN IMMEDIATE");
  CHECK_INT(eng_db_levels_pass(lv, 1, &err), 1);
  eng_db_levels_stats st;
  eng_db_levels_get_stats(lv, &st);
  CHECK_INT(st.busy, 1);
  CHECK_INT(st.chunks, 0);
  exec_ok(other, "COMMIT");
  sqlite3_close(other);

  /* one chunk a pass: the fold resumes where it stopped */
  int passes = 0, rc;
  while ((rc = eng_db_levels_pass(lv, 1, &err)) == 1 && passes < 1000)
    passes++;
  CHECK_INT(rc, 0);
  CHECK(err == NULL);
  CHECK(passes >= 5);
  CHECK(query_int(h, "SELECT count(*) FROM t WHERE lvl = 0") <= 1000);
  CHECK(query_int(h, "SELECT count(*) FROM t WHERE lvl = 1") <= 4000);
  CHECK_INT(query_int(h, "SELECT count(*) FROM t WHERE lvl = 2"), 10000);
  CHECK_INT(query_int(h, KEYS_SUM), sum);
  CHECK_INT(query_int(h, "SELECT count(*) FROM t WHERE h = 12345"),
            query_int(h, "SELECT count(*) FROM t WHERE seq % 97 = 6"));
  eng_db_levels_get_stats(lv, &st);
  CHECK_INT(st.folds, 2); /* level 0 into 1, then level 1 (now 10,000) into 2 */
  CHECK_INT(st.moved, 20000);
  CHECK(st.chunks >= 6);

  /* new keys: level 0 under its limit stays */
  fill(h, 10000, 500);
  CHECK_INT(eng_db_levels_pass(lv, 8, &err), 0);
  CHECK_INT(query_int(h, "SELECT count(*) FROM t WHERE lvl = 0"), 500);

  /* settings out of range are an error that names the row */
  exec_ok(h, "UPDATE _engine_levels SET fanout = 1");
  CHECK(eng_db_levels_pass(lv, 8, &err) < 0);
  CHECK(err && strstr(err, "_engine_levels row for \"t\" is out of range"));
  free(err);
  err = NULL;
  exec_ok(h, "UPDATE _engine_levels SET fanout = 4, l0 = 100");
  CHECK_INT(eng_db_levels_pass(lv, 64, &err), 0);
  CHECK_INT(query_int(h, "SELECT count(*) FROM t WHERE lvl = 0"), 0);
  CHECK_INT(query_int(h, "SELECT count(*) FROM t"), 10500);

  /* a listed table that is not there: an error naming it, once; the other tables go on */
  exec_ok(h, "INSERT INTO _engine_levels VALUES ('gone', 10, 2, 3)");
  fill(h, 20000, 200);
  CHECK(eng_db_levels_pass(lv, 8, &err) < 0);
  CHECK(err && strstr(err, "cannot count level 0 of gone: no such table: gone"));
  free(err);
  err = NULL;
  CHECK_INT(eng_db_levels_pass(lv, 8, &err), 0);
  CHECK(err == NULL);
  CHECK_INT(query_int(h, "SELECT count(*) FROM t WHERE lvl = 0"), 0);
  CHECK_INT(query_int(h, "SELECT count(*) FROM t"), 10700);

  eng_db_levels_free(lv);
  sqlite3_close(h);
}

int main(void) {
  if (tmpdir_make("/tmp/test_db_levels.XXXXXX") != 0)
    return 1;
  test_siphash_vectors();
  test_key64_function();
  test_fold();
  tmpdir_remove();
  return check_summary("test_db_levels");
}
