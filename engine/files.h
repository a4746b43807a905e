/* files.h - whole-file reads and ':'-joined directory lists, one copy for the core.
 *
 * Scripts, migrations and the config file are read whole (each has a size limit);
 * the scripts and schema settings are lists of directories joined by ':'. */
#ifndef ENG_FILES_H
#define ENG_FILES_H

#include <stddef.h>

/* Reads the regular file at path into a malloc'd, NUL-terminated buffer (*data,
 * owned by the caller; *len excludes the NUL). Returns 0, ENG_EIO (cannot open
 * or read it, or not a regular file: errno tells why when it was a system call),
 * ENG_ETOOBIG (larger than max_bytes) or ENG_ENOMEM; *data is NULL on failure. */
int eng_file_read(const char *path, size_t max_bytes, char **data, size_t *len);

#define ENG_DIRS_MAX 16        /* directories in one list */
#define ENG_DIRS_TEXT_MAX 4096 /* bytes of the whole list */

/* A ':'-joined list split in place: dirs[i] point into buf; empty items are skipped. */
typedef struct eng_dirs {
  int n;
  char *dirs[ENG_DIRS_MAX];
  char buf[ENG_DIRS_TEXT_MAX];
} eng_dirs;

/* Splits spec into out. Returns 0, ENG_ETOOBIG (spec too long or more than
 * ENG_DIRS_MAX items) or ENG_EINVAL (no directory at all). */
int eng_dirs_split(eng_dirs *out, const char *spec);

#endif
