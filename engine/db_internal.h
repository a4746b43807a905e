/* db_internal.h - what the files of the connection layer share: the eng_db struct (db.c owns
 * it; db_keyset.c keeps its key sets in it). Not for callers outside db.c and db_keyset.c: they
 * use db.h, db_keyset.h and db_migrate.h. */
#ifndef ENG_DB_INTERNAL_H
#define ENG_DB_INTERNAL_H

#include <stddef.h>
#include <stdint.h>
#include <sqlite3.h>

#include "db.h"
#include "db_keyset.h"

typedef struct stmt_entry stmt_entry; /* one cached statement (db.c) */

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

/* Frees ks and everything it holds (db_keyset.c). NULL is a no-op. eng_db_close calls it for
 * each of the connection's sets. */
void eng_db_keyset_free(eng_db_keyset *ks);

#endif
