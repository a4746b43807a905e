-- bench/ingest/fill.lua - fills a database with INGEST_RECORDS stored call records for the ingestion
-- benchmark (bench/ingest/run): raw rows by SQL in one transaction (synchronous=OFF, a page cache
-- big enough for the indexes), inserted with the indexes in place and CallSids in random order, as
-- ingestion leaves them: the unique index's pages are then as full as random inserts keep them
-- (about 70%), not packed as CREATE INDEX leaves them (a packed page splits at the first insert,
-- which makes the first hundreds of thousands of ingested records after migration 0007 cost
-- about twice the writes of the steady state measured here).
--
--   INGEST_DB=/tmp/x.db INGEST_CUSTOMER=<id> apiengine test bench/ingest/fill.lua   (from the repository root)
--
-- Environment: INGEST_DB (required; migrated if new), INGEST_CUSTOMER (required: the customer that
-- the benchmark ingests for, created over HTTP by the runner), INGEST_RECORDS (10000000),
-- INGEST_OWN (the share of the records that belong to INGEST_CUSTOMER, in percent, default 100:
-- the worst case, where every new CallSid lands somewhere in the whole unique index; the others
-- go to INGEST_OTHERS filler customers), INGEST_OTHERS (1000).
-- CallSids are 32 random hex digits (SQLite's randomblob), as the platform's are. The rollups
-- (usage_*) are not filled: they are one row per customer and hour or day, not per record, so
-- their size does not follow the record count.
local testing = require "engine.testing"
local time = require "engine.time"

local function env_int(name, default)
  local v = os.getenv(name)
  if v == nil or v == "" then return default end
  return assert(math.tointeger(tonumber(v)), name .. " must be a whole number")
end

local DB_PATH = assert(os.getenv("INGEST_DB"), "set INGEST_DB to the database file to fill")
local CUSTOMER = assert(os.getenv("INGEST_CUSTOMER"), "set INGEST_CUSTOMER to the ingesting customer's id")
local RECORDS = env_int("INGEST_RECORDS", 10000000)
local OWN = env_int("INGEST_OWN", 100)
local OTHERS = env_int("INGEST_OTHERS", 1000)
assert(OWN >= 0 and OWN <= 100 and OTHERS >= 1, "INGEST_OWN is 0..100, INGEST_OTHERS at least 1")

local INSERT_CALLS = [[
  WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < :count)
  INSERT INTO calls (customer_id, call_sid, app_id, app_user_id, direction, channel, start_ms, duration_s, created_at)
  SELECT CASE WHEN :others = 0 THEN :customer
              ELSE (SELECT id FROM customers WHERE seq = :base + i % :others) END,
         lower(hex(randomblob(16))), 'filler-app', 'agent-' || (i % 50),
         CASE i % 2 WHEN 0 THEN 'inbound' ELSE 'outbound' END, CASE i % 3 WHEN 0 THEN 'pstn' ELSE 'sip' END,
         1704067200000 + i * 3000, i % 900, :now
    FROM n]]

describe("ingestion benchmark data", function()
  it("stores " .. RECORDS .. " call records", function()
    testing.open_db(DB_PATH, "schema")
    local db = require "engine.db"
    local t0 = time.now()
    local now = time.format(t0)
    assert(db.one("SELECT 1 AS x FROM customers WHERE id = ?", CUSTOMER), "no customer " .. CUSTOMER)
    db.exec("PRAGMA synchronous=OFF")
    db.exec("PRAGMA cache_size=-6291456") -- 6 GiB at most, allocated as pages are read
    local own = RECORDS * OWN // 100
    -- The CallSid keys (schema/0008) go straight to the bottom level, sorted, as the migration puts
    -- a stored database's: inserted one by one through the trigger, all of them would land in level
    -- 0 and the server's first minutes would be spent folding them down.
    local trigger = db.one("SELECT sql FROM sqlite_master WHERE type = 'trigger' AND name = 'calls_sid_insert'")
    db.tx(function()
      if trigger then db.exec("DROP TRIGGER calls_sid_insert") end
      db.exec(INSERT_CALLS, { count = own, others = 0, base = 0, customer = CUSTOMER, now = now })
      if own < RECORDS then
        for k = 0, OTHERS - 1 do
          db.exec([[INSERT INTO customers (id, name, email, secret_sealed, created_at, updated_at)
                    VALUES (lower(hex(randomblob(16))), 'filler-' || ?, 'ops@example.com', x'00', ?, ?)]], k, now, now)
        end
        local base = db.one("SELECT min(seq) AS s FROM customers WHERE name = 'filler-0'").s
        db.exec(INSERT_CALLS, { count = RECORDS - own, others = OTHERS, base = base, customer = CUSTOMER, now = now })
      end
      if trigger then
        local bottom = db.one("SELECT max(levels) - 1 AS l FROM _engine_levels WHERE tbl = 'calls_sid'").l
        db.exec([[INSERT INTO calls_sid (lvl, h, seq)
                  SELECT ?, engine_key64(customer_id, call_sid), seq FROM calls
                   WHERE seq NOT IN (SELECT seq FROM calls_sid) ORDER BY 2, 3]], bottom)
        db.exec(trigger.sql)
      end
    end)
    db.exec("PRAGMA wal_checkpoint(TRUNCATE)")
    local n = db.one("SELECT count(*) AS n FROM calls").n
    io.stderr:write(string.format("[fill] %s: %d call records (%d of customer %s) in %.1f s\n", DB_PATH, n,
      db.one("SELECT count(*) AS n FROM calls WHERE customer_id = ?", CUSTOMER).n, CUSTOMER, (time.now() - t0) / 1000))
    testing.close_db()
    assert.is_true(n >= RECORDS)
  end)
end)
