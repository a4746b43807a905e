-- The default schema on both backends: schema/NNNN_name.pg.sql (PostgreSQL's variants) against
-- schema/NNNN_name.sql (SQLite's). Applying 0001..0008 must give the same tables, columns,
-- unique keys and indexes, and a database that already holds rows when 0002..0008 arrive must
-- come out of them with the same rows on both: the data moves of 0003 (users), 0004 (calls in a
-- new order) and 0005 (hourly rollups computed from the stored calls, calls before 1970
-- included), and the customer-delete triggers of 0002 and 0005.
-- It starts its own throwaway PostgreSQL (tests/support/pg.sh through support/proc.lua, stopped
-- in teardown). Tagged #sqlite: it needs testing.open_db to open SQLite files, which it does not
-- in the pass that sets APIENGINE_TEST_DB; the plain pass runs it, PostgreSQL side included.
local spec = require "engine.spec"
local testing = require "engine.testing"
local json_null = require("engine.json").null

package.path = "tests/spec/?.lua;" .. package.path
local proc = require "support.proc"

local KEY = string.rep("3c", 32) -- `apiengine migrate` on PostgreSQL wants the nodes' key
local BLOB = "\255\254sealed" -- not UTF-8: bound as a blob (bytea) on PostgreSQL

-- A schema directory holding only migration 0001 (both variants): a database made by the
-- first release, before 0002..0008.
local function first_release()
  local dir = proc.tmpdir()
  assert(os.execute("cp schema/0001_init.sql schema/0001_init.pg.sql " .. dir .. "/"))
  return dir
end

-- Rows as 0001 stores them: two customers, an app, users (one deleted again), call records
-- out of CallSid order, one with no AppUserId, two before 1970, and a token counter.
local function fill(db)
  for _, c in ipairs({ "c1", "c2" }) do
    db.exec([[INSERT INTO customers (id, name, email, secret_sealed, created_at, updated_at)
              VALUES (?, 'n', 'e@x.io', ?, 't', 't')]], c, BLOB)
  end
  db.exec([[INSERT INTO apps (id, customer_id, name, secret_hash, exotel_account_sid, exotel_api_key_sealed,
                              exotel_api_token_sealed, exotel_domain, is_active, created_at, updated_at)
            VALUES ('a1', 'c1', 'A', 'h', 's', ?, ?, 'mumbai', 1, 't', 't')]], BLOB, BLOB)
  for _, u in ipairs({ { "u1", json_null, 0 }, { "u2", "+919876543210", 1 }, { "u3", json_null, 0 } }) do
    db.exec([[INSERT INTO users (app_id, app_user_id, app_username, email, exotel_account_sid, exotel_user_name,
                                 virtual_number, agent_number, phone_enabled, created_at, updated_at)
              VALUES ('a1', ?, 'n', 'e', 's', 'n', 'v', ?, ?, 't', 't')]], u[1], u[2], u[3])
  end
  db.exec("DELETE FROM users WHERE app_user_id = 'u3'")
  for _, r in ipairs({
    { "c1", "sid-b", "a1", "u1", "inbound", "sip", 1700000000000, 61 },
    { "c1", "sid-a", "a1", "u1", "outbound", "pstn", 1700000000000, 0 },
    { "c1", "sid-c", "a1", json_null, "outbound", "sip", 1700003600000, 120 },
    { "c1", "sid-d", "a2", "u9", "inbound", "pstn", -1, 59 },
    { "c1", "sid-e", "a2", "u9", "inbound", "pstn", -3600001, 86400 },
    { "c1", "sid-f", "a1", "u1", "inbound", "sip", 1699999999999, 1 },
    { "c2", "sid-a", "a1", "u2", "inbound", "sip", 1700000000001, 5 },
  }) do
    db.exec([[INSERT INTO calls (customer_id, call_sid, app_id, app_user_id, direction, channel, start_ms, duration_s,
                                 created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 't')]], table.unpack(r, 1, 8))
  end
  db.exec("INSERT INTO token_failures (id_hash, window_start, failures) VALUES ('h', 5, 3)")
end

-- What 0002..0008 left, as plain values in a stable order.
local function contents(db)
  local function rows(sql)
    local out = {}
    for i, r in ipairs(db.query(sql)) do
      local t = {}
      for k, v in pairs(r) do t[k] = v end
      out[i] = t
    end
    return out
  end
  return {
    customers = rows("SELECT seq, id, secret_sealed FROM customers ORDER BY seq"),
    users = rows([[SELECT seq, app_user_id, agent_number, phone_enabled, sip_enabled, sip_secret_sealed
                   FROM users ORDER BY seq]]),
    calls = rows([[SELECT seq, customer_id, call_sid, app_id, app_user_id, direction, channel, start_ms, duration_s
                   FROM calls ORDER BY seq]]),
    usage_hours = rows("SELECT * FROM usage_hours ORDER BY customer_id, hour"),
    usage_app_days = rows("SELECT * FROM usage_app_days ORDER BY customer_id, day, app_id"),
    usage_user_days = rows("SELECT * FROM usage_user_days ORDER BY customer_id, day, app_id, app_user_id"),
    token_failures = rows("SELECT * FROM token_failures"),
  }
end

-- After the migrations: new rows continue the numbering, the unique keys hold, and deleting a
-- customer takes its rollups along (the triggers).
local function after(db)
  local function n(sql) return db.one("SELECT count(*) AS n FROM " .. sql).n end
  db.exec([[INSERT INTO calls (customer_id, call_sid, app_id, direction, channel, start_ms, duration_s, created_at)
            VALUES ('c2', 'sid-z', 'a1', 'inbound', 'sip', 5, 5, 't')]])
  local dup = db.exec([[INSERT INTO calls (customer_id, call_sid, app_id, direction, channel, start_ms, duration_s,
                        created_at) VALUES ('c2', 'sid-z', 'a1', 'inbound', 'sip', 6, 6, 't')
                        ON CONFLICT DO NOTHING]])
  local seq = db.one("SELECT seq FROM calls WHERE call_sid = 'sid-z'").seq
  for _, t in ipairs({ "usage_days", "usage_hours" }) do
    db.exec("INSERT INTO " .. t .. " VALUES ('c2', 1, 1, 1, 1, 0, 1, 0)")
  end
  for _, t in ipairs({ "usage_app_months", "usage_app_years", "usage_app_days" }) do
    db.exec("INSERT INTO " .. t .. " VALUES ('c2', 1, 'a1', 1)")
  end
  for _, t in ipairs({ "usage_user_months", "usage_user_years", "usage_user_days" }) do
    db.exec("INSERT INTO " .. t .. " VALUES ('c2', 1, 'a1', 'u2', 1)")
  end
  local ok, e = pcall(db.exec, [[INSERT INTO users (app_id, app_user_id, app_username, email, exotel_account_sid,
                                   exotel_user_name, virtual_number, phone_enabled, sip_enabled, created_at, updated_at)
                                 VALUES ('a1', 'u4', 'n', 'e', 's', 'n', 'v', 0, 0, 't', 't')]])
  local no_device = not ok and db.kind(e)
  db.exec("DELETE FROM customers WHERE id = 'c2'")
  local left = 0
  for _, t in ipairs({ "usage_days", "usage_hours", "usage_app_months", "usage_app_years", "usage_app_days",
                       "usage_user_months", "usage_user_years", "usage_user_days", "calls" }) do
    left = left + n(t .. " WHERE customer_id = 'c2'")
  end
  return { sid_z_seq = seq, duplicate_changes = dup, no_device = no_device, c2_rows_left = left,
           c1_calls = n("calls WHERE customer_id = 'c1'") }
end

-- Tables -> sorted column names, and the sorted column lists of their unique keys and indexes.
local function sqlite_shape(db)
  local shape = {}
  -- The leveled key tables (schema/0008) are SQLite's way of holding a unique key; PostgreSQL keeps
  -- the unique index instead (compared below).
  for _, t in ipairs(db.query([[SELECT name FROM sqlite_master WHERE type = 'table'
                                AND name NOT LIKE 'sqlite_%' AND name NOT LIKE '\_%' ESCAPE '\'
                                AND name NOT IN (SELECT tbl FROM _engine_levels)]])) do
    local cols, keys = {}, {}
    for _, c in ipairs(db.query("SELECT name, pk FROM pragma_table_info(?) ORDER BY name", t.name)) do
      cols[#cols + 1] = c.name
    end
    local pk = db.query("SELECT name FROM pragma_table_info(?) WHERE pk > 0 ORDER BY pk", t.name)
    if #pk > 0 then
      local names = {}
      for i, c in ipairs(pk) do names[i] = c.name end
      keys[#keys + 1] = "unique " .. table.concat(names, ",")
    end
    for _, ix in ipairs(db.query("SELECT name, \"unique\" AS u, origin FROM pragma_index_list(?)", t.name)) do
      if ix.origin ~= "pk" then
        local names = {}
        for _, c in ipairs(db.query("SELECT name FROM pragma_index_info(?) ORDER BY seqno", ix.name)) do
          names[#names + 1] = c.name
        end
        keys[#keys + 1] = (ix.u == 1 and "unique " or "index ") .. table.concat(names, ",")
      end
    end
    table.sort(keys)
    shape[t.name] = { columns = table.concat(cols, " "), keys = keys }
  end
  return shape
end

local function pg_shape(db)
  local shape = {}
  for _, t in ipairs(db.query([[SELECT tablename AS name FROM pg_tables WHERE schemaname = current_schema()
                                AND tablename NOT LIKE '\_%']])) do
    local cols, keys = {}, {}
    for _, c in ipairs(db.query([[SELECT column_name AS name FROM information_schema.columns
                                  WHERE table_schema = current_schema() AND table_name = ? ORDER BY column_name]],
                                t.name)) do
      cols[#cols + 1] = c.name
    end
    for _, ix in ipairs(db.query([[SELECT i.indexrelid AS id, i.indisunique AS u FROM pg_index i
                                   WHERE i.indrelid = CAST(? AS regclass)]], t.name)) do
      local names = {}
      for _, c in ipairs(db.query([[SELECT a.attname AS name FROM pg_index i, unnest(i.indkey) WITH ORDINALITY
                                      AS k(attnum, n), pg_attribute a
                                    WHERE i.indexrelid = CAST(? AS oid) AND a.attrelid = i.indrelid
                                      AND a.attnum = k.attnum ORDER BY k.n]], ix.id)) do
        names[#names + 1] = c.name
      end
      keys[#keys + 1] = ((ix.u == 1) and "unique " or "index ") .. table.concat(names, ",")
    end
    table.sort(keys)
    shape[t.name] = { columns = table.concat(cols, " "), keys = keys }
  end
  return shape
end

describe("the default schema on SQLite and on PostgreSQL (schema/*.pg.sql) #sqlite", function()
  spec.app { scripts = "scripts", schema = "schema" } -- the harness's in-process database
  teardown(function()
    testing.close_db()
    proc.pg_stop()
  end)
  after_each(function() proc.cleanup() end)

  it("gives the same tables, columns, unique keys and indexes", function()
    testing.open_db(proc.tmpdir() .. "/shape.db", "schema")
    local lite = sqlite_shape(require "engine.db")
    local ci = proc.pg_database()
    assert.equal(8, testing.open_pg(ci, "schema"))
    local db = require "engine.db"
    assert.equal("postgresql", db.backend())
    local pg = pg_shape(db)
    -- The one difference: calls' CallSid key, a unique index on PostgreSQL, the leveled key table
    -- calls_sid and its triggers on SQLite (checked in calls_spec).
    local pg_calls_keys = pg.calls.keys
    pg.calls = { columns = pg.calls.columns, keys = {} }
    for _, k in ipairs(pg_calls_keys) do
      if k ~= "unique customer_id,call_sid" then pg.calls.keys[#pg.calls.keys + 1] = k end
    end
    assert.same(lite, pg)
    pg.calls.keys = pg_calls_keys
    local tables = {}
    for t in pairs(pg) do tables[#tables + 1] = t end
    table.sort(tables)
    assert.same({ "app_settings", "apps", "calls", "customers", "token_failures", "token_id_failures", "token_trusted",
                  "usage_app_days", "usage_app_months", "usage_app_years", "usage_days", "usage_hours",
                  "usage_user_days", "usage_user_months", "usage_user_years", "users" }, tables)
    assert.same({ columns = "app_id app_user_id call_sid channel created_at customer_id direction duration_s seq start_ms",
                  keys = { "index customer_id,start_ms,duration_s,direction,channel,app_id,app_user_id",
                           "unique customer_id,call_sid", "unique seq" } }, pg.calls)
  end)

  it("carries a first-release database's rows through 0002..0008 as SQLite does", function()
    -- SQLite: 0001, the rows, then the rest on start-up
    local path = proc.tmpdir() .. "/old.db"
    assert.equal(1, testing.open_db(path, first_release()))
    fill(require "engine.db")
    assert.equal(7, testing.open_db(path, "schema"))
    local db = require "engine.db"
    assert.equal("sqlite", db.backend())
    local lite, lite_after = contents(db), after(db)

    -- PostgreSQL: the same, the rest applied by `apiengine migrate` as a node's start would
    local ci, name = proc.pg_database()
    local function migrate(schema)
      local code, out = proc.run({ testing.exe(), "migrate", "--db", ci, "--schema", schema, "--scripts", "scripts" },
        { APIENGINE_KEY = KEY })
      assert.equal(0, code, out)
    end
    assert.equal(0, testing.open_pg(ci, false))
    migrate(first_release())
    db = require "engine.db"
    fill(db)
    migrate("schema")
    assert.equal("8", proc.psql_value("SELECT count(*) FROM _migrations", name))
    assert.equal("0004_ingest.pg.sql", proc.psql_value("SELECT name FROM _migrations WHERE id = 4", name))
    local pg = contents(db)

    -- The same rows, numbered the same (no user was added after u3's delete: SQLite's 0001 would
    -- hand its seq out again, PostgreSQL's identity would not).
    assert.same(lite, pg)
    -- and the values are the ones 0004 and 0005 must compute
    local sids = {}
    for i, r in ipairs(pg.calls) do sids[i] = r.call_sid end
    assert.same({ "sid-e", "sid-d", "sid-f", "sid-a", "sid-b", "sid-c", "sid-a" }, sids)
    assert.same({ customer_id = "c1", hour = -2, calls = 1, minutes = 1440, inbound = 1, outbound = 0, sip = 0,
                  pstn = 1 }, pg.usage_hours[1])
    assert.same({ customer_id = "c1", day = -1, app_id = "a2", hours = (1 << 22) | (1 << 23) }, pg.usage_app_days[1])
    assert.same({}, pg.token_failures) -- 0006 starts the counters afresh
    assert.equal(BLOB, pg.customers[1].secret_sealed)

    local pg_after = after(db)
    -- New calls are numbered after the copied ones on both (0004.pg.sql moved the identity past
    -- them), a repeated CallSid is skipped, a user with no device is refused, and deleting c2
    -- takes its calls and every rollup row along.
    assert.same({ sid_z_seq = 8, duplicate_changes = 0, no_device = "check", c2_rows_left = 0, c1_calls = 6 },
      lite_after)
    assert.same(lite_after, pg_after)
  end)
end)
