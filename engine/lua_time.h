/* lua_time.h - wall-clock time in UTC milliseconds, RFC 3339 formatting and strict parsing,
 * and the Lua module "engine.time".
 *
 * Times are int64 milliseconds since 1970-01-01T00:00:00Z (negative before), without leap
 * seconds. All calendar arithmetic is proleptic Gregorian and independent of TZ and locale.
 *
 * Lua API (eng_luaopen_time, declared in lua_common.h):
 *   now()      -> integer ms (honours the test clock of the calling thread)
 *   format(ms) -> "2024-06-15T10:00:00.000Z"; raises unless ms is an integer (a float with an
 *                 exact integer value is accepted)
 *   parse(s)   -> ms, is_date (boolean) | nil, message; raises unless s is a string */
#ifndef ENG_LUA_TIME_H
#define ENG_LUA_TIME_H

#include <stddef.h>
#include <stdint.h>

/* Longest output of eng_time_format, NUL included ("-292275055-05-16T16:47:04.192Z"). */
#define ENG_TIME_FORMAT_MAX 32

/* Current UTC time in ms. Honours the calling thread's test clock (below). */
int64_t eng_time_now_ms(void);

/* Test clock. The state is thread-local: freezing the clock in one thread does not affect
 * the others. Only tests (and the test harness module of the runtime) call these. */
void eng_time_freeze(int64_t ms);        /* now() returns ms until reset */
void eng_time_advance(int64_t delta_ms); /* moves a frozen clock, or offsets the real one */
void eng_time_reset(void);               /* back to the real clock, offset dropped */

/* Formats ms as "YYYY-MM-DDTHH:MM:SS.mmmZ" (24 chars + NUL) into out. Every int64 value is
 * accepted: years outside 0000-9999 are written in ISO 8601 expanded form with an explicit
 * sign and at least 4 digits ("+10000-01-01T00:00:00.000Z", "-0001-12-31T..."), which
 * eng_time_parse does not accept back. */
void eng_time_format(int64_t ms, char out[ENG_TIME_FORMAT_MAX]);

/* Parses the strict RFC 3339 subset
 *   "YYYY-MM-DD"                                             -> *is_date = 1, 00:00:00Z that day
 *   "YYYY-MM-DD(T|t)HH:MM:SS[.f{1,9}](Z|z|+HH:MM|-HH:MM)"    -> *is_date = 0
 * Years 0000-9999; month 1-12; day valid for the month (Gregorian leap years); hour 0-23;
 * minute 0-59; second 0-59 (no leap second); offset hours 0-23, minutes 0-59; the fraction is
 * truncated to ms; a date-time without offset and anything trailing are errors. `s` need not
 * be NUL-terminated (len bytes are read). out_ms and is_date may be NULL.
 * Returns 0, or ENG_EPARSE with *errmsg (if errmsg is non-NULL) a static message naming what
 * is wrong ("invalid month", "day out of range for month", "trailing characters", ...). */
int eng_time_parse(const char *s, size_t len, int64_t *out_ms, int *is_date, const char **errmsg);

/* Days since 1970-01-01 of a proleptic Gregorian date (month 1-12, day 1-31 unchecked). */
int64_t eng_time_days_from_civil(int64_t y, int m, int d);

#endif
