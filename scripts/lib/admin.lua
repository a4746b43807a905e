-- lib/admin.lua - the operator's admin key (setting admin_key, env APIENGINE_ADMIN_KEY).
-- Unset or empty: customer creation is open, as in the reference. Set: the request must
-- carry `Authorization: <admin key>` (or `Bearer <admin key>`), compared in constant time.
local crypto = require "engine.crypto"
local settings = require "lib.settings"
local auth = require "lib.auth"

local M = {}

-- true when the request may use admin-only endpoints, else false, message.
function M.check(req)
  local key = settings.string("admin_key")
  if key == nil then return true end
  local given = auth.credential(req)
  if not given then
    return false, "this server requires the admin key in the Authorization header"
  end
  -- Hash both sides first: equal lengths, so the comparison time says nothing about the key.
  if not crypto.equals(crypto.sha256(given), crypto.sha256(key)) then
    return false, "invalid admin key"
  end
  return true
end

return M
