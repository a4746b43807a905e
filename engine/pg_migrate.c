/* pg_migrate.c - PostgreSQL at start-up (pg_migrate.h): migrations and the engine's facts over
 * one blocking libpq connection per call, and the connection string with its passwords masked.
 *
 * The files are listed, read and checked by db_migrate.c (eng_mig_*), so both databases follow
 * one set of rules and refuse with the same messages; what is here is only PostgreSQL's side:
 * the advisory lock, the transactions, running a file's statements one by one. */
#define _GNU_SOURCE /* strcasestr */
#include "pg_migrate.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "error.h"
#include "log.h"
#include "pq_load.h"

#define LOCK_KEY_TEXT "7021227703435487598" /* ENG_PG_MIGRATE_LOCK_KEY, spliced into SQL */
_Static_assert(ENG_PG_MIGRATE_LOCK_KEY == 7021227703435487598LL, "LOCK_KEY_TEXT follows the key");

#define SQL_LOCK "SELECT pg_advisory_lock(" LOCK_KEY_TEXT ")"
#define SQL_UNLOCK "SELECT pg_advisory_unlock(" LOCK_KEY_TEXT ")"
#define SQL_CREATE_MIGRATIONS                                                                            \
  "CREATE TABLE IF NOT EXISTS " ENG_DB_MIGRATIONS_TABLE " (id INTEGER PRIMARY KEY, name TEXT NOT NULL, " \
  "checksum TEXT NOT NULL, applied_at TEXT NOT NULL)"
#define SQL_SELECT_MIGRATIONS "SELECT id, name, checksum FROM " ENG_DB_MIGRATIONS_TABLE " ORDER BY id"
/* applied_at in the form SQLite's records use (2024-05-01T10:00:00.123Z) */
#define SQL_INSERT_MIGRATION                                                  \
  "INSERT INTO " ENG_DB_MIGRATIONS_TABLE " (id, name, checksum, applied_at) " \
  "VALUES ($1::integer, $2, $3, to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"'))"
#define SQL_CREATE_ENGINE \
  "CREATE TABLE IF NOT EXISTS " ENG_DB_ENGINE_TABLE " (key TEXT PRIMARY KEY, value TEXT NOT NULL)"
#define SQL_SELECT_FACT "SELECT value FROM " ENG_DB_ENGINE_TABLE " WHERE key = $1"

static void quiet_notice(void *arg, const char *message) {
  (void)arg;
  (void)message; /* "relation already exists, skipping" and friends: not for the operator's log */
}

/* PostgreSQL's message for a failed result (its primary text) or connection, without the
 * trailing newline libpq adds: *len bytes of the returned text. */
static const char *pg_msg(PGconn *c, const PGresult *r, int *len) {
  const char *m = r ? PQresultErrorField(r, PG_DIAG_MESSAGE_PRIMARY) : NULL;
  if (!m || !*m)
    m = PQerrorMessage(c);
  size_t n = strlen(m);
  while (n > 0 && (m[n - 1] == '\n' || m[n - 1] == ' '))
    n--;
  *len = (int)(n > 4096 ? 4096 : n);
  return m;
}

static int fail(char **err, PGconn *c, const PGresult *r, const char *what) {
  int len;
  const char *m = pg_msg(c, r, &len);
  return eng_errorf(err, ENG_EDB, "db: %s: %.*s", what, len, m);
}

/* Runs sql with text parameters; 0 when it succeeded (rows, if any, in *out when out is not NULL,
 * which the caller clears). */
static int run(PGconn *c, const char *sql, int nparams, const char *const *params, PGresult **out, const char *what,
               char **err) {
  PGresult *r = PQexecParams(c, sql, nparams, NULL, params, NULL, NULL, 0);
  ExecStatusType st = PQresultStatus(r);
  if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK) {
    int rc = r ? fail(err, c, r, what) : eng_errorf(err, ENG_ENOMEM, "db: out of memory");
    PQclear(r);
    return rc;
  }
  if (out)
    *out = r;
  else
    PQclear(r);
  return 0;
}

/* A blocking connection. conninfo's own settings win over the defaults given before it. */
static int connect_db(const char *conninfo, PGconn **out, char **err) {
  const char *keys[] = {"connect_timeout", "application_name", "dbname", NULL};
  const char *vals[] = {ENG_PG_CONNECT_TIMEOUT_S, "apiengine", conninfo, NULL};
  *out = NULL;
  int rc = eng_pq_load(err);
  if (rc != 0)
    return rc;
  PGconn *c = PQconnectdbParams(keys, vals, 1);
  if (!c)
    return eng_errorf(err, ENG_ENOMEM, "db: out of memory connecting to PostgreSQL");
  if (PQstatus(c) != CONNECTION_OK) {
    rc = fail(err, c, NULL, "cannot connect to PostgreSQL");
    PQfinish(c);
    return rc;
  }
  PQsetNoticeProcessor(c, quiet_notice, NULL);
  *out = c;
  return 0;
}

/* Connects and takes the engine's advisory lock (a session lock: PQfinish lets it go too). */
static int connect_locked(const char *conninfo, PGconn **out, char **err) {
  int rc = connect_db(conninfo, out, err);
  if (rc == 0 && (rc = run(*out, SQL_LOCK, 0, NULL, NULL, "cannot take the migration lock", err)) != 0) {
    PQfinish(*out);
    *out = NULL;
  }
  return rc;
}

static void disconnect(PGconn *c, int locked) {
  if (!c)
    return;
  if (PQtransactionStatus(c) != PQTRANS_IDLE)
    PQclear(PQexec(c, "ROLLBACK"));
  if (locked)
    PQclear(PQexec(c, SQL_UNLOCK));
  PQfinish(c);
}

/* ---- a file's statements ---------------------------------------------------------------------- */

static int ident_char(char ch) {
  unsigned char u = (unsigned char)ch;
  return (u >= 'a' && u <= 'z') || (u >= 'A' && u <= 'Z') || (u >= '0' && u <= '9') || u == '_' || u == '$' ||
         u >= 0x80;
}

/* Past the dollar-quoted string at p ($tag$...$tag$), or NULL when p does not open one. */
static const char *dollar_quote_end(const char *text, const char *p) {
  if (p > text && ident_char(p[-1]))
    return NULL; /* part of an identifier (a$b) */
  const char *q = p + 1;
  if ((*q >= '0' && *q <= '9'))
    return NULL; /* $1: a parameter */
  while (*q != '$' && *q && ident_char(*q))
    q++;
  if (*q != '$')
    return NULL;
  size_t tag = (size_t)(q - p) + 1;
  for (const char *b = q + 1; *b; b++) {
    if (*b == '$' && strncmp(b, p, tag) == 0)
      return b + tag;
  }
  return p + strlen(p);
}

/* The statement starting at or after p: *first gets its first character that is neither blank
 * nor comment (NULL when there is none before the end); returns the byte after its top-level ';'
 * (or the end of the text). text is the whole file (for the character before p). */
static const char *statement(const char *text, const char *p, const char **first) {
  *first = NULL;
  while (*p) {
    char c = *p;
    if (c == '-' && p[1] == '-') {
      while (*p && *p != '\n')
        p++;
      continue;
    }
    if (c == '/' && p[1] == '*') { /* comments nest in PostgreSQL */
      int depth = 1;
      for (p += 2; *p && depth > 0;) {
        if (p[0] == '/' && p[1] == '*')
          depth++, p += 2;
        else if (p[0] == '*' && p[1] == '/')
          depth--, p += 2;
        else
          p++;
      }
      continue;
    }
    if (c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v') {
      p++;
      continue;
    }
    if (c == ';')
      return p + 1;
    if (!*first)
      *first = p;
    if (c == '\'') {
      int backslash = p > text && (p[-1] == 'E' || p[-1] == 'e') && (p - 1 == text || !ident_char(p[-2]));
      for (p++; *p; p++) {
        if (backslash && *p == '\\' && p[1]) {
          p++;
        } else if (*p == '\'') {
          if (p[1] != '\'')
            break;
          p++;
        }
      }
      if (*p)
        p++;
      continue;
    }
    if (c == '"') {
      for (p++; *p; p++) {
        if (*p == '"') {
          if (p[1] != '"')
            break;
          p++;
        }
      }
      if (*p)
        p++;
      continue;
    }
    if (c == '$') {
      const char *end = dollar_quote_end(text, p);
      if (end) {
        p = end;
        continue;
      }
    }
    p++;
  }
  return p;
}

/* Where PostgreSQL's 1-based character position pos falls in s (UTF-8), at most at end. */
static const char *char_at(const char *s, const char *end, long pos) {
  const char *p = s;
  for (long i = 1; i < pos && p < end; i++) {
    p++;
    while (p < end && ((unsigned char)*p & 0xC0) == 0x80)
      p++;
  }
  return p;
}

static int word_is(const char *p, const char *word) {
  size_t n = strlen(word);
  return strncasecmp(p, word, n) == 0 && !ident_char(p[n]);
}

/* 1 when the statement at p would end or open the migration's transaction: the engine opens and
 * commits it around the file with the file's record, so a COMMIT inside would commit part of
 * a migration without its record. (ROLLBACK TO SAVEPOINT stays inside: fine.) */
static int ends_transaction(const char *p) {
  static const char *const words[] = {"BEGIN", "START", "COMMIT", "END", "ABORT", "PREPARE"};
  for (size_t i = 0; i < sizeof words / sizeof words[0]; i++)
    if (word_is(p, words[i]))
      return i != 5 || strcasestr(p, "TRANSACTION") != NULL; /* PREPARE TRANSACTION, not PREPARE stmt */
  if (word_is(p, "ROLLBACK")) {
    const char *q = p + 8;
    while (*q == ' ' || *q == '\t' || *q == '\n' || *q == '\r')
      q++;
    return !word_is(q, "TO");
  }
  return 0;
}

/* Runs the file's statements one at a time (inside the caller's transaction) so that a failure
 * can name its line. */
static int exec_file(PGconn *c, const eng_mig_file *f, const char *sql, char **err) {
  const char *p = sql, *first, *end;
  char *one = NULL;
  int rc = 0;
  while (*p) {
    end = statement(sql, p, &first);
    p = end;
    if (!first)
      continue;
    size_t len = (size_t)(end - first);
    char *n1 = realloc(one, len + 1);
    if (!n1) {
      rc = eng_errorf(err, ENG_ENOMEM, "db: out of memory running migration %s", f->name);
      break;
    }
    one = n1;
    memcpy(one, first, len);
    one[len] = '\0';
    if (ends_transaction(one)) {
      rc = eng_errorf(err, ENG_ECONFIG,
                      "db: migration %s/%s:%d controls the transaction (BEGIN, COMMIT, ROLLBACK ...): the engine "
                      "runs each migration in one transaction with its record; remove the statement",
                      f->dir, f->name, eng_mig_line_of(sql, first));
      break;
    }
    PGresult *r = PQexec(c, one);
    ExecStatusType st = PQresultStatus(r);
    if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK && st != PGRES_EMPTY_QUERY) {
      const char *pos = r ? PQresultErrorField(r, PG_DIAG_STATEMENT_POSITION) : NULL;
      const char *at = pos ? char_at(first, end, strtol(pos, NULL, 10)) : first;
      int mlen;
      const char *m = pg_msg(c, r, &mlen);
      rc = eng_errorf(err, ENG_EDB, "db: migration %s/%s:%d failed: %.*s", f->dir, f->name, eng_mig_line_of(sql, at),
                      mlen, m);
      PQclear(r);
      break;
    }
    PQclear(r);
  }
  free(one);
  return rc;
}

/* ---- migrations ------------------------------------------------------------------------------ */

/* Checks every record against the files (the lock is held: nobody adds one meanwhile). */
static int check_records(PGconn *c, const char *schema_dir, eng_mig_file *files, size_t n, int *max_id, int *count,
                         char **err) {
  PGresult *r = NULL;
  int rc = run(c, SQL_SELECT_MIGRATIONS, 0, NULL, &r, "cannot read " ENG_DB_MIGRATIONS_TABLE, err);
  if (rc)
    return rc;
  for (int i = 0; i < PQntuples(r) && rc == 0; i++) {
    int id = atoi(PQgetvalue(r, i, 0));
    rc =
        eng_mig_check_record(schema_dir, eng_mig_find(files, n, id), id, PQgetvalue(r, i, 1), PQgetvalue(r, i, 2), err);
    *max_id = id;
    if (count)
      (*count)++;
  }
  PQclear(r);
  return rc;
}

static int apply(PGconn *c, eng_mig_file *f, int quiet, char **err) {
  char *sql = NULL;
  char id[16];
  int rc;
  if ((rc = eng_mig_load(f, &sql, err)) != 0)
    return rc;
  snprintf(id, sizeof id, "%d", f->id);
  const char *params[] = {id, f->name, f->checksum};
  if ((rc = run(c, "BEGIN", 0, NULL, NULL, "cannot start migration", err)) != 0 ||
      (rc = exec_file(c, f, sql, err)) != 0)
    goto cleanup;
  if ((rc = run(c, SQL_INSERT_MIGRATION, 3, params, NULL, "cannot record the migration", err)) != 0)
    goto cleanup;
  if ((rc = run(c, "COMMIT", 0, NULL, NULL, "migration failed on commit", err)) != 0)
    goto cleanup;
  if (!quiet)
    eng_log_info("db: applied migration %s (sha256 %.12s)", f->name, f->checksum);
cleanup:
  if (PQtransactionStatus(c) != PQTRANS_IDLE)
    PQclear(PQexec(c, "ROLLBACK"));
  free(sql);
  return rc;
}

int eng_pg_migrate(const char *conninfo, const char *schema_dir, int *applied, char **err) {
  return eng_pg_migrate_ex(conninfo, schema_dir, NULL, applied, err);
}

int eng_pg_migrate_ex(const char *conninfo, const char *schema_dir, const eng_db_migrate_options *opt, int *applied,
                      char **err) {
  eng_db_migrate_options o = opt ? *opt : (eng_db_migrate_options){0};
  char *discard = NULL;
  char **e = err ? err : &discard; /* run() and apply() write through it */
  eng_mig_file *files = NULL;
  PGconn *c = NULL;
  size_t n = 0;
  int max_id = -1, count = 0, rc;
  eng_dirs dl;

  *e = NULL;
  if ((rc = eng_mig_list(schema_dir, ENG_MIG_PG, &dl, &files, &n, e)) != 0 ||
      (rc = connect_locked(conninfo, &c, e)) != 0)
    goto cleanup;
  if ((rc = run(c, SQL_CREATE_MIGRATIONS, 0, NULL, NULL, "cannot create " ENG_DB_MIGRATIONS_TABLE, e)) != 0 ||
      (rc = check_records(c, schema_dir, files, n, &max_id, NULL, e)) != 0 ||
      (rc = eng_mig_check_order(files, n, max_id, e)) != 0)
    goto cleanup;
  for (size_t i = 0; i < n; i++) {
    if (files[i].recorded || (o.limit && files[i].id > o.max_id))
      continue;
    if ((rc = apply(c, &files[i], o.quiet, e)) != 0)
      goto cleanup;
    count++;
  }
cleanup:
  disconnect(c, c != NULL);
  free(files);
  free(discard);
  if (applied)
    *applied = count;
  return rc;
}

/* 1 when the table exists (in the search path), 0 when not, else an error. */
static int has_table(PGconn *c, const char *name, char **err) {
  PGresult *r = NULL;
  const char *params[] = {name};
  int rc = run(c, "SELECT to_regclass($1) IS NOT NULL", 1, params, &r, "cannot read the catalog", err);
  if (rc)
    return rc;
  rc = strcmp(PQgetvalue(r, 0, 0), "t") == 0;
  PQclear(r);
  return rc;
}

/* The value of key in the engine's table (the table exists), *value NULL when none. */
static int read_fact(PGconn *c, const char *key, char **value, char **err) {
  PGresult *r = NULL;
  const char *params[] = {key};
  int rc = run(c, SQL_SELECT_FACT, 1, params, &r, "cannot read " ENG_DB_ENGINE_TABLE, err);
  *value = NULL;
  if (rc)
    return rc;
  if (PQntuples(r) > 0 && (*value = strdup(PQgetvalue(r, 0, 0))) == NULL)
    rc = eng_errorf(err, ENG_ENOMEM, "db: out of memory");
  PQclear(r);
  return rc;
}

int eng_pg_inspect(const char *conninfo, const char *schema_dir, eng_db_state *out, char **err) {
  eng_db_state s = {.max_applied_id = -1};
  char *discard = NULL;
  char **e = err ? err : &discard;
  eng_mig_file *files = NULL;
  PGconn *c = NULL;
  size_t n = 0;
  int rc, t;
  eng_dirs dl;

  *e = NULL;
  if ((rc = eng_mig_list(schema_dir, ENG_MIG_PG, &dl, &files, &n, e)) != 0 || (rc = connect_db(conninfo, &c, e)) != 0)
    goto cleanup;
  s.exists = 1;
  /* one snapshot for the records and the facts */
  if ((rc = run(c, "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY", 0, NULL, NULL, "cannot read", e)) != 0)
    goto cleanup;
  if ((t = rc = has_table(c, ENG_DB_MIGRATIONS_TABLE, e)) < 0 ||
      (t == 1 && (rc = check_records(c, schema_dir, files, n, &s.max_applied_id, &s.applied, e)) != 0))
    goto cleanup;
  if ((t = rc = has_table(c, ENG_DB_ENGINE_TABLE, e)) < 0 ||
      (t == 1 && (rc = read_fact(c, "key_fingerprint", &s.fingerprint, e)) != 0))
    goto cleanup;
  if ((rc = eng_mig_check_order(files, n, s.max_applied_id, e)) != 0)
    goto cleanup;
  if ((rc = eng_mig_pending(files, n, &s, e)) != 0)
    goto cleanup;
  *out = s;
  s = (eng_db_state){0};
cleanup:
  disconnect(c, 0);
  eng_db_state_free(&s);
  free(files);
  free(discard);
  return rc;
}

/* ---- the engine's facts ---------------------------------------------------------------------- */

static int write_fact(const char *conninfo, const char *insert, const char *key, const char *value, char **stored,
                      char **err) {
  char *discard = NULL;
  char **e = err ? err : &discard;
  const char *params[] = {key, value};
  PGconn *c = NULL;
  int rc;

  *e = NULL;
  if (stored)
    *stored = NULL;
  /* under the lock: CREATE TABLE IF NOT EXISTS is not safe against a concurrent one */
  if ((rc = connect_locked(conninfo, &c, e)) != 0 ||
      (rc = run(c, SQL_CREATE_ENGINE, 0, NULL, NULL, "cannot create " ENG_DB_ENGINE_TABLE, e)) != 0 ||
      (rc = run(c, insert, 2, params, NULL, "cannot write " ENG_DB_ENGINE_TABLE, e)) != 0)
    goto cleanup;
  if (stored)
    rc = read_fact(c, key, stored, e);
cleanup:
  disconnect(c, c != NULL);
  free(discard);
  return rc;
}

int eng_pg_engine_fact(const char *conninfo, const char *key, const char *value, char **stored, char **err) {
  return write_fact(conninfo,
                    "INSERT INTO " ENG_DB_ENGINE_TABLE " (key, value) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING",
                    key, value, stored, err);
}

int eng_pg_engine_fact_set(const char *conninfo, const char *key, const char *value, char **err) {
  return write_fact(conninfo,
                    "INSERT INTO " ENG_DB_ENGINE_TABLE
                    " (key, value) VALUES ($1, $2) ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
                    key, value, NULL, err);
}

/* ---- the connection string in a log ------------------------------------------------------------ */

typedef struct outbuf {
  char *p;
  size_t cap, n;
} outbuf;

static void put(outbuf *o, const char *s, size_t len) {
  for (size_t i = 0; i < len && o->n + 1 < o->cap; i++)
    o->p[o->n++] = s[i];
  o->p[o->n] = '\0';
}

#define PUTS(o, lit) put(o, lit, sizeof lit - 1)

/* A URI: user:password@ in the authority, password=... in the query. */
static void redact_uri(outbuf *o, const char *db) {
  const char *auth = strstr(db, "://") + 3;
  size_t alen = strcspn(auth, "/?#");
  const char *at = NULL;
  for (const char *q = auth; q < auth + alen; q++) {
    if (*q == '@')
      at = q; /* the last one: a password may hold a raw '@' */
  }
  const char *colon = at ? memchr(auth, ':', (size_t)(at - auth)) : NULL;
  if (colon) {
    put(o, db, (size_t)(colon + 1 - db));
    PUTS(o, "***");
    db = at;
  }
  const char *query = strchr(db, '?');
  if (!query) {
    put(o, db, strlen(db));
    return;
  }
  put(o, db, (size_t)(query - db));
  for (const char *p = query; *p;) { /* p at '?' or '&' */
    size_t plen = 1 + strcspn(p + 1, "&");
    if (strncmp(p + 1, "password=", 9) == 0) {
      put(o, p, 10);
      PUTS(o, "***");
    } else {
      put(o, p, plen);
    }
    p += plen;
  }
}

static int blank(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v'; }

/* A keyword string: key = value pairs, a value either '...' (with \ escapes) or up to a blank. */
static void redact_keywords(outbuf *o, const char *p) {
  while (*p) {
    const char *start = p;
    while (blank(*p))
      p++;
    const char *key = p;
    while (*p && *p != '=' && !blank(*p))
      p++;
    int is_password = (size_t)(p - key) == 8 && strncmp(key, "password", 8) == 0;
    while (blank(*p))
      p++;
    if (*p != '=') { /* not a keyword string after all: keep the rest as it is */
      put(o, start, strlen(start));
      return;
    }
    p++;
    while (blank(*p))
      p++;
    const char *value = p;
    if (*p == '\'') {
      for (p++; *p && *p != '\''; p++) {
        if (*p == '\\' && p[1])
          p++;
      }
      if (*p)
        p++;
    } else {
      while (*p && !blank(*p))
        p++;
    }
    put(o, start, (size_t)(value - start));
    if (is_password)
      PUTS(o, "***");
    else
      put(o, value, (size_t)(p - value));
  }
}

char *eng_pg_conninfo_redact(const char *db, char *out, size_t cap) {
  outbuf o = {out, cap, 0};
  if (cap == 0)
    return out;
  out[0] = '\0';
  if (strncmp(db, "postgresql://", 13) == 0 || strncmp(db, "postgres://", 11) == 0)
    redact_uri(&o, db);
  else if (strchr(db, '='))
    redact_keywords(&o, db);
  else
    put(&o, db, strlen(db));
  return out;
}
