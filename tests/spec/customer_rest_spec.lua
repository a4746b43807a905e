-- /v2/integrations/{customer_id}, REST envelope (API.md section 4).
package.path = "tests/spec/?.lua;" .. package.path
local spec = require "engine.spec"
local json = require "engine.json"
local crypto = require "engine.crypto"
local P = require "support.platform"

local function path(id) return "/v2/integrations/" .. id end

describe("GET /v2/integrations/{customer_id}", function()
  local app = spec.app { scripts = "scripts", schema = "schema" }
  after_each(function() spec.clock.reset() end)

  it("answers the customer in the REST envelope", function()
    spec.clock.freeze(1718445600000)
    local c = P.customer(app, { CustomerName = "Acme Corp" })
    local res = app.request("GET", path(c.id), { headers = P.auth("Bearer " .. c.token) })
    assert.equal(200, res.status)
    assert.equal("application/json", res.headers["content-type"])
    assert.same({ success = true, data = {
      customer_id = c.id, name = "Acme Corp", account_sid = json.null, status = "active",
      apps_count = 0, users_count = 0,
      plan = { type = "standard", max_apps = 5, max_users_per_app = 50 },
      created_at = "2024-06-15T10:00:00.000Z", updated_at = "2024-06-15T10:00:00.000Z",
    } }, res.json)
    assert.matches('"account_sid":null', res.body, 1, true)
  end)

  it("counts apps and the users of all the customer's apps; shows plan and account_sid", function()
    local c = P.customer(app, { Plan = "enterprise", AccountSid = "acme7" })
    local other = P.customer(app)
    local a1, a2 = P.app(app, c.token), P.app(app, c.token)
    local o1 = P.app(app, other.token)
    P.add_user(app, a1.id, "u1"); P.add_user(app, a1.id, "u2"); P.add_user(app, a2.id, "u1")
    P.add_user(app, o1.id, "u9")
    local d = app.request("GET", path(c.id), { headers = P.auth(c.token) }).json.data
    assert.equal(2, d.apps_count)
    assert.equal(3, d.users_count)
    assert.equal("acme7", d.account_sid)
    assert.same({ type = "enterprise", max_apps = 10, max_users_per_app = 100 }, d.plan)
  end)

  it("answers 401 unauthorized for missing, bad and app tokens", function()
    local c = P.customer(app)
    local a = P.app(app, c.token)
    P.rest_failed(app.request("GET", path(c.id)), 401, "unauthorized")
    P.rest_failed(app.request("GET", path(c.id), { headers = P.auth("nope") }), 401, "unauthorized")
    P.rest_failed(app.request("GET", path(c.id), { headers = P.auth(a.token) }), 401, "unauthorized")
    P.rest_failed(app.request("GET", path(c.id), { headers = P.auth(crypto.to_base64(c.id)) }), 401, "unauthorized")
  end)

  it("answers 403 forbidden for another customer's id (existing or not)", function()
    local c, other = P.customer(app), P.customer(app)
    P.rest_failed(app.request("GET", path(other.id), { headers = P.auth(c.token) }), 403, "forbidden")
    P.rest_failed(app.request("GET", path(crypto.uuid4()), { headers = P.auth(c.token) }), 403, "forbidden")
  end)

  it("answers 404 customer_not_found when the token's customer is gone", function()
    local c = P.customer(app)
    app.db.exec("DELETE FROM customers WHERE id = ?", c.id)
    local res = app.request("GET", path(c.id), { headers = P.auth(c.token) })
    assert.equal("customer not found", P.rest_failed(res, 404, "customer_not_found"))
  end)

  it("leaves the static routes alone: GET /token is 405 with Allow: POST", function()
    local res = app.request("GET", "/v2/integrations/token")
    P.failed(res, 405)
    assert.equal("POST", res.headers["allow"])
    res = app.request("POST", "/v2/integrations/app_setting")
    P.failed(res, 401) -- the app_setting route, not a customer lookup
  end)
end)

describe("DELETE /v2/integrations/{customer_id}", function()
  local app = spec.app { scripts = "scripts", schema = "schema" }

  it("deletes the customer with the same cascade as DELETE /customer", function()
    local c = P.customer(app)
    local a = P.app(app, c.token)
    P.ok(app.request("POST", "/v2/integrations/app_setting", { json = { Key = "record", Value = "yes" }, headers = P.auth(a.token) }))
    P.add_user(app, a.id, "u1")
    P.add_call(app, c.id, a.id, "s1")
    local res = app.request("DELETE", path(c.id), { headers = P.auth(c.token) })
    assert.equal(200, res.status)
    assert.same({ success = true, message = "Customer account and all associated resources deleted successfully" }, res.json)
    for _, t in ipairs({ "customers", "apps", "app_settings", "users", "calls" }) do
      assert.equal(0, P.count(app, t), t)
    end
    P.rest_failed(app.request("DELETE", path(c.id), { headers = P.auth(c.token) }), 404, "customer_not_found")
    P.rest_failed(app.request("GET", path(c.id), { headers = P.auth(c.token) }), 404, "customer_not_found")
    P.failed(app.request("GET", "/v2/integrations/customer", { headers = P.auth(c.token) }), 401)
    P.failed(app.request("GET", "/v2/integrations/app", { headers = P.auth(a.token) }), 401)
  end)

  it("answers 401 and 403 without deleting anything", function()
    local c, other = P.customer(app), P.customer(app)
    P.rest_failed(app.request("DELETE", path(c.id)), 401, "unauthorized")
    P.rest_failed(app.request("DELETE", path(c.id), { headers = P.auth(other.token) }), 403, "forbidden")
    assert.equal(1, P.count(app, "customers WHERE id = ?", c.id))
  end)
end)
