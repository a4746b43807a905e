-- token.lua - POST /v2/integrations/token (API.md section 2).
-- Body {"Id","Secret","Entity":"customer"|"app"} -> Data = a signed token.
-- Brute-force guard: after token_max_failures failed attempts for one Id within
-- token_failure_window_seconds of the first, that Id answers 429 with Retry-After until the
-- window ends. Counters live in the token_failures table so every worker sees them.
-- Settings: token_max_failures (5), token_failure_window_seconds (300), token_ttl_days (90).
local route = require "engine.route"
local db = require "engine.db"
local crypto = require "engine.crypto"
local time = require "engine.time"
local platform = require "lib.platform"
local validate = require "lib.validate"
local settings = require "lib.settings"
local auth = require "lib.auth"

-- A verifier that matches nothing, so unknown Ids cost the same comparison as known ones.
local NO_VERIFIER = string.rep("0", 64)

-- Does the secret belong to that entity? Unknown id and wrong secret look the same.
local function secret_ok(entity, id, secret)
  if entity == "customer" then
    local row = db.one("SELECT secret_sealed FROM customers WHERE id = ?", id)
    local plain = row and crypto.open(row.secret_sealed, id)
    if not plain then
      auth.check_verifier(secret, NO_VERIFIER)
      return false
    end
    return crypto.equals(auth.verifier(secret), auth.verifier(plain))
  end
  local row = db.one("SELECT secret_hash FROM apps WHERE id = ?", id)
  return auth.check_verifier(secret, row and row.secret_hash or NO_VERIFIER) and row ~= nil
end

route.post("/v2/integrations/token", function(req)
  local body, err = validate.body(req, "object")
  if not body then return platform.fail(req, 400, err) end
  local id, secret, entity
  id, err = validate.string(body, "Id", { raw = true })
  if not id then return platform.fail(req, 400, err) end
  secret, err = validate.string(body, "Secret", { raw = true })
  if not secret then return platform.fail(req, 400, err) end
  entity, err = validate.string(body, "Entity")
  if not entity then return platform.fail(req, 400, err) end
  if not auth.TYPES[entity] then
    return platform.fail(req, 400, "Entity must be customer or app")
  end

  local max_failures = settings.number("token_max_failures", 5, 1, true)
  local window_ms = settings.number("token_failure_window_seconds", 300, 1) * 1000
  local key = crypto.to_hex(crypto.sha256(id))

  -- One immediate transaction: check the lock, verify, count the failure. Workers queue on
  -- the write lock, so no two of them can both slip past the limit.
  local outcome, retry_after = db.tx(function()
    local now = time.now()
    local row = db.one("SELECT window_start, failures FROM token_failures WHERE id_hash = ?", key)
    local live = row and now - row.window_start < window_ms
    if live and row.failures >= max_failures then
      return "locked", math.max(1, math.ceil((row.window_start + window_ms - now) / 1000))
    end
    if secret_ok(entity, id, secret) then
      if row then db.exec("DELETE FROM token_failures WHERE id_hash = ?", key) end
      return "ok"
    end
    if live then
      db.exec("UPDATE token_failures SET failures = failures + 1 WHERE id_hash = ?", key)
    else
      db.exec([[INSERT INTO token_failures (id_hash, window_start, failures) VALUES (?, ?, 1)
                ON CONFLICT (id_hash) DO UPDATE SET window_start = excluded.window_start, failures = 1]], key, now)
      -- Forget counters whose window is over, so the table stays small.
      db.exec("DELETE FROM token_failures WHERE window_start <= ?", now - window_ms)
    end
    return "failed"
  end)

  if outcome == "locked" then
    return platform.fail(req, 429, string.format(
      "too many failed attempts for this Id: retry after %d seconds", retry_after),
      { ["Retry-After"] = tostring(retry_after) })
  elseif outcome == "failed" then
    return platform.fail(req, 401, "invalid Id or Secret")
  end
  return platform.ok(req, auth.issue(entity, id))
end)
