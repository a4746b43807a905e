-- Connections against the real binary: output back-pressure (bounded memory for clients that
-- never read), timeouts per kind (header, body, idle, send), the process-wide connection limit
-- and its log, and the whole-process drain deadline (issue 14, items 2, 4, 7 and 9).
local spec = require "engine.spec"
local testing = require "engine.testing"
local socket = require "socket"

local SCRIPTS = "tests/fixtures/conn/scripts"
local SCHEMA = "tests/fixtures/engine/schema"

-- The server process's resident memory, in MiB (VmRSS of /proc/PID/status).
local function rss_mib(pid)
  local f = assert(io.open("/proc/" .. pid .. "/status"))
  local s = f:read("a")
  f:close()
  return tonumber(s:match("VmRSS:%s*(%d+) kB")) / 1024
end

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

  it("keeps the server under 256 MiB while 100 clients pipeline 64 KiB of requests for big answers and never read",
    function()
      local base = rss_mib(srv.pid)
      -- 64 requests of 1 KiB each per connection, each asking for a 256 KiB answer: 16 MiB of
      -- answers per connection, 1.6 GiB in all if the engine answered everything it read.
      local batch = {}
      for i = 1, 64 do batch[i] = padded("/big?kb=256", 1024, "r" .. i) end
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
