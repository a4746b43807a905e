/* db.c - the SQLite connection of one worker: open, statement cache, request cleanup, migrations.
 *
 * The statement cache is a hash table (SQL text -> entry) plus a doubly linked LRU list; the
 * least recently fetched statement is finalized when the cache is full. Each fetch also puts the
 * entry on a "dirty" list, so eng_db_after_request resets only what the request touched instead
 * of walking the whole cache on every request. */
#include "db.h"

#include <dirent.h>
#include <errno.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include <openssl/evp.h>

#include "error.h"
#include "files.h"
#include "log.h"

#define MIGRATION_FILES_MAX 10000 /* four digits: more files than numbers means duplicates */
#define MIGRATION_NAME_MAX 255
#define SHA256_HEX_LEN 64

typedef struct stmt_entry {
  struct stmt_entry *hnext;       /* hash bucket chain */
  struct stmt_entry *prev, *next; /* LRU list: db->lru_head is the most recently fetched */
  sqlite3_stmt *stmt;
  uint64_t serial;
  uint64_t hash;
  int dirty_idx; /* index in db->dirty, or -1 */
  size_t len;
  char sql[]; /* len bytes + NUL */
} stmt_entry;

/* An open-addressing hash table of byte strings kept in one arena. Each entry is
 * [u32 tag][u32 len][len bytes] at a 4-aligned offset. A slot is 8 bytes, the entry's offset + 1
 * (0 = empty) and the high half of its hash, so a probe usually costs one cache miss for the
 * slot and one for the entry. A key set uses two tables: groups (tag 0; an entry's offset + 1 is
 * the group's id) and pairs (tag = the group id). */
typedef struct strslot {
  uint32_t off; /* offset + 1 */
  uint32_t tag; /* hash >> 32 */
} strslot;

typedef struct strtab {
  strslot *slots;
  size_t cap; /* a power of two; kept at most half full */
  size_t count;
  unsigned char *arena;
  size_t alen, acap;
} strtab;

struct eng_db_keyset {
  char *sql;
  size_t sql_len;
  int64_t last_id;
  strtab groups, pairs;
};

struct eng_db {
  sqlite3 *h;
  int busy_timeout_ms;
  int64_t busy_since_us; /* when the current wait for a lock began */
  eng_db_keyset *keysets[ENG_DB_KEYSETS_MAX];
  int nkeysets;
  stmt_entry **buckets;
  size_t nbuckets; /* power of two */
  stmt_entry *lru_head, *lru_tail;
  int count, cap;
  stmt_entry **dirty; /* fetched since the last eng_db_after_request; at most cap entries */
  int ndirty;
};

static _Atomic uint64_t next_serial = 1;

static void set_err(char **err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* *err = malloc'd formatted message (NULL if even that allocation fails). */
static void set_err(char **err, const char *fmt, ...) {
  if (!err)
    return;
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(NULL, 0, fmt, ap);
  va_end(ap);
  *err = NULL;
  if (n < 0)
    return;
  char *s = malloc((size_t)n + 1);
  if (!s)
    return;
  va_start(ap, fmt);
  vsnprintf(s, (size_t)n + 1, fmt, ap);
  va_end(ap);
  *err = s;
}

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

/* ---- key sets ---- */

#define STRTAB_MIN_CAP 1024
#define STRTAB_HDR 8 /* tag + len */

static uint64_t hash_pair(uint32_t tag, const char *s, size_t len) {
  uint64_t h = 1469598103934665603ULL ^ tag;
  for (size_t i = 0; i < len; i++) {
    h ^= (unsigned char)s[i];
    h *= 1099511628211ULL;
  }
  h ^= h >> 29; /* FNV-1a's low bits are weak for short keys, and the table indexes by them */
  h *= 0xbf58476d1ce4e5b9ULL;
  return h ^ (h >> 32);
}

static void strtab_free(strtab *t) {
  free(t->slots);
  free(t->arena);
  memset(t, 0, sizeof *t);
}

static int entry_equal(const strtab *t, uint32_t off, uint32_t tag, const char *s, size_t len) {
  uint32_t hdr[2];
  memcpy(hdr, t->arena + off, sizeof hdr);
  return hdr[0] == tag && hdr[1] == len && memcmp(t->arena + off + STRTAB_HDR, s, len) == 0;
}

/* The slot of (tag, s), or the empty slot where it would go. */
static size_t strtab_slot(const strtab *t, uint64_t h, uint32_t tag, const char *s, size_t len) {
  size_t mask = t->cap - 1;
  uint32_t htag = (uint32_t)(h >> 32);
  size_t i = htag & mask;
  while (t->slots[i].off && !(t->slots[i].tag == htag && entry_equal(t, t->slots[i].off - 1, tag, s, len)))
    i = (i + 1) & mask;
  return i;
}

/* Returns the entry's offset + 1 when (tag, s) is present, else 0. */
static uint32_t strtab_find(const strtab *t, uint32_t tag, const char *s, size_t len) {
  if (!t->cap)
    return 0;
  return t->slots[strtab_slot(t, hash_pair(tag, s, len), tag, s, len)].off;
}

/* Doubles the slots. A slot's index comes from its 32-bit hash tag (the arena's 32-bit offsets
 * bound the table far below 2^32 slots), so growing never reads the entries themselves. */
static int strtab_grow(strtab *t) {
  size_t ncap = t->cap ? t->cap * 2 : STRTAB_MIN_CAP;
  strslot *ns = calloc(ncap, sizeof *ns);
  if (!ns)
    return ENG_ENOMEM;
  for (size_t i = 0; i < t->cap; i++) {
    if (!t->slots[i].off)
      continue;
    size_t j = t->slots[i].tag & (ncap - 1);
    while (ns[j].off)
      j = (j + 1) & (ncap - 1);
    ns[j] = t->slots[i];
  }
  free(t->slots);
  t->slots = ns;
  t->cap = ncap;
  return 0;
}

/* Adds (tag, s) unless present; *off gets the entry's offset + 1 either way. */
static int strtab_add(strtab *t, uint32_t tag, const char *s, size_t len, uint32_t *off) {
  if ((t->count + 1) * 2 > t->cap) {
    int rc = strtab_grow(t);
    if (rc)
      return rc;
  }
  uint64_t h = hash_pair(tag, s, len);
  size_t i = strtab_slot(t, h, tag, s, len);
  if (t->slots[i].off) {
    *off = t->slots[i].off;
    return 0;
  }
  if (len > ENG_DB_KEYSET_BYTES_MAX - STRTAB_HDR - 4 || t->alen + STRTAB_HDR + len + 4 > ENG_DB_KEYSET_BYTES_MAX)
    return ENG_ETOOBIG;
  size_t need = (STRTAB_HDR + len + 3) & ~(size_t)3;
  if (t->alen + need > t->acap) {
    size_t ncap = t->acap ? t->acap : 64 * 1024;
    while (ncap < t->alen + need)
      ncap *= 2;
    unsigned char *na = realloc(t->arena, ncap);
    if (!na)
      return ENG_ENOMEM;
    t->arena = na;
    t->acap = ncap;
  }
  uint32_t hdr[2] = {tag, (uint32_t)len};
  memcpy(t->arena + t->alen, hdr, sizeof hdr);
  memcpy(t->arena + t->alen + STRTAB_HDR, s, len);
  t->slots[i].off = (uint32_t)t->alen + 1;
  t->slots[i].tag = (uint32_t)(h >> 32);
  t->alen += need;
  t->count++;
  *off = t->slots[i].off;
  return 0;
}

static void keyset_free(eng_db_keyset *ks) {
  if (!ks)
    return;
  strtab_free(&ks->groups);
  strtab_free(&ks->pairs);
  free(ks->sql);
  free(ks);
}

uint32_t eng_db_keyset_group(const eng_db_keyset *ks, const char *group, size_t glen) {
  return strtab_find(&ks->groups, 0, group, glen);
}

int eng_db_keyset_has(const eng_db_keyset *ks, uint32_t group_id, const char *key, size_t klen) {
  return group_id && strtab_find(&ks->pairs, group_id, key, klen) != 0;
}

size_t eng_db_keyset_count(const eng_db_keyset *ks) { return ks->pairs.count; }

/* Adds the scan's rows to ks. st is the cached scan statement, bound and reset by the caller. */
static int keyset_scan(eng_db *db, eng_db_keyset *ks, sqlite3_stmt *st, const char **errmsg) {
  int step;
  uint32_t gid = 0; /* of the previous row: rows come in runs of one group (a batch) */
  while ((step = sqlite3_step(st)) == SQLITE_ROW) {
    if (sqlite3_column_type(st, 0) != SQLITE_INTEGER || sqlite3_column_type(st, 1) != SQLITE_TEXT ||
        sqlite3_column_type(st, 2) != SQLITE_TEXT) {
      *errmsg = "a key set scan must answer rows of (id INTEGER, group TEXT, key TEXT)";
      return ENG_EINVAL;
    }
    int64_t id = sqlite3_column_int64(st, 0);
    const char *g = (const char *)sqlite3_column_text(st, 1);
    size_t glen = (size_t)sqlite3_column_bytes(st, 1);
    const char *k = (const char *)sqlite3_column_text(st, 2);
    size_t klen = (size_t)sqlite3_column_bytes(st, 2);
    uint32_t pid;
    int rc = 0;
    if (!g || !k) {
      *errmsg = "out of memory";
      return ENG_ENOMEM;
    }
    if (!gid || !entry_equal(&ks->groups, gid - 1, 0, g, glen))
      rc = strtab_add(&ks->groups, 0, g, glen, &gid);
    if (rc || (rc = strtab_add(&ks->pairs, gid, k, klen, &pid)) != 0) {
      *errmsg = rc == ENG_ENOMEM ? "out of memory" : "key set too large";
      return rc;
    }
    if (id > ks->last_id)
      ks->last_id = id;
  }
  if (step != SQLITE_DONE) {
    *errmsg = sqlite3_errmsg(db->h);
    return ENG_EDB;
  }
  return 0;
}

int eng_db_keyset_sync(eng_db *db, const char *scan_sql, size_t len, eng_db_keyset **out, const char **errmsg) {
  const char *dummy;
  eng_db_keyset *ks = NULL;
  sqlite3_stmt *st = NULL;
  int rc;

  if (!errmsg)
    errmsg = &dummy;
  if (out)
    *out = NULL;
  if ((rc = eng_db_prepare(db, scan_sql, len, &st, errmsg)) != 0)
    return rc;
  for (int i = 0; i < db->nkeysets && !ks; i++)
    if (db->keysets[i]->sql_len == len && memcmp(db->keysets[i]->sql, scan_sql, len) == 0)
      ks = db->keysets[i];
  if (!ks) {
    if (db->nkeysets == ENG_DB_KEYSETS_MAX) {
      *errmsg = "too many key sets on one connection";
      return ENG_ETOOBIG;
    }
    ks = calloc(1, sizeof *ks);
    if (!ks || !(ks->sql = malloc(len + 1))) {
      free(ks);
      *errmsg = "out of memory";
      return ENG_ENOMEM;
    }
    memcpy(ks->sql, scan_sql, len);
    ks->sql[len] = '\0';
    ks->sql_len = len;
    db->keysets[db->nkeysets++] = ks;
  }
  sqlite3_bind_int64(st, 1, ks->last_id);
  rc = keyset_scan(db, ks, st, errmsg);
  sqlite3_reset(st);
  sqlite3_clear_bindings(st);
  if (rc == 0 && out)
    *out = ks;
  return rc;
}

/* ---- busy handler ---- */

#define BUSY_SPIN_US 100     /* first waits: another worker's commit takes a few ms */
#define BUSY_SPIN_TRIES 50   /* ... for the first 5 ms */
#define BUSY_SLEEP_US 1000   /* then 1 ms at a time until busy_timeout_ms */

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
      if (errno || *end || n < 0 || n > ENG_DB_SIZE_MAX_MB) {
        set_err(err, "db: %s must be a whole number of MiB from 0 to %d, not \"%s\"", env, ENG_DB_SIZE_MAX_MB, v);
        return ENG_EINVAL;
      }
      *mb = n == 0 ? -1 : (int)n;
    } else {
      *mb = def;
    }
  }
  if (*mb > ENG_DB_SIZE_MAX_MB) {
    set_err(err, "db: cache and mmap sizes must be at most %d MiB", ENG_DB_SIZE_MAX_MB);
    return ENG_EINVAL;
  }
  return 0;
}

int eng_db_open(eng_db **out, const char *path, const eng_db_options *opt, char **err) {
  eng_db_options o = opt ? *opt : (eng_db_options){0};
  eng_db *db = NULL;
  int rc = 0;
  char pragma[160];
  char mode[32];

  *out = NULL;
  if (err)
    *err = NULL;
  if (!o.synchronous)
    o.synchronous = "FULL";
  if (strcmp(o.synchronous, "FULL") != 0 && strcmp(o.synchronous, "NORMAL") != 0 &&
      strcmp(o.synchronous, "OFF") != 0) {
    set_err(err, "db: synchronous must be FULL, NORMAL or OFF, not \"%s\"", o.synchronous);
    return ENG_EINVAL;
  }
  if (o.busy_timeout_ms < 0) {
    set_err(err, "db: busy_timeout_ms must not be negative");
    return ENG_EINVAL;
  }
  if (o.busy_timeout_ms == 0)
    o.busy_timeout_ms = ENG_DB_BUSY_TIMEOUT_DEFAULT_MS;
  if (o.stmt_cache_size == 0)
    o.stmt_cache_size = ENG_DB_STMT_CACHE_DEFAULT;
  if (o.stmt_cache_size < ENG_DB_STMT_CACHE_MIN || o.stmt_cache_size > ENG_DB_STMT_CACHE_MAX) {
    set_err(err, "db: stmt_cache_size must be 0 (default) or between %d and %d", ENG_DB_STMT_CACHE_MIN,
            ENG_DB_STMT_CACHE_MAX);
    return ENG_EINVAL;
  }

  if ((rc = size_option(&o.cache_mb, ENG_DB_CACHE_ENV, ENG_DB_CACHE_DEFAULT_MB, err)) != 0 ||
      (rc = size_option(&o.mmap_mb, ENG_DB_MMAP_ENV, ENG_DB_MMAP_DEFAULT_MB, err)) != 0)
    return rc;

  db = calloc(1, sizeof *db);
  if (!db)
    goto nomem;
  db->cap = o.stmt_cache_size;
  db->nbuckets = 1;
  while (db->nbuckets < (size_t)db->cap * 2)
    db->nbuckets <<= 1;
  db->buckets = calloc(db->nbuckets, sizeof *db->buckets);
  db->dirty = calloc((size_t)db->cap, sizeof *db->dirty);
  if (!db->buckets || !db->dirty)
    goto nomem;

  int flags = SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX;
  if (sqlite3_open_v2(path, &db->h, flags, NULL) != SQLITE_OK) {
    if (!db->h)
      goto nomem;
    set_err(err, "db: cannot open %s: %s", path, sqlite3_errmsg(db->h));
    rc = ENG_EDB;
    goto fail;
  }
  sqlite3_extended_result_codes(db->h, 1);
  db->busy_timeout_ms = o.busy_timeout_ms;
  sqlite3_busy_handler(db->h, busy_wait, db);
  if (strcmp(path, ":memory:") != 0 && path[0] != '\0') {
    if (pragma_text(db->h, "PRAGMA journal_mode=WAL", mode, sizeof mode) != SQLITE_OK) {
      set_err(err, "db: cannot set WAL mode on %s: %s", path, sqlite3_errmsg(db->h));
      rc = ENG_EDB;
      goto fail;
    }
    if (strcmp(mode, "wal") != 0) {
      set_err(err, "db: cannot set WAL mode on %s: journal_mode is %s", path, mode);
      rc = ENG_EDB;
      goto fail;
    }
  }
  snprintf(pragma, sizeof pragma, "PRAGMA synchronous=%s; PRAGMA foreign_keys=ON; PRAGMA cache_size=%lld; "
           "PRAGMA mmap_size=%lld", o.synchronous, o.cache_mb < 0 ? -2000LL : -1024LL * o.cache_mb,
           o.mmap_mb < 0 ? 0LL : 1048576LL * o.mmap_mb);
  if (sqlite3_exec(db->h, pragma, NULL, NULL, NULL) != SQLITE_OK) {
    set_err(err, "db: cannot configure %s: %s", path, sqlite3_errmsg(db->h));
    rc = ENG_EDB;
    goto fail;
  }
  *out = db;
  return 0;

nomem:
  set_err(err, "db: out of memory opening %s", path);
  rc = ENG_ENOMEM;
fail:
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
    keyset_free(db->keysets[i]);
  free(db->dirty);
  free(db->buckets);
  free(db);
}

/* ---- migrations ---- */


typedef struct mig_file {
  int id;
  int recorded;
  const char *dir; /* the schema directory holding it (points into the caller's split list) */
  char name[MIGRATION_NAME_MAX + 1];
  char checksum[SHA256_HEX_LEN + 1];
} mig_file;

/* NNNN_name.sql: four digits, '_', at least one character, ".sql". Returns the number or -1. */
static int migration_number(const char *name) {
  size_t n = strlen(name);
  if (n < 10 || n > MIGRATION_NAME_MAX || name[4] != '_' || strcmp(name + n - 4, ".sql") != 0)
    return -1;
  int id = 0;
  for (int i = 0; i < 4; i++) {
    if (name[i] < '0' || name[i] > '9')
      return -1;
    id = id * 10 + (name[i] - '0');
  }
  return id;
}

static int cmp_mig(const void *a, const void *b) {
  const mig_file *x = a, *y = b;
  if (x->id != y->id)
    return x->id < y->id ? -1 : 1;
  return strcmp(x->name, y->name);
}

/* Reads dir/name into a malloc'd NUL-terminated buffer. */
static int read_migration(const char *dir, const char *name, char **data, size_t *len, char **err) {
  char path[4096];
  if (snprintf(path, sizeof path, "%s/%s", dir, name) >= (int)sizeof path)
    return eng_errorf(err, ENG_ETOOBIG, "db: migration path too long: %s/%s", dir, name);
  int rc = eng_file_read(path, ENG_DB_MIGRATION_MAX_BYTES, data, len);
  if (rc == ENG_ETOOBIG)
    return eng_errorf(err, rc, "db: migration %s is larger than %d bytes", name, ENG_DB_MIGRATION_MAX_BYTES);
  if (rc == ENG_ENOMEM)
    return eng_errorf(err, rc, "db: out of memory reading migration %s", name);
  if (rc != 0)
    return eng_errorf(err, rc, "db: cannot read migration %s: %s", path, strerror(errno));
  return 0;
}

static int sha256_hex(const char *data, size_t len, char out[SHA256_HEX_LEN + 1]) {
  static const char hex[] = "0123456789abcdef";
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int mdlen = 0;
  if (!EVP_Digest(data, len, md, &mdlen, EVP_sha256(), NULL) || mdlen * 2 != SHA256_HEX_LEN)
    return ENG_ECRYPTO;
  for (unsigned int i = 0; i < mdlen; i++) {
    out[2 * i] = hex[md[i] >> 4];
    out[2 * i + 1] = hex[md[i] & 15];
  }
  out[SHA256_HEX_LEN] = '\0';
  return 0;
}

/* Reads and checksums one file; *data is the text to run (malloc'd, caller frees). */
static int load_migration(mig_file *f, char **data, char **err) {
  size_t len = 0;
  int rc = read_migration(f->dir, f->name, data, &len, err);
  if (rc)
    return rc;
  if (memchr(*data, '\0', len)) {
    set_err(err, "db: migration %s contains a NUL byte", f->name);
    rc = ENG_ECONFIG;
  } else if (sha256_hex(*data, len, f->checksum) != 0) {
    set_err(err, "db: cannot checksum migration %s", f->name);
    rc = ENG_ECRYPTO;
  }
  if (rc) {
    free(*data);
    *data = NULL;
  }
  return rc;
}

/* Lists the migrations of every directory in dirs (ndirs of them), sorted by number;
 * the same number twice, in one directory or across them, is an error. */
static int list_migrations(char *const *dirs, int ndirs, mig_file **out, size_t *count, char **err) {
  mig_file *files = NULL;
  size_t n = 0, cap = 0;
  int rc = 0;
  struct dirent *de;
  char *data = NULL;
  DIR *d = NULL;

  for (int di = 0; di < ndirs; di++) {
    const char *dir = dirs[di];
    if ((d = opendir(dir)) == NULL) {
      set_err(err, "db: cannot open schema directory %s: %s", dir, strerror(errno));
      rc = ENG_EIO;
      goto cleanup;
    }
    while ((de = readdir(d)) != NULL) {
      int id = migration_number(de->d_name);
      if (id < 0)
        continue;
      char path[4096];
      struct stat sb;
      if (snprintf(path, sizeof path, "%s/%s", dir, de->d_name) >= (int)sizeof path || stat(path, &sb) != 0 ||
          !S_ISREG(sb.st_mode))
        continue;
      if (n == MIGRATION_FILES_MAX) {
        set_err(err, "db: more than %d migration files in %s", MIGRATION_FILES_MAX, dir);
        rc = ENG_ECONFIG;
        goto cleanup;
      }
      if (n == cap) {
        size_t ncap = cap ? cap * 2 : 16;
        mig_file *nf = realloc(files, ncap * sizeof *nf);
        if (!nf) {
          set_err(err, "db: out of memory listing %s", dir);
          rc = ENG_ENOMEM;
          goto cleanup;
        }
        files = nf;
        cap = ncap;
      }
      mig_file *f = &files[n++];
      memset(f, 0, sizeof *f);
      f->id = id;
      f->dir = dir;
      memcpy(f->name, de->d_name, strlen(de->d_name) + 1);
    }
    closedir(d);
    d = NULL;
  }
  if (n)
    qsort(files, n, sizeof *files, cmp_mig);
  for (size_t i = 1; i < n; i++) {
    if (files[i].id == files[i - 1].id) {
      if (files[i].dir == files[i - 1].dir)
        set_err(err, "db: migrations %s and %s share the number %04d", files[i - 1].name, files[i].name,
                files[i].id);
      else
        set_err(err, "db: migrations %s/%s and %s/%s share the number %04d", files[i - 1].dir,
                files[i - 1].name, files[i].dir, files[i].name, files[i].id);
      rc = ENG_ECONFIG;
      goto cleanup;
    }
  }
  for (size_t i = 0; i < n; i++) {
    rc = load_migration(&files[i], &data, err);
    free(data);
    data = NULL;
    if (rc)
      goto cleanup;
  }
  *out = files;
  *count = n;
  files = NULL;
cleanup:
  free(files);
  if (d)
    closedir(d);
  return rc;
}

static void rollback_if_open(eng_db *db) {
  if (!sqlite3_get_autocommit(db->h))
    sqlite3_exec(db->h, "ROLLBACK", NULL, NULL, NULL);
}

static int exec_sql(eng_db *db, const char *sql, const char *what, char **err) {
  if (sqlite3_exec(db->h, sql, NULL, NULL, NULL) == SQLITE_OK)
    return 0;
  set_err(err, "db: %s: %s", what, sqlite3_errmsg(db->h));
  return ENG_EDB;
}

#define SQL_CREATE_MIGRATIONS                                                                  \
  "CREATE TABLE IF NOT EXISTS " ENG_DB_MIGRATIONS_TABLE " (id INTEGER PRIMARY KEY, name TEXT NOT NULL, " \
  "checksum TEXT NOT NULL, applied_at TEXT NOT NULL)"
#define SQL_SELECT_MIGRATIONS "SELECT id, name, checksum FROM " ENG_DB_MIGRATIONS_TABLE " ORDER BY id"
#define SQL_SELECT_MIGRATION "SELECT name, checksum FROM " ENG_DB_MIGRATIONS_TABLE " WHERE id = ?1"
#define SQL_INSERT_MIGRATION                                                      \
  "INSERT INTO " ENG_DB_MIGRATIONS_TABLE " (id, name, checksum, applied_at) " \
  "VALUES (?1, ?2, ?3, strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))"

static mig_file *find_migration(mig_file *files, size_t n, int id) {
  size_t lo = 0, hi = n;
  while (lo < hi) {
    size_t mid = lo + (hi - lo) / 2;
    if (files[mid].id < id)
      lo = mid + 1;
    else
      hi = mid;
  }
  return lo < n && files[lo].id == id ? &files[lo] : NULL;
}

/* Compares a recorded migration with the directory's file of that number. */
static int check_record(const char *dir, mig_file *f, int id, const char *name, const char *checksum,
                        char **err) {
  if (!f || strcmp(f->name, name) != 0) {
    set_err(err, "db: the database records migration %s (id %d), which is not in %s", name, id, dir);
    return ENG_ECONFIG;
  }
  if (strcmp(f->checksum, checksum) != 0) {
    set_err(err, "db: migration %s was changed after it was applied", f->name);
    return ENG_ECONFIG;
  }
  f->recorded = 1;
  return 0;
}

/* In one BEGIN IMMEDIATE transaction: creates the record table, checks every record against the
 * directory. Returns the highest recorded id in *max_id (-1 for none). */
static int check_records(eng_db *db, const char *dir, mig_file *files, size_t n, int *max_id, char **err) {
  sqlite3_stmt *st;
  const char *emsg;
  int rc, step;

  *max_id = -1;
  if ((rc = exec_sql(db, "BEGIN IMMEDIATE", "cannot start migration check", err)) != 0)
    return rc;
  if ((rc = exec_sql(db, SQL_CREATE_MIGRATIONS, "cannot create " ENG_DB_MIGRATIONS_TABLE, err)) != 0)
    goto cleanup;
  if (eng_db_prepare(db, SQL_SELECT_MIGRATIONS, strlen(SQL_SELECT_MIGRATIONS), &st, &emsg) != 0) {
    set_err(err, "db: cannot read " ENG_DB_MIGRATIONS_TABLE ": %s", emsg);
    rc = ENG_EDB;
    goto cleanup;
  }
  while ((step = sqlite3_step(st)) == SQLITE_ROW) {
    int id = sqlite3_column_int(st, 0);
    const char *name = (const char *)sqlite3_column_text(st, 1);
    const char *sum = (const char *)sqlite3_column_text(st, 2);
    rc = check_record(dir, find_migration(files, n, id), id, name ? name : "", sum ? sum : "", err);
    if (rc)
      break;
    *max_id = id;
  }
  if (!rc && step != SQLITE_DONE) {
    set_err(err, "db: cannot read " ENG_DB_MIGRATIONS_TABLE ": %s", sqlite3_errmsg(db->h));
    rc = ENG_EDB;
  }
  sqlite3_reset(st);
  if (!rc)
    rc = exec_sql(db, "COMMIT", "cannot finish migration check", err);
cleanup:
  rollback_if_open(db);
  return rc;
}

/* Applies one migration in its own transaction. *done = 1 when it ran (0 when another
 * migrator had applied it meanwhile). */
static int apply_migration(eng_db *db, const char *dir, mig_file *f, int *done, char **err) {
  char *sql = NULL;
  char *emsg = NULL;
  const char *pmsg;
  sqlite3_stmt *st;
  int rc, step;

  *done = 0;
  if ((rc = load_migration(f, &sql, err)) != 0)
    return rc;
  if ((rc = exec_sql(db, "BEGIN IMMEDIATE", "cannot start migration", err)) != 0)
    goto cleanup;
  if (eng_db_prepare(db, SQL_SELECT_MIGRATION, strlen(SQL_SELECT_MIGRATION), &st, &pmsg) != 0) {
    set_err(err, "db: cannot read " ENG_DB_MIGRATIONS_TABLE ": %s", pmsg);
    rc = ENG_EDB;
    goto cleanup;
  }
  sqlite3_bind_int(st, 1, f->id);
  step = sqlite3_step(st);
  if (step == SQLITE_ROW) { /* applied by a concurrent migrator since check_records */
    const char *name = (const char *)sqlite3_column_text(st, 0);
    const char *sum = (const char *)sqlite3_column_text(st, 1);
    rc = check_record(dir, f, f->id, name ? name : "", sum ? sum : "", err);
    sqlite3_reset(st);
    goto cleanup;
  }
  sqlite3_reset(st);
  if (step != SQLITE_DONE) {
    set_err(err, "db: cannot read " ENG_DB_MIGRATIONS_TABLE ": %s", sqlite3_errmsg(db->h));
    rc = ENG_EDB;
    goto cleanup;
  }
  if (sqlite3_exec(db->h, sql, NULL, NULL, &emsg) != SQLITE_OK) {
    set_err(err, "db: migration %s failed: %s", f->name, emsg ? emsg : sqlite3_errmsg(db->h));
    rc = ENG_EDB;
    goto cleanup;
  }
  if (eng_db_prepare(db, SQL_INSERT_MIGRATION, strlen(SQL_INSERT_MIGRATION), &st, &pmsg) != 0) {
    set_err(err, "db: cannot record migration %s: %s", f->name, pmsg);
    rc = ENG_EDB;
    goto cleanup;
  }
  sqlite3_bind_int(st, 1, f->id);
  sqlite3_bind_text(st, 2, f->name, -1, SQLITE_STATIC);
  sqlite3_bind_text(st, 3, f->checksum, -1, SQLITE_STATIC);
  step = sqlite3_step(st);
  sqlite3_reset(st);
  sqlite3_clear_bindings(st);
  if (step != SQLITE_DONE) {
    set_err(err, "db: cannot record migration %s: %s", f->name, sqlite3_errmsg(db->h));
    rc = ENG_EDB;
    goto cleanup;
  }
  if (sqlite3_exec(db->h, "COMMIT", NULL, NULL, NULL) != SQLITE_OK) {
    set_err(err, "db: migration %s failed on commit: %s", f->name, sqlite3_errmsg(db->h));
    rc = ENG_EDB;
    goto cleanup;
  }
  *done = 1;
  eng_log_info("db: applied migration %s (sha256 %.12s)", f->name, f->checksum);
cleanup:
  rollback_if_open(db);
  sqlite3_free(emsg);
  free(sql);
  return rc;
}

int eng_db_migrate(eng_db *db, const char *schema_dir, int *applied, char **err) {
  mig_file *files = NULL;
  size_t n = 0;
  int max_id, done, rc;
  int count = 0;
  eng_dirs dl;

  if (err)
    *err = NULL;
  /* "dir[:dir...]": an overlay of migration directories, numbered as one sequence. */
  if ((rc = eng_dirs_split(&dl, schema_dir)) == ENG_ETOOBIG) {
    rc = eng_errorf(err, ENG_ECONFIG, "db: more than %d schema directories (or a setting too long)", ENG_DIRS_MAX);
    goto cleanup;
  }
  if ((rc = list_migrations(dl.dirs, dl.n, &files, &n, err)) != 0)
    goto cleanup;
  if ((rc = check_records(db, schema_dir, files, n, &max_id, err)) != 0)
    goto cleanup;
  for (size_t i = 0; i < n; i++) {
    if (!files[i].recorded && files[i].id < max_id) {
      set_err(err, "db: migration %s is numbered below migrations already applied (up to %04d)", files[i].name,
              max_id);
      rc = ENG_ECONFIG;
      goto cleanup;
    }
  }
  for (size_t i = 0; i < n; i++) {
    if (files[i].recorded)
      continue;
    if ((rc = apply_migration(db, schema_dir, &files[i], &done, err)) != 0)
      goto cleanup;
    count += done;
  }
cleanup:
  if (applied)
    *applied = count;
  free(files);
  return rc;
}
