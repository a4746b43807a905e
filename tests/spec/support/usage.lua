-- tests/spec/support/usage.lua - helpers for the usage and call-record specs.
--   local U = require "support.usage"
--   U.call{ CallSid = "c1", StartTime = "...", ... }   -> a valid record with defaults filled in
--   U.post(app, app_token, records) -> response;   U.usage(app, c, query_string) -> response
--   U.brute(db, customer_id, start_ms, end_ms)     -> the usage table counted over the raw rows
local P = require "support.platform"
local M = {}

local seq = 0
-- A valid call record; fields in `t` override the defaults (a unique CallSid each time).
function M.call(t)
  seq = seq + 1
  local r = { CallSid = "sid-" .. seq, AppUserId = "agent-1", Direction = "inbound", Channel = "sip",
              StartTime = "2024-06-03T10:15:00Z", Duration = 60 }
  for k, v in pairs(t or {}) do r[k] = v end
  return r
end

function M.post(app, token, records)
  return app.request("POST", "/v2/integrations/calls", { json = records, headers = P.auth(token) })
end

-- POSTs and asserts 200; returns Data.
function M.ingest(app, token, records)
  return P.ok(M.post(app, token, records))
end

function M.usage(app, c, query)
  return app.request("GET", "/v2/integrations/" .. c.id .. "/usage" .. (query and ("?" .. query) or ""),
    { headers = P.auth(c.token) })
end

-- GETs usage and asserts a 200 REST envelope; returns data.
function M.get(app, c, query)
  local assert = require "luassert"
  local res = M.usage(app, c, query)
  assert.equal(200, res.status, res.body)
  assert.is_true(res.json.success)
  return res.json.data
end

-- Ground truth: everything counted straight from the raw rows of [start_ms, end_ms] (inclusive,
-- whole seconds), with none of the rollups. On SQLite not even through the index lib/usage.lua
-- reads the edges with (NOT INDEXED, which PostgreSQL does not have). `:e + 999` alone would be
-- int4 arithmetic on PostgreSQL (the parameter takes the type of 999): hence the cast.
local BRUTE = [[
    SELECT count(*) AS calls, coalesce(sum((duration_s + 59) / 60), 0) AS minutes,
           count(CASE WHEN direction = 'inbound' THEN 1 END) AS inbound,
           count(CASE WHEN direction = 'outbound' THEN 1 END) AS outbound,
           count(CASE WHEN channel = 'sip' THEN 1 END) AS sip,
           count(CASE WHEN channel = 'pstn' THEN 1 END) AS pstn,
           count(DISTINCT app_id) AS apps,
           (SELECT count(*) FROM (SELECT DISTINCT app_id, app_user_id FROM calls NOT INDEXED
              WHERE customer_id = :c AND start_ms BETWEEN :s AND CAST(:e AS bigint) + 999 AND app_user_id IS NOT NULL) AS u) AS users
      FROM calls NOT INDEXED WHERE customer_id = :c AND start_ms BETWEEN :s AND CAST(:e AS bigint) + 999]]

function M.brute(db, customer_id, start_ms, end_ms)
  local sql = BRUTE
  if db.backend() == "postgresql" then sql = sql:gsub(" NOT INDEXED", "") end
  local r = db.one(sql, { c = customer_id, s = start_ms, e = end_ms })
  return { total_calls = r.calls, total_minutes = r.minutes, inbound_calls = r.inbound,
           outbound_calls = r.outbound, sip_calls = r.sip, pstn_calls = r.pstn,
           active_apps = r.apps, active_users = r.users }
end

return M
