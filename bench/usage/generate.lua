-- bench/usage/generate.lua - fills a database with reproducible call records for the usage
-- benchmark, through the same code path as POST /calls (lib/usage.store: raw rows and rollups
-- in one transaction per batch of at most 1000 records of one app).
--
--   USAGE_DB=/tmp/usage.db apiengine test bench/usage/generate.lua      (from the repository root)
--
-- Environment: USAGE_DB (required; migrated if new), USAGE_SEED (1), USAGE_RECORDS (1000000),
-- USAGE_CUSTOMERS (1000), USAGE_BIG (100000: the calls of the big customer, all in
-- USAGE_BIG_MONTH, default 2024-06), USAGE_YEAR (2024: the others' calls spread over it).
-- The big customer is the one named "bench-big" when the database has it (bench/usage/run creates
-- it over HTTP, so the server can issue its token) and its apps; otherwise it is generated too.
-- Every other customer, app, CallSid, user and time comes from a xorshift64* generator seeded
-- with USAGE_SEED: the same seed gives the same database. Progress goes to stderr.
local testing = require "engine.testing"
local time = require "engine.time"

local function env_int(name, default)
  local v = os.getenv(name)
  if v == nil or v == "" then return default end
  return assert(math.tointeger(tonumber(v)), name .. " must be a whole number")
end

local DB_PATH = assert(os.getenv("USAGE_DB"), "set USAGE_DB to the database file to fill")
local SEED = env_int("USAGE_SEED", 1)
local RECORDS = env_int("USAGE_RECORDS", 1000000)
local CUSTOMERS = env_int("USAGE_CUSTOMERS", 1000)
local BIG = env_int("USAGE_BIG", 100000)
local BIG_MONTH = os.getenv("USAGE_BIG_MONTH") or "2024-06"
local YEAR = env_int("USAGE_YEAR", 2024)
local BATCH = 1000
assert(CUSTOMERS >= 2 and RECORDS > BIG, "need at least 2 customers and more records than USAGE_BIG")

-- xorshift64* (Lua 5.4 integers wrap; >> is a logical shift).
local state = SEED * 0x9E3779B97F4A7C15 ~ 0x2545F4914F6CDD1D
if state == 0 then state = 1 end
local function next64()
  state = state ~ (state >> 12)
  state = state ~ (state << 25)
  state = state ~ (state >> 27)
  return state * 0x2545F4914F6CDD1D
end
local function rand(n) return ((next64() >> 11) % n) + 1 end -- 1..n
local function hex(nbytes)
  local out = {}
  for i = 1, nbytes // 4 do out[i] = string.format("%08x", (next64() >> 32) & 0xffffffff) end
  return table.concat(out)
end
local function uuid()
  local h = hex(16)
  return string.format("%s-%s-4%s-%x%s-%s", h:sub(1, 8), h:sub(9, 12), h:sub(14, 16),
    8 + rand(4) - 1, h:sub(18, 20), h:sub(21, 32))
end

-- A realistic duration: a few missed calls (0 s), mostly minutes, a long tail.
local function duration()
  local r = rand(100)
  if r <= 8 then return 0 end
  if r <= 80 then return rand(300) end
  if r <= 98 then return 300 + rand(1500) end
  return 1800 + rand(7200)
end

local function ms(s) return (assert(time.parse(s))) end

describe("usage benchmark data", function()
  it("generates " .. RECORDS .. " call records", function()
    testing.open_db(DB_PATH, "schema")
    testing.load_scripts("scripts")
    local db = require "engine.db"
    local usage = require "lib.usage"
    local crypto = require "engine.crypto"
    local now = time.format(time.now())
    local done, t0, last = 0, time.now(), 0

    local function progress(final)
      local t = time.now()
      if not final and t - last < 250 then return end
      last = t
      local secs = math.max(t - t0, 1) / 1000
      io.stderr:write(string.format("\r[generate] %8d / %d records %5.1f%%  %7.0f records/s  %5.1f s",
        done, RECORDS, 100 * done / RECORDS, done / secs, secs), final and "\n" or "")
    end

    local function new_customer(id, name)
      db.exec([[INSERT INTO customers (id, name, email, secret_sealed, plan, created_at, updated_at)
                VALUES (?, ?, 'ops@example.com', ?, 'enterprise', ?, ?)]], id, name, crypto.seal(hex(16), id), now, now)
    end
    local function new_app(customer_id)
      local id = uuid()
      db.exec([[INSERT INTO apps (id, customer_id, name, secret_hash, exotel_account_sid, exotel_api_key_sealed,
                                  exotel_api_token_sealed, exotel_domain, is_active, created_at, updated_at)
                VALUES (?, ?, 'app', ?, 'acct', x'00', x'00', 'mumbai', 1, ?, ?)]], id, customer_id, hex(32), now, now)
      return id
    end

    -- calls(customer, apps, n, from_ms, span_ms, users_per_app): n calls spread over the apps,
    -- sorted by time within each app and sent in batches of BATCH.
    local function calls(customer_id, apps, n, from_ms, span_ms, users_per_app)
      local per_app = {}
      for i = 1, #apps do per_app[i] = {} end
      for _ = 1, n do
        local k = rand(#apps)
        local list = per_app[k]
        list[#list + 1] = {
          sid = hex(16),
          user = rand(10) > 1 and ("agent-" .. rand(users_per_app)) or nil,
          direction = rand(10) <= 6 and "inbound" or "outbound",
          channel = rand(10) <= 7 and "sip" or "pstn",
          start_ms = from_ms + (rand(span_ms // 1000) - 1) * 1000 + rand(1000) - 1,
          duration = duration(),
        }
      end
      for k, list in ipairs(per_app) do
        table.sort(list, function(x, y) return x.start_ms < y.start_ms end)
        for first = 1, #list, BATCH do
          local batch = table.move(list, first, math.min(first + BATCH - 1, #list), 1, {})
          db.tx(usage.store, customer_id, apps[k], batch, now)
          done = done + #batch
          progress()
        end
      end
    end

    -- The big customer: BIG calls in one month over its apps, 50 users per app.
    local big = db.one("SELECT id FROM customers WHERE name = 'bench-big'")
    local big_id = big and big.id
    local big_apps = {}
    if big_id then
      for _, row in ipairs(db.query("SELECT id FROM apps WHERE customer_id = ? ORDER BY seq", big_id)) do
        big_apps[#big_apps + 1] = row.id
      end
    else
      big_id = uuid()
      db.tx(function()
        new_customer(big_id, "bench-big")
        for i = 1, 5 do big_apps[i] = new_app(big_id) end
      end)
    end
    assert(#big_apps > 0, "bench-big has no apps")
    local month0 = ms(BIG_MONTH .. "-01T00:00:00Z")
    local y, m = BIG_MONTH:match("^(%d+)-(%d+)$")
    local month1 = ms(string.format("%04d-%02d-01T00:00:00Z", m == "12" and y + 1 or y, m == "12" and 1 or m + 1))
    calls(big_id, big_apps, BIG, month0, month1 - month0, 50)

    -- The others share the remaining records evenly, spread over YEAR.
    local year0 = ms(YEAR .. "-01-01T00:00:00Z")
    local year_span = ms((YEAR + 1) .. "-01-01T00:00:00Z") - year0
    local others = CUSTOMERS - 1
    local rest = RECORDS - BIG
    for i = 1, others do
      local id = uuid()
      local apps = {}
      db.tx(function()
        new_customer(id, "bench-" .. i)
        for k = 1, rand(3) do apps[k] = new_app(id) end
      end)
      local n = rest // others + (i <= rest % others and 1 or 0)
      calls(id, apps, n, year0, year_span, rand(20))
    end
    progress(true)

    local n = db.one("SELECT count(*) AS n FROM calls").n
    io.stderr:write(string.format("[generate] %s: %d call records, %d customers (seed %d); bench-big = %s, %d in %s\n",
      DB_PATH, n, db.one("SELECT count(*) AS n FROM customers").n, SEED, big_id,
      db.one("SELECT count(*) AS n FROM calls WHERE customer_id = ?", big_id).n, BIG_MONTH))
    testing.close_db()
    assert.is_true(n >= RECORDS)
  end)
end)
