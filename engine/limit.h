/* limit.h - token buckets by key, shared by every worker of the process (engine.limit).
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

/* Forgets the bucket of key (a full bucket again). */
void eng_limit_reset(const char *key, size_t key_len);

/* Buckets held now, over all shards (for tests and metrics). */
size_t eng_limit_count(void);

/* Forgets every bucket (tests). */
void eng_limit_clear(void);

#endif
