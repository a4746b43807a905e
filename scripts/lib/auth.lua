-- lib/auth.lua - tokens (API.md 1.2).
--   auth.issue(typ, id)                -> token string (signed, expires after token_ttl_days)
--   auth.claims(req [, typ])           -> claims {typ, sub, exp} | nil, message   (signature, expiry, type,
--                                         and the `entity` query parameter when given)
--   auth.require_token(req, typ)       -> entity row, claims | nil, 401, message   (+ the entity must exist)
-- `Authorization: <token>` and `Authorization: Bearer <token>` are both accepted.
-- Setting: token_ttl_days (default 90).
local crypto = require "engine.crypto"
local db = require "engine.db"
local settings = require "lib.settings"
local validate = require "lib.validate"

local M = {}

M.TYPES = { customer = true, app = true }

-- The bytes %s matches (C's isspace), by code.
local SPACE = { [9] = true, [10] = true, [11] = true, [12] = true, [13] = true, [32] = true }

-- The credential in the Authorization header (Bearer prefix removed), or nil. Runs on every
-- authenticated request: a header without surrounding space is not trimmed (trim copies the
-- whole token), and only a six-byte credential can be the bare word "bearer".
function M.credential(req)
  local h = req.headers["authorization"]
  if type(h) ~= "string" then return nil end
  if SPACE[h:byte(1)] or SPACE[h:byte(-1)] then h = validate.trim(h) end
  local rest = h:match("^[Bb][Ee][Aa][Rr][Ee][Rr]%s+(.+)$")
  if rest then h = rest end
  if h == "" or (#h == 6 and h:lower() == "bearer") then return nil end
  return h
end

function M.ttl_seconds()
  local days = settings.number("token_ttl_days", 90, 0)
  local secs = math.floor(days * 86400)
  if secs < 1 then
    error("setting token_ttl_days: must give at least one second", 0)
  end
  return secs
end

function M.issue(typ, id)
  assert(M.TYPES[typ], "unknown token type")
  return crypto.sign({ typ = typ, sub = id }, M.ttl_seconds())
end

local WHY = {
  malformed = "invalid token",
  bad_signature = "invalid token",
  expired = "token expired",
}

-- Verified claims of the request's token; typ (optional) must match.
function M.claims(req, typ)
  local token = M.credential(req)
  if not token then
    return nil, "missing Authorization token"
  end
  local claims, why = crypto.verify(token)
  if not claims then
    return nil, WHY[why] or "invalid token"
  end
  if type(claims.sub) ~= "string" or not M.TYPES[claims.typ] then
    return nil, "invalid token"
  end
  if typ and claims.typ ~= typ then
    return nil, "this endpoint needs " .. (typ == "app" and "an app" or "a customer") .. " token"
  end
  -- The platform's clients may name the token's type in the query (?entity=customer).
  local want = req.query and req.query.entity
  if want ~= nil and want ~= claims.typ then
    return nil, "entity=" .. tostring(want) .. " does not match the token (a " .. claims.typ .. " token)"
  end
  return claims
end

-- The entity a token names, or nil when it no longer exists.
function M.load(typ, id)
  if typ == "customer" then
    return db.one("SELECT * FROM customers WHERE id = ?", id)
  end
  return db.one("SELECT * FROM apps WHERE id = ?", id)
end

-- The entity behind a valid token of type typ (nil = either type), or nil, 401, message.
function M.require_token(req, typ)
  local claims, err = M.claims(req, typ)
  if not claims then
    return nil, 401, err
  end
  local entity = M.load(claims.typ, claims.sub)
  if not entity then
    return nil, 401, "the token's " .. claims.typ .. " no longer exists"
  end
  return entity, claims
end

-- Constant-time check of a presented secret against a stored hex sha256 verifier.
function M.verifier(secret)
  return crypto.to_hex(crypto.sha256(secret))
end

function M.check_verifier(secret, verifier)
  return crypto.equals(M.verifier(secret), verifier)
end

return M
