/* db_migrate.c - schema migrations (db_migrate.h): list the numbered files of the schema
 * directories, checksum them, check the records of what was applied, apply the rest in order.
 *
 * Everything here goes through the public connection API (db.h): the statement cache for the
 * record queries, eng_db_handle for sqlite3_exec of a migration's text. */
#include "db_migrate.h"

#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "crypto.h"
#include "db.h"
#include "error.h"
#include "files.h"
#include "log.h"

#define MIGRATION_FILES_MAX 10000 /* four digits: more files than numbers means duplicates */
#define MIGRATION_NAME_MAX ENG_MIG_NAME_MAX

#define SHA256_HEX_LEN (2 * ENG_CRYPTO_SHA256_LEN)

typedef eng_mig_file mig_file;

#define PG_SUFFIX ".pg.sql"
#define PG_SUFFIX_LEN (sizeof PG_SUFFIX - 1)

static int is_pg_variant(const char *name, size_t n) {
  return n >= PG_SUFFIX_LEN && strcmp(name + n - PG_SUFFIX_LEN, PG_SUFFIX) == 0;
}

/* NNNN_name.sql: four digits, '_', at least one character, ".sql". Returns the number or -1.
 * NNNN_name.pg.sql is PostgreSQL's variant: not a migration for SQLite, one for PostgreSQL
 * (with a non-empty name before ".pg.sql"). */
static int migration_number(const char *name, eng_mig_backend backend) {
  size_t n = strlen(name);
  if (n < 10 || n > MIGRATION_NAME_MAX || name[4] != '_' || strcmp(name + n - 4, ".sql") != 0)
    return -1;
  if (is_pg_variant(name, n) && (backend != ENG_MIG_PG || n < 5 + 1 + PG_SUFFIX_LEN))
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
  unsigned char md[ENG_CRYPTO_SHA256_LEN];
  if (eng_crypto_sha256(data, len, md) != 0)
    return ENG_ECRYPTO;
  out[eng_crypto_hex_encode(md, sizeof md, out)] = '\0';
  return 0;
}

/* Reads and checksums one file; *data is the text to run (malloc'd, caller frees). */
static int load_migration(mig_file *f, char **data, char **err) {
  size_t len = 0;
  int rc = read_migration(f->dir, f->name, data, &len, err);
  if (rc)
    return rc;
  if (memchr(*data, '\0', len))
    rc = eng_errorf(err, ENG_ECONFIG, "db: migration %s contains a NUL byte", f->name);
  else if (sha256_hex(*data, len, f->checksum) != 0)
    rc = eng_errorf(err, ENG_ECRYPTO, "db: cannot checksum migration %s", f->name);
  if (rc) {
    free(*data);
    *data = NULL;
  }
  return rc;
}

/* The .sql file that a .pg.sql of the same directory and name replaces on PostgreSQL leaves the
 * list (files sorted); returns the new count. */
static size_t drop_replaced(mig_file *files, size_t n) {
  size_t out = 0;
  for (size_t i = 0; i < n; i++) {
    int replaced = 0;
    size_t len = strlen(files[i].name);
    if (!is_pg_variant(files[i].name, len)) {
      for (size_t j = 0; j < n && !replaced; j++) {
        size_t lj = strlen(files[j].name);
        replaced = j != i && files[j].id == files[i].id && files[j].dir == files[i].dir &&
                   is_pg_variant(files[j].name, lj) && lj - PG_SUFFIX_LEN == len - 4 &&
                   memcmp(files[j].name, files[i].name, len - 4) == 0;
      }
    }
    if (!replaced)
      files[out++] = files[i];
  }
  return out;
}

/* Lists the migrations of every directory in dirs (ndirs of them), sorted by number;
 * the same number twice, in one directory or across them, is an error. */
static int list_migrations(char *const *dirs, int ndirs, eng_mig_backend backend, mig_file **out, size_t *count,
                           char **err) {
  mig_file *files = NULL;
  size_t n = 0, cap = 0;
  int rc = 0;
  struct dirent *de;
  char *data = NULL;
  DIR *d = NULL;

  for (int di = 0; di < ndirs; di++) {
    const char *dir = dirs[di];
    if ((d = opendir(dir)) == NULL) {
      rc = eng_errorf(err, ENG_EIO, "db: cannot open schema directory %s: %s", dir, strerror(errno));
      goto cleanup;
    }
    while ((de = readdir(d)) != NULL) {
      int id = migration_number(de->d_name, backend);
      if (id < 0)
        continue;
      char path[4096];
      struct stat sb;
      if (snprintf(path, sizeof path, "%s/%s", dir, de->d_name) >= (int)sizeof path || stat(path, &sb) != 0 ||
          !S_ISREG(sb.st_mode))
        continue;
      if (n == MIGRATION_FILES_MAX) {
        rc = eng_errorf(err, ENG_ECONFIG, "db: more than %d migration files in %s", MIGRATION_FILES_MAX, dir);
        goto cleanup;
      }
      if (n == cap) {
        size_t ncap = cap ? cap * 2 : 16;
        mig_file *nf = realloc(files, ncap * sizeof *nf);
        if (!nf) {
          rc = eng_errorf(err, ENG_ENOMEM, "db: out of memory listing %s", dir);
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
  if (backend == ENG_MIG_PG)
    n = drop_replaced(files, n);
  for (size_t i = 1; i < n; i++) {
    if (files[i].id == files[i - 1].id) {
      if (files[i].dir == files[i - 1].dir)
        rc = eng_errorf(err, ENG_ECONFIG, "db: migrations %s and %s share the number %04d", files[i - 1].name,
                        files[i].name, files[i].id);
      else
        rc = eng_errorf(err, ENG_ECONFIG, "db: migrations %s/%s and %s/%s share the number %04d", files[i - 1].dir,
                        files[i - 1].name, files[i].dir, files[i].name, files[i].id);
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
  sqlite3 *h = eng_db_handle(db);
  if (!sqlite3_get_autocommit(h))
    sqlite3_exec(h, "ROLLBACK", NULL, NULL, NULL);
}

static int exec_sql(eng_db *db, const char *sql, const char *what, char **err) {
  sqlite3 *h = eng_db_handle(db);
  if (sqlite3_exec(h, sql, NULL, NULL, NULL) == SQLITE_OK)
    return 0;
  return eng_errorf(err, ENG_EDB, "db: %s: %s", what, sqlite3_errmsg(h));
}

#define SQL_CREATE_MIGRATIONS                                                                            \
  "CREATE TABLE IF NOT EXISTS " ENG_DB_MIGRATIONS_TABLE " (id INTEGER PRIMARY KEY, name TEXT NOT NULL, " \
  "checksum TEXT NOT NULL, applied_at TEXT NOT NULL)"
#define SQL_SELECT_MIGRATIONS "SELECT id, name, checksum FROM " ENG_DB_MIGRATIONS_TABLE " ORDER BY id"
#define SQL_SELECT_MIGRATION "SELECT name, checksum FROM " ENG_DB_MIGRATIONS_TABLE " WHERE id = ?1"
#define SQL_INSERT_MIGRATION                                                  \
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

/* Compares a recorded migration with the directory's file of that number; a mismatch says what
 * to do about it. */
static int check_record(const char *dir, mig_file *f, int id, const char *name, const char *checksum, char **err) {
  if (!f)
    return eng_errorf(err, ENG_ECONFIG,
                      "db: the database records migration %s (id %d), which is not in %s: if it came from another "
                      "schema directory (an overlay: --schema schema:my-schema), give the same --schema as the "
                      "start that applied it; an applied migration file is never removed",
                      name, id, dir);
  if (strcmp(f->name, name) != 0)
    return eng_errorf(err, ENG_ECONFIG,
                      "db: the database records migration %s (id %d), which is not in %s: %s/%s has that number now; "
                      "if it was renamed, give it back its name (the database records names and checksums)",
                      name, id, dir, f->dir, f->name);
  if (strcmp(f->checksum, checksum) != 0)
    return eng_errorf(err, ENG_ECONFIG,
                      "db: migration %s/%s was changed after it was applied (sha256 %.12s when applied, %.12s now): "
                      "put the file back as it was (from version control or the release it came with) and make the "
                      "change in a new migration numbered after the last one",
                      f->dir, f->name, checksum, f->checksum);
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
    rc = eng_errorf(err, ENG_EDB, "db: cannot read " ENG_DB_MIGRATIONS_TABLE ": %s", emsg);
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
  if (!rc && step != SQLITE_DONE)
    rc = eng_errorf(err, ENG_EDB, "db: cannot read " ENG_DB_MIGRATIONS_TABLE ": %s", sqlite3_errmsg(eng_db_handle(db)));
  sqlite3_reset(st);
  if (!rc)
    rc = exec_sql(db, "COMMIT", "cannot finish migration check", err);
cleanup:
  rollback_if_open(db);
  return rc;
}

/* Where the statement starting at or after p really starts: past blanks and SQL comments. */
static const char *skip_blanks(const char *p) {
  for (;;) {
    while (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r' || *p == '\f' || *p == '\v')
      p++;
    if (p[0] == '-' && p[1] == '-') {
      while (*p && *p != '\n')
        p++;
    } else if (p[0] == '/' && p[1] == '*') {
      const char *end = strstr(p + 2, "*/");
      p = end ? end + 2 : p + strlen(p);
    } else {
      return p;
    }
  }
}

static int line_of(const char *text, const char *at) {
  int line = 1;
  for (const char *p = text; p < at; p++)
    line += *p == '\n';
  return line;
}

/* Runs a migration's statements one at a time (as sqlite3_exec would), so that a failure names
 * the file and the line where the failing statement starts. */
static int exec_migration(sqlite3 *h, const mig_file *f, const char *sql, char **err) {
  const char *p = sql;
  while (*(p = skip_blanks(p)) != '\0') {
    sqlite3_stmt *st = NULL;
    const char *tail = NULL;
    int rc = sqlite3_prepare_v2(h, p, -1, &st, &tail);
    while (rc == SQLITE_OK && st && (rc = sqlite3_step(st)) == SQLITE_ROW) {
    }
    if (rc != SQLITE_OK && rc != SQLITE_DONE) {
      rc = eng_errorf(err, ENG_EDB, "db: migration %s/%s:%d failed: %s", f->dir, f->name, line_of(sql, p),
                      sqlite3_errmsg(h));
      sqlite3_finalize(st);
      return rc;
    }
    sqlite3_finalize(st);
    if (tail == NULL || tail == p)
      break; /* nothing consumed: only what SQLite skips was left */
    p = tail;
  }
  return 0;
}

/* Applies one migration in its own transaction. *done = 1 when it ran (0 when another
 * migrator had applied it meanwhile). */
static int apply_migration(eng_db *db, const char *dir, mig_file *f, int quiet, int *done, char **err) {
  sqlite3 *h = eng_db_handle(db);
  char *sql = NULL;
  const char *pmsg;
  sqlite3_stmt *st;
  int rc, step;

  *done = 0;
  if ((rc = load_migration(f, &sql, err)) != 0)
    return rc;
  if ((rc = exec_sql(db, "BEGIN IMMEDIATE", "cannot start migration", err)) != 0)
    goto cleanup;
  if (eng_db_prepare(db, SQL_SELECT_MIGRATION, strlen(SQL_SELECT_MIGRATION), &st, &pmsg) != 0) {
    rc = eng_errorf(err, ENG_EDB, "db: cannot read " ENG_DB_MIGRATIONS_TABLE ": %s", pmsg);
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
    rc = eng_errorf(err, ENG_EDB, "db: cannot read " ENG_DB_MIGRATIONS_TABLE ": %s", sqlite3_errmsg(h));
    goto cleanup;
  }
  if ((rc = exec_migration(h, f, sql, err)) != 0)
    goto cleanup;
  if (eng_db_prepare(db, SQL_INSERT_MIGRATION, strlen(SQL_INSERT_MIGRATION), &st, &pmsg) != 0) {
    rc = eng_errorf(err, ENG_EDB, "db: cannot record migration %s: %s", f->name, pmsg);
    goto cleanup;
  }
  sqlite3_bind_int(st, 1, f->id);
  sqlite3_bind_text(st, 2, f->name, -1, SQLITE_STATIC);
  sqlite3_bind_text(st, 3, f->checksum, -1, SQLITE_STATIC);
  step = sqlite3_step(st);
  sqlite3_reset(st);
  sqlite3_clear_bindings(st);
  if (step != SQLITE_DONE) {
    rc = eng_errorf(err, ENG_EDB, "db: cannot record migration %s: %s", f->name, sqlite3_errmsg(h));
    goto cleanup;
  }
  if (sqlite3_exec(h, "COMMIT", NULL, NULL, NULL) != SQLITE_OK) {
    rc = eng_errorf(err, ENG_EDB, "db: migration %s failed on commit: %s", f->name, sqlite3_errmsg(h));
    goto cleanup;
  }
  *done = 1;
  if (!quiet)
    eng_log_info("db: applied migration %s (sha256 %.12s)", f->name, f->checksum);
cleanup:
  rollback_if_open(db);
  free(sql);
  return rc;
}

int eng_db_migrate(eng_db *db, const char *schema_dir, int *applied, char **err) {
  return eng_db_migrate_ex(db, schema_dir, NULL, applied, err);
}

/* The files not recorded must all come after the recorded ones. */
static int check_order(const mig_file *files, size_t n, int max_id, char **err) {
  for (size_t i = 0; i < n; i++) {
    if (!files[i].recorded && files[i].id < max_id)
      return eng_errorf(err, ENG_ECONFIG, "db: migration %s is numbered below migrations already applied (up to %04d)",
                        files[i].name, max_id);
  }
  return 0;
}

/* The schema setting split into directories (none: no migrations). */
static int split_schema(eng_dirs *dl, const char *schema_dir, char **err) {
  if (eng_dirs_split(dl, schema_dir) == ENG_ETOOBIG)
    return eng_errorf(err, ENG_ECONFIG, "db: more than %d schema directories (or a setting too long)", ENG_DIRS_MAX);
  return 0;
}

int eng_db_migrate_ex(eng_db *db, const char *schema_dir, const eng_db_migrate_options *opt, int *applied, char **err) {
  eng_db_migrate_options o = opt ? *opt : (eng_db_migrate_options){0};
  mig_file *files = NULL;
  size_t n = 0;
  int max_id, done, rc;
  int count = 0;
  eng_dirs dl;

  if (err)
    *err = NULL;
  /* "dir[:dir...]": an overlay of migration directories, numbered as one sequence. */
  if ((rc = split_schema(&dl, schema_dir, err)) != 0)
    goto cleanup;
  if ((rc = list_migrations(dl.dirs, dl.n, ENG_MIG_SQLITE, &files, &n, err)) != 0)
    goto cleanup;
  if ((rc = check_records(db, schema_dir, files, n, &max_id, err)) != 0)
    goto cleanup;
  if ((rc = check_order(files, n, max_id, err)) != 0)
    goto cleanup;
  for (size_t i = 0; i < n; i++) {
    if (files[i].recorded || (o.limit && files[i].id > o.max_id))
      continue;
    if ((rc = apply_migration(db, schema_dir, &files[i], o.quiet, &done, err)) != 0)
      goto cleanup;
    count += done;
  }
cleanup:
  if (applied)
    *applied = count;
  free(files);
  return rc;
}

/* ---- read-only inspection (eng_db_inspect) -------------------------------------------------- */

/* 1 when the database has a table of that name, 0 when not, ENG_EDB on a read error. */
static int has_table(sqlite3 *h, const char *name) {
  sqlite3_stmt *st = NULL;
  if (sqlite3_prepare_v2(h, "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?1", -1, &st, NULL) !=
      SQLITE_OK)
    return ENG_EDB;
  sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC);
  int step = sqlite3_step(st);
  sqlite3_finalize(st);
  return step == SQLITE_ROW ? 1 : step == SQLITE_DONE ? 0 : ENG_EDB;
}

/* Reads the records of h into files (marking them), *max_id and *count. */
static int read_records(sqlite3 *h, const char *dir, mig_file *files, size_t n, int *max_id, int *count, char **err) {
  sqlite3_stmt *st = NULL;
  int rc = 0, step;
  if (sqlite3_prepare_v2(h, SQL_SELECT_MIGRATIONS, -1, &st, NULL) != SQLITE_OK)
    return eng_errorf(err, ENG_EDB, "db: cannot read " ENG_DB_MIGRATIONS_TABLE ": %s", sqlite3_errmsg(h));
  while ((step = sqlite3_step(st)) == SQLITE_ROW) {
    int id = sqlite3_column_int(st, 0);
    const char *name = (const char *)sqlite3_column_text(st, 1);
    const char *sum = (const char *)sqlite3_column_text(st, 2);
    if ((rc = check_record(dir, find_migration(files, n, id), id, name ? name : "", sum ? sum : "", err)) != 0)
      break;
    *max_id = id;
    (*count)++;
  }
  if (!rc && step != SQLITE_DONE)
    rc = eng_errorf(err, ENG_EDB, "db: cannot read " ENG_DB_MIGRATIONS_TABLE ": %s", sqlite3_errmsg(h));
  sqlite3_finalize(st);
  return rc;
}

static int read_fact(sqlite3 *h, const char *key, char **value, char **err) {
  sqlite3_stmt *st = NULL;
  *value = NULL;
  if (sqlite3_prepare_v2(h, "SELECT value FROM " ENG_DB_ENGINE_TABLE " WHERE key = ?1", -1, &st, NULL) != SQLITE_OK)
    return eng_errorf(err, ENG_EDB, "db: cannot read " ENG_DB_ENGINE_TABLE ": %s", sqlite3_errmsg(h));
  sqlite3_bind_text(st, 1, key, -1, SQLITE_STATIC);
  int rc = 0, step = sqlite3_step(st);
  if (step == SQLITE_ROW && sqlite3_column_text(st, 0) != NULL) {
    if ((*value = strdup((const char *)sqlite3_column_text(st, 0))) == NULL)
      rc = eng_errorf(err, ENG_ENOMEM, "db: out of memory");
  } else if (step != SQLITE_ROW && step != SQLITE_DONE) {
    rc = eng_errorf(err, ENG_EDB, "db: cannot read " ENG_DB_ENGINE_TABLE ": %s", sqlite3_errmsg(h));
  }
  sqlite3_finalize(st);
  return rc;
}

/* The records and facts of an existing file, in one read transaction. */
static int inspect_file(const char *path, const char *schema_dir, mig_file *files, size_t n, eng_db_state *out,
                        char **err) {
  sqlite3 *h = NULL;
  int rc = 0, t;
  if (sqlite3_open_v2(path, &h, SQLITE_OPEN_READONLY | SQLITE_OPEN_NOMUTEX, NULL) != SQLITE_OK) {
    rc = h ? eng_errorf(err, ENG_EDB, "db: cannot open %s read-only: %s", path, sqlite3_errmsg(h))
           : eng_errorf(err, ENG_ENOMEM, "db: out of memory opening %s", path);
    goto cleanup;
  }
  sqlite3_busy_timeout(h, ENG_DB_BUSY_TIMEOUT_DEFAULT_MS);
  if (sqlite3_exec(h, "BEGIN", NULL, NULL, NULL) != SQLITE_OK) {
    rc = eng_errorf(err, ENG_EDB, "db: cannot read %s: %s", path, sqlite3_errmsg(h));
    goto cleanup;
  }
  if ((t = has_table(h, ENG_DB_MIGRATIONS_TABLE)) < 0 ||
      (t == 1 && (rc = read_records(h, schema_dir, files, n, &out->max_applied_id, &out->applied, err)) != 0))
    goto fail;
  if ((t = has_table(h, ENG_DB_ENGINE_TABLE)) < 0 ||
      (t == 1 && (rc = read_fact(h, "key_fingerprint", &out->fingerprint, err)) != 0))
    goto fail;
  goto cleanup;
fail:
  if (rc == 0)
    rc = eng_errorf(err, ENG_EDB, "db: cannot read %s: %s", path, sqlite3_errmsg(h));
cleanup:
  if (h && !sqlite3_get_autocommit(h))
    sqlite3_exec(h, "ROLLBACK", NULL, NULL, NULL);
  sqlite3_close(h);
  return rc;
}

int eng_db_inspect(const char *path, const char *schema_dir, eng_db_state *out, char **err) {
  eng_db_state s = {.max_applied_id = -1};
  mig_file *files = NULL;
  size_t n = 0;
  eng_dirs dl;
  struct stat sb;
  int rc;

  if (err)
    *err = NULL;
  if ((rc = split_schema(&dl, schema_dir, err)) != 0 ||
      (rc = list_migrations(dl.dirs, dl.n, ENG_MIG_SQLITE, &files, &n, err)) != 0)
    goto cleanup;
  if (strcmp(path, ":memory:") != 0 && stat(path, &sb) == 0) {
    s.exists = 1;
    if ((rc = inspect_file(path, schema_dir, files, n, &s, err)) != 0 ||
        (rc = check_order(files, n, s.max_applied_id, err)) != 0)
      goto cleanup;
  }
  if ((rc = eng_mig_pending(files, n, &s, err)) != 0)
    goto cleanup;
  *out = s;
  s = (eng_db_state){0};
cleanup:
  eng_db_state_free(&s);
  free(files);
  return rc;
}

void eng_db_state_free(eng_db_state *s) {
  for (int i = 0; i < s->npending; i++)
    free(s->pending[i]);
  free(s->pending);
  free(s->fingerprint);
  *s = (eng_db_state){.max_applied_id = -1};
}

/* ---- the engine's own facts ------------------------------------------------------------------ */

#define SQL_CREATE_ENGINE \
  "CREATE TABLE IF NOT EXISTS " ENG_DB_ENGINE_TABLE " (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID"

/* Writes key = value with `insert` (INSERT OR IGNORE: keep a stored value; INSERT OR REPLACE:
 * overwrite it) in one transaction, the table created if missing; with stored, reads the value
 * the table then holds (malloc'd) before the commit. */
static int write_fact(eng_db *db, const char *insert, const char *key, const char *value, char **stored, char **err) {
  sqlite3 *h = eng_db_handle(db);
  sqlite3_stmt *st = NULL;
  int rc;
  if (stored)
    *stored = NULL;
  if (err)
    *err = NULL;
  if ((rc = exec_sql(db, "BEGIN IMMEDIATE", "cannot start a transaction", err)) != 0)
    return rc;
  if ((rc = exec_sql(db, SQL_CREATE_ENGINE, "cannot create " ENG_DB_ENGINE_TABLE, err)) != 0)
    goto cleanup;
  if (sqlite3_prepare_v2(h, insert, -1, &st, NULL) != SQLITE_OK) {
    rc = eng_errorf(err, ENG_EDB, "db: cannot write " ENG_DB_ENGINE_TABLE ": %s", sqlite3_errmsg(h));
    goto cleanup;
  }
  sqlite3_bind_text(st, 1, key, -1, SQLITE_STATIC);
  sqlite3_bind_text(st, 2, value, -1, SQLITE_STATIC);
  if (sqlite3_step(st) != SQLITE_DONE) {
    rc = eng_errorf(err, ENG_EDB, "db: cannot write " ENG_DB_ENGINE_TABLE ": %s", sqlite3_errmsg(h));
    goto cleanup;
  }
  if (stored && (rc = read_fact(h, key, stored, err)) != 0)
    goto cleanup;
  rc = exec_sql(db, "COMMIT", "cannot commit " ENG_DB_ENGINE_TABLE, err);
cleanup:
  sqlite3_finalize(st);
  rollback_if_open(db);
  if (rc != 0 && stored) {
    free(*stored);
    *stored = NULL;
  }
  return rc;
}

int eng_db_engine_fact(eng_db *db, const char *key, const char *value, char **stored, char **err) {
  return write_fact(db, "INSERT OR IGNORE INTO " ENG_DB_ENGINE_TABLE " (key, value) VALUES (?1, ?2)", key, value,
                    stored, err);
}

int eng_db_engine_fact_set(eng_db *db, const char *key, const char *value, char **err) {
  return write_fact(db, "INSERT OR REPLACE INTO " ENG_DB_ENGINE_TABLE " (key, value) VALUES (?1, ?2)", key, value, NULL,
                    err);
}

/* ---- the schema's files, for PostgreSQL (pg_migrate.c) --------------------------------------- */

int eng_mig_list(const char *schema_dir, eng_mig_backend backend, eng_dirs *dl, eng_mig_file **out, size_t *n,
                 char **err) {
  int rc;
  *out = NULL;
  *n = 0;
  if ((rc = split_schema(dl, schema_dir, err)) != 0)
    return rc;
  return list_migrations(dl->dirs, dl->n, backend, out, n, err);
}

int eng_mig_load(eng_mig_file *f, char **data, char **err) { return load_migration(f, data, err); }

eng_mig_file *eng_mig_find(eng_mig_file *files, size_t n, int id) { return find_migration(files, n, id); }

int eng_mig_check_record(const char *schema_dir, eng_mig_file *f, int id, const char *name, const char *checksum,
                         char **err) {
  return check_record(schema_dir, f, id, name, checksum, err);
}

int eng_mig_check_order(const eng_mig_file *files, size_t n, int max_id, char **err) {
  return check_order(files, n, max_id, err);
}

int eng_mig_line_of(const char *text, const char *at) { return line_of(text, at); }

int eng_mig_pending(const eng_mig_file *files, size_t n, eng_db_state *st, char **err) {
  if (n > 0 && (st->pending = calloc(n, sizeof *st->pending)) == NULL)
    return eng_errorf(err, ENG_ENOMEM, "db: out of memory");
  for (size_t i = 0; i < n; i++) {
    if (files[i].recorded)
      continue;
    size_t len = strlen(files[i].dir) + strlen(files[i].name) + 2;
    if ((st->pending[st->npending] = malloc(len)) == NULL)
      return eng_errorf(err, ENG_ENOMEM, "db: out of memory");
    snprintf(st->pending[st->npending++], len, "%s/%s", files[i].dir, files[i].name);
  }
  return 0;
}
