/* pq_load.c - libpq loaded on first use (pq_load.h says why). */
#define ENG_PQ_LOADER
#include "pq_load.h"

#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"

eng_pq_api eng_pq;

static pthread_once_t once = PTHREAD_ONCE_INIT;
static char failure[512]; /* empty when loaded */

static void load(void) {
  const char *name = getenv(ENG_PQ_ENV);
  if (!name || !name[0])
    name = ENG_PQ_SONAME;
  void *h = dlopen(name, RTLD_NOW | RTLD_LOCAL);
  if (!h) {
    const char *why = dlerror();
    snprintf(failure, sizeof failure, "cannot load the PostgreSQL client library %s (Debian package libpq5): %s", name,
             why ? why : "unknown error");
    return;
  }
  /* dlsym gives a void *; POSIX guarantees it converts to a function pointer, ISO C does not, so
   * it is copied into the pointer's bytes. */
#define ENG_PQ_SYMBOL(f)                                                                                  \
  {                                                                                                       \
    void *sym = dlsym(h, #f);                                                                             \
    if (!sym) {                                                                                           \
      snprintf(failure, sizeof failure, "the PostgreSQL client library %s has no %s", ENG_PQ_SONAME, #f); \
      memset(&eng_pq, 0, sizeof eng_pq);                                                                  \
      return;                                                                                             \
    }                                                                                                     \
    memcpy(&eng_pq.f, &sym, sizeof sym);                                                                  \
  }
  ENG_PQ_FUNCTIONS(ENG_PQ_SYMBOL)
#undef ENG_PQ_SYMBOL
  /* h stays open for the life of the process. */
}

int eng_pq_load(char **err) {
  pthread_once(&once, load);
  if (failure[0])
    return eng_errorf(err, ENG_EIO, "%s", failure);
  return 0;
}
