/* db_migrate.h - schema migrations: numbered SQL files applied once each, in order, recorded
 * with their checksums in the database.
 *
 * Errors: 0 or a negative ENG_E* code (error.h), the detail in a malloc'd *err. */
#ifndef ENG_DB_MIGRATE_H
#define ENG_DB_MIGRATE_H

#include <stddef.h>

#include "files.h"

typedef struct eng_db eng_db; /* db.h */

#define ENG_DB_MIGRATION_MAX_BYTES (16 * 1024 * 1024) /* one migration file */
#define ENG_DB_MIGRATIONS_TABLE "_migrations"

/* Applies schema_dir/NNNN_name.sql files (4 digits, '_', a non-empty name, ".sql"; other names
 * are ignored, and so are NNNN_name.pg.sql files: PostgreSQL's variants, see pg_migrate.h) in number order, each in its own BEGIN IMMEDIATE transaction together with its
 * record in _migrations(id, name, checksum, applied_at), checksum = hex SHA-256 of the file bytes.
 * Safe to run from several processes or threads at once (each connection its own): BEGIN
 * IMMEDIATE serialises them and a migration applied meanwhile by another is skipped.
 * Refuses with ENG_ECONFIG, before applying anything, when: the db records a migration the
 * directories do not have (the message suggests the --schema overlay it may have come from); a
 * recorded migration's file changed ("migration dir/0002_x.sql was changed after it was applied
 * ...", saying what to do); two files share a number; a new file's number is below an applied
 * one; a file holds a NUL byte.
 * A migration's statements run one at a time; a failing one is rolled back fully (ENG_EDB; the
 * message names dir/file:line of the failing statement and SQLite's error); the ones before it
 * stay applied. ENG_EIO when the directory or a file can't be read.
 * *applied (if not NULL) gets the number of newly applied files, also on error. *err (if not
 * NULL) gets a malloc'd message on failure. Logs one info line per applied migration.
 * Also ENG_ETOOBIG (a path, or a file over ENG_DB_MIGRATION_MAX_BYTES), ENG_ENOMEM and
 * ENG_ECRYPTO (the checksum failed). Call it outside a transaction (inside one it fails with
 * ENG_EDB); it leaves no transaction open.
 * schema_dir may name up to 16 directories separated by ':' (an overlay, e.g. the default
 * schema plus an operator's own): their files form one numbered sequence, and a number used in
 * two of them is refused like two files with one number. */
int eng_db_migrate(eng_db *db, const char *schema_dir, int *applied, char **err);

typedef struct eng_db_migrate_options {
  int limit; /* when set, apply only the migrations numbered up to max_id (-1: none), e.g. the ones
               * another database has applied (eng_db_state.max_applied_id) */
  int max_id;
  int quiet; /* no log line per applied migration (a scratch copy of the schema) */
} eng_db_migrate_options;

/* eng_db_migrate with options (NULL: those of eng_db_migrate). */
int eng_db_migrate_ex(eng_db *db, const char *schema_dir, const eng_db_migrate_options *opt, int *applied, char **err);

#define ENG_DB_ENGINE_TABLE "_engine" /* the engine's own facts about a database: key -> value */

/* What a database file holds, read without writing anything (eng_db_inspect). */
typedef struct eng_db_state {
  int exists;         /* the file exists (when 0, everything below is empty) */
  int applied;        /* migrations recorded */
  int max_applied_id; /* highest recorded migration number, -1 for none */
  int npending;
  char **pending;    /* npending "dir/NNNN_name.sql" paths, in order, malloc'd */
  char *fingerprint; /* ENG_DB_ENGINE_TABLE's key_fingerprint, malloc'd, or NULL when none is stored */
} eng_db_state;

/* Reads the migration records and the engine's facts of the database at path, opened
 * read-only (SQLITE_OPEN_READONLY; a missing file is not created: out->exists = 0, every
 * migration pending), and compares the records with schema_dir as eng_db_migrate would: an
 * unknown or changed recorded migration is ENG_ECONFIG with the same message. Lists the
 * migrations eng_db_migrate would apply in out->pending. ENG_EDB when SQLite cannot read the
 * file, ENG_EIO / ENG_ETOOBIG / ENG_ENOMEM as eng_db_migrate. *out is filled on success only;
 * free it with eng_db_state_free. */
int eng_db_inspect(const char *path, const char *schema_dir, eng_db_state *out, char **err);
void eng_db_state_free(eng_db_state *s);

/* Stores value under key in ENG_DB_ENGINE_TABLE (created if missing) unless the key already
 * has a value; either way *stored gets the value the table holds afterwards (malloc'd, the caller
 * frees it). One transaction; call it outside one. ENG_EDB / ENG_ENOMEM with *err. */
int eng_db_engine_fact(eng_db *db, const char *key, const char *value, char **stored, char **err);

/* Stores value under key in ENG_DB_ENGINE_TABLE, replacing what it held (`apiengine rekey`
 * records the current key's fingerprint once every secret is sealed with it). One transaction;
 * call it outside one. ENG_EDB with *err. */
int eng_db_engine_fact_set(eng_db *db, const char *key, const char *value, char **err);

/* ---- the schema's files, shared with pg_migrate.c: one set of rules for both databases ---- */

typedef enum eng_mig_backend {
  ENG_MIG_SQLITE, /* NNNN_name.sql; *.pg.sql are not migrations */
  ENG_MIG_PG      /* NNNN_name.pg.sql replaces NNNN_name.sql of the same directory; either alone is fine */
} eng_mig_backend;

#define ENG_MIG_NAME_MAX 255

typedef struct eng_mig_file {
  int id;
  int recorded;    /* eng_mig_check_record found it recorded, unchanged */
  const char *dir; /* the schema directory holding it (points into the eng_dirs of eng_mig_list) */
  char name[ENG_MIG_NAME_MAX + 1];
  char checksum[65]; /* hex SHA-256 of the file's bytes */
} eng_mig_file;

/* Splits schema_dir into dl (which must outlive *out) and lists, reads and checksums the
 * migrations of backend, sorted by number; refuses duplicates and NUL bytes as eng_db_migrate.
 * *out is malloc'd (NULL when none). Errors as eng_db_migrate's. */
int eng_mig_list(const char *schema_dir, eng_mig_backend backend, eng_dirs *dl, eng_mig_file **out, size_t *n,
                 char **err);
/* Reads one listed file again (its checksum recomputed from what was read): *data, malloc'd, is its text. */
int eng_mig_load(eng_mig_file *f, char **data, char **err);
eng_mig_file *eng_mig_find(eng_mig_file *files, size_t n, int id); /* NULL when no file has that number */
/* Checks a record (id, name, checksum) against f (NULL: no file of that number) and marks f
 * recorded; ENG_ECONFIG with eng_db_migrate's messages (schema_dir names the setting). */
int eng_mig_check_record(const char *schema_dir, eng_mig_file *f, int id, const char *name, const char *checksum,
                         char **err);
/* ENG_ECONFIG when a file not recorded is numbered below max_id. */
int eng_mig_check_order(const eng_mig_file *files, size_t n, int max_id, char **err);
int eng_mig_line_of(const char *text, const char *at); /* 1-based line of at inside text */
/* Fills st->pending/npending with "dir/name" of every file not recorded, in order (freed by
 * eng_db_state_free, also after an error). */
int eng_mig_pending(const eng_mig_file *files, size_t n, eng_db_state *st, char **err);

#endif
