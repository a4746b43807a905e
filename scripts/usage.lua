-- usage.lua - GET /v2/integrations/{customer_id}/usage, REST envelope (API.md section 5).
-- Customer token, with the 401 / 403 / 404 rules of section 4 (lib/customer_auth).
-- ?start_date= & end_date= : a date (start: 00:00:00, end: 23:59:59 of that day, UTC) or a
-- date-time with Z or an offset; defaults: end = now, start = the first day of end's month.
-- Inclusive at one-second resolution. 400 invalid_date / invalid_period.
local route = require "engine.route"
local time = require "engine.time"
local rest = require "lib.rest"
local customer_auth = require "lib.customer_auth"
local usage = require "lib.usage"

route.get("/v2/integrations/{customer_id}/usage", function(req)
  local c, status, code, message = customer_auth.owned(req)
  if not c then return rest.fail(req, status, code, message) end
  local s, e, why = usage.period(req.query, time.now())
  if not s then return rest.fail(req, 400, e, why) end
  return rest.ok({
    customer_id = c.id,
    period = { start = time.format(s), ["end"] = time.format(e) },
    usage = usage.totals(c.id, s, e),
  })
end)
