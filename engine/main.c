/* main.c - the apiengine command line: serve, migrate, test. */
#include "config.h"
#include "db.h"
#include "error.h"
#include "keys.h"
#include "log.h"
#include "server.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

int eng_test_main(int argc, char **argv); /* test.c */

static void usage(FILE *f) {
  fprintf(f,
          "apiengine %s - a Lua-scriptable HTTP API engine\n\n"
          "usage:\n"
          "  apiengine serve [options]     run the server (migrates the database first)\n"
          "  apiengine migrate [options]   apply schema migrations and exit\n"
          "  apiengine test [busted options] [PATH...]\n"
          "                                run busted specs inside the engine (default: tests/)\n"
          "  apiengine --version | --help\n\n"
          "options (flag, then the environment variable; a config file may set them too):\n%s\n"
          "Script settings (engine.config.get) come from the config file's `settings` table,\n"
          "overridden by APIENGINE_<NAME> environment variables.\n"
          "Signals: SIGTERM / SIGINT stop accepting, drain in-flight requests, exit 0.\n",
          APIENGINE_VERSION, eng_config_usage());
}

/* mkdir -p of the directory part of path (the default ./data/). */
static int ensure_parent_dir(const char *path) {
  char tmp[4096];
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

/* Opens the database once, applies migrations, closes it. */
static int migrate(const eng_config *cfg) {
  eng_db *db = NULL;
  char *err = NULL;
  int applied = 0;
  eng_db_options o = {.synchronous = cfg->synchronous};
  if (strcmp(cfg->db_path, ":memory:") != 0 && ensure_parent_dir(cfg->db_path) != 0) {
    eng_log_error("cannot create the directory of %s", cfg->db_path);
    return ENG_EIO;
  }
  int rc = eng_db_open(&db, cfg->db_path, &o, &err);
  if (rc == 0)
    rc = eng_db_migrate(db, cfg->schema_dir, &applied, &err);
  if (rc != 0)
    eng_log_error("database %s: %s", cfg->db_path, err ? err : eng_strerror(rc));
  else
    eng_log_info("database %s: %d migration(s) applied", cfg->db_path, applied);
  free(err);
  eng_db_close(db);
  return rc;
}

static int setup_keys(const eng_config *cfg) {
  char *err = NULL;
  char path[4200];
  snprintf(path, sizeof path, "%s.key", cfg->db_path);
  int rc = eng_keys_init(cfg->key, path, &err);
  if (rc != 0)
    eng_log_error("server key: %s", err ? err : eng_strerror(rc));
  free(err);
  return rc;
}

int main(int argc, char **argv) {
  if (argc < 2 || strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0 || strcmp(argv[1], "help") == 0) {
    usage(argc < 2 ? stderr : stdout);
    return argc < 2 ? 2 : 0;
  }
  if (strcmp(argv[1], "--version") == 0 || strcmp(argv[1], "version") == 0) {
    printf("apiengine %s\n", APIENGINE_VERSION);
    return 0;
  }
  if (strcmp(argv[1], "test") == 0)
    return eng_test_main(argc, argv);
  int serve = strcmp(argv[1], "serve") == 0;
  if (!serve && strcmp(argv[1], "migrate") != 0) {
    fprintf(stderr, "apiengine: unknown command '%s' (see apiengine --help)\n", argv[1]);
    return 2;
  }
  eng_config cfg;
  eng_config_init(&cfg);
  int help = 0, version = 0;
  char *err = NULL;
  if (eng_config_load(&cfg, argc, argv, 2, &help, &version, &err) != 0) {
    fprintf(stderr, "apiengine: %s\n", err);
    free(err);
    eng_config_free(&cfg);
    return 2;
  }
  if (help || version) {
    if (help)
      usage(stdout);
    else
      printf("apiengine %s\n", APIENGINE_VERSION);
    eng_config_free(&cfg);
    return 0;
  }
  eng_log_setup(cfg.log_level, cfg.log_json);
  /* The database holds sealed secrets and verifiers: no access for others to it, its WAL or
   * the directory created for it. */
  umask(027);
  int rc = migrate(&cfg);
  if (rc == 0 && serve && (rc = setup_keys(&cfg)) == 0)
    rc = eng_server_run(&cfg);
  eng_config_free(&cfg);
  return rc == 0 ? 0 : 1;
}
