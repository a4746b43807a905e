-- The engine's request path in-process: router, request object, responses,
-- error answers and hook, budgets, sandbox, transactions left open.
local spec = require "engine.spec"
local json = require "engine.json"

local SCRIPTS = "tests/fixtures/engine/scripts"
local SCHEMA = "tests/fixtures/engine/schema"

describe("engine runtime (in-process)", function()
  local app = spec.app { scripts = SCRIPTS, schema = SCHEMA }

  it("routes static segments before parameters", function()
    local res = app.request("GET", "/items/special")
    assert.equal(200, res.status)
    assert.same({ special = true }, res.json)
  end)

  it("hands the handler params, decoded query, headers, path and request id", function()
    local res = app.request("GET", "/echo/one/t%20wo?x=1&y=a+b&z=%2F&flag", { headers = { ["x-TEST"] = "hdr", ["X-Request-Id"] = "my-id-1" } })
    assert.equal(200, res.status)
    assert.same({ a = "one", b = "t wo", query = { x = "1", y = "a b", z = "/", flag = "" }, method = "GET",
                  path = "/echo/one/t%20wo", route = "/echo/{a}/{b}", ua = "hdr", rid = "my-id-1" }, res.json)
    assert.equal("my-id-1", res.headers["x-request-id"])
    assert.equal("application/json", res.headers["content-type"])
  end)

  it("generates a UUID v4 request id when the client's is missing or not printable", function()
    local res = app.request("GET", "/hello", { headers = { ["X-Request-Id"] = "has space" } })
    assert.matches("^%x%x%x%x%x%x%x%x%-%x%x%x%x%-4%x%x%x%-[89ab]%x%x%x%-%x%x%x%x%x%x%x%x%x%x%x%x$", res.headers["x-request-id"])
    local long = ("a"):rep(129)
    res = app.request("GET", "/hello", { headers = { ["X-Request-Id"] = long } })
    assert.not_equal(long, res.headers["x-request-id"])
    res = app.request("GET", "/hello", { headers = { ["X-Request-Id"] = ("b"):rep(128) } })
    assert.equal(("b"):rep(128), res.headers["x-request-id"])
  end)

  it("decodes JSON bodies with req:json() and keeps integers integers", function()
    local res = app.request("POST", "/echo", { body = '{"n":3,"f":1.5,"list":[],"nil":null}' })
    assert.equal(200, res.status)
    assert.equal('{"got":{"f":1.5,"list":[],"n":3,"nil":null},"len":36}', res.body)
    res = app.request("POST", "/echo", { body = "{bad" })
    assert.equal(400, res.status)
    assert.matches("^invalid JSON at byte", res.json.error)
    res = app.request("POST", "/echo", { body = "" })
    assert.equal(400, res.status)
    assert.equal("empty body", res.json.error)
  end)

  it("sends string bodies as they are with the handler's headers", function()
    local res = app.request("PUT", "/raw", { body = "plain text" })
    assert.equal(201, res.status)
    assert.equal("plain text", res.body)
    assert.equal("text/plain", res.headers["content-type"])
    assert.equal("10", res.headers["x-len"])
  end)

  it("answers HEAD like GET without a body", function()
    local res = app.request("HEAD", "/hello")
    assert.equal(200, res.status)
    assert.equal("", res.body)
    assert.equal(17, res.headers["content-length"])
  end)

  it("encodes json.null and empty arrays exactly", function()
    local res = app.request("GET", "/null")
    assert.equal('{"a":null,"list":[]}', res.body)
  end)

  it("answers 404 for unknown paths and 405 with Allow for known paths", function()
    local res = app.request("GET", "/nope")
    assert.equal(404, res.status)
    assert.equal("not_found", res.json.error.code)
    assert.equal(res.headers["x-request-id"], res.json.request_id)
    res = app.request("DELETE", "/hello")
    assert.equal(405, res.status)
    assert.equal("GET, HEAD", res.headers["allow"])
    assert.equal("method_not_allowed", res.json.error.code)
  end)

  it("lets scripts load text chunks, with or without an env, and refuses binary ones", function()
    local res = app.request("GET", "/load")
    assert.equal(200, res.status)
    assert.same({ f = 2, g = 5, h = true, err = "attempt to load a binary chunk (mode is 't')" }, res.json)
  end)

  it("answers /healthz by itself", function()
    local res = app.request("GET", "/healthz")
    assert.equal(200, res.status)
    assert.same({ status = "ok" }, res.json)
  end)

  it("answers 1xx, 204 and 304 without a body or Content-Length, whatever the handler returned", function()
    for _, code in ipairs { 204, 304, 103 } do
      local res = app.request("GET", "/status/" .. code)
      assert.equal(code, res.status)
      assert.equal("", res.body)
      assert.is_nil(res.headers["content-length"])
    end
    local res = app.request("GET", "/status/200")
    assert.equal("a body that must not be sent", res.body)
    assert.equal("28", tostring(res.headers["content-length"]))
  end)

  it("hands a spec the logged error and traceback of a failed in-process request", function()
    local res = app.request("GET", "/error")
    assert.equal(500, res.status)
    assert.matches("script failure", res.error, 1, true)
    assert.matches("tests/fixtures/engine/scripts/routes.lua:%d+", res.error)
    assert.matches("traceback", res.error, 1, true)
    assert.is_nil(app.request("GET", "/hello").error)
  end)

  it("refuses limits the in-process client does not apply instead of ignoring them", function()
    local testing = require "engine.testing"
    assert.has_error(function() testing.limits({ budget_ms = 10 }) end,
      'spec.app: limits.budget_ms is not a limit of the in-process client (it takes max_body_bytes, ' ..
      'max_header_bytes, max_url_bytes; budgets: spec.server{args={"--budget-ms", ...}})')
    testing.limits(nil)
  end)

  it("answers 400 naming the parameter for ill-formed UTF-8 in a query or path parameter", function()
    local res = app.request("GET", "/echo/a/b?ok=caf%C3%A9&q=%FF")
    assert.equal(400, res.status)
    assert.same({ code = "bad_request", message = "query parameter 'q' is not valid UTF-8" }, res.json.error)
    res = app.request("GET", "/echo/%E2%82/b")
    assert.equal(400, res.status)
    assert.equal("path parameter 'a' is not valid UTF-8", res.json.error.message)
    res = app.request("GET", "/echo/a/b?%FF=1")
    assert.equal("a query parameter name is not valid UTF-8", res.json.error.message)
    res = app.request("GET", "/echo/caf%C3%A9/b?x=%E2%82%AC")
    assert.equal(200, res.status)
    assert.equal("caf\u{e9}", res.json.a)
  end)

  it("turns a script error into a 500 that hides the error", function()
    for _, path in ipairs { "/error", "/error-table", "/bad-status", "/bad-header", "/bad-json", "/yield", "/global" } do
      local res = app.request("GET", path, { headers = { ["X-Request-Id"] = "rid-500" } })
      assert.equal(500, res.status, path)
      assert.same({ error = { code = "internal_error", message = "internal server error" }, request_id = "rid-500" }, res.json)
      assert.is_nil(res.body:find("script failure", 1, true))
    end
    -- the log line of a bad answer names the route's method and pattern
    assert.matches("^GET /bad%-status: must return an HTTP status %(integer 100%.%.599%) first\n?$",
      app.request("GET", "/bad-status").error)
  end)

  it("stops a handler over its time budget with 503, even one that catches errors", function()
    for _, path in ipairs { "/loop", "/loop-pcall" } do
      local res = app.request("GET", path)
      assert.equal(503, res.status)
      assert.equal("budget_exceeded", res.json.error.code)
    end
    -- and keeps serving
    assert.equal(200, app.request("GET", "/hello").status)
  end)

  it("rolls back a transaction a failing handler opened #sqlite", function()
    local res = app.request("POST", "/items/fail-in-tx")
    assert.equal(500, res.status)
    assert.is_nil(app.db.one("SELECT * FROM items WHERE name = 'in-tx'"))
    res = app.request("POST", "/items/open-tx")
    assert.equal(200, res.status)
    assert.is_nil(app.db.one("SELECT * FROM items WHERE name = 'left-open'"))
  end)

  it("reads and writes the database through engine.db, constraint errors included", function()
    local res = app.request("POST", "/items", { json = { name = "pen", note = json.null } })
    assert.equal(201, res.status)
    local id = res.json.id
    res = app.request("GET", "/items/" .. id)
    assert.equal(200, res.status)
    assert.equal(string.format('{"id":%d,"name":"pen","note":null}', id), res.body)
    res = app.request("POST", "/items", { json = { name = "pen" } })
    assert.equal(409, res.status)
    assert.equal("unique", res.json.kind)
  end)

  it("applies the body limit with 413", function()
    local res = app.request("POST", "/echo", { body = ("x"):rep(1024 * 1024 + 1) })
    assert.equal(413, res.status)
    assert.equal("payload_too_large", res.json.error.code)
  end)

  it("applies the URL limit with 414 and the header limit with 431", function()
    local res = app.request("GET", "/hello?" .. ("q"):rep(9000))
    assert.equal(414, res.status)
    res = app.request("GET", "/hello", { headers = { ["X-Big"] = ("h"):rep(17000) } })
    assert.equal(431, res.status)
  end)
end)

describe("engine runtime error hook", function()
  local app = spec.app { scripts = SCRIPTS, schema = SCHEMA, settings = { shaped_errors = true } }

  it("lets a script shape the engine's own error answers", function()
    local res = app.request("GET", "/nope", { headers = { ["X-Request-Id"] = "r-404" } })
    assert.equal(404, res.status)
    assert.same({ shaped = true, status = 404, code = "not_found", message = "no route for this path", id = "r-404" }, res.json)
    assert.equal("1", res.headers["x-shaped"])
    res = app.request("GET", "/error")
    assert.equal(500, res.status)
    assert.equal("internal_error", res.json.code)
  end)
end)

describe("engine memory budget", function()
  local app = spec.app { scripts = SCRIPTS, schema = SCHEMA }

  it("answers 503 when a handler passes the memory cap and keeps serving", function()
    -- In-process specs run under the server's default cap, 256 MiB.
    local res = app.request("GET", "/memory")
    assert.equal(503, res.status)
    assert.same({ error = { code = "budget_exceeded", message = "script memory budget exceeded" },
                  request_id = res.headers["x-request-id"] }, res.json)
    assert.equal(200, app.request("GET", "/hello").status)
  end)
end)

describe("engine script overlays", function()
  local app = spec.app { scripts = "tests/fixtures/overlay/base:tests/fixtures/overlay/top", schema = SCHEMA }

  it("replaces a base script by a same-named one and resolves require in the overlay first", function()
    assert.same({ from = "top", util = "top" }, app.request("GET", "/things").json)
  end)

  it("runs the overlay's new scripts after the base, so route.replace can wrap a route", function()
    assert.same({ from = "top", wrapped = true }, app.request("GET", "/other").json)
  end)
end)
