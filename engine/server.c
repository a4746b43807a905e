/* server.c - workers, listeners, connections (see server.h).
 *
 * Memory per idle keep-alive connection is kept small on purpose: the read
 * buffer is one per worker (requests are parsed and answered synchronously in
 * the read callback), request buffers are released when a connection goes
 * idle, and timeouts use two per-worker lists instead of a timer per
 * connection. Both lists have a fixed timeout, so appending at the tail keeps
 * them ordered by deadline and the sweep stops at the first live entry. */
#include "server.h"
#include "db.h"
#include "error.h"
#include "http.h"
#include "log.h"
#include "lua_runtime.h"

#include <uv.h>

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define ENG_READ_BUF (64u * 1024u)
#define ENG_SWEEP_MS 250
#define ENG_LINGER_MS 2000        /* after an error answer: wait this long for the peer to close */
#define ENG_WRITE_HIGH (4u << 20) /* stop reading past this many unsent bytes */
#define ENG_BACKLOG 1024
#define ENG_DRAIN_IDLE_MS 1000 /* at SIGTERM: how long an idle keep-alive connection may still send one request */

typedef struct worker worker;
typedef struct conn conn;
typedef struct reloads reloads;

typedef struct list {
  conn *head, *tail;
} list;

enum { C_IDLE, C_BUSY, C_LINGER };

struct conn {
  uv_tcp_t tcp; /* first: handles cast back to conn */
  worker *w;
  conn *prev, *next;
  list *on; /* the list this connection is on */
  uint64_t deadline;
  uint64_t t_start; /* uv_hrtime at request start */
  size_t pending;   /* bytes queued in uv_write */
  eng_http_parser hp;
  unsigned state : 2, closing : 1, sent_continue : 1, reading : 1;
  char peer[48];
};

/* One accepted reload: the settings its runtimes get. Shared by the main thread and the workers
 * building from it; freed by the last of them (refs under reloads.mu). */
typedef struct reload_gen {
  unsigned id;
  int refs;
  eng_buf settings;
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
  int nconns, max_conns;
  list idle, busy;
  eng_runtime *rt;
  eng_db *db;
  eng_response resp;
  eng_buf out;
  uint64_t drain_deadline;
  atomic_uint reload_seen;  /* id of the last reload this worker finished building */
  atomic_int reload_failed; /* and whether it kept the old runtime then */
  char readbuf[ENG_READ_BUF];
};

/* Set by the main thread on SIGTERM/SIGINT, before it wakes the workers: a worker
 * busy in a handler sees it at once and answers that request with Connection: close. */
static atomic_int g_stopping;

/* libuv and errno codes stop here: what leaves this file is an ENG_E* code (error.h). */
static int eng_err_from_uv(int uv_rc) {
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

/* ---- lists --------------------------------------------------------------------------------- */

static void list_remove(conn *c) {
  list *l = c->on;
  if (l == NULL)
    return;
  if (c->prev)
    c->prev->next = c->next;
  else
    l->head = c->next;
  if (c->next)
    c->next->prev = c->prev;
  else
    l->tail = c->prev;
  c->prev = c->next = NULL;
  c->on = NULL;
}

static void list_push(list *l, conn *c, uint64_t deadline) {
  list_remove(c);
  c->deadline = deadline;
  c->prev = l->tail;
  c->next = NULL;
  if (l->tail)
    l->tail->next = c;
  else
    l->head = c;
  l->tail = c;
  c->on = l;
}

/* ---- connections --------------------------------------------------------------------------- */

static void maybe_finish(worker *w);

static void on_conn_closed(uv_handle_t *h) {
  conn *c = (conn *)h;
  worker *w = c->w;
  eng_http_parser_free(&c->hp);
  free(c);
  w->nconns--;
  maybe_finish(w);
}

static void conn_close(conn *c) {
  if (uv_is_closing((uv_handle_t *)&c->tcp))
    return;
  list_remove(c);
  uv_close((uv_handle_t *)&c->tcp, on_conn_closed);
}

static void on_shutdown(uv_shutdown_t *req, int status) {
  conn *c = req->data;
  free(req);
  if (status != 0)
    conn_close(c);
}

/* Half-close after the last answer; keep reading (and discarding) until the
 * peer closes or ENG_LINGER_MS pass, so unread input does not turn into a RST
 * that could destroy the answer on its way. */
static void conn_finish(conn *c) {
  if (c->state == C_LINGER || uv_is_closing((uv_handle_t *)&c->tcp))
    return;
  c->state = C_LINGER;
  c->closing = 1;
  list_push(&c->w->busy, c, uv_now(&c->w->loop) + ENG_LINGER_MS);
  uv_shutdown_t *req = malloc(sizeof *req);
  if (req == NULL || uv_shutdown(req, (uv_stream_t *)&c->tcp, on_shutdown) != 0) {
    free(req);
    conn_close(c);
    return;
  }
  req->data = c;
}

typedef struct wreq {
  uv_write_t req;
  conn *c;
  size_t len;
  char data[];
} wreq;

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf);
static void alloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *buf);

static void on_write(uv_write_t *req, int status) {
  wreq *wr = (wreq *)req;
  conn *c = wr->c;
  c->pending -= wr->len;
  free(wr);
  if (status != 0) {
    conn_close(c);
    return;
  }
  if (!c->reading && !c->closing && c->pending < ENG_WRITE_HIGH / 4) {
    if (uv_read_start((uv_stream_t *)&c->tcp, alloc_cb, on_read) != 0) {
      conn_close(c);
      return;
    }
    c->reading = 1;
  }
}

/* Sends bytes in order: straight to the socket when nothing is queued, else queued.
 * Returns 0 or an ENG_E* code (the caller closes the connection). */
static int conn_send(conn *c, const char *data, size_t len) {
  if (c->pending == 0) {
    uv_buf_t b = uv_buf_init((char *)data, (unsigned)len);
    int n = uv_try_write((uv_stream_t *)&c->tcp, &b, 1);
    if (n == (int)len)
      return 0;
    if (n < 0 && n != UV_EAGAIN)
      return eng_err_from_uv(n);
    if (n > 0) {
      data += n;
      len -= (size_t)n;
    }
  }
  wreq *wr = malloc(sizeof *wr + len);
  if (wr == NULL)
    return ENG_ENOMEM;
  memcpy(wr->data, data, len);
  wr->c = c;
  wr->len = len;
  uv_buf_t b = uv_buf_init(wr->data, (unsigned)len);
  int rc = uv_write(&wr->req, (uv_stream_t *)&c->tcp, &b, 1, on_write);
  if (rc != 0) {
    free(wr);
    return eng_err_from_uv(rc);
  }
  c->pending += len;
  if (c->pending > ENG_WRITE_HIGH && c->reading) {
    (void)uv_read_stop((uv_stream_t *)&c->tcp); /* cannot fail on a TCP handle (always 0 since libuv 1.x) */
    c->reading = 0;
  }
  return 0;
}

/* Writes w->resp as the answer to a request (req may be NULL for parse errors). */
static void send_response(conn *c, const eng_http_request *req, const char *request_id, int keep_alive) {
  worker *w = c->w;
  eng_response *r = &w->resp;
  int no_body = (req && req->method && strcmp(req->method, "HEAD") == 0) || !eng_http_status_has_body(r->status);
  int minor = req ? req->http_minor : 1;
  eng_buf_reset(&w->out);
  int rc = eng_http_write_head(&w->out, r->status, minor, keep_alive,
                               r->content_type[0] ? r->content_type : "application/json", r->body.len, request_id,
                               r->headers.data, r->headers.len);
  if (rc == 0 && !no_body && r->body.len)
    rc = eng_buf_append(&w->out, r->body.data, r->body.len);
  if (rc == 0)
    rc = conn_send(c, w->out.data, w->out.len);
  if (w->cfg->access_log) {
    eng_access_entry e = {
        .method = req && req->method ? req->method : "-",
        .path = req && req->url.data ? req->url.data : "-",
        .path_len = req && req->url.data ? req->path_len : 1,
        .status = r->status,
        .bytes = no_body ? 0 : r->body.len,
        .duration_ms = (double)(uv_hrtime() - c->t_start) / 1e6,
        .request_id = request_id,
        .peer = c->peer,
    };
    eng_log_access(&e);
  }
  if (rc != 0)
    conn_close(c);
}

static void handle_request(conn *c) {
  worker *w = c->w;
  eng_http_request *req = &c->hp.req;
  char rid[ENG_HTTP_REQUEST_ID_MAX + 1];
  eng_http_request_id(req, rid);
  eng_response_reset(&w->resp);
  eng_runtime_handle(w->rt, req, c->peer, rid, &w->resp);
  int keep = req->keep_alive && !w->stopping && !atomic_load_explicit(&g_stopping, memory_order_relaxed);
  send_response(c, req, rid, keep);
  if (!keep)
    c->closing = 1;
}

static void handle_parse_error(conn *c) {
  worker *w = c->w;
  char rid[ENG_HTTP_REQUEST_ID_MAX + 1];
  /* Headers may be complete (413 on Content-Length): honour their request id. */
  eng_http_request_id(c->hp.req.nheaders ? &c->hp.req : NULL, rid);
  eng_response_reset(&w->resp);
  eng_runtime_error(w->rt, c->hp.error_status, c->hp.error_code, c->hp.error_reason, rid, &w->resp);
  send_response(c, c->hp.req.method ? &c->hp.req : NULL, rid, 0);
  c->closing = 1;
}

static void process(conn *c, const char *data, size_t len) {
  worker *w = c->w;
  if (c->state == C_IDLE) {
    c->state = C_BUSY;
    c->t_start = uv_hrtime();
    list_push(&w->busy, c, uv_now(&w->loop) + (uint64_t)w->cfg->header_timeout_ms);
  }
  while (len > 0 && !c->closing) {
    size_t used = 0;
    int r = eng_http_parser_feed(&c->hp, data, len, &used);
    data += used;
    len -= used;
    if (r == ENG_HTTP_NEED_MORE) {
      if (c->hp.want_continue && !c->sent_continue) {
        static const char cont[] = "HTTP/1.1 100 Continue\r\n\r\n";
        c->sent_continue = 1;
        if (conn_send(c, cont, sizeof cont - 1) != 0)
          conn_close(c);
      }
      break;
    }
    if (r == ENG_HTTP_ERROR) {
      handle_parse_error(c);
      break;
    }
    handle_request(c);
    eng_http_parser_next(&c->hp);
    c->sent_continue = 0;
    c->t_start = uv_hrtime();
  }
  if (uv_is_closing((uv_handle_t *)&c->tcp))
    return;
  if (c->closing) {
    conn_finish(c);
  } else if (!c->hp.in_message) {
    c->state = C_IDLE;
    eng_http_parser_trim(&c->hp);
    list_push(&w->idle, c, uv_now(&w->loop) + (uint64_t)w->cfg->idle_timeout_ms);
  }
}

static void alloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
  (void)suggested;
  conn *c = (conn *)h;
  buf->base = c->w->readbuf;
  buf->len = sizeof c->w->readbuf;
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf) {
  conn *c = (conn *)s;
  if (nread < 0) {
    conn_close(c);
    return;
  }
  if (nread == 0 || c->state == C_LINGER)
    return; /* lingering: discard */
  process(c, buf->base, (size_t)nread);
}

static void format_peer(uv_tcp_t *t, char *out, size_t size) {
  struct sockaddr_storage ss = {0};
  int len = sizeof ss;
  char ip[INET6_ADDRSTRLEN] = "?";
  int port = 0;
  if (uv_tcp_getpeername(t, (struct sockaddr *)&ss, &len) == 0) {
    if (ss.ss_family == AF_INET) {
      struct sockaddr_in *a = (struct sockaddr_in *)&ss;
      uv_ip4_name(a, ip, sizeof ip);
      port = ntohs(a->sin_port);
    } else if (ss.ss_family == AF_INET6) {
      struct sockaddr_in6 *a = (struct sockaddr_in6 *)&ss;
      uv_ip6_name(a, ip, sizeof ip);
      port = ntohs(a->sin6_port);
    }
  }
  snprintf(out, size, ss.ss_family == AF_INET6 ? "[%s]:%d" : "%s:%d", ip, port);
}

/* A connection handle on w's loop, counted in w->nconns (so it is closed with on_conn_closed),
 * or NULL (logged). */
static conn *conn_new(worker *w) {
  conn *c = calloc(1, sizeof *c);
  int rc;
  if (c == NULL) {
    /* The connection stays in the kernel's backlog; libuv offers it again. */
    eng_log_error("worker %d: out of memory accepting a connection", w->id);
    return NULL;
  }
  c->w = w;
  if ((rc = uv_tcp_init(&w->loop, &c->tcp)) != 0) {
    eng_log_error("worker %d: cannot accept a connection: %s", w->id, uv_strerror(rc));
    free(c);
    return NULL;
  }
  w->nconns++;
  return c;
}

/* Starts reading an accepted connection (or closes it past the connection limit). */
static void conn_begin(worker *w, conn *c) {
  int rc;
  if (w->nconns > w->max_conns) {
    eng_log_warn("worker %d: connection limit reached (%d), refusing a connection", w->id, w->max_conns);
    uv_close((uv_handle_t *)&c->tcp, on_conn_closed);
    return;
  }
  /* Without TCP_NODELAY answers are only slower (Nagle), so a failure is not fatal. */
  if ((rc = uv_tcp_nodelay(&c->tcp, 1)) != 0)
    eng_log_debug("worker %d: TCP_NODELAY: %s", w->id, uv_strerror(rc));
  format_peer(&c->tcp, c->peer, sizeof c->peer);
  eng_http_parser_init(&c->hp, &w->cfg->limits);
  c->state = C_IDLE;
  list_push(&w->idle, c, uv_now(&w->loop) + (uint64_t)w->cfg->header_timeout_ms);
  if ((rc = uv_read_start((uv_stream_t *)&c->tcp, alloc_cb, on_read)) != 0) {
    eng_log_warn("worker %d: cannot read from %s: %s", w->id, c->peer, uv_strerror(rc));
    conn_close(c);
    return;
  }
  c->reading = 1;
}

static void on_connection(uv_stream_t *server, int status) {
  worker *w = server->data;
  if (status != 0)
    return;
  conn *c = conn_new(w);
  if (c == NULL)
    return;
  if (uv_accept(server, (uv_stream_t *)&c->tcp) != 0 || w->stopping) {
    uv_close((uv_handle_t *)&c->tcp, on_conn_closed);
    return;
  }
  conn_begin(w, c);
}

/* At the drain, before the listener closes: the connections the kernel queued on it would be
 * reset by the close, so accept them and serve them (their requests are answered with
 * Connection: close). One queued between this and the close is still reset; on Linux 5.14+,
 * sysctl net.ipv4.tcp_migrate_req=1 hands those to the port's other listeners (a handover's). */
static void adopt_backlog(worker *w) {
  uv_os_fd_t fd;
  if (uv_fileno((uv_handle_t *)&w->listener, &fd) != 0)
    return;
  for (int i = 0; i < ENG_BACKLOG; i++) {
    int cfd = accept(fd, NULL, NULL); /* libuv made the listener non-blocking, and uv_tcp_open does the same */
    if (cfd < 0)
      return;
    (void)fcntl(cfd, F_SETFD, FD_CLOEXEC); /* nothing is exec'd: tidiness, not safety */
    conn *c = conn_new(w);
    if (c == NULL) {
      close(cfd);
      return;
    }
    if (uv_tcp_open(&c->tcp, cfd) != 0) {
      close(cfd);
      uv_close((uv_handle_t *)&c->tcp, on_conn_closed);
      continue;
    }
    conn_begin(w, c);
  }
}

/* ---- worker lifecycle ---------------------------------------------------------------------- */

static void sweep_list(list *l, uint64_t now) {
  while (l->head && l->head->deadline <= now)
    conn_close(l->head);
}

static void on_sweep(uv_timer_t *t) {
  worker *w = t->data;
  uint64_t now = uv_now(&w->loop);
  sweep_list(&w->idle, now);
  sweep_list(&w->busy, now);
  if (w->stopping && now >= w->drain_deadline) {
    while (w->busy.head)
      conn_close(w->busy.head);
  }
}

static void close_handle_once(uv_handle_t *h) {
  if (!uv_is_closing(h))
    uv_close(h, NULL);
}

/* Once stopping and no connection is left, close the worker's own handles: the loop ends. */
static void maybe_finish(worker *w) {
  if (!w->stopping || w->nconns > 0)
    return;
  close_handle_once((uv_handle_t *)&w->sweep);
  close_handle_once((uv_handle_t *)&w->wake);
  close_handle_once((uv_handle_t *)&w->reload);
}

static void on_wake(uv_async_t *a) {
  worker *w = a->data;
  if (w->stopping)
    return;
  w->stopping = 1;
  w->drain_deadline = uv_now(&w->loop) + (uint64_t)w->cfg->drain_ms;
  adopt_backlog(w);
  close_handle_once((uv_handle_t *)&w->listener);
  /* Idle keep-alive connections (and those just adopted) have nothing in flight, but their
   * client may be sending the next request at this very moment, and closing would lose it (a
   * reset, for a client that does not retry). Each gets up to ENG_DRAIN_IDLE_MS to send one
   * more, answered with Connection: close, and the sweep closes it after that. One deadline for
   * all keeps the list ordered. */
  uint64_t until =
      uv_now(&w->loop) + (uint64_t)(w->cfg->drain_ms < ENG_DRAIN_IDLE_MS ? w->cfg->drain_ms : ENG_DRAIN_IDLE_MS);
  for (conn *c = w->idle.head; c; c = c->next)
    c->deadline = until;
  maybe_finish(w);
}

static void close_any(uv_handle_t *h, void *arg) {
  (void)arg;
  close_handle_once(h);
}

static eng_runtime_options runtime_options(const worker *w, const eng_buf *settings) {
  return (eng_runtime_options){
      .scripts_dir = w->cfg->scripts_dir,
      .settings = settings,
      .budget_ms = w->cfg->budget_ms,
      .memory_limit = w->cfg->memory_limit,
      .db = w->db, /* scripts may read the database while they load (e.g. to warm caches) */
  };
}

static void gen_release(reloads *rl, reload_gen *g) {
  if (g == NULL)
    return;
  uv_mutex_lock(&rl->mu);
  int last = --g->refs == 0;
  uv_mutex_unlock(&rl->mu);
  if (last) {
    eng_buf_free(&g->settings);
    free(g);
  }
}

/* A reload: build a fresh runtime from the latest accepted reload and swap it in. This runs
 * on the loop between two callbacks, and requests are answered synchronously inside the read
 * callback, so no request is in flight on the old state when it goes. */
static void on_reload(uv_async_t *a) {
  worker *w = a->data;
  reloads *rl = w->rl;
  if (w->stopping)
    return;
  uv_mutex_lock(&rl->mu);
  reload_gen *g = rl->current;
  if (g)
    g->refs++;
  uv_mutex_unlock(&rl->mu);
  if (g == NULL || atomic_load(&w->reload_seen) == g->id) {
    gen_release(rl, g);
    return;
  }
  eng_runtime_options ro = runtime_options(w, &g->settings);
  eng_runtime *fresh = NULL;
  char *err = NULL;
  int rc = eng_runtime_new(&fresh, &ro, &err);
  if (rc == 0) {
    eng_runtime_free(w->rt);
    w->rt = fresh;
  } else {
    eng_log_error("reload %u: worker %d keeps the scripts it had: %s", g->id, w->id, err ? err : eng_strerror(rc));
  }
  free(err);
  atomic_store(&w->reload_failed, rc != 0);
  atomic_store(&w->reload_seen, g->id);
  gen_release(rl, g);
  (void)uv_async_send(&rl->done); /* open until every worker is joined */
}

/* Sets up the worker's loop: the listener on its socket, the wake-up async, the
 * sweep timer. Returns 0 or a libuv code; on failure every handle it made is closed
 * and the loop too (w->fd stays with the caller unless the listener took it). */
static int worker_listen(worker *w) {
  int rc;
  if ((rc = uv_loop_init(&w->loop)) != 0)
    return rc;
  if ((rc = uv_tcp_init(&w->loop, &w->listener)) != 0)
    goto fail;
  w->listener.data = w;
  if ((rc = uv_tcp_open(&w->listener, w->fd)) != 0)
    goto fail;
  w->fd = -1; /* closed with the listener from here on */
  if ((rc = uv_listen((uv_stream_t *)&w->listener, ENG_BACKLOG, on_connection)) != 0 ||
      (rc = uv_async_init(&w->loop, &w->wake, on_wake)) != 0)
    goto fail;
  w->wake.data = w;
  if ((rc = uv_async_init(&w->loop, &w->reload, on_reload)) != 0)
    goto fail;
  w->reload.data = w;
  if ((rc = uv_timer_init(&w->loop, &w->sweep)) != 0)
    goto fail;
  w->sweep.data = w;
  if ((rc = uv_timer_start(&w->sweep, on_sweep, ENG_SWEEP_MS, ENG_SWEEP_MS)) != 0)
    goto fail;
  return 0;
fail:
  uv_walk(&w->loop, close_any, NULL);
  uv_run(&w->loop, UV_RUN_DEFAULT);
  (void)uv_loop_close(&w->loop); /* every handle is closed: cannot be busy */
  return rc;
}

static void worker_main(void *arg) {
  worker *w = arg;
  char *err = NULL;
  int rc;
  eng_db_options dbo = {.synchronous = w->cfg->synchronous};
  if ((rc = eng_db_open(&w->db, w->cfg->db_path, &dbo, &err)) != 0) {
    eng_log_error("worker %d: database %s: %s", w->id, w->cfg->db_path, err ? err : eng_strerror(rc));
    goto fail;
  }
  eng_runtime_options ro = runtime_options(w, &w->cfg->settings);
  if ((rc = eng_runtime_new(&w->rt, &ro, &err)) != 0) {
    eng_log_error("%s", err ? err : eng_strerror(rc));
    goto fail;
  }
  if ((rc = worker_listen(w)) != 0) {
    eng_log_error("worker %d: listen: %s", w->id, uv_strerror(rc));
    rc = eng_err_from_uv(rc);
    goto fail;
  }
  w->start_rc = 0;
  uv_sem_post(&w->started);

  uv_run(&w->loop, UV_RUN_DEFAULT);

  if ((rc = uv_loop_close(&w->loop)) != 0)
    eng_log_warn("worker %d: loop closed with handles still open: %s", w->id, uv_strerror(rc));
  eng_runtime_free(w->rt);
  eng_db_close(w->db);
  eng_response_free(&w->resp);
  eng_buf_free(&w->out);
  return;

fail:
  free(err);
  eng_runtime_free(w->rt);
  eng_db_close(w->db);
  w->rt = NULL;
  w->db = NULL;
  w->start_rc = rc ? rc : ENG_EIO;
  uv_sem_post(&w->started);
}

/* ---- listening sockets --------------------------------------------------------------------- */

static int bind_socket(const struct sockaddr *sa, socklen_t salen, int *out) {
  int fd = socket(sa->sa_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0)
    return -errno;
  int one = 1;
  if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) != 0 ||
      setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one) != 0 || bind(fd, sa, salen) != 0) {
    int e = errno;
    close(fd);
    return -e;
  }
  *out = fd;
  return 0;
}

static int resolve(const eng_config *cfg, struct sockaddr_storage *ss, socklen_t *sl, char **err) {
  struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM, .ai_flags = AI_PASSIVE};
  struct addrinfo *ai = NULL;
  char port[16];
  snprintf(port, sizeof port, "%d", cfg->port);
  int gai = getaddrinfo(cfg->listen_host, port, &hints, &ai);
  if (gai != 0)
    return eng_errorf(err, ENG_ECONFIG, "cannot resolve listen address '%s': %s", cfg->listen_host, gai_strerror(gai));
  *sl = ai->ai_addrlen;
  memcpy(ss, ai->ai_addr, ai->ai_addrlen);
  freeaddrinfo(ai);
  return 0;
}

/* Without SO_REUSEPORT, bind fails with EADDRINUSE while any socket listens on the address,
 * SO_REUSEPORT or not; SO_REUSEADDR still lets it past connections in TIME_WAIT. */
static int probe_bind(const struct sockaddr *sa, socklen_t salen) {
  int fd = socket(sa->sa_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0)
    return -errno;
  int one = 1, rc = 0;
  if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) != 0 || bind(fd, sa, salen) != 0)
    rc = -errno;
  close(fd);
  return rc;
}

static int probe_addr(const eng_config *cfg, const struct sockaddr_storage *ss, socklen_t sl, char **err) {
  if (cfg->port == 0)
    return 0;
  int e = probe_bind((const struct sockaddr *)ss, sl);
  if (e == -EADDRINUSE)
    return eng_errorf(err, ENG_EEXISTS,
                      "cannot listen on %s:%d: %s: another process listens there (another apiengine? stop it "
                      "first, or start this one with --handover to take over from it)",
                      cfg->listen_host, cfg->port, strerror(-e));
  if (e != 0)
    return eng_errorf(err, ENG_EIO, "cannot listen on %s:%d: %s", cfg->listen_host, cfg->port, strerror(-e));
  return 0;
}

int eng_server_probe(const eng_config *cfg, char **err) {
  struct sockaddr_storage ss;
  socklen_t sl;
  if (err)
    *err = NULL;
  int rc = resolve(cfg, &ss, &sl, err);
  return rc ? rc : probe_addr(cfg, &ss, sl, err);
}

/* Binds one socket per worker on the same address. Port 0 picks a free port once. Unless
 * handing over, first makes sure nobody else listens there. */
static int bind_all(const eng_config *cfg, worker *ws, int n, int *port_out) {
  struct sockaddr_storage ss;
  socklen_t sl;
  char *err = NULL;
  int rc = resolve(cfg, &ss, &sl, &err);
  if (rc == 0 && !cfg->handover)
    rc = probe_addr(cfg, &ss, sl, &err);
  if (rc != 0) {
    eng_log_error("%s", err ? err : eng_strerror(rc));
    free(err);
    return rc;
  }
  for (int i = 0; i < n; i++) {
    int e = bind_socket((struct sockaddr *)&ss, sl, &ws[i].fd);
    if (e != 0) {
      eng_log_error("cannot listen on %s:%d: %s", cfg->listen_host, cfg->port, strerror(-e));
      for (int j = 0; j < i; j++)
        close(ws[j].fd);
      return ENG_EIO;
    }
    if (i == 0 && cfg->port == 0) {
      socklen_t l = sizeof ss;
      if (getsockname(ws[0].fd, (struct sockaddr *)&ss, &l) != 0) {
        eng_log_error("cannot read the port picked for %s: %s", cfg->listen_host, strerror(errno));
        close(ws[0].fd);
        return ENG_EIO;
      }
    }
  }
  *port_out = ss.ss_family == AF_INET6 ? ntohs(((struct sockaddr_in6 *)&ss)->sin6_port)
                                       : ntohs(((struct sockaddr_in *)&ss)->sin_port);
  return 0;
}

/* ---- the main thread ----------------------------------------------------------------------- */

typedef struct main_ctx {
  worker *ws;
  int n;
  const eng_server_hooks *hooks;
  reloads *rl;
  uv_signal_t sigterm, sigint, sighup;
  uv_timer_t poll;
  int polling;
  int signo;
  unsigned reload_id;   /* the last SIGHUP's number */
  unsigned accepted_id; /* the last reload the check accepted, 0 for none */
  unsigned logged_id;   /* the last reload whose result was logged */
  int reload_routes;
  uint64_t reload_t0;
} main_ctx;

/* uv_async_send fails only on a closed handle, and a started worker closes its
 * wake-up handle only after it was told to stop: nothing to undo. */
static void stop_workers(main_ctx *m) {
  for (int i = 0; i < m->n; i++)
    if (m->ws[i].start_rc == 0)
      (void)uv_async_send(&m->ws[i].wake);
}

static void on_signal(uv_signal_t *s, int signo) {
  main_ctx *m = s->data;
  m->signo = signo;
  atomic_store(&g_stopping, 1);
  eng_log_info("received %s: draining (up to %d ms)", signo == SIGTERM ? "SIGTERM" : "SIGINT", m->ws[0].cfg->drain_ms);
  stop_workers(m);
  uv_close((uv_handle_t *)&m->sigterm, NULL);
  uv_close((uv_handle_t *)&m->sigint, NULL);
  uv_close((uv_handle_t *)&m->sighup, NULL);
  (void)signal(SIGHUP, SIG_IGN); /* closing the handle restored the default, which kills */
  if (m->polling)
    uv_close((uv_handle_t *)&m->poll, NULL);
  m->polling = 0;
}

/* SIGHUP: check the reload on this thread, then tell every worker. */
static void on_sighup(uv_signal_t *s, int signo) {
  (void)signo;
  main_ctx *m = s->data;
  unsigned id = ++m->reload_id;
  const eng_server_hooks *h = m->hooks;
  if (h == NULL || h->reload_check == NULL) {
    eng_log_warn("received SIGHUP: this server cannot reload; ignored");
    return;
  }
  eng_log_info("received SIGHUP: reload %u: checking the scripts", id);
  uint64_t t0 = uv_hrtime();
  reload_gen *g = calloc(1, sizeof *g);
  int routes = 0, rc = g ? 0 : ENG_ENOMEM;
  char *err = NULL;
  if (g) /* calloc'd: g->settings is a valid empty buffer */
    rc = h->reload_check(h->ud, id, &g->settings, &routes, &err);
  if (rc != 0) {
    eng_log_error("reload %u refused: %s; nothing changed, the old scripts keep serving", id,
                  err ? err : eng_strerror(rc));
    free(err);
    if (g)
      eng_buf_free(&g->settings);
    free(g);
    return;
  }
  free(err);
  g->id = id;
  g->refs = 1; /* rl->current's */
  uv_mutex_lock(&m->rl->mu);
  reload_gen *old = m->rl->current;
  m->rl->current = g;
  uv_mutex_unlock(&m->rl->mu);
  gen_release(m->rl, old);
  m->accepted_id = id;
  m->reload_routes = routes;
  m->reload_t0 = t0;
  for (int i = 0; i < m->n; i++)
    (void)uv_async_send(&m->ws[i].reload); /* open until the worker is told to stop */
}

/* A worker finished a reload: once all have finished the latest, log the one result line. */
static void on_reload_done(uv_async_t *a) {
  main_ctx *m = a->data;
  unsigned id = m->accepted_id;
  int kept = 0;
  if (id == 0 || m->logged_id == id || atomic_load(&g_stopping))
    return;
  for (int i = 0; i < m->n; i++) {
    if (atomic_load(&m->ws[i].reload_seen) != id)
      return;
    kept += atomic_load(&m->ws[i].reload_failed);
  }
  m->logged_id = id;
  double ms = (double)(uv_hrtime() - m->reload_t0) / 1e6;
  if (kept == 0)
    eng_log_info("reload %u done: %d worker%s serve%s the new scripts (%d routes), in %.0f ms", id, m->n,
                 m->n == 1 ? "" : "s", m->n == 1 ? "s" : "", m->reload_routes, ms);
  else
    eng_log_warn("reload %u partly failed: %d of %d workers serve the new scripts, %d kept the ones they had (above)",
                 id, m->n - kept, m->n, kept);
}

static void on_poll(uv_timer_t *t) {
  main_ctx *m = t->data;
  if (m->hooks->poll(m->hooks->ud) != 0 && m->polling) {
    m->polling = 0;
    uv_close((uv_handle_t *)&m->poll, NULL);
  }
}

/* Installs the SIGTERM, SIGINT and SIGHUP handlers (and the poll timer) on the default loop.
 * 0 or an ENG_E* code (after logging why; what it made is closed). */
static int watch_signals(main_ctx *m) {
  uv_loop_t *loop = uv_default_loop();
  int rc;
  m->sigterm.data = m->sigint.data = m->sighup.data = m->poll.data = m;
  if ((rc = uv_signal_init(loop, &m->sigterm)) != 0)
    goto out;
  if ((rc = uv_signal_init(loop, &m->sigint)) != 0) {
    uv_close((uv_handle_t *)&m->sigterm, NULL);
    goto out;
  }
  if ((rc = uv_signal_init(loop, &m->sighup)) != 0) {
    uv_close((uv_handle_t *)&m->sigterm, NULL);
    uv_close((uv_handle_t *)&m->sigint, NULL);
    goto out;
  }
  if ((rc = uv_signal_start(&m->sigterm, on_signal, SIGTERM)) != 0 ||
      (rc = uv_signal_start(&m->sigint, on_signal, SIGINT)) != 0 ||
      (rc = uv_signal_start(&m->sighup, on_sighup, SIGHUP)) != 0) {
    uv_close((uv_handle_t *)&m->sigterm, NULL);
    uv_close((uv_handle_t *)&m->sigint, NULL);
    uv_close((uv_handle_t *)&m->sighup, NULL);
    goto out;
  }
  /* Without the timer only the handover's wait is lost: it says so and goes on. */
  if (m->hooks && m->hooks->poll) {
    if (uv_timer_init(loop, &m->poll) == 0 && uv_timer_start(&m->poll, on_poll, 0, ENG_SERVER_POLL_MS) == 0)
      m->polling = 1;
    else
      eng_log_warn("cannot start the handover timer: the database lock is not taken over");
  }
out:
  if (rc != 0) {
    eng_log_error("cannot watch signals: %s", uv_strerror(rc));
    uv_run(loop, UV_RUN_DEFAULT); /* finish the closes */
  }
  return eng_err_from_uv(rc);
}

int eng_server_run(const eng_config *cfg, const eng_server_hooks *hooks) {
  int n = cfg->workers;
  int rc = 0, port = 0;
  signal(SIGPIPE, SIG_IGN);
  atomic_store(&g_stopping, 0);
  reloads rl = {.current = NULL};
  if (uv_mutex_init(&rl.mu) != 0)
    return ENG_EIO;
  if (uv_async_init(uv_default_loop(), &rl.done, on_reload_done) != 0) {
    uv_mutex_destroy(&rl.mu);
    return ENG_EIO;
  }
  uv_unref((uv_handle_t *)&rl.done); /* the loop ends with the signal handles; this one is closed last */
  worker *ws = calloc((size_t)n, sizeof *ws);
  if (ws == NULL) {
    rc = ENG_ENOMEM;
    goto out;
  }
  if ((rc = bind_all(cfg, ws, n, &port)) != 0)
    goto out;
  int per = (cfg->max_connections + n - 1) / n;
  int started = 0;
  for (int i = 0; i < n; i++) {
    worker *w = &ws[i];
    w->id = i;
    w->cfg = cfg;
    w->rl = &rl;
    w->max_conns = per > 0 ? per : 1;
    eng_response_init(&w->resp);
    if (uv_sem_init(&w->started, 0) != 0) {
      eng_log_error("worker %d: cannot create its start-up semaphore", i);
      w->start_rc = ENG_EIO;
      break;
    }
    if (uv_thread_create(&w->thread, worker_main, w) != 0) {
      eng_log_error("worker %d: cannot start its thread", i);
      uv_sem_destroy(&w->started);
      w->start_rc = ENG_EIO;
      break;
    }
    uv_sem_wait(&w->started);
    started++;
    if (w->start_rc != 0)
      break;
  }
  main_ctx m = {.ws = ws, .n = started, .hooks = hooks, .rl = &rl}; /* only started workers have a wake-up handle */
  rl.done.data = &m;
  int ok = started == n;
  for (int i = 0; i < started; i++)
    ok = ok && ws[i].start_rc == 0;
  if (ok && (rc = watch_signals(&m)) != 0)
    ok = 0;
  if (!ok) {
    rc = rc ? rc : ENG_EIO;
    stop_workers(&m);
  } else {
    const char *v6 = strchr(cfg->listen_host, ':') ? "]" : "";
    eng_log_info("apiengine %s listening on http://%s%s%s:%d (config %s%s%s, scripts '%s', schema '%s', db '%s', "
                 "%d worker%s, %d routes)",
                 APIENGINE_VERSION, *v6 ? "[" : "", cfg->listen_host, v6, port, cfg->config_file ? "'" : "",
                 cfg->config_file ? cfg->config_file : "none", cfg->config_file ? "'" : "", cfg->scripts_dir,
                 cfg->schema_dir, cfg->db_path, n, n == 1 ? "" : "s", hooks ? hooks->routes : 0);
    uv_run(uv_default_loop(), UV_RUN_DEFAULT);
  }
  for (int i = 0; i < started; i++)
    if (uv_thread_join(&ws[i].thread) != 0)
      eng_log_error("worker %d: cannot join its thread", i);
  for (int i = 0; i < n; i++) {
    if (ws[i].fd >= 0)
      close(ws[i].fd);
    if (i < started)
      uv_sem_destroy(&ws[i].started);
  }
out:
  free(ws);
  uv_close((uv_handle_t *)&rl.done, NULL); /* no worker is left to send to it */
  uv_run(uv_default_loop(), UV_RUN_DEFAULT);
  (void)uv_loop_close(uv_default_loop()); /* every handle is closed by now */
  gen_release(&rl, rl.current);
  uv_mutex_destroy(&rl.mu);
  if (rc == 0)
    eng_log_info("stopped cleanly");
  return rc;
}
