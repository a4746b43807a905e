-- DELETE /v2/integrations/users, platform envelope, app token (API.md section 9).
package.path = "tests/spec/?.lua;" .. package.path
local spec = require "engine.spec"
local json = require "engine.json"
local P = require "support.platform"
local U = require "support.users"

describe("DELETE /v2/integrations/users", function()
  local app = spec.app { scripts = "scripts", schema = "schema" }

  local function del(token, body)
    return app.request("DELETE", U.USERS, { json = body, headers = P.auth(token) })
  end

  local function left(app_id)
    local out = {}
    for _, r in ipairs(app.db.query("SELECT app_user_id FROM users WHERE app_id = ? ORDER BY seq", app_id)) do
      out[#out + 1] = r.app_user_id
    end
    return out
  end

  it("deletes the named users of the token's app only", function()
    local s = U.setup(app)
    local other = P.app(app, s.c.token)
    U.create(app, s.a.token, 4, 1)
    U.create(app, other.token, 2, 1)
    assert.equal("Deleted Successfully", P.ok(del(s.a.token, json.array({ "agent-1", "agent-3" }))))
    assert.same({ "agent-2", "agent-4" }, left(s.a.id))
    assert.same({ "agent-1", "agent-2" }, left(other.id))
    assert.equal("user 'agent-1' not found", P.failed(U.get(app, s.a.token, "?user_id=agent-1"), 404))
  end)

  it("skips ids the app does not have, so a retry answers the same", function()
    local s = U.setup(app)
    U.create(app, s.a.token, 2, 1)
    assert.equal("Deleted Successfully", P.ok(del(s.a.token, json.array({ "agent-1", "ghost", "agent-1" }))))
    assert.same({ "agent-2" }, left(s.a.id))
    assert.equal("Deleted Successfully", P.ok(del(s.a.token, json.array({ "agent-1" }))))
    assert.same({ "agent-2" }, left(s.a.id))
  end)

  it("answers 400 for a body that is not an array of 1 to 100 AppUserIds, deleting nothing", function()
    local s = U.setup(app)
    U.create(app, s.a.token, 2, 1)
    assert.equal("request body must be a JSON array", P.failed(del(s.a.token, { AppUserId = "agent-1" }), 400))
    assert.equal("request body must hold 1 to 100 AppUserIds, not 0", P.failed(del(s.a.token, json.array()), 400))
    assert.equal("request body is empty: expected a JSON array",
      P.failed(app.request("DELETE", U.USERS, { headers = P.auth(s.a.token) }), 400))
    assert.equal("item 1: AppUserId must be a string", P.failed(del(s.a.token, json.array({ "agent-1", 2 })), 400))
    assert.equal("item 1: AppUserId must not be empty", P.failed(del(s.a.token, json.array({ "agent-1", "" })), 400))
    assert.equal("item 0: AppUserId is required", P.failed(del(s.a.token, json.array({ json.null })), 400))
    local many = {}
    for i = 1, 101 do many[i] = "agent-" .. i end
    assert.equal("request body must hold 1 to 100 AppUserIds, not 101", P.failed(del(s.a.token, json.array(many)), 400))
    assert.same({ "agent-1", "agent-2" }, left(s.a.id))
    table.remove(many)
    P.ok(del(s.a.token, json.array(many)))
    assert.same({}, left(s.a.id))
  end)

  it("answers 401 without an app token", function()
    local s = U.setup(app)
    U.create(app, s.a.token, 1, 1)
    P.failed(del(s.c.token, json.array({ "agent-1" })), 401)
    P.failed(app.request("DELETE", U.USERS, { json = json.array({ "agent-1" }) }), 401)
    assert.same({ "agent-1" }, left(s.a.id))
  end)

  it("is routed apart from the customer REST path", function()
    local s = U.setup(app)
    local res = app.request("GET", U.USERS, { headers = P.auth(s.a.token) })
    assert.equal(405, res.status)
    assert.equal("DELETE", res.headers["allow"])
  end)
end)
