-- engine.spec: the spec helper of `apiengine test` (embedded in the binary).
--
--   local spec = require "engine.spec"
--   describe("customers", function()
--     local app = spec.app { scripts = "scripts", settings = { admin_key = "k" } }
--     it("answers", function()
--       local res = app.request("GET", "/healthz")
--       assert.equal(200, res.status)
--     end)
--   end)
--
-- spec.app registers setup/teardown in the block it is called from (a describe,
-- or the file): a fresh temporary database with the migrations applied, engine.limit's
-- buckets and counters forgotten, the scripts loaded, the settings applied; all removed
-- afterwards.
local testing = require "engine.testing"
local json = require "engine.json"
local config = require "engine.config"

local spec = {}

-- Busted's block hooks live in the environment of the spec code calling us
-- (busted sets the _ENV of each block), not in _G: find the caller's _ENV.
local function hooks()
  local info = debug.getinfo(3, "f")
  local env
  for i = 1, 255 do
    local name, val = debug.getupvalue(info.func, i)
    if not name then break end
    if name == "_ENV" then env = val break end
  end
  env = env or _G
  local setup = env.lazy_setup or env.setup
  local teardown = env.lazy_teardown or env.teardown
  assert(setup and teardown, "engine.spec: call inside a busted spec file (apiengine test)")
  return setup, teardown
end

local function decode_body(headers, body)
  local ct = headers["content-type"] or ""
  if body ~= "" and ct:find("json", 1, true) then
    local v = json.decode(body)
    return v
  end
  return nil
end

local function prepare(opts)
  local headers = {}
  for k, v in pairs(opts.headers or {}) do headers[k] = v end
  local body = opts.body
  if opts.json ~= nil then
    body = json.encode(opts.json)
    local has_ct = false
    for k in pairs(headers) do if k:lower() == "content-type" then has_ct = true end end
    if not has_ct then headers["Content-Type"] = "application/json" end
  end
  return headers, body
end

local function apply_settings(settings)
  local live = config.settings()
  for k in pairs(live) do live[k] = nil end
  for k, v in pairs(settings or {}) do live[k] = v end
end

--- The clock engine.time.now() and token expiry use (in-process only).
spec.clock = {
  freeze = testing.freeze,   -- freeze(ms): now() returns ms
  advance = testing.advance, -- advance(ms): moves the frozen (or real) clock
  reset = testing.reset_clock,
  now = function() return require("engine.time").now() end,
}

--- In-process app: see the top of this file. opts: scripts, schema, settings, limits,
--- load_budget_ms (the budget of loading the scripts; default the server's, 30 s).
function spec.app(opts)
  opts = opts or {}
  local setup, teardown = hooks()
  local app = { settings = opts.settings or {} }
  local dir

  -- request(method, path, { headers =, body =, json =, peer = }) ->
  --   { status =, headers = (lowercase names), body = raw string, json = decoded or nil,
  --     error = what the engine logged at error level while answering (a script error and its
  --             traceback), or nil }
  -- peer: the client's "address:port" the handler sees as req.peer (default "127.0.0.1:0").
  function app.request(method, path, ropts)
    ropts = ropts or {}
    local headers, body = prepare(ropts)
    local status, rheaders, rbody, logged = testing.request(method, path, headers, body, ropts.peer)
    return { status = status, headers = rheaders, body = rbody, json = decode_body(rheaders, rbody), error = logged }
  end

  setup(function()
    dir = testing.mkdtemp()
    app.dir = dir
    app.db_path = dir .. "/test.db"
    testing.open_db(app.db_path, opts.schema or testing.schema_dir)
    apply_settings(app.settings)
    testing.limits(opts.limits)
    testing.limit_clear()
    testing.load_scripts(opts.scripts or testing.scripts_dir, opts.load_budget_ms)
    app.db = require "engine.db"
  end)
  teardown(function()
    testing.reset_clock()
    testing.close_db()
    testing.limits(nil)
    apply_settings({})
    if dir then testing.rmtree(dir) end
  end)
  return app
end

-- Lua source for a config file holding `settings`.
local function serialize(v, indent)
  indent = indent or ""
  local t = type(v)
  if t == "string" then return string.format("%q", v) end
  if t == "number" or t == "boolean" then return tostring(v) end
  if t == "table" then
    local keys = {}
    for k in pairs(v) do keys[#keys + 1] = k end
    table.sort(keys, function(a, b) return tostring(a) < tostring(b) end)
    local out = { "{\n" }
    for _, k in ipairs(keys) do
      local key = type(k) == "string" and string.format("[%q]", k) or "[" .. tostring(k) .. "]"
      out[#out + 1] = indent .. "  " .. key .. " = " .. serialize(v[k], indent .. "  ") .. ",\n"
    end
    out[#out + 1] = indent .. "}"
    return table.concat(out)
  end
  error("cannot serialize a " .. t .. " into the config file")
end
spec.serialize = serialize

-- Minimal HTTP/1.1 client over lua-socket: one request per connection.
local function http_request(host, port, method, path, opts)
  local socket = require "socket"
  local headers, body = prepare(opts or {})
  local c = assert(socket.tcp())
  c:settimeout(opts and opts.timeout or 10)
  assert(c:connect(host, port))
  local lines = { method .. " " .. path .. " HTTP/1.1", "Host: " .. host .. ":" .. port, "Connection: close" }
  for k, v in pairs(headers) do lines[#lines + 1] = k .. ": " .. tostring(v) end
  if body then lines[#lines + 1] = "Content-Length: " .. #body end
  assert(c:send(table.concat(lines, "\r\n") .. "\r\n\r\n" .. (body or "")))
  local raw, err, partial = c:receive("*a")
  c:close()
  raw = raw or partial
  assert(raw and raw ~= "", "no response: " .. tostring(err))
  return spec.parse_response(raw, method == "HEAD")
end

--- Parses one raw HTTP response -> { status, headers (lowercase), body, json }.
function spec.parse_response(raw, head_only)
  local head, rest = raw:match("^(.-)\r\n\r\n(.*)$")
  assert(head, "malformed response: " .. raw:sub(1, 200))
  local status = tonumber(head:match("^HTTP/1%.%d (%d%d%d)"))
  local headers = {}
  for name, value in head:gmatch("\r\n([^:\r\n]+):%s*([^\r\n]*)") do headers[name:lower()] = value end
  local len = tonumber(headers["content-length"] or "0")
  local body = head_only and "" or rest:sub(1, len)
  return { status = status, headers = headers, body = body, json = decode_body(headers, body), rest = rest:sub(len + 1) }
end

--- A real server: the apiengine binary on a free loopback port with a temporary database.
-- opts: scripts, schema, settings, workers (default 1), args (extra flags), env,
-- db (a database file to use instead of a fresh one in srv.dir: a restart with srv.start()
-- then reopens the same data; the caller owns and removes that file).
-- Registers setup/teardown; srv.request(...) as app.request; srv.raw(bytes) -> all bytes until close.
function spec.server(opts)
  opts = opts or {}
  local setup, teardown = hooks()
  local srv = {}

  function srv.start()
    -- A second start would lose the first process: refuse it.
    assert(not srv.pid, "engine.spec: this server is already running (spec.server starts it before the block)")
    srv.dir = testing.mkdtemp()
    srv.port = testing.free_port()
    srv.host = "127.0.0.1"
    srv.url = "http://127.0.0.1:" .. srv.port
    srv.log = srv.dir .. "/server.log"
    srv.db_path = opts.db or (srv.dir .. "/server.db")
    local argv = { testing.exe(), "serve", "--listen", "127.0.0.1:" .. srv.port,
      "--scripts", opts.scripts or testing.scripts_dir, "--schema", opts.schema or testing.schema_dir,
      "--db", srv.db_path, "--workers", tostring(opts.workers or 1) }
    if opts.settings then
      local f = assert(io.open(srv.dir .. "/config.lua", "w"))
      f:write("return { settings = ", serialize(opts.settings), " }\n")
      f:close()
      argv[#argv + 1] = "--config"
      argv[#argv + 1] = srv.dir .. "/config.lua"
    end
    for _, a in ipairs(opts.args or {}) do argv[#argv + 1] = a end
    srv.pid = testing.spawn(argv, srv.log, opts.env)
    -- Ready when it answers /healthz (bounded: 10 s).
    local socket = require "socket"
    for _ = 1, 200 do
      local c = socket.tcp()
      c:settimeout(0.2)
      if c:connect("127.0.0.1", srv.port) then c:close(); return srv end
      c:close()
      local code = testing.wait(srv.pid, 0)
      if code then
        srv.pid = nil
        error("server exited with " .. code .. ":\n" .. srv.read_log())
      end
      testing.sleep(50)
    end
    error("server did not start in 10 s:\n" .. srv.read_log())
  end

  function srv.read_log()
    local f = io.open(srv.log, "r")
    if not f then return "" end
    local s = f:read("a")
    f:close()
    return s
  end

  -- stop([signal]) -> exit code (nil if it had to be killed after 15 s)
  function srv.stop(sig)
    if not srv.pid then return srv.exit_code end
    testing.kill(srv.pid, sig or 15)
    local code = testing.wait(srv.pid, 15000)
    if not code then
      testing.kill(srv.pid, 9)
      testing.wait(srv.pid, 5000)
    end
    srv.pid = nil
    srv.exit_code = code
    return code
  end

  function srv.request(method, path, ropts)
    return http_request(srv.host, srv.port, method, path, ropts)
  end

  -- Sends raw bytes on a new connection; returns everything read until the server
  -- closes or `timeout` seconds (default 5) pass, and how reading ended.
  function srv.raw(bytes, timeout)
    local socket = require "socket"
    local c = assert(socket.tcp())
    c:settimeout(timeout or 5)
    assert(c:connect(srv.host, srv.port))
    if bytes and bytes ~= "" then assert(c:send(bytes)) end
    local data, err, partial = c:receive("*a")
    c:close()
    return data or partial, err or "closed"
  end

  -- Opens a connection for step-by-step use (lua-socket tcp object).
  function srv.connect(timeout)
    local socket = require "socket"
    local c = assert(socket.tcp())
    c:settimeout(timeout or 5)
    assert(c:connect(srv.host, srv.port))
    return c
  end

  if opts.manual then return srv end
  setup(function() srv.start() end)
  teardown(function()
    srv.stop()
    if srv.dir then testing.rmtree(srv.dir) end
  end)
  return srv
end

--- Reads one response from a lua-socket connection (Content-Length framed).
function spec.read_response(c, head_only)
  local lines = {}
  while true do
    local line, err = c:receive("*l")
    if not line then return nil, err end
    if line == "" then break end
    lines[#lines + 1] = line
  end
  local head = table.concat(lines, "\r\n")
  local len = tonumber(head:lower():match("\r\ncontent%-length:%s*(%d+)") or "0")
  local body = ""
  if len > 0 and not head_only then body = assert(c:receive(len)) end
  return spec.parse_response(head .. "\r\n\r\n" .. body, head_only)
end

return spec
