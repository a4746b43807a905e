-- bench/routes/lib.lua - what the wrk scripts of bench/routes/run share (wrk runs LuaJIT).
-- Each script calls lib.setup(args) from its init(args): args are BASE ENTITY ID SECRET as
-- bench/routes/run passes them after `--`. It signs in first (POST /token through curl, once
-- per wrk thread) and returns the token and the base URL. With BENCH_TOKEN set in the environment
-- (bench/cost, which counts the server's work per request) it uses that token and does not sign in.
local M = {}

function M.sign_in(base, entity, id, secret)
  local body = string.format('{"Id":"%s","Secret":"%s","Entity":"%s"}', id, secret, entity)
  local p = assert(io.popen("curl -fsS -X POST -H 'Content-Type: application/json' --data-binary '" .. body ..
    "' " .. base .. "/v2/integrations/token"))
  local out = p:read("*a")
  p:close()
  local token = out:match('"Data":"([^"]+)"')
  assert(token, "sign-in as " .. entity .. " " .. id .. " failed: " .. out)
  return token
end

function M.setup(args)
  local base, entity, id, secret = args[1], args[2], args[3], args[4]
  assert(base and entity and id and secret, "usage: wrk ... -s SCRIPT URL -- BASE ENTITY ID SECRET")
  local token = os.getenv("BENCH_TOKEN")
  if token == nil or token == "" then token = M.sign_in(base, entity, id, secret) end
  return token, base, id
end

-- request() for one GET with the token. Set from init, so wrk treats the script as static: it
-- calls it once per thread and sends the same bytes every time (no Lua per request in wrk).
function M.get(path, token)
  local req = wrk.format("GET", path, { ["Authorization"] = token })
  return function() return req end
end

return M
