-- The sandbox of route scripts and the budget of loading them: the standard library, the
-- engine's modules and the globals are read-only to scripts; the environment's keys and
-- secrets are out of their reach; a script whose top level loops or eats memory fails the
-- start, the reload, `check` and the in-process load with file:line. Servers run on loopback,
-- are waited for with a bound, and are stopped.
local spec = require "engine.spec"
local testing = require "engine.testing"
local socket = require "socket"

local SCHEMA = "tests/fixtures/engine/schema"

package.path = "tests/spec/?.lua;" .. package.path
local proc = require "support.proc"
local read, write, wait_for = proc.read, proc.write, proc.wait_for

local function tmpdir()
  local d = proc.tmpdir()
  os.execute("mkdir -p " .. d .. "/scripts " .. d .. "/schema && cp " .. SCHEMA .. "/*.sql " .. d .. "/schema/")
  write(d .. "/scripts/a.lua", 'require("engine.route").get("/a", function() return 200, { a = true } end)\n')
  return d
end

local function args_for(dir, extra)
  local a = { "--scripts", dir .. "/scripts", "--schema", dir .. "/schema", "--db", dir .. "/db.sqlite",
    "--workers", "2" }
  for _, v in ipairs(extra or {}) do a[#a + 1] = v end
  return a
end

-- Runs `apiengine <argv...>` to its end (bounded by ms, default 15 s): exit code (nil when it
-- had to be killed), output (stdout and stderr), milliseconds taken.
local function run(argv, env, ms) return proc.run({ testing.exe(), table.unpack(argv) }, env, ms) end

-- Starts `apiengine serve` with args; returns a server table once it listens, or with .code
-- set when it exited first (bounded by 15 s).
local function serve(args, env) return proc.serve(args, env) end

-- One request on a new connection: status, body (nil when nothing answers).
local function get(port, path, method)
  local c = socket.tcp()
  c:settimeout(5)
  if not c:connect("127.0.0.1", port) then
    c:close()
    return nil
  end
  c:send((method or "GET") .. " " .. path .. " HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 0\r\n\r\n")
  local raw, _, partial = c:receive("*a")
  c:close()
  raw = raw or partial
  if not raw or raw == "" then return nil end
  local res = spec.parse_response(raw)
  return res.status, res.body, res.headers
end

after_each(proc.cleanup)

-- A script whose top level never ends (line 3), even when it catches the budget error.
local LOOP = [[
local route = require "engine.route"
route.get("/loop", function() return 200 end)
while true do pcall(function() while true do end end) end
]]

local LOAD_BUDGET = "load budget exceeded (300 ms): loading the scripts took too long (--load-budget-ms or "
  .. "APIENGINE_LOAD_BUDGET_MS sets the budget)"

describe("the load budget", function()
  it("stops a start whose script loops at its top level, naming file:line and the flag", function()
    local dir = tmpdir()
    write(dir .. "/scripts/loop.lua", LOOP)
    local s = serve(args_for(dir, { "--load-budget-ms", "300" }))
    assert.equal(1, s.code, s.read_log())
    assert.truthy(s.read_log():find(dir .. "/scripts/loop.lua:3: " .. LOAD_BUDGET, 1, true), s.read_log())
    -- the check-load before the migrations stopped it: no database was made
    assert.is_nil(read(dir .. "/db.sqlite"))
  end)

  it("takes its default from APIENGINE_LOAD_BUDGET_MS, and `check` fails the same way", function()
    local dir = tmpdir()
    write(dir .. "/scripts/loop.lua", LOOP)
    local code, out, took = run({ "check", table.unpack(args_for(dir)) }, { APIENGINE_LOAD_BUDGET_MS = "300" })
    assert.equal(1, code, out)
    assert.truthy(out:find(dir .. "/scripts/loop.lua:3: " .. LOAD_BUDGET, 1, true), out)
    assert.is_true(took < 10000, tostring(took))
  end)

  it("refuses a reload whose script loops; the old scripts keep serving", function()
    local dir = tmpdir()
    local s = serve(args_for(dir, { "--load-budget-ms", "300" }))
    assert.is_nil(s.code, s.read_log())
    assert.equal(200, get(s.port, "/a"))
    write(dir .. "/scripts/loop.lua", LOOP)
    testing.kill(s.pid, 1)
    assert.truthy(wait_for(function()
      return s.read_log():find("error reload 1 refused: " .. dir .. "/scripts/loop.lua:3: " .. LOAD_BUDGET, 1, true)
    end), s.read_log())
    for _ = 1, 10 do
      assert.equal(200, get(s.port, "/a"))
      assert.equal(404, get(s.port, "/loop"))
    end
    assert.equal(0, s.stop())
  end)

  it("stops a load that passes the memory cap, naming the file and the flag", function()
    local dir = tmpdir()
    write(dir .. "/scripts/big.lua", "local t = {}\nfor i = 1, 1e9 do t[i] = ('x'):rep(64) .. i end\n")
    local code, out = run { "check", table.unpack(args_for(dir, { "--memory-limit-mb", "16" })) }
    assert.equal(1, code, out)
    assert.truthy(out:find(dir .. "/scripts/big.lua: loading it passed the memory cap of the Lua state (16 MiB; "
      .. "--memory-limit-mb or APIENGINE_MEMORY_LIMIT_MB sets it): not enough memory", 1, true), out)
  end)

  it("bounds the in-process load of `apiengine test` too", function()
    local dir = tmpdir()
    write(dir .. "/scripts/loop.lua", LOOP)
    local ok, err = pcall(testing.load_scripts, dir .. "/scripts", 300)
    assert.is_false(ok)
    assert.truthy(tostring(err):find(dir .. "/scripts/loop.lua:3: " .. LOAD_BUDGET, 1, true), tostring(err))
  end)
end)

-- Route scripts that try to change what every later request on the worker relies on.
local ATTACKS = [==[
local route = require "engine.route"
local db = require "engine.db"
local json = require "engine.json"
local mylib = require "lib.mylib"

local attacks = {
  ipairs = function() ipairs = nil end,
  G_ipairs = function() _G.ipairs = nil end,
  string_rep = function() string.rep = nil end,
  rawset_G = function() rawset(_G, "ipairs", function() error("pwned") end) end,
  rawset_G_new = function() rawset(_G, "evil", 1) end,
  rawset_string = function() rawset(string, "rep", function() return "pwned" end) end,
  unlock_G = function() setmetatable(_G, nil) end,
  unlock_string = function() setmetatable(string, nil) end,
  string_mt = function() getmetatable("").__index.rep = nil end,
  engine_db = function() db.exec = nil end,
  loaded = function() package.loaded["engine.db"] = {} end,
  loaded_string = function() package.loaded.string.rep = nil end,
  require_string = function() require("string").rep = nil end,
  require_G = function() require("_G").ipairs = nil end,
  searchers = function() package.searchers[2] = nil end,
  load = function() load("ipairs = nil")() end,
  new_global = function() evil = 1 end,
  table_insert = function() table.insert(_G, 1) end,
  os_getenv = function() os.getenv = function() return "x" end end,
  gc_stop = function() collectgarbage("stop") end,
  gc_default = function() collectgarbage() end,
  req_mt = function(req) getmetatable(req).__index = nil end,
  unlock_req = function(req) setmetatable(req, nil) end,
  headers_mt = function(req) getmetatable(req.headers).__index = nil end,
  array_mt = function() getmetatable(json.array()).__index = function() error("pwned") end end,
  db_error_mt = function()
    local _, e = pcall(db.exec, "SELECT nope FROM no_table")
    getmetatable(e).__tostring = function() return "pwned" end
  end,
}

route.post("/break/{what}", function(req)
  local ok, e = pcall(attacks[req.params.what], req)
  return 200, { ok = ok, err = not ok and (tostring(e):gsub("^[^:]*:%d+: ", "")) or json.null }
end)

route.get("/works", function(req)
  local t = {}
  for i, v in ipairs({ 10, 20, 30 }) do t[i] = v end
  local names = 0
  for _ in pairs(string) do names = names + 1 end
  mylib.count = mylib.count + 1 -- a lib module's table is its scripts' own
  local _, e = pcall(db.exec, "SELECT nope FROM no_table")
  return 200, { rep = ("ab"):rep(2), srep = string.rep("x", 3), t = t, exec = type(db.exec),
    string_fns = names > 10, evil = rawget(_G, "evil") or json.null, count = mylib.count,
    gc = collectgarbage("isrunning") and collectgarbage("count") > 0,
    host = req.headers["Host"], past_end = json.decode("[1, 2]")[3] == nil, dberr = tostring(e) }
end)

route.get("/undeclared", function()
  local ok, e = pcall(function() return no_such_global end)
  return 200, { ok = ok, err = (tostring(e):gsub("^[^:]*:%d+: ", "")) }
end)
]==]

local function sandbox_server()
  local dir = tmpdir()
  os.execute("mkdir -p " .. dir .. "/scripts/lib")
  write(dir .. "/scripts/lib/mylib.lua", "return { count = 0 }\n")
  write(dir .. "/scripts/attacks.lua", ATTACKS)
  local s = serve(args_for(dir, { "--workers", "1" }))
  assert.is_nil(s.code, s.read_log())
  return s
end

describe("the sandbox (real server, one worker)", function()
  local RO = " (keep your own values in a local table)"
  local cases = {
    ipairs = "global 'ipairs' is read-only (use a local of your own)",
    G_ipairs = "global 'ipairs' is read-only (use a local of your own)",
    string_rep = "string is read-only: cannot set 'rep'" .. RO,
    rawset_G = "rawset: the table is read-only (globals, the standard library and the engine's modules)",
    rawset_G_new = "rawset: the table is read-only (globals, the standard library and the engine's modules)",
    rawset_string = "rawset: the table is read-only (globals, the standard library and the engine's modules)",
    unlock_G = "cannot change a protected metatable",
    unlock_string = "cannot change a protected metatable",
    string_mt = "attempt to index a boolean value",
    engine_db = "engine.db is read-only: cannot set 'exec'" .. RO,
    loaded = "package.loaded is read-only: cannot set 'engine.db'" .. RO,
    loaded_string = "string is read-only: cannot set 'rep'" .. RO,
    require_string = "string is read-only: cannot set 'rep'" .. RO,
    require_G = "global 'ipairs' is read-only (use a local of your own)",
    searchers = "package.searchers is read-only: cannot set '2'" .. RO,
    load = "global 'ipairs' is read-only (use a local of your own)",
    new_global = "assignment to undeclared global 'evil' (use local)",
    table_insert = "assignment to undeclared global '1' (use local)",
    os_getenv = "os is read-only: cannot set 'getenv'" .. RO,
    gc_stop = "collectgarbage('stop') is not for scripts: the engine runs the collector (\"count\" and "
      .. "\"isrunning\" answer)",
    gc_default = "collectgarbage('collect') is not for scripts: the engine runs the collector (\"count\" and "
      .. "\"isrunning\" answer)",
    req_mt = "attempt to index a boolean value",
    unlock_req = "cannot change a protected metatable",
    headers_mt = "attempt to index a boolean value",
    array_mt = "attempt to index a boolean value",
    db_error_mt = "attempt to index a boolean value",
  }

  it("refuses every write to the globals, the standard library and the engine's modules; later requests work", function()
    local s = sandbox_server()
    local names = {}
    for name in pairs(cases) do names[#names + 1] = name end
    table.sort(names)
    local json = require "engine.json"
    for i, name in ipairs(names) do
      local status, body = get(s.port, "/break/" .. name, "POST")
      assert.equal(200, status, name)
      assert.same({ ok = false, err = cases[name] }, json.decode(body), name)
      status, body = get(s.port, "/works")
      assert.equal(200, status, name .. ": " .. tostring(body))
      assert.same({ rep = "abab", srep = "xxx", t = { 10, 20, 30 }, exec = "function", string_fns = true,
        evil = json.null, count = i, gc = true, host = "x", past_end = true, dberr = "db: no such table: no_table" },
        json.decode(body), name)
    end
    assert.equal(0, s.stop())
  end)

  it("raises with its name when a script reads an undeclared global", function()
    local s = sandbox_server()
    local status, body = get(s.port, "/undeclared")
    assert.equal(200, status)
    assert.same({ ok = false, err = "undeclared global 'no_such_global' (a typo? globals are the standard library "
      .. "only)" }, require("engine.json").decode(body))
    assert.equal(0, s.stop())
  end)
end)

describe("secrets in the environment and engine.config (real server)", function()
  local KEY = ("ab"):rep(32)
  local SECRETS = [==[
local route = require "engine.route"
local config = require "engine.config"
local json = require "engine.json"
local function err(f, ...)
  local ok, e = pcall(f, ...)
  return ok and "no error" or (tostring(e):gsub("^[^:]*:%d+: ", ""))
end
route.get("/env", function()
  local out = {}
  for _, name in ipairs { "APIENGINE_KEY", "APIENGINE_ADMIN_KEY", "APIENGINE_KEY_OLD", "APIENGINE_GREETING",
    "MY_API_KEY", "DB_Password", "GITHUB_TOKEN", "AWS_SECRET_ACCESS_KEY", "PLAIN_VAR", "APIENGINE_KEY\0x" } do
    out[#out + 1] = os.getenv(name) or json.null
  end
  return 200, out
end)
route.get("/config", function()
  local settings = {}
  for k in pairs(config.settings()) do settings[#settings + 1] = k end
  table.sort(settings)
  return 200, { key = err(config.get, "key"), KEY = err(config.get, "Key"), key_old = err(config.get, "key_old"),
    nul = err(config.get, "key\0x"), admin = config.get("admin_key"), greeting = config.get("greeting"),
    keyring = config.get("keyring", "not a key name"), settings = settings }
end)
]==]

  it("os.getenv shows no APIENGINE_* variable and none named like a key or secret", function()
    local dir = tmpdir()
    write(dir .. "/scripts/secrets.lua", SECRETS)
    local s = serve(args_for(dir), { APIENGINE_KEY = KEY, APIENGINE_ADMIN_KEY = "adm1n", APIENGINE_KEY_OLD = KEY,
      APIENGINE_GREETING = "hi", MY_API_KEY = "k", DB_Password = "p", GITHUB_TOKEN = "t",
      AWS_SECRET_ACCESS_KEY = "s", PLAIN_VAR = "plain" })
    assert.is_nil(s.code, s.read_log())
    local status, body = get(s.port, "/env")
    assert.equal(200, status)
    local null = require("engine.json").null
    assert.same({ null, null, null, null, null, null, null, null, "plain", null }, require("engine.json").decode(body))
    assert.equal(0, s.stop())
  end)

  it("engine.config never gives the server key, from the environment or the config file", function()
    local dir = tmpdir()
    write(dir .. "/scripts/secrets.lua", SECRETS)
    write(dir .. "/config.lua", 'return { key = "' .. KEY .. '", settings = { greeting = "hello", other = 1 } }\n')
    local s = serve(args_for(dir, { "--config", dir .. "/config.lua" }), { APIENGINE_ADMIN_KEY = "adm1n",
      APIENGINE_KEY_OLD = KEY })
    assert.is_nil(s.code, s.read_log())
    local status, body = get(s.port, "/config")
    assert.equal(200, status, body)
    local KEY_MSG = " is the server key, which scripts cannot read (use engine.crypto: seal, open, sign, verify)"
    assert.same({ key = "engine.config: 'key'" .. KEY_MSG, KEY = "engine.config: 'Key'" .. KEY_MSG,
      key_old = "engine.config: 'key_old'" .. KEY_MSG,
      nul = "bad argument #1 to 'engine.config.get' (a setting name is letters, digits and '_')",
      admin = "adm1n", greeting = "hello", keyring = "not a key name", settings = { "greeting", "other" } },
      require("engine.json").decode(body))
    assert.is_nil(body:find(KEY, 1, true))
    assert.equal(0, s.stop())
  end)
end)

describe("settings (real server, one worker)", function()
  it("are handed out as copies: a script that changes them changes nothing for the requests after it", function()
    local dir = tmpdir()
    write(dir .. "/config.lua", 'return { settings = { admin_key = "adm1n", plans = { standard = { max_apps = 5 } } } }\n')
    write(dir .. "/scripts/settings.lua", [[
local route = require "engine.route"
local config = require "engine.config"
route.post("/tamper", function()
  config.settings().admin_key = nil
  config.get("plans").standard.max_apps = 1000000
  config.settings().plans.standard.max_apps = 1000000
  return 204
end)
route.get("/settings", function()
  return 200, { admin = config.get("admin_key"), max_apps = config.get("plans").standard.max_apps,
    all = config.settings() }
end)
]])
    local s = serve(args_for(dir, { "--config", dir .. "/config.lua", "--workers", "1" }))
    assert.is_nil(s.code, s.read_log())
    local want = '{"admin":"adm1n","all":{"admin_key":"adm1n","plans":{"standard":{"max_apps":5}}},"max_apps":5}'
    local function settings()
      local status, body = get(s.port, "/settings")
      return { status, body }
    end
    assert.same({ 200, want }, settings())
    assert.equal(204, get(s.port, "/tamper", "POST"))
    assert.same({ 200, want }, settings())
    assert.equal(0, s.stop())
  end)
end)

describe("the sandbox under `apiengine test` (in-process app: busted keeps its globals, scripts do not)", function()
  local dir = testing.mkdtemp()
  os.execute("mkdir -p " .. dir .. "/lib")
  write(dir .. "/lib/mylib.lua", "return { count = 0 }\n")
  write(dir .. "/attacks.lua", ATTACKS)
  local app = spec.app { scripts = dir, schema = SCHEMA }
  teardown(function() testing.rmtree(dir) end)

  local RO = " (keep your own values in a local table)"
  local RAWSET = "rawset: the table is read-only (globals, the standard library and the engine's modules)"
  local cases = {
    ipairs = "global 'ipairs' is read-only (use a local of your own)",
    G_ipairs = "global 'ipairs' is read-only (use a local of your own)",
    string_rep = "string is read-only: cannot set 'rep'" .. RO,
    rawset_G = RAWSET, rawset_G_new = RAWSET, rawset_string = RAWSET,
    unlock_G = "cannot change a protected metatable",
    unlock_string = "cannot change a protected metatable",
    string_mt = "attempt to index a boolean value",
    engine_db = "engine.db is read-only: cannot set 'exec'" .. RO,
    loaded = "package.loaded is read-only: cannot set 'engine.db'" .. RO,
    loaded_string = "string is read-only: cannot set 'rep'" .. RO,
    require_string = "string is read-only: cannot set 'rep'" .. RO,
    require_G = "global 'ipairs' is read-only (use a local of your own)",
    searchers = "package.searchers is read-only: cannot set '2'" .. RO,
    load = "global 'ipairs' is read-only (use a local of your own)",
    new_global = "assignment to undeclared global 'evil' (use local)",
    os_getenv = "os is read-only: cannot set 'getenv'" .. RO,
  }

  it("refuses the same writes as the server; the scripts and busted's own globals keep working", function()
    local names = {}
    for name in pairs(cases) do names[#names + 1] = name end
    table.sort(names)
    for i, name in ipairs(names) do
      local res = app.request("POST", "/break/" .. name)
      assert.equal(200, res.status, name)
      assert.same({ ok = false, err = cases[name] }, res.json, name)
      res = app.request("GET", "/works", { headers = { Host = "x" } })
      assert.equal(200, res.status, name .. ": " .. tostring(res.error))
      assert.same({ "abab", "xxx", { 10, 20, 30 }, "function", i }, { res.json.rep, res.json.srep, res.json.t,
        res.json.exec, res.json.count }, name)
    end
    assert.equal("function", type(ipairs))
    assert.equal("xx", string.rep("x", 2))
    assert.is_nil(rawget(_G, "evil"))
  end)

  it("raises with its name when a script reads an undeclared global", function()
    local res = app.request("GET", "/undeclared")
    assert.same({ ok = false, err = "undeclared global 'no_such_global' (a typo? globals are the standard library "
      .. "only)" }, res.json)
  end)
end)
