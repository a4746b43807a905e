-- calls.lua - POST /v2/integrations/calls, platform envelope (API.md section 6).
-- App token; body a JSON array of 1 to 1000 call records. All or nothing: the first invalid
-- record answers 400 "record <0-based index>: <field problem>" and nothing is stored.
-- Idempotent per customer on CallSid (the first record wins, across batches and workers): the
-- database's unique index calls(customer_id, call_sid) holds it (schema/0007_callsid_unique.sql).
-- Durable: the raw rows and their rollups commit in one transaction (synchronous=FULL)
-- before the 200 is sent. Data = {"Accepted": new records, "Duplicates": skipped records}.
local route = require "engine.route"
local db = require "engine.db"
local time = require "engine.time"
local platform = require "lib.platform"
local validate = require "lib.validate"
local auth = require "lib.auth"
local usage = require "lib.usage"

local APP_EXISTS = "SELECT 1 AS x FROM apps WHERE id = ?"

route.post("/v2/integrations/calls", function(req)
  local app, status, err = auth.require_token(req, "app")
  if not app then return platform.fail(req, status, err) end
  local body
  body, err = validate.batch(req, usage.MAX_BATCH, "call records")
  if not body then return platform.fail(req, 400, err) end
  local n = #body
  local records = {}
  for i = 1, n do
    local rec, e = usage.check_record(body[i])
    if not rec then
      return platform.fail(req, 400, string.format("record %d: %s", i - 1, e))
    end
    records[i] = rec
  end

  -- Parsing and validation above run before the write lock (BEGIN IMMEDIATE), so the other
  -- workers can do theirs while one writes.
  local created_at = time.format(time.now())
  local accepted = db.tx(function()
    -- The app may have been deleted since the token check: then nothing is stored.
    if not db.one(APP_EXISTS, app.id) then return nil end
    return usage.store(app.customer_id, app.id, records, created_at)
  end)
  if accepted == nil then
    return platform.fail(req, 401, "the token's app no longer exists")
  end
  return platform.ok(req, { Accepted = accepted, Duplicates = n - accepted })
end)
