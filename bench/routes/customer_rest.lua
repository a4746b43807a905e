-- GET /v2/integrations/{customer_id} with a customer token (token check, two reads, REST envelope).
local lib = dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "./") .. "lib.lua")
function init(args)
  local token, _, id = lib.setup(args)
  request = lib.get("/v2/integrations/" .. id, token)
end
