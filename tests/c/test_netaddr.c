/* test_netaddr.c - addresses compared as bytes, the --real-ip-from list (CIDR edges, IPv4-mapped
 * IPv6, garbage refused by name) and the X-Forwarded-For walk from the right. */
#include "check.h"
#include "error.h"
#include "netaddr.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

static eng_netaddr A(const char *s) {
  eng_netaddr a;
  if (eng_netaddr_parse(s, strlen(s), &a) != 0) {
    fprintf(stderr, "test address '%s' does not parse\n", s);
    abort();
  }
  return a;
}

/* 1 when text parses and a is in it, 0 when it parses and a is not, -1 when text is refused. */
static int has(const char *text, const char *a) {
  eng_netaddr_list l;
  char *err = NULL;
  if (eng_netaddr_list_parse(&l, text, &err) != 0) {
    free(err);
    return -1;
  }
  eng_netaddr x = A(a);
  return eng_netaddr_list_has(&l, &x);
}

/* The error text for a refused list (the caller frees), or NULL when it parsed. */
static char *refusal(const char *text) {
  eng_netaddr_list l;
  char *err = NULL;
  int rc = eng_netaddr_list_parse(&l, text, &err);
  if (rc == 0)
    return NULL;
  CHECK_INT(rc, ENG_ECONFIG);
  CHECK_INT(l.n, 0);
  return err;
}

static void test_addresses_are_compared_as_bytes(void) {
  eng_netaddr a = A("10.0.0.1"), b = A("::ffff:10.0.0.1"), c = A("0:0::ffff:a00:1");
  CHECK(memcmp(&a, &b, sizeof a) == 0);
  CHECK(memcmp(&a, &c, sizeof a) == 0);
  CHECK_INT(b.v6, 0);
  eng_netaddr d = A("2001:DB8::1"), e = A("2001:db8:0:0::1");
  CHECK(memcmp(&d, &e, sizeof d) == 0);
  CHECK_INT(d.v6, 1);
  eng_netaddr x;
  const char *bad[] = {"",           "1.2.3", "1.2.3.4.5",    "256.1.1.1", "01.2.3.4", " 1.2.3.4",
                       "1.2.3.4:80", "[::1]", "fe80::1%eth0", "::1::2",    "unknown",  "1.2.3.4/32"};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
    CHECK_INT(eng_netaddr_parse(bad[i], strlen(bad[i]), &x), -1);
  CHECK_INT(eng_netaddr_parse("1.2.3.4\0", 8, &x), -1); /* a NUL inside the bytes */
  char longest[64];
  memset(longest, '1', sizeof longest);
  CHECK_INT(eng_netaddr_parse(longest, sizeof longest, &x), -1);
}

static void test_sockaddr_mapped_ipv4_is_ipv4(void) {
  struct sockaddr_in6 s6 = {.sin6_family = AF_INET6};
  inet_pton(AF_INET6, "::ffff:127.0.0.1", &s6.sin6_addr);
  eng_netaddr a, want = A("127.0.0.1");
  CHECK_INT(eng_netaddr_from_sockaddr((struct sockaddr *)&s6, &a), 0);
  CHECK(memcmp(&a, &want, sizeof a) == 0);
  struct sockaddr_in s4 = {.sin_family = AF_INET};
  inet_pton(AF_INET, "192.0.2.9", &s4.sin_addr);
  want = A("192.0.2.9");
  CHECK_INT(eng_netaddr_from_sockaddr((struct sockaddr *)&s4, &a), 0);
  CHECK(memcmp(&a, &want, sizeof a) == 0);
  struct sockaddr other = {.sa_family = AF_UNIX};
  CHECK_INT(eng_netaddr_from_sockaddr(&other, &a), -1);
}

static void test_cidr_edges(void) {
  CHECK_INT(has("10.0.0.0/8", "10.0.0.0"), 1);
  CHECK_INT(has("10.0.0.0/8", "10.255.255.255"), 1);
  CHECK_INT(has("10.0.0.0/8", "11.0.0.0"), 0);
  CHECK_INT(has("10.0.0.0/8", "9.255.255.255"), 0);
  CHECK_INT(has("192.168.1.128/25", "192.168.1.128"), 1);
  CHECK_INT(has("192.168.1.128/25", "192.168.1.255"), 1);
  CHECK_INT(has("192.168.1.128/25", "192.168.1.127"), 0);
  CHECK_INT(has("172.16.0.0/12", "172.31.255.255"), 1);
  CHECK_INT(has("172.16.0.0/12", "172.32.0.0"), 0);
  CHECK_INT(has("0.0.0.0/0", "203.0.113.9"), 1);
  CHECK_INT(has("0.0.0.0/0", "2001:db8::1"), 0); /* a family matches only itself */
  CHECK_INT(has("127.0.0.1", "127.0.0.1"), 1);
  CHECK_INT(has("127.0.0.1", "127.0.0.2"), 0);
  CHECK_INT(has("127.0.0.1/32", "127.0.0.1"), 1);
  CHECK_INT(has("2001:db8::/32", "2001:db8:ffff:ffff:ffff:ffff:ffff:ffff"), 1);
  CHECK_INT(has("2001:db8::/32", "2001:db9::"), 0);
  CHECK_INT(has("2001:db8::/127", "2001:db8::1"), 1);
  CHECK_INT(has("2001:db8::/127", "2001:db8::2"), 0);
  CHECK_INT(has("::1", "::1"), 1);
  CHECK_INT(has("::/0", "::2"), 1);
  CHECK_INT(has("::/0", "10.0.0.1"), 0);
  /* several entries, spaces around them */
  CHECK_INT(has(" 10.0.0.0/8 ,\t::1, 192.0.2.7 ", "192.0.2.7"), 1);
  CHECK_INT(has(" 10.0.0.0/8 ,\t::1, 192.0.2.7 ", "::1"), 1);
  CHECK_INT(has(" 10.0.0.0/8 ,\t::1, 192.0.2.7 ", "192.0.2.8"), 0);
  CHECK_INT(has("", "10.0.0.1"), 0);
  CHECK_INT(has("  ", "10.0.0.1"), 0);
}

static void test_mapped_blocks_are_ipv4_blocks(void) {
  CHECK_INT(has("::ffff:10.0.0.0/104", "10.1.2.3"), 1);
  CHECK_INT(has("::ffff:10.0.0.0/104", "11.1.2.3"), 0);
  CHECK_INT(has("::ffff:127.0.0.1", "127.0.0.1"), 1);
  CHECK_INT(has("127.0.0.1", "::ffff:127.0.0.1"), 1);
  CHECK_INT(has("::ffff:0.0.0.0/96", "198.51.100.1"), 1);
}

static void test_garbage_is_refused_by_name(void) {
  char *e = refusal("10.0.0.0/8, nginx.local");
  CHECK_STR(e, "'nginx.local' is not an address or CIDR block");
  free(e);
  e = refusal("10.0.0.1/8");
  CHECK_STR(e, "'10.0.0.1/8' has address bits set past its prefix");
  free(e);
  e = refusal("10.0.0.0/33");
  CHECK_STR(e, "'10.0.0.0/33' is not an address or CIDR block");
  free(e);
  e = refusal("::1,,10.0.0.1");
  CHECK_STR(e, "an empty entry in the list");
  free(e);
  const char *bad[] = {"10.0.0.0/",
                       "10.0.0.0/-1",
                       "10.0.0.0/+8",
                       "10.0.0.0/08x",
                       "/8",
                       "2001:db8::/129",
                       "2001:db8::/0128",
                       "10.0.0.0/8/8",
                       "10.0.0.0 /8",
                       "1.2.3.4:80",
                       "[::1]",
                       "10.0.0.0,",
                       "*"};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    e = refusal(bad[i]);
    CHECK(e != NULL);
    if (e == NULL)
      fprintf(stderr, "accepted: '%s'\n", bad[i]);
    free(e);
  }
  char many[8192] = "";
  for (int i = 0; i <= ENG_NETADDR_LIST_MAX; i++)
    snprintf(many + strlen(many), sizeof many - strlen(many), "%s10.0.%d.%d", i ? "," : "", i / 256, i % 256);
  e = refusal(many);
  CHECK_STR(e, "more than 128 addresses or blocks");
  free(e);
}

/* The client the walk picks for one X-Forwarded-For value behind peer, with trusted proxies l. */
static const char *walk(const char *list, const char *peer, const char *xff) {
  static char out[ENG_NETADDR_PEER_MAX];
  eng_netaddr_list l;
  char *err = NULL;
  if (eng_netaddr_list_parse(&l, list, &err) != 0) {
    free(err);
    return "(bad list)";
  }
  eng_netaddr c = A(peer);
  size_t len = strlen(xff);
  eng_netaddr_forwarded(&l, &xff, &len, 1, &c);
  eng_netaddr_format(&c, 0, out, sizeof out);
  return out;
}

static void test_forwarded_walks_from_the_right(void) {
  CHECK_STR(walk("127.0.0.1", "127.0.0.1", "203.0.113.9"), "203.0.113.9:0");
  /* the left-most entry is whatever the client sent: only the right-most untrusted one counts */
  CHECK_STR(walk("127.0.0.1", "127.0.0.1", "1.1.1.1, 203.0.113.9"), "203.0.113.9:0");
  /* trusted proxies in the chain are passed */
  CHECK_STR(walk("127.0.0.1, 10.0.0.0/8", "127.0.0.1", "1.1.1.1,203.0.113.9, 10.0.0.5 ,10.1.1.1"), "203.0.113.9:0");
  /* all trusted: the left-most (the last trusted address seen) */
  CHECK_STR(walk("127.0.0.1, 10.0.0.0/8", "127.0.0.1", "10.0.0.5, 10.0.0.6"), "10.0.0.5:0");
  /* a malformed entry stops the walk at the last trusted address */
  CHECK_STR(walk("127.0.0.1, 10.0.0.0/8", "127.0.0.1", "203.0.113.9, garbage, 10.0.0.7"), "10.0.0.7:0");
  CHECK_STR(walk("127.0.0.1", "127.0.0.1", "203.0.113.9:4711"), "127.0.0.1:0");
  CHECK_STR(walk("127.0.0.1", "127.0.0.1", "unknown"), "127.0.0.1:0");
  /* empty entries and an empty value are skipped */
  CHECK_STR(walk("127.0.0.1", "127.0.0.1", ""), "127.0.0.1:0");
  CHECK_STR(walk("127.0.0.1", "127.0.0.1", " , 203.0.113.9 ,, "), "203.0.113.9:0");
  CHECK_STR(walk("127.0.0.1", "127.0.0.1", ",203.0.113.9"), "203.0.113.9:0");
  /* IPv6, written canonically whatever the header's case; mapped IPv4 as IPv4 */
  CHECK_STR(walk("::1", "::1", "2001:DB8:0::9"), "[2001:db8::9]:0");
  CHECK_STR(walk("127.0.0.1", "127.0.0.1", "::ffff:192.0.2.7"), "192.0.2.7:0");
  CHECK_STR(walk("127.0.0.1", "127.0.0.1", "::ffff:127.0.0.1, 198.51.100.1"), "198.51.100.1:0");

  /* several header fields: one list, in the order they came */
  eng_netaddr_list l;
  char *err = NULL;
  CHECK_INT(eng_netaddr_list_parse(&l, "127.0.0.1,10.0.0.0/8", &err), 0);
  const char *values[] = {"1.1.1.1, 198.51.100.4", "10.0.0.9", ""};
  size_t lens[] = {strlen(values[0]), strlen(values[1]), 0};
  eng_netaddr c = A("127.0.0.1"), want = A("198.51.100.4");
  eng_netaddr_forwarded(&l, values, lens, 3, &c);
  CHECK(memcmp(&c, &want, sizeof c) == 0);
  /* a value is read by length: bytes past it do not count */
  const char *cut = "203.0.113.9, 198.51.100.4";
  size_t cut_len = 11;
  c = A("127.0.0.1");
  want = A("203.0.113.9");
  eng_netaddr_forwarded(&l, &cut, &cut_len, 1, &c);
  CHECK(memcmp(&c, &want, sizeof c) == 0);
}

static void test_format(void) {
  char out[ENG_NETADDR_PEER_MAX];
  eng_netaddr a = A("ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffe");
  eng_netaddr_format(&a, 65535, out, sizeof out);
  CHECK_STR(out, "[ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffe]:65535");
  a = A("255.255.255.255");
  eng_netaddr_format(&a, 8080, out, sizeof out);
  CHECK_STR(out, "255.255.255.255:8080");
}

int main(void) {
  test_addresses_are_compared_as_bytes();
  test_sockaddr_mapped_ipv4_is_ipv4();
  test_cidr_edges();
  test_mapped_blocks_are_ipv4_blocks();
  test_garbage_is_refused_by_name();
  test_forwarded_walks_from_the_right();
  test_format();
  return check_summary("test_netaddr");
}
