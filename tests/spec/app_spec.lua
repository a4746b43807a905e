-- /v2/integrations/app, platform envelope (API.md section 7) and the plan limit of 1.4.
package.path = "tests/spec/?.lua;" .. package.path
local spec = require "engine.spec"
local crypto = require "engine.crypto"
local json = require "engine.json"
local P = require "support.platform"

local APP = "/v2/integrations/app"

describe("POST /v2/integrations/app", function()
  local app = spec.app { scripts = "scripts", schema = "schema" }
  after_each(function() spec.clock.reset() end)

  it("registers an app and returns its secrets once", function()
    spec.clock.freeze(1718445600000)
    local c = P.customer(app)
    local d = P.ok(app.request("POST", APP, { json = P.copy(P.APP_BODY, { ExotelDomain = "SingaPore", AppName = " Desk " }),
      headers = P.auth(c.token) }))
    assert.matches("^%x+%-%x+%-4%x+%-[89ab]%x+%-%x+$", d.AppID)
    assert.matches("^%x+%-%x+%-4%x+%-[89ab]%x+%-%x+$", d.AppSecret)
    assert.same({
      AppID = d.AppID, AppSecret = d.AppSecret, CustomerID = c.id, AppName = "Desk", ExotelAccountSid = "acme1",
      ExotelApiKey = "key-123", ExotelApiToken = "tok-456", ExotelDomain = "singapore", IsActive = true,
      CreatedAt = "2024-06-15T10:00:00.000Z", UpdatedAt = "2024-06-15T10:00:00.000Z",
    }, d)
  end)

  it("stores a verifier for AppSecret and seals the Exotel credentials", function()
    local c = P.customer(app)
    local a = P.app(app, c.token, { IsActive = false })
    assert.is_false(a.data.IsActive)
    local row = app.db.one("SELECT * FROM apps WHERE id = ?", a.id)
    assert.equal(crypto.to_hex(crypto.sha256(a.secret)), row.secret_hash)
    assert.equal(0, row.is_active)
    assert.equal("key-123", crypto.open(row.exotel_api_key_sealed, a.id))
    assert.equal("tok-456", crypto.open(row.exotel_api_token_sealed, a.id))
    for _, v in pairs(row) do
      if type(v) == "string" then
        for _, secret in ipairs({ a.secret, "key-123", "tok-456" }) do assert.is_nil(v:find(secret, 1, true)) end
      end
    end
  end)

  it("answers 400 for bad fields, naming them", function()
    local c = P.customer(app)
    local cases = {
      { { AppName = json.null }, "AppName is required" },
      { { AppName = "" }, "AppName must not be empty" },
      { { AppName = string.rep("a", 201) }, "AppName must be at most 200 characters" },
      { { ExotelAccountSid = 5 }, "ExotelAccountSid must be a string" },
      { { ExotelApiKey = "  " }, "ExotelApiKey must not be empty" },
      { { ExotelApiToken = json.null }, "ExotelApiToken is required" },
      { { ExotelDomain = "delhi" }, "ExotelDomain must be one of: mumbai, singapore" },
      { { ExotelDomain = 1 }, "ExotelDomain must be a string" },
      { { IsActive = "true" }, "IsActive must be a boolean (true or false)" },
      { { IsActive = json.null }, "IsActive is required" },
    }
    for _, case in ipairs(cases) do
      local body = P.copy(P.APP_BODY, case[1])
      assert.equal(case[2], P.failed(app.request("POST", APP, { json = body, headers = P.auth(c.token) }), 400))
    end
    assert.equal("request body must be a JSON object",
      P.failed(app.request("POST", APP, { json = json.array({ P.APP_BODY }), headers = P.auth(c.token) }), 400))
    P.failed(app.request("POST", APP, { body = "{", headers = P.auth(c.token) }), 400)
    assert.equal(0, P.count(app, "apps WHERE customer_id = ?", c.id))
  end)

  it("answers 401 without a customer token", function()
    local c = P.customer(app)
    local a = P.app(app, c.token)
    P.failed(app.request("POST", APP, { json = P.APP_BODY }), 401)
    P.failed(app.request("POST", APP, { json = P.APP_BODY, headers = P.auth(a.token) }), 401)
    assert.equal(1, P.count(app, "apps WHERE customer_id = ?", c.id))
  end)

  it("enforces max_apps of the standard plan with 403", function()
    local c = P.customer(app)
    for _ = 1, 5 do P.app(app, c.token) end
    local err = P.failed(app.request("POST", APP, { json = P.APP_BODY, headers = P.auth(c.token) }), 403)
    assert.equal("plan limit reached: max_apps is 5 for the standard plan", err)
    assert.equal(5, P.count(app, "apps WHERE customer_id = ?", c.id))
    -- deleting one frees a slot
    local first = app.db.one("SELECT id FROM apps WHERE customer_id = ? ORDER BY seq", c.id).id
    app.db.exec("DELETE FROM apps WHERE id = ?", first)
    P.app(app, c.token)
  end)

  it("enforces max_apps of the enterprise plan", function()
    local c = P.customer(app, { Plan = "enterprise" })
    for _ = 1, 10 do P.app(app, c.token) end
    assert.equal("plan limit reached: max_apps is 10 for the enterprise plan",
      P.failed(app.request("POST", APP, { json = P.APP_BODY, headers = P.auth(c.token) }), 403))
  end)
end)

describe("plans from the plans setting", function()
  local app = spec.app { scripts = "scripts", schema = "schema", settings = {
    plans = { tiny = { max_apps = 1, max_users_per_app = 2 }, big = { max_apps = 3, max_users_per_app = 9 } },
    default_plan = "tiny",
  } }

  it("uses the configured plans and default plan", function()
    local c = P.customer(app)
    assert.equal("tiny", app.db.one("SELECT plan FROM customers WHERE id = ?", c.id).plan)
    P.app(app, c.token)
    assert.equal("plan limit reached: max_apps is 1 for the tiny plan",
      P.failed(app.request("POST", APP, { json = P.APP_BODY, headers = P.auth(c.token) }), 403))
    local d = app.request("GET", "/v2/integrations/" .. c.id, { headers = P.auth(c.token) }).json.data
    assert.same({ type = "tiny", max_apps = 1, max_users_per_app = 2 }, d.plan)
    -- the built-in plans are replaced, not merged
    assert.equal("Plan: unknown plan type 'standard'", P.failed(app.request("POST", "/v2/integrations/customer",
      { json = { CustomerName = "A", Email = "a@b.co", Plan = "standard" } }), 400))
    P.customer(app, { Plan = "big" })
  end)
end)

describe("GET /v2/integrations/app", function()
  local app = spec.app { scripts = "scripts", schema = "schema" }

  local function no_secrets(d)
    assert.is_nil(d.AppSecret)
    assert.is_nil(d.ExotelApiKey)
    assert.is_nil(d.ExotelApiToken)
  end

  it("with an app token answers that app without secrets", function()
    local c = P.customer(app)
    local a = P.app(app, c.token)
    local d = P.ok(app.request("GET", APP, { headers = P.auth(a.token) }))
    no_secrets(d)
    local expect = P.copy(a.data)
    expect.AppSecret, expect.ExotelApiKey, expect.ExotelApiToken = nil, nil, nil
    assert.same(expect, d)
    assert.same(expect, P.ok(app.request("GET", APP .. "?entity=app", { headers = P.auth(a.token) })))
  end)

  it("with a customer token answers the customer's apps, oldest first", function()
    local c = P.customer(app)
    local other = P.customer(app)
    P.app(app, other.token)
    local res = app.request("GET", APP, { headers = P.auth(c.token) })
    assert.same({}, P.ok(res))
    assert.matches('"Data":[]', res.body, 1, true)
    local a1 = P.app(app, c.token, { AppName = "one" })
    local a2 = P.app(app, c.token, { AppName = "two" })
    local a3 = P.app(app, c.token, { AppName = "three" })
    local list = P.ok(app.request("GET", APP .. "?entity=customer", { headers = P.auth(c.token) }))
    assert.equal(3, #list)
    assert.same({ a1.id, a2.id, a3.id }, { list[1].AppID, list[2].AppID, list[3].AppID })
    assert.same({ "one", "two", "three" }, { list[1].AppName, list[2].AppName, list[3].AppName })
    for _, d in ipairs(list) do no_secrets(d) end
  end)

  it("answers 401 when the entity parameter does not match the token", function()
    local c = P.customer(app)
    local a = P.app(app, c.token)
    assert.equal("entity=app does not match the token (a customer token)",
      P.failed(app.request("GET", APP .. "?entity=app", { headers = P.auth(c.token) }), 401))
    P.failed(app.request("GET", APP .. "?entity=customer", { headers = P.auth(a.token) }), 401)
    P.failed(app.request("GET", APP .. "?entity=user", { headers = P.auth(a.token) }), 401)
    P.failed(app.request("GET", APP), 401)
  end)
end)

describe("DELETE /v2/integrations/app", function()
  local app = spec.app { scripts = "scripts", schema = "schema" }

  it("deletes the app, its settings and users; its calls stay", function()
    local c = P.customer(app)
    local a, b = P.app(app, c.token), P.app(app, c.token)
    for _, x in ipairs({ a, b }) do
      P.ok(app.request("POST", "/v2/integrations/app_setting", { json = { Key = "popup", Value = "1" }, headers = P.auth(x.token) }))
      P.add_user(app, x.id, "u1")
      P.add_call(app, c.id, x.id, "call-" .. x.id)
    end
    assert.equal("Deleted Successfully", P.ok(app.request("DELETE", APP, { headers = P.auth(a.token) })))
    assert.equal(0, P.count(app, "apps WHERE id = ?", a.id))
    assert.equal(0, P.count(app, "app_settings WHERE app_id = ?", a.id))
    assert.equal(0, P.count(app, "users WHERE app_id = ?", a.id))
    assert.equal(1, P.count(app, "calls WHERE app_id = ?", a.id))
    assert.equal(1, P.count(app, "apps WHERE id = ?", b.id))
    assert.equal(1, P.count(app, "app_settings WHERE app_id = ?", b.id))
    assert.equal(1, P.count(app, "users WHERE app_id = ?", b.id))
    P.failed(app.request("GET", APP, { headers = P.auth(a.token) }), 401)
    P.failed(app.request("DELETE", APP, { headers = P.auth(a.token) }), 401)
    P.failed(app.request("POST", "/v2/integrations/token", { json = { Id = a.id, Secret = a.secret, Entity = "app" } }), 401)
    local list = P.ok(app.request("GET", APP, { headers = P.auth(c.token) }))
    assert.equal(1, #list)
    assert.equal(b.id, list[1].AppID)
    local d = app.request("GET", "/v2/integrations/" .. c.id, { headers = P.auth(c.token) }).json.data
    assert.equal(1, d.apps_count)
    assert.equal(1, d.users_count)
  end)

  it("answers 401 for a customer token", function()
    local c = P.customer(app)
    local a = P.app(app, c.token)
    P.failed(app.request("DELETE", APP, { headers = P.auth(c.token) }), 401)
    assert.equal(1, P.count(app, "apps WHERE id = ?", a.id))
  end)
end)
