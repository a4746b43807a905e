/* log.h - leveled logging to stderr, plain text or one JSON object a line.
 *
 * Thread-safe: each call formats into a local buffer and writes it with one
 * write(2). Never pass secrets to these functions. */
#ifndef ENG_LOG_H
#define ENG_LOG_H

#include "buf.h"

#include <stddef.h>
#include <stdint.h>

typedef enum { ENG_LOG_ERROR = 0, ENG_LOG_WARN, ENG_LOG_INFO, ENG_LOG_DEBUG } eng_log_level;

/* Set once at start-up, before threads start. */
void eng_log_setup(eng_log_level level, int json);
/* Where lines go (default: stderr). The caller keeps the descriptor open. */
void eng_log_set_fd(int fd);
int eng_log_parse_level(const char *s, eng_log_level *out); /* 0 or ENG_EINVAL */
int eng_log_enabled(eng_log_level level);

void eng_log(eng_log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Like eng_log, with an extra request id and a message that is used verbatim. */
void eng_log_msg(eng_log_level level, const char *request_id, const char *msg, size_t len);

/* While b is set (not NULL), this thread's error-level messages are also appended to b, one
 * a line, whatever the log level (the in-process test client returns them with the answer).
 * b is borrowed; set NULL before freeing it. */
void eng_log_capture(eng_buf *b);

/* One access-log line (always written, whatever the level). */
typedef struct eng_access_entry {
  const char *method;
  const char *path;
  size_t path_len;
  int status;
  uint64_t bytes;
  double duration_ms;
  const char *request_id;
  const char *peer;
  const char *route; /* the route pattern that answered, NULL: none (logged as "-") */
  int worker;        /* the worker thread's number */
} eng_access_entry;
void eng_log_access(const eng_access_entry *e);

#define eng_log_error(...) eng_log(ENG_LOG_ERROR, __VA_ARGS__)
#define eng_log_warn(...) eng_log(ENG_LOG_WARN, __VA_ARGS__)
#define eng_log_info(...) eng_log(ENG_LOG_INFO, __VA_ARGS__)
#define eng_log_debug(...)                 \
  do {                                     \
    if (eng_log_enabled(ENG_LOG_DEBUG))    \
      eng_log(ENG_LOG_DEBUG, __VA_ARGS__); \
  } while (0)

#endif
