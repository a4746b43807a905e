/* server.h - listeners, workers and connections.
 *
 * eng_server_run binds the listening sockets (one per worker, SO_REUSEPORT),
 * starts the worker threads (each with its own loop, Lua runtime and database
 * connection), and blocks until SIGTERM or SIGINT. Then it stops accepting,
 * lets in-flight requests finish within cfg->drain_ms, closes every
 * connection and database, and returns 0. cfg->drain_ms is a deadline for the
 * whole stop: a worker still stuck in a handler ENG_DRAIN_GRACE_MS after it is
 * named in the log and left running, and the call returns ENG_EIO at once
 * (see eng_server_abandoned). Start-up failures (bind, scripts, database)
 * return a negative ENG_E* after logging why.
 *
 * SIGHUP reloads the scripts: the main thread asks hooks->reload_check, which checks a fresh
 * load of the scripts by itself and hands back the settings to use; if it refuses, nothing
 * changes. Else every worker builds a new runtime and swaps it in between two requests (a
 * worker whose build fails keeps its old one and logs why); one line logs the result once
 * every worker is done. */
#ifndef ENG_SERVER_H
#define ENG_SERVER_H

#include "buf.h"
#include "config.h"

#define ENG_SERVER_POLL_MS 250

typedef struct eng_server_hooks {
  /* On the main thread, at SIGHUP number reload_id: checks what a reload would load. Returns 0
   * with *settings filled (engine.config's packed settings for the new runtimes; the server
   * takes it over; it arrives empty), *routes (their count, for the log) and *load_budget_ms (the
   * fresh configuration's, which the workers load the scripts under), or an ENG_E* code
   * and a malloc'd *err saying why (file:line for a script), which the server logs in the one
   * line that refuses the reload. NULL: SIGHUP is ignored. */
  int (*reload_check)(void *ud, unsigned reload_id, eng_buf *settings, int *routes, int *load_budget_ms, char **err);
  /* On the main thread every ENG_SERVER_POLL_MS until it returns non-zero; NULL: never. The
   * handover uses it to wait for the old server's database lock. */
  int (*poll)(void *ud);
  void *ud;
  int routes; /* routes of the scripts as checked before the start, for the start-up line */
} eng_server_hooks;

/* Runs the server until SIGTERM / SIGINT (see above). hooks may be NULL (no reload). Unless
 * cfg->handover, first checks with eng_server_probe that no other process listens on the
 * address: SO_REUSEPORT would otherwise let two servers share the port without a word. */
int eng_server_run(const eng_config *cfg, const eng_server_hooks *hooks);

/* True once eng_server_run has given up on a worker still stuck in a handler past the drain
 * deadline (it then returns ENG_EIO). That worker still runs and uses the configuration and the
 * libraries' global state, so the process must end with _exit: no atexit handlers (OpenSSL's
 * cleanup frees what the worker may use), no freeing of the configuration. */
int eng_server_abandoned(void);

/* Binds a socket to cfg's address without SO_REUSEPORT and closes it: ENG_EEXISTS when
 * something listens there already (an apiengine, whose sockets have SO_REUSEPORT, included),
 * ENG_EIO for other bind errors, ENG_ECONFIG for an address that does not resolve; *err (if not
 * NULL) gets a malloc'd message. 0 when the port is free, and always for port 0. */
int eng_server_probe(const eng_config *cfg, char **err);

#endif
