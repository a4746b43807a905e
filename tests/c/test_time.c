/* test_time.c - engine/clock.c: formatting, strict RFC 3339 parsing and the test clock.
 * The engine.time Lua module over it is tested in tests/spec/engine_time_spec.lua. */
#include <stdint.h>
#include <string.h>

#include "check.h"
#include "clock.h"
#include "error.h"

static const char *fmt(int64_t ms) {
  static char out[ENG_CLOCK_FORMAT_MAX];
  memset(out, 'X', sizeof out);
  eng_clock_format(ms, out);
  return out;
}

static int parse_ok(const char *s, int64_t want_ms, int want_date) {
  int64_t ms = -12345;
  int is_date = -1;
  const char *msg = NULL;
  int rc = eng_clock_parse(s, strlen(s), &ms, &is_date, &msg);
  if (rc != 0 || ms != want_ms || is_date != want_date) {
    fprintf(stderr, "parse(\"%s\"): rc=%d ms=%lld is_date=%d msg=%s\n", s, rc, (long long)ms, is_date, msg ? msg : "-");
    return 0;
  }
  return 1;
}

/* Returns the error message, or "(accepted)". */
static const char *parse_err(const char *s) {
  int64_t ms = 0;
  int is_date = 0;
  const char *msg = NULL;
  int rc = eng_clock_parse(s, strlen(s), &ms, &is_date, &msg);
  if (rc == 0)
    return "(accepted)";
  return rc == ENG_EPARSE && msg ? msg : "(bad rc or no message)";
}

static void test_format(void) {
  CHECK_STR(fmt(0), "1970-01-01T00:00:00.000Z");
  CHECK_STR(fmt(1), "1970-01-01T00:00:00.001Z");
  CHECK_STR(fmt(-1), "1969-12-31T23:59:59.999Z");
  CHECK_STR(fmt(1718445600000), "2024-06-15T10:00:00.000Z");
  CHECK_STR(fmt(1709164800000 + 86399999), "2024-02-29T23:59:59.999Z");
  CHECK_STR(fmt(-14182940000), "1969-07-20T20:17:40.000Z");
  CHECK_STR(fmt(-2203891200000 - 1), "1900-02-28T23:59:59.999Z"); /* 1900 has no Feb 29 */
  CHECK_STR(fmt(-62167219200000), "0000-01-01T00:00:00.000Z");
  CHECK_STR(fmt(253402300799999), "9999-12-31T23:59:59.999Z");
  /* Outside 0000-9999: ISO 8601 expanded years. */
  CHECK_STR(fmt(-62167219200000 - 1), "-0001-12-31T23:59:59.999Z");
  CHECK_STR(fmt(253402300800000), "+10000-01-01T00:00:00.000Z");
  CHECK_STR(fmt(INT64_MAX), "+292278994-08-17T07:12:55.807Z");
  CHECK_STR(fmt(INT64_MIN), "-292275055-05-16T16:47:04.192Z");
  CHECK(strlen(fmt(INT64_MIN)) < ENG_CLOCK_FORMAT_MAX);
}

static void test_days_from_civil(void) {
  CHECK_INT(eng_clock_days_from_civil(1970, 1, 1), 0);
  CHECK_INT(eng_clock_days_from_civil(2000, 3, 1), 11017);
  CHECK_INT(eng_clock_days_from_civil(1969, 12, 31), -1);
  CHECK_INT(eng_clock_days_from_civil(0, 1, 1), -719528);
}

static void test_parse_valid(void) {
  CHECK(parse_ok("2024-06-15T10:00:00.000Z", 1718445600000, 0));
  CHECK(parse_ok("2024-06-15T10:00:00Z", 1718445600000, 0));
  CHECK(parse_ok("2024-06-15t10:00:00z", 1718445600000, 0));
  CHECK(parse_ok("2024-06-15T10:00:00+00:00", 1718445600000, 0));
  CHECK(parse_ok("2024-06-15T10:00:00-00:00", 1718445600000, 0));
  CHECK(parse_ok("2024-06-15T10:00:00+05:30", 1718425800000, 0));
  CHECK(parse_ok("2024-06-15T10:00:00-08:00", 1718474400000, 0));
  CHECK(parse_ok("2024-06-15T10:00:00.5Z", 1718445600500, 0));
  CHECK(parse_ok("2024-06-15T10:00:00.05Z", 1718445600050, 0));
  CHECK(parse_ok("2024-06-15T10:00:00.123456789Z", 1718445600123, 0));
  CHECK(parse_ok("2024-06-15T10:00:00.999999999Z", 1718445600999, 0));
  CHECK(parse_ok("2024-06-15", 1718409600000, 1));
  CHECK(parse_ok("2024-02-29", 1709164800000, 1));
  CHECK(parse_ok("2000-02-29", 951782400000, 1));
  CHECK(parse_ok("1970-01-01", 0, 1));
  CHECK(parse_ok("1969-12-31T23:59:59.999Z", -1, 0));
  CHECK(parse_ok("1969-07-20T20:17:40Z", -14182940000, 0));
  CHECK(parse_ok("0000-01-01T00:00:00Z", -62167219200000, 0));
  CHECK(parse_ok("9999-12-31T23:59:59.999Z", 253402300799999, 0));
  CHECK(parse_ok("2024-12-31T23:59:59+23:59", 1735689599000 - (23 * 3600 + 59 * 60) * 1000LL, 0));
  /* The length argument is honoured: no NUL needed, bytes past len ignored. */
  int64_t ms = 0;
  int is_date = 0;
  const char *msg = NULL;
  CHECK_INT(eng_clock_parse("2024-06-15garbage", 10, &ms, &is_date, &msg), 0);
  CHECK_INT(ms, 1718409600000);
  CHECK_INT(is_date, 1);
  /* NULL outputs are allowed. */
  CHECK_INT(eng_clock_parse("2024-06-15", 10, NULL, NULL, NULL), 0);
  CHECK_INT(eng_clock_parse("2024-06-1", 9, NULL, NULL, NULL), ENG_EPARSE);
}

static void test_parse_invalid(void) {
  CHECK_STR(parse_err(""), "empty string");
  CHECK_STR(parse_err("2023-02-29"), "day out of range for month");
  CHECK_STR(parse_err("1900-02-29"), "day out of range for month");
  CHECK_STR(parse_err("2024-02-30"), "day out of range for month");
  CHECK_STR(parse_err("2024-04-31"), "day out of range for month");
  CHECK_STR(parse_err("2024-01-00"), "day out of range for month");
  CHECK_STR(parse_err("2024-13-01"), "invalid month");
  CHECK_STR(parse_err("2024-00-10"), "invalid month");
  CHECK_STR(parse_err("2024-1-10"), "invalid month");
  CHECK_STR(parse_err("2024-01-1"), "invalid day");
  CHECK_STR(parse_err("24-01-01"), "invalid year");
  CHECK_STR(parse_err("+2024-01-01"), "invalid year");
  CHECK_STR(parse_err("20240-01-01"), "expected '-' after year");
  CHECK_STR(parse_err("2024/01/01"), "expected '-' after year");
  CHECK_STR(parse_err("2024-01/01"), "expected '-' after month");
  CHECK_STR(parse_err("2024-06-15T24:00:00Z"), "invalid hour");
  CHECK_STR(parse_err("2024-06-15T10:60:00Z"), "invalid minute");
  CHECK_STR(parse_err("2024-06-15T10:00:60Z"), "invalid second");
  CHECK_STR(parse_err("2024-06-15T1:00:00Z"), "invalid hour");
  CHECK_STR(parse_err("2024-06-15T10:00Z"), "expected ':' after minute");
  CHECK_STR(parse_err("2024-06-15T10-00:00Z"), "expected ':' after hour");
  CHECK_STR(parse_err("2024-06-15 10:00:00Z"), "expected 'T' after date");
  CHECK_STR(parse_err("2024-06-15T10:00:00"), "missing UTC offset");
  CHECK_STR(parse_err("2024-06-15T10:00:00.123"), "missing UTC offset");
  CHECK_STR(parse_err("2024-06-15T10:00:00.Z"), "invalid fraction");
  CHECK_STR(parse_err("2024-06-15T10:00:00.1234567890Z"), "fraction longer than 9 digits");
  CHECK_STR(parse_err("2024-06-15T10:00:00+24:00"), "invalid UTC offset");
  CHECK_STR(parse_err("2024-06-15T10:00:00+05:60"), "invalid UTC offset");
  CHECK_STR(parse_err("2024-06-15T10:00:00+0530"), "invalid UTC offset");
  CHECK_STR(parse_err("2024-06-15T10:00:00+05"), "invalid UTC offset");
  CHECK_STR(parse_err("2024-06-15T10:00:00UTC"), "invalid UTC offset");
  CHECK_STR(parse_err("2024-06-15T10:00:00Zjunk"), "trailing characters");
  CHECK_STR(parse_err("2024-06-15T10:00:00+05:30 "), "trailing characters");
  CHECK_STR(parse_err("2024-06-15T"), "invalid hour");
  CHECK_STR(parse_err("2024-06-15 "), "expected 'T' after date");
  CHECK_STR(parse_err(" 2024-06-15"), "invalid year");
  /* An embedded NUL is a character like any other. */
  const char *msg = NULL;
  CHECK_INT(eng_clock_parse("2024-06-15\0", 11, NULL, NULL, &msg), ENG_EPARSE);
  CHECK_STR(msg, "expected 'T' after date");
}

static void test_round_trip(void) {
  static const int64_t values[] = {0, -1, 1718445600000, 951782400123, -62167219200000, 253402300799999, -14182940001};
  for (size_t i = 0; i < sizeof values / sizeof values[0]; i++) {
    const char *s = fmt(values[i]);
    int64_t ms = 0;
    int is_date = 1;
    CHECK_INT(eng_clock_parse(s, strlen(s), &ms, &is_date, NULL), 0);
    CHECK_INT(ms, values[i]);
    CHECK_INT(is_date, 0);
  }
}

static void test_clock(void) {
  int64_t before = eng_clock_now_ms();
  CHECK(before > 1700000000000); /* after 2023-11 */
  eng_clock_freeze(1718445600000);
  CHECK_INT(eng_clock_now_ms(), 1718445600000);
  CHECK_INT(eng_clock_now_ms(), 1718445600000);
  eng_clock_advance(1500);
  CHECK_INT(eng_clock_now_ms(), 1718445601500);
  eng_clock_advance(-2000);
  CHECK_INT(eng_clock_now_ms(), 1718445599500);
  eng_clock_reset();
  int64_t real = eng_clock_now_ms();
  CHECK(real >= before && real < before + 60000);
  eng_clock_advance(3600000); /* offset on the real clock */
  int64_t shifted = eng_clock_now_ms();
  CHECK(shifted >= real + 3600000 && shifted < real + 3600000 + 60000);
  eng_clock_reset();
  CHECK(eng_clock_now_ms() < real + 60000);
}

int main(void) {
  test_format();
  test_days_from_civil();
  test_parse_valid();
  test_parse_invalid();
  test_round_trip();
  test_clock();
  return check_summary("test_time");
}
