/* server_int.h - what server.c (workers, listeners, the main thread, reload) and conn.c
 * (connections: reading, parsing, answering, timeouts) share. Internal to those two files.
 *
 * Memory per idle keep-alive connection is kept small on purpose: the read buffer is one per
 * worker (requests are parsed and answered synchronously in the read callback), request
 * buffers are released when a connection goes idle, and timeouts use per-worker lists instead
 * of a timer per connection: one list per kind of deadline (header, body, idle, send, linger).
 * Every entry of a list got the same timeout when it was appended, so appending at the tail
 * keeps the list ordered by deadline and the sweep stops at the first live entry.
 *
 * Memory for answers is bounded too: a connection whose unsent output passes
 * ENG_CONN_OUTPUT_MAX stops being read and stops handling the requests it already read (their
 * bytes wait in its `held` buffer, at most ENG_READ_BUF) until the client takes its answers;
 * while its worker's unsent output passes ENG_WORKER_OUTPUT_MAX, a connection handles its
 * next request only once all its earlier answers are sent. */
#ifndef ENG_SERVER_INT_H
#define ENG_SERVER_INT_H

#include "config.h"
#include "db.h"
#include "error.h"
#include "http.h"
#include "lua_runtime.h"
#include "pg.h"

#include <uv.h>

#include <stdatomic.h>
#include <stdint.h>

#define ENG_READ_BUF (64u * 1024u)
#define ENG_SWEEP_MS 250
#define ENG_LINGER_MS 2000                  /* after an error answer: wait this long for the peer to close */
#define ENG_CONN_OUTPUT_MAX (1u << 20)      /* a connection waits past this many unsent bytes ... */
#define ENG_CONN_OUTPUT_RESUME (256u << 10) /* ... until they are down to this */
#define ENG_WORKER_OUTPUT_MAX (32u << 20)   /* past this many unsent bytes of a worker, wait until all sent */
#define ENG_LIMIT_LOG_MS 1000               /* refused connections: at most one log line this often */
#define ENG_DRAIN_GRACE_MS 500              /* after --drain-timeout: time for the workers to close their connections */
#define ENG_BACKLOG 1024
#define ENG_DRAIN_IDLE_MS 1000   /* at SIGTERM: how long an idle keep-alive connection may still send one request */
#define ENG_RELEASE_IDLE_MS 1000 /* a worker that has answered nothing for this long gives memory back */
#define ENG_KEEP_BUF (64u << 10) /* per-worker answer buffers larger than this are freed then */

typedef struct worker worker;
typedef struct conn conn;
typedef struct reloads reloads;

typedef struct list {
  conn *head, *tail;
} list;

/* What a connection waits for, and so which deadline applies (the list it is on):
 * C_IDLE   the first byte of the next request (idle list, or send list while answers are unsent);
 *          a new connection starts in C_HEAD
 * C_HEAD   the rest of a request's line and headers (head list: --header-timeout from its first byte)
 * C_BODY   the next bytes of a request body (body list: --body-timeout, renewed at each read)
 * C_WAIT   the client to take its answers, before the connection reads on (send list)
 * C_LINGER its answers to go out after the last one, then the peer's close (send, then linger list)
 * C_RUN    its request's handler, suspended (engine.time.sleep): not read meanwhile, the rest of
 *          what was read held as in C_WAIT (run list: no deadline of its own, the request's
 *          budget ends the wait; the drain deadline closes it) */
enum { C_IDLE, C_HEAD, C_BODY, C_WAIT, C_LINGER, C_RUN };

struct conn {
  uv_tcp_t tcp; /* first: handles cast back to conn */
  worker *w;
  conn *prev, *next;
  list *on; /* the list this connection is on */
  uint64_t deadline;
  uint64_t t_start; /* uv_hrtime at request start */
  size_t pending;   /* bytes queued in uv_write */
  eng_buf held;     /* read but not yet parsed while C_WAIT (at most ENG_READ_BUF) */
  eng_http_parser hp;
  eng_pending *run; /* the suspended request of C_RUN, or NULL */
  unsigned state : 3, closing : 1, sent_continue : 1, reading : 1, counted : 1, shut : 1;
  unsigned trusted : 1;              /* the TCP peer is in --real-ip-from: its requests' X-Forwarded-For counts */
  signed char gauge;                 /* the state apiengine_connections counts it in (ENG_METRICS_CONN_*) */
  eng_netaddr addr;                  /* the TCP peer's address */
  char peer[ENG_NETADDR_PEER_MAX];   /* the TCP peer, "ip:port" */
  char client[ENG_NETADDR_PEER_MAX]; /* the current request's client (req.peer, the access log) */
};

/* What every worker of one server shares: the process-wide connection count and the
 * refused-connection log (atomics), and the main thread's wake-up for a worker that has ended.
 * On the heap: after a drain timeout the process exits with it still in use. */
typedef struct server_shared {
  uv_async_t exited;              /* on the main loop: a worker's loop has ended */
  int max_conns;                  /* --max-connections */
  atomic_int conns;               /* admitted connections, all workers */
  atomic_ulong refused;           /* refused since the last log line */
  atomic_uint_fast64_t logged_ms; /* when that line was written (uv_hrtime in ms), 0: never */
} server_shared;

/* One accepted reload: the settings its runtimes get. Shared by the main thread and the workers
 * building from it; freed by the last of them (refs under reloads.mu). */
typedef struct reload_gen {
  unsigned id;
  int refs;
  eng_buf settings;
  int load_budget_ms; /* the fresh configuration's: the workers load the scripts under it */
} reload_gen;

/* The reloads of one server run: what the main thread publishes and the workers read. */
struct reloads {
  uv_mutex_t mu;
  reload_gen *current; /* the latest accepted reload, NULL before the first */
  uv_async_t done;     /* on the main loop: a worker finished building (unreferenced) */
};

struct worker {
  int id;
  const eng_config *cfg;
  reloads *rl;
  uv_thread_t thread;
  uv_loop_t loop;
  uv_tcp_t listener;
  uv_async_t wake;
  uv_async_t reload; /* from the main thread: build the scripts again */
  uv_timer_t sweep;
  uv_sem_t started;
  int fd;
  int start_rc;
  int stopping;
  server_shared *sh;
  int nconns; /* this worker's connection handles, refused ones included until closed */
  list idle, head, body, send, linger, run;
  size_t queued; /* unsent output of all its connections */
  eng_runtime *rt;
  eng_db *db; /* SQLite, or ... */
  eng_pg *pg; /* ... PostgreSQL (--db postgresql://...): connections on this worker's loop */
  eng_response resp;
  eng_buf out;
  uint64_t drain_deadline;
  uint64_t drain_idle_until;       /* at the drain: when idle connections are closed */
  uint64_t last_sweep;             /* loop time of the previous sweep */
  int answered;                    /* 1: it answered since the previous sweep (which resets it) */
  int to_release;                  /* 1: it answered since it last gave memory back */
  uint64_t quiet_since;            /* loop time of the first sweep that saw no answer */
  atomic_uint_fast64_t busy_since; /* uv_hrtime when the running handler started, 0: none */
  atomic_int finished;             /* the worker's loop has ended (read by the main thread) */
  atomic_uint reload_seen;         /* id of the last reload this worker finished building */
  atomic_int reload_failed;        /* and whether it kept the old runtime then */
  char readbuf[ENG_READ_BUF];
};

/* Set by the main thread on SIGTERM/SIGINT, before it wakes the workers: a worker
 * busy in a handler sees it at once and answers that request with Connection: close. */
extern atomic_int eng_server_stopping;

/* libuv and errno codes stop here: what leaves server.c and conn.c is an ENG_E* code (error.h). */
static inline int eng_err_from_uv(int uv_rc) {
  switch (uv_rc) {
  case 0:
    return 0;
  case UV_ENOMEM:
    return ENG_ENOMEM;
  case UV_EINVAL:
    return ENG_EINVAL;
  case UV_E2BIG:
  case UV_ENOBUFS:
    return ENG_ETOOBIG;
  default:
    return ENG_EIO;
  }
}

/* ---- conn.c ---- */

/* Accepts on the worker's listener (its connection callback). */
void eng_conn_on_connection(uv_stream_t *server, int status);
/* At drain: accepts and serves what is still queued on the listener before it closes. */
void eng_conn_adopt_backlog(worker *w);
/* Closes c (idempotent); its memory goes in the close callback. */
void eng_conn_close(conn *c);
/* Acts on the deadlines that have passed at `now` (408, close), and past the drain deadline
 * closes every connection; flushes the refused-connection count to the log. */
void eng_conn_sweep(worker *w, uint64_t now);
/* At SIGTERM/SIGINT: idle connections get until ENG_DRAIN_IDLE_MS from now to send one more
 * request, then are closed cleanly (half-close and linger, no reset). */
void eng_conn_drain(worker *w);

/* ---- server_metrics.c ---- */

enum { ENG_HEALTHZ = 1, ENG_READYZ = 2 };
/* ENG_HEALTHZ or ENG_READYZ when req is a GET or HEAD of cfg's health or readiness path, else 0. */
int eng_health_path(const eng_config *cfg, const eng_http_request *req);
/* Fills resp (reset) with the answer of that path: 200, or 503 naming why_not_ready (a static
 * word: "draining", "scripts", "database"; NULL: ready). */
void eng_health_fill(int kind, const char *why_not_ready, eng_response *resp);
/* Why worker w is not ready (draining, no scripts, its database does not answer), or NULL. */
const char *eng_worker_not_ready(worker *w);

/* The metrics listener: its own thread, serving /metrics and the two health paths. */
typedef struct eng_metrics_srv eng_metrics_srv;
/* Binds cfg->metrics_host:metrics_port and starts serving (logs the address, or why not). cfg is
 * borrowed until eng_metrics_srv_stop. 0 or an ENG_E* code. */
int eng_metrics_srv_start(eng_metrics_srv **out, const eng_config *cfg);
/* Whether cfg's metrics address (if any) is free: as eng_server_probe (server.h) does for the API
 * address. 0, or an ENG_E* code with a malloc'd *err. */
int eng_metrics_srv_probe(const eng_config *cfg, char **err);
/* Readiness: set once every worker has started (the drain shows through eng_server_stopping). */
void eng_metrics_srv_ready(eng_metrics_srv *s, int ready);
/* Stops it, closing its connections, and frees it. NULL is fine. */
void eng_metrics_srv_stop(eng_metrics_srv *s);

/* ---- server.c ---- */

/* Once stopping and no connection is left, closes the worker's own handles: its loop ends. */
void eng_worker_maybe_finish(worker *w);

#endif
