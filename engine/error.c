/* error.c - names and messages for the ENG_E* codes (see error.h). */
#include "error.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

const char *eng_strerror(int err) {
  switch (err) {
  case ENG_OK:
    return "success";
#define ENG_ERR_MSG(name, msg) \
  case ENG_E##name:            \
    return msg;
    ENG_ERRNO_MAP(ENG_ERR_MSG)
#undef ENG_ERR_MSG
  default:
    return "unknown error";
  }
}

const char *eng_err_name(int err) {
  switch (err) {
  case ENG_OK:
    return "ENG_OK";
#define ENG_ERR_NAME(name, msg) \
  case ENG_E##name:             \
    return "ENG_E" #name;
    ENG_ERRNO_MAP(ENG_ERR_NAME)
#undef ENG_ERR_NAME
  default:
    return "ENG_EUNKNOWN";
  }
}

int eng_errorf(char **err, int code, const char *fmt, ...) {
  if (err == NULL)
    return code;
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(NULL, 0, fmt, ap);
  va_end(ap);
  *err = n >= 0 ? malloc((size_t)n + 1) : NULL;
  if (*err != NULL) {
    va_start(ap, fmt);
    vsnprintf(*err, (size_t)n + 1, fmt, ap);
    va_end(ap);
  }
  return code;
}
