-- The sandbox of route scripts and the budget of loading them: the standard library, the
-- engine's modules and the globals are read-only to scripts; the environment's keys and
-- secrets are out of their reach; a script whose top level loops or eats memory fails the
-- start, the reload, `check` and the in-process load with file:line. Servers run on loopback,
-- are waited for with a bound, and are stopped.
local spec = require "engine.spec"
local testing = require "engine.testing"
local socket = require "socket"

local SCHEMA = "tests/fixtures/engine/schema"

local function write(path, text)
  local f = assert(io.open(path, "w"))
  f:write(text)
  f:close()
end

local function read(path)
  local f = io.open(path)
  if not f then return nil end
  local s = f:read("a")
  f:close()
  return s
end

-- Polls fn every 20 ms until it returns a true value or ms pass; returns that value or nil.
local function wait_for(fn, ms)
  for _ = 1, (ms or 10000) // 20 do
    local v = fn()
    if v then return v end
    testing.sleep(20)
  end
  return fn()
end

local started, dirs = {}, {}

local function tmpdir()
  local d = testing.mkdtemp()
  dirs[#dirs + 1] = d
  os.execute("mkdir -p " .. d .. "/scripts " .. d .. "/schema && cp " .. SCHEMA .. "/*.sql " .. d .. "/schema/")
  write(d .. "/scripts/a.lua", 'require("engine.route").get("/a", function() return 200, { a = true } end)\n')
  return d
end

local function args_for(dir, extra)
  local a = { "--scripts", dir .. "/scripts", "--schema", dir .. "/schema", "--db", dir .. "/db.sqlite",
    "--workers", "2" }
  for _, v in ipairs(extra or {}) do a[#a + 1] = v end
  return a
end

-- Runs `apiengine <argv...>` to its end (bounded by ms, default 15 s): exit code (nil when it
-- had to be killed), output (stdout and stderr), milliseconds taken.
local function run(argv, env, ms)
  local dir = testing.mkdtemp()
  local t0 = socket.gettime()
  local pid = testing.spawn({ testing.exe(), table.unpack(argv) }, dir .. "/out", env)
  local code = testing.wait(pid, ms or 15000)
  local took = (socket.gettime() - t0) * 1000
  if code == nil then
    testing.kill(pid, 9)
    testing.wait(pid, 5000)
  end
  local out = read(dir .. "/out")
  testing.rmtree(dir)
  return code, out, took
end

-- Starts `apiengine serve` with args; returns a server table once it listens, or with .code
-- set when it exited first (bounded by 15 s).
local function serve(args, env)
  local port = testing.free_port()
  local s = { port = port, log = testing.mkdtemp() .. "/server.log" }
  s.pid = testing.spawn({ testing.exe(), "serve", "--listen", "127.0.0.1:" .. port, table.unpack(args) }, s.log, env)
  started[#started + 1] = s
  function s.read_log() return read(s.log) or "" end
  function s.stop(sig)
    if not s.pid then return s.code end
    testing.kill(s.pid, sig or 15)
    s.code = testing.wait(s.pid, 15000)
    if s.code == nil then
      testing.kill(s.pid, 9)
      testing.wait(s.pid, 5000)
    end
    s.pid = nil
    return s.code
  end
  wait_for(function()
    local code = testing.wait(s.pid, 0)
    if code then
      s.code, s.pid = code, nil
      return true
    end
    return s.read_log():find("listening on", 1, true)
  end, 15000)
  return s
end

-- One request on a new connection: status, body (nil when nothing answers).
local function get(port, path, method)
  local c = socket.tcp()
  c:settimeout(5)
  if not c:connect("127.0.0.1", port) then
    c:close()
    return nil
  end
  c:send((method or "GET") .. " " .. path .. " HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 0\r\n\r\n")
  local raw, _, partial = c:receive("*a")
  c:close()
  raw = raw or partial
  if not raw or raw == "" then return nil end
  local res = spec.parse_response(raw)
  return res.status, res.body, res.headers
end

after_each(function()
  for i = #started, 1, -1 do
    started[i].stop()
    local logdir = started[i].log:match("^(.*)/server%.log$")
    if logdir then testing.rmtree(logdir) end
    started[i] = nil
  end
  for i = #dirs, 1, -1 do
    testing.rmtree(dirs[i])
    dirs[i] = nil
  end
end)

-- A script whose top level never ends (line 3), even when it catches the budget error.
local LOOP = [[
local route = require "engine.route"
route.get("/loop", function() return 200 end)
while true do pcall(function() while true do end end) end
]]

local LOAD_BUDGET = "load budget exceeded (300 ms): loading the scripts took too long (--load-budget-ms or "
  .. "APIENGINE_LOAD_BUDGET_MS sets the budget)"

describe("the load budget", function()
  it("stops a start whose script loops at its top level, naming file:line and the flag", function()
    local dir = tmpdir()
    write(dir .. "/scripts/loop.lua", LOOP)
    local s = serve(args_for(dir, { "--load-budget-ms", "300" }))
    assert.equal(1, s.code, s.read_log())
    assert.truthy(s.read_log():find(dir .. "/scripts/loop.lua:3: " .. LOAD_BUDGET, 1, true), s.read_log())
    -- the check-load before the migrations stopped it: no database was made
    assert.is_nil(read(dir .. "/db.sqlite"))
  end)

  it("takes its default from APIENGINE_LOAD_BUDGET_MS, and `check` fails the same way", function()
    local dir = tmpdir()
    write(dir .. "/scripts/loop.lua", LOOP)
    local code, out, took = run({ "check", table.unpack(args_for(dir)) }, { APIENGINE_LOAD_BUDGET_MS = "300" })
    assert.equal(1, code, out)
    assert.truthy(out:find(dir .. "/scripts/loop.lua:3: " .. LOAD_BUDGET, 1, true), out)
    assert.is_true(took < 10000, tostring(took))
  end)

  it("refuses a reload whose script loops; the old scripts keep serving", function()
    local dir = tmpdir()
    local s = serve(args_for(dir, { "--load-budget-ms", "300" }))
    assert.is_nil(s.code, s.read_log())
    assert.equal(200, get(s.port, "/a"))
    write(dir .. "/scripts/loop.lua", LOOP)
    testing.kill(s.pid, 1)
    assert.truthy(wait_for(function()
      return s.read_log():find("error reload 1 refused: " .. dir .. "/scripts/loop.lua:3: " .. LOAD_BUDGET, 1, true)
    end), s.read_log())
    for _ = 1, 10 do
      assert.equal(200, get(s.port, "/a"))
      assert.equal(404, get(s.port, "/loop"))
    end
    assert.equal(0, s.stop())
  end)

  it("stops a load that passes the memory cap, naming the file and the flag", function()
    local dir = tmpdir()
    write(dir .. "/scripts/big.lua", "local t = {}\nfor i = 1, 1e9 do t[i] = ('x'):rep(64) .. i end\n")
    local code, out = run { "check", table.unpack(args_for(dir, { "--memory-limit-mb", "16" })) }
    assert.equal(1, code, out)
    assert.truthy(out:find(dir .. "/scripts/big.lua: loading it passed the memory cap of the Lua state (16 MiB; "
      .. "--memory-limit-mb or APIENGINE_MEMORY_LIMIT_MB sets it): not enough memory", 1, true), out)
  end)

  it("bounds the in-process load of `apiengine test` too", function()
    local dir = tmpdir()
    write(dir .. "/scripts/loop.lua", LOOP)
    local ok, err = pcall(testing.load_scripts, dir .. "/scripts", 300)
    assert.is_false(ok)
    assert.truthy(tostring(err):find(dir .. "/scripts/loop.lua:3: " .. LOAD_BUDGET, 1, true), tostring(err))
  end)
end)
