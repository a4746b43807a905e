-- HTTP/1.1 against the real binary on a loopback port: keep-alive, pipelining,
-- limits, malformed input, budgets, timeouts, start-up errors and shutdown.
local spec = require "engine.spec"
local testing = require "engine.testing"

local SCRIPTS = "tests/fixtures/engine/scripts"
local SCHEMA = "tests/fixtures/engine/schema"

local function count(s, pat)
  local n = 0
  for _ in s:gmatch(pat) do n = n + 1 end
  return n
end

describe("engine over HTTP", function()
  local srv = spec.server { scripts = SCRIPTS, schema = SCHEMA, workers = 2,
                            args = { "--idle-timeout", "400", "--header-timeout", "400", "--memory-limit-mb", "64" } }

  it("keeps a connection alive across requests by default", function()
    local c = srv.connect()
    for i = 1, 3 do
      assert(c:send("GET /hello HTTP/1.1\r\nHost: x\r\nX-Request-Id: ka-" .. i .. "\r\n\r\n"))
      local res = assert(spec.read_response(c))
      assert.equal(200, res.status)
      assert.equal('{"hello":"world"}', res.body)
      assert.equal("ka-" .. i, res.headers["x-request-id"])
      assert.equal("application/json", res.headers["content-type"])
      assert.truthy(res.headers["date"])
      assert.is_nil(res.headers["connection"])
    end
    c:close()
  end)

  it("answers pipelined requests in order", function()
    local reqs = {}
    for i = 1, 5 do
      reqs[#reqs + 1] = "GET /echo/" .. i .. "/x HTTP/1.1\r\nHost: x\r\n\r\n"
    end
    reqs[#reqs + 1] = "GET /hello HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
    local raw = srv.raw(table.concat(reqs))
    local seen = {}
    local rest = raw
    for _ = 1, 6 do
      local res = spec.parse_response(rest)
      seen[#seen + 1] = res.json.a or res.json.hello
      rest = res.rest
    end
    assert.same({ "1", "2", "3", "4", "5", "world" }, seen)
    assert.equal("", rest)
  end)

  it("ignores Connection: Upgrade and keeps the connection usable (curl --http2 on two URLs)", function()
    local raw, how = srv.raw("GET /hello HTTP/1.1\r\nHost: t\r\nConnection: Upgrade, HTTP2-Settings\r\n" ..
      "Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n" ..
      "GET /echo/a/b HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
    assert.equal("closed", how)
    local first = spec.parse_response(raw)
    assert.equal(200, first.status)
    assert.same({ hello = "world" }, first.json)
    local second = spec.parse_response(first.rest)
    assert.equal(200, second.status)
    assert.equal("a", second.json.a)
  end)

  it("sends 204 and 304 from a script without a body, and the next answer stays in step", function()
    local raw = srv.raw("GET /status/204 HTTP/1.1\r\nHost: t\r\n\r\nGET /status/304 HTTP/1.1\r\nHost: t\r\n\r\n" ..
      "GET /hello HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
    local head204 = raw:match("^(HTTP/1.1 204 No Content\r\n.-\r\n\r\n)")
    assert.is_string(head204)
    assert.is_nil(head204:find("Content-Length", 1, true))
    local rest = raw:sub(#head204 + 1)
    local head304 = rest:match("^(HTTP/1.1 304 Not Modified\r\n.-\r\n\r\n)")
    assert.is_string(head304)
    local last = spec.parse_response(rest:sub(#head304 + 1))
    assert.equal(200, last.status)
    assert.same({ hello = "world" }, last.json)
    assert.is_nil(raw:find("must not be sent", 1, true))
  end)

  it("answers as nginx does: 505 for HTTP/2.0, 400 without Host, 501 for other codings", function()
    local function status_of(bytes)
      local raw, how = srv.raw(bytes)
      assert.equal("closed", how)
      return spec.parse_response(raw).status
    end
    assert.equal(505, status_of("GET /hello HTTP/2.0\r\nHost: t\r\n\r\n"))
    assert.equal(400, status_of("GET /hello HTTP/1.1\r\n\r\n"))
    assert.equal(400, status_of("GET /hello HTTP/1.1\r\nHost: t\r\nX: a\r\n b\r\n\r\n"))
    assert.equal(501, status_of("POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n"))
    assert.equal(200, status_of("GET /hello HTTP/1.0\r\n\r\n"))
  end)

  it("closes after Connection: close and for HTTP/1.0 without keep-alive", function()
    local raw, how = srv.raw("GET /hello HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
    assert.equal("closed", how)
    assert.matches("^HTTP/1.1 200 OK\r\n", raw)
    assert.matches("\r\nConnection: close\r\n", raw)
    raw, how = srv.raw("GET /hello HTTP/1.0\r\n\r\n")
    assert.equal("closed", how)
    assert.matches("\r\nConnection: close\r\n", raw)
    local c = srv.connect()
    c:send("GET /hello HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
    local res = spec.read_response(c)
    assert.equal("keep-alive", res.headers["connection"])
    c:send("GET /hello HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
    assert.equal(200, spec.read_response(c).status)
    c:close()
  end)

  it("reads chunked request bodies", function()
    local raw = srv.raw("POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n" ..
                        "4\r\n{\"a\"\r\n4\r\n:[1]\r\n1\r\n}\r\n0\r\n\r\n")
    local res = spec.parse_response(raw)
    assert.equal(200, res.status)
    assert.equal('{"got":{"a":[1]},"len":9}', res.body)
  end)

  it("sends 100 Continue before the body when asked, so clients do not stall", function()
    local c = srv.connect(2)
    c:send("POST /echo HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: 8\r\n\r\n")
    local line = assert(c:receive("*l"))
    assert.equal("HTTP/1.1 100 Continue", line)
    assert.equal("", c:receive("*l"))
    c:send('{"a":11}')
    local res = spec.read_response(c)
    assert.equal(200, res.status)
    assert.equal('{"got":{"a":11},"len":8}', res.body)
    c:close()
  end)

  it("answers HEAD with the GET headers and no body", function()
    local c = srv.connect()
    c:send("HEAD /hello HTTP/1.1\r\nHost: t\r\n\r\nGET /hello HTTP/1.1\r\nHost: t\r\n\r\n")
    local res = spec.read_response(c, true)
    assert.equal(200, res.status)
    assert.equal("17", res.headers["content-length"])
    -- the next response starts right away: HEAD sent no body bytes
    res = spec.read_response(c)
    assert.equal('{"hello":"world"}', res.body)
    c:close()
  end)

  it("rejects malformed HTTP with 400 and closes", function()
    local raw, how = srv.raw("THIS IS NOT HTTP\r\n\r\n")
    assert.equal("closed", how)
    local res = spec.parse_response(raw)
    assert.equal(400, res.status)
    assert.equal("bad_request", res.json.error.code)
    assert.equal(res.headers["x-request-id"], res.json.request_id)
    assert.equal("close", res.headers["connection"])
  end)

  it("answers 431 for oversized headers, 414 for long URLs, 413 for big bodies, and closes", function()
    local raw, how = srv.raw("GET /hello HTTP/1.1\r\nHost: t\r\nX-Big: " .. ("a"):rep(17 * 1024) .. "\r\n\r\n")
    assert.equal("closed", how)
    assert.equal(431, spec.parse_response(raw).status)
    raw, how = srv.raw("GET /" .. ("u"):rep(9000) .. " HTTP/1.1\r\nHost: t\r\n\r\n")
    assert.equal("closed", how)
    assert.equal(414, spec.parse_response(raw).status)
    -- Content-Length over 1 MiB: refused before the body is sent
    raw, how = srv.raw("POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 2000000\r\n\r\n")
    assert.equal("closed", how)
    local res = spec.parse_response(raw)
    assert.equal(413, res.status)
    assert.equal("payload_too_large", res.json.error.code)
    -- chunked past the limit: refused as the bytes arrive
    local chunk = ("x"):rep(65536)
    local body = {}
    for _ = 1, 20 do body[#body + 1] = string.format("%x\r\n%s\r\n", #chunk, chunk) end
    raw = srv.raw("POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n" .. table.concat(body) .. "0\r\n\r\n")
    assert.equal(413, spec.parse_response(raw).status)
    -- and the server still serves
    assert.equal(200, srv.request("GET", "/hello").status)
  end)

  it("answers 404 and 405 with Allow from the engine", function()
    local res = srv.request("GET", "/missing")
    assert.equal(404, res.status)
    res = srv.request("POST", "/hello")
    assert.equal(405, res.status)
    assert.equal("GET, HEAD", res.headers["allow"])
  end)

  it("answers 500 for script errors and 503 for blown time and memory budgets, then keeps serving", function()
    local res = srv.request("GET", "/error", { headers = { ["X-Request-Id"] = "boom-1" } })
    assert.equal(500, res.status)
    assert.same({ error = { code = "internal_error", message = "internal server error" }, request_id = "boom-1" }, res.json)
    res = srv.request("GET", "/loop")
    assert.equal(503, res.status)
    res = srv.request("GET", "/memory")
    assert.equal(503, res.status)
    assert.equal("script memory budget exceeded", res.json.error.message)
    assert.equal(200, srv.request("GET", "/hello").status)
    local log = srv.read_log()
    -- the traceback and request id go to the log, not to the client
    assert.matches("%[boom%-1%] tests/fixtures/engine/scripts/routes.lua:%d+: script failure", log)
    assert.matches("stack traceback", log)
  end)

  it("closes idle keep-alive connections after the idle timeout", function()
    local c = srv.connect(3)
    c:send("GET /hello HTTP/1.1\r\nHost: t\r\n\r\n")
    assert.equal(200, spec.read_response(c).status)
    local t0 = require("socket").gettime()
    local data, err, partial = c:receive("*a")
    local waited = require("socket").gettime() - t0
    assert.equal("", data or partial)
    assert.not_equal("timeout", err)
    assert.is_true(waited < 2.5, "closed after " .. waited .. " s")
    c:close()
  end)

  it("answers 408 and closes when a request does not complete within the header timeout", function()
    local c = srv.connect(3)
    c:send("GET /hello HTTP/1.1\r\nHost: t\r\nX-Slow: ")
    local data, err, partial = c:receive("*a")
    assert.not_equal("timeout", err)
    local res = spec.parse_response(data or partial)
    assert.equal(408, res.status)
    assert.equal("close", res.headers["connection"])
    c:close()
  end)

  it("writes one access log line per request with method, path, status, bytes, duration and id", function()
    srv.request("GET", "/hello?secret=1", { headers = { ["X-Request-Id"] = "access-1" } })
    testing.sleep(50)
    assert.matches("access 127%.0%.0%.1:%d+ GET /hello 200 17 [%d.]+ms access%-1 /hello w%d\n", srv.read_log())
  end)
end)

describe("engine shutdown", function()
  -- A generous budget: /slow spins 0.3 s of CPU, and a loaded machine must not turn that into a 503.
  local srv = spec.server { scripts = SCRIPTS, schema = SCHEMA, workers = 2, manual = true, args = { "--budget-ms", "10000" } }
  after_each(function() srv.stop(); if srv.dir then testing.rmtree(srv.dir) end end)

  it("drains on a SIGTERM that comes while a worker serves and the next still loads", function()
    local slow = spec.server { scripts = "tests/fixtures/slow_start", schema = SCHEMA, workers = 2, manual = true }
    slow.start() -- returns once the first worker listens; the second spends 0.5 s loading its scripts
    testing.kill(slow.pid, 15)
    local code = testing.wait(slow.pid, 10000)
    slow.pid = code == nil and slow.pid or nil
    slow.stop()
    assert.equal(0, code, slow.read_log())
    assert.matches("received SIGTERM", slow.read_log())
    assert.matches("stopped cleanly", slow.read_log())
    testing.rmtree(slow.dir)
  end)

  it("finishes in-flight requests on SIGTERM, then exits 0", function()
    srv.start()
    local c = srv.connect(5)
    c:send("GET /slow HTTP/1.1\r\nHost: t\r\n\r\n")
    testing.sleep(100)
    testing.kill(srv.pid, 15)
    local res = spec.read_response(c)
    assert.equal(200, res.status)
    assert.same({ slow = true }, res.json)
    assert.equal("close", res.headers["connection"])
    c:close()
    assert.equal(0, testing.wait(srv.pid, 10000))
    srv.pid = nil
    assert.matches("received SIGTERM", srv.read_log())
    assert.matches("stopped cleanly", srv.read_log())
  end)

  it("stops on SIGINT with idle keep-alive connections open", function()
    srv.start()
    local c = srv.connect(5)
    c:send("GET /hello HTTP/1.1\r\nHost: t\r\n\r\n")
    assert.equal(200, spec.read_response(c).status)
    testing.kill(srv.pid, 2)
    assert.equal(0, testing.wait(srv.pid, 5000))
    srv.pid = nil
    c:close()
  end)
end)

describe("engine start-up", function()
  local function run(argv)
    local dir = testing.mkdtemp()
    local log = dir .. "/out.log"
    local pid = testing.spawn(argv, log)
    local code = testing.wait(pid, 10000)
    if code == nil then -- still running: stop it, the test fails on the nil code
      testing.kill(pid, 9)
      testing.wait(pid, 5000)
    end
    local f = io.open(log)
    local out = f:read("a")
    f:close()
    return code, out, dir
  end

  it("refuses to start on a script syntax error, naming the file and line", function()
    local dir = testing.mkdtemp()
    os.execute("mkdir -p " .. dir .. "/scripts")
    local f = io.open(dir .. "/scripts/broken.lua", "w")
    f:write("local route = require 'engine.route'\n\nroute.get('/x', function( return 1 end)\n")
    f:close()
    local code, out = run { testing.exe(), "serve", "--listen", "127.0.0.1:" .. testing.free_port(), "--scripts",
      dir .. "/scripts", "--schema", SCHEMA, "--db", dir .. "/db.sqlite", "--workers", "1" }
    assert.equal(1, code)
    assert.matches(dir .. "/scripts/broken.lua:3:", out, 1, true)
    testing.rmtree(dir)
  end)

  it("refuses a route whose parameter is named differently from an earlier route's at that position", function()
    local dir = testing.mkdtemp()
    os.execute("mkdir -p " .. dir .. "/scripts")
    local f = io.open(dir .. "/scripts/clash.lua", "w")
    f:write("local route = require 'engine.route'\nroute.get('/c/{id}/orders', function() return 200 end)\n" ..
      "route.get('/c/{customer_id}', function(req) return 200, req.params end)\n")
    f:close()
    local code, out = run { testing.exe(), "serve", "--listen", "127.0.0.1:" .. testing.free_port(), "--scripts",
      dir .. "/scripts", "--schema", SCHEMA, "--db", dir .. "/db.sqlite", "--workers", "1" }
    assert.equal(1, code)
    assert.matches(dir .. "/scripts/clash.lua:3:", out, 1, true)
    assert.matches("has another name", out, 1, true)
    testing.rmtree(dir)
  end)

  it("refuses a binary (precompiled) chunk", function()
    local dir = testing.mkdtemp()
    os.execute("mkdir -p " .. dir .. "/scripts")
    local f = io.open(dir .. "/scripts/bin.lua", "wb")
    f:write(string.dump(function() return 1 end))
    f:close()
    local code, out = run { testing.exe(), "serve", "--listen", "127.0.0.1:" .. testing.free_port(), "--scripts",
      dir .. "/scripts", "--schema", SCHEMA, "--db", dir .. "/db.sqlite", "--workers", "1" }
    assert.equal(1, code)
    assert.matches("attempt to load a binary chunk", out, 1, true)
    testing.rmtree(dir)
  end)

  it("refuses to start when the port is taken, saying so", function()
    local holder = assert(require("socket").bind("127.0.0.1", 0))
    local _, port = holder:getsockname()
    local dir = testing.mkdtemp()
    local code, out = run { testing.exe(), "serve", "--listen", "127.0.0.1:" .. port, "--scripts", SCRIPTS,
      "--schema", SCHEMA, "--db", dir .. "/db.sqlite", "--workers", "1" }
    holder:close()
    testing.rmtree(dir)
    assert.equal(1, code)
    assert.matches("cannot listen on 127.0.0.1:" .. port .. ": Address already in use", out, 1, true)
  end)

  it("tells the truth in --help and --version and rejects unknown options", function()
    local code, out = run { testing.exe(), "--version" }
    assert.equal(0, code)
    assert.matches("^apiengine %d+%.%d+%.%d+\n$", out)
    code, out = run { testing.exe(), "serve", "--help" }
    assert.equal(0, code)
    for _, flag in ipairs { "--listen", "--workers", "--scripts", "--db", "--log-level", "--max-body-bytes", "APIENGINE_KEY" } do
      assert.truthy(out:find(flag, 1, true), flag)
    end
    code, out = run { testing.exe(), "serve", "--bogus" }
    assert.equal(2, code)
    assert.matches("unknown option '%-%-bogus'", out)
  end)
end)

describe("engine connection limit and JSON logs", function()
  local srv = spec.server { scripts = SCRIPTS, schema = SCHEMA, workers = 1,
                            args = { "--max-connections", "2", "--log-format", "json" } }

  it("closes connections past --max-connections and keeps serving the others", function()
    testing.sleep(200) -- let the server see the start-up probe's connection close
    local a, b = srv.connect(), srv.connect()
    a:send("GET /hello HTTP/1.1\r\nHost: t\r\n\r\n")
    assert.equal(200, spec.read_response(a).status)
    b:send("GET /hello HTTP/1.1\r\nHost: t\r\n\r\n")
    assert.equal(200, spec.read_response(b).status)
    local c = srv.connect(2)
    c:send("GET /hello HTTP/1.1\r\nHost: t\r\n\r\n")
    local data, err, partial = c:receive("*a")
    assert.equal("", data or partial)
    assert.not_equal("timeout", err)
    c:close()
    a:send("GET /hello HTTP/1.1\r\nHost: t\r\n\r\n")
    assert.equal(200, spec.read_response(a).status)
    a:close()
    b:close()
    testing.sleep(100)
    assert.matches('"level":"warn","msg":"connection limit reached %(%-%-max%-connections 2%): refused 1 connection',
      srv.read_log())
  end)

  it("writes access lines as JSON objects", function()
    srv.request("GET", "/hello", { headers = { ["X-Request-Id"] = "json-1" } })
    testing.sleep(50)
    local line = srv.read_log():match('[^\n]*"request_id":"json%-1"[^\n]*')
    local entry = require("engine.json").decode(line)
    assert.equal("access", entry.type)
    assert.equal("GET", entry.method)
    assert.equal("/hello", entry.path)
    assert.equal(200, entry.status)
    assert.equal(17, entry.bytes)
    assert.equal("number", type(entry.duration_ms))
  end)

  it("keeps every JSON log line valid JSON whatever bytes a path or message holds", function()
    -- UTF-8 passes through as it is; an ill-formed byte (a lone 0xFF, a cut sequence) becomes U+FFFD.
    local res = spec.parse_response(srv.raw("GET /say/caf%C3%A9 HTTP/1.1\r\nHost: t\r\nX-Request-Id: json-utf8\r\nConnection: close\r\n\r\n"))
    assert.equal(200, res.status)
    res = spec.parse_response(srv.raw("GET /caf\xC3\xA9/\xFF HTTP/1.1\r\nHost: t\r\nX-Request-Id: json-raw\r\nConnection: close\r\n\r\n"))
    assert.equal(404, res.status)
    testing.sleep(50)
    local json = require("engine.json")
    local log = srv.read_log()
    local said = json.decode(log:match('[^\n]*"msg":"said [^\n]*'))
    assert.equal("said caf\u{e9} \u{fffd}\u{fffd}\u{fffd}", said.msg)
    assert.equal("json-utf8", said.request_id)
    local access = json.decode(log:match('[^\n]*"request_id":"json%-raw"[^\n]*'))
    assert.equal("/caf\u{e9}/\u{fffd}", access.path)
    for line in log:gmatch("[^\n]+") do
      assert.is_table(json.decode(line), line)
    end
  end)
end)

describe("engine files", function()
  local srv = spec.server { scripts = SCRIPTS, schema = SCHEMA }

  it("creates the database without access for others and the key file owner-only", function()
    local function mode(path)
      local p = io.popen("stat -c %a " .. path)
      local m = p:read("l")
      p:close()
      return m
    end
    assert.equal("640", mode(srv.db_path))
    assert.equal("600", mode(srv.db_path .. ".key"))
  end)
end)
