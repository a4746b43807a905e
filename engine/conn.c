/* conn.c - connections: accept, read, parse, answer, write, back-pressure, linger, timeouts, the
 * connection limit (see server_int.h). */
#include "server_int.h"
#include "log.h"
#include "metrics.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/ioctl.h>
#include <unistd.h>

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

/* apiengine_connections: a connection's state, when it is pushed on a deadline list, says which
 * state it counts in: C_IDLE is idle, C_HEAD, C_BODY and C_WAIT are active (a request under way
 * or held back), C_LINGER is closing. */
static void gauge_to(conn *c, int to) {
  eng_metrics_conn_state(c->gauge, to);
  c->gauge = (signed char)to;
}

static int gauge_of(unsigned state) {
  return state == C_IDLE     ? ENG_METRICS_CONN_IDLE
         : state == C_LINGER ? ENG_METRICS_CONN_CLOSING
                             : ENG_METRICS_CONN_ACTIVE;
}

static void list_push(list *l, conn *c, uint64_t deadline) {
  list_remove(c);
  gauge_to(c, gauge_of(c->state));
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

/* Refused connections are counted over all workers and logged at most once every
 * ENG_LIMIT_LOG_MS, one line with the count since the last one: a flood of connections past
 * the limit does not flood the log. `refused` adds one first; the sweep calls it with 0 so the
 * last count is written too. Whichever worker wins the compare-and-swap writes the line. */
static void limit_log(server_shared *sh, int refused) {
  if (refused)
    atomic_fetch_add(&sh->refused, 1);
  uint64_t now = uv_hrtime() / 1000000u;
  uint_fast64_t last = atomic_load(&sh->logged_ms);
  if ((last != 0 && now - last < ENG_LIMIT_LOG_MS) || atomic_load(&sh->refused) == 0)
    return;
  if (!atomic_compare_exchange_strong(&sh->logged_ms, &last, now))
    return;
  unsigned long n = atomic_exchange(&sh->refused, 0);
  if (n > 0)
    eng_log_warn("connection limit reached (--max-connections %d): refused %lu connection%s since the last such line",
                 sh->max_conns, n, n == 1 ? "" : "s");
}

static void on_conn_closed(uv_handle_t *h) {
  conn *c = (conn *)h;
  worker *w = c->w;
  eng_http_parser_free(&c->hp);
  eng_buf_free(&c->held);
  if (c->counted)
    atomic_fetch_sub(&w->sh->conns, 1);
  free(c);
  w->nconns--;
  eng_worker_maybe_finish(w);
}

void eng_conn_close(conn *c) {
  if (uv_is_closing((uv_handle_t *)&c->tcp))
    return;
  c->closing = 1;
  if (c->run) { /* nobody will take its answer: the handler's wait stops, its coroutine closes */
    eng_pending *p = c->run;
    c->run = NULL;
    eng_pending_abandon(p);
  }
  list_remove(c);
  gauge_to(c, ENG_METRICS_CONN_NONE);
  uv_close((uv_handle_t *)&c->tcp, on_conn_closed);
}

static int handle_closing(const conn *c) { return uv_is_closing((const uv_handle_t *)&c->tcp); }

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf);
static void alloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *buf);

static int read_on(conn *c) {
  if (c->reading)
    return 0;
  if (uv_read_start((uv_stream_t *)&c->tcp, alloc_cb, on_read) != 0)
    return -1;
  c->reading = 1;
  return 0;
}

static void read_off(conn *c) {
  if (!c->reading)
    return;
  (void)uv_read_stop((uv_stream_t *)&c->tcp); /* cannot fail on a TCP handle (always 0 since libuv 1.x) */
  c->reading = 0;
}

/* Between requests: the idle list, or the send list while answers are still unsent (the idle
 * time starts once the client has taken them all). At the drain, idle connections share one
 * deadline (eng_conn_drain). */
static void arm_idle(conn *c) {
  worker *w = c->w;
  uint64_t now = uv_now(&w->loop);
  c->state = C_IDLE;
  if (c->pending > 0)
    list_push(&w->send, c, now + (uint64_t)w->cfg->send_timeout_ms);
  else if (w->stopping)
    list_push(&w->idle, c, w->drain_idle_until);
  else
    list_push(&w->idle, c, now + (uint64_t)w->cfg->idle_timeout_ms);
}

static void on_shutdown(uv_shutdown_t *req, int status) {
  conn *c = req->data;
  free(req);
  if (status != 0) {
    eng_conn_close(c);
    return;
  }
  c->shut = 1;
  if (!handle_closing(c))
    list_push(&c->w->linger, c, uv_now(&c->w->loop) + ENG_LINGER_MS);
}

/* Half-close after the last answer has gone out (the send list times that); then keep reading
 * (and discarding) until the peer closes or ENG_LINGER_MS pass, so unread input does not turn
 * into a RST that could destroy the answer on its way. */
static void conn_finish(conn *c) {
  worker *w = c->w;
  if (c->state == C_LINGER || handle_closing(c))
    return;
  c->state = C_LINGER;
  c->closing = 1;
  eng_buf_free(&c->held);
  if (read_on(c) != 0) {
    eng_conn_close(c);
    return;
  }
  uint64_t now = uv_now(&w->loop);
  if (c->pending > 0)
    list_push(&w->send, c, now + (uint64_t)w->cfg->send_timeout_ms);
  else
    list_push(&w->linger, c, now + ENG_LINGER_MS);
  uv_shutdown_t *req = malloc(sizeof *req);
  if (req == NULL || uv_shutdown(req, (uv_stream_t *)&c->tcp, on_shutdown) != 0) {
    free(req);
    eng_conn_close(c);
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

/* Whether c may handle its next request now, given its unsent output: always when it has
 * none; while its worker is past ENG_WORKER_OUTPUT_MAX, only then; else up to `limit`. */
static int may_continue(const conn *c, size_t limit) {
  if (c->pending == 0)
    return 1;
  return c->w->queued <= ENG_WORKER_OUTPUT_MAX && c->pending <= limit;
}

static void resume(conn *c);

static void on_write(uv_write_t *req, int status) {
  wreq *wr = (wreq *)req;
  conn *c = wr->c;
  worker *w = c->w;
  c->pending -= wr->len;
  w->queued -= wr->len;
  free(wr);
  if (status != 0) {
    eng_conn_close(c);
    return;
  }
  if (handle_closing(c))
    return;
  switch (c->state) {
  case C_WAIT:
    if (may_continue(c, ENG_CONN_OUTPUT_RESUME))
      resume(c);
    else
      list_push(&w->send, c, uv_now(&w->loop) + (uint64_t)w->cfg->send_timeout_ms);
    break;
  case C_IDLE:
    arm_idle(c);
    break;
  case C_LINGER:
    if (!c->shut)
      list_push(&w->send, c, uv_now(&w->loop) + (uint64_t)w->cfg->send_timeout_ms);
    break;
  default: /* reading a request: its own deadline runs */
    break;
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
  c->w->queued += len;
  return 0;
}

/* Writes r as the answer to a request (req may be NULL for parse errors); route is the
 * pattern that answered it (NULL: none), for the access line and the metrics. */
static void send_response(conn *c, const eng_http_request *req, const char *request_id, int keep_alive,
                          const char *route, const eng_response *r) {
  worker *w = c->w;
  w->answered = w->to_release = 1;
  int no_body = (req && req->method && strcmp(req->method, "HEAD") == 0) || !eng_http_status_has_body(r->status);
  int minor = req ? req->http_minor : 1;
  eng_buf_reset(&w->out);
  int rc = eng_http_write_head(&w->out, r->status, minor, keep_alive,
                               r->content_type[0] ? r->content_type : "application/json", r->body.len, request_id,
                               r->headers.data, r->headers.len);
  if (rc == 0 && !no_body && r->body.len)
    rc = eng_buf_append(&w->out, r->body.data, r->body.len);
  /* Counted before the write: a client that has the answer finds it counted. */
  double ms = (double)(uv_hrtime() - c->t_start) / 1e6;
  eng_metrics_request(route, req ? req->method : NULL, r->status, ms / 1e3);
  if (rc == 0)
    rc = conn_send(c, w->out.data, w->out.len);
  if (w->cfg->access_log) {
    eng_access_entry e = {
        .method = req && req->method ? req->method : "-",
        .path = req && req->url.data ? req->url.data : "-",
        .path_len = req && req->url.data ? req->path_len : 1,
        .status = r->status,
        .bytes = no_body ? 0 : r->body.len,
        .duration_ms = ms,
        .request_id = request_id,
        .peer = c->client,
        .route = route,
        .worker = w->id,
    };
    eng_log_access(&e);
  }
  if (rc != 0)
    eng_conn_close(c);
}

/* Sends the answer to c's request, keeping the connection for the next one unless the client or
 * a stopping server says otherwise. */
static void answer(conn *c, const eng_http_request *req, const char *request_id, const char *route,
                   eng_response *resp) {
  worker *w = c->w;
  int keep = req->keep_alive && !w->stopping && !atomic_load_explicit(&eng_server_stopping, memory_order_relaxed);
  send_response(c, req, request_id, keep, route, resp);
  if (!keep)
    c->closing = 1;
}

/* The answer of c's suspended request (eng_pending_done_fn): sent, then c goes on with what it
 * holds, as after C_WAIT. */
static void on_answer(void *ud, eng_response *resp, const char *request_id, const char *route) {
  conn *c = ud;
  worker *w = c->w;
  eng_http_request *req = &c->hp.req;
  c->run = NULL;
  eng_metrics_lua_memory(eng_runtime_memory(w->rt));
  answer(c, req, request_id, route, resp);
  if (handle_closing(c))
    return;
  eng_http_parser_next(&c->hp);
  c->sent_continue = 0;
  resume(c);
}

/* Sets c->client, the address req.peer and the access log give for req (NULL: nothing usable was
 * parsed): the TCP peer, or, when that peer is a trusted proxy (--real-ip-from), the client its
 * X-Forwarded-For names (netaddr.h). Chosen per request: a balancer's keep-alive connection
 * carries the requests of many clients. */
static void choose_client(conn *c, const eng_http_request *req) {
  if (!c->trusted)
    return; /* c->client is c->peer from conn_begin on */
  if (req == NULL) {
    memcpy(c->client, c->peer, sizeof c->client);
    return;
  }
  const char *values[ENG_HTTP_MAX_HEADERS];
  size_t lens[ENG_HTTP_MAX_HEADERS];
  int n = 0;
  size_t pos = 0;
  eng_http_header h;
  while (n < ENG_HTTP_MAX_HEADERS && eng_http_next_header(req, &pos, &h))
    if (h.name_len == 15 && memcmp(h.name, "x-forwarded-for", 15) == 0) {
      values[n] = h.value;
      lens[n++] = h.value_len;
    }
  eng_netaddr a = c->addr;
  eng_netaddr_forwarded(&c->w->cfg->real_ip, values, lens, n, &a);
  if (memcmp(&a, &c->addr, sizeof a) == 0) {
    memcpy(c->client, c->peer, sizeof c->client);
    return;
  }
  /* The balancer does not forward the client's port: 0, as for an address the engine cannot tell. */
  eng_netaddr_format(&a, 0, c->client, sizeof c->client);
}

/* Answers the request c has read; 1 when its handler suspended (c->run set, answered later by
 * on_answer), else 0. */
static int handle_request(conn *c) {
  worker *w = c->w;
  eng_http_request *req = &c->hp.req;
  char rid[ENG_HTTP_REQUEST_ID_MAX + 1];
  eng_http_request_id(req, rid);
  eng_response_reset(&w->resp);
  choose_client(c, req);
  const char *route;
  int health = eng_health_path(w->cfg, req); /* answered here, before any Lua */
  if (health) {
    eng_health_fill(health, health == ENG_READYZ ? eng_worker_not_ready(w) : NULL, &w->resp);
    route = health == ENG_HEALTHZ ? w->cfg->healthz_path : w->cfg->readyz_path;
  } else {
    /* The main thread names the workers still in a handler when the drain deadline passes. */
    atomic_store_explicit(&w->busy_since, uv_hrtime(), memory_order_relaxed);
    int suspended = eng_runtime_handle_async(w->rt, req, c->client, rid, &w->resp, on_answer, c, &c->run);
    atomic_store_explicit(&w->busy_since, 0, memory_order_relaxed);
    if (suspended)
      return 1;
    route = eng_runtime_route(w->rt);
    eng_metrics_lua_memory(eng_runtime_memory(w->rt));
  }
  answer(c, req, rid, route, &w->resp);
  return 0;
}

static void handle_parse_error(conn *c) {
  worker *w = c->w;
  char rid[ENG_HTTP_REQUEST_ID_MAX + 1];
  /* Headers may be complete (413 on Content-Length): honour their request id. */
  eng_http_request_id(c->hp.req.nheaders ? &c->hp.req : NULL, rid);
  eng_response_reset(&w->resp);
  eng_runtime_error(w->rt, c->hp.error_status, c->hp.error_code, c->hp.error_reason, rid, &w->resp);
  choose_client(c, c->hp.headers_done ? &c->hp.req : NULL); /* a header cut short is not read */
  send_response(c, c->hp.req.method ? &c->hp.req : NULL, rid, 0, NULL, &w->resp);
  c->closing = 1;
}

/* A request's first byte: --header-timeout runs from here. */
static void request_start(conn *c) {
  worker *w = c->w;
  c->state = C_HEAD;
  c->t_start = uv_hrtime();
  list_push(&w->head, c, uv_now(&w->loop) + (uint64_t)w->cfg->header_timeout_ms);
}

/* Feeds bytes to the parser and answers the requests they complete, in order. Stops early,
 * at a request boundary, when the client must first take its answers (C_WAIT: the caller keeps
 * the rest), or when the connection is closing. Returns the bytes used. */
static size_t feed(conn *c, const char *data, size_t len) {
  worker *w = c->w;
  size_t done = 0;
  while (done < len && !c->closing) {
    if (c->state == C_IDLE) {
      if (!may_continue(c, ENG_CONN_OUTPUT_MAX)) {
        c->state = C_WAIT;
        read_off(c);
        list_push(&w->send, c, uv_now(&w->loop) + (uint64_t)w->cfg->send_timeout_ms);
        break;
      }
      request_start(c);
    }
    size_t used = 0;
    int r = eng_http_parser_feed(&c->hp, data + done, len - done, &used);
    done += used;
    if (r == ENG_HTTP_NEED_MORE) {
      if (c->hp.want_continue && !c->sent_continue) {
        static const char cont[] = "HTTP/1.1 100 Continue\r\n\r\n";
        c->sent_continue = 1;
        if (conn_send(c, cont, sizeof cont - 1) != 0) {
          eng_conn_close(c);
          break;
        }
      }
      if (c->hp.headers_done) { /* --body-timeout runs between reads */
        c->state = C_BODY;
        list_push(&w->body, c, uv_now(&w->loop) + (uint64_t)w->cfg->body_timeout_ms);
      }
      break;
    }
    if (r == ENG_HTTP_ERROR) {
      handle_parse_error(c);
      done = len;
      break;
    }
    if (handle_request(c)) { /* suspended: the answer, and the rest, come in on_answer */
      c->state = C_RUN;
      read_off(c);
      list_push(&w->run, c, UINT64_MAX);
      break;
    }
    eng_http_parser_next(&c->hp);
    c->sent_continue = 0;
    c->state = C_IDLE;
  }
  return done;
}

/* After feeding: what the connection waits for next. */
static void settle(conn *c) {
  if (handle_closing(c))
    return;
  if (c->closing) {
    conn_finish(c);
  } else if (c->state == C_IDLE) {
    eng_http_parser_trim(&c->hp);
    arm_idle(c);
  }
}

/* C_WAIT is over: handle what was held, then read on. */
static void resume(conn *c) {
  c->state = C_IDLE;
  size_t used = feed(c, c->held.data, c->held.len);
  if (handle_closing(c))
    return;
  if (c->state == C_WAIT || c->state == C_RUN) { /* again: keep the rest */
    memmove(c->held.data, c->held.data + used, c->held.len - used);
    c->held.len -= used;
    return;
  }
  eng_buf_free(&c->held);
  if (read_on(c) != 0) {
    eng_conn_close(c);
    return;
  }
  settle(c);
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
    /* A client may half-close once it has sent its requests: its answers still go out. */
    if (nread == UV_EOF && c->pending > 0 && c->state != C_LINGER) {
      conn_finish(c);
      return;
    }
    eng_conn_close(c);
    return;
  }
  if (nread == 0 || c->state == C_LINGER)
    return; /* lingering: discard */
  size_t n = (size_t)nread;
  size_t used = feed(c, buf->base, n);
  if (used < n && (c->state == C_WAIT || c->state == C_RUN) && !handle_closing(c) &&
      eng_buf_append(&c->held, buf->base + used, n - used) != 0) {
    eng_log_error("worker %d: out of memory holding the input of %s", c->w->id, c->peer);
    eng_conn_close(c);
    return;
  }
  settle(c);
}

/* c->peer, c->addr and c->trusted, from the socket's peer. */
static void format_peer(conn *c) {
  struct sockaddr_storage ss = {0};
  int len = sizeof ss;
  char ip[INET6_ADDRSTRLEN] = "?";
  int port = 0;
  char *out = c->peer;
  size_t size = sizeof c->peer;
  memset(&c->addr, 0, sizeof c->addr);
  if (uv_tcp_getpeername(&c->tcp, (struct sockaddr *)&ss, &len) == 0) {
    c->trusted = eng_netaddr_from_sockaddr((struct sockaddr *)&ss, &c->addr) == 0 &&
                 eng_netaddr_list_has(&c->w->cfg->real_ip, &c->addr);
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
  c->gauge = ENG_METRICS_CONN_NONE;
  if ((rc = uv_tcp_init(&w->loop, &c->tcp)) != 0) {
    eng_log_error("worker %d: cannot accept a connection: %s", w->id, uv_strerror(rc));
    free(c);
    return NULL;
  }
  w->nconns++;
  return c;
}

/* Starts reading an accepted connection, or closes it past the process-wide connection limit. */
static void conn_begin(worker *w, conn *c) {
  int rc;
  if (atomic_fetch_add(&w->sh->conns, 1) >= w->sh->max_conns) {
    atomic_fetch_sub(&w->sh->conns, 1);
    limit_log(w->sh, 1);
    uv_close((uv_handle_t *)&c->tcp, on_conn_closed);
    return;
  }
  c->counted = 1;
  /* Without TCP_NODELAY answers are only slower (Nagle), so a failure is not fatal. */
  if ((rc = uv_tcp_nodelay(&c->tcp, 1)) != 0)
    eng_log_debug("worker %d: TCP_NODELAY: %s", w->id, uv_strerror(rc));
  format_peer(c);
  memcpy(c->client, c->peer, sizeof c->client);
  eng_http_parser_init(&c->hp, &w->cfg->limits);
  if (w->stopping) /* adopted at the drain: as idle ones, one more request or a clean close */
    arm_idle(c);
  else
    request_start(c);
  if (read_on(c) != 0) {
    eng_log_warn("worker %d: cannot read from %s", w->id, c->peer);
    eng_conn_close(c);
  }
}

void eng_conn_on_connection(uv_stream_t *server, int status) {
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
void eng_conn_adopt_backlog(worker *w) {
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

/* Bytes the kernel holds for c that the loop has not read yet (0 when unknown). */
static int has_input(conn *c) {
  uv_os_fd_t fd;
  int n = 0;
  if (uv_fileno((uv_handle_t *)&c->tcp, &fd) != 0 || ioctl(fd, FIONREAD, &n) != 0)
    return 0;
  return n > 0;
}

/* A deadline of c has passed. A request that has started gets 408 (and the connection closes
 * after it); a connection that sent nothing is closed, cleanly (half-close, linger) at the
 * drain; one whose answers the client does not take, or that lingers, just closes. */
static void expire(conn *c) {
  worker *w = c->w;
  switch (c->state) {
  case C_HEAD:
  case C_BODY:
    if (c->hp.in_message) {
      c->hp.error_status = 408;
      c->hp.error_code = "request_timeout";
      c->hp.error_reason =
          c->state == C_HEAD ? "request headers not received in time" : "request body not received in time";
      handle_parse_error(c);
      conn_finish(c);
      return;
    }
    break;
  case C_IDLE:
    if (c->pending == 0 && w->stopping) {
      conn_finish(c);
      return;
    }
    break;
  default:
    break;
  }
  eng_conn_close(c);
}

/* Expires the entries of l whose deadline has passed. For the lists that wait for input, a
 * connection whose bytes the kernel already holds is spared once, by the first sweep that sees
 * its deadline passed (deadline after `last`, the previous sweep): the loop was late (a long
 * handler), not the client, and the poll that follows this sweep reads them and moves it on. A
 * slow client cannot live on that: the next sweep expires it whatever it has sent. */
static void sweep_list(list *l, uint64_t now, uint64_t last, int waits_for_input) {
  conn *c = l->head;
  while (c && c->deadline <= now) {
    conn *next = c->next;
    if (!(waits_for_input && c->deadline > last && has_input(c)))
      expire(c); /* moves c to another list, or closes it */
    c = next;
  }
}

static void close_all(list *l) {
  while (l->head)
    eng_conn_close(l->head);
}

void eng_conn_sweep(worker *w, uint64_t now) {
  uint64_t last = w->last_sweep;
  w->last_sweep = now;
  sweep_list(&w->head, now, last, 1);
  sweep_list(&w->body, now, last, 1);
  sweep_list(&w->idle, now, last, 1);
  sweep_list(&w->send, now, last, 0);
  sweep_list(&w->linger, now, last, 0);
  if (w->stopping && now >= w->drain_deadline) {
    close_all(&w->head);
    close_all(&w->body);
    close_all(&w->idle);
    close_all(&w->send);
    close_all(&w->linger);
    close_all(&w->run);
  }
  limit_log(w->sh, 0);
}

void eng_conn_drain(worker *w) {
  uint64_t now = uv_now(&w->loop);
  int ms = w->cfg->drain_ms < ENG_DRAIN_IDLE_MS ? w->cfg->drain_ms : ENG_DRAIN_IDLE_MS;
  w->drain_idle_until = now + (uint64_t)ms;
  eng_conn_adopt_backlog(w);
  /* Idle keep-alive connections, and new ones that have sent nothing yet, have nothing in
   * flight, but their client may be sending a request at this very moment, and closing would
   * lose it (a reset, for a client that does not retry). Each gets up to ENG_DRAIN_IDLE_MS to
   * send one more, answered with Connection: close; the sweep then half-closes it. One
   * deadline for all keeps the idle list ordered. */
  for (conn *c = w->idle.head; c; c = c->next)
    c->deadline = w->drain_idle_until;
  for (conn *c = w->head.head, *next; c; c = next) {
    next = c->next;
    if (!c->hp.in_message)
      arm_idle(c);
  }
}
