/* lua_config.h - the Lua module "engine.config", and how the settings reach it.
 *
 * Lua API (eng_luaopen_config, declared in lua_common.h):
 *   config.get(name [, default])  APIENGINE_<NAME> from the environment (a string; NAME is
 *                                 name in upper case), else the config file's settings[name],
 *                                 else default
 *   config.settings()             the settings table itself (tests may change it); in the
 *                                 server a copy, as are table values config.get gives
 *
 * The config file is evaluated once (eng_lua_config_read_file, called by config.c), in a state
 * of its own.
 * Its `settings` table is packed there into bytes (eng_config.settings) with
 * eng_lua_config_pack; each worker's state rebuilds its own table from those bytes with
 * eng_lua_config_unpack. Settings are data: strings, numbers (integers stay integers, floats
 * floats), booleans and tables, nested up to ENG_SETTINGS_MAX_DEPTH, any table used twice (or
 * in a cycle) rebuilt as one table. A function in the settings is refused when packing. */
#ifndef ENG_LUA_CONFIG_H
#define ENG_LUA_CONFIG_H

#include "buf.h"

#include <stddef.h>

/* Declared, not included: config.c reads the file through this header without Lua's. */
typedef struct lua_State lua_State;

#define ENG_SETTINGS_MAX_DEPTH 200 /* tables, counting settings itself; Lua's parser stops near it */

/* Called for each engine setting of the config file (every key but `settings`), in table
 * order: value is its text ("on"/"off" for booleans), or NULL when it is neither a string, a
 * number nor a boolean. Returns 0, or an ENG_E* code with *err set, which stops the read. */
typedef int (*eng_config_file_fn)(void *ud, const char *key, const char *value, char **err);

/* Evaluates the config file at path once, in a Lua state of its own (text only, no globals:
 * the file is data), all of it in protected mode so that a memory error is an error, not a
 * panic. Hands each engine setting to fn and packs the `settings` table into settings (reset
 * first; left empty when `settings` is missing or not a table). Returns 0 or ENG_ECONFIG /
 * ENG_ENOMEM / fn's code, with *err a malloc'd message naming the file. */
int eng_lua_config_read_file(const char *path, eng_config_file_fn fn, void *ud, eng_buf *settings, char **err);

/* Packs the table at idx of L into out (reset first). Returns 0, ENG_ECONFIG with *err = a
 * malloc'd message naming the setting ("settings.hooks.f is a function: settings hold only
 * strings, numbers, booleans and tables"), or ENG_ENOMEM (*err "out of memory"); out is
 * empty on failure. Raises on Lua memory errors: call it in protected mode. L's stack is
 * left as it was. */
int eng_lua_config_pack(lua_State *L, int idx, eng_buf *out, char **err);

/* From now on config.get and config.settings hand out deep copies of table settings, so no
 * script can change them for the scripts after it (the server; tests change the live table).
 * Raises on memory errors. */
void eng_lua_config_copies(lua_State *L);

/* Rebuilds the table packed in data (len bytes, borrowed; NULL or 0 bytes: an empty table)
 * and makes it the settings engine.config reads in L. Raises on memory errors (and on bytes
 * eng_lua_config_pack did not make): call it in protected mode. */
void eng_lua_config_unpack(lua_State *L, const char *data, size_t len);

#endif
