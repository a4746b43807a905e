/* tmpdir.h - a temporary directory for one C test program: made at the start (tmpdir_make),
 * files written into it by name (path_in, write_file), removed with everything in it at the end
 * (tmpdir_remove). Header-only, like check.h (which it needs included first); the including file
 * defines _GNU_SOURCE (or _XOPEN_SOURCE >= 500) for nftw before its first include. */
#ifndef ENG_TEST_TMPDIR_H
#define ENG_TEST_TMPDIR_H

#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

static char tmpdir[64];

/* template: a mkdtemp template ("/tmp/test_x.XXXXXX"). 0, or -1 after saying why. */
static inline int tmpdir_make(const char *template) {
  snprintf(tmpdir, sizeof tmpdir, "%s", template);
  if (!mkdtemp(tmpdir)) {
    perror("mkdtemp");
    return -1;
  }
  return 0;
}

static inline int tmpdir_rm_entry(const char *p, const struct stat *sb, int flag, struct FTW *ftw) {
  (void)sb, (void)flag, (void)ftw;
  return remove(p);
}

static inline void tmpdir_remove(void) { nftw(tmpdir, tmpdir_rm_entry, 16, FTW_DEPTH | FTW_PHYS); }

/* tmpdir/name, in one of four rotating static buffers. */
static inline const char *path_in(const char *name) {
  static char buf[4][512];
  static int next;
  char *p = buf[next++ % 4];
  snprintf(p, sizeof buf[0], "%s/%s", tmpdir, name);
  return p;
}

static inline void write_file(const char *name, const char *text) {
  FILE *f = fopen(path_in(name), "wb");
  CHECK(f != NULL);
  if (!f)
    return;
  fwrite(text, 1, strlen(text), f);
  fclose(f);
}

#endif
