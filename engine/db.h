/* db.h - the SQLite connection of one worker: open, statement cache, request cleanup.
 *
 * Migrations (db_migrate.h) work on this connection; this header includes it. db_internal.h
 * holds the eng_db struct.
 *
 * One eng_db per worker thread; a connection is never shared between threads (it is opened
 * in SQLite's multi-thread mode, so SQLite does no locking of its own for it). Workers share
 * only the database file: WAL mode lets readers run beside the one writer, and the busy
 * timeout makes a writer wait for the other instead of failing with "database is locked".
 *
 * Errors: 0 or a negative ENG_E* code (error.h). SQLite's detail travels in *err (malloc'd,
 * the caller frees it) or *errmsg (owned by SQLite), as each function says. */
#ifndef ENG_DB_H
#define ENG_DB_H

#include <stddef.h>
#include <stdint.h>
#include <sqlite3.h>

#define ENG_DB_BUSY_TIMEOUT_DEFAULT_MS 10000
#define ENG_DB_STMT_CACHE_DEFAULT 128
#define ENG_DB_STMT_CACHE_MIN 4
#define ENG_DB_STMT_CACHE_MAX 65536
#define ENG_DB_SQL_MAX_BYTES (1024 * 1024) /* one statement's text */
#define ENG_DB_CACHE_DEFAULT_MB 64         /* page cache per connection (PRAGMA cache_size) */
#define ENG_DB_MMAP_DEFAULT_MB \
  0                              /* memory-mapped reads (PRAGMA mmap_size): off, since faults on the map cost
                                   * ingestion ~35% CPU and reads gained nothing measurable (README) */
#define ENG_DB_SIZE_MAX_MB 65536 /* upper bound for both */
#define ENG_DB_JOURNAL_LIMIT_BYTES (64LL * 1024 * 1024) /* WAL file kept after a reset (journal_size_limit) */
#define ENG_DB_CACHE_ENV "APIENGINE_DB_CACHE_MB"
#define ENG_DB_MMAP_ENV "APIENGINE_DB_MMAP_MB"

typedef struct eng_db eng_db;

typedef struct eng_db_options {
  const char *synchronous; /* "FULL" (default when NULL), "NORMAL", "OFF" */
  int busy_timeout_ms;     /* how long to wait for a lock (retrying every 0.1 ms, after 5 ms every 1 ms);
                            * default ENG_DB_BUSY_TIMEOUT_DEFAULT_MS when 0; negative is ENG_EINVAL */
  int stmt_cache_size;     /* default ENG_DB_STMT_CACHE_DEFAULT when 0; else MIN..MAX, or ENG_EINVAL */
  int cache_mb;            /* page cache in MiB; 0: $APIENGINE_DB_CACHE_MB, else ENG_DB_CACHE_DEFAULT_MB;
                            * negative: SQLite's own default (2 MiB); above ENG_DB_SIZE_MAX_MB: ENG_EINVAL */
  int mmap_mb;             /* mmap window in MiB; 0: $APIENGINE_DB_MMAP_MB, else ENG_DB_MMAP_DEFAULT_MB;
                            * negative: no mmap; above ENG_DB_SIZE_MAX_MB: ENG_EINVAL */
  int no_autocheckpoint;   /* non-zero: commits never checkpoint on this connection (wal_autocheckpoint=0);
                            * for connections beside an eng_db_checkpointer, which does it off the
                            * request path. 0: SQLite's default (a commit that leaves >= 1000 pages in
                            * the WAL checkpoints, in the committing thread) */
} eng_db_options;

/* Opens path (created if missing; ":memory:" allowed) and sets journal_mode=WAL (except for
 * ":memory:" and ""), synchronous, foreign_keys=ON, extended result codes, the busy timeout,
 * cache_size, mmap_size, journal_size_limit (ENG_DB_JOURNAL_LIMIT_BYTES: a WAL file that grew
 * past it is truncated back to it when a writer restarts the log) and, with no_autocheckpoint,
 * wal_autocheckpoint=0. The environment variables APIENGINE_DB_CACHE_MB / APIENGINE_DB_MMAP_MB
 * (a whole number of MiB, 0 = off for mmap; anything else is ENG_EINVAL) apply when the option is 0.
 * A large cache matters for ingestion: inserts at random keys of a big table read and dirty pages
 * all over it; mmap lets reads of clean pages skip the read() copy.
 * opt may be NULL (all defaults). On success *out owns the connection (eng_db_close it).
 * On failure *out is NULL and, when err is not NULL, *err gets a malloc'd message
 * (ENG_EINVAL for bad options, ENG_EDB when SQLite refuses, ENG_ENOMEM). */
int eng_db_open(eng_db **out, const char *path, const eng_db_options *opt, char **err);

/* Finalizes every cached statement, rolls back an open transaction, closes. NULL is a no-op. */
void eng_db_close(eng_db *db);

/* The raw handle, for what this API does not cover. Do not close it or finalize cached statements. */
sqlite3 *eng_db_handle(eng_db *db);

/* Returns in *out the cached prepared statement for exactly this SQL text (len bytes; it need not
 * be NUL-terminated), reset and with its bindings cleared, preparing it on first use. The
 * statement stays owned by the cache: never finalize it. It stays valid until it is evicted,
 * which happens only after stmt_cache_size - 1 other distinct statements have been fetched
 * since its last fetch (least recently used goes first), or until eng_db_close.
 * The text must hold exactly one statement (trailing whitespace, ';' and comments are fine).
 * Errors: ENG_EDB (bad SQL, empty SQL, more than one statement), ENG_ETOOBIG (longer than
 * ENG_DB_SQL_MAX_BYTES), ENG_ENOMEM; *errmsg (if not NULL) then points at a message that stays
 * valid until the next call on db (SQLite's own message when SQLite failed: its extended code is
 * sqlite3_extended_errcode(eng_db_handle(db))). */
int eng_db_prepare(eng_db *db, const char *sql, size_t len, sqlite3_stmt **out, const char **errmsg);

/* Like eng_db_prepare; also stores in *serial (if not NULL) a number unique to this prepared
 * statement in the process (a re-prepared statement after eviction gets a new one), so a layer
 * above can cache data per statement (lua_db caches column names) and tell when it is stale. */
int eng_db_prepare_ex(eng_db *db, const char *sql, size_t len, sqlite3_stmt **out, uint64_t *serial,
                      const char **errmsg);

/* After every request (even one whose handler errored or ran out of budget): resets every cached
 * statement fetched since the last call and rolls back a transaction left open.
 * Returns 1 if it had to roll back, else 0. */
int eng_db_after_request(eng_db *db);

/* ---- the checkpointer ----
 * A thread with its own connection that moves the WAL's pages into the database file, so that no
 * request does it: a commit on a connection opened with no_autocheckpoint only appends to the
 * WAL. Every interval_ms it runs a PASSIVE checkpoint: it copies what no reader still needs and
 * never waits for a lock, so writers and readers go on beside it. Under a steady stream of commits
 * a PASSIVE checkpoint never catches up with the last frame, and a WAL is only rewound by a writer
 * once everything in it was copied: so when the WAL still holds more than restart_bytes after the
 * PASSIVE one, a RESTART checkpoint follows: it waits up to restart_wait_ms for the write lock
 * (between two transactions) and for readers of old snapshots, holds off writers while it copies
 * the few frames the PASSIVE one left, and the next commit then writes from the start of the
 * file (cut back to ENG_DB_JOURNAL_LIMIT_BYTES if it grew past it). If it cannot get them in time
 * it tries again at the next tick; once the WAL holds more than ENG_DB_CHECKPOINT_HARD_BYTES it
 * waits up to ENG_DB_CHECKPOINT_HARD_WAIT_MS, so the WAL stays bounded under any write load.
 * Stopping it runs a TRUNCATE checkpoint (waiting up to ENG_DB_CHECKPOINT_FINAL_WAIT_MS), so a
 * clean exit leaves an empty WAL.
 * It also saves the workers' reads their system calls: between two checkpoints that copied
 * everything it holds a read transaction open, so that a worker's read transaction takes and
 * drops its wal-index read lock inside the process instead of with two fcntl() calls; and at
 * start it commits one no-op write (user_version set to its own value), so that readers know the
 * database's size without an fstat() each (db.c says why both are safe). Readers still see every
 * commit at once; the anchor is let go before each checkpoint. */

#define ENG_DB_CHECKPOINT_INTERVAL_MS 100
#define ENG_DB_FOLD_CHUNKS_PER_PASS 8 /* fold transactions (db_levels.h) between two checkpoints */
#define ENG_DB_FOLD_WAIT_MS 200       /* how long one waits for the write lock */
#define ENG_DB_FOLD_PAUSE_US 3000     /* between two of them, so that a waiting worker gets the lock */
#define ENG_DB_CHECKPOINT_RESTART_BYTES (32LL * 1024 * 1024)
#define ENG_DB_CHECKPOINT_RESTART_WAIT_MS 100
#define ENG_DB_CHECKPOINT_HARD_BYTES (256LL * 1024 * 1024) /* past it a RESTART waits up to ... */
#define ENG_DB_CHECKPOINT_HARD_WAIT_MS 2000                /* ... this long, so the WAL stays bounded */
#define ENG_DB_CHECKPOINT_FINAL_WAIT_MS 2000

typedef struct eng_db_checkpointer eng_db_checkpointer;

typedef struct eng_db_checkpointer_options {
  const char *synchronous; /* as eng_db_options (FULL when NULL): FULL syncs the database file after each copy */
  int interval_ms;         /* between PASSIVE checkpoints; 0: ENG_DB_CHECKPOINT_INTERVAL_MS; 1..60000 */
  long long restart_bytes; /* 0: ENG_DB_CHECKPOINT_RESTART_BYTES; negative is ENG_EINVAL */
  int restart_wait_ms;     /* 0: ENG_DB_CHECKPOINT_RESTART_WAIT_MS; negative is ENG_EINVAL */
} eng_db_checkpointer_options;

/* What a checkpointer has done so far (read at any time, from any thread). */
typedef struct eng_db_checkpoint_stats {
  unsigned long long passive;  /* PASSIVE checkpoints that copied at least one frame */
  unsigned long long restarts; /* RESTART checkpoints that completed (and the final TRUNCATE one) */
  unsigned long long busy;     /* RESTART checkpoints that gave up waiting (tried again later) */
  long long wal_frames_max;    /* the most frames seen in the WAL at a checkpoint */
} eng_db_checkpoint_stats;

/* Opens its own connection to path (a file: ":memory:" and "" are ENG_EINVAL; the database must
 * exist and be in WAL mode, or ENG_EDB) and starts the thread. opt may be NULL (defaults).
 * On success *out owns it: eng_db_checkpointer_stop it. On failure *out is NULL and *err (if not
 * NULL) gets a malloc'd message. */
int eng_db_checkpointer_start(eng_db_checkpointer **out, const char *path, const eng_db_checkpointer_options *opt,
                              char **err);

/* Copies the counters into *out. */
void eng_db_checkpointer_stats(eng_db_checkpointer *cp, eng_db_checkpoint_stats *out);

/* Wakes the thread, which runs the final TRUNCATE checkpoint, then joins it, logs its counts
 * (one info line), closes its connection and frees cp. Call it after the other connections of
 * this process are closed or idle; connections of another process (a server started with
 * --handover) that keep the WAL busy past ENG_DB_CHECKPOINT_FINAL_WAIT_MS get it left to them.
 * NULL is a no-op. */
void eng_db_checkpointer_stop(eng_db_checkpointer *cp);

/* The rest of the storage API, in its own headers: included here so that a caller of the
 * connection gets all of it with one include. */
#include "db_migrate.h"

#endif
