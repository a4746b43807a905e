/* db_keyset.h - key sets: exact in-memory sets of (group, key) text pairs mirroring an
 * append-only table, so that "insert if new" for keys that arrive in random order (CallSids)
 * reads memory instead of writing a unique index at random places: with a B-tree keyed by
 * random text, every one of a batch's 1000 inserts dirties its own page (~4 MB of WAL per
 * commit, written again at the checkpoint), while the appended rows fill ~40 pages. The set
 * belongs to its connection (one per worker), lives until eng_db_close and costs ~70 bytes per
 * pair.
 *
 * The functions take the connection of db.h; errors are 0 or a negative ENG_E* code (error.h),
 * with the detail in *errmsg as each function says. */
#ifndef ENG_DB_KEYSET_H
#define ENG_DB_KEYSET_H

#include <stddef.h>
#include <stdint.h>

typedef struct eng_db eng_db; /* db.h */

#define ENG_DB_KEYSETS_MAX 4                          /* distinct scan statements per connection */
#define ENG_DB_KEYSET_BYTES_MAX ((size_t)0xffffffffu) /* key bytes per set (32-bit offsets) */

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

#endif
