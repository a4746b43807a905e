-- /v2/integrations/app_setting, platform envelope, app token (API.md section 8).
package.path = "tests/spec/?.lua;" .. package.path
local spec = require "engine.spec"
local json = require "engine.json"
local P = require "support.platform"

local SETTING = "/v2/integrations/app_setting"

describe("/v2/integrations/app_setting", function()
  local app = spec.app { scripts = "scripts", schema = "schema" }
  local c, a

  before_each(function()
    c = P.customer(app)
    a = P.app(app, c.token)
  end)

  local function post(body, token)
    return app.request("POST", SETTING, { json = body, headers = P.auth(token or a.token) })
  end

  it("sets every known key and any well-formed other key", function()
    for _, k in ipairs({ "popup", "incomingCallHangup", "missedCall", "callback", "record", "streaming", "playback",
                         "x", "my.custom-key_2", string.rep("k", 64) }) do
      local d = P.ok(post({ Key = k, Value = "v-" .. k }))
      assert.same({ CustomerID = c.id, AppID = a.id, Key = k, Value = "v-" .. k }, d)
    end
    assert.equal(10, P.count(app, "app_settings WHERE app_id = ?", a.id))
  end)

  it("answers 400 in the platform envelope, naming the parameter, for ill-formed UTF-8 in the query", function()
    local res = app.request("GET", SETTING .. "?key=%FF%FE", { headers = P.auth(a.token) })
    assert.equal(400, res.status)
    assert.equal("query parameter 'key' is not valid UTF-8", P.failed(res, 400))
  end)

  it("replaces the value when a key is posted again", function()
    P.ok(post({ Key = "callback", Value = "https://a.example/cb" }))
    P.ok(post({ Key = "callback", Value = " https://b.example/cb " }))
    assert.equal(1, P.count(app, "app_settings WHERE app_id = ? AND key = 'callback'", a.id))
    local d = P.ok(app.request("GET", SETTING .. "?key=callback", { headers = P.auth(a.token) }))
    assert.same({ CustomerID = c.id, AppID = a.id, Key = "callback", Value = " https://b.example/cb " }, d)
  end)

  it("answers 400 for bad keys and values", function()
    local keyerr = "Key must be 1 to 64 characters from A-Z a-z 0-9 _ . - (known keys: popup, incomingCallHangup, "
      .. "missedCall, callback, record, streaming, playback)"
    local cases = {
      { { Value = "v" }, "Key is required" },
      { { Key = 1, Value = "v" }, "Key must be a string" },
      { { Key = " ", Value = "v" }, "Key must not be empty" },
      { { Key = string.rep("k", 65), Value = "v" }, keyerr },
      { { Key = "bad key", Value = "v" }, keyerr },
      { { Key = "ké", Value = "v" }, keyerr },
      { { Key = "a/b", Value = "v" }, keyerr },
      { { Key = "popup" }, "Value is required" },
      { { Key = "popup", Value = true }, "Value must be a string" },
      { { Key = "popup", Value = 3 }, "Value must be a string" },
      { { Key = "popup", Value = "" }, "Value must not be empty" },
    }
    for _, case in ipairs(cases) do
      assert.equal(case[2], P.failed(post(case[1]), 400))
    end
    assert.equal("request body must be a JSON object", P.failed(post(json.array({})), 400))
    assert.equal(0, P.count(app, "app_settings WHERE app_id = ?", a.id))
  end)

  it("answers 401 without an app token", function()
    P.failed(post({ Key = "popup", Value = "v" }, c.token), 401)
    P.failed(app.request("POST", SETTING, { json = { Key = "popup", Value = "v" } }), 401)
    P.failed(app.request("GET", SETTING, { headers = P.auth(c.token) }), 401)
    P.failed(app.request("GET", SETTING .. "?key=popup"), 401)
  end)

  it("GET ?key= answers that setting, 404 when unset", function()
    P.ok(post({ Key = "popup", Value = "on" }))
    assert.equal("on", P.ok(app.request("GET", SETTING .. "?key=popup", { headers = P.auth(a.token) })).Value)
    assert.equal("setting 'record' is not set",
      P.failed(app.request("GET", SETTING .. "?key=record", { headers = P.auth(a.token) }), 404))
  end)

  it("GET answers all the app's settings (sorted by key), and [] when none", function()
    local res = app.request("GET", SETTING, { headers = P.auth(a.token) })
    assert.same({}, P.ok(res))
    assert.matches('"Data":[]', res.body, 1, true)
    P.ok(post({ Key = "record", Value = "1" }))
    P.ok(post({ Key = "popup", Value = "2" }))
    local other = P.app(app, c.token)
    P.ok(post({ Key = "missedCall", Value = "other app" }, other.token))
    assert.same({
      { CustomerID = c.id, AppID = a.id, Key = "popup", Value = "2" },
      { CustomerID = c.id, AppID = a.id, Key = "record", Value = "1" },
    }, P.ok(app.request("GET", SETTING, { headers = P.auth(a.token) })))
    P.failed(app.request("GET", SETTING .. "?key=missedCall", { headers = P.auth(a.token) }), 404)
  end)

  it("caps an app at 100 settings and 262144 bytes of keys and values by default, with 403 naming the cap", function()
    for i = 1, 100 do P.ok(post({ Key = "k" .. i, Value = "v" })) end
    assert.equal("settings limit reached: app_settings_max is 100 settings per app (the app has 100)",
      P.failed(post({ Key = "one-more", Value = "v" }), 403))
    P.ok(post({ Key = "k1", Value = "replaced" })) -- a replacement is not one more
    assert.equal(100, P.count(app, "app_settings WHERE app_id = ?", a.id))
    local other = P.app(app, c.token)
    local big = string.rep("b", 200000)
    P.ok(post({ Key = "big", Value = big }, other.token))
    assert.equal("settings limit reached: app_settings_max_bytes is 262144 bytes of keys and values per app "
      .. "(the app's settings hold 200003, this one would make 262150)",
      P.failed(post({ Key = "big2", Value = string.rep("c", 62143) }, other.token), 403))
    P.ok(post({ Key = "big2", Value = string.rep("c", 62137) }, other.token)) -- exactly 262144
    assert.equal(2, P.count(app, "app_settings WHERE app_id = ?", other.id))
  end)
end)

describe("/v2/integrations/app_setting caps from the settings", function()
  local app = spec.app { scripts = "scripts", schema = "schema",
                         settings = { app_settings_max = 2, app_settings_max_bytes = 20 } }

  it("refuses a third setting and a total past 20 bytes, and lets a value shrink", function()
    local c = P.customer(app)
    local a = P.app(app, c.token)
    local function post(body)
      return app.request("POST", SETTING, { json = body, headers = P.auth(a.token) })
    end
    P.ok(post({ Key = "a", Value = "123456789" })) -- 10 bytes
    assert.equal("settings limit reached: app_settings_max_bytes is 20 bytes of keys and values per app "
      .. "(the app's settings hold 10, this one would make 21)", P.failed(post({ Key = "b", Value = "123456789x" }), 403))
    P.ok(post({ Key = "b", Value = "12345678" })) -- 19 bytes in all
    assert.equal("settings limit reached: app_settings_max is 2 settings per app (the app has 2)",
      P.failed(post({ Key = "c", Value = "1" }), 403))
    P.ok(post({ Key = "a", Value = "1" })) -- shrinks: 11 bytes
    assert.same({ { CustomerID = c.id, AppID = a.id, Key = "a", Value = "1" },
                  { CustomerID = c.id, AppID = a.id, Key = "b", Value = "12345678" } },
      P.ok(app.request("GET", SETTING, { headers = P.auth(a.token) })))
  end)
end)
