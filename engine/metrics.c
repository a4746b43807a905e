/* metrics.c - the metrics registry, per-worker shards and the Prometheus text format (see metrics.h).
 *
 * Values live in "slots": 64-bit cells, numbered once for the process. A shard (one per worker)
 * holds every slot, in chunks of ENG_SLOT_CHUNK allocated on first write and published with a
 * release store, so a scrape finds either no chunk (all zero) or a zeroed-then-written one.
 * Counts are unsigned integers; sums and script values are doubles kept as their bits. Only
 * the shard's own thread writes it (load + store, both relaxed atomics: no lock prefix, no
 * race); the scrape reads every shard and adds up.
 *
 * What owns which slots: a fixed block for the engine-wide metrics (below), one block per route
 * pattern (requests by method x status, the duration histogram, script errors), one block per
 * series of a script metric. Blocks are handed out under the registry mutex, and found again
 * without it through an insert-only hash table of interned keys (a route's pattern, a series'
 * family and label values): an entry is written in full before a release store publishes it,
 * and a lookup reads the slot with an acquire load. Nothing is ever removed, so every number is
 * stable for the process and the label space is bounded by the caps in metrics.h.
 *
 * Cost (bench/metrics, README "Metrics"): a request finds its route through a small per-thread
 * cache by the pattern's address before the hash table, and a scrape copies label and bucket
 * text made once (when the route, series or family is made) and writes counts without printf. */
#include "metrics.h"
#include "error.h"

#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define ENG_SLOT_CHUNK_BITS 10
#define ENG_SLOT_CHUNK (1u << ENG_SLOT_CHUNK_BITS)
#define ENG_MAX_CHUNKS 1024u /* 1M slots: 8 MiB per worker at most */
#define ENG_MAX_SLOTS (ENG_MAX_CHUNKS * ENG_SLOT_CHUNK)
#define ENG_INTERN_CAP 65536u /* power of two, over twice the keys the caps allow */

/* ---- label sets of the engine's own metrics -------------------------------------------------- */

static const char *const methods[] = {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "other"};
#define NMETHODS 8

/* The statuses a label may name; any other is "other". */
static const short statuses[] = {100, 101, 200, 201, 202, 204, 206, 301, 302, 303, 304, 307, 308, 400, 401,
                                 402, 403, 404, 405, 406, 408, 409, 410, 411, 412, 413, 414, 415, 416, 417,
                                 422, 423, 424, 425, 426, 428, 429, 431, 451, 500, 501, 502, 503, 504, 505};
#define NSTATUSES ((int)(sizeof statuses / sizeof statuses[0]) + 1) /* + "other" */

/* Status code - 100 -> its index in statuses, for codes 100-599; made by eng_metrics_enable,
 * before any worker records (a lookup in place of a binary search on every request). */
static unsigned char status_tab[500];

static void status_tab_make(void) {
  memset(status_tab, NSTATUSES - 1, sizeof status_tab);
  for (int i = 0; i < NSTATUSES - 1; i++)
    status_tab[statuses[i] - 100] = (unsigned char)i;
}

static const double default_buckets[] = {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                                         0.1,    0.25,  0.5,    1,     2.5,  5,     10};
#define NDEFAULT_BUCKETS ((int)(sizeof default_buckets / sizeof default_buckets[0]))

/* A histogram block: one count per bucket, then +Inf, then the sum (double bits). */
#define HIST_SLOTS(nb) ((unsigned)(nb) + 2u)

/* The fixed block. */
enum {
  G_BUDGET_TIME,
  G_BUDGET_MEMORY,
  G_CONN_IDLE,
  G_CONN_ACTIVE,
  G_CONN_CLOSING,
  G_LUA_MEMORY,
  G_DB_BUSY,
  G_DB_QUERY,                                      /* histogram, default buckets */
  G_FIXED_END = G_DB_QUERY + NDEFAULT_BUCKETS + 2, /* HIST_SLOTS */
};

/* A route's block: requests [method][status], the duration histogram, script errors. */
#define R_REQUESTS 0u
#define R_HIST ((unsigned)(NMETHODS * NSTATUSES))
#define R_ERRORS (R_HIST + HIST_SLOTS(NDEFAULT_BUCKETS))
#define R_SLOTS (R_ERRORS + 1u)

enum { ROUTE_UNMATCHED, ROUTE_OTHER };

/* ---- the registry ------------------------------------------------------------------------- */

typedef struct entry {
  uint32_t hash;
  int value; /* route index or series index */
  size_t len;
  char key[];
} entry;

typedef struct route {
  char *pattern;
  char *label; /* route="pattern", escaped: written once, copied by each scrape */
  size_t label_len;
  unsigned base;
} route;

typedef struct family {
  eng_metric_type type;
  char *name, *help;
  int nlabels;
  char *labels[ENG_METRICS_MAX_LABELS];
  int nbuckets;
  double *buckets;
  char *le; /* the buckets as text, ENG_NUM_TEXT bytes each (le="..." of every scrape) */
  int nseries;
  int series[ENG_METRICS_MAX_SERIES]; /* indexes into series_tab, in creation order */
} family;

typedef struct series {
  int family;
  unsigned base;
  char *labels; /* rendered: name="value",... */
} series;

typedef struct shard {
  _Atomic(_Atomic(uint64_t) *) chunks[ENG_MAX_CHUNKS];
} shard;

static struct {
  pthread_mutex_t mu; /* writers of everything below but the shards' values; the scrape */
  _Atomic(entry *) intern[ENG_INTERN_CAP];
  unsigned next_slot;
  route routes[ENG_METRICS_MAX_ROUTES + 2];
  int nroutes;
  family fams[ENG_METRICS_MAX_FAMILIES];
  int nfams;
  series series_tab[ENG_METRICS_MAX_FAMILIES * ENG_METRICS_MAX_SERIES];
  int nseries;
  shard *shards[ENG_METRICS_MAX_SHARDS];
  atomic_int nshards; /* 0: off */
  atomic_ulong reloads[3];
} reg = {.mu = PTHREAD_MUTEX_INITIALIZER, .next_slot = G_FIXED_END};

static _Thread_local shard *tl_shard;

/* Route patterns this thread recorded, by the address of the caller's string (the router's
 * pattern, stable between reloads), so a request skips hashing its pattern: a hit still compares
 * the text with the route's, so an address reused for another pattern finds its own route. */
#define ROUTE_CACHE_BITS 6
static _Thread_local struct {
  const char *pattern;
  int idx;
} tl_routes[1u << ROUTE_CACHE_BITS];

/* Bytes of a number's text: "-1.2345678901234567e-308" and its NUL fit. */
#define ENG_NUM_TEXT 32

/* Writes v as the text format wants it into t (ENG_NUM_TEXT bytes), its length. */
static size_t num_text(char *t, double v) {
  const char *word = isnan(v) ? "NaN" : isinf(v) ? (v > 0 ? "+Inf" : "-Inf") : NULL;
  if (word)
    return (size_t)snprintf(t, ENG_NUM_TEXT, "%s", word);
  /* Whole numbers below 1e15 print as %.15g prints them (every digit, no exponent) without
   * printf: counters and most sums are whole. -0 keeps its sign through printf. */
  if (v > -1e15 && v < 1e15 && v == (double)(int64_t)v && !(v == 0 && signbit(v))) {
    char d[20];
    int i = 20;
    uint64_t u = v < 0 ? (uint64_t)(-(int64_t)v) : (uint64_t)v;
    do {
      d[--i] = (char)('0' + u % 10);
      u /= 10;
    } while (u);
    size_t n = 0;
    if (v < 0)
      t[n++] = '-';
    memcpy(t + n, d + i, (size_t)(20 - i));
    n += (size_t)(20 - i);
    t[n] = '\0';
    return n;
  }
  /* The shortest of %.15g / %.17g that reads back as v: 0.005, not 0.0050000000000000001. */
  int n = snprintf(t, ENG_NUM_TEXT, "%.15g", v);
  if (strtod(t, NULL) != v)
    n = snprintf(t, ENG_NUM_TEXT, "%.17g", v);
  return (size_t)n;
}

static uint32_t hash_bytes(const char *p, size_t n) {
  uint32_t h = 2166136261u;
  for (size_t i = 0; i < n; i++)
    h = (h ^ (unsigned char)p[i]) * 16777619u;
  return h;
}

/* The value interned for key, or -1. No lock. */
static int intern_find(const char *key, size_t len, uint32_t h) {
  for (uint32_t i = h & (ENG_INTERN_CAP - 1);; i = (i + 1) & (ENG_INTERN_CAP - 1)) {
    entry *e = atomic_load_explicit(&reg.intern[i], memory_order_acquire);
    if (e == NULL)
      return -1;
    if (e->hash == h && e->len == len && memcmp(e->key, key, len) == 0)
      return e->value;
  }
}

/* Publishes key -> value; under reg.mu, after intern_find said it is absent. 0 or ENG_ENOMEM. */
static int intern_add(const char *key, size_t len, uint32_t h, int value) {
  entry *e = malloc(sizeof *e + len);
  if (e == NULL)
    return ENG_ENOMEM;
  e->hash = h;
  e->value = value;
  e->len = len;
  memcpy(e->key, key, len);
  uint32_t i = h & (ENG_INTERN_CAP - 1);
  while (atomic_load_explicit(&reg.intern[i], memory_order_relaxed) != NULL)
    i = (i + 1) & (ENG_INTERN_CAP - 1);
  atomic_store_explicit(&reg.intern[i], e, memory_order_release);
  return 0;
}

/* Appends v as a label value: backslash, double quote and newline escaped. */
static int append_label_value(eng_buf *b, const char *v, size_t n) {
  int rc = eng_buf_append_char(b, '"');
  for (size_t i = 0; rc == 0 && i < n; i++) {
    if (v[i] == '\\')
      rc = eng_buf_append_str(b, "\\\\");
    else if (v[i] == '"')
      rc = eng_buf_append_str(b, "\\\"");
    else if (v[i] == '\n')
      rc = eng_buf_append_str(b, "\\n");
    else
      rc = eng_buf_append_char(b, v[i]);
  }
  return rc ? rc : eng_buf_append_char(b, '"');
}

/* n consecutive slots, or -1 when the slot space is used up; under reg.mu. */
static long slots_take(unsigned n) {
  if (n > ENG_MAX_SLOTS - reg.next_slot)
    return -1;
  unsigned base = reg.next_slot;
  reg.next_slot += n;
  return (long)base;
}

/* A route block for pattern (NULL: unmatched), its index; under reg.mu. Past the cap (or out of
 * memory): ROUTE_OTHER. */
static int route_add_locked(const char *key, size_t len, uint32_t h, const char *pattern) {
  int found = intern_find(key, len, h);
  if (found >= 0)
    return found;
  if (reg.nroutes >= ENG_METRICS_MAX_ROUTES + 2)
    return ROUTE_OTHER;
  long base = slots_take(R_SLOTS);
  char *copy = strdup(pattern);
  eng_buf lab = {0};
  int brc = eng_buf_append_str(&lab, "route=");
  if (brc == 0)
    brc = append_label_value(&lab, pattern, strlen(pattern));
  if (brc == 0)
    brc = eng_buf_append_char(&lab, '\0');
  if (base < 0 || copy == NULL || brc != 0) {
    free(copy);
    eng_buf_free(&lab);
    return ROUTE_OTHER;
  }
  int idx = reg.nroutes;
  reg.routes[idx] = (route){.pattern = copy, .label = lab.data, .label_len = lab.len - 1, .base = (unsigned)base};
  if (intern_add(key, len, h, idx) != 0) {
    free(copy);
    eng_buf_free(&lab);
    return ROUTE_OTHER; /* its slots stay unused */
  }
  reg.nroutes++;
  return idx;
}

/* Route keys start with 'r' (series keys with 's'), so the two never meet. */
static int route_lookup(const char *pattern) {
  char small[256];
  size_t n = strlen(pattern);
  if (n + 1 > sizeof small)
    n = sizeof small - 1; /* patterns this long are one label each up to here; rare enough */
  small[0] = 'r';
  memcpy(small + 1, pattern, n);
  uint32_t h = hash_bytes(small, n + 1);
  int idx = intern_find(small, n + 1, h);
  if (idx >= 0)
    return idx;
  pthread_mutex_lock(&reg.mu);
  small[n + 1] = '\0';
  idx = route_add_locked(small, n + 1, h, small + 1);
  pthread_mutex_unlock(&reg.mu);
  return idx;
}

static int route_index(const char *pattern) {
  /* Fibonacci hashing: the top bits of the address times 2^64 / phi, so strings packed a few
   * bytes apart still spread over the table. */
  unsigned c = (unsigned)(((uint64_t)(uintptr_t)pattern * 0x9E3779B97F4A7C15u) >> (64 - ROUTE_CACHE_BITS));
  int idx = tl_routes[c].idx;
  if (tl_routes[c].pattern == pattern && strcmp(reg.routes[idx].pattern, pattern) == 0)
    return idx;
  idx = route_lookup(pattern);
  /* Only a route of its own: "other" (past the cap, or out of memory) may be found for this
   * text later, and a pattern cut to 255 bytes never compares equal. */
  if (idx > ROUTE_OTHER && strcmp(reg.routes[idx].pattern, pattern) == 0) {
    tl_routes[c].pattern = pattern;
    tl_routes[c].idx = idx;
  }
  return idx;
}

/* The two routes every scrape names; under reg.mu. */
static void routes_init_locked(void) {
  if (reg.nroutes == 0) {
    route_add_locked("u", 1, hash_bytes("u", 1), "unmatched");
    route_add_locked("o", 1, hash_bytes("o", 1), "other");
  }
}

/* ---- shards ------------------------------------------------------------------------------- */

int eng_metrics_enable(int nshards) {
  if (nshards < 1 || nshards > ENG_METRICS_MAX_SHARDS)
    return ENG_EINVAL;
  pthread_mutex_lock(&reg.mu);
  routes_init_locked();
  status_tab_make();
  int rc = reg.nroutes >= 2 ? 0 : ENG_ENOMEM;
  for (int i = 0; rc == 0 && i < nshards; i++)
    if ((reg.shards[i] = calloc(1, sizeof(shard))) == NULL)
      rc = ENG_ENOMEM;
  if (rc != 0) {
    for (int i = 0; i < nshards; i++) {
      free(reg.shards[i]);
      reg.shards[i] = NULL;
    }
  } else {
    atomic_store(&reg.nshards, nshards);
  }
  pthread_mutex_unlock(&reg.mu);
  return rc;
}

void eng_metrics_disable(void) {
  pthread_mutex_lock(&reg.mu);
  int n = atomic_load(&reg.nshards);
  atomic_store(&reg.nshards, 0);
  for (int i = 0; i < n; i++) {
    shard *s = reg.shards[i];
    for (unsigned c = 0; c < ENG_MAX_CHUNKS; c++)
      free(atomic_load(&s->chunks[c]));
    free(s);
    reg.shards[i] = NULL;
  }
  pthread_mutex_unlock(&reg.mu);
  tl_shard = NULL;
}

int eng_metrics_enabled(void) { return atomic_load_explicit(&reg.nshards, memory_order_relaxed) > 0; }

void eng_metrics_bind_shard(int i) {
  int n = atomic_load(&reg.nshards);
  tl_shard = i >= 0 && i < n ? reg.shards[i] : NULL;
}

/* The cell of slot in s, its chunk made on first use; NULL when out of memory (the value is
 * then not recorded). */
static _Atomic(uint64_t) *cell(shard *s, unsigned slot) {
  unsigned c = slot >> ENG_SLOT_CHUNK_BITS;
  _Atomic(uint64_t) *chunk = atomic_load_explicit(&s->chunks[c], memory_order_acquire);
  if (chunk == NULL) {
    chunk = calloc(ENG_SLOT_CHUNK, sizeof *chunk);
    if (chunk == NULL)
      return NULL;
    atomic_store_explicit(&s->chunks[c], chunk, memory_order_release);
  }
  return chunk + (slot & (ENG_SLOT_CHUNK - 1));
}

static void add_u(shard *s, unsigned slot, uint64_t n) {
  _Atomic(uint64_t) *p = cell(s, slot);
  if (p)
    atomic_store_explicit(p, atomic_load_explicit(p, memory_order_relaxed) + n, memory_order_relaxed);
}

static double bits_to_d(uint64_t u) {
  double d;
  memcpy(&d, &u, sizeof d);
  return d;
}

static uint64_t d_to_bits(double d) {
  uint64_t u;
  memcpy(&u, &d, sizeof u);
  return u;
}

static void add_d(shard *s, unsigned slot, double v) {
  _Atomic(uint64_t) *p = cell(s, slot);
  if (p)
    atomic_store_explicit(p, d_to_bits(bits_to_d(atomic_load_explicit(p, memory_order_relaxed)) + v),
                          memory_order_relaxed);
}

static void set_u(shard *s, unsigned slot, uint64_t v) {
  _Atomic(uint64_t) *p = cell(s, slot);
  if (p)
    atomic_store_explicit(p, v, memory_order_relaxed);
}

static void observe(shard *s, unsigned base, const double *bounds, int nb, double v) {
  int i = 0;
  while (i < nb && v > bounds[i])
    i++;
  add_u(s, base + (unsigned)i, 1);
  add_d(s, base + (unsigned)nb + 1, v);
}

/* ---- recording ---------------------------------------------------------------------------- */

static int method_index(const char *m) {
  if (m != NULL)
    for (int i = 0; i < NMETHODS - 1; i++)
      if (strcmp(m, methods[i]) == 0)
        return i;
  return NMETHODS - 1;
}

static int status_index(int status) { return status >= 100 && status < 600 ? status_tab[status - 100] : NSTATUSES - 1; }

void eng_metrics_request(const char *route_pattern, const char *method, int status, double seconds) {
  shard *s = tl_shard;
  if (s == NULL)
    return;
  unsigned base = reg.routes[route_pattern ? route_index(route_pattern) : ROUTE_UNMATCHED].base;
  add_u(s, base + R_REQUESTS + (unsigned)(method_index(method) * NSTATUSES + status_index(status)), 1);
  observe(s, base + R_HIST, default_buckets, NDEFAULT_BUCKETS, seconds);
}

void eng_metrics_script_error(const char *route_pattern) {
  shard *s = tl_shard;
  if (s != NULL)
    add_u(s, reg.routes[route_pattern ? route_index(route_pattern) : ROUTE_UNMATCHED].base + R_ERRORS, 1);
}

void eng_metrics_budget_exceeded(int memory) {
  if (tl_shard)
    add_u(tl_shard, memory ? G_BUDGET_MEMORY : G_BUDGET_TIME, 1);
}

void eng_metrics_conn_state(int from, int to) {
  shard *s = tl_shard;
  if (s == NULL || from == to)
    return;
  if (from >= 0)
    add_u(s, G_CONN_IDLE + (unsigned)from, (uint64_t)-1); /* wraps; the sum over shards comes out right */
  if (to >= 0)
    add_u(s, G_CONN_IDLE + (unsigned)to, 1);
}

void eng_metrics_lua_memory(size_t bytes) {
  if (tl_shard)
    set_u(tl_shard, G_LUA_MEMORY, bytes);
}

void eng_metrics_db_busy_wait(void) {
  if (tl_shard)
    add_u(tl_shard, G_DB_BUSY, 1);
}

void eng_metrics_db_query(double seconds) {
  if (tl_shard)
    observe(tl_shard, G_DB_QUERY, default_buckets, NDEFAULT_BUCKETS, seconds);
}

void eng_metrics_reload(const char *result) {
  int i = strcmp(result, "done") == 0 ? 0 : strcmp(result, "partial") == 0 ? 1 : 2;
  atomic_fetch_add_explicit(&reg.reloads[i], 1, memory_order_relaxed);
}

/* ---- script metrics ----------------------------------------------------------------------- */

static int name_ok(const char *s, int colon) {
  size_t n = strlen(s);
  if (n == 0 || n > ENG_METRICS_MAX_NAME)
    return 0;
  for (size_t i = 0; i < n; i++) {
    char c = s[i];
    int alpha = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || (colon && c == ':');
    if (!alpha && !(i > 0 && c >= '0' && c <= '9'))
      return 0;
  }
  return 1;
}

static int family_same(const family *f, eng_metric_type type, const char *const *labels, int nlabels,
                       const double *buckets, int nb) {
  if (f->type != type || f->nlabels != nlabels || f->nbuckets != nb)
    return 0;
  for (int i = 0; i < nlabels; i++)
    if (strcmp(f->labels[i], labels[i]) != 0)
      return 0;
  for (int i = 0; i < nb; i++)
    if (f->buckets[i] != buckets[i])
      return 0;
  return 1;
}

static void family_free(family *f) {
  free(f->name);
  free(f->help);
  for (int i = 0; i < f->nlabels; i++)
    free(f->labels[i]);
  free(f->buckets);
  free(f->le);
  memset(f, 0, sizeof *f);
}

int eng_metrics_declare(eng_metric_type type, const char *name, const char *help, const char *const *labels,
                        int nlabels, const double *buckets, int nbuckets, int *id, const char **why) {
  if (!name_ok(name, 1) || strncmp(name, "apiengine_", 10) == 0 || strncmp(name, "__", 2) == 0)
    return *why = "metric names are [a-zA-Z_:][a-zA-Z0-9_:]* (at most 128 bytes), not apiengine_* or __*", ENG_EINVAL;
  if (help == NULL || strlen(help) > ENG_METRICS_MAX_HELP)
    return *why = "help must be a string of at most 1024 bytes", ENG_EINVAL;
  if (nlabels < 0 || nlabels > ENG_METRICS_MAX_LABELS)
    return *why = "at most 8 label names", ENG_EINVAL;
  for (int i = 0; i < nlabels; i++) {
    if (!name_ok(labels[i], 0) || strcmp(labels[i], "le") == 0 || strncmp(labels[i], "__", 2) == 0)
      return *why = "label names are [a-zA-Z_][a-zA-Z0-9_]*, not le or __*", ENG_EINVAL;
    for (int j = 0; j < i; j++)
      if (strcmp(labels[i], labels[j]) == 0)
        return *why = "label names must differ", ENG_EINVAL;
  }
  if (type != ENG_METRIC_HISTOGRAM && nbuckets > 0)
    return *why = "only a histogram has buckets", ENG_EINVAL;
  if (type == ENG_METRIC_HISTOGRAM) {
    if (nbuckets <= 0) {
      buckets = default_buckets;
      nbuckets = NDEFAULT_BUCKETS;
    }
    if (nbuckets > ENG_METRICS_MAX_BUCKETS)
      return *why = "at most 30 buckets", ENG_EINVAL;
    for (int i = 0; i < nbuckets; i++)
      if (!isfinite(buckets[i]) || (i > 0 && buckets[i] <= buckets[i - 1]))
        return *why = "buckets must be finite and strictly increasing", ENG_EINVAL;
  } else {
    nbuckets = 0;
  }
  int rc = 0;
  pthread_mutex_lock(&reg.mu);
  for (int i = 0; i < reg.nfams; i++) {
    if (strcmp(reg.fams[i].name, name) == 0) {
      if (family_same(&reg.fams[i], type, labels, nlabels, buckets, nbuckets))
        *id = i;
      else
        *why = "this metric was declared before with another type, labels or buckets", rc = ENG_EEXISTS;
      goto out;
    }
  }
  if (reg.nfams >= ENG_METRICS_MAX_FAMILIES) {
    *why = "too many metrics (at most 256)", rc = ENG_ETOOBIG;
    goto out;
  }
  family *f = &reg.fams[reg.nfams];
  f->type = type;
  f->nlabels = nlabels;
  f->nbuckets = nbuckets;
  int ok = (f->name = strdup(name)) != NULL && (f->help = strdup(help)) != NULL;
  for (int i = 0; ok && i < nlabels; i++)
    ok = (f->labels[i] = strdup(labels[i])) != NULL;
  if (ok && nbuckets > 0 && (f->buckets = malloc((size_t)nbuckets * sizeof(double))) != NULL &&
      (f->le = malloc((size_t)nbuckets * ENG_NUM_TEXT)) != NULL) {
    memcpy(f->buckets, buckets, (size_t)nbuckets * sizeof(double));
    for (int i = 0; i < nbuckets; i++)
      num_text(f->le + (size_t)i * ENG_NUM_TEXT, buckets[i]);
  } else if (nbuckets > 0) {
    ok = 0;
  }
  if (!ok) {
    family_free(f);
    *why = "out of memory", rc = ENG_ENOMEM;
    goto out;
  }
  *id = reg.nfams++;
out:
  pthread_mutex_unlock(&reg.mu);
  return rc;
}

int eng_metrics_family_labels(int id) { return reg.fams[id].nlabels; }
const char *eng_metrics_family_label(int id, int i) { return reg.fams[id].labels[i]; }
eng_metric_type eng_metrics_family_type(int id) { return reg.fams[id].type; }

int eng_metrics_series(int id, const char *const *values, const size_t *lens, int *out, const char **why) {
  const family *f = &reg.fams[id];
  char small[512];
  eng_buf key = {0};
  int rc = 0;
  /* The key: 's', the family index, then each value followed by a 0 byte (values may hold any
   * byte but 0 ends none: the lengths are fixed by the positions, and a value with a 0 byte in
   * it is refused below). */
  size_t need = 1 + sizeof id;
  for (int i = 0; i < f->nlabels; i++) {
    if (lens[i] > ENG_METRICS_MAX_VALUE || memchr(values[i], '\0', lens[i]) != NULL)
      return *why = "label values are at most 256 bytes, without a 0 byte", ENG_EINVAL;
    need += lens[i] + 1;
  }
  char *k = small;
  if (need > sizeof small) {
    if (eng_buf_reserve(&key, need) != 0)
      return *why = "out of memory", ENG_ENOMEM;
    k = key.data;
  }
  size_t n = 0;
  k[n++] = 's';
  memcpy(k + n, &id, sizeof id);
  n += sizeof id;
  for (int i = 0; i < f->nlabels; i++) {
    memcpy(k + n, values[i], lens[i]);
    n += lens[i];
    k[n++] = '\0';
  }
  uint32_t h = hash_bytes(k, n);
  int found = intern_find(k, n, h);
  if (found >= 0) {
    *out = found;
    goto done;
  }
  pthread_mutex_lock(&reg.mu);
  found = intern_find(k, n, h);
  if (found >= 0) {
    *out = found;
  } else if (reg.fams[id].nseries >= ENG_METRICS_MAX_SERIES) {
    *why = "too many label sets for this metric (at most 100): a new one is refused", rc = ENG_ETOOBIG;
  } else {
    family *fw = &reg.fams[id];
    unsigned nslots = fw->type == ENG_METRIC_HISTOGRAM ? HIST_SLOTS(fw->nbuckets) : 1u;
    long base = slots_take(nslots);
    eng_buf lab = {0};
    int brc = 0;
    for (int i = 0; brc == 0 && i < fw->nlabels; i++) {
      if (i > 0)
        brc = eng_buf_append_char(&lab, ',');
      if (brc == 0)
        brc = eng_buf_append_str(&lab, fw->labels[i]);
      if (brc == 0)
        brc = eng_buf_append_char(&lab, '=');
      if (brc == 0)
        brc = append_label_value(&lab, values[i], lens[i]);
    }
    if (brc == 0)
      brc = eng_buf_append_char(&lab, '\0');
    int sidx = reg.nseries;
    if (base < 0 || brc != 0) {
      eng_buf_free(&lab);
      *why = base < 0 ? "no room left for metrics" : "out of memory", rc = ENG_ETOOBIG;
    } else {
      reg.series_tab[sidx] = (series){.family = id, .base = (unsigned)base, .labels = lab.data};
      if (intern_add(k, n, h, sidx) != 0) {
        eng_buf_free(&lab);
        *why = "out of memory", rc = ENG_ENOMEM;
      } else {
        reg.nseries++;
        fw->series[fw->nseries++] = sidx;
        *out = sidx;
      }
    }
  }
  pthread_mutex_unlock(&reg.mu);
done:
  eng_buf_free(&key);
  return rc;
}

void eng_metrics_series_add(int sidx, double v) {
  shard *s = tl_shard;
  if (s == NULL)
    return;
  const series *se = &reg.series_tab[sidx];
  const family *f = &reg.fams[se->family];
  if (f->type == ENG_METRIC_HISTOGRAM)
    observe(s, se->base, f->buckets, f->nbuckets, v);
  else
    add_d(s, se->base, v);
}

void eng_metrics_series_set(int sidx, double v) {
  if (tl_shard)
    set_u(tl_shard, reg.series_tab[sidx].base, d_to_bits(v));
}

/* ---- rendering ---------------------------------------------------------------------------- */

/* Slot of shard i as another thread last stored it (0 before its chunk exists). */
static uint64_t shard_u(int i, unsigned slot) {
  _Atomic(uint64_t) *chunk =
      atomic_load_explicit(&reg.shards[i]->chunks[slot >> ENG_SLOT_CHUNK_BITS], memory_order_acquire);
  return chunk ? atomic_load_explicit(&chunk[slot & (ENG_SLOT_CHUNK - 1)], memory_order_relaxed) : 0;
}

static uint64_t sum_u(int n, unsigned slot) {
  uint64_t t = 0;
  for (int i = 0; i < n; i++)
    t += shard_u(i, slot);
  return t;
}

static double sum_d(int n, unsigned slot) {
  double t = 0;
  for (int i = 0; i < n; i++)
    t += bits_to_d(shard_u(i, slot));
  return t;
}

/* The scrape writes its lines from pieces of known length: no printf, no per-scrape escaping
 * (label text is escaped once, when its route or series is made). An append fails only out of
 * memory, and leaves the text short (see eng_metrics_render). */
static void put(eng_buf *b, const char *s, size_t n) { (void)eng_buf_append(b, s, n); }
#define PUT(b, lit) put((b), (lit), sizeof(lit) - 1)
static void puts_(eng_buf *b, const char *s) { put(b, s, strlen(s)); }

static void put_u64(eng_buf *b, uint64_t v) {
  char d[20];
  int i = 20;
  do {
    d[--i] = (char)('0' + v % 10);
    v /= 10;
  } while (v);
  put(b, d + i, (size_t)(20 - i));
}

static void put_num(eng_buf *b, double v) {
  char t[ENG_NUM_TEXT];
  put(b, t, num_text(t, v));
}

static void head(eng_buf *b, const char *name, const char *type, const char *help) {
  PUT(b, "# HELP ");
  puts_(b, name);
  PUT(b, " ");
  if (strpbrk(help, "\\\n") == NULL) {
    puts_(b, help);
  } else {
    for (const char *p = help; *p; p++) { /* help text escapes backslash and newline */
      if (*p == '\\')
        PUT(b, "\\\\");
      else if (*p == '\n')
        PUT(b, "\\n");
      else
        put(b, p, 1);
    }
  }
  PUT(b, "\n# TYPE ");
  puts_(b, name);
  PUT(b, " ");
  puts_(b, type);
  PUT(b, "\n");
}

/* name_bucket{labels,le=".."} lines, _sum and _count for the histogram block at base. labels
 * is "" or 'a="x",b="y"'; le holds the bounds' text, ENG_NUM_TEXT bytes each. */
static void hist(eng_buf *b, int n, const char *name, const char *labels, size_t labels_len, unsigned base,
                 const char *le, int nb) {
  uint64_t cum = 0;
  size_t name_len = strlen(name);
  for (int i = 0; i <= nb; i++) {
    cum += sum_u(n, base + (unsigned)i);
    put(b, name, name_len);
    PUT(b, "_bucket{");
    if (labels_len) {
      put(b, labels, labels_len);
      PUT(b, ",");
    }
    PUT(b, "le=\"");
    if (i < nb)
      puts_(b, le + (size_t)i * ENG_NUM_TEXT);
    else
      PUT(b, "+Inf");
    PUT(b, "\"} ");
    put_u64(b, cum);
    PUT(b, "\n");
  }
  put(b, name, name_len);
  PUT(b, "_sum");
  if (labels_len) {
    PUT(b, "{");
    put(b, labels, labels_len);
    PUT(b, "}");
  }
  PUT(b, " ");
  put_num(b, sum_d(n, base + (unsigned)nb + 1));
  PUT(b, "\n");
  put(b, name, name_len);
  PUT(b, "_count");
  if (labels_len) {
    PUT(b, "{");
    put(b, labels, labels_len);
    PUT(b, "}");
  }
  PUT(b, " ");
  put_u64(b, cum);
  PUT(b, "\n");
}

/* Whether a route's block has seen a request (its histogram count): a route that has not has
 * no request counted either (each request counts in both), so the scrape skips its
 * NMETHODS x NSTATUSES request cells too. */
static int route_used(int n, const route *r) {
  for (int i = 0; i <= NDEFAULT_BUCKETS; i++)
    if (sum_u(n, r->base + R_HIST + (unsigned)i))
      return 1;
  return 0;
}

/* The default buckets as text, made by the first scrape (under reg.mu). */
static char default_le[NDEFAULT_BUCKETS * ENG_NUM_TEXT];
static int default_le_made;

int eng_metrics_render(eng_buf *out) {
  eng_buf b = {0};
  pthread_mutex_lock(&reg.mu);
  int n = atomic_load(&reg.nshards);
  if (!default_le_made) {
    for (int i = 0; i < NDEFAULT_BUCKETS; i++)
      num_text(default_le + (size_t)i * ENG_NUM_TEXT, default_buckets[i]);
    default_le_made = 1;
  }
  static char used[ENG_METRICS_MAX_ROUTES + 2];
  for (int r = 0; r < reg.nroutes; r++)
    used[r] = (char)route_used(n, &reg.routes[r]);
  head(&b, "apiengine_build_info", "gauge", "The running engine's version (always 1).");
  PUT(&b, "apiengine_build_info{version=\"" APIENGINE_VERSION "\"} 1\n");

  head(&b, "apiengine_requests_total", "counter",
       "Requests answered, by method, route pattern (unmatched: no route) and status.");
  for (int r = 0; r < reg.nroutes; r++) {
    const route *rt = &reg.routes[r];
    if (!used[r])
      continue;
    for (int m = 0; m < NMETHODS; m++)
      for (int s = 0; s < NSTATUSES; s++) {
        uint64_t v = sum_u(n, rt->base + R_REQUESTS + (unsigned)(m * NSTATUSES + s));
        if (v == 0)
          continue;
        PUT(&b, "apiengine_requests_total{method=\"");
        puts_(&b, methods[m]);
        PUT(&b, "\",");
        put(&b, rt->label, rt->label_len);
        PUT(&b, ",status=\"");
        if (s < NSTATUSES - 1)
          put_u64(&b, (uint64_t)statuses[s]);
        else
          PUT(&b, "other");
        PUT(&b, "\"} ");
        put_u64(&b, v);
        PUT(&b, "\n");
      }
  }
  head(&b, "apiengine_request_duration_seconds", "histogram",
       "Time from a request's first byte to its answer, by route pattern.");
  for (int r = 0; r < reg.nroutes; r++)
    if (used[r])
      hist(&b, n, "apiengine_request_duration_seconds", reg.routes[r].label, reg.routes[r].label_len,
           reg.routes[r].base + R_HIST, default_le, NDEFAULT_BUCKETS);
  head(&b, "apiengine_script_errors_total", "counter",
       "Handler calls that raised an error or blew a budget (answered 500 or 503), by route pattern.");
  for (int r = 0; r < reg.nroutes; r++) {
    uint64_t v = sum_u(n, reg.routes[r].base + R_ERRORS);
    if (v == 0)
      continue;
    PUT(&b, "apiengine_script_errors_total{");
    put(&b, reg.routes[r].label, reg.routes[r].label_len);
    PUT(&b, "} ");
    put_u64(&b, v);
    PUT(&b, "\n");
  }
  head(&b, "apiengine_budget_exceeded_total", "counter", "Handler calls stopped by their time or memory budget.");
  PUT(&b, "apiengine_budget_exceeded_total{kind=\"time\"} ");
  put_u64(&b, sum_u(n, G_BUDGET_TIME));
  PUT(&b, "\napiengine_budget_exceeded_total{kind=\"memory\"} ");
  put_u64(&b, sum_u(n, G_BUDGET_MEMORY));
  PUT(&b, "\n");
  head(&b, "apiengine_connections", "gauge",
       "Open client connections: idle (keep-alive, between requests), active (a request in progress), "
       "closing (answered, lingering before the close).");
  static const char *const states[] = {"idle", "active", "closing"};
  for (unsigned i = 0; i < 3; i++) {
    int64_t v = (int64_t)sum_u(n, G_CONN_IDLE + i); /* the wrapped sum of +1s and -1s */
    PUT(&b, "apiengine_connections{state=\"");
    puts_(&b, states[i]);
    PUT(&b, "\"} ");
    if (v < 0)
      PUT(&b, "-");
    put_u64(&b, v < 0 ? -(uint64_t)v : (uint64_t)v);
    PUT(&b, "\n");
  }
  head(&b, "apiengine_lua_memory_bytes", "gauge", "Bytes held by each worker's Lua state, after its last request.");
  for (int i = 0; i < n; i++) {
    PUT(&b, "apiengine_lua_memory_bytes{worker=\"");
    put_u64(&b, (uint64_t)i);
    PUT(&b, "\"} ");
    put_u64(&b, shard_u(i, G_LUA_MEMORY));
    PUT(&b, "\n");
  }
  head(&b, "apiengine_db_busy_waits_total", "counter",
       "Times a database statement found the database locked by another connection and waited.");
  PUT(&b, "apiengine_db_busy_waits_total ");
  put_u64(&b, sum_u(n, G_DB_BUSY));
  PUT(&b, "\n");
  head(&b, "apiengine_db_query_duration_seconds", "histogram",
       "Time SQLite spent running each statement (measured by SQLite to the millisecond).");
  hist(&b, n, "apiengine_db_query_duration_seconds", "", 0, G_DB_QUERY, default_le, NDEFAULT_BUCKETS);
  head(&b, "apiengine_reloads_total", "counter",
       "SIGHUP reloads: done (every worker took the new scripts), partial (some kept the old ones), "
       "refused (the check failed; nothing changed).");
  static const char *const results[] = {"done", "partial", "refused"};
  for (int i = 0; i < 3; i++) {
    PUT(&b, "apiengine_reloads_total{result=\"");
    puts_(&b, results[i]);
    PUT(&b, "\"} ");
    put_u64(&b, atomic_load_explicit(&reg.reloads[i], memory_order_relaxed));
    PUT(&b, "\n");
  }

  for (int fi = 0; fi < reg.nfams; fi++) {
    const family *f = &reg.fams[fi];
    head(&b, f->name,
         f->type == ENG_METRIC_COUNTER ? "counter"
         : f->type == ENG_METRIC_GAUGE ? "gauge"
                                       : "histogram",
         f->help);
    for (int si = 0; si < f->nseries; si++) {
      const series *se = &reg.series_tab[f->series[si]];
      size_t ll = strlen(se->labels);
      if (f->type == ENG_METRIC_HISTOGRAM) {
        hist(&b, n, f->name, se->labels, ll, se->base, f->le, f->nbuckets);
        continue;
      }
      puts_(&b, f->name);
      if (ll) {
        PUT(&b, "{");
        put(&b, se->labels, ll);
        PUT(&b, "}");
      }
      PUT(&b, " ");
      put_num(&b, sum_d(n, se->base));
      PUT(&b, "\n");
    }
  }
  pthread_mutex_unlock(&reg.mu);
  /* An eng_buf append fails only out of memory, and leaves the text short: the scrape then
   * gets what fitted (Prometheus rejects a cut line, and the next scrape tries again). */
  int rc = b.data ? eng_buf_append(out, b.data, b.len) : ENG_ENOMEM;
  eng_buf_free(&b);
  return rc;
}
