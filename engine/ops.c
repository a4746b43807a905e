/* ops.c - the start-up sequence, the instance lock, the pid file, the check-load of the
 * scripts, and the check / routes / reload / migrate commands (see ops.h for the order and why).
 *
 * The check-load: a runtime built on this thread from the scripts, against a scratch in-memory
 * database migrated with the schema files. Not the real database: before a start it may not
 * exist yet or lack the tables the pending migrations add (scripts/calls.lua reads the calls
 * table at load to warm its key set), and reading a large one would cost the check what each
 * worker pays again (the key set: ~70 bytes and ~0.35 us per stored call). The scratch copy has
 * the schema and no rows, which is what loading needs; it also tries every pending migration's
 * SQL before the real database sees it. A script that reads rows at load time sees none. */
#include "ops.h"
#include "crypto.h"
#include "db.h"
#include "error.h"
#include "files.h"
#include "keys.h"
#include "pg_migrate.h"
#include "log.h"
#include "lua_rekey.h"
#include "lua_route.h"
#include "lua_runtime.h"
#include "router.h"
#include "server.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define OPS_PATH_MAX 4096
#define OVERLAY_DEPTH_MAX 8    /* directory levels searched below a scripts directory */
#define OVERLAY_FILES_MAX 4096 /* replaced files reported */
#define PID_TEXT_MAX 24        /* a pid in decimal and a newline */
#define FINGERPRINT_FACT "key_fingerprint"
#define SERVING_FACT "serving_key_fingerprint" /* the current key of the last start */
#define FINGERPRINT_SHOWN 12                   /* hex characters of a fingerprint shown in messages */

/* ---- paths ------------------------------------------------------------------------------------ */

static int is_memory_db(const char *path) { return strcmp(path, ":memory:") == 0; }
static int path_with(char *out, const char *path, const char *suffix);

/* The --db setting as logs and messages show it: a PostgreSQL password masked. For one message at
 * a time (the start-up and the commands run on one thread). */
static const char *shown(const char *db) {
  static char buf[2][1024];
  static int next;
  char *b = buf[next++ % 2];
  return eng_pg_conninfo_redact(db, b, sizeof buf[0]);
}

/* Reads the migration records and facts of cfg's database, SQLite's or PostgreSQL's. */
static int inspect_db(const eng_config *cfg, eng_db_state *st, char **err) {
  if (eng_config_db_is_pg(cfg->db_path))
    return eng_pg_inspect(cfg->db_path, cfg->schema_dir, st, err);
  return eng_db_inspect(cfg->db_path, cfg->schema_dir, st, err);
}

/* The server key's file (serve, check, rekey, backup): --key-file, else <db>.key next to a SQLite
 * file; "" on PostgreSQL without --key-file (the key must then be configured). ENG_ETOOBIG when it
 * does not fit. */
static int key_file_path(const eng_config *cfg, char *out) {
  if (cfg->key_file)
    return snprintf(out, OPS_PATH_MAX, "%s", cfg->key_file) < OPS_PATH_MAX ? 0 : ENG_ETOOBIG;
  if (eng_config_db_is_pg(cfg->db_path)) {
    out[0] = '\0';
    return 0;
  }
  return path_with(out, cfg->db_path, ".key");
}

/* path + suffix into out (OPS_PATH_MAX bytes); ENG_ETOOBIG when it does not fit. */
static int path_with(char *out, const char *path, const char *suffix) {
  return snprintf(out, OPS_PATH_MAX, "%s%s", path, suffix) < OPS_PATH_MAX ? 0 : ENG_ETOOBIG;
}

/* mkdir -p of the directory part of path (the default ./data/). */
static int ensure_parent_dir(const char *path) {
  char tmp[OPS_PATH_MAX];
  if (strlen(path) >= sizeof tmp)
    return ENG_EINVAL;
  strcpy(tmp, path);
  char *slash = strrchr(tmp, '/');
  if (slash == NULL || slash == tmp)
    return 0;
  *slash = '\0';
  for (char *p = tmp + 1; *p; p++) {
    if (*p == '/') {
      *p = '\0';
      if (mkdir(tmp, 0750) != 0 && errno != EEXIST)
        return ENG_EIO;
      *p = '/';
    }
  }
  if (mkdir(tmp, 0750) != 0 && errno != EEXIST)
    return ENG_EIO;
  return 0;
}

/* Refuses a database this process could not write: a server on it would start and answer
 * /healthz, then fail every write (token issuance included). The database file, its -wal and -shm
 * files (when they exist) and its directory (where SQLite makes them and the server its lock) must
 * be writable. access() uses the real ids, which are the effective ones here; for root it passes
 * whatever the mode bits say, as the writes would, and still fails on a read-only file system. */
static int check_writable(const char *path, char **err) {
  char dir[OPS_PATH_MAX], file[OPS_PATH_MAX];
  const char *slash = strrchr(path, '/');
  if (strlen(path) >= sizeof dir)
    return eng_errorf(err, ENG_ETOOBIG, "database path too long: %s", path);
  if (slash == NULL) {
    strcpy(dir, ".");
  } else {
    size_t n = slash == path ? 1 : (size_t)(slash - path);
    memcpy(dir, path, n);
    dir[n] = '\0';
  }
  if (access(dir, W_OK | X_OK) != 0)
    return eng_errorf(err, ENG_ECONFIG,
                      "database %s: its directory %s is not writable by this user (uid %u): %s; SQLite makes the "
                      "database's -wal and -shm files there, so every write (token issuance included) would fail: "
                      "make the directory writable for this user, or point --db elsewhere",
                      path, dir, (unsigned)geteuid(), strerror(errno));
  static const char *const suffixes[] = {"", "-wal", "-shm"};
  for (size_t i = 0; i < sizeof suffixes / sizeof suffixes[0]; i++) {
    if (path_with(file, path, suffixes[i]) != 0)
      return eng_errorf(err, ENG_ETOOBIG, "database path too long: %s", path);
    if (access(file, F_OK) == 0 && access(file, W_OK) != 0)
      return eng_errorf(err, ENG_ECONFIG,
                        "database %s: %s is not writable by this user (uid %u): %s; every write (token issuance "
                        "included) would fail: make it writable for this user (chown, chmod), or point --db elsewhere",
                        path, file, (unsigned)geteuid(), strerror(errno));
  }
  return 0;
}

/* The pid written in fd's file, or 0 when it holds none. */
static long read_pid_fd(int fd) {
  char text[PID_TEXT_MAX + 1];
  ssize_t n = pread(fd, text, PID_TEXT_MAX, 0);
  if (n <= 0)
    return 0;
  text[n] = '\0';
  char *end;
  long pid = strtol(text, &end, 10);
  return pid > 0 && (*end == '\n' || *end == '\0') ? pid : 0;
}

static int write_pid_fd(int fd) {
  char text[PID_TEXT_MAX];
  int n = snprintf(text, sizeof text, "%ld\n", (long)getpid());
  if (ftruncate(fd, 0) != 0 || pwrite(fd, text, (size_t)n, 0) != n)
    return ENG_EIO;
  return 0;
}

/* ---- the installed scripts and schema --------------------------------------------------------- */

#define INSTALLED_DATA "/../share/apiengine" /* from the binary's directory: cmake --install's layout */

static int is_dir(const char *path) {
  struct stat st;
  return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

/* Replaces *setting by the installed directory name (share/apiengine/<name> beside the binary's
 * bin/) when it is the default and the working directory has no such directory. */
static void use_installed(char **setting, const char *name, const char *exe_dir) {
  char path[OPS_PATH_MAX];
  if (strcmp(*setting, name) != 0 || is_dir(name))
    return;
  if (snprintf(path, sizeof path, "%s%s/%s", exe_dir, INSTALLED_DATA, name) >= (int)sizeof path || !is_dir(path))
    return;
  char *copy = realpath(path, NULL); /* without the bin/.. */
  if (copy == NULL)
    return;
  free(*setting);
  *setting = copy;
}

void eng_ops_default_dirs(eng_config *cfg) {
  char exe[OPS_PATH_MAX];
  ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
  if (n <= 0)
    return;
  exe[n] = '\0';
  char *slash = strrchr(exe, '/');
  if (slash == NULL)
    return;
  *slash = '\0';
  use_installed(&cfg->scripts_dir, ENG_DEFAULT_SCRIPTS, exe);
  use_installed(&cfg->schema_dir, ENG_DEFAULT_SCHEMA, exe);
}

/* ---- the instance lock ------------------------------------------------------------------------ */

/* <db>.lock, flock'ed exclusively for the process lifetime, holding the holder's pid. The file
 * is never removed: removing a lock file races with the next process opening it. */
typedef struct instance_lock {
  int fd;   /* -1: none */
  int held; /* 0 while a handover waits for the old server's lock */
  long old_pid;
  char path[OPS_PATH_MAX];
} instance_lock;

/* Takes the lock of db_path. ENG_EEXISTS (with the message) when another process holds it,
 * unless handover: then the lock is left to poll (lock_poll) and 0 returned. */
static int lock_take(instance_lock *lk, const char *db_path, int handover, char **err) {
  lk->fd = -1;
  lk->held = 0;
  lk->old_pid = 0;
  if (path_with(lk->path, db_path, ".lock") != 0)
    return eng_errorf(err, ENG_ETOOBIG, "database path too long: %s", db_path);
  lk->fd = open(lk->path, O_RDWR | O_CREAT | O_CLOEXEC, 0640);
  if (lk->fd < 0)
    return eng_errorf(err, ENG_EIO, "cannot open the lock file %s: %s", lk->path, strerror(errno));
  if (flock(lk->fd, LOCK_EX | LOCK_NB) == 0) {
    lk->held = 1;
    if (write_pid_fd(lk->fd) != 0)
      eng_log_warn("cannot write the pid into %s: %s", lk->path, strerror(errno));
    return 0;
  }
  if (errno != EWOULDBLOCK)
    return eng_errorf(err, ENG_EIO, "cannot lock %s: %s", lk->path, strerror(errno));
  lk->old_pid = read_pid_fd(lk->fd);
  if (handover)
    return 0;
  char who[64] = "another process";
  if (lk->old_pid > 0)
    snprintf(who, sizeof who, "another apiengine (pid %ld)", lk->old_pid);
  return eng_errorf(err, ENG_EEXISTS,
                    "database %s is in use by %s, which holds %s: stop it first (kill -TERM it and wait for "
                    "\"stopped cleanly\"), or start this one with --handover to take over from it",
                    db_path, who, lk->path);
}

/* The handover's wait: 1 once the lock is ours. */
static int lock_poll(instance_lock *lk) {
  if (lk->held)
    return 1;
  if (flock(lk->fd, LOCK_EX | LOCK_NB) != 0)
    return 0;
  lk->held = 1;
  if (write_pid_fd(lk->fd) != 0)
    eng_log_warn("cannot write the pid into %s: %s", lk->path, strerror(errno));
  eng_log_info("handover: the server before this one (pid %ld) has exited; this one holds %s now", lk->old_pid,
               lk->path);
  return 1;
}

static void lock_release(instance_lock *lk) {
  if (lk->fd < 0)
    return;
  if (lk->held && ftruncate(lk->fd, 0) != 0) /* a pid of nobody would mislead a reader */
    eng_log_debug("cannot empty %s: %s", lk->path, strerror(errno));
  close(lk->fd); /* releases the flock */
  lk->fd = -1;
}

/* ---- the pid file ----------------------------------------------------------------------------- */

/* Writes the pid to path through path.tmp and rename, so a reader never sees half a pid. */
static int pid_file_write(const char *path, char **err) {
  char tmp[OPS_PATH_MAX];
  if (path_with(tmp, path, ".tmp") != 0)
    return eng_errorf(err, ENG_ETOOBIG, "pid file path too long: %s", path);
  int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0)
    return eng_errorf(err, ENG_EIO, "cannot write the pid file %s: %s", tmp, strerror(errno));
  int rc = write_pid_fd(fd);
  if (close(fd) != 0 || rc != 0 || rename(tmp, path) != 0) {
    int e = errno;
    unlink(tmp);
    return eng_errorf(err, ENG_EIO, "cannot write the pid file %s: %s", path, strerror(e));
  }
  return 0;
}

/* Removes the pid file if it still names this process (a handover's new server may have written
 * its own pid there since). */
static void pid_file_remove(const char *path) {
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0)
    return;
  long pid = read_pid_fd(fd);
  close(fd);
  if (pid == (long)getpid())
    unlink(path);
}

/* ---- overlays --------------------------------------------------------------------------------- */

/* A file of a later scripts directory that takes the place of one of an earlier directory: the
 * same name at the top level (lua_load.c runs it instead), or the same module path below it
 * (`require` searches the last directory first). This mirrors those two rules to report them;
 * it changes nothing. */
typedef struct overlay {
  char *winner, *loser; /* "dir/rel" paths, as chunk names and tracebacks show them */
} overlay;

typedef struct overlays {
  overlay *v;
  size_t n;
} overlays;

static void overlays_free(overlays *o) {
  for (size_t i = 0; i < o->n; i++) {
    free(o->v[i].winner);
    free(o->v[i].loser);
  }
  free(o->v);
  *o = (overlays){0};
}

static int is_regular(const char *path) {
  struct stat st;
  return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

static int overlay_add(overlays *o, const char *winner, const char *loser) {
  if (o->n == OVERLAY_FILES_MAX)
    return 0;
  overlay *grown = realloc(o->v, (o->n + 1) * sizeof *grown);
  if (grown == NULL)
    return ENG_ENOMEM;
  o->v = grown;
  overlay *e = &o->v[o->n];
  e->winner = strdup(winner);
  e->loser = strdup(loser);
  if (e->winner == NULL || e->loser == NULL) {
    free(e->winner);
    free(e->loser);
    return ENG_ENOMEM;
  }
  o->n++;
  return 0;
}

/* Walks dirs->dirs[k]/rel (rel "" at the top) for *.lua files that an earlier directory has too. */
static int overlay_walk(const eng_dirs *dl, int k, const char *rel, int depth, overlays *o) {
  char dir[OPS_PATH_MAX];
  snprintf(dir, sizeof dir, "%s%s%s", dl->dirs[k], *rel ? "/" : "", rel);
  DIR *d = opendir(dir);
  if (d == NULL)
    return 0; /* loading reports a missing directory */
  int rc = 0;
  struct dirent *e;
  while (rc == 0 && (e = readdir(d)) != NULL) {
    if (e->d_name[0] == '.')
      continue;
    char sub[OPS_PATH_MAX], path[OPS_PATH_MAX];
    if (snprintf(sub, sizeof sub, "%s%s%s", rel, *rel ? "/" : "", e->d_name) >= (int)sizeof sub ||
        snprintf(path, sizeof path, "%s/%s", dl->dirs[k], sub) >= (int)sizeof path)
      continue;
    struct stat st;
    if (stat(path, &st) != 0)
      continue;
    if (S_ISDIR(st.st_mode)) {
      if (depth < OVERLAY_DEPTH_MAX)
        rc = overlay_walk(dl, k, sub, depth + 1, o);
      continue;
    }
    size_t len = strlen(e->d_name);
    if (!S_ISREG(st.st_mode) || len < 5 || strcmp(e->d_name + len - 4, ".lua") != 0)
      continue;
    for (int j = k - 1; j >= 0; j--) {
      char earlier[OPS_PATH_MAX];
      if (snprintf(earlier, sizeof earlier, "%s/%s", dl->dirs[j], sub) < (int)sizeof earlier && is_regular(earlier)) {
        rc = overlay_add(o, path, earlier);
        break;
      }
    }
  }
  closedir(d);
  return rc;
}

/* The replaced files of the scripts setting, each later directory against the earlier ones. */
static int find_overlays(const char *scripts, overlays *o) {
  eng_dirs dl;
  *o = (overlays){0};
  if (eng_dirs_split(&dl, scripts) != 0)
    return 0; /* loading reports a bad setting */
  int rc = 0;
  for (int k = 1; rc == 0 && k < dl.n; k++)
    rc = overlay_walk(&dl, k, "", 0, o);
  if (rc != 0)
    overlays_free(o);
  return rc;
}

static void log_overlays(const overlays *o) {
  for (size_t i = 0; i < o->n; i++)
    eng_log_info("scripts: %s replaces %s", o->v[i].winner, o->v[i].loser);
}

/* The overlay entry whose winner is the file of "file:line", or NULL. */
static const overlay *overlay_of(const overlays *o, const char *place) {
  if (place == NULL)
    return NULL;
  const char *colon = strrchr(place, ':');
  size_t len = colon ? (size_t)(colon - place) : strlen(place);
  for (size_t i = 0; i < o->n; i++)
    if (strlen(o->v[i].winner) == len && strncmp(o->v[i].winner, place, len) == 0)
      return &o->v[i];
  return NULL;
}

/* ---- the check-load ----------------------------------------------------------------------------- */

typedef struct loaded {
  int routes;
  eng_route_info *infos; /* when asked for */
  size_t ninfos;
  eng_hook_info *hooks; /* route.before / route.after, with infos */
  size_t nhooks;
} loaded;

static void loaded_free(loaded *ld) {
  eng_route_infos_free(ld->infos, ld->ninfos);
  eng_hook_infos_free(ld->hooks, ld->nhooks);
}

/* Builds a runtime from cfg's scripts with settings against a scratch database migrated with
 * the schema (up to max_id when limit), counts (and lists, when want_infos) its routes, frees it.
 * ENG_E* with *err naming the file:line (a script), or the migration. */
static int check_load(const eng_config *cfg, const eng_buf *settings, int limit, int max_id, int want_infos,
                      loaded *out, char **err) {
  eng_db *scratch = NULL;
  eng_runtime *rt = NULL;
  eng_route_info *infos = NULL;
  size_t n = 0;
  char *e = NULL;
  *err = NULL;
  *out = (loaded){0};
  eng_db_migrate_options mo = {.limit = limit, .max_id = max_id, .quiet = 1};
  int rc = eng_db_open(&scratch, ":memory:", NULL, &e);
  if (rc == 0)
    rc = eng_db_migrate_ex(scratch, cfg->schema_dir, &mo, NULL, &e);
  if (rc != 0) {
    rc = eng_errorf(err, rc, "schema %s: %s", cfg->schema_dir, e ? e : eng_strerror(rc));
    goto cleanup;
  }
  eng_runtime_options ro = {
      .scripts_dir = cfg->scripts_dir,
      .settings = settings,
      .budget_ms = cfg->budget_ms,
      .load_budget_ms = cfg->load_budget_ms,
      .memory_limit = cfg->memory_limit,
      .db = scratch,
  };
  if ((rc = eng_runtime_new(&rt, &ro, err)) != 0)
    goto cleanup;
  if ((rc = eng_runtime_routes(rt, &infos, &n, err)) != 0)
    goto cleanup;
  out->routes = (int)n;
  if (want_infos) {
    out->infos = infos;
    out->ninfos = n;
    infos = NULL;
    rc = eng_runtime_hooks(rt, &out->hooks, &out->nhooks, err);
  }
cleanup:
  eng_route_infos_free(infos, infos ? n : 0);
  eng_runtime_free(rt);
  eng_db_close(scratch);
  free(e);
  return rc;
}

/* ---- keys and the fingerprint ------------------------------------------------------------------ */

/* Loads the server key without creating the key file. *have = 1 when a real key is loaded; 0
 * when the key file does not exist yet (then a random key is loaded for the check-load, so
 * scripts that seal or sign at load time still load). A missing key file of a database that
 * stores a fingerprint is an error: a new key would open none of its secrets. */
static int keys_without_creating(const eng_config *cfg, const eng_db_state *st, int lenient, int *have,
                                 eng_key_source *src, char **err) {
  char path[OPS_PATH_MAX];
  char *e = NULL;
  int pg = eng_config_db_is_pg(cfg->db_path);
  *have = 0;
  if (key_file_path(cfg, path) != 0)
    return eng_errorf(err, ENG_ETOOBIG, "key file path too long: %s", cfg->key_file ? cfg->key_file : cfg->db_path);
  int configured = cfg->key && cfg->key[0];
  int rc = !configured && path[0] == '\0' ? ENG_ENOTFOUND : eng_keys_load(cfg->key, path, 0, src, &e);
  if (rc == 0) {
    *have = 1;
  } else if (rc == ENG_ENOTFOUND && pg && !lenient) {
    /* Several nodes share one PostgreSQL database: a key made by one node would be another
     * node's wrong key, so the key is never generated here. */
    rc = path[0] ? eng_errorf(err, ENG_ECONFIG,
                              "server key: the key file %s does not exist; on PostgreSQL the key is never generated "
                              "(every node must use the same key): create it once (64 hex characters, e.g. `openssl "
                              "rand -hex 32 > %s; chmod 600 %s`) and give every node the same file, or set "
                              "APIENGINE_KEY",
                              path, path, path)
                 : eng_errorf(err, ENG_ECONFIG,
                              "server key: on PostgreSQL the key must be configured, the same on every node: set "
                              "APIENGINE_KEY (or the config file's `key`), or --key-file to a key file all nodes "
                              "share; a key file is never generated on PostgreSQL");
  } else if (rc == ENG_ENOTFOUND && st->fingerprint) {
    rc = eng_errorf(err, ENG_ECONFIG,
                    "server key: the key file %s is missing, and the database %s was made with a key (its "
                    "fingerprint %.*s is stored in it): put back the key file that belongs to this database (from "
                    "your backup), or set APIENGINE_KEY to its key; a new key would open none of its stored secrets "
                    "and verify none of its tokens",
                    path, shown(cfg->db_path), FINGERPRINT_SHOWN, st->fingerprint);
  } else if (rc == ENG_ENOTFOUND) {
    unsigned char k[ENG_KEY_LEN];
    if (eng_crypto_random(k, sizeof k) != 0) {
      rc = eng_errorf(err, ENG_ECRYPTO, "server key: random generator failure");
    } else {
      eng_keys_set(k);
      rc = 0;
    }
    eng_crypto_wipe(k, sizeof k);
  } else {
    rc = eng_errorf(err, rc, "server key: %s", e ? e : eng_strerror(rc));
  }
  free(e);
  return rc;
}

/* Compares the loaded keys with the database's fingerprint: the current key's or a previous
 * one's (a rotation whose rekey has not finished: *previous gets its index, else 0) passes. */
static int fingerprint_check(const eng_config *cfg, const eng_db_state *st, eng_key_source src, int *previous,
                             char **err) {
  char fp[ENG_KEY_FINGERPRINT_HEX + 1];
  int k = eng_keys_find_fingerprint(st->fingerprint);
  *previous = k > 0 ? k : 0;
  if (st->fingerprint == NULL || eng_keys_fingerprint(fp) != 0 || k >= 0)
    return 0;
  char path[OPS_PATH_MAX];
  if (key_file_path(cfg, path) != 0)
    path[0] = '\0';
  if (src == ENG_KEY_CONFIGURED && eng_config_db_is_pg(cfg->db_path))
    return eng_errorf(err, ENG_ECONFIG,
                      "server key: the configured key (APIENGINE_KEY or the config file's `key`) is not the key the "
                      "database %s was made with (fingerprint %.*s, this key's %.*s): every node of one PostgreSQL "
                      "database must use the key the first node started with",
                      shown(cfg->db_path), FINGERPRINT_SHOWN, st->fingerprint, FINGERPRINT_SHOWN, fp);
  if (src == ENG_KEY_CONFIGURED)
    return eng_errorf(err, ENG_ECONFIG,
                      "server key: the configured key (APIENGINE_KEY or the config file's `key`) is not the key the "
                      "database %s was made with (fingerprint %.*s, this key's %.*s): set APIENGINE_KEY to that "
                      "database's key, or unset it to use its key file %s",
                      shown(cfg->db_path), FINGERPRINT_SHOWN, st->fingerprint, FINGERPRINT_SHOWN, fp, path);
  return eng_errorf(err, ENG_ECONFIG,
                    "server key: the key file %s is not the key the database %s was made with (fingerprint %.*s, "
                    "the file's %.*s; was it regenerated, or copied from another database?): put back the key file "
                    "that belongs to this database, or set APIENGINE_KEY to its key",
                    path, shown(cfg->db_path), FINGERPRINT_SHOWN, st->fingerprint, FINGERPRINT_SHOWN, fp);
}

/* ---- serve ------------------------------------------------------------------------------------ */

typedef struct serve_ctx {
  const eng_config *cfg;
  int argc, first;
  char **argv;
  instance_lock lock;
} serve_ctx;

/* Settings a reload applies: `settings` (not an option) and the load budget, since the reload
 * loads the scripts. The others wait for a restart: named in one warning. */
static const char *const reload_applies[] = {"load_budget_ms", NULL};

static void warn_restart_settings(unsigned id, const eng_config *now, const eng_config *fresh) {
  char names[1024];
  if (eng_config_diff(now, fresh, reload_applies, names, sizeof names) > 0)
    eng_log_warn("reload %u: the configuration now differs in %s; a reload applies only the scripts, `settings` and "
                 "load_budget_ms: restart for the rest",
                 id, names);
}

static void log_pending(const char *what, const eng_db_state *st) {
  char list[1024] = "";
  size_t o = 0;
  for (int i = 0; i < st->npending && o < sizeof list; i++)
    o += (size_t)snprintf(list + o, sizeof list - o, "%s%s", i ? ", " : "", st->pending[i]);
  eng_log_warn("%s: %d migration(s) pending, not applied by a reload (restart to apply them): %s", what, st->npending,
               list);
}

/* The SIGHUP check (server.h reload_check). */
static int reload_check(void *ud, unsigned id, eng_buf *settings, int *routes, int *load_budget_ms, char **out_err) {
  serve_ctx *s = ud;
  eng_config fresh;
  eng_db_state st = {.max_applied_id = -1};
  overlays ov = {0};
  loaded ld = {0};
  int help = 0, version = 0, inspected = 0;
  char *err = NULL;
  char what[32];
  snprintf(what, sizeof what, "reload %u", id);
  eng_config_init(&fresh);
  int rc = eng_config_load(&fresh, s->argc, s->argv, s->first, &help, &version, out_err);
  if (rc != 0)
    goto cleanup;
  eng_ops_default_dirs(&fresh);
  warn_restart_settings(id, s->cfg, &fresh);
  if (!is_memory_db(s->cfg->db_path)) {
    if (inspect_db(s->cfg, &st, &err) == 0) {
      inspected = 1;
      if (st.npending > 0)
        log_pending(what, &st);
    } else {
      eng_log_warn("%s: cannot read the migrations of %s (%s); the scripts are checked against the whole schema", what,
                   shown(s->cfg->db_path), err ? err : "?");
    }
    free(err);
    err = NULL;
  }
  if (find_overlays(s->cfg->scripts_dir, &ov) == 0)
    log_overlays(&ov);
  eng_config with_fresh = *s->cfg; /* borrowed: the running settings but the fresh load budget */
  with_fresh.load_budget_ms = fresh.load_budget_ms;
  if ((rc = check_load(&with_fresh, &fresh.settings, inspected, st.max_applied_id, 0, &ld, out_err)) != 0)
    goto cleanup;
  *load_budget_ms = fresh.load_budget_ms;
  eng_buf tmp = *settings; /* the server's empty buffer takes the fresh settings */
  *settings = fresh.settings;
  fresh.settings = tmp;
  *routes = ld.routes;
cleanup:
  overlays_free(&ov);
  eng_db_state_free(&st);
  eng_config_free(&fresh);
  free(err);
  return rc;
}

/* The handover's wait for the old server's lock (server.h poll hook). */
static int handover_poll(void *ud) { return lock_poll(&((serve_ctx *)ud)->lock); }

/* Applies the migrations of cfg on a connection of this thread; on success, when fp is not NULL,
 * also stores it as the database's key fingerprint if it has none (logged). */
static int migrate_pg(const eng_config *cfg, const char *fp) {
  char *err = NULL, *stored = NULL;
  int applied = 0;
  int rc = eng_pg_migrate(cfg->db_path, cfg->schema_dir, &applied, &err);
  if (rc != 0) {
    eng_log_error("database %s: %s", shown(cfg->db_path), err ? err : eng_strerror(rc));
    goto cleanup;
  }
  eng_log_info("database %s: %d migration(s) applied", shown(cfg->db_path), applied);
  if (fp == NULL)
    goto cleanup;
  if ((rc = eng_pg_engine_fact(cfg->db_path, FINGERPRINT_FACT, fp, &stored, &err)) != 0) {
    eng_log_error("database %s: cannot store the key fingerprint: %s", shown(cfg->db_path),
                  err ? err : eng_strerror(rc));
  } else if (eng_keys_find_fingerprint(stored) < 0) { /* another node stored one since the check: it won */
    eng_log_error("server key: database %s now holds another key's fingerprint (%.*s, this key's %.*s); another node "
                  "started on it with another key",
                  shown(cfg->db_path), FINGERPRINT_SHOWN, stored, FINGERPRINT_SHOWN, fp);
    rc = ENG_ECONFIG;
  }
  if (rc == 0 && (rc = eng_pg_engine_fact_set(cfg->db_path, SERVING_FACT, fp, &err)) != 0)
    eng_log_error("database %s: cannot store the key fingerprint: %s", shown(cfg->db_path),
                  err ? err : eng_strerror(rc));
cleanup:
  free(stored);
  free(err);
  return rc;
}

static int migrate_db(const eng_config *cfg, const char *fp) {
  if (eng_config_db_is_pg(cfg->db_path))
    return migrate_pg(cfg, fp);
  eng_db *db = NULL;
  char *err = NULL, *stored = NULL;
  int applied = 0;
  eng_db_options o = {.synchronous = cfg->synchronous};
  int rc = eng_db_open(&db, cfg->db_path, &o, &err);
  if (rc == 0)
    rc = eng_db_migrate(db, cfg->schema_dir, &applied, &err);
  if (rc != 0) {
    eng_log_error("database %s: %s", cfg->db_path, err ? err : eng_strerror(rc));
    goto cleanup;
  }
  eng_log_info("database %s: %d migration(s) applied", cfg->db_path, applied);
  if (fp == NULL)
    goto cleanup;
  if ((rc = eng_db_engine_fact(db, FINGERPRINT_FACT, fp, &stored, &err)) != 0) {
    eng_log_error("database %s: cannot store the key fingerprint: %s", cfg->db_path, err ? err : eng_strerror(rc));
  } else if (eng_keys_find_fingerprint(stored) < 0) { /* another process stored one since the check: it won */
    eng_log_error("server key: database %s now holds another key's fingerprint (%.*s); another process started on it "
                  "with another key",
                  cfg->db_path, FINGERPRINT_SHOWN, stored);
    rc = ENG_ECONFIG;
  }
  /* What `apiengine rekey` checks: the key a server last started with is the one it seals with. */
  if (rc == 0 && (rc = eng_db_engine_fact_set(db, SERVING_FACT, fp, &err)) != 0)
    eng_log_error("database %s: cannot store the key fingerprint: %s", cfg->db_path, err ? err : eng_strerror(rc));
cleanup:
  free(stored);
  free(err);
  eng_db_close(db);
  return rc;
}

int eng_ops_serve(const eng_config *cfg, int argc, char **argv, int first) {
  serve_ctx s = {.cfg = cfg, .argc = argc, .argv = argv, .first = first, .lock = {.fd = -1}};
  eng_db_state st = {.max_applied_id = -1};
  overlays ov = {0};
  loaded ld = {0};
  eng_key_source src = 0;
  int have_key = 0, pid_written = 0, previous = 0, memory = is_memory_db(cfg->db_path);
  int file = !memory && !eng_config_db_is_pg(cfg->db_path); /* a SQLite file: its directory, lock, key file */
  char *err = NULL;
  int rc;

  /* Until the server watches SIGHUP, one must not kill it (its default): logrotate may send it. */
  (void)signal(SIGHUP, SIG_IGN);
  if (!cfg->handover && (rc = eng_server_probe(cfg, &err)) != 0)
    goto fail;
  if (file && ensure_parent_dir(cfg->db_path) != 0) {
    rc = eng_errorf(&err, ENG_EIO, "cannot create the directory of %s: %s", cfg->db_path, strerror(errno));
    goto fail;
  }
  if (file && (rc = check_writable(cfg->db_path, &err)) != 0)
    goto fail;
  if (file && (rc = lock_take(&s.lock, cfg->db_path, cfg->handover, &err)) != 0)
    goto fail;
  /* PostgreSQL: no lock, nodes of one database run side by side */
  if (file && cfg->handover && s.lock.held)
    eng_log_info("handover: no server holds %s; starting as usual", s.lock.path);
  else if (file && cfg->handover)
    eng_log_info("handover: starting beside pid %ld, which holds %s: send it SIGTERM once this one listens; this one "
                 "takes the lock over when it exits",
                 s.lock.old_pid, s.lock.path);
  if (cfg->pid_file) { /* removed again if the start fails */
    if ((rc = pid_file_write(cfg->pid_file, &err)) != 0)
      goto fail;
    pid_written = 1;
  }
  if (!memory && (rc = inspect_db(cfg, &st, &err)) != 0)
    goto fail;
  if ((rc = keys_without_creating(cfg, &st, 0, &have_key, &src, &err)) != 0)
    goto fail;
  if (have_key && !memory && (rc = fingerprint_check(cfg, &st, src, &previous, &err)) != 0)
    goto fail;
  if (previous > 0)
    eng_log_info("server key: the database %s was made with previous key %d: what that key sealed and signed still "
                 "opens and verifies; run `apiengine rekey` with these keys to re-seal the stored secrets under the "
                 "current key",
                 shown(cfg->db_path), previous);
  if ((rc = find_overlays(cfg->scripts_dir, &ov)) != 0) {
    rc = eng_errorf(&err, rc, "scripts: out of memory");
    goto fail;
  }
  log_overlays(&ov);
  if ((rc = check_load(cfg, &cfg->settings, 0, 0, 0, &ld, &err)) != 0)
    goto fail;

  /* The scripts load: from here on the start writes. */
  if (!have_key) {
    char path[OPS_PATH_MAX];
    (void)key_file_path(cfg, path); /* fits: checked by keys_without_creating, which refused PostgreSQL here */
    eng_keys_clear();
    if ((rc = eng_keys_load(cfg->key, path, 1, &src, &err)) != 0)
      goto fail;
    if (src == ENG_KEY_CREATED)
      eng_log_info("server key: created %s; back it up with the database: without it no stored secret opens", path);
  }
  char fp[ENG_KEY_FINGERPRINT_HEX + 1];
  if ((rc = eng_keys_fingerprint(fp)) != 0) {
    rc = eng_errorf(&err, rc, "server key: no key loaded");
    goto fail;
  }
  if ((rc = migrate_db(cfg, memory ? NULL : fp)) != 0)
    goto out;
  if (!memory && st.fingerprint == NULL)
    eng_log_info("database %s: stored the server key's fingerprint (%.*s); a start with another key is refused",
                 shown(cfg->db_path), FINGERPRINT_SHOWN, fp);
  eng_server_hooks hooks = {
      .reload_check = reload_check,
      .poll = s.lock.fd >= 0 && !s.lock.held ? handover_poll : NULL,
      .ud = &s,
      .routes = ld.routes,
  };
  rc = eng_server_run(cfg, &hooks);
  goto out;
fail:
  eng_log_error("%s", err ? err : eng_strerror(rc));
out:
  if (pid_written)
    pid_file_remove(cfg->pid_file);
  lock_release(&s.lock);
  overlays_free(&ov);
  eng_db_state_free(&st);
  free(err);
  return rc == 0 ? 0 : 1;
}

/* ---- migrate ---------------------------------------------------------------------------------- */

/* Takes <db>.lock as serve does, so it never migrates under a running server (whose scripts were
 * checked against the schema it started with) nor beside a second migrate. */
int eng_ops_migrate(const eng_config *cfg) {
  instance_lock lk = {.fd = -1};
  char *err = NULL;
  int rc = 0;
  if (is_memory_db(cfg->db_path) || eng_config_db_is_pg(cfg->db_path)) /* PostgreSQL: its advisory lock */
    return migrate_db(cfg, NULL) == 0 ? 0 : 1;
  if (ensure_parent_dir(cfg->db_path) != 0) {
    eng_log_error("cannot create the directory of %s", cfg->db_path);
    return 1;
  }
  if ((rc = lock_take(&lk, cfg->db_path, 0, &err)) == ENG_EEXISTS) {
    char who[64] = "another process";
    if (lk.old_pid > 0)
      snprintf(who, sizeof who, "another apiengine (pid %ld)", lk.old_pid);
    eng_log_error("database %s is in use by %s, which holds %s: stop it first (a server applies pending migrations "
                  "itself when it starts)",
                  cfg->db_path, who, lk.path);
  } else if (rc != 0) {
    eng_log_error("%s", err ? err : eng_strerror(rc));
  } else {
    rc = migrate_db(cfg, NULL);
  }
  lock_release(&lk);
  free(err);
  return rc == 0 ? 0 : 1;
}

/* ---- check and routes ------------------------------------------------------------------------- */

/* The table of check and routes. The health and readiness paths come first, as the engine
 * answers them (GET and HEAD, in C, before the hooks and the routes); a script's GET or HEAD
 * route of the same path is listed as shadowed, since it never answers those. */
static void print_routes(const eng_config *cfg, const loaded *ld, const overlays *ov) {
  const char *engine_paths[2][2] = {{cfg->healthz_path, "--healthz-path"}, {cfg->readyz_path, "--readyz-path"}};
  int width = 7;
  for (size_t i = 0; i < ld->ninfos; i++) {
    int len = (int)strlen(ld->infos[i].pattern);
    width = len > width ? len : width;
  }
  for (int i = 0; i < 2; i++) {
    int len = (int)strlen(engine_paths[i][0]);
    width = len > width ? len : width;
  }
  printf("%-7s  %-*s  %s\n", "METHOD", width, "PATTERN", "HANDLER");
  for (int i = 0; i < 2; i++)
    printf("%-7s  %-*s  (engine, before any script: %s)\n", "GET", width, engine_paths[i][0], engine_paths[i][1]);
  for (size_t i = 0; i < ld->nhooks; i++) /* they run around every route: listed first */
    printf("%-7s  %-*s  %s\n", strcmp(ld->hooks[i].kind, "before") == 0 ? "BEFORE" : "AFTER", width, "*",
           ld->hooks[i].handler);
  for (size_t i = 0; i < ld->ninfos; i++) {
    const eng_route_info *r = &ld->infos[i];
    printf("%-7s  %-*s  %s", eng_router_method_name(r->method), width, r->pattern, r->handler ? r->handler : "?");
    if (r->replaced_at)
      printf("  (route.replace at %s, replacing %s)", r->replaced_at, r->replaced ? r->replaced : "?");
    const overlay *o = overlay_of(ov, r->replaced_at ? r->replaced_at : r->registered);
    if (o)
      printf("  (%s replaces %s)", o->winner, o->loser);
    for (int k = 0; k < 2; k++)
      if ((r->method == ENG_M_GET || r->method == ENG_M_HEAD) && strcmp(r->pattern, engine_paths[k][0]) == 0)
        printf("  (never answers: the engine's %s answers %s first)", engine_paths[k][1], r->pattern);
    printf("\n");
  }
}

/* What check and routes share: the key (never created), the overlays, the check-load. */
static int load_for_report(const eng_config *cfg, const eng_db_state *st, int lenient, overlays *ov, loaded *ld,
                           int *have_key, eng_key_source *src, char **err) {
  int rc = keys_without_creating(cfg, st, lenient, have_key, src, err);
  if (rc == 0 && (rc = find_overlays(cfg->scripts_dir, ov)) != 0)
    rc = eng_errorf(err, rc, "scripts: out of memory");
  if (rc == 0)
    rc = check_load(cfg, &cfg->settings, 0, 0, 1, ld, err);
  return rc;
}

int eng_ops_check(const eng_config *cfg) {
  eng_db_state st = {.max_applied_id = -1};
  overlays ov = {0};
  loaded ld = {0};
  eng_key_source src = 0;
  int have_key = 0, previous = 0, rc;
  char *err = NULL;
  printf("config: %s\n", cfg->config_file ? cfg->config_file : "none");
  printf("scripts: %s\nschema: %s\n", cfg->scripts_dir, cfg->schema_dir);
  if (!is_memory_db(cfg->db_path) && (rc = inspect_db(cfg, &st, &err)) != 0)
    goto fail;
  if (!st.exists)
    printf("database: %s does not exist; the first start creates it\n", cfg->db_path);
  else
    printf("database: %s, %d migration(s) applied\n", shown(cfg->db_path), st.applied);
  for (int i = 0; i < st.npending; i++)
    printf("pending migration: %s\n", st.pending[i]);
  if ((rc = load_for_report(cfg, &st, 0, &ov, &ld, &have_key, &src, &err)) != 0)
    goto fail;
  if (have_key && (rc = fingerprint_check(cfg, &st, src, &previous, &err)) != 0)
    goto fail;
  char kp[OPS_PATH_MAX];
  if (!have_key && key_file_path(cfg, kp) == 0)
    printf("server key: %s does not exist; the first start creates it\n", kp);
  else if (previous > 0)
    printf("server key: %s, previous key %d matches the database's fingerprint (run apiengine rekey to re-seal "
           "its secrets under the current key)\n",
           src == ENG_KEY_CONFIGURED ? "configured" : "key file", previous);
  else
    printf("server key: %s, %s\n", src == ENG_KEY_CONFIGURED ? "configured" : "key file",
           st.fingerprint ? "matches the database's fingerprint"
                          : "no fingerprint in the database yet (the next start stores it)");
  for (size_t i = 0; i < ov.n; i++)
    printf("overlay: %s replaces %s\n", ov.v[i].winner, ov.v[i].loser);
  print_routes(cfg, &ld, &ov);
  printf("ok: %d routes, %d pending migration(s)\n", ld.routes, st.npending);
  goto out;
fail:
  fprintf(stderr, "apiengine: check failed: %s\n", err ? err : eng_strerror(rc));
out:
  loaded_free(&ld);
  overlays_free(&ov);
  eng_db_state_free(&st);
  free(err);
  fflush(stdout);
  return rc == 0 ? 0 : 1;
}

int eng_ops_routes(const eng_config *cfg) {
  eng_db_state st = {.max_applied_id = -1};
  overlays ov = {0};
  loaded ld = {0};
  eng_key_source src = 0;
  int have_key = 0;
  char *err = NULL;
  int rc = load_for_report(cfg, &st, 1, &ov, &ld, &have_key, &src, &err); /* the routes need no real key */
  if (rc == 0)
    print_routes(cfg, &ld, &ov);
  else
    fprintf(stderr, "apiengine: %s\n", err ? err : eng_strerror(rc));
  loaded_free(&ld);
  overlays_free(&ov);
  free(err);
  fflush(stdout);
  return rc == 0 ? 0 : 1;
}

/* ---- reload ----------------------------------------------------------------------------------- */

/* The pid of the server holding <db>.lock, or 0 (after printing why) when none does. */
static long lock_holder(const char *db_path) {
  char path[OPS_PATH_MAX];
  if (path_with(path, db_path, ".lock") != 0)
    return 0;
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    fprintf(stderr, "apiengine: no server runs on %s (no %s: give the server's --db, or --pid-file)\n", db_path, path);
    return 0;
  }
  long pid = 0;
  /* A shared lock granted means nobody holds the exclusive one: no server. */
  if (flock(fd, LOCK_SH | LOCK_NB) == 0) {
    flock(fd, LOCK_UN);
    fprintf(stderr, "apiengine: no server runs on %s (nobody holds %s)\n", db_path, path);
  } else if ((pid = read_pid_fd(fd)) == 0) {
    fprintf(stderr, "apiengine: %s is held, but names no pid\n", path);
  }
  close(fd);
  return pid;
}

int eng_ops_reload(const eng_config *cfg) {
  long pid = 0;
  if (cfg->pid_file) {
    int fd = open(cfg->pid_file, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
      fprintf(stderr, "apiengine: cannot read the pid file %s: %s\n", cfg->pid_file, strerror(errno));
      return 1;
    }
    pid = read_pid_fd(fd);
    close(fd);
    if (pid == 0) {
      fprintf(stderr, "apiengine: the pid file %s holds no pid\n", cfg->pid_file);
      return 1;
    }
  } else if (eng_config_db_is_pg(cfg->db_path)) {
    fprintf(stderr, "apiengine: on PostgreSQL there is no <db>.lock to find the server by: give its --pid-file\n");
    return 1;
  } else if ((pid = lock_holder(cfg->db_path)) == 0) {
    return 1;
  }
  if (kill((pid_t)pid, SIGHUP) != 0) {
    fprintf(stderr, "apiengine: cannot signal pid %ld: %s\n", pid, strerror(errno));
    return 1;
  }
  printf("sent SIGHUP to pid %ld: its log says how the reload went (\"reload N done\" or \"reload N refused\")\n", pid);
  return 0;
}

/* ---- rekey ------------------------------------------------------------------------------------ */

int eng_ops_rekey(const eng_config *cfg) {
  eng_db_state st = {.max_applied_id = -1};
  eng_key_source src = 0;
  eng_db *db = NULL;
  eng_runtime *rt = NULL;
  eng_rekey_stats stats = {0};
  char *err = NULL, *serving = NULL;
  char path[OPS_PATH_MAX], fp[ENG_KEY_FINGERPRINT_HEX + 1];
  int rc, previous = 0;

  if (is_memory_db(cfg->db_path) || key_file_path(cfg, path) != 0) {
    rc = eng_errorf(&err, ENG_EINVAL, "rekey needs a database file (--db)");
    goto fail;
  }
  if ((rc = eng_db_inspect(cfg->db_path, cfg->schema_dir, &st, &err)) != 0)
    goto fail;
  if (!st.exists || st.fingerprint == NULL) {
    rc = eng_errorf(&err, ENG_ECONFIG, "database %s %s: start the server on it once first", cfg->db_path,
                    st.exists ? "has no key fingerprint yet" : "does not exist");
    goto fail;
  }
  if (st.npending > 0) {
    rc = eng_errorf(&err, ENG_ECONFIG,
                    "database %s has %d pending migration(s) (%s): apply them first (apiengine migrate, or a start)",
                    cfg->db_path, st.npending, st.pending[0]);
    goto fail;
  }
  if ((rc = eng_keys_load(cfg->key, path, 0, &src, &err)) != 0)
    goto fail;
  if ((rc = fingerprint_check(cfg, &st, src, &previous, &err)) != 0)
    goto fail;
  eng_keys_fingerprint(fp);
  eng_db_options o = {.synchronous = cfg->synchronous};
  if ((rc = eng_db_open(&db, cfg->db_path, &o, &err)) != 0)
    goto fail;
  /* A server that runs with another current key would not open what this run seals. */
  if ((rc = eng_db_engine_fact(db, SERVING_FACT, fp, &serving, &err)) != 0)
    goto fail;
  if (strcmp(serving, fp) != 0) {
    rc = eng_errorf(&err, ENG_ECONFIG,
                    "the server last started on %s with another current key (fingerprint %.*s, this one's %.*s): "
                    "restart it with the keys given here (the new key first, then the previous ones) before the "
                    "rekey, so that it opens what the rekey seals",
                    cfg->db_path, FINGERPRINT_SHOWN, serving, FINGERPRINT_SHOWN, fp);
    goto fail;
  }
  eng_runtime_options ro = {
      .scripts_dir = cfg->scripts_dir,
      .settings = &cfg->settings,
      .budget_ms = cfg->budget_ms,
      .memory_limit = cfg->memory_limit,
      .db = db,
  };
  if ((rc = eng_runtime_new(&rt, &ro, &err)) != 0)
    goto fail;
  struct timespec t0, t1;
  clock_gettime(CLOCK_MONOTONIC, &t0);
  rc = eng_rekey_run(eng_runtime_lua(rt), db, ENG_REKEY_BATCH_DEFAULT, cfg->rekey_pause_ms, stderr, &stats, &err);
  clock_gettime(CLOCK_MONOTONIC, &t1);
  long ms = (long)((t1.tv_sec - t0.tv_sec) * 1000 + (t1.tv_nsec - t0.tv_nsec) / 1000000);
  printf("rekey: %d sealed column(s), %lld rows read, %lld re-sealed under the current key, %lld already were, %lld "
         "opened by no key, in %ld ms\n",
         stats.columns, stats.rows, stats.resealed, stats.current, stats.unopenable, ms);
  if (rc != 0)
    goto fail;
  if (stats.unopenable > 0) {
    rc = eng_errorf(&err, ENG_ECONFIG,
                    "%lld value(s) open with none of the keys given (logged above with their rowids): the database's "
                    "key fingerprint stays as it was; give the key that sealed them as a previous key and run "
                    "rekey again",
                    stats.unopenable);
    goto fail;
  }
  if (previous > 0 || strcmp(st.fingerprint, fp) != 0) {
    if ((rc = eng_db_engine_fact_set(db, FINGERPRINT_FACT, fp, &err)) != 0)
      goto fail;
    printf("rekey: the database's key fingerprint is now the current key's (%.*s); the previous keys can be dropped "
           "(tokens they signed are then refused)\n",
           FINGERPRINT_SHOWN, fp);
  } else {
    printf("rekey: the database's key fingerprint was the current key's already (%.*s)\n", FINGERPRINT_SHOWN, fp);
  }
  goto out;
fail:
  fprintf(stderr, "apiengine: rekey failed: %s\n", err ? err : eng_strerror(rc));
out:
  eng_runtime_free(rt);
  eng_db_close(db);
  eng_db_state_free(&st);
  free(serving);
  free(err);
  fflush(stdout);
  return rc == 0 ? 0 : 1;
}

/* ---- backup ----------------------------------------------------------------------------------- */

#define BACKUP_STEP_PAGES 256 /* pages copied per sqlite3_backup_step */
#define BACKUP_BUSY_WAIT_MS 10

/* Copies the key file at from to a new file to (O_EXCL, 0600, fsync'd). 0 or ENG_E* with *err. */
static int copy_key_file(const char *from, const char *to, char **err) {
  char *data = NULL;
  size_t len = 0;
  int rc = eng_file_read(from, 64 * 1024, &data, &len);
  if (rc != 0)
    return eng_errorf(err, rc, "cannot read the key file %s: %s", from, strerror(errno));
  int fd = open(to, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  if (fd < 0) {
    rc = eng_errorf(err, ENG_EIO, "cannot create %s: %s", to, strerror(errno));
  } else {
    ssize_t w = write(fd, data, len);
    if (w != (ssize_t)len || fsync(fd) != 0)
      rc = eng_errorf(err, ENG_EIO, "cannot write %s: %s", to, strerror(errno));
    if (close(fd) != 0 && rc == 0)
      rc = eng_errorf(err, ENG_EIO, "cannot write %s: %s", to, strerror(errno));
    if (rc != 0)
      unlink(to);
  }
  eng_crypto_wipe(data, len);
  free(data);
  return rc;
}

/* The copy itself: the source opened read-only, one read transaction over the whole copy (a
 * snapshot: in WAL mode writers go on beside it, and the copy never restarts because of them),
 * BACKUP_STEP_PAGES pages per step. */
static int backup_copy(const char *src_path, const char *out, int *pages, char **err) {
  sqlite3 *src = NULL, *dst = NULL;
  sqlite3_backup *b = NULL;
  int rc = 0, step = SQLITE_OK;
  if (sqlite3_open_v2(src_path, &src, SQLITE_OPEN_READONLY | SQLITE_OPEN_NOMUTEX, NULL) != SQLITE_OK) {
    rc = eng_errorf(err, ENG_EDB, "cannot open %s: %s", src_path, src ? sqlite3_errmsg(src) : "out of memory");
    goto cleanup;
  }
  sqlite3_busy_timeout(src, ENG_DB_BUSY_TIMEOUT_DEFAULT_MS);
  if (sqlite3_exec(src, "BEGIN; SELECT count(*) FROM sqlite_master", NULL, NULL, NULL) != SQLITE_OK) {
    rc = eng_errorf(err, ENG_EDB, "cannot read %s: %s", src_path, sqlite3_errmsg(src));
    goto cleanup;
  }
  if (sqlite3_open_v2(out, &dst, SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX, NULL) != SQLITE_OK) {
    rc = eng_errorf(err, ENG_EDB, "cannot open %s: %s", out, dst ? sqlite3_errmsg(dst) : "out of memory");
    goto cleanup;
  }
  if ((b = sqlite3_backup_init(dst, "main", src, "main")) == NULL) {
    rc = eng_errorf(err, ENG_EDB, "cannot start the backup: %s", sqlite3_errmsg(dst));
    goto cleanup;
  }
  while ((step = sqlite3_backup_step(b, BACKUP_STEP_PAGES)) == SQLITE_OK || step == SQLITE_BUSY ||
         step == SQLITE_LOCKED)
    if (step != SQLITE_OK)
      sqlite3_sleep(BACKUP_BUSY_WAIT_MS);
  *pages = sqlite3_backup_pagecount(b);
  if (step != SQLITE_DONE)
    rc = eng_errorf(err, ENG_EDB, "the backup failed: %s", sqlite3_errstr(step));
cleanup:
  if (b && sqlite3_backup_finish(b) != SQLITE_OK && rc == 0)
    rc = eng_errorf(err, ENG_EDB, "the backup failed: %s", sqlite3_errmsg(dst));
  if (src && !sqlite3_get_autocommit(src))
    sqlite3_exec(src, "ROLLBACK", NULL, NULL, NULL);
  if (dst && sqlite3_close(dst) != SQLITE_OK && rc == 0)
    rc = eng_errorf(err, ENG_EDB, "cannot close %s", out);
  sqlite3_close(src);
  return rc;
}

int eng_ops_backup(const eng_config *cfg, const char *out) {
  char key_path[OPS_PATH_MAX], out_key[OPS_PATH_MAX];
  char *err = NULL;
  int rc = 0, pages = 0, created = 0, key_copied = 0;
  struct stat sb;
  if (is_memory_db(cfg->db_path) || key_file_path(cfg, key_path) != 0 || path_with(out_key, out, ".key") != 0) {
    rc = eng_errorf(&err, ENG_EINVAL, "backup needs a database file (--db) and an output path");
    goto fail;
  }
  if (stat(cfg->db_path, &sb) != 0) {
    rc = eng_errorf(&err, ENG_ENOTFOUND, "database %s: %s", cfg->db_path, strerror(errno));
    goto fail;
  }
  int have_key_file = stat(key_path, &sb) == 0;
  if (lstat(out, &sb) == 0 || (have_key_file && lstat(out_key, &sb) == 0)) {
    rc = eng_errorf(&err, ENG_EEXISTS, "%s exists: a backup never overwrites; remove it or choose another name",
                    lstat(out, &sb) == 0 ? out : out_key);
    goto fail;
  }
  int fd = open(out, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0640); /* claims the name: an empty database */
  if (fd < 0) {
    rc = eng_errorf(&err, errno == EEXIST ? ENG_EEXISTS : ENG_EIO, "cannot create %s: %s", out, strerror(errno));
    goto fail;
  }
  close(fd);
  created = 1;
  struct timespec t0, t1;
  clock_gettime(CLOCK_MONOTONIC, &t0);
  if ((rc = backup_copy(cfg->db_path, out, &pages, &err)) != 0)
    goto fail;
  clock_gettime(CLOCK_MONOTONIC, &t1);
  if (have_key_file) {
    if ((rc = copy_key_file(key_path, out_key, &err)) != 0)
      goto fail;
    key_copied = 1;
  }
  long ms = (long)((t1.tv_sec - t0.tv_sec) * 1000 + (t1.tv_nsec - t0.tv_nsec) / 1000000);
  printf("backup: %s (%d pages) copied to %s in %ld ms", cfg->db_path, pages, out, ms);
  if (key_copied)
    printf("; its key file to %s (mode 0600)\n", out_key);
  else if (cfg->key && *cfg->key)
    printf("; no key file beside the database (the key is configured): keep that key with the backup\n");
  else
    printf("; the database has no key file %s yet\n", key_path);
  goto out;
fail:
  fprintf(stderr, "apiengine: backup failed: %s\n", err ? err : eng_strerror(rc));
  if (created) {
    unlink(out);
    char side[OPS_PATH_MAX];
    if (path_with(side, out, "-journal") == 0)
      unlink(side);
  }
out:
  free(err);
  fflush(stdout);
  return rc == 0 ? 0 : 1;
}
