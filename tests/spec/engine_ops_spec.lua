-- Operating the real binary: one server per database and port (and the handover), the key
-- fingerprint, SIGHUP reloads, the start-up order, the overlay log, `check`, `routes` and
-- `reload`. Every server runs on loopback, is waited for with a bound, and is stopped.
local spec = require "engine.spec"
local testing = require "engine.testing"
local socket = require "socket"

local SCHEMA = "tests/fixtures/engine/schema"
local OVERLAY = "tests/fixtures/overlay/base:tests/fixtures/overlay/top"

package.path = "tests/spec/?.lua;" .. package.path
local proc = require "support.proc"
local read, write, wait_for = proc.read, proc.write, proc.wait_for

local function exists(path) return read(path) ~= nil end

-- The scripts most cases serve: /a, and /setting reading engine.config.
local A = [[
local route = require "engine.route"
local config = require "engine.config"
route.get("/a", function() return 200, { a = true } end)
route.get("/setting", function() return 200, { greeting = config.get("greeting", "none") } end)
]]

-- Runs `apiengine <argv...>` to its end (bounded): exit code, output (stdout and stderr).
local function run(argv, env)
  local code, out = proc.run({ testing.exe(), table.unpack(argv) }, env)
  return code, out
end

-- Starts `apiengine serve` with args; returns a server table once it answers on port, or
-- with .code set when it exited first.
local function serve(args, port, env) return proc.serve(args, env, port) end

-- One GET on a new connection: status, decoded body (or nil when nothing answers).
local function get(port, path)
  local c = socket.tcp()
  c:settimeout(5)
  if not c:connect("127.0.0.1", port) then
    c:close()
    return nil
  end
  c:send("GET " .. path .. " HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
  local raw, _, partial = c:receive("*a")
  c:close()
  raw = raw or partial
  if not raw or raw == "" then return nil end
  local res = spec.parse_response(raw)
  return res.status, res.body
end

-- A temporary directory with scripts/ (A) and schema/ (the engine fixture's).
local function workspace()
  local dir = testing.mkdtemp()
  os.execute("mkdir -p " .. dir .. "/scripts " .. dir .. "/schema && cp " .. SCHEMA .. "/*.sql " .. dir .. "/schema/")
  write(dir .. "/scripts/a.lua", A)
  return dir
end

local function args_for(dir, extra)
  local a = { "--scripts", dir .. "/scripts", "--schema", dir .. "/schema", "--db", dir .. "/db.sqlite",
    "--workers", "2" }
  for _, v in ipairs(extra or {}) do a[#a + 1] = v end
  return a
end

local dirs = {}
local function tmpdir()
  local d = workspace()
  dirs[#dirs + 1] = d
  return d
end

after_each(function()
  proc.cleanup()
  for i = #dirs, 1, -1 do
    testing.rmtree(dirs[i])
    dirs[i] = nil
  end
end)

describe("one server per database and port", function()
  it("refuses a second server on the same database, naming the holder's pid; the first keeps serving", function()
    local dir = tmpdir()
    local first = serve(args_for(dir), testing.free_port())
    assert.is_nil(first.code, first.read_log())
    local port2 = testing.free_port()
    local second = serve(args_for(dir), port2)
    assert.equal(1, second.code)
    assert.truthy(second.read_log():find("error database " .. dir .. "/db.sqlite is in use by another apiengine (pid "
      .. first.pid .. "), which holds " .. dir .. "/db.sqlite.lock: stop it first (kill -TERM it and wait for "
      .. "\"stopped cleanly\"), or start this one with --handover to take over from it\n", 1, true), second.read_log())
    assert.is_nil(get(port2, "/a"))
    assert.equal(200, get(first.port, "/a"))
    assert.equal(first.pid .. "\n", read(dir .. "/db.sqlite.lock"))
    assert.equal(0, first.stop())
  end)

  it("refuses a second server on the same port even with another database, before creating anything", function()
    local dir, other = tmpdir(), tmpdir()
    local port = testing.free_port()
    local first = serve(args_for(dir), port)
    assert.is_nil(first.code, first.read_log())
    local second = serve(args_for(other, { "--db", other .. "/new/db.sqlite" }), port)
    assert.equal(1, second.code)
    assert.truthy(second.read_log():find("error cannot listen on 127.0.0.1:" .. port .. ": Address already in use: "
      .. "another process listens there (another apiengine? stop it first, or start this one with --handover to "
      .. "take over from it)\n", 1, true), second.read_log())
    assert.is_false(exists(other .. "/new/db.sqlite"))
    for _ = 1, 10 do assert.equal(200, get(port, "/a")) end
    assert.equal(0, first.stop())
  end)

  it("with --handover starts beside the old server and takes the lock over when the old one exits", function()
    local dir = tmpdir()
    local port = testing.free_port()
    local old = serve(args_for(dir), port)
    assert.is_nil(old.code, old.read_log())
    local old_pid = old.pid
    local new = serve(args_for(dir, { "--handover" }), port)
    assert.is_nil(new.code, new.read_log())
    assert.truthy(new.read_log():find("info  handover: starting beside pid " .. old_pid .. ", which holds " .. dir
      .. "/db.sqlite.lock: send it SIGTERM once this one listens; this one takes the lock over when it exits\n", 1,
      true), new.read_log())
    assert.equal(0, old.stop())
    assert.truthy(wait_for(function()
      return new.read_log():find("info  handover: the server before this one (pid " .. old_pid .. ") has exited; "
        .. "this one holds " .. dir .. "/db.sqlite.lock now\n", 1, true)
    end, 5000), new.read_log())
    assert.equal(200, get(port, "/a"))
    local third = serve(args_for(dir), testing.free_port())
    assert.equal(1, third.code)
    assert.truthy(third.read_log():find("is in use by another apiengine (pid " .. new.pid .. ")", 1, true))
    assert.equal(0, new.stop())
  end)
end)

describe("the drain at SIGTERM (what a handover relies on)", function()
  -- One worker, and a route that keeps it busy for a whole second of CPU.
  local function busy_server()
    local dir = tmpdir()
    write(dir .. "/scripts/slow.lua", [[
require("engine.route").get("/slow", function()
  local t0 = os.clock()
  while os.clock() - t0 < 1 do end
  return 200, { slow = true }
end)
]])
    local s = serve(args_for(dir, { "--workers", "1", "--budget-ms", "20000" }), testing.free_port())
    assert.is_nil(s.code, s.read_log())
    return s
  end

  local function connect(port)
    local c = socket.tcp()
    c:settimeout(10)
    assert(c:connect("127.0.0.1", port))
    return c
  end

  it("answers a request that an idle keep-alive connection sends just after SIGTERM, with Connection: close", function()
    local s = busy_server()
    local c = connect(s.port)
    c:send("GET /a HTTP/1.1\r\nHost: x\r\n\r\n")
    assert.equal(200, spec.read_response(c).status)
    testing.kill(s.pid, 15)
    testing.sleep(100) -- the drain has begun: before, the idle connection was closed at once
    c:send("GET /a HTTP/1.1\r\nHost: x\r\n\r\n")
    local res = assert(spec.read_response(c))
    assert.equal(200, res.status)
    assert.equal('{"a":true}', res.body)
    assert.equal("close", res.headers["connection"])
    c:close()
    assert.equal(0, testing.wait(s.pid, 10000)) -- already signalled: a second SIGTERM would kill it
    s.pid = nil
  end)

  it("serves the connections queued on the listener when the drain begins instead of resetting them", function()
    local s = busy_server()
    local busy = connect(s.port)
    busy:send("GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
    testing.sleep(200)
    testing.kill(s.pid, 15)
    testing.sleep(200)
    -- Queued by the kernel while the worker is busy; the worker sees the drain before it.
    local queued = connect(s.port)
    queued:send("GET /a HTTP/1.1\r\nHost: x\r\n\r\n")
    assert.equal(200, spec.read_response(busy).status)
    local res = assert(spec.read_response(queued))
    assert.equal(200, res.status)
    assert.equal("close", res.headers["connection"])
    busy:close()
    queued:close()
    assert.equal(0, testing.wait(s.pid, 10000))
    s.pid = nil
  end)
end)

describe("the server key's fingerprint", function()
  it("is stored at first start; another key or a lost key file stops the start, saying what to do", function()
    local dir = tmpdir()
    local db = dir .. "/db.sqlite"
    local first = serve(args_for(dir), testing.free_port())
    assert.is_nil(first.code, first.read_log())
    assert.truthy(first.read_log():find("info  database " .. db .. ": stored the server key's fingerprint (", 1, true))
    assert.equal(0, first.stop())
    local key = read(db .. ".key")

    local other = string.rep("ab", 32)
    local s = serve(args_for(dir), testing.free_port(), { APIENGINE_KEY = other })
    assert.equal(1, s.code)
    assert.matches("error server key: the configured key %(APIENGINE_KEY or the config file's `key`%) is not the key "
      .. "the database " .. db:gsub("%p", "%%%0") .. " was made with %(fingerprint %x+, this key's %x+%): set "
      .. "APIENGINE_KEY to that database's key, or unset it to use its key file " .. db:gsub("%p", "%%%0")
      .. "%.key\n", s.read_log())

    os.rename(db .. ".key", dir .. "/saved.key")
    s = serve(args_for(dir), testing.free_port())
    assert.equal(1, s.code)
    assert.truthy(s.read_log():find("error server key: the key file " .. db .. ".key is missing, and the database "
      .. db .. " was made with a key (its fingerprint ", 1, true), s.read_log())
    assert.truthy(s.read_log():find("put back the key file that belongs to this database (from your backup), or set "
      .. "APIENGINE_KEY to its key", 1, true))
    assert.is_false(exists(db .. ".key")) -- no new key was made

    write(db .. ".key", string.rep("cd", 32) .. "\n")
    os.execute("chmod 600 " .. db .. ".key")
    s = serve(args_for(dir), testing.free_port())
    assert.equal(1, s.code)
    assert.truthy(s.read_log():find("error server key: the key file " .. db .. ".key is not the key the database "
      .. db .. " was made with", 1, true), s.read_log())

    os.rename(dir .. "/saved.key", db .. ".key")
    assert.equal(key, read(db .. ".key"))
    s = serve(args_for(dir), testing.free_port())
    assert.is_nil(s.code, s.read_log())
    assert.equal(0, s.stop())
  end)

  it("is stored at the first start of a database made before fingerprints (by apiengine migrate)", function()
    local dir = tmpdir()
    local db = dir .. "/db.sqlite"
    assert.equal(0, (run { "migrate", "--db", db, "--schema", dir .. "/schema" }))
    local code, out = run { "check", table.unpack(args_for(dir)) }
    assert.equal(0, code, out)
    assert.truthy(out:find("\nserver key: " .. db .. ".key does not exist; the first start creates it\n", 1, true), out)
    local s = serve(args_for(dir), testing.free_port())
    assert.is_nil(s.code, s.read_log())
    assert.truthy(s.read_log():find("stored the server key's fingerprint", 1, true))
    assert.equal(0, s.stop())
    code, out = run { "check", table.unpack(args_for(dir)) }
    assert.equal(0, code, out)
    assert.truthy(out:find("\nserver key: key file, matches the database's fingerprint\n", 1, true), out)
  end)
end)

describe("SIGHUP", function()
  it("reloads scripts and settings in every worker; a broken reload changes nothing and names file:line", function()
    local dir = tmpdir()
    write(dir .. "/config.lua", 'return { settings = { greeting = "hello" } }\n')
    local s = serve(args_for(dir, { "--config", dir .. "/config.lua" }), testing.free_port())
    assert.is_nil(s.code, s.read_log())
    assert.equal(200, get(s.port, "/a"))
    assert.equal(404, get(s.port, "/b"))
    assert.same({ 200, '{"greeting":"hello"}' }, { get(s.port, "/setting") })

    write(dir .. "/scripts/b.lua", 'require("engine.route").get("/b", function() return 200, { b = true } end)\n')
    write(dir .. "/config.lua", 'return { settings = { greeting = "bonjour" } }\n')
    testing.kill(s.pid, 1)
    assert.truthy(wait_for(function()
      return s.read_log():find("info  reload 1 done: 2 workers serve the new scripts (3 routes), in ", 1, true)
    end), s.read_log())
    -- Each connection lands on one of the two workers: enough of them reach both.
    for _ = 1, 20 do
      assert.same({ 200, '{"b":true}' }, { get(s.port, "/b") })
      assert.same({ 200, '{"a":true}' }, { get(s.port, "/a") })
      assert.same({ 200, '{"greeting":"bonjour"}' }, { get(s.port, "/setting") })
    end

    assert.is_nil(s.read_log():find("differs", 1, true))

    write(dir .. "/scripts/c.lua", "local x = \n\nfunction(\n")
    write(dir .. "/config.lua", 'return { access_log = false, settings = { greeting = "hi" } }\n')
    testing.kill(s.pid, 1)
    assert.truthy(wait_for(function()
      return s.read_log():find("error reload 2 refused: " .. dir .. "/scripts/c.lua:4: <name> or '...' expected near "
        .. "<eof>; nothing changed, the old scripts keep serving\n", 1, true)
    end), s.read_log())
    assert.truthy(s.read_log():find("warn  reload 2: the configuration now differs in access_log; a reload applies "
      .. "only the scripts, `settings` and load_budget_ms: restart for the rest\n", 1, true), s.read_log())
    for _ = 1, 10 do
      assert.equal(200, get(s.port, "/a"))
      assert.equal(200, get(s.port, "/b"))
      assert.same({ 200, '{"greeting":"bonjour"}' }, { get(s.port, "/setting") })
    end
    assert.equal(0, s.stop())
    assert.truthy(s.read_log():find("stopped cleanly", 1, true))
  end)

  it("keeps a worker's old scripts when its own build fails, and says so in the result line", function()
    local dir = tmpdir()
    write(dir .. "/scripts/item.lua", [[
local db = require "engine.db"
require("engine.route").post("/item", function()
  db.exec("INSERT INTO items (name) VALUES ('x')")
  return 201
end)
]])
    local s = serve(args_for(dir), testing.free_port())
    assert.is_nil(s.code, s.read_log())
    local c = socket.tcp()
    c:settimeout(5)
    assert(c:connect("127.0.0.1", s.port))
    c:send("POST /item HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
    assert.equal(201, spec.parse_response(c:receive("*a")).status)
    c:close()
    -- Loads on the main thread's empty copy of the schema, fails on the workers' real rows.
    write(dir .. "/scripts/z.lua", [[
if require("engine.db").one("SELECT count(*) AS n FROM items").n > 0 then error("items at load") end
require("engine.route").get("/z", function() return 200 end)
]])
    testing.kill(s.pid, 1)
    assert.truthy(wait_for(function()
      return s.read_log():find("warn  reload 1 partly failed: 0 of 2 workers serve the new scripts, 2 kept the ones "
        .. "they had (above)\n", 1, true)
    end), s.read_log())
    assert.truthy(s.read_log():find("error reload 1: worker 0 keeps the scripts it had: " .. dir
      .. "/scripts/z.lua:1: items at load\n", 1, true), s.read_log())
    assert.equal(200, get(s.port, "/a"))
    assert.equal(404, get(s.port, "/z"))
    assert.equal(0, s.stop())
  end)

  it("applies a changed load_budget_ms and names every other changed setting that waits for a restart", function()
    local dir = tmpdir()
    write(dir .. "/config.lua", "return { load_budget_ms = 200 }\n")
    local s = serve(args_for(dir, { "--config", dir .. "/config.lua" }), testing.free_port())
    assert.is_nil(s.code, s.read_log())
    -- A script that takes 0.5 s to load: past the running budget, within the fresh one.
    write(dir .. "/scripts/slow.lua", "local t = os.clock() while os.clock() - t < 0.5 do end\n"
      .. 'require("engine.route").get("/slow", function() return 200, { slow = true } end)\n')
    write(dir .. "/config.lua", "return { load_budget_ms = 5000, body_timeout = 5000, send_timeout = 5000, "
      .. "max_connections = 100, drain_timeout = 2000, metrics_listen = '127.0.0.1:" .. testing.free_port() .. "', "
      .. "healthz_path = '/live', readyz_path = '/ready' }\n")
    testing.kill(s.pid, 1)
    assert.truthy(wait_for(function()
      return s.read_log():find("info  reload 1 done: 2 workers serve the new scripts (3 routes), in ", 1, true)
    end), s.read_log())
    assert.truthy(s.read_log():find("warn  reload 1: the configuration now differs in body_timeout, send_timeout, "
      .. "max_connections, drain_timeout, metrics_listen, healthz_path, readyz_path; a reload applies only the "
      .. "scripts, `settings` and load_budget_ms: restart for the rest\n", 1, true), s.read_log())
    for _ = 1, 10 do -- both workers
      assert.same({ 200, '{"slow":true}' }, { get(s.port, "/slow") })
    end
    assert.equal(200, get(s.port, "/healthz")) -- the paths wait for the restart
    assert.equal(404, get(s.port, "/live"))
    assert.equal(0, s.stop())
  end)

  it("applies no migration and names the pending ones", function()
    local dir = tmpdir()
    local s = serve(args_for(dir), testing.free_port())
    assert.is_nil(s.code, s.read_log())
    write(dir .. "/schema/0002_more.sql", "CREATE TABLE more (id INTEGER PRIMARY KEY);\n")
    testing.kill(s.pid, 1)
    assert.truthy(wait_for(function() return s.read_log():find("reload 1 done", 1, true) end), s.read_log())
    assert.truthy(s.read_log():find("warn  reload 1: 1 migration(s) pending, not applied by a reload (restart to "
      .. "apply them): " .. dir .. "/schema/0002_more.sql\n", 1, true), s.read_log())
    local code, out = run { "check", table.unpack(args_for(dir)) }
    assert.equal(0, code, out)
    assert.truthy(out:find("\npending migration: " .. dir .. "/schema/0002_more.sql\n", 1, true), out)
    assert.equal(0, s.stop())
  end)

  it("is what `apiengine reload` sends, to the pid file's server or the holder of <db>.lock", function()
    local dir = tmpdir()
    local pidfile = dir .. "/apiengine.pid"
    local s = serve(args_for(dir, { "--pid-file", pidfile }), testing.free_port())
    assert.is_nil(s.code, s.read_log())
    assert.equal(s.pid .. "\n", read(pidfile))
    local code, out = run { "reload", "--pid-file", pidfile }
    assert.equal(0, code)
    assert.equal("sent SIGHUP to pid " .. s.pid .. ": its log says how the reload went (\"reload N done\" or "
      .. "\"reload N refused\")\n", out)
    assert.truthy(wait_for(function() return s.read_log():find("reload 1 done", 1, true) end), s.read_log())
    code = run { "reload", "--db", dir .. "/db.sqlite" }
    assert.equal(0, code)
    assert.truthy(wait_for(function() return s.read_log():find("reload 2 done", 1, true) end), s.read_log())
    assert.equal(0, s.stop())
    assert.is_false(exists(pidfile))
    code, out = run { "reload", "--db", dir .. "/db.sqlite" }
    assert.equal(1, code)
    assert.equal("apiengine: no server runs on " .. dir .. "/db.sqlite (nobody holds " .. dir .. "/db.sqlite.lock)\n",
      out)
  end)
end)

describe("start-up", function()
  it("loads the scripts before it migrates: a syntax error leaves the database and key file untouched", function()
    local dir = tmpdir()
    write(dir .. "/scripts/z.lua", "local route = require 'engine.route'\n\nroute.get('/x', function( return 1 end)\n")
    local s = serve(args_for(dir), testing.free_port())
    assert.equal(1, s.code)
    assert.truthy(s.read_log():find("error " .. dir .. "/scripts/z.lua:3: ", 1, true), s.read_log())
    assert.is_false(exists(dir .. "/db.sqlite"))
    assert.is_false(exists(dir .. "/db.sqlite.key"))

    -- An existing database, a new migration and a broken script: the migration stays pending.
    os.remove(dir .. "/scripts/z.lua")
    s = serve(args_for(dir), testing.free_port())
    assert.is_nil(s.code, s.read_log())
    assert.equal(0, s.stop())
    write(dir .. "/schema/0002_more.sql", "CREATE TABLE more (id INTEGER PRIMARY KEY);\n")
    write(dir .. "/scripts/z.lua", "error('boom at load')\n")
    s = serve(args_for(dir), testing.free_port())
    assert.equal(1, s.code)
    assert.truthy(s.read_log():find(dir .. "/scripts/z.lua:1: boom at load", 1, true), s.read_log())
    os.remove(dir .. "/scripts/z.lua")
    local code, out = run { "check", table.unpack(args_for(dir)) }
    assert.equal(0, code, out)
    assert.truthy(out:find("\npending migration: " .. dir .. "/schema/0002_more.sql\n", 1, true), out)
  end)

  it("lets scripts read, at load time, tables that the pending migrations create", function()
    local dir = tmpdir()
    write(dir .. "/schema/0002_more.sql", "CREATE TABLE more (id INTEGER PRIMARY KEY);\n")
    write(dir .. "/scripts/warm.lua", [[
local db = require "engine.db"
local n = db.one("SELECT count(*) AS n FROM more").n
require("engine.route").get("/warm", function() return 200, { n = n } end)
]])
    local s = serve(args_for(dir), testing.free_port())
    assert.is_nil(s.code, s.read_log())
    assert.same({ 200, '{"n":0}' }, { get(s.port, "/warm") })
    assert.equal(0, s.stop())
  end)

  it("logs one line per overlay file that replaces another, and names everything in the start-up line", function()
    local dir = tmpdir()
    write(dir .. "/config.lua", "return { workers = 1 }\n")
    local s = serve({ "--scripts", OVERLAY, "--schema", SCHEMA, "--db", dir .. "/db.sqlite", "--config",
      dir .. "/config.lua" }, testing.free_port())
    assert.is_nil(s.code, s.read_log())
    local log = s.read_log()
    assert.truthy(log:find("info  scripts: tests/fixtures/overlay/top/things.lua replaces "
      .. "tests/fixtures/overlay/base/things.lua\n", 1, true), log)
    assert.truthy(log:find("info  scripts: tests/fixtures/overlay/top/lib/util.lua replaces "
      .. "tests/fixtures/overlay/base/lib/util.lua\n", 1, true), log)
    local _, replaced = log:gsub(" replaces ", "")
    assert.equal(2, replaced)
    assert.truthy(log:find("info  apiengine %d+%.%d+%.%d+ listening on http://127%.0%.0%.1:" .. s.port .. " %(config '"
      .. dir:gsub("%p", "%%%0") .. "/config%.lua', scripts '" .. OVERLAY:gsub("%p", "%%%0") .. "', schema '"
      .. SCHEMA:gsub("%p", "%%%0") .. "', db '" .. dir:gsub("%p", "%%%0") .. "/db%.sqlite', 1 worker, 2 routes%)\n"),
      log)
    testing.kill(s.pid, 1)
    assert.truthy(wait_for(function() return s.read_log():find("reload 1 done", 1, true) end), s.read_log())
    _, replaced = s.read_log():gsub(" replaces ", "")
    assert.equal(4, replaced)
    assert.equal(0, s.stop())
  end)
end)

describe("apiengine check", function()
  it("prints the database, pending migrations, key and route table, exits 0 and writes nothing", function()
    local dir = tmpdir()
    local code, out = run { "check", table.unpack(args_for(dir)) }
    assert.equal(0, code, out)
    local db = dir .. "/db.sqlite"
    assert.equal(table.concat({
      "config: none",
      "scripts: " .. dir .. "/scripts",
      "schema: " .. dir .. "/schema",
      "database: " .. db .. " does not exist; the first start creates it",
      "pending migration: " .. dir .. "/schema/0001_items.sql",
      "server key: " .. db .. ".key does not exist; the first start creates it",
      "METHOD   PATTERN   HANDLER",
      "GET      /healthz  (engine, before any script: --healthz-path)",
      "GET      /readyz   (engine, before any script: --readyz-path)",
      "GET      /a        " .. dir .. "/scripts/a.lua:3",
      "GET      /setting  " .. dir .. "/scripts/a.lua:4",
      "ok: 2 routes, 1 pending migration(s)",
    }, "\n") .. "\n", out)
    assert.is_false(exists(db))
    assert.is_false(exists(db .. ".key"))
    assert.is_false(exists(db .. ".lock"))
  end)

  it("exits 1 with file:line when a script does not load", function()
    local dir = tmpdir()
    write(dir .. "/scripts/b.lua", "local route = require 'engine.route'\nroute.get('/a', function() end)\n")
    local code, out = run { "check", table.unpack(args_for(dir)) }
    assert.equal(1, code)
    assert.truthy(out:find("apiengine: check failed: " .. dir .. "/scripts/b.lua:2: route GET /a: ", 1, true), out)
  end)
end)

describe("apiengine routes", function()
  it("lists method, pattern, the handler's file:line and the overlay that replaced or wrapped it", function()
    local code, out = run { "routes", "--scripts", OVERLAY, "--schema", SCHEMA, "--db", "/nonexistent/db.sqlite" }
    assert.equal(0, code, out)
    local T = "tests/fixtures/overlay/top/"
    assert.equal(table.concat({
      "METHOD   PATTERN   HANDLER",
      "GET      /healthz  (engine, before any script: --healthz-path)",
      "GET      /readyz   (engine, before any script: --readyz-path)",
      "GET      /other    " .. T .. "aa_wrap.lua:5  (route.replace at " .. T .. "aa_wrap.lua:5, replacing " .. T
        .. "things.lua:5)",
      "GET      /things   " .. T .. "things.lua:4  (" .. T .. "things.lua replaces tests/fixtures/overlay/base/things.lua)",
    }, "\n") .. "\n", out)
  end)
end)

describe("the health and readiness paths", function()
  it("are listed as configured, before any script, and a script's route on one is marked as never answering",
    function()
    local dir = tmpdir()
    write(dir .. "/scripts/b.lua", 'require("engine.route").get("/live", function() return 200, {} end)\n')
    local code, out = run { "routes", "--healthz-path", "/live", "--readyz-path", "/ready/now",
      table.unpack(args_for(dir)) }
    assert.equal(0, code, out)
    assert.equal(table.concat({
      "METHOD   PATTERN     HANDLER",
      "GET      /live       (engine, before any script: --healthz-path)",
      "GET      /ready/now  (engine, before any script: --readyz-path)",
      "GET      /a          " .. dir .. "/scripts/a.lua:3",
      "GET      /live       " .. dir .. "/scripts/b.lua:1  (never answers: the engine's --healthz-path answers /live "
        .. "first)",
      "GET      /setting    " .. dir .. "/scripts/a.lua:4",
    }, "\n") .. "\n", out)
  end)

  it("are the only ones the server answers itself: moved away, /healthz is no route of anyone's", function()
    local dir = tmpdir()
    local s = serve(args_for(dir, { "--healthz-path", "/live", "--readyz-path", "/ready" }), testing.free_port())
    assert.is_nil(s.code, s.read_log())
    assert.same({ 200, '{"status":"ok"}' }, { get(s.port, "/live") })
    assert.same({ 200, '{"status":"ready"}' }, { get(s.port, "/ready") })
    local status, body = get(s.port, "/healthz")
    assert.equal(404, status)
    assert.equal("not_found", require("engine.json").decode(body).error.code)
    assert.equal(404, get(s.port, "/readyz"))
    assert.equal(0, s.stop())
  end)
end)

describe("the in-process app (spec.app)", function()
  local app = spec.app { scripts = "tests/fixtures/metrics/scripts", schema = SCHEMA }

  it("answers /healthz and /readyz as the server does, before the scripts' route of the same path", function()
    local res = app.request("GET", "/healthz")
    assert.equal(200, res.status)
    assert.equal('{"status":"ok"}', res.body)
    assert.equal("application/json", res.headers["content-type"])
    res = app.request("GET", "/readyz")
    assert.equal(200, res.status)
    assert.equal('{"status":"ready"}', res.body)
    res = app.request("HEAD", "/readyz")
    assert.equal(200, res.status)
    assert.equal("", res.body)
    assert.equal(405, app.request("POST", "/healthz").status) -- other methods go to the routes
  end)
end)

describe("apiengine --help", function()
  it("names the commands and flags of operations", function()
    local code, out = run { "--help" }
    assert.equal(0, code)
    for _, text in ipairs { "apiengine check [options]", "apiengine routes [options]", "apiengine reload [options]",
      "--pid-file", "--handover", "SIGHUP reloads", "<db>.lock" } do
      assert.truthy(out:find(text, 1, true), text)
    end
    code, out = run { "serve", "--handover=yes" }
    assert.equal(2, code)
    assert.equal("apiengine: --handover: invalid value 'yes' for --handover\n", out)
  end)
end)

describe("the README", function()
  local readme = assert(read("README.md"))
  -- The lines of the section that starts with heading, up to the next heading of any level.
  local function section(heading)
    local start = assert(readme:find("\n" .. heading .. "\n", 1, true), heading)
    local stop = readme:find("\n#", start + #heading + 2) or #readme
    return readme:sub(start, stop)
  end

  it("lists in the flags table of \"Running the server\" every option `apiengine --help` prints", function()
    local code, out = run { "--help" }
    assert.equal(0, code)
    local rows = {} -- flag (or "—") .. " " .. environment variable, from the table
    for flag, env in section("## Running the server"):gmatch("\n| ([^|]-) | ([^|]-) |") do
      rows[#rows + 1] = { flag = flag:match("^`(%-%-[%w-]+)") or flag, env = env:match("^`(APIENGINE_[%u_]+)`$") or env }
    end
    local function row_of(flag, env)
      for _, r in ipairs(rows) do
        if r.flag == flag and r.env == env then return r end
      end
    end
    local n = 0
    for line in out:gmatch("[^\n]+") do
      local flag, env = line:match("^  (%-%-[%w-]+) .*%[([^%]]+)%]$")
      if not flag and line:match("^  %(no flag%) ") then flag, env = "—", line:match("%[([^%]]+)%]$") end
      if not flag then goto next_line end
      env = env == "flag only" and "—" or env
      assert.truthy(row_of(flag, env), "README's flags table has no row for " .. flag .. " " .. env)
      n = n + 1
      ::next_line::
    end
    assert.is_true(n >= 28, "options read from --help: " .. n)
    for _, r in ipairs(rows) do -- and no flag that --help does not know
      if r.flag:sub(1, 2) == "--" then
        assert.truthy(out:find("\n  " .. r.flag .. " ", 1, true), "--help does not print " .. r.flag)
      end
    end
  end)

  it("names every file under engine/ in the Layout section", function()
    local layout = section("## Layout")
    local p = io.popen("cd engine && ls *.c *.h lua/*")
    local n = 0
    for file in p:lines() do
      local base = file:match("^([%w_]+)%.[ch]$")
      assert.truthy(layout:find("`" .. file .. "`", 1, true) or (base and layout:find("`" .. base .. "`", 1, true)),
        "engine/" .. file .. " is not in the README's Layout section")
      n = n + 1
    end
    p:close()
    assert.is_true(n > 60, "files: " .. n)
  end)
end)

-- One request with a JSON body on a new connection -> status, decoded body.
local function call(port, method, path, body, token)
  local c = socket.tcp()
  c:settimeout(10)
  assert(c:connect("127.0.0.1", port))
  local data = body and require("engine.json").encode(body) or ""
  c:send(method .. " " .. path .. " HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\n"
    .. (token and ("Authorization: " .. token .. "\r\n") or "") .. "Content-Length: " .. #data .. "\r\n\r\n" .. data)
  local raw, _, partial = c:receive("*a")
  c:close()
  local res = spec.parse_response(raw or partial)
  return res.status, res.json
end

local function mode_of(path)
  local p = io.popen("stat -c %a " .. path)
  local m = p:read("l")
  p:close()
  return m
end

describe("apiengine backup #sqlite", function()
  local P = "/v2/integrations"
  -- A 10 s budget: these tests are about the copy; under ThreadSanitizer on a busy 2-core machine a
  -- batch of 1,000 calls beside the running backup came near the default 1 s.
  local function default_args(dir)
    return { "--scripts", "scripts", "--schema", "schema", "--db", dir .. "/db.sqlite", "--workers", "2",
             "--budget-ms", "10000" }
  end
  local function new_customer(port, n)
    local st, res = call(port, "POST", P .. "/customer", { CustomerName = "Customer " .. n, Email = "c" .. n .. "@x.io" })
    assert.equal(200, st)
    return { id = res.Data.CustomerID, secret = res.Data.CustomerSecret }
  end
  local seq = 0
  local function post_calls(port, token)
    local batch = {}
    for i = 1, 1000 do
      seq = seq + 1
      batch[i] = { CallSid = string.format("sid-%08d", seq), Direction = "inbound", Channel = "pstn",
        StartTime = "2024-06-03T10:15:00Z", Duration = 60 + i }
    end
    local st, res = call(port, "POST", P .. "/calls", batch, token)
    assert.equal(200, st, require("engine.json").encode(res))
  end

  it("copies a database under write load consistently, with its key file; the restored copy serves its logins",
    function()
      local dir, restored = tmpdir(), tmpdir()
      local out = dir .. "/backup.db"
      local s = serve(default_args(dir), testing.free_port())
      assert.is_nil(s.code, s.read_log())
      local before = {}
      for n = 1, 5 do before[n] = new_customer(s.port, n) end
      local _, tok = call(s.port, "POST", P .. "/token", { Id = before[1].id, Secret = before[1].secret,
        Entity = "customer" })
      local st, app = call(s.port, "POST", P .. "/app", { AppName = "desk", ExotelAccountSid = "acc", ExotelApiKey = "k",
        ExotelApiToken = "t", ExotelDomain = "mumbai", IsActive = true }, tok.Data)
      assert.equal(200, st)
      local _, atok = call(s.port, "POST", P .. "/token", { Id = app.Data.AppID, Secret = app.Data.AppSecret,
        Entity = "app" })
      for _ = 1, 20 do post_calls(s.port, atok.Data) end -- some megabytes, so the copy takes many steps

      -- Writes go on while the backup runs: customers and batches of 1,000 call records.
      local during, n = {}, 5
      local pid = testing.spawn({ testing.exe(), "backup", "--db", dir .. "/db.sqlite", out }, dir .. "/backup.out")
      local code
      repeat
        n = n + 1
        during[#during + 1] = new_customer(s.port, n)
        post_calls(s.port, atok.Data)
        code = testing.wait(pid, 0)
      until code
      assert.equal(0, code, read(dir .. "/backup.out"))
      assert.matches("^backup: " .. dir:gsub("%p", "%%%0") .. "/db%.sqlite %(%d+ pages%) copied to "
        .. out:gsub("%p", "%%%0") .. " in %d+ ms; its key file to " .. out:gsub("%p", "%%%0")
        .. "%.key %(mode 0600%)\n$", read(dir .. "/backup.out"))
      assert.equal("600", mode_of(out .. ".key"))
      assert.equal(read(dir .. "/db.sqlite.key"), read(out .. ".key"))
      assert.is_true(#during >= 1)

      -- Never overwrites.
      local size = #read(out)
      local code2, msg = run { "backup", "--db", dir .. "/db.sqlite", out }
      assert.equal(1, code2)
      assert.equal("apiengine: backup failed: " .. out .. " exists: a backup never overwrites; remove it or choose "
        .. "another name\n", msg)
      assert.equal(size, #read(out))
      assert.equal(0, s.stop())

      -- Restore as the README says: the copy and its key file in place of the database and its key.
      os.execute("cp " .. out .. " " .. restored .. "/db.sqlite && cp -p " .. out .. ".key " .. restored
        .. "/db.sqlite.key")
      local r = serve(default_args(restored), testing.free_port())
      assert.is_nil(r.code, r.read_log())
      for _, c in ipairs(before) do -- acknowledged before the backup began: there, and their secrets open
        local st3, res = call(r.port, "POST", P .. "/token", { Id = c.id, Secret = c.secret, Entity = "customer" })
        assert.equal(200, st3, require("engine.json").encode(res))
      end
      local present = 0
      for _, c in ipairs(during) do -- written during the copy: there whole, or not at all
        local st3 = call(r.port, "POST", P .. "/token", { Id = c.id, Secret = c.secret, Entity = "customer" })
        assert.is_true(st3 == 200 or st3 == 401, tostring(st3))
        if st3 == 200 then present = present + 1 end
      end
      assert.equal(0, r.stop())
      testing.open_db(restored .. "/db.sqlite", "schema")
      local sdb = require "engine.db"
      assert.equal("ok", sdb.one("PRAGMA integrity_check").integrity_check)
      local calls = sdb.one("SELECT count(*) AS n FROM calls").n
      local customers = sdb.one("SELECT count(*) AS n FROM customers").n
      testing.close_db()
      assert.equal(5 + present, customers)
      assert.is_true(calls >= 20000 and calls % 1000 == 0, tostring(calls)) -- whole batches only
    end)

  it("refuses a missing database and leaves nothing behind", function()
    local dir = tmpdir()
    local code, out = run { "backup", "--db", dir .. "/none.db", dir .. "/out.db" }
    assert.equal(1, code)
    assert.truthy(out:find("apiengine: backup failed: database " .. dir .. "/none.db: No such file or directory\n", 1,
      true), out)
    assert.is_false(exists(dir .. "/out.db"))
    code, out = run { "backup" }
    assert.equal(2, code)
    assert.equal("apiengine: backup needs the output path last: apiengine backup [--db PATH] OUT\n", out)
    code, out = run { "backup", "--help" }
    assert.equal(0, code)
    assert.truthy(out:find("\n  apiengine backup [options] OUT\n", 1, true), out)
    assert.truthy(out:find("\n  apiengine rekey [options] ", 1, true), out)
    -- A configured key has no file to copy: the output says to keep the key with the copy.
    assert.equal(0, (run { "migrate", "--db", dir .. "/k.db", "--schema", dir .. "/schema" }))
    code, out = run({ "backup", "--db", dir .. "/k.db", dir .. "/k-copy.db" }, { APIENGINE_KEY = string.rep("ab", 32) })
    assert.equal(0, code, out)
    assert.truthy(out:find(" copied to " .. dir:gsub("%p", "%%%0") .. "/k%-copy%.db in %d+ ms; no key file beside the database %(the key is "
      .. "configured%): keep that key with the backup\n$"), out)
    assert.is_false(exists(dir .. "/k-copy.db.key"))
  end)
end)

describe("migration messages", function()
  local function migrate(dir, schema)
    return run { "migrate", "--db", dir .. "/db.sqlite", "--schema", schema or (dir .. "/schema") }
  end

  it("name the file and line of the failing statement", function()
    local dir = tmpdir()
    write(dir .. "/schema/0002_bad.sql", "CREATE TABLE fine (id INTEGER PRIMARY KEY);\n\n-- the next one is broken\n"
      .. "/* a block\n   comment */\nCREATE TABLE broken (;\n")
    local code, out = migrate(dir)
    assert.equal(1, code)
    assert.truthy(out:find("error database " .. dir .. "/db.sqlite: db: migration " .. dir .. "/schema/0002_bad.sql:6 "
      .. "failed: near \";\": syntax error\n", 1, true), out)
    -- The start tries it on the scratch copy first, and names the same place.
    local s = serve(args_for(dir), testing.free_port())
    assert.equal(1, s.code)
    assert.truthy(s.read_log():find("db: migration " .. dir .. "/schema/0002_bad.sql:6 failed: near \";\": syntax "
      .. "error\n", 1, true), s.read_log())
  end)

  it("say what to do about an applied migration that was edited", function()
    local dir = tmpdir()
    assert.equal(0, (migrate(dir)))
    local f = assert(io.open(dir .. "/schema/0001_items.sql", "a"))
    f:write("-- an edit\n")
    f:close()
    local code, out = migrate(dir)
    assert.equal(1, code)
    assert.matches("error database [^\n]*/db%.sqlite: db: migration [^\n]*/schema/0001_items%.sql was changed after it "
      .. "was applied %(sha256 %x+ when applied, %x+ now%): put the file back as it was %(from version control or the "
      .. "release it came with%) and make the change in a new migration numbered after the last one\n", out)
  end)

  it("suggest the --schema overlay a recorded migration came from", function()
    local dir = tmpdir()
    os.execute("mkdir -p " .. dir .. "/mine")
    write(dir .. "/mine/0100_things.sql", "CREATE TABLE things (id TEXT PRIMARY KEY);\n")
    assert.equal(0, (migrate(dir, dir .. "/schema:" .. dir .. "/mine")))
    local code, out = migrate(dir)
    assert.equal(1, code)
    assert.truthy(out:find("db: the database records migration 0100_things.sql (id 100), which is not in " .. dir
      .. "/schema: if it came from another schema directory (an overlay: --schema schema:my-schema), give the same "
      .. "--schema as the start that applied it; an applied migration file is never removed\n", 1, true), out)
  end)
end)

describe("apiengine migrate", function()
  it("takes <db>.lock like serve: refused while a server runs on the database", function()
    local dir = tmpdir()
    local s = serve(args_for(dir), testing.free_port())
    assert.is_nil(s.code, s.read_log())
    write(dir .. "/schema/0002_more.sql", "CREATE TABLE more (id INTEGER PRIMARY KEY);\n")
    local code, out = run { "migrate", "--db", dir .. "/db.sqlite", "--schema", dir .. "/schema" }
    assert.equal(1, code)
    assert.truthy(out:find("error database " .. dir .. "/db.sqlite is in use by another apiengine (pid " .. s.pid
      .. "), which holds " .. dir .. "/db.sqlite.lock: stop it first (a server applies pending migrations itself when "
      .. "it starts)\n", 1, true), out)
    assert.equal(s.pid .. "\n", read(dir .. "/db.sqlite.lock"))
    assert.equal(200, get(s.port, "/a"))
    assert.equal(0, s.stop())
    code, out = run { "migrate", "--db", dir .. "/db.sqlite", "--schema", dir .. "/schema" }
    assert.equal(0, code, out)
    assert.truthy(out:find("1 migration(s) applied", 1, true), out)
  end)
end)

describe("cmake --install", function()
  it("installs the binary, the default scripts and schema; the installed binary finds them from anywhere", function()
    local prefix, elsewhere = testing.mkdtemp(), testing.mkdtemp() -- empty: no scripts/ or schema/ there
    dirs[#dirs + 1] = prefix
    dirs[#dirs + 1] = elsewhere
    local build = testing.exe():match("^(.*)/[^/]+$")
    local p = io.popen("cmake --install " .. build .. " --prefix " .. prefix .. " 2>&1")
    local log = p:read("a")
    assert.is_true(p:close(), log)
    assert.truthy(exists(prefix .. "/share/apiengine/scripts/lib/auth.lua"))
    assert.truthy(exists(prefix .. "/share/apiengine/schema/0001_init.sql"))
    assert.truthy(exists(prefix .. "/share/apiengine/deploy/apiengine.service"))
    p = io.popen("cd " .. elsewhere .. " && env -u APIENGINE_SCRIPTS -u APIENGINE_SCHEMA " .. prefix
      .. "/bin/apiengine check 2>&1; echo \"exit $?\"")
    local out = p:read("a")
    p:close()
    local head = "config: none\nscripts: " .. prefix .. "/share/apiengine/scripts\nschema: " .. prefix
      .. "/share/apiengine/schema\ndatabase: data/apiengine.db does not exist; the first start creates it\n"
    assert.equal(head, out:sub(1, #head))
    assert.truthy(out:find("\nPOST +/v2/integrations/customer +" .. prefix:gsub("%p", "%%%0")
      .. "/share/apiengine/scripts/customer%.lua:%d+\n"), out)
    assert.matches("\nok: %d+ routes, %d+ pending migration%(s%)\nexit 0\n$", out)
    assert.is_false(exists(elsewhere .. "/data"))
  end)
end)

describe("the README's overlay example (things)", function()
  local function section(text, name)
    local pat = name:gsub("%-", "%%-")
    local block = text:match("<!%-%- " .. pat .. ":begin %-%->\n```%a*\n(.-)\n```\n<!%-%- " .. pat .. ":end %-%->")
    assert(block, "README.md has no " .. name .. " block")
    return block
  end

  it("works as printed: check, the migration in the overlay, the new endpoint", function()
    local readme = read("README.md")
    local script, expected = section(readme, "things"), section(readme, "things-output")
    local port = testing.free_port()
    assert.truthy(script:find("127.0.0.1:8080", 1, true))
    script = script:gsub("127%.0%.0%.1:8080", "127.0.0.1:" .. port)
    -- Run from a directory that has the repository's scripts, schema and build, as the README's reader does.
    local dir = testing.mkdtemp()
    dirs[#dirs + 1] = dir
    local cwd = io.popen("pwd"):read("l")
    os.execute("ln -s " .. cwd .. "/scripts " .. dir .. "/scripts && ln -s " .. cwd .. "/schema " .. dir
      .. "/schema && mkdir " .. dir .. "/build && ln -s " .. testing.exe() .. " " .. dir .. "/build/apiengine")
    write(dir .. "/things.sh", script .. "\n")
    local ok = os.execute("cd " .. dir .. " && timeout 60 bash -eu things.sh > out.txt 2>&1")
    local pid = tonumber(read(dir .. "/my/apiengine.pid") or "")
    if pid then testing.kill(pid, 9) end -- only when the script stopped before its last line
    local out = read(dir .. "/out.txt")
    assert.is_true(ok, out)
    assert.is_nil(pid)
    assert.equal(expected, (out:gsub("\n$", "")))
  end)
end)
