-- POST /v2/integrations/calls with an app token: batches of BATCH new call records (CallSids
-- unique per thread and request), spread over June 2024.
local lib = dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "./") .. "lib.lua")
local BATCH = 100
local counter = 0
local thread_tag

function setup(thread)
  thread:set("tag", tostring(math.random(1, 1e9)))
end

local headers

function init(args)
  headers = { ["Authorization"] = lib.setup(args), ["Content-Type"] = "application/json" }
  thread_tag = tag or tostring(math.random(1, 1e9))
end

-- Defined at the top (not in init) so wrk sees a dynamic script and calls it per request.
function request()
  counter = counter + 1
  local recs = {}
  for i = 1, BATCH do
    local n = counter * BATCH + i
    recs[i] = string.format(
      '{"CallSid":"b%s-%d","AppUserId":"user-%d","Direction":"%s","Channel":"%s","StartTime":"2024-06-%02dT%02d:%02d:00Z","Duration":%d}',
      thread_tag, n, n % 50 + 1, n % 2 == 0 and "inbound" or "outgoing", n % 3 == 0 and "sip" or "pstn",
      n % 30 + 1, n % 24, n % 60, n % 600)
  end
  return wrk.format("POST", "/v2/integrations/calls", headers, "[" .. table.concat(recs, ",") .. "]")
end
