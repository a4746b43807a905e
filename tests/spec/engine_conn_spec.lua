-- Connections against the real binary: output back-pressure (bounded memory for clients that
-- never read), timeouts per kind (header, body, idle, send), the process-wide connection limit
-- and its log, and the whole-process drain deadline (issue 14, items 2, 4, 7 and 9).
local spec = require "engine.spec"
local testing = require "engine.testing"
local socket = require "socket"

local SCRIPTS = "tests/fixtures/conn/scripts"
local SCHEMA = "tests/fixtures/engine/schema"

package.path = "tests/spec/?.lua;" .. package.path
local rss_mib = require("support.proc").rss_mib -- the server's VmRSS, in MiB

-- A request of exactly `size` bytes (padded with a header), asking for `path`.
local function padded(path, size, id)
  local head = "GET " .. path .. " HTTP/1.1\r\nHost: t\r\nX-Request-Id: " .. id .. "\r\nX-Pad: "
  return head .. ("p"):rep(size - #head - 4) .. "\r\n\r\n"
end

local function connect(port, timeout)
  local c = assert(socket.tcp())
  c:settimeout(timeout or 5)
  assert(c:connect("127.0.0.1", port))
  return c
end

describe("output back-pressure", function()
  local srv = spec.server { scripts = SCRIPTS, schema = SCHEMA, workers = 2, args = { "--access-log", "off" } }

  -- #rss: the ThreadSanitizer pass leaves this one out (its shadow memory counts in VmRSS); the plain
  -- and ASan passes run it.
  it("keeps the server under 256 MiB while 100 clients pipeline 64 KiB of requests for big answers and never read #rss",
    function()
      local base = rss_mib(srv.pid)
      -- 128 requests of 512 bytes each per connection, each asking for a 256 KiB answer: 32 MiB
      -- of answers per connection, 3.2 GiB in all if the engine answered everything it read.
      local batch = {}
      for i = 1, 128 do batch[i] = padded("/big?kb=256", 512, "r" .. i) end
      batch = table.concat(batch)
      assert.equal(64 * 1024, #batch)
      local conns = {}
      local peak = base
      for i = 1, 100 do
        conns[i] = connect(srv.port)
        assert(conns[i]:send(batch))
      end
      -- Watch for 3 s (stopping early once past the bound, so a server without back-pressure
      -- is not left to eat the machine).
      local t0 = socket.gettime()
      while socket.gettime() - t0 < 3 and peak < 256 do
        testing.sleep(100)
        peak = math.max(peak, rss_mib(srv.pid))
      end
      for _, c in ipairs(conns) do c:close() end
      assert.is_true(peak < 256, string.format("peak RSS %.0f MiB (from %.0f MiB at start)", peak, base))
      -- and it still serves
      assert.equal(200, srv.request("GET", "/hello").status)
    end)

  it("answers every pipelined request in order to a client that reads, while others never read", function()
    local batch = {}
    for i = 1, 64 do batch[i] = padded("/big?kb=256", 1024, "s" .. i) end
    batch = table.concat(batch)
    local stalled = {}
    for i = 1, 40 do
      stalled[i] = connect(srv.port)
      assert(stalled[i]:send(batch))
    end
    local c = connect(srv.port, 10)
    local mine = {}
    for i = 1, 64 do mine[i] = padded("/big?kb=256", 512, "mine-" .. i) end
    assert(c:send(table.concat(mine)))
    for i = 1, 64 do
      local res = assert(spec.read_response(c))
      assert.equal(200, res.status)
      assert.equal("mine-" .. i, res.headers["x-request-id"])
      assert.equal(256 * 1024, #res.body)
    end
    c:close()
    for _, s in ipairs(stalled) do s:close() end
  end)
end)

describe("the worker-wide bound of unsent answers", function()
  -- One worker, so all the unsent answers are its own.
  local srv = spec.server { scripts = SCRIPTS, schema = SCHEMA, workers = 1, args = { "--access-log", "off" } }

  -- #rss: left out of the ThreadSanitizer pass, as above.
  it("holds 200 clients that never read to about 32 MiB of answers, where each alone may queue 1 MiB #rss", function()
    local base = rss_mib(srv.pid)
    -- 128 requests per connection (64 KiB, all read at once), each for a 64 KiB answer: 8 MiB of
    -- answers per connection. The per-connection bound alone lets each queue up to 1 MiB (and one
    -- answer) past what the kernel takes: up to 210 MiB for 200 connections. The worker's bound
    -- stops every connection with unsent output once the worker has 32 MiB unsent: 32 MiB, plus
    -- at most one answer per connection. Measured: 44 MiB over the start with the worker's bound,
    -- past 96 MiB (where the watch stops) without it.
    local batch = {}
    for i = 1, 128 do batch[i] = padded("/big?kb=64", 512, "w" .. i) end
    batch = table.concat(batch)
    local conns = {}
    local peak = base
    for i = 1, 200 do
      conns[i] = connect(srv.port)
      assert(conns[i]:send(batch))
    end
    -- Watch for 3 s, stopping early once past the bound.
    local t0 = socket.gettime()
    while socket.gettime() - t0 < 3 and peak < base + 96 do
      testing.sleep(100)
      peak = math.max(peak, rss_mib(srv.pid))
    end
    for _, c in ipairs(conns) do c:close() end
    assert.is_true(peak < base + 96, string.format("peak RSS %.0f MiB (from %.0f MiB at start)", peak, base))
    -- and it still serves, once the closed connections' answers are dropped
    assert.equal(200, srv.request("GET", "/hello").status)
  end)
end)

-- Reads until the server closes (or `limit` seconds pass): the bytes, how it ended, and when.
local function read_to_close(c, limit)
  c:settimeout(limit)
  local t0 = socket.gettime()
  local data, err, partial = c:receive("*a")
  return data or partial, err or "closed", socket.gettime() - t0
end

describe("timeouts", function()
  local srv = spec.server { scripts = SCRIPTS, schema = SCHEMA, workers = 1,
                            args = { "--header-timeout", "300", "--body-timeout", "300", "--idle-timeout", "3000",
                                     "--send-timeout", "500" } }

  it("closes a silent new connection at the header timeout while keep-alive connections wait longer", function()
    local k = connect(srv.port)
    assert(k:send("GET /hello HTTP/1.1\r\nHost: t\r\n\r\n"))
    assert.equal(200, spec.read_response(k).status)
    local n = connect(srv.port)
    local data, how, took = read_to_close(n, 2.5)
    assert.equal("", data)
    assert.equal("closed", how)
    assert.is_true(took < 1.5, "the silent connection lived " .. took .. " s")
    -- the keep-alive one is still served (its idle timeout is 3 s)
    assert(k:send("GET /hello HTTP/1.1\r\nHost: t\r\n\r\n"))
    assert.equal(200, spec.read_response(k).status)
    k:close()
    n:close()
  end)

  it("times each request's headers from its own first byte, for a client always mid-request at a read boundary",
    function()
      local c = connect(srv.port)
      local req = "GET /hello HTTP/1.1\r\nHost: t\r\n\r\n"
      local cut = 10 -- each send ends inside the next request
      assert(c:send(req:sub(1, cut)))
      local t0 = socket.gettime()
      local answered = 0
      while socket.gettime() - t0 < 1.2 do
        testing.sleep(50)
        assert(c:send(req:sub(cut + 1) .. req:sub(1, cut)))
        local res = assert(spec.read_response(c))
        assert.equal(200, res.status)
        answered = answered + 1
      end
      assert.is_true(answered >= 10, answered)
      c:close()
    end)

  it("lets a slow upload that keeps sending finish, and answers 408 with Connection: close to a stalled one",
    function()
      local c = connect(srv.port)
      assert(c:send("POST /upload HTTP/1.1\r\nHost: t\r\nContent-Length: 12\r\n\r\n"))
      for _ = 1, 12 do -- 1.2 s in all, four times the header timeout, 100 ms between reads
        testing.sleep(100)
        assert(c:send("x"))
      end
      local res = assert(spec.read_response(c))
      assert.equal(200, res.status)
      assert.same({ len = 12 }, res.json)
      -- the same connection, a body that stops
      assert(c:send("POST /upload HTTP/1.1\r\nHost: t\r\nContent-Length: 12\r\nX-Request-Id: stalled\r\n\r\nxxxxx"))
      local raw, how, took = read_to_close(c, 3)
      assert.equal("closed", how)
      assert.is_true(took < 1.5, took)
      res = spec.parse_response(raw)
      assert.equal(408, res.status)
      assert.equal("close", res.headers["connection"])
      assert.same({ error = { code = "request_timeout", message = "request body not received in time" },
                    request_id = "stalled" }, res.json)
      c:close()
    end)

  it("answers 408 to headers that stop, and closes", function()
    local c = connect(srv.port)
    assert(c:send("GET /hello HTTP/1.1\r\nHost: t\r\n"))
    local raw, how, took = read_to_close(c, 3)
    assert.equal("closed", how)
    assert.is_true(took < 1.5, took)
    local res = spec.parse_response(raw)
    assert.equal(408, res.status)
    assert.equal("request headers not received in time", res.json.error.message)
    c:close()
  end)

  it("closes a connection whose client does not take its answers within the send timeout", function()
    local c = connect(srv.port)
    local batch = {}
    for i = 1, 16 do batch[i] = "GET /big?kb=1024 HTTP/1.1\r\nHost: t\r\n\r\n" end
    assert(c:send(table.concat(batch)))
    testing.sleep(1500) -- never reading: past the 0.5 s send timeout (the idle timeout is 3 s)
    local raw = read_to_close(c, 3)
    assert.is_true(#raw < 16 * 1024 * 1024, #raw)
    c:close()
    assert.equal(200, srv.request("GET", "/hello").status)
  end)
end)

describe("the connection limit", function()
  local srv = spec.server { scripts = SCRIPTS, schema = SCHEMA, workers = 4, args = { "--max-connections", "1" } }

  it("is one limit for the whole process, and refusals are logged once a second with their count", function()
    testing.sleep(200) -- let the server see the start-up probe's connection close
    local first = connect(srv.port)
    assert(first:send("GET /hello HTTP/1.1\r\nHost: t\r\n\r\n"))
    assert.equal(200, spec.read_response(first).status)
    -- 20 more while it is open: every one is refused, whichever of the 4 workers takes it
    local served = 0
    for _ = 1, 20 do
      local c = connect(srv.port, 2)
      c:send("GET /hello HTTP/1.1\r\nHost: t\r\n\r\n")
      local data = read_to_close(c, 2)
      if data ~= "" then served = served + 1 end
      c:close()
    end
    assert.equal(0, served)
    assert(first:send("GET /hello HTTP/1.1\r\nHost: t\r\n\r\n"))
    assert.equal(200, spec.read_response(first).status)
    first:close()
    testing.sleep(1500) -- the sweep writes the count of the last second
    local lines, total = 0, 0
    for n in srv.read_log():gmatch("connection limit reached %(%-%-max%-connections 1%): refused (%d+) connections?") do
      lines = lines + 1
      total = total + tonumber(n)
    end
    assert.equal(20, total)
    assert.is_true(lines <= 3, lines .. " lines")
    -- and once the first has gone, a new one is served
    testing.sleep(100)
    assert.equal(200, srv.request("GET", "/hello").status)
  end)
end)

describe("the drain", function()
  local srv = spec.server { scripts = SCRIPTS, schema = SCHEMA, workers = 1, manual = true,
                            args = { "--drain-timeout", "300", "--budget-ms", "10000" } }
  after_each(function() srv.stop(9); if srv.dir then testing.rmtree(srv.dir) end end)

  it("is a deadline for the whole process: a worker stuck in a handler is named and the exit is 1", function()
    srv.start()
    -- Another process holds the database's write lock: the handler's INSERT waits (SQLite's
    -- busy wait, 10 s), which no budget interrupts.
    local holder = assert(io.popen("sqlite3 " .. srv.db_path .. " >/dev/null 2>&1", "w"))
    holder:write("PRAGMA busy_timeout = 5000;\nBEGIN IMMEDIATE;\nINSERT INTO items (name) VALUES ('holder');\n")
    holder:flush()
    testing.sleep(300)
    local c = connect(srv.port, 15)
    assert(c:send("POST /write HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n"))
    testing.sleep(300)
    local t0 = socket.gettime()
    testing.kill(srv.pid, 15)
    local code = testing.wait(srv.pid, 4000)
    local took = socket.gettime() - t0
    holder:write("ROLLBACK;\n")
    holder:close()
    c:close()
    if code then srv.pid = nil end
    assert.equal(1, code, srv.read_log())
    assert.is_true(took < 2, took)
    assert.matches("drain timeout %(300 ms%): worker 0 is still busy, in one handler for [%d.]+ s; exiting without it",
      srv.read_log())
    assert.is_nil(srv.read_log():find("stopped cleanly", 1, true))
  end)
end)

describe("the drain under load", function()
  local srv = spec.server { scripts = SCRIPTS, schema = SCHEMA, workers = 1, manual = true,
                            args = { "--drain-timeout", "8000", "--budget-ms", "10000" } }
  after_each(function() srv.stop(9); if srv.dir then testing.rmtree(srv.dir) end end)

  it("answers a connection accepted while the worker was busy, even when handlers outlast the idle grace", function()
    srv.start()
    local a1, a2 = connect(srv.port, 10), connect(srv.port, 10)
    assert(a1:send("GET /spin?ms=1200 HTTP/1.1\r\nHost: t\r\n\r\n"))
    testing.sleep(100) -- a1's handler runs
    assert(a2:send("GET /spin?ms=1200 HTTP/1.1\r\nHost: t\r\n\r\n"))
    testing.sleep(100)
    local b = connect(srv.port, 10) -- queued on the listener: the worker is in a handler
    assert(b:send("GET /hello HTTP/1.1\r\nHost: t\r\nX-Request-Id: late\r\n\r\n"))
    testing.sleep(100)
    testing.kill(srv.pid, 15)
    for _, c in ipairs { a1, a2 } do
      local res = assert(spec.read_response(c))
      assert.equal(200, res.status)
      c:close()
    end
    local raw, how = read_to_close(b, 10)
    assert.equal("closed", how)
    local res = spec.parse_response(raw)
    assert.equal(200, res.status)
    assert.equal("late", res.headers["x-request-id"])
    assert.equal("close", res.headers["connection"])
    b:close()
    assert.equal(0, testing.wait(srv.pid, 10000))
    srv.pid = nil
  end)

  it("half-closes an idle keep-alive connection at the drain: a request sent after that is dropped, not reset",
    function()
      srv.start()
      local k = connect(srv.port, 10)
      assert(k:send("GET /hello HTTP/1.1\r\nHost: t\r\n\r\n"))
      assert.equal(200, spec.read_response(k).status)
      testing.kill(srv.pid, 15)
      local data, how, took = read_to_close(k, 5) -- the idle grace: 1 s
      assert.equal("", data)
      assert.equal("closed", how)
      assert.is_true(took > 0.5 and took < 3, took)
      -- The client sends one more request just as the server let it go: the server still reads
      -- (and drops) it, so no reset comes back (SO_ERROR stays clear).
      assert(k:send("GET /hello HTTP/1.1\r\nHost: t\r\n\r\n"))
      testing.sleep(100)
      assert.is_nil(k:getoption("error"))
      k:close()
      assert.equal(0, testing.wait(srv.pid, 10000))
      srv.pid = nil
    end)
end)
