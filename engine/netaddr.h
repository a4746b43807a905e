/* netaddr.h - IP addresses as bytes, lists of trusted blocks, and the client's address behind
 * trusted proxies (--real-ip-from).
 *
 * Behind a load balancer the TCP peer is the balancer. When that peer is in the operator's
 * list of trusted proxies, the client is read from X-Forwarded-For, the way nginx's realip
 * module does it: from the right, past the addresses the trusted proxies appended, to the first
 * one no trusted proxy vouches for. Everything is compared as bytes (inet_pton), never as text,
 * so "::ffff:10.0.0.1", "10.0.0.1" and "0:0::ffff:a00:1" are one address. An IPv4 address seen
 * as IPv4-mapped IPv6 (a dual-stack socket) is stored as IPv4. Nothing here allocates. */
#ifndef ENG_NETADDR_H
#define ENG_NETADDR_H

#include <stddef.h>

struct sockaddr;

#define ENG_NETADDR_LIST_MAX 128 /* entries of --real-ip-from */
#define ENG_NETADDR_TEXT_MAX 46  /* an address's text, as INET6_ADDRSTRLEN */
/* "[" address "]:" port and the NUL: what eng_netaddr_format writes at most. */
#define ENG_NETADDR_PEER_MAX (ENG_NETADDR_TEXT_MAX + 9)

typedef struct eng_netaddr {
  int v6; /* 0: IPv4 in bytes[0..4), 1: IPv6 in bytes[0..16) */
  unsigned char bytes[16];
} eng_netaddr;

/* An address block: the addresses whose first `bits` bits are those of base. */
typedef struct eng_netblock {
  eng_netaddr base;
  unsigned bits;
} eng_netblock;

typedef struct eng_netaddr_list {
  int n; /* 0: empty (nothing trusted) */
  eng_netblock b[ENG_NETADDR_LIST_MAX];
} eng_netaddr_list;

/* Parses one bare address (s, n bytes; no brackets, port, zone or spaces). Returns 0, or -1
 * when it is not one. An IPv4-mapped IPv6 address becomes the IPv4 address. */
int eng_netaddr_parse(const char *s, size_t n, eng_netaddr *out);

/* The address of sa (AF_INET or AF_INET6; mapped IPv4 becomes IPv4). -1 for another family. */
int eng_netaddr_from_sockaddr(const struct sockaddr *sa, eng_netaddr *out);

/* Parses a comma-separated list of addresses and CIDR blocks ("10.0.0.0/8, ::1, 2001:db8::/32"):
 * spaces around entries are allowed, a bare address is a block of one. An entry that is not an
 * address, a prefix longer than the family's, a block with bits set past its prefix
 * ("10.0.0.1/8"), an empty entry or more than ENG_NETADDR_LIST_MAX entries: ENG_ECONFIG with a
 * malloc'd *err naming the entry; out is then empty. Empty or blank text: an empty list, 0.
 * An IPv4-mapped block of /96 or longer ("::ffff:10.0.0.0/104") is the IPv4 block. */
int eng_netaddr_list_parse(eng_netaddr_list *out, const char *text, char **err);

/* 1 when a is in one of l's blocks, else 0. */
int eng_netaddr_list_has(const eng_netaddr_list *l, const eng_netaddr *a);

/* The client behind the trusted peer *client (in l), from the X-Forwarded-For field values
 * (nvalues of them, in the order the headers came; lens[i] bytes each; read as one
 * comma-separated list). Walks the entries from the right: a trusted one becomes *client and the
 * walk goes on, the first untrusted one becomes *client and ends it, and a malformed one ends it
 * with *client the last trusted address seen. Empty entries are skipped. */
void eng_netaddr_forwarded(const eng_netaddr_list *l, const char *const *values, const size_t *lens, int nvalues,
                           eng_netaddr *client);

/* Writes "ip:port" (IPv6 as "[ip]:port"), the form of req.peer, into out (size bytes, at least
 * ENG_NETADDR_PEER_MAX to hold any address). */
void eng_netaddr_format(const eng_netaddr *a, int port, char *out, size_t size);

#endif
