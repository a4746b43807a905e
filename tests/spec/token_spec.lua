-- POST /v2/integrations/token (API.md section 2) and the token rules of 1.2.
package.path = "tests/spec/?.lua;" .. package.path
local spec = require "engine.spec"
local crypto = require "engine.crypto"
local config = require "engine.config"
local testing = require "engine.testing"
local P = require "support.platform"

local TOKEN = "/v2/integrations/token"
local DAY = 86400 * 1000

describe("POST /v2/integrations/token", function()
  local app = spec.app { scripts = "scripts", schema = "schema" }
  after_each(function() spec.clock.reset() end)

  local function post(body, headers)
    return app.request("POST", TOKEN, { json = body, headers = headers })
  end
  local changes -- rows written so far
  lazy_setup(function() changes = P.write_counter(app) end) -- after spec.app's (also lazy)
  local function guard_rows()
    return { P.count(app, "token_failures"), P.count(app, "token_id_failures"), P.count(app, "token_trusted") }
  end

  it("issues a customer token that GET /customer accepts, raw or Bearer", function()
    local c = P.customer(app)
    local res = post({ Id = c.id, Secret = c.secret, Entity = "customer" }, { ["X-Request-Id"] = "tok-1" })
    local token = P.ok(res, "tok-1")
    assert.matches("^v1%.[%w_-]+%.[%w_-]+$", token)
    local claims = crypto.verify(token)
    assert.equal("customer", claims.typ)
    assert.equal(c.id, claims.sub)
    assert.equal(c.id, P.ok(app.request("GET", "/v2/integrations/customer", { headers = P.auth(token) })).CustomerID)
    assert.equal(c.id, P.ok(app.request("GET", "/v2/integrations/customer",
      { headers = P.auth("Bearer " .. token) })).CustomerID)
    assert.equal(c.id, P.ok(app.request("GET", "/v2/integrations/customer",
      { headers = P.auth("bearer   " .. token) })).CustomerID)
  end)

  it("issues an app token", function()
    local c = P.customer(app)
    local a = P.app(app, c.token)
    local token = P.ok(post({ Id = a.id, Secret = a.secret, Entity = "app" }))
    local claims = crypto.verify(token)
    assert.equal("app", claims.typ)
    assert.equal(a.id, claims.sub)
  end)

  it("expires tokens after 90 days by default", function()
    spec.clock.freeze(1718445600000)
    local c = P.customer(app)
    local claims = crypto.verify(c.token)
    assert.equal(1718445600000 + 90 * DAY, claims.exp)
    spec.clock.advance(90 * DAY - 1000)
    P.ok(app.request("GET", "/v2/integrations/customer", { headers = P.auth(c.token) }))
    spec.clock.advance(1000)
    local err = P.failed(app.request("GET", "/v2/integrations/customer", { headers = P.auth(c.token) }), 401)
    assert.equal("token expired", err)
  end)

  it("honours token_ttl_days", function()
    config.settings().token_ttl_days = 2
    spec.clock.freeze(1718445600000)
    local ok, c = pcall(P.customer, app)
    config.settings().token_ttl_days = nil
    assert.is_true(ok, c)
    assert.equal(1718445600000 + 2 * DAY, crypto.verify(c.token).exp)
  end)

  it("answers 400 for bad bodies and fields", function()
    local cases = {
      { nil, "request body is empty: expected a JSON object" },
      { "{not json", nil },
      { "[]", "request body must be a JSON object" },
      { '"x"', "request body must be a JSON object" },
      { '{"Secret":"s","Entity":"app"}', "Id is required" },
      { '{"Id":5,"Secret":"s","Entity":"app"}', "Id must be a string" },
      { '{"Id":"  ","Secret":"s","Entity":"app"}', "Id must not be empty" },
      { '{"Id":"i","Entity":"app"}', "Secret is required" },
      { '{"Id":"i","Secret":null,"Entity":"app"}', "Secret is required" },
      { '{"Id":"i","Secret":true,"Entity":"app"}', "Secret must be a string" },
      { '{"Id":"i","Secret":"s"}', "Entity is required" },
      { '{"Id":"i","Secret":"s","Entity":"user"}', "Entity must be customer or app" },
      { '{"Id":"i","Secret":"s","Entity":"Customer"}', "Entity must be customer or app" },
    }
    for _, case in ipairs(cases) do
      local err = P.failed(app.request("POST", TOKEN, { body = case[1] }), 400)
      if case[2] then assert.equal(case[2], err) else assert.matches("^request body is not valid JSON", err) end
    end
  end)

  it("answers 401 alike for an unknown Id, a wrong Secret and the wrong Entity", function()
    local c = P.customer(app)
    local a = P.app(app, c.token)
    local e1 = P.failed(post({ Id = crypto.uuid4(), Secret = c.secret, Entity = "customer" }), 401)
    local e2 = P.failed(post({ Id = c.id, Secret = c.secret .. "x", Entity = "customer" }), 401)
    local e3 = P.failed(post({ Id = c.id, Secret = c.secret, Entity = "app" }), 401)
    local e4 = P.failed(post({ Id = a.id, Secret = a.secret, Entity = "customer" }), 401)
    local e5 = P.failed(post({ Id = a.id, Secret = c.secret, Entity = "app" }), 401)
    for _, e in ipairs({ e1, e2, e3, e4, e5 }) do assert.equal("invalid Id or Secret", e) end
  end)

  it("never accepts one type's token on the other type's endpoints", function()
    local c = P.customer(app)
    local a = P.app(app, c.token)
    P.failed(app.request("GET", "/v2/integrations/customer", { headers = P.auth(a.token) }), 401)
    P.failed(app.request("DELETE", "/v2/integrations/customer", { headers = P.auth(a.token) }), 401)
    P.failed(app.request("POST", "/v2/integrations/app", { json = P.APP_BODY, headers = P.auth(a.token) }), 401)
    P.failed(app.request("DELETE", "/v2/integrations/app", { headers = P.auth(c.token) }), 401)
    P.failed(app.request("GET", "/v2/integrations/app_setting", { headers = P.auth(c.token) }), 401)
    P.rest_failed(app.request("GET", "/v2/integrations/" .. c.id, { headers = P.auth(a.token) }), 401, "unauthorized")
    -- and neither type's endpoints changed anything
    assert.equal(1, P.count(app, "apps WHERE customer_id = ?", c.id))
  end)

  it("rejects missing, malformed and tampered tokens with 401", function()
    local c = P.customer(app)
    local GET = function(h) return app.request("GET", "/v2/integrations/customer", { headers = h }) end
    assert.equal("missing Authorization token", P.failed(GET(nil), 401))
    assert.equal("missing Authorization token", P.failed(GET({ Authorization = "Bearer " }), 401))
    assert.equal("invalid token", P.failed(GET(P.auth("garbage")), 401))
    -- the reference's example token: base64 of the id
    assert.equal("invalid token", P.failed(GET(P.auth(crypto.to_base64(c.id))), 401))
    local head, payload, tag = c.token:match("^(v1)%.([^.]+)%.([^.]+)$")
    local plain = crypto.from_base64url(payload)
    local at = assert(plain:find(c.id, 1, true))
    local forged = plain:sub(1, at - 1) .. crypto.uuid4() .. plain:sub(at + #c.id)
    assert.not_equal(plain, forged)
    assert.equal("invalid token", P.failed(GET(P.auth(head .. "." .. crypto.to_base64url(forged) .. "." .. tag)), 401))
    local flipped = tag:sub(1, -2) .. (tag:sub(-1) == "A" and "B" or "A")
    assert.equal("invalid token", P.failed(GET(P.auth(head .. "." .. payload .. "." .. flipped)), 401))
  end)

  describe("brute-force guard", function()
    it("locks an Id from one address after 5 failures for the rest of a 5-minute window", function()
      spec.clock.freeze(1718445600000)
      local c = P.customer(app)
      local bad = { Id = c.id, Secret = "wrong", Entity = "customer" }
      for _ = 1, 5 do
        P.failed(post(bad), 401)
        spec.clock.advance(10 * 1000)
      end
      -- 50 s after the first failure: locked for the remaining 250 s, even with the right secret
      local res = post({ Id = c.id, Secret = c.secret, Entity = "customer" })
      assert.equal("too many failed attempts for this Id: retry after 250 seconds", P.failed(res, 429))
      assert.equal("250", res.headers["retry-after"])
      spec.clock.advance(249 * 1000)
      res = post(bad)
      P.failed(res, 429)
      assert.equal("1", res.headers["retry-after"])
      spec.clock.advance(1000)
      P.ok(post({ Id = c.id, Secret = c.secret, Entity = "customer" }))
    end)

    it("locks only the attacking address: the right Secret from another address gets its token", function()
      spec.clock.freeze(1718445600000)
      local c = P.customer(app)
      local A, B = "198.51.100.7:40001", "[2001:db8::1]:40002"
      local pairs_before = app.db.one("SELECT count(*) AS n FROM token_failures").n
      local function from(peer, secret)
        return app.request("POST", TOKEN, { json = { Id = c.id, Secret = secret, Entity = "customer" }, peer = peer })
      end
      for _ = 1, 5 do P.failed(from(A, "wrong"), 401) end
      assert.equal("too many failed attempts for this Id: retry after 300 seconds", P.failed(from(A, c.secret), 429))
      P.ok(from(B, c.secret))
      assert.equal(pairs_before + 1, app.db.one("SELECT count(*) AS n FROM token_failures").n) -- (Id, A) only
    end)

    it("locks unknown Ids too (a 429 says nothing about existence) and writes nothing for them", function()
      spec.clock.freeze(1718445600000)
      local id = "no-such-id-" .. crypto.uuid4()
      local before, rows = changes(), guard_rows()
      for _ = 1, 5 do P.failed(post({ Id = id, Secret = "x", Entity = "app" }), 401) end
      local res = post({ Id = id, Secret = "x", Entity = "app" })
      assert.equal("too many failed attempts for this Id: retry after 300 seconds", P.failed(res, 429))
      assert.equal("300", res.headers["retry-after"])
      assert.equal(before, changes())
      assert.same(rows, guard_rows())
    end)

    it("stores a known Id's failures under its hash and the client address, never the plain Id", function()
      spec.clock.freeze(1718445600000)
      local c = P.customer(app)
      for _ = 1, 3 do P.failed(post({ Id = c.id, Secret = "x", Entity = "customer" }), 401) end
      local key = crypto.to_hex(crypto.sha256(c.id))
      assert.same({ { id_hash = key, addr = "127.0.0.1", window_start = 1718445600000, failures = 3 } },
        app.db.query("SELECT * FROM token_failures WHERE id_hash = ?", key))
      assert.same({ { id_hash = key, window_start = 1718445600000, failures = 3, last_failure = 1718445600000 } },
        app.db.query("SELECT * FROM token_id_failures WHERE id_hash = ?", key))
      assert.equal(0, P.count(app, "token_failures WHERE id_hash = ?", c.id))
      assert.equal(0, P.count(app, "token_id_failures WHERE id_hash = ?", c.id))
    end)

    it("counts per Id and forgets the failures after a success", function()
      spec.clock.freeze(1718445600000)
      local c = P.customer(app)
      local other = P.customer(app)
      for _ = 1, 4 do P.failed(post({ Id = c.id, Secret = "x", Entity = "customer" }), 401) end
      P.ok(post({ Id = other.id, Secret = other.secret, Entity = "customer" }))
      P.ok(post({ Id = c.id, Secret = c.secret, Entity = "customer" }))
      assert.equal(0, P.count(app, "token_failures WHERE id_hash = ?", crypto.to_hex(crypto.sha256(c.id))))
      for _ = 1, 4 do P.failed(post({ Id = c.id, Secret = "x", Entity = "customer" }), 401) end
      P.ok(post({ Id = c.id, Secret = c.secret, Entity = "customer" }))
    end)

    it("starts a new window once the old one is over", function()
      spec.clock.freeze(1718445600000)
      local c = P.customer(app)
      for _ = 1, 4 do P.failed(post({ Id = c.id, Secret = "x", Entity = "customer" }), 401) end
      spec.clock.advance(300 * 1000)
      for _ = 1, 4 do P.failed(post({ Id = c.id, Secret = "x", Entity = "customer" }), 401) end
      P.ok(post({ Id = c.id, Secret = c.secret, Entity = "customer" }))
    end)

    it("takes its numbers from token_max_failures and token_failure_window_seconds", function()
      local s = config.settings()
      s.token_max_failures, s.token_failure_window_seconds = "2", "60"
      spec.clock.freeze(1718445600000)
      local ok, err = pcall(function()
        local c = P.customer(app)
        P.failed(post({ Id = c.id, Secret = "x", Entity = "customer" }), 401)
        P.failed(post({ Id = c.id, Secret = "x", Entity = "customer" }), 401)
        local res = post({ Id = c.id, Secret = c.secret, Entity = "customer" })
        P.failed(res, 429)
        assert.equal("60", res.headers["retry-after"])
        spec.clock.advance(60 * 1000)
        P.ok(post({ Id = c.id, Secret = c.secret, Entity = "customer" }))
      end)
      s.token_max_failures, s.token_failure_window_seconds = nil, nil
      assert.is_true(ok, err)
    end)
  end)
end)

-- Trimming was quadratic in a run of spaces, inside one C call the time budget cannot stop:
-- a 60k-space Id held a worker 18.7 s, a 15k-space Authorization header 1.4 s. Both are now
-- answered at once; the bounds below are far above the linear cost and far below the old one.
describe("whitespace-heavy credentials", function()
  local srv = spec.server { scripts = "scripts", schema = "schema" }

  local function send(head, body)
    local raw, how = srv.raw(head .. "Content-Length: " .. #body .. "\r\nConnection: close\r\n\r\n" .. body, 5)
    return spec.parse_response(raw), how
  end

  it("answers an Id of 60k spaces around two letters in well under the budget", function()
    local id = "x" .. string.rep(" ", 60000) .. "y" .. string.rep(" ", 60000)
    local body = '{"Id":"' .. id .. '","Secret":"s","Entity":"customer"}'
    local res, how = send("POST " .. TOKEN .. " HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n", body)
    assert.equal("closed", how)
    assert.equal(401, res.status)
    assert.equal("invalid Id or Secret", res.json.Error)
  end)

  it("answers an Authorization header padded with 15k spaces within a second", function()
    local raw, how = srv.raw("GET /v2/integrations/customer HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer x" ..
      string.rep(" ", 15000) .. "y\r\nConnection: close\r\n\r\n", 1)
    assert.equal("closed", how)
    local res = spec.parse_response(raw)
    assert.equal(401, res.status)
  end)
end)

-- The brute-force guard's rule is written at the top of scripts/token.lua. In-process requests all
-- come from 127.0.0.1; the specs with several client addresses use a real server and bind each
-- client socket to its own loopback address (127.0.0.0/8 is all loopback on Linux).
local T0 = 1718445600000

-- A customer created without asking for a token, so no address has had one for it yet.
local function tokenless_customer(app)
  local data = P.ok(app.request("POST", "/v2/integrations/customer",
    { json = { CustomerName = "Acme", Email = "ops@acme.io" } }))
  return { id = data.CustomerID, secret = data.CustomerSecret }
end

local function rows_of(app)
  return { P.count(app, "token_failures"), P.count(app, "token_id_failures"), P.count(app, "token_trusted") }
end

describe("POST /token: the per-Id ceiling throttles failures, not the right Secret", function()
  local app = spec.app { scripts = "scripts", schema = "schema",
    settings = { token_max_failures = 100, token_id_max_failures = 3 } }
  after_each(function() spec.clock.reset() end)
  local function post(body) return app.request("POST", TOKEN, { json = body }) end
  local function id_failures(c)
    return app.db.one("SELECT failures FROM token_id_failures WHERE id_hash = ?", crypto.to_hex(crypto.sha256(c.id))).failures
  end

  it("checks one attempt per second from an address the Id never gave a token, unchecked and uncounted between", function()
    spec.clock.freeze(T0)
    local c = tokenless_customer(app)
    local bad, right = { Id = c.id, Secret = "x", Entity = "customer" }, { Id = c.id, Secret = c.secret, Entity = "customer" }
    for _ = 1, 3 do P.failed(post(bad), 401) end
    local res = post(bad)
    assert.equal("too many failed attempts for this Id: retry after 1 second", P.failed(res, 429))
    assert.equal("1", res.headers["retry-after"])
    P.failed(post(right), 429) -- unchecked: a guess, as far as the guard can tell
    assert.equal(3, id_failures(c))
    spec.clock.advance(999)
    res = post(bad)
    P.failed(res, 429)
    assert.equal("1", res.headers["retry-after"])
    spec.clock.advance(1)
    P.failed(post(bad), 401) -- checked and counted
    assert.equal(4, id_failures(c))
    P.failed(post(right), 429)
    spec.clock.advance(1000)
    P.ok(post(right))
    assert.same({ { addr = "127.0.0.1", last_ok = T0 + 2000 } },
      app.db.query("SELECT addr, last_ok FROM token_trusted WHERE id_hash = ?", crypto.to_hex(crypto.sha256(c.id))))
    -- This address has had a token for the Id now: its attempts are always checked ...
    P.failed(post(bad), 401)
    P.failed(post(bad), 401)
    P.ok(post(right))
    -- ... and still counted: a success does not reset the Id's count.
    assert.equal(6, id_failures(c))
  end)

  it("starts the Id's count again when its window ends", function()
    spec.clock.freeze(T0)
    local c = tokenless_customer(app)
    local bad = { Id = c.id, Secret = "x", Entity = "customer" }
    for _ = 1, 3 do P.failed(post(bad), 401) end
    P.failed(post(bad), 429)
    spec.clock.advance(299500)
    P.failed(post(bad), 401)
    local res = post(bad)
    P.failed(res, 429)
    assert.equal("1", res.headers["retry-after"])
    spec.clock.advance(500) -- the window is over, though not a second since the last failure
    for _ = 1, 3 do P.failed(post(bad), 401) end
    P.failed(post(bad), 429)
    assert.same({ window_start = T0 + 300 * 1000, failures = 3, last_failure = T0 + 300 * 1000 }, app.db.one(
      "SELECT window_start, failures, last_failure FROM token_id_failures WHERE id_hash = ?",
      crypto.to_hex(crypto.sha256(c.id))))
  end)

  it("takes its interval from token_id_throttle_seconds", function()
    config.settings().token_id_throttle_seconds = "20"
    spec.clock.freeze(T0)
    local ok, err = pcall(function()
      local c = tokenless_customer(app)
      for _ = 1, 3 do P.failed(post({ Id = c.id, Secret = "x", Entity = "customer" }), 401) end
      spec.clock.advance(5000)
      local res = post({ Id = c.id, Secret = c.secret, Entity = "customer" })
      assert.equal("too many failed attempts for this Id: retry after 15 seconds", P.failed(res, 429))
      assert.equal("15", res.headers["retry-after"])
      spec.clock.advance(15000)
      P.ok(post({ Id = c.id, Secret = c.secret, Entity = "customer" }))
    end)
    config.settings().token_id_throttle_seconds = nil
    assert.is_true(ok, err)
  end)
end)

describe("POST /token: failures on unknown Ids", function()
  local app = spec.app { scripts = "scripts", schema = "schema" }
  after_each(function() spec.clock.reset() end)
  local function post(body) return app.request("POST", TOKEN, { json = body }) end
  local changes -- rows written so far
  lazy_setup(function() changes = P.write_counter(app) end) -- after spec.app's (also lazy)

  it("cost no write: 50 of them from one address leave the database untouched and the guard's tables empty", function()
    spec.clock.freeze(T0)
    local before = changes()
    local id = crypto.uuid4()
    for _ = 1, 5 do P.failed(post({ Id = id, Secret = "x", Entity = "customer" }), 401) end
    P.failed(post({ Id = id, Secret = "x", Entity = "customer" }), 429)
    for i = 1, 45 do
      P.failed(post({ Id = crypto.uuid4(), Secret = "x", Entity = i % 2 == 0 and "app" or "customer" }), 401)
    end
    -- 50 failures from this address: it is throttled for every Id until its window ends
    local res = post({ Id = crypto.uuid4(), Secret = "x", Entity = "app" })
    assert.equal("too many failed attempts from this address: retry after 300 seconds", P.failed(res, 429))
    assert.equal("300", res.headers["retry-after"])
    assert.equal(before, changes())
    assert.same({ 0, 0, 0 }, rows_of(app))
    spec.clock.advance(300 * 1000)
    P.failed(post({ Id = crypto.uuid4(), Secret = "x", Entity = "app" }), 401)
    assert.equal(before, changes())
  end)

  it("are counted for the process, not per Lua state: a fresh state (another worker, a reload) sees them", function()
    spec.clock.freeze(T0 + DAY) -- clear of the windows the test above opened
    local before = changes()
    local unknown = { Id = crypto.uuid4(), Secret = "x", Entity = "app" }
    for _ = 1, 5 do P.failed(post(unknown), 401) end
    testing.load_scripts("scripts") -- scripts/token.lua runs again, as in another worker's state
    local res = post(unknown)
    assert.equal("too many failed attempts for this Id: retry after 300 seconds", P.failed(res, 429))
    assert.equal("300", res.headers["retry-after"])
    -- the address's count went along too: 45 more failures make 50, the 51st attempt waits
    for _ = 1, 45 do P.failed(post({ Id = crypto.uuid4(), Secret = "x", Entity = "app" }), 401) end
    testing.load_scripts("scripts")
    res = post({ Id = crypto.uuid4(), Secret = "x", Entity = "app" })
    assert.equal("too many failed attempts from this address: retry after 300 seconds", P.failed(res, 429))
    assert.equal(before, changes())
  end)
end)

describe("POST /token: token_address_max_failures", function()
  local app = spec.app { scripts = "scripts", schema = "schema", settings = { token_address_max_failures = 10 } }
  after_each(function() spec.clock.reset() end)
  local function post(body) return app.request("POST", TOKEN, { json = body }) end

  it("limits one address across Ids, the right Secret included, until its window ends", function()
    spec.clock.freeze(T0)
    local c = tokenless_customer(app)
    for _ = 1, 10 do
      P.failed(post({ Id = crypto.uuid4(), Secret = "x", Entity = "customer" }), 401)
      spec.clock.advance(1000)
    end
    local res = post({ Id = crypto.uuid4(), Secret = "x", Entity = "customer" })
    assert.equal("too many failed attempts from this address: retry after 290 seconds", P.failed(res, 429))
    assert.equal("290", res.headers["retry-after"])
    -- An Id that exists answers the same: the limit tells nothing about which Ids exist.
    res = post({ Id = c.id, Secret = c.secret, Entity = "customer" })
    assert.equal("too many failed attempts from this address: retry after 290 seconds", P.failed(res, 429))
    spec.clock.advance(290 * 1000)
    P.ok(post({ Id = c.id, Secret = c.secret, Entity = "customer" }))
  end)
end)

describe("lib.peer", function()
  spec.app { scripts = "scripts", schema = "schema" }

  it("takes the client address out of req.peer, without the port", function()
    local peer = require "lib.peer"
    assert.equal("127.0.0.1", peer.address("127.0.0.1:51234"))
    assert.equal("203.0.113.7", peer.address("203.0.113.7:0"))
    assert.equal("::1", peer.address("[::1]:8080"))
    assert.equal("2001:db8::7", peer.address("[2001:db8::7]:443"))
    assert.equal("2001:db8::7", peer.address("[2001:DB8::7]:443"))
    assert.equal("fe80::1%eth0", peer.address("[fe80::1%eth0]:80"))
    -- an IPv4 client on a dual-stack socket is the same client as over IPv4
    assert.equal("192.0.2.7", peer.address("[::ffff:192.0.2.7]:5"))
    assert.equal("?", peer.address("?:0"))
  end)
end)

-- POST /token from a chosen loopback source address, over a new connection.
local function from(srv, addr, body)
  local socket = require "socket"
  local json = require "engine.json"
  local c = assert(socket.tcp())
  c:settimeout(10)
  assert(c:bind(addr, 0))
  assert(c:connect(srv.host, srv.port))
  local payload = json.encode(body)
  assert(c:send("POST " .. TOKEN .. " HTTP/1.1\r\nHost: t\r\nConnection: close\r\nContent-Type: application/json\r\n" ..
    "Content-Length: " .. #payload .. "\r\n\r\n" .. payload))
  local res = assert(spec.read_response(c))
  c:close()
  return res
end

describe("POST /token: the lockout counts per (Id, client address)", function()
  local srv = spec.server { scripts = "scripts", schema = "schema", workers = 2 }

  it("locks (Id, A) after 5 failures from A, on every worker, while the right Secret from B gets its token", function()
    local c = P.customer(srv)
    local bad = { Id = c.id, Secret = "wrong", Entity = "customer" }
    local right = { Id = c.id, Secret = c.secret, Entity = "customer" }
    for _ = 1, 5 do P.failed(from(srv, "127.0.0.2", bad), 401) end
    for _ = 1, 6 do -- new connections: whichever worker answers, the count is in SQLite
      local res = from(srv, "127.0.0.2", bad)
      assert.matches("^too many failed attempts for this Id: retry after %d+ seconds$", P.failed(res, 429))
      local retry = tonumber(res.headers["retry-after"])
      assert.is_true(retry > 240 and retry <= 300, res.headers["retry-after"])
    end
    P.failed(from(srv, "127.0.0.2", right), 429)
    local token = P.ok(from(srv, "127.0.0.3", right))
    assert.equal(c.id, P.ok(srv.request("GET", "/v2/integrations/customer", { headers = P.auth(token) })).CustomerID)
    P.failed(from(srv, "127.0.0.3", bad), 401) -- B's failures are B's own
    P.ok(from(srv, "127.0.0.3", right))
  end)

  it("locks an unknown Id from A after 5 failures whichever worker answers", function()
    local unknown = { Id = crypto.uuid4(), Secret = "x", Entity = "app" }
    for _ = 1, 5 do P.failed(from(srv, "127.0.0.4", unknown), 401) end
    for _ = 1, 6 do -- new connections spread over both workers; the counts are the process's
      assert.matches("^too many failed attempts for this Id: retry after %d+ seconds$",
        P.failed(from(srv, "127.0.0.4", unknown), 429))
    end
  end)
end)

describe("POST /token: per-Id ceiling and per-address limit over real connections", function()
  local srv = spec.server { scripts = "scripts", schema = "schema", workers = 1, settings = {
    token_max_failures = 2, token_id_max_failures = 4, token_id_throttle_seconds = 60, token_address_max_failures = 6 } }

  it("throttles new addresses past the ceiling while the address that had a token keeps getting them", function()
    local c = P.customer(srv) -- 127.0.0.1 has had a token for c
    local bad = { Id = c.id, Secret = "wrong", Entity = "customer" }
    local right = { Id = c.id, Secret = c.secret, Entity = "customer" }
    P.failed(from(srv, "127.0.0.2", bad), 401)
    P.failed(from(srv, "127.0.0.2", bad), 401)
    P.failed(from(srv, "127.0.0.2", bad), 429) -- (Id, 127.0.0.2) locked
    P.failed(from(srv, "127.0.0.3", bad), 401)
    P.failed(from(srv, "127.0.0.3", bad), 401) -- the Id's 4th failure: the ceiling
    for _, addr in ipairs({ "127.0.0.4", "127.0.0.5" }) do
      local res = from(srv, addr, bad)
      assert.matches("^too many failed attempts for this Id: retry after %d+ seconds$", P.failed(res, 429))
      local retry = tonumber(res.headers["retry-after"])
      assert.is_true(retry > 30 and retry <= 60, res.headers["retry-after"])
      P.failed(from(srv, addr, right), 429) -- a new address waits like the attacker
    end
    P.ok(from(srv, "127.0.0.1", right))
    P.failed(from(srv, "127.0.0.1", bad), 401) -- checked, never throttled ...
    P.failed(from(srv, "127.0.0.1", bad), 401)
    P.failed(from(srv, "127.0.0.1", right), 429) -- ... but its own pair lockout still holds
  end)

  it("limits one address's failures across unknown Ids; other addresses are answered as before", function()
    local c = tokenless_customer(srv)
    for _ = 1, 6 do P.failed(from(srv, "127.0.0.6", { Id = crypto.uuid4(), Secret = "x", Entity = "app" }), 401) end
    local res = from(srv, "127.0.0.6", { Id = crypto.uuid4(), Secret = "x", Entity = "app" })
    assert.matches("^too many failed attempts from this address: retry after %d+ seconds$", P.failed(res, 429))
    P.failed(from(srv, "127.0.0.6", { Id = c.id, Secret = c.secret, Entity = "customer" }), 429)
    P.failed(from(srv, "127.0.0.7", { Id = crypto.uuid4(), Secret = "x", Entity = "app" }), 401)
    P.ok(from(srv, "127.0.0.7", { Id = c.id, Secret = c.secret, Entity = "customer" }))
  end)
end)
