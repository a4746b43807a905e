-- /v2/integrations/customer, platform envelope (API.md section 3).
package.path = "tests/spec/?.lua;" .. package.path
local spec = require "engine.spec"
local crypto = require "engine.crypto"
local json = require "engine.json"
local P = require "support.platform"

local CUSTOMER = "/v2/integrations/customer"

describe("POST /v2/integrations/customer (open)", function()
  local app = spec.app { scripts = "scripts", schema = "schema" }
  after_each(function() spec.clock.reset() end)

  it("creates a customer and answers the customer object", function()
    spec.clock.freeze(1718445600000)
    local res = app.request("POST", CUSTOMER, {
      json = { CustomerName = "  Acme Corp ", Email = "ops@acme.io", Ignored = 1 }, headers = { ["X-Request-Id"] = "r-1" } })
    local d = P.ok(res, "r-1")
    assert.equal("r-1", res.headers["x-request-id"])
    assert.matches("^%x+%-%x+%-4%x+%-[89ab]%x+%-%x+$", d.CustomerID)
    assert.matches("^%x+%-%x+%-4%x+%-[89ab]%x+%-%x+$", d.CustomerSecret)
    assert.not_equal(d.CustomerID, d.CustomerSecret)
    assert.same({
      CustomerID = d.CustomerID, CustomerSecret = d.CustomerSecret, CustomerName = "Acme Corp", Email = "ops@acme.io",
      CustomerSetting = json.null, CreatedAt = "2024-06-15T10:00:00.000Z", UpdatedAt = "2024-06-15T10:00:00.000Z",
      DeletedAt = false,
    }, d)
    assert.matches('"CustomerSetting":null', res.body, 1, true)
    assert.matches('"DeletedAt":false', res.body, 1, true)
  end)

  it("stores the secret sealed, never in plain text, with the plan and AccountSid", function()
    local d = P.ok(app.request("POST", CUSTOMER, {
      json = { CustomerName = "Acme", Email = "ops@acme.io", Plan = "enterprise", AccountSid = "acme7" } }))
    local row = app.db.one("SELECT * FROM customers WHERE id = ?", d.CustomerID)
    assert.equal("Acme", row.name)
    assert.equal("ops@acme.io", row.email)
    assert.equal("enterprise", row.plan)
    assert.equal("acme7", row.account_sid)
    assert.is_nil(row.secret_sealed:find(d.CustomerSecret, 1, true))
    assert.equal(d.CustomerSecret, crypto.open(row.secret_sealed, d.CustomerID))
    for _, r in ipairs(app.db.query("SELECT * FROM customers")) do
      for _, v in pairs(r) do
        if type(v) == "string" then assert.is_nil(v:find(d.CustomerSecret, 1, true)) end
      end
    end
  end)

  it("defaults to the standard plan and a null account_sid", function()
    local d = P.ok(app.request("POST", CUSTOMER, { json = { CustomerName = "A", Email = "a@b.co" } }))
    local row = app.db.one("SELECT plan, account_sid FROM customers WHERE id = ?", d.CustomerID)
    assert.equal("standard", row.plan)
    assert.equal(json.null, row.account_sid)
  end)

  it("accepts a 200-character name (counted in characters) and a 254-character email", function()
    local name = string.rep("é", 200)
    local email = string.rep("a", 64) .. "@" .. string.rep("b", 185) .. ".com"
    assert.equal(254, #email)
    local d = P.ok(app.request("POST", CUSTOMER, { json = { CustomerName = name, Email = email } }))
    assert.equal(name, d.CustomerName)
    assert.equal(email, d.Email)
  end)

  it("answers 400 for each bad field, naming it, and stores nothing", function()
    local before = P.count(app, "customers")
    local long_email = string.rep("a", 64) .. "@" .. string.rep("b", 186) .. ".com"
    local cases = {
      { { Email = "a@b.co" }, "CustomerName is required" },
      { { CustomerName = "", Email = "a@b.co" }, "CustomerName must not be empty" },
      { { CustomerName = " \t ", Email = "a@b.co" }, "CustomerName must not be empty" },
      { { CustomerName = 7, Email = "a@b.co" }, "CustomerName must be a string" },
      { { CustomerName = string.rep("x", 201), Email = "a@b.co" }, "CustomerName must be at most 200 characters" },
      { { CustomerName = "A" }, "Email is required" },
      { { CustomerName = "A", Email = "" }, "Email must not be empty" },
      { { CustomerName = "A", Email = false }, "Email must be a string" },
      { { CustomerName = "A", Email = "ab.co" }, "Email is not a valid email address" },
      { { CustomerName = "A", Email = "a@@b.co" }, "Email is not a valid email address" },
      { { CustomerName = "A", Email = "a@b@c.co" }, "Email is not a valid email address" },
      { { CustomerName = "A", Email = "a@bco" }, "Email is not a valid email address" },
      { { CustomerName = "A", Email = "a b@c.co" }, "Email is not a valid email address" },
      { { CustomerName = "A", Email = "@c.co" }, "Email is not a valid email address" },
      { { CustomerName = "A", Email = "a@.co" }, "Email is not a valid email address" },
      { { CustomerName = "A", Email = "a@c.co." }, "Email is not a valid email address" },
      { { CustomerName = "A", Email = long_email }, "Email must be at most 254 characters" },
      { { CustomerName = "A", Email = "a@b.co", Plan = "gold" }, "Plan: unknown plan type 'gold'" },
      { { CustomerName = "A", Email = "a@b.co", Plan = 1 }, "Plan must be a string" },
      { { CustomerName = "A", Email = "a@b.co", AccountSid = {} }, "AccountSid must be a string" },
    }
    for _, case in ipairs(cases) do
      assert.equal(case[2], P.failed(app.request("POST", CUSTOMER, { json = case[1] }), 400))
    end
    assert.equal("request body is not valid JSON: ", P.failed(app.request("POST", CUSTOMER, { body = "{" }), 400)
      :sub(1, 32))
    assert.equal("request body must be a JSON object",
      P.failed(app.request("POST", CUSTOMER, { body = '[{"CustomerName":"A","Email":"a@b.co"}]' }), 400))
    assert.equal(before, P.count(app, "customers"))
  end)
end)

describe("POST /v2/integrations/customer with an admin key", function()
  local app = spec.app { scripts = "scripts", schema = "schema", settings = { admin_key = "s3cret-admin" } }
  local body = { CustomerName = "A", Email = "a@b.co" }

  it("answers 401 without the key or with a wrong one, before looking at the body", function()
    assert.equal("this server requires the admin key in the Authorization header",
      P.failed(app.request("POST", CUSTOMER, { json = body }), 401))
    assert.equal("invalid admin key",
      P.failed(app.request("POST", CUSTOMER, { json = body, headers = P.auth("s3cret-admin2") }), 401))
    assert.equal("invalid admin key",
      P.failed(app.request("POST", CUSTOMER, { body = "{", headers = P.auth("nope") }), 401))
    assert.equal(0, P.count(app, "customers"))
  end)

  it("accepts the key raw or as a Bearer credential", function()
    P.ok(app.request("POST", CUSTOMER, { json = body, headers = P.auth("s3cret-admin") }))
    P.ok(app.request("POST", CUSTOMER, { json = body, headers = P.auth("Bearer s3cret-admin") }))
    assert.equal(2, P.count(app, "customers"))
  end)

  it("does not accept a customer token as the admin key", function()
    local c = P.customer(app, nil, P.auth("s3cret-admin"))
    P.failed(app.request("POST", CUSTOMER, { json = body, headers = P.auth(c.token) }), 401)
  end)
end)

describe("GET /v2/integrations/customer", function()
  local app = spec.app { scripts = "scripts", schema = "schema" }

  it("answers the token's customer with its secret", function()
    local c = P.customer(app, { CustomerName = "Zed", Email = "z@z.io" })
    local d = P.ok(app.request("GET", CUSTOMER, { headers = P.auth(c.token) }))
    assert.same(c.data, d)
  end)

  it("answers HEAD like GET, without a body", function()
    local c = P.customer(app)
    local res = app.request("HEAD", CUSTOMER, { headers = P.auth(c.token) })
    assert.equal(200, res.status)
    assert.equal("", res.body)
  end)

  it("answers 401 without a valid customer token", function()
    local c = P.customer(app)
    local a = P.app(app, c.token)
    P.failed(app.request("GET", CUSTOMER), 401)
    assert.equal("this endpoint needs a customer token",
      P.failed(app.request("GET", CUSTOMER, { headers = P.auth(a.token) }), 401))
    P.failed(app.request("GET", CUSTOMER, { headers = P.auth(c.token .. "x") }), 401)
  end)
end)

describe("DELETE /v2/integrations/customer", function()
  local app = spec.app { scripts = "scripts", schema = "schema" }

  it("deletes the customer and everything under it; its tokens then get 401", function()
    local c = P.customer(app)
    local keep = P.customer(app, { CustomerName = "Keep" })
    local a1, a2 = P.app(app, c.token), P.app(app, c.token)
    local k1 = P.app(app, keep.token)
    for _, a in ipairs({ a1, a2, k1 }) do
      P.ok(app.request("POST", "/v2/integrations/app_setting", { json = { Key = "popup", Value = "on" }, headers = P.auth(a.token) }))
      P.add_user(app, a.id, "u1")
      P.add_call(app, a == k1 and keep.id or c.id, a.id, "call-" .. a.id)
    end
    local res = app.request("DELETE", CUSTOMER, { headers = P.auth(c.token) })
    assert.equal("Deleted Successfully", P.ok(res))
    assert.equal(0, P.count(app, "customers WHERE id = ?", c.id))
    assert.equal(0, P.count(app, "apps WHERE customer_id = ?", c.id))
    assert.equal(0, P.count(app, "app_settings WHERE app_id IN (?, ?)", a1.id, a2.id))
    assert.equal(0, P.count(app, "users WHERE app_id IN (?, ?)", a1.id, a2.id))
    assert.equal(0, P.count(app, "calls WHERE customer_id = ?", c.id))
    -- the other customer is untouched
    assert.equal(1, P.count(app, "apps WHERE customer_id = ?", keep.id))
    assert.equal(1, P.count(app, "app_settings WHERE app_id = ?", k1.id))
    assert.equal(1, P.count(app, "users WHERE app_id = ?", k1.id))
    assert.equal(1, P.count(app, "calls WHERE customer_id = ?", keep.id))
    -- every token of the customer and its apps is now dead
    assert.equal("the token's customer no longer exists",
      P.failed(app.request("GET", CUSTOMER, { headers = P.auth(c.token) }), 401))
    P.failed(app.request("DELETE", CUSTOMER, { headers = P.auth(c.token) }), 401)
    assert.equal("the token's app no longer exists",
      P.failed(app.request("GET", "/v2/integrations/app", { headers = P.auth(a1.token) }), 401))
    P.failed(app.request("GET", "/v2/integrations/app_setting", { headers = P.auth(a2.token) }), 401)
    -- and its secret no longer issues tokens
    P.failed(app.request("POST", "/v2/integrations/token",
      { json = { Id = c.id, Secret = c.secret, Entity = "customer" } }), 401)
    P.ok(app.request("GET", CUSTOMER, { headers = P.auth(keep.token) }))
  end)

  it("answers 401 for an app token", function()
    local c = P.customer(app)
    local a = P.app(app, c.token)
    P.failed(app.request("DELETE", CUSTOMER, { headers = P.auth(a.token) }), 401)
    assert.equal(1, P.count(app, "customers WHERE id = ?", c.id))
  end)
end)

describe("the entity query parameter", function()
  local app = spec.app { scripts = "scripts", schema = "schema" }

  it("is accepted when it names the token's type and 401 otherwise", function()
    local c = P.customer(app)
    P.ok(app.request("GET", CUSTOMER .. "?entity=customer", { headers = P.auth(c.token) }))
    assert.equal("entity=app does not match the token (a customer token)",
      P.failed(app.request("GET", CUSTOMER .. "?entity=app", { headers = P.auth(c.token) }), 401))
    P.failed(app.request("DELETE", CUSTOMER .. "?entity=app", { headers = P.auth(c.token) }), 401)
    assert.equal(1, P.count(app, "customers WHERE id = ?", c.id))
  end)
end)
