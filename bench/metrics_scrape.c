/* metrics_scrape.c - a scraper for bench/metrics that costs what a Prometheus server's scrape
 * costs the machine it runs on: one long-lived process that connects, sends GET /metrics, reads
 * the answer to the close and checks it is a 200. curl, started once per scrape, spends about
 * 30 ms of CPU loading and setting itself up each time: on the bench's two cores, shared with wrk
 * and the worker, that start-up is what a scrape a second cost the hello route, and a
 * Prometheus server (another machine, one process) never pays it.
 *
 *   bench_metrics_scrape HOST PORT EVERY_MS FIRST_MS   scrapes every EVERY_MS, the first after
 *                                                      FIRST_MS, until SIGTERM
 *   bench_metrics_scrape HOST PORT 0 N                 N scrapes in a row, then exits
 *
 * On exit it prints "SCRAPES CPU_US": scrapes done and its own CPU time (user + system) per
 * scrape in microseconds. A failed scrape (no connection, not a 200) exits 1, unless SIGTERM cut
 * it short. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static volatile sig_atomic_t stop;
static void on_term(int sig) {
  (void)sig;
  stop = 1;
}

static int scrape(const struct sockaddr_in *sa) {
  static char buf[1 << 16];
  static const char req[] = "GET /metrics HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n";
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0 || connect(fd, (const struct sockaddr *)sa, sizeof *sa) != 0 ||
      write(fd, req, sizeof req - 1) != (ssize_t)(sizeof req - 1)) {
    if (fd >= 0)
      close(fd);
    return -1;
  }
  size_t got = 0;
  for (;;) {
    ssize_t n = read(fd, buf + (got < 16 ? got : 16), got < 16 ? sizeof buf - got : sizeof buf - 16);
    if (n < 0 && errno == EINTR)
      continue;
    if (n <= 0)
      break;
    got += (size_t)n; /* only the status line is kept: the rest overwrites past it */
  }
  close(fd);
  return got >= 12 && memcmp(buf, "HTTP/1.1 200", 12) == 0 ? 0 : -1;
}

static double cpu_us(void) {
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  return (double)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) * 1e6 + (double)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec);
}

static void sleep_until(const struct timespec *t) {
  while (!stop && clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, t, NULL) == EINTR)
    ;
}

int main(int argc, char **argv) {
  if (argc != 5) {
    fprintf(stderr, "usage: %s HOST PORT EVERY_MS FIRST_MS | HOST PORT 0 COUNT\n", argv[0]);
    return 2;
  }
  struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((unsigned short)atoi(argv[2]))};
  if (inet_pton(AF_INET, argv[1], &sa.sin_addr) != 1) {
    fprintf(stderr, "%s: HOST must be an IPv4 address\n", argv[0]);
    return 2;
  }
  long every = atol(argv[3]), arg = atol(argv[4]), done = 0;
  struct sigaction act = {.sa_handler = on_term};
  sigaction(SIGTERM, &act, NULL);
  sigaction(SIGINT, &act, NULL);
  double c0 = cpu_us();
  if (every <= 0) {
    for (; done < arg && !stop; done++)
      if (scrape(&sa) != 0)
        return 1;
  } else {
    struct timespec next;
    clock_gettime(CLOCK_MONOTONIC, &next);
    long ms = arg;
    for (;;) {
      next.tv_sec += ms / 1000;
      next.tv_nsec += (ms % 1000) * 1000000L;
      if (next.tv_nsec >= 1000000000L) {
        next.tv_sec++;
        next.tv_nsec -= 1000000000L;
      }
      sleep_until(&next);
      if (stop)
        break;
      if (scrape(&sa) != 0) {
        if (stop) /* the TERM cut this scrape short */
          break;
        return 1;
      }
      done++;
      ms = every;
    }
  }
  printf("%ld %.1f\n", done, done ? (cpu_us() - c0) / (double)done : 0.0);
  return 0;
}
