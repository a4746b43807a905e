/* lua_time.h - the Lua module "engine.time", a binding over clock.h.
 *
 * Lua API (wrong argument types raise; bad data returns nil, message):
 *   now()      -> integer ms (honours the test clock of the calling thread)
 *   format(ms) -> "2024-06-15T10:00:00.000Z"; raises unless ms is an integer (a float with an
 *                 exact integer value is accepted)
 *   parse(s)   -> ms, is_date (boolean) | nil, message; raises unless s is a string
 * The formats, ranges and messages are those of eng_clock_format and eng_clock_parse. */
#ifndef ENG_LUA_TIME_H
#define ENG_LUA_TIME_H

#include <lua.h>

/* Opener for "engine.time": pushes the module table, returns 1. Also declared in lua_common.h. */
int eng_luaopen_time(lua_State *L);

#endif
