-- errors.lua - the engine's own error answers (404 unknown path, 405 other method, 413 body
-- too large, 431, 400 malformed HTTP, 500 script error, 503 budget) in the envelope of the
-- route they concern (API.md 1.1): the REST envelope for /v2/integrations/{customer_id} and
-- below (lib/rest.lua), the platform envelope for everything else and for the answers that
-- come before a request has a path.
local route = require "engine.route"
local platform = require "lib.platform"
local rest = require "lib.rest"

route.on_error(function(status, code, message, request_id, path, pattern)
  if rest.owns(path, pattern) then
    return rest.error_body(request_id, code, message ~= "" and message or code)
  end
  return platform.envelope(request_id, status, message ~= "" and message or code)
end)
