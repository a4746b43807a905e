-- The engine's own answers in the platform envelope (API.md section 10, scripts/errors.lua),
-- request ids, and the flow over real HTTP.
package.path = "tests/spec/?.lua;" .. package.path
local spec = require "engine.spec"
local P = require "support.platform"

describe("engine errors in the platform envelope", function()
  local app = spec.app { scripts = "scripts", schema = "schema", limits = { max_body_bytes = 1024 } }

  it("404 for an unknown path", function()
    local res = app.request("GET", "/v2/nope", { headers = { ["X-Request-Id"] = "req-404" } })
    assert.equal("no route for this path", P.failed(res, 404, "req-404"))
    -- below /v2/integrations/{customer_id}: the REST envelope (API.md 1.1), but under a
    -- platform resource's path
    P.rest_failed(app.request("GET", "/v2/integrations/a/b/c"), 404, "not_found")
    P.failed(app.request("GET", "/v2/integrations/customer/x"), 404)
  end)

  it("405 with Allow for a known path and another method", function()
    local res = app.request("PUT", "/v2/integrations/customer")
    P.failed(res, 405)
    assert.equal("GET, HEAD, POST, DELETE", res.headers["allow"])
    res = app.request("PATCH", "/v2/integrations/some-id")
    P.rest_failed(res, 405, "method_not_allowed") -- a REST route: the REST envelope
    assert.equal("GET, HEAD, DELETE", res.headers["allow"])
    res = app.request("DELETE", "/v2/integrations/app_setting")
    P.failed(res, 405)
    assert.equal("GET, HEAD, POST", res.headers["allow"])
  end)

  it("413 for a body over the limit", function()
    local res = app.request("POST", "/v2/integrations/customer", { body = string.rep("x", 2048) })
    P.failed(res, 413)
  end)

  it("echoes X-Request-Id in body and header; makes one up otherwise", function()
    local res = app.request("POST", "/v2/integrations/token", { json = {}, headers = { ["X-Request-Id"] = "abc-123" } })
    P.failed(res, 400, "abc-123")
    assert.equal("abc-123", res.headers["x-request-id"])
    res = app.request("GET", "/v2/integrations/customer")
    P.failed(res, 401)
    assert.matches("^%x+%-%x+%-4%x+%-%x+%-%x+$", res.json.RequestId)
    local c = P.customer(app)
    res = app.request("GET", "/v2/integrations/" .. c.id, { headers = { Authorization = "x", ["X-Request-Id"] = "rest-1" } })
    P.rest_failed(res, 401, "unauthorized")
    assert.equal("rest-1", res.json.request_id)
  end)

  it("keeps /healthz", function()
    assert.equal(200, app.request("GET", "/healthz").status)
  end)
end)

describe("over real HTTP", function()
  local srv = spec.server { scripts = "scripts", schema = "schema", workers = 2,
    settings = { token_max_failures = 3 }, env = { APIENGINE_ADMIN_KEY = "adm-key" } }

  it("walks create customer -> token -> read -> app -> delete", function()
    local B = "/v2/integrations"
    P.failed(srv.request("POST", B .. "/customer", { json = { CustomerName = "A", Email = "a@b.co" } }), 401)
    local c = P.ok(srv.request("POST", B .. "/customer",
      { json = { CustomerName = "A", Email = "a@b.co" }, headers = { Authorization = "Bearer adm-key" } }))
    local tok = P.ok(srv.request("POST", B .. "/token",
      { json = { Id = c.CustomerID, Secret = c.CustomerSecret, Entity = "customer" } }))
    assert.same(c, P.ok(srv.request("GET", B .. "/customer", { headers = P.auth(tok) })))
    local res = srv.request("GET", B .. "/" .. c.CustomerID, { headers = P.auth("Bearer " .. tok) })
    assert.equal(200, res.status)
    assert.equal(c.CustomerID, res.json.data.customer_id)
    local a = P.ok(srv.request("POST", B .. "/app", { json = P.APP_BODY, headers = P.auth(tok) }))
    local atok = P.ok(srv.request("POST", B .. "/token", { json = { Id = a.AppID, Secret = a.AppSecret, Entity = "app" } }))
    assert.equal(a.AppID, P.ok(srv.request("GET", B .. "/app", { headers = P.auth(atok) })).AppID)
    res = srv.request("HEAD", B .. "/customer", { headers = P.auth(tok) })
    assert.equal(200, res.status)
    res = srv.request("GET", B .. "/token")
    P.failed(res, 405)
    assert.equal("POST", res.headers["allow"])
    assert.equal("Deleted Successfully", P.ok(srv.request("DELETE", B .. "/customer", { headers = P.auth(tok) })))
    P.failed(srv.request("GET", B .. "/app", { headers = P.auth(atok) }), 401)
  end)

  it("holds the brute-force guard across workers (counters in SQLite)", function()
    -- An Id that exists: unknown Ids are counted in each worker's memory (scripts/token.lua).
    local c = P.ok(srv.request("POST", "/v2/integrations/customer",
      { json = { CustomerName = "V", Email = "v@b.co" }, headers = { Authorization = "adm-key" } }))
    local body = { Id = c.CustomerID, Secret = "guess", Entity = "customer" }
    for _ = 1, 3 do P.failed(srv.request("POST", "/v2/integrations/token", { json = body }), 401) end
    for _ = 1, 4 do
      local res = srv.request("POST", "/v2/integrations/token", { json = body })
      P.failed(res, 429)
      assert.matches("^%d+$", res.headers["retry-after"])
    end
  end)

  it("never logs secrets", function()
    local c = P.ok(srv.request("POST", "/v2/integrations/customer",
      { json = { CustomerName = "L", Email = "l@b.co" }, headers = { Authorization = "adm-key" } }))
    srv.request("POST", "/v2/integrations/token", { json = { Id = c.CustomerID, Secret = c.CustomerSecret, Entity = "customer" } })
    local log = srv.read_log()
    assert.is_nil(log:find(c.CustomerSecret, 1, true))
    assert.is_nil(log:find("adm-key", 1, true))
  end)
end)
