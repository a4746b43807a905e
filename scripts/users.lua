-- users.lua - DELETE /v2/integrations/users, platform envelope, app token (API.md section 9).
-- Body: a JSON array of 1 to 100 AppUserIds; deletes those users of the token's app in one
-- transaction. Ids the app does not have are skipped (a retried delete answers the same), so
-- Data is always "Deleted Successfully".
local route = require "engine.route"
local db = require "engine.db"
local platform = require "lib.platform"
local validate = require "lib.validate"
local auth = require "lib.auth"
local users = require "lib.users"

route.delete("/v2/integrations/users", function(req)
  local app, status, err = auth.require_token(req, "app")
  if not app then return platform.fail(req, status, err) end
  local body
  body, err = validate.batch(req, users.MAX_BATCH, "AppUserIds")
  if not body then return platform.fail(req, 400, err) end
  local ids = {}
  for i, v in ipairs(body) do
    local id, e = users.check_id({ AppUserId = v }, "AppUserId")
    if not id then return platform.fail(req, 400, string.format("item %d: %s", i - 1, e)) end
    ids[i] = id
  end
  db.tx(function()
    for _, id in ipairs(ids) do
      db.exec("DELETE FROM users WHERE app_id = ? AND app_user_id = ?", app.id, id)
    end
  end)
  return platform.ok(req, "Deleted Successfully")
end)
