/* keys.h - the process-wide server key and the keys derived from it.
 *
 * Initialised once at start-up, before worker threads start, and read-only afterwards, so
 * readers need no locking. Key bytes are never logged and never appear in error messages.
 *
 * The 32-byte master key is never used directly: two subkeys are derived from it with
 * HMAC-SHA256(master, label), labels "apiengine token v1" (token MAC key) and
 * "apiengine seal v1" (AES-256-GCM key), so the token key and the AEAD key differ.
 *
 * Key rotation: the store holds the current key and up to ENG_KEYS_MAX - 1 previous ones,
 * newest first. New tokens are signed and new secrets sealed with the current key (index 0);
 * lua_crypto.c verifies and opens with each key in turn, so what a previous key made keeps
 * working until `apiengine rekey` has re-sealed it and the previous key is dropped. */
#ifndef ENG_KEYS_H
#define ENG_KEYS_H

#define ENG_KEY_LEN 32
#define ENG_KEY_FINGERPRINT_HEX 64 /* hex characters of eng_keys_fingerprint's text */
#define ENG_KEYS_MAX 8             /* the current key and up to 7 previous ones */

/* Where eng_keys_load found the key. */
typedef enum { ENG_KEY_CONFIGURED = 1, ENG_KEY_FILE, ENG_KEY_CREATED } eng_key_source;

/* Loads the server key.
 * - `configured` non-NULL and non-empty: it is the key material, 64 hex characters or
 *   base64 / base64url (padded or not) of exactly 32 bytes; previous keys may follow, each after
 *   a comma ("current,previous,older": spaces around items ignored, at most ENG_KEYS_MAX keys,
 *   none twice). Anything else is ENG_ECONFIG.
 * - otherwise `key_path` names a file holding 64 hex characters and an optional "\n", or several
 *   such lines (the current key, then the previous ones). A file with group/other permission
 *   bits set, or with other content, is refused (ENG_ECONFIG).
 *   If the file does not exist, 32 bytes from RAND_bytes are written atomically (key_path.tmp
 *   created O_EXCL mode 0600, fsync, hard-linked or renamed into place, directory fsync'd) so
 *   tokens and sealed secrets survive restarts. If another process created key_path first,
 *   its key is used.
 * Returns 0, or ENG_ECONFIG / ENG_EIO / ENG_ECRYPTO / ENG_ENOMEM with *err (if err is
 * non-NULL) set to a malloc'd message the caller frees; the message never contains key bytes.
 * On error the key store is left as it was. */
int eng_keys_init(const char *configured, const char *key_path, char **err);

/* eng_keys_init with a choice: when create is 0 and no key is configured and key_path does not
 * exist, nothing is written and ENG_ENOTFOUND is returned (with *err), the key store left as it
 * was (`apiengine check`, and the start-up order: the key file is created only once the scripts
 * loaded). *source (if not NULL) says where the key came from. */
int eng_keys_load(const char *configured, const char *key_path, int create, eng_key_source *source, char **err);

/* Sets the master key directly (one key, no previous ones) (tests; an in-memory database without a configured key). */
void eng_keys_set(const unsigned char key[ENG_KEY_LEN]);

/* Unloads the keys (wiped): eng_keys_ready() is 0 again. Tests only (the "no key" state). */
void eng_keys_clear(void);

/* 1 once a key is loaded. */
int eng_keys_ready(void);

/* How many keys are loaded: 0, or 1 (the current key) + the previous ones. */
int eng_keys_count(void);

/* The key's fingerprint as ENG_KEY_FINGERPRINT_HEX lowercase hex characters and a NUL:
 * HMAC-SHA256(HMAC-SHA256(master, "apiengine fingerprint v1"), "apiengine key check"). It tells
 * two keys apart (the database stores it, so a start with another key is refused) and, being a
 * MAC under a key derived for nothing else, says nothing about the master key or the token and
 * seal keys. ENG_EINVAL while no key is loaded. This is the current key's. */
int eng_keys_fingerprint(char out[ENG_KEY_FINGERPRINT_HEX + 1]);

/* The fingerprint of key i (0: current, 1..: previous); ENG_EINVAL when there is no key i. */
int eng_keys_fingerprint_at(int i, char out[ENG_KEY_FINGERPRINT_HEX + 1]);

/* The index of the loaded key whose fingerprint is hex (NUL-terminated), or -1 (also for NULL). */
int eng_keys_find_fingerprint(const char *hex);

/* The derived subkeys (ENG_KEY_LEN bytes each), for lua_crypto.c (and the tests) only.
 * NULL until ready. These are the current key's; the _at forms give key i's (NULL past the last). */
const unsigned char *eng_keys_token_key(void);
const unsigned char *eng_keys_seal_key(void);
const unsigned char *eng_keys_token_key_at(int i);
const unsigned char *eng_keys_seal_key_at(int i);

#endif
