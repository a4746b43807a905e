/* test_limit.c - token buckets and fixed-window counters by key (engine/limit.c): refill,
 * refusal with the wait, windows that start, run and end, reset, bounded memory with
 * eviction, and exact counting under threads. */
#include "check.h"
#include "error.h"
#include "limit.h"

#include <pthread.h>
#include <stdio.h>
#include <string.h>

#define K(s) s, sizeof s - 1

static void test_starts_full_then_refuses_with_the_wait(void) {
  int64_t retry = -1;
  double left = -1;
  for (int i = 0; i < 3; i++)
    CHECK_INT(eng_limit_take(K("a"), 1.0, 3, 1, 1000, &retry, &left), 1);
  CHECK(left == 0);
  CHECK_INT(eng_limit_take(K("a"), 1.0, 3, 1, 1000, &retry, &left), 0);
  CHECK_INT(retry, 1000);
  /* Half a second later: half a token, 500 ms to go. */
  CHECK_INT(eng_limit_take(K("a"), 1.0, 3, 1, 1500, &retry, NULL), 0);
  CHECK_INT(retry, 500);
  CHECK_INT(eng_limit_take(K("a"), 1.0, 3, 1, 2000, &retry, &left), 1);
  CHECK(left == 0);
  /* Refill never passes burst. */
  CHECK_INT(eng_limit_take(K("a"), 1.0, 3, 1, 1000000, &retry, &left), 1);
  CHECK(left == 2);
  /* A clock going back is taken as standing still. */
  CHECK_INT(eng_limit_take(K("a"), 1.0, 3, 2, 0, &retry, &left), 1);
  CHECK(left == 0);
  /* Another key is another bucket. */
  CHECK_INT(eng_limit_take(K("b"), 1.0, 3, 3, 0, &retry, &left), 1);
  eng_limit_clear();
}

static void test_cost_and_reset(void) {
  int64_t retry = 0;
  CHECK_INT(eng_limit_take(K("c"), 2.0, 10, 10, 0, &retry, NULL), 1);
  CHECK_INT(eng_limit_take(K("c"), 2.0, 10, 4, 0, &retry, NULL), 0);
  CHECK_INT(retry, 2000); /* 4 tokens at 2 a second */
  eng_limit_reset(K("c"));
  CHECK_INT(eng_limit_take(K("c"), 2.0, 10, 10, 0, &retry, NULL), 1);
  eng_limit_clear();
}

static void test_bad_arguments(void) {
  char big[ENG_LIMIT_KEY_MAX + 1];
  memset(big, 'x', sizeof big);
  CHECK_INT(eng_limit_take(big, sizeof big, 1, 1, 1, 0, NULL, NULL), ENG_EINVAL);
  CHECK_INT(eng_limit_take(K("k"), 0, 1, 1, 0, NULL, NULL), ENG_EINVAL);
  CHECK_INT(eng_limit_take(K("k"), 1, 0.5, 1, 0, NULL, NULL), ENG_EINVAL);
  CHECK_INT(eng_limit_take(K("k"), 1, 2, 3, 0, NULL, NULL), ENG_EINVAL);
  CHECK_INT(eng_limit_take(K("k"), 1, 2, 0, 0, NULL, NULL), ENG_EINVAL);
  CHECK_INT((int)eng_limit_count(), 0);
}

/* More keys than the store holds: it stays at its bound and forgets the least recently used. */
static void test_bounded_with_eviction(void) {
  char key[32];
  int64_t retry;
  CHECK_INT(eng_limit_take(K("first"), 1, 1, 1, 0, &retry, NULL), 1); /* empty now */
  for (int i = 0; i < ENG_LIMIT_KEYS + ENG_LIMIT_KEYS / 2; i++) {
    int n = snprintf(key, sizeof key, "k%d", i);
    CHECK_INT(eng_limit_take(key, (size_t)n, 1, 1, 1, 0, &retry, NULL), 1);
  }
  CHECK((size_t)eng_limit_count() <= ENG_LIMIT_KEYS);
  CHECK((size_t)eng_limit_count() > ENG_LIMIT_KEYS - ENG_LIMIT_SHARDS * 2);
  /* "first" was the least recently used everywhere: forgotten, so full again. */
  CHECK_INT(eng_limit_take(K("first"), 1, 1, 1, 0, &retry, NULL), 1);
  eng_limit_clear();
  CHECK_INT((int)eng_limit_count(), 0);
}

static void test_window_counts_within_its_window_then_starts_again(void) {
  eng_limit_window w = {-1, -1, -1};
  /* Reading a key never counted creates nothing. */
  CHECK_INT(eng_limit_hit(K("w"), 1000, 0, 5000, &w), 0);
  CHECK_INT((int)w.count, -1);
  CHECK_INT((int)eng_limit_count(), 0);
  CHECK_INT(eng_limit_hit(K("w"), 1000, 1, 5000, &w), 1);
  CHECK_INT((int)w.count, 1);
  CHECK_INT((int)w.start_ms, 5000);
  CHECK_INT((int)w.last_ms, 5000);
  CHECK_INT(eng_limit_hit(K("w"), 1000, 2, 5400, &w), 1);
  CHECK_INT((int)w.count, 3);
  CHECK_INT((int)w.start_ms, 5000);
  CHECK_INT((int)w.last_ms, 5400);
  /* A read sees the count and changes nothing. */
  CHECK_INT(eng_limit_hit(K("w"), 1000, 0, 5999, &w), 1);
  CHECK_INT((int)w.count, 3);
  CHECK_INT((int)w.last_ms, 5400);
  /* A clock set back is within the window; it does not move the last hit back. */
  CHECK_INT(eng_limit_hit(K("w"), 1000, 1, 4000, &w), 1);
  CHECK_INT((int)w.count, 4);
  CHECK_INT((int)w.last_ms, 5400);
  /* At start + window the window is over: it reads as none, the next hit starts a new one. */
  CHECK_INT(eng_limit_hit(K("w"), 1000, 0, 6000, &w), 0);
  CHECK_INT(eng_limit_hit(K("w"), 1000, 1, 6500, &w), 1);
  CHECK_INT((int)w.count, 1);
  CHECK_INT((int)w.start_ms, 6500);
  /* Reset forgets it. */
  eng_limit_reset(K("w"));
  CHECK_INT(eng_limit_hit(K("w"), 1000, 0, 6500, &w), 0);
  eng_limit_clear();
}

/* A key used as a bucket, then as a counter, then as a bucket: each use starts afresh. */
static void test_window_and_bucket_keep_apart(void) {
  eng_limit_window w;
  int64_t retry = 0;
  double left = 0;
  CHECK_INT(eng_limit_take(K("m"), 1, 2, 2, 0, &retry, &left), 1);
  CHECK_INT(eng_limit_hit(K("m"), 1000, 0, 0, &w), 0);
  CHECK_INT(eng_limit_hit(K("m"), 1000, 7, 0, &w), 1);
  CHECK_INT((int)w.count, 7);
  CHECK_INT(eng_limit_take(K("m"), 1, 2, 1, 0, &retry, &left), 1);
  CHECK(left == 1);
  CHECK_INT((int)eng_limit_count(), 1);
  eng_limit_clear();
}

static void test_window_bad_arguments(void) {
  eng_limit_window w;
  char big[ENG_LIMIT_KEY_MAX + 1];
  memset(big, 'x', sizeof big);
  CHECK_INT(eng_limit_hit(big, sizeof big, 1000, 1, 0, &w), ENG_EINVAL);
  CHECK_INT(eng_limit_hit(K("k"), 0, 1, 0, &w), ENG_EINVAL);
  CHECK_INT(eng_limit_hit(K("k"), 1000, -1, 0, &w), ENG_EINVAL);
  CHECK_INT(eng_limit_hit(K("k"), 1000, ENG_LIMIT_HITS_MAX + 1, 0, &w), ENG_EINVAL);
  CHECK_INT((int)eng_limit_count(), 0);
}

static int hits_seen_max;
static pthread_mutex_t taken_lock = PTHREAD_MUTEX_INITIALIZER;

static void *hitter(void *arg) {
  (void)arg;
  eng_limit_window w;
  int64_t max = 0;
  for (int i = 0; i < 20000; i++)
    if (eng_limit_hit(K("hits"), 1000000, 1, 0, &w) == 1 && w.count > max)
      max = w.count;
  pthread_mutex_lock(&taken_lock);
  if (max > hits_seen_max)
    hits_seen_max = (int)max;
  pthread_mutex_unlock(&taken_lock);
  return NULL;
}

/* Four threads count on one key: no hit is lost. */
static void test_threads_share_one_counter_exactly(void) {
  pthread_t t[4];
  eng_limit_window w;
  for (int i = 0; i < 4; i++)
    CHECK_INT(pthread_create(&t[i], NULL, hitter, NULL), 0);
  for (int i = 0; i < 4; i++)
    pthread_join(t[i], NULL);
  CHECK_INT(eng_limit_hit(K("hits"), 1000000, 0, 0, &w), 1);
  CHECK_INT((int)w.count, 80000);
  CHECK_INT(hits_seen_max, 80000);
  eng_limit_clear();
}

static int taken;

static void *taker(void *arg) {
  (void)arg;
  int mine = 0;
  for (int i = 0; i < 20000; i++)
    if (eng_limit_take(K("shared"), 1e-9, 5000, 1, 0, NULL, NULL) == 1)
      mine++;
  pthread_mutex_lock(&taken_lock);
  taken += mine;
  pthread_mutex_unlock(&taken_lock);
  return NULL;
}

/* Four threads hammer one bucket of 5000: exactly 5000 takes succeed. */
static void test_threads_share_one_bucket_exactly(void) {
  pthread_t t[4];
  for (int i = 0; i < 4; i++)
    CHECK_INT(pthread_create(&t[i], NULL, taker, NULL), 0);
  for (int i = 0; i < 4; i++)
    pthread_join(t[i], NULL);
  CHECK_INT(taken, 5000);
  eng_limit_clear();
}

int main(void) {
  test_starts_full_then_refuses_with_the_wait();
  test_cost_and_reset();
  test_bad_arguments();
  test_bounded_with_eviction();
  test_threads_share_one_bucket_exactly();
  test_window_counts_within_its_window_then_starts_again();
  test_window_and_bucket_keep_apart();
  test_window_bad_arguments();
  test_threads_share_one_counter_exactly();
  return check_summary("test_limit");
}
