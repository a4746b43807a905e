-- GET /v2/integrations/app with an app token (token check, one read, two AES-GCM opens).
local lib = dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "./") .. "lib.lua")
function init(args)
  local token = lib.setup(args)
  request = lib.get("/v2/integrations/app", token)
end
