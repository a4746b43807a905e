-- Suspendable handlers (lua_runtime.c's suspension, lua_async.c's engine.time.sleep, conn.c's
-- C_RUN): a handler that sleeps yields to the engine and the worker serves other requests
-- meanwhile; the budget covers the wait; reloads and the drain wait for suspended requests.
-- The real binary with 1 worker on loopback (every server is stopped), and the in-process app.
local spec = require "engine.spec"
local testing = require "engine.testing"
local socket = require "socket"

local SCHEMA = "tests/fixtures/engine/schema"
local root = testing.mkdtemp()

local function write(path, text)
  local f = assert(io.open(path, "w"))
  f:write(text)
  f:close()
end

local function scripts(version)
  return [[
local route = require "engine.route"
local time = require "engine.time"
local db = require "engine.db"
local VERSION = "]] .. version .. [["

route.get("/hello", function() return 200, { hello = VERSION } end)
route.get("/sleep/{ms}", function(req)
  local ms = math.tointeger(tonumber(req.params.ms))
  local t0 = time.now()
  time.sleep(ms)
  -- the timer runs on the loop's monotonic ms, time.now on the wall clock's: 2 ms of rounding
  return 200, { version = VERSION, slept = ms, waited = time.now() - t0 >= ms - 2, id = req.request_id,
    params = req.params.ms }
end)
route.get("/twice", function(req)
  time.sleep(20)
  local a = req.query.a
  time.sleep(20)
  return 200, { a = a, version = VERSION }
end)
route.get("/yield", function() coroutine.yield("forged") return 200, "unreachable" end)
route.get("/in-tx", function()
  local ok, err = pcall(db.tx, function() time.sleep(10) end)
  return 200, { ok = ok, err = tostring(err) }
end)
route.get("/in-coroutine", function()
  local ok, err = pcall(coroutine.wrap(function() time.sleep(10) end))
  return 200, { ok = ok, err = tostring(err) }
end)
route.get("/generator", function()
  local gen = coroutine.wrap(function() for i = 1, 3 do coroutine.yield(i) end end)
  local got = { gen() }
  time.sleep(10)
  got[#got + 1] = gen()
  got[#got + 1] = gen()
  return 200, { got = got }
end)
route.get("/bad-ms", function()
  local ok, err = pcall(time.sleep, -1)
  return 200, { ok = ok, err = tostring(err) }
end)
]]
end

os.execute("mkdir -p " .. root .. "/scripts " .. root .. "/hooked")
write(root .. "/scripts/a.lua", scripts("old"))
write(root .. "/hooked/a.lua", scripts("hooked") .. [[
route.before(function(req)
  if req.path == "/hello" then time.sleep(5) end
  req.order = "before"
end)
route.after(function(req, status) return { ["X-After"] = req.order .. " " .. status } end)
]])

teardown(function() testing.rmtree(root) end)

-- Opens a connection and sends one GET (keep-alive unless close); the connection, open.
local function send_get(port, path, close)
  local c = assert(socket.tcp())
  c:settimeout(5)
  assert(c:connect("127.0.0.1", port))
  assert(c:send("GET " .. path .. " HTTP/1.1\r\nHost: x\r\n" .. (close and "Connection: close\r\n" or "") .. "\r\n"))
  return c
end

local function read_all(conns)
  local out = {}
  for i, c in ipairs(conns) do
    out[i] = spec.read_response(c)
    c:close()
  end
  return out
end

describe("engine.time.sleep on the real server (1 worker)", function()
  local srv = spec.server { scripts = root .. "/scripts", schema = SCHEMA, workers = 1, args = { "--budget-ms", "1500" } }

  it("serves 20 concurrent 200 ms sleeps in well under 20 x 200 ms", function()
    local t0 = socket.gettime()
    local conns = {}
    for i = 1, 20 do conns[i] = send_get(srv.port, "/sleep/200") end
    local res = read_all(conns)
    local took = socket.gettime() - t0
    local ids = {}
    for i = 1, 20 do
      assert.equal(200, res[i].status, res[i].body)
      assert.equal("old", res[i].json.version)
      assert.equal(200, res[i].json.slept)
      assert.is_true(res[i].json.waited)
      ids[res[i].json.id] = true
    end
    local n = 0
    for _ in pairs(ids) do n = n + 1 end
    assert.equal(20, n) -- each its own request table
    assert.is_true(took >= 0.19, "took " .. took)
    assert.is_true(took < 1.0, "20 sleeps of 200 ms took " .. took .. " s on 1 worker")
  end)

  it("answers /hello at once while a sleeping request is in flight", function()
    local sleeper = send_get(srv.port, "/sleep/600")
    testing.sleep(50) -- the sleep has started
    local t0 = socket.gettime()
    local res = srv.request("GET", "/hello")
    local took = socket.gettime() - t0
    assert.equal(200, res.status)
    assert.same({ hello = "old" }, res.json)
    assert.is_true(took < 0.05, "/hello took " .. took .. " s during a sleep")
    sleeper:settimeout(0)
    local early = sleeper:receive(1)
    assert.is_nil(early) -- the sleeper has not been answered yet
    sleeper:settimeout(5)
    local s = spec.read_response(sleeper)
    sleeper:close()
    assert.equal(200, s.status)
    assert.equal(600, s.json.slept)
  end)

  it("keeps a pipelined next request on the same connection waiting until the sleep answers", function()
    local c = assert(socket.tcp())
    c:settimeout(5)
    assert(c:connect("127.0.0.1", srv.port))
    local t0 = socket.gettime()
    assert(c:send("GET /sleep/150 HTTP/1.1\r\nHost: x\r\n\r\nGET /hello HTTP/1.1\r\nHost: x\r\n\r\n"))
    local first = spec.read_response(c)
    local second = spec.read_response(c)
    local took = socket.gettime() - t0
    c:close()
    assert.equal(200, first.status)
    assert.equal(150, first.json.slept)
    assert.equal(200, second.status)
    assert.same({ hello = "old" }, second.json)
    assert.is_true(took >= 0.14, "took " .. took)
  end)

  it("resumes the handler after each of several sleeps, with its request intact", function()
    local res = srv.request("GET", "/twice?a=x%20y")
    assert.equal(200, res.status, res.body)
    assert.same({ a = "x y", version = "old" }, res.json)
  end)

  it("answers 503 budget_exceeded at the deadline when the sleep outlasts the budget", function()
    local t0 = socket.gettime()
    local res = srv.request("GET", "/sleep/5000")
    local took = socket.gettime() - t0
    assert.equal(503, res.status)
    assert.equal("budget_exceeded", res.json.error.code)
    assert.equal("script time budget exceeded", res.json.error.message)
    assert.is_true(took >= 1.4 and took < 2.5, "answered after " .. took .. " s (budget 1500 ms)")
    assert.truthy(srv.read_log():find("script budget exceeded (1500 ms) while the handler waited (engine.time.sleep)",
      1, true))
    assert.equal(200, srv.request("GET", "/hello").status)
  end)

  it("survives a client that disconnects mid-sleep and keeps serving", function()
    for _ = 1, 5 do
      local c = send_get(srv.port, "/sleep/100")
      c:close()
    end
    testing.sleep(300)
    assert.is_nil(testing.wait(srv.pid, 0)) -- still running
    local res = srv.request("GET", "/hello")
    assert.equal(200, res.status)
  end)

  it("keeps a script's coroutine.yield out of the handler a 500 with the same message", function()
    local res = srv.request("GET", "/yield")
    assert.equal(500, res.status)
    assert.equal("internal_error", res.json.error.code)
    assert.truthy(srv.read_log():find("handler yielded: coroutine.yield is not allowed across the handler boundary",
      1, true))
  end)

  it("raises inside db.tx, in a script's own coroutine, and on a bad argument", function()
    local res = srv.request("GET", "/in-tx")
    assert.equal(200, res.status)
    assert.is_false(res.json.ok)
    assert.truthy(res.json.err:find("engine.time.sleep: cannot wait inside db.tx", 1, true), res.json.err)
    res = srv.request("GET", "/in-coroutine")
    assert.is_false(res.json.ok)
    assert.truthy(res.json.err:find("cannot wait inside a coroutine the script created", 1, true), res.json.err)
    res = srv.request("GET", "/bad-ms")
    assert.is_false(res.json.ok)
    assert.truthy(res.json.err:find("integer milliseconds", 1, true), res.json.err)
  end)

  it("lets a script's own coroutines yield inside a handler that sleeps", function()
    local res = srv.request("GET", "/generator")
    assert.equal(200, res.status, res.body)
    assert.same({ got = { 1, 2, 3 } }, res.json)
  end)

  it("stops cleanly after all that (exit 0; under ASan: no leak or error report)", function()
    local code = srv.stop()
    local log = srv.read_log()
    assert.equal(0, code, log)
    assert.is_nil(log:find("Sanitizer", 1, true), log)
  end)
end)

describe("suspended requests across a reload and the drain", function()
  local dir
  before_each(function()
    dir = testing.mkdtemp()
    os.execute("mkdir -p " .. dir .. "/scripts")
    write(dir .. "/scripts/a.lua", scripts("old"))
  end)
  after_each(function() testing.rmtree(dir) end)

  it("answers 10 in-flight sleeps with the old scripts after a reload, the next request with the new", function()
    local srv = spec.server { scripts = dir .. "/scripts", schema = SCHEMA, workers = 1, manual = true }
    srv.start()
    local ok, err = pcall(function()
      local conns = {}
      for i = 1, 10 do conns[i] = send_get(srv.port, "/sleep/700", true) end
      testing.sleep(100)
      write(dir .. "/scripts/a.lua", scripts("new"))
      testing.kill(srv.pid, 1)
      for _ = 1, 100 do
        if srv.read_log():find("reload 1 done", 1, true) then break end
        testing.sleep(20)
      end
      assert.truthy(srv.read_log():find("reload 1 done", 1, true), srv.read_log())
      local fresh = srv.request("GET", "/hello") -- while the 10 still sleep on the old runtime
      assert.same({ hello = "new" }, fresh.json)
      local res = read_all(conns)
      for i = 1, 10 do
        assert.equal(200, res[i].status, res[i].body)
        assert.equal("old", res[i].json.version)
      end
      assert.same({ version = "new", slept = 5 }, (function()
        local r = srv.request("GET", "/sleep/5").json
        return { version = r.version, slept = r.slept }
      end)())
    end)
    local code = srv.stop()
    local log = srv.read_log()
    testing.rmtree(srv.dir)
    assert(ok, err)
    assert.equal(0, code, log) -- the old runtime was freed after its last request (ASan: no leak)
    assert.is_nil(log:find("Sanitizer", 1, true), log)
  end)

  it("still stops a long SQL statement at the budget after a reload", function()
    -- Freeing the replaced runtime took the SQLite progress handler off the worker's connection,
    -- so after a reload a statement ran past the budget to its end.
    write(dir .. "/scripts/b.lua", [[
local route = require "engine.route"
local db = require "engine.db"
route.get("/slow-sql", function()
  return 200, db.one("WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 300000000) " ..
    "SELECT count(*) AS n FROM c")
end)
]])
    local srv = spec.server { scripts = dir .. "/scripts", schema = SCHEMA, workers = 1, manual = true,
      args = { "--budget-ms", "300" } }
    srv.start()
    local ok, err = pcall(function()
      testing.kill(srv.pid, 1)
      for _ = 1, 100 do
        if srv.read_log():find("reload 1 done", 1, true) then break end
        testing.sleep(20)
      end
      assert.truthy(srv.read_log():find("reload 1 done", 1, true), srv.read_log())
      local t0 = socket.gettime()
      local res = srv.request("GET", "/slow-sql", { timeout = 5 })
      local took = socket.gettime() - t0
      assert.equal(503, res.status, res.body)
      assert.equal("budget_exceeded", res.json.error.code)
      assert.is_true(took < 1.5, "the statement ran " .. took .. " s past a 300 ms budget")
    end)
    srv.stop()
    testing.rmtree(srv.dir)
    assert(ok, err)
  end)

  it("answers in-flight sleeps at SIGTERM, then exits 0", function()
    local srv = spec.server { scripts = dir .. "/scripts", schema = SCHEMA, workers = 1, manual = true }
    srv.start()
    local conns = {}
    for i = 1, 5 do conns[i] = send_get(srv.port, "/sleep/400") end
    testing.sleep(100)
    testing.kill(srv.pid, 15)
    local res = read_all(conns)
    local code = testing.wait(srv.pid, 10000) -- the drain ends by itself
    if code then srv.pid = nil else srv.stop(9) end
    testing.rmtree(srv.dir)
    for i = 1, 5 do
      assert.equal(200, res[i].status, res[i].body)
      assert.equal(400, res[i].json.slept)
      assert.equal("close", res[i].headers["connection"])
    end
    assert.equal(0, code)
  end)

  it("closes a sleep still waiting at the drain deadline without crashing", function()
    local srv = spec.server { scripts = dir .. "/scripts", schema = SCHEMA, workers = 1, manual = true,
      args = { "--budget-ms", "20000", "--drain-timeout", "300" } }
    srv.start()
    local c = send_get(srv.port, "/sleep/10000")
    testing.sleep(100)
    local t0 = socket.gettime()
    testing.kill(srv.pid, 15)
    local got, _, partial = c:receive("*a")
    c:close()
    local code = testing.wait(srv.pid, 10000)
    if code then srv.pid = nil else srv.stop(9) end
    local took = socket.gettime() - t0
    local log = srv.read_log()
    testing.rmtree(srv.dir)
    assert.equal("", got or partial) -- closed without an answer
    assert.is_true(took < 3, "stopped after " .. took .. " s")
    assert.is_not_nil(code)
    assert.is_nil(log:find("Lua panic", 1, true))
    assert.is_nil(log:find("Sanitizer", 1, true), log) -- the abandoned request freed everything
  end)
end)

describe("engine.time.sleep in the in-process app", function()
  local app = spec.app { scripts = root .. "/scripts", schema = SCHEMA }

  it("runs the loop until the sleeping handler answers", function()
    local t0 = socket.gettime()
    local res = app.request("GET", "/sleep/120")
    local took = socket.gettime() - t0
    assert.equal(200, res.status, res.body)
    assert.equal("old", res.json.version)
    assert.equal(120, res.json.slept)
    assert.equal("120", res.json.params)
    assert.is_true(took >= 0.11, "took " .. took)
  end)

  it("answers 503 at the deadline of the in-process budget", function()
    local res = app.request("GET", "/sleep/3000")
    assert.equal(503, res.status)
    assert.equal("budget_exceeded", res.json.error.code)
  end)

  it("keeps coroutine.yield out of a handler a 500", function()
    local res = app.request("GET", "/yield")
    assert.equal(500, res.status)
    assert.truthy(res.error:find("handler yielded: coroutine.yield is not allowed across the handler boundary", 1,
      true))
  end)

  it("raises in db.tx", function()
    local res = app.request("GET", "/in-tx")
    assert.is_false(res.json.ok)
    assert.truthy(res.json.err:find("engine.time.sleep: cannot wait inside db.tx", 1, true), res.json.err)
  end)
end)

describe("request hooks around a handler that sleeps", function()
  local app = spec.app { scripts = root .. "/hooked", schema = SCHEMA }

  it("runs the after hooks once the resumed handler answers", function()
    local res = app.request("GET", "/sleep/30")
    assert.equal(200, res.status, res.body)
    assert.equal("before 200", res.headers["x-after"])
  end)

  it("refuses a sleep in a before hook: only the handler may wait", function()
    local res = app.request("GET", "/hello")
    assert.equal(500, res.status)
    assert.truthy(res.error:find("engine.time.sleep: only a route handler may wait", 1, true), res.error)
  end)
end)
