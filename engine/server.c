/* server.c - workers, listeners, signals, reload and drain (see server.h); the connections
 * themselves live in conn.c, what both share in server_int.h. */
#define _GNU_SOURCE /* pthread_setname_np */
#include "server.h"
#include "server_int.h"
#include "log.h"
#include "metrics.h"
#include "pg_migrate.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <malloc.h>
#include <netdb.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

atomic_int eng_server_stopping;

/* The database's checkpointer while eng_server_run runs (db.h): set before the first worker
 * starts and cleared after the last one has closed its connection. When it runs, the workers'
 * commits never checkpoint the WAL themselves. */
static eng_db_checkpointer *checkpointer;

/* ---- worker lifecycle ---------------------------------------------------------------------- */

/* Memory back to the system once a worker is quiet. A spike (big answers, a burst of
 * connections, an ingestion that filled the page cache) leaves memory behind that nothing
 * frees while no request comes: the Lua state's garbage (a minor collection runs only as the
 * state allocates), the worker's answer buffers at the size of its largest answer, SQLite's
 * page cache, and the pages glibc keeps in its arenas once all that is freed (it returns only
 * the top of the main heap by itself). So after ENG_RELEASE_IDLE_MS without an answer and with
 * all answers sent, once per busy period: a full collection, the buffers freed past ENG_KEEP_BUF, the unused cache
 * pages released, and malloc_trim, which hands the free pages of every arena back (madvise).
 * A worker that keeps answering never pays for it; one that idles pays once, about a
 * millisecond. */
#if defined(__SANITIZE_ADDRESS__)
/* ASan's allocator ignores malloc_trim and holds freed memory in its quarantine: this drains
 * the quarantine and returns free memory (the sanitizer build then behaves as the real one,
 * and the memory spec holds there too). Declared here: GCC 12 ships no allocator_interface.h. */
void __sanitizer_purge_allocator(void);
#define purge_allocator() __sanitizer_purge_allocator()
#else
#define purge_allocator() ((void)0)
#endif

static void release_memory(worker *w) {
  eng_runtime_collect(w->rt);
  if (w->out.cap > ENG_KEEP_BUF)
    eng_buf_free(&w->out);
  if (w->resp.body.cap > ENG_KEEP_BUF || w->resp.headers.cap > ENG_KEEP_BUF)
    eng_response_free(&w->resp); /* back to the init state, as eng_response_reset expects */
  if (w->db)
    (void)sqlite3_db_release_memory(eng_db_handle(w->db));
  (void)malloc_trim(0);
  purge_allocator();
  eng_metrics_lua_memory(eng_runtime_memory(w->rt));
}

static void on_sweep(uv_timer_t *t) {
  worker *w = t->data;
  uint64_t now = uv_now(&w->loop);
  eng_conn_sweep(w, now);
  if (w->answered || w->queued > 0) { /* unsent answers: their memory is still in use */
    w->answered = 0;
    w->quiet_since = now;
  } else if (w->to_release && now - w->quiet_since >= ENG_RELEASE_IDLE_MS) {
    w->to_release = 0;
    release_memory(w);
  }
}

static void close_handle_once(uv_handle_t *h) {
  if (!uv_is_closing(h))
    uv_close(h, NULL);
}

/* Lets go of the worker's PostgreSQL pool: the runtime first (pg.h: detach before closing), then
 * the pool, whose handles close as the loop runs on. No request is suspended on it by now: every
 * connection has closed, and their suspended requests were abandoned with them. */
static void close_pool(worker *w) {
  if (w->pg == NULL)
    return;
  if (w->rt)
    eng_runtime_set_pg(w->rt, NULL);
  eng_pg_close(w->pg, NULL, NULL);
  w->pg = NULL;
}

/* Once stopping and no connection is left, close the worker's own handles: the loop ends. */
void eng_worker_maybe_finish(worker *w) {
  if (!w->stopping || w->nconns > 0)
    return;
  close_handle_once((uv_handle_t *)&w->sweep);
  close_handle_once((uv_handle_t *)&w->wake);
  close_handle_once((uv_handle_t *)&w->reload);
  close_pool(w); /* its connections would keep the loop running */
}

static void on_wake(uv_async_t *a) {
  worker *w = a->data;
  if (w->stopping)
    return;
  w->stopping = 1;
  w->drain_deadline = uv_now(&w->loop) + (uint64_t)w->cfg->drain_ms;
  eng_conn_drain(w); /* adopts the listener's backlog first */
  close_handle_once((uv_handle_t *)&w->listener);
  eng_worker_maybe_finish(w);
}

static void close_any(uv_handle_t *h, void *arg) {
  (void)arg;
  close_handle_once(h);
}

static eng_runtime_options runtime_options(const worker *w, const eng_buf *settings, int load_budget_ms) {
  return (eng_runtime_options){
      .scripts_dir = w->cfg->scripts_dir,
      .settings = settings,
      .budget_ms = w->cfg->budget_ms,
      .load_budget_ms = load_budget_ms,
      .memory_limit = w->cfg->memory_limit,
      .db = w->db, /* scripts may read the database while they load (e.g. to warm caches) */
      .pg = w->pg,
  };
}

static void gen_release(reloads *rl, reload_gen *g) {
  if (g == NULL)
    return;
  uv_mutex_lock(&rl->mu);
  int last = --g->refs == 0;
  uv_mutex_unlock(&rl->mu);
  if (last) {
    eng_buf_free(&g->settings);
    free(g);
  }
}

/* A reload: build a fresh runtime from the latest accepted reload and swap it in. This runs
 * on the loop between two callbacks, and requests are answered synchronously inside the read
 * callback, so no request is in flight on the old state when it goes. */
static void on_reload(uv_async_t *a) {
  worker *w = a->data;
  reloads *rl = w->rl;
  if (w->stopping)
    return;
  uv_mutex_lock(&rl->mu);
  reload_gen *g = rl->current;
  if (g)
    g->refs++;
  uv_mutex_unlock(&rl->mu);
  if (g == NULL || atomic_load(&w->reload_seen) == g->id) {
    gen_release(rl, g);
    return;
  }
  eng_runtime_options ro = runtime_options(w, &g->settings, g->load_budget_ms);
  eng_runtime *fresh = NULL;
  char *err = NULL;
  int rc = eng_runtime_new(&fresh, &ro, &err);
  if (rc == 0) {
    /* Requests suspended on the old runtime finish on it: it is freed after the last of them
     * (eng_runtime_free defers). The database's progress handler is the new runtime's: set
     * again, since freeing the old one takes it off the shared connection. */
    eng_runtime_free(w->rt);
    eng_runtime_set_loop(fresh, &w->loop);
    if (!w->pg)
      eng_runtime_set_db(fresh, w->db);
    w->rt = fresh;
    eng_metrics_lua_memory(eng_runtime_memory(w->rt));
  } else {
    eng_log_error("reload %u: worker %d keeps the scripts it had: %s", g->id, w->id, err ? err : eng_strerror(rc));
  }
  free(err);
  atomic_store(&w->reload_failed, rc != 0);
  atomic_store(&w->reload_seen, g->id);
  gen_release(rl, g);
  (void)uv_async_send(&rl->done); /* open until every worker is joined */
}

/* Sets up the worker's loop (initialised by the caller): the listener on its socket, the wake-up
 * async, the sweep timer. Returns 0 or a libuv code; on failure the caller closes what is on the
 * loop (w->fd stays with the caller unless the listener took it). */
static int worker_listen(worker *w) {
  int rc;
  if ((rc = uv_tcp_init(&w->loop, &w->listener)) != 0)
    return rc;
  w->listener.data = w;
  if ((rc = uv_tcp_open(&w->listener, w->fd)) != 0)
    goto fail;
  w->fd = -1; /* closed with the listener from here on */
  if ((rc = uv_listen((uv_stream_t *)&w->listener, ENG_BACKLOG, eng_conn_on_connection)) != 0 ||
      (rc = uv_async_init(&w->loop, &w->wake, on_wake)) != 0)
    goto fail;
  w->wake.data = w;
  if ((rc = uv_async_init(&w->loop, &w->reload, on_reload)) != 0)
    goto fail;
  w->reload.data = w;
  if ((rc = uv_timer_init(&w->loop, &w->sweep)) != 0)
    goto fail;
  w->sweep.data = w;
  if ((rc = uv_timer_start(&w->sweep, on_sweep, ENG_SWEEP_MS, ENG_SWEEP_MS)) != 0)
    goto fail;
  return 0;
fail:
  return rc;
}

/* The database of a worker: its own SQLite connection, or its pool of PostgreSQL connections on
 * its loop (they connect while the scripts load). */
static int worker_db(worker *w, char **err) {
  if (eng_config_db_is_pg(w->cfg->db_path)) {
    eng_pg_options po = {.size = w->cfg->db_pool};
    return eng_pg_open(&w->pg, &w->loop, w->cfg->db_path, &po, err);
  }
  eng_db_options dbo = {.synchronous = w->cfg->synchronous, .no_autocheckpoint = checkpointer != NULL};
  return eng_db_open(&w->db, w->cfg->db_path, &dbo, err);
}

static void worker_main(void *arg) {
  worker *w = arg;
  char *err = NULL;
  int rc, loop_made = 0;
  char name[16]; /* what top -H, perf and /proc/PID/task/TID/comm show: per-worker figures */
  snprintf(name, sizeof name, "worker-%d", w->id);
  (void)pthread_setname_np(pthread_self(), name);
  eng_metrics_bind_shard(w->id); /* a no-op shard-less unless --metrics-listen */
  if ((rc = uv_loop_init(&w->loop)) != 0) {
    eng_log_error("worker %d: loop: %s", w->id, uv_strerror(rc));
    rc = eng_err_from_uv(rc);
    goto fail;
  }
  loop_made = 1;
  if ((rc = worker_db(w, &err)) != 0) {
    char shown[512];
    eng_log_error("worker %d: database %s: %s", w->id, eng_pg_conninfo_redact(w->cfg->db_path, shown, sizeof shown),
                  err ? err : eng_strerror(rc));
    goto fail;
  }
  eng_runtime_options ro = runtime_options(w, &w->cfg->settings, w->cfg->load_budget_ms);
  ro.idle_loop = &w->loop; /* not running yet: a script may wait for a query while it loads */
  if ((rc = eng_runtime_new(&w->rt, &ro, &err)) != 0) {
    eng_log_error("%s", err ? err : eng_strerror(rc));
    goto fail;
  }
  eng_metrics_lua_memory(eng_runtime_memory(w->rt));
  if ((rc = worker_listen(w)) != 0) {
    eng_log_error("worker %d: listen: %s", w->id, uv_strerror(rc));
    rc = eng_err_from_uv(rc);
    goto fail;
  }
  eng_runtime_set_loop(w->rt, &w->loop); /* handlers may suspend from here on */
  w->start_rc = 0;
  uv_sem_post(&w->started);

  uv_run(&w->loop, UV_RUN_DEFAULT);

  if ((rc = uv_loop_close(&w->loop)) != 0)
    eng_log_warn("worker %d: loop closed with handles still open: %s", w->id, uv_strerror(rc));
  eng_runtime_free(w->rt);
  eng_db_close(w->db);
  eng_response_free(&w->resp);
  eng_buf_free(&w->out);
  atomic_store(&w->finished, 1);
  (void)uv_async_send(&w->sh->exited); /* closed only once every worker has finished */
  return;

fail:
  free(err);
  eng_runtime_free(w->rt);
  w->rt = NULL;
  if (loop_made) { /* the pool's and the listener's handles close as the loop runs */
    close_pool(w);
    uv_walk(&w->loop, close_any, NULL);
    uv_run(&w->loop, UV_RUN_DEFAULT);
    (void)uv_loop_close(&w->loop); /* every handle is closed: cannot be busy */
  }
  eng_db_close(w->db);
  w->db = NULL;
  w->start_rc = rc ? rc : ENG_EIO;
  atomic_store(&w->finished, 1);
  uv_sem_post(&w->started);
}

/* ---- listening sockets --------------------------------------------------------------------- */

static int bind_socket(const struct sockaddr *sa, socklen_t salen, int *out) {
  int fd = socket(sa->sa_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0)
    return -errno;
  int one = 1;
  if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) != 0 ||
      setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one) != 0 || bind(fd, sa, salen) != 0) {
    int e = errno;
    close(fd);
    return -e;
  }
  *out = fd;
  return 0;
}

static int resolve(const eng_config *cfg, struct sockaddr_storage *ss, socklen_t *sl, char **err) {
  struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM, .ai_flags = AI_PASSIVE};
  struct addrinfo *ai = NULL;
  char port[16];
  snprintf(port, sizeof port, "%d", cfg->port);
  int gai = getaddrinfo(cfg->listen_host, port, &hints, &ai);
  if (gai != 0)
    return eng_errorf(err, ENG_ECONFIG, "cannot resolve listen address '%s': %s", cfg->listen_host, gai_strerror(gai));
  *sl = ai->ai_addrlen;
  memcpy(ss, ai->ai_addr, ai->ai_addrlen);
  freeaddrinfo(ai);
  return 0;
}

/* Without SO_REUSEPORT, bind fails with EADDRINUSE while any socket listens on the address,
 * SO_REUSEPORT or not; SO_REUSEADDR still lets it past connections in TIME_WAIT. */
static int probe_bind(const struct sockaddr *sa, socklen_t salen) {
  int fd = socket(sa->sa_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0)
    return -errno;
  int one = 1, rc = 0;
  if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) != 0 || bind(fd, sa, salen) != 0)
    rc = -errno;
  close(fd);
  return rc;
}

static int probe_addr(const eng_config *cfg, const struct sockaddr_storage *ss, socklen_t sl, char **err) {
  if (cfg->port == 0)
    return 0;
  int e = probe_bind((const struct sockaddr *)ss, sl);
  if (e == -EADDRINUSE)
    return eng_errorf(err, ENG_EEXISTS,
                      "cannot listen on %s:%d: %s: another process listens there (another apiengine? stop it "
                      "first, or start this one with --handover to take over from it)",
                      cfg->listen_host, cfg->port, strerror(-e));
  if (e != 0)
    return eng_errorf(err, ENG_EIO, "cannot listen on %s:%d: %s", cfg->listen_host, cfg->port, strerror(-e));
  return 0;
}

int eng_server_probe(const eng_config *cfg, char **err) {
  struct sockaddr_storage ss;
  socklen_t sl = 0;
  if (err)
    *err = NULL;
  int rc = resolve(cfg, &ss, &sl, err);
  if (rc == 0)
    rc = probe_addr(cfg, &ss, sl, err);
  return rc ? rc : eng_metrics_srv_probe(cfg, err);
}

/* Binds one socket per worker on the same address. Port 0 picks a free port once. Unless
 * handing over, first makes sure nobody else listens there. */
static int bind_all(const eng_config *cfg, worker *ws, int n, int *port_out) {
  struct sockaddr_storage ss;
  socklen_t sl = 0;
  char *err = NULL;
  int rc = resolve(cfg, &ss, &sl, &err);
  if (rc == 0 && !cfg->handover)
    rc = probe_addr(cfg, &ss, sl, &err);
  if (rc == 0 && !cfg->handover)
    rc = eng_metrics_srv_probe(cfg, &err);
  if (rc != 0) {
    eng_log_error("%s", err ? err : eng_strerror(rc));
    free(err);
    return rc;
  }
  for (int i = 0; i < n; i++) {
    int e = bind_socket((struct sockaddr *)&ss, sl, &ws[i].fd);
    if (e != 0) {
      eng_log_error("cannot listen on %s:%d: %s", cfg->listen_host, cfg->port, strerror(-e));
      for (int j = 0; j < i; j++)
        close(ws[j].fd);
      return ENG_EIO;
    }
    if (i == 0 && cfg->port == 0) {
      socklen_t l = sizeof ss;
      if (getsockname(ws[0].fd, (struct sockaddr *)&ss, &l) != 0) {
        eng_log_error("cannot read the port picked for %s: %s", cfg->listen_host, strerror(errno));
        close(ws[0].fd);
        return ENG_EIO;
      }
    }
  }
  *port_out = ss.ss_family == AF_INET6 ? ntohs(((struct sockaddr_in6 *)&ss)->sin6_port)
                                       : ntohs(((struct sockaddr_in *)&ss)->sin_port);
  return 0;
}

/* ---- the main thread ----------------------------------------------------------------------- */

typedef struct main_ctx {
  worker *ws;
  int n;
  const eng_server_hooks *hooks;
  reloads *rl;
  uv_signal_t sigterm, sigint, sighup;
  uv_timer_t poll;
  uv_timer_t drain; /* the whole process's deadline once draining */
  server_shared *sh;
  int polling;
  int draining, timed_out;
  int signo;
  unsigned reload_id;   /* the last SIGHUP's number */
  unsigned accepted_id; /* the last reload the check accepted, 0 for none */
  unsigned logged_id;   /* the last reload whose result was logged */
  int reload_routes;
  uint64_t reload_t0;
} main_ctx;

/* uv_async_send fails only on a closed handle, and a started worker closes its
 * wake-up handle only after it was told to stop: nothing to undo. */
static void stop_workers(main_ctx *m) {
  for (int i = 0; i < m->n; i++)
    if (m->ws[i].start_rc == 0)
      (void)uv_async_send(&m->ws[i].wake);
}

static int all_finished(const main_ctx *m) {
  for (int i = 0; i < m->n; i++)
    if (!atomic_load(&m->ws[i].finished))
      return 0;
  return 1;
}

/* A worker's loop has ended: once all have, the drain is over (the main loop ends). */
static void on_worker_exited(uv_async_t *a) {
  main_ctx *m = a->data;
  if (!m->draining || !all_finished(m))
    return;
  m->draining = 0;
  uv_close((uv_handle_t *)&m->drain, NULL);
  uv_close((uv_handle_t *)&m->sh->exited, NULL);
}

/* --drain-timeout (and ENG_DRAIN_GRACE_MS for closing) has passed and a worker has not ended:
 * it is stuck in a handler (a long busy wait on the database, a long C call) that nothing can
 * interrupt. Name it and end the main loop; eng_server_run returns without waiting for it. */
static void on_drain_timeout(uv_timer_t *t) {
  main_ctx *m = t->data;
  if (!m->draining)
    return;
  uint64_t now = uv_hrtime();
  for (int i = 0; i < m->n; i++) {
    if (atomic_load(&m->ws[i].finished))
      continue;
    uint64_t since = atomic_load(&m->ws[i].busy_since);
    if (since != 0 && since <= now)
      eng_log_error("drain timeout (%d ms): worker %d is still busy, in one handler for %.1f s; exiting without it",
                    m->ws[0].cfg->drain_ms, i, (double)(now - since) / 1e9);
    else
      eng_log_error("drain timeout (%d ms): worker %d has not finished; exiting without it", m->ws[0].cfg->drain_ms, i);
  }
  m->draining = 0;
  m->timed_out = 1;
  uv_close((uv_handle_t *)&m->drain, NULL);
  uv_unref((uv_handle_t *)&m->sh->exited); /* left open: the stuck worker may still send to it */
}

static void on_signal(uv_signal_t *s, int signo) {
  main_ctx *m = s->data;
  m->signo = signo;
  if (!m->draining && uv_timer_init(uv_default_loop(), &m->drain) == 0) {
    m->drain.data = m;
    m->draining = 1;
    uv_ref((uv_handle_t *)&m->sh->exited);
    if (uv_timer_start(&m->drain, on_drain_timeout, (uint64_t)m->ws[0].cfg->drain_ms + ENG_DRAIN_GRACE_MS, 0) != 0)
      eng_log_warn("cannot start the drain timer: the drain waits for every worker");
  }
  atomic_store(&eng_server_stopping, 1);
  eng_log_info("received %s: draining (up to %d ms)", signo == SIGTERM ? "SIGTERM" : "SIGINT", m->ws[0].cfg->drain_ms);
  stop_workers(m);
  uv_close((uv_handle_t *)&m->sigterm, NULL);
  uv_close((uv_handle_t *)&m->sigint, NULL);
  uv_close((uv_handle_t *)&m->sighup, NULL);
  (void)signal(SIGHUP, SIG_IGN); /* closing the handle restored the default, which kills */
  if (m->polling)
    uv_close((uv_handle_t *)&m->poll, NULL);
  m->polling = 0;
}

/* SIGHUP: check the reload on this thread, then tell every worker. */
static void on_sighup(uv_signal_t *s, int signo) {
  (void)signo;
  main_ctx *m = s->data;
  unsigned id = ++m->reload_id;
  const eng_server_hooks *h = m->hooks;
  if (h == NULL || h->reload_check == NULL) {
    eng_log_warn("received SIGHUP: this server cannot reload; ignored");
    return;
  }
  eng_log_info("received SIGHUP: reload %u: checking the scripts", id);
  uint64_t t0 = uv_hrtime();
  reload_gen *g = calloc(1, sizeof *g);
  int routes = 0, rc = g ? 0 : ENG_ENOMEM;
  char *err = NULL;
  if (g) /* calloc'd: g->settings is a valid empty buffer */
    rc = h->reload_check(h->ud, id, &g->settings, &routes, &g->load_budget_ms, &err);
  if (rc != 0) {
    eng_log_error("reload %u refused: %s; nothing changed, the old scripts keep serving", id,
                  err ? err : eng_strerror(rc));
    eng_metrics_reload("refused");
    free(err);
    if (g)
      eng_buf_free(&g->settings);
    free(g);
    return;
  }
  free(err);
  g->id = id;
  g->refs = 1; /* rl->current's */
  uv_mutex_lock(&m->rl->mu);
  reload_gen *old = m->rl->current;
  m->rl->current = g;
  uv_mutex_unlock(&m->rl->mu);
  gen_release(m->rl, old);
  m->accepted_id = id;
  m->reload_routes = routes;
  m->reload_t0 = t0;
  for (int i = 0; i < m->n; i++)
    (void)uv_async_send(&m->ws[i].reload); /* open until the worker is told to stop */
}

/* A worker finished a reload: once all have finished the latest, log the one result line. */
static void on_reload_done(uv_async_t *a) {
  main_ctx *m = a->data;
  unsigned id = m->accepted_id;
  int kept = 0;
  if (id == 0 || m->logged_id == id || atomic_load(&eng_server_stopping))
    return;
  for (int i = 0; i < m->n; i++) {
    if (atomic_load(&m->ws[i].reload_seen) != id)
      return;
    kept += atomic_load(&m->ws[i].reload_failed);
  }
  m->logged_id = id;
  eng_metrics_reload(kept == 0 ? "done" : "partial");
  double ms = (double)(uv_hrtime() - m->reload_t0) / 1e6;
  if (kept == 0)
    eng_log_info("reload %u done: %d worker%s serve%s the new scripts (%d routes), in %.0f ms", id, m->n,
                 m->n == 1 ? "" : "s", m->n == 1 ? "s" : "", m->reload_routes, ms);
  else
    eng_log_warn("reload %u partly failed: %d of %d workers serve the new scripts, %d kept the ones they had (above)",
                 id, m->n - kept, m->n, kept);
}

static void on_poll(uv_timer_t *t) {
  main_ctx *m = t->data;
  if (m->hooks->poll(m->hooks->ud) != 0 && m->polling) {
    m->polling = 0;
    uv_close((uv_handle_t *)&m->poll, NULL);
  }
}

/* Installs the SIGTERM, SIGINT and SIGHUP handlers (and the poll timer) on the default loop.
 * 0 or an ENG_E* code (after logging why; what it made is closed). */
static int watch_signals(main_ctx *m) {
  uv_loop_t *loop = uv_default_loop();
  int rc;
  m->sigterm.data = m->sigint.data = m->sighup.data = m->poll.data = m;
  if ((rc = uv_signal_init(loop, &m->sigterm)) != 0)
    goto out;
  if ((rc = uv_signal_init(loop, &m->sigint)) != 0) {
    uv_close((uv_handle_t *)&m->sigterm, NULL);
    goto out;
  }
  if ((rc = uv_signal_init(loop, &m->sighup)) != 0) {
    uv_close((uv_handle_t *)&m->sigterm, NULL);
    uv_close((uv_handle_t *)&m->sigint, NULL);
    goto out;
  }
  if ((rc = uv_signal_start(&m->sigterm, on_signal, SIGTERM)) != 0 ||
      (rc = uv_signal_start(&m->sigint, on_signal, SIGINT)) != 0 ||
      (rc = uv_signal_start(&m->sighup, on_sighup, SIGHUP)) != 0) {
    uv_close((uv_handle_t *)&m->sigterm, NULL);
    uv_close((uv_handle_t *)&m->sigint, NULL);
    uv_close((uv_handle_t *)&m->sighup, NULL);
    goto out;
  }
  /* Without the timer only the handover's wait is lost: it says so and goes on. */
  if (m->hooks && m->hooks->poll) {
    if (uv_timer_init(loop, &m->poll) == 0 && uv_timer_start(&m->poll, on_poll, 0, ENG_SERVER_POLL_MS) == 0)
      m->polling = 1;
    else
      eng_log_warn("cannot start the handover timer: the database lock is not taken over");
  }
out:
  if (rc != 0) {
    eng_log_error("cannot watch signals: %s", uv_strerror(rc));
    uv_run(loop, UV_RUN_DEFAULT); /* finish the closes */
  }
  return eng_err_from_uv(rc);
}

/* Closes what watch_signals made (a start that failed after it). */
static void unwatch_signals(main_ctx *m) {
  close_handle_once((uv_handle_t *)&m->sigterm);
  close_handle_once((uv_handle_t *)&m->sigint);
  close_handle_once((uv_handle_t *)&m->sighup);
  if (m->polling)
    close_handle_once((uv_handle_t *)&m->poll);
  m->polling = 0;
  (void)signal(SIGHUP, SIG_IGN);
}

/* After a drain timeout, the workers still running keep using these: they stay allocated (and
 * reachable, for leak checkers) until the process exits. */
static worker *abandoned_workers;
static server_shared *abandoned_shared;

int eng_server_abandoned(void) { return abandoned_workers != NULL; }

int eng_server_run(const eng_config *cfg, const eng_server_hooks *hooks) {
  int n = cfg->workers;
  int rc = 0, port = 0, timed_out = 0;
  eng_metrics_srv *msrv = NULL;
  signal(SIGPIPE, SIG_IGN);
  atomic_store(&eng_server_stopping, 0);
  reloads rl = {.current = NULL};
  if (uv_mutex_init(&rl.mu) != 0)
    return ENG_EIO;
  if (uv_async_init(uv_default_loop(), &rl.done, on_reload_done) != 0) {
    uv_mutex_destroy(&rl.mu);
    return ENG_EIO;
  }
  uv_unref((uv_handle_t *)&rl.done); /* the loop ends with the signal handles; this one is closed last */
  worker *ws = calloc((size_t)n, sizeof *ws);
  server_shared *sh = calloc(1, sizeof *sh);
  if (ws == NULL || sh == NULL || uv_async_init(uv_default_loop(), &sh->exited, on_worker_exited) != 0) {
    free(sh);
    sh = NULL;
    rc = ENG_ENOMEM;
    goto out;
  }
  uv_unref((uv_handle_t *)&sh->exited); /* referenced while draining */
  sh->max_conns = cfg->max_connections;
  if ((rc = bind_all(cfg, ws, n, &port)) != 0)
    goto out;
  /* The metrics listener, when asked for, before the workers: they record only once it is on. */
  if (cfg->metrics_host && ((rc = eng_metrics_enable(n)) != 0 || (rc = eng_metrics_srv_start(&msrv, cfg)) != 0)) {
    for (int i = 0; i < n; i++)
      close(ws[i].fd);
    goto out;
  }
  if (!eng_config_db_is_pg(cfg->db_path)) { /* PostgreSQL checkpoints by itself */
    eng_db_checkpointer_options cpo = {.synchronous = cfg->synchronous};
    char *cperr = NULL;
    if (eng_db_checkpointer_start(&checkpointer, cfg->db_path, &cpo, &cperr) != 0)
      eng_log_warn("%s; commits checkpoint the WAL themselves", cperr ? cperr : "db: no checkpointer");
    free(cperr);
  }
  /* The signal handlers come before the first worker: a worker serves as soon as it listens,
   * and a SIGTERM then must drain, not kill (libuv queues it until the loop below runs). */
  main_ctx m = {.ws = ws, .n = 0, .hooks = hooks, .rl = &rl, .sh = sh}; /* n: the started workers, below */
  rl.done.data = &m;
  sh->exited.data = &m;
  if ((rc = watch_signals(&m)) != 0)
    goto out;
  int started = 0;
  for (int i = 0; i < n; i++) {
    worker *w = &ws[i];
    w->id = i;
    w->cfg = cfg;
    w->rl = &rl;
    w->sh = sh;
    eng_response_init(&w->resp);
    if (uv_sem_init(&w->started, 0) != 0) {
      eng_log_error("worker %d: cannot create its start-up semaphore", i);
      w->start_rc = ENG_EIO;
      break;
    }
    if (uv_thread_create(&w->thread, worker_main, w) != 0) {
      eng_log_error("worker %d: cannot start its thread", i);
      uv_sem_destroy(&w->started);
      w->start_rc = ENG_EIO;
      break;
    }
    uv_sem_wait(&w->started);
    started++;
    if (w->start_rc != 0)
      break;
  }
  m.n = started; /* only started workers have a wake-up handle */
  int ok = started == n;
  for (int i = 0; i < started; i++)
    ok = ok && ws[i].start_rc == 0;
  if (!ok) {
    rc = ENG_EIO;
    stop_workers(&m);
    unwatch_signals(&m);
  } else {
    const char *v6 = strchr(cfg->listen_host, ':') ? "]" : "";
    char db_shown[512];
    eng_log_info("apiengine %s listening on http://%s%s%s:%d (config %s%s%s, scripts '%s', schema '%s', db '%s', "
                 "%d worker%s, %d routes)",
                 APIENGINE_VERSION, *v6 ? "[" : "", cfg->listen_host, v6, port, cfg->config_file ? "'" : "",
                 cfg->config_file ? cfg->config_file : "none", cfg->config_file ? "'" : "", cfg->scripts_dir,
                 cfg->schema_dir, eng_pg_conninfo_redact(cfg->db_path, db_shown, sizeof db_shown), n, n == 1 ? "" : "s",
                 hooks ? hooks->routes : 0);
    eng_metrics_srv_ready(msrv, 1);
    uv_run(uv_default_loop(), UV_RUN_DEFAULT);
  }
  timed_out = m.timed_out;
  if (timed_out) {
    /* The stuck workers still use ws, sh, cfg and their runtimes: join the others only, free
     * nothing they could touch, and let the caller exit. Reloads cannot reach them any more
     * (the signal handlers are closed), so rl is not used again. */
    for (int i = 0; i < started; i++)
      if (atomic_load(&ws[i].finished) && uv_thread_join(&ws[i].thread) != 0)
        eng_log_error("worker %d: cannot join its thread", i);
    abandoned_workers = ws;
    abandoned_shared = sh;
    rc = ENG_EIO;
    goto out;
  }
  for (int i = 0; i < started; i++)
    if (uv_thread_join(&ws[i].thread) != 0)
      eng_log_error("worker %d: cannot join its thread", i);
  for (int i = 0; i < n; i++) {
    if (ws[i].fd >= 0)
      close(ws[i].fd);
    if (i < started)
      uv_sem_destroy(&ws[i].started);
  }
out:
  eng_metrics_srv_stop(msrv); /* it answered /readyz 503 through the drain */
  if (!timed_out) {
    eng_metrics_disable();                  /* a stuck worker may still record into its shard */
    eng_db_checkpointer_stop(checkpointer); /* every worker has closed its connection: the last checkpoint */
    checkpointer = NULL;
  }
  if (sh && !timed_out && !uv_is_closing((uv_handle_t *)&sh->exited))
    uv_close((uv_handle_t *)&sh->exited, NULL); /* every worker has been joined */
  uv_close((uv_handle_t *)&rl.done, NULL);      /* no worker is left to send to it */
  uv_run(uv_default_loop(), UV_RUN_DEFAULT);
  if (!timed_out) {
    (void)uv_loop_close(uv_default_loop()); /* every handle is closed by now */
    free(ws);
    free(sh);
  }
  gen_release(&rl, rl.current);
  uv_mutex_destroy(&rl.mu);
  if (rc == 0)
    eng_log_info("stopped cleanly");
  return rc;
}
