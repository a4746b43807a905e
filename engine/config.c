/* config.c - settings from defaults, file, environment, flags (see config.h). */
#include "config.h"
#include "error.h"
#include "lua_config.h"
#include "pg.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* T_FLAG: a flag without a value, which sets an int to 1 (no environment variable or file key). */
typedef enum {
  T_STR,
  T_INT,
  T_LISTEN,
  T_LEVEL,
  T_FORMAT,
  T_ONOFF,
  T_SYNC,
  T_SIZE,
  T_MB,
  T_FLAG,
  T_MLISTEN,
  T_PATH,
  T_NETLIST
} opt_type;

typedef struct opt {
  const char *flag; /* "--listen" */
  const char *env;  /* "APIENGINE_LISTEN"; NULL for a flag only */
  const char *key;  /* config file key */
  opt_type type;
  size_t offset;
  long min, max; /* for numbers */
  const char *help;
} opt;

#define OFF(f) offsetof(eng_config, f)
#define STRINGIFY_(x) #x
#define STRINGIFY(x) STRINGIFY_(x)

static const opt opts[] = {
    {"--listen", "APIENGINE_LISTEN", "listen", T_LISTEN, 0, 0, 0,
     "HOST:PORT to listen on (default " ENG_DEFAULT_LISTEN ")"},
    {"--workers", "APIENGINE_WORKERS", "workers", T_INT, OFF(workers), 1, ENG_MAX_WORKERS,
     "worker threads, each with its own loop, socket and Lua state (default: number of cores)"},
    {"--scripts", "APIENGINE_SCRIPTS", "scripts", T_STR, OFF(scripts_dir), 0, 0,
     "route scripts directory, or dirs joined by ':' to overlay (default " ENG_DEFAULT_SCRIPTS ")"},
    {"--schema", "APIENGINE_SCHEMA", "schema", T_STR, OFF(schema_dir), 0, 0,
     "migrations directory, or dirs joined by ':' (default " ENG_DEFAULT_SCHEMA ")"},
    {"--db", "APIENGINE_DB", "db", T_STR, OFF(db_path), 0, 0,
     "SQLite database file (default " ENG_DEFAULT_DB "), or PostgreSQL: postgresql://... or 'host=... dbname=...'"},
    {"--db-pool", "APIENGINE_DB_POOL", "db_pool", T_INT, OFF(db_pool), 1, ENG_PG_POOL_MAX,
     "PostgreSQL: connections per worker (default " STRINGIFY(ENG_PG_POOL_DEFAULT) ")"},
    {"--key-file", "APIENGINE_KEY_FILE", "key_file", T_STR, OFF(key_file), 0, 0,
     "server key file (default: the SQLite file's name + .key, made at the first start; PostgreSQL: never made)"},
    {"--config", "APIENGINE_CONFIG", NULL, T_STR, OFF(config_file), 0, 0,
     "Lua config file returning a table of these settings"},
    {NULL, "APIENGINE_KEY", "key", T_STR, OFF(key), 0, 0,
     "server key: 64 hex chars or base64 of 32 bytes (env/file only)"},
    {"--synchronous", "APIENGINE_SYNCHRONOUS", "synchronous", T_SYNC, OFF(synchronous), 0, 0,
     "SQLite synchronous: FULL (default), NORMAL, OFF"},
    {"--log-level", "APIENGINE_LOG_LEVEL", "log_level", T_LEVEL, OFF(log_level), 0, 0,
     "error, warn, info (default), debug"},
    {"--log-format", "APIENGINE_LOG_FORMAT", "log_format", T_FORMAT, OFF(log_json), 0, 0, "plain (default) or json"},
    {"--access-log", "APIENGINE_ACCESS_LOG", "access_log", T_ONOFF, OFF(access_log), 0, 0, "on (default) or off"},
    {"--max-header-bytes", "APIENGINE_MAX_HEADER_BYTES", "max_header_bytes", T_SIZE, OFF(limits.max_header_bytes), 256,
     1 << 20, "request header limit, 431 past it (default 16384)"},
    {"--max-url-bytes", "APIENGINE_MAX_URL_BYTES", "max_url_bytes", T_SIZE, OFF(limits.max_url_bytes), 64, 1 << 20,
     "request target limit, 414 past it (default 8192)"},
    {"--max-body-bytes", "APIENGINE_MAX_BODY_BYTES", "max_body_bytes", T_SIZE, OFF(limits.max_body_bytes), 0, 1L << 30,
     "request body limit, 413 past it (default 1048576)"},
    {"--header-timeout", "APIENGINE_HEADER_TIMEOUT", "header_timeout", T_INT, OFF(header_timeout_ms), 100, 3600000,
     "ms to receive a request's line and headers, from its first byte; 408 past it (default 10000)"},
    {"--body-timeout", "APIENGINE_BODY_TIMEOUT", "body_timeout", T_INT, OFF(body_timeout_ms), 100, 3600000,
     "ms between two reads of a request body; 408 past it (default 10000)"},
    {"--idle-timeout", "APIENGINE_IDLE_TIMEOUT", "idle_timeout", T_INT, OFF(idle_timeout_ms), 100, 3600000,
     "ms a keep-alive connection may sit idle (default 60000)"},
    {"--send-timeout", "APIENGINE_SEND_TIMEOUT", "send_timeout", T_INT, OFF(send_timeout_ms), 100, 3600000,
     "ms a client may take to accept each queued answer before it is closed (default 60000)"},
    {"--max-connections", "APIENGINE_MAX_CONNECTIONS", "max_connections", T_INT, OFF(max_connections), 1, 10000000,
     "open connections of the whole process; past it new ones are closed (default 20000)"},
    {"--drain-timeout", "APIENGINE_DRAIN_TIMEOUT", "drain_timeout", T_INT, OFF(drain_ms), 0, 3600000,
     "ms the whole process may take to stop on SIGTERM/SIGINT; exit 1 past it (default 10000)"},
    {"--budget-ms", "APIENGINE_BUDGET_MS", "budget_ms", T_INT, OFF(budget_ms), 1, 3600000,
     "time budget of one handler, 503 past it (default 1000)"},
    {"--load-budget-ms", "APIENGINE_LOAD_BUDGET_MS", "load_budget_ms", T_INT, OFF(load_budget_ms), 1, 3600000,
     "time budget of loading the scripts at start-up, reload and check (default 30000)"},
    {"--rekey-pause-ms", "APIENGINE_REKEY_PAUSE_MS", "rekey_pause_ms", T_INT, OFF(rekey_pause_ms), 0, 60000,
     "rekey: ms to pause after each batch, leaving the database to a busy server (default 0)"},
    {"--memory-limit-mb", "APIENGINE_MEMORY_LIMIT_MB", "memory_limit_mb", T_MB, OFF(memory_limit), 8, 1 << 20,
     "memory cap of each worker's Lua state (default 256)"},
    {"--pid-file", "APIENGINE_PID_FILE", "pid_file", T_STR, OFF(pid_file), 0, 0,
     "serve: write the pid here (removed at exit); reload: signal the pid written here"},
    {"--handover", NULL, NULL, T_FLAG, OFF(handover), 0, 0,
     "serve: start beside a running server of the same database and port (binary upgrade)"},
    {"--metrics-listen", "APIENGINE_METRICS_LISTEN", "metrics_listen", T_MLISTEN, 0, 0, 0,
     "HOST:PORT of the listener for /metrics and the health checks (default: none)"},
    {"--healthz-path", "APIENGINE_HEALTHZ_PATH", "healthz_path", T_PATH, OFF(healthz_path), 0, 0,
     "path the engine answers 200 itself, before any Lua (default /healthz)"},
    {"--readyz-path", "APIENGINE_READYZ_PATH", "readyz_path", T_PATH, OFF(readyz_path), 0, 0,
     "path answering 200 when the database answers and the scripts are loaded, 503 else (default /readyz)"},
    {"--real-ip-from", "APIENGINE_REAL_IP_FROM", "real_ip_from", T_NETLIST, OFF(real_ip_from), 0, 0,
     "trusted proxies (addresses, CIDR blocks; comma-separated): X-Forwarded-For names the client (default: none)"},
};

#define NOPTS (sizeof opts / sizeof opts[0])

void eng_config_init(eng_config *c) {
  memset(c, 0, sizeof *c);
  c->listen_host = strdup("127.0.0.1");
  c->port = 8080;
  long n = sysconf(_SC_NPROCESSORS_ONLN);
  c->workers = n > 0 ? (int)(n > ENG_MAX_WORKERS ? ENG_MAX_WORKERS : n) : 1;
  c->scripts_dir = strdup(ENG_DEFAULT_SCRIPTS);
  c->schema_dir = strdup(ENG_DEFAULT_SCHEMA);
  c->db_path = strdup(ENG_DEFAULT_DB);
  c->db_pool = ENG_PG_POOL_DEFAULT;
  c->synchronous = strdup("FULL");
  c->log_level = ENG_LOG_INFO;
  c->access_log = 1;
  eng_http_limits_default(&c->limits);
  c->header_timeout_ms = ENG_DEFAULT_HEADER_TIMEOUT_MS;
  c->idle_timeout_ms = ENG_DEFAULT_IDLE_TIMEOUT_MS;
  c->body_timeout_ms = ENG_DEFAULT_BODY_TIMEOUT_MS;
  c->send_timeout_ms = ENG_DEFAULT_SEND_TIMEOUT_MS;
  c->max_connections = ENG_DEFAULT_MAX_CONNECTIONS;
  c->drain_ms = ENG_DEFAULT_DRAIN_MS;
  c->budget_ms = ENG_DEFAULT_BUDGET_MS;
  c->load_budget_ms = ENG_DEFAULT_LOAD_BUDGET_MS;
  c->memory_limit = (size_t)ENG_DEFAULT_MEMORY_MB << 20;
  c->healthz_path = strdup("/healthz");
  c->readyz_path = strdup("/readyz");
}

void eng_config_free(eng_config *c) {
  free(c->listen_host);
  free(c->scripts_dir);
  free(c->schema_dir);
  free(c->db_path);
  free(c->config_file);
  free(c->key_file);
  if (c->key) {
    memset(c->key, 0, strlen(c->key));
    free(c->key);
  }
  free(c->synchronous);
  free(c->pid_file);
  free(c->metrics_host);
  free(c->healthz_path);
  free(c->readyz_path);
  free(c->real_ip_from);
  eng_buf_free(&c->settings);
  memset(c, 0, sizeof *c);
}

static int parse_long(const char *s, long *out) {
  char *end;
  errno = 0;
  long v = strtol(s, &end, 10);
  if (errno || end == s || *end != '\0')
    return -1;
  *out = v;
  return 0;
}

/* Sets one option from text; `src` names where it came from, for the message. */
static int apply(eng_config *c, const opt *o, const char *val, const char *src, char **err) {
  char *base = (char *)c;
  long n;
  switch (o->type) {
  case T_STR: {
    char **slot = (char **)(base + o->offset);
    if (val[0] == '\0')
      goto bad;
    char *copy = strdup(val);
    if (copy == NULL)
      goto bad;
    if (*slot && o->offset == OFF(key))
      memset(*slot, 0, strlen(*slot));
    free(*slot);
    *slot = copy;
    return 0;
  }
  case T_INT:
  case T_SIZE:
  case T_MB:
    if (parse_long(val, &n) != 0 || n < o->min || n > o->max)
      return eng_errorf(err, ENG_ECONFIG, "%s: %s must be an integer from %ld to %ld, got '%s'", src,
                        o->key ? o->key : o->flag, o->min, o->max, val);
    if (o->type == T_INT)
      *(int *)(base + o->offset) = (int)n;
    else if (o->type == T_SIZE)
      *(size_t *)(base + o->offset) = (size_t)n;
    else
      *(size_t *)(base + o->offset) = (size_t)n << 20;
    return 0;
  case T_PATH: { /* an origin-form path: '/', then visible ASCII without '?' or '#' */
    if (val[0] != '/' || strlen(val) > 256)
      goto bad;
    for (const char *p = val; *p; p++)
      if (*p <= ' ' || *p >= 127 || *p == '?' || *p == '#')
        goto bad;
    char **slot = (char **)(base + o->offset);
    char *copy = strdup(val);
    if (copy == NULL)
      goto bad;
    free(*slot);
    *slot = copy;
    return 0;
  }
  case T_MLISTEN:
  case T_LISTEN: {
    const char *colon = strrchr(val, ':');
    if (colon == NULL || colon == val || parse_long(colon + 1, &n) != 0 || n < 0 || n > 65535)
      goto bad;
    size_t hl = (size_t)(colon - val);
    if (val[0] == '[' && hl >= 2 && val[hl - 1] == ']') { /* [::1]:8080 */
      val++;
      hl -= 2;
    }
    char *host = strndup(val, hl);
    if (host == NULL)
      goto bad;
    char **hslot = o->type == T_LISTEN ? &c->listen_host : &c->metrics_host;
    free(*hslot);
    *hslot = host;
    *(o->type == T_LISTEN ? &c->port : &c->metrics_port) = (int)n;
    return 0;
  }
  case T_LEVEL:
    if (eng_log_parse_level(val, &c->log_level) != 0)
      goto bad;
    return 0;
  case T_FORMAT:
    if (strcmp(val, "plain") == 0)
      c->log_json = 0;
    else if (strcmp(val, "json") == 0)
      c->log_json = 1;
    else
      goto bad;
    return 0;
  case T_ONOFF:
    if (strcmp(val, "on") == 0 || strcmp(val, "1") == 0 || strcmp(val, "true") == 0)
      *(int *)(base + o->offset) = 1;
    else if (strcmp(val, "off") == 0 || strcmp(val, "0") == 0 || strcmp(val, "false") == 0)
      *(int *)(base + o->offset) = 0;
    else
      goto bad;
    return 0;
  case T_FLAG:
    if (val[0] != '\0')
      goto bad;
    *(int *)(base + o->offset) = 1;
    return 0;
  case T_NETLIST: { /* "" turns it off (over a config file's list) */
    char *why = NULL;
    if (eng_netaddr_list_parse(&c->real_ip, val, &why) != 0) {
      int rc = strcmp(src, o->flag) == 0
                   ? eng_errorf(err, ENG_ECONFIG, "%s: %s", src, why ? why : "out of memory")
                   : eng_errorf(err, ENG_ECONFIG, "%s: %s: %s", src, o->key, why ? why : "out of memory");
      free(why);
      return rc;
    }
    char **slot = (char **)(base + o->offset);
    free(*slot);
    *slot = c->real_ip.n ? strdup(val) : NULL;
    if (c->real_ip.n && *slot == NULL) {
      c->real_ip.n = 0;
      return eng_errorf(err, ENG_ENOMEM, "out of memory");
    }
    return 0;
  }
  case T_SYNC:
    if (strcasecmp(val, "FULL") && strcasecmp(val, "NORMAL") && strcasecmp(val, "OFF"))
      goto bad;
    free(c->synchronous);
    c->synchronous = strdup(val);
    for (char *p = c->synchronous; p && *p; p++)
      *p = (char)((*p >= 'a' && *p <= 'z') ? *p - 32 : *p);
    return 0;
  }
bad:
  /* Never echo the key. */
  if (o->offset == OFF(key) && o->type == T_STR)
    return eng_errorf(err, ENG_ECONFIG, "%s: invalid key", src);
  return eng_errorf(err, ENG_ECONFIG, "%s: invalid value '%s' for %s", src, val, o->flag ? o->flag : o->key);
}

typedef struct file_ctx {
  eng_config *c;
  const char *path;
} file_ctx;

/* One engine setting of the config file (eng_lua_config_read_file's callback). */
static int file_setting(void *ud, const char *key, const char *value, char **err) {
  file_ctx *f = ud;
  const opt *o = NULL;
  for (size_t i = 0; i < NOPTS; i++)
    if (opts[i].key && strcmp(opts[i].key, key) == 0)
      o = &opts[i];
  if (o == NULL)
    return eng_errorf(err, ENG_ECONFIG, "config file %s: unknown setting '%s'", f->path, key);
  if (value == NULL)
    return eng_errorf(err, ENG_ECONFIG, "config file %s: '%s' must be a string or number", f->path, key);
  char src[512];
  snprintf(src, sizeof src, "config file %s", f->path);
  return apply(f->c, o, value, src, err);
}

static int load_file(eng_config *c, const char *path, char **err) {
  file_ctx f = {.c = c, .path = path};
  return eng_lua_config_read_file(path, file_setting, &f, &c->settings, err);
}

int eng_config_load(eng_config *c, int argc, char **argv, int first, int *want_help, int *want_version, char **err) {
  *want_help = *want_version = 0;
  *err = NULL;
  /* The config file comes first (lowest precedence after defaults); find it in flags or env. */
  const char *file = getenv("APIENGINE_CONFIG");
  for (int i = first; i < argc; i++) {
    if (strcmp(argv[i], "--config") == 0 && i + 1 < argc)
      file = argv[i + 1];
    else if (strncmp(argv[i], "--config=", 9) == 0)
      file = argv[i] + 9;
  }
  if (file && *file) {
    free(c->config_file);
    c->config_file = strdup(file);
    int rc = load_file(c, file, err);
    if (rc)
      return rc;
  }
  for (size_t i = 0; i < NOPTS; i++) {
    const char *v = opts[i].env ? getenv(opts[i].env) : NULL;
    if (v && *v && opts[i].offset != OFF(config_file)) {
      int rc = apply(c, &opts[i], v, opts[i].env, err);
      if (rc)
        return rc;
    }
  }
  for (int i = first; i < argc; i++) {
    const char *a = argv[i];
    if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
      *want_help = 1;
      return 0;
    }
    if (strcmp(a, "--version") == 0) {
      *want_version = 1;
      return 0;
    }
    const opt *o = NULL;
    const char *val = NULL;
    for (size_t j = 0; j < NOPTS && !o; j++) {
      if (!opts[j].flag)
        continue;
      size_t fl = strlen(opts[j].flag);
      if (strcmp(a, opts[j].flag) == 0 && opts[j].type == T_FLAG) {
        o = &opts[j];
        val = "";
      } else if (strcmp(a, opts[j].flag) == 0) {
        o = &opts[j];
        if (i + 1 >= argc) {
          return eng_errorf(err, ENG_ECONFIG, "%s needs a value", a);
        }
        val = argv[++i];
      } else if (strncmp(a, opts[j].flag, fl) == 0 && a[fl] == '=') {
        o = &opts[j];
        val = a + fl + 1;
      }
    }
    if (o == NULL) {
      return eng_errorf(err, ENG_ECONFIG, "unknown option '%s' (see --help)", a);
    }
    if (o->offset == OFF(config_file) && o->type == T_STR && strcmp(o->flag, "--config") == 0)
      continue; /* already loaded */
    int rc = apply(c, o, val, o->flag, err);
    if (rc)
      return rc;
  }
  return 0;
}

/* Table-driven, so an option added to opts is compared too: what differs is named by its
 * config-file key (the flag's name for a flag-only option). */
int eng_config_diff(const eng_config *a, const eng_config *b, const char *const *skip, char *names, size_t size) {
  const char *pa = (const char *)a, *pb = (const char *)b;
  size_t len = 0;
  int n = 0;
  if (size > 0)
    names[0] = '\0';
  for (size_t i = 0; i < NOPTS; i++) {
    const opt *o = &opts[i];
    const char *name = o->key ? o->key : o->flag + 2;
    int skipped = 0;
    for (const char *const *k = skip; k && *k && !skipped; k++)
      skipped = strcmp(*k, name) == 0;
    if (skipped)
      continue;
    int differs = 0;
    switch (o->type) {
    case T_STR:
    case T_PATH:
    case T_NETLIST:
    case T_SYNC: {
      const char *x = *(char *const *)(pa + o->offset), *y = *(char *const *)(pb + o->offset);
      differs = (x == NULL) != (y == NULL) || (x && strcmp(x, y) != 0);
      break;
    }
    case T_INT:
    case T_FORMAT:
    case T_ONOFF:
    case T_FLAG:
      differs = *(const int *)(pa + o->offset) != *(const int *)(pb + o->offset);
      break;
    case T_LEVEL:
      differs = a->log_level != b->log_level;
      break;
    case T_SIZE:
    case T_MB:
      differs = *(const size_t *)(pa + o->offset) != *(const size_t *)(pb + o->offset);
      break;
    case T_LISTEN:
      differs = strcmp(a->listen_host, b->listen_host) != 0 || a->port != b->port;
      break;
    case T_MLISTEN:
      differs = (a->metrics_host == NULL) != (b->metrics_host == NULL) ||
                (a->metrics_host && strcmp(a->metrics_host, b->metrics_host) != 0) ||
                a->metrics_port != b->metrics_port;
      break;
    }
    if (!differs)
      continue;
    n++;
    if (len < size) {
      int w = snprintf(names + len, size - len, "%s%s", len ? ", " : "", name);
      len = w < 0 ? size : len + (size_t)w;
    }
  }
  return n;
}

const char *eng_config_usage(void) {
  static char text[8192];
  if (text[0])
    return text;
  size_t o = 0;
  for (size_t i = 0; i < NOPTS && o < sizeof text; i++) {
    char left[64];
    snprintf(left, sizeof left, "%s", opts[i].flag ? opts[i].flag : "(no flag)");
    int n = snprintf(text + o, sizeof text - o, "  %-20s %s [%s]\n", left, opts[i].help,
                     opts[i].env ? opts[i].env : "flag only");
    if (n < 0)
      break;
    o += (size_t)n;
  }
  return text;
}

int eng_config_db_is_pg(const char *db) {
  if (db == NULL)
    return 0;
  return strncmp(db, "postgresql://", 13) == 0 || strncmp(db, "postgres://", 11) == 0 || strchr(db, '=') != NULL;
}
