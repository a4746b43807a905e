/* query_int.h - query_int(h, sql): the first column of the first row of sql as an integer, or
 * -999 when it fails or has no row. Header-only, for the C tests that read SQLite state back. */
#ifndef ENG_TEST_QUERY_INT_H
#define ENG_TEST_QUERY_INT_H

#include <sqlite3.h>

static inline long long query_int(sqlite3 *h, const char *sql) {
  sqlite3_stmt *st = NULL;
  long long v = -999;
  if (sqlite3_prepare_v2(h, sql, -1, &st, NULL) == SQLITE_OK && sqlite3_step(st) == SQLITE_ROW)
    v = sqlite3_column_int64(st, 0);
  sqlite3_finalize(st);
  return v;
}

#endif
