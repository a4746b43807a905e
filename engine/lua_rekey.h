/* lua_rekey.h - re-sealing stored secrets under the current server key (`apiengine rekey`).
 *
 * The scripts say which columns hold sealed secrets (crypto.sealed_column, lua_crypto.h), and
 * how their associated data is made; this walks those columns in rowid order, in batches, each
 * batch one short BEGIN IMMEDIATE transaction, and re-seals under the current key every value a
 * previous key sealed. A value the current key sealed is left alone, so a run that stopped
 * half-way (killed, a busy database) is resumed by running it again, and a server that writes
 * meanwhile is only held up for one batch. */
#ifndef ENG_LUA_REKEY_H
#define ENG_LUA_REKEY_H

#include <stdio.h>

#include <lua.h>

#include "db.h"

#define ENG_REKEY_BATCH_DEFAULT 200 /* rows read per transaction */
#define ENG_REKEY_BATCH_MAX 100000

typedef struct eng_rekey_stats {
  int columns;          /* declared columns walked */
  long long rows;       /* rows read (a NULL value counts as read) */
  long long resealed;   /* values re-sealed under the current key */
  long long current;    /* values the current key had sealed already */
  long long unopenable; /* values no loaded key opens (logged with table, column and rowid) */
} eng_rekey_stats;

/* Re-seals every column declared in L (a runtime's state whose scripts have loaded) on db,
 * batch rows per transaction (1..ENG_REKEY_BATCH_MAX), sleeping pause_ms after each (0: none,
 * else up to 60000) so that a busy server gets the database between them. One progress line per batch goes to
 * progress (may be NULL). *stats is filled as far as the run got. Returns 0, or ENG_EDB (a SQL
 * error: a declared table or column that does not exist, a lock held past the busy timeout),
 * ENG_ELUA (an aad function raised or returned something other than a string), ENG_EINVAL (no
 * key loaded, bad batch) with a malloc'd *err; the batch that failed is rolled back, the ones
 * before it stay. Not thread-safe (L and db belong to the caller's thread). */
int eng_rekey_run(lua_State *L, eng_db *db, int batch, int pause_ms, FILE *progress, eng_rekey_stats *stats,
                  char **err);

#endif
