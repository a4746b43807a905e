/* db_keyset.c - the key sets of a connection (db_keyset.h): two string hash tables per set,
 * filled by scanning an append-only table from the highest id seen so far. */
#include "db_keyset.h"

#include <stdlib.h>
#include <string.h>

#include "db_internal.h"
#include "error.h"

/* An open-addressing hash table of byte strings kept in one arena. Each entry is
 * [u32 tag][u32 len][len bytes] at a 4-aligned offset. A slot is 8 bytes, the entry's offset + 1
 * (0 = empty) and the high half of its hash, so a probe usually costs one cache miss for the
 * slot and one for the entry. A key set uses two tables: groups (tag 0; an entry's offset + 1 is
 * the group's id) and pairs (tag = the group id). */
typedef struct strslot {
  uint32_t off; /* offset + 1 */
  uint32_t tag; /* hash >> 32 */
} strslot;

typedef struct strtab {
  strslot *slots;
  size_t cap; /* a power of two; kept at most half full */
  size_t count;
  unsigned char *arena;
  size_t alen, acap;
} strtab;

struct eng_db_keyset {
  char *sql;
  size_t sql_len;
  int64_t last_id;
  strtab groups, pairs;
};

#define STRTAB_MIN_CAP 1024
#define STRTAB_HDR 8 /* tag + len */

static uint64_t hash_pair(uint32_t tag, const char *s, size_t len) {
  uint64_t h = 1469598103934665603ULL ^ tag;
  for (size_t i = 0; i < len; i++) {
    h ^= (unsigned char)s[i];
    h *= 1099511628211ULL;
  }
  h ^= h >> 29; /* FNV-1a's low bits are weak for short keys, and the table indexes by them */
  h *= 0xbf58476d1ce4e5b9ULL;
  return h ^ (h >> 32);
}

static void strtab_free(strtab *t) {
  free(t->slots);
  free(t->arena);
  memset(t, 0, sizeof *t);
}

static int entry_equal(const strtab *t, uint32_t off, uint32_t tag, const char *s, size_t len) {
  uint32_t hdr[2];
  memcpy(hdr, t->arena + off, sizeof hdr);
  return hdr[0] == tag && hdr[1] == len && memcmp(t->arena + off + STRTAB_HDR, s, len) == 0;
}

/* The slot of (tag, s), or the empty slot where it would go. */
static size_t strtab_slot(const strtab *t, uint64_t h, uint32_t tag, const char *s, size_t len) {
  size_t mask = t->cap - 1;
  uint32_t htag = (uint32_t)(h >> 32);
  size_t i = htag & mask;
  while (t->slots[i].off && !(t->slots[i].tag == htag && entry_equal(t, t->slots[i].off - 1, tag, s, len)))
    i = (i + 1) & mask;
  return i;
}

/* Returns the entry's offset + 1 when (tag, s) is present, else 0. */
static uint32_t strtab_find(const strtab *t, uint32_t tag, const char *s, size_t len) {
  if (!t->cap)
    return 0;
  return t->slots[strtab_slot(t, hash_pair(tag, s, len), tag, s, len)].off;
}

/* Doubles the slots. A slot's index comes from its 32-bit hash tag (the arena's 32-bit offsets
 * bound the table far below 2^32 slots), so growing never reads the entries themselves. */
static int strtab_grow(strtab *t) {
  size_t ncap = t->cap ? t->cap * 2 : STRTAB_MIN_CAP;
  strslot *ns = calloc(ncap, sizeof *ns);
  if (!ns)
    return ENG_ENOMEM;
  for (size_t i = 0; i < t->cap; i++) {
    if (!t->slots[i].off)
      continue;
    size_t j = t->slots[i].tag & (ncap - 1);
    while (ns[j].off)
      j = (j + 1) & (ncap - 1);
    ns[j] = t->slots[i];
  }
  free(t->slots);
  t->slots = ns;
  t->cap = ncap;
  return 0;
}

/* Adds (tag, s) unless present; *off gets the entry's offset + 1 either way. */
static int strtab_add(strtab *t, uint32_t tag, const char *s, size_t len, uint32_t *off) {
  if ((t->count + 1) * 2 > t->cap) {
    int rc = strtab_grow(t);
    if (rc)
      return rc;
  }
  uint64_t h = hash_pair(tag, s, len);
  size_t i = strtab_slot(t, h, tag, s, len);
  if (t->slots[i].off) {
    *off = t->slots[i].off;
    return 0;
  }
  if (len > ENG_DB_KEYSET_BYTES_MAX - STRTAB_HDR - 4 || t->alen + STRTAB_HDR + len + 4 > ENG_DB_KEYSET_BYTES_MAX)
    return ENG_ETOOBIG;
  size_t need = (STRTAB_HDR + len + 3) & ~(size_t)3;
  if (t->alen + need > t->acap) {
    size_t ncap = t->acap ? t->acap : 64 * 1024;
    while (ncap < t->alen + need)
      ncap *= 2;
    unsigned char *na = realloc(t->arena, ncap);
    if (!na)
      return ENG_ENOMEM;
    t->arena = na;
    t->acap = ncap;
  }
  uint32_t hdr[2] = {tag, (uint32_t)len};
  memcpy(t->arena + t->alen, hdr, sizeof hdr);
  memcpy(t->arena + t->alen + STRTAB_HDR, s, len);
  t->slots[i].off = (uint32_t)t->alen + 1;
  t->slots[i].tag = (uint32_t)(h >> 32);
  t->alen += need;
  t->count++;
  *off = t->slots[i].off;
  return 0;
}

void eng_db_keyset_free(eng_db_keyset *ks) {
  if (!ks)
    return;
  strtab_free(&ks->groups);
  strtab_free(&ks->pairs);
  free(ks->sql);
  free(ks);
}

uint32_t eng_db_keyset_group(const eng_db_keyset *ks, const char *group, size_t glen) {
  return strtab_find(&ks->groups, 0, group, glen);
}

int eng_db_keyset_has(const eng_db_keyset *ks, uint32_t group_id, const char *key, size_t klen) {
  return group_id && strtab_find(&ks->pairs, group_id, key, klen) != 0;
}

size_t eng_db_keyset_count(const eng_db_keyset *ks) { return ks->pairs.count; }

/* Adds the scan's rows to ks. st is the cached scan statement, bound and reset by the caller. */
static int keyset_scan(eng_db *db, eng_db_keyset *ks, sqlite3_stmt *st, const char **errmsg) {
  int step;
  uint32_t gid = 0; /* of the previous row: rows come in runs of one group (a batch) */
  while ((step = sqlite3_step(st)) == SQLITE_ROW) {
    if (sqlite3_column_type(st, 0) != SQLITE_INTEGER || sqlite3_column_type(st, 1) != SQLITE_TEXT ||
        sqlite3_column_type(st, 2) != SQLITE_TEXT) {
      *errmsg = "a key set scan must answer rows of (id INTEGER, group TEXT, key TEXT)";
      return ENG_EINVAL;
    }
    int64_t id = sqlite3_column_int64(st, 0);
    const char *g = (const char *)sqlite3_column_text(st, 1);
    size_t glen = (size_t)sqlite3_column_bytes(st, 1);
    const char *k = (const char *)sqlite3_column_text(st, 2);
    size_t klen = (size_t)sqlite3_column_bytes(st, 2);
    uint32_t pid;
    int rc = 0;
    if (!g || !k) {
      *errmsg = "out of memory";
      return ENG_ENOMEM;
    }
    if (!gid || !entry_equal(&ks->groups, gid - 1, 0, g, glen))
      rc = strtab_add(&ks->groups, 0, g, glen, &gid);
    if (rc || (rc = strtab_add(&ks->pairs, gid, k, klen, &pid)) != 0) {
      *errmsg = rc == ENG_ENOMEM ? "out of memory" : "key set too large";
      return rc;
    }
    if (id > ks->last_id)
      ks->last_id = id;
  }
  if (step != SQLITE_DONE) {
    *errmsg = sqlite3_errmsg(db->h);
    return ENG_EDB;
  }
  return 0;
}

int eng_db_keyset_sync(eng_db *db, const char *scan_sql, size_t len, eng_db_keyset **out, const char **errmsg) {
  const char *dummy;
  eng_db_keyset *ks = NULL;
  sqlite3_stmt *st = NULL;
  int rc;

  if (!errmsg)
    errmsg = &dummy;
  if (out)
    *out = NULL;
  if ((rc = eng_db_prepare(db, scan_sql, len, &st, errmsg)) != 0)
    return rc;
  for (int i = 0; i < db->nkeysets && !ks; i++)
    if (db->keysets[i]->sql_len == len && memcmp(db->keysets[i]->sql, scan_sql, len) == 0)
      ks = db->keysets[i];
  if (!ks) {
    if (db->nkeysets == ENG_DB_KEYSETS_MAX) {
      *errmsg = "too many key sets on one connection";
      return ENG_ETOOBIG;
    }
    ks = calloc(1, sizeof *ks);
    if (!ks || !(ks->sql = malloc(len + 1))) {
      free(ks);
      *errmsg = "out of memory";
      return ENG_ENOMEM;
    }
    memcpy(ks->sql, scan_sql, len);
    ks->sql[len] = '\0';
    ks->sql_len = len;
    db->keysets[db->nkeysets++] = ks;
  }
  sqlite3_bind_int64(st, 1, ks->last_id);
  rc = keyset_scan(db, ks, st, errmsg);
  sqlite3_reset(st);
  sqlite3_clear_bindings(st);
  if (rc == 0 && out)
    *out = ks;
  return rc;
}
