-- lib/customer_auth.lua - the token rules of the REST endpoints under
-- /v2/integrations/{customer_id} (API.md sections 4 and 5):
--   local c, status, code, message = customer_auth.owned(req)
--   401 unauthorized (no/bad/expired/wrong-type token), 403 forbidden (the path names another
--   customer), 404 customer_not_found (a valid token whose customer is gone).
local db = require "engine.db"
local auth = require "lib.auth"

local M = {}

function M.owned(req)
  local claims, err = auth.claims(req, "customer")
  if not claims then
    return nil, 401, "unauthorized", err
  end
  if claims.sub ~= req.params.customer_id then
    return nil, 403, "forbidden", "the token belongs to another customer"
  end
  local row = db.one("SELECT * FROM customers WHERE id = ?", claims.sub)
  if not row then
    return nil, 404, "customer_not_found", "customer not found"
  end
  return row
end

return M
