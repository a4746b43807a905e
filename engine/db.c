/* db.c - the SQLite connection of one worker: open, statement cache, request cleanup.
 * (Its key sets live in db_keyset.c, migrations in db_migrate.c, the shared struct in db_internal.h.)
 *
 * The statement cache is a hash table (SQL text -> entry) plus a doubly linked LRU list; the
 * least recently fetched statement is finalized when the cache is full. Each fetch also puts the
 * entry on a "dirty" list, so eng_db_after_request resets only what the request touched instead
 * of walking the whole cache on every request. */
#include "db.h"

#include <errno.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "db_internal.h"
#include "error.h"
#include "log.h"
#include "metrics.h"

struct stmt_entry {
  struct stmt_entry *hnext;       /* hash bucket chain */
  struct stmt_entry *prev, *next; /* LRU list: db->lru_head is the most recently fetched */
  sqlite3_stmt *stmt;
  uint64_t serial;
  uint64_t hash;
  int dirty_idx; /* index in db->dirty, or -1 */
  size_t len;
  char sql[]; /* len bytes + NUL */
};

static _Atomic uint64_t next_serial = 1;

/* ---- statement cache ---- */

static uint64_t hash_sql(const char *s, size_t len) {
  uint64_t h = 1469598103934665603ULL; /* FNV-1a */
  for (size_t i = 0; i < len; i++) {
    h ^= (unsigned char)s[i];
    h *= 1099511628211ULL;
  }
  return h;
}

static void lru_unlink(eng_db *db, stmt_entry *e) {
  if (e->prev)
    e->prev->next = e->next;
  else
    db->lru_head = e->next;
  if (e->next)
    e->next->prev = e->prev;
  else
    db->lru_tail = e->prev;
  e->prev = e->next = NULL;
}

static void lru_push_front(eng_db *db, stmt_entry *e) {
  e->prev = NULL;
  e->next = db->lru_head;
  if (db->lru_head)
    db->lru_head->prev = e;
  db->lru_head = e;
  if (!db->lru_tail)
    db->lru_tail = e;
}

static void dirty_add(eng_db *db, stmt_entry *e) {
  if (e->dirty_idx >= 0)
    return;
  e->dirty_idx = db->ndirty;
  db->dirty[db->ndirty++] = e;
}

static void dirty_remove(eng_db *db, stmt_entry *e) {
  if (e->dirty_idx < 0)
    return;
  stmt_entry *last = db->dirty[--db->ndirty];
  db->dirty[e->dirty_idx] = last;
  last->dirty_idx = e->dirty_idx;
  e->dirty_idx = -1;
}

static void entry_evict(eng_db *db, stmt_entry *e) {
  stmt_entry **pp = &db->buckets[e->hash & (db->nbuckets - 1)];
  while (*pp != e)
    pp = &(*pp)->hnext;
  *pp = e->hnext;
  lru_unlink(db, e);
  dirty_remove(db, e);
  sqlite3_finalize(e->stmt);
  free(e);
  db->count--;
}

/* True when the text after the first statement holds only whitespace, ';' and comments.
 * Comments are left to SQLite: preparing the rest yields no statement iff nothing is there. */
static int tail_is_empty(sqlite3 *h, const char *tail, const char *end, const char **errmsg) {
  while (tail < end && (*tail == ' ' || *tail == '\t' || *tail == '\n' || *tail == '\r' || *tail == ';'))
    tail++;
  if (tail == end)
    return 1;
  sqlite3_stmt *next = NULL;
  int rc = sqlite3_prepare_v2(h, tail, (int)(end - tail), &next, NULL);
  if (rc != SQLITE_OK) {
    *errmsg = sqlite3_errmsg(h);
    return 0;
  }
  if (next) {
    sqlite3_finalize(next);
    *errmsg = "more than one SQL statement in one call";
    return 0;
  }
  return 1;
}

int eng_db_prepare_ex(eng_db *db, const char *sql, size_t len, sqlite3_stmt **out, uint64_t *serial,
                      const char **errmsg) {
  const char *dummy;
  if (!errmsg)
    errmsg = &dummy;
  *out = NULL;
  if (len > ENG_DB_SQL_MAX_BYTES) {
    *errmsg = "SQL text too long";
    return ENG_ETOOBIG;
  }
  uint64_t h = hash_sql(sql, len);
  stmt_entry *e = db->buckets[h & (db->nbuckets - 1)];
  while (e && !(e->hash == h && e->len == len && memcmp(e->sql, sql, len) == 0))
    e = e->hnext;
  if (e) {
    if (e != db->lru_head) {
      lru_unlink(db, e);
      lru_push_front(db, e);
    }
    sqlite3_reset(e->stmt);
    sqlite3_clear_bindings(e->stmt);
    dirty_add(db, e);
    *out = e->stmt;
    if (serial)
      *serial = e->serial;
    return 0;
  }

  sqlite3_stmt *st = NULL;
  const char *tail = NULL;
  if (sqlite3_prepare_v3(db->h, sql, (int)len, SQLITE_PREPARE_PERSISTENT, &st, &tail) != SQLITE_OK) {
    *errmsg = sqlite3_errmsg(db->h);
    return ENG_EDB;
  }
  if (!st) {
    *errmsg = "empty SQL statement";
    return ENG_EDB;
  }
  if (!tail_is_empty(db->h, tail, sql + len, errmsg)) {
    sqlite3_finalize(st);
    return ENG_EDB;
  }
  e = malloc(sizeof *e + len + 1);
  if (!e) {
    sqlite3_finalize(st);
    *errmsg = "out of memory";
    return ENG_ENOMEM;
  }
  memcpy(e->sql, sql, len);
  e->sql[len] = '\0';
  e->len = len;
  e->hash = h;
  e->stmt = st;
  e->serial = atomic_fetch_add(&next_serial, 1);
  e->dirty_idx = -1;
  if (db->count >= db->cap)
    entry_evict(db, db->lru_tail);
  size_t b = h & (db->nbuckets - 1);
  e->hnext = db->buckets[b];
  db->buckets[b] = e;
  lru_push_front(db, e);
  db->count++;
  dirty_add(db, e);
  *out = st;
  if (serial)
    *serial = e->serial;
  return 0;
}

int eng_db_prepare(eng_db *db, const char *sql, size_t len, sqlite3_stmt **out, const char **errmsg) {
  return eng_db_prepare_ex(db, sql, len, out, NULL, errmsg);
}

int eng_db_after_request(eng_db *db) {
  for (int i = 0; i < db->ndirty; i++) {
    sqlite3_reset(db->dirty[i]->stmt);
    db->dirty[i]->dirty_idx = -1;
  }
  db->ndirty = 0;
  if (sqlite3_get_autocommit(db->h))
    return 0;
  if (sqlite3_exec(db->h, "ROLLBACK", NULL, NULL, NULL) != SQLITE_OK)
    eng_log_error("db: rollback after request failed: %s", sqlite3_errmsg(db->h));
  return 1;
}

sqlite3 *eng_db_handle(eng_db *db) { return db->h; }

/* ---- busy handler ---- */

#define BUSY_SPIN_US 100   /* first waits: another worker's commit takes a few ms */
#define BUSY_SPIN_TRIES 50 /* ... for the first 5 ms */
#define BUSY_SLEEP_US 1000 /* then 1 ms at a time until busy_timeout_ms */

static int64_t mono_us(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

/* SQLite's own busy timeout sleeps 1, 2, 5, 10, 15, 20, 25... ms between tries: a worker that
 * finds the write lock taken by the other worker's ~10 ms batch wakes up to 10 ms after it was
 * released, leaving a core idle (a third of the CPU in the usage bench). This one tries again
 * every 100 us for the first 5 ms, then every 1 ms, until busy_timeout_ms have passed. */
static int busy_wait(void *arg, int count) {
  if (count == 0)
    eng_metrics_db_busy_wait();
  eng_db *db = arg;
  int64_t now = mono_us();
  if (count == 0)
    db->busy_since_us = now;
  if (now - db->busy_since_us >= (int64_t)db->busy_timeout_ms * 1000)
    return 0;
  struct timespec ts = {0, (count < BUSY_SPIN_TRIES ? BUSY_SPIN_US : BUSY_SLEEP_US) * 1000L};
  nanosleep(&ts, NULL);
  return 1;
}

/* ---- open / close ---- */

/* Runs a PRAGMA that answers with one text row and copies the answer (lowercased) into out. */
static int pragma_text(sqlite3 *h, const char *sql, char *out, size_t outlen) {
  sqlite3_stmt *st = NULL;
  int rc = sqlite3_prepare_v2(h, sql, -1, &st, NULL);
  if (rc == SQLITE_OK)
    rc = sqlite3_step(st);
  if (rc == SQLITE_ROW) {
    const unsigned char *t = sqlite3_column_text(st, 0);
    size_t i = 0;
    for (; t && t[i] && i + 1 < outlen; i++)
      out[i] = (char)(t[i] >= 'A' && t[i] <= 'Z' ? t[i] + 32 : t[i]);
    out[i] = '\0';
    rc = SQLITE_OK;
  } else if (rc == SQLITE_DONE) {
    out[0] = '\0';
    rc = SQLITE_OK;
  }
  sqlite3_finalize(st);
  return rc;
}

/* Resolves a MiB option: 0 takes the environment variable env (a whole number 0..MAX, where 0
 * means off, stored as -1), else def; negative means off; above ENG_DB_SIZE_MAX_MB is refused. */
static int size_option(int *mb, const char *env, int def, char **err) {
  if (*mb == 0) {
    const char *v = getenv(env);
    if (v && *v) {
      char *end;
      errno = 0;
      long n = strtol(v, &end, 10);
      if (errno || *end || n < 0 || n > ENG_DB_SIZE_MAX_MB)
        return eng_errorf(err, ENG_EINVAL, "db: %s must be a whole number of MiB from 0 to %d, not \"%s\"", env,
                          ENG_DB_SIZE_MAX_MB, v);
      *mb = n == 0 ? -1 : (int)n;
    } else {
      *mb = def;
    }
  }
  if (*mb > ENG_DB_SIZE_MAX_MB)
    return eng_errorf(err, ENG_EINVAL, "db: cache and mmap sizes must be at most %d MiB", ENG_DB_SIZE_MAX_MB);
  return 0;
}

/* Checks the options and fills in the defaults (db.h: eng_db_options). ENG_EINVAL when one is bad. */
static int resolve_options(eng_db_options *o, char **err) {
  int rc;
  if (!o->synchronous)
    o->synchronous = "FULL";
  if (strcmp(o->synchronous, "FULL") != 0 && strcmp(o->synchronous, "NORMAL") != 0 &&
      strcmp(o->synchronous, "OFF") != 0)
    return eng_errorf(err, ENG_EINVAL, "db: synchronous must be FULL, NORMAL or OFF, not \"%s\"", o->synchronous);
  if (o->busy_timeout_ms < 0)
    return eng_errorf(err, ENG_EINVAL, "db: busy_timeout_ms must not be negative");
  if (o->busy_timeout_ms == 0)
    o->busy_timeout_ms = ENG_DB_BUSY_TIMEOUT_DEFAULT_MS;
  if (o->stmt_cache_size == 0)
    o->stmt_cache_size = ENG_DB_STMT_CACHE_DEFAULT;
  if (o->stmt_cache_size < ENG_DB_STMT_CACHE_MIN || o->stmt_cache_size > ENG_DB_STMT_CACHE_MAX)
    return eng_errorf(err, ENG_EINVAL, "db: stmt_cache_size must be 0 (default) or between %d and %d",
                      ENG_DB_STMT_CACHE_MIN, ENG_DB_STMT_CACHE_MAX);
  if ((rc = size_option(&o->cache_mb, ENG_DB_CACHE_ENV, ENG_DB_CACHE_DEFAULT_MB, err)) != 0 ||
      (rc = size_option(&o->mmap_mb, ENG_DB_MMAP_ENV, ENG_DB_MMAP_DEFAULT_MB, err)) != 0)
    return rc;
  return 0;
}

/* Sets up the freshly opened handle: extended result codes, the busy handler, WAL (for a file),
 * synchronous, foreign keys, cache_size and mmap_size. */
static int configure(eng_db *db, const char *path, const eng_db_options *o, char **err) {
  char pragma[160];
  char mode[32];

  sqlite3_extended_result_codes(db->h, 1);
  db->busy_timeout_ms = o->busy_timeout_ms;
  sqlite3_busy_handler(db->h, busy_wait, db);
  if (strcmp(path, ":memory:") != 0 && path[0] != '\0') {
    if (pragma_text(db->h, "PRAGMA journal_mode=WAL", mode, sizeof mode) != SQLITE_OK)
      return eng_errorf(err, ENG_EDB, "db: cannot set WAL mode on %s: %s", path, sqlite3_errmsg(db->h));
    if (strcmp(mode, "wal") != 0)
      return eng_errorf(err, ENG_EDB, "db: cannot set WAL mode on %s: journal_mode is %s", path, mode);
  }
  snprintf(pragma, sizeof pragma,
           "PRAGMA synchronous=%s; PRAGMA foreign_keys=ON; PRAGMA cache_size=%lld; "
           "PRAGMA mmap_size=%lld",
           o->synchronous, o->cache_mb < 0 ? -2000LL : -1024LL * o->cache_mb,
           o->mmap_mb < 0 ? 0LL : 1048576LL * o->mmap_mb);
  if (sqlite3_exec(db->h, pragma, NULL, NULL, NULL) != SQLITE_OK)
    return eng_errorf(err, ENG_EDB, "db: cannot configure %s: %s", path, sqlite3_errmsg(db->h));
  return 0;
}

int eng_db_open(eng_db **out, const char *path, const eng_db_options *opt, char **err) {
  eng_db_options o = opt ? *opt : (eng_db_options){0};
  eng_db *db = NULL;
  int rc;

  *out = NULL;
  if (err)
    *err = NULL;
  if ((rc = resolve_options(&o, err)) != 0)
    goto cleanup;

  db = calloc(1, sizeof *db);
  if (db) {
    db->cap = o.stmt_cache_size;
    db->nbuckets = 1;
    while (db->nbuckets < (size_t)db->cap * 2)
      db->nbuckets <<= 1;
    db->buckets = calloc(db->nbuckets, sizeof *db->buckets);
    db->dirty = calloc((size_t)db->cap, sizeof *db->dirty);
  }
  if (!db || !db->buckets || !db->dirty) {
    rc = eng_errorf(err, ENG_ENOMEM, "db: out of memory opening %s", path);
    goto cleanup;
  }

  int flags = SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX;
  if (sqlite3_open_v2(path, &db->h, flags, NULL) != SQLITE_OK) {
    if (!db->h)
      rc = eng_errorf(err, ENG_ENOMEM, "db: out of memory opening %s", path);
    else
      rc = eng_errorf(err, ENG_EDB, "db: cannot open %s: %s", path, sqlite3_errmsg(db->h));
    goto cleanup;
  }
  if ((rc = configure(db, path, &o, err)) != 0)
    goto cleanup;
  *out = db;
  db = NULL;
cleanup:
  eng_db_close(db);
  return rc;
}

void eng_db_close(eng_db *db) {
  if (!db)
    return;
  while (db->lru_tail)
    entry_evict(db, db->lru_tail);
  if (db->h) {
    if (!sqlite3_get_autocommit(db->h))
      sqlite3_exec(db->h, "ROLLBACK", NULL, NULL, NULL);
    sqlite3_close_v2(db->h);
  }
  for (int i = 0; i < db->nkeysets; i++)
    eng_db_keyset_free(db->keysets[i]);
  free(db->dirty);
  free(db->buckets);
  free(db);
}
