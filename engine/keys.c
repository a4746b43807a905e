/* keys.c - loading, creating and deriving the server key.
 *
 * Only the two derived subkeys are kept in memory; the master key lives on the stack for the
 * duration of eng_keys_init/eng_keys_set and is wiped with eng_crypto_wipe. The primitives
 * (random bytes, codecs, HMAC derivation) come from crypto.h. */
#include "keys.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "crypto.h"
#include "error.h"

#define TOKEN_LABEL "apiengine token v1"
#define SEAL_LABEL "apiengine seal v1"
#define FINGERPRINT_LABEL "apiengine fingerprint v1"
#define FINGERPRINT_MESSAGE "apiengine key check"
#define KEY_HEX_LEN (2 * ENG_KEY_LEN)
#define KEY_B64_UNPADDED_LEN 43                                  /* base64 of 32 bytes without its one '=' */
#define KEY_FILE_READ_MAX (ENG_KEYS_MAX * (KEY_HEX_LEN + 1) + 1) /* one byte past the last "hex\n" detects junk */
#define TMP_SUFFIX ".tmp"

/* Internal results of the file helpers, next to 0 and ENG_E*. */
#define KEY_FILE_MISSING 1
#define KEY_FILE_LOST_RACE 2

/* Index 0 is the current key, 1.. the previous ones (newest first). */
static unsigned char token_keys[ENG_KEYS_MAX][ENG_KEY_LEN];
static unsigned char seal_keys[ENG_KEYS_MAX][ENG_KEY_LEN];
static unsigned char fingerprints[ENG_KEYS_MAX][ENG_CRYPTO_SHA256_LEN];
static int nkeys;

_Static_assert(ENG_KEY_LEN == ENG_CRYPTO_KEY_LEN, "the server key is a crypto.h key");

static void keys_wipe(void) {
  nkeys = 0;
  eng_crypto_wipe(token_keys, sizeof token_keys);
  eng_crypto_wipe(seal_keys, sizeof seal_keys);
  eng_crypto_wipe(fingerprints, sizeof fingerprints);
}

/* Derives the subkeys of n master keys and installs them all, or nothing (on error). */
static int keys_install(const unsigned char master[][ENG_KEY_LEN], int n) {
  unsigned char tk[ENG_KEYS_MAX][ENG_KEY_LEN], sk[ENG_KEYS_MAX][ENG_KEY_LEN], fk[ENG_KEY_LEN];
  unsigned char fp[ENG_KEYS_MAX][ENG_CRYPTO_SHA256_LEN];
  int rc = n >= 1 && n <= ENG_KEYS_MAX ? 0 : ENG_EINVAL;
  for (int i = 0; rc == 0 && i < n; i++) {
    rc = eng_crypto_derive_key(master[i], TOKEN_LABEL, tk[i]);
    if (rc == 0)
      rc = eng_crypto_derive_key(master[i], SEAL_LABEL, sk[i]);
    if (rc == 0)
      rc = eng_crypto_derive_key(master[i], FINGERPRINT_LABEL, fk);
    if (rc == 0)
      rc = eng_crypto_hmac_sha256(fk, sizeof fk, FINGERPRINT_MESSAGE, strlen(FINGERPRINT_MESSAGE), fp[i]);
  }
  if (rc == 0) {
    keys_wipe();
    memcpy(token_keys, tk, (size_t)n * ENG_KEY_LEN);
    memcpy(seal_keys, sk, (size_t)n * ENG_KEY_LEN);
    memcpy(fingerprints, fp, (size_t)n * ENG_CRYPTO_SHA256_LEN);
    nkeys = n;
  }
  eng_crypto_wipe(tk, sizeof tk);
  eng_crypto_wipe(sk, sizeof sk);
  eng_crypto_wipe(fk, sizeof fk);
  return rc;
}

void eng_keys_set(const unsigned char key[ENG_KEY_LEN]) {
  unsigned char one[1][ENG_KEY_LEN];
  memcpy(one[0], key, ENG_KEY_LEN);
  (void)keys_install((const unsigned char(*)[ENG_KEY_LEN])one, 1);
  eng_crypto_wipe(one, sizeof one);
}

void eng_keys_clear(void) { keys_wipe(); }

int eng_keys_ready(void) { return nkeys > 0; }

int eng_keys_count(void) { return nkeys; }

int eng_keys_fingerprint_at(int i, char out[ENG_KEY_FINGERPRINT_HEX + 1]) {
  _Static_assert(ENG_KEY_FINGERPRINT_HEX == 2 * ENG_CRYPTO_SHA256_LEN, "hex of one HMAC");
  if (i < 0 || i >= nkeys)
    return ENG_EINVAL;
  out[eng_crypto_hex_encode(fingerprints[i], sizeof fingerprints[i], out)] = '\0';
  return 0;
}

int eng_keys_fingerprint(char out[ENG_KEY_FINGERPRINT_HEX + 1]) { return eng_keys_fingerprint_at(0, out); }

int eng_keys_find_fingerprint(const char *hex) {
  char fp[ENG_KEY_FINGERPRINT_HEX + 1];
  for (int i = 0; hex && i < nkeys; i++)
    if (eng_keys_fingerprint_at(i, fp) == 0 && strcmp(fp, hex) == 0)
      return i;
  return -1;
}

const unsigned char *eng_keys_token_key_at(int i) { return i >= 0 && i < nkeys ? token_keys[i] : NULL; }

const unsigned char *eng_keys_seal_key_at(int i) { return i >= 0 && i < nkeys ? seal_keys[i] : NULL; }

const unsigned char *eng_keys_token_key(void) { return eng_keys_token_key_at(0); }

const unsigned char *eng_keys_seal_key(void) { return eng_keys_seal_key_at(0); }

/* One key: 64 hex chars, or base64/base64url of 32 bytes with or without its single '='. 0 or -1. */
static int parse_one(const char *s, size_t len, unsigned char master[ENG_KEY_LEN]) {
  unsigned char raw[ENG_CRYPTO_B64_DECODED_MAX(KEY_HEX_LEN)];
  char padded[KEY_B64_UNPADDED_LEN + 2];
  size_t n = 0;
  const char *msg;
  int ok = 0;
  if (len == KEY_HEX_LEN) {
    ok = eng_crypto_hex_decode(s, len, raw, &n, &msg) == 0;
  } else if (len == KEY_B64_UNPADDED_LEN || (len == KEY_B64_UNPADDED_LEN + 1 && s[len - 1] == '=')) {
    ok = eng_crypto_b64_decode(s, KEY_B64_UNPADDED_LEN, 1, raw, &n, &msg) == 0;
    if (!ok) { /* standard alphabet: its decoder wants the padding */
      memcpy(padded, s, KEY_B64_UNPADDED_LEN);
      padded[KEY_B64_UNPADDED_LEN] = '=';
      ok = eng_crypto_b64_decode(padded, KEY_B64_UNPADDED_LEN + 1, 0, raw, &n, &msg) == 0;
      eng_crypto_wipe(padded, sizeof padded);
    }
  }
  ok = ok && n == ENG_KEY_LEN;
  if (ok)
    memcpy(master, raw, ENG_KEY_LEN);
  eng_crypto_wipe(raw, sizeof raw);
  return ok ? 0 : -1;
}

/* "current[,previous...]": each item a key as parse_one takes it (spaces around items are
 * ignored), at most ENG_KEYS_MAX, no key twice. Sets *n. */
static int parse_configured(const char *s, unsigned char master[][ENG_KEY_LEN], int *n, char **err) {
  *n = 0;
  for (const char *p = s;;) {
    const char *end = strchr(p, ',');
    size_t len = end ? (size_t)(end - p) : strlen(p);
    while (len > 0 && (*p == ' ' || *p == '\t')) {
      p++;
      len--;
    }
    while (len > 0 && (p[len - 1] == ' ' || p[len - 1] == '\t'))
      len--;
    if (*n == ENG_KEYS_MAX)
      return eng_errorf(err, ENG_ECONFIG, "configured server key: more than %d keys (the current one and %d previous)",
                        ENG_KEYS_MAX, ENG_KEYS_MAX - 1);
    if (parse_one(p, len, master[*n]) != 0) {
      if (*n == 0)
        return eng_errorf(err, ENG_ECONFIG,
                          "configured server key is invalid: expected 64 hex characters or base64/base64url of "
                          "exactly 32 bytes, then optionally previous keys after commas");
      return eng_errorf(err, ENG_ECONFIG,
                        "configured server key: previous key %d (item %d of the list) is invalid: expected 64 hex "
                        "characters or base64/base64url of exactly 32 bytes",
                        *n, *n + 1);
    }
    for (int j = 0; j < *n; j++)
      if (eng_crypto_equal(master[j], master[*n], ENG_KEY_LEN))
        return eng_errorf(err, ENG_ECONFIG, "configured server key: items %d and %d of the list are the same key",
                          j + 1, *n + 1);
    (*n)++;
    if (!end)
      return 0;
    p = end + 1;
  }
}

/* 0, KEY_FILE_MISSING, or ENG_E* with *err set. The file holds one key per line, 64 hex
 * characters each: the current key first, then the previous ones. */
static int read_key_file(const char *path, unsigned char master[][ENG_KEY_LEN], int *nkeys_out, char **err) {
  char text[KEY_FILE_READ_MAX];
  size_t len = 0, n = 0;
  const char *msg;
  struct stat st;
  int rc = 0, count = 0;
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    if (errno == ENOENT)
      return KEY_FILE_MISSING;
    return eng_errorf(err, ENG_EIO, "cannot open key file %s: %s", path, strerror(errno));
  }
  if (fstat(fd, &st) != 0) {
    rc = eng_errorf(err, ENG_EIO, "cannot stat key file %s: %s", path, strerror(errno));
    goto cleanup;
  }
  if (!S_ISREG(st.st_mode)) {
    rc = eng_errorf(err, ENG_ECONFIG, "key file %s is not a regular file", path);
    goto cleanup;
  }
  if (st.st_mode & (S_IRWXG | S_IRWXO)) {
    rc = eng_errorf(err, ENG_ECONFIG, "key file %s is accessible by group or others: run chmod 600 %s", path, path);
    goto cleanup;
  }
  while (len < sizeof text) {
    ssize_t r = read(fd, text + len, sizeof text - len);
    if (r < 0 && errno == EINTR)
      continue;
    if (r < 0) {
      rc = eng_errorf(err, ENG_EIO, "cannot read key file %s: %s", path, strerror(errno));
      goto cleanup;
    }
    if (r == 0)
      break;
    len += (size_t)r;
  }
  for (size_t at = 0; rc == 0 && at < len; count++) {
    size_t line = len - at < KEY_HEX_LEN ? len - at : KEY_HEX_LEN;
    if (count == ENG_KEYS_MAX || line != KEY_HEX_LEN || (at + line < len && text[at + line] != '\n') ||
        eng_crypto_hex_decode(text + at, line, master[count], &n, &msg) != 0)
      rc = -1;
    at += line + 1;
  }
  if (rc != 0 || count == 0)
    rc = eng_errorf(err, ENG_ECONFIG,
                    "key file %s is malformed: expected 64 hex characters and an optional newline (or up to %d such "
                    "lines: the current key, then previous ones)",
                    path, ENG_KEYS_MAX);
  else
    *nkeys_out = count;
cleanup:
  eng_crypto_wipe(text, sizeof text);
  close(fd);
  return rc;
}

static int write_all(int fd, const char *p, size_t n) {
  while (n > 0) {
    ssize_t w = write(fd, p, n);
    if (w < 0 && errno == EINTR)
      continue;
    if (w < 0)
      return -1;
    p += w;
    n -= (size_t)w;
  }
  return 0;
}

/* Best effort: makes the new directory entry durable. Some filesystems refuse fsync on a
 * directory; the key file itself is already fsync'd. */
static void sync_parent_dir(const char *path) {
  const char *slash = strrchr(path, '/');
  char *dir = slash ? strndup(path, slash == path ? 1 : (size_t)(slash - path)) : strdup(".");
  if (!dir)
    return;
  int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd >= 0) {
    (void)fsync(fd);
    close(fd);
  }
  free(dir);
}

/* Creates the key file with a fresh key: 0, KEY_FILE_LOST_RACE (another process created
 * path meanwhile; read it instead), or ENG_E* with *err set. It is put in place with link(2),
 * which unlike rename(2) never replaces a key another process has just written; rename is
 * the fallback on filesystems without hard links. */
static int create_key_file(const char *path, unsigned char master[ENG_KEY_LEN], char **err) {
  char text[KEY_HEX_LEN + 1];
  int rc = 0, fd = -1, tmp_created = 0;
  size_t path_len = strlen(path);
  char *tmp = malloc(path_len + sizeof TMP_SUFFIX);
  if (!tmp)
    return eng_errorf(err, ENG_ENOMEM, "out of memory");
  memcpy(tmp, path, path_len);
  memcpy(tmp + path_len, TMP_SUFFIX, sizeof TMP_SUFFIX);

  if (eng_crypto_random(master, ENG_KEY_LEN) != 0) {
    rc = eng_errorf(err, ENG_ECRYPTO, "cannot generate a server key: random generator failure");
    goto cleanup;
  }
  eng_crypto_hex_encode(master, ENG_KEY_LEN, text);
  text[KEY_HEX_LEN] = '\n';

  fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  if (fd < 0) {
    if (errno == EEXIST)
      rc = eng_errorf(err, ENG_ECONFIG,
                      "%s exists: another instance is creating the key file, or a crash left it "
                      "behind (then remove it)",
                      tmp);
    else
      rc = eng_errorf(err, ENG_EIO, "cannot create key file %s: %s", tmp, strerror(errno));
    goto cleanup;
  }
  tmp_created = 1;
  if (write_all(fd, text, sizeof text) != 0 || fsync(fd) != 0) {
    rc = eng_errorf(err, ENG_EIO, "cannot write key file %s: %s", tmp, strerror(errno));
    goto cleanup;
  }
  if (close(fd) != 0) {
    fd = -1;
    rc = eng_errorf(err, ENG_EIO, "cannot write key file %s: %s", tmp, strerror(errno));
    goto cleanup;
  }
  fd = -1;
  if (link(tmp, path) != 0) {
    if (errno == EEXIST) {
      rc = KEY_FILE_LOST_RACE;
      goto cleanup;
    }
    if (errno != EPERM && errno != EOPNOTSUPP && errno != ENOSYS) {
      rc = eng_errorf(err, ENG_EIO, "cannot install key file %s: %s", path, strerror(errno));
      goto cleanup;
    }
    if (rename(tmp, path) != 0) {
      rc = eng_errorf(err, ENG_EIO, "cannot install key file %s: %s", path, strerror(errno));
      goto cleanup;
    }
    tmp_created = 0;
  }
  sync_parent_dir(path);
cleanup:
  if (fd >= 0)
    close(fd);
  if (tmp_created)
    unlink(tmp);
  eng_crypto_wipe(text, sizeof text);
  if (rc != 0)
    eng_crypto_wipe(master, ENG_KEY_LEN);
  free(tmp);
  return rc;
}

int eng_keys_init(const char *configured, const char *key_path, char **err) {
  return eng_keys_load(configured, key_path, 1, NULL, err);
}

int eng_keys_load(const char *configured, const char *key_path, int create, eng_key_source *source, char **err) {
  unsigned char master[ENG_KEYS_MAX][ENG_KEY_LEN];
  eng_key_source from = ENG_KEY_FILE;
  int rc, n = 1;
  if (err)
    *err = NULL;
  if (configured && *configured) {
    from = ENG_KEY_CONFIGURED;
    rc = parse_configured(configured, master, &n, err);
  } else if (!key_path || !*key_path) {
    rc = eng_errorf(err, ENG_ECONFIG, "no server key configured and no key file path");
  } else {
    rc = read_key_file(key_path, master, &n, err);
    if (rc == KEY_FILE_MISSING && !create)
      rc = eng_errorf(err, ENG_ENOTFOUND, "key file %s does not exist", key_path);
    if (rc == KEY_FILE_MISSING) {
      from = ENG_KEY_CREATED;
      n = 1;
      rc = create_key_file(key_path, master[0], err);
      if (rc == KEY_FILE_LOST_RACE) {
        from = ENG_KEY_FILE;
        rc = read_key_file(key_path, master, &n, err);
      }
      if (rc == KEY_FILE_MISSING)
        rc = eng_errorf(err, ENG_EIO, "key file %s vanished while being created", key_path);
    }
  }
  if (rc == 0 && source)
    *source = from;
  if (rc == 0 && keys_install((const unsigned char(*)[ENG_KEY_LEN])master, n) != 0)
    rc = eng_errorf(err, ENG_ECRYPTO, "cannot derive keys from the server key");
  eng_crypto_wipe(master, sizeof master);
  return rc;
}
