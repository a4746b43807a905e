/* pg.c - the PostgreSQL pool of one worker (pg.h): libpq's asynchronous API on the worker's loop.
 *
 * A connection is in one of four states: DOWN (no PGconn; a back-off timer may be set), CONNECTING
 * (PQconnectPoll driven by its socket), READY (nothing in flight) and RUNNING (a statement in
 * flight). Orthogonal to that, it may be held (by eng_pg_acquire) and, while RUNNING, it may be
 * draining: its request timed out and was answered, the cancel is on its way, and the connection
 * waits for the server's answer before it serves again. A connection's socket is always watched
 * for reading once connected, so a backend that dies while idle is noticed at once and made again.
 *
 * Requests (a query or an acquire) wait in the pool's FIFO, or, for a query on a held connection
 * that is draining, in that connection's `pending` slot. Each has a libuv timer: its deadline,
 * and the way a completion found inside an API call is handed to the loop (a 0 ms timer), so a
 * callback never runs inside eng_pg_query/acquire/release.
 *
 * Memory: the pool owns its connections (an array) and the statement cache; a request owns its
 * copy of the parameters and is freed in its timer's close callback. The pool is freed once every
 * handle it opened has been closed and every cancel on the thread pool has come back. */
#include "pg.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "log.h"
#include "pq_load.h"
#include "text.h"

/* Type OIDs (catalog/pg_type.h, stable across versions). */
#define OID_BOOL 16
#define OID_BYTEA 17
#define OID_INT8 20
#define OID_INT2 21
#define OID_INT4 23
#define OID_OID 26
#define OID_FLOAT4 700
#define OID_FLOAT8 701
#define OID_NUMERIC 1700

#define STMT_BUCKETS 1024
#define STMT_NAME_MAX 32
#define MSG_MAX 1024 /* a message we compose ourselves */

enum { C_DOWN, C_CONNECTING, C_READY, C_RUNNING };
enum { PH_NONE, PH_PREPARE, PH_EXEC, PH_INTERNAL };
enum { RQ_QUERY, RQ_ACQUIRE };
enum { R_NEW, R_QUEUED, R_PENDING, R_RUNNING, R_DONE };

typedef struct eng_pg_req request;

struct eng_pg_result {
  PGresult *pr;
  int code;
  eng_pg_kind kind;
  char *msg;
  char sqlstate[6];
  int kept;
  int in_cb; /* its callback runs: a free (the keeper may free it inside the callback) waits */
  int freed; /* eng_pg_result_free was called meanwhile */
};

struct eng_pg_conn {
  eng_pg *pg;
  PGconn *pc;
  uv_poll_t *poll; /* for poll_fd; a new one when the socket changes (freed in its close callback) */
  int poll_fd;
  int poll_events;
  uv_timer_t timer; /* connect timeout, back-off, or the drain grace: one at a time */
  int state;
  int phase;
  int held;
  int broken; /* held and lost: made again on release */
  int draining;
  int backoff_ms;
  request *req;            /* the request in flight (NULL while draining or for an internal ROLLBACK) */
  request *pending;        /* held: the holder's next query, waiting for the drain to end */
  uint32_t prep_id;        /* the statement being prepared (PH_PREPARE), kept while draining */
  int cancelling;          /* a PQcancel for this connection is still on the thread pool */
  uint64_t epoch;          /* +1 each time the PGconn goes: a late cancel's completion is then ignored */
  PGresult *acc;           /* the statement's result so far */
  unsigned char *prepared; /* prepared[id]: statement eng_<id>_<gen[id]> exists on this connection */
  uint16_t *gen;           /* gen[id]: bumped when the server says a statement's plan went stale */
  size_t prepared_cap;
};

struct eng_pg_req {
  eng_pg *pg;
  int type;
  int where;
  eng_pg_conn *conn; /* the held connection it targets, or NULL */
  eng_pg_conn *on;   /* where it runs */
  const eng_pg_stmt *stmt;
  eng_pg_stmt *own_stmt; /* an uncached translation */
  int nvals;
  const char **values;
  int *lengths;
  int *formats;
  eng_pg_cb cb;
  void *data;
  uv_timer_t timer;
  int retried;             /* run again once after its prepared statement went stale */
  eng_pg_result *deferred; /* completed inside an API call: delivered by a 0 ms timer */
  eng_pg_conn *deferred_conn;
  request *prev, *next; /* the pool's FIFO */
};

struct eng_pg {
  uv_loop_t *loop;
  char *conninfo;
  eng_pg_options opt;
  eng_pg_conn *conns;
  int size;
  request *head, *tail;
  int waiting;
  int healthy;
  int closing;
  int submitting; /* >0 inside an API call: completions are deferred to the loop */
  int handles;    /* open libuv handles and cancels on the thread pool */
  void (*done)(void *);
  void *done_data;
  eng_pg_stmt *buckets[STMT_BUCKETS];
  uint32_t nstmts;
  uint64_t connects, prepares, cancels;
};

/* ---- kinds ---- */

const char *eng_pg_kind_name(eng_pg_kind kind) {
  switch (kind) {
#define ENG_PG_KIND_CASE(name, str) \
  case ENG_PG_KIND_##name:          \
    return str;
    ENG_PG_KIND_MAP(ENG_PG_KIND_CASE)
#undef ENG_PG_KIND_CASE
  }
  return "error";
}

eng_pg_kind eng_pg_kind_of(const char *s, const char *constraint) {
  if (!s || strlen(s) != 5)
    return ENG_PG_KIND_ERROR;
  if (strcmp(s, "23505") == 0) {
    size_t n = constraint ? strlen(constraint) : 0;
    return n >= 5 && strcmp(constraint + n - 5, "_pkey") == 0 ? ENG_PG_KIND_PRIMARY_KEY : ENG_PG_KIND_UNIQUE;
  }
  if (strcmp(s, "23503") == 0)
    return ENG_PG_KIND_FOREIGN_KEY;
  if (strcmp(s, "23514") == 0)
    return ENG_PG_KIND_CHECK;
  if (strcmp(s, "23502") == 0)
    return ENG_PG_KIND_NOT_NULL;
  if (strncmp(s, "23", 2) == 0)
    return ENG_PG_KIND_CONSTRAINT;
  if (strcmp(s, "40001") == 0 || strcmp(s, "40P01") == 0)
    return ENG_PG_KIND_SERIALIZATION;
  if (strcmp(s, "55P03") == 0 || strncmp(s, "53", 2) == 0)
    return ENG_PG_KIND_BUSY;
  if (strncmp(s, "08", 2) == 0 || strcmp(s, "57P01") == 0 || strcmp(s, "57P02") == 0 || strcmp(s, "57P03") == 0)
    return ENG_PG_KIND_UNAVAILABLE;
  return ENG_PG_KIND_ERROR;
}

/* ---- results ---- */

static eng_pg_result oom_result = {NULL, ENG_EDB, ENG_PG_KIND_ERROR, (char *)"out of memory", "", 1, 0, 0};

static eng_pg_result *result_new(PGresult *pr, int code, eng_pg_kind kind, const char *sqlstate, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));
static eng_pg_result *result_new(PGresult *pr, int code, eng_pg_kind kind, const char *sqlstate, const char *fmt, ...) {
  eng_pg_result *r = calloc(1, sizeof *r);
  char buf[MSG_MAX];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(buf, sizeof buf, fmt, ap);
  va_end(ap);
  if (r)
    r->msg = strdup(buf);
  if (!r || !r->msg) {
    free(r);
    PQclear(pr);
    return &oom_result;
  }
  r->pr = pr;
  r->code = code;
  r->kind = kind;
  snprintf(r->sqlstate, sizeof r->sqlstate, "%s", sqlstate ? sqlstate : "");
  return r;
}

/* libpq's message on one line: each run of white space (its messages have newlines and tabs) one
 * space, none at the ends. */
static void trim_message(char *dst, size_t cap, const char *msg) {
  if (!msg || !*msg)
    msg = "unknown error";
  size_t n = 0;
  int space = 0;
  for (const char *p = msg; *p && n + 1 < cap; p++) {
    if (*p == ' ' || *p == '\n' || *p == '\t' || *p == '\r') {
      space = n > 0;
      continue;
    }
    if (space && n + 2 < cap)
      dst[n++] = ' ';
    space = 0;
    dst[n++] = *p;
  }
  dst[n] = '\0';
}

/* Takes pr over (may be NULL: then the connection's message). lost: the connection is gone. */
static eng_pg_result *result_from(PGresult *pr, PGconn *pc, int lost) {
  char msg[MSG_MAX];
  if (pr) {
    ExecStatusType st = PQresultStatus(pr);
    if (st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK)
      return result_new(pr, 0, ENG_PG_KIND_NONE, NULL, "ok");
    if (st == PGRES_EMPTY_QUERY) {
      PQclear(pr);
      return result_new(NULL, ENG_EDB, ENG_PG_KIND_ERROR, NULL, "empty statement");
    }
    const char *state = PQresultErrorField(pr, PG_DIAG_SQLSTATE);
    const char *primary = PQresultErrorField(pr, PG_DIAG_MESSAGE_PRIMARY);
    eng_pg_kind kind = eng_pg_kind_of(state, PQresultErrorField(pr, PG_DIAG_CONSTRAINT_NAME));
    if (st != PGRES_FATAL_ERROR && st != PGRES_NONFATAL_ERROR)
      primary = "unsupported result (COPY is not supported)";
    trim_message(msg, sizeof msg, primary ? primary : PQresultErrorMessage(pr));
    eng_pg_result *r = result_new(NULL, ENG_EDB, lost ? ENG_PG_KIND_UNAVAILABLE : kind, state, "%s", msg);
    PQclear(pr);
    return r;
  }
  trim_message(msg, sizeof msg, pc ? PQerrorMessage(pc) : NULL);
  return result_new(NULL, ENG_EDB, ENG_PG_KIND_UNAVAILABLE, NULL, "%s", msg);
}

void eng_pg_result_keep(eng_pg_result *res) {
  if (res)
    res->kept = 1;
}

void eng_pg_result_free(eng_pg_result *res) {
  if (!res || res == &oom_result)
    return;
  if (res->in_cb) {
    res->freed = 1; /* deliver frees it once the callback returns */
    return;
  }
  PQclear(res->pr);
  free(res->msg);
  free(res);
}

int eng_pg_result_code(const eng_pg_result *res) { return res->code; }
eng_pg_kind eng_pg_result_kind(const eng_pg_result *res) { return res->kind; }
const char *eng_pg_result_message(const eng_pg_result *res) { return res->msg; }
const char *eng_pg_result_sqlstate(const eng_pg_result *res) { return res->sqlstate; }
int eng_pg_result_rows(const eng_pg_result *res) { return res->pr ? PQntuples(res->pr) : 0; }
int eng_pg_result_cols(const eng_pg_result *res) { return res->pr ? PQnfields(res->pr) : 0; }

const char *eng_pg_result_name(const eng_pg_result *res, int col) {
  return res->pr && col >= 0 && col < PQnfields(res->pr) ? PQfname(res->pr, col) : NULL;
}

int64_t eng_pg_result_affected(const eng_pg_result *res) {
  if (!res->pr)
    return 0;
  /* PQcmdTuples also counts a SELECT's rows: only the commands that change rows count here. */
  const char *tag = PQcmdStatus(res->pr);
  if (strncmp(tag, "INSERT", 6) != 0 && strncmp(tag, "UPDATE", 6) != 0 && strncmp(tag, "DELETE", 6) != 0 &&
      strncmp(tag, "MERGE", 5) != 0)
    return 0;
  const char *s = PQcmdTuples(res->pr);
  return *s ? strtoll(s, NULL, 10) : 0;
}

static int in_range(const eng_pg_result *res, int row, int col) {
  return res->pr && row >= 0 && col >= 0 && row < PQntuples(res->pr) && col < PQnfields(res->pr) &&
         !PQgetisnull(res->pr, row, col);
}

/* A whole number in int64's range, written as PostgreSQL writes one (-?[0-9]+). */
static int whole_number(const char *s, int64_t *out) {
  const char *p = s + (*s == '-');
  if (!*p)
    return 0;
  for (const char *q = p; *q; q++)
    if (*q < '0' || *q > '9')
      return 0;
  errno = 0;
  char *end;
  long long v = strtoll(s, &end, 10);
  if (errno == ERANGE || *end)
    return 0;
  *out = (int64_t)v;
  return 1;
}

eng_pg_type eng_pg_result_type(const eng_pg_result *res, int row, int col) {
  if (!in_range(res, row, col))
    return ENG_PG_NULL;
  int64_t v;
  switch (PQftype(res->pr, col)) {
  case OID_BOOL:
    return ENG_PG_BOOL;
  case OID_INT2:
  case OID_INT4:
  case OID_INT8:
  case OID_OID:
    return ENG_PG_INT;
  case OID_FLOAT4:
  case OID_FLOAT8:
    return ENG_PG_FLOAT;
  case OID_NUMERIC:
    return whole_number(PQgetvalue(res->pr, row, col), &v) ? ENG_PG_INT : ENG_PG_FLOAT;
  case OID_BYTEA:
    return ENG_PG_BLOB;
  default:
    return ENG_PG_TEXT;
  }
}

int64_t eng_pg_result_int(const eng_pg_result *res, int row, int col) {
  eng_pg_type t = eng_pg_result_type(res, row, col);
  const char *s = t == ENG_PG_NULL ? "" : PQgetvalue(res->pr, row, col);
  int64_t v = 0;
  if (t == ENG_PG_BOOL)
    return s[0] == 't';
  if (t == ENG_PG_INT && whole_number(s, &v))
    return v;
  return 0;
}

double eng_pg_result_float(const eng_pg_result *res, int row, int col) {
  eng_pg_type t = eng_pg_result_type(res, row, col);
  if (t != ENG_PG_INT && t != ENG_PG_FLOAT)
    return 0;
  return strtod(PQgetvalue(res->pr, row, col), NULL);
}

const char *eng_pg_result_text(const eng_pg_result *res, int row, int col, size_t *len) {
  if (!in_range(res, row, col)) {
    if (len)
      *len = 0;
    return NULL;
  }
  if (len)
    *len = (size_t)PQgetlength(res->pr, row, col);
  return PQgetvalue(res->pr, row, col);
}

/* Decodes bytea's text form, hex (\x0a0b...) or the old escape form (\\ and \ooo), into dst
 * (NULL: only count). Returns the byte count. */
static size_t bytea_decode(const char *s, size_t n, unsigned char *dst) {
  size_t out = 0;
  if (n >= 2 && s[0] == '\\' && s[1] == 'x') {
    for (size_t i = 2; i + 1 < n; i += 2) {
      int hi = eng_hex_digit((unsigned char)s[i]), lo = eng_hex_digit((unsigned char)s[i + 1]);
      if (hi < 0 || lo < 0)
        break;
      if (dst)
        dst[out] = (unsigned char)(hi * 16 + lo);
      out++;
    }
    return out;
  }
  for (size_t i = 0; i < n; out++) {
    unsigned char b = (unsigned char)s[i];
    if (s[i] == '\\' && i + 1 < n && s[i + 1] == '\\') {
      b = '\\';
      i += 2;
    } else if (s[i] == '\\' && i + 3 < n && s[i + 1] >= '0' && s[i + 1] <= '3') {
      b = (unsigned char)((s[i + 1] - '0') * 64 + (s[i + 2] - '0') * 8 + (s[i + 3] - '0'));
      i += 4;
    } else {
      i++;
    }
    if (dst)
      dst[out] = b;
  }
  return out;
}

size_t eng_pg_result_blob_len(const eng_pg_result *res, int row, int col) {
  if (eng_pg_result_type(res, row, col) != ENG_PG_BLOB)
    return 0;
  return bytea_decode(PQgetvalue(res->pr, row, col), (size_t)PQgetlength(res->pr, row, col), NULL);
}

size_t eng_pg_result_blob(const eng_pg_result *res, int row, int col, unsigned char *dst) {
  if (eng_pg_result_type(res, row, col) != ENG_PG_BLOB)
    return 0;
  return bytea_decode(PQgetvalue(res->pr, row, col), (size_t)PQgetlength(res->pr, row, col), dst);
}

/* ---- placeholder translation ---- */

typedef struct sbuf {
  char *p;
  size_t len, cap;
  int oom;
} sbuf;

static void sb_add(sbuf *b, const char *s, size_t n) {
  if (b->oom)
    return;
  if (b->len + n + 1 > b->cap) {
    size_t cap = b->cap ? b->cap : 256;
    while (cap < b->len + n + 1)
      cap *= 2;
    char *p = realloc(b->p, cap);
    if (!p) {
      b->oom = 1;
      return;
    }
    b->p = p;
    b->cap = cap;
  }
  memcpy(b->p + b->len, s, n);
  b->len += n;
  b->p[b->len] = '\0';
}

static int ident_start(unsigned char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || c >= 0x80;
}
static int ident_char(unsigned char c) { return ident_start(c) || (c >= '0' && c <= '9') || c == '$'; }

/* Writes $n. Right after a name or a number (`a?`, `x:y`) it writes a space first: PostgreSQL
 * reads `$` and digits as part of a name, so `a$1` would be one identifier and the parameter
 * lost (found by fuzz_pgsql). */
static void sb_param(sbuf *b, int n) {
  char tmp[16];
  int k = snprintf(tmp, sizeof tmp, "%s$%d", b->len > 0 && ident_char((unsigned char)b->p[b->len - 1]) ? " " : "", n);
  sb_add(b, tmp, (size_t)k);
}
static int digit(unsigned char c) { return c >= '0' && c <= '9'; }

void eng_pg_stmt_free(const eng_pg_stmt *cst) {
  eng_pg_stmt *st = (eng_pg_stmt *)cst;
  if (!st || st->id)
    return;
  for (int i = 0; st->names && i < st->nparams; i++)
    free(st->names[i]);
  free(st->names);
  free(st->pg_sql);
  free(st->sql);
  free(st);
}

/* End of a quoted run starting at i (the opening quote q): the index after the closing quote, or
 * len when unterminated. A doubled quote is one quote; backslashes escape with `backslash`. */
static size_t skip_quoted(const char *s, size_t len, size_t i, char q, int backslash) {
  for (i++; i < len; i++) {
    if (backslash && s[i] == '\\') {
      i++;
      continue;
    }
    if (s[i] == q) {
      if (i + 1 < len && s[i + 1] == q) {
        i++;
        continue;
      }
      return i + 1;
    }
  }
  return len;
}

/* A dollar quote's tag at i ($$ or $tag$): its length, or 0 when there is none. */
static size_t dollar_tag(const char *s, size_t len, size_t i) {
  size_t j = i + 1;
  if (j < len && s[j] == '$')
    return 2;
  if (j >= len || !ident_start((unsigned char)s[j]))
    return 0;
  while (j < len && ident_char((unsigned char)s[j]) && s[j] != '$')
    j++;
  return j < len && s[j] == '$' ? j - i + 1 : 0;
}

int eng_pg_translate(const char *sql, size_t len, eng_pg_stmt **out, char **err) {
  *out = NULL;
  if (len > ENG_PG_SQL_MAX_BYTES)
    return eng_errorf(err, ENG_ETOOBIG, "SQL text of %zu bytes is over the limit of %d", len, ENG_PG_SQL_MAX_BYTES);
  sbuf b = {0};
  char **names = NULL;
  int nnames = 0, cap = 0, nq = 0, maxdollar = 0, rc = 0;
  size_t i = 0;
  sb_add(&b, "", 0);
  while (i < len && !b.oom) {
    unsigned char c = (unsigned char)sql[i];
    size_t start = i;
    if (c == '\'') {
      i = skip_quoted(sql, len, i, '\'', 0);
    } else if (c == '"') {
      i = skip_quoted(sql, len, i, '"', 0);
    } else if (c == '-' && i + 1 < len && sql[i + 1] == '-') {
      while (i < len && sql[i] != '\n')
        i++;
    } else if (c == '/' && i + 1 < len && sql[i + 1] == '*') {
      int depth = 0;
      while (i < len) {
        if (i + 1 < len && sql[i] == '/' && sql[i + 1] == '*') {
          depth++;
          i += 2;
        } else if (i + 1 < len && sql[i] == '*' && sql[i + 1] == '/') {
          i += 2;
          if (--depth == 0)
            break;
        } else {
          i++;
        }
      }
    } else if (ident_start(c)) {
      while (i < len && ident_char((unsigned char)sql[i]))
        i++;
      /* E'...' (escape string constant): backslashes escape, the quote included. */
      if (i - start == 1 && (c == 'E' || c == 'e') && i < len && sql[i] == '\'')
        i = skip_quoted(sql, len, i, '\'', 1);
    } else if (c == '$') {
      size_t tag = dollar_tag(sql, len, i);
      if (tag) {
        const char *end = NULL;
        for (size_t j = i + tag; j + tag <= len; j++)
          if (memcmp(sql + j, sql + i, tag) == 0) {
            end = sql + j;
            break;
          }
        i = end ? (size_t)(end - sql) + tag : len;
      } else if (i + 1 < len && digit((unsigned char)sql[i + 1])) {
        long n = 0;
        for (i++; i < len && digit((unsigned char)sql[i]); i++)
          if (n <= ENG_PG_PARAMS_MAX)
            n = n * 10 + (sql[i] - '0');
        if (n > ENG_PG_PARAMS_MAX) {
          rc = eng_errorf(err, ENG_ETOOBIG, "parameter $%ld: at most %d parameters", n, ENG_PG_PARAMS_MAX);
          goto done;
        }
        if (n > maxdollar)
          maxdollar = (int)n;
      } else {
        i++;
      }
    } else if (c == '?') {
      /* `?NNN` is parameter NNN (SQLite's numbered form); a bare `?` is one more than the
       * highest so far, as SQLite numbers them. */
      long n = 0;
      int numbered = 0;
      for (i++; i < len && digit((unsigned char)sql[i]); i++, numbered = 1)
        if (n <= ENG_PG_PARAMS_MAX)
          n = n * 10 + (sql[i] - '0');
      if (!numbered)
        n = (long)nq + 1;
      if (n > ENG_PG_PARAMS_MAX || (numbered && n == 0)) {
        rc = eng_errorf(err, n == 0 ? ENG_EPARSE : ENG_ETOOBIG, "parameter ?%ld: numbers run from 1 to %d", n,
                        ENG_PG_PARAMS_MAX);
        goto done;
      }
      if (n > nq)
        nq = (int)n;
      sb_param(&b, (int)n);
      continue;
    } else if (c == ':' && i + 1 < len && sql[i + 1] == ':') {
      i += 2; /* a cast: the type name after it is copied as an identifier */
    } else if (c == ':' && i + 1 < len && ident_start((unsigned char)sql[i + 1])) {
      size_t j = i + 1;
      while (j < len && ident_char((unsigned char)sql[j]) && sql[j] != '$')
        j++;
      size_t n = j - i - 1;
      int k = 0;
      while (k < nnames && !(strlen(names[k]) == n && memcmp(names[k], sql + i + 1, n) == 0))
        k++;
      if (k == nnames) {
        if (nnames == ENG_PG_PARAMS_MAX) {
          rc = eng_errorf(err, ENG_ETOOBIG, "more than %d parameters", ENG_PG_PARAMS_MAX);
          goto done;
        }
        if (nnames == cap) {
          int ncap = cap ? cap * 2 : 8;
          char **p = realloc(names, (size_t)ncap * sizeof *names);
          if (!p)
            goto oom;
          names = p;
          cap = ncap;
        }
        if (!(names[nnames] = strndup(sql + i + 1, n)))
          goto oom;
        nnames++;
      }
      sb_param(&b, k + 1);
      i = j;
      continue;
    } else {
      i++;
    }
    sb_add(&b, sql + start, i - start);
  }
  if (b.oom)
    goto oom;
  if (nq && nnames) {
    rc = eng_errorf(err, ENG_EPARSE, "the statement mixes ? and :name placeholders");
    goto done;
  }
  if (maxdollar && (nq || nnames)) {
    rc = eng_errorf(err, ENG_EPARSE, "the statement mixes $n with ? or :name placeholders");
    goto done;
  }
  eng_pg_stmt *st = calloc(1, sizeof *st);
  if (!st || !(st->sql = malloc(len + 1))) {
    free(st);
    goto oom;
  }
  memcpy(st->sql, sql, len);
  st->sql[len] = '\0';
  st->len = len;
  st->pg_sql = b.p;
  st->nparams = nnames ? nnames : nq ? nq : maxdollar;
  st->names = nnames ? names : NULL;
  if (!nnames)
    free(names);
  *out = st;
  return 0;
oom:
  rc = eng_errorf(err, ENG_ENOMEM, "out of memory translating SQL");
done:
  for (int k = 0; k < nnames; k++)
    free(names[k]);
  free(names);
  free(b.p);
  return rc;
}

/* ---- the statement cache ---- */

static uint64_t fnv1a(const char *s, size_t n) {
  uint64_t h = 1469598103934665603ULL;
  for (size_t i = 0; i < n; i++) {
    h ^= (unsigned char)s[i];
    h *= 1099511628211ULL;
  }
  return h;
}

int eng_pg_statement(eng_pg *pg, const char *sql, size_t len, const eng_pg_stmt **out, char **err) {
  uint64_t h = fnv1a(sql, len);
  eng_pg_stmt **slot = &pg->buckets[h % STMT_BUCKETS];
  for (eng_pg_stmt *st = *slot; st; st = st->next)
    if (st->hash == h && st->len == len && memcmp(st->sql, sql, len) == 0) {
      *out = st;
      return 0;
    }
  eng_pg_stmt *st;
  int rc = eng_pg_translate(sql, len, &st, err);
  if (rc)
    return rc;
  st->hash = h;
  if (pg->nstmts < (uint32_t)pg->opt.stmt_cache) {
    st->id = ++pg->nstmts;
    st->next = *slot;
    *slot = st;
  }
  *out = st;
  return 0;
}

/* ---- requests ---- */

static void dispatch(eng_pg *pg);
static void conn_ready(eng_pg_conn *c);

/* Connected, nothing in flight, and no cancel of an earlier statement still on its way: a cancel
 * that arrived during the next statement would cancel that one instead. */
static int usable(const eng_pg_conn *c) { return c->state == C_READY && !c->cancelling; }
static void conn_lost(eng_pg_conn *c, PGresult *pr);
static void conn_connect(eng_pg_conn *c);

static void maybe_free(eng_pg *pg) {
  if (!pg->closing || pg->handles > 0)
    return;
  for (int i = 0; i < STMT_BUCKETS; i++)
    for (eng_pg_stmt *st = pg->buckets[i], *next; st; st = next) {
      next = st->next;
      st->id = 0;
      eng_pg_stmt_free(st);
    }
  for (int i = 0; i < pg->size; i++) {
    free(pg->conns[i].prepared);
    free(pg->conns[i].gen);
  }
  void (*done)(void *) = pg->done;
  void *data = pg->done_data;
  free(pg->conns);
  free(pg->conninfo);
  free(pg);
  if (done)
    done(data);
}

static void conn_timer_closed(uv_handle_t *h) {
  eng_pg *pg = ((eng_pg_conn *)h->data)->pg;
  pg->handles--;
  maybe_free(pg);
}

static void request_closed(uv_handle_t *h) {
  request *r = h->data;
  eng_pg *pg = r->pg;
  eng_pg_stmt_free(r->own_stmt);
  free(r);
  pg->handles--;
  maybe_free(pg);
}

static void fifo_remove(eng_pg *pg, request *r) {
  if (r->prev)
    r->prev->next = r->next;
  else
    pg->head = r->next;
  if (r->next)
    r->next->prev = r->prev;
  else
    pg->tail = r->prev;
  r->prev = r->next = NULL;
  pg->waiting--;
}

static void deliver(request *r, eng_pg_result *res, eng_pg_conn *conn) {
  r->where = R_DONE;
  uv_timer_stop(&r->timer);
  /* The callback may keep the result and free it before it returns (engine.db resumes the
   * handler inside it): res must stay readable until the callback is done. */
  if (res == &oom_result) { /* shared by every pool: never written, never freed */
    r->cb(res, conn, r->data);
  } else {
    res->in_cb = 1;
    r->cb(res, conn, r->data);
    res->in_cb = 0;
    if (!res->kept || res->freed)
      eng_pg_result_free(res);
  }
  uv_close((uv_handle_t *)&r->timer, request_closed);
}

static void request_timer(uv_timer_t *t);

/* Answers r: now, from the loop, or through a 0 ms timer when inside an API call. */
static void complete(request *r, eng_pg_result *res, eng_pg_conn *conn) {
  if (r->pg->submitting > 0) {
    r->where = R_DONE;
    r->deferred = res;
    r->deferred_conn = conn;
    uv_timer_start(&r->timer, request_timer, 0, 0);
    return;
  }
  deliver(r, res, conn);
}

static void fail(request *r, eng_pg_kind kind, const char *msg) {
  complete(r, result_new(NULL, ENG_EDB, kind, NULL, "%s", msg), NULL);
}

static void fail_waiters(eng_pg *pg, const char *msg) {
  while (pg->head) {
    request *r = pg->head;
    fifo_remove(pg, r);
    fail(r, ENG_PG_KIND_UNAVAILABLE, msg);
  }
}

/* ---- connections ---- */

static void poll_cb(uv_poll_t *h, int status, int events);

static void poll_closed(uv_handle_t *h) {
  eng_pg *pg = ((eng_pg_conn *)h->data)->pg; /* the connection lives as long as the pool */
  free(h);
  pg->handles--;
  maybe_free(pg);
}

static void unwatch(eng_pg_conn *c) {
  if (c->poll) {
    uv_close((uv_handle_t *)c->poll, poll_closed); /* stops the poll (and drops the fd from epoll) now */
    c->poll = NULL;
  }
  c->poll_fd = -1;
  c->poll_events = 0;
}

/* Watches the connection's current socket for events (libpq may change sockets while connecting). */
static int watch(eng_pg_conn *c, int events) {
  int fd = PQsocket(c->pc);
  if (fd < 0)
    return -1;
  if (c->poll && c->poll_fd != fd)
    unwatch(c);
  if (!c->poll) {
    uv_poll_t *p = malloc(sizeof *p);
    if (!p || uv_poll_init(c->pg->loop, p, fd) != 0) {
      free(p);
      return -1;
    }
    p->data = c;
    c->pg->handles++;
    c->poll = p;
    c->poll_fd = fd;
  }
  if (c->poll_events != events) {
    if (uv_poll_start(c->poll, events, poll_cb) != 0)
      return -1;
    c->poll_events = events;
  }
  return 0;
}

static void drop(eng_pg_conn *c) {
  unwatch(c);
  if (c->pc)
    PQfinish(c->pc);
  c->pc = NULL;
  PQclear(c->acc);
  c->acc = NULL;
  uv_timer_stop(&c->timer);
  c->state = C_DOWN;
  c->phase = PH_NONE;
  c->draining = 0;
  c->cancelling = 0;
  c->epoch++;
  if (c->prepared)
    memset(c->prepared, 0, c->prepared_cap);
}

static void conn_timer(uv_timer_t *t);

static void connect_failed(eng_pg_conn *c, const char *why) {
  eng_pg *pg = c->pg;
  char msg[MSG_MAX];
  trim_message(msg, sizeof msg, why);
  drop(c);
  if (pg->healthy && !pg->closing) /* once per outage, not once per attempt */
    eng_log(ENG_LOG_WARN, "pg: cannot connect to the database (%s); retrying with back-off", msg);
  pg->healthy = 0;
  c->backoff_ms = c->backoff_ms ? c->backoff_ms * 2 : pg->opt.backoff_min_ms;
  if (c->backoff_ms > pg->opt.backoff_max_ms)
    c->backoff_ms = pg->opt.backoff_max_ms;
  uv_timer_start(&c->timer, conn_timer, (uint64_t)c->backoff_ms, 0);
  char full[MSG_MAX + 64];
  snprintf(full, sizeof full, "database unavailable: %s", msg);
  fail_waiters(pg, full);
}

static void connected(eng_pg_conn *c) {
  eng_pg *pg = c->pg;
  uv_timer_stop(&c->timer);
  if (PQsetnonblocking(c->pc, 1) != 0 || watch(c, UV_READABLE) != 0) {
    connect_failed(c, "cannot watch the connection's socket");
    return;
  }
  c->state = C_READY;
  c->backoff_ms = 0;
  pg->connects++;
  if (!pg->healthy)
    eng_log(ENG_LOG_INFO, "pg: connected to the database again");
  pg->healthy = 1;
  /* The server is back: the others waiting out a back-off try again now. */
  for (int i = 0; i < pg->size; i++) {
    eng_pg_conn *o = &pg->conns[i];
    if (o != c && o->state == C_DOWN && !o->broken)
      conn_connect(o);
  }
  conn_ready(c);
}

static void connect_step(eng_pg_conn *c) {
  /* libpq may close its socket and open another (the next host, an SSL retry) whose number can
   * be the old one's: a fresh handle for every step keeps epoll's registration true. */
  unwatch(c);
  switch (PQconnectPoll(c->pc)) {
  case PGRES_POLLING_READING:
    if (watch(c, UV_READABLE) != 0)
      connect_failed(c, "cannot watch the connection's socket");
    break;
  case PGRES_POLLING_WRITING:
    if (watch(c, UV_WRITABLE) != 0)
      connect_failed(c, "cannot watch the connection's socket");
    break;
  case PGRES_POLLING_OK:
    connected(c);
    break;
  default:
    connect_failed(c, PQerrorMessage(c->pc));
    break;
  }
}

/* libpq's notices (and the server's FATAL message before it drops an idle connection) go to the
 * engine's log instead of libpq's default, stderr unformatted. */
static void notice(void *arg, const char *message) {
  (void)arg;
  char msg[MSG_MAX];
  trim_message(msg, sizeof msg, message);
  eng_log(strncmp(msg, "FATAL", 5) == 0 ? ENG_LOG_WARN : ENG_LOG_DEBUG, "pg: %s", msg);
}

static void conn_connect(eng_pg_conn *c) {
  eng_pg *pg = c->pg;
  uv_timer_stop(&c->timer);
  c->pc = PQconnectStart(pg->conninfo);
  if (!c->pc) {
    connect_failed(c, "out of memory");
    return;
  }
  PQsetNoticeProcessor(c->pc, notice, c);
  if (PQstatus(c->pc) == CONNECTION_BAD) {
    connect_failed(c, PQerrorMessage(c->pc));
    return;
  }
  c->state = C_CONNECTING;
  uv_update_time(pg->loop);
  uv_timer_start(&c->timer, conn_timer, (uint64_t)pg->opt.connect_timeout_ms, 0);
  if (watch(c, UV_WRITABLE) != 0) /* libpq: start as if PQconnectPoll had said WRITING */
    connect_failed(c, "cannot watch the connection's socket");
}

static void conn_timer(uv_timer_t *t) {
  eng_pg_conn *c = t->data;
  if (c->state == C_DOWN) {
    conn_connect(c); /* the back-off is over */
  } else if (c->state == C_CONNECTING) {
    connect_failed(c, "timed out connecting");
  } else if (c->draining || c->cancelling) {
    /* The cancelled query did not end in time, or the cancel itself hangs (PQcancel has no timeout
     * of its own): give up on the connection. */
    conn_lost(c, NULL);
  }
}

static void flush(eng_pg_conn *c) {
  int r = PQflush(c->pc);
  if (r < 0)
    conn_lost(c, NULL);
  else if (watch(c, r == 1 ? UV_READABLE | UV_WRITABLE : UV_READABLE) != 0)
    conn_lost(c, NULL);
}

static int ensure_prepared_cap(eng_pg_conn *c, uint32_t id) {
  if (id < c->prepared_cap)
    return 0;
  size_t cap = c->prepared_cap ? c->prepared_cap : 64;
  while (cap <= id)
    cap *= 2;
  unsigned char *p = realloc(c->prepared, cap);
  if (!p)
    return -1;
  memset(p + c->prepared_cap, 0, cap - c->prepared_cap);
  c->prepared = p;
  uint16_t *g = realloc(c->gen, cap * sizeof *g);
  if (!g)
    return -1; /* prepared grew, prepared_cap did not: the next call tries again */
  memset(g + c->prepared_cap, 0, (cap - c->prepared_cap) * sizeof *g);
  c->gen = g;
  c->prepared_cap = cap;
  return 0;
}

static void stmt_name(char *buf, const eng_pg_conn *c, uint32_t id) {
  snprintf(buf, STMT_NAME_MAX, "eng_%u_%u", id, (unsigned)c->gen[id]);
}

static void send_exec(eng_pg_conn *c, int named) {
  request *r = c->req;
  const eng_pg_stmt *st = r->stmt;
  int ok;
  c->phase = PH_EXEC;
  if (named) {
    char name[STMT_NAME_MAX];
    stmt_name(name, c, st->id);
    ok = PQsendQueryPrepared(c->pc, name, r->nvals, r->values, r->lengths, r->formats, 0);
  } else {
    ok = PQsendQueryParams(c->pc, st->pg_sql, r->nvals, NULL, r->values, r->lengths, r->formats, 0);
  }
  if (!ok)
    conn_lost(c, NULL);
  else
    flush(c);
}

static void start_query(eng_pg_conn *c, request *r) {
  const eng_pg_stmt *st = r->stmt;
  r->where = R_RUNNING;
  r->on = c;
  c->req = r;
  c->state = C_RUNNING;
  int named = st->id && ensure_prepared_cap(c, st->id) == 0; /* else: sent unnamed this time */
  if (named && !c->prepared[st->id]) {
    char name[STMT_NAME_MAX];
    stmt_name(name, c, st->id);
    c->phase = PH_PREPARE;
    c->prep_id = st->id;
    if (!PQsendPrepare(c->pc, name, st->pg_sql, 0, NULL))
      conn_lost(c, NULL);
    else
      flush(c);
    return;
  }
  send_exec(c, named);
}

/* c has nothing in flight: give it to its holder's pending query, or roll back what a pooled user
 * left open, or hand it to the next waiter. */
static void conn_ready(eng_pg_conn *c) {
  if (!usable(c) || c->pg->closing)
    return;
  if (c->held) {
    if (c->pending) {
      request *r = c->pending;
      c->pending = NULL;
      start_query(c, r);
    }
    return;
  }
  if (PQtransactionStatus(c->pc) != PQTRANS_IDLE) {
    c->state = C_RUNNING;
    c->phase = PH_INTERNAL;
    if (!PQsendQuery(c->pc, "ROLLBACK"))
      conn_lost(c, NULL);
    else
      flush(c);
    return;
  }
  dispatch(c->pg);
}

/* The connection is gone: its request (if any) fails, and it is made again (not while held). */
static void conn_lost(eng_pg_conn *c, PGresult *pr) {
  eng_pg *pg = c->pg;
  request *r = c->req, *p = c->pending;
  char msg[MSG_MAX];
  trim_message(msg, sizeof msg, PQerrorMessage(c->pc));
  eng_log(ENG_LOG_WARN, "pg: lost a database connection (%s); %s", msg,
          c->held ? "its holder's queries fail until it gives it back" : "reconnecting");
  eng_pg_result *res = r ? result_from(pr, c->pc, 1) : NULL;
  if (!r)
    PQclear(pr);
  c->req = c->pending = NULL;
  drop(c);
  if (c->held)
    c->broken = 1;
  else
    conn_connect(c);
  if (r)
    complete(r, res, NULL);
  if (p)
    fail(p, ENG_PG_KIND_UNAVAILABLE, "the connection to the database was lost");
  dispatch(pg);
}

/* The server no longer has the named statement (a script ran DEALLOCATE or DISCARD) or refuses its
 * cached plan (a table under SELECT * changed: "cached plan must not change result type"). Either
 * way the statement is prepared again; it runs again at once (once per request) unless the error
 * aborted a transaction, which the caller must then roll back. */
static int stale_statement(eng_pg_conn *c, request *r, PGresult *pr) {
  const char *state = pr ? PQresultErrorField(pr, PG_DIAG_SQLSTATE) : NULL;
  uint32_t id = r->stmt->id;
  if (!state || id >= c->prepared_cap)
    return 0;
  if (strcmp(state, "26000") == 0) {
    c->prepared[id] = 0;
  } else if (strcmp(state, "0A000") == 0 && strstr(PQresultErrorMessage(pr), "cached plan")) {
    c->prepared[id] = 0;
    c->gen[id]++; /* the stale one stays on the server until the connection ends */
  } else {
    return 0;
  }
  if (r->retried || PQtransactionStatus(c->pc) == PQTRANS_INERROR)
    return 0;
  r->retried = 1;
  return 1;
}

/* The statement in flight has ended (its results are all in c->acc). */
static void statement_done(eng_pg_conn *c) {
  PGresult *pr = c->acc;
  c->acc = NULL;
  request *r = c->req;
  int phase = c->phase;
  int ok = pr && (PQresultStatus(pr) == PGRES_COMMAND_OK || PQresultStatus(pr) == PGRES_TUPLES_OK);
  if (PQstatus(c->pc) == CONNECTION_BAD) {
    conn_lost(c, pr);
    return;
  }
  if (phase == PH_PREPARE && ok) {
    c->prepared[c->prep_id] = 1; /* even when draining: the name exists on the server now */
    c->pg->prepares++;
  }
  if (phase == PH_PREPARE && ok && r) {
    PQclear(pr);
    send_exec(c, 1);
    return;
  }
  if (phase == PH_EXEC && r && r->stmt->id && !ok && stale_statement(c, r, pr)) {
    PQclear(pr);
    start_query(c, r); /* prepares it again, under a new name when its plan went stale */
    return;
  }
  if (c->draining && !c->cancelling)
    uv_timer_stop(&c->timer); /* else the grace runs on until the cancel is back too */
  c->req = NULL;
  c->state = C_READY;
  c->phase = PH_NONE;
  c->draining = 0;
  eng_pg_result *res = r ? result_from(pr, c->pc, 0) : NULL;
  if (!r)
    PQclear(pr);
  if (!c->held && PQtransactionStatus(c->pc) != PQTRANS_IDLE)
    conn_ready(c); /* before the callback: what a pooled user left open is rolled back before anything */
  if (r)
    complete(r, res, r->conn);
  conn_ready(c); /* after it: the waiters are answered in the order they were served */
}

static void poll_cb(uv_poll_t *h, int status, int events) {
  eng_pg_conn *c = h->data;
  if (c->state == C_CONNECTING) {
    connect_step(c);
    return;
  }
  if (status < 0) {
    conn_lost(c, NULL);
    return;
  }
  if ((events & UV_WRITABLE) && c->state == C_RUNNING) {
    flush(c);
    if (c->state != C_RUNNING)
      return;
  }
  if (!(events & (UV_READABLE | UV_DISCONNECT)))
    return;
  if (!PQconsumeInput(c->pc)) {
    conn_lost(c, NULL);
    return;
  }
  for (PGnotify *n; (n = PQnotifies(c->pc)) != NULL;)
    PQfreemem(n);
  if (c->state != C_RUNNING) {
    if (PQstatus(c->pc) == CONNECTION_BAD)
      conn_lost(c, NULL);
    return;
  }
  while (!PQisBusy(c->pc)) {
    PGresult *pr = PQgetResult(c->pc);
    if (!pr) {
      statement_done(c);
      return;
    }
    /* One statement gives one result; keep the first error if more come. */
    if (!c->acc || (PQresultStatus(c->acc) != PGRES_FATAL_ERROR && PQresultStatus(pr) == PGRES_FATAL_ERROR)) {
      PQclear(c->acc);
      c->acc = pr;
    } else {
      PQclear(pr);
    }
  }
}

/* ---- cancelling ---- */

typedef struct cancel_work {
  uv_work_t work;
  eng_pg_conn *conn;
  uint64_t epoch;
  PGcancel *cancel;
} cancel_work;

static void cancel_run(uv_work_t *w) {
  cancel_work *cw = w->data;
  char errbuf[256];
  (void)PQcancel(cw->cancel, errbuf, (int)sizeof errbuf); /* the drain grace covers a failure */
}

static void cancel_after(uv_work_t *w, int status) {
  (void)status;
  cancel_work *cw = w->data;
  eng_pg_conn *c = cw->conn;
  eng_pg *pg = c->pg;
  int current = cw->epoch == c->epoch;
  PQfreeCancel(cw->cancel);
  free(cw);
  pg->handles--;
  if (pg->closing) {
    maybe_free(pg);
    return;
  }
  if (current) {
    c->cancelling = 0;
    if (c->state == C_READY)
      uv_timer_stop(&c->timer); /* the drain's grace: both are back */
    conn_ready(c);              /* when the drain has ended already, the connection serves again now */
  }
}

/* r's deadline passed while it ran on c: answer it now, cancel the statement, let c drain. */
static void cancel_running(eng_pg_conn *c, request *r) {
  eng_pg *pg = c->pg;
  c->req = NULL;
  c->draining = 1;
  pg->cancels++;
  cancel_work *cw = calloc(1, sizeof *cw);
  if (cw && (cw->cancel = PQgetCancel(c->pc)) != NULL) {
    cw->conn = c;
    cw->epoch = c->epoch;
    cw->work.data = cw;
    if (uv_queue_work(pg->loop, &cw->work, cancel_run, cancel_after) == 0) {
      pg->handles++;
      c->cancelling = 1;
      cw = NULL;
    }
  }
  if (cw) {
    PQfreeCancel(cw->cancel);
    free(cw);
  }
  uv_timer_start(&c->timer, conn_timer, (uint64_t)pg->opt.cancel_grace_ms, 0);
  complete(r, result_new(NULL, ENG_EDB, ENG_PG_KIND_TIMEOUT, NULL, "the query ran past its deadline"), NULL);
}

/* r's deadline has passed, or its caller abandoned it: out of the queue, or cancelled. */
static void expire(request *r) {
  const char *msg = "timed out waiting for a database connection";
  switch (r->where) {
  case R_QUEUED:
    fifo_remove(r->pg, r);
    break;
  case R_PENDING:
    r->conn->pending = NULL;
    break;
  case R_RUNNING:
    cancel_running(r->on, r);
    return;
  default:
    return;
  }
  complete(r, result_new(NULL, ENG_EDB, ENG_PG_KIND_TIMEOUT, NULL, "%s", msg), NULL);
}

static void request_timer(uv_timer_t *t) {
  request *r = t->data;
  if (r->deferred) {
    eng_pg_result *res = r->deferred;
    r->deferred = NULL;
    deliver(r, res, r->deferred_conn);
    return;
  }
  expire(r);
}

static void dispatch(eng_pg *pg) {
  while (pg->head && !pg->closing) {
    eng_pg_conn *c = NULL;
    for (int i = 0; i < pg->size && !c; i++)
      if (usable(&pg->conns[i]) && !pg->conns[i].held)
        c = &pg->conns[i];
    if (!c)
      return;
    request *r = pg->head;
    fifo_remove(pg, r);
    if (r->type == RQ_ACQUIRE) {
      c->held = 1;
      r->where = R_RUNNING;
      complete(r, result_new(NULL, 0, ENG_PG_KIND_NONE, NULL, "ok"), c);
    } else {
      start_query(c, r);
    }
  }
}

/* ---- the API ---- */

static int check_timeout(int ms) { return ms >= 0 && ms <= ENG_PG_TIMEOUT_MAX_MS; }

static int option(int v, int def, int min, int max, const char *name, char **err) {
  if (v == 0)
    return def;
  if (v < min || v > max)
    return eng_errorf(err, ENG_EINVAL, "%s must be %d..%d, got %d", name, min, max, v);
  return v;
}

int eng_pg_open(eng_pg **out, uv_loop_t *loop, const char *conninfo, const eng_pg_options *opt, char **err) {
  *out = NULL;
  eng_pg_options o = opt ? *opt : (eng_pg_options){0};
  if (!conninfo)
    return eng_errorf(err, ENG_EINVAL, "no connection string");
  int rc = eng_pq_load(err);
  if (rc != 0)
    return rc;
  if ((o.size = option(o.size, ENG_PG_POOL_DEFAULT, 1, ENG_PG_POOL_MAX, "pool size", err)) < 0 ||
      (o.connect_timeout_ms = option(o.connect_timeout_ms, ENG_PG_CONNECT_TIMEOUT_DEFAULT_MS, 1, ENG_PG_TIMEOUT_MAX_MS,
                                     "connect timeout", err)) < 0 ||
      (o.backoff_min_ms =
           option(o.backoff_min_ms, ENG_PG_BACKOFF_MIN_DEFAULT_MS, 1, ENG_PG_TIMEOUT_MAX_MS, "back-off", err)) < 0 ||
      (o.backoff_max_ms = option(o.backoff_max_ms, ENG_PG_BACKOFF_MAX_DEFAULT_MS, o.backoff_min_ms,
                                 ENG_PG_TIMEOUT_MAX_MS, "maximum back-off", err)) < 0 ||
      (o.cancel_grace_ms = option(o.cancel_grace_ms, ENG_PG_CANCEL_GRACE_DEFAULT_MS, 1, ENG_PG_TIMEOUT_MAX_MS,
                                  "cancel grace", err)) < 0 ||
      (o.stmt_cache =
           option(o.stmt_cache, ENG_PG_STMT_CACHE_DEFAULT, 1, ENG_PG_STMT_CACHE_MAX, "statement cache", err)) < 0)
    return ENG_EINVAL;
  eng_pg *pg = calloc(1, sizeof *pg);
  if (!pg || !(pg->conninfo = strdup(conninfo)) || !(pg->conns = calloc((size_t)o.size, sizeof *pg->conns))) {
    if (pg)
      free(pg->conninfo);
    free(pg);
    return eng_errorf(err, ENG_ENOMEM, "out of memory");
  }
  pg->loop = loop;
  pg->opt = o;
  pg->size = o.size;
  pg->healthy = 1;
  pg->submitting++;
  for (int i = 0; i < pg->size; i++) {
    eng_pg_conn *c = &pg->conns[i];
    c->pg = pg;
    c->poll_fd = -1;
    uv_timer_init(loop, &c->timer);
    c->timer.data = c;
    pg->handles++;
  }
  for (int i = 0; i < pg->size; i++)
    conn_connect(&pg->conns[i]);
  pg->submitting--;
  *out = pg;
  return 0;
}

void eng_pg_close(eng_pg *pg, void (*done)(void *data), void *data) {
  if (!pg)
    return;
  pg->done = done;
  pg->done_data = data;
  pg->closing = 1;
  fail_waiters(pg, "the database pool is closing");
  for (int i = 0; i < pg->size; i++) {
    eng_pg_conn *c = &pg->conns[i];
    request *r = c->req, *p = c->pending;
    c->req = c->pending = NULL;
    drop(c);
    if (r)
      fail(r, ENG_PG_KIND_UNAVAILABLE, "the database pool is closing");
    if (p)
      fail(p, ENG_PG_KIND_UNAVAILABLE, "the database pool is closing");
    uv_close((uv_handle_t *)&c->timer, conn_timer_closed);
  }
  maybe_free(pg);
}

static request *request_new(eng_pg *pg, int type, size_t extra, int timeout_ms, eng_pg_cb cb, void *data) {
  request *r = calloc(1, sizeof *r + extra);
  if (!r)
    return NULL;
  r->pg = pg;
  r->type = type;
  r->cb = cb;
  r->data = data;
  uv_update_time(pg->loop); /* the deadline counts from this call, not from the loop's last wake-up */
  uv_timer_init(pg->loop, &r->timer);
  r->timer.data = r;
  pg->handles++;
  if (timeout_ms > 0)
    uv_timer_start(&r->timer, request_timer, (uint64_t)timeout_ms, 0);
  return r;
}

static int has_idle(const eng_pg *pg) {
  for (int i = 0; i < pg->size; i++)
    if (usable(&pg->conns[i]) && !pg->conns[i].held)
      return 1;
  return 0;
}

/* A request without a held connection: in the FIFO, or failed at once during an outage. */
static void enqueue(eng_pg *pg, request *r) {
  if (!pg->healthy && !has_idle(pg)) {
    fail(r, ENG_PG_KIND_UNAVAILABLE, "database unavailable (reconnecting)");
    return;
  }
  r->where = R_QUEUED;
  r->prev = pg->tail;
  if (pg->tail)
    pg->tail->next = r;
  else
    pg->head = r;
  pg->tail = r;
  pg->waiting++;
  dispatch(pg);
}

/* Formats vals as libpq parameters into r's extra space (laid out by param_space). */
static size_t param_space(const eng_pg_value *vals, int n) {
  size_t total = (size_t)n * (sizeof(char *) + 2 * sizeof(int));
  for (int i = 0; i < n; i++) {
    if (vals[i].type == ENG_PG_TEXT || vals[i].type == ENG_PG_BLOB)
      total += vals[i].len + 1;
    else
      total += 40;
  }
  return total;
}

static void param_fill(request *r, const eng_pg_value *vals, int n) {
  char *base = (char *)(r + 1);
  r->values = (const char **)(void *)base;
  r->lengths = (int *)(void *)(base + (size_t)n * sizeof(char *));
  r->formats = r->lengths + n;
  char *p = (char *)(r->formats + n);
  r->nvals = n;
  for (int i = 0; i < n; i++) {
    const eng_pg_value *v = &vals[i];
    r->lengths[i] = 0;
    r->formats[i] = 0;
    r->values[i] = p;
    switch (v->type) {
    case ENG_PG_NULL:
      r->values[i] = NULL;
      continue;
    case ENG_PG_INT:
      p += snprintf(p, 40, "%lld", (long long)v->i) + 1;
      continue;
    case ENG_PG_BOOL:
      p += snprintf(p, 40, "%s", v->i ? "1" : "0") + 1; /* "1"/"0": valid input for boolean and integer columns */
      continue;
    case ENG_PG_FLOAT:
      if (v->f != v->f)
        p += snprintf(p, 40, "NaN") + 1;
      else if (v->f > 1.7976931348623157e308 || v->f < -1.7976931348623157e308)
        p += snprintf(p, 40, "%sInfinity", v->f < 0 ? "-" : "") + 1;
      else
        p += snprintf(p, 40, "%.17g", v->f) + 1;
      continue;
    case ENG_PG_BLOB:
      r->formats[i] = 1;
      r->lengths[i] = (int)v->len;
      /* fall through */
    case ENG_PG_TEXT:
      if (v->len)
        memcpy(p, v->s, v->len);
      p[v->len] = '\0';
      p += v->len + 1;
      continue;
    }
  }
}

int eng_pg_query(eng_pg *pg, eng_pg_conn *conn, const char *sql, size_t len, const eng_pg_value *vals, int nvals,
                 int timeout_ms, eng_pg_cb cb, void *data, eng_pg_req **req, char **err) {
  if (!pg || pg->closing || !cb || !sql || nvals < 0 || (nvals > 0 && !vals) || !check_timeout(timeout_ms))
    return eng_errorf(err, ENG_EINVAL, "invalid arguments");
  if (conn && (conn->pg != pg || !conn->held || conn->req || conn->pending))
    return eng_errorf(err, ENG_EINVAL, "the connection is not held, or a query already runs on it");
  const eng_pg_stmt *st;
  int rc = eng_pg_statement(pg, sql, len, &st, err);
  if (rc)
    return rc;
  if (st->nparams != nvals) {
    int np = st->nparams; /* read before the free: an uncached translation goes with it */
    eng_pg_stmt_free(st);
    return eng_errorf(err, ENG_EINVAL, "statement has %d parameter%s, got %d value%s", np, np == 1 ? "" : "s", nvals,
                      nvals == 1 ? "" : "s");
  }
  for (int i = 0; i < nvals; i++)
    if ((vals[i].type == ENG_PG_TEXT || vals[i].type == ENG_PG_BLOB) &&
        ((vals[i].len && !vals[i].s) || vals[i].len > (size_t)INT32_MAX - 1 ||
         (vals[i].type == ENG_PG_TEXT && memchr(vals[i].s, 0, vals[i].len)))) {
      eng_pg_stmt_free(st);
      return eng_errorf(err, ENG_EINVAL, "parameter %d: a text value cannot hold a NUL byte (use a blob)", i + 1);
    }
  request *r = request_new(pg, RQ_QUERY, param_space(vals, nvals), timeout_ms, cb, data);
  if (!r) {
    eng_pg_stmt_free(st);
    return eng_errorf(err, ENG_ENOMEM, "out of memory");
  }
  r->stmt = st;
  if (!st->id)
    r->own_stmt = (eng_pg_stmt *)st;
  param_fill(r, vals, nvals);
  r->conn = conn;
  if (req)
    *req = r;
  pg->submitting++;
  if (!conn) {
    enqueue(pg, r);
  } else if (conn->broken || conn->state == C_DOWN) {
    fail(r, ENG_PG_KIND_UNAVAILABLE, "the connection to the database was lost");
  } else if (usable(conn)) {
    start_query(conn, r);
  } else {
    r->where = R_PENDING; /* draining a cancelled query */
    conn->pending = r;
  }
  pg->submitting--;
  return 0;
}

int eng_pg_acquire(eng_pg *pg, int timeout_ms, eng_pg_cb cb, void *data, eng_pg_req **req) {
  if (!pg || pg->closing || !cb || !check_timeout(timeout_ms))
    return ENG_EINVAL;
  request *r = request_new(pg, RQ_ACQUIRE, 0, timeout_ms, cb, data);
  if (!r)
    return ENG_ENOMEM;
  if (req)
    *req = r;
  pg->submitting++;
  enqueue(pg, r);
  pg->submitting--;
  return 0;
}

/* The callback of an abandoned request: nothing to tell; a connection handed to an acquire goes back. */
static void abandoned(eng_pg_result *res, eng_pg_conn *conn, void *data) {
  (void)res;
  if (conn && (intptr_t)data == RQ_ACQUIRE)
    eng_pg_release(conn);
}

void eng_pg_abandon(eng_pg_req *r) {
  if (!r || r->cb == abandoned)
    return;
  eng_pg *pg = r->pg;
  r->cb = abandoned;
  r->data = (void *)(intptr_t)r->type;
  if (r->where == R_DONE) /* answered inside an API call, not yet delivered: the timer delivers it */
    return;
  pg->submitting++; /* what expire answers is delivered from the loop, to `abandoned` */
  expire(r);
  pg->submitting--;
}

int eng_pg_release(eng_pg_conn *c) {
  if (!c || !c->held || c->req || c->pending || c->pg->closing)
    return ENG_EINVAL;
  eng_pg *pg = c->pg;
  pg->submitting++;
  c->held = 0;
  if (c->broken) {
    c->broken = 0;
    conn_connect(c);
  } else {
    conn_ready(c); /* while draining, the drain's end does this */
  }
  pg->submitting--;
  return 0;
}

int eng_pg_conn_in_tx(const eng_pg_conn *c) {
  if (!c->pc || c->state == C_DOWN || c->state == C_CONNECTING)
    return 0;
  PGTransactionStatusType s = PQtransactionStatus(c->pc);
  return s == PQTRANS_INTRANS || s == PQTRANS_INERROR || s == PQTRANS_ACTIVE;
}

void eng_pg_get_stats(const eng_pg *pg, eng_pg_stats *st) {
  memset(st, 0, sizeof *st);
  st->size = pg->size;
  for (int i = 0; i < pg->size; i++) {
    const eng_pg_conn *c = &pg->conns[i];
    if (c->held)
      st->held++;
    if (usable(c) && !c->held)
      st->idle++;
    else if (c->state == C_RUNNING)
      st->running++;
    else if (c->state == C_CONNECTING)
      st->connecting++;
    else if (c->state == C_DOWN)
      st->down++;
  }
  st->waiting = pg->waiting;
  st->healthy = pg->healthy;
  st->connects = pg->connects;
  st->prepares = pg->prepares;
  st->cancels = pg->cancels;
}
