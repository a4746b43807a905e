-- The CORS example: preflights answered by a before hook, Access-Control-Allow-Origin added by
-- an after hook for allowed origins only.
package.path = "tests/spec/?.lua;" .. package.path
local spec = require "engine.spec"
local P = require "support.platform"

local SCRIPTS = "scripts:examples/cors/scripts"
local GOOD, EVIL = "https://app.example.com", "https://evil.example"
local CUSTOMER = "/v2/integrations/customer"

local function preflight(client, path, origin, method)
  return client.request("OPTIONS", path, { headers = { Origin = origin, ["Access-Control-Request-Method"] = method,
    ["Access-Control-Request-Headers"] = "authorization, content-type" } })
end

describe("example cors", function()
  local app = spec.app { scripts = SCRIPTS, settings = { cors_allowed_origins = { GOOD, "http://localhost:3000" } } }

  it("answers a preflight from an allowed origin 204 with the route's methods, the headers and a max age", function()
    local res = preflight(app, CUSTOMER, GOOD, "POST")
    assert.equal(204, res.status, res.body)
    assert.equal("", res.body)
    assert.equal(GOOD, res.headers["access-control-allow-origin"])
    assert.equal("GET, HEAD, POST, DELETE", res.headers["access-control-allow-methods"])
    assert.equal("Authorization, Content-Type, X-Request-Id", res.headers["access-control-allow-headers"])
    assert.equal("600", res.headers["access-control-max-age"])
    assert.equal("Origin", res.headers["vary"])
    -- a REST route with a parameter: its own methods
    res = preflight(app, "/v2/integrations/some-customer", "http://localhost:3000", "DELETE")
    assert.equal(204, res.status)
    assert.equal("http://localhost:3000", res.headers["access-control-allow-origin"])
    assert.equal("GET, HEAD, DELETE", res.headers["access-control-allow-methods"])
  end)

  it("answers a preflight from another origin 204 without any Access-Control-Allow header", function()
    local res = preflight(app, CUSTOMER, EVIL, "POST")
    assert.equal(204, res.status)
    assert.is_nil(res.headers["access-control-allow-origin"])
    assert.is_nil(res.headers["access-control-allow-methods"])
    assert.equal("Origin", res.headers["vary"])
    -- an origin is compared whole: no prefix or suffix tricks
    assert.is_nil(preflight(app, CUSTOMER, GOOD .. ".evil.example", "POST").headers["access-control-allow-origin"])
    assert.is_nil(preflight(app, CUSTOMER, "http://app.example.com", "POST").headers["access-control-allow-origin"])
  end)

  it("leaves OPTIONS that is no preflight, and unknown paths, to the engine (405, 404)", function()
    local res = app.request("OPTIONS", CUSTOMER, { headers = { Origin = GOOD } })
    P.failed(res, 405)
    assert.equal("GET, HEAD, POST, DELETE", res.headers["allow"])
    assert.equal(GOOD, res.headers["access-control-allow-origin"])
    res = preflight(app, "/v2/nope", GOOD, "GET")
    P.failed(res, 404)
    assert.equal(GOOD, res.headers["access-control-allow-origin"])
  end)

  it("adds Access-Control-Allow-Origin to the answers for allowed origins only", function()
    local c = P.customer(app)
    local res = app.request("GET", CUSTOMER, { headers = { Origin = GOOD, Authorization = c.token } })
    assert.equal(c.id, P.ok(res).CustomerID)
    assert.equal(GOOD, res.headers["access-control-allow-origin"])
    assert.equal("X-Request-Id, Retry-After", res.headers["access-control-expose-headers"])
    res = app.request("GET", CUSTOMER, { headers = { Origin = EVIL, Authorization = c.token } })
    P.ok(res)
    assert.is_nil(res.headers["access-control-allow-origin"])
    assert.equal("Origin", res.headers["vary"])
    res = app.request("GET", CUSTOMER, { headers = { Authorization = c.token } })
    P.ok(res)
    assert.is_nil(res.headers["access-control-allow-origin"])
    assert.is_nil(res.headers["vary"])
    -- errors too: a 401 and the engine's own REST 404
    assert.equal(GOOD, app.request("GET", CUSTOMER, { headers = { Origin = GOOD } }).headers["access-control-allow-origin"])
    res = app.request("GET", "/v2/integrations/x/y", { headers = { Origin = GOOD } })
    P.rest_failed(res, 404, "not_found")
    assert.equal(GOOD, res.headers["access-control-allow-origin"])
  end)
end)

describe("example cors on the real server", function()
  local srv = spec.server { scripts = SCRIPTS, settings = { cors_allowed_origins = { GOOD } } }

  it("answers a preflight over HTTP", function()
    local res = preflight(srv, CUSTOMER, GOOD, "POST")
    assert.equal(204, res.status)
    assert.equal(GOOD, res.headers["access-control-allow-origin"])
    assert.equal("GET, HEAD, POST, DELETE", res.headers["access-control-allow-methods"])
  end)
end)
