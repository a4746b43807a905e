-- allowlist.lua - an overlay on the default scripts: customer sign-up limited to allowed
-- email domains.
--
--   apiengine serve --scripts scripts:examples/admin-allowlist/scripts
--
-- POST /v2/integrations/customer succeeds when the request carries the admin key (setting
-- admin_key; checked by the default handler, 401 when wrong) or, without any credential,
-- when its Email is in one of the allowed_email_domains (a list, or
-- APIENGINE_ALLOWED_EMAIL_DOMAINS="acme.io,example.com"). Other domains get 403.
local route = require "engine.route"
local platform = require "lib.platform"
local settings = require "lib.settings"
local auth = require "lib.auth"

local CUSTOMER = "/v2/integrations/customer"
local create = route.handler("POST", CUSTOMER) -- the default handler, wrapped below

local function allowed_domains()
  local set = {}
  for _, d in ipairs(settings.list("allowed_email_domains")) do set[d:lower()] = true end
  return set
end

route.replace("POST", CUSTOMER, function(req)
  if auth.credential(req) then return create(req) end -- the admin key path
  local body = req:json()
  local email = type(body) == "table" and type(body.Email) == "string" and body.Email:match("^%s*(.-)%s*$")
  local domain = email and email:match("^[^@%s]+@([^@%s]+%.[^@%s]+)$")
  if domain and not allowed_domains()[domain:lower()] then
    return platform.fail(req, 403, "Email: customers from " .. domain:lower() .. " cannot sign up here")
  end
  -- An allowed domain (or a body the default handler will reject with 400): create the
  -- customer as the admin would, so the default admin-key check lets it through.
  req.headers.authorization = settings.string("admin_key")
  return create(req)
end)
