-- lib/usage.lua - call records and usage (API.md sections 5 and 6) over the rollups of
-- schema/0002_usage.sql and 0005_usage_hours.sql.
--
--   usage.check_record(v)            -> record | nil, message naming the field (no "record N: ")
--   usage.store(customer_id, app_id, records, created_at)
--                                    -> accepted count; call inside db.tx (raw rows and rollups
--                                       are written in the caller's transaction)
--   usage.period(query, now_ms)      -> start_ms, end_ms (inclusive, whole seconds)
--                                       | nil, "invalid_date" | "invalid_period", message
--   usage.totals(customer_id, start_ms, end_ms) -> { total_calls, total_minutes, inbound_calls,
--                                       outbound_calls, sip_calls, pstn_calls, active_apps, active_users }
--   usage.month_of_day(day), usage.month_start(month), usage.split(lo, hi)
--                                    calendar helpers (exported for the specs)
--
-- A period [start, end] at one-second resolution is the half-open millisecond range
-- [start, end + 1000): a call at 23:59:59.999 of the end day counts, 00:00:00.000 of the next
-- day does not. The range is split into
--   whole days    -> usage_days (counters)
--     of which whole months -> usage_app_years / usage_user_years (presence, month bitmask)
--     the other whole days  -> usage_app_months / usage_user_months (presence, day bitmask)
--   whole hours outside whole days -> usage_hours (counters),
--                    usage_app_days / usage_user_days (presence, hour bitmask)
--   partial edge hours -> the raw calls (covering index calls_usage)
-- so every answer is exactly what the raw rows say.
local db = require "engine.db"
local json = require "engine.json"
local time = require "engine.time"
local validate = require "lib.validate"

local M = {}

M.MAX_BATCH = 1000
M.MAX_SID = 64
M.MAX_DURATION = 86400
local DAY_MS = 86400000
local HOUR_MS = 3600000

-- ---- calendar (proleptic Gregorian, UTC; days since 1970-01-01) ----------------------------

local function days_from_civil(y, m, d)
  if m <= 2 then y = y - 1 end
  local era = y // 400
  local yoe = y - era * 400
  local mp = m > 2 and m - 3 or m + 9
  local doy = (153 * mp + 2) // 5 + d - 1
  local doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
  return era * 146097 + doe - 719468
end

local function civil_from_days(z)
  z = z + 719468
  local era = z // 146097
  local doe = z - era * 146097
  local yoe = (doe - doe // 1460 + doe // 36524 - doe // 146096) // 365
  local doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
  local mp = (5 * doy + 2) // 153
  local d = doy - (153 * mp + 2) // 5 + 1
  local m = mp < 10 and mp + 3 or mp - 9
  return yoe + era * 400 + (m <= 2 and 1 or 0), m, d
end

function M.month_of_day(day)
  local y, m = civil_from_days(day)
  return y * 12 + m - 1
end

function M.month_start(month)
  return days_from_civil(month // 12, month % 12 + 1, 1)
end

local NO_MONTH = math.mininteger -- matches no row
local NO_DAY = math.mininteger

-- Bits first..last (1-based, inclusive) set.
local function bits(first, last)
  return ((1 << (last - first + 1)) - 1) << (first - 1)
end

-- The pieces of the half-open ms range [lo, hi), all half-open unless said otherwise:
--   d0, d1     whole days (counters)
--   h0, h1 / h2, h3   whole hours before and after the whole days (counters); each run lies in
--                     one day
--   hd1, hm1 / hd2, hm2  the same runs as day and hour bitmask (NO_DAY if none)
--   r0, r1 / r2, r3   the raw edges (partial hours) before and after the whole hours
--   y0, y1, ym0, ym1  whole months, as years y0..y1 (inclusive) with the month bitmask of the
--                     first (ym0) and last (ym1) year; the years between are whole
--   pm1, pd1 / pm2, pd2  whole days outside whole months: month and day bitmask (NO_MONTH if none)
function M.split(lo, hi)
  local p = { d0 = 0, d1 = 0, r0 = lo, r1 = hi, r2 = 0, r3 = 0, y0 = 0, y1 = -1, ym0 = 0, ym1 = 0,
              pm1 = NO_MONTH, pd1 = 0, pm2 = NO_MONTH, pd2 = 0,
              h0 = 0, h1 = 0, h2 = 0, h3 = 0, hd1 = NO_DAY, hm1 = 0, hd2 = NO_DAY, hm2 = 0 }
  local hh0, hh1 = -((-lo) // HOUR_MS), hi // HOUR_MS -- ceil, floor
  if hh0 >= hh1 then return p end
  p.r1, p.r2, p.r3 = hh0 * HOUR_MS, hh1 * HOUR_MS, hi
  local d0, d1 = -((-hh0) // 24), hh1 // 24
  -- Whole-hour runs outside whole days: { first hour, end hour }, each within one day.
  local runs
  if d0 < d1 then
    runs = { { hh0, d0 * 24 }, { d1 * 24, hh1 } }
  else
    -- No whole day: the hours lie in one day or straddle one day boundary.
    local mid = math.max(hh0, (hh1 - 1) // 24 * 24)
    runs = { { hh0, mid }, { mid, hh1 } }
  end
  for k, run in ipairs(runs) do
    local a, b = run[1], run[2]
    p["h" .. (2 * k - 2)], p["h" .. (2 * k - 1)] = a, b
    if a < b then
      local first = a % 24 + 1
      p["hd" .. k], p["hm" .. k] = a // 24, bits(first, first + (b - a) - 1)
    end
  end
  if d0 >= d1 then return p end
  p.d0, p.d1 = d0, d1
  -- Whole months [m0, m1).
  local m0 = M.month_of_day(d0)
  if M.month_start(m0) ~= d0 then m0 = m0 + 1 end
  local m1 = M.month_of_day(d1) -- the months before d1's month end by d1
  local parts = {}              -- whole-day runs outside whole months: { first day, end day }
  if m0 < m1 then
    p.y0, p.y1 = m0 // 12, (m1 - 1) // 12
    local last = (m1 - 1) % 12 + 1
    p.ym0 = bits(m0 % 12 + 1, p.y0 == p.y1 and last or 12)
    p.ym1 = p.y0 == p.y1 and p.ym0 or bits(1, last)
    parts[1] = { d0, M.month_start(m0) }
    parts[2] = { M.month_start(m1), d1 }
  else
    -- No whole month: the days lie in one month or straddle one month boundary.
    local mid = M.month_start(M.month_of_day(d1 - 1))
    parts[1] = { d0, math.max(d0, mid) }
    parts[2] = { math.max(d0, mid), d1 }
  end
  for k, part in ipairs(parts) do
    local a, b = part[1], part[2]
    if a < b then
      local month = M.month_of_day(a)
      local first = a - M.month_start(month) + 1
      p["pm" .. k], p["pd" .. k] = month, bits(first, first + (b - a) - 1)
    end
  end
  return p
end

-- ---- POST /calls -----------------------------------------------------------------------------

local DIRECTIONS = { inbound = "inbound", incoming = "inbound", outbound = "outbound", outgoing = "outbound" }
local CHANNELS = { sip = "sip", pstn = "pstn" }

-- validate.string, with a fast path for the common case: a string with no whitespace at
-- either end (nothing to trim, not empty). Ingestion calls it 5 times per record.
local function str(r, field)
  local v = r[field]
  if type(v) == "string" then
    local b1, b2 = v:byte(1), v:byte(-1)
    if b1 and b1 > 32 and b2 > 32 then return v end
  end
  return validate.string(r, field)
end

local function choice(r, field, map, spelled)
  local v, err = str(r, field)
  if not v then return nil, err end
  local c = map[v] or map[v:lower()]
  if not c then return nil, field .. " must be " .. spelled end
  return c
end

local function datetime(r, field)
  local v, err = str(r, field)
  if not v then return nil, err end
  local ms, is_date = time.parse(v)
  if not ms or is_date then
    return nil, field .. " must be an RFC 3339 date-time such as 2024-06-03T10:15:00Z"
  end
  return ms
end

-- A validated record { sid, user (or nil), direction, channel, start_ms, duration }.
function M.check_record(r)
  if type(r) ~= "table" or json.is_array(r) then
    return nil, "must be a JSON object"
  end
  local rec, err = {}, nil
  rec.sid, err = str(r, "CallSid")
  if not rec.sid then return nil, err end
  if #rec.sid > M.MAX_SID and (utf8.len(rec.sid) or #rec.sid) > M.MAX_SID then
    return nil, "CallSid must be 1 to " .. M.MAX_SID .. " characters"
  end
  local user = r.AppUserId
  if user ~= nil and user ~= json.null then
    rec.user, err = str(r, "AppUserId")
    if err then return nil, err end
  end
  rec.direction, err = choice(r, "Direction", DIRECTIONS, "inbound or outbound (incoming / outgoing)")
  if not rec.direction then return nil, err end
  rec.channel, err = choice(r, "Channel", CHANNELS, "sip or pstn")
  if not rec.channel then return nil, err end
  rec.start_ms, err = datetime(r, "StartTime")
  if not rec.start_ms then return nil, err end

  local d = r.Duration
  if d ~= nil and d ~= json.null then
    if math.type(d) == "float" and d % 1 == 0 then d = math.tointeger(d) end
    if math.type(d) ~= "integer" or d < 0 or d > M.MAX_DURATION then
      return nil, "Duration must be an integer from 0 to " .. M.MAX_DURATION
    end
  else
    if r.EndTime == nil or r.EndTime == json.null then
      return nil, "Duration (or EndTime) is required"
    end
    local end_ms
    end_ms, err = datetime(r, "EndTime")
    if not end_ms then return nil, err end
    if end_ms < rec.start_ms then
      return nil, "EndTime must not be before StartTime"
    end
    d = -((rec.start_ms - end_ms) // 1000) -- whole seconds, a started second counts
    if d > M.MAX_DURATION then
      return nil, "EndTime must be at most " .. M.MAX_DURATION .. " seconds after StartTime"
    end
  end
  rec.duration = d
  return rec
end

-- Idempotency: the database keeps the first record of a CallSid per customer, whoever writes, and
-- the rollups count only the rows it stored. The batch's own repeats are dropped first (the first
-- one wins), so the database only meets CallSids stored before.
--   PostgreSQL: the unique index calls(customer_id, call_sid) (schema/0007) and ON CONFLICT DO
--     NOTHING; RETURNING says which rows were stored, which stays exact however many nodes insert
--     the same CallSids at once. One statement inserts up to 64 rows (multi-row VALUES), one round
--     trip per chunk instead of one per record; a batch is cut into chunks of the sizes in CHUNKS,
--     largest first, so only #CHUNKS distinct statement texts are ever prepared.
--   SQLite: the leveled key table calls_sid and its triggers (schema/0008) skip a stored CallSid
--     as ON CONFLICT DO NOTHING would. exec_many (one prepared statement, one bind loop) counts
--     the rows stored, and when it skipped some, the rows above the last seq before it say which.
--     Exact because store runs under BEGIN IMMEDIATE (no other writer) and seq is AUTOINCREMENT.
--     The RETURNING path gives the same answer on SQLite but cost about 12 ms more CPU per batch
--     of 1,000 (an in-process micro-run, 2026-12-02), which ingestion (README Benchmarks) cannot
--     spare.
local INSERT_CALL = [[
  INSERT INTO calls (customer_id, call_sid, app_id, app_user_id, direction, channel, start_ms, duration_s, created_at)
  VALUES (:customer_id, :sid, :app_id, :user, :direction, :channel, :start_ms, :duration, :created_at)]]
local LAST_SEQ = "SELECT coalesce(max(seq), 0) AS seq FROM calls"
local STORED_SINCE = "SELECT call_sid FROM calls WHERE seq > ? AND customer_id = ?"
local CALL_COLUMNS = 9
local CHUNKS = { 64, 16, 4, 1 }
local INSERT_CALLS = {} -- rows per statement -> SQL text
for _, n in ipairs(CHUNKS) do
  INSERT_CALLS[n] = "INSERT INTO calls (customer_id, call_sid, app_id, app_user_id, direction, channel, start_ms, "
    .. "duration_s, created_at) VALUES "
    .. string.rep("(?, ?, ?, ?, ?, ?, ?, ?, ?)", n, ", ")
    .. " ON CONFLICT (customer_id, call_sid) DO NOTHING RETURNING call_sid"
end
local UPSERT_DAY = [[
  INSERT INTO usage_days (customer_id, day, calls, minutes, inbound, outbound, sip, pstn)
  VALUES (?, ?, ?, ?, ?, ?, ?, ?)
  ON CONFLICT (customer_id, day) DO UPDATE SET calls = usage_days.calls + excluded.calls,
    minutes = usage_days.minutes + excluded.minutes, inbound = usage_days.inbound + excluded.inbound,
    outbound = usage_days.outbound + excluded.outbound, sip = usage_days.sip + excluded.sip,
    pstn = usage_days.pstn + excluded.pstn]]
local UPSERT_HOUR = [[
  INSERT INTO usage_hours (customer_id, hour, calls, minutes, inbound, outbound, sip, pstn)
  VALUES (?, ?, ?, ?, ?, ?, ?, ?)
  ON CONFLICT (customer_id, hour) DO UPDATE SET calls = usage_hours.calls + excluded.calls,
    minutes = usage_hours.minutes + excluded.minutes, inbound = usage_hours.inbound + excluded.inbound,
    outbound = usage_hours.outbound + excluded.outbound, sip = usage_hours.sip + excluded.sip,
    pstn = usage_hours.pstn + excluded.pstn]]
local APP_DAY = [[INSERT INTO usage_app_days (customer_id, day, app_id, hours) VALUES (?, ?, ?, ?)
                  ON CONFLICT (customer_id, day, app_id)
                    DO UPDATE SET hours = usage_app_days.hours | excluded.hours]]
local USER_DAY = [[INSERT INTO usage_user_days (customer_id, day, app_id, app_user_id, hours) VALUES (?, ?, ?, ?, ?)
                   ON CONFLICT (customer_id, day, app_id, app_user_id)
                     DO UPDATE SET hours = usage_user_days.hours | excluded.hours]]
local APP_MONTH = [[INSERT INTO usage_app_months (customer_id, month, app_id, days) VALUES (?, ?, ?, ?)
                    ON CONFLICT (customer_id, month, app_id)
                      DO UPDATE SET days = usage_app_months.days | excluded.days]]
local USER_MONTH = [[INSERT INTO usage_user_months (customer_id, month, app_id, app_user_id, days) VALUES (?, ?, ?, ?, ?)
                     ON CONFLICT (customer_id, month, app_id, app_user_id)
                       DO UPDATE SET days = usage_user_months.days | excluded.days]]
local APP_YEAR = [[INSERT INTO usage_app_years (customer_id, year, app_id, months) VALUES (?, ?, ?, ?)
                   ON CONFLICT (customer_id, year, app_id)
                     DO UPDATE SET months = usage_app_years.months | excluded.months]]
local USER_YEAR = [[INSERT INTO usage_user_years (customer_id, year, app_id, app_user_id, months) VALUES (?, ?, ?, ?, ?)
                    ON CONFLICT (customer_id, year, app_id, app_user_id)
                      DO UPDATE SET months = usage_user_years.months | excluded.months]]

-- The records of one batch without its repeated CallSids (the first one wins).
local function first_of_each(records)
  local taken, rows = {}, {}
  for i = 1, #records do
    local r = records[i]
    if not taken[r.sid] then
      taken[r.sid] = true
      rows[#rows + 1] = r
    end
  end
  return rows
end

-- PostgreSQL's insert (above): call_sid -> true for the rows stored, or nil when all were.
local function insert_returning(customer_id, app_id, rows, created_at)
  local stored, nstored = {}, 0
  local i, params = 1, {}
  for _, n in ipairs(CHUNKS) do
    while #rows - i + 1 >= n do
      local k = 0
      for j = i, i + n - 1 do
        local r = rows[j]
        params[k + 1], params[k + 2], params[k + 3], params[k + 4], params[k + 5] =
          customer_id, r.sid, app_id, r.user, r.direction
        params[k + 6], params[k + 7], params[k + 8], params[k + 9] = r.channel, r.start_ms, r.duration, created_at
        k = k + CALL_COLUMNS
      end
      local got = db.query(INSERT_CALLS[n], table.unpack(params, 1, k))
      for j = 1, #got do stored[got[j].call_sid] = true end
      nstored = nstored + #got
      i = i + n
    end
  end
  if nstored == #rows then return nil end
  return stored
end

-- Inserts the records of one app (the first record of a CallSid wins, across batches too) and
-- adds the ones actually inserted to the rollups. Must run inside db.tx. Returns how many were
-- new. The rollups are aggregated here first, so a batch writes one row per hour and per day it
-- touches and one per (day, user), (month, user) and (year, user), not one per record.
function M.store(customer_id, app_id, records, created_at)
  local rows = first_of_each(records)
  local stored -- call_sid -> true for the rows inserted, or nil when all of them were
  if (db.backend and db.backend() or "sqlite") == "postgresql" then
    stored = insert_returning(customer_id, app_id, rows, created_at)
  else
    local before = db.one(LAST_SEQ).seq
    local inserted = db.exec_many(INSERT_CALL, rows, { customer_id = customer_id, app_id = app_id,
                                                       created_at = created_at })
    if inserted < #rows then
      stored = {}
      for _, row in ipairs(db.query(STORED_SINCE, before, customer_id)) do stored[row.call_sid] = true end
    end
  end
  if stored then
    local kept = {}
    for i = 1, #rows do
      if stored[rows[i].sid] then kept[#kept + 1] = rows[i] end
    end
    rows = kept
  end
  -- hour -> counters; day -> counters; day -> hour mask; day -> { user -> hour mask }
  local hours, days, app_days, users = {}, {}, {}, {}
  for i = 1, #rows do
    local r = rows[i]
    local hour = r.start_ms // HOUR_MS
    local day = hour // 24
    local hbit = 1 << (hour - day * 24)
    local h = hours[hour]
    if not h then
      h = { 0, 0, 0, 0, 0, 0 }
      hours[hour] = h
    end
    h[1] = h[1] + 1
    h[2] = h[2] + (r.duration + 59) // 60
    if r.direction == "inbound" then h[3] = h[3] + 1 else h[4] = h[4] + 1 end
    if r.channel == "sip" then h[5] = h[5] + 1 else h[6] = h[6] + 1 end
    local du = users[day]
    if not du then
      du = {}
      users[day] = du
      app_days[day] = 0
    end
    app_days[day] = app_days[day] | hbit
    local user = r.user
    if user then du[user] = (du[user] or 0) | hbit end
  end
  for hour, h in pairs(hours) do
    db.exec(UPSERT_HOUR, customer_id, hour, h[1], h[2], h[3], h[4], h[5], h[6])
    local day = hour // 24
    local c = days[day]
    if not c then
      days[day] = { h[1], h[2], h[3], h[4], h[5], h[6] }
    else
      for k = 1, 6 do c[k] = c[k] + h[k] end
    end
  end
  -- month -> day mask, month -> user -> day mask; the same per year with month masks.
  local app_months, user_months, app_years, user_years = {}, {}, {}, {}
  for day, c in pairs(days) do
    db.exec(UPSERT_DAY, customer_id, day, c[1], c[2], c[3], c[4], c[5], c[6])
    db.exec(APP_DAY, customer_id, day, app_id, app_days[day])
    for user, hmask in pairs(users[day]) do
      db.exec(USER_DAY, customer_id, day, app_id, user, hmask)
    end
    local month = M.month_of_day(day)
    local dbit = 1 << (day - M.month_start(month))
    local year, mbit = month // 12, 1 << (month % 12)
    app_months[month] = (app_months[month] or 0) | dbit
    app_years[year] = (app_years[year] or 0) | mbit
    local um, uy = user_months[month], user_years[year]
    if not um then um = {}; user_months[month] = um end
    if not uy then uy = {}; user_years[year] = uy end
    for user in pairs(users[day]) do
      um[user] = (um[user] or 0) | dbit
      uy[user] = (uy[user] or 0) | mbit
    end
  end
  for month, mask in pairs(app_months) do
    db.exec(APP_MONTH, customer_id, month, app_id, mask)
    for user, umask in pairs(user_months[month]) do
      db.exec(USER_MONTH, customer_id, month, app_id, user, umask)
    end
  end
  for year, mask in pairs(app_years) do
    db.exec(APP_YEAR, customer_id, year, app_id, mask)
    for user, umask in pairs(user_years[year]) do
      db.exec(USER_YEAR, customer_id, year, app_id, user, umask)
    end
  end
  return #rows
end

-- ---- GET /usage --------------------------------------------------------------------------------

local function parse_bound(query, name)
  local v = query[name]
  if v == nil then return nil end
  local ms, is_date = time.parse(type(v) == "string" and v or "")
  if not ms then
    return false, string.format("%s must be an ISO 8601 date (2024-06-01) or date-time with Z or an offset "
      .. "(2024-06-01T10:00:00+05:30), got %q", name, tostring(v))
  end
  return ms, is_date
end

function M.period(query, now_ms)
  local s, s_date = parse_bound(query, "start_date")
  if s == false then return nil, "invalid_date", s_date end
  local e, e_date = parse_bound(query, "end_date")
  if e == false then return nil, "invalid_date", e_date end
  if e == nil then
    e = now_ms // 1000 * 1000
  elseif e_date then
    e = e + DAY_MS - 1000
  else
    e = e // 1000 * 1000
  end
  if s == nil then
    s = M.month_start(M.month_of_day(e // DAY_MS)) * DAY_MS
  else
    s = s // 1000 * 1000
  end
  if s > e then
    return nil, "invalid_period", string.format("start_date (%s) is after end_date (%s)", time.format(s), time.format(e))
  end
  return s, e
end

local TOTALS = [[
  SELECT coalesce(sum(calls), 0) AS calls, coalesce(sum(minutes), 0) AS minutes,
         coalesce(sum(inbound), 0) AS inbound, coalesce(sum(outbound), 0) AS outbound,
         coalesce(sum(sip), 0) AS sip, coalesce(sum(pstn), 0) AS pstn,
    (SELECT count(*) FROM (
       SELECT app_id FROM usage_app_years WHERE customer_id = :c AND year BETWEEN :y0 AND :y1
          AND months & (CASE year WHEN :y0 THEN :ym0 WHEN :y1 THEN :ym1 ELSE 4095 END) != 0
       UNION SELECT app_id FROM usage_app_months WHERE customer_id = :c AND month = :pm1 AND days & :pd1 != 0
       UNION SELECT app_id FROM usage_app_months WHERE customer_id = :c AND month = :pm2 AND days & :pd2 != 0
       UNION SELECT app_id FROM usage_app_days WHERE customer_id = :c AND day = :hd1 AND hours & :hm1 != 0
       UNION SELECT app_id FROM usage_app_days WHERE customer_id = :c AND day = :hd2 AND hours & :hm2 != 0
       UNION SELECT app_id FROM calls WHERE customer_id = :c AND start_ms >= :r0 AND start_ms < :r1
       UNION SELECT app_id FROM calls WHERE customer_id = :c AND start_ms >= :r2 AND start_ms < :r3) AS a) AS apps,
    (SELECT count(*) FROM (
       SELECT app_id, app_user_id FROM usage_user_years WHERE customer_id = :c AND year BETWEEN :y0 AND :y1
          AND months & (CASE year WHEN :y0 THEN :ym0 WHEN :y1 THEN :ym1 ELSE 4095 END) != 0
       UNION SELECT app_id, app_user_id FROM usage_user_months
             WHERE customer_id = :c AND month = :pm1 AND days & :pd1 != 0
       UNION SELECT app_id, app_user_id FROM usage_user_months
             WHERE customer_id = :c AND month = :pm2 AND days & :pd2 != 0
       UNION SELECT app_id, app_user_id FROM usage_user_days
             WHERE customer_id = :c AND day = :hd1 AND hours & :hm1 != 0
       UNION SELECT app_id, app_user_id FROM usage_user_days
             WHERE customer_id = :c AND day = :hd2 AND hours & :hm2 != 0
       UNION SELECT app_id, app_user_id FROM calls
             WHERE customer_id = :c AND start_ms >= :r0 AND start_ms < :r1 AND app_user_id IS NOT NULL
       UNION SELECT app_id, app_user_id FROM calls
             WHERE customer_id = :c AND start_ms >= :r2 AND start_ms < :r3 AND app_user_id IS NOT NULL) AS u) AS users
  FROM (
    SELECT calls, minutes, inbound, outbound, sip, pstn FROM usage_days
     WHERE customer_id = :c AND day >= :d0 AND day < :d1
    UNION ALL
    SELECT calls, minutes, inbound, outbound, sip, pstn FROM usage_hours
     WHERE customer_id = :c AND hour >= :h0 AND hour < :h1
    UNION ALL
    SELECT calls, minutes, inbound, outbound, sip, pstn FROM usage_hours
     WHERE customer_id = :c AND hour >= :h2 AND hour < :h3
    UNION ALL
    SELECT count(*), sum((duration_s + 59) / 60), count(*) FILTER (WHERE direction = 'inbound'),
           count(*) FILTER (WHERE direction = 'outbound'), count(*) FILTER (WHERE channel = 'sip'),
           count(*) FILTER (WHERE channel = 'pstn')
      FROM calls WHERE customer_id = :c AND start_ms >= :r0 AND start_ms < :r1
    UNION ALL
    SELECT count(*), sum((duration_s + 59) / 60), count(*) FILTER (WHERE direction = 'inbound'),
           count(*) FILTER (WHERE direction = 'outbound'), count(*) FILTER (WHERE channel = 'sip'),
           count(*) FILTER (WHERE channel = 'pstn')
      FROM calls WHERE customer_id = :c AND start_ms >= :r2 AND start_ms < :r3) AS t]]

-- Usage of one customer for the inclusive period [start_ms, end_ms] (whole seconds).
function M.totals(customer_id, start_ms, end_ms)
  local p = M.split(start_ms, end_ms + 1000)
  p.c = customer_id
  local row = db.one(TOTALS, p)
  return {
    total_calls = row.calls, total_minutes = row.minutes,
    inbound_calls = row.inbound, outbound_calls = row.outbound,
    sip_calls = row.sip, pstn_calls = row.pstn,
    active_apps = row.apps, active_users = row.users,
  }
end

return M
