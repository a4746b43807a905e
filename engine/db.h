/* db.h - the SQLite connection of one worker: open, statement cache, request cleanup, migrations.
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
#define ENG_DB_SQL_MAX_BYTES (1024 * 1024)             /* one statement's text */
#define ENG_DB_MIGRATION_MAX_BYTES (16 * 1024 * 1024)  /* one migration file */
#define ENG_DB_MIGRATIONS_TABLE "_migrations"
#define ENG_DB_CACHE_DEFAULT_MB 64   /* page cache per connection (PRAGMA cache_size) */
#define ENG_DB_MMAP_DEFAULT_MB 1024  /* memory-mapped reads of the database file (PRAGMA mmap_size) */
#define ENG_DB_SIZE_MAX_MB 65536     /* upper bound for both */
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
} eng_db_options;

/* Opens path (created if missing; ":memory:" allowed) and sets journal_mode=WAL (except for
 * ":memory:" and ""), synchronous, foreign_keys=ON, extended result codes, the busy timeout,
 * cache_size and mmap_size. The environment variables APIENGINE_DB_CACHE_MB / APIENGINE_DB_MMAP_MB
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

/* ---- key sets ----
 * An exact in-memory set of (group, key) text pairs mirroring an append-only table, so that
 * "insert if new" for keys that arrive in random order (CallSids) reads memory instead of
 * writing a unique index at random places: with a B-tree keyed by random text, every one of a
 * batch's 1000 inserts dirties its own page (~4 MB of WAL per commit, written again at the
 * checkpoint), while the appended rows fill ~40 pages. The set belongs to its connection (one
 * per worker), lives until eng_db_close and costs ~70 bytes per pair. */
#define ENG_DB_KEYSETS_MAX 4                            /* distinct scan statements per connection */
#define ENG_DB_KEYSET_BYTES_MAX ((size_t)0xffffffffu)   /* key bytes per set (32-bit offsets) */

typedef struct eng_db_keyset eng_db_keyset;

/* Finds or creates the set named by scan_sql (its exact text; len bytes) and brings it up to
 * date: runs scan_sql with ?1 = the highest id seen so far (0 at first) and adds every row
 * (id INTEGER, group TEXT, key TEXT). The rows must come in increasing id order, and ids must
 * never be reused (INTEGER PRIMARY KEY AUTOINCREMENT), so that a row committed later always has a
 * higher id than every row already seen. Call it only when all the rows it can see are committed:
 * outside a transaction, or in a write transaction before that transaction wrote to the scanned
 * table (an uncommitted row that is then rolled back would stay in the set). Under BEGIN
 * IMMEDIATE, after a sync, "not in the set" is exact until the transaction ends. Rows deleted
 * later stay in the set (their ids are not reused, so this only matters if their pair is
 * inserted again). Rows added before an error stay added. *out (if not NULL) gets the set.
 * Errors: ENG_EDB (bad SQL, or SQLite failed while scanning), ENG_EINVAL (a row that is not
 * integer, text, text), ENG_ETOOBIG (more than ENG_DB_KEYSETS_MAX sets, or more than
 * ENG_DB_KEYSET_BYTES_MAX bytes in one), ENG_ENOMEM; *errmsg as for eng_db_prepare. */
int eng_db_keyset_sync(eng_db *db, const char *scan_sql, size_t len, eng_db_keyset **out, const char **errmsg);

/* The id of group in ks (glen bytes), or 0 when ks has no pair of that group. Valid until
 * eng_db_close. */
uint32_t eng_db_keyset_group(const eng_db_keyset *ks, const char *group, size_t glen);

/* 1 if (the group of group_id, key) is in ks, else 0 (always 0 for group_id 0). */
int eng_db_keyset_has(const eng_db_keyset *ks, uint32_t group_id, const char *key, size_t klen);

/* The number of distinct pairs in ks. */
size_t eng_db_keyset_count(const eng_db_keyset *ks);

/* Applies schema_dir/NNNN_name.sql files (4 digits, '_', a non-empty name, ".sql"; other names
 * are ignored) in number order, each in its own BEGIN IMMEDIATE transaction together with its
 * record in _migrations(id, name, checksum, applied_at), checksum = hex SHA-256 of the file bytes.
 * Safe to run from several processes or threads at once (each connection its own): BEGIN
 * IMMEDIATE serialises them and a migration applied meanwhile by another is skipped.
 * Refuses with ENG_ECONFIG, before applying anything, when: the db records a migration the
 * directory does not have; a recorded migration's file changed ("migration 0002_x.sql was changed
 * after it was applied"); two files share a number; a new file's number is below an applied one.
 * A failing migration is rolled back fully (ENG_EDB; the message names the file and SQLite's
 * error); the ones before it stay applied. ENG_EIO when the directory or a file can't be read.
 * *applied (if not NULL) gets the number of newly applied files, also on error. *err (if not
 * NULL) gets a malloc'd message on failure. Logs one info line per applied migration.
 * schema_dir may name up to 16 directories separated by ':' (an overlay, e.g. the default
 * schema plus an operator's own): their files form one numbered sequence, and a number used in
 * two of them is refused like two files with one number. */
int eng_db_migrate(eng_db *db, const char *schema_dir, int *applied, char **err);

#endif
