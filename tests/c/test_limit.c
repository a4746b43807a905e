/* test_limit.c - token buckets by key (engine/limit.c): refill, refusal with the wait,
 * reset, bounded memory with eviction, and exact counting under threads. */
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

static int taken;
static pthread_mutex_t taken_lock = PTHREAD_MUTEX_INITIALIZER;

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
  return check_summary("test_limit");
}
