-- POST /v2/integrations/calls (API.md section 6).
package.path = "tests/spec/?.lua;" .. package.path
local spec = require "engine.spec"
local testing = require "engine.testing"
local json = require "engine.json"
local P = require "support.platform"
local U = require "support.usage"

local function rows(app, customer_id)
  return app.db.query([[SELECT call_sid, app_id, app_user_id, direction, channel, start_ms, duration_s
                        FROM calls WHERE customer_id = ? ORDER BY start_ms, call_sid]], customer_id)
end

describe("POST /v2/integrations/calls", function()
  local app = spec.app { scripts = "scripts", schema = "schema" }
  local c, a
  before_each(function()
    c = P.customer(app)
    a = P.app(app, c.token)
  end)

  it("stores the records and answers Accepted / Duplicates in the platform envelope", function()
    local data = U.ingest(app, a.token, {
      { CallSid = "7bea36f8c95f0fb10027daa6acee17c1", AppUserId = "agent-7", Direction = "inbound",
        Channel = "sip", StartTime = "2024-06-03T10:15:00Z", Duration = 185 },
      { CallSid = "c2", Direction = "outbound", Channel = "pstn", StartTime = "2024-06-03T10:15:00.250+05:30",
        Duration = 0, Extra = "ignored" },
    })
    assert.same({ Accepted = 2, Duplicates = 0 }, data)
    local r = rows(app, c.id)
    assert.equal(2, #r)
    assert.same({ call_sid = "c2", app_id = a.id, app_user_id = json.null, direction = "outbound", channel = "pstn",
                  start_ms = 1717389900250, duration_s = 0 }, r[1])
    assert.same({ call_sid = "7bea36f8c95f0fb10027daa6acee17c1", app_id = a.id, app_user_id = "agent-7",
                  direction = "inbound", channel = "sip", start_ms = 1717409700000, duration_s = 185 }, r[2])
  end)

  it("accepts incoming / outgoing as synonyms and any case for Direction and Channel", function()
    U.ingest(app, a.token, {
      U.call { CallSid = "i", Direction = "incoming", Channel = "SIP" },
      U.call { CallSid = "o", Direction = "Outgoing", Channel = "Pstn" },
      U.call { CallSid = "O", Direction = "OUTBOUND", Channel = "sip" },
    })
    local got = {}
    for _, row in ipairs(rows(app, c.id)) do got[row.call_sid] = row.direction .. "/" .. row.channel end
    assert.same({ i = "inbound/sip", o = "outbound/pstn", O = "outbound/sip" }, got)
  end)

  it("derives Duration from EndTime in whole seconds, a started second counting", function()
    U.ingest(app, a.token, {
      U.call { CallSid = "e1", Duration = json.null, StartTime = "2024-06-03T10:00:00Z", EndTime = "2024-06-03T10:03:05Z" },
      U.call { CallSid = "e2", Duration = json.null, StartTime = "2024-06-03T10:00:00Z", EndTime = "2024-06-03T10:00:00.001Z" },
      U.call { CallSid = "e3", Duration = json.null, StartTime = "2024-06-03T10:00:00Z", EndTime = "2024-06-03T15:30:00+05:30" },
      U.call { CallSid = "e4", Duration = 7, StartTime = "2024-06-03T10:00:00Z", EndTime = "2024-06-03T11:00:00Z" },
      U.call { CallSid = "e5", Duration = 120.0 },
    })
    local got = {}
    for _, row in ipairs(rows(app, c.id)) do got[row.call_sid] = row.duration_s end
    assert.same({ e1 = 185, e2 = 1, e3 = 0, e4 = 7, e5 = 120 }, got)
  end)

  describe("idempotency on CallSid per customer", function()
    it("skips a CallSid repeated in one batch: the first record wins", function()
      local data = U.ingest(app, a.token, {
        U.call { CallSid = "dup", Duration = 10 }, U.call { CallSid = "x" }, U.call { CallSid = "dup", Duration = 999 },
      })
      assert.same({ Accepted = 2, Duplicates = 1 }, data)
      assert.equal(10, app.db.one("SELECT duration_s FROM calls WHERE call_sid = 'dup'").duration_s)
    end)

    -- #sqlite: support/usage.lua's brute-force count is SQLite's SQL (a syntax error on PostgreSQL)
    it("skips a CallSid recorded by an earlier batch, from any app of the customer #sqlite", function()
      U.ingest(app, a.token, { U.call { CallSid = "s1", Duration = 30 }, U.call { CallSid = "s2" } })
      local a2 = P.app(app, c.token)
      local data = U.ingest(app, a2.token, { U.call { CallSid = "s1", Duration = 3000, Direction = "outbound" },
                                             U.call { CallSid = "s3" }, U.call { CallSid = "s2" } })
      assert.same({ Accepted = 1, Duplicates = 2 }, data)
      local s1 = app.db.one("SELECT * FROM calls WHERE call_sid = 's1'")
      assert.same({ a.id, 30, "inbound" }, { s1.app_id, s1.duration_s, s1.direction })
      -- The rollups saw each call once.
      local u = U.get(app, c, "start_date=2024-06-03&end_date=2024-06-03")
      assert.equal(3, u.usage.total_calls)
      assert.equal(3, u.usage.total_minutes)
      assert.same(U.brute(app.db, c.id, 1717372800000, 1717459199000), u.usage)
    end)

    it("a whole batch sent twice is all duplicates the second time", function()
      local batch = { U.call(), U.call(), U.call() }
      assert.same({ Accepted = 3, Duplicates = 0 }, U.ingest(app, a.token, batch))
      assert.same({ Accepted = 0, Duplicates = 3 }, U.ingest(app, a.token, batch))
      assert.equal(3, P.count(app, "calls WHERE customer_id = ?", c.id))
      assert.equal(3, app.db.one("SELECT calls FROM usage_days WHERE customer_id = ?", c.id).calls)
    end)

    -- Rows that reach `calls` without the scripts: a plain INSERT (an import, a repair), and a row
    -- restored with the seq it had (as from a backup), below what any worker had already read.
    -- seq nil: the database numbers the row (a NULL seq is refused by PostgreSQL's identity).
    local function insert_by_sql(customer_id, app_id, sid, seq)
      local seq_col, seq_val = "", ""
      if seq then seq_col, seq_val = "seq, ", string.format("%d, ", seq) end
      app.db.exec("INSERT INTO calls (" .. seq_col .. [[customer_id, call_sid, app_id, direction, channel, start_ms,
                                       duration_s, created_at)
                    VALUES (]] .. seq_val .. [[?, ?, ?, 'inbound', 'sip', 1717409700000, 60, '2024-06-03T10:15:00.000Z')]],
                  customer_id, sid, app_id)
    end

    -- #sqlite: insert_by_sql leaves seq to SQLite's rowid numbering (NULL on PostgreSQL)
    it("refuses as duplicates CallSids stored by plain SQL, not through the scripts, and counts only the new #sqlite", function()
      assert.same({ Accepted = 2, Duplicates = 0 },
                  U.ingest(app, a.token, { U.call { CallSid = "api-1" }, U.call { CallSid = "api-2" } }))
      insert_by_sql(c.id, a.id, "by-sql", nil)
      insert_by_sql(c.id, a.id, "restored", -1)
      local data = U.ingest(app, a.token, { U.call { CallSid = "restored", Duration = 999 }, U.call { CallSid = "new" },
                                            U.call { CallSid = "by-sql", Duration = 999 } })
      assert.same({ Accepted = 1, Duplicates = 2 }, data)
      assert.same({ { call_sid = "api-1", n = 1, d = 60 }, { call_sid = "api-2", n = 1, d = 60 },
                    { call_sid = "by-sql", n = 1, d = 60 }, { call_sid = "new", n = 1, d = 60 },
                    { call_sid = "restored", n = 1, d = 60 } },
                  app.db.query([[SELECT call_sid, count(*) AS n, max(duration_s) AS d FROM calls WHERE customer_id = ?
                                 GROUP BY call_sid ORDER BY call_sid]], c.id))
      -- The rollups counted the three calls that went through the scripts, each once.
      assert.same({ calls = 3, minutes = 3 },
                  app.db.one("SELECT sum(calls) AS calls, sum(minutes) AS minutes FROM usage_days WHERE customer_id = ?", c.id))
    end)

    -- #sqlite: insert_by_sql leaves seq to SQLite's rowid numbering (NULL on PostgreSQL)
    it("is held by the database: a second row of a customer's CallSid is skipped whoever writes it #sqlite", function()
      U.ingest(app, a.token, { U.call { CallSid = "once" } })
      local insert = [[INSERT INTO calls (customer_id, call_sid, app_id, direction, channel, start_ms, duration_s,
                                          created_at)
                       VALUES (?, 'once', ?, 'inbound', 'sip', 0, 1, 'x')]]
      assert.equal(0, app.db.exec(insert, c.id, a.id))
      assert.equal(0, app.db.exec((insert:gsub("^INSERT", "INSERT OR IGNORE")), c.id, a.id))
      assert.equal(1, P.count(app, "calls WHERE call_sid = 'once'"))
      local ok, err = pcall(app.db.exec, "UPDATE calls SET call_sid = 'other' WHERE call_sid = 'once'")
      assert.is_false(ok)
      assert.matches("a call record's customer_id, call_sid and seq cannot change", tostring(err), 1, true)
      -- Deleting the record deletes its key: the CallSid is new again.
      assert.equal(1, app.db.exec("DELETE FROM calls WHERE call_sid = 'once'"))
      assert.same({ Accepted = 1, Duplicates = 0 }, U.ingest(app, a.token, { U.call { CallSid = "once" } }))
      assert.equal(P.count(app, "calls"), P.count(app, "calls_sid"))
    end)

    -- The leveled key table (schema/0008, engine/db_levels.h), with limits small enough that a few
    -- batches fill every level: 2 keys in level 0, 4 in level 1, 8 in level 2, the rest in 3.
    it("finds CallSids at every level of the key table after folds #sqlite", function()
      app.db.exec("UPDATE _engine_levels SET l0 = 2, fanout = 2 WHERE tbl = 'calls_sid'")
      local sids = {}
      for b = 1, 6 do
        local batch = {}
        for i = 1, 5 do
          sids[#sids + 1] = string.format("lv-%d-%d", b, i)
          batch[i] = U.call { CallSid = sids[#sids] }
        end
        assert.same({ Accepted = 5, Duplicates = 0 }, U.ingest(app, a.token, batch))
        local st = testing.fold_levels()
        assert.is_true(st.chunks > 0)
      end
      local per_level = {}
      for _, row in ipairs(app.db.query("SELECT lvl, count(*) AS n FROM calls_sid GROUP BY lvl ORDER BY lvl")) do
        per_level[row.lvl] = row.n
      end
      assert.is_true((per_level[0] or 0) <= 2 and (per_level[1] or 0) <= 4 and (per_level[2] or 0) <= 8)
      assert.is_true(per_level[3] > 0 and per_level[2] > 0)
      -- Every stored call has exactly one key, the hash of its customer and CallSid.
      assert.same({ n = 30, bad = 0 }, app.db.one([[
        SELECT count(*) AS n, sum(s.h <> engine_key64(c.customer_id, c.call_sid)) AS bad
          FROM calls c JOIN calls_sid s ON s.seq = c.seq WHERE c.customer_id = ?]], c.id))
      -- All of them are duplicates now, wherever their key is; new ones are not.
      local again = {}
      for i, sid in ipairs(sids) do again[i] = U.call { CallSid = sid } end
      again[#again + 1] = U.call { CallSid = "lv-new" }
      assert.same({ Accepted = 1, Duplicates = 30 }, U.ingest(app, a.token, again))
      assert.equal(31, P.count(app, "calls WHERE customer_id = ?", c.id))
      -- The customer's deletion takes its calls' keys with it.
      local others = P.count(app, "calls WHERE customer_id <> ?", c.id)
      assert.equal(200, app.request("DELETE", "/v2/integrations/customer", { headers = P.auth(c.token) }).status)
      assert.equal(others, P.count(app, "calls_sid"))
      assert.equal(0, P.count(app, "calls_sid s WHERE NOT EXISTS (SELECT 1 FROM calls c WHERE c.seq = s.seq)"))
    end)

    it("stores a CallSid whose key's hash meets another record's (a 64-bit collision) #sqlite", function()
      U.ingest(app, a.token, { U.call { CallSid = "first" } })
      -- Make "second" collide: a key with its hash that points at the row of "first".
      app.db.exec([[INSERT INTO calls_sid (lvl, h, seq)
                    SELECT 1, engine_key64(customer_id, 'second'), seq FROM calls WHERE call_sid = 'first']])
      assert.same({ Accepted = 1, Duplicates = 0 }, U.ingest(app, a.token, { U.call { CallSid = "second" } }))
      assert.same({ Accepted = 0, Duplicates = 2 },
                  U.ingest(app, a.token, { U.call { CallSid = "second" }, U.call { CallSid = "first" } }))
      assert.equal(2, P.count(app, "calls WHERE customer_id = ?", c.id))
    end)

    it("keeps the same CallSid of another customer apart", function()
      local c2 = P.customer(app)
      local a2 = P.app(app, c2.token)
      assert.same({ Accepted = 1, Duplicates = 0 }, U.ingest(app, a.token, { U.call { CallSid = "shared" } }))
      assert.same({ Accepted = 1, Duplicates = 0 }, U.ingest(app, a2.token, { U.call { CallSid = "shared" } }))
      assert.equal(2, P.count(app, "calls WHERE call_sid = 'shared'"))
    end)
  end)

  describe("batch size", function()
    it("takes 1000 records", function()
      local batch = {}
      for i = 1, 1000 do batch[i] = U.call { CallSid = "b" .. i } end
      assert.same({ Accepted = 1000, Duplicates = 0 }, U.ingest(app, a.token, batch))
      assert.equal(1000, P.count(app, "calls WHERE customer_id = ?", c.id))
    end)

    it("refuses 1001 records and an empty array with 400, storing nothing", function()
      local batch = {}
      for i = 1, 1001 do batch[i] = U.call { CallSid = "b" .. i } end
      assert.equal("request body must hold 1 to 1000 call records, not 1001", P.failed(U.post(app, a.token, batch), 400))
      assert.equal("request body must hold 1 to 1000 call records, not 0",
        P.failed(U.post(app, a.token, json.array()), 400))
      assert.equal(0, P.count(app, "calls WHERE customer_id = ?", c.id))
    end)

    it("refuses a body that is not a JSON array", function()
      local function post(body)
        return app.request("POST", "/v2/integrations/calls", { body = body, headers = P.auth(a.token) })
      end
      assert.equal("request body must be a JSON array", P.failed(post('{"CallSid":"x"}'), 400))
      assert.matches("^request body is not valid JSON", P.failed(post("[{"), 400))
      assert.equal("request body is empty: expected a JSON array", P.failed(post(""), 400))
    end)
  end)

  describe("all or nothing", function()
    local CASES = {
      { "not an object", "must be a JSON object", function() return "nope" end },
      { "array record", "must be a JSON object", function() return json.array { 1 } end },
      { "no CallSid", "CallSid is required", function() return U.call { CallSid = json.null } end },
      { "CallSid not a string", "CallSid must be a string", function() return U.call { CallSid = 12 } end },
      { "empty CallSid", "CallSid must not be empty", function() return U.call { CallSid = "  " } end },
      { "CallSid of 65", "CallSid must be 1 to 64 characters", function() return U.call { CallSid = string.rep("x", 65) } end },
      { "AppUserId not a string", "AppUserId must be a string", function() return U.call { AppUserId = 7 } end },
      { "no Direction", "Direction is required", function() return U.call { Direction = json.null } end },
      { "bad Direction", "Direction must be inbound or outbound (incoming / outgoing)",
        function() return U.call { Direction = "sideways" } end },
      { "no Channel", "Channel is required", function() return U.call { Channel = json.null } end },
      { "bad Channel", "Channel must be sip or pstn", function() return U.call { Channel = "fax" } end },
      { "no StartTime", "StartTime is required", function() return U.call { StartTime = json.null } end },
      { "date-only StartTime", "StartTime must be an RFC 3339 date-time such as 2024-06-03T10:15:00Z",
        function() return U.call { StartTime = "2024-06-03" } end },
      { "StartTime without offset", "StartTime must be an RFC 3339 date-time such as 2024-06-03T10:15:00Z",
        function() return U.call { StartTime = "2024-06-03T10:15:00" } end },
      { "impossible StartTime", "StartTime must be an RFC 3339 date-time such as 2024-06-03T10:15:00Z",
        function() return U.call { StartTime = "2024-02-30T10:15:00Z" } end },
      { "negative Duration", "Duration must be an integer from 0 to 86400", function() return U.call { Duration = -1 } end },
      { "Duration 86401", "Duration must be an integer from 0 to 86400", function() return U.call { Duration = 86401 } end },
      { "fractional Duration", "Duration must be an integer from 0 to 86400", function() return U.call { Duration = 1.5 } end },
      { "string Duration", "Duration must be an integer from 0 to 86400", function() return U.call { Duration = "60" } end },
      { "neither Duration nor EndTime", "Duration (or EndTime) is required", function() return U.call { Duration = json.null } end },
      { "bad EndTime", "EndTime must be an RFC 3339 date-time such as 2024-06-03T10:15:00Z",
        function() return U.call { Duration = json.null, EndTime = "soon" } end },
      { "EndTime before StartTime", "EndTime must not be before StartTime",
        function() return U.call { Duration = json.null, EndTime = "2024-06-03T10:14:59Z" } end },
      { "EndTime over a day later", "EndTime must be at most 86400 seconds after StartTime",
        function() return U.call { Duration = json.null, EndTime = "2024-06-04T10:15:00.001Z" } end },
    }
    for _, case in ipairs(CASES) do
      it("refuses the batch when record 3 has " .. case[1] .. ", naming the index and the field", function()
        local batch = { U.call(), U.call(), U.call(), case[3](), U.call() }
        assert.equal("record 3: " .. case[2], P.failed(U.post(app, a.token, batch), 400))
        assert.equal(0, P.count(app, "calls WHERE customer_id = ?", c.id))
        assert.equal(0, P.count(app, "usage_days WHERE customer_id = ?", c.id))
      end)
    end

    it("names the first invalid record", function()
      local batch = { U.call { Duration = -5 }, U.call { Channel = "x" } }
      assert.equal("record 0: Duration must be an integer from 0 to 86400", P.failed(U.post(app, a.token, batch), 400))
    end)

    it("accepts the limits: Duration 0 and 86400, a 64-character CallSid, EndTime exactly a day later", function()
      assert.same({ Accepted = 4, Duplicates = 0 }, U.ingest(app, a.token, {
        U.call { Duration = 0 }, U.call { Duration = 86400 }, U.call { CallSid = string.rep("é", 64) },
        U.call { Duration = json.null, EndTime = "2024-06-04T10:15:00Z" } }))
    end)
  end)

  describe("authorization", function()
    it("answers 401 for no token, a customer token and a bad token, storing nothing", function()
      local batch = { U.call() }
      assert.equal("missing Authorization token",
        P.failed(app.request("POST", "/v2/integrations/calls", { json = batch }), 401))
      assert.equal("this endpoint needs an app token", P.failed(U.post(app, c.token, batch), 401))
      assert.equal("invalid token", P.failed(U.post(app, "Bearer v1.abc.def", batch), 401))
      assert.equal(0, P.count(app, "calls WHERE customer_id = ?", c.id))
    end)

    it("answers 401 once the app is deleted; its calls stay", function()
      U.ingest(app, a.token, { U.call() })
      P.ok(app.request("DELETE", "/v2/integrations/app", { headers = P.auth(a.token) }))
      assert.equal("the token's app no longer exists", P.failed(U.post(app, a.token, { U.call() }), 401))
      assert.equal(1, P.count(app, "calls WHERE customer_id = ?", c.id))
    end)

    it("accepts 'Bearer <token>'", function()
      local res = app.request("POST", "/v2/integrations/calls", { json = { U.call() },
                              headers = P.auth("Bearer " .. a.token) })
      assert.same({ Accepted = 1, Duplicates = 0 }, P.ok(res))
    end)
  end)

  it("keeps the rollups equal to the raw rows and drops both with the customer", function()
    U.ingest(app, a.token, {
      U.call { StartTime = "2024-06-30T23:59:59.999Z", Duration = 61, AppUserId = "u1" },
      U.call { StartTime = "2024-07-01T00:00:00Z", Duration = 59, Direction = "outbound", Channel = "pstn",
              AppUserId = json.null },
      U.call { StartTime = "2024-07-01T12:00:00Z", Duration = 0, AppUserId = "u2" },
    })
    assert.same({
      { day = 19904, calls = 1, minutes = 2, inbound = 1, outbound = 0, sip = 1, pstn = 0 },
      { day = 19905, calls = 2, minutes = 1, inbound = 1, outbound = 1, sip = 1, pstn = 1 },
    }, app.db.query("SELECT day, calls, minutes, inbound, outbound, sip, pstn FROM usage_days WHERE customer_id = ? ORDER BY day", c.id))
    -- Hours: 19904 * 24 + 23 (the last of June 30), then hours 0 and 12 of July 1.
    assert.same({
      { hour = 477719, calls = 1, minutes = 2, inbound = 1, outbound = 0, sip = 1, pstn = 0 },
      { hour = 477720, calls = 1, minutes = 1, inbound = 0, outbound = 1, sip = 0, pstn = 1 },
      { hour = 477732, calls = 1, minutes = 0, inbound = 1, outbound = 0, sip = 1, pstn = 0 },
    }, app.db.query("SELECT hour, calls, minutes, inbound, outbound, sip, pstn FROM usage_hours WHERE customer_id = ? ORDER BY hour", c.id))
    assert.same({ { day = 19904, hours = 1 << 23 }, { day = 19905, hours = 1 | (1 << 12) } },
      app.db.query("SELECT day, hours FROM usage_app_days WHERE customer_id = ? ORDER BY day", c.id))
    assert.same({ { day = 19904, app_user_id = "u1", hours = 1 << 23 }, { day = 19905, app_user_id = "u2", hours = 1 << 12 } },
      app.db.query("SELECT day, app_user_id, hours FROM usage_user_days WHERE customer_id = ? ORDER BY day", c.id))
    -- June 30 is day 30 of month 24293 (bit 29), July 1 day 1 of 24294; both in 2024 (bits 5, 6).
    assert.same({ { month = 24293, app_user_id = "u1", days = 1 << 29 }, { month = 24294, app_user_id = "u2", days = 1 } },
      app.db.query("SELECT month, app_user_id, days FROM usage_user_months WHERE customer_id = ? ORDER BY month", c.id))
    assert.same({ { month = 24293, days = 1 << 29 }, { month = 24294, days = 1 } },
      app.db.query("SELECT month, days FROM usage_app_months WHERE customer_id = ? ORDER BY month", c.id))
    assert.same({ { year = 2024, months = (1 << 5) | (1 << 6) } },
      app.db.query("SELECT year, months FROM usage_app_years WHERE customer_id = ?", c.id))
    assert.same({ { app_user_id = "u1", months = 1 << 5 }, { app_user_id = "u2", months = 1 << 6 } },
      app.db.query("SELECT app_user_id, months FROM usage_user_years WHERE customer_id = ? ORDER BY app_user_id", c.id))
    -- A later batch ORs into the masks.
    U.ingest(app, a.token, { U.call { StartTime = "2024-06-01T08:00:00Z", AppUserId = "u1" } })
    assert.equal((1 << 29) | 1, app.db.one("SELECT days FROM usage_user_months WHERE customer_id = ? AND month = 24293", c.id).days)
    U.ingest(app, a.token, { U.call { StartTime = "2024-07-01T03:00:00Z", AppUserId = "u2" },
                             U.call { StartTime = "2024-07-01T12:30:00Z", AppUserId = "u2", Duration = 120 } })
    assert.equal((1 << 3) | (1 << 12), app.db.one("SELECT hours FROM usage_user_days WHERE customer_id = ? AND day = 19905", c.id).hours)
    assert.same({ calls = 2, minutes = 2 },
      app.db.one("SELECT calls, minutes FROM usage_hours WHERE customer_id = ? AND hour = 477732", c.id))
    P.ok(app.request("DELETE", "/v2/integrations/customer", { headers = P.auth(c.token) }))
    for _, t in ipairs { "calls", "usage_days", "usage_app_months", "usage_user_months", "usage_app_years", "usage_user_years",
                         "usage_hours", "usage_app_days", "usage_user_days" } do
      assert.equal(0, P.count(app, t .. " WHERE customer_id = ?", c.id), t)
    end
  end)
end)

-- schema/0007_callsid_unique.sql on a database made before it.
describe("migration 0007_callsid_unique.sql (an SQLite database made before it) #sqlite", function()
  local dir
  setup(function()
    dir = testing.mkdtemp()
    -- The migrations before 0007, as a database made by the previous release has them.
    assert(os.execute("mkdir -p " .. dir .. "/schema && cp schema/000[1-6]_*.sql " .. dir .. "/schema/"))
  end)
  teardown(function()
    testing.close_db()
    testing.rmtree(dir)
  end)

  local function old_db(path, sids)
    testing.open_db(path, dir .. "/schema")
    local db = require "engine.db"
    db.exec([[INSERT INTO customers (id, name, email, secret_sealed, created_at, updated_at)
              VALUES ('c1', 'n', 'e@x.io', x'00', 'x', 'x')]])
    for i, sid in ipairs(sids) do
      db.exec([[INSERT INTO calls (customer_id, call_sid, app_id, direction, channel, start_ms, duration_s, created_at)
                VALUES ('c1', ?, 'a1', 'inbound', 'sip', ?, 1, 'x')]], sid, i)
    end
    return db
  end

  it("checks a database without duplicates, then 0008 moves its keys to the leveled table, keeping its rows", function()
    local db = old_db(dir .. "/clean.db", { "s1", "s2" })
    assert.equal(2, testing.open_db(dir .. "/clean.db", "schema"))
    db = require "engine.db"
    -- 0007's unique index was built (it found no duplicate), then 0008 replaced it.
    assert.equal(0, db.one("SELECT count(*) AS n FROM sqlite_master WHERE name = 'calls_customer_sid'").n)
    assert.same({ { call_sid = "s1" }, { call_sid = "s2" } }, db.query("SELECT call_sid FROM calls ORDER BY seq"))
    assert.same({ { lvl = 3, ok = 1 }, { lvl = 3, ok = 1 } },
                db.query([[SELECT s.lvl, s.h = engine_key64(c.customer_id, c.call_sid) AS ok
                             FROM calls_sid s JOIN calls c ON c.seq = s.seq ORDER BY s.seq]]))
    assert.equal(0, db.exec([[INSERT INTO calls (customer_id, call_sid, app_id, direction, channel, start_ms,
                                                 duration_s, created_at)
                              VALUES ('c1', 's2', 'a1', 'inbound', 'sip', 9, 1, 'x')]]))
    assert.equal(2, db.one("SELECT count(*) AS n FROM calls").n)
  end)

  it("stops on a database holding a CallSid twice for a customer, and changes nothing", function()
    old_db(dir .. "/dup.db", { "s1", "dup", "dup" })
    local ok, err = pcall(testing.open_db, dir .. "/dup.db", "schema")
    assert.is_false(ok)
    assert.matches("migration schema/0007_callsid_unique.sql:18 failed: UNIQUE constraint failed: calls.customer_id, calls.call_sid",
                   tostring(err), 1, true)
    assert.equal(0, testing.open_db(dir .. "/dup.db", dir .. "/schema"))
    local db = require "engine.db"
    assert.equal(0, db.one("SELECT count(*) AS n FROM sqlite_master WHERE name = 'calls_customer_sid'").n)
    assert.equal(3, db.one("SELECT count(*) AS n FROM calls").n)
    assert.equal(6, db.one("SELECT max(id) AS n FROM _migrations").n)
  end)
end)
