-- lib/users.lua - users of an app and their devices (API.md section 9), shared by
-- usermapping.lua, users.lua and device.lua.
--   users.MAX_BATCH                          most users in one POST (and AppUserIds in one DELETE /users)
--   users.check_new(t)                       -> fields | nil, message   (one element of a POST batch)
--   users.check_update(t)                    -> changes | nil, message  (the body of PUT; AppUserId required)
--   users.object(app, row [, sip_secret])    -> the API's user object; SipSecret only when given
--   users.find(app_id, app_user_id)          -> row | nil
--   users.seal(app_id, app_user_id, secret)  -> sealed blob; users.open(row) -> SipSecret (raises if it does not open)
--   users.encode_cursor(seq) / users.decode_cursor(s) -> seq | nil   (LastEvaluatedValue, opaque to clients)
--   users.set_device(row, name, on)          -> the columns to update | nil, message   (the device rule)
local json = require "engine.json"
local crypto = require "engine.crypto"
local db = require "engine.db"
local validate = require "lib.validate"

local M = {}

M.MAX_BATCH = 100
M.MAX_ID_CHARS = 128       -- AppUserId
M.MAX_TEXT_CHARS = 200     -- names, ExotelAccountSid
M.NAME_PART_MIN = 3        -- "First Last": each part at least this many characters
M.PHONE_DIGITS_MIN = 6     -- VirtualNumber, AgentNumber: [+]digits, E.164 allows at most 15
M.PHONE_DIGITS_MAX = 15

-- "First Last": exactly two whitespace-separated parts of at least NAME_PART_MIN characters.
-- Returns "First Last" with one space.
local function person_name(t, field)
  local v, err = validate.string(t, field, { max = M.MAX_TEXT_CHARS })
  if not v then return nil, err end
  local parts = {}
  for p in v:gmatch("%S+") do parts[#parts + 1] = p end
  local ok = #parts == 2
  for _, p in ipairs(parts) do
    if (utf8.len(p) or #p) < M.NAME_PART_MIN then ok = false end
  end
  if not ok then
    return nil, string.format("%s must be \"First Last\": two words of at least %d characters each",
      field, M.NAME_PART_MIN)
  end
  return parts[1] .. " " .. parts[2]
end

local function phone(t, field)
  local v, err = validate.string(t, field)
  if not v then return nil, err end
  local digits = v:match("^%+?(%d+)$")
  if not digits or #digits < M.PHONE_DIGITS_MIN or #digits > M.PHONE_DIGITS_MAX then
    return nil, string.format("%s must be a phone number: %d to %d digits with an optional leading +",
      field, M.PHONE_DIGITS_MIN, M.PHONE_DIGITS_MAX)
  end
  return v
end

local function app_user_id(t, field)
  local v, err = validate.string(t, field, { raw = true, max = M.MAX_ID_CHARS })
  if not v then return nil, err end
  if v ~= validate.trim(v) then
    return nil, field .. " must not start or end with whitespace"
  end
  if v:find("%c") then
    return nil, field .. " must not contain control characters"
  end
  return v
end
M.check_id = app_user_id

local function text(t, field)
  return validate.string(t, field, { max = M.MAX_TEXT_CHARS })
end

-- field, column, check; the order is the order of the error messages.
local FIELDS = {
  { "AppUserId", "app_user_id", app_user_id },
  { "AppUsername", "app_username", person_name },
  { "Email", "email", validate.email },
  { "ExotelAccountSid", "exotel_account_sid", text },
  { "ExotelUserName", "exotel_user_name", person_name },
  { "VirtualNumber", "virtual_number", phone },
}

-- One element of a POST batch -> { column = value } (agent_number nil when not given).
function M.check_new(t)
  if type(t) ~= "table" or json.is_array(t) then
    return nil, "must be a JSON object"
  end
  local out = {}
  for _, f in ipairs(FIELDS) do
    local v, err = f[3](t, f[1])
    if v == nil then return nil, err end
    out[f[2]] = v
  end
  if t.AgentNumber ~= nil and t.AgentNumber ~= json.null then
    local v, err = phone(t, "AgentNumber")
    if not v then return nil, err end
    out.agent_number = v
  end
  return out
end

-- The body of PUT: AppUserId names the user, any other field present is changed.
-- -> app_user_id, { column = value } (agent_number = json.null clears it) | nil, message
function M.check_update(t)
  local id, err = app_user_id(t, "AppUserId")
  if not id then return nil, err end
  local out = {}
  for i = 2, #FIELDS do
    local f = FIELDS[i]
    if t[f[1]] == json.null then
      return nil, f[1] .. " cannot be null"
    elseif t[f[1]] ~= nil then
      local v
      v, err = f[3](t, f[1])
      if v == nil then return nil, err end
      out[f[2]] = v
    end
  end
  if t.AgentNumber == json.null then
    out.agent_number = json.null
  elseif t.AgentNumber ~= nil then
    local v
    v, err = phone(t, "AgentNumber")
    if not v then return nil, err end
    out.agent_number = v
  end
  for field, column in pairs({ IsActive = "is_active", OutboundActive = "outbound_active" }) do
    if t[field] ~= nil then
      local v
      v, err = validate.boolean(t, field)
      if v == nil then return nil, err end
      out[column] = v and 1 or 0
    end
  end
  if t.UserDetail == json.null then
    out.user_detail = json.null
  elseif t.UserDetail ~= nil then
    if type(t.UserDetail) ~= "table" or json.is_array(t.UserDetail) then
      return nil, "UserDetail must be a JSON object or null"
    end
    out.user_detail = json.encode(t.UserDetail)
  end
  return id, out
end

function M.find(app_id, id)
  return db.one("SELECT * FROM users WHERE app_id = ? AND app_user_id = ?", app_id, id)
end

local function aad(app_id, id)
  return "user:" .. app_id .. "/" .. id
end

function M.seal(app_id, id, secret)
  return crypto.seal(secret, aad(app_id, id))
end

-- `apiengine rekey` re-seals SipSecrets with the same associated data.
crypto.sealed_column("users", "sip_secret_sealed", function(row) return aad(row.app_id, row.app_user_id) end)

function M.open(row)
  local plain = crypto.open(row.sip_secret_sealed, aad(row.app_id, row.app_user_id))
  if not plain then
    error("user " .. row.app_user_id .. ": the stored SipSecret does not open (wrong server key?)", 0)
  end
  return plain
end

-- A JSON-null-aware column read.
local function v(x)
  if x == nil then return json.null end
  return x
end

function M.object(app, row, sip_secret)
  local detail = json.null
  if row.user_detail ~= json.null and row.user_detail ~= nil then
    detail = json.decode(row.user_detail)
  end
  local o = {
    CustomerId = app.customer_id,
    AppID = row.app_id,
    AppUserId = row.app_user_id,
    ExotelAccountSid = row.exotel_account_sid,
    ExotelUserId = v(row.exotel_user_id),
    AppUsername = row.app_username,
    ExotelUserName = row.exotel_user_name,
    AgentNumber = v(row.agent_number),
    ActiveDeviceId = v(row.active_device_id),
    PhoneDeviceID = v(row.phone_device_id),
    SipDeviceID = v(row.sip_device_id),
    VirtualNumber = row.virtual_number,
    Email = row.email,
    OutboundActive = row.outbound_active == 1,
    Role = row.role,
    SipId = v(row.sip_id),
    IsActive = row.is_active == 1,
    UserDetail = detail,
    CreatedAt = row.created_at,
    UpdatedAt = row.updated_at,
  }
  if sip_secret then o.SipSecret = sip_secret end
  return o
end

-- "sip:<name>": the Exotel user name in lower case letters and digits, then 8 random hex
-- digits so two users of the same name get different SIP ids.
function M.new_sip_id(exotel_user_name)
  local slug = exotel_user_name:lower():gsub("[^%w]", "")
  if slug == "" then slug = "user" end
  return "sip:" .. slug .. "-" .. crypto.to_hex(crypto.random_bytes(4))
end

-- LastEvaluatedValue: base64url of "seq:<seq>", opaque to clients. Only the strictly increasing,
-- never reused seq goes in, so a walk neither repeats nor skips a user that exists throughout.
local CURSOR_PREFIX = "seq:"

function M.encode_cursor(seq)
  return crypto.to_base64url(CURSOR_PREFIX .. string.format("%d", seq))
end

function M.decode_cursor(s)
  if type(s) ~= "string" or #s == 0 or #s > 64 then return nil end
  local raw = crypto.from_base64url(s)
  if not raw then return nil end
  local digits = raw:match("^" .. CURSOR_PREFIX .. "(%d+)$")
  if not digits or #digits > 18 then return nil end
  return math.tointeger(tonumber(digits))
end

local OTHER = { phone = "sip", sip = "phone" }

-- The device rule. row: the stored user; name: "phone" | "sip"; on: boolean.
-- -> { phone_enabled =, sip_enabled =, active_device_id = } | nil, message
function M.set_device(row, name, on)
  local enabled = { phone = row.phone_enabled == 1, sip = row.sip_enabled == 1 }
  local ids = { phone = row.phone_device_id, sip = row.sip_device_id }
  local active = row.active_device_id
  local other = OTHER[name]
  if on then
    if name == "phone" and (row.agent_number == nil or row.agent_number == json.null) then
      return nil, "DeviceName: the phone device needs an AgentNumber: this user has none"
    end
    enabled[name] = true
    active = ids[name]
  else
    if not enabled[other] then
      return nil, "DeviceStatus: cannot turn off the " .. name .. " device: it is the user's last enabled device"
    end
    enabled[name] = false
    if active == ids[name] then active = ids[other] end
  end
  return { phone_enabled = enabled.phone and 1 or 0, sip_enabled = enabled.sip and 1 or 0,
           active_device_id = active }
end

return M
