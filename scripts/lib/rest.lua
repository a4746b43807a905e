-- lib/rest.lua - the REST envelope (API.md 1.1) of /v2/integrations/{customer_id} and below.
--   return rest.ok(data)                              -> 200 {"success":true,"data":...}
--   return rest.message("...")                        -> 200 {"success":true,"message":...}
--   return rest.fail(req, 404, "customer_not_found", "...")
--        -> 404 {"success":false,"error":{"code","message"},"request_id"}
local M = {}

function M.ok(data, headers)
  return 200, { success = true, data = data }, headers
end

function M.message(text, headers)
  return 200, { success = true, message = text }, headers
end

function M.fail(req, status, code, message, headers)
  return status, { success = false, error = { code = code, message = message }, request_id = req.request_id }, headers
end

return M
