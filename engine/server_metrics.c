/* server_metrics.c - the health checks (answered in C, before any Lua) and the metrics listener
 * (--metrics-listen): its own thread and loop, so it answers /metrics, the health path and the
 * readiness path while every worker is busy in a handler, and during the drain. See server_int.h. */
#include "server_int.h"
#include "log.h"
#include "metrics.h"

#include <sqlite3.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <stdio.h>
#include <sys/socket.h>
#include <unistd.h>

#include <stdlib.h>
#include <string.h>

#define ENG_METRICS_CONNS 64        /* open connections on the metrics listener; more wait in the backlog */
#define ENG_METRICS_CONN_MS 10000   /* a connection gets this long to send its request */
#define ENG_METRICS_DB_BUSY_MS 1000 /* /readyz: how long the database may be locked before it is "not ready" */

/* PostgreSQL's readiness: the pool's last connection attempt succeeded (pg.h: a pool is marked
 * down when one fails, and connections lost in an outage are made again at once, so an outage
 * shows within a connect attempt). No query: /readyz must answer at once, also when the server
 * hangs. */
static int pool_answers(const eng_pg *pg) {
  eng_pg_stats st;
  if (pg == NULL)
    return 0;
  eng_pg_get_stats(pg, &st);
  return st.healthy;
}

/* The readiness check of one database connection: a read of the schema. */
static int db_answers(eng_db *db) {
  return db != NULL &&
         sqlite3_exec(eng_db_handle(db), "SELECT 1 FROM sqlite_schema LIMIT 1", NULL, NULL, NULL) == SQLITE_OK;
}

static void answer(eng_response *resp, int status, const char *body) {
  resp->status = status;
  strcpy(resp->content_type, "application/json");
  eng_buf_reset(&resp->body);
  eng_buf_append_str(&resp->body, body);
}

int eng_health_path(const eng_config *cfg, const eng_http_request *req) {
  if (req->method == NULL || (strcmp(req->method, "GET") != 0 && strcmp(req->method, "HEAD") != 0))
    return 0;
  size_t n = req->path_len;
  if (strlen(cfg->healthz_path) == n && memcmp(req->url.data, cfg->healthz_path, n) == 0)
    return ENG_HEALTHZ;
  if (strlen(cfg->readyz_path) == n && memcmp(req->url.data, cfg->readyz_path, n) == 0)
    return ENG_READYZ;
  return 0;
}

void eng_health_fill(int kind, const char *why_not_ready, eng_response *resp) {
  if (kind == ENG_HEALTHZ) {
    answer(resp, 200, "{\"status\":\"ok\"}");
  } else if (why_not_ready == NULL) {
    answer(resp, 200, "{\"status\":\"ready\"}");
  } else {
    /* why_not_ready is one of the fixed words below: nothing to escape */
    answer(resp, 503, "{\"status\":\"not_ready\",\"reason\":\"");
    eng_buf_append_str(&resp->body, why_not_ready);
    eng_buf_append_str(&resp->body, "\"}");
  }
}

const char *eng_worker_not_ready(worker *w) {
  if (w->stopping || atomic_load_explicit(&eng_server_stopping, memory_order_relaxed))
    return "draining";
  if (w->rt == NULL)
    return "scripts";
  if (w->pg ? !pool_answers(w->pg) : !db_answers(w->db))
    return "database";
  return NULL;
}

/* ---- the metrics listener ------------------------------------------------------------------ */

struct eng_metrics_srv {
  const eng_config *cfg;
  uv_thread_t thread;
  uv_loop_t loop;
  uv_tcp_t listener;
  uv_async_t stop;
  uv_sem_t started;
  int start_rc;
  int fd;   /* the bound socket until the listener takes it */
  int port; /* the bound port (port 0 picks one) */
  int nconns;
  atomic_int ready; /* every worker has started (set by server.c) */
  eng_db *db;       /* /readyz's own connection, opened on first use on this thread */
  eng_pg *pg;       /* on PostgreSQL instead: a pool of one on this thread's loop, from the start */
  eng_response resp;
  eng_buf out;
  char readbuf[16384];
};

typedef struct mconn {
  uv_tcp_t tcp; /* first: handles cast back */
  uv_timer_t timer;
  eng_metrics_srv *s;
  eng_http_parser hp;
  int answered;
  int closing;
} mconn;

typedef struct mwrite {
  uv_write_t req;
  mconn *c;
  char data[];
} mwrite;

static void mconn_timer_closed(uv_handle_t *h) {
  mconn *c = h->data;
  eng_metrics_srv *s = c->s;
  eng_http_parser_free(&c->hp);
  free(c);
  s->nconns--;
}

static void mconn_tcp_closed(uv_handle_t *h) {
  mconn *c = (mconn *)h;
  uv_close((uv_handle_t *)&c->timer, mconn_timer_closed);
}

static void mconn_close(mconn *c) {
  if (c->closing)
    return;
  c->closing = 1;
  uv_close((uv_handle_t *)&c->tcp, mconn_tcp_closed);
}

static void on_mtimeout(uv_timer_t *t) { mconn_close(t->data); }

static void on_mwrite(uv_write_t *req, int status) {
  (void)status;
  mwrite *wr = (mwrite *)req;
  mconn *c = wr->c;
  free(wr);
  mconn_close(c); /* one request per connection: the answer says Connection: close */
}

static const char *metrics_not_ready(eng_metrics_srv *s) {
  if (atomic_load_explicit(&eng_server_stopping, memory_order_relaxed))
    return "draining";
  if (!atomic_load_explicit(&s->ready, memory_order_acquire))
    return "scripts";
  if (eng_config_db_is_pg(s->cfg->db_path))
    return pool_answers(s->pg) ? NULL : "database";
  if (s->db == NULL) {
    eng_db_options o = {
        .synchronous = s->cfg->synchronous, .busy_timeout_ms = ENG_METRICS_DB_BUSY_MS, .cache_mb = -1, .mmap_mb = -1};
    char *err = NULL;
    if (eng_db_open(&s->db, s->cfg->db_path, &o, &err) != 0) {
      eng_log_warn("metrics listener: database %s: %s", s->cfg->db_path, err ? err : "cannot open");
      free(err);
      s->db = NULL;
    }
  }
  return db_answers(s->db) ? NULL : "database";
}

/* Answers the request parsed on c (or the parse error) and closes after the write. */
static void mconn_answer(mconn *c, int parse_error) {
  eng_metrics_srv *s = c->s;
  const eng_http_request *req = &c->hp.req;
  eng_response *resp = &s->resp;
  char rid[ENG_HTTP_REQUEST_ID_MAX + 1];
  eng_http_request_id(parse_error ? NULL : req, rid);
  eng_response_reset(resp);
  c->answered = 1;
  int kind;
  int is_get = !parse_error && (strcmp(req->method, "GET") == 0 || strcmp(req->method, "HEAD") == 0);
  if (parse_error) {
    answer(resp, c->hp.error_status, "{\"error\":{\"code\":\"bad_request\"}}");
  } else if ((kind = eng_health_path(s->cfg, req)) != 0) {
    eng_health_fill(kind, kind == ENG_READYZ ? metrics_not_ready(s) : NULL, resp);
  } else if (req->path_len == 8 && memcmp(req->url.data, "/metrics", 8) == 0) {
    if (!is_get) {
      answer(resp, 405, "{\"error\":{\"code\":\"method_not_allowed\"}}");
      eng_buf_append_str(&resp->headers, "Allow: GET, HEAD\r\n");
    } else if (eng_metrics_render(&resp->body) != 0) {
      answer(resp, 500, "{\"error\":{\"code\":\"internal_error\"}}");
    } else {
      resp->status = 200;
      strcpy(resp->content_type, "text/plain; version=0.0.4; charset=utf-8");
    }
  } else {
    answer(resp, 404, "{\"error\":{\"code\":\"not_found\"}}");
  }
  int no_body = (is_get && strcmp(req->method, "HEAD") == 0) || !eng_http_status_has_body(resp->status);
  eng_buf_reset(&s->out);
  int rc = eng_http_write_head(&s->out, resp->status, parse_error ? 1 : req->http_minor, 0, resp->content_type,
                               resp->body.len, rid, resp->headers.data, resp->headers.len);
  if (rc == 0 && !no_body)
    rc = eng_buf_append(&s->out, resp->body.data, resp->body.len);
  mwrite *wr = rc == 0 ? malloc(sizeof *wr + s->out.len) : NULL;
  if (wr == NULL) {
    mconn_close(c);
    return;
  }
  memcpy(wr->data, s->out.data, s->out.len);
  wr->c = c;
  uv_buf_t b = uv_buf_init(wr->data, (unsigned)s->out.len);
  if (uv_write(&wr->req, (uv_stream_t *)&c->tcp, &b, 1, on_mwrite) != 0) {
    free(wr);
    mconn_close(c);
    return;
  }
  (void)uv_read_stop((uv_stream_t *)&c->tcp);
}

static void malloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
  (void)suggested;
  mconn *c = (mconn *)h;
  buf->base = c->s->readbuf;
  buf->len = sizeof c->s->readbuf;
}

static void on_mread(uv_stream_t *st, ssize_t nread, const uv_buf_t *buf) {
  mconn *c = (mconn *)st;
  if (nread < 0) {
    mconn_close(c);
    return;
  }
  if (nread == 0 || c->answered || c->closing)
    return;
  size_t used = 0;
  int r = eng_http_parser_feed(&c->hp, buf->base, (size_t)nread, &used);
  if (r != ENG_HTTP_NEED_MORE)
    mconn_answer(c, r == ENG_HTTP_ERROR);
}

static void on_mconnection(uv_stream_t *server, int status) {
  eng_metrics_srv *s = server->data;
  if (status != 0 || s->nconns >= ENG_METRICS_CONNS)
    return; /* stays in the backlog: libuv offers it again */
  mconn *c = calloc(1, sizeof *c);
  if (c == NULL)
    return;
  c->s = s;
  if (uv_tcp_init(&s->loop, &c->tcp) != 0) {
    free(c);
    return;
  }
  s->nconns++;
  c->timer.data = c;
  (void)uv_timer_init(&s->loop, &c->timer); /* cannot fail (always 0) */
  eng_http_parser_init(&c->hp, &s->cfg->limits);
  if (uv_accept(server, (uv_stream_t *)&c->tcp) != 0 ||
      uv_timer_start(&c->timer, on_mtimeout, ENG_METRICS_CONN_MS, 0) != 0 ||
      uv_read_start((uv_stream_t *)&c->tcp, malloc_cb, on_mread) != 0)
    mconn_close(c);
}

/* Closes a client connection (the TCP handles other than the listener, given as arg). */
static void close_conn(uv_handle_t *h, void *listener) {
  if (h->type == UV_TCP && h != listener)
    mconn_close((mconn *)h);
}

static void on_mstop(uv_async_t *a) {
  eng_metrics_srv *s = a->data;
  if (s->pg) /* its handles close as the loop runs on */
    eng_pg_close(s->pg, NULL, NULL);
  s->pg = NULL;
  uv_walk(&s->loop, close_conn, &s->listener);
  uv_close((uv_handle_t *)&s->listener, NULL);
  uv_close((uv_handle_t *)&s->stop, NULL);
}

/* cfg's metrics address, resolved (a name or a numeric address). 0 or a getaddrinfo code. */
static int metrics_addr(const eng_config *cfg, struct sockaddr_storage *ss, socklen_t *sl) {
  struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM, .ai_flags = AI_PASSIVE};
  struct addrinfo *ai = NULL;
  char port[16];
  snprintf(port, sizeof port, "%d", cfg->metrics_port);
  int gai = getaddrinfo(cfg->metrics_host, port, &hints, &ai);
  if (gai != 0)
    return gai;
  *sl = ai->ai_addrlen;
  memcpy(ss, ai->ai_addr, ai->ai_addrlen);
  freeaddrinfo(ai);
  return 0;
}

/* A socket bound to sa, with SO_REUSEPORT as the workers' have it, so a handover's new server
 * can listen beside the old one; -errno on failure. */
static int bind_reuseport(const struct sockaddr *sa, socklen_t sl, int reuseport, int *out) {
  int fd = socket(sa->sa_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0)
    return -errno;
  int one = 1;
  if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) != 0 ||
      (reuseport && setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one) != 0) || bind(fd, sa, sl) != 0) {
    int e = errno;
    close(fd);
    return -e;
  }
  *out = fd;
  return 0;
}

int eng_metrics_srv_probe(const eng_config *cfg, char **err) {
  struct sockaddr_storage ss;
  socklen_t sl;
  int fd = -1, e;
  if (cfg->metrics_host == NULL || cfg->metrics_port == 0)
    return 0;
  if ((e = metrics_addr(cfg, &ss, &sl)) != 0)
    return eng_errorf(err, ENG_ECONFIG, "cannot resolve the metrics address '%s': %s", cfg->metrics_host,
                      gai_strerror(e));
  /* Without SO_REUSEPORT: fails while anything listens there, an apiengine included. */
  if ((e = bind_reuseport((struct sockaddr *)&ss, sl, 0, &fd)) != 0)
    return eng_errorf(err, e == -EADDRINUSE ? ENG_EEXISTS : ENG_EIO, "cannot listen for metrics on %s:%d: %s%s",
                      cfg->metrics_host, cfg->metrics_port, strerror(-e),
                      e == -EADDRINUSE ? ": another process listens there" : "");
  close(fd);
  return 0;
}

/* On the listener's thread: listen on s->fd, serve until stopped. */
static void metrics_main(void *arg) {
  eng_metrics_srv *s = arg;
  int rc = uv_loop_init(&s->loop);
  if (rc == 0) {
    if ((rc = uv_tcp_init(&s->loop, &s->listener)) == 0) {
      s->listener.data = s;
      if ((rc = uv_tcp_open(&s->listener, s->fd)) == 0) {
        s->fd = -1; /* the listener's now */
        if ((rc = uv_listen((uv_stream_t *)&s->listener, 128, on_mconnection)) == 0)
          rc = uv_async_init(&s->loop, &s->stop, on_mstop);
      }
      if (rc == 0 && eng_config_db_is_pg(s->cfg->db_path)) {
        eng_pg_options po = {.size = 1};
        char *err = NULL;
        if (eng_pg_open(&s->pg, &s->loop, s->cfg->db_path, &po, &err) != 0) /* memory only: /readyz says 503 */
          eng_log_warn("metrics listener: PostgreSQL: %s", err ? err : "cannot open the pool");
        free(err);
      }
      if (rc == 0)
        s->stop.data = s;
      else
        uv_close((uv_handle_t *)&s->listener, NULL);
    }
    if (rc != 0) {
      uv_run(&s->loop, UV_RUN_DEFAULT);
      (void)uv_loop_close(&s->loop);
    }
  }
  s->start_rc = rc;
  uv_sem_post(&s->started);
  if (rc != 0)
    return;
  uv_run(&s->loop, UV_RUN_DEFAULT); /* until on_mstop closed everything */
  (void)uv_loop_close(&s->loop);
  eng_db_close(s->db);
  s->db = NULL;
}

int eng_metrics_srv_start(eng_metrics_srv **out, const eng_config *cfg) {
  *out = NULL;
  eng_metrics_srv *s = calloc(1, sizeof *s);
  if (s == NULL)
    return ENG_ENOMEM;
  s->cfg = cfg;
  s->fd = -1;
  eng_response_init(&s->resp);
  struct sockaddr_storage ss;
  socklen_t sl;
  int e = metrics_addr(cfg, &ss, &sl);
  if (e != 0) {
    eng_log_error("cannot resolve the metrics address '%s': %s", cfg->metrics_host, gai_strerror(e));
    free(s);
    return ENG_ECONFIG;
  }
  if ((e = bind_reuseport((struct sockaddr *)&ss, sl, 1, &s->fd)) != 0) {
    eng_log_error("cannot listen for metrics on %s:%d: %s", cfg->metrics_host, cfg->metrics_port, strerror(-e));
    free(s);
    return ENG_EIO;
  }
  struct sockaddr_storage bound;
  socklen_t bl = sizeof bound;
  if (getsockname(s->fd, (struct sockaddr *)&bound, &bl) == 0)
    s->port = ntohs(bound.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&bound)->sin6_port
                                                : ((struct sockaddr_in *)&bound)->sin_port);
  if (uv_sem_init(&s->started, 0) != 0) {
    close(s->fd);
    free(s);
    return ENG_EIO;
  }
  if (uv_thread_create(&s->thread, metrics_main, s) != 0) {
    uv_sem_destroy(&s->started);
    close(s->fd);
    free(s);
    return ENG_EIO;
  }
  uv_sem_wait(&s->started);
  if (s->start_rc != 0) {
    eng_log_error("cannot listen for metrics on %s:%d: %s", cfg->metrics_host, cfg->metrics_port,
                  uv_strerror(s->start_rc));
    uv_thread_join(&s->thread);
    uv_sem_destroy(&s->started);
    if (s->fd >= 0)
      close(s->fd);
    eng_response_free(&s->resp);
    free(s);
    return ENG_EIO;
  }
  const char *v6 = strchr(cfg->metrics_host, ':') ? "]" : "";
  eng_log_info("metrics and health checks on http://%s%s%s:%d/metrics (%s, %s)", *v6 ? "[" : "", cfg->metrics_host, v6,
               s->port, cfg->healthz_path, cfg->readyz_path);
  *out = s;
  return 0;
}

void eng_metrics_srv_ready(eng_metrics_srv *s, int ready) {
  if (s)
    atomic_store_explicit(&s->ready, ready, memory_order_release);
}

void eng_metrics_srv_stop(eng_metrics_srv *s) {
  if (s == NULL)
    return;
  (void)uv_async_send(&s->stop); /* open until on_mstop: cannot fail */
  uv_thread_join(&s->thread);
  uv_sem_destroy(&s->started);
  eng_response_free(&s->resp);
  eng_buf_free(&s->out);
  free(s);
}
