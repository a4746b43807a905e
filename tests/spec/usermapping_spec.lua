-- /v2/integrations/usermapping, platform envelope, app token (API.md section 9).
package.path = "tests/spec/?.lua;" .. package.path
local spec = require "engine.spec"
local crypto = require "engine.crypto"
local json = require "engine.json"
local P = require "support.platform"
local U = require "support.users"

local PATH = U.PATH

-- The stored row holds no SipSecret in plain text (nor its hex/base64 forms).
local function assert_not_stored(row, secret)
  for _, v in pairs(row) do
    if type(v) == "string" then
      for _, form in ipairs({ secret, crypto.to_base64(secret), crypto.to_hex(secret) }) do
        assert.is_nil(v:find(form, 1, true))
      end
    end
  end
end

describe("POST /v2/integrations/usermapping", function()
  local app = spec.app { scripts = "scripts", schema = "schema" }
  after_each(function() spec.clock.reset() end)

  it("creates a batch and returns the user objects with SipSecret", function()
    spec.clock.freeze(1718445600000)
    local s = U.setup(app)
    local data = P.ok(U.post(app, s.a.token, {
      U.body(1, { AgentNumber = "+919876543210", AppUsername = "  Agent   Smith ", Extra = "ignored" }),
      U.body(2),
    }))
    assert.equal(2, #data)
    local u1, u2 = data[1], data[2]
    for _, u in ipairs(data) do
      for _, k in ipairs({ "ExotelUserId", "PhoneDeviceID", "SipDeviceID", "SipSecret" }) do
        assert.matches(U.UUID, u[k], nil, k)
      end
      assert.matches("^sip:johnsmith%-%x%x%x%x%x%x%x%x$", u.SipId)
      assert.equal(u.SipDeviceID, u.ActiveDeviceId)
    end
    assert.same({
      CustomerId = s.c.id, AppID = s.a.id, AppUserId = "agent-1", ExotelAccountSid = "acme1",
      ExotelUserId = u1.ExotelUserId, AppUsername = "Agent Smith", ExotelUserName = "John Smith",
      AgentNumber = "+919876543210", ActiveDeviceId = u1.SipDeviceID, PhoneDeviceID = u1.PhoneDeviceID,
      SipDeviceID = u1.SipDeviceID, VirtualNumber = "+918047112233", Email = "agent1@acme.io",
      OutboundActive = false, Role = "user", SipId = u1.SipId, SipSecret = u1.SipSecret, IsActive = true,
      UserDetail = json.null, CreatedAt = "2024-06-15T10:00:00.000Z", UpdatedAt = "2024-06-15T10:00:00.000Z",
    }, u1)
    assert.equal(json.null, u2.AgentNumber)
    assert.equal("agent-2", u2.AppUserId)
    -- all distinct
    local seen = {}
    for _, u in ipairs(data) do
      for _, k in ipairs({ "ExotelUserId", "PhoneDeviceID", "SipDeviceID", "SipSecret", "SipId" }) do
        assert.is_nil(seen[u[k]]); seen[u[k]] = true
      end
    end
  end)

  it("stores the devices by the rule and SipSecret sealed, never in plain text", function()
    local s = U.setup(app)
    local data = P.ok(U.post(app, s.a.token, { U.body(1, { AgentNumber = "+919876543210" }), U.body(2) }))
    local r1, r2 = U.row(app, s.a.id, "agent-1"), U.row(app, s.a.id, "agent-2")
    assert.same({ 1, 1, data[1].SipDeviceID }, { r1.phone_enabled, r1.sip_enabled, r1.active_device_id })
    assert.same({ 0, 1, data[2].SipDeviceID }, { r2.phone_enabled, r2.sip_enabled, r2.active_device_id })
    for i, r in ipairs({ r1, r2 }) do
      assert_not_stored(r, data[i].SipSecret)
      assert.equal(data[i].SipSecret, crypto.open(r.sip_secret_sealed, "user:" .. s.a.id .. "/" .. r.app_user_id))
      -- bound to its user: another user's associated data does not open it
      assert.is_nil((crypto.open(r.sip_secret_sealed, "user:" .. s.a.id .. "/other")))
    end
  end)

  it("answers 400 for each bad field, naming the user index and the field, and stores nothing", function()
    local s = U.setup(app)
    local cases = {
      { { AppUserId = json.null }, "user 1: AppUserId is required" },
      { { AppUserId = 7 }, "user 1: AppUserId must be a string" },
      { { AppUserId = "  " }, "user 1: AppUserId must not be empty" },
      { { AppUserId = " a" }, "user 1: AppUserId must not start or end with whitespace" },
      { { AppUserId = string.rep("x", 129) }, "user 1: AppUserId must be at most 128 characters" },
      { { AppUsername = json.null }, "user 1: AppUsername is required" },
      { { AppUsername = "Agent" }, 'user 1: AppUsername must be "First Last": two words of at least 3 characters each' },
      { { AppUsername = "Al Smith" }, 'user 1: AppUsername must be "First Last": two words of at least 3 characters each' },
      { { AppUsername = "Agent J Smith" }, 'user 1: AppUsername must be "First Last": two words of at least 3 characters each' },
      { { Email = "nope" }, "user 1: Email is not a valid email address" },
      { { Email = json.null }, "user 1: Email is required" },
      { { ExotelAccountSid = "" }, "user 1: ExotelAccountSid must not be empty" },
      { { ExotelUserName = "John Li" }, 'user 1: ExotelUserName must be "First Last": two words of at least 3 characters each' },
      { { ExotelUserName = false }, "user 1: ExotelUserName must be a string" },
      { { VirtualNumber = json.null }, "user 1: VirtualNumber is required" },
      { { VirtualNumber = "080-4711" }, "user 1: VirtualNumber must be a phone number: 6 to 15 digits with an optional leading +" },
      { { VirtualNumber = "12345" }, "user 1: VirtualNumber must be a phone number: 6 to 15 digits with an optional leading +" },
      { { AgentNumber = "+1234567890123456" }, "user 1: AgentNumber must be a phone number: 6 to 15 digits with an optional leading +" },
      { { AgentNumber = 919876543210 }, "user 1: AgentNumber must be a string" },
    }
    for _, case in ipairs(cases) do
      local err = P.failed(U.post(app, s.a.token, { U.body(1), U.body(2, case[1]) }), 400)
      assert.equal(case[2], err)
    end
    -- accepted edge values
    P.ok(U.post(app, s.a.token, { U.body(9, { AppUsername = "Émile Zola", VirtualNumber = "080471", AgentNumber = json.null }) }))
    assert.equal(1, P.count(app, "users WHERE app_id = ?", s.a.id))
  end)

  it("answers 400 for a body that is not an array of 1 to 100 objects", function()
    local s = U.setup(app)
    local function post(opts) opts.headers = P.auth(s.a.token); return app.request("POST", PATH, opts) end
    assert.equal("request body must be a JSON array", P.failed(post({ json = U.body(1) }), 400))
    assert.equal("request body must hold 1 to 100 users, not 0", P.failed(post({ json = json.array() }), 400))
    assert.equal("request body is empty: expected a JSON array", P.failed(post({}), 400))
    P.failed(post({ body = "[{" }), 400)
    assert.equal("user 1: must be a JSON object", P.failed(post({ json = json.array({ U.body(1), "x" }) }), 400))
    assert.equal("user 0: must be a JSON object", P.failed(post({ json = json.array({ json.array() }) }), 400))
    local many = {}
    for i = 1, 101 do many[i] = U.body(i) end
    assert.equal("request body must hold 1 to 100 users, not 101", P.failed(U.post(app, s.a.token, many), 400))
    assert.equal(0, P.count(app, "users WHERE app_id = ?", s.a.id))
  end)

  it("rejects a duplicate AppUserId in the batch or in the app, all or nothing", function()
    local s = U.setup(app)
    assert.equal("user 2: AppUserId 'agent-1' appears twice in the batch (also user 0)",
      P.failed(U.post(app, s.a.token, { U.body(1), U.body(2), U.body(1) }), 400))
    assert.equal(0, P.count(app, "users WHERE app_id = ?", s.a.id))
    U.create(app, s.a.token, 1, 5)
    assert.equal("user 1: AppUserId 'agent-5' already exists in this app",
      P.failed(U.post(app, s.a.token, { U.body(4), U.body(5), U.body(6) }), 400))
    assert.equal(1, P.count(app, "users WHERE app_id = ?", s.a.id))
    -- the same AppUserId in another app is fine
    local other = P.app(app, s.c.token)
    U.create(app, other.token, 1, 5)
    assert.equal(1, P.count(app, "users WHERE app_id = ? AND app_user_id = 'agent-5'", other.id))
  end)

  it("answers 401 without an app token", function()
    local s = U.setup(app)
    P.failed(app.request("POST", PATH, { json = json.array({ U.body(1) }) }), 401)
    P.failed(U.post(app, s.c.token, { U.body(1) }), 401)
    P.failed(U.post(app, "v1.bogus.token", { U.body(1) }), 401)
    -- a deleted app's token
    local other = P.app(app, s.c.token)
    P.ok(app.request("DELETE", "/v2/integrations/app", { headers = P.auth(other.token) }))
    P.failed(U.post(app, other.token, { U.body(1) }), 401)
    assert.equal(0, P.count(app, "users WHERE app_id IN (?, ?)", s.a.id, other.id))
  end)

  it("enforces max_users_per_app of the standard plan (50) with 403, per app", function()
    local s = U.setup(app)
    local list = {}
    for i = 1, 51 do list[i] = U.body(i) end
    assert.equal("plan limit reached: max_users_per_app is 50 for the standard plan (the app has 0, the batch adds 51)",
      P.failed(U.post(app, s.a.token, list), 403))
    assert.equal(0, P.count(app, "users WHERE app_id = ?", s.a.id))
    U.create(app, s.a.token, 48, 1)
    assert.equal("plan limit reached: max_users_per_app is 50 for the standard plan (the app has 48, the batch adds 3)",
      P.failed(U.post(app, s.a.token, { U.body(49), U.body(50), U.body(51) }), 403))
    assert.equal(48, P.count(app, "users WHERE app_id = ?", s.a.id))
    U.create(app, s.a.token, 2, 49)
    assert.equal("plan limit reached: max_users_per_app is 50 for the standard plan (the app has 50, the batch adds 1)",
      P.failed(U.post(app, s.a.token, { U.body(51) }), 403))
    -- the limit is per app: a second app of the customer starts at 0
    local other = P.app(app, s.c.token)
    U.create(app, other.token, 1, 1)
    -- deleting a user frees a slot
    P.ok(app.request("DELETE", U.USERS, { json = json.array({ "agent-1" }), headers = P.auth(s.a.token) }))
    U.create(app, s.a.token, 1, 51)
    assert.equal(50, P.count(app, "users WHERE app_id = ?", s.a.id))
  end)

  it("enforces max_users_per_app of the enterprise plan (100)", function()
    local s = U.setup(app, { Plan = "enterprise" })
    U.create(app, s.a.token, 100, 1)
    assert.equal("plan limit reached: max_users_per_app is 100 for the enterprise plan (the app has 100, the batch adds 1)",
      P.failed(U.post(app, s.a.token, { U.body(101) }), 403))
  end)

  it("reports a duplicate before the plan limit", function()
    local s = U.setup(app)
    U.create(app, s.a.token, 50, 1)
    assert.equal("user 0: AppUserId 'agent-1' already exists in this app",
      P.failed(U.post(app, s.a.token, { U.body(1) }), 400))
  end)
end)

describe("max_users_per_app from the plans setting", function()
  local app = spec.app { scripts = "scripts", schema = "schema", settings = {
    plans = { tiny = { max_apps = 1, max_users_per_app = 2 } }, default_plan = "tiny",
  } }

  it("uses the configured limit", function()
    local s = U.setup(app)
    U.create(app, s.a.token, 2, 1)
    assert.equal("plan limit reached: max_users_per_app is 2 for the tiny plan (the app has 2, the batch adds 1)",
      P.failed(U.post(app, s.a.token, { U.body(3) }), 403))
  end)
end)

describe("GET /v2/integrations/usermapping?user_id=", function()
  local app = spec.app { scripts = "scripts", schema = "schema" }

  it("answers that user without SipSecret, 404 for an unknown or another app's user", function()
    local s = U.setup(app)
    local created = U.create(app, s.a.token, 2, 1)
    local d = P.ok(U.get(app, s.a.token, "?user_id=agent-2"))
    local expect = P.copy(created[2])
    expect.SipSecret = nil
    assert.same(expect, d)
    assert.equal("user 'nobody' not found", P.failed(U.get(app, s.a.token, "?user_id=nobody"), 404))
    local other = P.app(app, s.c.token)
    assert.equal("user 'agent-1' not found", P.failed(U.get(app, other.token, "?user_id=agent-1"), 404))
    assert.equal("user_id must not be empty", P.failed(U.get(app, s.a.token, "?user_id="), 400))
    -- percent-decoded
    P.ok(U.post(app, s.a.token, { U.body("x y", { Email = "xy@acme.io" }) }))
    assert.equal("agent-x y", P.ok(U.get(app, s.a.token, "?user_id=agent-x%20y")).AppUserId)
    P.failed(U.get(app, s.c.token, "?user_id=agent-1"), 401)
  end)
end)

describe("GET /v2/integrations/usermapping (pages)", function()
  local app = spec.app { scripts = "scripts", schema = "schema", settings = {
    plans = { big = { max_apps = 5, max_users_per_app = 1000 } }, default_plan = "big",
  } }

  local function page(token, query)
    return P.ok(U.get(app, token, query))
  end

  local function ids(users)
    local out = {}
    for i, u in ipairs(users) do out[i] = u.AppUserId end
    return out
  end

  it("answers an empty first page with an empty cursor", function()
    local s = U.setup(app)
    local res = U.get(app, s.a.token)
    assert.same({ Users = {}, PageSize = 20, LastEvaluatedValue = "" }, P.ok(res))
    assert.matches('"Users":[]', res.body, 1, true)
  end)

  it("defaults to 20, in creation order, without SipSecret, only the token's app", function()
    local s = U.setup(app)
    local other = P.app(app, s.c.token)
    U.create(app, other.token, 3, 1)
    U.create(app, s.a.token, 25, 1)
    local p1 = page(s.a.token)
    assert.equal(20, p1.PageSize)
    assert.equal(20, #p1.Users)
    assert.equal("agent-1", p1.Users[1].AppUserId)
    assert.equal("agent-20", p1.Users[20].AppUserId)
    for _, u in ipairs(p1.Users) do
      assert.is_nil(u.SipSecret)
      assert.equal(s.a.id, u.AppID)
    end
    assert.is_string(p1.LastEvaluatedValue)
    assert.not_equal("", p1.LastEvaluatedValue)
    local p2 = page(s.a.token, "?last_value=" .. p1.LastEvaluatedValue)
    assert.same({ "agent-21", "agent-22", "agent-23", "agent-24", "agent-25" }, ids(p2.Users))
    assert.equal("", p2.LastEvaluatedValue)
    -- an empty last_value is the first page
    assert.same(ids(p1.Users), ids(page(s.a.token, "?last_value=").Users))
  end)

  it("gives no cursor when the last page is exactly full", function()
    local s = U.setup(app)
    U.create(app, s.a.token, 4, 1)
    local p1 = page(s.a.token, "?page_size=2")
    assert.same({ "agent-1", "agent-2" }, ids(p1.Users))
    local p2 = page(s.a.token, "?page_size=2&last_value=" .. p1.LastEvaluatedValue)
    assert.same({ "agent-3", "agent-4" }, ids(p2.Users))
    assert.equal("", p2.LastEvaluatedValue)
    assert.equal(2, p2.PageSize)
  end)

  it("accepts page_size 1 to 500 and answers 400 otherwise", function()
    local s = U.setup(app)
    U.create(app, s.a.token, 3, 1)
    assert.equal(1, #page(s.a.token, "?page_size=1").Users)
    assert.equal(500, page(s.a.token, "?page_size=500").PageSize)
    assert.equal(3, #page(s.a.token, "?page_size=500").Users)
    assert.equal(7, page(s.a.token, "?page_size=007").PageSize)
    for _, bad in ipairs({ "0", "501", "-1", "1.5", "abc", "", "1e2", "+5", "99999999999999999999" }) do
      assert.equal("page_size must be a whole number from 1 to 500",
        P.failed(U.get(app, s.a.token, "?page_size=" .. bad), 400), bad)
    end
  end)

  it("answers 400 for a cursor it did not give out", function()
    local s = U.setup(app)
    U.create(app, s.a.token, 3, 1)
    for _, bad in ipairs({ "5", "abc", crypto.to_base64url("seq:x"), crypto.to_base64url("seq:-1"), "%%%" }) do
      assert.equal("last_value is not a cursor this server gave out (use LastEvaluatedValue)",
        P.failed(U.get(app, s.a.token, "?last_value=" .. bad), 400), bad)
    end
  end)

  it("walks more than two pages while users are added and deleted: no user twice, none that existed throughout skipped", function()
    local s = U.setup(app)
    local other = P.app(app, s.c.token)
    U.create(app, s.a.token, 40, 1)         -- agent-1 .. agent-40
    local throughout = {}
    for i = 1, 40 do throughout["agent-" .. i] = true end
    local deleted = {}
    local function delete(id)
      P.ok(app.request("DELETE", U.USERS, { json = json.array({ id }), headers = P.auth(s.a.token) }))
      throughout[id] = nil
      deleted[id] = true
    end

    local seen, seqs, pages = {}, {}, 0
    local cursor = ""
    local next_new = 100
    repeat
      local p = page(s.a.token, "?page_size=7&last_value=" .. cursor)
      pages = pages + 1
      assert.is_true(#p.Users <= 7)
      for _, u in ipairs(p.Users) do
        assert.is_nil(seen[u.AppUserId], "returned twice: " .. u.AppUserId)
        assert.is_nil(deleted[u.AppUserId], "returned after its deletion: " .. u.AppUserId)
        seen[u.AppUserId] = true
        seqs[#seqs + 1] = U.row(app, s.a.id, u.AppUserId).seq
      end
      cursor = p.LastEvaluatedValue
      if pages <= 6 then
        -- between pages: the last user returned, a user not yet reached, a user already
        -- passed, and a user of another app disappear; new users arrive (in both apps)
        local last = p.Users[#p.Users].AppUserId
        delete(last)
        local ahead = "agent-" .. (pages * 7 + 3)
        if throughout[ahead] then delete(ahead) end
        if pages == 2 then delete("agent-1") end
        U.create(app, s.a.token, 2, next_new)
        U.create(app, other.token, 1, next_new)
        next_new = next_new + 2
      end
    until cursor == ""
    assert.is_true(pages > 2, "pages: " .. pages)
    for id in pairs(throughout) do
      assert.is_true(seen[id], "skipped: " .. id)
    end
    -- creation order throughout, and the users added before the walk reached them are in it
    for i = 2, #seqs do assert.is_true(seqs[i] > seqs[i - 1]) end
    assert.is_true(seen["agent-100"] and seen["agent-101"] and seen["agent-110"] and seen["agent-111"])
  end)

  it("never reuses a deleted user's seq, so a cursor past it skips no later user", function()
    local s = U.setup(app)
    U.create(app, s.a.token, 3, 1)
    local p1 = page(s.a.token, "?page_size=3")
    assert.equal("", p1.LastEvaluatedValue)
    local p0 = page(s.a.token, "?page_size=2")
    local seq3 = U.row(app, s.a.id, "agent-3").seq
    -- the newest user (highest seq) goes; the next one must not take its number
    P.ok(app.request("DELETE", U.USERS, { json = json.array({ "agent-3" }), headers = P.auth(s.a.token) }))
    U.create(app, s.a.token, 1, 3)
    assert.is_true(U.row(app, s.a.id, "agent-3").seq > seq3)
    -- a cursor at agent-2 still reaches the re-created agent-3
    assert.same({ "agent-3" }, ids(page(s.a.token, "?page_size=2&last_value=" .. p0.LastEvaluatedValue).Users))
  end)
end)

describe("PUT /v2/integrations/usermapping", function()
  local app = spec.app { scripts = "scripts", schema = "schema" }
  after_each(function() spec.clock.reset() end)

  local function put(token, body)
    return app.request("PUT", PATH, { json = body, headers = P.auth(token) })
  end

  it("updates the given fields and rotates SipSecret", function()
    spec.clock.freeze(1718445600000)
    local s = U.setup(app)
    local before = U.create(app, s.a.token, 1, 1)[1]
    spec.clock.advance(60000)
    local d = P.ok(put(s.a.token, { AppUserId = "agent-1", Email = "new@acme.io", AppUsername = "Jane Doeson",
      ExotelUserName = "Janet Doeson", VirtualNumber = "08047112299", ExotelAccountSid = "acme2",
      IsActive = false, OutboundActive = true, UserDetail = { team = "north" },
      SipId = "sip:hacked", Role = "admin", SipDeviceID = "x" }))
    assert.matches(U.UUID, d.SipSecret)
    assert.not_equal(before.SipSecret, d.SipSecret)
    local expect = P.copy(before, {
      Email = "new@acme.io", AppUsername = "Jane Doeson", ExotelUserName = "Janet Doeson",
      VirtualNumber = "08047112299", ExotelAccountSid = "acme2", IsActive = false, OutboundActive = true,
      UserDetail = { team = "north" }, SipSecret = d.SipSecret, UpdatedAt = "2024-06-15T10:01:00.000Z",
    })
    assert.same(expect, d)
    local row = U.row(app, s.a.id, "agent-1")
    assert_not_stored(row, d.SipSecret)
    assert_not_stored(row, before.SipSecret)
    assert.equal(d.SipSecret, crypto.open(row.sip_secret_sealed, "user:" .. s.a.id .. "/agent-1"))
    -- GET shows the change, without the secret
    local got = P.ok(U.get(app, s.a.token, "?user_id=agent-1"))
    expect.SipSecret = nil
    assert.same(expect, got)
    -- a PUT with only AppUserId just rotates; UserDetail null clears it
    local d2 = P.ok(put(s.a.token, { AppUserId = "agent-1", UserDetail = json.null }))
    assert.not_equal(d.SipSecret, d2.SipSecret)
    assert.equal(json.null, d2.UserDetail)
    assert.equal("Jane Doeson", d2.AppUsername)
  end)

  it("answers 400 for bad bodies and fields, changing nothing", function()
    local s = U.setup(app)
    local before = U.create(app, s.a.token, 1, 1)[1]
    local sealed = U.row(app, s.a.id, "agent-1").sip_secret_sealed
    local cases = {
      { { Email = "bad" }, "Email is not a valid email address" },
      { { Email = json.null }, "Email cannot be null" },
      { { AppUsername = "Al Bo" }, 'AppUsername must be "First Last": two words of at least 3 characters each' },
      { { VirtualNumber = "abc" }, "VirtualNumber must be a phone number: 6 to 15 digits with an optional leading +" },
      { { AgentNumber = "1" }, "AgentNumber must be a phone number: 6 to 15 digits with an optional leading +" },
      { { IsActive = "yes" }, "IsActive must be a boolean (true or false)" },
      { { OutboundActive = 1 }, "OutboundActive must be a boolean (true or false)" },
      { { UserDetail = "x" }, "UserDetail must be a JSON object or null" },
      { { UserDetail = json.array({ 1 }) }, "UserDetail must be a JSON object or null" },
      { { AppUserId = json.null }, "AppUserId is required" },
      { { AppUserId = "" }, "AppUserId must not be empty" },
    }
    for _, case in ipairs(cases) do
      assert.equal(case[2], P.failed(put(s.a.token, P.copy({ AppUserId = "agent-1" }, case[1])), 400))
    end
    assert.equal("request body must be a JSON object",
      P.failed(put(s.a.token, json.array({ { AppUserId = "agent-1" } })), 400))
    P.failed(app.request("PUT", PATH, { body = "{", headers = P.auth(s.a.token) }), 400)
    assert.equal(sealed, U.row(app, s.a.id, "agent-1").sip_secret_sealed)
    local got = P.ok(U.get(app, s.a.token, "?user_id=agent-1"))
    assert.equal(before.UpdatedAt, got.UpdatedAt)
    assert.equal(before.Email, got.Email)
  end)

  it("answers 404 for an unknown user or another app's user, 401 without an app token", function()
    local s = U.setup(app)
    U.create(app, s.a.token, 1, 1)
    local other = P.app(app, s.c.token)
    assert.equal("user 'agent-9' not found", P.failed(put(s.a.token, { AppUserId = "agent-9" }), 404))
    assert.equal("user 'agent-1' not found", P.failed(put(other.token, { AppUserId = "agent-1" }), 404))
    P.failed(put(s.c.token, { AppUserId = "agent-1" }), 401)
  end)

  it("keeps the phone device in step with AgentNumber", function()
    local s = U.setup(app)
    local u = U.create(app, s.a.token, 1, 1)[1]
    -- adding a number enables the phone (not active), as on creation
    local d = P.ok(put(s.a.token, { AppUserId = "agent-1", AgentNumber = "+919876543210" }))
    assert.equal("+919876543210", d.AgentNumber)
    assert.equal(u.SipDeviceID, d.ActiveDeviceId)
    local row = U.row(app, s.a.id, "agent-1")
    assert.same({ 1, 1 }, { row.phone_enabled, row.sip_enabled })
    -- phone active, sip off: the number cannot go
    P.ok(U.device(app, s.a.token, "agent-1", "phone", true))
    P.ok(U.device(app, s.a.token, "agent-1", "sip", false))
    assert.equal("AgentNumber cannot be removed: cannot turn off the phone device: it is the user's last enabled device",
      P.failed(put(s.a.token, { AppUserId = "agent-1", AgentNumber = json.null }), 400))
    assert.equal("+919876543210", U.row(app, s.a.id, "agent-1").agent_number)
    -- sip back on (active); then the number goes, the phone with it
    P.ok(U.device(app, s.a.token, "agent-1", "sip", true))
    P.ok(U.device(app, s.a.token, "agent-1", "phone", true))
    d = P.ok(put(s.a.token, { AppUserId = "agent-1", AgentNumber = json.null }))
    assert.equal(json.null, d.AgentNumber)
    assert.equal(u.SipDeviceID, d.ActiveDeviceId)
    row = U.row(app, s.a.id, "agent-1")
    assert.same({ 0, 1, json.null }, { row.phone_enabled, row.sip_enabled, row.agent_number })
    -- changing the number keeps the device state
    P.ok(put(s.a.token, { AppUserId = "agent-1", AgentNumber = "+919876543211" }))
    P.ok(U.device(app, s.a.token, "agent-1", "sip", false))
    d = P.ok(put(s.a.token, { AppUserId = "agent-1", AgentNumber = "+919876543212" }))
    assert.equal(u.PhoneDeviceID, d.ActiveDeviceId)
    row = U.row(app, s.a.id, "agent-1")
    assert.same({ 1, 0 }, { row.phone_enabled, row.sip_enabled })
  end)
end)

describe("DELETE /v2/integrations/usermapping", function()
  local app = spec.app { scripts = "scripts", schema = "schema" }

  it("deletes all the app's users and no other app's", function()
    local s = U.setup(app)
    local other = P.app(app, s.c.token)
    U.create(app, s.a.token, 3, 1)
    U.create(app, other.token, 2, 1)
    assert.equal("Deleted Successfully", P.ok(app.request("DELETE", PATH, { headers = P.auth(s.a.token) })))
    assert.equal(0, P.count(app, "users WHERE app_id = ?", s.a.id))
    assert.equal(2, P.count(app, "users WHERE app_id = ?", other.id))
    assert.same({}, P.ok(U.get(app, s.a.token)).Users)
    -- again: nothing left, same answer
    assert.equal("Deleted Successfully", P.ok(app.request("DELETE", PATH, { headers = P.auth(s.a.token) })))
    P.failed(app.request("DELETE", PATH, { headers = P.auth(s.c.token) }), 401)
    assert.equal(2, P.count(app, "users WHERE app_id = ?", other.id))
  end)
end)

describe("users in cascades and counts", function()
  local app = spec.app { scripts = "scripts", schema = "schema" }

  local function count_of(c)
    local res = app.request("GET", "/v2/integrations/" .. c.id, { headers = P.auth(c.token) })
    assert.equal(200, res.status, res.body)
    return res.json.data.users_count
  end

  it("users_count counts the users of all the customer's apps", function()
    local s = U.setup(app)
    local a2 = P.app(app, s.c.token)
    local stranger = U.setup(app)
    assert.equal(0, count_of(s.c))
    U.create(app, s.a.token, 3, 1)
    U.create(app, a2.token, 2, 1)
    U.create(app, stranger.a.token, 4, 1)
    assert.equal(5, count_of(s.c))
    assert.equal(4, count_of(stranger.c))
    P.ok(app.request("DELETE", U.USERS, { json = json.array({ "agent-1" }), headers = P.auth(s.a.token) }))
    assert.equal(4, count_of(s.c))
  end)

  it("deleting an app deletes its users (and its token stops working)", function()
    local s = U.setup(app)
    local a2 = P.app(app, s.c.token)
    U.create(app, s.a.token, 3, 1)
    U.create(app, a2.token, 2, 1)
    P.ok(app.request("DELETE", "/v2/integrations/app", { headers = P.auth(s.a.token) }))
    assert.equal(0, P.count(app, "users WHERE app_id = ?", s.a.id))
    assert.equal(2, P.count(app, "users WHERE app_id = ?", a2.id))
    assert.equal(2, count_of(s.c))
    P.failed(U.get(app, s.a.token), 401)
  end)

  it("deleting the customer (platform envelope) deletes the users of all its apps", function()
    local s = U.setup(app)
    local a2 = P.app(app, s.c.token)
    local stranger = U.setup(app)
    U.create(app, s.a.token, 3, 1)
    U.create(app, a2.token, 2, 1)
    U.create(app, stranger.a.token, 1, 1)
    P.ok(app.request("DELETE", "/v2/integrations/customer", { headers = P.auth(s.c.token) }))
    assert.equal(0, P.count(app, "users WHERE app_id IN (?, ?)", s.a.id, a2.id))
    assert.equal(1, P.count(app, "users WHERE app_id = ?", stranger.a.id))
    P.failed(U.get(app, a2.token), 401)
  end)

  it("deleting the customer (REST envelope) deletes the users of all its apps", function()
    local s = U.setup(app)
    local stranger = U.setup(app)
    U.create(app, s.a.token, 3, 1)
    U.create(app, stranger.a.token, 1, 1)
    local res = app.request("DELETE", "/v2/integrations/" .. s.c.id, { headers = P.auth(s.c.token) })
    assert.equal(200, res.status, res.body)
    assert.equal(0, P.count(app, "users WHERE app_id = ?", s.a.id))
    assert.equal(1, P.count(app, "users WHERE app_id = ?", stranger.a.id))
  end)
end)

describe("usermapping over HTTP", function()
  local srv = spec.server { scripts = "scripts", schema = "schema" }

  it("creates, pages and reads users through a real server", function()
    local s = U.setup(srv)
    local created = U.create(srv, s.a.token, 3, 1)
    assert.equal(3, #created)
    local p1 = P.ok(U.get(srv, s.a.token, "?page_size=2"))
    assert.equal(2, #p1.Users)
    local p2 = P.ok(U.get(srv, s.a.token, "?page_size=2&last_value=" .. p1.LastEvaluatedValue))
    assert.equal("agent-3", p2.Users[1].AppUserId)
    assert.equal("", p2.LastEvaluatedValue)
    local res = srv.request("HEAD", PATH .. "?user_id=agent-1", { headers = P.auth(s.a.token) })
    assert.equal(200, res.status)
    res = srv.request("PATCH", PATH, { headers = P.auth(s.a.token) })
    assert.equal(405, res.status)
    assert.equal("GET, HEAD, POST, PUT, DELETE", res.headers["allow"])
  end)
end)
