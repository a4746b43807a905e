/* limit.h - token buckets and fixed-window counters by key, shared by every worker of the
 * process (engine.limit).
 *
 * A bucket holds up to `burst` tokens and gains `rate` tokens a second; taking `cost` tokens
 * succeeds when the bucket holds them. A bucket is named by a key of at most
 * ENG_LIMIT_KEY_MAX bytes (the Lua module joins the limit's name and the caller's key). The
 * store is bounded: at most ENG_LIMIT_KEYS buckets, split over ENG_LIMIT_SHARDS shards, each
 * with its own lock and least-recently-used order; a new key in a full shard evicts that
 * shard's least recently used bucket (forgetting a bucket only ever gives a client more
 * tokens, never fewer). The parameters travel with each call, so two workers that agree on a
 * limit's rate and burst share its buckets without registering anything. Thread-safe. */
#ifndef ENG_LIMIT_H
#define ENG_LIMIT_H

#include <stddef.h>
#include <stdint.h>

#define ENG_LIMIT_KEY_MAX 512
#define ENG_LIMIT_SHARDS 16
#define ENG_LIMIT_KEYS (ENG_LIMIT_SHARDS * 8192) /* about 100 bytes each: ~13 MiB when full */

/* Takes cost tokens (> 0, at most burst) from the bucket of key at now_ms (a monotonic or
 * wall-clock time in ms; a time earlier than the bucket's last is taken as its last).
 * rate > 0 tokens per second, burst >= 1. Returns 1 when taken; 0 when the bucket holds
 * fewer, with *retry_ms the wait until it will hold cost tokens (rounded up); ENG_EINVAL for
 * a bad argument, ENG_ENOMEM. *remaining (may be NULL) is what the bucket holds after. */
int eng_limit_take(const char *key, size_t key_len, double rate, double burst, double cost, int64_t now_ms,
                   int64_t *retry_ms, double *remaining);

#define ENG_LIMIT_HITS_MAX ((int64_t)1 << 40) /* hits one call may add */

/* A fixed-window counter as eng_limit_hit reads it. */
typedef struct eng_limit_window {
  int64_t count;    /* hits in the running window */
  int64_t start_ms; /* when it began: its first hit */
  int64_t last_ms;  /* the latest hit */
} eng_limit_window;

/* Fixed-window counters, in the same bounded store as the buckets (and evicted the same way,
 * which only ever gives a client a fresh count; a key used both ways starts afresh whenever
 * its use changes). A window starts at the first hit of key, lasts window_ms (>= 1), and once
 * over reads as none; the next hit starts a new one. A time earlier than the window's start
 * counts as within it.
 * add > 0: counts add hits (at most ENG_LIMIT_HITS_MAX) at now_ms, returns 1 with *out filled.
 * add == 0: only reads: 1 with *out when key has a running window, 0 (nothing created, *out
 * untouched) when not. ENG_EINVAL for a bad argument, ENG_ENOMEM. */
int eng_limit_hit(const char *key, size_t key_len, int64_t window_ms, int64_t add, int64_t now_ms,
                  eng_limit_window *out);

/* Forgets the bucket or counter of key (a full bucket again). */
void eng_limit_reset(const char *key, size_t key_len);

/* Buckets and counters held now, over all shards (for tests and metrics). */
size_t eng_limit_count(void);

/* Forgets every bucket and counter (tests). */
void eng_limit_clear(void);

#endif
