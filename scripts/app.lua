-- app.lua - /v2/integrations/app, platform envelope (API.md section 7).
--   POST    (customer token) register an app; the secrets are returned here only
--   GET     (app token) that app; (customer token) the customer's apps, oldest first
--   DELETE  (app token) the app, its settings and users; its call records stay
local route = require "engine.route"
local db = require "engine.db"
local crypto = require "engine.crypto"
local json = require "engine.json"
local time = require "engine.time"
local platform = require "lib.platform"
local validate = require "lib.validate"
local auth = require "lib.auth"
local plans = require "lib.plans"

-- The Exotel credentials are sealed with the app id as associated data (`apiengine rekey`).
crypto.sealed_column("apps", "exotel_api_key_sealed", "id")
crypto.sealed_column("apps", "exotel_api_token_sealed", "id")

local DOMAINS = { "mumbai", "singapore" }

-- The app object without secrets.
local function app_object(row)
  return {
    AppID = row.id,
    CustomerID = row.customer_id,
    AppName = row.name,
    ExotelAccountSid = row.exotel_account_sid,
    ExotelDomain = row.exotel_domain,
    IsActive = row.is_active == 1,
    CreatedAt = row.created_at,
    UpdatedAt = row.updated_at,
  }
end

route.post("/v2/integrations/app", function(req)
  local customer, status, err = auth.require_token(req, "customer")
  if not customer then return platform.fail(req, status, err) end

  local body
  body, err = validate.body(req, "object")
  if not body then return platform.fail(req, 400, err) end
  local f = {}
  for _, check in ipairs({
    { "AppName", validate.string, { max = 200 } },
    { "ExotelAccountSid", validate.string, { max = 200 } },
    { "ExotelApiKey", validate.string, { raw = true } },
    { "ExotelApiToken", validate.string, { raw = true } },
    { "ExotelDomain", validate.one_of, DOMAINS },
    { "IsActive", validate.boolean },
  }) do
    local v, e = check[2](body, check[1], check[3])
    if v == nil then return platform.fail(req, 400, e) end
    f[check[1]] = v
  end

  local plan = plans.of(customer)
  local id, secret = crypto.uuid4(), crypto.uuid4()
  local now = time.format(time.now())
  -- Count and insert in one transaction (BEGIN IMMEDIATE on SQLite, SERIALIZABLE on PostgreSQL): two
  -- workers, or two nodes, cannot both take the last slot.
  local created = db.tx(function()
    local n = db.one("SELECT count(*) AS n FROM apps WHERE customer_id = ?", customer.id).n
    if n >= plan.max_apps then return false end
    db.exec([[INSERT INTO apps (id, customer_id, name, secret_hash, exotel_account_sid, exotel_api_key_sealed,
                                exotel_api_token_sealed, exotel_domain, is_active, created_at, updated_at)
              VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)]],
      id, customer.id, f.AppName, auth.verifier(secret), f.ExotelAccountSid, crypto.seal(f.ExotelApiKey, id),
      crypto.seal(f.ExotelApiToken, id), f.ExotelDomain, f.IsActive, now, now)
    return true
  end)
  if not created then
    return platform.fail(req, 403, string.format("plan limit reached: max_apps is %d for the %s plan",
      plan.max_apps, plan.type))
  end

  local data = app_object(db.one("SELECT * FROM apps WHERE id = ?", id))
  data.AppSecret = secret
  data.ExotelApiKey = f.ExotelApiKey
  data.ExotelApiToken = f.ExotelApiToken
  return platform.ok(req, data)
end)

route.get("/v2/integrations/app", function(req)
  -- Either type of token; an `entity` query parameter must match it (auth.claims checks).
  local entity, claims_or_status, err = auth.require_token(req)
  if not entity then return platform.fail(req, claims_or_status, err) end
  if claims_or_status.typ == "app" then
    return platform.ok(req, app_object(entity))
  end
  local list = json.array()
  for _, row in ipairs(db.query("SELECT * FROM apps WHERE customer_id = ? ORDER BY seq", entity.id)) do
    list[#list + 1] = app_object(row)
  end
  return platform.ok(req, list)
end)

route.delete("/v2/integrations/app", function(req)
  local app, status, err = auth.require_token(req, "app")
  if not app then return platform.fail(req, status, err) end
  -- Settings and users go with the app (ON DELETE CASCADE); calls keep app_id as plain text.
  db.tx(function()
    db.exec("DELETE FROM apps WHERE id = ?", app.id)
  end)
  return platform.ok(req, "Deleted Successfully")
end)
