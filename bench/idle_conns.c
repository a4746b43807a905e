/* idle_conns.c - holds N keep-alive connections open, for measuring server memory per idle connection.
 *
 * Opens N connections to HOST:PORT one after another, sends "GET /healthz" on
 * each and reads the whole answer (so the server has parsed, answered and gone
 * back to idle on every one), then prints "open K of N" on stdout and holds
 * the connections until SIGINT/SIGTERM or --hold seconds pass. The caller
 * reads the server's VmRSS before starting this and after the line appears:
 * (after - before) / K is the cost of one idle connection.
 *
 * usage: bench_idle_conns [-n N] [--hold SECONDS] [--path PATH] HOST:PORT
 * exit: 0 when all N connections were opened and answered 200, 1 otherwise. */
#define _GNU_SOURCE /* strcasestr */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#define DEFAULT_CONNS 10000
#define DEFAULT_HOLD_S 120
#define FD_HEADROOM 64    /* stdio and friends, on top of one fd per connection */
#define RESPONSE_MAX 4096 /* the /healthz answer is ~150 bytes */
#define RECV_TIMEOUT_S 5

static int raise_nofile(long want) {
  struct rlimit rl;
  if (getrlimit(RLIMIT_NOFILE, &rl) != 0)
    return -1;
  if (rl.rlim_cur != RLIM_INFINITY && (long)rl.rlim_cur >= want)
    return 0;
  rl.rlim_cur = (rl.rlim_max == RLIM_INFINITY || (long)rl.rlim_max >= want) ? (rlim_t)want : rl.rlim_max;
  return setrlimit(RLIMIT_NOFILE, &rl);
}

/* Reads one whole answer (head + Content-Length body); returns its status or -1. */
static int read_answer(int fd) {
  char buf[RESPONSE_MAX + 1];
  size_t have = 0;
  for (;;) {
    if (have == RESPONSE_MAX)
      return -1;
    ssize_t n = recv(fd, buf + have, RESPONSE_MAX - have, 0);
    if (n < 0 && errno == EINTR)
      continue;
    if (n <= 0)
      return -1;
    have += (size_t)n;
    buf[have] = '\0';
    char *end = strstr(buf, "\r\n\r\n");
    if (end == NULL)
      continue;
    size_t head = (size_t)(end - buf) + 4;
    long clen = 0;
    const char *cl = strcasestr(buf, "\r\ncontent-length:");
    if (cl != NULL && cl < end)
      clen = strtol(cl + 17, NULL, 10);
    if (clen < 0 || (size_t)clen > RESPONSE_MAX)
      return -1;
    if (have < head + (size_t)clen)
      continue;
    int status = 0;
    if (sscanf(buf, "HTTP/1.%*d %d", &status) != 1)
      return -1;
    return status;
  }
}

static int open_one(const struct sockaddr_in *sa, const char *req, size_t req_len, const char **why) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    *why = strerror(errno);
    return -1;
  }
  struct timeval tv = {.tv_sec = RECV_TIMEOUT_S};
  int one = 1;
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  if (connect(fd, (const struct sockaddr *)sa, sizeof *sa) != 0) {
    *why = strerror(errno);
    goto fail;
  }
  if (send(fd, req, req_len, MSG_NOSIGNAL) != (ssize_t)req_len) {
    *why = "send failed";
    goto fail;
  }
  int status = read_answer(fd);
  if (status != 200) {
    *why = status < 0 ? "no complete answer" : "answer was not 200";
    goto fail;
  }
  return fd;
fail:
  close(fd);
  return -1;
}

static int parse_target(const char *arg, struct sockaddr_in *sa) {
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
  memset(sa, 0, sizeof *sa);
  sa->sin_family = AF_INET;
  sa->sin_port = htons((uint16_t)port);
  return inet_pton(AF_INET, host, &sa->sin_addr) == 1 ? 0 : -1;
}

static void usage(const char *argv0) {
  fprintf(stderr, "usage: %s [-n N] [--hold SECONDS] [--path PATH] HOST:PORT\n", argv0);
}

int main(int argc, char **argv) {
  long n = DEFAULT_CONNS, hold = DEFAULT_HOLD_S;
  const char *path = "/healthz", *target = NULL;
  for (int i = 1; i < argc; i++) {
    if (strcmp(argv[i], "-n") == 0 && i + 1 < argc)
      n = strtol(argv[++i], NULL, 10);
    else if (strcmp(argv[i], "--hold") == 0 && i + 1 < argc)
      hold = strtol(argv[++i], NULL, 10);
    else if (strcmp(argv[i], "--path") == 0 && i + 1 < argc)
      path = argv[++i];
    else if (target == NULL && argv[i][0] != '-')
      target = argv[i];
    else {
      usage(argv[0]);
      return 2;
    }
  }
  struct sockaddr_in sa;
  if (target == NULL || n < 1 || hold < 0 || parse_target(target, &sa) != 0) {
    usage(argv[0]);
    return 2;
  }
  if (raise_nofile(n + FD_HEADROOM) != 0)
    fprintf(stderr, "idle_conns: cannot raise RLIMIT_NOFILE to %ld: %s\n", n + FD_HEADROOM, strerror(errno));

  /* Block the stop signals now; they are collected by sigtimedwait below. */
  sigset_t stop;
  sigemptyset(&stop);
  sigaddset(&stop, SIGINT);
  sigaddset(&stop, SIGTERM);
  sigprocmask(SIG_BLOCK, &stop, NULL);

  char req[512];
  int req_len = snprintf(req, sizeof req, "GET %s HTTP/1.1\r\nHost: %s\r\n\r\n", path, target);
  if (req_len < 0 || (size_t)req_len >= sizeof req) {
    fprintf(stderr, "idle_conns: path too long\n");
    return 2;
  }
  int *fds = calloc((size_t)n, sizeof *fds);
  if (fds == NULL)
    return 1;
  long open_n = 0;
  const char *why = NULL;
  for (; open_n < n; open_n++) {
    int fd = open_one(&sa, req, (size_t)req_len, &why);
    if (fd < 0)
      break;
    fds[open_n] = fd;
  }
  if (open_n < n)
    fprintf(stderr, "idle_conns: connection %ld failed: %s\n", open_n + 1, why);
  printf("open %ld of %ld\n", open_n, n);
  fflush(stdout);

  struct timespec ts = {.tv_sec = hold};
  while (sigtimedwait(&stop, NULL, &ts) < 0 && errno == EINTR) {
  }
  for (long i = 0; i < open_n; i++)
    close(fds[i]);
  free(fds);
  return open_n == n ? 0 : 1;
}
