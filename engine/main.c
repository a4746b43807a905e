/* main.c - the apiengine command line: serve, migrate, check, routes, reload, rekey, backup, test. */
#include "config.h"
#include "log.h"
#include "ops.h"
#include "pg_copy.h"
#include "server.h"

#include <openssl/crypto.h>
#include <sqlite3.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

int eng_test_main(int argc, char **argv); /* test.c */

static void usage(FILE *f) {
  fprintf(f,
          "apiengine %s - a Lua-scriptable HTTP API engine\n\n"
          "usage:\n"
          "  apiengine serve [options]     check the scripts, migrate the database, run the server\n"
          "  apiengine check [options]     read the config, load the scripts, list pending migrations and\n"
          "                                the routes, check the server key; writes nothing; exit 0, or 1\n"
          "                                with file:line\n"
          "  apiengine routes [options]    method, pattern, the handler's file:line, and the overlay that\n"
          "                                replaced or wrapped it\n"
          "  apiengine reload [options]    SIGHUP to the server of --pid-file, else to the one holding\n"
          "                                <db>.lock: it reloads the scripts and `settings`\n"
          "  apiengine migrate [options]   apply schema migrations and exit (takes <db>.lock like serve)\n"
          "  apiengine migrate --from sqlite:PATH --to CONNINFO [--schema DIR] [--progress-every N]\n"
          "                                copy a SQLite database into an empty PostgreSQL one, in one\n"
          "                                transaction, after its migrations (the key is not copied)\n"
          "  apiengine backup [options] OUT\n"
          "                                online copy of the database to OUT (never overwritten) through\n"
          "                                SQLite's backup API, and its key file to OUT.key (mode 0600)\n"
          "  apiengine rekey [options]     re-seal the stored secrets under the current key (APIENGINE_KEY\n"
          "                                \"NEW,OLD\"), in short transactions, beside a running server\n"
          "  apiengine test [busted options] [PATH...]\n"
          "                                run busted specs inside the engine (default: tests/)\n"
          "  apiengine --version | --help\n\n"
          "options (flag, then the environment variable; a config file may set them too):\n%s\n"
          "Script settings (engine.config.get) come from the config file's `settings` table,\n"
          "overridden by APIENGINE_<NAME> environment variables.\n"
          "One server per database: serve holds <db>.lock (naming its pid) and refuses to start\n"
          "while another process holds it or listens on the address, unless --handover.\n"
          "PostgreSQL (--db postgresql://... or 'host=... dbname=...'): several nodes share one\n"
          "database; no lock file; the key is never generated (APIENGINE_KEY or --key-file, the\n"
          "same on every node); backup and rekey are not available there yet (exit 2).\n"
          "Signals: SIGTERM / SIGINT stop accepting, drain in-flight requests, exit 0 (1 when a\n"
          "handler still runs past --drain-timeout).\n"
          "SIGHUP reloads the scripts and the config file's `settings` (not migrations; a reload\n"
          "that fails changes nothing and logs file:line).\n",
          APIENGINE_VERSION, eng_config_usage());
}

/* Process-wide settings of the libraries, which only hold when made before their first use:
 * so here, ahead of every command (the module that owns each library cannot know it is first).
 * - OpenSSL's error strings are never shown by the engine (crypto.c turns its failures into
 *   ENG_E* codes), and loading them costs about 450 KiB of resident memory per process. Its
 *   config file is still read (an operator may name providers there).
 * - SQLite's memory statistics take a global mutex on every allocation of every connection,
 *   so the workers' databases would contend on it; nothing reads those statistics. */
static void libraries_setup(void) {
  (void)OPENSSL_init_crypto(OPENSSL_INIT_NO_LOAD_CRYPTO_STRINGS, NULL);
  (void)sqlite3_config(SQLITE_CONFIG_MEMSTATUS, 0);
}

int main(int argc, char **argv) {
  libraries_setup();
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
  if (strcmp(argv[1], "migrate") == 0 && eng_pg_copy_wanted(argc, argv))
    return eng_pg_copy_main(argc, argv);
  static const struct {
    const char *name;
    int (*run)(const eng_config *cfg);
  } commands[] = {{"serve", NULL},
                  {"migrate", eng_ops_migrate},
                  {"check", eng_ops_check},
                  {"routes", eng_ops_routes},
                  {"reload", eng_ops_reload},
                  {"rekey", eng_ops_rekey},
                  {"backup", NULL}};
  size_t c = 0;
  while (c < sizeof commands / sizeof commands[0] && strcmp(argv[1], commands[c].name) != 0)
    c++;
  if (c == sizeof commands / sizeof commands[0]) {
    fprintf(stderr, "apiengine: unknown command '%s' (see apiengine --help)\n", argv[1]);
    return 2;
  }
  int backup = strcmp(argv[1], "backup") == 0, nargs = argc;
  const char *out = NULL;
  int asks_help = argc >= 3 && (strcmp(argv[argc - 1], "--help") == 0 || strcmp(argv[argc - 1], "-h") == 0 ||
                                strcmp(argv[argc - 1], "--version") == 0);
  if (backup && !asks_help) { /* apiengine backup [options] OUT: the output path comes last */
    if (argc < 3 || argv[argc - 1][0] == '-') {
      fprintf(stderr, "apiengine: backup needs the output path last: apiengine backup [--db PATH] OUT\n");
      return 2;
    }
    out = argv[--nargs];
  }
  eng_config cfg;
  eng_config_init(&cfg);
  int help = 0, version = 0;
  char *err = NULL;
  if (eng_config_load(&cfg, nargs, argv, 2, &help, &version, &err) != 0) {
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
  eng_ops_default_dirs(&cfg);
  eng_log_setup(cfg.log_level, cfg.log_json);
  /* The database holds sealed secrets and verifiers: no access for others to it, its WAL or
   * the directory created for it. */
  umask(027);
  if ((backup || commands[c].run == eng_ops_rekey) && eng_config_db_is_pg(cfg.db_path)) {
    fprintf(stderr, "apiengine: %s is not available on PostgreSQL yet: %s\n", argv[1],
            backup ? "back it up with PostgreSQL's own tools (pg_dump, or a base backup), and the key with it"
                   : "re-sealing runs on SQLite only for now; keep the previous keys configured meanwhile");
    eng_config_free(&cfg);
    return 2;
  }
  int rc = backup            ? eng_ops_backup(&cfg, out)
           : commands[c].run ? commands[c].run(&cfg)
                             : eng_ops_serve(&cfg, argc, argv, 2);
  if (eng_server_abandoned()) { /* a worker stuck past the drain deadline still runs (server.h) */
    fflush(NULL);
    _exit(rc);
  }
  eng_config_free(&cfg);
  return rc;
}
