/* netaddr.c - IP addresses, trusted blocks and X-Forwarded-For (see netaddr.h). */
#include "netaddr.h"
#include "error.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>

static const unsigned char mapped_prefix[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};

/* One client seen over IPv4 and over a dual-stack IPv6 socket must compare equal. */
static void unmap(eng_netaddr *a) {
  if (a->v6 && memcmp(a->bytes, mapped_prefix, 12) == 0) {
    memmove(a->bytes, a->bytes + 12, 4);
    memset(a->bytes + 4, 0, 12);
    a->v6 = 0;
  }
}

int eng_netaddr_parse(const char *s, size_t n, eng_netaddr *out) {
  char text[ENG_NETADDR_TEXT_MAX + 1];
  if (n == 0 || n > ENG_NETADDR_TEXT_MAX || memchr(s, '\0', n))
    return -1;
  memcpy(text, s, n);
  text[n] = '\0';
  memset(out, 0, sizeof *out);
  /* inet_pton takes only the strict dotted quad for IPv4 (no "010.1", no "1.2.3"). */
  if (inet_pton(AF_INET, text, out->bytes) == 1)
    return 0;
  if (inet_pton(AF_INET6, text, out->bytes) == 1) {
    out->v6 = 1;
    unmap(out);
    return 0;
  }
  return -1;
}

int eng_netaddr_from_sockaddr(const struct sockaddr *sa, eng_netaddr *out) {
  memset(out, 0, sizeof *out);
  if (sa->sa_family == AF_INET) {
    memcpy(out->bytes, &((const struct sockaddr_in *)(const void *)sa)->sin_addr, 4);
    return 0;
  }
  if (sa->sa_family == AF_INET6) {
    memcpy(out->bytes, &((const struct sockaddr_in6 *)(const void *)sa)->sin6_addr, 16);
    out->v6 = 1;
    unmap(out);
    return 0;
  }
  return -1;
}

static int in_block(const eng_netblock *b, const eng_netaddr *a) {
  if (a->v6 != b->base.v6)
    return 0;
  unsigned full = b->bits / 8, rest = b->bits % 8;
  if (memcmp(a->bytes, b->base.bytes, full) != 0)
    return 0;
  if (rest == 0)
    return 1;
  unsigned char mask = (unsigned char)(0xffu << (8 - rest));
  return (a->bytes[full] & mask) == (b->base.bytes[full] & mask);
}

static int is_space(char ch) { return ch == ' ' || ch == '\t'; }

/* One entry of the list (s, n bytes, trimmed): "address" or "address/bits". */
static int parse_block(const char *s, size_t n, eng_netblock *out) {
  const char *slash = memchr(s, '/', n);
  size_t alen = slash ? (size_t)(slash - s) : n;
  char text[ENG_NETADDR_TEXT_MAX + 1];
  /* The address as written: a mapped block's prefix counts the 96 bits before the IPv4 part. */
  if (alen == 0 || alen > ENG_NETADDR_TEXT_MAX)
    return -1;
  memcpy(text, s, alen);
  text[alen] = '\0';
  memset(out, 0, sizeof *out);
  unsigned max;
  if (inet_pton(AF_INET, text, out->base.bytes) == 1) {
    max = 32;
  } else if (inet_pton(AF_INET6, text, out->base.bytes) == 1) {
    out->base.v6 = 1;
    max = 128;
  } else {
    return -1;
  }
  unsigned bits = max;
  if (slash) {
    const char *d = slash + 1, *end = s + n;
    if (d == end || end - d > 3)
      return -1;
    bits = 0;
    for (; d < end; d++) {
      if (*d < '0' || *d > '9')
        return -1;
      bits = bits * 10 + (unsigned)(*d - '0');
    }
    if (bits > max)
      return -1;
  }
  out->bits = bits;
  /* Bits past the prefix say the operator meant something else than the block they wrote. */
  for (unsigned i = bits; i < max; i++)
    if (out->base.bytes[i / 8] & (0x80u >> (i % 8)))
      return -2;
  if (out->base.v6 && bits >= 96 && memcmp(out->base.bytes, mapped_prefix, 12) == 0) {
    unmap(&out->base);
    out->bits = bits - 96;
  }
  return 0;
}

int eng_netaddr_list_parse(eng_netaddr_list *out, const char *text, char **err) {
  out->n = 0;
  const char *p = text;
  while (*p && is_space(*p))
    p++;
  if (*p == '\0')
    return 0;
  for (;;) {
    const char *end = strchr(p, ',');
    if (end == NULL)
      end = p + strlen(p);
    const char *a = p, *b = end;
    while (a < b && is_space(*a))
      a++;
    while (b > a && is_space(b[-1]))
      b--;
    if (out->n == ENG_NETADDR_LIST_MAX) {
      out->n = 0;
      return eng_errorf(err, ENG_ECONFIG, "more than %d addresses or blocks", ENG_NETADDR_LIST_MAX);
    }
    int bad = a == b ? -1 : parse_block(a, (size_t)(b - a), &out->b[out->n]);
    if (bad) {
      out->n = 0;
      if (a == b)
        return eng_errorf(err, ENG_ECONFIG, "an empty entry in the list");
      if (bad == -2)
        return eng_errorf(err, ENG_ECONFIG, "'%.*s' has address bits set past its prefix", (int)(b - a), a);
      return eng_errorf(err, ENG_ECONFIG, "'%.*s' is not an address or CIDR block", (int)(b - a), a);
    }
    out->n++;
    if (*end == '\0')
      return 0;
    p = end + 1;
  }
}

int eng_netaddr_list_has(const eng_netaddr_list *l, const eng_netaddr *a) {
  for (int i = 0; i < l->n; i++)
    if (in_block(&l->b[i], a))
      return 1;
  return 0;
}

void eng_netaddr_forwarded(const eng_netaddr_list *l, const char *const *values, const size_t *lens, int nvalues,
                           eng_netaddr *client) {
  for (int v = nvalues - 1; v >= 0; v--) {
    const char *s = values[v];
    size_t end = lens[v];
    while (end > 0) {
      size_t start = end;
      while (start > 0 && s[start - 1] != ',')
        start--;
      size_t a = start, b = end;
      while (a < b && is_space(s[a]))
        a++;
      while (b > a && is_space(s[b - 1]))
        b--;
      end = start > 0 ? start - 1 : 0;
      if (a == b)
        continue;
      eng_netaddr addr;
      if (eng_netaddr_parse(s + a, b - a, &addr) != 0)
        return;
      *client = addr;
      if (!eng_netaddr_list_has(l, &addr))
        return;
    }
  }
}

void eng_netaddr_format(const eng_netaddr *a, int port, char *out, size_t size) {
  char ip[INET6_ADDRSTRLEN] = "?";
  if (inet_ntop(a->v6 ? AF_INET6 : AF_INET, a->bytes, ip, sizeof ip) == NULL)
    snprintf(ip, sizeof ip, "?");
  snprintf(out, size, a->v6 ? "[%s]:%d" : "%s:%d", ip, port);
}
