-- Memory against the real binary: after a spike (big answers, with their garbage in the Lua
-- state), an idle worker gives the memory back to the system within a few seconds (issue 15,
-- item 6). Without that, a process that once reached a few hundred MiB stayed there.
local spec = require "engine.spec"
local testing = require "engine.testing"
local socket = require "socket"

local SCRIPTS = "tests/fixtures/memory/scripts"
local SCHEMA = "tests/fixtures/engine/schema"

package.path = "tests/spec/?.lua;" .. package.path
local rss_mib = require("support.proc").rss_mib -- the server's VmRSS, in MiB

local function get(port, path)
  local c = assert(socket.tcp())
  c:settimeout(20)
  assert(c:connect("127.0.0.1", port))
  assert(c:send("GET " .. path .. " HTTP/1.1\r\nHost: t\r\n\r\n"))
  return c
end

-- Polls until RSS is at most `bound` MiB or `limit` seconds pass; returns the last RSS.
local function wait_rss_under(pid, bound, limit)
  local t0 = socket.gettime()
  local rss = rss_mib(pid)
  while rss > bound and socket.gettime() - t0 < limit do
    testing.sleep(100)
    rss = rss_mib(pid)
  end
  return rss
end

describe("memory after a spike", function()
  local srv = spec.server { scripts = SCRIPTS, schema = SCHEMA, workers = 1,
    args = { "--access-log", "off", "--budget-ms", "20000" } } -- building 16 MiB is slow under ASan

  it("falls back to within 8 MiB of the resting RSS within 5 s of the last of four 16 MiB answers", function()
    assert.equal(200, srv.request("GET", "/hello").status)
    -- the resting size: what the warm-up request left, once released
    local base = wait_rss_under(srv.pid, 0, 2)
    -- Four clients at once, each asking for 16 MiB built from 1 MiB pieces: the answers, their
    -- pieces (garbage in the Lua state) and the unsent output all pass through the worker.
    local conns = {}
    for i = 1, 4 do conns[i] = get(srv.port, "/big?mb=16") end
    local peak = rss_mib(srv.pid)
    for _, c in ipairs(conns) do
      local res = assert(spec.read_response(c))
      assert.equal(200, res.status)
      assert.equal(16 * 1024 * 1024, #res.body)
      c:close()
      peak = math.max(peak, rss_mib(srv.pid))
    end
    -- the spike happened (else this test proves nothing)
    assert.is_true(peak > base + 48, string.format("peak %.1f MiB from %.1f MiB", peak, base))
    local after = wait_rss_under(srv.pid, base + 8, 5)
    assert.is_true(after <= base + 8,
      string.format("RSS %.1f MiB 5 s after the spike (resting %.1f MiB, peak %.1f MiB)", after, base, peak))
    -- and it still serves, big answers too
    assert.equal(200, srv.request("GET", "/hello").status)
    local res = srv.request("GET", "/big?mb=2")
    assert.equal(200, res.status)
    assert.equal(2 * 1024 * 1024, #res.body)
  end)
end)

-- libpq and its ~25 libraries (GnuTLS, Kerberos, LDAP, ...) cost a SQLite-only server about
-- 4 MiB of resident memory while linked in; since engine/pq_load.h they are loaded only when the
-- engine first talks to PostgreSQL.
describe("the PostgreSQL client library", function()
  local proc = require "support.proc"
  local srv = spec.server { scripts = SCRIPTS, schema = SCHEMA, workers = 1, args = { "--access-log", "off" } }

  it("is not mapped by a server on SQLite", function()
    assert.equal(200, srv.request("GET", "/hello").status)
    local maps = proc.read("/proc/" .. srv.pid .. "/maps")
    assert.truthy(maps:find("libsqlite3", 1, true), "the maps do not list SQLite: " .. maps:sub(1, 200))
    for _, lib in ipairs({ "libpq.so", "libgnutls", "libkrb5", "libldap", "libsasl2" }) do
      assert.is_nil(maps:find(lib, 1, true), lib .. " is mapped")
    end
  end)

  it("that cannot be loaded is named, with dlopen's reason, and the command fails", function()
    local code, out = proc.run({ testing.exe(), "migrate", "--db", "postgresql:///x?host=/nonexistent",
                                 "--schema", "schema", "--scripts", "scripts" },
                               { APIENGINE_LIBPQ = "/nonexistent/libpq.so.5",
                                 APIENGINE_KEY = string.rep("k", 43) .. "=" })
    assert.equal(1, code, out)
    assert.truthy(out:find("cannot load the PostgreSQL client library /nonexistent/libpq.so.5 (Debian package "
                           .. "libpq5): /nonexistent/libpq.so.5: cannot open shared object file", 1, true), out)
  end)
end)
