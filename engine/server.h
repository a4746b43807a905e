/* server.h - listeners, workers and connections.
 *
 * eng_server_run binds the listening sockets (one per worker, SO_REUSEPORT),
 * starts the worker threads (each with its own loop, Lua runtime and database
 * connection), and blocks until SIGTERM or SIGINT. Then it stops accepting,
 * lets in-flight requests finish within cfg->drain_ms, closes every
 * connection and database, and returns 0. Start-up failures (bind, scripts,
 * database) return a negative ENG_E* after logging why. */
#ifndef ENG_SERVER_H
#define ENG_SERVER_H

#include "config.h"

int eng_server_run(const eng_config *cfg);

#endif
