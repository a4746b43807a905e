/* log.c - stderr logging (see log.h). */
#include "log.h"
#include "buf.h"
#include "error.h"
#include "text.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static eng_log_level g_level = ENG_LOG_INFO;
static int g_json = 0;
static int g_fd = STDERR_FILENO;

void eng_log_set_fd(int fd) { g_fd = fd; }

static const char *const level_names[] = {"error", "warn", "info", "debug"};

void eng_log_setup(eng_log_level level, int json) {
  g_level = level;
  g_json = json;
}

int eng_log_parse_level(const char *s, eng_log_level *out) {
  for (int i = 0; i <= (int)ENG_LOG_DEBUG; i++) {
    if (strcmp(s, level_names[i]) == 0) {
      *out = (eng_log_level)i;
      return 0;
    }
  }
  return ENG_EINVAL;
}

int eng_log_enabled(eng_log_level level) { return level <= g_level; }

static void timestamp(char out[32]) {
  struct timespec ts;
  struct tm tm;
  clock_gettime(CLOCK_REALTIME, &ts);
  gmtime_r(&ts.tv_sec, &tm);
  size_t n = strftime(out, 32, "%Y-%m-%dT%H:%M:%S", &tm);
  snprintf(out + n, 32 - n, ".%03ldZ", ts.tv_nsec / 1000000);
}

/* A JSON string, valid whatever bytes s holds (ill-formed UTF-8 becomes U+FFFD). A line
 * that runs out of memory is cut short: emit() still writes what it has. */
static void json_str(eng_buf *b, const char *s, size_t n) { (void)eng_json_escape(b, s, n, ENG_JSON_REPLACE); }

/* Plain lines stay one line: control characters become spaces. */
static void plain_clean(eng_buf *b, const char *s, size_t n) {
  for (size_t i = 0; i < n; i++) {
    unsigned char c = (unsigned char)s[i];
    eng_buf_append_char(b, c < 0x20 ? ' ' : (char)c);
  }
}

static void emit(eng_buf *b) {
  eng_buf_append_char(b, '\n');
  if (b->data) {
    ssize_t r = write(g_fd, b->data, b->len);
    (void)r; /* nothing sensible to do when stderr is gone */
  }
  eng_buf_free(b);
}

static _Thread_local eng_buf *g_capture;

void eng_log_capture(eng_buf *b) { g_capture = b; }

void eng_log_msg(eng_log_level level, const char *request_id, const char *msg, size_t len) {
  if (g_capture != NULL && level == ENG_LOG_ERROR &&
      (eng_buf_append(g_capture, msg, len) != 0 || eng_buf_append_char(g_capture, '\n') != 0))
    g_capture = NULL; /* out of memory: stop capturing, the log line still goes out */
  if (!eng_log_enabled(level))
    return;
  char ts[32];
  timestamp(ts);
  eng_buf b = {0};
  if (g_json) {
    eng_buf_appendf(&b, "{\"ts\":\"%s\",\"level\":\"%s\",", ts, level_names[level]);
    if (request_id) {
      eng_buf_append_str(&b, "\"request_id\":");
      json_str(&b, request_id, strlen(request_id));
      eng_buf_append_char(&b, ',');
    }
    eng_buf_append_str(&b, "\"msg\":");
    json_str(&b, msg, len);
    eng_buf_append_char(&b, '}');
  } else {
    eng_buf_appendf(&b, "%s %-5s ", ts, level_names[level]);
    if (request_id)
      eng_buf_appendf(&b, "[%s] ", request_id);
    /* Multi-line messages (tracebacks) keep their lines, indented. */
    for (size_t i = 0; i < len; i++) {
      if (msg[i] == '\n')
        eng_buf_append_str(&b, "\n    ");
      else if ((unsigned char)msg[i] < 0x20 && msg[i] != '\t')
        eng_buf_append_char(&b, ' ');
      else
        eng_buf_append_char(&b, msg[i]);
    }
  }
  emit(&b);
}

void eng_log(eng_log_level level, const char *fmt, ...) {
  if (!eng_log_enabled(level))
    return;
  char msg[2048];
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  if (n < 0)
    return;
  size_t len = (size_t)n < sizeof msg ? (size_t)n : sizeof msg - 1;
  eng_log_msg(level, NULL, msg, len);
}

void eng_log_access(const eng_access_entry *e) {
  char ts[32];
  timestamp(ts);
  eng_buf b = {0};
  if (g_json) {
    eng_buf_appendf(&b, "{\"ts\":\"%s\",\"type\":\"access\",\"method\":", ts);
    json_str(&b, e->method, strlen(e->method));
    eng_buf_append_str(&b, ",\"path\":");
    json_str(&b, e->path, e->path_len);
    eng_buf_appendf(&b, ",\"status\":%d,\"bytes\":%llu,\"duration_ms\":%.3f,\"request_id\":", e->status,
                    (unsigned long long)e->bytes, e->duration_ms);
    json_str(&b, e->request_id, strlen(e->request_id));
    eng_buf_append_str(&b, ",\"peer\":");
    json_str(&b, e->peer, strlen(e->peer));
    eng_buf_append_str(&b, ",\"route\":");
    if (e->route)
      json_str(&b, e->route, strlen(e->route));
    else
      eng_buf_append_str(&b, "null");
    eng_buf_appendf(&b, ",\"worker\":%d}", e->worker);
  } else {
    eng_buf_appendf(&b, "%s access %s ", ts, e->peer);
    plain_clean(&b, e->method, strlen(e->method));
    eng_buf_append_char(&b, ' ');
    plain_clean(&b, e->path, e->path_len);
    eng_buf_appendf(&b, " %d %llu %.3fms %s ", e->status, (unsigned long long)e->bytes, e->duration_ms, e->request_id);
    if (e->route)
      plain_clean(&b, e->route, strlen(e->route));
    else
      eng_buf_append_char(&b, '-');
    eng_buf_appendf(&b, " w%d", e->worker);
  }
  emit(&b);
}
