-- engine.crypto from Lua: the binding over engine/crypto.c and engine/keys.c (argument
-- checks, results, the nil-and-message failures) and the signed tokens built in
-- engine/lua_crypto.c, under known keys (engine.testing.use_key) and the test clock. The C
-- primitives and the key file are tested in tests/c/test_crypto.c.
local crypto = require "engine.crypto"
local spec = require "engine.spec"
local testing = require "engine.testing"
local hex = crypto.to_hex

-- The two master keys of the cases: KEY_A is the bytes 1..32, KEY_B is 32 times 0x42.
local KEY_A, KEY_B
do
  local bytes = {}
  for i = 1, 32 do bytes[i] = string.char(i) end
  KEY_A = table.concat(bytes)
  KEY_B = string.rep("\x42", 32)
end

local function use_key(n) testing.use_key(n == 1 and KEY_A or KEY_B) end
local function token_key() return (testing.derived_keys()) end
local function seal_key() return select(2, testing.derived_keys()) end
local freeze, advance, reset_clock = spec.clock.freeze, spec.clock.advance, spec.clock.reset

-- Assertion helpers; a failure names the spec line it comes from.
local function where()
  return "line " .. debug.getinfo(3, "l").currentline .. ": "
end

local function check(cond, msg)
  if not cond then assert.is_truthy(cond, where() .. msg) end
end

-- eq(got, want, label): raw equality, printing both on failure.
local function eq(got, want, label)
  if not rawequal(got, want) then
    assert.is_true(false, where() .. label .. ": got " .. tostring(got) .. ", want " .. tostring(want))
  end
end

describe("engine.crypto", function()
  -- Each case leaves the process as `apiengine test` set it up: the real clock, a random key.
  after_each(function()
    reset_clock()
    testing.use_key(crypto.random_bytes(32))
  end)

  it("raises in seal, open, verify and sign while no server key is loaded; unkeyed functions still work", function()
    testing.use_key(nil) -- the state before the server key is loaded
    for _, name in ipairs({'seal', 'open', 'verify'}) do
      local ok, err = pcall(crypto[name], 'x')
      check(not ok and tostring(err):find('server key is not loaded', 1, true), name)
    end
    check(not pcall(crypto.sign, {}, 60), 'sign raises')
    eq(#crypto.sha256('x'), 32, 'unkeyed functions work without a key')
  end)

  it("sha256 and hmac_sha256 match known answers and raise on wrong argument types", function()
    eq(hex(crypto.sha256('abc')), 'ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad', 'sha256 abc')
    eq(hex(crypto.sha256('')), 'e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855', 'sha256 empty')
    eq(#crypto.sha256('abc'), 32, 'sha256 is raw')
    eq(hex(crypto.hmac_sha256('Jefe', 'what do ya want for nothing?')), '5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843', 'hmac rfc4231 #2')
    check(not pcall(crypto.sha256, 12), 'sha256 raises on a number')
    check(not pcall(crypto.hmac_sha256, 'k'), 'hmac raises without message')
  end)

  it("random_bytes gives 1..65536 fresh bytes and raises outside that range", function()
    eq(#crypto.random_bytes(1), 1, 'one byte')
    eq(#crypto.random_bytes(65536), 65536, 'max bytes')
    check(crypto.random_bytes(16) ~= crypto.random_bytes(16), 'random differs')
    check(not pcall(crypto.random_bytes, 0), '0 raises')
    check(not pcall(crypto.random_bytes, 65537), '65537 raises')
    check(not pcall(crypto.random_bytes, -1), 'negative raises')
    check(not pcall(crypto.random_bytes, 1.5), 'float raises')
    check(not pcall(crypto.random_bytes), 'missing raises')
  end)

  it("uuid4 gives 1000 distinct lowercase version 4 ids", function()
    local seen = {}
    for i = 1, 1000 do
      local u = crypto.uuid4()
      check(u:match('^%x%x%x%x%x%x%x%x%-%x%x%x%x%-4%x%x%x%-[89ab]%x%x%x%-%x%x%x%x%x%x%x%x%x%x%x%x$') and u == u:lower(), 'uuid shape ' .. u)
      check(not seen[u], 'uuid unique')
      seen[u] = true
    end
  end)

  it("equals compares contents and lengths and raises on non-strings", function()
    eq(crypto.equals('abc', 'abc'), true, 'same')
    eq(crypto.equals('', ''), true, 'both empty')
    eq(crypto.equals('abc', 'abd'), false, 'last byte differs')
    eq(crypto.equals('abc', 'abcd'), false, 'prefix')
    eq(crypto.equals('abc', ''), false, 'empty vs non-empty')
    eq(crypto.equals('a\0b', 'a\0c'), false, 'after NUL')
    check(not pcall(crypto.equals, 'a', nil), 'nil raises')
    check(not pcall(crypto.equals, 1, 1), 'numbers raise')
  end)

  it("hex, base64 and base64url match RFC 4648, round-trip every byte and refuse non-canonical input", function()
    local plain = {'', 'f', 'fo', 'foo', 'foob', 'fooba', 'foobar'}
    local std = {'', 'Zg==', 'Zm8=', 'Zm9v', 'Zm9vYg==', 'Zm9vYmE=', 'Zm9vYmFy'}
    local url = {'', 'Zg', 'Zm8', 'Zm9v', 'Zm9vYg', 'Zm9vYmE', 'Zm9vYmFy'}
    for i = 1, #plain do
      eq(crypto.to_base64(plain[i]), std[i], 'to_base64 ' .. plain[i])
      eq(crypto.from_base64(std[i]), plain[i], 'from_base64 ' .. std[i])
      eq(crypto.to_base64url(plain[i]), url[i], 'to_base64url ' .. plain[i])
      eq(crypto.from_base64url(url[i]), plain[i], 'from_base64url ' .. url[i])
    end
    eq(crypto.to_base64('\251\255'), '+/8=', 'std alphabet')
    eq(crypto.to_base64url('\251\255'), '-_8', 'url alphabet')
    eq(crypto.to_hex('\0\171\255'), '00abff', 'to_hex')
    eq(crypto.from_hex('00ABff'), '\0\171\255', 'from_hex mixed case')
    eq(crypto.to_hex(''), '', 'empty hex')
    eq(crypto.from_hex(''), '', 'empty unhex')
    local all = {} for i = 0, 255 do all[#all + 1] = string.char(i) end
    all = table.concat(all)
    eq(crypto.from_hex(crypto.to_hex(all)), all, 'hex round trip')
    eq(crypto.from_base64(crypto.to_base64(all)), all, 'base64 round trip')
    eq(crypto.from_base64url(crypto.to_base64url(all)), all, 'base64url round trip')
    local function bad(f, s, want)
      local v, err = f(s)
      eq(v, nil, 'rejects ' .. s)
      eq(err, want, 'message for ' .. s)
    end
    bad(crypto.from_hex, 'abc', 'odd hex length')
    bad(crypto.from_hex, 'zz', 'invalid hex character')
    bad(crypto.from_hex, ' 00', 'odd hex length')
    bad(crypto.from_base64, 'Zg=', 'invalid base64 length')
    bad(crypto.from_base64, 'Zg', 'invalid base64 length')
    bad(crypto.from_base64, 'Z===', 'invalid base64 character')
    bad(crypto.from_base64, 'Zm=v', 'invalid base64 character')
    bad(crypto.from_base64, 'Zm9v\n', 'invalid base64 length')
    bad(crypto.from_base64, 'Zh==', 'non-canonical base64 trailing bits')
    bad(crypto.from_base64, '-_8=', 'invalid base64 character')
    bad(crypto.from_base64url, 'Zg==', 'invalid base64url character')
    bad(crypto.from_base64url, 'Zg=', 'invalid base64url character')
    bad(crypto.from_base64url, '+/8', 'invalid base64url character')
    bad(crypto.from_base64url, 'Zm9vY', 'invalid base64url length')
    bad(crypto.from_base64url, 'Zh', 'non-canonical base64 trailing bits')
    for _, f in ipairs({crypto.from_hex, crypto.from_base64, crypto.from_base64url,
                        crypto.to_hex, crypto.to_base64, crypto.to_base64url}) do
      check(not pcall(f, 12), 'number raises')
      check(not pcall(f, nil), 'nil raises')
      check(not pcall(f, {}), 'table raises')
    end
  end)

  it("seal and open round-trip, bind the aad and refuse any changed byte, another key or version", function()
    use_key(1)
    local FAIL = 'cannot open sealed data'
    for _, pt in ipairs({'', 'x', 'hello, world', string.rep('\0\255', 1000)}) do
      local s = crypto.seal(pt)
      eq(#s, 1 + 12 + #pt + 16, 'sealed length')
      eq(s:byte(1), 1, 'version byte')
      eq(crypto.open(s), pt, 'round trip ' .. #pt)
      eq(crypto.open(s, ''), pt, 'empty aad is no aad')
      if #pt >= 8 then check(not s:find(pt, 1, true), 'ciphertext hides plaintext') end
    end
    local s1, s2 = crypto.seal('same'), crypto.seal('same')
    check(s1 ~= s2, 'two seals differ')
    check(s1:sub(2, 13) ~= s2:sub(2, 13), 'nonces differ')
    local s = crypto.seal('secret', 'user:42')
    eq(crypto.open(s, 'user:42'), 'secret', 'with aad')
    local v, err = crypto.open(s, 'user:43')
    eq(v, nil, 'wrong aad') eq(err, FAIL, 'wrong aad message')
    v, err = crypto.open(s)
    eq(v, nil, 'missing aad') eq(err, FAIL, 'missing aad message')
    v = crypto.open(crypto.seal('secret'), 'user:42')
    eq(v, nil, 'unexpected aad')
    local failures = 0
    for i = 1, #s do
      for _, bit in ipairs({1, 128}) do
        local b = s:byte(i) ~ bit
        local t = s:sub(1, i - 1) .. string.char(b) .. s:sub(i + 1)
        local r, e = crypto.open(t, 'user:42')
        if r == nil and e == FAIL then failures = failures + 1 end
      end
    end
    eq(failures, 2 * #s, 'every flipped bit fails')
    eq(crypto.open(s:sub(1, -2), 'user:42'), nil, 'truncated')
    eq(crypto.open(s .. 'x', 'user:42'), nil, 'extended')
    eq(crypto.open('', 'user:42'), nil, 'empty')
    eq(crypto.open(string.rep('\1', 28)), nil, 'shorter than overhead')
    eq(crypto.open('\2' .. s:sub(2), 'user:42'), nil, 'version 2')
    use_key(2)
    v, err = crypto.open(s, 'user:42')
    eq(v, nil, 'wrong key') eq(err, FAIL, 'wrong key message')
    use_key(1)
    eq(crypto.open(s, 'user:42'), 'secret', 'right key again')
    check(not pcall(crypto.seal, 1), 'seal raises on a number')
    check(not pcall(crypto.seal, 'x', 1), 'seal raises on a number aad')
    check(not pcall(crypto.open, nil), 'open raises on nil')
  end)

  it("the token and seal keys are HMAC-SHA256(master, label)", function()
    use_key(1)
    local master = {} for i = 1, 32 do master[i] = string.char(i) end
    master = table.concat(master)
    eq(token_key(), crypto.hmac_sha256(master, 'apiengine token v1'), 'token key')
    eq(seal_key(), crypto.hmac_sha256(master, 'apiengine seal v1'), 'seal key')
  end)

  it("sign and verify: shape, tag, expiry, tampering, garbage, forged payloads and limits", function()
    use_key(1)
    local T0 = 1718445600000
    freeze(T0)
    local tok = crypto.sign({sub = 'user-1', role = 'admin', n = 7}, 60)
    local p64, t64 = tok:match('^v1%.([%w_-]+)%.([%w_-]+)$')
    check(p64 and t64, 'token shape')
    eq(#t64, 43, 'tag length')
    eq(crypto.from_base64url(t64), crypto.hmac_sha256(token_key(), 'v1.' .. p64), 'tag definition')
    local json = crypto.from_base64url(p64)
    check(json:find('"exp":' .. (T0 + 60000), 1, true), 'exp in JSON: ' .. json)
    check(json:find('"sub":"user-1"', 1, true), 'sub in JSON')
    local p, err = crypto.verify(tok)
    check(type(p) == 'table', 'verifies: ' .. tostring(err))
    eq(p.sub, 'user-1', 'sub') eq(p.role, 'admin', 'role') eq(p.n, 7, 'n')
    eq(p.exp, T0 + 60000, 'exp') eq(math.type(p.exp), 'integer', 'exp is an integer')
    local src = {exp = 1, x = true}
    local tok2 = crypto.sign(src, 1)
    eq(src.exp, 1, 'caller table untouched')
    eq(crypto.verify(tok2).exp, T0 + 1000, 'exp overridden')
    advance(59999)
    check(crypto.verify(tok), 'valid 1 ms before expiry')
    advance(1)
    local v, e = crypto.verify(tok)
    eq(v, nil, 'expired at exp') eq(e, 'expired', 'expired reason')
    freeze(T0)
    local function reason(t) local r, why = crypto.verify(t) return r == nil and why or 'ok' end
    local other = crypto.sign({sub = 'user-2', role = 'admin', n = 7}, 60)
    local o64 = other:match('^v1%.([%w_-]+)%.')
    eq(reason('v1.' .. o64 .. '.' .. t64), 'bad_signature', 'swapped payload')
    local flipped = (t64:sub(1, 1) == 'A' and 'B' or 'A') .. t64:sub(2)
    eq(reason('v1.' .. p64 .. '.' .. flipped), 'bad_signature', 'tampered tag')
    local pflip = (p64:sub(1, 1) == 'e' and 'f' or 'e') .. p64:sub(2)
    eq(reason('v1.' .. pflip .. '.' .. t64), 'bad_signature', 'tampered payload')
    eq(reason('v1.' .. crypto.to_base64url('not json') .. '.' .. t64), 'bad_signature', 'signature checked before JSON')
    eq(reason(tok:sub(1, -2)), 'malformed', 'truncated tag')
    eq(reason(tok .. 'A'), 'malformed', 'extended tag')
    eq(reason(tok:sub(1, #tok - 44)), 'malformed', 'no tag')
    use_key(2)
    eq(reason(tok), 'bad_signature', 'foreign key')
    local foreign = crypto.sign({sub = 'x'}, 60)
    use_key(1)
    eq(reason(foreign), 'bad_signature', 'token from another key')
    eq(reason('v1.' .. p64 .. '.' .. t64), 'ok', 'reassembled original')
    for _, g in ipairs({'', 'v1', 'v1.', 'v1..', 'v2.x.y', 'v1.x.y', 'v1..' .. t64,
        'V1.' .. p64 .. '.' .. t64, 'v2.' .. p64 .. '.' .. t64, 'v1.' .. p64 .. '.' .. t64 .. '.',
        'v1.' .. p64 .. '.x.' .. t64, 'v1.' .. p64 .. '=.' .. t64, 'v1.' .. p64 .. '.' .. t64 .. '=',
        'v1.' .. string.rep('A', 4997), string.rep('v1.', 2000), '\0'}) do
      eq(reason(g), 'malformed', 'garbage ' .. g:sub(1, 40))
    end
    local function forge(json)
      local body = 'v1.' .. crypto.to_base64url(json)
      return body .. '.' .. crypto.to_base64url(crypto.hmac_sha256(token_key(), body))
    end
    eq(reason(forge('{"exp":' .. (T0 + 1) .. '}')), 'ok', 'forged helper works')
    eq(reason(forge('{"exp":' .. T0 .. '}')), 'expired', 'exp == now is expired')
    for _, j in ipairs({'', 'not json', '{', '[1,2]', '"s"', '42', 'null', '{}',
        '{"exp":"9999999999999"}', '{"exp":1.5e13}', '{"exp":null}', '{"exp":true}',
        '{"ex":9999999999999}'}) do
      eq(reason(forge(j)), 'malformed', 'payload ' .. j)
    end
    local big = crypto.sign({d = string.rep('a', 2900)}, 60)
    check(#big <= 4096, 'big token within limit') eq(reason(big), 'ok', 'big token')
    check(not pcall(crypto.sign, {d = string.rep('a', 3100)}, 60), 'oversized raises')
    check(not pcall(crypto.sign, {}, 0), 'ttl 0 raises')
    check(not pcall(crypto.sign, {}, 1.5), 'fractional ttl raises')
    check(not pcall(crypto.sign, {}, 10 * 366 * 86400 + 1), 'huge ttl raises')
    check(not pcall(crypto.sign, 'x', 60), 'string payload raises')
    check(not pcall(crypto.sign, {f = print}, 60), 'unencodable payload raises')
    check(not pcall(crypto.verify, 42), 'verify raises on a number')
    reset_clock()
    local live = crypto.sign({}, 60)
    eq(reason(live), 'ok', 'real clock')
  end)

  it("verify answers a token it verified before exactly as the first time: fresh claims, expiry, key changes", function()
    -- verify keeps the claims of tokens it verified (lua_crypto.c); none of that may show.
    use_key(1)
    local T0 = 1718445600000
    freeze(T0)
    local tok = crypto.sign({sub = 'user-1', typ = 'customer', n = 7, f = 1.5, ok = true}, 60)
    local a, b = crypto.verify(tok), crypto.verify(tok)
    check(type(a) == 'table' and type(b) == 'table' and not rawequal(a, b), 'two calls, two tables')
    for _, claims in ipairs({a, b}) do
      eq(claims.sub, 'user-1', 'sub') eq(claims.typ, 'customer', 'typ') eq(claims.n, 7, 'n')
      eq(math.type(claims.n), 'integer', 'n stays an integer') eq(claims.f, 1.5, 'f')
      eq(math.type(claims.f), 'float', 'f stays a float') eq(claims.ok, true, 'ok') eq(claims.exp, T0 + 60000, 'exp')
    end
    local count = 0
    for _ in pairs(b) do count = count + 1 end
    eq(count, 6, 'the same keys and no more')
    for _, claims in ipairs({a, b}) do -- the first answer (decoded) and one served again
      claims.sub, claims.extra, claims.exp = 'someone-else', 'x', T0 + 10 ^ 9
    end
    local c = crypto.verify(tok)
    check(not rawequal(c, a) and not rawequal(c, b), 'a third table')
    eq(c.sub, 'user-1', 'a changed result does not change the next')
    eq(c.extra, nil, 'nor adds to it') eq(c.exp, T0 + 60000, 'nor moves its expiry')
    -- The expiry is the token's, checked on every call.
    advance(60000)
    local v, why = crypto.verify(tok)
    eq(v, nil, 'expired once kept') eq(why, 'expired', 'expired reason')
    freeze(T0)
    check(crypto.verify(tok), 'valid again when the clock goes back')
    -- Under other keys a kept token is checked again, and refused; back under its key it passes.
    use_key(2)
    v, why = crypto.verify(tok)
    eq(v, nil, 'refused under another key') eq(why, 'bad_signature', 'reason under another key')
    use_key(1)
    eq(crypto.verify(tok).sub, 'user-1', 'accepted under its key again')
    -- A nested payload is not shared between answers.
    local nested = crypto.sign({sub = 'n', meta = {k = 'v'}}, 60)
    local n1, n2 = crypto.verify(nested), crypto.verify(nested)
    check(not rawequal(n1.meta, n2.meta), 'nested tables are fresh')
    n1.meta.k = 'changed'
    eq(crypto.verify(nested).meta.k, 'v', 'a nested change does not show')
    -- More tokens than are kept: every one still verifies to its own claims, twice.
    local many = {}
    for i = 1, 600 do many[i] = crypto.sign({sub = 'user-' .. i}, 60) end
    for _ = 1, 2 do
      local wrong = 0
      for i = 1, 600 do
        local claims = crypto.verify(many[i])
        if not claims or claims.sub ~= 'user-' .. i then wrong = wrong + 1 end
      end
      eq(wrong, 0, 'tokens verified to other claims')
    end
  end)
end)
