-- customer.lua - /v2/integrations/customer, platform envelope (API.md section 3).
--   POST    create a customer (open, or behind the admin_key setting when it is set)
--   GET     the token's customer (with CustomerSecret, as the platform returns it)
--   DELETE  the token's customer and everything under it
local route = require "engine.route"
local db = require "engine.db"
local crypto = require "engine.crypto"
local json = require "engine.json"
local time = require "engine.time"
local platform = require "lib.platform"
local validate = require "lib.validate"
local auth = require "lib.auth"
local admin = require "lib.admin"
local plans = require "lib.plans"
local customers = require "lib.customers"

-- CustomerSecret is sealed with the customer id as associated data; `apiengine rekey` re-seals it.
crypto.sealed_column("customers", "secret_sealed", "id")

-- The customer object of API.md section 3; CustomerSecret is unsealed for the answer only.
local function customer_object(row)
  local secret = crypto.open(row.secret_sealed, row.id)
  if not secret then
    error("customer " .. row.id .. ": the stored secret does not open (wrong server key?)", 0)
  end
  return {
    CustomerID = row.id,
    CustomerSecret = secret,
    CustomerName = row.name,
    Email = row.email,
    CustomerSetting = json.null,
    CreatedAt = row.created_at,
    UpdatedAt = row.updated_at,
    DeletedAt = false,
  }
end

route.post("/v2/integrations/customer", function(req)
  local allowed, why = admin.check(req)
  if not allowed then return platform.fail(req, 401, why) end

  local body, err = validate.body(req, "object")
  if not body then return platform.fail(req, 400, err) end
  local name, email, plan_type, account_sid
  name, err = validate.string(body, "CustomerName", { max = 200 })
  if not name then return platform.fail(req, 400, err) end
  email, err = validate.email(body, "Email")
  if not email then return platform.fail(req, 400, err) end
  plan_type, err = validate.optional_string(body, "Plan")
  if err then return platform.fail(req, 400, err) end
  plan_type = plan_type or plans.default_type()
  if not plans.find(plan_type) then
    return platform.fail(req, 400, "Plan: unknown plan type '" .. plan_type .. "'")
  end
  account_sid, err = validate.optional_string(body, "AccountSid", { max = 200 })
  if err then return platform.fail(req, 400, err) end

  local id, secret = crypto.uuid4(), crypto.uuid4()
  local now = time.format(time.now())
  db.exec([[INSERT INTO customers (id, name, email, secret_sealed, plan, account_sid, created_at, updated_at)
            VALUES (?, ?, ?, ?, ?, ?, ?, ?)]],
    id, name, email, crypto.seal(secret, id), plan_type, account_sid, now, now)
  return platform.ok(req, customer_object(db.one("SELECT * FROM customers WHERE id = ?", id)))
end)

route.get("/v2/integrations/customer", function(req)
  local customer, status, err = auth.require_token(req, "customer")
  if not customer then return platform.fail(req, status, err) end
  return platform.ok(req, customer_object(customer))
end)

route.delete("/v2/integrations/customer", function(req)
  local customer, status, err = auth.require_token(req, "customer")
  if not customer then return platform.fail(req, status, err) end
  customers.delete(customer.id)
  return platform.ok(req, "Deleted Successfully")
end)
