/* error.c - names and messages for the ENG_E* codes (see error.h). */
#include "error.h"

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
