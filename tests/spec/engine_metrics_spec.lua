-- Metrics (Prometheus text format on --metrics-listen), the access line's route and worker, and
-- the health checks answered in C, against the real binary on loopback ports.
local spec = require "engine.spec"
local testing = require "engine.testing"
local socket = require "socket"

local SCRIPTS = "tests/fixtures/metrics/scripts"
local SCHEMA = "tests/fixtures/engine/schema"

-- One request on a new connection to port; the parsed answer.
local function get(port, path, method)
  local c = assert(socket.tcp())
  c:settimeout(5)
  assert(c:connect("127.0.0.1", port))
  assert(c:send((method or "GET") .. " " .. path .. " HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"))
  local data, _, partial = c:receive("*a")
  c:close()
  return spec.parse_response(data or partial, method == "HEAD")
end

-- GET /metrics on port: { ["name{labels}"] = value }, every sample line checked against the text
-- format (and no series twice), and the text.
local function scrape(port)
  local res = get(port, "/metrics")
  assert.equal(200, res.status)
  assert.equal("text/plain; version=0.0.4; charset=utf-8", res.headers["content-type"])
  local m = {}
  for line in res.body:gmatch("[^\n]+") do
    if line:sub(1, 1) == "#" then
      assert.truthy(line:match("^# HELP [a-zA-Z_:][a-zA-Z0-9_:]* .+$") or
                    line:match("^# TYPE [a-zA-Z_:][a-zA-Z0-9_:]* [a-z]+$"), line)
    else
      local key, v = line:match("^([a-zA-Z_:][a-zA-Z0-9_:]*%b{}) (%S+)$")
      if not key then key, v = line:match("^([a-zA-Z_:][a-zA-Z0-9_:]*) (%S+)$") end
      assert(key, "not a sample line: " .. line)
      assert.is_nil(m[key], "series twice: " .. key)
      m[key] = v == "+Inf" and math.huge or assert(tonumber(v), line)
    end
  end
  return m, res.body
end

-- The cumulative buckets of a histogram's series (labels: 'route="/x",' or ""), in le order.
local function buckets(m, name, labels)
  local out = {}
  for _, le in ipairs { "0.0005", "0.001", "0.0025", "0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1",
                        "2.5", "5", "10", "+Inf" } do
    out[#out + 1] = m[name .. "_bucket{" .. labels .. 'le="' .. le .. '"}']
  end
  return out
end

local function wait_for(pred, ms)
  for _ = 1, (ms or 5000) // 20 do
    if pred() then return true end
    testing.sleep(20)
  end
  return pred()
end

-- spec.server returns once the first worker accepts; the others may still be loading.
local function all_workers_listen(srv)
  assert.is_true(wait_for(function() return srv.read_log():find(" listening on ", 1, true) ~= nil end, 10000))
end

describe("metrics", function()
  local MPORT = testing.free_port()
  local srv = spec.server { scripts = SCRIPTS, schema = SCHEMA, workers = 2,
                            args = { "--metrics-listen", "127.0.0.1:" .. MPORT, "--budget-ms", "300",
                                     "--memory-limit-mb", "16" } }
  local R = "apiengine_requests_total"

  it("are not served on the API port, only on --metrics-listen", function()
    assert.equal(404, get(srv.port, "/metrics").status)
    assert.matches("metrics and health checks on http://127%.0%.0%.1:" .. MPORT .. "/metrics", srv.read_log())
  end)

  it("count requests by method, route pattern and status, summed over the workers", function()
    all_workers_listen(srv)
    for i = 1, 20 do assert.equal(200, get(srv.port, "/items/" .. i).status) end
    for _ = 1, 3 do assert.equal(201, get(srv.port, "/hello", "POST").status) end
    assert.equal(418, get(srv.port, "/teapot").status)
    assert.equal(404, get(srv.port, "/nope").status)
    assert.equal(405, get(srv.port, "/hello", "DELETE").status)
    assert.equal(404, get(srv.port, "/nope", "PROPFIND").status)
    local m = scrape(MPORT)
    assert.equal(20, m[R .. '{method="GET",route="/items/{id}",status="200"}'])
    assert.equal(3, m[R .. '{method="POST",route="/hello",status="201"}'])
    assert.equal(1, m[R .. '{method="GET",route="/teapot",status="other"}'])
    assert.equal(2, m[R .. '{method="GET",route="unmatched",status="404"}']) -- and the /metrics above
    assert.equal(1, m[R .. '{method="DELETE",route="unmatched",status="405"}'])
    assert.equal(1, m[R .. '{method="other",route="unmatched",status="404"}'])
    assert.is_nil(m[R .. '{method="GET",route="/hello",status="200"}']) -- none yet: no zero lines
    -- Both workers served /items/{id} (20 connections spread by SO_REUSEPORT): the access line says which.
    local log = srv.read_log()
    assert.matches("GET /items/%d+ 200 %d+ [%d.]+ms [%x-]+ /items/{id} w0\n", log)
    assert.matches("GET /items/%d+ 200 %d+ [%d.]+ms [%x-]+ /items/{id} w1\n", log)
    assert.matches("GET /nope 404 %d+ [%d.]+ms [%x-]+ %- w%d\n", log)
    -- The duration histogram of the route: cumulative buckets, all 20 by +Inf, a positive sum.
    local H = "apiengine_request_duration_seconds"
    local b = buckets(m, H, 'route="/items/{id}",')
    assert.equal(15, #b)
    for i = 2, #b do assert.is_true(b[i] >= b[i - 1]) end
    assert.equal(20, b[#b])
    assert.equal(20, m[H .. '_count{route="/items/{id}"}'])
    assert.is_true(m[H .. '_sum{route="/items/{id}"}'] > 0)
  end)

  it("count script errors by route and blown budgets by kind", function()
    assert.equal(500, get(srv.port, "/boom").status)
    assert.equal(503, get(srv.port, "/forever").status)
    local hog = get(srv.port, "/hog")
    assert.equal(503, hog.status)
    assert.equal("script memory budget exceeded", hog.json.error.message)
    local m = scrape(MPORT)
    assert.equal(1, m['apiengine_script_errors_total{route="/boom"}'])
    assert.equal(1, m['apiengine_script_errors_total{route="/forever"}'])
    assert.equal(1, m['apiengine_script_errors_total{route="/hog"}'])
    assert.is_nil(m['apiengine_script_errors_total{route="/hello"}'])
    assert.equal(1, m['apiengine_budget_exceeded_total{kind="time"}'])
    assert.equal(1, m['apiengine_budget_exceeded_total{kind="memory"}'])
    assert.equal(1, m[R .. '{method="GET",route="/forever",status="503"}'])
  end)

  it("gauge the open connections by state", function()
    local G = "apiengine_connections"
    local c = srv.connect()
    assert(c:send("GET /hello HTTP/1.1\r\nHost: t\r\n\r\n"))
    assert.equal(200, spec.read_response(c).status)
    local m
    assert.is_true(wait_for(function()
      m = scrape(MPORT)
      return m[G .. '{state="idle"}'] == 1
    end))
    assert.equal(0, m[G .. '{state="active"}'])
    assert.equal(0, m[G .. '{state="closing"}'])
    assert(c:send("GET /hello HTTP/1.1\r\n")) -- half a request: in progress
    assert.is_true(wait_for(function()
      m = scrape(MPORT)
      return m[G .. '{state="active"}'] == 1
    end))
    assert.equal(0, m[G .. '{state="idle"}'])
    c:close()
    -- Answered with Connection: close and read to the end, but not closed by the client: lingering.
    local d = srv.connect()
    assert(d:send("GET /hello HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"))
    local data, _, partial = d:receive("*a")
    assert.matches("^HTTP/1%.1 200", data or partial)
    assert.is_true(wait_for(function()
      m = scrape(MPORT)
      return m[G .. '{state="closing"}'] == 1
    end))
    assert.equal(0, m[G .. '{state="active"}'] + m[G .. '{state="idle"}'])
    d:close()
    assert.is_true(wait_for(function()
      m = scrape(MPORT)
      return m[G .. '{state="closing"}'] == 0
    end))
  end)

  it("gauge each worker's Lua memory", function()
    local m = scrape(MPORT)
    assert.is_true(m['apiengine_lua_memory_bytes{worker="0"}'] > 10000)
    assert.is_true(m['apiengine_lua_memory_bytes{worker="1"}'] > 10000)
    assert.is_nil(m['apiengine_lua_memory_bytes{worker="2"}'])
  end)

  -- #sqlite: the busy waits are SQLite's (a write lock held by this process).
  it("time database statements and count busy waits #sqlite", function()
    local Q = "apiengine_db_query_duration_seconds"
    local before = scrape(MPORT)
    assert.equal(0, before["apiengine_db_busy_waits_total"])
    assert.equal(200, get(srv.port, "/count").status)
    local m = scrape(MPORT)
    assert.equal(before[Q .. "_count"] + 1, m[Q .. "_count"])
    assert.equal(m[Q .. "_count"], m[Q .. '_bucket{le="+Inf"}'])
    -- This process holds the write lock while a worker inserts: the worker waits, then succeeds.
    testing.open_db(srv.db_path, SCHEMA)
    local db = require "engine.db"
    db.exec("BEGIN IMMEDIATE")
    local c = srv.connect()
    assert(c:send("POST /items?name=locked HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n"))
    testing.sleep(200)
    db.exec("COMMIT")
    testing.close_db()
    assert.equal(201, spec.read_response(c).status)
    c:close()
    assert.equal(1, scrape(MPORT)["apiengine_db_busy_waits_total"])
  end)

  it("count reloads by result and name the version", function()
    local m = scrape(MPORT)
    assert.equal(0, m['apiengine_reloads_total{result="done"}'])
    testing.kill(srv.pid, 1)
    assert.is_true(wait_for(function() return srv.read_log():find("reload 1 done", 1, true) ~= nil end))
    m = scrape(MPORT)
    assert.equal(1, m['apiengine_reloads_total{result="done"}'])
    assert.equal(0, m['apiengine_reloads_total{result="partial"}'])
    assert.equal(0, m['apiengine_reloads_total{result="refused"}'])
    local version = io.popen(testing.exe() .. " --version"):read("a"):match("(%d+%.%d+%.%d+)")
    assert.equal(1, m['apiengine_build_info{version="' .. version .. '"}'])
    -- The counts survive the reload: they live in C, not in the Lua states it replaced.
    assert.equal(20, m[R .. '{method="GET",route="/items/{id}",status="200"}'])
  end)

  it("stop a second server on the same metrics address before it touches its database", function()
    local dir = testing.mkdtemp()
    local log = dir .. "/out.log"
    local pid = testing.spawn({ testing.exe(), "serve", "--listen", "127.0.0.1:" .. testing.free_port(), "--scripts",
      SCRIPTS, "--schema", SCHEMA, "--db", dir .. "/db.sqlite", "--workers", "1",
      "--metrics-listen", "127.0.0.1:" .. MPORT }, log)
    local code = testing.wait(pid, 10000)
    if code == nil then testing.kill(pid, 9); testing.wait(pid, 5000) end
    local out = assert(io.open(log)):read("a")
    local db = io.open(dir .. "/db.sqlite")
    testing.rmtree(dir)
    assert.equal(1, code, out)
    assert.matches("cannot listen for metrics on 127%.0%.0%.1:" .. MPORT .. ": Address already in use", out)
    assert.is_nil(db) -- refused at the first step: no database made, no migration run
    assert.equal(200, get(MPORT, "/healthz").status) -- the first one serves on
  end)

  it("answer only GET and HEAD of /metrics and the health paths on the metrics listener", function()
    local head = get(MPORT, "/metrics", "HEAD")
    assert.equal(200, head.status)
    assert.equal("", head.body)
    local post = get(MPORT, "/metrics", "POST")
    assert.equal(405, post.status)
    assert.equal("GET, HEAD", post.headers["allow"])
    assert.equal(404, get(MPORT, "/hello").status)
    local c = assert(socket.tcp())
    c:settimeout(5)
    assert(c:connect("127.0.0.1", MPORT))
    assert(c:send("GET /metrics HTTP/1.1\r\nHost: t\r\nHost: u\r\n\r\n"))
    local data, _, partial = c:receive("*a")
    c:close()
    assert.equal(400, spec.parse_response(data or partial).status)
    assert.equal(200, get(MPORT, "/metrics").status) -- still serving
  end)
end)

describe("database statement timing", function()
  -- A statement that runs tens of milliseconds (a recursive CTE counting to n), and a trivial one.
  local dir = testing.mkdtemp()
  local f = assert(io.open(dir .. "/timing.lua", "w"))
  f:write([[
local route = require "engine.route"
local db = require "engine.db"
route.get("/cte", function(req)
  local n = math.tointeger(tonumber(req.query.n))
  return 200, db.one("WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < ?) "
    .. "SELECT count(*) AS n FROM c", n)
end)
]])
  f:close()
  local MPORT = testing.free_port()
  local srv = spec.server { scripts = dir, schema = SCHEMA, workers = 1,
                            args = { "--metrics-listen", "127.0.0.1:" .. MPORT, "--budget-ms", "10000" } }
  teardown(function() testing.rmtree(dir) end)
  local Q = "apiengine_db_query_duration_seconds"

  it("records a slow statement in the bucket of its duration, measured finer than the millisecond", function()
    local before = scrape(MPORT)
    local t0 = socket.gettime()
    local res = get(srv.port, "/cte?n=150000")
    local rtt = socket.gettime() - t0
    assert.equal(200, res.status)
    assert.same({ n = 150000 }, res.json)
    local m = scrape(MPORT)
    assert.equal(before[Q .. "_count"] + 1, m[Q .. "_count"])
    local d = m[Q .. "_sum"] - before[Q .. "_sum"]
    assert.is_true(d > 0.01 and d <= rtt, "statement " .. d .. " s, request " .. rtt .. " s")
    -- One observation: every bucket from the first bound at or above d counts it, none below.
    local b0, b1 = buckets(before, Q, ""), buckets(m, Q, "")
    local bounds = { 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, math.huge }
    for i, le in ipairs(bounds) do
      assert.equal(d <= le and 1 or 0, b1[i] - b0[i], "le=" .. le .. " for " .. d .. " s")
    end
    -- SQLite's own timing is whole milliseconds; the monotonic clock's is not.
    local ms = d * 1000
    assert.is_true(math.abs(ms - math.floor(ms + 0.5)) > 1e-6, "a whole number of milliseconds: " .. ms)
  end)

  it("records a trivial statement below the millisecond", function()
    local before = scrape(MPORT)
    for _ = 1, 5 do assert.equal(200, get(srv.port, "/cte?n=1").status) end
    local m = scrape(MPORT)
    assert.equal(before[Q .. "_count"] + 5, m[Q .. "_count"])
    local d = m[Q .. "_sum"] - before[Q .. "_sum"]
    -- Sub-millisecond observations are kept as such (SQLite's own timing would say 0 ms): at least
    -- one of the five lands at or below 1 ms, even on a loaded machine under a sanitizer, where the
    -- sum of the five was once 5.1 ms.
    assert.is_true(d > 0 and d < 0.025, "5 statements took " .. d .. " s")
    local b0, b1 = buckets(before, Q, ""), buckets(m, Q, "")
    assert.is_true(b1[2] - b0[2] >= 1, "none of the 5 statements at or below 1 ms: " .. d .. " s in all")
  end)
end)

describe("health checks", function()
  local MPORT = testing.free_port()
  local srv = spec.server { scripts = SCRIPTS, schema = SCHEMA, workers = 1, manual = true,
                            args = { "--metrics-listen", "127.0.0.1:" .. MPORT, "--budget-ms", "10000" } }
  after_each(function() srv.stop(); if srv.dir then testing.rmtree(srv.dir) end end)

  it("/healthz answers within 100 ms on the metrics listener while the only worker spins 2 s", function()
    srv.start()
    local c = srv.connect(10)
    assert(c:send("GET /spin?secs=2 HTTP/1.1\r\nHost: t\r\n\r\n"))
    testing.sleep(200) -- the worker is in the handler now
    local t0 = socket.gettime()
    local res = get(MPORT, "/healthz")
    local dt = socket.gettime() - t0
    assert.equal(200, res.status)
    assert.equal('{"status":"ok"}', res.body)
    assert.is_true(dt < 0.1, "took " .. dt .. " s")
    t0 = socket.gettime()
    res = get(MPORT, "/readyz")
    assert.equal(200, res.status)
    assert.equal('{"status":"ready"}', res.body)
    assert.is_true(socket.gettime() - t0 < 0.1)
    local slow = spec.read_response(c)
    c:close()
    assert.equal(200, slow.status)
    assert.same({ spun = 2 }, slow.json)
  end)

  it("answers /healthz and /readyz on the API port in C, before the scripts' routes", function()
    srv.start()
    local res = get(srv.port, "/healthz")
    assert.equal(200, res.status) -- the script routes /healthz to a 500: never reached
    assert.equal('{"status":"ok"}', res.body)
    assert.equal("application/json", res.headers["content-type"])
    res = get(srv.port, "/readyz")
    assert.equal(200, res.status)
    assert.equal('{"status":"ready"}', res.body)
    assert.equal(200, get(srv.port, "/healthz", "HEAD").status)
    assert.equal(405, get(srv.port, "/healthz", "POST").status) -- only GET and HEAD are the engine's
    testing.sleep(50)
    assert.matches("GET /healthz 200 15 [%d.]+ms [%x-]+ /healthz w0\n", srv.read_log())
  end)

  it("takes both paths from --healthz-path and --readyz-path", function()
    local other = spec.server { scripts = SCRIPTS, schema = SCHEMA, workers = 1, manual = true,
                                args = { "--healthz-path", "/live", "--readyz-path", "/ready" } }
    other.start()
    local live, ready = get(other.port, "/live"), get(other.port, "/ready")
    local script, gone = get(other.port, "/healthz"), get(other.port, "/readyz")
    other.stop()
    testing.rmtree(other.dir)
    assert.equal(200, live.status)
    assert.equal('{"status":"ok"}', live.body)
    assert.equal(200, ready.status)
    assert.equal('{"status":"ready"}', ready.body)
    assert.equal(500, script.status) -- /healthz is the script's route again
    assert.same({ script = true }, script.json)
    assert.equal(404, gone.status)
  end)

  it("refuses a health path that is not an origin-form path, and a bad metrics address", function()
    for _, bad in ipairs { { "--healthz-path", "healthz" }, { "--readyz-path", "/ready?x" },
                           { "--readyz-path", "/a b" }, { "--metrics-listen", "127.0.0.1" },
                           { "--metrics-listen", "127.0.0.1:70000" } } do
      local dir = testing.mkdtemp()
      local pid = testing.spawn({ testing.exe(), "check", "--scripts", SCRIPTS, "--schema", SCHEMA, "--db",
        dir .. "/db.sqlite", bad[1], bad[2] }, dir .. "/out.log")
      local code = testing.wait(pid, 10000)
      if code == nil then testing.kill(pid, 9); testing.wait(pid, 5000) end
      local out = assert(io.open(dir .. "/out.log")):read("a")
      testing.rmtree(dir)
      assert.equal(2, code, out) -- a usage error
      assert.truthy(out:find("invalid value '" .. bad[2] .. "' for " .. bad[1], 1, true), out)
    end
  end)

  it("/readyz answers 503 during the drain, on the metrics listener and on a kept-alive connection", function()
    srv.start()
    local idle = srv.connect(10)
    assert(idle:send("GET /hello HTTP/1.1\r\nHost: t\r\n\r\n"))
    assert.equal(200, spec.read_response(idle).status)
    local busy = srv.connect(10)
    assert(busy:send("GET /spin?secs=1 HTTP/1.1\r\nHost: t\r\n\r\n"))
    testing.sleep(150)
    testing.kill(srv.pid, 15)
    assert.is_true(wait_for(function() return srv.read_log():find("received SIGTERM", 1, true) ~= nil end))
    local res = get(MPORT, "/readyz")
    assert.equal(503, res.status)
    assert.equal('{"status":"not_ready","reason":"draining"}', res.body)
    assert.equal(200, get(MPORT, "/healthz").status) -- alive, not ready
    assert(idle:send("GET /readyz HTTP/1.1\r\nHost: t\r\n\r\n"))
    local mid = spec.read_response(busy)
    assert.equal(200, mid.status)
    res = spec.read_response(idle)
    assert.equal(503, res.status)
    assert.equal('{"status":"not_ready","reason":"draining"}', res.body)
    assert.equal("close", res.headers["connection"])
    idle:close()
    busy:close()
    assert.equal(0, testing.wait(srv.pid, 10000))
    srv.pid = nil
  end)
end)

describe("engine.metrics", function()
  local MPORT = testing.free_port()
  local srv = spec.server { scripts = SCRIPTS, schema = SCHEMA, workers = 2,
                            args = { "--metrics-listen", "127.0.0.1:" .. MPORT } }

  it("adds up a script's counter over the workers and across a reload", function()
    all_workers_listen(srv)
    for _ = 1, 20 do assert.equal(201, get(srv.port, "/orders/pro", "POST").status) end
    assert.equal(201, get(srv.port, "/orders/free", "POST").status)
    local m, text = scrape(MPORT)
    assert.equal(20, m['shop_orders_total{plan="pro"}'])
    assert.equal(1, m['shop_orders_total{plan="free"}'])
    assert.matches("# HELP shop_orders_total Orders placed, by plan%.\n# TYPE shop_orders_total counter\n", text)
    local log = srv.read_log()
    assert.matches("POST /orders/pro 201 %d+ [%d.]+ms [%x-]+ /orders/{plan} w0\n", log)
    assert.matches("POST /orders/pro 201 %d+ [%d.]+ms [%x-]+ /orders/{plan} w1\n", log)
    -- A reload declares the metric again in fresh Lua states: the same series goes on counting.
    testing.kill(srv.pid, 1)
    assert.is_true(wait_for(function() return srv.read_log():find("reload 1 done", 1, true) ~= nil end))
    assert.equal(201, get(srv.port, "/orders/pro", "POST").status)
    assert.equal(21, scrape(MPORT)['shop_orders_total{plan="pro"}'])
  end)

  it("adds up gauges and fills histograms with the script's buckets", function()
    assert.equal(200, get(srv.port, "/depth/7", "POST").status)
    assert.equal(7, scrape(MPORT)["shop_queue_depth"])
    for _, s in ipairs { "0.05", "0.5", "5" } do
      assert.equal(200, get(srv.port, "/render/list/" .. s, "POST").status)
    end
    local m = scrape(MPORT)
    assert.equal(1, m['shop_render_seconds_bucket{view="list",le="0.1"}'])
    assert.equal(2, m['shop_render_seconds_bucket{view="list",le="1"}'])
    assert.equal(3, m['shop_render_seconds_bucket{view="list",le="+Inf"}'])
    assert.equal(3, m['shop_render_seconds_count{view="list"}'])
    assert.near(5.55, m['shop_render_seconds_sum{view="list"}'], 1e-9)
  end)

  it("refuses a new label set past the cap, and the series it has keep counting", function()
    -- 100 label sets per metric: pro and free are two; 98 more fit, the next is refused.
    for i = 1, 98 do assert.equal(201, get(srv.port, "/orders/p" .. i, "POST").status) end
    local res = get(srv.port, "/orders/one-too-many", "POST")
    assert.equal(429, res.status)
    assert.equal("too many label sets for this metric (at most 100): a new one is refused", res.json.refused)
    assert.equal(201, get(srv.port, "/orders/p98", "POST").status)
    local m = scrape(MPORT)
    assert.is_nil(m['shop_orders_total{plan="one-too-many"}'])
    assert.equal(2, m['shop_orders_total{plan="p98"}'])
    assert.equal(200, get(MPORT, "/healthz").status) -- and the server serves on
  end)
end)

describe("engine.metrics declarations", function()
  local metrics = require "engine.metrics"

  it("check names, labels and buckets", function()
    assert.has_error(function() metrics.counter("bad name", "h") end,
      "metrics.counter('bad name'): metric names are [a-zA-Z_:][a-zA-Z0-9_:]* (at most 128 bytes), not apiengine_* or __*")
    assert.has_error(function() metrics.counter("apiengine_mine", "h") end)
    assert.has_error(function() metrics.counter("9lives", "h") end)
    assert.has_error(function() metrics.gauge("spec_g", "h", { "le" }) end)
    assert.has_error(function() metrics.gauge("spec_g", "h", { "a", "a" }) end)
    assert.has_error(function() metrics.gauge("spec_g", "h", { "a-b" }) end)
    assert.has_error(function() metrics.gauge("spec_g", "h", { 1 }) end)
    assert.has_error(function() metrics.gauge("spec_g", "h", { "a", "b", "c", "d", "e", "f", "g", "h", "i" }) end)
    assert.has_error(function() metrics.histogram("spec_h", "h", {}, { 1, 1 }) end)
    assert.has_error(function() metrics.histogram("spec_h", "h", {}, { 2, 1 }) end)
    assert.has_error(function() metrics.histogram("spec_h", "h", {}, { 1, 0 / 0 }) end)
  end)

  it("give the same metric for the same declaration, and refuse another under its name", function()
    local a = metrics.counter("spec_same_total", "h", { "k" })
    local b = metrics.counter("spec_same_total", "h", { "k" })
    assert.is_true(a:inc({ k = "x" }))
    assert.is_true(b:inc(2, { k = "x" }))
    assert.has_error(function() metrics.gauge("spec_same_total", "h", { "k" }) end,
      "metrics.gauge('spec_same_total'): this metric was declared before with another type, labels or buckets")
    assert.has_error(function() metrics.counter("spec_same_total", "h", { "j" }) end)
  end)

  it("raise on wrong label values and amounts", function()
    local c = metrics.counter("spec_args_total", "h", { "plan" })
    assert.has_error(function() c:inc(-1, { plan = "a" }) end)
    assert.has_error(function() c:inc({}) end, "label 'plan' needs a string or number value (got nil)")
    assert.has_error(function() c:inc({ plan = "a", extra = 1 }) end)
    assert.has_error(function() c:inc({ plan = {} }) end)
    assert.has_error(function() c:inc(1 / 0, { plan = "a" }) end)
    assert.is_true(c:inc({ plan = 5 }))
    local g = metrics.gauge("spec_plain", "h")
    assert.is_true(g:set(3))
    assert.is_true(g:dec())
    assert.has_error(function() g:set(1, { plan = "a" }) end)
    assert.has_error(function() c.inc(g, 1) end) -- a gauge is not a counter
    assert.equal(false, getmetatable(c))
  end)
end)
