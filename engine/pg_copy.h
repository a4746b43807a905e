/* pg_copy.h - moving a database: `apiengine migrate --from sqlite:PATH --to CONNINFO` copies an
 * existing SQLite database into an empty PostgreSQL one.
 *
 * The order of a copy, so that a failure anywhere leaves the target as it found it (its schema
 * aside) and a success leaves it ready for `apiengine serve --db CONNINFO`:
 *   1. the source, read-only, in one read transaction (one snapshot; a server still writing to it
 *      goes on, and what it writes after the snapshot is not copied: stop it first);
 *   2. the PostgreSQL migrations applied to the target (eng_pg_migrate, each in its own
 *      transaction, under the nodes' advisory lock);
 *   3. one transaction on the target: every copied table locked (ACCESS EXCLUSIVE: a node started
 *      meanwhile waits), the migration records compared (the same numbers and names; the
 *      checksums differ where a .pg.sql variant replaced a file), a target that holds a row in any
 *      copied table refused, then every table of the source's schema copied with COPY FROM STDIN
 *      (text form) in dependency order, parents first (read from SQLite's foreign keys: the
 *      target's foreign keys are not DEFERRABLE, so deferring them cannot replace the order),
 *      each identity/serial sequence set past the copied maximum, the engine's facts (_engine:
 *      the key fingerprint) copied, COMMIT.
 * The server key is not copied: it is the same key, and the operator passes it to every node
 * (APIENGINE_KEY or --key-file); the copied fingerprint makes a node with another key refuse to
 * start.
 *
 * Values: SQLite's integer, real and text as PostgreSQL reads them from text; a blob (or any value
 * of a bytea column) as bytea; 0/1 into a boolean column as false/true. A text value holding a NUL
 * byte cannot be stored by PostgreSQL: the copy fails naming the table and row.
 *
 * Progress: one line per table and one every `progress_every` rows on `progress` (table, rows
 * done/total, rows per second). Errors: 0 or a negative ENG_E* code (error.h), the detail in a
 * malloc'd *err: ENG_EINVAL (arguments), ENG_ENOTFOUND (no source file), ENG_ECONFIG (not an
 * apiengine database, the migration records differ, a table or column missing on the target),
 * ENG_EEXISTS (the target holds rows, or another key fingerprint), ENG_EDB (SQLite or PostgreSQL
 * failed), ENG_ENOMEM. */
#ifndef ENG_PG_COPY_H
#define ENG_PG_COPY_H

#include <stdint.h>
#include <stdio.h>

#define ENG_PG_COPY_PROGRESS_DEFAULT 100000  /* rows between two progress lines of one table */
#define ENG_PG_COPY_BATCH_BYTES (256 * 1024) /* COPY data handed to libpq at once */

typedef struct eng_pg_copy_options {
  const char *sqlite_path; /* the source file */
  const char *conninfo;    /* the target: a libpq URI or keyword string */
  const char *schema_dir;  /* the migrations (with their .pg.sql variants), "dir[:dir...]" */
  int64_t progress_every;  /* 0: ENG_PG_COPY_PROGRESS_DEFAULT */
  FILE *progress;          /* NULL: no progress lines */
} eng_pg_copy_options;

typedef struct eng_pg_copy_stats {
  int tables;     /* tables copied */
  int64_t rows;   /* rows copied, over every table */
  int migrations; /* migrations the target got in step 2 */
  int facts;      /* _engine rows copied */
  int sequences;  /* sequences set */
} eng_pg_copy_stats;

/* Runs the copy above. stats may be NULL; it is filled as far as the copy got. */
int eng_pg_copy(const eng_pg_copy_options *opt, eng_pg_copy_stats *stats, char **err);

/* 1 when argv (`apiengine migrate ...`) asks for a copy (it has --from), else 0. */
int eng_pg_copy_wanted(int argc, char **argv);

/* The command: `apiengine migrate --from sqlite:PATH --to CONNINFO [--schema DIR]
 * [--progress-every N]`; argv[1] is "migrate". Returns the exit status: 0, 1 (failed: the
 * message on stderr), 2 (usage). */
int eng_pg_copy_main(int argc, char **argv);

#endif
