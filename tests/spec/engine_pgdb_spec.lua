-- engine.db on PostgreSQL (engine/lua_db_pg.c): types and NULLs, every error kind, parameters,
-- db.tx (commit, rollback, nesting, the retry of a real serialization conflict between two
-- in-flight requests), handlers that yield while their query runs (another request is answered
-- meanwhile), the budget cancelling a long query, an outage answered 503 quickly and the recovery,
-- and where engine.db cannot wait (a request hook, engine.time.sleep inside db.tx).
--
-- The spec starts its own throwaway PostgreSQL (tests/support/pg.sh; stopped in teardown, and by
-- pg.sh's watchdog should this process die), so it runs in every pass, with or without
-- APIENGINE_TEST_DB: the outage case pauses the server, which a shared one must not be.
local testing = require "engine.testing"
local db = require "engine.db"
local json = require "engine.json"

local PG_SH = "tests/support/pg.sh"

local function sh(cmd)
  local p = assert(io.popen(cmd))
  local out = p:read("a")
  local ok = p:close()
  assert(ok, "failed: " .. cmd .. "\n" .. out)
  return (out:gsub("%s+$", ""))
end

local function my_pid()
  local f = assert(io.open("/proc/self/stat"))
  local pid = f:read("a"):match("^(%d+)")
  f:close()
  return pid
end

local function now_ms()
  local f = assert(io.open("/proc/uptime"))
  local up = f:read("a"):match("^([%d%.]+)")
  f:close()
  return math.floor(tonumber(up) * 1000)
end

local ROUTES = [=[
local route = require "engine.route"
local db = require "engine.db"
local time = require "engine.time"

route.get("/slow", function() local r = db.one("SELECT pg_sleep(0.3) AS s, 1 AS one") return 200, { one = r.one } end)
route.get("/fast", function() return 200, { two = db.one("SELECT 2 AS two").two } end)
route.get("/long", function() db.one("SELECT pg_sleep(5)") return 200, {} end)
route.get("/longtx", function()
  db.tx(function()
    db.exec("INSERT INTO budget_tx VALUES (1)")
    db.one("SELECT pg_sleep(5)")
  end)
  return 200, {}
end)
route.get("/kind", function()
  local ok, e = pcall(db.one, "SELECT 1 AS one")
  return 200, { ok = ok, kind = db.kind(e) }
end)

-- write skew: each inserts the count it saw; SERIALIZABLE makes one of two concurrent ones retry
route.post("/skew", function()
  local attempts = 0
  local seen = db.tx(function()
    attempts = attempts + 1
    local n = db.one("SELECT count(*) AS n FROM skew").n
    db.one("SELECT pg_sleep(0.2)")
    db.exec("INSERT INTO skew (seen) VALUES (?)", n)
    return n
  end)
  return 200, { seen = seen, attempts = attempts }
end)

route.post("/lock", function()
  db.tx(function()
    db.exec("UPDATE locks SET v = v + 1 WHERE id = 1")
    db.one("SELECT pg_sleep(0.4)")
  end)
  return 200, {}
end)
route.post("/nowait", function()
  db.one("SELECT pg_sleep(0.1)")
  local ok, e = pcall(db.one, "SELECT v FROM locks WHERE id = 1 FOR UPDATE NOWAIT")
  return 200, { ok = ok, kind = db.kind(e), code = e and e.code }
end)

route.get("/sleep_in_tx", function()
  local ok, e = pcall(db.tx, function() time.sleep(1) end)
  return 200, { ok = ok, err = tostring(e) }
end)

route.get("/hooked", function() return 200, {} end)
route.before(function(req)
  if req.path == "/hooked" then db.one("SELECT 1") end
end)
]=]

describe("engine.db on PostgreSQL", function()
  local pgdir, conninfo, scripts

  setup(function()
    pgdir = sh(PG_SH .. " start " .. my_pid())
    conninfo = "host=" .. pgdir .. " user=postgres dbname=postgres"
    scripts = testing.mkdtemp()
    local f = assert(io.open(scripts .. "/routes.lua", "w"))
    f:write(ROUTES)
    f:close()
    testing.open_pg(conninfo, false)
    testing.load_scripts(scripts)
  end)

  teardown(function()
    testing.close_db()
    if pgdir then sh(PG_SH .. " stop " .. pgdir) end
    if scripts then testing.rmtree(scripts) end
  end)

  it("says which backend it is", function()
    assert.equal("postgresql", db.backend())
  end)

  it("round-trips every type and NULL as engine.db on SQLite reads them", function()
    db.exec([[CREATE TABLE types (id bigserial PRIMARY KEY, i bigint, f float8, s text, b bytea, n text,
      ok boolean, num numeric, frac numeric, ts timestamptz)]])
    local ch, id = db.exec("INSERT INTO types (i, f, s, b, n, ok, num, frac, ts) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
      math.maxinteger, 1.5, "héllo", "a\0b\255", nil, true, 12, 2.25, "2024-02-29T10:00:00Z")
    assert.equal(1, ch)
    assert.equal(1, id)
    local r = db.one("SELECT * FROM types WHERE id = ?", id)
    assert.equal(math.maxinteger, r.i)
    assert.equal("integer", math.type(r.i))
    assert.equal(1.5, r.f)
    assert.equal("float", math.type(r.f))
    assert.equal("héllo", r.s)
    assert.equal("a\0b\255", r.b)
    assert.equal(json.null, r.n)
    assert.equal(1, r.ok)
    assert.equal("integer", math.type(r.num))
    assert.equal(12, r.num)
    assert.equal(2.25, r.frac)
    assert.equal("2024-02-29 10:00:00+00", r.ts)
    db.exec("INSERT INTO types (ok) VALUES (?)", false)
    assert.equal(0, db.one("SELECT ok FROM types WHERE id = 2").ok)
    local rows = db.query("SELECT id FROM types ORDER BY id")
    assert.equal(2, #rows)
    assert.equal('[{"id":1},{"id":2}]', json.encode(rows))
    assert.equal("[]", json.encode(db.query("SELECT id FROM types WHERE false")))
    assert.is_nil(db.one("SELECT id FROM types WHERE false"))
    local n, last = db.exec("UPDATE types SET s = 'x'")
    assert.equal(2, n)
    assert.is_nil(last)
  end)

  it("binds ? in order and :name from one table (the same name is one value; missing: NULL)", function()
    db.exec("CREATE TABLE params (a int, b text, c text)")
    db.exec("INSERT INTO params VALUES (:a, :b, :b)", { a = 1, b = "x" })
    db.exec("INSERT INTO params VALUES (:a, :b, :c)", { a = 2 })
    local r = db.one("SELECT * FROM params WHERE a = ?", 1)
    assert.same({ a = 1, b = "x", c = "x" }, r)
    r = db.one("SELECT * FROM params WHERE a = :a", { a = 2 })
    assert.equal(json.null, r.b)
    assert.equal(json.null, r.c)
    local ok, e = pcall(db.one, "SELECT * FROM params WHERE a = ? AND b = ?", 1)
    assert.is_false(ok)
    assert.matches("statement has 2 parameters, got 1 value", tostring(e), nil, true)
    assert.equal(3, db.exec_many("INSERT INTO params (a, b) VALUES (?, ?)", { { 10, "p" }, { 11 }, { 12, "q" } }))
    assert.equal(2, db.exec_many("INSERT INTO params (a, b, c) VALUES (:a, :b, :c)", { { a = 20, b = "r" }, { a = 21 } },
      { b = "dflt", c = "k" }))
    assert.same({ a = 21, b = "dflt", c = "k" }, db.one("SELECT * FROM params WHERE a = 21"))
    assert.equal(json.null, db.one("SELECT b FROM params WHERE a = 11").b)
  end)

  it("raises error tables with a kind for every constraint and a SQLSTATE code", function()
    db.exec("CREATE TABLE parent (id int PRIMARY KEY)")
    db.exec([[CREATE TABLE child (id int PRIMARY KEY, parent int REFERENCES parent(id), u text UNIQUE,
      pos int CHECK (pos > 0), nn text NOT NULL DEFAULT 'x', ex int, EXCLUDE USING btree (ex WITH =))]])
    db.exec("INSERT INTO parent VALUES (1)")
    db.exec("INSERT INTO child (id, parent, u, pos, ex) VALUES (1, 1, 'a', 1, 1)")
    local cases = {
      { "INSERT INTO child (id) VALUES (1)", "primary_key", "23505" },
      { "INSERT INTO child (id, u) VALUES (2, 'a')", "unique", "23505" },
      { "INSERT INTO child (id, parent) VALUES (2, 99)", "foreign_key", "23503" },
      { "INSERT INTO child (id, pos) VALUES (2, -1)", "check", "23514" },
      { "INSERT INTO child (id, nn) VALUES (2, NULL)", "not_null", "23502" },
      { "INSERT INTO child (id, ex) VALUES (2, 1)", "constraint", "23P01" },
      { "SELEC 1", "error", "42601" },
    }
    for _, c in ipairs(cases) do
      local ok, e = pcall(db.exec, c[1])
      assert.is_false(ok, c[1])
      assert.is_true(db.is_error(e), c[1])
      assert.equal(c[2], db.kind(e), c[1])
      assert.equal(c[3], e.code, c[1])
      assert.equal(c[1], e.sql)
      assert.equal("db: ", e.message:sub(1, 4))
      assert.equal(e.message, tostring(e))
    end
    assert.is_nil(db.kind("not a db error"))
  end)

  it("db.tx commits, rolls back and re-raises the original error, and nests with savepoints", function()
    db.exec("CREATE TABLE acc (id int PRIMARY KEY, v int)")
    assert.equal(7, db.tx(function()
      db.exec("INSERT INTO acc VALUES (1, 1)")
      return 7
    end))
    local boom = setmetatable({}, { __tostring = function() return "boom" end })
    local ok, e = pcall(db.tx, function()
      db.exec("INSERT INTO acc VALUES (2, 2)")
      error(boom)
    end)
    assert.is_false(ok)
    assert.equal(boom, e)
    assert.is_nil(db.one("SELECT * FROM acc WHERE id = 2"))
    db.tx(function()
      db.exec("INSERT INTO acc VALUES (3, 3)")
      local iok = pcall(db.tx, function()
        db.exec("INSERT INTO acc VALUES (4, 4)")
        db.exec("INSERT INTO acc VALUES (1, 1)") -- primary key: the inner savepoint is rolled back
      end)
      assert.is_false(iok)
      db.tx(function() db.exec("INSERT INTO acc VALUES (5, 5)") end)
    end)
    local ids = {}
    for _, r in ipairs(db.query("SELECT id FROM acc ORDER BY id")) do ids[#ids + 1] = r.id end
    assert.same({ 1, 3, 5 }, ids)
    assert.equal("serializable", db.tx(function() return db.one("SHOW transaction_isolation").transaction_isolation end))
  end)

  it("answers another request while a handler waits for its query (the worker does not block)", function()
    local rs = testing.requests { { "GET", "/slow" }, { "GET", "/fast" } }
    assert.equal(200, rs[1].status)
    assert.equal('{"one":1}', rs[1].body)
    assert.equal(200, rs[2].status)
    assert.equal('{"two":2}', rs[2].body)
    assert.equal(1, rs[2].order) -- the fast one was answered first, while the slow one waited
    assert.equal(2, rs[1].order)
  end)

  it("retries db.tx on a real serialization conflict between two in-flight requests", function()
    db.exec("CREATE TABLE skew (seen int)")
    local rs = testing.requests { { "POST", "/skew" }, { "POST", "/skew" } }
    assert.equal(200, rs[1].status, rs[1].body)
    assert.equal(200, rs[2].status, rs[2].body)
    local a, b = json.decode(rs[1].body), json.decode(rs[2].body)
    -- serially: one saw 0 rows, the other 1 (both seeing 0 is the write skew SERIALIZABLE forbids)
    local seen = { a.seen, b.seen }
    table.sort(seen)
    assert.same({ 0, 1 }, seen)
    assert.is_true(a.attempts + b.attempts >= 3, rs[1].body .. rs[2].body)
    local rows = db.query("SELECT seen FROM skew ORDER BY seen")
    assert.same({ { seen = 0 }, { seen = 1 } }, { rows[1], rows[2] })
    assert.equal(2, #rows)
  end)

  it("reports a lock it cannot take at once as kind busy (55P03)", function()
    db.exec("CREATE TABLE locks (id int PRIMARY KEY, v int)")
    db.exec("INSERT INTO locks VALUES (1, 0)")
    local rs = testing.requests { { "POST", "/lock" }, { "POST", "/nowait" } }
    assert.equal(200, rs[1].status)
    assert.equal(200, rs[2].status)
    local r = json.decode(rs[2].body)
    assert.is_false(r.ok)
    assert.equal("busy", r.kind)
    assert.equal("55P03", r.code)
    assert.equal(1, db.one("SELECT v FROM locks WHERE id = 1").v)
  end)

  it("cancels a query past the request's budget with the budget's 503, and serves again", function()
    local t0 = now_ms()
    local status, _, body, logged = testing.request("GET", "/long", {})
    local took = now_ms() - t0
    assert.equal(503, status)
    assert.equal("budget_exceeded", json.decode(body).error.code)
    assert.matches("script budget exceeded", logged, nil, true)
    assert.is_true(took < 3000, "took " .. took .. " ms")
    assert.is_true(testing.pg_stats().cancels >= 1)
    status, _, body = testing.request("GET", "/fast", {})
    assert.equal(200, status)
    assert.equal('{"two":2}', body)
    assert.equal(0, testing.pg_stats().held)
    -- inside db.tx: the held connection is given back and the transaction rolled back
    db.exec("CREATE TABLE budget_tx (v int)")
    status, _, body = testing.request("GET", "/longtx", {})
    assert.equal(503, status)
    assert.equal("budget_exceeded", json.decode(body).error.code)
    assert.equal(0, testing.pg_stats().held)
    assert.equal(0, db.one("SELECT count(*) AS n FROM budget_tx").n)
    status = testing.request("GET", "/fast", {})
    assert.equal(200, status)
  end)

  it("refuses to wait in a request hook, and engine.time.sleep inside db.tx", function()
    local status, _, _, logged = testing.request("GET", "/hooked", {})
    assert.equal(500, status)
    assert.matches("engine.db on PostgreSQL: this code cannot wait for the database", logged, nil, true)
    assert.matches("a request hook", logged, nil, true)
    local body
    status, _, body = testing.request("GET", "/sleep_in_tx", {})
    assert.equal(200, status)
    local r = json.decode(body)
    assert.is_false(r.ok)
    assert.matches("engine.time.sleep: cannot wait inside db.tx", r.err, nil, true)
    assert.equal(0, testing.pg_stats().held)
  end)

  it("answers 503 storage_unavailable quickly while the server is down, and recovers after", function()
    sh(PG_SH .. " pause " .. pgdir)
    local t0 = now_ms()
    local status, headers, body = testing.request("GET", "/fast", {})
    assert.equal(503, status)
    assert.equal("storage_unavailable", json.decode(body).error.code)
    assert.equal("30", headers["retry-after"])
    status, _, body = testing.request("GET", "/kind", {})
    assert.equal(200, status)
    assert.same({ ok = false, kind = "unavailable" }, json.decode(body))
    assert.is_true(now_ms() - t0 < 2000, "took " .. (now_ms() - t0) .. " ms")
    sh(PG_SH .. " resume " .. pgdir)
    local deadline = now_ms() + 15000
    repeat
      testing.sleep(100)
      status, _, body = testing.request("GET", "/fast", {})
    until status == 200 or now_ms() > deadline
    assert.equal(200, status)
    assert.equal('{"two":2}', body)
  end)
end)
