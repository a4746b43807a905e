-- tests/spec/support/users.lua - helpers for the users/devices specs (API.md section 9).
--   local U = require "support.users"
--   U.body(n [, changes])            -> a valid user body, AppUserId "agent-<n>"
--   U.post(app, token, list)         -> the raw response of POST /usermapping (list of bodies)
--   U.create(app, token, n [, from]) -> Data: n users agent-<from>..agent-<from+n-1>
--   U.setup(app [, customer_body])   -> { c = customer, a = app } with tokens
--   U.row(app, app_id, app_user_id)  -> the stored row
local json = require "engine.json"
local P = require "support.platform"

local M = {}

M.PATH = "/v2/integrations/usermapping"
M.DEVICE = "/v2/integrations/device"
M.USERS = "/v2/integrations/users"
M.UUID = "^%x%x%x%x%x%x%x%x%-%x%x%x%x%-4%x%x%x%-[89ab]%x%x%x%-%x%x%x%x%x%x%x%x%x%x%x%x$"

function M.body(n, changes)
  return P.copy({
    AppUserId = "agent-" .. n,
    AppUsername = "Agent Smith",
    Email = "agent" .. n .. "@acme.io",
    ExotelAccountSid = "acme1",
    ExotelUserName = "John Smith",
    VirtualNumber = "+918047112233",
  }, changes)
end

function M.post(app, token, list)
  return app.request("POST", M.PATH, { json = json.array(list), headers = P.auth(token) })
end

function M.create(app, token, n, from)
  from = from or 1
  local list = {}
  for i = from, from + n - 1 do list[#list + 1] = M.body(i) end
  return P.ok(M.post(app, token, list))
end

function M.setup(app, customer_body)
  local c = P.customer(app, customer_body)
  local a = P.app(app, c.token)
  return { c = c, a = a }
end

function M.row(app, app_id, app_user_id)
  return app.db.one("SELECT * FROM users WHERE app_id = ? AND app_user_id = ?", app_id, app_user_id)
end

function M.get(app, token, query)
  return app.request("GET", M.PATH .. (query or ""), { headers = P.auth(token) })
end

function M.device(app, token, user_id, name, status)
  return app.request("PUT", M.DEVICE, { json = { UserId = user_id, DeviceName = name, DeviceStatus = status },
    headers = P.auth(token) })
end

return M
