/* test_json.c - the C entry points of engine.json (engine/lua_json.c): eng_json_encode into an
 * eng_buf and eng_json_decode onto the Lua stack. The Lua-level cases of the module (numbers,
 * strings, UTF-8, nesting, arrays, null, key order, errors) are in tests/spec/engine_json_spec.lua. */
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>

#include "buf.h"
#include "check.h"
#include "error.h"
#include "lua_common.h"
#include "lua_json.h"

static lua_State *new_state(void) {
  lua_State *L = luaL_newstate();
  if (L == NULL) {
    fprintf(stderr, "luaL_newstate failed\n");
    exit(2);
  }
  luaL_openlibs(L);
  luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_PRELOAD_TABLE);
  lua_pushcfunction(L, eng_luaopen_json);
  lua_setfield(L, -2, "engine.json");
  lua_pop(L, 1);
  /* The C cases build their inputs in Lua, with json.null and json.array. */
  if (luaL_dostring(L, "json = require('engine.json')") != LUA_OK) {
    fprintf(stderr, "require engine.json: %s\n", lua_tostring(L, -1));
    exit(2);
  }
  return L;
}

/* Leaves the value the chunk returns on the stack. */
static void push_lua(lua_State *L, const char *expr) {
  if (luaL_loadstring(L, expr) != LUA_OK || lua_pcall(L, 0, 1, 0) != LUA_OK) {
    fprintf(stderr, "push_lua(%s): %s\n", expr, lua_tostring(L, -1));
    exit(2);
  }
}

static void test_c_encode_appends_to_buffer(lua_State *L) {
  eng_buf b = {0};
  const char *msg = NULL;
  int top = lua_gettop(L);

  CHECK_INT(eng_buf_append_str(&b, "body="), 0);
  push_lua(L, "return {b = 1, a = {1, 2.5, 'x\\n', json.null}, c = json.array(), d = {}}");
  CHECK_INT(eng_json_encode(L, -1, &b, &msg), 0);
  CHECK_STR(b.data, "body={\"a\":[1,2.5,\"x\\n\",null],\"b\":1,\"c\":[],\"d\":{}}");
  CHECK_INT(b.len, strlen("body={\"a\":[1,2.5,\"x\\n\",null],\"b\":1,\"c\":[],\"d\":{}}"));
  CHECK_INT(lua_gettop(L), top + 1);

  /* absolute index, with something else on top */
  eng_buf_reset(&b);
  lua_pushinteger(L, 7);
  CHECK_INT(eng_json_encode(L, top + 1, &b, &msg), 0);
  CHECK_STR(b.data, "{\"a\":[1,2.5,\"x\\n\",null],\"b\":1,\"c\":[],\"d\":{}}");
  eng_buf_reset(&b);
  CHECK_INT(eng_json_encode(L, -1, &b, &msg), 0);
  CHECK_STR(b.data, "7");
  CHECK_INT(lua_gettop(L), top + 2);
  lua_settop(L, top);

  /* errors: a code, a static message, the stack untouched */
  eng_buf_reset(&b);
  push_lua(L, "return {ok = 1, z = print}");
  msg = NULL;
  CHECK_INT(eng_json_encode(L, -1, &b, &msg), ENG_EINVAL);
  CHECK_STR(msg, "cannot encode a function");
  CHECK_INT(lua_gettop(L), top + 1);
  lua_settop(L, top);

  eng_buf_reset(&b);
  push_lua(L, "local t = {}; t[1] = t; return t");
  msg = NULL;
  CHECK_INT(eng_json_encode(L, -1, &b, &msg), ENG_ETOOBIG);
  CHECK_STR(msg, "cycle or nesting deeper than 128");
  CHECK_INT(lua_gettop(L), top + 1);
  lua_settop(L, top);

  eng_buf_reset(&b);
  push_lua(L, "return {[1] = 1, x = 2}");
  CHECK_INT(eng_json_encode(L, -1, &b, &msg), ENG_EINVAL);
  CHECK_STR(msg, "table key must be a string");
  lua_settop(L, top);

  eng_buf_reset(&b);
  lua_pushnumber(L, 0.0 / 0.0 * 0.0 + 1e308 * 10.0); /* inf */
  CHECK_INT(eng_json_encode(L, -1, &b, &msg), ENG_EINVAL);
  CHECK_STR(msg, "cannot encode NaN or infinity");
  lua_settop(L, top);

  eng_buf_reset(&b);
  lua_pushliteral(L, "bad \xff");
  CHECK_INT(eng_json_encode(L, -1, &b, &msg), ENG_EINVAL);
  CHECK_STR(msg, "invalid UTF-8 in string");
  lua_settop(L, top);

  eng_buf_free(&b);
}

/* eng_json_encode in a state where the json module was never opened (no array metatable yet). */
static void test_c_encode_without_module(void) {
  lua_State *L = luaL_newstate();
  eng_buf b = {0};
  const char *msg = NULL;
  lua_createtable(L, 0, 0);
  CHECK_INT(eng_json_encode(L, -1, &b, &msg), 0);
  CHECK_STR(b.data, "{}");
  lua_pushinteger(L, 10);
  lua_rawseti(L, -2, 1);
  lua_pushboolean(L, 1);
  lua_rawseti(L, -2, 2);
  eng_buf_reset(&b);
  CHECK_INT(eng_json_encode(L, 1, &b, &msg), 0);
  CHECK_STR(b.data, "[10,true]");
  CHECK_INT(lua_gettop(L), 1);
  eng_buf_free(&b);
  lua_close(L);
}

static void test_c_decode(lua_State *L) {
  int top = lua_gettop(L);
  static const char text[] = "{\"k\":[1,\"v\"]}trailing bytes outside len";

  CHECK_INT(eng_json_decode(L, text, 13), 1);
  CHECK_INT(lua_gettop(L), top + 1);
  CHECK(lua_istable(L, -1));
  lua_getfield(L, -1, "k");
  lua_rawgeti(L, -1, 2);
  CHECK_STR(lua_tostring(L, -1), "v");
  lua_rawgeti(L, -2, 1);
  CHECK(lua_isinteger(L, -1));
  CHECK_INT(lua_tointeger(L, -1), 1);
  lua_settop(L, top);

  CHECK_INT(eng_json_decode(L, "[}", 2), 2);
  CHECK_INT(lua_gettop(L), top + 2);
  CHECK(lua_isnil(L, -2));
  CHECK_STR(lua_tostring(L, -1), "invalid JSON at byte 1: unexpected character");
  lua_settop(L, top);

  /* an embedded NUL is just a byte: here it is trailing data */
  CHECK_INT(eng_json_decode(L, "1\0", 2), 2);
  CHECK_STR(lua_tostring(L, -1), "invalid JSON at byte 1: unexpected data after the value");
  lua_settop(L, top);

  CHECK_INT(eng_json_decode(L, "null", 4), 1);
  CHECK(eng_lua_isnull(L, -1));
  lua_settop(L, top);

  /* C round trip: decode, then encode the result into a buffer */
  {
    static const char doc[] = "{\"z\":[],\"a\":{\"n\":null,\"f\":0.5,\"i\":-3},\"s\":\"\\u00e9\\t\"}";
    eng_buf b = {0};
    const char *msg = NULL;
    CHECK_INT(eng_json_decode(L, doc, sizeof doc - 1), 1);
    CHECK_INT(eng_json_encode(L, -1, &b, &msg), 0);
    CHECK_STR(b.data, "{\"a\":{\"f\":0.5,\"i\":-3,\"n\":null},\"s\":\"\xc3\xa9\\t\",\"z\":[]}");
    eng_buf_free(&b);
    lua_settop(L, top);
  }
}

int main(void) {
  lua_State *L = new_state();
  test_c_encode_appends_to_buffer(L);
  test_c_decode(L);
  test_c_encode_without_module();
  CHECK_INT(lua_gettop(L), 0);
  lua_close(L);
  return check_summary("test_json");
}
