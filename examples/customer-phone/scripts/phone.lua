-- phone.lua - an overlay on the default scripts: an optional "Phone" on the customer
-- object (E.164: "+" and 7 to 15 digits), stored in customers.phone (migration
-- examples/customer-phone/schema/0100_customer_phone.sql), null when unset.
--
--   apiengine serve --scripts scripts:examples/customer-phone/scripts \
--                   --schema schema:examples/customer-phone/schema
local route = require "engine.route"
local db = require "engine.db"
local json = require "engine.json"
local platform = require "lib.platform"
local validate = require "lib.validate"

local CUSTOMER = "/v2/integrations/customer"
local create = route.handler("POST", CUSTOMER)
local read = route.handler("GET", CUSTOMER)

local function phone_of(id)
  local row = db.one("SELECT phone FROM customers WHERE id = ?", id)
  return row and row.phone or json.null
end

route.replace("POST", CUSTOMER, function(req)
  local body = req:json()
  local phone
  if type(body) == "table" then
    local err
    phone, err = validate.optional_string(body, "Phone")
    if err then return platform.fail(req, 400, err) end
    if phone and not (phone:match("^%+[1-9]%d+$") and #phone >= 8 and #phone <= 16) then
      return platform.fail(req, 400, "Phone must be in E.164 form: + and 7 to 15 digits")
    end
  end
  -- The default handler's INSERT and the phone UPDATE commit together.
  return db.tx(function()
    local status, answer, headers = create(req)
    if status == 200 then
      db.exec("UPDATE customers SET phone = ? WHERE id = ?", phone, answer.Data.CustomerID)
      answer.Data.Phone = phone or json.null
    end
    return status, answer, headers
  end)
end)

route.replace("GET", CUSTOMER, function(req)
  local status, answer, headers = read(req)
  if status == 200 then answer.Data.Phone = phone_of(answer.Data.CustomerID) end
  return status, answer, headers
end)
