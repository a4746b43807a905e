/* test_json.c - engine.json: the JSON codec (engine/lua_json.c).
 *
 * Most cases are Lua snippets run against the real module (preloaded as "engine.json"); each
 * assertion reports through ok(), which feeds check.h's counters and names the case and line.
 * The C entry points (eng_json_encode into an eng_buf, eng_json_decode) are tested directly. */
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

/* ok(cond, message [, level]): one assertion; level picks the stack frame named on failure. */
static int l_ok(lua_State *L) {
  int level = (int)luaL_optinteger(L, 3, 1);
  if (lua_toboolean(L, 1)) {
    check_passed_++;
    return 0;
  }
  check_failed_++;
  luaL_where(L, level);
  fprintf(stderr, "%sCHECK failed: %s\n", lua_tostring(L, -1), luaL_optstring(L, 2, "?"));
  return 0;
}

/* Assertion helpers shared by the cases. eq also compares math.type; dec_fails wants the exact
 * message when given one starting with "invalid JSON at byte", else a fragment of it. */
static const char prelude[] =
    "json = require('engine.json')\n"
    "local function show(v)\n"
    "  if type(v) == 'string' then return (string.format('%q', v):sub(1, 200)) end\n"
    "  if math.type(v) == 'float' then return string.format('%.17g (float)', v) end\n"
    "  return tostring(v)\n"
    "end\n"
    "function eq(got, want, name)\n"
    "  local same = got == want\n"
    "  if same and type(got) == 'number' then same = math.type(got) == math.type(want) end\n"
    "  ok(same, name .. ': got ' .. show(got) .. ', want ' .. show(want), 2)\n"
    "end\n"
    "function dec_fails(text, want, name)\n"
    "  local v, msg = json.decode(text)\n"
    "  local good = v == nil and type(msg) == 'string'\n"
    "  if good and want:find('invalid JSON at byte', 1, true) == 1 then good = msg == want\n"
    "  elseif good then good = msg:find(want, 1, true) ~= nil end\n"
    "  ok(good, name .. ': got ' .. show(v) .. ', ' .. show(msg), 2)\n"
    "end\n"
    "function enc_fails(v, want, name)\n"
    "  local good, err = pcall(json.encode, v)\n"
    "  ok(not good and type(err) == 'string' and err:find(want, 1, true) ~= nil,\n"
    "     name .. ': got ' .. show(err), 2)\n"
    "end\n";

typedef struct lua_case {
  const char *name;
  const char *const *lines; /* NULL-terminated; one literal per line keeps each under 4095 bytes */
} lua_case;

static const lua_case cases[] = {
    {"integers and floats keep math.type through decode and encode",
     (const char *const[]){
        "eq(json.decode(\"1\"), 1, \"1 is an integer\")\n",
        "eq(json.decode(\"-5\"), -5, \"-5 is an integer\")\n",
        "eq(json.decode(\"0\"), 0, \"0 is an integer\")\n",
        "eq(json.decode(\"1.0\"), 1.0, \"1.0 is a float\")\n",
        "eq(json.decode(\"1e2\"), 100.0, \"1e2 is a float\")\n",
        "eq(json.decode(\"1E+2\"), 100.0, \"1E+2 is a float\")\n",
        "eq(json.decode(\"2.5e-1\"), 0.25, \"2.5e-1\")\n",
        "eq(json.decode(\"-0.5\"), -0.5, \"-0.5\")\n",
        "eq(json.encode(1), \"1\", \"encode integer\")\n",
        "eq(json.encode(-42), \"-42\", \"encode negative integer\")\n",
        "eq(json.encode(1.0), \"1.0\", \"float 1.0 keeps its point\")\n",
        "eq(json.encode(100.0), \"100.0\", \"float 100.0\")\n",
        "eq(json.encode(0.1), \"0.1\", \"0.1 shortest\")\n",
        "eq(json.encode(1.5), \"1.5\", \"1.5\")\n",
        "eq(json.encode(1e20), \"1e+20\", \"1e20\")\n",
        "eq(json.encode(2^53), \"9007199254740992.0\", \"2^53 as float\")\n",
        "eq(json.encode(1/3), \"0.3333333333333333\", \"1/3 needs 16 digits\")\n",
        "eq(json.encode(0.1 + 0.2), \"0.30000000000000004\", \"0.1+0.2 needs 17 digits\")\n",
        "for _, x in ipairs({1/3, 0.1 + 0.2, 123.456, 5e-324, 2.2250738585072014e-308, 1.7976931348623157e308, -1e-10, 3.0}) do\n",
        "  eq(json.decode(json.encode(x)), x, \"float round trip \" .. string.format(\"%.17g\", x))\n",
        "end\n",
        "eq(json.decode(json.encode(3)), 3, \"integer round trip\")\n",
         NULL}},
    {"2^53+1 and the int64 limits stay exact integers",
     (const char *const[]){
        "eq(json.decode(\"9007199254740993\"), 9007199254740993, \"2^53+1 exact\")\n",
        "eq(json.encode(9007199254740993), \"9007199254740993\", \"encode 2^53+1\")\n",
        "eq(json.decode(\"9223372036854775807\"), math.maxinteger, \"int64 max\")\n",
        "eq(json.decode(\"-9223372036854775808\"), math.mininteger, \"int64 min\")\n",
        "eq(json.encode(math.maxinteger), \"9223372036854775807\", \"encode int64 max\")\n",
        "eq(json.encode(math.mininteger), \"-9223372036854775808\", \"encode int64 min\")\n",
        "eq(json.decode(\"9223372036854775808\"), 9223372036854775808.0, \"int64 max + 1 becomes a float\")\n",
        "eq(json.decode(\"-9223372036854775809\"), -9223372036854775808.0, \"int64 min - 1 becomes a float\")\n",
        "eq(json.decode(\"18446744073709551616\"), 18446744073709551616.0, \"2^64 becomes a float\")\n",
        "eq(json.decode(\"123456789012345678901234567890\"), 1.2345678901234568e29, \"30 digits become a float\")\n",
        "eq(json.decode(\"-0\"), 0, \"-0 without fraction is integer 0\")\n",
         NULL}},
    {"negative zero survives as a float",
     (const char *const[]){
        "eq(json.encode(-0.0), \"-0.0\", \"encode -0.0\")\n",
        "local z = json.decode(\"-0.0\")\n",
        "eq(math.type(z), \"float\", \"-0.0 decodes as a float\")\n",
        "eq(1 / z, -math.huge, \"-0.0 keeps its sign\")\n",
        "eq(1 / json.decode(json.encode(-0.0)), -math.huge, \"-0.0 round trip keeps its sign\")\n",
         NULL}},
    {"1e308 decodes, 1e400 and non-finite numbers are errors",
     (const char *const[]){
        "eq(json.decode(\"1e308\"), 1e308, \"1e308\")\n",
        "eq(json.encode(1e308), \"1e+308\", \"encode 1e308\")\n",
        "eq(json.decode(\"-1e308\"), -1e308, \"-1e308\")\n",
        "dec_fails(\"1e400\", \"invalid JSON at byte 0: number out of range\", \"1e400\")\n",
        "dec_fails(\"-1e400\", \"invalid JSON at byte 0: number out of range\", \"-1e400\")\n",
        "dec_fails(\"[1, 1e400]\", \"invalid JSON at byte 4: number out of range\", \"1e400 inside an array\")\n",
        "dec_fails(string.rep(\"9\", 400), \"number out of range\", \"400-digit integer overflows to inf\")\n",
        "eq(json.decode(\"1e-400\"), 0.0, \"underflow to zero is not an error\")\n",
        "dec_fails(string.rep(\"1\", 1100), \"number too long\", \"over-long literal\")\n",
        "enc_fails(math.huge, \"cannot encode NaN or infinity\", \"inf\")\n",
        "enc_fails(-math.huge, \"cannot encode NaN or infinity\", \"-inf\")\n",
        "enc_fails(0/0, \"cannot encode NaN or infinity\", \"nan\")\n",
        "enc_fails({x = 0/0}, \"cannot encode NaN or infinity\", \"nan inside a table\")\n",
         NULL}},
    {"surrogate pairs and \\u escapes decode to UTF-8",
     (const char *const[]){
        "eq(json.decode([[\"\\ud83d\\ude00\"]]), \"\\xF0\\x9F\\x98\\x80\", \"surrogate pair to 4-byte UTF-8\")\n",
        "eq(json.decode([[\"\\uD83D\\uDE00\"]]), \"\\xF0\\x9F\\x98\\x80\", \"upper-case hex\")\n",
        "eq(json.decode([[\"\\u00e9\"]]), \"\\xC3\\xA9\", \"2-byte\")\n",
        "eq(json.decode([[\"\\u20ac\"]]), \"\\xE2\\x82\\xAC\", \"3-byte\")\n",
        "eq(json.decode([[\"\\u0041\\u0000B\"]]), \"A\\0B\", \"\\\\u0000 gives a NUL byte\")\n",
        "eq(json.decode([[\"\\udbff\\udfff\"]]), \"\\xF4\\x8F\\xBF\\xBF\", \"U+10FFFF\")\n",
        "eq(json.decode([[\"a\\ud83d\\ude00b\"]]), \"a\\xF0\\x9F\\x98\\x80b\", \"pair in the middle\")\n",
        "dec_fails([[\"\\ud83d\"]], \"invalid JSON at byte 1: lone surrogate in \\\\u escape\", \"lone high surrogate at end\")\n",
        "dec_fails([[\"\\ud83dx\"]], \"lone surrogate\", \"high surrogate then a letter\")\n",
        "dec_fails([[\"\\ud83d\\u0041\"]], \"lone surrogate\", \"high surrogate then a non-surrogate\")\n",
        "dec_fails([[\"\\ud83d\\ud83d\"]], \"lone surrogate\", \"two high surrogates\")\n",
        "dec_fails([[\"\\ude00\"]], \"lone surrogate\", \"lone low surrogate\")\n",
        "dec_fails([[\"\\u12\"]], \"invalid \\\\u escape\", \"short \\\\u escape\")\n",
        "dec_fails([[\"\\u12G4\"]], \"invalid \\\\u escape\", \"non-hex \\\\u escape\")\n",
        "dec_fails([[\"\\x41\"]], \"invalid escape in string\", \"\\\\x is not JSON\")\n",
        "dec_fails([[\"\\ud83d\\ude0\"]], \"lone surrogate\", \"truncated low half\")\n",
         NULL}},
    {"all escapes decode",
     (const char *const[]){
        "eq(json.decode([[\"\\\"\\\\\\/\\b\\f\\n\\r\\t\"]]), \"\\\"\\\\/\\b\\f\\n\\r\\t\", \"every short escape\")\n",
        "eq(json.decode([[\"a\\\"b\"]]), \"a\\\"b\", \"escaped quote inside\")\n",
        "eq(json.decode([[\"\\\\\"]]), \"\\\\\", \"escaped backslash at the end\")\n",
        "eq(json.decode([[\"caf\\u00e9 \\u00e9\"]]), \"caf\\xC3\\xA9 \\xC3\\xA9\", \"escape after raw text\")\n",
        "eq(json.decode(\"\\\"\\\\u00e9\\xC3\\xA9\\\"\"), \"\\xC3\\xA9\\xC3\\xA9\", \"raw UTF-8 after an escape\")\n",
        "dec_fails([[\"abc\\\"]], \"unterminated string\", \"escaped closing quote\")\n",
        "dec_fails([[\"abc]], \"invalid JSON at byte 0: unterminated string\", \"no closing quote\")\n",
        "dec_fails(\"\\\"abc\\\\\", \"unterminated string\", \"backslash at the end of input\")\n",
         NULL}},
    {"invalid UTF-8 in decode input is rejected",
     (const char *const[]){
        "dec_fails(\"\\\"\\xff\\\"\", \"invalid JSON at byte 1: invalid UTF-8 in string\", \"0xff\")\n",
        "dec_fails(\"\\\"ab\\x80\\\"\", \"invalid JSON at byte 3: invalid UTF-8 in string\", \"stray continuation\")\n",
        "dec_fails(\"\\\"\\xc3\\\"\", \"invalid UTF-8\", \"truncated 2-byte\")\n",
        "dec_fails(\"\\\"\\xe2\\x82\\\"\", \"invalid UTF-8\", \"truncated 3-byte\")\n",
        "dec_fails(\"\\\"\\xc0\\xaf\\\"\", \"invalid UTF-8\", \"overlong 2-byte slash\")\n",
        "dec_fails(\"\\\"\\xc1\\xbf\\\"\", \"invalid UTF-8\", \"overlong C1\")\n",
        "dec_fails(\"\\\"\\xe0\\x80\\xaf\\\"\", \"invalid UTF-8\", \"overlong 3-byte\")\n",
        "dec_fails(\"\\\"\\xf0\\x80\\x80\\xaf\\\"\", \"invalid UTF-8\", \"overlong 4-byte\")\n",
        "dec_fails(\"\\\"\\xed\\xa0\\x80\\\"\", \"invalid UTF-8\", \"raw surrogate D800\")\n",
        "dec_fails(\"\\\"\\xed\\xbf\\xbf\\\"\", \"invalid UTF-8\", \"raw surrogate DFFF\")\n",
        "dec_fails(\"\\\"\\xf4\\x90\\x80\\x80\\\"\", \"invalid UTF-8\", \"beyond U+10FFFF\")\n",
        "dec_fails(\"\\\"\\xf5\\x80\\x80\\x80\\\"\", \"invalid UTF-8\", \"F5 lead\")\n",
        "dec_fails(\"\\\"\\\\n\\xff\\\"\", \"invalid UTF-8\", \"invalid byte after an escape\")\n",
        "eq(json.decode(\"\\\"\\xc3\\xa9\\xe2\\x82\\xac\\xf0\\x9f\\x98\\x80\\xed\\x9f\\xbf\\xf4\\x8f\\xbf\\xbf\\\"\"), \"\\xc3\\xa9\\xe2\\x82\\xac\\xf0\\x9f\\x98\\x80\\xed\\x9f\\xbf\\xf4\\x8f\\xbf\\xbf\", \"valid raw UTF-8 incl. U+D7FF and U+10FFFF\")\n",
        "dec_fails(\"\\xff\", \"unexpected character\", \"invalid byte outside a string\")\n",
         NULL}},
    {"invalid UTF-8 in encode input is rejected",
     (const char *const[]){
        "enc_fails(\"\\xff\", \"invalid UTF-8 in string\", \"0xff\")\n",
        "enc_fails(\"ok\\xc0\\xaf\", \"invalid UTF-8 in string\", \"overlong\")\n",
        "enc_fails(\"\\xe0\\x80\\xaf\", \"invalid UTF-8 in string\", \"overlong 3-byte\")\n",
        "enc_fails(\"\\xed\\xa0\\x80\", \"invalid UTF-8 in string\", \"surrogate\")\n",
        "enc_fails(\"\\xf4\\x90\\x80\\x80\", \"invalid UTF-8 in string\", \"beyond U+10FFFF\")\n",
        "enc_fails(\"\\xe2\\x82\", \"invalid UTF-8 in string\", \"truncated\")\n",
        "enc_fails({[\"\\xff\"] = 1}, \"invalid UTF-8 in string\", \"invalid key\")\n",
        "enc_fails({\"a\", \"\\x80\"}, \"invalid UTF-8 in string\", \"invalid element\")\n",
        "eq(json.encode(\"caf\\xc3\\xa9 \\xe2\\x82\\xac \\xf0\\x9f\\x98\\x80\"), \"\\\"caf\\xc3\\xa9 \\xe2\\x82\\xac \\xf0\\x9f\\x98\\x80\\\"\", \"valid UTF-8 is written raw\")\n",
         NULL}},
    {"string escapes on output",
     (const char *const[]){
        "eq(json.encode(\"\\n\"), [[\"\\n\"]], \"newline\")\n",
        "eq(json.encode(\"\\1\"), [[\"\\u0001\"]], \"\\\\u0001\")\n",
        "eq(json.encode(\"\\0\"), [[\"\\u0000\"]], \"NUL\")\n",
        "eq(json.encode(\"\\31\"), [[\"\\u001f\"]], \"0x1f\")\n",
        "eq(json.encode(\"\\127\"), \"\\\"\\127\\\"\", \"DEL is not escaped\")\n",
        "eq(json.encode(\"a\\\"b\\\\c/d\"), [[\"a\\\"b\\\\c/d\"]], \"quote and backslash escaped, slash not\")\n",
        "eq(json.encode(\"\\b\\f\\n\\r\\t\"), [[\"\\b\\f\\n\\r\\t\"]], \"short escapes\")\n",
        "eq(json.encode(\"\"), [[\"\"]], \"empty string\")\n",
        "eq(json.encode(\"plain\"), [[\"plain\"]], \"plain string\")\n",
        "eq(json.encode(\"\\xe2\\x80\\xa8\"), \"\\\"\\xe2\\x80\\xa8\\\"\", \"U+2028 is written raw\")\n",
        "local s = \"x\\0y\\n\\\"\\\\\\1\\31 \\xc3\\xa9\"\n",
        "eq(json.decode(json.encode(s)), s, \"escapes round trip\")\n",
         NULL}},
    {"control characters raw in a string are an error",
     (const char *const[]){
        "dec_fails(\"\\\"a\\nb\\\"\", \"invalid JSON at byte 2: control character in string\", \"raw newline\")\n",
        "dec_fails(\"\\\"\\1\\\"\", \"control character in string\", \"raw 0x01\")\n",
        "dec_fails(\"\\\"\\t\\\"\", \"control character in string\", \"raw tab\")\n",
        "dec_fails(\"\\\"\\0\\\"\", \"control character in string\", \"raw NUL\")\n",
        "dec_fails(\"\\\"\\\\n\\31\\\"\", \"control character in string\", \"raw control after an escape\")\n",
         NULL}},
    {"deep nesting is an error, not a crash",
     (const char *const[]){
        "dec_fails(string.rep(\"[\", 600) .. string.rep(\"]\", 600), \"invalid JSON at byte 512: nesting deeper than 512\", \"600 arrays\")\n",
        "dec_fails(string.rep(\"{\\\"a\\\":\", 600) .. \"1\" .. string.rep(\"}\", 600), \"nesting deeper than 512\", \"600 objects\")\n",
        "dec_fails(string.rep(\"[\", 100000), \"nesting deeper than 512\", \"100000 open brackets\")\n",
        "local v = json.decode(string.rep(\"[\", 100) .. \"7\" .. string.rep(\"]\", 100))\n",
        "for _ = 1, 99 do v = v[1] end\n",
        "eq(v[1], 7, \"100 levels decode\")\n",
        "ok(json.decode(string.rep(\"[\", 512) .. string.rep(\"]\", 512)) ~= nil, \"exactly 512 levels decode\")\n",
        "dec_fails(string.rep(\"[\", 513) .. string.rep(\"]\", 513), \"nesting deeper than 512\", \"513 levels\")\n",
        "local t = {}\n",
        "local cur = t\n",
        "for _ = 1, 127 do cur[1] = {}; cur = cur[1] end\n",
        "eq(json.encode(t), string.rep(\"[\", 127) .. \"{}\" .. string.rep(\"]\", 127), \"128 levels encode\")\n",
        "cur[1] = {}\n",
        "enc_fails(t, \"cycle or nesting deeper than 128\", \"129 levels\")\n",
        "local a = json.decode(string.rep(\"[\", 100) .. string.rep(\"]\", 100))\n",
        "eq(json.encode(a), string.rep(\"[\", 100) .. string.rep(\"]\", 100), \"100 levels round trip\")\n",
         NULL}},
    {"cycles are an error",
     (const char *const[]){
        "local t = {}\n",
        "t.self = t\n",
        "enc_fails(t, \"cycle or nesting deeper than 128\", \"self cycle\")\n",
        "local a, b = {}, {}\n",
        "a[1] = b\n",
        "b[1] = a\n",
        "enc_fails(a, \"cycle or nesting deeper than 128\", \"two-table cycle\")\n",
        "local shared = {1}\n",
        "eq(json.encode({x = shared, y = shared}), [[{\"x\":[1],\"y\":[1]}]], \"shared (acyclic) subtable is fine\")\n",
         NULL}},
    {"empty arrays and objects round trip",
     (const char *const[]){
        "eq(json.encode(json.decode(\"[]\")), \"[]\", \"[] stays []\")\n",
        "eq(json.encode(json.decode(\"{}\")), \"{}\", \"{} stays {}\")\n",
        "eq(json.encode(json.decode(\" [ ] \")), \"[]\", \"[ ] with spaces\")\n",
        "eq(json.encode(json.decode(\"{\\\"a\\\":[],\\\"b\\\":{}}\")), [[{\"a\":[],\"b\":{}}]], \"nested empties\")\n",
        "eq(json.encode({}), \"{}\", \"empty plain table is an object\")\n",
        "eq(json.encode(json.array()), \"[]\", \"json.array()\")\n",
        "eq(json.encode(json.array({})), \"[]\", \"json.array({})\")\n",
        "eq(json.encode(json.array({1, 2})), \"[1,2]\", \"json.array with elements\")\n",
        "eq(json.is_array(json.decode(\"[]\")), true, \"decoded array is marked\")\n",
        "eq(json.is_array(json.decode(\"[1]\")), true, \"decoded non-empty array is marked\")\n",
        "eq(json.is_array(json.decode(\"{}\")), false, \"decoded object is not marked\")\n",
        "eq(json.is_array({}), false, \"plain table is not marked\")\n",
        "eq(json.is_array(\"x\"), false, \"non-table is not an array\")\n",
        "eq(json.is_array(nil), false, \"nil is not an array\")\n",
        "local t = {}\n",
        "eq(json.array(t), t, \"array returns its argument\")\n",
        "eq(getmetatable(json.decode(\"[]\")), getmetatable(json.array()), \"one shared metatable\")\n",
        "eq(json.encode({1, 2, 3}), \"[1,2,3]\", \"1..n plain table is an array\")\n",
        "eq(json.encode({[2] = \"b\", [1] = \"a\"}), '[\"a\",\"b\"]', \"1..n in any insertion order\")\n",
         NULL}},
    {"json.null inside arrays and objects",
     (const char *const[]){
        "eq(json.null, json.null, \"null is stable\")\n",
        "eq(type(json.null), \"userdata\", \"null is a light userdata\")\n",
        "local a = json.decode(\"[1,null,2]\")\n",
        "eq(#a, 3, \"null keeps its slot\")\n",
        "eq(a[2], json.null, \"null element\")\n",
        "eq(json.encode(a), \"[1,null,2]\", \"null element re-encodes\")\n",
        "local o = json.decode([[{\"a\":null,\"b\":1}]])\n",
        "eq(o.a, json.null, \"null member is kept\")\n",
        "eq(json.encode(o), [[{\"a\":null,\"b\":1}]], \"null member re-encodes\")\n",
        "eq(json.decode(\"null\"), json.null, \"top-level null\")\n",
        "eq(json.encode(json.null), \"null\", \"encode null\")\n",
        "eq(json.encode(nil), \"null\", \"encode nil\")\n",
        "eq(json.encode({a = json.null}), [[{\"a\":null}]], \"null in a Lua-built object\")\n",
        "eq(json.encode({json.null, 1}), \"[null,1]\", \"null in a Lua-built array\")\n",
        "eq(json.encode(json.array({[1] = 1, [2] = json.null, [3] = 3})), \"[1,null,3]\", \"array-marked with null\")\n",
        "eq(json.encode(true), \"true\", \"true\")\n",
        "eq(json.encode(false), \"false\", \"false\")\n",
        "eq(json.decode(\"true\"), true, \"decode true\")\n",
        "eq(json.decode(\"false\"), false, \"decode false\")\n",
         NULL}},
    {"object keys are sorted byte-wise",
     (const char *const[]){
        "eq(json.encode({b = 1, a = 2, c = {z = 1, y = 2}, A = 3}), [[{\"A\":3,\"a\":2,\"b\":1,\"c\":{\"y\":2,\"z\":1}}]], \"sorted, nested too\")\n",
        "eq(json.encode({ab = 1, a = 2, [\"\"] = 3, b = 4}), [[{\"\":3,\"a\":2,\"ab\":1,\"b\":4}]], \"prefix sorts first\")\n",
        "eq(json.encode({[\"\\xc3\\xa9\"] = 1, z = 2, [\"a\\0b\"] = 3, a = 4}), \"{\\\"a\\\":4,\\\"a\\\\u0000b\\\":3,\\\"z\\\":2,\\\"\\xc3\\xa9\\\":1}\", \"bytes compare unsigned, NUL in a key\")\n",
        "local big = {}\n",
        "for i = 1, 300 do local k = string.format(\"k%03d\", (i * 7919) % 300); big[k] = i end\n",
        "local s = json.encode(big)\n",
        "local last = \"\"\n",
        "local n = 0\n",
        "for k in s:gmatch(\"\\\"(k%d%d%d)\\\"\") do ok(k > last, \"ascending \" .. k); last = k; n = n + 1 end\n",
        "eq(n, 300, \"all 300 keys present\")\n",
        "local long1, long2 = string.rep(\"x\", 100) .. \"b\", string.rep(\"x\", 100) .. \"a\"\n",
        "eq(json.encode({[long1] = 1, [long2] = 2}), \"{\\\"\" .. long2 .. \"\\\":2,\\\"\" .. long1 .. \"\\\":1}\", \"long keys sorted and looked up\")\n",
         NULL}},
    {"tables with non-string keys are rejected unless they are 1..n",
     (const char *const[]){
        "enc_fails({1, 2, x = 3}, \"table key must be a string\", \"mixed integer and string keys\")\n",
        "enc_fails({[1] = 1, [3] = 3}, \"table key must be a string\", \"holes\")\n",
        "enc_fails({[0] = 1}, \"table key must be a string\", \"key 0\")\n",
        "enc_fails({[-1] = 1, [1] = 1}, \"table key must be a string\", \"negative key\")\n",
        "enc_fails({[1.5] = 1}, \"table key must be a string\", \"float key\")\n",
        "enc_fails({[true] = 1}, \"table key must be a string\", \"boolean key\")\n",
        "enc_fails({x = {[2] = 1}}, \"table key must be a string\", \"nested\")\n",
        "eq(json.encode({[1.0] = \"a\"}), '[\"a\"]', \"float key 1.0 is the integer 1\")\n",
         NULL}},
    {"other unencodable values raise",
     (const char *const[]){
        "enc_fails(print, \"cannot encode a function\", \"function\")\n",
        "enc_fails({f = print}, \"cannot encode a function\", \"function in a table\")\n",
        "enc_fails(coroutine.create(function() end), \"cannot encode a thread\", \"thread\")\n",
        "enc_fails(io.stdout, \"cannot encode a userdata\", \"full userdata\")\n",
        "local okk = pcall(json.encode)\n",
        "eq(okk, false, \"encode() without argument raises\")\n",
         NULL}},
    {"trailing garbage and structural errors",
     (const char *const[]){
        "dec_fails(\"1 x\", \"invalid JSON at byte 2: unexpected data after the value\", \"1 x\")\n",
        "dec_fails(\"[] []\", \"unexpected data after the value\", \"two values\")\n",
        "dec_fails(\"{}x\", \"unexpected data after the value\", \"{}x\")\n",
        "dec_fails(\"nullx\", \"unexpected data after the value\", \"nullx\")\n",
        "dec_fails(\"truee\", \"unexpected data after the value\", \"truee\")\n",
        "dec_fails(\"1\\0\", \"unexpected data after the value\", \"trailing NUL\")\n",
        "eq(json.encode(json.decode(\" \\t\\r\\n[1] \\n\")), \"[1]\", \"surrounding whitespace\")\n",
        "eq(json.decode(\" \\t\\r\\n 5 \\n\"), 5, \"whitespace around a number\")\n",
        "dec_fails(\"\", \"invalid JSON at byte 0: unexpected end of input\", \"empty input\")\n",
        "dec_fails(\"   \", \"invalid JSON at byte 3: unexpected end of input\", \"only whitespace\")\n",
        "dec_fails(\"[1,]\", \"invalid JSON at byte 3: unexpected character\", \"trailing comma in array\")\n",
        "dec_fails(\"{\\\"a\\\":1,}\", \"invalid JSON at byte 7: expected a string key\", \"trailing comma in object\")\n",
        "dec_fails(\"{a:1}\", \"expected a string key\", \"unquoted key\")\n",
        "dec_fails(\"{'a':1}\", \"expected a string key\", \"single-quoted key\")\n",
        "dec_fails(\"{\\\"a\\\" 1}\", \"expected ':'\", \"missing colon\")\n",
        "dec_fails(\"{\\\"a\\\":1 \\\"b\\\":2}\", \"expected ',' or '}'\", \"missing comma in object\")\n",
        "dec_fails(\"[1 2]\", \"invalid JSON at byte 3: expected ',' or ']'\", \"missing comma in array\")\n",
        "dec_fails(\"[1\", \"unexpected end of input\", \"unclosed array\")\n",
        "dec_fails(\"{\\\"a\\\":1\", \"unexpected end of input\", \"unclosed object\")\n",
        "dec_fails(\"{\\\"a\\\"\", \"unexpected end of input\", \"key without value\")\n",
        "dec_fails(\"[\", \"unexpected end of input\", \"lone bracket\")\n",
        "dec_fails(\"tru\", \"invalid JSON at byte 0: invalid literal\", \"truncated true\")\n",
        "dec_fails(\"nul\", \"invalid literal\", \"truncated null\")\n",
        "dec_fails(\"True\", \"unexpected character\", \"capitalised literal\")\n",
        "dec_fails(\"undefined\", \"unexpected character\", \"undefined\")\n",
        "dec_fails(\"'a'\", \"unexpected character\", \"single-quoted string\")\n",
        "dec_fails(\"\\xef\\xbb\\xbf[]\", \"unexpected character\", \"BOM\")\n",
        "dec_fails(\"[1]\\v\", \"unexpected data after the value\", \"vertical tab is not whitespace\")\n",
        "eq(json.decode([[{\"a\":1,\"a\":2}]]).a, 2, \"duplicate key: last wins\")\n",
        "local okk = pcall(json.decode, 5)\n",
        "eq(okk, false, \"decode of a number raises\")\n",
        "okk = pcall(json.decode, nil)\n",
        "eq(okk, false, \"decode of nil raises\")\n",
        "okk = pcall(json.decode, {})\n",
        "eq(okk, false, \"decode of a table raises\")\n",
         NULL}},
    {"every invalid number form is rejected",
     (const char *const[]){
        "dec_fails(\"01\", \"invalid JSON at byte 1: leading zero in number\", \"01\")\n",
        "dec_fails(\"-01\", \"leading zero in number\", \"-01\")\n",
        "dec_fails(\"00\", \"leading zero in number\", \"00\")\n",
        "dec_fails(\"+1\", \"invalid JSON at byte 0: unexpected character\", \"+1\")\n",
        "dec_fails(\".5\", \"unexpected character\", \".5\")\n",
        "dec_fails(\"1.\", \"invalid JSON at byte 2: expected a digit after the decimal point\", \"1.\")\n",
        "dec_fails(\"1.e5\", \"expected a digit after the decimal point\", \"1.e5\")\n",
        "dec_fails(\"-\", \"invalid JSON at byte 1: expected a digit\", \"-\")\n",
        "dec_fails(\"-.5\", \"expected a digit\", \"-.5\")\n",
        "dec_fails(\"--1\", \"expected a digit\", \"--1\")\n",
        "dec_fails(\"- 1\", \"expected a digit\", \"- 1\")\n",
        "dec_fails(\"1e\", \"expected a digit in the exponent\", \"1e\")\n",
        "dec_fails(\"1e+\", \"expected a digit in the exponent\", \"1e+\")\n",
        "dec_fails(\"1E-\", \"expected a digit in the exponent\", \"1E-\")\n",
        "dec_fails(\"0x10\", \"unexpected data after the value\", \"hex\")\n",
        "dec_fails(\"Infinity\", \"unexpected character\", \"Infinity\")\n",
        "dec_fails(\"-Infinity\", \"expected a digit\", \"-Infinity\")\n",
        "dec_fails(\"NaN\", \"unexpected character\", \"NaN\")\n",
        "dec_fails(\"[01]\", \"leading zero in number\", \"leading zero inside an array\")\n",
        "dec_fails(\"1.5.5\", \"unexpected data after the value\", \"two points\")\n",
        "eq(json.decode(\"0.5\"), 0.5, \"0.5 is fine\")\n",
        "eq(json.decode(\"-0.0e0\"), -0.0, \"-0.0e0 is fine\")\n",
        "eq(json.decode(\"0e0\"), 0.0, \"0e0 is a float\")\n",
        "eq(json.decode(\"10\"), 10, \"10 is fine\")\n",
         NULL}},
    {"a large document round trips exactly",
     (const char *const[]){
        "local doc = json.array()\n",
        "for i = 1, 5000 do\n",
        "  doc[i] = {\n",
        "    id = i, name = \"item \" .. i .. \" \\xc3\\xa9\\n\\\"q\\\"\", price = i + 0.25, big = i * 1000000007,\n",
        "    tags = json.array({\"a\", \"b\", tostring(i)}), empty = json.array(), obj = {}, none = json.null,\n",
        "    nested = {deep = {deeper = {i, i * 2, {flag = (i % 2 == 0)}}}},\n",
        "  }\n",
        "end\n",
        "local text = json.encode(doc)\n",
        "ok(#text > 500000, \"document is large: \" .. #text)\n",
        "local back = json.decode(text)\n",
        "eq(#back, 5000, \"all elements back\")\n",
        "eq(back[4321].id, 4321, \"integer field\")\n",
        "eq(back[4321].price, 4321.25, \"float field\")\n",
        "eq(back[4321].big, 4321 * 1000000007, \"large integer field\")\n",
        "eq(back[4321].name, \"item 4321 \\xc3\\xa9\\n\\\"q\\\"\", \"string field\")\n",
        "eq(back[4321].none, json.null, \"null field\")\n",
        "eq(back[4321].nested.deep.deeper[3].flag, false, \"deep field\")\n",
        "eq(back[4320].nested.deep.deeper[3].flag, true, \"deep field true\")\n",
        "eq(json.encode(back), text, \"re-encoding gives the same bytes\")\n",
        "local long = string.rep(\"\\xe2\\x82\\xac\\\\\\\"\", 100000)\n",
        "eq(json.decode(json.encode(long)), long, \"long string with escapes round trips\")\n",
         NULL}},
};

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
  lua_register(L, "ok", l_ok);
  if (luaL_dostring(L, prelude) != LUA_OK) {
    fprintf(stderr, "prelude: %s\n", lua_tostring(L, -1));
    exit(2);
  }
  return L;
}

/* Each case runs as its own chunk named after it, so an error in one does not hide the others. */
static void run_lua_cases(lua_State *L) {
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    eng_buf code = {0};
    eng_buf chunkname = {0};
    for (const char *const *ln = cases[i].lines; *ln; ln++)
      CHECK_INT(eng_buf_append_str(&code, *ln), 0);
    CHECK_INT(eng_buf_appendf(&chunkname, "=%s", cases[i].name), 0);
    int top = lua_gettop(L);
    if (luaL_loadbuffer(L, code.data, code.len, chunkname.data) != LUA_OK ||
        lua_pcall(L, 0, 0, 0) != LUA_OK) {
      check_failed_++;
      fprintf(stderr, "case '%s' raised: %s\n", cases[i].name, lua_tostring(L, -1));
    } else {
      check_passed_++;
    }
    lua_settop(L, top);
    eng_buf_free(&code);
    eng_buf_free(&chunkname);
  }
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
  run_lua_cases(L);
  test_c_encode_appends_to_buffer(L);
  test_c_decode(L);
  test_c_encode_without_module();
  CHECK_INT(lua_gettop(L), 0);
  lua_close(L);
  return check_summary("test_json");
}
