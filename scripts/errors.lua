-- errors.lua - the engine's own error answers (404 unknown path, 405 other method, 413 body
-- too large, 431, 400 malformed HTTP, 500 script error, 503 budget) in the platform envelope.
local route = require "engine.route"
local platform = require "lib.platform"

route.on_error(function(status, code, message, request_id)
  return platform.envelope(request_id, status, message ~= "" and message or code)
end)
