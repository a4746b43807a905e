/* limit.c - token buckets shared by the workers (see limit.h).
 *
 * Each shard is a small hash table (chained, power-of-two buckets, keys hashed with FNV-1a)
 * plus an intrusive least-recently-used list. Its lock is held only for a lookup and a few
 * arithmetic operations: no allocation under the lock except when a key is new. */
#include "limit.h"
#include "error.h"

#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#define SHARD_KEYS (ENG_LIMIT_KEYS / ENG_LIMIT_SHARDS)
#define SHARD_SLOTS (SHARD_KEYS * 2) /* chains stay short at the fill limit */

typedef struct entry entry;
struct entry {
  entry *chain;         /* next in the hash slot */
  entry *older, *newer; /* LRU order */
  uint32_t hash;
  double tokens;
  int64_t last_ms;
  size_t key_len;
  char key[];
};

typedef struct shard {
  pthread_mutex_t lock;
  entry *slots[SHARD_SLOTS];
  entry *oldest, *newest;
  size_t count;
} shard;

static shard shards[ENG_LIMIT_SHARDS];
static pthread_once_t init_once = PTHREAD_ONCE_INIT;

static void init_shards(void) {
  for (int i = 0; i < ENG_LIMIT_SHARDS; i++)
    pthread_mutex_init(&shards[i].lock, NULL);
}

static uint32_t fnv1a(const char *s, size_t n) {
  uint32_t h = 2166136261u;
  for (size_t i = 0; i < n; i++) {
    h ^= (unsigned char)s[i];
    h *= 16777619u;
  }
  return h;
}

static void lru_unlink(shard *sh, entry *e) {
  if (e->older)
    e->older->newer = e->newer;
  else
    sh->oldest = e->newer;
  if (e->newer)
    e->newer->older = e->older;
  else
    sh->newest = e->older;
  e->older = e->newer = NULL;
}

static void lru_push(shard *sh, entry *e) {
  e->older = sh->newest;
  e->newer = NULL;
  if (sh->newest)
    sh->newest->newer = e;
  else
    sh->oldest = e;
  sh->newest = e;
}

/* The slot pointer that points at e's key (or at the NULL that ends its chain). */
static entry **find(shard *sh, uint32_t h, const char *key, size_t n) {
  entry **p = &sh->slots[(h / ENG_LIMIT_SHARDS) % SHARD_SLOTS];
  while (*p && !((*p)->hash == h && (*p)->key_len == n && memcmp((*p)->key, key, n) == 0))
    p = &(*p)->chain;
  return p;
}

static void drop(shard *sh, entry *e) {
  entry **p = find(sh, e->hash, e->key, e->key_len);
  *p = e->chain;
  lru_unlink(sh, e);
  sh->count--;
  free(e);
}

static shard *shard_of(uint32_t h) {
  pthread_once(&init_once, init_shards);
  return &shards[h % ENG_LIMIT_SHARDS];
}

int eng_limit_take(const char *key, size_t key_len, double rate, double burst, double cost, int64_t now_ms,
                   int64_t *retry_ms, double *remaining) {
  if (key_len > ENG_LIMIT_KEY_MAX || !(rate > 0) || !isfinite(rate) || !(burst >= 1) || !isfinite(burst) ||
      !(cost > 0) || cost > burst)
    return ENG_EINVAL;
  uint32_t h = fnv1a(key, key_len);
  shard *sh = shard_of(h);
  entry *fresh = NULL;
  int rc;

  pthread_mutex_lock(&sh->lock);
  entry **p = find(sh, h, key, key_len);
  entry *e = *p;
  if (e == NULL) {
    /* A new bucket starts full. Allocate outside the lock's fast path only here. */
    pthread_mutex_unlock(&sh->lock);
    if ((fresh = malloc(sizeof *fresh + key_len)) == NULL)
      return ENG_ENOMEM;
    memcpy(fresh->key, key, key_len);
    fresh->key_len = key_len;
    fresh->hash = h;
    fresh->tokens = burst;
    fresh->last_ms = now_ms;
    pthread_mutex_lock(&sh->lock);
    p = find(sh, h, key, key_len); /* another thread may have added it meanwhile */
    if ((e = *p) == NULL) {
      if (sh->count == SHARD_KEYS) {
        drop(sh, sh->oldest);
        p = find(sh, h, key, key_len);
      }
      e = fresh;
      fresh = NULL;
      e->chain = NULL;
      *p = e;
      sh->count++;
      lru_push(sh, e);
    }
  }
  if (now_ms > e->last_ms) {
    e->tokens += (double)(now_ms - e->last_ms) * rate / 1000.0;
    e->last_ms = now_ms;
  }
  if (e->tokens > burst) /* also when a caller lowers the burst */
    e->tokens = burst;
  if (e->tokens >= cost) {
    e->tokens -= cost;
    rc = 1;
  } else {
    if (retry_ms)
      *retry_ms = (int64_t)ceil((cost - e->tokens) * 1000.0 / rate);
    rc = 0;
  }
  if (remaining)
    *remaining = e->tokens;
  lru_unlink(sh, e);
  lru_push(sh, e);
  pthread_mutex_unlock(&sh->lock);
  free(fresh);
  return rc;
}

void eng_limit_reset(const char *key, size_t key_len) {
  uint32_t h = fnv1a(key, key_len);
  shard *sh = shard_of(h);
  pthread_mutex_lock(&sh->lock);
  entry *e = *find(sh, h, key, key_len);
  if (e)
    drop(sh, e);
  pthread_mutex_unlock(&sh->lock);
}

size_t eng_limit_count(void) {
  size_t n = 0;
  pthread_once(&init_once, init_shards);
  for (int i = 0; i < ENG_LIMIT_SHARDS; i++) {
    pthread_mutex_lock(&shards[i].lock);
    n += shards[i].count;
    pthread_mutex_unlock(&shards[i].lock);
  }
  return n;
}

void eng_limit_clear(void) {
  pthread_once(&init_once, init_shards);
  for (int i = 0; i < ENG_LIMIT_SHARDS; i++) {
    pthread_mutex_lock(&shards[i].lock);
    while (shards[i].oldest)
      drop(&shards[i], shards[i].oldest);
    pthread_mutex_unlock(&shards[i].lock);
  }
}
