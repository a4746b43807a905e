-- app_setting.lua - /v2/integrations/app_setting, platform envelope, app token (API.md section 8).
--   POST {"Key","Value"}  set (or replace) a setting; 403 past the app's caps (below)
--   GET ?key=K            that setting (404 when unset); without key: all settings, by key
local route = require "engine.route"
local db = require "engine.db"
local json = require "engine.json"
local time = require "engine.time"
local platform = require "lib.platform"
local validate = require "lib.validate"
local auth = require "lib.auth"
local settings = require "lib.settings"

-- The documented keys; any other key of 1 to 64 characters from [A-Za-z0-9_.-] is accepted too.
local KNOWN = { "popup", "incomingCallHangup", "missedCall", "callback", "record", "streaming", "playback" }

local function valid_key(k)
  return #k >= 1 and #k <= 64 and k:find("^[A-Za-z0-9_.%-]+$") ~= nil
end

-- Caps per app, so one app cannot grow the database (and every GET of its settings) without
-- bound: at most `app_settings_max` settings, holding at most `app_settings_max_bytes` bytes of
-- keys and values together (UTF-8 bytes). A replacement that does not grow the total is always
-- accepted, so an app already past a lowered cap can still change its values.
local function caps()
  return settings.number("app_settings_max", 100, 1, true), settings.number("app_settings_max_bytes", 262144, 1, true)
end

local function setting_object(app, row)
  return { CustomerID = app.customer_id, AppID = app.id, Key = row.key, Value = row.value }
end

route.post("/v2/integrations/app_setting", function(req)
  local app, status, err = auth.require_token(req, "app")
  if not app then return platform.fail(req, status, err) end
  local body
  body, err = validate.body(req, "object")
  if not body then return platform.fail(req, 400, err) end
  local key, value
  key, err = validate.string(body, "Key", { raw = true })
  if not key then return platform.fail(req, 400, err) end
  if not valid_key(key) then
    return platform.fail(req, 400, "Key must be 1 to 64 characters from A-Z a-z 0-9 _ . - (known keys: "
      .. table.concat(KNOWN, ", ") .. ")")
  end
  value, err = validate.string(body, "Value", { raw = true })
  if not value then return platform.fail(req, 400, err) end

  local max_n, max_bytes = caps()
  local now = time.format(time.now())
  -- Check and write in one transaction: no other worker or node adds settings in between.
  local refused = db.tx(function()
    local n, bytes, old = 0, 0, nil
    for _, row in ipairs(db.query("SELECT key, value FROM app_settings WHERE app_id = ?", app.id)) do
      n = n + 1
      bytes = bytes + #row.key + #row.value
      if row.key == key then old = #row.key + #row.value end
    end
    if old == nil and n >= max_n then
      return string.format("settings limit reached: app_settings_max is %d settings per app (the app has %d)", max_n, n)
    end
    local after = bytes - (old or 0) + #key + #value
    if after > max_bytes and after > bytes then
      return string.format("settings limit reached: app_settings_max_bytes is %d bytes of keys and values per app "
        .. "(the app's settings hold %d, this one would make %d)", max_bytes, bytes, after)
    end
    db.exec([[INSERT INTO app_settings (app_id, key, value, created_at, updated_at) VALUES (?, ?, ?, ?, ?)
              ON CONFLICT (app_id, key) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at]],
      app.id, key, value, now, now)
  end)
  if refused then return platform.fail(req, 403, refused) end
  return platform.ok(req, setting_object(app, { key = key, value = value }))
end)

route.get("/v2/integrations/app_setting", function(req)
  local app, status, err = auth.require_token(req, "app")
  if not app then return platform.fail(req, status, err) end
  local key = req.query.key
  if key ~= nil then
    local row = db.one("SELECT key, value FROM app_settings WHERE app_id = ? AND key = ?", app.id, key)
    if not row then
      return platform.fail(req, 404, "setting '" .. key .. "' is not set")
    end
    return platform.ok(req, setting_object(app, row))
  end
  local list = json.array()
  for _, row in ipairs(db.query("SELECT key, value FROM app_settings WHERE app_id = ? ORDER BY key", app.id)) do
    list[#list + 1] = setting_object(app, row)
  end
  return platform.ok(req, list)
end)
