-- Key rotation against the real binary and the default scripts: data made under key A, a
-- restart with B (A previous), `apiengine rekey` beside the running server, a restart with B
-- alone. Every server runs on loopback, is waited for with a bound, and is stopped.
local spec = require "engine.spec"
local testing = require "engine.testing"
local crypto = require "engine.crypto"
local json = require "engine.json"
local socket = require "socket"

local A = string.rep("a1", 32)
local B = string.rep("b2", 32)

package.path = "tests/spec/?.lua;" .. package.path
local proc = require "support.proc"
local read, write, wait_for, tmpdir = proc.read, proc.write, proc.wait_for, proc.tmpdir

local function base_args(dir)
  return { "--scripts", "scripts", "--schema", "schema", "--db", dir .. "/db.sqlite", "--workers", "1" }
end

-- Runs `apiengine <argv...>` to its end (bounded): exit code, stdout+stderr.
local function run(argv, env)
  local code, out = proc.run({ testing.exe(), table.unpack(argv) }, env, 30000)
  return code, out
end

-- `apiengine serve` on dir's database with the key setting env: the server, or .code when it exited.
local function serve(dir, env)
  local s = proc.serve(base_args(dir), env)
  -- One request on a new connection -> status, decoded JSON body.
  function s.request(method, path, body, token)
    local c = assert(socket.tcp())
    c:settimeout(10)
    assert(c:connect("127.0.0.1", s.port))
    local data = body and json.encode(body) or ""
    local head = method .. " " .. path .. " HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: " .. #data
      .. "\r\nContent-Type: application/json\r\n" .. (token and ("Authorization: " .. token .. "\r\n") or "") .. "\r\n"
    assert(c:send(head .. data))
    local raw, _, partial = c:receive("*a")
    c:close()
    local res = spec.parse_response(raw or partial)
    return res.status, res.json
  end
  return s
end

after_each(function()
  proc.cleanup()
  testing.use_key(crypto.random_bytes(32)) -- as at the start of the run: a key, none of this file's
end)

local P = "/v2/integrations"

-- A customer (and its token) on server s.
local function customer(s, name)
  local st, res = s.request("POST", P .. "/customer", { CustomerName = name, Email = name .. "@example.com" })
  assert.equal(200, st)
  local id, secret = res.Data.CustomerID, res.Data.CustomerSecret
  local st2, tok = s.request("POST", P .. "/token", { Id = id, Secret = secret, Entity = "customer" })
  assert.equal(200, st2)
  return id, secret, tok.Data
end

describe("key rotation", function()
  -- #sqlite: apiengine rekey works on SQLite only (exit 2 on PostgreSQL)
  it("keeps what key A made working under B,A; rekey re-seals it under B; then B alone serves it and refuses A's tokens #sqlite",
    function()
      local dir = tmpdir()
      local db = dir .. "/db.sqlite"

      -- 1. Data under A: a customer, its token, an app with Exotel credentials, a user with a SipSecret.
      local s = serve(dir, { APIENGINE_KEY = A })
      assert.is_nil(s.code, s.read_log())
      local cid, csecret, ta = customer(s, "one")
      local st, app = s.request("POST", P .. "/app", { AppName = "desk", ExotelAccountSid = "acc",
        ExotelApiKey = "ekey", ExotelApiToken = "etok", ExotelDomain = "mumbai", IsActive = true }, ta)
      assert.equal(200, st)
      local aid, asecret = app.Data.AppID, app.Data.AppSecret
      local _, atok = s.request("POST", P .. "/token", { Id = aid, Secret = asecret, Entity = "app" })
      local ata = atok.Data
      local users
      st, users = s.request("POST", P .. "/usermapping", { { AppUserId = "agent-1", AppUsername = "Asha Raman",
        Email = "asha@example.com", ExotelAccountSid = "acc", ExotelUserName = "Asha Raman", VirtualNumber = "+918047112233" } },
        ata)
      assert.equal(200, st, json.encode(users))
      local sip = users.Data[1].SipSecret
      assert.equal(0, s.stop())

      -- 2. B current, A previous: A's token verifies, A's sealed secret opens, new tokens come from B.
      s = serve(dir, { APIENGINE_KEY = B .. "," .. A })
      assert.is_nil(s.code, s.read_log())
      assert.truthy(s.read_log():find("info  server key: the database " .. db .. " was made with previous key 1: what "
        .. "that key sealed and signed still opens and verifies; run `apiengine rekey` with these keys to re-seal the "
        .. "stored secrets under the current key\n", 1, true), s.read_log())
      local res
      st, res = s.request("GET", P .. "/customer", nil, ta)
      assert.equal(200, st)
      assert.equal(csecret, res.Data.CustomerSecret)
      local _, _, tb = customer(s, "two") -- sealed under B
      local st2, tok = s.request("POST", P .. "/token", { Id = cid, Secret = csecret, Entity = "customer" })
      assert.equal(200, st2)
      local tb1 = tok.Data
      assert.are_not.equal(ta, tb1)
      local code, out = run({ "check", table.unpack(base_args(dir)) }, { APIENGINE_KEY = B .. "," .. A })
      assert.equal(0, code, out)
      assert.truthy(out:find("\nserver key: configured, previous key 1 matches the database's fingerprint (run "
        .. "apiengine rekey to re-seal its secrets under the current key)\n", 1, true), out)

      -- B alone is refused while the database's fingerprint is A's (nothing re-sealed yet).
      code, out = run({ "check", table.unpack(base_args(dir)) }, { APIENGINE_KEY = B })
      assert.equal(1, code)
      assert.truthy(out:find("apiengine: check failed: server key: the configured key (APIENGINE_KEY or the config "
        .. "file's `key`) is not the key the database " .. db .. " was made with", 1, true), out)

      -- 3. rekey beside the running server.
      code, out = run({ "rekey", table.unpack(base_args(dir)) }, { APIENGINE_KEY = B .. "," .. A })
      assert.equal(0, code, out)
      assert.truthy(out:find("rekey customers.secret_sealed: 2 rows read, 1 re-sealed (up to rowid 2)\n", 1, true), out)
      assert.truthy(out:find("rekey apps.exotel_api_key_sealed: 1 rows read, 1 re-sealed (up to rowid 1)\n", 1, true),
        out)
      assert.truthy(out:find("rekey users.sip_secret_sealed: 1 rows read, 1 re-sealed (up to rowid 1)\n", 1, true), out)
      assert.truthy(out:find("rekey: 4 sealed column(s), 5 rows read, 4 re-sealed under the current key, 1 already "
        .. "were, 0 opened by no key, in ", 1, true), out)
      assert.truthy(out:find("rekey: the database's key fingerprint is now the current key's (", 1, true), out)
      assert.is_nil(out:find(csecret, 1, true))
      st, res = s.request("GET", P .. "/customer", nil, ta) -- the server keeps serving through it
      assert.equal(200, st)
      assert.equal(csecret, res.Data.CustomerSecret)
      -- Run again: nothing left to do (a rekey that stopped half-way resumes the same way).
      code, out = run({ "rekey", table.unpack(base_args(dir)) }, { APIENGINE_KEY = B .. "," .. A })
      assert.equal(0, code, out)
      assert.truthy(out:find("rekey: 4 sealed column(s), 5 rows read, 0 re-sealed under the current key, 5 already "
        .. "were, 0 opened by no key, in ", 1, true), out)
      assert.truthy(out:find("rekey: the database's key fingerprint was the current key's already (", 1, true), out)
      assert.equal(0, s.stop())

      -- 4. B alone: everything still works; a token signed with A is refused.
      s = serve(dir, { APIENGINE_KEY = B })
      assert.is_nil(s.code, s.read_log())
      st, res = s.request("GET", P .. "/customer", nil, ta)
      assert.equal(401, st)
      assert.equal("invalid token", res.Error)
      st, res = s.request("GET", P .. "/customer", nil, tb1)
      assert.equal(200, st)
      assert.equal(csecret, res.Data.CustomerSecret)
      st = s.request("GET", P .. "/customer", nil, tb)
      assert.equal(200, st)
      st, res = s.request("POST", P .. "/token", { Id = cid, Secret = csecret, Entity = "customer" })
      assert.equal(200, st, json.encode(res))
      st = s.request("GET", P .. "/app", nil, ata)
      assert.equal(401, st)
      assert.equal(0, s.stop())
      -- A alone now fails: the fingerprint is B's.
      local old = serve(dir, { APIENGINE_KEY = A })
      assert.equal(1, old.code)
      assert.truthy(old.read_log():find("is not the key the database " .. db .. " was made with", 1, true))

      -- Stored state: every sealed value opens under B alone, none under A.
      testing.open_db(db, "schema")
      local sdb = require "engine.db"
      local c1 = sdb.one("SELECT secret_sealed FROM customers WHERE id = ?", cid)
      local a1 = sdb.one("SELECT exotel_api_key_sealed AS k, exotel_api_token_sealed AS t FROM apps WHERE id = ?", aid)
      local u1 = sdb.one("SELECT sip_secret_sealed FROM users WHERE app_id = ? AND app_user_id = ?", aid, "agent-1")
      testing.close_db()
      testing.use_key(crypto.from_hex(B))
      assert.equal(csecret, crypto.open(c1.secret_sealed, cid))
      assert.equal("ekey", crypto.open(a1.k, aid))
      assert.equal("etok", crypto.open(a1.t, aid))
      assert.equal(sip, crypto.open(u1.sip_secret_sealed, "user:" .. aid .. "/agent-1"))
      testing.use_key(crypto.from_hex(A))
      assert.is_nil(crypto.open(c1.secret_sealed, cid))
      assert.is_nil(crypto.open(u1.sip_secret_sealed, "user:" .. aid .. "/agent-1"))
    end)

  -- #sqlite: apiengine rekey works on SQLite only (exit 2 on PostgreSQL)
  it("resumes a rekey that was killed half-way, while the server keeps answering reads and writes #sqlite", function()
    local dir = tmpdir()
    local db = dir .. "/db.sqlite"
    local s = serve(dir, { APIENGINE_KEY = A })
    assert.is_nil(s.code, s.read_log())
    assert.equal(0, s.stop())
    -- 20,000 customer secrets sealed under A, written straight into the stopped server's database.
    testing.use_key(crypto.from_hex(A))
    testing.open_db(db, "schema")
    local sdb = require "engine.db"
    sdb.tx(function()
      for i = 1, 20000 do
        local id = string.format("c%07d", i)
        sdb.exec("INSERT INTO customers (id, name, email, secret_sealed, created_at, updated_at) VALUES (?, ?, ?, ?, "
          .. "'2026-01-01T00:00:00.000Z', '2026-01-01T00:00:00.000Z')", id, "Customer " .. i, "c" .. i .. "@x.io",
          crypto.seal("secret-" .. i, id))
      end
    end)
    testing.close_db()

    s = serve(dir, { APIENGINE_KEY = B .. "," .. A })
    assert.is_nil(s.code, s.read_log())
    local out1 = dir .. "/rekey1.out"
    -- 100 batches with a 30 ms pause after each: the run lasts at least 3 s, so it is still going
    -- when the loop below (20 ms a round) sees its third batch, however fast the machine seals.
    local pid = testing.spawn({ testing.exe(), "rekey", table.unpack(base_args(dir)) }, out1,
      { APIENGINE_KEY = B .. "," .. A, APIENGINE_REKEY_PAUSE_MS = "30" })
    -- The server answers while the rekey runs (an A-sealed secret opens); the rekey is killed once
    -- three batches are in.
    local answered = 0
    assert.truthy(wait_for(function()
      local st = s.request("POST", P .. "/token", { Id = "c0000007", Secret = "secret-7", Entity = "customer" })
      assert.equal(200, st)
      answered = answered + 1
      local _, n = (read(out1) or ""):gsub("rekey customers%.secret_sealed: ", "")
      return n >= 3
    end), read(out1))
    assert.is_true(answered >= 1)
    testing.kill(pid, 9)
    testing.wait(pid, 5000)
    -- And after the kill: an A-sealed secret still opens, a new one is made under B.
    local st, res = s.request("POST", P .. "/token", { Id = "c0000007", Secret = "secret-7", Entity = "customer" })
    assert.equal(200, st, json.encode(res))
    local cid = customer(s, "later")

    local code, out = run({ "rekey", table.unpack(base_args(dir)) }, { APIENGINE_KEY = B .. "," .. A })
    assert.equal(0, code, out)
    local resealed, already = out:match("rekey: 4 sealed column%(s%), 20001 rows read, (%d+) re%-sealed under the "
      .. "current key, (%d+) already were, 0 opened by no key")
    assert.truthy(resealed, out)
    resealed, already = tonumber(resealed), tonumber(already)
    assert.equal(20001, resealed + already)
    assert.is_true(resealed > 0 and resealed < 20000, out) -- the first run had done part of it
    assert.is_true(already >= 601, out) -- three batches of 200, and the customer sealed under B
    assert.equal(0, s.stop())

    s = serve(dir, { APIENGINE_KEY = B })
    assert.is_nil(s.code, s.read_log())
    for _, i in ipairs { 1, 7, 10000, 20000 } do
      st = s.request("POST", P .. "/token", { Id = string.format("c%07d", i), Secret = "secret-" .. i,
        Entity = "customer" })
      assert.equal(200, st)
    end
    assert.truthy(cid)
    assert.equal(0, s.stop())
  end)

  it("reads previous keys from the key file's later lines too", function()
    local dir = tmpdir()
    local db = dir .. "/db.sqlite"
    local s = serve(dir, { APIENGINE_KEY = A })
    assert.is_nil(s.code, s.read_log())
    local _, csecret, ta = customer(s, "one")
    assert.equal(0, s.stop())
    write(db .. ".key", B .. "\n" .. A .. "\n")
    os.execute("chmod 600 " .. db .. ".key")
    s = serve(dir, nil)
    assert.is_nil(s.code, s.read_log())
    local st, res = s.request("GET", P .. "/customer", nil, ta)
    assert.equal(200, st)
    assert.equal(csecret, res.Data.CustomerSecret)
    assert.equal(0, s.stop())
  end)

  it("refuses a rekey whose current key is not the one the server last started with", function()
    local dir = tmpdir()
    local s = serve(dir, { APIENGINE_KEY = A })
    assert.is_nil(s.code, s.read_log())
    customer(s, "one")
    assert.equal(0, s.stop())
    local code, out = run({ "rekey", table.unpack(base_args(dir)) }, { APIENGINE_KEY = B .. "," .. A })
    assert.equal(1, code)
    assert.truthy(out:find("apiengine: rekey failed: the server last started on " .. dir .. "/db.sqlite with another "
      .. "current key", 1, true), out)
  end)

  it("names the bad item of a key list without echoing it", function()
    local dir = tmpdir()
    local code, out = run({ "check", table.unpack(base_args(dir)) }, { APIENGINE_KEY = B .. ",zz" .. A })
    assert.equal(1, code)
    assert.truthy(out:find("configured server key: previous key 1 (item 2 of the list) is invalid", 1, true), out)
    assert.is_nil(out:find(B, 1, true))
    code, out = run({ "check", table.unpack(base_args(dir)) }, { APIENGINE_KEY = B .. "," .. B })
    assert.equal(1, code)
    assert.truthy(out:find("configured server key: items 1 and 2 of the list are the same key", 1, true), out)
  end)
end)
