/* yardstick.c - the floor the engine's GET /hello is measured against.
 *
 * A plain libuv + llhttp HTTP/1.1 server with the engine's shape (N threads,
 * one loop and one SO_REUSEPORT listening socket each, a read buffer per
 * thread, TCP_NODELAY, try-write first) that answers every request with the
 * bytes the engine sends for scripts/hello.lua:
 *
 *   HTTP/1.1 200 OK\r\nDate: ...\r\nContent-Type: application/json\r\n
 *   Content-Length: 17\r\nX-Request-Id: <uuid4>\r\n[Connection: ...\r\n]\r\n{"hello":"world"}
 *
 * What it leaves out is what the engine adds on top: header storage, routing,
 * the Lua call and JSON encoding. It always mints a fresh request id (the
 * bench never sends X-Request-Id) from a per-thread pool of getrandom() bytes,
 * as the engine does from its RAND_bytes pool. Keep-alive and pipelining: all
 * answers to the requests found in one read are appended in order to one
 * buffer and sent with one write; a request that does not keep the
 * connection alive ends parsing, and the connection is half-closed once its
 * answer is out. Malformed input closes the connection without an answer.
 *
 * usage: bench_yardstick [--listen HOST:PORT] [--threads N]   (SIGINT/SIGTERM stop it) */
#include <llhttp.h>
#include <uv.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define READ_BUF_BYTES (64u * 1024u)
#define UUID_POOL_BYTES 4096u
#define UUID_RAW_BYTES 16u
#define UUID_TEXT_BYTES 36u
#define WRITE_HIGH_BYTES (4u << 20) /* stop reading past this many unsent bytes */
#define MAX_THREADS 64
#define BACKLOG 1024
#define DATE_BYTES 29 /* "Wed, 25 Nov 2026 09:33:56 GMT" */

static const char BODY[] = "{\"hello\":\"world\"}";

typedef struct thread_ctx thread_ctx;

typedef struct conn {
  uv_tcp_t tcp; /* first: handles cast back to conn */
  llhttp_t parser;
  thread_ctx *t;
  size_t pending; /* bytes queued in uv_write */
  unsigned closing : 1, reading : 1;
} conn;

struct thread_ctx {
  uv_thread_t thread;
  uv_loop_t loop;
  uv_tcp_t listener;
  uv_async_t stop;
  int fd;
  /* answers to the requests of the current read */
  char *out;
  size_t out_len, out_cap;
  int out_failed;
  /* the Date header, formatted once a second */
  time_t date_at;
  char date[DATE_BYTES + 1];
  /* random bytes for request ids, each used once */
  unsigned char pool[UUID_POOL_BYTES];
  size_t pool_pos;
  char readbuf[READ_BUF_BYTES];
};

typedef struct wreq {
  uv_write_t req;
  conn *c;
  size_t len;
  char data[];
} wreq;

static thread_ctx threads[MAX_THREADS];
static int nthreads = 2;
static uv_signal_t signals[2];

/* ---- the answer ---------------------------------------------------------------------------- */

static int out_reserve(thread_ctx *t, size_t extra) {
  if (t->out_len + extra <= t->out_cap)
    return 0;
  size_t cap = t->out_cap ? t->out_cap : 1024;
  while (cap < t->out_len + extra)
    cap *= 2;
  char *p = realloc(t->out, cap);
  if (p == NULL)
    return -1;
  t->out = p;
  t->out_cap = cap;
  return 0;
}

static void out_put(thread_ctx *t, const char *s, size_t n) {
  memcpy(t->out + t->out_len, s, n);
  t->out_len += n;
}

#define OUT_LIT(t, s) out_put((t), (s), sizeof(s) - 1)

static const char *date_now(thread_ctx *t) {
  time_t now = time(NULL);
  if (now != t->date_at) {
    struct tm tm;
    gmtime_r(&now, &tm);
    strftime(t->date, sizeof t->date, "%a, %d %b %Y %H:%M:%S GMT", &tm);
    t->date_at = now;
  }
  return t->date;
}

static int uuid4(thread_ctx *t, char out[UUID_TEXT_BYTES]) {
  static const char hex[] = "0123456789abcdef";
  if (t->pool_pos + UUID_RAW_BYTES > sizeof t->pool) {
    size_t got = 0;
    while (got < sizeof t->pool) {
      ssize_t n = getrandom(t->pool + got, sizeof t->pool - got, 0);
      if (n < 0 && errno != EINTR)
        return -1;
      if (n > 0)
        got += (size_t)n;
    }
    t->pool_pos = 0;
  }
  unsigned char *raw = t->pool + t->pool_pos;
  t->pool_pos += UUID_RAW_BYTES;
  raw[6] = (unsigned char)((raw[6] & 0x0f) | 0x40); /* version 4 */
  raw[8] = (unsigned char)((raw[8] & 0x3f) | 0x80); /* variant 10xx */
  char *p = out;
  for (unsigned i = 0; i < UUID_RAW_BYTES; i++) {
    if (i == 4 || i == 6 || i == 8 || i == 10)
      *p++ = '-';
    *p++ = hex[raw[i] >> 4];
    *p++ = hex[raw[i] & 0x0f];
  }
  return 0;
}

/* Appends one answer; the engine's header order and Connection rules. */
static int append_answer(thread_ctx *t, int keep_alive, int http_minor, int head_only) {
  char id[UUID_TEXT_BYTES];
  if (uuid4(t, id) != 0 || out_reserve(t, 256) != 0)
    return -1;
  OUT_LIT(t, "HTTP/1.1 200 OK\r\nDate: ");
  out_put(t, date_now(t), DATE_BYTES);
  OUT_LIT(t, "\r\nContent-Type: application/json\r\nContent-Length: 17\r\nX-Request-Id: ");
  out_put(t, id, sizeof id);
  OUT_LIT(t, "\r\n");
  if (!keep_alive)
    OUT_LIT(t, "Connection: close\r\n");
  else if (http_minor == 0)
    OUT_LIT(t, "Connection: keep-alive\r\n");
  OUT_LIT(t, "\r\n");
  if (!head_only)
    out_put(t, BODY, sizeof BODY - 1);
  return 0;
}

static int on_message_complete(llhttp_t *p) {
  conn *c = p->data;
  int keep = llhttp_should_keep_alive(p);
  if (append_answer(c->t, keep, p->http_minor, p->method == HTTP_HEAD) != 0) {
    c->t->out_failed = 1;
    return HPE_USER;
  }
  if (!keep) {
    c->closing = 1;
    return HPE_PAUSED; /* nothing after this request is answered */
  }
  return 0;
}

static llhttp_settings_t settings;

/* ---- connections --------------------------------------------------------------------------- */

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf);

static void on_closed(uv_handle_t *h) { free(h); }

static void conn_close(conn *c) {
  if (!uv_is_closing((uv_handle_t *)&c->tcp))
    uv_close((uv_handle_t *)&c->tcp, on_closed);
}

static void alloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
  (void)suggested;
  conn *c = (conn *)h;
  buf->base = c->t->readbuf;
  buf->len = sizeof c->t->readbuf;
}

static void on_shutdown(uv_shutdown_t *req, int status) {
  conn *c = req->data;
  (void)status;
  free(req);
  conn_close(c);
}

static void conn_finish(conn *c) {
  uv_shutdown_t *req = malloc(sizeof *req);
  if (req == NULL || uv_shutdown(req, (uv_stream_t *)&c->tcp, on_shutdown) != 0) {
    free(req);
    conn_close(c);
    return;
  }
  req->data = c;
}

static void on_write(uv_write_t *req, int status) {
  wreq *wr = (wreq *)req;
  conn *c = wr->c;
  c->pending -= wr->len;
  free(wr);
  if (status != 0) {
    conn_close(c);
    return;
  }
  if (!c->reading && !c->closing && c->pending < WRITE_HIGH_BYTES / 4) {
    c->reading = 1;
    uv_read_start((uv_stream_t *)&c->tcp, alloc_cb, on_read);
  }
}

/* Sends in order: straight to the socket when nothing is queued, else queued (copied). */
static int conn_send(conn *c, const char *data, size_t len) {
  if (c->pending == 0) {
    uv_buf_t b = uv_buf_init((char *)data, (unsigned)len);
    int n = uv_try_write((uv_stream_t *)&c->tcp, &b, 1);
    if (n == (int)len)
      return 0;
    if (n < 0 && n != UV_EAGAIN)
      return n;
    if (n > 0) {
      data += n;
      len -= (size_t)n;
    }
  }
  wreq *wr = malloc(sizeof *wr + len);
  if (wr == NULL)
    return UV_ENOMEM;
  memcpy(wr->data, data, len);
  wr->c = c;
  wr->len = len;
  uv_buf_t b = uv_buf_init(wr->data, (unsigned)len);
  int rc = uv_write(&wr->req, (uv_stream_t *)&c->tcp, &b, 1, on_write);
  if (rc != 0) {
    free(wr);
    return rc;
  }
  c->pending += len;
  if (c->pending > WRITE_HIGH_BYTES && c->reading) {
    uv_read_stop((uv_stream_t *)&c->tcp);
    c->reading = 0;
  }
  return 0;
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf) {
  conn *c = (conn *)s;
  thread_ctx *t = c->t;
  if (nread < 0) {
    conn_close(c);
    return;
  }
  if (nread == 0 || c->closing)
    return; /* after the last answer: discard until the peer closes */
  t->out_len = 0;
  t->out_failed = 0;
  llhttp_errno_t err = llhttp_execute(&c->parser, buf->base, (size_t)nread);
  int bad = err != HPE_OK && err != HPE_PAUSED;
  if (t->out_len > 0 && !t->out_failed && conn_send(c, t->out, t->out_len) != 0) {
    conn_close(c);
    return;
  }
  if (bad) {
    conn_close(c);
  } else if (c->closing) {
    uv_read_stop((uv_stream_t *)&c->tcp);
    c->reading = 0;
    conn_finish(c);
  }
}

static void on_connection(uv_stream_t *server, int status) {
  thread_ctx *t = server->data;
  if (status != 0)
    return;
  conn *c = calloc(1, sizeof *c);
  if (c == NULL)
    return;
  c->t = t;
  uv_tcp_init(&t->loop, &c->tcp);
  if (uv_accept(server, (uv_stream_t *)&c->tcp) != 0) {
    conn_close(c);
    return;
  }
  uv_tcp_nodelay(&c->tcp, 1);
  llhttp_init(&c->parser, HTTP_REQUEST, &settings);
  c->parser.data = c;
  c->reading = 1;
  uv_read_start((uv_stream_t *)&c->tcp, alloc_cb, on_read);
}

/* ---- threads ------------------------------------------------------------------------------- */

static void on_stop(uv_async_t *a) { uv_stop(a->loop); }

static void thread_main(void *arg) {
  thread_ctx *t = arg;
  uv_run(&t->loop, UV_RUN_DEFAULT);
}

/* socket + SO_REUSEPORT + bind: libuv 1.44 has no UV_TCP_REUSEPORT. */
static int bind_reuseport(const struct sockaddr_in *sa) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0)
    return -1;
  int one = 1;
  if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) != 0 ||
      setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one) != 0 ||
      bind(fd, (const struct sockaddr *)sa, sizeof *sa) != 0) {
    close(fd);
    return -1;
  }
  return fd;
}

static int thread_setup(thread_ctx *t, const struct sockaddr_in *sa) {
  int rc;
  t->fd = bind_reuseport(sa);
  if (t->fd < 0) {
    fprintf(stderr, "yardstick: bind: %s\n", strerror(errno));
    return -1;
  }
  t->pool_pos = sizeof t->pool; /* empty: filled on first use */
  if ((rc = uv_loop_init(&t->loop)) != 0 || (rc = uv_tcp_init(&t->loop, &t->listener)) != 0 ||
      (rc = uv_tcp_open(&t->listener, t->fd)) != 0 ||
      (rc = uv_listen((uv_stream_t *)&t->listener, BACKLOG, on_connection)) != 0 ||
      (rc = uv_async_init(&t->loop, &t->stop, on_stop)) != 0) {
    fprintf(stderr, "yardstick: listen: %s\n", uv_strerror(rc));
    return -1;
  }
  t->listener.data = t;
  return 0;
}

static void on_signal(uv_signal_t *s, int signo) {
  (void)s;
  (void)signo;
  for (int i = 0; i < nthreads; i++)
    uv_async_send(&threads[i].stop);
  for (int i = 0; i < 2; i++)
    if (!uv_is_closing((uv_handle_t *)&signals[i]))
      uv_close((uv_handle_t *)&signals[i], NULL);
}

static int parse_listen(const char *arg, struct sockaddr_in *sa) {
  char host[64];
  const char *colon = strrchr(arg, ':');
  if (colon == NULL || (size_t)(colon - arg) >= sizeof host)
    return -1;
  memcpy(host, arg, (size_t)(colon - arg));
  host[colon - arg] = '\0';
  char *end;
  long port = strtol(colon + 1, &end, 10);
  if (*end != '\0' || port <= 0 || port > 65535)
    return -1;
  return uv_ip4_addr(host, (int)port, sa) == 0 ? 0 : -1;
}

int main(int argc, char **argv) {
  const char *listen_at = "127.0.0.1:8081";
  for (int i = 1; i < argc; i++) {
    if (strcmp(argv[i], "--listen") == 0 && i + 1 < argc) {
      listen_at = argv[++i];
    } else if (strcmp(argv[i], "--threads") == 0 && i + 1 < argc) {
      nthreads = atoi(argv[++i]);
    } else {
      fprintf(stderr, "usage: %s [--listen HOST:PORT] [--threads N]\n", argv[0]);
      return 2;
    }
  }
  struct sockaddr_in sa;
  if (nthreads < 1 || nthreads > MAX_THREADS || parse_listen(listen_at, &sa) != 0) {
    fprintf(stderr, "yardstick: bad --listen '%s' (IPv4 HOST:PORT) or --threads (1..%d)\n", listen_at, MAX_THREADS);
    return 2;
  }
  signal(SIGPIPE, SIG_IGN);
  llhttp_settings_init(&settings);
  settings.on_message_complete = on_message_complete;

  uv_loop_t *loop = uv_default_loop();
  uv_signal_init(loop, &signals[0]);
  uv_signal_init(loop, &signals[1]);
  uv_signal_start(&signals[0], on_signal, SIGINT);
  uv_signal_start(&signals[1], on_signal, SIGTERM);

  for (int i = 0; i < nthreads; i++)
    if (thread_setup(&threads[i], &sa) != 0)
      return 1;
  for (int i = 0; i < nthreads; i++)
    if (uv_thread_create(&threads[i].thread, thread_main, &threads[i]) != 0)
      return 1;
  fprintf(stderr, "yardstick listening on http://%s (%d threads)\n", listen_at, nthreads);
  uv_run(loop, UV_RUN_DEFAULT);
  for (int i = 0; i < nthreads; i++)
    uv_thread_join(&threads[i].thread);
  /* Connections are not closed one by one: the process ends here. */
  return 0;
}
