-- GET /v2/integrations/{customer_id}/usage (API.md section 5).
package.path = "tests/spec/?.lua;" .. package.path
local spec = require "engine.spec"
local json = require "engine.json"
local time = require "engine.time"
local crypto = require "engine.crypto"
local P = require "support.platform"
local U = require "support.usage"

local ZERO = { total_calls = 0, total_minutes = 0, inbound_calls = 0, outbound_calls = 0,
               sip_calls = 0, pstn_calls = 0, active_apps = 0, active_users = 0 }

local function ms(s) return (assert(time.parse(s))) end

describe("GET /v2/integrations/{customer_id}/usage", function()
  local app = spec.app { scripts = "scripts", schema = "schema" }
  local c, a
  before_each(function()
    c = P.customer(app)
    a = P.app(app, c.token)
  end)
  after_each(function() spec.clock.reset() end)

  local function calls_total(query) return U.get(app, c, query).usage.total_calls end

  it("answers the period and the counters in the REST envelope", function()
    U.ingest(app, a.token, {
      U.call { AppUserId = "agent-7", Direction = "inbound", Channel = "sip", Duration = 185 },
      U.call { AppUserId = "agent-8", Direction = "outgoing", Channel = "pstn", Duration = 60 },
      U.call { AppUserId = json.null, Direction = "outbound", Channel = "sip", Duration = 0 },
    })
    local res = U.usage(app, c, "start_date=2024-06-01&end_date=2024-06-30")
    assert.equal(200, res.status)
    assert.equal("application/json", res.headers["content-type"])
    assert.same({ success = true, data = {
      customer_id = c.id,
      period = { start = "2024-06-01T00:00:00.000Z", ["end"] = "2024-06-30T23:59:59.000Z" },
      usage = { total_calls = 3, total_minutes = 5, inbound_calls = 1, outbound_calls = 2,
                sip_calls = 2, pstn_calls = 1, active_apps = 1, active_users = 2 },
    } }, res.json)
  end)

  it("answers zeros for a customer without calls", function()
    assert.same(ZERO, U.get(app, c, "start_date=2024-01-01&end_date=2024-12-31").usage)
  end)

  describe("authorization (the rules of section 4)", function()
    it("answers 401 unauthorized for missing, bad and app tokens", function()
      local path = "/v2/integrations/" .. c.id .. "/usage"
      P.rest_failed(app.request("GET", path), 401, "unauthorized")
      P.rest_failed(app.request("GET", path, { headers = P.auth("nope") }), 401, "unauthorized")
      P.rest_failed(app.request("GET", path, { headers = P.auth(a.token) }), 401, "unauthorized")
      P.rest_failed(app.request("GET", path, { headers = P.auth(crypto.to_base64(c.id)) }), 401, "unauthorized")
      spec.clock.advance(91 * 86400 * 1000)
      assert.equal("token expired", P.rest_failed(app.request("GET", path, { headers = P.auth(c.token) }), 401, "unauthorized"))
    end)

    it("answers 403 forbidden for another customer's id", function()
      local other = P.customer(app)
      P.rest_failed(app.request("GET", "/v2/integrations/" .. other.id .. "/usage", { headers = P.auth(c.token) }),
        403, "forbidden")
      P.rest_failed(app.request("GET", "/v2/integrations/" .. crypto.uuid4() .. "/usage", { headers = P.auth(c.token) }),
        403, "forbidden")
    end)

    it("answers 404 customer_not_found when the token's customer is gone", function()
      P.ok(app.request("DELETE", "/v2/integrations/customer", { headers = P.auth(c.token) }))
      assert.equal("customer not found", P.rest_failed(U.usage(app, c), 404, "customer_not_found"))
    end)

    it("accepts 'Bearer <token>' and checks 400s only after authorization", function()
      local res = app.request("GET", "/v2/integrations/" .. c.id .. "/usage?start_date=junk",
        { headers = P.auth("Bearer " .. c.token) })
      P.rest_failed(res, 400, "invalid_date")
      res = app.request("GET", "/v2/integrations/" .. c.id .. "/usage?start_date=junk")
      P.rest_failed(res, 401, "unauthorized")
    end)
  end)

  describe("the period", function()
    it("counts a call at 23:59:59 of the end day and not one at 00:00:00 of the next day", function()
      U.ingest(app, a.token, {
        U.call { StartTime = "2024-05-31T23:59:59.999Z" }, -- before the start day
        U.call { StartTime = "2024-06-01T00:00:00Z" },     -- first second of the period
        U.call { StartTime = "2024-06-30T23:59:59Z" },     -- last second
        U.call { StartTime = "2024-06-30T23:59:59.999Z" }, -- still the last second
        U.call { StartTime = "2024-07-01T00:00:00Z" },     -- the next day
      })
      assert.equal(3, calls_total("start_date=2024-06-01&end_date=2024-06-30"))
      assert.equal(1, calls_total("start_date=2024-06-30T23:59:59Z&end_date=2024-06-30T23:59:59Z") - 1)
      assert.equal(1, calls_total("start_date=2024-07-01&end_date=2024-07-01"))
      assert.equal(1, calls_total("start_date=2024-05-31&end_date=2024-05-31"))
      assert.equal(5, calls_total("start_date=2024-05-31&end_date=2024-07-01"))
      assert.equal(0, calls_total("start_date=2024-06-01T00:00:01Z&end_date=2024-06-30T23:59:58Z"))
    end)

    it("is inclusive at one-second resolution: fractions of the bounds are dropped", function()
      U.ingest(app, a.token, { U.call { StartTime = "2024-06-03T10:15:00.250Z" } })
      local d = U.get(app, c, "start_date=2024-06-03T10:15:00.900Z&end_date=2024-06-03T10:15:00.100Z")
      assert.same({ start = "2024-06-03T10:15:00.000Z", ["end"] = "2024-06-03T10:15:00.000Z" }, d.period)
      assert.equal(1, d.usage.total_calls)
      assert.equal(0, calls_total("start_date=2024-06-03T10:15:01Z&end_date=2024-06-03T11:00:00Z"))
      assert.equal(0, calls_total("start_date=2024-06-03T10:00:00Z&end_date=2024-06-03T10:14:59Z"))
    end)

    it("takes offsets and answers the period in UTC", function()
      U.ingest(app, a.token, {
        U.call { StartTime = "2024-06-01T04:29:59Z" }, U.call { StartTime = "2024-06-01T04:30:00Z" },
        U.call { StartTime = "2024-06-02T04:29:59Z" }, U.call { StartTime = "2024-06-02T04:30:00Z" },
      })
      local d = U.get(app, c, "start_date=2024-06-01T10:00:00%2B05:30&end_date=2024-06-02T09:59:59%2B05:30")
      assert.same({ start = "2024-06-01T04:30:00.000Z", ["end"] = "2024-06-02T04:29:59.000Z" }, d.period)
      assert.equal(2, d.usage.total_calls)
      d = U.get(app, c, "start_date=2024-05-31T23:30:00-05:00&end_date=2024-06-02T04:30:00Z")
      assert.equal("2024-06-01T04:30:00.000Z", d.period.start)
      assert.equal(3, d.usage.total_calls)
    end)

    it("defaults to the start of the current month (UTC) up to now", function()
      spec.clock.freeze(ms("2024-06-15T10:00:00.750Z"))
      U.ingest(app, a.token, { U.call { StartTime = "2024-05-31T23:59:59Z" }, U.call { StartTime = "2024-06-01T00:00:00Z" },
                               U.call { StartTime = "2024-06-15T10:00:00.999Z" }, U.call { StartTime = "2024-06-15T10:00:01Z" } })
      local d = U.get(app, c)
      assert.same({ start = "2024-06-01T00:00:00.000Z", ["end"] = "2024-06-15T10:00:00.000Z" }, d.period)
      assert.equal(2, d.usage.total_calls)
    end)

    it("defaults start to the first day of end's month and end to now", function()
      spec.clock.freeze(ms("2024-06-15T10:00:00Z"))
      assert.same({ start = "2024-02-01T00:00:00.000Z", ["end"] = "2024-02-29T23:59:59.000Z" },
        U.get(app, c, "end_date=2024-02-29").period)
      assert.same({ start = "2023-12-01T00:00:00.000Z", ["end"] = "2023-12-31T18:30:00.000Z" },
        U.get(app, c, "end_date=2024-01-01T00:00:00%2B05:30").period)
      assert.same({ start = "2024-03-05T00:00:00.000Z", ["end"] = "2024-06-15T10:00:00.000Z" },
        U.get(app, c, "start_date=2024-03-05").period)
    end)

    it("accepts start equal to end", function()
      assert.same({ start = "2024-06-03T10:00:00.000Z", ["end"] = "2024-06-03T10:00:00.000Z" },
        U.get(app, c, "start_date=2024-06-03T10:00:00Z&end_date=2024-06-03T10:00:00Z").period)
      assert.same({ start = "2024-06-03T00:00:00.000Z", ["end"] = "2024-06-03T23:59:59.000Z" },
        U.get(app, c, "start_date=2024-06-03&end_date=2024-06-03").period)
    end)

    for _, bad in ipairs {
      "start_date=2024-02-30", "start_date=2023-02-29", "end_date=2024-13-01", "end_date=2024-06-31",
      "start_date=junk", "start_date=", "start_date=2024-06-01T10:00:00", "end_date=2024-06-01T24:00:00Z",
      "end_date=2024-6-1", "start_date=2024-06-01%2010:00:00Z",
    } do
      it("answers 400 invalid_date for " .. bad, function()
        local msg = P.rest_failed(U.usage(app, c, bad), 400, "invalid_date")
        assert.matches("^" .. bad:match("^(%w+_date)") .. " must be an ISO 8601 date", msg)
      end)
    end

    it("answers 400 invalid_period when start is after end (also against the defaults)", function()
      spec.clock.freeze(ms("2024-06-15T10:00:00Z"))
      assert.equal("start_date (2024-06-02T00:00:00.000Z) is after end_date (2024-06-01T23:59:59.000Z)",
        P.rest_failed(U.usage(app, c, "start_date=2024-06-02&end_date=2024-06-01"), 400, "invalid_period"))
      P.rest_failed(U.usage(app, c, "start_date=2024-06-03T10:00:01Z&end_date=2024-06-03T10:00:00Z"), 400, "invalid_period")
      P.rest_failed(U.usage(app, c, "start_date=2024-06-15T10:00:01Z"), 400, "invalid_period")
      P.rest_failed(U.usage(app, c, "end_date=2024-06-02&start_date=2024-06-03T05:30:00%2B05:30"), 400, "invalid_period")
    end)

    it("checks both dates before the order: a bad end_date is invalid_date", function()
      P.rest_failed(U.usage(app, c, "start_date=2024-06-10&end_date=2024-02-30"), 400, "invalid_date")
    end)
  end)

  describe("the counters", function()
    it("adds ceil(Duration / 60) minutes per call, 0 for a 0-second call", function()
      local cases = { [0] = 0, [1] = 1, [59] = 1, [60] = 1, [61] = 2, [119] = 2, [120] = 2, [86400] = 1440 }
      local batch, want = {}, 0
      for secs, minutes in pairs(cases) do
        batch[#batch + 1] = U.call { Duration = secs }
        want = want + minutes
      end
      U.ingest(app, a.token, batch)
      assert.equal(want, U.get(app, c, "start_date=2024-06-03&end_date=2024-06-03").usage.total_minutes)
      assert.equal(1449, want)
    end)

    it("splits by Direction (synonyms included) and Channel", function()
      U.ingest(app, a.token, {
        U.call { Direction = "incoming", Channel = "pstn" }, U.call { Direction = "inbound", Channel = "sip" },
        U.call { Direction = "outgoing", Channel = "sip" }, U.call { Direction = "outbound", Channel = "sip" },
        U.call { Direction = "Outbound", Channel = "PSTN" },
      })
      local u = U.get(app, c, "start_date=2024-06-01&end_date=2024-06-30").usage
      assert.same({ 5, 2, 3, 3, 2 }, { u.total_calls, u.inbound_calls, u.outbound_calls, u.sip_calls, u.pstn_calls })
    end)

    it("counts distinct active apps, a deleted app included", function()
      local a2, a3 = P.app(app, c.token), P.app(app, c.token)
      U.ingest(app, a.token, { U.call(), U.call() })
      U.ingest(app, a2.token, { U.call { StartTime = "2024-06-20T00:00:00Z" } })
      U.ingest(app, a3.token, { U.call { StartTime = "2024-07-01T00:00:00Z" } }) -- outside June
      P.ok(app.request("DELETE", "/v2/integrations/app", { headers = P.auth(a2.token) }))
      local u = U.get(app, c, "start_date=2024-06-01&end_date=2024-06-30").usage
      assert.equal(2, u.active_apps)
      assert.equal(3, u.total_calls)
      assert.equal(1, U.get(app, c, "start_date=2024-06-20&end_date=2024-06-20").usage.active_apps)
      assert.equal(3, U.get(app, c, "start_date=2024-01-01&end_date=2024-12-31").usage.active_apps)
    end)

    it("counts distinct (app, AppUserId) pairs; calls without AppUserId count everywhere else", function()
      local a2 = P.app(app, c.token)
      U.ingest(app, a.token, { U.call { AppUserId = "u1" }, U.call { AppUserId = "u1" }, U.call { AppUserId = "u2" },
                               U.call { AppUserId = json.null }, U.call { AppUserId = json.null, Duration = 600 } })
      U.ingest(app, a2.token, { U.call { AppUserId = "u1", StartTime = "2024-06-04T00:00:00Z" } })
      local u = U.get(app, c, "start_date=2024-06-01&end_date=2024-06-30").usage
      assert.same({ total_calls = 6, total_minutes = 15, inbound_calls = 6, outbound_calls = 0, sip_calls = 6,
                    pstn_calls = 0, active_apps = 2, active_users = 3 }, u)
      assert.equal(2, U.get(app, c, "start_date=2024-06-03&end_date=2024-06-03").usage.active_users)
    end)

    -- #sqlite: support/usage.lua's brute-force count is SQLite's SQL (a syntax error on PostgreSQL)
    it("finds users and apps active only in a December inside a multi-year period #sqlite", function()
      local a2 = P.app(app, c.token)
      U.ingest(app, a2.token, { U.call { StartTime = "2023-12-31T23:59:59Z", AppUserId = "dec" } })
      U.ingest(app, a.token, { U.call { StartTime = "2022-01-10T00:00:00Z", AppUserId = "jan" } })
      local q = "start_date=2022-06-01&end_date=2024-02-15T12:00:00Z"
      local u = U.get(app, c, q).usage
      assert.same({ 1, 1, 1 }, { u.total_calls, u.active_apps, u.active_users })
      assert.same(U.brute(app.db, c.id, ms("2022-06-01T00:00:00Z"), ms("2024-02-15T12:00:00Z")), u)
      assert.equal(2, U.get(app, c, "start_date=2021-12-31T23:59:59Z&end_date=2025-01-01").usage.active_users)
    end)

    it("counts nobody else's calls", function()
      local other = P.customer(app)
      U.ingest(app, P.app(app, other.token).token, { U.call(), U.call() })
      U.ingest(app, a.token, { U.call() })
      assert.equal(1, calls_total("start_date=2024-06-01&end_date=2024-06-30"))
    end)
  end)

  describe("rollups against the raw rows", function()
    -- A seeded generator, so a failure can be replayed.
    local seed = 20240615
    local function rand(n)
      seed = (seed * 6364136223846793005 + 1442695040888963407)
      return ((seed >> 33) % n) + 1
    end
    local T0 = ms("2023-11-20T00:00:00Z") -- spans a year end, Feb 29 and five month ends
    local SPAN = 160 * 86400

    -- #sqlite: support/usage.lua's brute-force count is SQLite's SQL (a syntax error on PostgreSQL)
    it("answers exactly what a brute-force count over the raw rows says, for 400 random periods #sqlite", function()
      local apps = { a, P.app(app, c.token), P.app(app, c.token) }
      -- Calls bunched on day and month edges as well as spread at random.
      local edges = { "2023-12-31T23:59:59Z", "2024-01-01T00:00:00Z", "2024-02-01T00:00:00Z", "2024-02-29T23:59:59Z", "2024-03-01T00:00:00Z", "2024-03-31T23:59:59.999Z",
                      "2024-04-01T00:00:00Z", "2024-04-30T23:59:59Z", "2024-05-01T00:00:00.001Z",
                      "2024-01-15T09:59:59.999Z", "2024-01-15T10:00:00Z", "2024-01-15T10:59:59Z", "2024-02-10T23:00:00Z",
                      "2024-02-10T22:59:59.999Z", "2024-03-05T05:30:00Z", "2024-03-05T06:00:00.500Z" }
      for _, who in ipairs(apps) do
        local batch = {}
        for i = 1, 400 do
          local start
          if i <= #edges then start = ms(edges[i]) else start = T0 + (rand(SPAN) - 1) * 1000 + rand(1000) - 1 end
          batch[#batch + 1] = U.call {
            StartTime = time.format(start), Duration = rand(700) - 1,
            Direction = ({ "inbound", "outbound", "incoming" })[rand(3)], Channel = ({ "sip", "pstn" })[rand(2)],
            AppUserId = rand(4) == 1 and json.null or ("u" .. rand(12)),
          }
        end
        U.ingest(app, who.token, batch)
      end
      -- The deleted app's calls still count.
      P.ok(app.request("DELETE", "/v2/integrations/app", { headers = P.auth(apps[2].token) }))

      local usage = require "lib.usage"
      local offsets = { "Z", "+05:30", "-08:00", "+14:00" }
      local function bound(t, as_date)
        if as_date then return os.date("!%Y-%m-%d", t // 1000) end
        local off = offsets[rand(#offsets)]
        local sign, hh, mm = off:match("^([+-])(%d%d):(%d%d)$")
        local shift = sign and ((sign == "+" and 1 or -1) * (hh * 3600 + mm * 60)) or 0
        return os.date("!%Y-%m-%dT%H:%M:%S", t // 1000 + shift) .. off
      end
      local pieces = { months = 0, edges = 0, hours = 0, hour_edges = 0, mid_hour = 0 }
      for i = 1, 400 do
        local s = T0 - 3 * 86400000 + (rand(SPAN + 6 * 86400) - 1) * 1000
        local len = ({ 1, 59, 3600, 86399, 86400, 86401, 40 * 86400, SPAN })[rand(8)] * 1000
        local e = s + (rand(len) - 1) * 1000
        -- Sometimes snap to day or hour edges, the cases where rollups take over; otherwise the
        -- bounds fall mid-hour (or on the hour through the offsets' whole hours, or by chance).
        local snap = rand(6)
        if snap <= 2 then s = s // 86400000 * 86400000 elseif snap == 3 then s = s // 3600000 * 3600000 end
        snap = rand(6)
        if snap <= 2 then e = e // 86400000 * 86400000 + 86399000 elseif snap == 3 then e = e // 3600000 * 3600000 + 3599000 end
        local sd, ed = rand(4) == 1, rand(4) == 1
        local query = "start_date=" .. bound(s, sd):gsub("+", "%%2B") .. "&end_date=" .. bound(e, ed):gsub("+", "%%2B")
        local ps, pe = usage.period({ start_date = bound(s, sd), end_date = bound(e, ed) }, 0)
        if ps then
          local want = U.brute(app.db, c.id, ps, pe)
          if i % 4 == 0 then
            local d = U.get(app, c, query)
            assert.same({ start = time.format(ps), ["end"] = time.format(pe) }, d.period)
            assert.same(want, d.usage, query)
          else
            assert.same(want, usage.totals(c.id, ps, pe), query)
          end
          local p = usage.split(ps, pe + 1000)
          if p.y0 <= p.y1 then pieces.months = pieces.months + 1 end
          if p.r1 > p.r0 or p.r3 > p.r2 then pieces.edges = pieces.edges + 1 end
          if p.h1 > p.h0 or p.h3 > p.h2 then pieces.hours = pieces.hours + 1 end
          -- Both ends on the hour with whole hours between: no raw rows at all.
          if p.h0 < p.h3 and p.r0 == p.r1 and p.r2 == p.r3 then pieces.hour_edges = pieces.hour_edges + 1 end
          if ps % 3600000 ~= 0 and (pe + 1000) % 3600000 ~= 0 then pieces.mid_hour = pieces.mid_hour + 1 end
        end
      end
      -- The random periods did exercise whole months and raw edges.
      assert.is_true(pieces.months >= 20, "whole-month periods: " .. pieces.months)
      assert.is_true(pieces.edges >= 100, "periods with raw edges: " .. pieces.edges)
      assert.is_true(pieces.hours >= 100, "periods with whole edge hours: " .. pieces.hours)
      assert.is_true(pieces.hour_edges >= 20, "periods from the hour to the hour: " .. pieces.hour_edges)
      assert.is_true(pieces.mid_hour >= 30, "periods with both ends mid-hour: " .. pieces.mid_hour)
      -- And the data is not trivial.
      local all = U.get(app, c, "start_date=2023-01-01&end_date=2024-12-31").usage
      assert.same(U.brute(app.db, c.id, ms("2023-01-01T00:00:00Z"), ms("2024-12-31T23:59:59Z")), all)
      assert.equal(1200, all.total_calls)
      assert.equal(3, all.active_apps)
    end)

    it("splits periods into whole months, whole days and raw edges", function()
      local usage = require "lib.usage"
      local D = 86400000
      local function day(s) return ms(s .. "T00:00:00Z") // D end
      local H = 3600000
      local function hour(s) return ms(s) // H end
      local p = usage.split(ms("2024-01-15T10:00:00Z"), ms("2024-04-03T05:00:00Z"))
      assert.same({ day("2024-01-16"), day("2024-04-03") }, { p.d0, p.d1 })
      -- Jan 15 10:00..24:00 and Apr 3 00:00..05:00 from the hour rows, no raw rows.
      assert.same({ hour("2024-01-15T10:00:00Z"), hour("2024-01-16T00:00:00Z") }, { p.h0, p.h1 })
      assert.same({ day("2024-01-15"), ((1 << 14) - 1) << 10 }, { p.hd1, p.hm1 })
      assert.same({ hour("2024-04-03T00:00:00Z"), hour("2024-04-03T05:00:00Z") }, { p.h2, p.h3 })
      assert.same({ day("2024-04-03"), 31 }, { p.hd2, p.hm2 })
      -- February and March from the year rows, Jan 16..31 and Apr 1..2 from the month rows.
      assert.same({ 2024, 2024, 6, 6 }, { p.y0, p.y1, p.ym0, p.ym1 })
      assert.same({ 2024 * 12, ((1 << 16) - 1) << 15 }, { p.pm1, p.pd1 })
      assert.same({ 2024 * 12 + 3, 3 }, { p.pm2, p.pd2 })
      assert.equal(p.r0, p.r1)
      assert.equal(p.r2, p.r3)
      -- Mid-hour ends: the partial hours are raw.
      p = usage.split(ms("2024-01-15T10:20:00Z"), ms("2024-04-03T05:00:30Z"))
      assert.same({ ms("2024-01-15T10:20:00Z"), ms("2024-01-15T11:00:00Z") }, { p.r0, p.r1 })
      assert.same({ ms("2024-04-03T05:00:00Z"), ms("2024-04-03T05:00:30Z") }, { p.r2, p.r3 })
      assert.same({ hour("2024-01-15T11:00:00Z"), hour("2024-01-16T00:00:00Z"), ((1 << 13) - 1) << 11 }, { p.h0, p.h1, p.hm1 })
      assert.same({ hour("2024-04-03T00:00:00Z"), hour("2024-04-03T05:00:00Z"), 31 }, { p.h2, p.h3, p.hm2 })
      -- Over a year boundary: Dec 2023 .. Feb 2025 whole.
      p = usage.split(ms("2023-12-01T00:00:00Z"), ms("2025-03-01T00:00:00Z"))
      assert.same({ 2023, 2025, 1 << 11, 3 }, { p.y0, p.y1, p.ym0, p.ym1 })
      assert.same({ math.mininteger, math.mininteger }, { p.pm1, p.pm2 })
      assert.equal(p.r0, p.r1)
      assert.equal(p.r2, p.r3)
      assert.same({ p.h0, p.h2, math.mininteger, math.mininteger }, { p.h1, p.h3, p.hd1, p.hd2 })
      -- No whole month, straddling a month end: Jan 30..Feb 2.
      p = usage.split(ms("2024-01-30T00:00:00Z"), ms("2024-02-03T00:00:00Z"))
      assert.same({ 0, -1 }, { p.y0, p.y1 })
      assert.same({ 2024 * 12, (1 << 29) | (1 << 30), 2024 * 12 + 1, 3 }, { p.pm1, p.pd1, p.pm2, p.pd2 })
      -- Within one day: hours 0..22 whole, the last one raw.
      p = usage.split(ms("2024-06-03T00:00:00Z"), ms("2024-06-03T23:59:59Z"))
      assert.same({ 0, 0, ms("2024-06-03T00:00:00Z"), ms("2024-06-03T00:00:00Z") }, { p.d0, p.d1, p.r0, p.r1 })
      assert.same({ ms("2024-06-03T23:00:00Z"), ms("2024-06-03T23:59:59Z") }, { p.r2, p.r3 })
      assert.same({ p.h0, math.mininteger }, { p.h1, p.hd1 })
      assert.same({ hour("2024-06-03T00:00:00Z"), hour("2024-06-03T23:00:00Z"), day("2024-06-03"), (1 << 23) - 1 },
        { p.h2, p.h3, p.hd2, p.hm2 })
      assert.same({ math.mininteger, math.mininteger, 0, -1 }, { p.pm1, p.pm2, p.y0, p.y1 })
      -- No whole day, straddling a day end: hour 23 of Jun 3 and hour 0 of Jun 4.
      p = usage.split(ms("2024-06-03T22:30:00Z"), ms("2024-06-04T01:15:00Z"))
      assert.same({ 0, 0 }, { p.d0, p.d1 })
      assert.same({ day("2024-06-03"), 1 << 23, day("2024-06-04"), 1 }, { p.hd1, p.hm1, p.hd2, p.hm2 })
      assert.same({ ms("2024-06-03T22:30:00Z"), ms("2024-06-03T23:00:00Z") }, { p.r0, p.r1 })
      assert.same({ ms("2024-06-04T01:00:00Z"), ms("2024-06-04T01:15:00Z") }, { p.r2, p.r3 })
      -- Within one hour: all raw.
      p = usage.split(ms("2024-06-03T10:15:00Z"), ms("2024-06-03T10:45:00Z"))
      assert.same({ ms("2024-06-03T10:15:00Z"), ms("2024-06-03T10:45:00Z"), 0, 0 }, { p.r0, p.r1, p.r2, p.r3 })
      assert.same({ p.h0, p.h2, math.mininteger, math.mininteger }, { p.h1, p.h3, p.hd1, p.hd2 })
      -- Before 1970 too.
      p = usage.split(ms("1969-12-01T00:00:00Z"), ms("1970-01-01T00:00:00Z"))
      assert.same({ 1969, 1969, 1 << 11 }, { p.y0, p.y1, p.ym0 })
      assert.equal(-31, p.d0)
      p = usage.split(ms("1969-12-31T22:10:00Z"), ms("1970-01-01T01:00:00Z"))
      assert.same({ -1, 1 << 23, 0, 1 }, { p.hd1, p.hm1, p.hd2, p.hm2 })
      assert.same({ ms("1969-12-31T22:10:00Z"), ms("1969-12-31T23:00:00Z") }, { p.r0, p.r1 })
    end)
  end)
end)
