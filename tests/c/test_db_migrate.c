/* test_db_migrate.c - SQLite's side of the files shared with PostgreSQL: *.pg.sql files are
 * PostgreSQL's variants and never SQLite migrations (applied, listed as pending, or counted as
 * a second file of a number). The rest of SQLite's migrations are in test_db.c. */
#define _XOPEN_SOURCE 700
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "check.h"
#include "tmpdir.h"
#include "query_int.h"
#include "db.h"
#include "db_migrate.h"
#include "error.h"

static void test_sqlite_ignores_pg_variants(void) {
  eng_db *db = NULL;
  eng_db_state st;
  char *err = NULL;
  int applied = -1;
  char dir[256];
  snprintf(dir, sizeof dir, "%s", path_in("schema"));
  mkdir(dir, 0700);
  write_file("schema/0001_init.sql", "CREATE TABLE a (id INTEGER PRIMARY KEY);\n");
  /* PostgreSQL syntax SQLite would refuse: it must never run */
  write_file("schema/0001_init.pg.sql", "CREATE TABLE a (id BIGSERIAL PRIMARY KEY) WITH (fillfactor = 90);\n");
  write_file("schema/0002_pgonly.pg.sql", "CREATE EXTENSION nothing_like_this;\n");
  write_file("schema/0003_b.sql", "CREATE TABLE b (x INTEGER);\n");

  /* before: eng_db_inspect lists only the .sql files as pending */
  CHECK_INT(eng_db_inspect(path_in("m.db"), dir, &st, &err), 0);
  CHECK(err == NULL);
  CHECK_INT(st.npending, 2);
  if (st.npending == 2) {
    CHECK(strstr(st.pending[0], "/0001_init.sql") != NULL);
    CHECK(strstr(st.pending[1], "/0003_b.sql") != NULL);
  }
  eng_db_state_free(&st);

  CHECK_INT(eng_db_open(&db, path_in("m.db"), NULL, NULL), 0);
  if (!db)
    return;
  sqlite3 *h = eng_db_handle(db);
  CHECK_INT(eng_db_migrate(db, dir, &applied, &err), 0);
  CHECK(err == NULL);
  free(err);
  err = NULL;
  CHECK_INT(applied, 2);
  CHECK_INT(query_int(h, "SELECT count(*) FROM _migrations"), 2);
  CHECK_INT(query_int(h, "SELECT count(*) FROM _migrations WHERE id = 1 AND name = '0001_init.sql'"), 1);
  CHECK_INT(query_int(h, "SELECT count(*) FROM _migrations WHERE id = 3 AND name = '0003_b.sql'"), 1);
  CHECK_INT(query_int(h, "SELECT count(*) FROM _migrations WHERE id = 2"), 0);

  /* a later .pg.sql numbered below what is applied is not "out of order" for SQLite */
  write_file("schema/0002_late.pg.sql", "SELECT 1;\n");
  applied = -1;
  CHECK_INT(eng_db_migrate(db, dir, &applied, &err), 0);
  CHECK(err == NULL);
  free(err);
  CHECK_INT(applied, 0);
  eng_db_close(db);
}

int main(void) {
  if (tmpdir_make("/tmp/test_db_migrate.XXXXXX") != 0)
    return 1;
  test_sqlite_ignores_pg_variants();
  tmpdir_remove();
  return check_summary("test_db_migrate");
}
