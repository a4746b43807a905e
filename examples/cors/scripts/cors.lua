-- cors.lua - an overlay on the default scripts: CORS for the browsers of chosen origins.
--
--   apiengine serve --scripts scripts:examples/cors/scripts
--
-- Settings: cors_allowed_origins (a list, or APIENGINE_CORS_ALLOWED_ORIGINS="https://a.example,
-- https://b.example"; exact matches of scheme://host[:port]), cors_max_age_seconds (600).
--
-- A preflight (OPTIONS with Origin and Access-Control-Request-Method) to a routed path is
-- answered here, before the engine would answer 405 for a route that declares no OPTIONS: 204
-- with the route's methods and the request headers the API reads, when the Origin is allowed;
-- 204 without any Access-Control-Allow-* header (so the browser refuses) when it is not. Every
-- other answer to an allowed Origin, the engine's own errors included, gets
-- Access-Control-Allow-Origin and exposes X-Request-Id and Retry-After.
local route = require "engine.route"
local settings = require "lib.settings"

local METHODS = { "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE" }
local ALLOW_HEADERS = "Authorization, Content-Type, X-Request-Id"
local EXPOSE_HEADERS = "X-Request-Id, Retry-After"

local function allowed(origin)
  if not origin then return false end
  for _, o in ipairs(settings.list("cors_allowed_origins")) do
    if o == origin then return true end
  end
  return false
end

-- "GET, HEAD, POST": the methods routed at the matched pattern.
local function methods_of(pattern)
  local out = {}
  for _, m in ipairs(METHODS) do
    if route.handler(m, pattern) or (m == "HEAD" and route.handler("GET", pattern)) then out[#out + 1] = m end
  end
  return table.concat(out, ", ")
end

route.before(function(req)
  if req.method ~= "OPTIONS" or req.route == "" then return end -- unknown paths: the engine's 404
  local origin = req.headers["origin"]
  if not origin or not req.headers["access-control-request-method"] then return end -- not a preflight
  if route.handler("OPTIONS", req.route) then return end -- a script answers OPTIONS itself
  if not allowed(origin) then return 204, nil, { Vary = "Origin" } end
  return 204, nil, {
    ["Access-Control-Allow-Origin"] = origin,
    ["Access-Control-Allow-Methods"] = methods_of(req.route),
    ["Access-Control-Allow-Headers"] = ALLOW_HEADERS,
    ["Access-Control-Max-Age"] = tostring(settings.number("cors_max_age_seconds", 600, 0, true)),
    Vary = "Origin",
  }
end)

route.after(function(req)
  local origin = req.headers["origin"]
  if not origin then return nil end
  if not allowed(origin) then return { Vary = "Origin" } end
  return {
    ["Access-Control-Allow-Origin"] = origin,
    ["Access-Control-Expose-Headers"] = EXPOSE_HEADERS,
    Vary = "Origin",
  }
end)
