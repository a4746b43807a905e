-- POST /v2/integrations/token with a customer's Id and Secret: a token issued per request
-- (the brute-force guard's durable bookkeeping included).
local lib = dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "./") .. "lib.lua")
function init(args)
  local _, entity, id, secret = args[1], args[2], args[3], args[4]
  lib.setup(args) -- the credentials work before the load starts
  local body = string.format('{"Id":"%s","Secret":"%s","Entity":"%s"}', id, secret, entity)
  local req = wrk.format("POST", "/v2/integrations/token", { ["Content-Type"] = "application/json" }, body)
  request = function() return req end
end
