/* pg.h - PostgreSQL for one worker: a pool of libpq connections driven by the worker's libuv loop.
 *
 * Nothing here blocks the loop (but see "Blocking" below): connections are made with
 * PQconnectStart/PQconnectPoll, statements are sent with PQsendPrepare/PQsendQueryPrepared on
 * non-blocking connections, and each connection's socket is watched with a uv_poll handle.
 * A caller submits a query (or asks to hold a connection) with a callback, and the callback
 * fires exactly once, later, from the loop: never from inside the submitting call, so a Lua
 * layer can submit, yield the handler's coroutine, and resume it from the callback.
 *
 * The pool: `size` connections, made at eng_pg_open. A query without a held connection takes the
 * first free one; when none is free it waits in FIFO order. A holder (db.tx) takes one connection
 * with eng_pg_acquire and runs its queries on it, one at a time, until eng_pg_release; a
 * connection released inside a transaction is rolled back by the pool before anyone else gets it.
 *
 * Deadlines: every request has an optional timeout (ms, from the submitting call) that covers
 * waiting for a connection and running. Past it the callback gets ENG_PG_KIND_TIMEOUT at once; a
 * query already sent is cancelled with PQcancel, which runs on libuv's thread pool (PG 15's libpq
 * has only the blocking cancel: it opens a second connection to the server), and its connection
 * drains the cancelled query's answer, and waits for the cancel to come back (else it could hit
 * the next statement), before serving again (a held one stays held). A connection that has not
 * got both within `cancel_grace_ms` is closed and made again.
 *
 * Outages: a lost connection (backend killed, server restart) fails the query on it with
 * ENG_PG_KIND_UNAVAILABLE and is made again at once; a connection attempt that fails marks the
 * pool down, fails every waiting request, and retries with exponential back-off
 * (backoff_min_ms .. backoff_max_ms). While the pool is down, a request that finds no free
 * connection fails at once (UNAVAILABLE) instead of waiting: the answer during an outage is quick.
 * A held connection that is lost stays held and broken: its queries fail (UNAVAILABLE) until the
 * holder releases it.
 *
 * SQL: the engine's placeholders `?` (in order) and `:name` (by name; the same name is the same
 * parameter) become $1..$n, translated once per distinct SQL text (eng_pg_translate, below), and
 * each distinct text is prepared once per connection (as a named statement) and reused. Values
 * are sent as text, except blobs (binary, for bytea); results come back as text and are read
 * through the typed accessors below.
 *
 * Blocking: libpq resolves a host *name* with a blocking getaddrinfo inside PQconnectStart; use
 * a Unix socket directory or hostaddr= for a pool whose loop must never wait on DNS.
 *
 * Threads: a pool belongs to its loop's thread; every function here is called on that thread.
 * Errors: 0 or a negative ENG_E* code (error.h); a query's failure arrives in its result. */
#ifndef ENG_PG_H
#define ENG_PG_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#define ENG_PG_POOL_DEFAULT 4
#define ENG_PG_POOL_MAX 256
#define ENG_PG_CONNECT_TIMEOUT_DEFAULT_MS 5000
#define ENG_PG_BACKOFF_MIN_DEFAULT_MS 100
#define ENG_PG_BACKOFF_MAX_DEFAULT_MS 5000
#define ENG_PG_CANCEL_GRACE_DEFAULT_MS 2000
#define ENG_PG_TIMEOUT_MAX_MS (24 * 3600 * 1000)
#define ENG_PG_SQL_MAX_BYTES (1024 * 1024) /* one statement's text */
#define ENG_PG_PARAMS_MAX 65535            /* the protocol's limit */
/* Distinct SQL texts translated and prepared per pool; past the limit a text is translated per
 * call and sent unnamed. */
#define ENG_PG_STMT_CACHE_DEFAULT 4096
#define ENG_PG_STMT_CACHE_MAX 65536

typedef struct eng_pg eng_pg;
typedef struct eng_pg_conn eng_pg_conn;
typedef struct eng_pg_result eng_pg_result;
typedef struct eng_pg_req eng_pg_req;

typedef struct eng_pg_options {
  int size;               /* connections; ENG_PG_POOL_DEFAULT when 0; 1..ENG_PG_POOL_MAX */
  int connect_timeout_ms; /* one connection attempt; ENG_PG_CONNECT_TIMEOUT_DEFAULT_MS when 0 */
  int backoff_min_ms;     /* first retry after a failed attempt; ENG_PG_BACKOFF_MIN_DEFAULT_MS when 0 */
  int backoff_max_ms;     /* retries double up to this; ENG_PG_BACKOFF_MAX_DEFAULT_MS when 0 */
  int cancel_grace_ms;    /* a cancelled query and its cancel get this long; ENG_PG_CANCEL_GRACE_DEFAULT_MS when 0 */
  int stmt_cache;         /* distinct SQL texts kept; ENG_PG_STMT_CACHE_DEFAULT when 0; 1..ENG_PG_STMT_CACHE_MAX */
} eng_pg_options;

/* The error kinds, named as engine.db names them (lua_db.c) plus the ones only a server has.
 * From SQLSTATE: 23505 unique (primary_key when the constraint's name ends in "_pkey", the name
 * PostgreSQL gives a primary key), 23503 foreign_key, 23514 check, 23502 not_null, other 23xxx
 * constraint, 40001 and 40P01 serialization (retry the transaction), 55P03 and 53xxx busy,
 * 08xxx, 57P01..57P03 and a lost connection unavailable; the pool's own: timeout (the request's
 * deadline passed), unavailable (no connection: outage, pool closing). Anything else: error. */
#define ENG_PG_KIND_MAP(X)          \
  X(NONE, "none")                   \
  X(ERROR, "error")                 \
  X(UNIQUE, "unique")               \
  X(PRIMARY_KEY, "primary_key")     \
  X(FOREIGN_KEY, "foreign_key")     \
  X(CHECK, "check")                 \
  X(NOT_NULL, "not_null")           \
  X(CONSTRAINT, "constraint")       \
  X(SERIALIZATION, "serialization") \
  X(BUSY, "busy")                   \
  X(UNAVAILABLE, "unavailable")     \
  X(TIMEOUT, "timeout")

typedef enum eng_pg_kind {
#define ENG_PG_KIND_ENUM(name, str) ENG_PG_KIND_##name,
  ENG_PG_KIND_MAP(ENG_PG_KIND_ENUM)
#undef ENG_PG_KIND_ENUM
} eng_pg_kind;

/* Static name of a kind ("unique", ...). */
const char *eng_pg_kind_name(eng_pg_kind kind);
/* The kind for a SQLSTATE (5 characters; NULL or anything else is ERROR); constraint may be NULL. */
eng_pg_kind eng_pg_kind_of(const char *sqlstate, const char *constraint);

/* A value: a parameter going in, the type of a column value coming out. */
typedef enum eng_pg_type { ENG_PG_NULL, ENG_PG_INT, ENG_PG_FLOAT, ENG_PG_TEXT, ENG_PG_BLOB, ENG_PG_BOOL } eng_pg_type;

typedef struct eng_pg_value {
  eng_pg_type type;
  int64_t i;     /* INT; BOOL (0 or 1, sent as "1"/"0": an integer column, as SQLite keeps booleans, takes it too) */
  double f;      /* FLOAT */
  const char *s; /* TEXT, BLOB: borrowed for the submitting call only (the request copies it) */
  size_t len;    /* TEXT, BLOB; TEXT must not contain a NUL byte (PostgreSQL's text cannot) */
} eng_pg_value;

/* Called once per request, from the loop. res is borrowed: it is freed when the callback returns
 * unless the callback calls eng_pg_result_keep. conn: for eng_pg_acquire, the held connection on
 * success (NULL on failure); for a query, the held connection it ran on, or NULL. The callback may
 * submit, acquire and release; it must not call eng_pg_close. */
typedef void (*eng_pg_cb)(eng_pg_result *res, eng_pg_conn *conn, void *data);

/* Copies conninfo (a libpq connection string or URI) and starts making `size` connections on
 * loop (which must outlive the pool). opt may be NULL. Requests may be submitted at once: they
 * wait for the first connection. A server that cannot be reached is not an error here: it shows
 * as UNAVAILABLE results. Errors: ENG_EINVAL (bad options; *err says which), ENG_ENOMEM. */
int eng_pg_open(eng_pg **out, uv_loop_t *loop, const char *conninfo, const eng_pg_options *opt, char **err);

/* Fails every waiting and running request (UNAVAILABLE, "closing"; their callbacks run inside this
 * call), closes every connection, and frees the pool once libuv has closed its handles and any
 * cancel still running on the thread pool has finished: run the loop after this call. Held
 * connections are invalid after it. done (may be NULL) is called when the memory is gone. */
void eng_pg_close(eng_pg *pg, void (*done)(void *data), void *data);

/* Runs sql with vals[0..nvals-1] for its $1..$n (in the translation's order: eng_pg_statement
 * says which name each one is). conn: a held connection (from eng_pg_acquire) or NULL for any free
 * one. timeout_ms: 0 for none, else 1..ENG_PG_TIMEOUT_MAX_MS. On 0 the callback fires exactly
 * once, later; on error it never fires: ENG_EINVAL (wrong value count, a text value with a NUL, a
 * held connection that already has a query running or waiting, a bad timeout), ENG_EPARSE (the
 * placeholders: *err says why), ENG_ETOOBIG (SQL over ENG_PG_SQL_MAX_BYTES, too many parameters),
 * ENG_ENOMEM. err may be NULL. The SQL must be one statement (the extended protocol refuses more).
 * req (may be NULL) gets a handle for eng_pg_abandon, valid until the callback has fired. */
int eng_pg_query(eng_pg *pg, eng_pg_conn *conn, const char *sql, size_t len, const eng_pg_value *vals, int nvals,
                 int timeout_ms, eng_pg_cb cb, void *data, eng_pg_req **req, char **err);

/* Waits (FIFO, with the other requests) for a free connection and hands it to cb to hold. Same
 * contract as eng_pg_query for timeout_ms, the callback and req. Errors: ENG_EINVAL, ENG_ENOMEM. */
int eng_pg_acquire(eng_pg *pg, int timeout_ms, eng_pg_cb cb, void *data, eng_pg_req **req);

/* The caller no longer wants the answer (its handler's budget ran out, its Lua state is going):
 * the callback will not fire, and whatever the request holds is let go as at a deadline. Waiting:
 * it leaves the queue. Running: the statement is cancelled and its connection drains (a held one
 * stays held; its holder must still release it). An acquire whose connection was already handed
 * over but not yet delivered gives the connection back. Only before the callback has fired: the
 * handle is gone after it. */
void eng_pg_abandon(eng_pg_req *req);

/* Gives a held connection back. A transaction left open is rolled back first (so the next user
 * starts clean); a broken one is made again. ENG_EINVAL when a query of the holder's is still
 * running or waiting on it (wait for its callback; a timed-out query's callback has already fired,
 * so release after a timeout is fine). */
int eng_pg_release(eng_pg_conn *conn);

/* 1 when the connection is inside a transaction block (open or failed), else 0. */
int eng_pg_conn_in_tx(const eng_pg_conn *conn);

/* The translation of sql for the pool's statement cache: nparams and, for :name placeholders,
 * names[i] is the name (without ':', NUL-terminated) of $i+1; names is NULL for `?` ones. The
 * struct stays valid until eng_pg_close. ENG_EPARSE (*err says why), ENG_ETOOBIG, ENG_ENOMEM.
 * Past the pool's stmt_cache texts the translation is not kept: *out is then a fresh one that the
 * caller frees with eng_pg_stmt_free (which is a no-op for a cached one). */
typedef struct eng_pg_stmt {
  char *sql; /* the engine's text (NUL-terminated copy) */
  size_t len;
  char *pg_sql; /* the translation, NUL-terminated */
  int nparams;
  char **names; /* NULL when positional; else nparams names */
  uint32_t id;  /* the prepared statement is "eng_<id>" on every connection; 0: not cached */
  uint64_t hash;
  struct eng_pg_stmt *next;
} eng_pg_stmt;
int eng_pg_statement(eng_pg *pg, const char *sql, size_t len, const eng_pg_stmt **out, char **err);
void eng_pg_stmt_free(const eng_pg_stmt *st);

/* The placeholder translation itself, without a pool: `?` -> $1, $2, ... in order (`?NNN` -> $NNN,
 * and a bare `?` after it is one past the highest so far, as SQLite numbers them); `:name`
 * (a letter or '_' then letters, digits, '_') -> $k, the same k for the same name. Left as they are:
 * string literals ('...' with '' inside, E'...' with backslash escapes, $tag$...$tag$), quoted
 * identifiers ("..."), comments (-- to the end of the line, and nested C-style block comments), `::` casts, and a ':'
 * not followed by a name (array slices [1:2]). Mixing `?` and `:name` is refused (ENG_EPARSE), as
 * is `$1` written in the text beside either (a text with only $n placeholders is kept as it is,
 * nparams the highest n). Note: jsonb's `?`, `?|`, `?&` operators read as placeholders: use
 * jsonb_exists() and friends. A `$n` written right after a name or a number gets a space before it
 * (`a$1` would be one identifier). On success *out owns a fresh eng_pg_stmt (eng_pg_stmt_free). */
int eng_pg_translate(const char *sql, size_t len, eng_pg_stmt **out, char **err);

/* ---- results: borrowed during the callback (or kept) ---- */

/* Takes the result over from the callback: it stays valid until eng_pg_result_free. */
void eng_pg_result_keep(eng_pg_result *res);
void eng_pg_result_free(eng_pg_result *res);

/* 0 for success, else ENG_EDB; then kind, message (never NULL) and sqlstate ("" for the pool's
 * own errors) say what went wrong. */
int eng_pg_result_code(const eng_pg_result *res);
eng_pg_kind eng_pg_result_kind(const eng_pg_result *res);
const char *eng_pg_result_message(const eng_pg_result *res);
const char *eng_pg_result_sqlstate(const eng_pg_result *res);

int eng_pg_result_rows(const eng_pg_result *res);
int eng_pg_result_cols(const eng_pg_result *res);
const char *eng_pg_result_name(const eng_pg_result *res, int col);
/* Rows changed by an INSERT/UPDATE/DELETE (also with RETURNING), else 0. */
int64_t eng_pg_result_affected(const eng_pg_result *res);

/* The type of one value: NULL; INT for int2/int4/int8/oid and for a numeric that is a whole number
 * in int64's range; FLOAT for float4/float8 and other numerics; BOOL; BLOB for bytea; TEXT for
 * everything else (varchar, timestamps, json, uuid, ... in PostgreSQL's text form). Out of range
 * row/col: NULL. */
eng_pg_type eng_pg_result_type(const eng_pg_result *res, int row, int col);
int64_t eng_pg_result_int(const eng_pg_result *res, int row, int col);  /* 0 unless INT or BOOL */
double eng_pg_result_float(const eng_pg_result *res, int row, int col); /* INT or FLOAT; else 0 */
/* The text form of any non-NULL value (for a BLOB, PostgreSQL's escaped form); NULL for NULL. */
const char *eng_pg_result_text(const eng_pg_result *res, int row, int col, size_t *len);
/* A BLOB's length and bytes: dst must hold eng_pg_result_blob_len bytes. Other types: 0. */
size_t eng_pg_result_blob_len(const eng_pg_result *res, int row, int col);
size_t eng_pg_result_blob(const eng_pg_result *res, int row, int col, unsigned char *dst);

/* ---- the pool's state, for tests and metrics ---- */
typedef struct eng_pg_stats {
  int size, idle, running, held, connecting, down; /* connections by state (running: a query in flight) */
  int waiting;                                     /* requests waiting for a connection */
  int healthy;                                     /* 0 after a failed connection attempt, until one succeeds */
  uint64_t connects;                               /* connections made, ever */
  uint64_t prepares;                               /* statements prepared on a connection, ever */
  uint64_t cancels;                                /* queries cancelled at their deadline, ever */
} eng_pg_stats;
void eng_pg_get_stats(const eng_pg *pg, eng_pg_stats *st);

#endif
