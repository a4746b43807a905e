-- lib/rest.lua - the REST envelope (API.md 1.1) of /v2/integrations/{customer_id} and below.
--   return rest.ok(data)                              -> 200 {"success":true,"data":...}
--   return rest.message("...")                        -> 200 {"success":true,"message":...}
--   return rest.fail(req, 404, "customer_not_found", "...")
--        -> 404 {"success":false,"error":{"code","message"},"request_id"}
--   rest.owns(path, pattern)   whether an engine answer on path belongs to the REST routes
--   rest.error_body(request_id, code, message)        the failure body itself (for hooks)
local route = require "engine.route"

local M = {}

local BASE = "/v2/integrations/"
local REST_PATTERN = "/v2/integrations/{customer_id}"

function M.ok(data, headers)
  return 200, { success = true, data = data }, headers
end

function M.message(text, headers)
  return 200, { success = true, message = text }, headers
end

function M.error_body(request_id, code, message)
  return { success = false, error = { code = code, message = message }, request_id = request_id }
end

function M.fail(req, status, code, message, headers)
  return status, M.error_body(req.request_id, code, message), headers
end

-- A path segment right below /v2/integrations/ names a platform resource when some route
-- is registered at /v2/integrations/<segment> itself (customer, app, token, ...).
local METHODS = { "GET", "POST", "PUT", "PATCH", "DELETE" }
local function platform_resource(segment)
  if segment:find("[{}]") then return false end
  for _, method in ipairs(METHODS) do
    if route.handler(method, BASE .. segment) then return true end
  end
  return false
end

-- The REST routes are /v2/integrations/{customer_id} and below. The engine's answer for a
-- matched route (405, 500, 503) follows its pattern; one for no route (404) follows the path:
-- /v2/integrations/<id>/... is REST's unless <id> is a platform resource.
function M.owns(path, pattern)
  if pattern then
    return pattern == REST_PATTERN or pattern:sub(1, #REST_PATTERN + 1) == REST_PATTERN .. "/"
  end
  local segment = path and path:match("^/v2/integrations/([^/]+)/")
  return segment ~= nil and not platform_resource(segment)
end

return M
