/* files.c - whole-file reads and ':'-joined directory lists (see files.h). */
#include "files.h"
#include "error.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

int eng_file_read(const char *path, size_t max_bytes, char **data, size_t *len) {
  FILE *f = NULL;
  char *buf = NULL;
  struct stat st;
  int rc = 0;

  *data = NULL;
  *len = 0;
  if ((f = fopen(path, "rb")) == NULL)
    return ENG_EIO;
  if (fstat(fileno(f), &st) != 0) {
    rc = ENG_EIO;
    goto cleanup;
  }
  if (!S_ISREG(st.st_mode)) {
    errno = S_ISDIR(st.st_mode) ? EISDIR : EINVAL;
    rc = ENG_EIO;
    goto cleanup;
  }
  if ((unsigned long long)st.st_size > max_bytes) {
    rc = ENG_ETOOBIG;
    goto cleanup;
  }
  if ((buf = malloc((size_t)st.st_size + 1)) == NULL) {
    rc = ENG_ENOMEM;
    goto cleanup;
  }
  size_t n = fread(buf, 1, (size_t)st.st_size, f);
  if (ferror(f) || n != (size_t)st.st_size) {
    rc = ENG_EIO;
    goto cleanup;
  }
  buf[n] = '\0';
  *data = buf;
  *len = n;
  buf = NULL;
cleanup:
  free(buf);
  fclose(f);
  return rc;
}

int eng_dirs_split(eng_dirs *out, const char *spec) {
  out->n = 0;
  if (strlen(spec) >= sizeof out->buf)
    return ENG_ETOOBIG;
  strcpy(out->buf, spec);
  for (char *p = out->buf, *colon; p; p = colon ? colon + 1 : NULL) {
    if ((colon = strchr(p, ':')) != NULL)
      *colon = '\0';
    if (*p == '\0')
      continue;
    if (out->n == ENG_DIRS_MAX)
      return ENG_ETOOBIG;
    out->dirs[out->n++] = p;
  }
  return out->n ? 0 : ENG_EINVAL;
}
