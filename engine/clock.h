/* clock.h - wall-clock time in UTC milliseconds, RFC 3339 formatting and strict parsing, in
 * plain C (no Lua). The Lua module "engine.time" (lua_time.c) is a binding over these.
 *
 * Times are int64 milliseconds since 1970-01-01T00:00:00Z (negative before), without leap
 * seconds. All calendar arithmetic is proleptic Gregorian and independent of TZ and locale.
 * Every function is thread-safe; the test clock is per thread. */
#ifndef ENG_CLOCK_H
#define ENG_CLOCK_H

#include <stddef.h>
#include <stdint.h>

/* Longest output of eng_clock_format, NUL included ("-292275055-05-16T16:47:04.192Z"). */
#define ENG_CLOCK_FORMAT_MAX 32

/* Current UTC time in ms. Honours the calling thread's test clock (below). */
int64_t eng_clock_now_ms(void);

/* Test clock. The state is thread-local: freezing the clock in one thread does not affect
 * the others. Only tests (and the test harness module of the runtime) call these. */
void eng_clock_freeze(int64_t ms);        /* now() returns ms until reset */
void eng_clock_advance(int64_t delta_ms); /* moves a frozen clock, or offsets the real one */
void eng_clock_reset(void);               /* back to the real clock, offset dropped */

/* Formats ms as "YYYY-MM-DDTHH:MM:SS.mmmZ" (24 chars + NUL) into out. Every int64 value is
 * accepted: years outside 0000-9999 are written in ISO 8601 expanded form with an explicit
 * sign and at least 4 digits ("+10000-01-01T00:00:00.000Z", "-0001-12-31T..."), which
 * eng_clock_parse does not accept back. */
void eng_clock_format(int64_t ms, char out[ENG_CLOCK_FORMAT_MAX]);

/* Parses the strict RFC 3339 subset
 *   "YYYY-MM-DD"                                             -> *is_date = 1, 00:00:00Z that day
 *   "YYYY-MM-DD(T|t)HH:MM:SS[.f{1,9}](Z|z|+HH:MM|-HH:MM)"    -> *is_date = 0
 * Years 0000-9999; month 1-12; day valid for the month (Gregorian leap years); hour 0-23;
 * minute 0-59; second 0-59 (no leap second); offset hours 0-23, minutes 0-59; the fraction is
 * truncated to ms; a date-time without offset and anything trailing are errors. `s` need not
 * be NUL-terminated (len bytes are read). out_ms and is_date may be NULL.
 * Returns 0, or ENG_EPARSE with *errmsg (if errmsg is non-NULL) a static message naming what
 * is wrong ("invalid month", "day out of range for month", "trailing characters", ...). */
int eng_clock_parse(const char *s, size_t len, int64_t *out_ms, int *is_date, const char **errmsg);

/* Days since 1970-01-01 of a proleptic Gregorian date (month 1-12, day 1-31 unchecked). */
int64_t eng_clock_days_from_civil(int64_t y, int m, int d);

#endif
