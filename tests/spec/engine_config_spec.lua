-- engine.config in the real binary: the engine evaluates the config file once and every
-- worker's Lua state rebuilds the same settings from it; APIENGINE_<NAME> wins, as a string;
-- settings that are not data stop the start-up with a message naming them.
local spec = require "engine.spec"
local testing = require "engine.testing"

local SCRIPTS = "tests/fixtures/engine/scripts"
local SCHEMA = "tests/fixtures/engine/schema"

describe("engine.config in a server with two workers", function()
  local srv = spec.server {
    scripts = SCRIPTS, schema = SCHEMA, workers = 2,
    settings = { n = 3, f = 1.5, flag = false, name = "from-file", list = { 1, 2, "x" },
                 plans = { standard = { max_apps = 5, max_users_per_app = 50 } } },
    env = { APIENGINE_NAME = "from-env" },
  }

  -- GET /setting?name=<name> answers { value = config.get(name, "default") }.
  local function setting(name)
    local res = srv.request("GET", "/setting?name=" .. name)
    assert.equal(200, res.status)
    return res.body
  end

  it("gives every worker the file's settings, integers as integers and floats as floats", function()
    for _ = 1, 6 do -- a connection each: the kernel spreads them over both workers
      assert.equal('{"value":3}', setting("n"))
      assert.equal('{"value":1.5}', setting("f"))
      assert.equal('{"value":false}', setting("flag"))
      assert.equal('{"value":[1,2,"x"]}', setting("list"))
      assert.equal('{"value":{"standard":{"max_apps":5,"max_users_per_app":50}}}', setting("plans"))
    end
  end)

  it("lets APIENGINE_<NAME> win over the file, and falls back to the default", function()
    assert.equal('{"value":"from-env"}', setting("name"))
    assert.equal('{"value":"default"}', setting("missing"))
  end)
end)

describe("engine.config start-up errors", function()
  local function serve_with_config(source)
    local dir = testing.mkdtemp()
    local f = assert(io.open(dir .. "/config.lua", "w"))
    f:write(source)
    f:close()
    local pid = testing.spawn({ testing.exe(), "serve", "--listen", "127.0.0.1:" .. testing.free_port(),
      "--scripts", SCRIPTS, "--schema", SCHEMA, "--db", dir .. "/db.sqlite", "--workers", "2",
      "--config", dir .. "/config.lua" }, dir .. "/out.log")
    local code = testing.wait(pid, 10000)
    if code == nil then
      testing.kill(pid, 9)
      testing.wait(pid, 5000)
    end
    f = assert(io.open(dir .. "/out.log"))
    local out = f:read("a")
    f:close()
    testing.rmtree(dir)
    return code, out, dir
  end

  it("refuses a function in the settings, naming it", function()
    local code, out, dir = serve_with_config("return { settings = { hooks = { on_start = function() end } } }\n")
    assert.equal(2, code)
    assert.matches("apiengine: config file " .. dir .. "/config.lua: settings.hooks.on_start is a function: "
      .. "settings hold only strings, numbers, booleans and tables", out, 1, true)
  end)

  it("still reports a config file that does not run, once", function()
    local code, out = serve_with_config("return { settings = { x = nil .. 1 } }\n")
    assert.equal(2, code)
    local _, n = out:gsub("attempt to concatenate a nil value", "")
    assert.equal(1, n)
    assert.matches("apiengine: config file: ", out, 1, true)
  end)
end)
