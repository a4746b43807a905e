-- PUT /v2/integrations/device, platform envelope, app token (API.md section 9): the device rule.
package.path = "tests/spec/?.lua;" .. package.path
local spec = require "engine.spec"
local json = require "engine.json"
local P = require "support.platform"
local U = require "support.users"

describe("PUT /v2/integrations/device", function()
  local app = spec.app { scripts = "scripts", schema = "schema" }
  after_each(function() spec.clock.reset() end)

  -- Creates agent-1 (with an AgentNumber when with_phone) and returns its object.
  local function user(s, with_phone)
    local body = U.body(1, with_phone and { AgentNumber = "+919876543210" } or nil)
    return P.ok(U.post(app, s.a.token, { body }))[1]
  end

  local function state(s)
    local r = U.row(app, s.a.id, "agent-1")
    return { phone = r.phone_enabled, sip = r.sip_enabled, active = r.active_device_id }
  end

  it("turning the phone on makes it active; answers the user object without SipSecret", function()
    spec.clock.freeze(1718445600000)
    local s = U.setup(app)
    local u = user(s, true)
    assert.same({ phone = 1, sip = 1, active = u.SipDeviceID }, state(s))
    spec.clock.advance(1000)
    local d = P.ok(U.device(app, s.a.token, "agent-1", "phone", true))
    local expect = P.copy(u, { ActiveDeviceId = u.PhoneDeviceID, UpdatedAt = "2024-06-15T10:00:01.000Z" })
    expect.SipSecret = nil
    assert.same(expect, d)
    assert.same({ phone = 1, sip = 1, active = u.PhoneDeviceID }, state(s))
    -- the stored secret is untouched
    assert.equal(u.SipSecret, require("engine.crypto").open(U.row(app, s.a.id, "agent-1").sip_secret_sealed,
      "user:" .. s.a.id .. "/agent-1"))
  end)

  it("turning the active device off makes the other enabled device active", function()
    local s = U.setup(app)
    local u = user(s, true)
    -- sip active; sip off -> phone active
    assert.equal(u.PhoneDeviceID, P.ok(U.device(app, s.a.token, "agent-1", "sip", false)).ActiveDeviceId)
    assert.same({ phone = 1, sip = 0, active = u.PhoneDeviceID }, state(s))
    -- sip on -> sip active, phone still enabled
    assert.equal(u.SipDeviceID, P.ok(U.device(app, s.a.token, "agent-1", "sip", true)).ActiveDeviceId)
    assert.same({ phone = 1, sip = 1, active = u.SipDeviceID }, state(s))
    -- phone on, then phone off -> sip active again
    P.ok(U.device(app, s.a.token, "agent-1", "phone", true))
    assert.equal(u.SipDeviceID, P.ok(U.device(app, s.a.token, "agent-1", "phone", false)).ActiveDeviceId)
    assert.same({ phone = 0, sip = 1, active = u.SipDeviceID }, state(s))
  end)

  it("turning off an enabled device that is not active keeps the active one", function()
    local s = U.setup(app)
    local u = user(s, true)
    assert.equal(u.SipDeviceID, P.ok(U.device(app, s.a.token, "agent-1", "phone", false)).ActiveDeviceId)
    assert.same({ phone = 0, sip = 1, active = u.SipDeviceID }, state(s))
    -- turning off an already disabled device while the other is enabled changes nothing
    assert.equal(u.SipDeviceID, P.ok(U.device(app, s.a.token, "agent-1", "phone", false)).ActiveDeviceId)
    assert.same({ phone = 0, sip = 1, active = u.SipDeviceID }, state(s))
    -- turning on the active device again changes nothing
    assert.equal(u.SipDeviceID, P.ok(U.device(app, s.a.token, "agent-1", "sip", true)).ActiveDeviceId)
    assert.same({ phone = 0, sip = 1, active = u.SipDeviceID }, state(s))
  end)

  it("answers 400 for turning off the last enabled device", function()
    local s = U.setup(app)
    local u = user(s, false)
    assert.equal("DeviceStatus: cannot turn off the sip device: it is the user's last enabled device",
      P.failed(U.device(app, s.a.token, "agent-1", "sip", false), 400))
    assert.same({ phone = 0, sip = 1, active = u.SipDeviceID }, state(s))
    -- with the phone as the only enabled device
    P.ok(app.request("PUT", U.PATH, { json = { AppUserId = "agent-1", AgentNumber = "+919876543210" },
      headers = P.auth(s.a.token) }))
    P.ok(U.device(app, s.a.token, "agent-1", "sip", false))
    assert.same({ phone = 1, sip = 0, active = u.PhoneDeviceID }, state(s))
    assert.equal("DeviceStatus: cannot turn off the phone device: it is the user's last enabled device",
      P.failed(U.device(app, s.a.token, "agent-1", "phone", false), 400))
    assert.same({ phone = 1, sip = 0, active = u.PhoneDeviceID }, state(s))
  end)

  it("answers 400 for turning on the phone of a user without an AgentNumber", function()
    local s = U.setup(app)
    local u = user(s, false)
    assert.equal("DeviceName: the phone device needs an AgentNumber: this user has none",
      P.failed(U.device(app, s.a.token, "agent-1", "phone", true), 400))
    assert.same({ phone = 0, sip = 1, active = u.SipDeviceID }, state(s))
    -- turning the (disabled) phone off is allowed: sip stays on and active
    P.ok(U.device(app, s.a.token, "agent-1", "phone", false))
    assert.same({ phone = 0, sip = 1, active = u.SipDeviceID }, state(s))
  end)

  it("the table itself refuses a user with no enabled device or a phone without a number", function()
    local s = U.setup(app)
    user(s, false)
    local ok, err = pcall(app.db.exec, "UPDATE users SET sip_enabled = 0 WHERE app_id = ?", s.a.id)
    assert.is_false(ok)
    assert.equal("check", app.db.kind(err))
    ok, err = pcall(app.db.exec, "UPDATE users SET phone_enabled = 1 WHERE app_id = ?", s.a.id)
    assert.is_false(ok)
    assert.equal("check", app.db.kind(err))
  end)

  it("accepts DeviceName in any case", function()
    local s = U.setup(app)
    local u = user(s, true)
    assert.equal(u.PhoneDeviceID, P.ok(U.device(app, s.a.token, "agent-1", "PHONE", true)).ActiveDeviceId)
    assert.equal(u.SipDeviceID, P.ok(U.device(app, s.a.token, "agent-1", "Sip", true)).ActiveDeviceId)
  end)

  it("answers 400 for bad fields", function()
    local s = U.setup(app)
    user(s, true)
    local cases = {
      { { UserId = json.null }, "UserId is required" },
      { { UserId = 5 }, "UserId must be a string" },
      { { UserId = " " }, "UserId must not be empty" },
      { { DeviceName = "desk" }, "DeviceName must be one of: phone, sip" },
      { { DeviceName = json.null }, "DeviceName is required" },
      { { DeviceStatus = "true" }, "DeviceStatus must be a boolean (true or false)" },
      { { DeviceStatus = json.null }, "DeviceStatus is required" },
      { { DeviceStatus = 1 }, "DeviceStatus must be a boolean (true or false)" },
    }
    for _, case in ipairs(cases) do
      local body = P.copy({ UserId = "agent-1", DeviceName = "phone", DeviceStatus = true }, case[1])
      assert.equal(case[2], P.failed(app.request("PUT", U.DEVICE, { json = body, headers = P.auth(s.a.token) }), 400))
    end
    assert.equal("request body must be a JSON object", P.failed(app.request("PUT", U.DEVICE,
      { json = json.array({ { UserId = "agent-1", DeviceName = "phone", DeviceStatus = true } }), headers = P.auth(s.a.token) }), 400))
    P.failed(app.request("PUT", U.DEVICE, { body = "nope", headers = P.auth(s.a.token) }), 400)
    local r = U.row(app, s.a.id, "agent-1")
    assert.equal(r.sip_device_id, r.active_device_id)
  end)

  it("answers 404 for an unknown user or another app's user, 401 without an app token", function()
    local s = U.setup(app)
    user(s, true)
    local other = P.app(app, s.c.token)
    assert.equal("user 'agent-2' not found", P.failed(U.device(app, s.a.token, "agent-2", "sip", true), 404))
    assert.equal("user 'agent-1' not found", P.failed(U.device(app, other.token, "agent-1", "phone", true), 404))
    P.failed(U.device(app, s.c.token, "agent-1", "phone", true), 401)
    P.failed(app.request("PUT", U.DEVICE, { json = { UserId = "agent-1", DeviceName = "phone", DeviceStatus = true } }), 401)
    local r = U.row(app, s.a.id, "agent-1")
    assert.equal(r.sip_device_id, r.active_device_id)
  end)
end)
