-- --real-ip-from against the real binary: behind a trusted proxy, req.peer and the access log
-- name the client X-Forwarded-For gives (walked from the right), an untrusted peer's header is
-- ignored, a bad list refuses the start, and POST /token's per-address guard counts each
-- forwarded client on its own (the attack that worked while every client was the balancer).
package.path = "tests/spec/?.lua;" .. package.path
local spec = require "engine.spec"
local testing = require "engine.testing"
local proc = require "support.proc"

local SCRIPTS = "tests/fixtures/realip/scripts"
local SCHEMA = "tests/fixtures/engine/schema"
local TOKEN = "/v2/integrations/token"

local function peer_of(srv, xff)
  local res = srv.request("GET", "/peer", { headers = { ["X-Forwarded-For"] = xff } })
  assert.equal(200, res.status, res.body)
  return res.body
end

-- The access log's line for the request with this X-Request-Id (waits for it: bounded, 5 s).
local function access_line(srv, rid)
  local line
  proc.wait_for(function()
    line = srv.read_log():match("[^\n]* access [^\n]*" .. rid .. "[^\n]*")
    return line ~= nil
  end, 5000)
  return line
end

describe("--real-ip-from 127.0.0.1", function()
  local srv = spec.server { scripts = SCRIPTS, schema = SCHEMA, args = { "--real-ip-from", "127.0.0.1" } }

  it("gives the forwarded client in req.peer (port 0: the balancer does not send it) and in the access log", function()
    local res = srv.request("GET", "/peer", { headers = { ["X-Forwarded-For"] = "203.0.113.9", ["X-Request-Id"] = "rip-1" } })
    assert.equal(200, res.status)
    assert.equal("203.0.113.9:0", res.body)
    assert.matches(" access 203%.0%.113%.9:0 GET /peer 200 ", access_line(srv, "rip%-1"))
  end)

  it("ignores what the client put on the left: the right-most untrusted entry counts", function()
    assert.equal("203.0.113.9:0", peer_of(srv, "198.51.100.66, 203.0.113.9"))
    assert.equal("203.0.113.9:0", peer_of(srv, "198.51.100.66,203.0.113.9, 127.0.0.1"))
  end)

  it("keeps the TCP peer without the header, or when the right-most entry is malformed", function()
    local res = srv.request("GET", "/peer")
    assert.matches("^127%.0%.0%.1:%d+$", res.body)
    assert.not_equal("127.0.0.1:0", res.body)
    assert.matches("^127%.0%.0%.1:%d+$", peer_of(srv, "203.0.113.9, not-an-address"))
    assert.matches("^127%.0%.0%.1:%d+$", peer_of(srv, "203.0.113.9:4711"))
  end)

  it("writes IPv6 canonically", function()
    assert.equal("[2001:db8::9]:0", peer_of(srv, "2001:DB8:0:0::9"))
  end)

  it("chooses per request: two clients' requests on one keep-alive connection keep apart", function()
    local function req(xff, rid)
      return "GET /peer HTTP/1.1\r\nHost: t\r\nX-Forwarded-For: " .. xff .. "\r\nX-Request-Id: " .. rid .. "\r\n\r\n"
    end
    local c = srv.connect()
    assert(c:send(req("192.0.2.1", "rip-a") .. req("192.0.2.2", "rip-b") ..
      "GET /peer HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"))
    local a, b, last = spec.read_response(c), spec.read_response(c), spec.read_response(c)
    c:close()
    assert.equal("192.0.2.1:0", a.body)
    assert.equal("192.0.2.2:0", b.body)
    assert.matches("^127%.0%.0%.1:%d+$", last.body)
    assert.matches(" access 192%.0%.2%.1:0 GET ", access_line(srv, "rip%-a"))
    assert.matches(" access 192%.0%.2%.2:0 GET ", access_line(srv, "rip%-b"))
  end)
end)

describe("without --real-ip-from", function()
  local srv = spec.server { scripts = SCRIPTS, schema = SCHEMA }

  it("ignores X-Forwarded-For", function()
    assert.matches("^127%.0%.0%.1:%d+$", peer_of(srv, "203.0.113.9"))
  end)
end)

describe("--real-ip-from a list without the peer", function()
  local srv = spec.server { scripts = SCRIPTS, schema = SCHEMA, args = { "--real-ip-from", "10.0.0.0/8, ::1" } }

  it("ignores the header of an untrusted peer", function()
    assert.matches("^127%.0%.0%.1:%d+$", peer_of(srv, "203.0.113.9"))
  end)
end)

describe("--real-ip-from at start-up", function()
  it("refuses a bad entry, naming it, with exit 2", function()
    local dir = testing.mkdtemp()
    local code, out = proc.run({ testing.exe(), "serve", "--listen", "127.0.0.1:" .. testing.free_port(),
      "--scripts", SCRIPTS, "--schema", SCHEMA, "--db", dir .. "/db.sqlite",
      "--real-ip-from", "127.0.0.1, 10.0.0.0/33" })
    testing.rmtree(dir)
    assert.equal(2, code)
    assert.truthy(out:find("--real-ip-from: '10.0.0.0/33' is not an address or CIDR block", 1, true), out)
  end)
end)

-- Five failures lock an (Id, address) pair; 6 failures from an address throttle it for every Id.
local function token_guard_run(srv)
  local created = srv.request("POST", "/v2/integrations/customer",
    { json = { CustomerName = "Acme", Email = "ops@acme.io" } })
  assert.equal(200, created.status, created.body)
  local id, secret = created.json.Data.CustomerID, created.json.Data.CustomerSecret
  local function post(xff, body)
    return srv.request("POST", TOKEN, { json = body, headers = { ["X-Forwarded-For"] = xff } })
  end
  local A, B = "203.0.113.9", "198.51.100.20"
  for i = 1, 5 do
    local res = post(A, { Id = id, Secret = "wrong", Entity = "customer" })
    assert.equal(401, res.status, "failure " .. i .. ": " .. res.body)
  end
  local locked = post(A, { Id = id, Secret = secret, Entity = "customer" })
  assert.equal(429, locked.status, locked.body)
  -- (the retry counts down from 300 s in real time: a slow pass may have spent a second)
  assert.matches("^too many failed attempts for this Id: retry after [23]%d%d seconds$", locked.json.Error)
  return post(B, { Id = id, Secret = secret, Entity = "customer" }), post, A, B
end

describe("POST /token behind a balancer with --real-ip-from", function()
  local srv = spec.server { scripts = "scripts", schema = "schema", settings = { token_address_max_failures = 6 },
    args = { "--real-ip-from", "127.0.0.1" } }

  it("locks and throttles only the attacking client, not every client of the balancer", function()
    local other, post, A, B = token_guard_run(srv)
    assert.equal(200, other.status, other.body) -- B's right Secret: its own (Id, address) pair
    assert.equal("Success", other.json.Status)
    -- A's sixth failure (another Id) throttles A for every Id; B's failure is only B's
    assert.equal(401, post(A, { Id = "no-such-id", Secret = "x", Entity = "app" }).status)
    local throttled = post(A, { Id = "no-such-id-2", Secret = "x", Entity = "app" })
    assert.equal(429, throttled.status, throttled.body)
    assert.matches("^too many failed attempts from this address: retry after [23]%d%d seconds$", throttled.json.Error)
    local res = post(B, { Id = "no-such-id-2", Secret = "x", Entity = "app" })
    assert.equal(401, res.status, res.body)
    assert.equal("invalid Id or Secret", res.json.Error)
  end)
end)

describe("POST /token behind a balancer without --real-ip-from", function()
  local srv = spec.server { scripts = "scripts", schema = "schema", settings = { token_address_max_failures = 6 } }

  it("counts every client as the balancer (the attack the flag stops)", function()
    local other = token_guard_run(srv)
    assert.equal(429, other.status, other.body)
    assert.matches("^too many failed attempts for this Id: retry after [23]%d%d seconds$", other.json.Error)
  end)
end)
