/* fuzz_netaddr.c - libFuzzer target for engine/netaddr.c (plain C): the --real-ip-from list and
 * the X-Forwarded-For walk. The input is a list, a newline, then header values split at NUL bytes.
 * Properties: never crashes or reads past a value's length; a refused list is empty and says why;
 * the walk's client is the peer or an address that parses back, as formatted, to itself. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "netaddr.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  const char *nl = memchr(data, '\n', size);
  size_t list_len = nl ? (size_t)(nl - (const char *)data) : size;
  char *list = malloc(list_len + 1);
  if (!list)
    return 0;
  memcpy(list, data, list_len);
  list[list_len] = '\0';
  eng_netaddr_list l;
  char *err = NULL;
  if (eng_netaddr_list_parse(&l, list, &err) != 0) {
    if (l.n != 0 || err == NULL)
      abort();
    free(err);
    memset(&l, 0, sizeof l);
  }
  free(list);
  /* The values, each in a private allocation so ASan catches a read past its length. */
  const char *values[8];
  size_t lens[8];
  int n = 0;
  const char *p = nl ? nl + 1 : (const char *)data + size, *end = (const char *)data + size;
  while (p <= end && n < 8 && nl) {
    const char *z = memchr(p, '\0', (size_t)(end - p));
    size_t len = z ? (size_t)(z - p) : (size_t)(end - p);
    char *v = malloc(len ? len : 1);
    if (!v)
      break;
    memcpy(v, p, len);
    values[n] = v;
    lens[n++] = len;
    if (!z)
      break;
    p = z + 1;
  }
  eng_netaddr peer, client;
  memset(&peer, 0, sizeof peer);
  peer.bytes[0] = 127;
  peer.bytes[3] = 1;
  client = peer;
  eng_netaddr_forwarded(&l, values, lens, n, &client);
  if (memcmp(&client, &peer, sizeof client) != 0) {
    char out[ENG_NETADDR_PEER_MAX], ip[ENG_NETADDR_PEER_MAX];
    eng_netaddr_format(&client, 0, out, sizeof out);
    /* "ip:0" or "[ip]:0" back to the address */
    size_t ol = strlen(out);
    if (ol < 3 || strcmp(out + ol - 2, ":0") != 0)
      abort();
    size_t il = ol - 2;
    const char *s = out;
    if (out[0] == '[') {
      s++;
      il -= 2;
    }
    memcpy(ip, s, il);
    eng_netaddr again;
    if (eng_netaddr_parse(ip, il, &again) != 0 || memcmp(&again, &client, sizeof again) != 0)
      abort();
  }
  for (int i = 0; i < n; i++)
    free((void *)values[i]);
  return 0;
}
