/* conn.c - connections: accept, read, parse, answer, write, linger, timeouts (see server_int.h). */
#include "server_int.h"
#include "log.h"
#include "metrics.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
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

/* apiengine_connections: the list a connection is pushed on, with its state, says which state
 * it counts in (C_IDLE, C_BUSY and C_LINGER are the gauge's idle, active, closing). */
static void gauge_to(conn *c, int to) {
  eng_metrics_conn_state(c->gauge, to);
  c->gauge = (signed char)to;
}

static void list_push(list *l, conn *c, uint64_t deadline) {
  list_remove(c);
  gauge_to(c, (int)c->state);
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

static void on_conn_closed(uv_handle_t *h) {
  conn *c = (conn *)h;
  worker *w = c->w;
  eng_http_parser_free(&c->hp);
  free(c);
  w->nconns--;
  eng_worker_maybe_finish(w);
}

void eng_conn_close(conn *c) {
  if (uv_is_closing((uv_handle_t *)&c->tcp))
    return;
  list_remove(c);
  gauge_to(c, ENG_METRICS_CONN_NONE);
  uv_close((uv_handle_t *)&c->tcp, on_conn_closed);
}

static void on_shutdown(uv_shutdown_t *req, int status) {
  conn *c = req->data;
  free(req);
  if (status != 0)
    eng_conn_close(c);
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

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf);
static void alloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *buf);

static void on_write(uv_write_t *req, int status) {
  wreq *wr = (wreq *)req;
  conn *c = wr->c;
  c->pending -= wr->len;
  free(wr);
  if (status != 0) {
    eng_conn_close(c);
    return;
  }
  if (!c->reading && !c->closing && c->pending < ENG_WRITE_HIGH / 4) {
    if (uv_read_start((uv_stream_t *)&c->tcp, alloc_cb, on_read) != 0) {
      eng_conn_close(c);
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

/* Writes w->resp as the answer to a request (req may be NULL for parse errors); route is the
 * pattern that answered it (NULL: none), for the access line and the metrics. */
static void send_response(conn *c, const eng_http_request *req, const char *request_id, int keep_alive,
                          const char *route) {
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
        .peer = c->peer,
        .route = route,
        .worker = w->id,
    };
    eng_log_access(&e);
  }
  if (rc != 0)
    eng_conn_close(c);
}

static void handle_request(conn *c) {
  worker *w = c->w;
  eng_http_request *req = &c->hp.req;
  char rid[ENG_HTTP_REQUEST_ID_MAX + 1];
  eng_http_request_id(req, rid);
  eng_response_reset(&w->resp);
  const char *route;
  int health = eng_health_path(w->cfg, req); /* answered here, before any Lua */
  if (health) {
    eng_health_fill(health, health == ENG_READYZ ? eng_worker_not_ready(w) : NULL, &w->resp);
    route = health == ENG_HEALTHZ ? w->cfg->healthz_path : w->cfg->readyz_path;
  } else {
    eng_runtime_handle(w->rt, req, c->peer, rid, &w->resp);
    route = eng_runtime_route(w->rt);
    eng_metrics_lua_memory(eng_runtime_memory(w->rt));
  }
  int keep = req->keep_alive && !w->stopping && !atomic_load_explicit(&eng_server_stopping, memory_order_relaxed);
  send_response(c, req, rid, keep, route);
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
  send_response(c, c->hp.req.method ? &c->hp.req : NULL, rid, 0, NULL);
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
          eng_conn_close(c);
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
    eng_conn_close(c);
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
  c->gauge = ENG_METRICS_CONN_NONE;
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
    eng_conn_close(c);
    return;
  }
  c->reading = 1;
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

void eng_conn_sweep(list *l, uint64_t now) {
  while (l->head && l->head->deadline <= now)
    eng_conn_close(l->head);
}
