-- GET /v2/integrations/{customer_id}/usage for June 2024 with a customer token.
local lib = dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "./") .. "lib.lua")
function init(args)
  local token, _, id = lib.setup(args)
  request = lib.get("/v2/integrations/" .. id .. "/usage?start_date=2024-06-01&end_date=2024-06-30", token)
end
