/* lua_rekey.c - `apiengine rekey`'s walk over the sealed columns (lua_rekey.h).
 *
 * Each batch runs as a protected C function on the caller's state: building a row table for an
 * aad function, or the function itself, may raise, and then the batch's transaction is rolled
 * back and the statements reset by the caller, who owns them. The rows of a batch are read
 * first and their new values kept on the Lua stack; the updates follow once the read is done,
 * so the walk never updates the table under its own open SELECT. */
#include "lua_rekey.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <lauxlib.h>

#include "crypto.h"
#include "error.h"
#include "keys.h"
#include "log.h"
#include "lua_common.h"
#include "lua_crypto.h"

#define IDENT_MAX 128 /* crypto.sealed_column's limit on names */

typedef struct batch_ctx {
  sqlite3_stmt *sel, *upd;
  const char *table, *column;
  sqlite3_int64 after; /* the last rowid walked */
  int limit, done;
  eng_rekey_stats *stats;
} batch_ctx;

/* "name" with inner quotes doubled, for an identifier in SQL text (names are the scripts'). */
static void quote_ident(char *out, const char *name) {
  *out++ = '"';
  for (; *name; name++) {
    if (*name == '"')
      *out++ = '"';
    *out++ = *name;
  }
  *out++ = '"';
  *out = '\0';
}

/* Pushes column i of the row as engine.db would give it. */
static void push_column(lua_State *L, sqlite3_stmt *st, int i) {
  switch (sqlite3_column_type(st, i)) {
  case SQLITE_INTEGER:
    lua_pushinteger(L, (lua_Integer)sqlite3_column_int64(st, i));
    break;
  case SQLITE_FLOAT:
    lua_pushnumber(L, sqlite3_column_double(st, i));
    break;
  case SQLITE_NULL:
    eng_lua_pushnull(L);
    break;
  default: {
    const void *p = sqlite3_column_blob(st, i);
    lua_pushlstring(L, p ? p : "", (size_t)sqlite3_column_bytes(st, i));
  }
  }
}

/* Pushes the row's aad (a string) as the declaration says: aad at stack index aad_idx. The
 * SELECT's columns are rowid, the sealed column, then the table's own (from 2). */
static void push_aad(lua_State *L, int aad_idx, sqlite3_stmt *st, const batch_ctx *c) {
  int n = sqlite3_column_count(st);
  if (lua_isnil(L, aad_idx)) {
    lua_pushliteral(L, "");
    return;
  }
  if (lua_type(L, aad_idx) == LUA_TSTRING) {
    const char *want = lua_tostring(L, aad_idx);
    for (int i = 2; i < n; i++) {
      if (strcmp(sqlite3_column_name(st, i), want) == 0) {
        if (sqlite3_column_type(st, i) == SQLITE_NULL)
          luaL_error(L, "rekey %s.%s: the aad column %s is NULL at rowid %lld", c->table, c->column, want,
                     (long long)sqlite3_column_int64(st, 0));
        push_column(L, st, i);
        lua_tostring(L, -1); /* an integer id is its decimal text, as when it was sealed */
        return;
      }
    }
    luaL_error(L, "rekey %s.%s: the table has no column %s (the aad of crypto.sealed_column)", c->table, c->column,
               want);
  }
  lua_pushvalue(L, aad_idx);
  lua_createtable(L, 0, n - 2);
  for (int i = 2; i < n; i++) {
    push_column(L, st, i);
    lua_setfield(L, -2, sqlite3_column_name(st, i));
  }
  lua_call(L, 1, 1);
  if (lua_type(L, -1) != LUA_TSTRING)
    luaL_error(L, "rekey %s.%s: the aad function returned a %s, not a string (rowid %lld)", c->table, c->column,
               luaL_typename(L, -1), (long long)sqlite3_column_int64(st, 0));
}

/* Re-seals in under the current key: pushes the new value, or false when the current key sealed
 * it, or nil when no loaded key opens it. */
static void push_resealed(lua_State *L, const unsigned char *in, size_t len, const char *aad, size_t aad_len) {
  if (len < ENG_CRYPTO_SEAL_OVERHEAD || len - ENG_CRYPTO_SEAL_OVERHEAD > ENG_CRYPTO_SEAL_MAX) {
    lua_pushnil(L);
    return;
  }
  unsigned char *pt = lua_newuserdatauv(L, len, 0); /* kept on the stack while in use, wiped after */
  int box = lua_gettop(L);
  size_t pt_len = 0;
  int k = 0;
  while (k < eng_keys_count() && eng_crypto_open(eng_keys_seal_key_at(k), aad, aad_len, in, len, pt, &pt_len) != 0)
    k++;
  if (k == eng_keys_count()) {
    lua_pushnil(L);
  } else if (k == 0) {
    eng_crypto_wipe(pt, len);
    lua_pushboolean(L, 0);
  } else {
    luaL_Buffer b;
    unsigned char *out = (unsigned char *)luaL_buffinitsize(L, &b, ENG_CRYPTO_SEAL_OVERHEAD + pt_len);
    int rc = eng_crypto_seal(eng_keys_seal_key(), aad, aad_len, pt, pt_len, out);
    eng_crypto_wipe(pt, len);
    if (rc != 0)
      luaL_error(L, "rekey: seal failed");
    luaL_pushresultsize(&b, ENG_CRYPTO_SEAL_OVERHEAD + pt_len);
  }
  lua_remove(L, box);
}

/* One batch, inside the caller's transaction: (batch_ctx *, aad) -> nothing. */
static int rekey_batch(lua_State *L) {
  batch_ctx *c = lua_touserdata(L, 1);
  const int aad_idx = 2, updates = 3;
  lua_settop(L, 2);
  lua_newtable(L); /* 3: rowid, new value, rowid, new value, ... */
  int nupd = 0, nrows = 0, step;
  sqlite3_bind_int64(c->sel, 1, c->after);
  sqlite3_bind_int(c->sel, 2, c->limit);
  while ((step = sqlite3_step(c->sel)) == SQLITE_ROW) {
    sqlite3_int64 rowid = sqlite3_column_int64(c->sel, 0);
    c->after = rowid;
    nrows++;
    c->stats->rows++;
    if (sqlite3_column_type(c->sel, 1) == SQLITE_NULL)
      continue;
    push_aad(L, aad_idx, c->sel, c); /* 4 */
    size_t aad_len;
    const char *aad = lua_tolstring(L, 4, &aad_len);
    const unsigned char *in = sqlite3_column_blob(c->sel, 1);
    push_resealed(L, in ? in : (const unsigned char *)"", (size_t)sqlite3_column_bytes(c->sel, 1), aad, aad_len);
    if (lua_isnil(L, -1)) {
      c->stats->unopenable++;
      eng_log_warn("rekey %s.%s: rowid %lld: no loaded key opens the value (sealed with a key not given, or with "
                   "other associated data); left as it is",
                   c->table, c->column, (long long)rowid);
    } else if (lua_isboolean(L, -1)) {
      c->stats->current++;
    } else {
      lua_pushinteger(L, (lua_Integer)rowid);
      lua_rawseti(L, updates, ++nupd);
      lua_pushvalue(L, -1);
      lua_rawseti(L, updates, ++nupd);
    }
    lua_settop(L, updates);
  }
  sqlite3_reset(c->sel);
  if (step != SQLITE_DONE)
    return luaL_error(L, "rekey %s.%s: %s", c->table, c->column, sqlite3_errmsg(sqlite3_db_handle(c->sel)));
  c->done = nrows < c->limit;
  for (int i = 1; i < nupd; i += 2) {
    lua_rawgeti(L, updates, i);
    lua_rawgeti(L, updates, i + 1);
    size_t len;
    const char *v = lua_tolstring(L, -1, &len);
    sqlite3_bind_blob(c->upd, 1, v, (int)len, SQLITE_TRANSIENT);
    sqlite3_bind_int64(c->upd, 2, (sqlite3_int64)lua_tointeger(L, -2));
    step = sqlite3_step(c->upd);
    sqlite3_reset(c->upd);
    sqlite3_clear_bindings(c->upd);
    if (step != SQLITE_DONE)
      return luaL_error(L, "rekey %s.%s: %s", c->table, c->column, sqlite3_errmsg(sqlite3_db_handle(c->upd)));
    c->stats->resealed++;
    lua_pop(L, 2);
  }
  return 0;
}

static int exec(sqlite3 *h, const char *sql) { return sqlite3_exec(h, sql, NULL, NULL, NULL) == SQLITE_OK ? 0 : -1; }

/* Walks one declared column: the declaration is the table at the top of L. */
static int rekey_column(lua_State *L, eng_db *db, int batch, int pause_ms, FILE *progress, eng_rekey_stats *stats,
                        char **err) {
  sqlite3 *h = eng_db_handle(db);
  batch_ctx c = {.limit = batch, .stats = stats};
  char qt[2 * IDENT_MAX + 3], qc[2 * IDENT_MAX + 3], sql[4 * IDENT_MAX + 128];
  int top = lua_gettop(L), rc = 0;
  lua_getfield(L, top, "table");
  lua_getfield(L, top, "column");
  c.table = lua_tostring(L, top + 1);
  c.column = lua_tostring(L, top + 2);
  if (!c.table || !c.column || strlen(c.table) > IDENT_MAX || strlen(c.column) > IDENT_MAX) {
    rc = eng_errorf(err, ENG_EINVAL, "rekey: a malformed crypto.sealed_column entry");
    goto cleanup;
  }
  quote_ident(qt, c.table);
  quote_ident(qc, c.column);
  snprintf(sql, sizeof sql, "SELECT rowid, %s, * FROM %s WHERE rowid > ?1 ORDER BY rowid LIMIT ?2", qc, qt);
  if (sqlite3_prepare_v2(h, sql, -1, &c.sel, NULL) != SQLITE_OK) {
    rc = eng_errorf(err, ENG_EDB, "rekey %s.%s: %s", c.table, c.column, sqlite3_errmsg(h));
    goto cleanup;
  }
  snprintf(sql, sizeof sql, "UPDATE %s SET %s = ?1 WHERE rowid = ?2", qt, qc);
  if (sqlite3_prepare_v2(h, sql, -1, &c.upd, NULL) != SQLITE_OK) {
    rc = eng_errorf(err, ENG_EDB, "rekey %s.%s: %s", c.table, c.column, sqlite3_errmsg(h));
    goto cleanup;
  }
  stats->columns++;
  long long rows0 = stats->rows, resealed0 = stats->resealed;
  while (!c.done) {
    if (exec(h, "BEGIN IMMEDIATE") != 0) {
      rc =
          eng_errorf(err, ENG_EDB, "rekey %s.%s: cannot start a transaction: %s", c.table, c.column, sqlite3_errmsg(h));
      goto cleanup;
    }
    lua_pushcfunction(L, rekey_batch);
    lua_pushlightuserdata(L, &c);
    lua_getfield(L, top, "aad");
    if (lua_pcall(L, 2, 0, 0) != LUA_OK) {
      const char *m = lua_tostring(L, -1);
      rc = eng_errorf(err, ENG_ELUA, "%s", m ? m : "rekey: error");
      lua_pop(L, 1);
      goto cleanup;
    }
    if (exec(h, "COMMIT") != 0) {
      rc = eng_errorf(err, ENG_EDB, "rekey %s.%s: cannot commit: %s", c.table, c.column, sqlite3_errmsg(h));
      goto cleanup;
    }
    if (progress)
      fprintf(progress, "rekey %s.%s: %lld rows read, %lld re-sealed (up to rowid %lld)\n", c.table, c.column,
              stats->rows - rows0, stats->resealed - resealed0, (long long)c.after);
    if (pause_ms > 0 && !c.done) {
      struct timespec ts = {.tv_sec = pause_ms / 1000, .tv_nsec = (long)(pause_ms % 1000) * 1000000L};
      while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
    }
  }
cleanup:
  if (c.sel)
    sqlite3_reset(c.sel);
  if (!sqlite3_get_autocommit(h))
    exec(h, "ROLLBACK");
  sqlite3_finalize(c.sel);
  sqlite3_finalize(c.upd);
  lua_settop(L, top);
  return rc;
}

int eng_rekey_run(lua_State *L, eng_db *db, int batch, int pause_ms, FILE *progress, eng_rekey_stats *stats,
                  char **err) {
  *stats = (eng_rekey_stats){0};
  if (err)
    *err = NULL;
  if (!eng_keys_ready())
    return eng_errorf(err, ENG_EINVAL, "rekey: no server key loaded");
  if (batch < 1 || batch > ENG_REKEY_BATCH_MAX)
    return eng_errorf(err, ENG_EINVAL, "rekey: the batch size must be 1..%d", ENG_REKEY_BATCH_MAX);
  if (pause_ms < 0 || pause_ms > 60000)
    return eng_errorf(err, ENG_EINVAL, "rekey: the pause must be 0..60000 ms");
  if (!lua_checkstack(L, 8))
    return eng_errorf(err, ENG_ENOMEM, "rekey: out of memory");
  int top = lua_gettop(L), rc = 0;
  if (lua_getfield(L, LUA_REGISTRYINDEX, ENG_SEALED_COLUMNS) != LUA_TTABLE) {
    lua_settop(L, top);
    return 0; /* the scripts declared none */
  }
  lua_Integer n = (lua_Integer)lua_rawlen(L, top + 1);
  for (lua_Integer i = 1; rc == 0 && i <= n; i++) {
    lua_rawgeti(L, top + 1, i);
    rc = rekey_column(L, db, batch, pause_ms, progress, stats, err);
    lua_settop(L, top + 1);
  }
  lua_settop(L, top);
  return rc;
}
