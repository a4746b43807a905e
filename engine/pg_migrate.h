/* pg_migrate.h - PostgreSQL at start-up: schema migrations, the engine's facts (the key's
 * fingerprint) and the connection string as a log may show it.
 *
 * These calls block (libpq's synchronous API, one connection per call): they run before the
 * workers' loops start, or from the command line (`apiengine migrate/check`), never on a loop.
 * The rules for the schema's files are SQLite's (db_migrate.h, one implementation): NNNN_name.sql
 * files in number order, overlays of directories joined by ':', checksums recorded in
 * _migrations, the same refusals with the same messages. One addition: NNNN_name.pg.sql is the
 * PostgreSQL variant of NNNN_name.sql of the same directory (one numbering for both databases):
 * PostgreSQL applies it instead of the .sql one, and records its name; a .pg.sql with no .sql
 * beside it is a PostgreSQL-only migration (SQLite never reads .pg.sql files).
 *
 * Several nodes starting together: everything runs under the session advisory lock
 * ENG_PG_MIGRATE_LOCK_KEY, so one node applies each migration and the others then find it
 * recorded. Each migration runs in its own transaction together with its record.
 *
 * Errors: 0 or a negative ENG_E* code (error.h), the detail in a malloc'd *err. */
#ifndef ENG_PG_MIGRATE_H
#define ENG_PG_MIGRATE_H

#include <stddef.h>

#include "db_migrate.h"

/* The advisory lock (pg_advisory_lock's bigint) that serialises the engine's start-up work on one
 * database: the bytes of "apiengin" read as a big-endian integer. An operator's own advisory
 * locks must not use it. */
#define ENG_PG_MIGRATE_LOCK_KEY 7021227703435487598LL
#define ENG_PG_CONNECT_TIMEOUT_S "10" /* libpq's connect_timeout, unless conninfo sets one */

/* Applies the migrations of schema_dir to the database of conninfo (a libpq keyword string or
 * URI), as eng_db_migrate does for SQLite; opt as eng_db_migrate_ex's (may be NULL). A failing
 * statement rolls its migration back (ENG_EDB); the message names dir/file:line: the line of the
 * character PostgreSQL points at when it reports one, else the line where the statement starts.
 * A file's statements are split at top-level ';' (quotes, E'' strings, quoted identifiers,
 * dollar quoting and comments are understood): write function bodies in dollar quotes, not as
 * BEGIN ATOMIC blocks. ENG_EDB also when the server cannot be reached (the message is libpq's,
 * which never shows a password). Logs one info line per applied migration (unless opt->quiet). */
int eng_pg_migrate(const char *conninfo, const char *schema_dir, int *applied, char **err);
int eng_pg_migrate_ex(const char *conninfo, const char *schema_dir, const eng_db_migrate_options *opt, int *applied,
                      char **err);

/* eng_db_inspect for PostgreSQL: the records and facts, read without writing anything (a
 * database without the tables has everything pending; out->exists is 1 once connected). */
int eng_pg_inspect(const char *conninfo, const char *schema_dir, eng_db_state *out, char **err);

/* The engine's facts in ENG_DB_ENGINE_TABLE (key TEXT PRIMARY KEY, value TEXT NOT NULL), created
 * if missing, as eng_db_engine_fact / eng_db_engine_fact_set: _fact keeps a stored value and
 * gives back (*stored, malloc'd) what the table holds; _fact_set replaces it. ENG_EDB, ENG_ENOMEM. */
int eng_pg_engine_fact(const char *conninfo, const char *key, const char *value, char **stored, char **err);
int eng_pg_engine_fact_set(const char *conninfo, const char *key, const char *value, char **err);

/* Writes db (a --db setting: a path, a libpq keyword string or a URI) into out (cap bytes, always
 * NUL-terminated, cut short when it does not fit) with passwords masked: the value of every
 * password= keyword and the password of a URI's user:password@ become "***". Returns out. */
char *eng_pg_conninfo_redact(const char *db, char *out, size_t cap);

#endif
