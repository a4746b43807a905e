-- The customer-phone example: an optional Phone on the customer object.
package.path = "tests/spec/?.lua;" .. package.path
local spec = require "engine.spec"
local json = require "engine.json"
local P = require "support.platform"

local DIR = "examples/customer-phone/"
local CUSTOMER = "/v2/integrations/customer"

describe("example customer-phone", function()
  local app = spec.app { scripts = "scripts:" .. DIR .. "scripts", schema = "schema:" .. DIR .. "schema" }

  it("stores and answers Phone", function()
    local c = P.customer(app, { Phone = "+919876543210" })
    assert.equal("+919876543210", c.data.Phone)
    assert.equal("+919876543210", app.db.one("SELECT phone FROM customers WHERE id = ?", c.id).phone)
    local d = P.ok(app.request("GET", CUSTOMER, { headers = P.auth(c.token) }))
    assert.same(c.data, d)
  end)

  it("answers Phone null when unset", function()
    local c = P.customer(app)
    assert.equal(json.null, c.data.Phone)
    local res = app.request("GET", CUSTOMER, { headers = P.auth(c.token) })
    assert.matches('"Phone":null', res.body, 1, true)
  end)

  it("rejects a malformed Phone with 400", function()
    for _, bad in ipairs({ "12345678", "+0123456789", "+12 345 678", "+123456", "+1234567890123456" }) do
      local res = app.request("POST", CUSTOMER, { json = { CustomerName = "A", Email = "a@b.co", Phone = bad } })
      assert.equal("Phone must be in E.164 form: + and 7 to 15 digits", P.failed(res, 400), bad)
    end
    assert.equal("Phone must be a string",
      P.failed(app.request("POST", CUSTOMER, { json = { CustomerName = "A", Email = "a@b.co", Phone = 12345678 } }), 400))
    P.customer(app, { Phone = "+1234567" })
    P.customer(app, { Phone = "+123456789012345" })
  end)

  it("keeps the other default routes", function()
    local c = P.customer(app)
    local a = P.app(app, c.token)
    assert.equal(a.id, P.ok(app.request("GET", "/v2/integrations/app", { headers = P.auth(a.token) })).AppID)
  end)
end)
