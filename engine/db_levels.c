/* db_levels.c - leveled key tables (db_levels.h): the engine_key64() hash and the fold. */
#include "db_levels.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "error.h"
#include "log.h"

/* ---- SipHash-2-4 ---- */

/* The engine's key for engine_key64(): fixed, since the hashes are stored. */
static const uint8_t KEY64[16] = {'a', 'p', 'i', 'e', 'n', 'g', 'i', 'n', 'e', ' ', 'k', 'e', 'y', '6', '4', 0};

static uint64_t rotl(uint64_t x, int b) { return (x << b) | (x >> (64 - b)); }

static uint64_t load_le64(const uint8_t *p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; i--)
    v = (v << 8) | p[i];
  return v;
}

#define SIPROUND                                              \
  do {                                                        \
    v0 += v1, v1 = rotl(v1, 13), v1 ^= v0, v0 = rotl(v0, 32); \
    v2 += v3, v3 = rotl(v3, 16), v3 ^= v2;                    \
    v0 += v3, v3 = rotl(v3, 21), v3 ^= v0;                    \
    v2 += v1, v1 = rotl(v1, 17), v1 ^= v2, v2 = rotl(v2, 32); \
  } while (0)

uint64_t eng_siphash24(const uint8_t key[16], const void *data, size_t len) {
  const uint8_t *p = data, *end = p + (len & ~(size_t)7);
  uint64_t k0 = load_le64(key), k1 = load_le64(key + 8);
  uint64_t v0 = k0 ^ 0x736f6d6570736575ULL, v1 = k1 ^ 0x646f72616e646f6dULL;
  uint64_t v2 = k0 ^ 0x6c7967656e657261ULL, v3 = k1 ^ 0x7465646279746573ULL;
  for (; p < end; p += 8) {
    uint64_t m = load_le64(p);
    v3 ^= m;
    SIPROUND;
    SIPROUND;
    v0 ^= m;
  }
  uint64_t b = (uint64_t)len << 56;
  for (size_t i = 0; i < (len & 7); i++)
    b |= (uint64_t)p[i] << (8 * i);
  v3 ^= b;
  SIPROUND;
  SIPROUND;
  v0 ^= b;
  v2 ^= 0xff;
  SIPROUND;
  SIPROUND;
  SIPROUND;
  SIPROUND;
  return v0 ^ v1 ^ v2 ^ v3;
}

uint64_t eng_key64(const void *data, size_t len) { return eng_siphash24(KEY64, data, len); }

/* ---- engine_key64() ---- */

static void put_le(uint8_t *p, uint64_t v, int n) {
  for (int i = 0; i < n; i++, v >>= 8)
    p[i] = (uint8_t)v;
}

static void key64_func(sqlite3_context *ctx, int argc, sqlite3_value **argv) {
  uint8_t stack[512] = {0}, *buf = stack;
  size_t need = 0, at = 0;
  for (int i = 0; i < argc; i++) {
    int t = sqlite3_value_type(argv[i]);
    size_t n = t == SQLITE_TEXT || t == SQLITE_BLOB ? (size_t)sqlite3_value_bytes(argv[i]) : 0;
    if (n > ENG_LEVELS_KEY_MAX) {
      sqlite3_result_error(ctx, "engine_key64: an argument is longer than 65536 bytes", -1);
      return;
    }
    need += 1 + 8 + n;
  }
  if (need > sizeof stack && !(buf = malloc(need))) {
    sqlite3_result_error_nomem(ctx);
    return;
  }
  for (int i = 0; i < argc; i++) {
    int t = sqlite3_value_type(argv[i]);
    buf[at++] = (uint8_t)t;
    if (t == SQLITE_INTEGER) {
      put_le(buf + at, (uint64_t)sqlite3_value_int64(argv[i]), 8);
      at += 8;
    } else if (t == SQLITE_FLOAT) {
      double d = sqlite3_value_double(argv[i]);
      uint64_t bits;
      memcpy(&bits, &d, sizeof bits);
      put_le(buf + at, bits, 8);
      at += 8;
    } else if (t == SQLITE_TEXT || t == SQLITE_BLOB) {
      const void *p = t == SQLITE_TEXT ? (const void *)sqlite3_value_text(argv[i]) : sqlite3_value_blob(argv[i]);
      size_t n = (size_t)sqlite3_value_bytes(argv[i]);
      put_le(buf + at, n, 4);
      at += 4;
      if (n)
        memcpy(buf + at, p, n);
      at += n;
    }
  }
  sqlite3_result_int64(ctx, (sqlite3_int64)eng_key64(buf, at));
  if (buf != stack)
    free(buf);
}

int eng_db_levels_register(sqlite3 *h) {
  return sqlite3_create_function_v2(h, "engine_key64", -1, SQLITE_UTF8 | SQLITE_DETERMINISTIC | SQLITE_INNOCUOUS, NULL,
                                    key64_func, NULL, NULL, NULL);
}

/* ---- the fold ---- */

typedef struct level_table {
  char name[64];
  int l0, fanout, levels;
  int failed;                           /* a fold of this table failed: left alone until restart */
  int active[ENG_LEVELS_MAX];           /* level k is being folded into k+1 */
  int check[ENG_LEVELS_MAX];            /* level k's size is to be counted at the next pass */
  sqlite3_int64 cursor[ENG_LEVELS_MAX]; /* the next chunk of an active fold starts at this h */
} level_table;

struct eng_db_levels {
  sqlite3 *h;
  level_table t[ENG_LEVELS_TABLES_MAX];
  int nt;
  int pause_us; /* between two chunks of a pass */
  eng_db_levels_stats st;
};

int eng_db_levels_new(eng_db_levels **out, sqlite3 *h) {
  *out = calloc(1, sizeof **out);
  if (!*out)
    return ENG_ENOMEM;
  (*out)->h = h;
  return 0;
}

void eng_db_levels_free(eng_db_levels *lv) { free(lv); }

void eng_db_levels_set_pause(eng_db_levels *lv, int pause_us) { lv->pause_us = pause_us > 0 ? pause_us : 0; }

void eng_db_levels_get_stats(const eng_db_levels *lv, eng_db_levels_stats *out) { *out = lv->st; }

/* A table name the fold may paste into its SQL: an identifier, nothing to quote. */
static int plain_name(const char *s) {
  if (!s || !*s || strlen(s) >= sizeof((level_table *)0)->name)
    return 0;
  for (const char *p = s; *p; p++)
    if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || *p == '_' || (p > s && *p >= '0' && *p <= '9')))
      return 0;
  return 1;
}

/* level k's limit: l0 * fanout^k, saturating. */
static sqlite3_int64 limit_of(const level_table *t, int k) {
  sqlite3_int64 n = t->l0;
  for (int i = 0; i < k; i++)
    n = n > INT64_MAX / t->fanout ? INT64_MAX : n * t->fanout;
  return n;
}

/* Runs sql with the given integer parameters. Returns SQLite's code (SQLITE_OK when it ran to its
 * end or to a first row); for a query, *got says whether there was a row and *row gets its first
 * column (both may be NULL). */
static int run(sqlite3 *h, const char *sql, const sqlite3_int64 *params, int n, sqlite3_int64 *row, int *got) {
  sqlite3_stmt *st = NULL;
  int rc = sqlite3_prepare_v2(h, sql, -1, &st, NULL);
  if (rc != SQLITE_OK)
    return rc;
  for (int i = 0; i < n; i++)
    sqlite3_bind_int64(st, i + 1, params[i]);
  rc = sqlite3_step(st);
  if (got)
    *got = rc == SQLITE_ROW;
  if (rc == SQLITE_ROW && row)
    *row = sqlite3_column_int64(st, 0);
  if (rc == SQLITE_ROW || rc == SQLITE_DONE)
    rc = SQLITE_OK;
  sqlite3_finalize(st);
  return rc;
}

/* Reads _engine_levels into lv->t, keeping the state of tables already known. 0 when the table
 * does not exist (nothing to fold), 1 when it does, or a negative code. */
static int load_tables(eng_db_levels *lv, char **err) {
  sqlite3_stmt *st = NULL;
  int listed = 0;
  int rc = run(lv->h, "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = '_engine_levels'", NULL, 0, NULL,
               &listed);
  if (rc == SQLITE_OK && !listed)
    return 0;
  if (rc != SQLITE_OK || sqlite3_prepare_v2(lv->h, "SELECT tbl, l0, fanout, levels FROM _engine_levels ORDER BY tbl",
                                            -1, &st, NULL) != SQLITE_OK) {
    sqlite3_finalize(st);
    return eng_errorf(err, ENG_EDB, "db: cannot read _engine_levels: %s", sqlite3_errmsg(lv->h));
  }
  level_table next[ENG_LEVELS_TABLES_MAX];
  int n = 0;
  while ((rc = sqlite3_step(st)) == SQLITE_ROW && n < ENG_LEVELS_TABLES_MAX) {
    const char *name = (const char *)sqlite3_column_text(st, 0);
    sqlite3_int64 l0 = sqlite3_column_int64(st, 1), fanout = sqlite3_column_int64(st, 2),
                  levels = sqlite3_column_int64(st, 3);
    if (!plain_name(name) || l0 < 1 || fanout < 2 || fanout > 1024 || levels < 2 || levels > ENG_LEVELS_MAX) {
      rc = eng_errorf(err, ENG_EINVAL,
                      "db: _engine_levels row for \"%s\" is out of range (a plain table name, l0 >= 1, "
                      "fanout 2..1024, levels 2..%d)",
                      name ? name : "", ENG_LEVELS_MAX);
      sqlite3_finalize(st); /* after the message: name is the statement's */
      return rc;
    }
    level_table *t = &next[n++];
    int known = -1;
    for (int i = 0; i < lv->nt; i++)
      if (strcmp(lv->t[i].name, name) == 0)
        known = i;
    if (known >= 0) {
      *t = lv->t[known];
    } else {
      memset(t, 0, sizeof *t);
      snprintf(t->name, sizeof t->name, "%s", name);
      for (int k = 0; k < ENG_LEVELS_MAX; k++)
        t->check[k] = 1;
    }
    t->l0 = (int)(l0 > 1 << 30 ? 1 << 30 : l0);
    t->fanout = (int)fanout;
    t->levels = (int)levels;
  }
  sqlite3_finalize(st);
  if (rc != SQLITE_ROW && rc != SQLITE_DONE)
    return eng_errorf(err, ENG_EDB, "db: cannot read _engine_levels: %s", sqlite3_errmsg(lv->h));
  memcpy(lv->t, next, sizeof next[0] * (size_t)n);
  lv->nt = n;
  return 1;
}

/* Entries at level k, counted up to limit + 1 (enough to know it is over). */
static int count_level(sqlite3 *h, const level_table *t, int k, sqlite3_int64 limit, sqlite3_int64 *n) {
  char sql[192];
  snprintf(sql, sizeof sql, "SELECT count(*) FROM (SELECT 1 FROM \"%s\" WHERE lvl = ?1 LIMIT ?2)", t->name);
  sqlite3_int64 p[2] = {k, limit + 1};
  return run(h, sql, p, 2, n, NULL);
}

/* Moves the entries of level k with h >= cursor (the next ENG_LEVELS_CHUNK of them) to level k+1
 * in one transaction. Returns SQLITE_OK with *done when the level is through, SQLITE_BUSY when a
 * writer kept the lock, or another code. */
static int move_chunk(eng_db_levels *lv, level_table *t, int k, int *done, sqlite3_int64 *moved) {
  char sql[256];
  sqlite3_int64 hi = 0, lo = t->cursor[k];
  int rc = sqlite3_exec(lv->h, "BEGIN IMMEDIATE", NULL, NULL, NULL);
  if (rc != SQLITE_OK)
    return rc;
  snprintf(sql, sizeof sql, "SELECT h FROM \"%s\" WHERE lvl = ?1 AND h >= ?2 ORDER BY h LIMIT 1 OFFSET ?3", t->name);
  sqlite3_int64 p[4] = {k, lo, ENG_LEVELS_CHUNK, 0};
  int got = 0;
  if ((rc = run(lv->h, sql, p, 3, &hi, &got)) != SQLITE_OK)
    goto fail;
  *done = !got;
  if (!*done && hi == lo) { /* a chunk of one h (collisions): take all of it */
    if (lo == INT64_MAX)
      *done = 1;
    else
      hi = lo + 1;
  }
  p[2] = hi;
  const char *upper = *done ? "" : " AND h < ?3";
  snprintf(sql, sizeof sql,
           "INSERT INTO \"%s\" (lvl, h, seq) SELECT ?1 + 1, h, seq FROM \"%s\" WHERE lvl = ?1 AND h >= ?2%s", t->name,
           t->name, upper);
  if ((rc = run(lv->h, sql, p, *done ? 2 : 3, NULL, NULL)) != SQLITE_OK)
    goto fail;
  *moved = sqlite3_changes64(lv->h);
  snprintf(sql, sizeof sql, "DELETE FROM \"%s\" WHERE lvl = ?1 AND h >= ?2%s", t->name, upper);
  if ((rc = run(lv->h, sql, p, *done ? 2 : 3, NULL, NULL)) != SQLITE_OK)
    goto fail;
  if ((rc = sqlite3_exec(lv->h, "COMMIT", NULL, NULL, NULL)) != SQLITE_OK)
    goto fail;
  t->cursor[k] = hi;
  return SQLITE_OK;
fail:
  sqlite3_exec(lv->h, "ROLLBACK", NULL, NULL, NULL);
  return rc;
}

static int is_busy(int rc) { return (rc & 0xff) == SQLITE_BUSY || (rc & 0xff) == SQLITE_LOCKED; }

/* Counts and folds one table; returns 1 while a fold is under way, 0 when none is, or a code. */
static int fold_table(eng_db_levels *lv, level_table *t, int *budget, int max_chunks, char **err) {
  int under_way = 0;
  for (int k = 0; k < t->levels - 1; k++) {
    if (!t->active[k] && (k == 0 || t->check[k])) {
      sqlite3_int64 n = 0, limit = limit_of(t, k);
      int rc = count_level(lv->h, t, k, limit, &n);
      if (is_busy(rc))
        return 1;
      if (rc != SQLITE_OK)
        return eng_errorf(err, ENG_EDB, "db: cannot count level %d of %s: %s", k, t->name, sqlite3_errmsg(lv->h));
      t->check[k] = 0;
      if (n > limit) {
        t->active[k] = 1;
        t->cursor[k] = INT64_MIN;
      }
    }
    while (t->active[k] && *budget > 0) {
      if (*budget < max_chunks && lv->pause_us > 0) { /* not before a pass's first chunk */
        struct timespec ts = {lv->pause_us / 1000000, (long)(lv->pause_us % 1000000) * 1000L};
        nanosleep(&ts, NULL);
      }
      int done = 0;
      sqlite3_int64 moved = 0;
      int rc = move_chunk(lv, t, k, &done, &moved);
      if (is_busy(rc)) {
        lv->st.busy++;
        return 1;
      }
      if (rc != SQLITE_OK)
        return eng_errorf(err, ENG_EDB, "db: cannot fold level %d of %s into level %d: %s", k, t->name, k + 1,
                          sqlite3_errmsg(lv->h));
      (*budget)--;
      lv->st.chunks++;
      lv->st.moved += (unsigned long long)moved;
      if (done) {
        t->active[k] = 0;
        t->check[k + 1] = 1;
        lv->st.folds++;
      }
    }
    under_way |= t->active[k];
  }
  return under_way;
}

int eng_db_levels_pass(eng_db_levels *lv, int max_chunks, char **err) {
  if (err)
    *err = NULL;
  int rc = load_tables(lv, err);
  if (rc <= 0)
    return rc;
  int budget = max_chunks, under_way = 0;
  for (int i = 0; i < lv->nt; i++) {
    level_table *t = &lv->t[i];
    if (t->failed)
      continue;
    rc = fold_table(lv, t, &budget, max_chunks, err);
    if (rc < 0) {
      t->failed = 1;
      return rc;
    }
    under_way |= rc;
  }
  return under_way;
}
