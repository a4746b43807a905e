/* db.c - the SQLite connection of one worker: open, statement cache, request cleanup; and the
 * checkpointer thread that keeps WAL checkpoints off the workers. (Migrations live in
 * db_migrate.c, the shared struct in db_internal.h.)
 *
 * The statement cache is a hash table (SQL text -> entry) plus a doubly linked LRU list; the
 * least recently fetched statement is finalized when the cache is full. Each fetch also puts the
 * entry on a "dirty" list, so eng_db_after_request resets only what the request touched instead
 * of walking the whole cache on every request. */
#include "db.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "db_internal.h"
#include "db_levels.h"
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

/* Eight bytes a step (multiply and fold, in the spirit of FNV but word-wise): a statement's text is
 * hashed on every fetch, and FNV-1a byte by byte was most of a cache hit's cost (~400
 * instructions for a 60-byte SELECT). Only this process uses it, so the byte order is whatever
 * the machine's is. The final fold brings the high bits down to the low ones the buckets use. */
static uint64_t hash_sql(const char *s, size_t len) {
  const uint64_t mul = 0x9E3779B97F4A7C15ULL;
  uint64_t h = 1469598103934665603ULL ^ (uint64_t)len;
  uint64_t w;
  for (; len >= 8; s += 8, len -= 8) {
    memcpy(&w, s, 8);
    h = (h ^ w) * mul;
    h ^= h >> 32;
  }
  w = 0;
  memcpy(&w, s, len);
  h = (h ^ w) * mul;
  return h ^ (h >> 29);
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
  char pragma[320];
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
           "PRAGMA mmap_size=%lld; PRAGMA journal_size_limit=%lld; PRAGMA wal_autocheckpoint=%d",
           o->synchronous, o->cache_mb < 0 ? -2000LL : -1024LL * o->cache_mb,
           o->mmap_mb < 0 ? 0LL : 1048576LL * o->mmap_mb, ENG_DB_JOURNAL_LIMIT_BYTES, o->no_autocheckpoint ? 0 : 1000);
  if (sqlite3_exec(db->h, pragma, NULL, NULL, NULL) != SQLITE_OK)
    return eng_errorf(err, ENG_EDB, "db: cannot configure %s: %s", path, sqlite3_errmsg(db->h));
  if (eng_db_levels_register(db->h) != SQLITE_OK) /* the leveled tables' triggers call it */
    return eng_errorf(err, ENG_EDB, "db: cannot register engine_key64 on %s: %s", path, sqlite3_errmsg(db->h));
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
  free(db->dirty);
  free(db->buckets);
  free(db);
}

/* ---- the checkpointer ---- */

struct eng_db_checkpointer {
  pthread_t thread;
  pthread_mutex_t mu;
  pthread_cond_t cv; /* signalled by eng_db_checkpointer_stop */
  int stop;          /* under mu */
  sqlite3 *h;        /* used by the thread only (and by start before the thread exists) */
  int wait_ms;       /* how long the next blocking checkpoint may wait (checkpointer_busy) */
  int64_t busy_since_us;
  eng_db_checkpointer_options o;
  long long frame_bytes; /* one WAL frame: page size + 24 */
  sqlite3_stmt *anchor;  /* the read transaction held between checkpoints (hold_anchor), or NULL */
  int all_copied;        /* the last checkpoint left nothing in the WAL to copy */
  sqlite3 *fold_h;       /* the folder's own connection (its writes must not meet the anchor) */
  eng_db_levels *levels; /* folds the leveled key tables (db_levels.h), or NULL */
  int64_t fold_busy_since_us;
  char *fold_err; /* the last fold error logged */
  _Atomic unsigned long long passive, restarts, busy;
  _Atomic long long wal_frames_max;
};

/* Tries again every BUSY_SPIN_US until wait_ms have passed since the first try (*since_us). */
static int spin_until(int64_t *since_us, int wait_ms, int count) {
  int64_t now = mono_us();
  if (count == 0)
    *since_us = now;
  if (now - *since_us >= (int64_t)wait_ms * 1000)
    return 0;
  struct timespec ts = {0, BUSY_SPIN_US * 1000L};
  nanosleep(&ts, NULL);
  return 1;
}

/* The checkpointer's busy handler, for cp->wait_ms. A RESTART checkpoint needs the write lock in a
 * moment between two workers' transactions, and the workers retry every 0.1 to 1 ms (busy_wait):
 * with SQLite's own timeout, which sleeps 1 to 100 ms between tries, it would seldom get it while
 * they are busy, and the WAL would keep growing. */
static int checkpointer_busy(void *arg, int count) {
  eng_db_checkpointer *cp = arg;
  return spin_until(&cp->busy_since_us, cp->wait_ms, count);
}

/* The folder's, for ENG_DB_FOLD_WAIT_MS: a chunk that does not get the lock by then waits for the
 * next pass. */
static int fold_busy(void *arg, int count) {
  eng_db_checkpointer *cp = arg;
  return spin_until(&cp->fold_busy_since_us, ENG_DB_FOLD_WAIT_MS, count);
}

/* A pass of the folder (db_levels.h), between two checkpoints. A table whose fold fails is left
 * alone until the next start (db_levels.c); lookups stay exact, inserts get slower. */
static void fold_pass(eng_db_checkpointer *cp) {
  if (!cp->levels)
    return;
  char *err = NULL;
  /* Each error once (a bad _engine_levels row would otherwise be logged ten times a second). */
  if (eng_db_levels_pass(cp->levels, ENG_DB_FOLD_CHUNKS_PER_PASS, &err) < 0 &&
      (!err || !cp->fold_err || strcmp(err, cp->fold_err) != 0)) {
    eng_log_warn("%s; lookups stay exact, inserts get slower", err ? err : "db: fold failed");
    free(cp->fold_err);
    cp->fold_err = err;
    err = NULL;
  }
  free(err);
}

/* One checkpoint of the given mode. Returns SQLite's code; *log gets the frames in the WAL
 * (-1 when unknown) and *copied whether any page was copied; cp->all_copied whether the WAL
 * holds nothing the database file lacks. */
static int checkpoint(eng_db_checkpointer *cp, int mode, int *log, int *copied) {
  int nlog = -1, nckpt = -1;
  int rc = sqlite3_wal_checkpoint_v2(cp->h, NULL, mode, &nlog, &nckpt);
  *log = nlog;
  *copied = nckpt > 0;
  cp->all_copied = rc == SQLITE_OK && nlog >= 0 && nckpt == nlog;
  if (nlog > atomic_load(&cp->wal_frames_max))
    atomic_store(&cp->wal_frames_max, (long long)nlog);
  return rc;
}

/* ---- the read anchor ----
 * Every read transaction on a WAL database takes a shared lock on one of the wal-index's read
 * slots and drops it at the end. SQLite's unix VFS shares those locks between the connections of
 * one process: it calls fcntl() only for the first holder of a slot and the last to let it go.
 * With nothing held in between, each statement a worker runs in autocommit paid two fcntl()
 * calls, several microseconds of kernel time per request on this project's machines (README,
 * Benchmarks). So between two checkpoints the checkpointer's own connection holds a read
 * transaction open (a statement stepped to its row and not reset): while the WAL holds nothing
 * the file lacks, every reader uses slot 0, the one the anchor holds, and takes and drops it
 * without a system call.
 *
 * Why it is safe: it is one more reader, as SQLite's own protocol allows any number of. A reader
 * never blocks a writer in WAL mode; slot 0 (reading the database file only) never blocks a writer
 * rewinding the WAL (that needs slots 1..N). It would block copying the WAL into the file, which
 * needs slot 0 exclusively, but the only checkpoints of this process are this thread's (workers
 * run with wal_autocheckpoint=0), and it lets the anchor go before each one. It takes it again
 * only after a checkpoint that copied everything: then the anchor's snapshot is the newest and it
 * holds slot 0; otherwise readers use other slots anyway, and a second process on the database (a
 * server started with --handover) whose anchor kept this checkpoint from copying gets its turn
 * (its own checkpoint then finds this process's slot 0 free), so two processes never starve each
 * other's checkpoints. Workers see every commit as before: their read transactions start at the
 * newest snapshot whatever the anchor's is. */

static void drop_anchor(eng_db_checkpointer *cp) {
  if (cp->anchor)
    sqlite3_reset(cp->anchor);
}

static void hold_anchor(eng_db_checkpointer *cp) {
  if (cp->anchor && sqlite3_step(cp->anchor) != SQLITE_ROW)
    sqlite3_reset(cp->anchor); /* no read transaction to hold this time (busy, an error) */
}

/* A PASSIVE checkpoint, then a RESTART one when the WAL still holds more than restart_bytes
 * (db.h says why). The PASSIVE one copies nearly everything without holding anyone up, so the
 * RESTART one, which holds off writers while it runs, has little left to copy. */
static void checkpoint_pass(eng_db_checkpointer *cp) {
  int log, copied;
  int rc = checkpoint(cp, SQLITE_CHECKPOINT_PASSIVE, &log, &copied);
  if (rc != SQLITE_OK && rc != SQLITE_BUSY) {
    eng_log_warn("db: checkpoint failed: %s", sqlite3_errmsg(cp->h));
    return;
  }
  if (copied)
    atomic_fetch_add(&cp->passive, 1);
  long long bytes = (long long)log * cp->frame_bytes;
  if (log < 0 || bytes <= cp->o.restart_bytes)
    return;
  /* Past ENG_DB_CHECKPOINT_HARD_BYTES the RESTART waits longer, holding off new writers meanwhile:
   * the WAL must stay bounded even when the workers write without pause. */
  cp->wait_ms = bytes > ENG_DB_CHECKPOINT_HARD_BYTES ? ENG_DB_CHECKPOINT_HARD_WAIT_MS : cp->o.restart_wait_ms;
  rc = checkpoint(cp, SQLITE_CHECKPOINT_RESTART, &log, &copied);
  if (rc == SQLITE_OK)
    atomic_fetch_add(&cp->restarts, 1);
  else if (rc == SQLITE_BUSY)
    atomic_fetch_add(&cp->busy, 1);
  else
    eng_log_warn("db: restarting checkpoint failed: %s", sqlite3_errmsg(cp->h));
}

static void *checkpointer_main(void *arg) {
  eng_db_checkpointer *cp = arg;
  pthread_mutex_lock(&cp->mu);
  while (!cp->stop) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    long long ns = ts.tv_nsec + (long long)cp->o.interval_ms * 1000000;
    ts.tv_sec += (time_t)(ns / 1000000000);
    ts.tv_nsec = (long)(ns % 1000000000);
    while (!cp->stop && pthread_cond_timedwait(&cp->cv, &cp->mu, &ts) != ETIMEDOUT)
      ;
    if (cp->stop)
      break;
    pthread_mutex_unlock(&cp->mu);
    drop_anchor(cp);
    fold_pass(cp);
    checkpoint_pass(cp);
    if (cp->all_copied)
      hold_anchor(cp);
    pthread_mutex_lock(&cp->mu);
  }
  pthread_mutex_unlock(&cp->mu);

  /* The final one: everything into the database file and an empty WAL. Another process on the
   * same database (a server started with --handover) may still be writing: then the WAL is its. */
  drop_anchor(cp);
  int log, copied;
  (void)checkpoint(cp, SQLITE_CHECKPOINT_PASSIVE, &log, &copied);
  cp->wait_ms = ENG_DB_CHECKPOINT_FINAL_WAIT_MS;
  int rc = checkpoint(cp, SQLITE_CHECKPOINT_TRUNCATE, &log, &copied);
  if (rc == SQLITE_OK)
    atomic_fetch_add(&cp->restarts, 1);
  else if (rc == SQLITE_BUSY)
    eng_log_info("db: final checkpoint left the WAL as it is: another connection still uses it");
  else
    eng_log_warn("db: final checkpoint failed: %s", sqlite3_errmsg(cp->h));
  return NULL;
}

/* The wal-index header records the database's size in pages at each commit; until the first
 * commit since the wal-index was last rebuilt (after every connection closed, so at each start of
 * a server that is alone on its database), it says 0 and every read transaction fstat()s the
 * database file to learn the size instead: one more system call per request for as long as
 * nothing is written. A commit that changes nothing (user_version set to the value it has, which
 * the engine does not otherwise use, inside one write transaction so that no other writer
 * interleaves) records the size once. Best effort: a failure only leaves the fstat() in. */
static void note_database_size(eng_db_checkpointer *cp) {
  sqlite3_stmt *st = NULL;
  char sql[64];
  if (sqlite3_exec(cp->h, "BEGIN IMMEDIATE", NULL, NULL, NULL) != SQLITE_OK)
    return;
  if (sqlite3_prepare_v2(cp->h, "PRAGMA user_version", -1, &st, NULL) == SQLITE_OK && sqlite3_step(st) == SQLITE_ROW) {
    snprintf(sql, sizeof sql, "PRAGMA user_version=%d", sqlite3_column_int(st, 0));
    sqlite3_finalize(st);
    st = NULL;
    if (sqlite3_exec(cp->h, sql, NULL, NULL, NULL) == SQLITE_OK &&
        sqlite3_exec(cp->h, "COMMIT", NULL, NULL, NULL) == SQLITE_OK)
      return;
  }
  sqlite3_finalize(st);
  sqlite3_exec(cp->h, "ROLLBACK", NULL, NULL, NULL);
}

static void checkpointer_free(eng_db_checkpointer *cp) {
  if (!cp)
    return;
  eng_db_levels_free(cp->levels);
  free(cp->fold_err);
  sqlite3_close_v2(cp->fold_h);
  sqlite3_finalize(cp->anchor);
  sqlite3_close_v2(cp->h);
  pthread_cond_destroy(&cp->cv);
  pthread_mutex_destroy(&cp->mu);
  free(cp);
}

int eng_db_checkpointer_start(eng_db_checkpointer **out, const char *path, const eng_db_checkpointer_options *opt,
                              char **err) {
  eng_db_checkpointer_options o = opt ? *opt : (eng_db_checkpointer_options){0};
  eng_db_checkpointer *cp = NULL;
  pthread_condattr_t ca;
  char mode[32];
  int rc = 0;

  *out = NULL;
  if (err)
    *err = NULL;
  if (!o.synchronous)
    o.synchronous = "FULL";
  if (o.interval_ms == 0)
    o.interval_ms = ENG_DB_CHECKPOINT_INTERVAL_MS;
  if (o.restart_bytes == 0)
    o.restart_bytes = ENG_DB_CHECKPOINT_RESTART_BYTES;
  if (o.restart_wait_ms == 0)
    o.restart_wait_ms = ENG_DB_CHECKPOINT_RESTART_WAIT_MS;
  if (strcmp(o.synchronous, "FULL") != 0 && strcmp(o.synchronous, "NORMAL") != 0 && strcmp(o.synchronous, "OFF") != 0)
    return eng_errorf(err, ENG_EINVAL, "db: synchronous must be FULL, NORMAL or OFF, not \"%s\"", o.synchronous);
  if (o.interval_ms < 1 || o.interval_ms > 60000 || o.restart_bytes < 0 || o.restart_wait_ms < 0)
    return eng_errorf(err, ENG_EINVAL, "db: checkpointer options out of range");
  if (strcmp(path, ":memory:") == 0 || path[0] == '\0')
    return eng_errorf(err, ENG_EINVAL, "db: a checkpointer needs a database file");

  cp = calloc(1, sizeof *cp);
  if (!cp)
    return eng_errorf(err, ENG_ENOMEM, "db: out of memory starting the checkpointer");
  cp->o = o;
  if (pthread_mutex_init(&cp->mu, NULL) != 0) {
    free(cp);
    return eng_errorf(err, ENG_ENOMEM, "db: cannot create the checkpointer's mutex");
  }
  if (pthread_condattr_init(&ca) != 0 || pthread_condattr_setclock(&ca, CLOCK_MONOTONIC) != 0 ||
      pthread_cond_init(&cp->cv, &ca) != 0) {
    pthread_mutex_destroy(&cp->mu);
    free(cp);
    return eng_errorf(err, ENG_ENOMEM, "db: cannot create the checkpointer's condition variable");
  }
  pthread_condattr_destroy(&ca);

  /* No SQLITE_OPEN_CREATE: the workers' database must already be there. */
  if (sqlite3_open_v2(path, &cp->h, SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX, NULL) != SQLITE_OK) {
    rc = eng_errorf(err, cp->h ? ENG_EDB : ENG_ENOMEM, "db: checkpointer cannot open %s: %s", path,
                    cp->h ? sqlite3_errmsg(cp->h) : "out of memory");
    goto fail;
  }
  sqlite3_extended_result_codes(cp->h, 1);
  cp->wait_ms = o.restart_wait_ms;
  sqlite3_busy_handler(cp->h, checkpointer_busy, cp);
  char pragma[128];
  snprintf(pragma, sizeof pragma, "PRAGMA synchronous=%s; PRAGMA journal_size_limit=%lld; PRAGMA wal_autocheckpoint=0",
           o.synchronous, ENG_DB_JOURNAL_LIMIT_BYTES);
  if (sqlite3_exec(cp->h, pragma, NULL, NULL, NULL) != SQLITE_OK ||
      pragma_text(cp->h, "PRAGMA journal_mode", mode, sizeof mode) != SQLITE_OK) {
    rc = eng_errorf(err, ENG_EDB, "db: checkpointer cannot configure %s: %s", path, sqlite3_errmsg(cp->h));
    goto fail;
  }
  if (strcmp(mode, "wal") != 0) {
    rc = eng_errorf(err, ENG_EDB, "db: checkpointer: %s is not in WAL mode (journal_mode is %s)", path, mode);
    goto fail;
  }
  char psize[32];
  if (pragma_text(cp->h, "PRAGMA page_size", psize, sizeof psize) != SQLITE_OK) {
    rc = eng_errorf(err, ENG_EDB, "db: checkpointer cannot read the page size of %s: %s", path, sqlite3_errmsg(cp->h));
    goto fail;
  }
  cp->frame_bytes = atoll(psize) + 24;
  /* The anchor (see above): a statement that reads the database header, so that stepping it to its
   * row opens a read transaction. Without it the checkpointer still works, only without the saving. */
  if (sqlite3_prepare_v3(cp->h, "PRAGMA schema_version", -1, SQLITE_PREPARE_PERSISTENT, &cp->anchor, NULL) != SQLITE_OK)
    cp->anchor = NULL;
  note_database_size(cp);
  /* The folder's connection. synchronous=NORMAL: a fold lost in a crash leaves the levels as they
   * were before it, which is as correct (folds change no answer), and the next FULL commit of a
   * worker syncs the WAL up to and past it anyway. Without it, no fold: inserts get slower. */
  snprintf(pragma, sizeof pragma,
           "PRAGMA synchronous=NORMAL; PRAGMA journal_size_limit=%lld; PRAGMA wal_autocheckpoint=0",
           ENG_DB_JOURNAL_LIMIT_BYTES);
  if (sqlite3_open_v2(path, &cp->fold_h, SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX, NULL) != SQLITE_OK ||
      sqlite3_exec(cp->fold_h, pragma, NULL, NULL, NULL) != SQLITE_OK ||
      eng_db_levels_new(&cp->levels, cp->fold_h) != 0) {
    eng_log_warn("db: no folder for the leveled key tables: %s",
                 cp->fold_h ? sqlite3_errmsg(cp->fold_h) : "out of memory");
    sqlite3_close_v2(cp->fold_h);
    cp->fold_h = NULL;
  } else {
    sqlite3_extended_result_codes(cp->fold_h, 1);
    sqlite3_busy_handler(cp->fold_h, fold_busy, cp);
    /* workers waiting for the write lock retry every millisecond (busy_wait); this connection
     * every 0.1 ms: the pause lets one in between two chunks */
    eng_db_levels_set_pause(cp->levels, ENG_DB_FOLD_PAUSE_US);
  }
  if (pthread_create(&cp->thread, NULL, checkpointer_main, cp) != 0) {
    rc = eng_errorf(err, ENG_EIO, "db: cannot start the checkpointer thread");
    goto fail;
  }
  *out = cp;
  return 0;
fail:
  checkpointer_free(cp);
  return rc;
}

void eng_db_checkpointer_stats(eng_db_checkpointer *cp, eng_db_checkpoint_stats *out) {
  out->passive = atomic_load(&cp->passive);
  out->restarts = atomic_load(&cp->restarts);
  out->busy = atomic_load(&cp->busy);
  out->wal_frames_max = atomic_load(&cp->wal_frames_max);
}

void eng_db_checkpointer_stop(eng_db_checkpointer *cp) {
  if (!cp)
    return;
  pthread_mutex_lock(&cp->mu);
  cp->stop = 1;
  pthread_cond_signal(&cp->cv);
  pthread_mutex_unlock(&cp->mu);
  pthread_join(cp->thread, NULL);
  eng_db_checkpoint_stats st;
  eng_db_checkpointer_stats(cp, &st);
  eng_log_info("db: checkpointer stopped: %llu passive checkpoints, %llu restarting ones (the final one included), "
               "%llu deferred for readers; the WAL held at most %lld frames",
               st.passive, st.restarts, st.busy, st.wal_frames_max);
  if (cp->levels) {
    eng_db_levels_stats ls;
    eng_db_levels_get_stats(cp->levels, &ls);
    if (ls.chunks)
      eng_log_info(
          "db: folded %llu level(s) of leveled key tables: %llu entries in %llu chunks, %llu put off for writers",
          ls.folds, ls.moved, ls.chunks, ls.busy);
  }
  checkpointer_free(cp);
}
