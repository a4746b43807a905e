-- bench/usage/ingest.lua - wrk script: POST /v2/integrations/calls with batches of INGEST_BATCH
-- (default 1000) call records whose CallSids are unique per run, thread and request, so every
-- record is new. The workload is a webhook feed: CallSids look random (32 hex digits, as the
-- platform's), StartTimes advance (2 s per record from 2025-01-01, per thread). Environment: INGEST_TOKEN (app token, required), INGEST_BATCH, INGEST_NONCE
-- (distinguishes runs; default the start time). Prints how many answers were not
-- {"Accepted": INGEST_BATCH, "Duplicates": 0}.
local token = os.getenv("INGEST_TOKEN") or error("set INGEST_TOKEN")
local batch = tonumber(os.getenv("INGEST_BATCH") or "1000")
local nonce = os.getenv("INGEST_NONCE") or tostring(os.time())
local threads = {}
local next_id = 0

function setup(thread)
  next_id = next_id + 1
  thread:set("tid", next_id)
  threads[#threads + 1] = thread
end

local counter = 0
bad = 0
local dirs = { "inbound", "outbound", "incoming", "outgoing" }
local chans = { "sip", "pstn", "sip" }
local nonce_hash = 0
for i = 1, #nonce do nonce_hash = (nonce_hash * 31 + nonce:byte(i)) % 4294967296 end

function request()
  counter = counter + 1
  local parts = {}
  for i = 1, batch do
    local k = counter * batch + i
    local t = 1735689600 + k * 2
    -- 32 hex digits: two scrambled words (random-looking order), thread, sequence.
    local sid = string.format("%08x%08x%08x%08x", (k * 2654435761 + nonce_hash) % 4294967296,
      (k * 2246822519) % 4294967296, tid * 65536 + nonce_hash % 65536, k % 4294967296)
    parts[i] = string.format(
      '{"CallSid":"%s","AppUserId":"agent-%d","Direction":"%s","Channel":"%s","StartTime":"%s","Duration":%d}',
      sid, k % 50, dirs[k % 4 + 1], chans[k % 3 + 1], os.date("!%Y-%m-%dT%H:%M:%SZ", t), (k * 37) % 900)
  end
  return wrk.format("POST", "/v2/integrations/calls",
    { ["Authorization"] = token, ["Content-Type"] = "application/json" },
    "[" .. table.concat(parts, ",") .. "]")
end

local want = '"Data":{"Accepted":' .. batch .. ',"Duplicates":0}'
function response(status, headers, body)
  if status ~= 200 or not body:find(want, 1, true) then bad = bad + 1 end
end

function done(summary, latency, requests)
  local total = 0
  for _, t in ipairs(threads) do total = total + t:get("bad") end
  io.write(string.format("ingest: %d answers were not Accepted=%d\n", total, batch))
end
