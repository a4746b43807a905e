-- device.lua - PUT /v2/integrations/device, platform envelope, app token (API.md section 9).
-- Body {"UserId": "<AppUserId>", "DeviceName": "phone" | "sip", "DeviceStatus": bool}.
-- The device rule (lib.users.set_device): turning a device on makes it the ActiveDeviceId;
-- turning the active device off makes the other enabled device active; the last enabled
-- device cannot be turned off (400); the phone needs an AgentNumber (400).
-- Data = the user object without SipSecret.
local route = require "engine.route"
local db = require "engine.db"
local time = require "engine.time"
local platform = require "lib.platform"
local validate = require "lib.validate"
local auth = require "lib.auth"
local users = require "lib.users"

local DEVICES = { "phone", "sip" }

route.put("/v2/integrations/device", function(req)
  local app, status, err = auth.require_token(req, "app")
  if not app then return platform.fail(req, status, err) end
  local body
  body, err = validate.body(req, "object")
  if not body then return platform.fail(req, 400, err) end
  local id, name, on
  id, err = users.check_id(body, "UserId")
  if not id then return platform.fail(req, 400, err) end
  name, err = validate.one_of(body, "DeviceName", DEVICES)
  if not name then return platform.fail(req, 400, err) end
  on, err = validate.boolean(body, "DeviceStatus")
  if on == nil then return platform.fail(req, 400, err) end

  local now = time.format(time.now())
  local outcome, detail = db.tx(function()
    local row = users.find(app.id, id)
    if not row then return "missing" end
    local d, e = users.set_device(row, name, on)
    if not d then return "bad", e end
    db.exec([[UPDATE users SET phone_enabled = :phone_enabled, sip_enabled = :sip_enabled,
                active_device_id = :active_device_id, updated_at = :now WHERE seq = :seq]],
      { phone_enabled = d.phone_enabled, sip_enabled = d.sip_enabled, active_device_id = d.active_device_id,
        now = now, seq = row.seq })
    return "ok"
  end)
  if outcome == "missing" then return platform.fail(req, 404, "user '" .. id .. "' not found") end
  if outcome == "bad" then return platform.fail(req, 400, detail) end
  return platform.ok(req, users.object(app, users.find(app.id, id)))
end)
