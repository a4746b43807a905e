-- engine.json from Lua: the codec of engine/lua_json.c against tricky JSON (numbers and
-- math.type, int64 limits, -0.0, surrogate pairs, invalid UTF-8 both ways, escapes, deep
-- nesting, cycles, empty arrays, null, key order, structural errors, a large document).
-- The C entry points (eng_json_encode into a buffer, eng_json_decode) are tested in
-- tests/c/test_json.c.
local json = require "engine.json"

-- Assertion helpers. A failure names the spec line it comes from (level picks the frame, as
-- in luaL_where). eq also compares math.type; dec_fails wants the exact message when given
-- one starting with "invalid JSON at byte", else a fragment of it.
local function show(v)
  if type(v) == 'string' then return (string.format('%q', v):sub(1, 200)) end
  if math.type(v) == 'float' then return string.format('%.17g (float)', v) end
  return tostring(v)
end

local function ok(cond, msg, level)
  if not cond then
    msg = "line " .. debug.getinfo((level or 1) + 1, "l").currentline .. ": " .. msg
  end
  assert.is_truthy(cond, msg)
end

local function eq(got, want, name)
  local same = got == want
  if same and type(got) == 'number' then same = math.type(got) == math.type(want) end
  ok(same, name .. ': got ' .. show(got) .. ', want ' .. show(want), 2)
end

local function dec_fails(text, want, name)
  local v, msg = json.decode(text)
  local good = v == nil and type(msg) == 'string'
  if good and want:find('invalid JSON at byte', 1, true) == 1 then good = msg == want
  elseif good then good = msg:find(want, 1, true) ~= nil end
  ok(good, name .. ': got ' .. show(v) .. ', ' .. show(msg), 2)
end

local function enc_fails(v, want, name)
  local good, err = pcall(json.encode, v)
  ok(not good and type(err) == 'string' and err:find(want, 1, true) ~= nil,
     name .. ': got ' .. show(err), 2)
end

describe("engine.json", function()
  it("integers and floats keep math.type through decode and encode", function()
    eq(json.decode("1"), 1, "1 is an integer")
    eq(json.decode("-5"), -5, "-5 is an integer")
    eq(json.decode("0"), 0, "0 is an integer")
    eq(json.decode("1.0"), 1.0, "1.0 is a float")
    eq(json.decode("1e2"), 100.0, "1e2 is a float")
    eq(json.decode("1E+2"), 100.0, "1E+2 is a float")
    eq(json.decode("2.5e-1"), 0.25, "2.5e-1")
    eq(json.decode("-0.5"), -0.5, "-0.5")
    eq(json.encode(1), "1", "encode integer")
    eq(json.encode(-42), "-42", "encode negative integer")
    eq(json.encode(1.0), "1.0", "float 1.0 keeps its point")
    eq(json.encode(100.0), "100.0", "float 100.0")
    eq(json.encode(0.1), "0.1", "0.1 shortest")
    eq(json.encode(1.5), "1.5", "1.5")
    eq(json.encode(1e20), "1e+20", "1e20")
    eq(json.encode(2^53), "9007199254740992.0", "2^53 as float")
    eq(json.encode(1/3), "0.3333333333333333", "1/3 needs 16 digits")
    eq(json.encode(0.1 + 0.2), "0.30000000000000004", "0.1+0.2 needs 17 digits")
    for _, x in ipairs({1/3, 0.1 + 0.2, 123.456, 5e-324, 2.2250738585072014e-308, 1.7976931348623157e308, -1e-10, 3.0}) do
      eq(json.decode(json.encode(x)), x, "float round trip " .. string.format("%.17g", x))
    end
    eq(json.decode(json.encode(3)), 3, "integer round trip")
  end)

  it("2^53+1 and the int64 limits stay exact integers", function()
    eq(json.decode("9007199254740993"), 9007199254740993, "2^53+1 exact")
    eq(json.encode(9007199254740993), "9007199254740993", "encode 2^53+1")
    eq(json.decode("9223372036854775807"), math.maxinteger, "int64 max")
    eq(json.decode("-9223372036854775808"), math.mininteger, "int64 min")
    eq(json.encode(math.maxinteger), "9223372036854775807", "encode int64 max")
    eq(json.encode(math.mininteger), "-9223372036854775808", "encode int64 min")
    eq(json.decode("9223372036854775808"), 9223372036854775808.0, "int64 max + 1 becomes a float")
    eq(json.decode("-9223372036854775809"), -9223372036854775808.0, "int64 min - 1 becomes a float")
    eq(json.decode("18446744073709551616"), 18446744073709551616.0, "2^64 becomes a float")
    eq(json.decode("123456789012345678901234567890"), 1.2345678901234568e29, "30 digits become a float")
    eq(json.decode("-0"), 0, "-0 without fraction is integer 0")
  end)

  it("negative zero survives as a float", function()
    eq(json.encode(-0.0), "-0.0", "encode -0.0")
    local z = json.decode("-0.0")
    eq(math.type(z), "float", "-0.0 decodes as a float")
    eq(1 / z, -math.huge, "-0.0 keeps its sign")
    eq(1 / json.decode(json.encode(-0.0)), -math.huge, "-0.0 round trip keeps its sign")
  end)

  it("1e308 decodes, 1e400 and non-finite numbers are errors", function()
    eq(json.decode("1e308"), 1e308, "1e308")
    eq(json.encode(1e308), "1e+308", "encode 1e308")
    eq(json.decode("-1e308"), -1e308, "-1e308")
    dec_fails("1e400", "invalid JSON at byte 0: number out of range", "1e400")
    dec_fails("-1e400", "invalid JSON at byte 0: number out of range", "-1e400")
    dec_fails("[1, 1e400]", "invalid JSON at byte 4: number out of range", "1e400 inside an array")
    dec_fails(string.rep("9", 400), "number out of range", "400-digit integer overflows to inf")
    eq(json.decode("1e-400"), 0.0, "underflow to zero is not an error")
    dec_fails(string.rep("1", 1100), "number too long", "over-long literal")
    enc_fails(math.huge, "cannot encode NaN or infinity", "inf")
    enc_fails(-math.huge, "cannot encode NaN or infinity", "-inf")
    enc_fails(0/0, "cannot encode NaN or infinity", "nan")
    enc_fails({x = 0/0}, "cannot encode NaN or infinity", "nan inside a table")
  end)

  it("surrogate pairs and \\u escapes decode to UTF-8", function()
    eq(json.decode([["\ud83d\ude00"]]), "\xF0\x9F\x98\x80", "surrogate pair to 4-byte UTF-8")
    eq(json.decode([["\uD83D\uDE00"]]), "\xF0\x9F\x98\x80", "upper-case hex")
    eq(json.decode([["\u00e9"]]), "\xC3\xA9", "2-byte")
    eq(json.decode([["\u20ac"]]), "\xE2\x82\xAC", "3-byte")
    eq(json.decode([["\u0041\u0000B"]]), "A\0B", "\\u0000 gives a NUL byte")
    eq(json.decode([["\udbff\udfff"]]), "\xF4\x8F\xBF\xBF", "U+10FFFF")
    eq(json.decode([["a\ud83d\ude00b"]]), "a\xF0\x9F\x98\x80b", "pair in the middle")
    dec_fails([["\ud83d"]], "invalid JSON at byte 1: lone surrogate in \\u escape", "lone high surrogate at end")
    dec_fails([["\ud83dx"]], "lone surrogate", "high surrogate then a letter")
    dec_fails([["\ud83d\u0041"]], "lone surrogate", "high surrogate then a non-surrogate")
    dec_fails([["\ud83d\ud83d"]], "lone surrogate", "two high surrogates")
    dec_fails([["\ude00"]], "lone surrogate", "lone low surrogate")
    dec_fails([["\u12"]], "invalid \\u escape", "short \\u escape")
    dec_fails([["\u12G4"]], "invalid \\u escape", "non-hex \\u escape")
    dec_fails([["\x41"]], "invalid escape in string", "\\x is not JSON")
    dec_fails([["\ud83d\ude0"]], "lone surrogate", "truncated low half")
  end)

  it("all escapes decode", function()
    eq(json.decode([["\"\\\/\b\f\n\r\t"]]), "\"\\/\b\f\n\r\t", "every short escape")
    eq(json.decode([["a\"b"]]), "a\"b", "escaped quote inside")
    eq(json.decode([["\\"]]), "\\", "escaped backslash at the end")
    eq(json.decode([["caf\u00e9 \u00e9"]]), "caf\xC3\xA9 \xC3\xA9", "escape after raw text")
    eq(json.decode("\"\\u00e9\xC3\xA9\""), "\xC3\xA9\xC3\xA9", "raw UTF-8 after an escape")
    dec_fails([["abc\"]], "unterminated string", "escaped closing quote")
    dec_fails([["abc]], "invalid JSON at byte 0: unterminated string", "no closing quote")
    dec_fails("\"abc\\", "unterminated string", "backslash at the end of input")
  end)

  it("invalid UTF-8 in decode input is rejected", function()
    dec_fails("\"\xff\"", "invalid JSON at byte 1: invalid UTF-8 in string", "0xff")
    dec_fails("\"ab\x80\"", "invalid JSON at byte 3: invalid UTF-8 in string", "stray continuation")
    dec_fails("\"\xc3\"", "invalid UTF-8", "truncated 2-byte")
    dec_fails("\"\xe2\x82\"", "invalid UTF-8", "truncated 3-byte")
    dec_fails("\"\xc0\xaf\"", "invalid UTF-8", "overlong 2-byte slash")
    dec_fails("\"\xc1\xbf\"", "invalid UTF-8", "overlong C1")
    dec_fails("\"\xe0\x80\xaf\"", "invalid UTF-8", "overlong 3-byte")
    dec_fails("\"\xf0\x80\x80\xaf\"", "invalid UTF-8", "overlong 4-byte")
    dec_fails("\"\xed\xa0\x80\"", "invalid UTF-8", "raw surrogate D800")
    dec_fails("\"\xed\xbf\xbf\"", "invalid UTF-8", "raw surrogate DFFF")
    dec_fails("\"\xf4\x90\x80\x80\"", "invalid UTF-8", "beyond U+10FFFF")
    dec_fails("\"\xf5\x80\x80\x80\"", "invalid UTF-8", "F5 lead")
    dec_fails("\"\\n\xff\"", "invalid UTF-8", "invalid byte after an escape")
    eq(json.decode("\"\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80\xed\x9f\xbf\xf4\x8f\xbf\xbf\""), "\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80\xed\x9f\xbf\xf4\x8f\xbf\xbf", "valid raw UTF-8 incl. U+D7FF and U+10FFFF")
    dec_fails("\xff", "unexpected character", "invalid byte outside a string")
  end)

  it("invalid UTF-8 in encode input is rejected", function()
    enc_fails("\xff", "invalid UTF-8 in string", "0xff")
    enc_fails("ok\xc0\xaf", "invalid UTF-8 in string", "overlong")
    enc_fails("\xe0\x80\xaf", "invalid UTF-8 in string", "overlong 3-byte")
    enc_fails("\xed\xa0\x80", "invalid UTF-8 in string", "surrogate")
    enc_fails("\xf4\x90\x80\x80", "invalid UTF-8 in string", "beyond U+10FFFF")
    enc_fails("\xe2\x82", "invalid UTF-8 in string", "truncated")
    enc_fails({["\xff"] = 1}, "invalid UTF-8 in string", "invalid key")
    enc_fails({"a", "\x80"}, "invalid UTF-8 in string", "invalid element")
    eq(json.encode("caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80"), "\"caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80\"", "valid UTF-8 is written raw")
  end)

  it("string escapes on output", function()
    eq(json.encode("\n"), [["\n"]], "newline")
    eq(json.encode("\1"), [["\u0001"]], "\\u0001")
    eq(json.encode("\0"), [["\u0000"]], "NUL")
    eq(json.encode("\31"), [["\u001f"]], "0x1f")
    eq(json.encode("\127"), "\"\127\"", "DEL is not escaped")
    eq(json.encode("a\"b\\c/d"), [["a\"b\\c/d"]], "quote and backslash escaped, slash not")
    eq(json.encode("\b\f\n\r\t"), [["\b\f\n\r\t"]], "short escapes")
    eq(json.encode(""), [[""]], "empty string")
    eq(json.encode("plain"), [["plain"]], "plain string")
    eq(json.encode("\xe2\x80\xa8"), "\"\xe2\x80\xa8\"", "U+2028 is written raw")
    local s = "x\0y\n\"\\\1\31 \xc3\xa9"
    eq(json.decode(json.encode(s)), s, "escapes round trip")
  end)

  it("control characters raw in a string are an error", function()
    dec_fails("\"a\nb\"", "invalid JSON at byte 2: control character in string", "raw newline")
    dec_fails("\"\1\"", "control character in string", "raw 0x01")
    dec_fails("\"\t\"", "control character in string", "raw tab")
    dec_fails("\"\0\"", "control character in string", "raw NUL")
    dec_fails("\"\\n\31\"", "control character in string", "raw control after an escape")
  end)

  it("deep nesting is an error, not a crash", function()
    dec_fails(string.rep("[", 600) .. string.rep("]", 600), "invalid JSON at byte 512: nesting deeper than 512", "600 arrays")
    dec_fails(string.rep("{\"a\":", 600) .. "1" .. string.rep("}", 600), "nesting deeper than 512", "600 objects")
    dec_fails(string.rep("[", 100000), "nesting deeper than 512", "100000 open brackets")
    local v = json.decode(string.rep("[", 100) .. "7" .. string.rep("]", 100))
    for _ = 1, 99 do v = v[1] end
    eq(v[1], 7, "100 levels decode")
    ok(json.decode(string.rep("[", 512) .. string.rep("]", 512)) ~= nil, "exactly 512 levels decode")
    dec_fails(string.rep("[", 513) .. string.rep("]", 513), "nesting deeper than 512", "513 levels")
    local t = {}
    local cur = t
    for _ = 1, 127 do cur[1] = {}; cur = cur[1] end
    eq(json.encode(t), string.rep("[", 127) .. "{}" .. string.rep("]", 127), "128 levels encode")
    cur[1] = {}
    enc_fails(t, "cycle or nesting deeper than 128", "129 levels")
    local a = json.decode(string.rep("[", 100) .. string.rep("]", 100))
    eq(json.encode(a), string.rep("[", 100) .. string.rep("]", 100), "100 levels round trip")
  end)

  it("cycles are an error", function()
    local t = {}
    t.self = t
    enc_fails(t, "cycle or nesting deeper than 128", "self cycle")
    local a, b = {}, {}
    a[1] = b
    b[1] = a
    enc_fails(a, "cycle or nesting deeper than 128", "two-table cycle")
    local shared = {1}
    eq(json.encode({x = shared, y = shared}), [[{"x":[1],"y":[1]}]], "shared (acyclic) subtable is fine")
  end)

  it("empty arrays and objects round trip", function()
    eq(json.encode(json.decode("[]")), "[]", "[] stays []")
    eq(json.encode(json.decode("{}")), "{}", "{} stays {}")
    eq(json.encode(json.decode(" [ ] ")), "[]", "[ ] with spaces")
    eq(json.encode(json.decode("{\"a\":[],\"b\":{}}")), [[{"a":[],"b":{}}]], "nested empties")
    eq(json.encode({}), "{}", "empty plain table is an object")
    eq(json.encode(json.array()), "[]", "json.array()")
    eq(json.encode(json.array({})), "[]", "json.array({})")
    eq(json.encode(json.array({1, 2})), "[1,2]", "json.array with elements")
    eq(json.is_array(json.decode("[]")), true, "decoded array is marked")
    eq(json.is_array(json.decode("[1]")), true, "decoded non-empty array is marked")
    eq(json.is_array(json.decode("{}")), false, "decoded object is not marked")
    eq(json.is_array({}), false, "plain table is not marked")
    eq(json.is_array("x"), false, "non-table is not an array")
    eq(json.is_array(nil), false, "nil is not an array")
    local t = {}
    eq(json.array(t), t, "array returns its argument")
    eq(getmetatable(json.decode("[]")), getmetatable(json.array()), "one shared metatable")
    eq(json.encode({1, 2, 3}), "[1,2,3]", "1..n plain table is an array")
    eq(json.encode({[2] = "b", [1] = "a"}), '["a","b"]', "1..n in any insertion order")
  end)

  it("json.null inside arrays and objects", function()
    eq(json.null, json.null, "null is stable")
    eq(type(json.null), "userdata", "null is a light userdata")
    local a = json.decode("[1,null,2]")
    eq(#a, 3, "null keeps its slot")
    eq(a[2], json.null, "null element")
    eq(json.encode(a), "[1,null,2]", "null element re-encodes")
    local o = json.decode([[{"a":null,"b":1}]])
    eq(o.a, json.null, "null member is kept")
    eq(json.encode(o), [[{"a":null,"b":1}]], "null member re-encodes")
    eq(json.decode("null"), json.null, "top-level null")
    eq(json.encode(json.null), "null", "encode null")
    eq(json.encode(nil), "null", "encode nil")
    eq(json.encode({a = json.null}), [[{"a":null}]], "null in a Lua-built object")
    eq(json.encode({json.null, 1}), "[null,1]", "null in a Lua-built array")
    eq(json.encode(json.array({[1] = 1, [2] = json.null, [3] = 3})), "[1,null,3]", "array-marked with null")
    eq(json.encode(true), "true", "true")
    eq(json.encode(false), "false", "false")
    eq(json.decode("true"), true, "decode true")
    eq(json.decode("false"), false, "decode false")
  end)

  it("object keys are sorted byte-wise", function()
    eq(json.encode({b = 1, a = 2, c = {z = 1, y = 2}, A = 3}), [[{"A":3,"a":2,"b":1,"c":{"y":2,"z":1}}]], "sorted, nested too")
    eq(json.encode({ab = 1, a = 2, [""] = 3, b = 4}), [[{"":3,"a":2,"ab":1,"b":4}]], "prefix sorts first")
    eq(json.encode({["\xc3\xa9"] = 1, z = 2, ["a\0b"] = 3, a = 4}), "{\"a\":4,\"a\\u0000b\":3,\"z\":2,\"\xc3\xa9\":1}", "bytes compare unsigned, NUL in a key")
    local big = {}
    for i = 1, 300 do local k = string.format("k%03d", (i * 7919) % 300); big[k] = i end
    local s = json.encode(big)
    local last = ""
    local n = 0
    for k in s:gmatch("\"(k%d%d%d)\"") do ok(k > last, "ascending " .. k); last = k; n = n + 1 end
    eq(n, 300, "all 300 keys present")
    local long1, long2 = string.rep("x", 100) .. "b", string.rep("x", 100) .. "a"
    eq(json.encode({[long1] = 1, [long2] = 2}), "{\"" .. long2 .. "\":2,\"" .. long1 .. "\":1}", "long keys sorted and looked up")
  end)

  it("objects of every size around the encoder's limits keep each value with its key", function()
    -- 16 keys are sorted in place, more by qsort; the first 32 values are encoded from the
    -- stack, later ones looked up by key: the expected text is built independently here.
    for _, n in ipairs({1, 2, 15, 16, 17, 31, 32, 33, 40, 100}) do
      local t, keys = {}, {}
      for i = 1, n do
        local k = string.format("k%03d", (i * 37) % 1000)
        t[k] = (i % 3 == 0) and {inner = i, list = json.array({i, -i})} or ("v" .. i)
        keys[#keys + 1] = k
      end
      table.sort(keys)
      local parts = {}
      for _, k in ipairs(keys) do
        local v = t[k]
        local ev = type(v) == "table" and string.format('{"inner":%d,"list":[%d,%d]}', v.inner, v.inner, -v.inner)
          or ('"' .. v .. '"')
        parts[#parts + 1] = '"' .. k .. '":' .. ev
      end
      eq(json.encode(t), "{" .. table.concat(parts, ",") .. "}", n .. " keys")
      eq(json.encode({outer = t, z = n}), '{"outer":{' .. table.concat(parts, ",") .. '},"z":' .. n .. '}', n .. " keys nested")
    end
  end)

  it("objects of every size around the decoder's staging decode every member, the last duplicate winning", function()
    -- The first 16 members wait on the stack until the object's size is known; a 16th makes the
    -- table and later ones go straight in. Duplicates on both sides of that point, and nested
    -- objects that stage their own members meanwhile.
    for _, n in ipairs({0, 1, 2, 3, 15, 16, 17, 31, 32, 33, 40}) do
      local parts = {}
      for i = 1, n do
        local v = (i % 4 == 0) and string.format('{"in":%d,"deep":{"x":%d}}', i, -i) or tostring(i)
        parts[#parts + 1] = string.format('"k%d":%s', i, v)
      end
      if n >= 2 then parts[#parts + 1] = '"k1":"again"' end -- k1 staged first, overwritten later
      if n >= 17 then parts[#parts + 1] = '"k17":"late"' end -- a member set after the table was made
      local t = json.decode("{" .. table.concat(parts, ",") .. "}")
      local count = 0
      for _ in pairs(t) do count = count + 1 end
      eq(count, n, n .. " members: count")
      for i = 1, n do
        local v = t["k" .. i]
        if i == 1 and n >= 2 then
          eq(v, "again", n .. " members: k1")
        elseif i == 17 then
          eq(v, "late", n .. " members: k17")
        elseif i % 4 == 0 then
          eq(v["in"], i, n .. " members: k" .. i .. ".in")
          eq(v.deep.x, -i, n .. " members: k" .. i .. ".deep.x")
        else
          eq(v, i, n .. " members: k" .. i)
        end
      end
    end
    local v = json.decode(string.rep('{"a":1,"b":', 500) .. "2" .. string.rep("}", 500))
    for _ = 1, 499 do eq(v.a, 1, "500 nested objects: a"); v = v.b end
    eq(v.b, 2, "500 nested objects: the innermost")
  end)

  it("integers are written exactly, floats keep their point", function()
    eq(json.encode({0, -1, 7, -10, 1000000, -9876543210}), "[0,-1,7,-10,1000000,-9876543210]", "integers")
    eq(json.encode({math.maxinteger, math.mininteger, math.mininteger + 1}),
       "[9223372036854775807,-9223372036854775808,-9223372036854775807]", "int64 limits in an array")
    eq(json.encode({3.0, -0.5, 1e100}), "[3.0,-0.5,1e+100]", "floats")
  end)

  it("plain and escaped strings side by side", function()
    eq(json.encode({a = "plain ~!#$%&'()*+,-./:;<=>?@[]^_`{|} \x7f", b = 'q"b\\s', c = "\t\1",
                    d = "caf\xc3\xa9", e = ""}),
       '{"a":"plain ~!#$%&\'()*+,-./:;<=>?@[]^_`{|} \x7f","b":"q\\"b\\\\s","c":"\\t\\u0001","d":"caf\xc3\xa9","e":""}',
       "each kind")
  end)

  it("a table with another metatable is an object, an array-marked one an array", function()
    local other = setmetatable({x = 1}, {__index = function() return 0 end})
    eq(json.encode({a = other, b = json.array({1}), c = json.array()}), '{"a":{"x":1},"b":[1],"c":[]}', "mixed metatables")
    eq(json.encode(setmetatable({}, {})), "{}", "empty with a metatable")
  end)

  it("tables with non-string keys are rejected unless they are 1..n", function()
    enc_fails({1, 2, x = 3}, "table key must be a string", "mixed integer and string keys")
    enc_fails({[1] = 1, [3] = 3}, "table key must be a string", "holes")
    enc_fails({[0] = 1}, "table key must be a string", "key 0")
    enc_fails({[-1] = 1, [1] = 1}, "table key must be a string", "negative key")
    enc_fails({[1.5] = 1}, "table key must be a string", "float key")
    enc_fails({[true] = 1}, "table key must be a string", "boolean key")
    enc_fails({x = {[2] = 1}}, "table key must be a string", "nested")
    eq(json.encode({[1.0] = "a"}), '["a"]', "float key 1.0 is the integer 1")
  end)

  it("other unencodable values raise", function()
    enc_fails(print, "cannot encode a function", "function")
    enc_fails({f = print}, "cannot encode a function", "function in a table")
    enc_fails(coroutine.create(function() end), "cannot encode a thread", "thread")
    enc_fails(io.stdout, "cannot encode a userdata", "full userdata")
    local okk = pcall(json.encode)
    eq(okk, false, "encode() without argument raises")
  end)

  it("trailing garbage and structural errors", function()
    dec_fails("1 x", "invalid JSON at byte 2: unexpected data after the value", "1 x")
    dec_fails("[] []", "unexpected data after the value", "two values")
    dec_fails("{}x", "unexpected data after the value", "{}x")
    dec_fails("nullx", "unexpected data after the value", "nullx")
    dec_fails("truee", "unexpected data after the value", "truee")
    dec_fails("1\0", "unexpected data after the value", "trailing NUL")
    eq(json.encode(json.decode(" \t\r\n[1] \n")), "[1]", "surrounding whitespace")
    eq(json.decode(" \t\r\n 5 \n"), 5, "whitespace around a number")
    dec_fails("", "invalid JSON at byte 0: unexpected end of input", "empty input")
    dec_fails("   ", "invalid JSON at byte 3: unexpected end of input", "only whitespace")
    dec_fails("[1,]", "invalid JSON at byte 3: unexpected character", "trailing comma in array")
    dec_fails("{\"a\":1,}", "invalid JSON at byte 7: expected a string key", "trailing comma in object")
    dec_fails("{a:1}", "expected a string key", "unquoted key")
    dec_fails("{'a':1}", "expected a string key", "single-quoted key")
    dec_fails("{\"a\" 1}", "expected ':'", "missing colon")
    dec_fails("{\"a\":1 \"b\":2}", "expected ',' or '}'", "missing comma in object")
    dec_fails("[1 2]", "invalid JSON at byte 3: expected ',' or ']'", "missing comma in array")
    dec_fails("[1", "unexpected end of input", "unclosed array")
    dec_fails("{\"a\":1", "unexpected end of input", "unclosed object")
    dec_fails("{\"a\"", "unexpected end of input", "key without value")
    dec_fails("[", "unexpected end of input", "lone bracket")
    dec_fails("tru", "invalid JSON at byte 0: invalid literal", "truncated true")
    dec_fails("nul", "invalid literal", "truncated null")
    dec_fails("True", "unexpected character", "capitalised literal")
    dec_fails("undefined", "unexpected character", "undefined")
    dec_fails("'a'", "unexpected character", "single-quoted string")
    dec_fails("\xef\xbb\xbf[]", "unexpected character", "BOM")
    dec_fails("[1]\v", "unexpected data after the value", "vertical tab is not whitespace")
    eq(json.decode([[{"a":1,"a":2}]]).a, 2, "duplicate key: last wins")
    local okk = pcall(json.decode, 5)
    eq(okk, false, "decode of a number raises")
    okk = pcall(json.decode, nil)
    eq(okk, false, "decode of nil raises")
    okk = pcall(json.decode, {})
    eq(okk, false, "decode of a table raises")
  end)

  it("every invalid number form is rejected", function()
    dec_fails("01", "invalid JSON at byte 1: leading zero in number", "01")
    dec_fails("-01", "leading zero in number", "-01")
    dec_fails("00", "leading zero in number", "00")
    dec_fails("+1", "invalid JSON at byte 0: unexpected character", "+1")
    dec_fails(".5", "unexpected character", ".5")
    dec_fails("1.", "invalid JSON at byte 2: expected a digit after the decimal point", "1.")
    dec_fails("1.e5", "expected a digit after the decimal point", "1.e5")
    dec_fails("-", "invalid JSON at byte 1: expected a digit", "-")
    dec_fails("-.5", "expected a digit", "-.5")
    dec_fails("--1", "expected a digit", "--1")
    dec_fails("- 1", "expected a digit", "- 1")
    dec_fails("1e", "expected a digit in the exponent", "1e")
    dec_fails("1e+", "expected a digit in the exponent", "1e+")
    dec_fails("1E-", "expected a digit in the exponent", "1E-")
    dec_fails("0x10", "unexpected data after the value", "hex")
    dec_fails("Infinity", "unexpected character", "Infinity")
    dec_fails("-Infinity", "expected a digit", "-Infinity")
    dec_fails("NaN", "unexpected character", "NaN")
    dec_fails("[01]", "leading zero in number", "leading zero inside an array")
    dec_fails("1.5.5", "unexpected data after the value", "two points")
    eq(json.decode("0.5"), 0.5, "0.5 is fine")
    eq(json.decode("-0.0e0"), -0.0, "-0.0e0 is fine")
    eq(json.decode("0e0"), 0.0, "0e0 is a float")
    eq(json.decode("10"), 10, "10 is fine")
  end)

  it("a large document round trips exactly", function()
    local doc = json.array()
    for i = 1, 5000 do
      doc[i] = {
        id = i, name = "item " .. i .. " \xc3\xa9\n\"q\"", price = i + 0.25, big = i * 1000000007,
        tags = json.array({"a", "b", tostring(i)}), empty = json.array(), obj = {}, none = json.null,
        nested = {deep = {deeper = {i, i * 2, {flag = (i % 2 == 0)}}}},
      }
    end
    local text = json.encode(doc)
    ok(#text > 500000, "document is large: " .. #text)
    local back = json.decode(text)
    eq(#back, 5000, "all elements back")
    eq(back[4321].id, 4321, "integer field")
    eq(back[4321].price, 4321.25, "float field")
    eq(back[4321].big, 4321 * 1000000007, "large integer field")
    eq(back[4321].name, "item 4321 \xc3\xa9\n\"q\"", "string field")
    eq(back[4321].none, json.null, "null field")
    eq(back[4321].nested.deep.deeper[3].flag, false, "deep field")
    eq(back[4320].nested.deep.deeper[3].flag, true, "deep field true")
    eq(json.encode(back), text, "re-encoding gives the same bytes")
    local long = string.rep("\xe2\x82\xac\\\"", 100000)
    eq(json.decode(json.encode(long)), long, "long string with escapes round trips")
  end)
end)
