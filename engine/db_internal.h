/* db_internal.h - what the files of the connection layer share: the eng_db struct (db.c owns
 * it). Not for callers outside db.c and db_migrate.c: they use db.h and db_migrate.h. */
#ifndef ENG_DB_INTERNAL_H
#define ENG_DB_INTERNAL_H

#include <stddef.h>
#include <stdint.h>
#include <sqlite3.h>

#include "db.h"

typedef struct stmt_entry stmt_entry; /* one cached statement (db.c) */

struct eng_db {
  sqlite3 *h;
  int busy_timeout_ms;
  int64_t busy_since_us; /* when the current wait for a lock began */
  stmt_entry **buckets;
  size_t nbuckets; /* power of two */
  stmt_entry *lru_head, *lru_tail;
  int count, cap;
  stmt_entry **dirty; /* fetched since the last eng_db_after_request; at most cap entries */
  int ndirty;
};

#endif
