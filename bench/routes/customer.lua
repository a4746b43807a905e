-- GET /v2/integrations/customer with a customer token (token check, one read, AES-GCM open).
local lib = dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "./") .. "lib.lua")
function init(args)
  local token = lib.setup(args)
  request = lib.get("/v2/integrations/customer", token)
end
