/* check.h - a tiny assertion kit for the C unit tests.
 * CHECK(cond) records a failure and goes on; the test's main returns check_summary(). */
#ifndef ENG_CHECK_H
#define ENG_CHECK_H

#include <stdio.h>
#include <string.h>

static int check_failed_ = 0, check_passed_ = 0;

#define CHECK(cond)                                                            \
  do {                                                                         \
    if (cond) {                                                                \
      check_passed_++;                                                         \
    } else {                                                                   \
      check_failed_++;                                                         \
      fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond); \
    }                                                                          \
  } while (0)

#define CHECK_INT(a, b)                                                                                      \
  do {                                                                                                       \
    long long a_ = (long long)(a), b_ = (long long)(b);                                                      \
    if (a_ == b_) {                                                                                          \
      check_passed_++;                                                                                       \
    } else {                                                                                                 \
      check_failed_++;                                                                                       \
      fprintf(stderr, "%s:%d: CHECK failed: %s == %s (%lld != %lld)\n", __FILE__, __LINE__, #a, #b, a_, b_); \
    }                                                                                                        \
  } while (0)

#define CHECK_STR(a, b)                                                                                 \
  do {                                                                                                  \
    const char *a_ = (a), *b_ = (b);                                                                    \
    if (a_ && b_ && strcmp(a_, b_) == 0) {                                                              \
      check_passed_++;                                                                                  \
    } else {                                                                                            \
      check_failed_++;                                                                                  \
      fprintf(stderr, "%s:%d: CHECK failed: %s == %s (\"%s\" != \"%s\")\n", __FILE__, __LINE__, #a, #b, \
              a_ ? a_ : "(null)", b_ ? b_ : "(null)");                                                  \
    }                                                                                                   \
  } while (0)

static inline int check_summary(const char *name) {
  printf("%s: %d checks passed, %d failed\n", name, check_passed_, check_failed_);
  return check_failed_ ? 1 : 0;
}

#endif
