/* metrics.h - the engine's metrics, kept in C and rendered in Prometheus text format 0.0.4.
 *
 * One registry per process. Each worker thread writes its own shard (eng_metrics_bind_shard):
 * plain relaxed atomic loads and stores on values no other thread writes, so the request path
 * takes no lock and makes no contended write. A scrape (eng_metrics_render, any thread) adds
 * the shards up with relaxed atomic loads: a read may miss an increment in flight, never tear.
 *
 * Every label space is bounded: methods and statuses are small fixed sets (anything else is
 * "other"), routes are the patterns the scripts registered (past ENG_METRICS_MAX_ROUTES they
 * count as "other"), a script metric has at most ENG_METRICS_MAX_SERIES label sets (a new one
 * past it is refused) and there are at most ENG_METRICS_MAX_FAMILIES script metrics.
 *
 * Recording functions do nothing on a thread without a shard (metrics off, the main thread,
 * `apiengine test`), so callers need not check. Declaring script metrics works either way (the
 * names and labels are checked the same), so a script behaves alike with metrics on or off. */
#ifndef ENG_METRICS_H
#define ENG_METRICS_H

#include "buf.h"

#include <stddef.h>
#include <stdint.h>

#define ENG_METRICS_MAX_SHARDS 256   /* workers */
#define ENG_METRICS_MAX_ROUTES 1024  /* distinct route patterns labelled (plus unmatched, other) */
#define ENG_METRICS_MAX_FAMILIES 256 /* script metrics */
#define ENG_METRICS_MAX_SERIES 100   /* label sets of one script metric */
#define ENG_METRICS_MAX_LABELS 8     /* label names of one script metric */
#define ENG_METRICS_MAX_BUCKETS 30   /* buckets of one script histogram */
#define ENG_METRICS_MAX_NAME 128     /* bytes of a metric or label name */
#define ENG_METRICS_MAX_VALUE 256    /* bytes of a label value */
#define ENG_METRICS_MAX_HELP 1024    /* bytes of a help text */

/* Turns recording on for a server with nshards workers (1..ENG_METRICS_MAX_SHARDS), before
 * the workers start. 0, ENG_EINVAL or ENG_ENOMEM. */
int eng_metrics_enable(int nshards);
/* Frees the shards once no thread records or renders any more (after the workers and the
 * metrics listener are joined); recording stays off. */
void eng_metrics_disable(void);
int eng_metrics_enabled(void);
/* Makes this thread record into shard i (a worker, at its start); -1 unbinds. */
void eng_metrics_bind_shard(int i);

/* ---- what the engine records (no-ops without a shard) ---- */

/* One answered request: route is the matched pattern, NULL for none ("unmatched"); method is
 * the request's (NULL or unknown: "other"). */
void eng_metrics_request(const char *route, const char *method, int status, double seconds);
void eng_metrics_script_error(const char *route);
void eng_metrics_budget_exceeded(int memory); /* kind "memory" when memory, else "time" */
/* A connection moves from state `from` to `to` (ENG_METRICS_CONN_*; NONE when it opens/closes). */
enum { ENG_METRICS_CONN_NONE = -1, ENG_METRICS_CONN_IDLE, ENG_METRICS_CONN_ACTIVE, ENG_METRICS_CONN_CLOSING };
void eng_metrics_conn_state(int from, int to);
void eng_metrics_lua_memory(size_t bytes);
void eng_metrics_db_busy_wait(void);
void eng_metrics_db_query(double seconds);
/* From any thread (the main thread's reloads). result: "done", "partial" or "refused". */
void eng_metrics_reload(const char *result);

/* Appends the whole exposition (text format 0.0.4) to out. 0 or ENG_ENOMEM. Any thread. */
int eng_metrics_render(eng_buf *out);

/* ---- script metrics (engine.metrics) ---- */

typedef enum { ENG_METRIC_COUNTER, ENG_METRIC_GAUGE, ENG_METRIC_HISTOGRAM } eng_metric_type;

/* Declares (or finds again) the script metric `name`, exposed as is. name: [a-zA-Z_:][a-zA-Z0-9_:]*,
 * not starting with "apiengine_" (the engine's) nor "__"; label names: [a-zA-Z_][a-zA-Z0-9_]*, not
 * "le", no duplicates. buckets (histograms only; NULL/0: the engine's defaults) strictly increasing
 * and finite. The same name declared again (another worker, a reload) with the same type, labels
 * and buckets is the same metric (*id the same); otherwise ENG_EEXISTS. ENG_EINVAL for a bad
 * argument, ENG_ETOOBIG past ENG_METRICS_MAX_FAMILIES. *why is a static message on error. All
 * strings are borrowed for the call. */
int eng_metrics_declare(eng_metric_type type, const char *name, const char *help, const char *const *labels,
                        int nlabels, const double *buckets, int nbuckets, int *id, const char **why);
int eng_metrics_family_labels(int id); /* its number of label names */
/* Label names of family id, in declared order (borrowed, valid for the process). */
const char *eng_metrics_family_label(int id, int i);
eng_metric_type eng_metrics_family_type(int id);

/* The series of family id for these label values (as many as it has labels, each
 * value/len), created on first use: 0 with *series set, ENG_ETOOBIG past
 * ENG_METRICS_MAX_SERIES (or the value is longer than ENG_METRICS_MAX_VALUE) with *why. Finding
 * an existing series takes no lock. */
int eng_metrics_series(int id, const char *const *values, const size_t *lens, int *series, const char **why);
/* Counter: add v (>= 0, the caller checks). Gauge: add v (may be negative). Histogram: observe v. */
void eng_metrics_series_add(int series, double v);
/* Gauge: set this worker's value (the scrape adds the workers' values). */
void eng_metrics_series_set(int series, double v);

#endif
