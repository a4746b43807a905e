-- usermapping.lua - /v2/integrations/usermapping, platform envelope, app token (API.md section 9).
--   POST    a JSON array of 1 to 100 users, all or nothing; Data = the user objects with SipSecret
--   GET     ?user_id=ID -> that user; else ?last_value=CURSOR&page_size=N -> a page in creation order
--   PUT     one user object: changes the given fields of the user named by AppUserId, rotates SipSecret
--   DELETE  all the app's users
-- Settings: none of their own; the plan's max_users_per_app (lib.plans) caps POST.
local route = require "engine.route"
local db = require "engine.db"
local crypto = require "engine.crypto"
local json = require "engine.json"
local time = require "engine.time"
local platform = require "lib.platform"
local validate = require "lib.validate"
local auth = require "lib.auth"
local plans = require "lib.plans"
local users = require "lib.users"

local PATH = "/v2/integrations/usermapping"
local PAGE_SIZE_DEFAULT = 20
local PAGE_SIZE_MAX = 500

local INSERT = [[
  INSERT INTO users (app_id, app_user_id, app_username, email, exotel_account_sid, exotel_user_id,
                     exotel_user_name, virtual_number, agent_number, active_device_id, phone_device_id,
                     sip_device_id, phone_enabled, sip_enabled, outbound_active, role, sip_id,
                     sip_secret_sealed, is_active, user_detail, created_at, updated_at)
  VALUES (:app_id, :app_user_id, :app_username, :email, :exotel_account_sid, :exotel_user_id,
          :exotel_user_name, :virtual_number, :agent_number, :active_device_id, :phone_device_id,
          :sip_device_id, :phone_enabled, 1, 0, 'user', :sip_id,
          :sip_secret_sealed, 1, NULL, :now, :now)]]

route.post(PATH, function(req)
  local app, status, err = auth.require_token(req, "app")
  if not app then return platform.fail(req, status, err) end
  local body
  body, err = validate.batch(req, users.MAX_BATCH, "users")
  if not body then return platform.fail(req, 400, err) end

  local batch, seen = {}, {}
  for i, item in ipairs(body) do
    local f, e = users.check_new(item)
    if not f then return platform.fail(req, 400, string.format("user %d: %s", i - 1, e)) end
    if seen[f.app_user_id] then
      return platform.fail(req, 400, string.format("user %d: AppUserId '%s' appears twice in the batch (also user %d)",
        i - 1, f.app_user_id, seen[f.app_user_id] - 1))
    end
    seen[f.app_user_id] = i
    batch[i] = f
  end

  local customer = db.one("SELECT * FROM customers WHERE id = ?", app.customer_id)
  local plan = plans.of(customer)
  local now = time.format(time.now())
  local secrets = {}
  -- Check and insert in one transaction: no other worker or node can add users in between. On
  -- PostgreSQL db.tx may run this function again (serialization failure), so it leaves `batch`
  -- as it found it and writes each row from a fresh table.
  local outcome, detail = db.tx(function()
    for i, f in ipairs(batch) do
      if users.find(app.id, f.app_user_id) then
        return "duplicate", string.format("user %d: AppUserId '%s' already exists in this app", i - 1, f.app_user_id)
      end
    end
    local n = db.one("SELECT count(*) AS n FROM users WHERE app_id = ?", app.id).n
    if n + #batch > plan.max_users_per_app then
      return "limit", string.format("plan limit reached: max_users_per_app is %d for the %s plan (the app has %d, the batch adds %d)",
        plan.max_users_per_app, plan.type, n, #batch)
    end
    for i, f in ipairs(batch) do
      local secret = crypto.uuid4()
      secrets[i] = secret
      local row = {}
      for k, val in pairs(f) do row[k] = val end
      row.app_id = app.id
      row.exotel_user_id = crypto.uuid4()
      row.phone_device_id = crypto.uuid4()
      row.sip_device_id = crypto.uuid4()
      row.active_device_id = row.sip_device_id
      row.phone_enabled = f.agent_number and 1 or 0
      row.agent_number = f.agent_number or json.null
      row.sip_id = users.new_sip_id(f.exotel_user_name)
      row.sip_secret_sealed = users.seal(app.id, f.app_user_id, secret)
      row.now = now
      db.exec(INSERT, row)
    end
    return "ok"
  end)
  if outcome == "duplicate" then return platform.fail(req, 400, detail) end
  if outcome == "limit" then return platform.fail(req, 403, detail) end

  local out = json.array()
  for i, f in ipairs(batch) do
    out[i] = users.object(app, users.find(app.id, f.app_user_id), secrets[i])
  end
  return platform.ok(req, out)
end)

-- page_size: a whole number 1..PAGE_SIZE_MAX, default PAGE_SIZE_DEFAULT.
local function page_size(q)
  local s = q.page_size
  if s == nil then return PAGE_SIZE_DEFAULT end
  local n = s:match("^%d+$") and #s <= 6 and math.tointeger(tonumber(s))
  if not n or n < 1 or n > PAGE_SIZE_MAX then
    return nil, string.format("page_size must be a whole number from 1 to %d", PAGE_SIZE_MAX)
  end
  return n
end

route.get(PATH, function(req)
  local app, status, err = auth.require_token(req, "app")
  if not app then return platform.fail(req, status, err) end

  local user_id = req.query.user_id
  if user_id ~= nil then
    if user_id == "" then return platform.fail(req, 400, "user_id must not be empty") end
    local row = users.find(app.id, user_id)
    if not row then return platform.fail(req, 404, "user '" .. user_id .. "' not found") end
    return platform.ok(req, users.object(app, row))
  end

  local size
  size, err = page_size(req.query)
  if not size then return platform.fail(req, 400, err) end
  local after = 0
  local last = req.query.last_value
  if last ~= nil and last ~= "" then
    after = users.decode_cursor(last)
    if not after then
      return platform.fail(req, 400, "last_value is not a cursor this server gave out (use LastEvaluatedValue)")
    end
  end

  -- One row more than the page tells whether another page follows.
  local rows = db.query("SELECT * FROM users WHERE app_id = ? AND seq > ? ORDER BY seq LIMIT ?",
    app.id, after, size + 1)
  local list = json.array()
  for i = 1, math.min(#rows, size) do
    list[i] = users.object(app, rows[i])
  end
  local cursor = ""
  if #rows > size then cursor = users.encode_cursor(rows[size].seq) end
  return platform.ok(req, { Users = list, PageSize = size, LastEvaluatedValue = cursor })
end)

route.put(PATH, function(req)
  local app, status, err = auth.require_token(req, "app")
  if not app then return platform.fail(req, status, err) end
  local body
  body, err = validate.body(req, "object")
  if not body then return platform.fail(req, 400, err) end
  local id, changes = users.check_update(body)
  if not id then return platform.fail(req, 400, changes) end

  local secret = crypto.uuid4()
  local now = time.format(time.now())
  -- On PostgreSQL db.tx may run this function again (serialization failure): it works on a
  -- copy of `changes`, so a second run starts from the request's changes, not the first run's.
  local outcome, detail = db.tx(function()
    local row = users.find(app.id, id)
    if not row then return "missing" end
    local cols = {}
    for k, val in pairs(changes) do cols[k] = val end
    -- AgentNumber decides the phone device: a new number enables it (not active), as on
    -- creation; removing it disables it, which the device rule forbids for the last device.
    local had = row.agent_number ~= json.null
    if cols.agent_number == json.null and had and row.phone_enabled == 1 then
      local d, e = users.set_device(row, "phone", false)
      if not d then return "bad", "AgentNumber cannot be removed: " .. e:gsub("^DeviceStatus: ", "") end
      for k, val in pairs(d) do cols[k] = val end
    elseif cols.agent_number and cols.agent_number ~= json.null and not had then
      cols.phone_enabled = 1
    end
    cols.sip_secret_sealed = users.seal(app.id, id, secret)
    cols.updated_at = now
    local sets, params = {}, { seq = row.seq }
    for column, val in pairs(cols) do
      sets[#sets + 1] = column .. " = :" .. column
      params[column] = val
    end
    table.sort(sets)
    db.exec("UPDATE users SET " .. table.concat(sets, ", ") .. " WHERE seq = :seq", params)
    return "ok"
  end)
  if outcome == "missing" then return platform.fail(req, 404, "user '" .. id .. "' not found") end
  if outcome == "bad" then return platform.fail(req, 400, detail) end
  return platform.ok(req, users.object(app, users.find(app.id, id), secret))
end)

route.delete(PATH, function(req)
  local app, status, err = auth.require_token(req, "app")
  if not app then return platform.fail(req, status, err) end
  db.tx(function()
    db.exec("DELETE FROM users WHERE app_id = ?", app.id)
  end)
  return platform.ok(req, "Deleted Successfully")
end)
