/* db_migrate.h - schema migrations: numbered SQL files applied once each, in order, recorded
 * with their checksums in the database.
 *
 * Errors: 0 or a negative ENG_E* code (error.h), the detail in a malloc'd *err. */
#ifndef ENG_DB_MIGRATE_H
#define ENG_DB_MIGRATE_H

typedef struct eng_db eng_db; /* db.h */

#define ENG_DB_MIGRATION_MAX_BYTES (16 * 1024 * 1024) /* one migration file */
#define ENG_DB_MIGRATIONS_TABLE "_migrations"

/* Applies schema_dir/NNNN_name.sql files (4 digits, '_', a non-empty name, ".sql"; other names
 * are ignored) in number order, each in its own BEGIN IMMEDIATE transaction together with its
 * record in _migrations(id, name, checksum, applied_at), checksum = hex SHA-256 of the file bytes.
 * Safe to run from several processes or threads at once (each connection its own): BEGIN
 * IMMEDIATE serialises them and a migration applied meanwhile by another is skipped.
 * Refuses with ENG_ECONFIG, before applying anything, when: the db records a migration the
 * directory does not have; a recorded migration's file changed ("migration 0002_x.sql was changed
 * after it was applied"); two files share a number; a new file's number is below an applied one;
 * a file holds a NUL byte.
 * A failing migration is rolled back fully (ENG_EDB; the message names the file and SQLite's
 * error); the ones before it stay applied. ENG_EIO when the directory or a file can't be read.
 * *applied (if not NULL) gets the number of newly applied files, also on error. *err (if not
 * NULL) gets a malloc'd message on failure. Logs one info line per applied migration.
 * Also ENG_ETOOBIG (a path, or a file over ENG_DB_MIGRATION_MAX_BYTES), ENG_ENOMEM and
 * ENG_ECRYPTO (the checksum failed). Call it outside a transaction (inside one it fails with
 * ENG_EDB); it leaves no transaction open.
 * schema_dir may name up to 16 directories separated by ':' (an overlay, e.g. the default
 * schema plus an operator's own): their files form one numbered sequence, and a number used in
 * two of them is refused like two files with one number. */
int eng_db_migrate(eng_db *db, const char *schema_dir, int *applied, char **err);

#endif
