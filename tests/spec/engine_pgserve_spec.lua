-- Serving from PostgreSQL with the real binary (--db "host=... dbname=..."): the start-up applies
-- the migrations (the .pg.sql variants), nodes started together apply each once, the key is
-- configured and the same on every node (another key, or a key file to generate, is refused),
-- routes that query answer from every node (engine.db on the workers' pools),
-- /readyz follows the database, a reload keeps serving, and the commands that work there.
-- One throwaway PostgreSQL for the file (tests/support/pg.sh), a fresh database per case; every
-- server runs on loopback, is waited for with a bound, and is stopped.
local spec = require "engine.spec"
local testing = require "engine.testing"
local socket = require "socket"

package.path = "tests/spec/?.lua;" .. package.path
local proc = require "support.proc"

local SCHEMA = "tests/fixtures/pgserve/schema"
local SCRIPTS = "tests/fixtures/pgserve/scripts"
local KEY = string.rep("5a", 32)
local OTHER_KEY = string.rep("a5", 32)
local PASSWORD = "pw-never-logged" -- the server trusts the socket: the password is only carried

local function request(method, port, path)
  local c = socket.tcp()
  c:settimeout(5)
  if not c:connect("127.0.0.1", port) then
    c:close()
    return nil
  end
  c:send(method .. " " .. path .. " HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
  local raw, _, partial = c:receive("*a")
  c:close()
  raw = raw or partial
  if not raw or raw == "" then return nil end
  local res = spec.parse_response(raw)
  return res.status, res.json
end

local function get(port, path) return request("GET", port, path) end

local function args(conninfo, extra)
  local a = { "--db", conninfo .. " password=" .. PASSWORD, "--schema", SCHEMA, "--scripts", SCRIPTS, "--workers", "2" }
  for _, v in ipairs(extra or {}) do a[#a + 1] = v end
  return a
end

local function serve(conninfo, env, extra) return proc.serve(args(conninfo, extra), env or { APIENGINE_KEY = KEY }) end

local function count(text, needle)
  local n, at = 0, 1
  while true do
    local i = text:find(needle, at, true)
    if not i then return n end
    n, at = n + 1, i + #needle
  end
end

describe("serving from PostgreSQL", function()
  teardown(function() proc.pg_stop() end)
  after_each(function() proc.cleanup() end)

  it("applies the migrations, PostgreSQL's variants first, stores the key's fingerprint and serves", function()
    local ci, name = proc.pg_database()
    local s = serve(ci)
    assert.is_nil(s.code, s.read_log())
    local status, body = get(s.port, "/hello")
    assert.equal(200, status)
    assert.equal("world", body.hello)
    assert.equal("0001_items.pg.sql,0002_seed.pg.sql",
      proc.psql_value("SELECT string_agg(name, ',' ORDER BY id) FROM _migrations", name))
    -- 0001_items.pg.sql's BIGSERIAL (the .sql variant has INTEGER), 0002's row
    assert.equal("bigint", proc.psql_value(
      "SELECT data_type FROM information_schema.columns WHERE table_name = 'items' AND column_name = 'id'", name))
    assert.equal("seeded", proc.psql_value("SELECT string_agg(name, ',') FROM items", name))
    local fp = proc.psql_value("SELECT value FROM _engine WHERE key = 'key_fingerprint'", name)
    assert.matches("^%x+$", fp)
    assert.equal(64, #fp)
    local log = s.read_log()
    assert.truthy(log:find("db: applied migration 0001_items.pg.sql", 1, true), log)
    assert.truthy(log:find("db: applied migration 0002_seed.pg.sql", 1, true), log)
    assert.truthy(log:find("2 migration(s) applied", 1, true), log)
    assert.truthy(log:find("stored the server key's fingerprint (" .. fp:sub(1, 12) .. ")", 1, true), log)
    assert.truthy(log:find("password=*** dbname", 1, true) or log:find("password=***", 1, true), log)
    assert.is_nil(log:find(PASSWORD, 1, true))
    assert.equal(0, s.stop())
    -- a second start applies nothing and keeps the fingerprint
    local s2 = serve(ci)
    assert.is_nil(s2.code, s2.read_log())
    assert.truthy(s2.read_log():find("0 migration(s) applied", 1, true), s2.read_log())
    assert.equal("2", proc.psql_value("SELECT count(*) FROM _migrations", name))
  end)

  it("answers routes that query, from every node of one database", function()
    local ci, name = proc.pg_database()
    local a, b = serve(ci), serve(ci)
    assert.is_nil(a.code, a.read_log())
    assert.is_nil(b.code, b.read_log())
    local status, body = get(a.port, "/items/seeded") -- 0002_seed.pg.sql's row
    assert.equal(200, status)
    assert.same({ id = 1, name = "seeded" }, body)
    assert.equal(404, (get(b.port, "/items/fresh")))
    status, body = request("POST", a.port, "/items/fresh")
    assert.equal(201, status)
    assert.same({ created = "fresh" }, body)
    status, body = get(b.port, "/items/fresh") -- written through one node, read through the other
    assert.equal(200, status)
    assert.equal("fresh", body.name)
    status, body = request("POST", b.port, "/items/fresh") -- the database's unique constraint, not a node's memory
    assert.equal(409, status)
    assert.same({ error = "exists" }, body)
    assert.equal("2", proc.psql_value("SELECT count(*) FROM items", name))
  end)

  it("two nodes started at once apply each migration once", function()
    local ci, name = proc.pg_database()
    local p1, p2 = testing.free_port(), testing.free_port()
    local env = { APIENGINE_KEY = KEY }
    local a = proc.launch({ testing.exe(), "serve", "--listen", "127.0.0.1:" .. p1, table.unpack(args(ci)) }, env)
    local b = proc.launch({ testing.exe(), "serve", "--listen", "127.0.0.1:" .. p2, table.unpack(args(ci)) }, env)
    a.wait_listening()
    b.wait_listening()
    assert.is_nil(a.code, a.read_log())
    assert.is_nil(b.code, b.read_log())
    assert.equal(200, (get(p1, "/hello")))
    assert.equal(200, (get(p2, "/hello")))
    assert.equal("2", proc.psql_value("SELECT count(*) FROM _migrations", name))
    assert.equal("1", proc.psql_value("SELECT count(*) FROM items WHERE name = 'seeded'", name))
    local logs = a.read_log() .. b.read_log()
    assert.equal(1, count(logs, "db: applied migration 0001_items.pg.sql"), logs)
    assert.equal(1, count(logs, "db: applied migration 0002_seed.pg.sql"), logs)
  end)

  it("refuses a node with another key at start, naming both fingerprints", function()
    local ci, name = proc.pg_database()
    local s = serve(ci)
    assert.is_nil(s.code, s.read_log())
    local stored = proc.psql_value("SELECT value FROM _engine WHERE key = 'key_fingerprint'", name)
    local other = serve(ci, { APIENGINE_KEY = OTHER_KEY })
    assert.equal(1, other.code)
    local log = other.read_log()
    local theirs = log:match("this key's (%x+)%)")
    assert.truthy(theirs, log)
    assert.equal(12, #theirs)
    assert.not_equal(stored:sub(1, 12), theirs)
    assert.truthy(log:find("error server key: the configured key (APIENGINE_KEY or the config file's `key`) is not the "
      .. "key the database host=", 1, true), log)
    assert.truthy(log:find("password=*** was made with (fingerprint " .. stored:sub(1, 12) .. ", this key's "
      .. theirs .. "): every node of one PostgreSQL database must use the key the first node started with", 1, true),
      log)
    assert.is_nil(log:find("listening on", 1, true))
    -- the first node serves on, and the stored fingerprint is its key's
    assert.equal(200, (get(s.port, "/hello")))
    assert.equal(stored, proc.psql_value("SELECT value FROM _engine WHERE key = 'key_fingerprint'", name))
  end)

  it("never generates a key file: the key is configured, or a key file given that exists", function()
    local ci, name = proc.pg_database()
    local none = serve(ci, {})
    assert.equal(1, none.code)
    assert.truthy(none.read_log():find("error server key: on PostgreSQL the key must be configured, the same on every "
      .. "node: set APIENGINE_KEY (or the config file's `key`), or --key-file to a key file all nodes share; a key "
      .. "file is never generated on PostgreSQL", 1, true), none.read_log())
    local dir = proc.tmpdir()
    local missing = serve(ci, {}, { "--key-file", dir .. "/node.key" })
    assert.equal(1, missing.code)
    assert.truthy(missing.read_log():find("error server key: the key file " .. dir .. "/node.key does not exist; on "
      .. "PostgreSQL the key is never generated", 1, true), missing.read_log())
    assert.is_nil(proc.read(dir .. "/node.key"))
    -- nothing was written: no migration, no fingerprint
    assert.equal("t", proc.psql_value("SELECT to_regclass('_migrations') IS NULL", name))
    proc.write(dir .. "/node.key", KEY .. "\n")
    os.execute("chmod 600 " .. dir .. "/node.key")
    local s = serve(ci, {}, { "--key-file", dir .. "/node.key" })
    assert.is_nil(s.code, s.read_log())
    assert.equal(200, (get(s.port, "/hello")))
    -- the file's key is KEY: a node with APIENGINE_KEY=KEY is the same key
    local s2 = serve(ci, { APIENGINE_KEY = KEY })
    assert.is_nil(s2.code, s2.read_log())
  end)

  it("keeps serving across a reload (SIGHUP), each worker on fresh scripts", function()
    local ci = proc.pg_database()
    local s = serve(ci, nil, { "--workers", "1" })
    assert.is_nil(s.code, s.read_log())
    local _, before = get(s.port, "/hello")
    testing.kill(s.pid, 1)
    assert.truthy(proc.wait_for(function() return s.read_log():find("reload 1 done: 1 worker", 1, true) end),
      s.read_log())
    local status, after = get(s.port, "/hello")
    assert.equal(200, status)
    assert.not_equal(before.state, after.state) -- a fresh Lua state answered
    status, after = get(s.port, "/items/seeded") -- the fresh state has the worker's pool
    assert.equal(200, status)
    assert.equal("seeded", after.name)
    assert.equal(0, s.stop())
    assert.truthy(s.read_log():find("stopped cleanly", 1, true))
  end)

  it("lets a script query while a worker starts; a reload that would refuses, keeping the scripts", function()
    local ci = proc.pg_database()
    local s = serve(ci, nil, { "--workers", "1", "--scripts", SCRIPTS .. ":tests/fixtures/pgserve/warm" })
    assert.is_nil(s.code, s.read_log())
    local status, body = get(s.port, "/warm")
    assert.equal(200, status)
    assert.equal(1, body.items) -- 0002_seed.pg.sql's row, read at load time
    local _, before = get(s.port, "/hello")
    testing.kill(s.pid, 1)
    assert.truthy(proc.wait_for(function() return s.read_log():find("reload 1: worker 0 keeps the scripts it had", 1, true) end),
      s.read_log())
    assert.truthy(s.read_log():find("engine.db on PostgreSQL: this code cannot wait for the database", 1, true))
    local _, after = get(s.port, "/hello")
    assert.equal(before.state, after.state) -- the old state still answers
    assert.equal(0, s.stop())
  end)

  it("check, migrate and routes work on PostgreSQL; backup and rekey exit 2", function()
    local ci, name = proc.pg_database()
    local env = { APIENGINE_KEY = KEY }
    local function run(cmd, extra)
      local a = { testing.exe(), cmd }
      for _, v in ipairs(args(ci)) do a[#a + 1] = v end
      for _, v in ipairs(extra or {}) do a[#a + 1] = v end
      return proc.run(a, env)
    end
    local code, out = run("check")
    assert.equal(0, code, out)
    assert.truthy(out:find("database: host=" .. proc.pg_start() .. " user=postgres dbname=" .. name
      .. " password=***, 0 migration(s) applied\n", 1, true), out)
    assert.truthy(out:find("pending migration: " .. SCHEMA .. "/0001_items.pg.sql\npending migration: " .. SCHEMA
      .. "/0002_seed.pg.sql\n", 1, true), out)
    assert.truthy(out:find("ok: 3 routes, 2 pending migration(s)", 1, true), out)
    code, out = run("migrate")
    assert.equal(0, code, out)
    assert.equal("2", proc.psql_value("SELECT count(*) FROM _migrations", name))
    code, out = run("check")
    assert.equal(0, code, out)
    assert.truthy(out:find("ok: 3 routes, 0 pending migration(s)", 1, true), out)
    code, out = run("routes")
    assert.equal(0, code, out)
    assert.truthy(out:find("\nGET      /hello         " .. SCRIPTS .. "/hello.lua:7\n", 1, true), out)
    assert.truthy(out:find("\nPOST     /items/{name}  " .. SCRIPTS .. "/hello.lua:15\n", 1, true), out)
    code, out = run("backup", { proc.tmpdir() .. "/copy" })
    assert.equal(2, code, out)
    assert.truthy(out:find("apiengine: backup is not available on PostgreSQL yet", 1, true), out)
    code, out = run("rekey")
    assert.equal(2, code, out)
    assert.truthy(out:find("apiengine: rekey is not available on PostgreSQL yet", 1, true), out)
    assert.is_nil(out:find(PASSWORD, 1, true))
  end)

  -- Last: it stops the server the other cases share.
  it("answers /readyz 503 while PostgreSQL is down and 200 once it is back, serving throughout", function()
    local ci = proc.pg_database()
    local s = serve(ci)
    assert.is_nil(s.code, s.read_log())
    assert.equal(200, (get(s.port, "/readyz")))
    proc.pg_pause()
    local ok, err = pcall(function()
      assert.truthy(proc.wait_for(function()
        local st, b = get(s.port, "/readyz")
        return st == 503 and b.reason == "database"
      end, 10000), "no 503 while PostgreSQL is down")
      -- both workers say so (each its own pool): a few requests, every one 503
      for _ = 1, 6 do assert.equal(503, (get(s.port, "/readyz"))) end
      assert.equal(200, (get(s.port, "/healthz")))
      assert.equal(200, (get(s.port, "/hello"))) -- a route that does not touch the database
      assert.equal(503, (get(s.port, "/items/seeded"))) -- one that does is answered at once
    end)
    proc.pg_resume()
    assert(ok, err)
    assert.truthy(proc.wait_for(function()
      for _ = 1, 6 do
        if get(s.port, "/readyz") ~= 200 then return false end
      end
      return true
    end, 15000), s.read_log())
    -- Ready means every worker has a connection again; the first query may still wait behind a
    -- connection being remade on a loaded machine, so it gets a few seconds, not one try.
    local last
    assert.truthy(proc.wait_for(function()
      last = table.pack(get(s.port, "/items/seeded"))
      return last[1] == 200
    end, 5000), "no 200 after the outage: " .. tostring(last and last[1]) .. "\n" .. s.read_log())
  end)
end)
