-- customer_rest.lua - /v2/integrations/{customer_id}, REST envelope (API.md section 4).
-- 401 unauthorized (no/bad/expired/wrong-type token), 403 forbidden (another customer's
-- id), 404 customer_not_found (a valid token whose customer is gone).
local route = require "engine.route"
local db = require "engine.db"
local rest = require "lib.rest"
local customer_auth = require "lib.customer_auth"
local plans = require "lib.plans"
local customers = require "lib.customers"

route.get("/v2/integrations/{customer_id}", function(req)
  local c, status, code, message = customer_auth.owned(req)
  if not c then return rest.fail(req, status, code, message) end
  local counts = db.one([[
    SELECT (SELECT count(*) FROM apps WHERE customer_id = :id) AS apps,
           (SELECT count(*) FROM users u JOIN apps a ON a.id = u.app_id WHERE a.customer_id = :id) AS users]],
    { id = c.id })
  local plan = plans.of(c)
  return rest.ok({
    customer_id = c.id,
    name = c.name,
    account_sid = c.account_sid, -- json.null when unset
    status = c.status,
    apps_count = counts.apps,
    users_count = counts.users,
    plan = { type = plan.type, max_apps = plan.max_apps, max_users_per_app = plan.max_users_per_app },
    created_at = c.created_at,
    updated_at = c.updated_at,
  })
end)

route.delete("/v2/integrations/{customer_id}", function(req)
  local c, status, code, message = customer_auth.owned(req)
  if not c then return rest.fail(req, status, code, message) end
  customers.delete(c.id)
  return rest.message("Customer account and all associated resources deleted successfully")
end)
