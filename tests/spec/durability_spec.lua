-- POST /v2/integrations/calls over a real server: durability across kill -9 and idempotency
-- across workers (API.md section 6).
package.path = "tests/spec/?.lua;" .. package.path
local spec = require "engine.spec"
local json = require "engine.json"
local testing = require "engine.testing"
local P = require "support.platform"
local U = require "support.usage"

local BATCH = 250
local CONNS = 4

local function request_bytes(token, records)
  local body = json.encode(records)
  return "POST /v2/integrations/calls HTTP/1.1\r\nHost: t\r\nAuthorization: " .. token ..
         "\r\nContent-Type: application/json\r\nContent-Length: " .. #body .. "\r\n\r\n" .. body
end

local function batch_of(prefix, n)
  local records = {}
  for i = 1, n do
    records[i] = U.call { CallSid = prefix .. "-" .. i, AppUserId = "u" .. (i % 7),
                          StartTime = string.format("2024-06-%02dT%02d:%02d:00Z", i % 28 + 1, i % 24, i % 60),
                          Duration = i % 400 }
  end
  return records
end

-- One response from a keep-alive connection, or nil when the server went away mid-way.
local function read(c)
  local ok, res = pcall(spec.read_response, c)
  if ok then return res end
  return nil
end

describe("POST /v2/integrations/calls on a real server #sqlite", function()
  local dir = testing.mkdtemp()
  -- A 10 s budget: these tests are about what is stored, and under ASan on a busy 2-core machine a
  -- batch that waits for the other worker's (250-300 records each) came near the default 1 s.
  local opts = { scripts = "scripts", schema = "schema", workers = 2, manual = true, db = dir .. "/usage.db",
                 args = { "--budget-ms", "10000" } }
  local srv = spec.server(opts)
  local dirs = {}
  local function start()
    srv.start()
    dirs[#dirs + 1] = srv.dir
  end
  teardown(function()
    srv.stop()
    for _, d in ipairs(dirs) do testing.rmtree(d) end
    testing.rmtree(dir)
  end)

  local c, a

  it("keeps every acknowledged batch, whole, through kill -9 and restarts; integrity_check is ok", function()
    start()
    c = P.customer(srv)
    a = P.app(srv, c.token)
    local acked, sent = {}, {} -- prefix -> true
    local seed = 7
    for cycle = 1, 3 do
      local conns = {}
      for i = 1, CONNS do conns[i] = srv.connect(10) end
      local n = 0
      -- Rounds that complete, then one round cut short by kill -9 after a few milliseconds.
      for round = 1, 5 do
        local prefixes = {}
        for i = 1, CONNS do
          n = n + 1
          prefixes[i] = string.format("k%d-b%d", cycle, n)
          sent[prefixes[i]] = true
          assert(conns[i]:send(request_bytes(a.token, batch_of(prefixes[i], BATCH))))
        end
        local first = 1
        if round == 5 then
          -- Cycle 1 kills right after the first answer of the round (the others in flight),
          -- cycles 2 and 3 after a pseudo-random pause.
          if cycle == 1 then
            local res = read(conns[1])
            assert.equal(200, res.status, res.body)
            acked[prefixes[1]] = true
            first = 2
          else
            seed = (seed * 1103515245 + 12345) % 2147483648
            testing.sleep(seed % 40)
          end
          testing.kill(srv.pid, 9)
        end
        for i = first, CONNS do
          local res = read(conns[i])
          if res and res.status == 200 then
            assert.same({ Accepted = BATCH, Duplicates = 0 }, res.json.Data)
            acked[prefixes[i]] = true
          elseif res then
            error("unexpected answer: " .. res.status .. " " .. res.body)
          end
        end
      end
      for i = 1, CONNS do conns[i]:close() end
      assert.equal(137, srv.stop()) -- 128 + SIGKILL: it did not exit by itself
      start()
      -- After the restart every acknowledged batch is there: sending it again is all duplicates.
      for prefix in pairs(acked) do
        local data = U.ingest(srv, a.token, batch_of(prefix, BATCH))
        assert.same({ Accepted = 0, Duplicates = BATCH }, data, prefix)
      end
    end
    local count = 0
    for _ in pairs(acked) do count = count + 1 end
    assert.is_true(count >= 3 * 4 * CONNS, "acknowledged batches: " .. count)

    -- The server's view: usage equals the rows.
    local u = U.get(srv, c, "start_date=2024-06-01&end_date=2024-06-30").usage
    srv.stop()

    testing.open_db(opts.db)
    local db = require "engine.db"
    assert.same({ { integrity_check = "ok" } }, db.query("PRAGMA integrity_check"))
    local present = {}
    for _, row in ipairs(db.query("SELECT call_sid FROM calls WHERE customer_id = ?", c.id)) do
      present[row.call_sid] = true
    end
    -- Every batch is all there or not at all; every acknowledged one is all there.
    local stored = 0
    for prefix in pairs(sent) do
      local have = 0
      for i = 1, BATCH do if present[prefix .. "-" .. i] then have = have + 1 end end
      assert.is_true(have == 0 or have == BATCH, prefix .. " is partly stored: " .. have)
      if acked[prefix] then assert.equal(BATCH, have, prefix) end
      stored = stored + have
    end
    local nsent = 0
    for _ in pairs(sent) do nsent = nsent + 1 end
    io.stderr:write(string.format("[durability] sent %d batches, acknowledged %d, stored %d\n", nsent, count, stored // BATCH))
    assert.equal(stored, db.one("SELECT count(*) AS n FROM calls WHERE customer_id = ?", c.id).n)
    assert.same(U.brute(db, c.id, 1717200000000, 1719791999000), u)
    assert.equal(stored, u.total_calls)
    -- The rollups match the raw rows day by day.
    assert.same(
      db.query([[SELECT start_ms / 86400000 AS day, count(*) AS calls, sum((duration_s + 59) / 60) AS minutes
                 FROM calls WHERE customer_id = ? GROUP BY day ORDER BY day]], c.id),
      db.query("SELECT day, calls, minutes FROM usage_days WHERE customer_id = ? ORDER BY day", c.id))
    testing.close_db()
  end)

  it("stores a CallSid once when the same batch races on several connections and workers", function()
    start()
    local batch = batch_of("race", 200)
    local conns = {}
    for i = 1, 8 do conns[i] = srv.connect(10) end
    for i = 1, 8 do assert(conns[i]:send(request_bytes(a.token, batch))) end
    local accepted, duplicates = 0, 0
    for i = 1, 8 do
      local res = spec.read_response(conns[i])
      assert.equal(200, res.status, res.body)
      accepted = accepted + res.json.Data.Accepted
      duplicates = duplicates + res.json.Data.Duplicates
      conns[i]:close()
    end
    assert.equal(200, accepted)
    assert.equal(7 * 200, duplicates)
    local u = U.get(srv, c, "start_date=2024-06-01&end_date=2024-06-30").usage
    srv.stop()
    testing.open_db(opts.db)
    local db = require "engine.db"
    assert.equal(200, db.one("SELECT count(*) AS n FROM calls WHERE call_sid LIKE 'race-%'").n)
    assert.same(U.brute(db, c.id, 1717200000000, 1719791999000), u)
    testing.close_db()
  end)

  local function size(path)
    local f = io.open(path, "rb")
    if not f then return 0 end
    local n = f:seek("end")
    f:close()
    return n
  end

  it("copies the WAL into the database file while serving, not in the workers' commits, and exits with no WAL", function()
    start()
    local before = size(opts.db)
    -- A commit of a few dozen pages: SQLite's own checkpoint would wait for 1,000 in the WAL.
    assert.same({ Accepted = 200, Duplicates = 0 }, U.ingest(srv, a.token, batch_of("ckpt", 200)))
    assert.is_true(size(opts.db .. "-wal") > 0)
    local copied = false
    for _ = 1, 200 do -- the checkpointer runs every 100 ms; 2 s at most
      if size(opts.db) > before then
        copied = true
        break
      end
      testing.sleep(10)
    end
    assert.is_true(copied, "the database file did not grow while the server ran")
    assert.equal(0, srv.stop())
    assert.equal(0, size(opts.db .. "-wal")) -- the final checkpoint emptied it (or the last close removed it)
    assert.matches("db: checkpointer stopped: [1-9]%d* passive checkpoints", srv.read_log())
  end)

  -- The leveled CallSid keys (schema/0008) folded by the checkpointer thread while four
  -- connections ingest, then kill -9: small limits so that folds run all the time.
  it("keeps CallSids exact while the checkpointer folds their keys, through kill -9", function()
    testing.open_db(opts.db)
    require("engine.db").exec("UPDATE _engine_levels SET l0 = 300, fanout = 2 WHERE tbl = 'calls_sid'")
    -- The keys of the tests above, folded here: the server then folds only this test's, a few
    -- chunks at a time, and no batch waits out its budget behind a first big fold (under ASan).
    testing.fold_levels()
    testing.close_db()
    start()
    local acked = {}
    local conns = {}
    for i = 1, CONNS do conns[i] = srv.connect(10) end
    for round = 1, 6 do
      local prefixes = {}
      for i = 1, CONNS do
        prefixes[i] = string.format("fold-r%d-c%d", round, i)
        -- each batch also repeats the batch before it on this connection: duplicates across levels
        local records = batch_of(prefixes[i], BATCH)
        if round > 1 then
          for _, r in ipairs(batch_of(string.format("fold-r%d-c%d", round - 1, i), 50)) do records[#records + 1] = r end
        end
        assert(conns[i]:send(request_bytes(a.token, records)))
      end
      if round == 6 then
        testing.sleep(15)
        testing.kill(srv.pid, 9)
      end
      for i = 1, CONNS do
        local res = read(conns[i])
        if res and res.status == 200 then
          assert.same({ Accepted = BATCH, Duplicates = round > 1 and 50 or 0 }, res.json.Data)
          acked[prefixes[i]] = true
        elseif res then
          error("unexpected answer: " .. res.status .. " " .. res.body)
        end
      end
      testing.sleep(120) -- a checkpointer pass or so between rounds
    end
    for i = 1, CONNS do conns[i]:close() end
    assert.equal(137, srv.stop())
    -- The killed server's checkpointer folded keys down to the last level (nothing else folds).
    testing.open_db(opts.db)
    assert.equal(3, require("engine.db").one("SELECT max(lvl) AS l FROM calls_sid").l)
    testing.close_db()
    start()
    for prefix in pairs(acked) do
      assert.same({ Accepted = 0, Duplicates = BATCH }, U.ingest(srv, a.token, batch_of(prefix, BATCH)), prefix)
    end
    assert.equal(0, srv.stop())

    testing.open_db(opts.db)
    local db = require "engine.db"
    assert.same({ { integrity_check = "ok" } }, db.query("PRAGMA integrity_check"))
    -- one key per stored call, the right one, and no key without its call
    assert.same({ n = db.one("SELECT count(*) AS n FROM calls").n, bad = 0 },
                db.one([[SELECT count(*) AS n, coalesce(sum(s.h <> engine_key64(c.customer_id, c.call_sid)), 0) AS bad
                           FROM calls_sid s JOIN calls c ON c.seq = s.seq]]))
    assert.equal(db.one("SELECT count(*) AS n FROM calls").n, db.one("SELECT count(*) AS n FROM calls_sid").n)
    assert.equal(0, db.one([[SELECT count(*) AS n FROM (SELECT customer_id, call_sid FROM calls
                             GROUP BY customer_id, call_sid HAVING count(*) > 1)]]).n)
    testing.close_db()
  end)

  it("logs a bad _engine_levels row once, not at every pass of the checkpointer", function()
    testing.open_db(opts.db)
    require("engine.db").exec("UPDATE _engine_levels SET fanout = 1 WHERE tbl = 'calls_sid'")
    testing.close_db()
    start()
    testing.sleep(600) -- six passes or so
    assert.equal(0, srv.stop())
    local _, n = srv.read_log():gsub('_engine_levels row for "calls_sid" is out of range', "")
    assert.equal(1, n)
    testing.open_db(opts.db)
    require("engine.db").exec("UPDATE _engine_levels SET fanout = 16 WHERE tbl = 'calls_sid'")
    testing.close_db()
  end)
end)
