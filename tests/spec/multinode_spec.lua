-- Three engine nodes on one PostgreSQL (issue 13): the same key on each (APIENGINE_KEY), the
-- default scripts, a throwaway server (tests/support/pg.sh). What one node writes the others
-- see; what must be counted once is counted once however many nodes receive it at the same time;
-- the plan limits and the token lockout hold across nodes; kill -9 of a node loses no write it
-- acknowledged. "At the same time": the requests are all sent, on one connection per request,
-- before any answer is read, so the nodes serve them concurrently.
package.path = "tests/spec/?.lua;" .. package.path
local spec = require "engine.spec"
local json = require "engine.json"
local testing = require "engine.testing"
local socket = require "socket"
local proc = require "support.proc"
local U = require "support.usage"
local Users = require "support.users"

local KEY = string.rep("5a", 32)
local NODES = 3

local function my_pid()
  return assert(proc.read("/proc/self/stat")):match("^%d+")
end

-- A request's bytes (Connection: close: one request per connection).
local function request_bytes(method, path, opts)
  opts = opts or {}
  local body = opts.json ~= nil and json.encode(opts.json) or opts.body
  local lines = { method .. " " .. path .. " HTTP/1.1", "Host: node", "Connection: close" }
  if opts.json ~= nil then lines[#lines + 1] = "Content-Type: application/json" end
  for k, v in pairs(opts.headers or {}) do lines[#lines + 1] = k .. ": " .. v end
  if body then lines[#lines + 1] = "Content-Length: " .. #body end
  return table.concat(lines, "\r\n") .. "\r\n\r\n" .. (body or "")
end

-- Sends a request to node n and returns the connection, unread.
local function send(n, method, path, opts)
  local c = assert(socket.tcp())
  c:settimeout(20)
  assert(c:connect("127.0.0.1", n.port))
  assert(c:send(request_bytes(method, path, opts)))
  return c
end

-- The answer on c, or nil when the node went away before answering.
local function receive(c)
  local raw, _, partial = c:receive("*a")
  c:close()
  raw = raw or partial
  if raw == nil or raw == "" then return nil end
  return spec.parse_response(raw)
end

-- A node as support/platform.lua's helpers want an app: request(method, path, opts).
local function as_app(n)
  return { request = function(method, path, opts) return assert(receive(send(n, method, path, opts))) end }
end

local function ok(res)
  assert.equal(200, res.status, res.body)
  assert.equal("Success", res.json.Status, res.body)
  return res.json.Data
end

local function auth(token) return { Authorization = token } end

local function customer(node, name)
  local d = ok(node.request("POST", "/v2/integrations/customer", { json = { CustomerName = name, Email = "ops@acme.io" } }))
  local t = ok(node.request("POST", "/v2/integrations/token",
    { json = { Id = d.CustomerID, Secret = d.CustomerSecret, Entity = "customer" } }))
  return { id = d.CustomerID, secret = d.CustomerSecret, token = t }
end

local function app(node, customer_token)
  local d = ok(node.request("POST", "/v2/integrations/app", { headers = auth(customer_token), json = {
    AppName = "Desk", ExotelAccountSid = "acme1", ExotelApiKey = "k", ExotelApiToken = "t", ExotelDomain = "mumbai",
    IsActive = true } }))
  local t = ok(node.request("POST", "/v2/integrations/token", { json = { Id = d.AppID, Secret = d.AppSecret, Entity = "app" } }))
  return { id = d.AppID, token = t }
end

local function calls(prefix, n)
  local records = {}
  for i = 1, n do
    records[i] = U.call { CallSid = prefix .. "-" .. i, AppUserId = "agent-" .. (i % 9), Duration = i * 7 % 400,
                          StartTime = string.format("2024-06-%02dT%02d:00:00Z", i % 28 + 1, i % 24) }
  end
  return records
end

describe("three nodes on one PostgreSQL", function()
  local pgdir, conninfo
  local node = {}

  local function start(i)
    -- A handler budget of 10 s (not 1 s): what is checked here is what gets stored, and on a
    -- loaded test machine a batch that retries its serializable transaction can take seconds.
    local s = proc.serve({ "--db", conninfo, "--db-pool", "4", "--workers", "2", "--scripts", "scripts",
                           "--schema", "schema", "--budget-ms", "10000" }, { APIENGINE_KEY = KEY })
    assert(s.pid, "node " .. i .. " did not start:\n" .. s.read_log())
    local n = as_app(s)
    n.server, n.port, n.pid = s, s.port, s.pid
    node[i] = n
    return n
  end

  setup(function()
    local code, out = proc.run({ "tests/support/pg.sh", "start", my_pid() }, nil, 60000)
    assert(code == 0, "pg.sh start failed: " .. tostring(out))
    pgdir = assert(out:match("(/tmp/apiengine%-pg%.[%w]+)"))
    conninfo = "host=" .. pgdir .. " user=postgres dbname=postgres"
    for i = 1, NODES do start(i) end
  end)
  teardown(function()
    proc.cleanup()
    if pgdir then proc.run({ "tests/support/pg.sh", "stop", pgdir }, nil, 30000) end
  end)

  it("a customer created on node 1 logs in on node 2 and is deleted on node 3; its token then fails on all", function()
    local d = ok(node[1].request("POST", "/v2/integrations/customer", { json = { CustomerName = "Acme", Email = "a@acme.io" } }))
    local token = ok(node[2].request("POST", "/v2/integrations/token",
      { json = { Id = d.CustomerID, Secret = d.CustomerSecret, Entity = "customer" } }))
    local got = ok(node[3].request("GET", "/v2/integrations/customer", { headers = auth(token) }))
    assert.equal(d.CustomerID, got.CustomerID)
    assert.equal(d.CustomerSecret, got.CustomerSecret) -- sealed on node 1, opened on node 3: one key
    assert.equal("Deleted Successfully", ok(node[3].request("DELETE", "/v2/integrations/customer", { headers = auth(token) })))
    for i = 1, NODES do
      assert.equal(401, node[i].request("GET", "/v2/integrations/customer", { headers = auth(token) }).status)
    end
    local res = node[1].request("POST", "/v2/integrations/token",
      { json = { Id = d.CustomerID, Secret = d.CustomerSecret, Entity = "customer" } })
    assert.equal(401, res.status, res.body)
  end)

  it("counts a call batch posted to all three nodes at once exactly once", function()
    local c = customer(node[1], "Calls")
    local a = app(node[2], c.token)
    local accepted, duplicates, minutes, total = 0, 0, 0, 0
    for round = 1, 4 do
      local batch = calls("r" .. round, 150)
      for _, r in ipairs(batch) do minutes = minutes + (r.Duration + 59) // 60 end
      total = total + #batch
      local conns = {}
      for i = 1, NODES do
        conns[i] = send(node[i], "POST", "/v2/integrations/calls", { headers = auth(a.token), json = batch })
      end
      for i = 1, NODES do
        local data = ok(assert(receive(conns[i]), "node " .. i .. " did not answer"))
        accepted, duplicates = accepted + data.Accepted, duplicates + data.Duplicates
      end
    end
    assert.equal(total, accepted)
    assert.equal(total * (NODES - 1), duplicates)
    for i = 1, NODES do
      local res = node[i].request("GET", "/v2/integrations/" .. c.id .. "/usage?start_date=2024-06-01&end_date=2024-06-30",
        { headers = auth(c.token) })
      assert.equal(200, res.status, res.body)
      assert.equal(total, res.json.data.usage.total_calls)
      assert.equal(minutes, res.json.data.usage.total_minutes)
      assert.equal(1, res.json.data.usage.active_apps)
      assert.equal(9, res.json.data.usage.active_users)
    end
  end)

  it("never lets concurrent user creation on three nodes pass the plan's 50 users per app", function()
    local c = customer(node[3], "Users")
    local a = app(node[1], c.token)
    local conns, n = {}, 0
    -- 12 batches of 10 new users (no AppUserId twice), 4 per node, all in flight at once: 120 > 50.
    for i = 1, NODES do
      for _ = 1, 4 do
        local list = {}
        for k = 1, 10 do list[k] = Users.body(n * 10 + k) end
        n = n + 1
        conns[#conns + 1] = send(node[i], "POST", Users.PATH, { headers = auth(a.token), json = json.array(list) })
      end
    end
    local created = 0
    for _, conn in ipairs(conns) do
      local res = assert(receive(conn))
      if res.status == 200 then
        assert.equal(10, #res.json.Data)
        created = created + 10
      else
        assert.equal(403, res.status, res.body)
        assert.truthy(res.json.Error:find("50", 1, true), res.json.Error)
      end
    end
    assert.equal(50, created)
    for i = 1, NODES do
      local res = node[i].request("GET", "/v2/integrations/" .. c.id, { headers = auth(c.token) })
      assert.equal(200, res.status, res.body)
      assert.equal(50, res.json.data.users_count)
    end
    local page = ok(node[2].request("GET", Users.PATH .. "?page_size=500", { headers = auth(a.token) }))
    assert.equal(50, #page.Users)
  end)

  it("holds the token lockout across nodes: five failures spread over three nodes lock the Id everywhere", function()
    local c = customer(node[1], "Locked")
    local function attempt(i, secret)
      return node[i].request("POST", "/v2/integrations/token", { json = { Id = c.id, Secret = secret, Entity = "customer" } })
    end
    for k, i in ipairs({ 1, 2, 3, 1, 2 }) do
      local res = attempt(i, "wrong-" .. k)
      assert.equal(401, res.status, res.body)
    end
    for i = 1, NODES do
      local res = attempt(i, c.secret) -- the right secret, too late
      assert.equal(429, res.status, res.body)
      assert.truthy(tonumber(res.headers["retry-after"]))
    end
  end)

  it("loses no acknowledged write when one node is killed with SIGKILL during writes", function()
    local c = customer(node[1], "Durable")
    local a = app(node[1], c.token)
    local victim = node[2]
    local acked, sent, n = {}, 0, 0
    -- Five rounds of 4 batches that complete, then 8 batches at once and kill -9 as soon as the
    -- first of them is answered: the other 7 are in flight (some committed, some not).
    for round = 1, 6 do
      local conns, prefixes = {}, {}
      for k = 1, round < 6 and 4 or 8 do
        n = n + 1
        prefixes[k] = "kill-" .. n
        conns[k] = send(victim, "POST", "/v2/integrations/calls", { headers = auth(a.token), json = calls(prefixes[k], 100) })
        sent = sent + 1
      end
      for k = 1, #conns do
        local res = receive(conns[k])
        if round == 6 and k == 1 then testing.kill(victim.pid, 9) end
        if res and res.status == 200 then
          assert.same({ Accepted = 100, Duplicates = 0 }, res.json.Data)
          acked[#acked + 1] = prefixes[k]
        elseif res and res.status ~= 503 then -- a 503 acknowledges nothing (the client retries)
          error("unexpected answer: " .. res.status .. " " .. res.body)
        end
      end
    end
    assert.equal(137, victim.server.stop()) -- 128 + SIGKILL: it did not exit by itself
    assert.is_true(#acked >= 21, "acknowledged batches: " .. #acked)
    -- Every acknowledged batch is stored whole: posting it again through a surviving node is all duplicates.
    for _, prefix in ipairs(acked) do
      assert.same({ Accepted = 0, Duplicates = 100 }, ok(node[3].request("POST", "/v2/integrations/calls",
        { headers = auth(a.token), json = calls(prefix, 100) })), prefix)
    end
    -- And a batch is all or nothing: the usage counts whole batches only.
    local res = node[1].request("GET", "/v2/integrations/" .. c.id .. "/usage?start_date=2024-06-01&end_date=2024-06-30",
      { headers = auth(c.token) })
    assert.equal(200, res.status, res.body)
    local stored = res.json.data.usage.total_calls
    assert.equal(0, stored % 100)
    assert.is_true(stored >= #acked * 100 and stored <= sent * 100, "stored " .. stored)
    io.stderr:write(string.format("[multinode] sent %d batches to the killed node, acknowledged %d, stored %d\n", sent,
                                  #acked, stored // 100))
  end)
end)
