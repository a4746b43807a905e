-- lib/platform.lua - the platform envelope (API.md 1.1) used by token, customer, app,
-- app_setting and the engine's own error answers.
--   return platform.ok(req, data)                     -> 200 {"RequestId","Status":"Success","Code":200,"Error":"","Data"}
--   return platform.fail(req, 400, "Email: ...")      -> 400 {"Status":"Failed","Code":400,"Error":...,"Data":null}
local json = require "engine.json"

local M = {}

-- The envelope table itself (for hooks that have a request id but no request).
function M.envelope(request_id, status, err, data)
  local failed = status >= 400
  return {
    RequestId = request_id,
    Status = failed and "Failed" or "Success",
    Code = status,
    Error = err or "",
    Data = (failed or data == nil) and json.null or data,
  }
end

function M.ok(req, data, headers)
  return 200, M.envelope(req.request_id, 200, "", data), headers
end

function M.fail(req, status, message, headers)
  return status, M.envelope(req.request_id, status, message, nil), headers
end

return M
