-- A database that cannot store writes: a read-only one is refused at start-up with the path and
-- the reason (run as an unprivileged user when the spec runs as root, where mode bits do not stop
-- writes); a write that cannot be stored at run time (SQLITE_FULL, caused honestly with
-- PRAGMA max_page_count on the worker's connection) answers 503 with Retry-After and one log line
-- naming the cause, and the server keeps serving. Servers run on loopback, bounded, and are stopped.
local spec = require "engine.spec"
local testing = require "engine.testing"
local json = require "engine.json"
local socket = require "socket"

local KEY = ("cd"):rep(32)

package.path = "tests/spec/?.lua;" .. package.path
local proc = require "support.proc"
local read, write, wait_for = proc.read, proc.write, proc.wait_for

local function sh(cmd) assert(os.execute(cmd), cmd) end

-- The uid the servers of this spec run as: nobody when the spec runs as root.
local function my_uid()
  local p = io.popen("id -u")
  local uid = tonumber(p:read("l"))
  p:close()
  return uid
end
local ROOT = my_uid() == 0
local SERVER_UID = ROOT and 65534 or my_uid()
local function unprivileged(argv)
  if not ROOT then return argv end
  local out = { "/usr/bin/setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", "--" }
  for _, a in ipairs(argv) do out[#out + 1] = a end
  return out
end

local function serve(argv, env)
  local port = testing.free_port()
  local full = { env and env.exe or testing.exe(), "serve", "--listen", "127.0.0.1:" .. port, "--workers", "1" }
  for _, a in ipairs(argv) do full[#full + 1] = a end
  if env and env.unprivileged then full = unprivileged(full) end
  local s = proc.start(full, { APIENGINE_KEY = KEY })
  s.port = port
  return s
end

-- One request on a new connection: the parsed response (status, headers, body, json).
local function request(port, method, path, body)
  local c = socket.tcp()
  c:settimeout(5)
  assert(c:connect("127.0.0.1", port))
  body = body or ""
  c:send(method .. " " .. path .. " HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\n"
    .. "Content-Length: " .. #body .. "\r\n\r\n" .. body)
  local raw, _, partial = c:receive("*a")
  c:close()
  local res = spec.parse_response(raw or partial)
  res.json = res.body ~= "" and json.decode(res.body) or nil
  return res
end

after_each(proc.cleanup)

-- A directory others can enter, with copies of the binary, the scripts and the schema (the
-- checkout may be where nobody cannot go), and a database made (and started once, so it holds
-- the key's fingerprint) by this process. Returns the directory, the database, the arguments and
-- options for serve.
local function made_db()
  local dir = proc.tmpdir()
  sh("chmod 0755 " .. dir .. " && mkdir " .. dir .. "/data " .. dir .. "/bin && chmod 0755 " .. dir .. "/data "
    .. dir .. "/bin && cp " .. testing.exe() .. " " .. dir .. "/bin/apiengine && cp -r scripts schema " .. dir
    .. "/ && chmod -R a+rX " .. dir .. "/bin " .. dir .. "/scripts " .. dir .. "/schema")
  local db = dir .. "/data/db.sqlite"
  local args = { "--db", db, "--scripts", dir .. "/scripts", "--schema", dir .. "/schema" }
  local s = serve(args)
  assert.is_nil(s.code, s.read_log())
  assert.equal(0, s.stop())
  os.remove(db .. ".lock")
  sh("chmod 0644 " .. db)
  return dir, db, args, { unprivileged = true, exe = dir .. "/bin/apiengine" }
end

describe("a database the server cannot write #sqlite", function()
  it("is refused at start-up when its directory is not writable, naming the directory and why", function()
    local dir, db, args, as = made_db()
    if not ROOT then sh("chmod 0555 " .. dir .. "/data") end
    local s = serve(args, as)
    if not ROOT then sh("chmod 0755 " .. dir .. "/data") end
    assert.equal(1, s.code, s.read_log())
    assert.truthy(s.read_log():find("error database " .. db .. ": its directory " .. dir .. "/data is not writable by "
      .. "this user (uid " .. SERVER_UID .. "): Permission denied; SQLite makes the database's -wal and -shm files "
      .. "there, so every write (token issuance included) would fail: make the directory writable for this user, "
      .. "or point --db elsewhere\n", 1, true), s.read_log())
    assert.is_nil(s.read_log():find("listening on", 1, true))
  end)

  it("is refused at start-up when the file is not writable, naming the file and why", function()
    local dir, db, args, as = made_db()
    if ROOT then sh("chown nobody " .. dir .. "/data") else sh("chmod 0444 " .. db) end
    local s = serve(args, as)
    assert.equal(1, s.code, s.read_log())
    assert.truthy(s.read_log():find("error database " .. db .. ": " .. db .. " is not writable by this user (uid "
      .. SERVER_UID .. "): Permission denied; every write (token issuance included) would fail: make it writable "
      .. "for this user (chown, chmod), or point --db elsewhere\n", 1, true), s.read_log())
    assert.is_nil(s.read_log():find("listening on", 1, true))
  end)

  it("starts as the same user once the file and directory are writable (the check is no blanket refusal)", function()
    local dir, _, args, as = made_db()
    if ROOT then sh("chown -R nobody " .. dir .. "/data") end
    local s = serve(args, as)
    assert.is_nil(s.code, s.read_log())
    local res = request(s.port, "POST", "/v2/integrations/customer", '{"CustomerName": "Acme", "Email": "o@acme.io"}')
    assert.equal(200, res.status, res.body)
    assert.equal(0, s.stop())
  end)
end)

-- Test routes beside the default API: the worker connection's page limit, and a count.
local LIMIT = [[
local route = require "engine.route"
local db = require "engine.db"
route.post("/test/max_page_count", function(req)
  local n = tonumber(req.query.n) or db.one("PRAGMA page_count").page_count
  return 200, { max = db.one("PRAGMA max_page_count = " .. math.tointeger(n)).max_page_count }
end)
route.post("/test/query_only", function(req)
  db.exec("PRAGMA query_only = " .. (req.query.on == "1" and "ON" or "OFF"))
  return 204
end)
route.post("/test/caught", function()
  local ok, e = pcall(db.exec, "INSERT INTO customers (id) VALUES ('x')")
  return 200, { ok = ok, kind = db.kind(e) }
end)
route.get("/test/customers", function()
  return 200, { n = db.one("SELECT count(*) AS n FROM customers").n }
end)
]]

describe("a write the database cannot store at run time #sqlite", function()
  it("answers 503 with Retry-After and one log line naming the cause; reads and the server go on", function()
    local dir = proc.tmpdir()
    sh("mkdir " .. dir .. "/overlay")
    write(dir .. "/overlay/zz_limit.lua", LIMIT)
    local s = serve { "--db", dir .. "/db.sqlite", "--scripts", "scripts:" .. dir .. "/overlay", "--schema", "schema" }
    assert.is_nil(s.code, s.read_log())
    local limit = request(s.port, "POST", "/test/max_page_count")
    assert.equal(200, limit.status, limit.body)

    local created, failed = 0, nil
    for i = 1, 500 do
      local res = request(s.port, "POST", "/v2/integrations/customer",
        json.encode({ CustomerName = "Customer number " .. i, Email = "private-" .. i .. "@example.org" }))
      if res.status ~= 200 then
        failed = { res = res, i = i }
        break
      end
      created = created + 1
    end
    assert.is_not_nil(failed, "500 customers fit in the page limit")
    local res = failed.res
    assert.equal(503, res.status, res.body)
    assert.equal("30", res.headers["retry-after"])
    assert.same({ RequestId = res.headers["x-request-id"], Status = "Failed", Code = 503,
      Error = "the database cannot store writes right now; try again later", Data = json.null }, res.json)

    -- stored state: exactly the customers answered 200; reads still work
    local count = request(s.port, "GET", "/test/customers")
    assert.equal(200, count.status)
    assert.same({ n = created }, count.json)
    assert.equal(200, request(s.port, "GET", "/healthz").status)

    -- one log line, naming the cause, with the request id, and none of the request's data
    local log = s.read_log()
    local lines = {}
    for line in log:gmatch("[^\n]*storage unavailable[^\n]*") do lines[#lines + 1] = line end
    assert.equal(1, #lines, log)
    assert.truthy(lines[1]:find(res.headers["x-request-id"], 1, true), lines[1])
    assert.truthy(lines[1]:find("storage unavailable: a write could not be stored (SQLITE_FULL: the disk is full, or "
      .. "the database reached its size limit); answered 503", 1, true), lines[1])
    assert.is_nil(log:find("private-" .. failed.i, 1, true))
    assert.is_nil(log:find("stack traceback", 1, true))

    -- room again: writes are stored again
    assert.equal(200, request(s.port, "POST", "/test/max_page_count?n=1000000").status)
    local again = request(s.port, "POST", "/v2/integrations/customer", '{"CustomerName": "After", "Email": "a@b.io"}')
    assert.equal(200, again.status, again.body)
    assert.same({ n = created + 1 }, request(s.port, "GET", "/test/customers").json)
    assert.equal(0, s.stop())
  end)
end)

describe("a connection that refuses writes (SQLITE_READONLY at run time) #sqlite", function()
  it("answers 503 with Retry-After, and db.kind says 'unavailable' to a script that catches it", function()
    local dir = proc.tmpdir()
    sh("mkdir " .. dir .. "/overlay")
    write(dir .. "/overlay/zz_limit.lua", LIMIT)
    local s = serve { "--db", dir .. "/db.sqlite", "--scripts", "scripts:" .. dir .. "/overlay", "--schema", "schema" }
    assert.is_nil(s.code, s.read_log())
    assert.equal(204, request(s.port, "POST", "/test/query_only?on=1").status)
    local res = request(s.port, "POST", "/v2/integrations/customer", '{"CustomerName": "Acme", "Email": "o@acme.io"}')
    assert.equal(503, res.status, res.body)
    assert.equal("30", res.headers["retry-after"])
    assert.equal("the database cannot store writes right now; try again later", res.json.Error)
    assert.same({ ok = false, kind = "unavailable" }, request(s.port, "POST", "/test/caught").json)
    assert.truthy(s.read_log():find("[" .. res.headers["x-request-id"] .. "] storage unavailable: a write could not be "
      .. "stored (SQLITE_READONLY: the database cannot be written (a read-only file, directory or connection)); "
      .. "answered 503", 1, true), s.read_log())
    assert.equal(204, request(s.port, "POST", "/test/query_only?on=0").status)
    res = request(s.port, "POST", "/v2/integrations/customer", '{"CustomerName": "Acme", "Email": "o@acme.io"}')
    assert.equal(200, res.status, res.body)
    assert.same({ n = 1 }, request(s.port, "GET", "/test/customers").json)
    assert.equal(0, s.stop())
  end)
end)
