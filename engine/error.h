/* error.h - the one error convention of the core.
 *
 * Core functions return 0 on success or a negative ENG_E* code from this list.
 * Errors from libuv, SQLite, OpenSSL and llhttp are translated into these where
 * they enter the core; the detail (SQLite's message, ...) travels separately. */
#ifndef ENG_ERROR_H
#define ENG_ERROR_H

#define ENG_ERRNO_MAP(X)              \
  X(NOMEM, "out of memory")           \
  X(INVAL, "invalid argument")        \
  X(IO, "input/output error")         \
  X(TOOBIG, "too large")              \
  X(PARSE, "parse error")             \
  X(NOTFOUND, "not found")            \
  X(EXISTS, "already exists")         \
  X(DB, "database error")             \
  X(CRYPTO, "cryptography error")     \
  X(LUA, "script error")              \
  X(BUDGET, "script budget exceeded") \
  X(CONFIG, "configuration error")

enum {
  ENG_OK = 0,
#define ENG_ERR_ENUM(name, msg) ENG_E##name,
  ENG_ERR_FIRST_ = -1000,
  ENG_ERRNO_MAP(ENG_ERR_ENUM)
#undef ENG_ERR_ENUM
};

/* Static message for an ENG_E* code ("unknown error" for anything else). */
const char *eng_strerror(int err);
/* Static name for an ENG_E* code, e.g. "ENG_ENOMEM". */
const char *eng_err_name(int err);

/* The one way to hand a caller an owned error message: when err is not NULL,
 * *err = a malloc'd printf-formatted message (NULL if even that allocation
 * fails; the caller frees it). Returns code, so `return eng_errorf(err, ENG_EIO,
 * "cannot read %s", path);` reads as one statement. */
int eng_errorf(char **err, int code, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

#endif
