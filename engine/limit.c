/* limit.c - token buckets and fixed-window counters shared by the workers (see limit.h).
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

enum { KIND_BUCKET = 1, KIND_WINDOW };

typedef struct entry entry;
struct entry {
  entry *chain;         /* next in the hash slot */
  entry *older, *newer; /* LRU order */
  uint32_t hash;
  int kind;                /* KIND_*: a key used the other way starts afresh */
  double tokens;           /* bucket: tokens held at last_ms */
  int64_t last_ms;         /* bucket: last refill; window: last hit */
  int64_t start_ms, count; /* window: its start and its hits */
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

/* Finds key's entry in sh (locked by the caller), adding a new one of that kind when it is
 * missing and create is set. A new entry is allocated with the lock released (the only
 * allocation), so the lock is dropped and taken again then. NULL when missing and not created,
 * or on no memory (*nomem set). Returns with the lock held either way. */
static entry *lookup(shard *sh, uint32_t h, const char *key, size_t key_len, int create, int *nomem) {
  entry **p = find(sh, h, key, key_len);
  if (*p != NULL || !create)
    return *p;
  pthread_mutex_unlock(&sh->lock);
  entry *fresh = malloc(sizeof *fresh + key_len);
  pthread_mutex_lock(&sh->lock);
  if (fresh == NULL) {
    *nomem = 1;
    return NULL;
  }
  memcpy(fresh->key, key, key_len);
  fresh->key_len = key_len;
  fresh->hash = h;
  fresh->kind = 0;               /* the caller sees a kind it did not ask for and sets the entry up */
  p = find(sh, h, key, key_len); /* another thread may have added it meanwhile */
  if (*p != NULL) {
    free(fresh); /* free under the lock: rare (a race), and free does not wait on us */
    return *p;
  }
  if (sh->count == SHARD_KEYS) {
    drop(sh, sh->oldest);
    p = find(sh, h, key, key_len);
  }
  fresh->chain = NULL;
  fresh->older = fresh->newer = NULL;
  *p = fresh;
  sh->count++;
  lru_push(sh, fresh);
  return fresh;
}

static void touch(shard *sh, entry *e) {
  lru_unlink(sh, e);
  lru_push(sh, e);
}

int eng_limit_take(const char *key, size_t key_len, double rate, double burst, double cost, int64_t now_ms,
                   int64_t *retry_ms, double *remaining) {
  if (key_len > ENG_LIMIT_KEY_MAX || !(rate > 0) || !isfinite(rate) || !(burst >= 1) || !isfinite(burst) ||
      !(cost > 0) || cost > burst)
    return ENG_EINVAL;
  uint32_t h = fnv1a(key, key_len);
  shard *sh = shard_of(h);
  int rc, nomem = 0;

  pthread_mutex_lock(&sh->lock);
  entry *e = lookup(sh, h, key, key_len, 1, &nomem);
  if (e == NULL) {
    pthread_mutex_unlock(&sh->lock);
    return ENG_ENOMEM;
  }
  if (e->kind != KIND_BUCKET) { /* new: a bucket starts full */
    e->kind = KIND_BUCKET;
    e->tokens = burst;
    e->last_ms = now_ms;
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
  touch(sh, e);
  pthread_mutex_unlock(&sh->lock);
  return rc;
}

int eng_limit_hit(const char *key, size_t key_len, int64_t window_ms, int64_t add, int64_t now_ms,
                  eng_limit_window *out) {
  if (key_len > ENG_LIMIT_KEY_MAX || window_ms < 1 || add < 0 || add > ENG_LIMIT_HITS_MAX)
    return ENG_EINVAL;
  uint32_t h = fnv1a(key, key_len);
  shard *sh = shard_of(h);
  int nomem = 0, rc = 0;

  pthread_mutex_lock(&sh->lock);
  entry *e = lookup(sh, h, key, key_len, add > 0, &nomem);
  if (e == NULL) {
    pthread_mutex_unlock(&sh->lock);
    return nomem ? ENG_ENOMEM : 0;
  }
  /* A window that is over (or was never one: a new entry, a bucket's key) reads as none. A
   * time before the window's start (a clock set back) counts as within it. */
  int running = e->kind == KIND_WINDOW && now_ms - e->start_ms < window_ms;
  if (add > 0) {
    if (!running) {
      e->kind = KIND_WINDOW;
      e->start_ms = now_ms;
      e->count = 0;
    }
    if (e->count > INT64_MAX - add)
      e->count = INT64_MAX;
    else
      e->count += add;
    if (!running || now_ms > e->last_ms)
      e->last_ms = now_ms;
    running = 1;
    touch(sh, e);
  }
  if (running) {
    out->count = e->count;
    out->start_ms = e->start_ms;
    out->last_ms = e->last_ms;
    rc = 1;
  }
  pthread_mutex_unlock(&sh->lock);
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
