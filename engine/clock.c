/* clock.c - UTC clock with a per-thread test clock, RFC 3339 format and strict parse.
 *
 * Calendar conversion uses the era-based days-from-civil arithmetic (400-year Gregorian
 * cycles of 146097 days) so it needs no timegm/mktime, no TZ and no locale, and works for
 * every int64 millisecond value without overflow. */
#include "clock.h"

#include <time.h>

#include "error.h"

#define MS_PER_SEC INT64_C(1000)
#define MS_PER_DAY INT64_C(86400000)
#define DAYS_PER_ERA INT64_C(146097)      /* 400 Gregorian years */
#define DAYS_0000_TO_1970 INT64_C(719468) /* from 0000-03-01, the start of era 0 */
#define FRACTION_MAX_DIGITS 9

/* The test clock. Thread-local so a test freezing time cannot disturb other workers. */
static _Thread_local int clock_frozen;
static _Thread_local int64_t clock_frozen_ms;
static _Thread_local int64_t clock_offset_ms;

int64_t eng_clock_now_ms(void) {
  if (clock_frozen)
    return clock_frozen_ms;
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (int64_t)ts.tv_sec * MS_PER_SEC + ts.tv_nsec / 1000000 + clock_offset_ms;
}

void eng_clock_freeze(int64_t ms) {
  clock_frozen = 1;
  clock_frozen_ms = ms;
}

void eng_clock_advance(int64_t delta_ms) {
  if (clock_frozen)
    clock_frozen_ms += delta_ms;
  else
    clock_offset_ms += delta_ms;
}

void eng_clock_reset(void) {
  clock_frozen = 0;
  clock_frozen_ms = 0;
  clock_offset_ms = 0;
}

/* Years are counted from March so the leap day is the last day of the (shifted) year. */
int64_t eng_clock_days_from_civil(int64_t y, int m, int d) {
  y -= m <= 2;
  int64_t era = (y >= 0 ? y : y - 399) / 400;
  int64_t yoe = y - era * 400;                                   /* [0, 399] */
  int64_t doy = (153 * (m > 2 ? m - 3 : m + 9) + 2) / 5 + d - 1; /* [0, 365] */
  int64_t doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;           /* [0, 146096] */
  return era * DAYS_PER_ERA + doe - DAYS_0000_TO_1970;
}

static void civil_from_days(int64_t days, int64_t *y, int *m, int *d) {
  days += DAYS_0000_TO_1970;
  int64_t era = (days >= 0 ? days : days - (DAYS_PER_ERA - 1)) / DAYS_PER_ERA;
  int64_t doe = days - era * DAYS_PER_ERA;
  int64_t yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
  int64_t doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
  int64_t mp = (5 * doy + 2) / 153;
  *d = (int)(doy - (153 * mp + 2) / 5 + 1);
  *m = (int)(mp < 10 ? mp + 3 : mp - 9);
  *y = yoe + era * 400 + (*m <= 2);
}

/* Writes v in decimal, zero-padded to at least `width` digits; returns the end. */
static char *put_digits(char *p, uint64_t v, int width) {
  char tmp[20];
  int n = 0;
  do {
    tmp[n++] = (char)('0' + v % 10);
    v /= 10;
  } while (v > 0);
  while (n < width)
    tmp[n++] = '0';
  while (n > 0)
    *p++ = tmp[--n];
  return p;
}

void eng_clock_format(int64_t ms, char out[ENG_CLOCK_FORMAT_MAX]) {
  int64_t days = ms / MS_PER_DAY, rem = ms % MS_PER_DAY;
  if (rem < 0) { /* floor division: pre-1970 times count back from midnight */
    rem += MS_PER_DAY;
    days -= 1;
  }
  int64_t y;
  int m, d;
  civil_from_days(days, &y, &m, &d);
  int hh = (int)(rem / 3600000), mi = (int)(rem / 60000 % 60), ss = (int)(rem / 1000 % 60);
  int frac = (int)(rem % 1000);
  char *p = out;
  if (y < 0 || y > 9999)
    *p++ = y < 0 ? '-' : '+';
  p = put_digits(p, y < 0 ? (uint64_t)-y : (uint64_t)y, 4);
  *p++ = '-';
  p = put_digits(p, (uint64_t)m, 2);
  *p++ = '-';
  p = put_digits(p, (uint64_t)d, 2);
  *p++ = 'T';
  p = put_digits(p, (uint64_t)hh, 2);
  *p++ = ':';
  p = put_digits(p, (uint64_t)mi, 2);
  *p++ = ':';
  p = put_digits(p, (uint64_t)ss, 2);
  *p++ = '.';
  p = put_digits(p, (uint64_t)frac, 3);
  *p++ = 'Z';
  *p = '\0';
}

static int is_leap(int64_t y) { return (y % 4 == 0 && y % 100 != 0) || y % 400 == 0; }

static int days_in_month(int64_t y, int m) {
  static const int days[12] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
  return m == 2 && is_leap(y) ? 29 : days[m - 1];
}

/* Reads exactly n decimal digits at s[*p]; 0 or -1 if fewer are there. */
static int read_digits(const char *s, size_t len, size_t *p, int n, int *out) {
  int v = 0;
  if (len - *p < (size_t)n)
    return -1;
  for (int i = 0; i < n; i++) {
    char c = s[*p + (size_t)i];
    if (c < '0' || c > '9')
      return -1;
    v = v * 10 + (c - '0');
  }
  *p += (size_t)n;
  *out = v;
  return 0;
}

static int expect_char(const char *s, size_t len, size_t *p, char c) {
  if (*p >= len || s[*p] != c)
    return -1;
  (*p)++;
  return 0;
}

#define PARSE_FAIL(msg) \
  do {                  \
    *errmsg = (msg);    \
    return ENG_EPARSE;  \
  } while (0)

static int parse(const char *s, size_t len, int64_t *out_ms, int *is_date, const char **errmsg) {
  size_t p = 0;
  int year = 0, mon = 0, day = 0, hh = 0, mi = 0, ss = 0, off_h = 0, off_m = 0, off_sign = 0, frac_ms = 0;

  if (len == 0)
    PARSE_FAIL("empty string");
  if (read_digits(s, len, &p, 4, &year))
    PARSE_FAIL("invalid year");
  if (expect_char(s, len, &p, '-'))
    PARSE_FAIL("expected '-' after year");
  if (read_digits(s, len, &p, 2, &mon) || mon < 1 || mon > 12)
    PARSE_FAIL("invalid month");
  if (expect_char(s, len, &p, '-'))
    PARSE_FAIL("expected '-' after month");
  if (read_digits(s, len, &p, 2, &day))
    PARSE_FAIL("invalid day");
  if (day < 1 || day > days_in_month(year, mon))
    PARSE_FAIL("day out of range for month");
  int64_t days = eng_clock_days_from_civil(year, mon, day);
  if (p == len) {
    *out_ms = days * MS_PER_DAY;
    *is_date = 1;
    return 0;
  }

  if (s[p] != 'T' && s[p] != 't')
    PARSE_FAIL("expected 'T' after date");
  p++;
  if (read_digits(s, len, &p, 2, &hh) || hh > 23)
    PARSE_FAIL("invalid hour");
  if (expect_char(s, len, &p, ':'))
    PARSE_FAIL("expected ':' after hour");
  if (read_digits(s, len, &p, 2, &mi) || mi > 59)
    PARSE_FAIL("invalid minute");
  if (expect_char(s, len, &p, ':'))
    PARSE_FAIL("expected ':' after minute");
  if (read_digits(s, len, &p, 2, &ss) || ss > 59)
    PARSE_FAIL("invalid second");
  if (p < len && s[p] == '.') {
    int ndigits = 0;
    p++;
    while (p < len && s[p] >= '0' && s[p] <= '9') {
      if (++ndigits > FRACTION_MAX_DIGITS)
        PARSE_FAIL("fraction longer than 9 digits");
      if (ndigits <= 3)
        frac_ms = frac_ms * 10 + (s[p] - '0');
      p++;
    }
    if (ndigits == 0)
      PARSE_FAIL("invalid fraction");
    for (int i = ndigits; i < 3; i++)
      frac_ms *= 10;
  }
  if (p == len)
    PARSE_FAIL("missing UTC offset");
  if (s[p] == 'Z' || s[p] == 'z') {
    p++;
  } else if (s[p] == '+' || s[p] == '-') {
    off_sign = s[p] == '+' ? 1 : -1;
    p++;
    if (read_digits(s, len, &p, 2, &off_h) || off_h > 23 || expect_char(s, len, &p, ':') ||
        read_digits(s, len, &p, 2, &off_m) || off_m > 59)
      PARSE_FAIL("invalid UTC offset");
  } else {
    PARSE_FAIL("invalid UTC offset");
  }
  if (p != len)
    PARSE_FAIL("trailing characters");

  /* Local time minus the offset is UTC: 10:00+05:30 is 04:30Z. */
  int64_t secs = (int64_t)hh * 3600 + mi * 60 + ss - (int64_t)off_sign * (off_h * 3600 + off_m * 60);
  *out_ms = days * MS_PER_DAY + secs * MS_PER_SEC + frac_ms;
  *is_date = 0;
  return 0;
}

int eng_clock_parse(const char *s, size_t len, int64_t *out_ms, int *is_date, const char **errmsg) {
  int64_t ms_dummy;
  int date_dummy;
  const char *msg_dummy;
  return parse(s, len, out_ms ? out_ms : &ms_dummy, is_date ? is_date : &date_dummy, errmsg ? errmsg : &msg_dummy);
}
