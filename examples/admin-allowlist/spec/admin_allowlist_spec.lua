-- The admin-allowlist example: customer creation only for allowed email domains or the admin.
package.path = "tests/spec/?.lua;" .. package.path
local spec = require "engine.spec"
local P = require "support.platform"

local DIR = "examples/admin-allowlist/"
local CUSTOMER = "/v2/integrations/customer"

local function post(app, email, headers)
  return app.request("POST", CUSTOMER, { json = { CustomerName = "A", Email = email }, headers = headers })
end

describe("example admin-allowlist", function()
  local app = spec.app { scripts = "scripts:" .. DIR .. "scripts", settings = {
    admin_key = "adm", allowed_email_domains = { "acme.io", "Example.COM" } } }

  it("lets allowed domains sign up without a key (domains compare case-insensitively)", function()
    P.ok(post(app, "ops@acme.io"))
    P.ok(post(app, "ops@EXAMPLE.com"))
    assert.equal(2, P.count(app, "customers"))
  end)

  it("answers 403 for other domains and stores nothing", function()
    assert.equal("Email: customers from evil.io cannot sign up here", P.failed(post(app, "x@evil.io"), 403))
    P.failed(post(app, "x@sub.acme.io"), 403)
    P.failed(post(app, "x@acme.io.evil.io"), 403)
    assert.equal(0, P.count(app, "customers WHERE email LIKE 'x@%'"))
  end)

  it("lets the admin key create any customer, and answers 401 for a wrong key", function()
    P.ok(post(app, "boss@anywhere.org", P.auth("adm")))
    P.ok(post(app, "boss@anywhere.org", P.auth("Bearer adm")))
    assert.equal("invalid admin key", P.failed(post(app, "ops@acme.io", P.auth("nope")), 401))
  end)

  it("still validates the body first", function()
    assert.equal("Email is not a valid email address", P.failed(post(app, "nope"), 400))
  end)
end)

describe("example admin-allowlist with domains from the environment form", function()
  local app = spec.app { scripts = "scripts:" .. DIR .. "scripts", settings = { allowed_email_domains = " acme.io , b.co " } }

  it("reads a comma-separated list", function()
    P.ok(post(app, "a@b.co"))
    P.ok(post(app, "a@acme.io"))
    P.failed(post(app, "a@c.co"), 403)
  end)
end)

describe("example admin-allowlist with no domains", function()
  local app = spec.app { scripts = "scripts:" .. DIR .. "scripts" }

  it("creates nothing without an admin key configured", function()
    P.failed(post(app, "a@b.co"), 403)
    assert.equal(0, P.count(app, "customers"))
  end)
end)
