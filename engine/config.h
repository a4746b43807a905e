/* config.h - engine settings from defaults, a config file, the environment and flags.
 *
 * Precedence, lowest first: built-in defaults, the config file (a Lua file
 * returning a table, evaluated with no globals but its own), APIENGINE_*
 * environment variables, command-line flags. The config file is evaluated once,
 * here; its `settings` table (for scripts, engine.config) is packed into
 * eng_config.settings, which each worker's Lua state rebuilds (lua_config.h). */
#ifndef ENG_CONFIG_H
#define ENG_CONFIG_H

#include "buf.h"
#include "http.h"
#include "log.h"
#include "netaddr.h"

#include <stddef.h>

#define ENG_DEFAULT_LISTEN "127.0.0.1:8080"
#define ENG_DEFAULT_SCRIPTS "scripts"
#define ENG_DEFAULT_SCHEMA "schema"
#define ENG_DEFAULT_DB "data/apiengine.db"
#define ENG_DEFAULT_HEADER_TIMEOUT_MS 10000
#define ENG_DEFAULT_IDLE_TIMEOUT_MS 60000
#define ENG_DEFAULT_BODY_TIMEOUT_MS 10000
#define ENG_DEFAULT_SEND_TIMEOUT_MS 60000
#define ENG_DEFAULT_MAX_CONNECTIONS 20000
#define ENG_DEFAULT_DRAIN_MS 10000
#define ENG_DEFAULT_BUDGET_MS 1000
#define ENG_DEFAULT_LOAD_BUDGET_MS 30000
#define ENG_DEFAULT_MEMORY_MB 256
#define ENG_MAX_WORKERS 256

typedef struct eng_config {
  char *listen_host; /* malloc'd */
  int port;
  int workers;
  char *scripts_dir;
  char *schema_dir;
  char *db_path;     /* a SQLite file, or PostgreSQL's conninfo (eng_config_db_is_pg) */
  int db_pool;       /* PostgreSQL: connections per worker */
  char *key_file;    /* NULL: <db_path>.key on SQLite; PostgreSQL has no default (APIENGINE_KEY or this) */
  char *config_file; /* NULL when none */
  char *key;         /* server key material, NULL to use/generate the key file */
  char *synchronous; /* FULL (default), NORMAL, OFF */
  eng_log_level log_level;
  int log_json;
  int access_log;
  eng_http_limits limits;
  int header_timeout_ms; /* a request's line and headers, from its first byte */
  int body_timeout_ms;   /* between two reads of a request body */
  int idle_timeout_ms;   /* a keep-alive connection with nothing to send, between requests */
  int send_timeout_ms;   /* between two completed writes while answers wait for the client */
  int max_connections;
  int drain_ms;
  int budget_ms;
  int load_budget_ms;  /* loading the scripts, all of them (start-up, reload, check) */
  int rekey_pause_ms;  /* apiengine rekey: a pause after each batch (0: none) */
  size_t memory_limit; /* bytes per worker Lua state */
  eng_buf settings;    /* the config file's `settings`, packed (lua_config.h); empty: none */
  char *pid_file;      /* written at start, removed at exit; NULL: none */
  int handover;        /* --handover: start beside a running server of the same database and port */
  char *metrics_host;  /* --metrics-listen: the metrics and health listener; NULL: none (the default) */
  int metrics_port;
  char *healthz_path;       /* answered 200 by the engine itself, before any Lua ("/healthz") */
  char *readyz_path;        /* 200 when the database answers and the scripts are loaded, else 503 ("/readyz") */
  char *real_ip_from;       /* --real-ip-from as given, NULL: none (the default) */
  eng_netaddr_list real_ip; /* its trusted proxies, parsed; empty: X-Forwarded-For is never read */
} eng_config;

/* Fills defaults. */
void eng_config_init(eng_config *c);
void eng_config_free(eng_config *c);

/* Applies, in order, the config file (path from --config / APIENGINE_CONFIG),
 * the environment and the flags in argv[first..argc). Unknown flags, bad
 * values, an unreadable config file and settings that are not data (a function)
 * are errors: ENG_ECONFIG with a malloc'd *err. *want_help / *want_version are set for --help / --version. */
int eng_config_load(eng_config *c, int argc, char **argv, int first, int *want_help, int *want_version, char **err);

/* Compares every option of a and b but those whose config-file key is in skip (NULL-terminated;
 * NULL: none) and writes the keys of those that differ into names (size bytes, ", "-separated,
 * truncated to fit); returns how many differ. Values are never written (the key is compared
 * like the rest, and named only as "key"). */
int eng_config_diff(const eng_config *a, const eng_config *b, const char *const *skip, char *names, size_t size);

/* The usage text for `apiengine serve` options (shared by --help). */
const char *eng_config_usage(void);

/* 1 when db (the --db value) names a PostgreSQL database: a libpq URI (postgresql://,
 * postgres://) or a keyword/value connection string (holds a '='); else 0: a SQLite file. */
int eng_config_db_is_pg(const char *db);

#endif
