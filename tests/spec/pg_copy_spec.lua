-- `apiengine migrate --from sqlite:PATH --to CONNINFO` (engine/pg_copy.c): a SQLite database
-- made by the default scripts over HTTP, copied into a throwaway PostgreSQL (tests/support/pg.sh),
-- checked row for row on the PostgreSQL side; a second copy into it is refused; a copy that fails
-- half-way leaves the target without a row.
package.path = "tests/spec/?.lua;" .. package.path
local spec = require "engine.spec"
local testing = require "engine.testing"
local proc = require "support.proc"
local P = require "support.platform"
local U = require "support.usage"
local Users = require "support.users"

-- Not copied: SQLite's own tables, the engine's bookkeeping, and the leveled key table calls_sid
-- (schema/0008; PostgreSQL holds the same key with its unique index).
local SKIP = { sqlite_sequence = true, sqlite_stat1 = true, _migrations = true, _engine = true, _engine_levels = true,
               calls_sid = true }

local function my_pid()
  return assert(proc.read("/proc/self/stat")):match("^%d+")
end

-- psql's unaligned rows ("a|b|c", separated by \30 so that a value may hold a newline) of sql on conninfo.
local function psql(conninfo, sql)
  local code, out = proc.run({ (os.getenv("APIENGINE_PG_BIN") or "/usr/lib/postgresql/15/bin") .. "/psql", "-X", "-q", "-At", "-F", "|", "-R", "\30", "-v", "ON_ERROR_STOP=1", conninfo, "-c", sql })
  assert(code == 0, "psql failed: " .. tostring(out))
  local rows = {}
  for row in out:gsub("\n$", ""):gmatch("[^\30]+") do rows[#rows + 1] = row end
  return rows
end

-- One request on its own connection to 127.0.0.1:port (opts: headers).
local function request(port, method, path, opts)
  local socket = require "socket"
  local c = assert(socket.tcp())
  c:settimeout(10)
  assert(c:connect("127.0.0.1", port))
  local lines = { method .. " " .. path .. " HTTP/1.1", "Host: node", "Connection: close" }
  for k, v in pairs(opts and opts.headers or {}) do lines[#lines + 1] = k .. ": " .. v end
  assert(c:send(table.concat(lines, "\r\n") .. "\r\n\r\n"))
  local raw, _, partial = c:receive("*a")
  c:close()
  return spec.parse_response(assert(raw or partial))
end

-- One text per row on either side: the columns cast to text, NULL as "", joined by "|"; a blob
-- column (written "hex:NAME") as upper-case hex.
local function row_sql(backend, cols, from)
  local parts = {}
  for i, col in ipairs(cols) do
    local blob = col:match("^hex:(.+)$")
    if blob then
      parts[i] = backend == "pg" and ("upper(encode(" .. blob .. ", 'hex'))") or ("hex(" .. blob .. ")")
    else
      parts[i] = "coalesce(CAST(" .. col .. " AS TEXT), '')"
    end
  end
  return "SELECT " .. table.concat(parts, " || '|' || ") .. " AS r FROM " .. from
end

local function sqlite_rows(db, sql)
  local rows = {}
  for _, r in ipairs(db.query(sql)) do rows[#rows + 1] = r.r end
  return rows
end

-- #sqlite: the source is a SQLite file read through engine.db, which the PostgreSQL pass
-- (APIENGINE_TEST_DB) points at PostgreSQL instead; the target is this spec's own server.
describe("apiengine migrate --from sqlite: --to postgresql #sqlite", function()
  local dir = testing.mkdtemp()
  local src = dir .. "/source.db"
  local srv = spec.server { workers = 1, manual = true, db = src }
  local pgdir, conninfo

  setup(function()
    local code, out = proc.run({ "tests/support/pg.sh", "start", my_pid() }, nil, 60000)
    assert(code == 0, "pg.sh start failed: " .. tostring(out))
    pgdir = assert(out:match("(/tmp/apiengine%-pg%.[%w]+)"))
    conninfo = "host=" .. pgdir .. " user=postgres dbname=postgres"
  end)
  teardown(function()
    srv.stop()
    if srv.dir then testing.rmtree(srv.dir) end
    if pgdir then proc.run({ "tests/support/pg.sh", "stop", pgdir }, nil, 30000) end
    testing.rmtree(dir)
    proc.cleanup()
  end)

  local c1, c2, a1
  it("copies every table row for row, blobs as bytea, sequences past the copied ids, the key fingerprint", function()
    -- The source: the default scripts over HTTP.
    srv.start()
    c1 = P.customer(srv, { CustomerName = "Tab\there", Email = "one@acme.io" })
    c2 = P.customer(srv, { CustomerName = "Two", Email = "two@acme.io", Plan = "enterprise" })
    a1 = P.app(srv, c1.token)
    P.app(srv, c1.token, { AppName = "Second" })
    P.app(srv, c2.token)
    P.ok(srv.request("POST", "/v2/integrations/app_setting",
      { json = { Key = "popup", Value = "line1\nline2 \\ back" }, headers = P.auth(a1.token) }))
    Users.create(srv, a1.token, 7)
    local records = {}
    for i = 1, 300 do
      records[i] = U.call { CallSid = "copy-" .. i, AppUserId = "agent-" .. (i % 5),
                            StartTime = string.format("2024-06-%02dT10:00:00Z", i % 28 + 1), Duration = i }
    end
    assert.same({ Accepted = 300, Duplicates = 0 }, U.ingest(srv, a1.token, records))
    -- A failed login leaves a row in the brute-force counters.
    srv.request("POST", "/v2/integrations/token", { json = { Id = c2.id, Secret = "wrong", Entity = "customer" } })
    assert.equal(0, srv.stop())

    local code, out = proc.run({ testing.exe(), "migrate", "--from", "sqlite:" .. src, "--to", conninfo,
                                 "--schema", testing.schema_dir, "--progress-every", "100" }, nil, 60000)
    assert.equal(0, code, out)
    assert.truthy(out:find("migrate: calls 100/300 rows, %d+ rows/s\n"), out)
    assert.truthy(out:find("migrate: calls 300/300 rows, %d+ rows/s %(done%)\n"), out)
    assert.truthy(out:find("migrate: customers 2/2 rows", 1, true), out)

    testing.open_db(src)
    local db = require "engine.db"
    -- Every table of the source, with its exact row count.
    local tables = {}
    for _, r in ipairs(db.query("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")) do
      if not SKIP[r.name] then tables[#tables + 1] = r.name end
    end
    assert.is_true(#tables >= 5, table.concat(tables, ","))
    local total = 0
    for _, t in ipairs(tables) do
      local n = db.one("SELECT count(*) AS n FROM " .. t).n
      total = total + n
      assert.same({ tostring(n) }, psql(conninfo, "SELECT count(*) FROM " .. t), t)
    end
    assert.truthy(out:find("copied " .. #tables .. " table(s), " .. total .. " row(s)", 1, true), out)
    assert.same({ "300" }, psql(conninfo, "SELECT count(*) FROM calls"))
    assert.same({ "7" }, psql(conninfo, "SELECT count(*) FROM users"))

    -- The values, column for column (blobs compared as hex).
    local same = {
      { { "seq", "id", "name", "email", "hex:secret_sealed", "plan", "account_sid", "status", "created_at", "updated_at" },
        "customers ORDER BY seq" },
      { { "seq", "id", "customer_id", "name", "secret_hash", "exotel_account_sid", "hex:exotel_api_key_sealed",
          "hex:exotel_api_token_sealed", "exotel_domain", "created_at" }, "apps ORDER BY seq" },
      { { "app_id", "key", "value", "created_at" }, "app_settings ORDER BY app_id, key" },
      { { "seq", "app_id", "app_user_id", "app_username", "email", "exotel_user_name", "virtual_number", "agent_number" },
        "users ORDER BY seq" },
      { { "customer_id", "call_sid", "app_id", "app_user_id", "direction", "channel", "start_ms", "duration_s" },
        "calls ORDER BY call_sid" },
      { { "key", "value" }, "_engine ORDER BY key" },
    }
    for _, q in ipairs(same) do
      local want = sqlite_rows(db, row_sql("sqlite", q[1], q[2]))
      assert.is_true(#want > 0, q[2])
      assert.same(want, psql(conninfo, row_sql("pg", q[1], q[2])), q[2])
    end
    assert.equal(300, #sqlite_rows(db, row_sql("sqlite", { "call_sid" }, "calls")))
    -- The text escapes of COPY came through: a tab, a newline, a backslash.
    assert.same({ "Tab\there" }, psql(conninfo, "SELECT name FROM customers WHERE id = '" .. c1.id .. "'"))
    assert.same({ "line1\nline2 \\ back" }, psql(conninfo, "SELECT value FROM app_settings"))

    -- A new row gets the id after the copied ones.
    local max_seq = db.one("SELECT max(seq) AS m FROM customers").m
    assert.same({ tostring(max_seq + 1) }, psql(conninfo,
      "INSERT INTO customers (id, name, email, secret_sealed, created_at, updated_at) " ..
      "VALUES ('new', 'n', 'n@x.io', '\\x00', 't', 't') RETURNING seq"))
    testing.close_db()
  end)

  it("serves the copy: a node on PostgreSQL with the SQLite server's key takes its tokens and opens its secrets", function()
    local key = assert(proc.read(src .. ".key")):match("^(%x+)")
    local node = proc.serve({ "--db", conninfo, "--scripts", testing.scripts_dir, "--schema", testing.schema_dir },
                            { APIENGINE_KEY = key })
    assert(node.pid, node.read_log())
    local app = { request = function(method, path, opts) return request(node.port, method, path, opts) end }
    local data = P.ok(app.request("GET", "/v2/integrations/customer", { headers = P.auth(c1.token) }))
    assert.equal(c1.id, data.CustomerID)
    assert.equal(c1.secret, data.CustomerSecret) -- sealed on SQLite, copied as bytea, opened here
    assert.equal("Tab\there", data.CustomerName)
    local res = app.request("GET", "/v2/integrations/" .. c2.id, { headers = P.auth(c2.token) })
    assert.equal(200, res.status, res.body)
    assert.equal("enterprise", res.json.data.plan.type)
    assert.equal(1, res.json.data.apps_count)
    -- A start with another key is refused: the copied fingerprint is the SQLite server's.
    local code, out = proc.run({ testing.exe(), "serve", "--listen", "127.0.0.1:" .. testing.free_port(), "--db", conninfo,
                                 "--scripts", testing.scripts_dir, "--schema", testing.schema_dir },
                               { APIENGINE_KEY = string.rep("0f", 32) })
    assert.equal(1, code, out)
    assert.truthy(out:find("fingerprint", 1, true), out)
    node.stop()
  end)

  it("refuses a second copy into a target that holds rows, and changes nothing there", function()
    local code, out = proc.run({ testing.exe(), "migrate", "--from", "sqlite:" .. src, "--to", conninfo,
                                 "--schema", testing.schema_dir }, nil, 60000)
    assert.equal(1, code, out)
    assert.truthy(out:find("the target already holds rows (in customers): migrate --from copies into an empty database only",
                           1, true), out)
    assert.same({ "3" }, psql(conninfo, "SELECT count(*) FROM customers"))
    assert.same({ "300" }, psql(conninfo, "SELECT count(*) FROM calls"))
  end)

  it("leaves the target without a row when the copy fails in a late table", function()
    -- A text value PostgreSQL cannot hold (a NUL byte) in the last call record.
    testing.open_db(src)
    local db = require "engine.db"
    db.exec("UPDATE calls SET app_user_id = CAST(x'610062' AS TEXT) WHERE call_sid = 'copy-300'")
    testing.close_db()
    psql(conninfo, "CREATE DATABASE failing")
    local target = "host=" .. pgdir .. " user=postgres dbname=failing"
    local code, out = proc.run({ testing.exe(), "migrate", "--from", "sqlite:" .. src, "--to", target,
                                 "--schema", testing.schema_dir }, nil, 60000)
    assert.equal(1, code, out)
    assert.truthy(out:find("column app_user_id holds a NUL byte in text, which PostgreSQL cannot store", 1, true), out)
    assert.truthy(out:find("migrate: customers 2/2 rows", 1, true), out) -- copied, then rolled back
    testing.open_db(src)
    local tables = {}
    for _, r in ipairs(db.query("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")) do
      if not SKIP[r.name] then tables[#tables + 1] = r.name end
    end
    testing.close_db()
    for _, t in ipairs(tables) do assert.same({ "0" }, psql(target, "SELECT count(*) FROM " .. t), t) end
  end)

  it("refuses a source that is not an apiengine database", function()
    local code, out = proc.run({ testing.exe(), "migrate", "--from", "sqlite:" .. dir .. "/missing.db", "--to",
                                 conninfo, "--schema", testing.schema_dir })
    assert.equal(1, code, out)
    assert.truthy(out:find(dir .. "/missing.db: no such database file", 1, true), out)
  end)
end)
