/* pg_copy.c - copying a SQLite database into an empty PostgreSQL one (see pg_copy.h for the order
 * and why).
 *
 * This is a command, not the server: it runs on the main thread with libpq's blocking calls (no
 * loop to keep responsive), reads SQLite directly (one read transaction over the whole copy) and
 * writes PostgreSQL through COPY FROM STDIN, the fastest way in that keeps one transaction. */
#include "pg_copy.h"
#include "error.h"
#include "pg_migrate.h"
#include "pq_load.h"

#include <sqlite3.h>

#include <inttypes.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#define MAX_TABLES 1024
#define MAX_COLS 2000 /* SQLite's default SQLITE_MAX_COLUMN */
#define NAME_MAX_BYTES 128

enum col_kind { COL_PLAIN, COL_BYTEA, COL_BOOL };

typedef struct table {
  char name[NAME_MAX_BYTES];
  int ncols;
  char (*cols)[NAME_MAX_BYTES];
  enum col_kind *kinds;
  char (*parents)[NAME_MAX_BYTES];
  int nparents;
  int placed;
} table;

typedef struct copy {
  const eng_pg_copy_options *opt;
  eng_pg_copy_stats *stats;
  sqlite3 *src;
  PGconn *pg;
  table *tables;
  int ntables;
  int *order; /* indexes into tables, parents first */
  char *buf;  /* COPY data not yet handed to libpq */
  size_t len;
} copy;

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* A PostgreSQL or SQLite identifier, quoted: "name" with '"' doubled. The source's names are
 * quoted the same way on both sides, so a name PostgreSQL would fold (Mixed case) must have been
 * created quoted there too: the default schema uses lower case only. */
static void quote_ident(char *out, size_t size, const char *name) {
  size_t o = 0;
  out[o++] = '"';
  for (const char *p = name; *p && o + 3 < size; p++) {
    if (*p == '"')
      out[o++] = '"';
    out[o++] = *p;
  }
  out[o++] = '"';
  out[o] = '\0';
}

static int pg_fail(char **err, PGresult *r, PGconn *pg, const char *what) {
  int rc = eng_errorf(err, ENG_EDB, "%s: %s", what, r ? PQresultErrorMessage(r) : PQerrorMessage(pg));
  PQclear(r);
  return rc;
}

/* Runs sql (params as text, may be NULL) and returns the result when its status is want. */
static PGresult *pg_run(copy *c, const char *sql, int nparams, const char *const *params, ExecStatusType want,
                        const char *what, char **err) {
  PGresult *r = PQexecParams(c->pg, sql, nparams, NULL, params, NULL, NULL, 0);
  if (r == NULL || PQresultStatus(r) != want) {
    pg_fail(err, r, c->pg, what);
    return NULL;
  }
  return r;
}

static int sqlite_fail(char **err, sqlite3 *db, const char *what) {
  return eng_errorf(err, ENG_EDB, "the source: %s: %s", what, sqlite3_errmsg(db));
}

static int has_table(sqlite3 *db, const char *name) {
  sqlite3_stmt *st = NULL;
  int found = 0;
  if (sqlite3_prepare_v2(db, "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?1", -1, &st, NULL) ==
      SQLITE_OK) {
    sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC);
    found = sqlite3_step(st) == SQLITE_ROW;
  }
  sqlite3_finalize(st);
  return found;
}

/* "0003_users.pg.sql" and "0003_users.sql" name one migration. */
static size_t migration_stem(const char *name) {
  size_t n = strlen(name);
  if (n > 7 && strcmp(name + n - 7, ".pg.sql") == 0)
    return n - 7;
  if (n > 4 && strcmp(name + n - 4, ".sql") == 0)
    return n - 4;
  return n;
}

/* The source and the target must have applied the same migrations: the copy moves rows between
 * two databases of one schema version, column for column. */
static int check_migrations(copy *c, char **err) {
  sqlite3_stmt *st = NULL;
  PGresult *r = NULL;
  int rc = 0, i = 0;
  if (!has_table(c->src, "_migrations"))
    return eng_errorf(err, ENG_ECONFIG, "%s is not an apiengine database (it has no _migrations table)",
                      c->opt->sqlite_path);
  if ((r = pg_run(c, "SELECT id, name FROM _migrations ORDER BY id", 0, NULL, PGRES_TUPLES_OK,
                  "cannot read the target's migrations", err)) == NULL)
    return ENG_EDB;
  if (sqlite3_prepare_v2(c->src, "SELECT id, name FROM _migrations ORDER BY id", -1, &st, NULL) != SQLITE_OK) {
    rc = sqlite_fail(err, c->src, "cannot read its migrations");
    goto cleanup;
  }
  int n = PQntuples(r), step;
  while ((step = sqlite3_step(st)) == SQLITE_ROW) {
    int id = sqlite3_column_int(st, 0);
    const char *name = (const char *)sqlite3_column_text(st, 1);
    name = name ? name : "";
    if (i >= n || atoi(PQgetvalue(r, i, 0)) != id) {
      rc = eng_errorf(err, ENG_ECONFIG,
                      "the source has applied migration %s, the target (after this schema's migrations) %s: "
                      "copy between databases of one schema version (run `apiengine migrate --db %s --schema "
                      "DIR` with the schema the target got, or pass that schema here)",
                      name, i < n ? PQgetvalue(r, i, 1) : "not", c->opt->sqlite_path);
      goto cleanup;
    }
    const char *tname = PQgetvalue(r, i, 1);
    size_t a = migration_stem(name), b = migration_stem(tname);
    if (a != b || memcmp(name, tname, a) != 0) {
      rc = eng_errorf(err, ENG_ECONFIG, "migration %d is %s in the source and %s in the target: not one schema", id,
                      name, tname);
      goto cleanup;
    }
    i++;
  }
  if (step != SQLITE_DONE) {
    rc = sqlite_fail(err, c->src, "cannot read its migrations");
    goto cleanup;
  }
  if (i < n)
    rc = eng_errorf(err, ENG_ECONFIG,
                    "the target has migration %s, which the source has not applied: run `apiengine migrate --db %s "
                    "--schema DIR` on the source first",
                    PQgetvalue(r, i, 1), c->opt->sqlite_path);
cleanup:
  sqlite3_finalize(st);
  PQclear(r);
  return rc;
}

/* The source's tables (not SQLite's own, not the engine's bookkeeping), their columns and the
 * tables their foreign keys point at. */
static int read_tables(copy *c, char **err) {
  sqlite3_stmt *st = NULL, *info = NULL;
  int rc = 0, step;
  char sql[512], q[2 * NAME_MAX_BYTES + 3];
  if ((c->tables = calloc(MAX_TABLES, sizeof *c->tables)) == NULL)
    return eng_errorf(err, ENG_ENOMEM, "out of memory");
  /* Leveled key tables (db_levels.h) are how SQLite holds a unique key cheaply; the PostgreSQL
   * schema holds the same key with a unique index, so they and their list stay behind. */
  snprintf(sql, sizeof sql,
           "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite\\_%%' "
           "ESCAPE '\\' AND name NOT IN ('_migrations', '_engine', '_engine_levels') "
           "AND sql NOT LIKE 'CREATE VIRTUAL%%' %s ORDER BY name",
           has_table(c->src, "_engine_levels") ? "AND name NOT IN (SELECT tbl FROM _engine_levels)" : "");
  if (sqlite3_prepare_v2(c->src, sql, -1, &st, NULL) != SQLITE_OK)
    return sqlite_fail(err, c->src, "cannot list its tables");
  while ((step = sqlite3_step(st)) == SQLITE_ROW) {
    const char *name = (const char *)sqlite3_column_text(st, 0);
    if (c->ntables == MAX_TABLES || strlen(name) >= NAME_MAX_BYTES) {
      rc = eng_errorf(err, ENG_ETOOBIG, "the source has too many tables, or a name over %d bytes", NAME_MAX_BYTES - 1);
      goto cleanup;
    }
    snprintf(c->tables[c->ntables++].name, NAME_MAX_BYTES, "%s", name);
  }
  if (step != SQLITE_DONE) {
    rc = sqlite_fail(err, c->src, "cannot list its tables");
    goto cleanup;
  }
  for (int t = 0; t < c->ntables; t++) {
    table *tb = &c->tables[t];
    quote_ident(q, sizeof q, tb->name);
    if ((tb->cols = calloc(MAX_COLS, sizeof *tb->cols)) == NULL ||
        (tb->kinds = calloc(MAX_COLS, sizeof *tb->kinds)) == NULL ||
        (tb->parents = calloc(MAX_TABLES, sizeof *tb->parents)) == NULL) {
      rc = eng_errorf(err, ENG_ENOMEM, "out of memory");
      goto cleanup;
    }
    snprintf(sql, sizeof sql, "PRAGMA table_info(%s)", q);
    if (sqlite3_prepare_v2(c->src, sql, -1, &info, NULL) != SQLITE_OK) {
      rc = sqlite_fail(err, c->src, "cannot read a table's columns");
      goto cleanup;
    }
    while ((step = sqlite3_step(info)) == SQLITE_ROW && tb->ncols < MAX_COLS)
      snprintf(tb->cols[tb->ncols++], NAME_MAX_BYTES, "%s", (const char *)sqlite3_column_text(info, 1));
    sqlite3_finalize(info);
    snprintf(sql, sizeof sql, "PRAGMA foreign_key_list(%s)", q);
    if (sqlite3_prepare_v2(c->src, sql, -1, &info, NULL) != SQLITE_OK) {
      rc = sqlite_fail(err, c->src, "cannot read a table's foreign keys");
      goto cleanup;
    }
    while ((step = sqlite3_step(info)) == SQLITE_ROW && tb->nparents < MAX_TABLES) {
      const char *parent = (const char *)sqlite3_column_text(info, 2); /* id, seq, table, from, to, ... */
      int known = 0;
      for (int p = 0; p < tb->nparents; p++)
        known |= strcmp(tb->parents[p], parent) == 0;
      if (!known)
        snprintf(tb->parents[tb->nparents++], NAME_MAX_BYTES, "%s", parent);
    }
    sqlite3_finalize(info);
    info = NULL;
  }
cleanup:
  sqlite3_finalize(st);
  sqlite3_finalize(info);
  return rc;
}

/* Parents first (Kahn's order over the foreign keys). A table that points at itself is placed
 * like any other: its rows go in rowid order, so a parent row created before its children comes
 * first; a cycle between tables cannot be ordered and is refused. */
static int order_tables(copy *c, char **err) {
  if ((c->order = calloc((size_t)c->ntables + 1, sizeof *c->order)) == NULL)
    return eng_errorf(err, ENG_ENOMEM, "out of memory");
  for (int placed = 0; placed < c->ntables;) {
    int progress = 0;
    for (int t = 0; t < c->ntables; t++) {
      table *tb = &c->tables[t];
      int ready = !tb->placed;
      for (int p = 0; ready && p < tb->nparents; p++) {
        if (strcmp(tb->parents[p], tb->name) == 0)
          continue;
        for (int u = 0; u < c->ntables; u++)
          if (strcmp(c->tables[u].name, tb->parents[p]) == 0 && !c->tables[u].placed)
            ready = 0;
      }
      if (ready) {
        tb->placed = 1;
        c->order[placed++] = t;
        progress = 1;
      }
    }
    if (!progress)
      return eng_errorf(err, ENG_ECONFIG, "the source's foreign keys form a cycle between tables: no copy order");
  }
  return 0;
}

/* Locks the target's tables, checks that each has every source column (noting the bytea and
 * boolean ones) and holds no row. */
static int check_target(copy *c, char **err) {
  char sql[512], q[2 * NAME_MAX_BYTES + 3];
  for (int i = 0; i < c->ntables; i++) {
    table *tb = &c->tables[c->order[i]];
    const char *params[1] = {tb->name};
    PGresult *r = pg_run(c,
                         "SELECT a.attname, t.typname FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid "
                         "WHERE a.attrelid = to_regclass(quote_ident($1)) AND a.attnum > 0 AND NOT a.attisdropped",
                         1, params, PGRES_TUPLES_OK, "cannot read the target's columns", err);
    if (r == NULL)
      return ENG_EDB;
    if (PQntuples(r) == 0) {
      PQclear(r);
      return eng_errorf(err, ENG_ECONFIG, "the target has no table %s (the source's schema has it)", tb->name);
    }
    for (int col = 0; col < tb->ncols; col++) {
      int found = -1;
      for (int row = 0; row < PQntuples(r) && found < 0; row++)
        if (strcmp(PQgetvalue(r, row, 0), tb->cols[col]) == 0)
          found = row;
      if (found < 0) {
        int e = eng_errorf(err, ENG_ECONFIG, "the target's table %s has no column %s", tb->name, tb->cols[col]);
        PQclear(r);
        return e;
      }
      const char *type = PQgetvalue(r, found, 1);
      tb->kinds[col] = strcmp(type, "bytea") == 0 ? COL_BYTEA : strcmp(type, "bool") == 0 ? COL_BOOL : COL_PLAIN;
    }
    PQclear(r);
    quote_ident(q, sizeof q, tb->name);
    snprintf(sql, sizeof sql, "LOCK TABLE %s IN ACCESS EXCLUSIVE MODE", q);
    if ((r = pg_run(c, sql, 0, NULL, PGRES_COMMAND_OK, "cannot lock a target table", err)) == NULL)
      return ENG_EDB;
    PQclear(r);
    snprintf(sql, sizeof sql, "SELECT EXISTS (SELECT 1 FROM %s)", q);
    if ((r = pg_run(c, sql, 0, NULL, PGRES_TUPLES_OK, "cannot read a target table", err)) == NULL)
      return ENG_EDB;
    int rows = strcmp(PQgetvalue(r, 0, 0), "t") == 0;
    PQclear(r);
    if (rows)
      return eng_errorf(err, ENG_EEXISTS,
                        "the target already holds rows (in %s): migrate --from copies into an empty database only",
                        tb->name);
  }
  return 0;
}

static int put(copy *c, const char *p, size_t n, char **err) {
  if (c->len + n > ENG_PG_COPY_BATCH_BYTES) {
    if (c->len && PQputCopyData(c->pg, c->buf, (int)c->len) != 1)
      return eng_errorf(err, ENG_EDB, "COPY failed: %s", PQerrorMessage(c->pg));
    c->len = 0;
    if (n > ENG_PG_COPY_BATCH_BYTES) { /* one value larger than a batch goes alone */
      if (PQputCopyData(c->pg, p, (int)n) != 1)
        return eng_errorf(err, ENG_EDB, "COPY failed: %s", PQerrorMessage(c->pg));
      return 0;
    }
  }
  memcpy(c->buf + c->len, p, n);
  c->len += n;
  return 0;
}

/* One value in COPY's text form: backslash, tab, newline and carriage return escaped. */
static int put_text(copy *c, const unsigned char *s, size_t n, char **err) {
  size_t from = 0;
  for (size_t i = 0; i < n; i++) {
    const char *esc = s[i] == '\\' ? "\\\\" : s[i] == '\t' ? "\\t" : s[i] == '\n' ? "\\n" : s[i] == '\r' ? "\\r" : NULL;
    if (s[i] == '\0')
      return ENG_EINVAL;
    if (esc == NULL)
      continue;
    int rc;
    if ((rc = put(c, (const char *)s + from, i - from, err)) != 0 || (rc = put(c, esc, 2, err)) != 0)
      return rc;
    from = i + 1;
  }
  return put(c, (const char *)s + from, n - from, err);
}

/* bytea's hex form, "\x..." with COPY's backslash doubled. */
static int put_bytea(copy *c, const unsigned char *s, size_t n, char **err) {
  static const char hex[] = "0123456789abcdef";
  char chunk[512];
  int rc = put(c, "\\\\x", 3, err);
  for (size_t i = 0; rc == 0 && i < n;) {
    size_t k = 0;
    for (; i < n && k + 2 <= sizeof chunk; i++) {
      chunk[k++] = hex[s[i] >> 4];
      chunk[k++] = hex[s[i] & 15];
    }
    rc = put(c, chunk, k, err);
  }
  return rc;
}

static int put_value(copy *c, sqlite3_stmt *st, int col, enum col_kind kind, char **err) {
  char num[64];
  int type = sqlite3_column_type(st, col);
  if (type == SQLITE_NULL)
    return put(c, "\\N", 2, err);
  if (kind == COL_BYTEA) {
    const unsigned char *b = sqlite3_column_blob(st, col);
    return put_bytea(c, b, (size_t)sqlite3_column_bytes(st, col), err);
  }
  if (type == SQLITE_INTEGER) {
    sqlite3_int64 v = sqlite3_column_int64(st, col);
    if (kind == COL_BOOL)
      return put(c, v ? "t" : "f", 1, err);
    int n = snprintf(num, sizeof num, "%lld", (long long)v);
    return put(c, num, (size_t)n, err);
  }
  if (type == SQLITE_FLOAT) {
    double v = sqlite3_column_double(st, col);
    int n = isnan(v)   ? snprintf(num, sizeof num, "NaN")
            : isinf(v) ? snprintf(num, sizeof num, v > 0 ? "Infinity" : "-Infinity")
                       : snprintf(num, sizeof num, "%.17g", v);
    return put(c, num, (size_t)n, err);
  }
  const unsigned char *s = type == SQLITE_BLOB ? sqlite3_column_blob(st, col) : sqlite3_column_text(st, col);
  return put_text(c, s, (size_t)sqlite3_column_bytes(st, col), err);
}

static void progress(copy *c, const char *name, int64_t done, int64_t total, double t0, const char *end) {
  if (c->opt->progress == NULL)
    return;
  double dt = now_s() - t0;
  fprintf(c->opt->progress, "migrate: %s %" PRId64 "/%" PRId64 " rows, %.0f rows/s%s\n", name, done, total,
          dt > 0 ? (double)done / dt : 0.0, end);
  fflush(c->opt->progress);
}

static int copy_table(copy *c, table *tb, char **err) {
  char q[2 * NAME_MAX_BYTES + 3];
  char *sql = NULL, *select = NULL;
  size_t cap = 64 + (size_t)tb->ncols * (2 * NAME_MAX_BYTES + 4);
  sqlite3_stmt *st = NULL;
  PGresult *r = NULL;
  int64_t total = 0, done = 0,
          every = c->opt->progress_every > 0 ? c->opt->progress_every : ENG_PG_COPY_PROGRESS_DEFAULT;
  int rc = 0, step;
  double t0 = now_s();

  if ((sql = malloc(cap)) == NULL || (select = malloc(cap)) == NULL) {
    rc = eng_errorf(err, ENG_ENOMEM, "out of memory");
    goto cleanup;
  }
  quote_ident(q, sizeof q, tb->name);
  snprintf(select, cap, "SELECT count(*) FROM %s", q);
  if (sqlite3_prepare_v2(c->src, select, -1, &st, NULL) != SQLITE_OK || sqlite3_step(st) != SQLITE_ROW) {
    rc = sqlite_fail(err, c->src, "cannot count a table's rows");
    goto cleanup;
  }
  total = sqlite3_column_int64(st, 0);
  sqlite3_finalize(st);
  st = NULL;

  /* The column lists of both sides, in the source's order. */
  size_t s = (size_t)snprintf(sql, cap, "COPY %s (", q), k = (size_t)snprintf(select, cap, "SELECT ");
  for (int col = 0; col < tb->ncols; col++) {
    char qc[2 * NAME_MAX_BYTES + 3];
    quote_ident(qc, sizeof qc, tb->cols[col]);
    s += (size_t)snprintf(sql + s, cap - s, "%s%s", col ? ", " : "", qc);
    k += (size_t)snprintf(select + k, cap - k, "%s%s", col ? ", " : "", qc);
  }
  snprintf(sql + s, cap - s, ") FROM STDIN");
  snprintf(select + k, cap - k, " FROM %s", q);
  if (sqlite3_prepare_v2(c->src, select, -1, &st, NULL) != SQLITE_OK) {
    rc = sqlite_fail(err, c->src, "cannot read a table");
    goto cleanup;
  }
  if ((r = pg_run(c, sql, 0, NULL, PGRES_COPY_IN, "cannot start COPY", err)) == NULL) {
    rc = ENG_EDB;
    goto cleanup;
  }
  PQclear(r);
  r = NULL;
  while ((step = sqlite3_step(st)) == SQLITE_ROW) {
    for (int col = 0; col < tb->ncols && rc == 0; col++) {
      if (col && (rc = put(c, "\t", 1, err)) != 0)
        break;
      if ((rc = put_value(c, st, col, tb->kinds[col], err)) == ENG_EINVAL)
        rc = eng_errorf(err, ENG_EINVAL,
                        "%s row %" PRId64 " column %s holds a NUL byte in text, which PostgreSQL cannot store",
                        tb->name, done + 1, tb->cols[col]);
    }
    if (rc != 0 || (rc = put(c, "\n", 1, err)) != 0)
      break;
    if (++done % every == 0)
      progress(c, tb->name, done, total, t0, "");
  }
  if (rc == 0 && step != SQLITE_DONE && step != SQLITE_ROW)
    rc = sqlite_fail(err, c->src, "cannot read a table");
  if (rc == 0 && c->len && PQputCopyData(c->pg, c->buf, (int)c->len) != 1)
    rc = eng_errorf(err, ENG_EDB, "COPY failed: %s", PQerrorMessage(c->pg));
  c->len = 0;
  /* End the COPY even after a failure, so the connection leaves the COPY state and the
   * transaction can be rolled back. */
  if (PQputCopyEnd(c->pg, rc == 0 ? NULL : "the copy failed") != 1 && rc == 0)
    rc = eng_errorf(err, ENG_EDB, "COPY failed: %s", PQerrorMessage(c->pg));
  while ((r = PQgetResult(c->pg)) != NULL) {
    if (rc == 0 && PQresultStatus(r) != PGRES_COMMAND_OK)
      rc = eng_errorf(err, ENG_EDB, "copying %s failed: %s", tb->name, PQresultErrorMessage(r));
    else if (rc == 0 && strtoll(PQcmdTuples(r), NULL, 10) != done)
      rc = eng_errorf(err, ENG_EDB, "copying %s: PostgreSQL took %s rows of %" PRId64, tb->name, PQcmdTuples(r), done);
    PQclear(r);
  }
  r = NULL;
  if (rc == 0) {
    progress(c, tb->name, done, total, t0, " (done)");
    c->stats->tables++;
    c->stats->rows += done;
  }
cleanup:
  PQclear(r);
  sqlite3_finalize(st);
  free(sql);
  free(select);
  return rc;
}

/* Sets every sequence that feeds a column of a copied table (identity or serial) so that its
 * next value is past the copied maximum: the copied rows brought their own ids. */
static int set_sequences(copy *c, char **err) {
  char sql[1024], qt[2 * NAME_MAX_BYTES + 3], qc[2 * NAME_MAX_BYTES + 3];
  for (int t = 0; t < c->ntables; t++) {
    table *tb = &c->tables[t];
    for (int col = 0; col < tb->ncols; col++) {
      quote_ident(qt, sizeof qt, tb->name);
      quote_ident(qc, sizeof qc, tb->cols[col]);
      const char *params[2] = {qt, tb->cols[col]};
      PGresult *r =
          pg_run(c, "SELECT pg_get_serial_sequence($1, $2)", 2, params, PGRES_TUPLES_OK, "cannot find a sequence", err);
      if (r == NULL)
        return ENG_EDB;
      int has = !PQgetisnull(r, 0, 0);
      PQclear(r);
      if (!has)
        continue;
      snprintf(sql, sizeof sql,
               "SELECT setval(pg_get_serial_sequence($1, $2), COALESCE((SELECT max(%s) FROM %s), 0) + 1, false)", qc,
               qt);
      if ((r = pg_run(c, sql, 2, params, PGRES_TUPLES_OK, "cannot set a sequence", err)) == NULL)
        return ENG_EDB;
      PQclear(r);
      c->stats->sequences++;
    }
  }
  return 0;
}

/* The engine's facts (the key fingerprint above all): a target that already states another
 * value for one (a node started on it with another key) is refused. */
static int copy_facts(copy *c, char **err) {
  sqlite3_stmt *st = NULL;
  PGresult *r = NULL;
  int rc = 0, step;
  if (!has_table(c->src, "_engine"))
    return 0;
  if ((r = pg_run(c, "CREATE TABLE IF NOT EXISTS _engine (key TEXT PRIMARY KEY, value TEXT NOT NULL)", 0, NULL,
                  PGRES_COMMAND_OK, "cannot create _engine", err)) == NULL)
    return ENG_EDB;
  PQclear(r);
  r = NULL;
  if (sqlite3_prepare_v2(c->src, "SELECT key, value FROM _engine ORDER BY key", -1, &st, NULL) != SQLITE_OK)
    return sqlite_fail(err, c->src, "cannot read _engine");
  while ((step = sqlite3_step(st)) == SQLITE_ROW) {
    const char *params[2] = {(const char *)sqlite3_column_text(st, 0), (const char *)sqlite3_column_text(st, 1)};
    if (params[0] == NULL || params[1] == NULL)
      continue;
    if ((r = pg_run(c,
                    "INSERT INTO _engine (key, value) VALUES ($1, $2) ON CONFLICT (key) DO UPDATE SET key = "
                    "EXCLUDED.key RETURNING value",
                    2, params, PGRES_TUPLES_OK, "cannot copy _engine", err)) == NULL) {
      rc = ENG_EDB;
      goto cleanup;
    }
    if (strcmp(PQgetvalue(r, 0, 0), params[1]) != 0) {
      rc = eng_errorf(err, ENG_EEXISTS,
                      "the target's _engine states %s = %s, the source %s: a node with another key has used it",
                      params[0], PQgetvalue(r, 0, 0), params[1]);
      goto cleanup;
    }
    PQclear(r);
    r = NULL;
    c->stats->facts++;
  }
  if (step != SQLITE_DONE)
    rc = sqlite_fail(err, c->src, "cannot read _engine");
cleanup:
  PQclear(r);
  sqlite3_finalize(st);
  return rc;
}

int eng_pg_copy(const eng_pg_copy_options *opt, eng_pg_copy_stats *stats, char **err) {
  eng_pg_copy_stats local;
  copy c = {.opt = opt, .stats = stats ? stats : &local};
  struct stat sb;
  PGresult *r = NULL;
  int rc = 0, in_tx = 0;
  double t0 = now_s();

  memset(c.stats, 0, sizeof *c.stats);
  if (err)
    *err = NULL;
  if (opt == NULL || opt->sqlite_path == NULL || opt->conninfo == NULL || opt->schema_dir == NULL)
    return eng_errorf(err, ENG_EINVAL, "migrate --from needs a source, a target and a schema");
  if (stat(opt->sqlite_path, &sb) != 0)
    return eng_errorf(err, ENG_ENOTFOUND, "%s: no such database file", opt->sqlite_path);
  if ((rc = eng_pq_load(err)) != 0) /* first: the cleanup below calls libpq */
    return rc;
  if (sqlite3_open_v2(opt->sqlite_path, &c.src, SQLITE_OPEN_READONLY, NULL) != SQLITE_OK) {
    rc = sqlite_fail(err, c.src, "cannot open it");
    goto cleanup;
  }
  sqlite3_busy_timeout(c.src, 5000);
  /* One snapshot for the whole copy: the first read inside BEGIN takes it. */
  if (sqlite3_exec(c.src, "BEGIN; SELECT count(*) FROM sqlite_master", NULL, NULL, NULL) != SQLITE_OK) {
    rc = sqlite_fail(err, c.src, "cannot read it");
    goto cleanup;
  }
  if (!has_table(c.src, "_migrations")) {
    rc =
        eng_errorf(err, ENG_ECONFIG, "%s is not an apiengine database (it has no _migrations table)", opt->sqlite_path);
    goto cleanup;
  }
  if ((rc = read_tables(&c, err)) != 0 || (rc = order_tables(&c, err)) != 0)
    goto cleanup;

  char *merr = NULL;
  if ((rc = eng_pg_migrate(opt->conninfo, opt->schema_dir, &c.stats->migrations, &merr)) != 0) {
    rc = eng_errorf(err, rc, "the target's migrations failed: %s", merr ? merr : eng_strerror(rc));
    free(merr);
    goto cleanup;
  }
  if (opt->progress)
    fprintf(opt->progress, "migrate: %d migration(s) applied to the target\n", c.stats->migrations);

  c.pg = PQconnectdb(opt->conninfo);
  if (PQstatus(c.pg) != CONNECTION_OK) {
    rc = eng_errorf(err, ENG_EDB, "cannot connect to the target: %s", PQerrorMessage(c.pg));
    goto cleanup;
  }
  if ((c.buf = malloc(ENG_PG_COPY_BATCH_BYTES)) == NULL) {
    rc = eng_errorf(err, ENG_ENOMEM, "out of memory");
    goto cleanup;
  }
  if ((r = pg_run(&c, "BEGIN", 0, NULL, PGRES_COMMAND_OK, "cannot begin", err)) == NULL) {
    rc = ENG_EDB;
    goto cleanup;
  }
  PQclear(r);
  r = NULL;
  in_tx = 1;
  if ((rc = check_target(&c, err)) != 0 || (rc = check_migrations(&c, err)) != 0)
    goto cleanup;
  for (int i = 0; i < c.ntables; i++)
    if ((rc = copy_table(&c, &c.tables[c.order[i]], err)) != 0)
      goto cleanup;
  if ((rc = set_sequences(&c, err)) != 0 || (rc = copy_facts(&c, err)) != 0)
    goto cleanup;
  if ((r = pg_run(&c, "COMMIT", 0, NULL, PGRES_COMMAND_OK, "cannot commit", err)) == NULL) {
    rc = ENG_EDB;
    goto cleanup;
  }
  in_tx = 0;
  if (opt->progress)
    fprintf(opt->progress,
            "migrate: copied %d table(s), %" PRId64 " row(s), %d fact(s), %d sequence(s) set, from %s in %.1f s\n",
            c.stats->tables, c.stats->rows, c.stats->facts, c.stats->sequences, opt->sqlite_path, now_s() - t0);
cleanup:
  PQclear(r);
  if (in_tx) /* nothing of the copy stays: the target holds no row it did not hold before */
    PQclear(PQexec(c.pg, "ROLLBACK"));
  if (c.pg)
    PQfinish(c.pg);
  if (c.src)
    sqlite3_close(c.src); /* ends the read transaction */
  if (c.tables)
    for (int t = 0; t < c.ntables; t++) {
      free(c.tables[t].cols);
      free(c.tables[t].kinds);
      free(c.tables[t].parents);
    }
  free(c.tables);
  free(c.order);
  free(c.buf);
  return rc;
}

/* ---- the command ------------------------------------------------------------------------------ */

int eng_pg_copy_wanted(int argc, char **argv) {
  for (int i = 2; i < argc; i++)
    if (strcmp(argv[i], "--from") == 0 || strncmp(argv[i], "--from=", 7) == 0)
      return 1;
  return 0;
}

static void copy_usage(FILE *f) {
  fprintf(f, "usage: apiengine migrate --from sqlite:PATH --to CONNINFO [--schema DIR] [--progress-every N]\n"
             "  copies the SQLite database PATH into the empty PostgreSQL database CONNINFO (a libpq URI or\n"
             "  \"host=... dbname=...\"), after applying the schema's PostgreSQL migrations there; one\n"
             "  transaction: a failure leaves the target without any copied row. The key is not copied:\n"
             "  start every node with the same key (APIENGINE_KEY or --key-file).\n");
}

int eng_pg_copy_main(int argc, char **argv) {
  const char *from = NULL, *to = NULL, *schema = getenv("APIENGINE_SCHEMA");
  int64_t every = 0;
  for (int i = 2; i < argc; i++) {
    const char *a = argv[i], *v = NULL;
    if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
      copy_usage(stdout);
      return 0;
    }
    const char *names[] = {"--from", "--to", "--schema", "--progress-every"};
    int which = -1;
    for (int n = 0; n < 4 && which < 0; n++) {
      size_t l = strlen(names[n]);
      if (strcmp(a, names[n]) == 0 && i + 1 < argc) {
        which = n;
        v = argv[++i];
      } else if (strncmp(a, names[n], l) == 0 && a[l] == '=') {
        which = n;
        v = a + l + 1;
      }
    }
    if (which < 0) {
      fprintf(stderr, "apiengine: migrate --from: unknown or incomplete option '%s'\n", a);
      copy_usage(stderr);
      return 2;
    }
    if (which == 0)
      from = v;
    else if (which == 1)
      to = v;
    else if (which == 2)
      schema = v;
    else {
      char *end;
      every = strtoll(v, &end, 10);
      if (*end || every <= 0) {
        fprintf(stderr, "apiengine: --progress-every needs a positive number of rows\n");
        return 2;
      }
    }
  }
  if (from == NULL || strncmp(from, "sqlite:", 7) != 0 || from[7] == '\0' || to == NULL || *to == '\0') {
    fprintf(stderr, "apiengine: migrate needs --from sqlite:PATH and --to CONNINFO\n");
    copy_usage(stderr);
    return 2;
  }
  eng_pg_copy_options opt = {.sqlite_path = from + 7,
                             .conninfo = to,
                             .schema_dir = schema && *schema ? schema : "schema",
                             .progress_every = every,
                             .progress = stderr};
  char *err = NULL;
  int rc = eng_pg_copy(&opt, NULL, &err);
  if (rc != 0)
    fprintf(stderr, "apiengine: migrate failed: %s\n", err ? err : eng_strerror(rc));
  free(err);
  return rc == 0 ? 0 : 1;
}
