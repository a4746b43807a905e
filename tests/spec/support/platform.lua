-- tests/spec/support/platform.lua - helpers for the default scripts' specs.
--   package.path = "tests/spec/?.lua;" .. package.path
--   local P = require "support.platform"
--   local c = P.customer(app)              -- {id, secret, token, data}: created, token issued
--   local a = P.app(app, c.token)          -- {id, secret, token, data}
--   P.auth(token) -> headers table; P.ok(res) / P.failed(res, status) assert envelopes
--   local writes = P.write_counter(app)    -- in a lazy_setup after spec.app; writes() -> rows written so far
local assert = require "luassert"
local M = {}

M.APP_BODY = {
  AppName = "Desk",
  ExotelAccountSid = "acme1",
  ExotelApiKey = "key-123",
  ExotelApiToken = "tok-456",
  ExotelDomain = "mumbai",
  IsActive = true,
}

function M.auth(token, extra)
  local h = { Authorization = token }
  for k, v in pairs(extra or {}) do h[k] = v end
  return h
end

function M.copy(t, changes)
  local out = {}
  for k, v in pairs(t) do out[k] = v end
  for k, v in pairs(changes or {}) do out[k] = v end
  return out
end

-- Asserts a platform success envelope with the request id echoed; returns Data.
function M.ok(res, request_id)
  assert.equal(200, res.status, res.body)
  assert.is_table(res.json, res.body)
  assert.equal("Success", res.json.Status)
  assert.equal(200, res.json.Code)
  assert.equal("", res.json.Error)
  assert.equal(res.headers["x-request-id"], res.json.RequestId)
  if request_id then assert.equal(request_id, res.json.RequestId) end
  assert.equal("application/json", res.headers["content-type"])
  return res.json.Data
end

-- Asserts a platform failure envelope; returns Error.
function M.failed(res, status, request_id)
  local json = require "engine.json"
  assert.equal(status, res.status, res.body)
  assert.is_table(res.json, res.body)
  assert.equal("Failed", res.json.Status)
  assert.equal(status, res.json.Code)
  assert.equal(json.null, res.json.Data)
  assert.equal(res.headers["x-request-id"], res.json.RequestId)
  if request_id then assert.equal(request_id, res.json.RequestId) end
  assert.equal("application/json", res.headers["content-type"])
  assert.is_string(res.json.Error)
  assert.is_true(#res.json.Error > 0)
  return res.json.Error
end

-- Asserts a REST failure envelope with that code; returns the message.
function M.rest_failed(res, status, code)
  assert.equal(status, res.status, res.body)
  assert.is_table(res.json, res.body)
  assert.is_false(res.json.success)
  assert.equal(code, res.json.error.code)
  assert.equal(res.headers["x-request-id"], res.json.request_id)
  return res.json.error.message
end

function M.token(app, id, secret, entity)
  local res = app.request("POST", "/v2/integrations/token", { json = { Id = id, Secret = secret, Entity = entity } })
  return M.ok(res)
end

-- Creates a customer and issues its token. body overrides fields; headers e.g. the admin key.
function M.customer(app, body, headers)
  local res = app.request("POST", "/v2/integrations/customer", {
    json = M.copy({ CustomerName = "Acme", Email = "ops@acme.io" }, body), headers = headers })
  local data = M.ok(res)
  return { id = data.CustomerID, secret = data.CustomerSecret, data = data,
           token = M.token(app, data.CustomerID, data.CustomerSecret, "customer") }
end

-- Registers an app under a customer token and issues its token.
function M.app(app, customer_token, body)
  local res = app.request("POST", "/v2/integrations/app", { json = M.copy(M.APP_BODY, body), headers = M.auth(customer_token) })
  local data = M.ok(res)
  return { id = data.AppID, secret = data.AppSecret, data = data,
           token = M.token(app, data.AppID, data.AppSecret, "app") }
end

-- Inserts users directly (section 9's endpoints are not these scripts' yet).
function M.add_user(app, app_id, app_user_id)
  app.db.exec([[INSERT INTO users (app_id, app_user_id, app_username, email, exotel_account_sid, exotel_user_name,
                                   virtual_number, created_at, updated_at)
                VALUES (?, ?, 'Agent Smith', 'a@b.co', 'acme1', 'Agent Smith', '+911234', 'x', 'x')]], app_id, app_user_id)
end

-- Inserts a call record directly (section 6 is not these scripts' yet).
function M.add_call(app, customer_id, app_id, sid)
  app.db.exec([[INSERT INTO calls (customer_id, call_sid, app_id, direction, channel, start_ms, duration_s, created_at)
                VALUES (?, ?, ?, 'inbound', 'sip', 0, 60, 'x')]], customer_id, sid, app_id)
end

function M.count(app, sql, ...)
  return app.db.one("SELECT count(*) AS n FROM " .. sql, ...).n
end

-- A function that answers how many rows have been written to the app's database so far, for
-- "this costs no write" checks. SQLite: total_changes() of the connection the in-process handlers
-- share with the spec. PostgreSQL, where each pooled connection keeps its own count: a row trigger
-- on every table bumps a sequence (sequences ignore rollback, as total_changes() does). Call it in
-- a lazy_setup registered after spec.app (the database it instruments is the one spec.app made).
function M.write_counter(app)
  local db = app.db
  if not (db.backend and db.backend() == "postgresql") then
    return function() return db.one("SELECT total_changes() AS n").n end
  end
  db.exec("CREATE SEQUENCE spec_writes")
  db.exec([[CREATE FUNCTION spec_count_write() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN PERFORM nextval('spec_writes'); RETURN NULL; END $$]])
  local tables = db.query("SELECT tablename FROM pg_tables WHERE schemaname = current_schema()")
  assert.is_true(#tables > 0)
  for _, t in ipairs(tables) do
    db.exec(string.format([[CREATE TRIGGER spec_count_write AFTER INSERT OR UPDATE OR DELETE ON "%s"
                            FOR EACH ROW EXECUTE FUNCTION spec_count_write()]], t.tablename))
  end
  return function() return db.one("SELECT CASE WHEN is_called THEN last_value ELSE 0 END AS n FROM spec_writes").n end
end

return M
