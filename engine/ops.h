/* ops.h - operating the server: the start-up sequence and its guard rails, and the commands
 * that check, list, reload and migrate.
 *
 * `serve` runs, in this order, so that a start that fails changes nothing it cannot take back:
 *   1. a probe that nobody listens on the address, and the instance lock <db>.lock (flock,
 *      held for the process lifetime, naming the holder's pid); --handover skips the probe and
 *      starts beside the lock's holder, taking the lock over when the old server exits;
 *   2. the database read-only: applied and pending migrations, the key fingerprint;
 *   3. the server key, without creating the key file; a key that does not match the
 *      database's fingerprint stops the start; a missing key file of a database that has a
 *      fingerprint too;
 *   4. the scripts, loaded in a runtime of this thread against a scratch in-memory database
 *      holding the schema the workers will see (every migration, the pending ones included);
 *   5. then the key file if it was missing, the migrations, the fingerprint if the database had
 *      none, and the workers (server.h).
 * The pid file (--pid-file) is written after the lock and removed at exit, or when the start fails.
 * SIGHUP repeats 2 and 4 with the config file read again (only its `settings` apply) and the
 * scratch schema cut at the migrations the database has (a reload applies none).
 *
 * Each function returns the process exit status: 0, 1 (a failure, logged or printed with
 * file:line where there is one). cfg comes from eng_config_load. */
#ifndef ENG_OPS_H
#define ENG_OPS_H

#include "config.h"

/* Where the default scripts and schema are when the binary is installed (cmake --install):
 * a scripts or schema setting left at its default ("scripts", "schema") names
 * <bin>/../share/apiengine/scripts (schema) instead when the working directory has no such
 * directory and the installed one exists. Call it after eng_config_load. */
void eng_ops_default_dirs(eng_config *cfg);

/* apiengine serve. argv[first..argc) are the flags cfg was loaded from: a reload reads the
 * config file (and the environment and flags over it) again from them; argv must outlive the
 * call. */
int eng_ops_serve(const eng_config *cfg, int argc, char **argv, int first);

/* apiengine migrate: takes <db>.lock (refused while a server or another migrate holds it),
 * applies the migrations and exits. */
int eng_ops_migrate(const eng_config *cfg);

/* apiengine check: the config (already read), the database read-only (or not at all when
 * missing: pending migrations, the key fingerprint against the key when one exists), the scripts
 * against a scratch schema, the route table; writes nothing. Report on stdout. */
int eng_ops_check(const eng_config *cfg);

/* apiengine routes: method, pattern, the handler's file:line and which overlay replaced or
 * wrapped it, on stdout. Writes nothing. */
int eng_ops_routes(const eng_config *cfg);

/* apiengine reload: SIGHUP to the server of cfg->pid_file when set, else to the holder of
 * <db>.lock. 1 when no server runs there. */
int eng_ops_reload(const eng_config *cfg);

/* apiengine rekey: re-seals the secrets of the columns the scripts declare
 * (crypto.sealed_column) under the current key, in short transactions (lua_rekey.h), progress on
 * stderr, safe beside a running server (which must run with the same keys: the database records
 * the current key of the last start, and a rekey with another current key is refused). Once no
 * value is left that only a previous key opens, the database's key fingerprint becomes the
 * current key's, so a start with the previous key alone is refused from then on. */
int eng_ops_rekey(const eng_config *cfg);

/* apiengine backup OUT: an online copy of cfg->db_path through SQLite's backup API, from one
 * read snapshot (writers go on meanwhile), into OUT, which must not exist; the key file
 * <db>.key, when there is one, to OUT.key (mode 0600). Removes what it made when it fails. */
int eng_ops_backup(const eng_config *cfg, const char *out);

#endif
