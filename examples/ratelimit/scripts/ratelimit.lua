-- ratelimit.lua - an overlay on the default scripts: a request rate limit per client address.
--
--   apiengine serve --scripts scripts:examples/ratelimit/scripts
--
-- Settings: ratelimit_per_second (10), ratelimit_burst (20). Each client address (req.peer
-- without the port) has a token bucket of engine.limit: it holds ratelimit_burst requests and
-- refills at ratelimit_per_second. The buckets live in the engine's C store, shared by every
-- worker, so a client gets the same allowance whichever worker answers it. Past it, the
-- request is answered 429 with Retry-After (whole seconds) before any handler runs, in the
-- envelope of the route it asked for (lib/rest.lua's rule, as the engine's own errors);
-- every other answer says how many requests are left in X-RateLimit-Remaining. The engine's
-- own /healthz is never limited (hooks do not run for it).
local route = require "engine.route"
local limit = require "engine.limit"
local settings = require "lib.settings"
local peer = require "lib.peer"
local platform = require "lib.platform"
local rest = require "lib.rest"

local remaining_of = setmetatable({}, { __mode = "k" }) -- request table -> tokens left

route.before(function(req)
  local rate = settings.number("ratelimit_per_second", 10, 0.001)
  local burst = settings.number("ratelimit_burst", 20, 1, true)
  local ok, left_or_wait = limit.take("ratelimit", peer.address(req.peer), rate, burst)
  if ok then
    remaining_of[req] = math.floor(left_or_wait)
    return nil
  end
  local message = string.format("too many requests: retry after %d second%s", left_or_wait,
    left_or_wait == 1 and "" or "s")
  local headers = { ["Retry-After"] = tostring(left_or_wait), ["X-RateLimit-Remaining"] = "0" }
  if rest.owns(req.path, req.route ~= "" and req.route or nil) then
    return rest.fail(req, 429, "rate_limited", message, headers)
  end
  return platform.fail(req, 429, message, headers)
end)

route.after(function(req)
  local left = remaining_of[req]
  if left then return { ["X-RateLimit-Remaining"] = tostring(left) } end
  return nil
end)
