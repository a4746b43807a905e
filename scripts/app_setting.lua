-- app_setting.lua - /v2/integrations/app_setting, platform envelope, app token (API.md section 8).
--   POST {"Key","Value"}  set (or replace) a setting
--   GET ?key=K            that setting (404 when unset); without key: all settings, by key
local route = require "engine.route"
local db = require "engine.db"
local json = require "engine.json"
local time = require "engine.time"
local platform = require "lib.platform"
local validate = require "lib.validate"
local auth = require "lib.auth"

-- The documented keys; any other key of 1 to 64 characters from [A-Za-z0-9_.-] is accepted too.
local KNOWN = { "popup", "incomingCallHangup", "missedCall", "callback", "record", "streaming", "playback" }

local function valid_key(k)
  return #k >= 1 and #k <= 64 and k:find("^[A-Za-z0-9_.%-]+$") ~= nil
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

  local now = time.format(time.now())
  db.exec([[INSERT INTO app_settings (app_id, key, value, created_at, updated_at) VALUES (?, ?, ?, ?, ?)
            ON CONFLICT (app_id, key) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at]],
    app.id, key, value, now, now)
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
