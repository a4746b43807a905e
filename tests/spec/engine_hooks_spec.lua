-- engine.route's request hooks (route.before / route.after, lua_runtime.c's dispatch) and the
-- error hook's path and route arguments, in-process; the default scripts' envelopes for the
-- engine's own answers on REST routes (scripts/errors.lua, lib/rest.lua).
package.path = "tests/spec/?.lua;" .. package.path
local spec = require "engine.spec"
local testing = require "engine.testing"
local P = require "support.platform"

local root = testing.mkdtemp()
local function write(path, text)
  local f = assert(io.open(root .. "/" .. path, "w"))
  f:write(text)
  f:close()
end
os.execute("mkdir -p " .. root .. "/hooks " .. root .. "/plain " .. root .. "/rest_overlay")

write("hooks/hooks.lua", [[
local route = require "engine.route"
local json = require "engine.json"

local function spin(seconds)
  local t = os.clock()
  while os.clock() - t < seconds do end
end

route.before(function(req) req.seen = (req.seen or "") .. "1" end)
route.before(function(req)
  req.seen = req.seen .. "2"
  if req.path == "/stop" then return 418, { stopped = req.seen }, { ["X-Stop"] = "yes" } end
  if req.method == "OPTIONS" then return 204, nil, { ["X-Preflight"] = req.route ~= "" and req.route or "none" } end
  if req.path == "/before-error" then error("before hook broke") end
  if req.path == "/before-bad" then return "teapot" end
  if req.path == "/spin" then spin(0.6) end
end)
route.before(function(req)
  if req.path == "/stop" then error("a later hook must not run once one answered") end
  req.seen = req.seen .. "3"
end)

route.after(function(_, status, headers)
  return { ["X-After-1"] = status .. " " .. (headers["content-type"] or "-") .. " " .. (headers["allow"] or "-"),
    ["X-Replace"] = "first", ["x-own"] = headers["x-own"] and "seen" or nil }
end)
route.after(function(req, _, headers)
  if req.path == "/after-error" then error("after hook broke") end
  if req.path == "/after-bad" then return "not a table" end
  return { ["X-After-2"] = headers["x-after-1"], ["x-replace"] = "second" }
end)

route.get("/seen", function(req) return 200, { seen = req.seen }, { ["X-Own"] = "handler" } end)
route.get("/stop", function() error("the handler must not run") end)
route.get("/fail", function() error("handler broke") end)
route.get("/after-error", function() return 200, "fine" end)
route.get("/after-bad", function() return 200, "fine" end)
route.get("/spin", function() spin(0.6) return 200, "done" end)
route.get("/p/{id}", function(req) return 200, req.params.id end)

route.on_error(function(status, code, message, request_id, path, pattern)
  return { code = code, path = path or json.null, route = pattern or json.null }
end)
]])

write("plain/plain.lua", [[
local route = require "engine.route"
route.get("/seen", function(req) return 200, { seen = req.seen or "none" } end)
]])

write("rest_overlay/zz_fail.lua", [[
local route = require "engine.route"
route.replace("GET", "/v2/integrations/{customer_id}", function() error("REST handler broke") end)
route.replace("GET", "/v2/integrations/customer", function() error("platform handler broke") end)
]])

teardown(function() testing.rmtree(root) end)

describe("route.before", function()
  local app = spec.app { scripts = root .. "/hooks", schema = "tests/fixtures/engine/schema" }

  it("runs every before hook in registration order, then the handler", function()
    local res = app.request("GET", "/seen")
    assert.equal(200, res.status, res.body)
    assert.same({ seen = "123" }, res.json)
    assert.is_nil(res.error)
  end)

  it("answers with the first hook that returns a status: no later hook, no handler; after hooks still run", function()
    local res = app.request("GET", "/stop")
    assert.equal(418, res.status, res.body)
    assert.same({ stopped = "12" }, res.json)
    assert.equal("yes", res.headers["x-stop"])
    assert.equal("418 application/json -", res.headers["x-after-1"])
    assert.is_nil(res.error)
  end)

  it("sees the requests the router answers 404 and 405, so an OPTIONS preflight gets through", function()
    local res = app.request("OPTIONS", "/seen") -- /seen routes GET only
    assert.equal(204, res.status, res.body)
    assert.equal("/seen", res.headers["x-preflight"])
    assert.equal("", res.body)
    res = app.request("OPTIONS", "/nowhere")
    assert.equal(204, res.status, res.body)
    assert.equal("none", res.headers["x-preflight"])
  end)

  it("lets the engine answer 404, 405 and 400 when no hook answers, with the after hooks' headers", function()
    local res = app.request("GET", "/nowhere")
    assert.equal(404, res.status)
    assert.same({ code = "not_found", path = "/nowhere", route = require("engine.json").null }, res.json)
    assert.equal("404 application/json -", res.headers["x-after-1"])
    res = app.request("PUT", "/seen")
    assert.equal(405, res.status)
    assert.same({ code = "method_not_allowed", path = "/seen", route = "/seen" }, res.json)
    assert.equal("405 application/json GET, HEAD", res.headers["x-after-1"])
    assert.equal("GET, HEAD", res.headers["allow"])
    res = app.request("GET", "/p/%FF")
    assert.equal(400, res.status)
    assert.same({ code = "bad_request", path = "/p/%FF", route = "/p/{id}" }, res.json)
    assert.equal("400 application/json -", res.headers["x-after-1"])
  end)

  it("answers 500 through the error hook when a hook fails, and logs the error with file:line", function()
    local res = app.request("GET", "/before-error")
    assert.equal(500, res.status)
    assert.same({ code = "internal_error", path = "/before-error", route = require("engine.json").null }, res.json)
    assert.matches("hooks%.lua:14: before hook broke", res.error)
    assert.equal("500 application/json -", res.headers["x-after-1"])
  end)

  it("answers 500 for a hook's bad answer and logs which hook it was", function()
    local res = app.request("GET", "/before-bad")
    assert.equal(500, res.status)
    assert.equal("internal_error", res.json.code)
    assert.matches("before hook [^ ]*hooks%.lua:10: must return an HTTP status %(integer 100%.%.599%) first", res.error)
  end)

  it("shares the request's budget with the handler: 0.6 s in a hook and 0.6 s in the handler is over 1 s", function()
    local res = app.request("GET", "/spin")
    assert.equal(503, res.status, res.body)
    assert.same({ code = "budget_exceeded", path = "/spin", route = "/spin" }, res.json)
    assert.is_nil(res.headers["x-after-1"]) -- no budget left for after hooks
  end)

  it("leaves the engine's own /healthz alone", function()
    local res = app.request("GET", "/healthz")
    assert.equal(200, res.status)
    assert.is_nil(res.headers["x-after-1"])
  end)
end)

describe("route.after", function()
  local app = spec.app { scripts = root .. "/hooks", schema = "tests/fixtures/engine/schema" }

  it("adds headers in registration order, each hook seeing the answer so far; a later one replaces", function()
    local res = app.request("GET", "/seen")
    assert.equal(200, res.status)
    assert.equal("200 application/json -", res.headers["x-after-1"])
    assert.equal("200 application/json -", res.headers["x-after-2"])
    assert.equal("second", res.headers["x-replace"])
    assert.equal("seen", res.headers["x-own"]) -- the handler's header, seen by the hook and replaced
  end)

  it("runs after a handler's error, on the engine's 500", function()
    local res = app.request("GET", "/fail")
    assert.equal(500, res.status)
    assert.same({ code = "internal_error", path = "/fail", route = "/fail" }, res.json)
    assert.matches("hooks%.lua:%d+: handler broke", res.error)
    assert.equal("500 application/json -", res.headers["x-after-1"])
  end)

  it("answers 500 when an after hook fails or returns no table, without the headers added before", function()
    local res = app.request("GET", "/after-error")
    assert.equal(500, res.status)
    assert.same({ code = "internal_error", path = "/after-error", route = "/after-error" }, res.json)
    assert.matches("hooks%.lua:%d+: after hook broke", res.error)
    assert.is_nil(res.headers["x-after-1"])
    res = app.request("GET", "/after-bad")
    assert.equal(500, res.status)
    assert.matches("after hook [^ ]*hooks%.lua:%d+: must return nil or a table of headers", res.error)
    assert.is_nil(res.headers["x-after-1"])
  end)
end)

describe("request hooks on a script reload", function()
  local app = spec.app { scripts = root .. "/hooks", schema = "tests/fixtures/engine/schema" }

  it("go with the scripts that registered them, the error hook too", function()
    assert.equal("200 application/json -", app.request("GET", "/seen").headers["x-after-1"])
    testing.load_scripts(root .. "/plain")
    local res = app.request("GET", "/seen")
    assert.same({ seen = "none" }, res.json)
    assert.is_nil(res.headers["x-after-1"])
    res = app.request("GET", "/nowhere")
    assert.equal(404, res.status)
    assert.equal("not_found", res.json.error.code) -- the engine's default body, not the old hook's
  end)
end)

describe("apiengine routes", function()
  it("lists the request hooks first, in the order they run, with the file:line of each", function()
    local out_dir = testing.mkdtemp()
    local pid = testing.spawn({ testing.exe(), "routes", "--scripts", root .. "/hooks", "--schema",
      "tests/fixtures/engine/schema", "--db", "/nonexistent/db.sqlite" }, out_dir .. "/out")
    local code = testing.wait(pid, 15000)
    if code == nil then testing.kill(pid, 9) testing.wait(pid, 5000) end
    local f = assert(io.open(out_dir .. "/out"))
    local out = f:read("a")
    f:close()
    testing.rmtree(out_dir)
    assert.equal(0, code, out)
    local H = root .. "/hooks/hooks.lua:"
    assert.equal(table.concat({
      "METHOD   PATTERN       HANDLER",
      "GET      /healthz      (engine, before any script: --healthz-path)",
      "GET      /readyz       (engine, before any script: --readyz-path)",
      "BEFORE   *             " .. H .. "9",
      "BEFORE   *             " .. H .. "10",
      "BEFORE   *             " .. H .. "18",
      "AFTER    *             " .. H .. "23",
      "AFTER    *             " .. H .. "27",
      "GET      /after-bad    " .. H .. "37",
      "GET      /after-error  " .. H .. "36",
      "GET      /fail         " .. H .. "35",
      "GET      /p/{id}       " .. H .. "39",
      "GET      /seen         " .. H .. "33",
      "GET      /spin         " .. H .. "38",
      "GET      /stop         " .. H .. "34",
    }, "\n") .. "\n", out)
  end)
end)

describe("the default scripts' envelope for the engine's own answers", function()
  local app = spec.app { scripts = "scripts:" .. root .. "/rest_overlay", schema = "schema" }

  it("is the REST envelope for /v2/integrations/{customer_id} and below", function()
    assert.equal("no route for this path", P.rest_failed(app.request("GET", "/v2/integrations/abc/nope"), 404, "not_found"))
    P.rest_failed(app.request("GET", "/v2/integrations/abc/usage/x"), 404, "not_found")
    assert.equal("method not allowed for this path",
      P.rest_failed(app.request("PATCH", "/v2/integrations/abc"), 405, "method_not_allowed"))
    P.rest_failed(app.request("POST", "/v2/integrations/abc/usage"), 405, "method_not_allowed")
    local res = app.request("GET", "/v2/integrations/abc", { headers = { ["X-Request-Id"] = "rest-500" } })
    assert.equal("internal server error", P.rest_failed(res, 500, "internal_error"))
    assert.equal("rest-500", res.json.request_id)
    assert.matches("zz_fail%.lua:2: REST handler broke", res.error)
  end)

  it("stays the platform envelope elsewhere, under a platform resource's path too", function()
    P.failed(app.request("GET", "/v2/nope"), 404)
    P.failed(app.request("GET", "/v2/integrations/app/x"), 404)
    P.failed(app.request("PUT", "/v2/integrations/customer"), 405)
    P.failed(app.request("GET", "/v2/integrations/customer"), 500)
  end)
end)
