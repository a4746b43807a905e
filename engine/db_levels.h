/* db_levels.h - leveled key tables: uniqueness held by the database at a few dirty pages per
 * thousand inserts, whatever order the keys arrive in (issue 15, item 4).
 *
 * A unique index on random keys (CallSids) dirties about one page per insert once the index is
 * larger than a batch: a batch of 1,000 writes ~1,000 pages to the WAL and again at the
 * checkpoint. A leveled key table spreads the same keys over a few levels of one B-tree,
 *
 *   CREATE TABLE t (lvl INTEGER NOT NULL, h INTEGER NOT NULL, seq INTEGER NOT NULL,
 *                   PRIMARY KEY (lvl, h, seq)) WITHOUT ROWID;
 *
 * where h is a 64-bit hash of the key (engine_key64(), below) and seq the rowid of the row that
 * holds the key. New keys go to level 0, which is kept small (its pages stay few and hot), and a
 * background fold moves a level into the next one in key order, a chunk per transaction, once it
 * has grown past its limit (l0 * fanout^level): sorted runs that rewrite each page of the next
 * level once per fold instead of once per key. A lookup probes every level.
 * Which tables are leveled is the schema's business: it lists them in
 *
 *   CREATE TABLE _engine_levels (tbl TEXT PRIMARY KEY, l0 INTEGER NOT NULL,
 *                                fanout INTEGER NOT NULL, levels INTEGER NOT NULL);
 *
 * and keeps them by triggers (schema/0008_callsid_levels.sql does it for calls): the engine only
 * provides the hash and the fold. Folds never change what a lookup finds: a chunk leaves level k
 * and enters level k+1 in one transaction.
 *
 * Errors: 0 or a negative ENG_E* code (error.h). */
#ifndef ENG_DB_LEVELS_H
#define ENG_DB_LEVELS_H

#include <stddef.h>
#include <stdint.h>
#include <sqlite3.h>

#define ENG_LEVELS_MAX 8         /* levels of one table */
#define ENG_LEVELS_TABLES_MAX 8  /* tables listed in _engine_levels that one folder follows */
#define ENG_LEVELS_CHUNK 4096    /* entries moved by one fold transaction */
#define ENG_LEVELS_KEY_MAX 65536 /* bytes of one engine_key64() argument */

/* SipHash-2-4 with the engine's fixed key: stable across versions and machines, since the values
 * are stored. Not a secret: a collision costs one extra row lookup, never a wrong answer, because
 * every lookup also compares the key itself. */
uint64_t eng_key64(const void *data, size_t len);
uint64_t eng_siphash24(const uint8_t key[16], const void *data, size_t len);

/* Registers engine_key64(arg, ...) on h: deterministic and innocuous (usable in triggers and
 * indexes). Each argument is framed by its type and length before hashing, so ('ab', 'c') and
 * ('a', 'bc') differ; NULL hashes as a value of its own. Returns SQLite's code. */
int eng_db_levels_register(sqlite3 *h);

/* A folder: the fold state of the leveled tables of one database, for one connection that it uses
 * alone (the checkpointer's second connection, or a test's). */
typedef struct eng_db_levels eng_db_levels;

typedef struct eng_db_levels_stats {
  unsigned long long chunks; /* fold transactions committed */
  unsigned long long moved;  /* entries moved a level down */
  unsigned long long folds;  /* levels folded completely */
  unsigned long long busy;   /* chunks put off because a writer held the lock past the wait */
} eng_db_levels_stats;

/* h must stay open while the folder lives; engine_key64 need not be registered on it. */
int eng_db_levels_new(eng_db_levels **out, sqlite3 *h);
/* Sleep pause_us between two chunks of one pass (0 by default): a chunk holds the write lock for a
 * few ms, and a writer waiting for it may poll less often than this connection's busy handler, so
 * back-to-back chunks would win the lock every time and hold the writer up for all of them. */
void eng_db_levels_set_pause(eng_db_levels *lv, int pause_us);
void eng_db_levels_free(eng_db_levels *lv);

/* One pass: reads _engine_levels (nothing to do when it does not exist), counts the levels it has
 * to (level 0 each pass; a deeper one after a fold into it, and each once at the first pass), and
 * moves at most max_chunks chunks of the levels that have passed their limit, level 0 first.
 * Returns 1 when a fold is still under way (call again soon), 0 when every level is within its
 * limit, or a negative code; *err (if not NULL) gets a malloc'd message then. A busy database
 * (a writer holding the lock longer than the connection's busy handler waits) is not an error: the
 * chunk is tried again at the next pass. */
int eng_db_levels_pass(eng_db_levels *lv, int max_chunks, char **err);

void eng_db_levels_get_stats(const eng_db_levels *lv, eng_db_levels_stats *out);

#endif
