-- GET /v2/integrations/usermapping?page_size=20 with an app token: the first page of users.
local lib = dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "./") .. "lib.lua")
function init(args)
  local token = lib.setup(args)
  request = lib.get("/v2/integrations/usermapping?page_size=20", token)
end
