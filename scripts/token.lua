-- token.lua - POST /v2/integrations/token (API.md section 2).
-- Body {"Id","Secret","Entity":"customer"|"app"} -> Data = a signed token.
--
-- Brute-force guard. A client is its address: req.peer without the port (lib/peer.lua). Every
-- count runs in a window of token_failure_window_seconds from the first failure it counts, and
-- starts again after it. An attempt is checked against, in this order:
--  1. The address: after token_address_max_failures failures from one address (any Ids,
--     known or not), it gets 429 for every Id until its window ends. This is what throttles
--     enumeration. Counted in the process's memory (engine.limit), shared by the workers.
--  2. The (Id, address) pair: after token_max_failures failures for one Id from one address,
--     that pair gets 429 with Retry-After until its window ends, the right Secret included.
--     Other addresses are not affected. A success clears the pair's count.
--  3. The Id, which slows down rather than locks: once it has had token_id_max_failures
--     failures from all addresses in its window, an attempt from an address that has not been
--     issued a token for this Id within token_ttl_days is checked only when
--     token_id_throttle_seconds have passed since the Id's last failure; earlier it gets 429
--     with Retry-After, without being checked or counted. So an attacker with any number of
--     addresses gets one guess per interval, while the client that has been getting tokens
--     from its address is never throttled and keeps getting them with the right Secret. A new
--     address waits its turn like the attacker: it cannot be told apart from one. A success
--     does not reset the Id's count, or the victim's own logins would reset the attacker's.
--     (Checking the Secret of every attempt and refusing only wrong ones would throttle
--     nothing: a checked attempt is a guess, and the answer tells the attacker whether it hit.)
-- Every 429 has Retry-After. Only the attempts that are checked cost the comparison, and only
-- failures are counted.
-- Storage: for Ids that exist, the pair and Id counts and the trusted addresses are in the
-- database (token_failures, token_id_failures, token_trusted), checked and written in one
-- transaction, so the lockout holds across workers, nodes and restarts. A failure on an unknown Id
-- costs no write: the same rule runs on engine.limit's counters (lib/token_guard.lua), in the
-- process's memory, shared by every worker and forgotten on restart.
-- Settings: token_max_failures (5), token_failure_window_seconds (300), token_id_max_failures
-- (100), token_id_throttle_seconds (1), token_address_max_failures (50), token_ttl_days (90).
local route = require "engine.route"
local db = require "engine.db"
local crypto = require "engine.crypto"
local time = require "engine.time"
local platform = require "lib.platform"
local validate = require "lib.validate"
local auth = require "lib.auth"
local peer = require "lib.peer"
local token_guard = require "lib.token_guard"

-- A verifier that matches nothing, so unknown Ids cost the same comparison as known ones.
local NO_VERIFIER = string.rep("0", 64)

-- The stored verifier of that entity's secret, or nil when there is no such entity.
local function stored_verifier(entity, id)
  if entity == "customer" then
    local row = db.one("SELECT secret_sealed FROM customers WHERE id = ?", id)
    if not row then return nil end
    local plain = crypto.open(row.secret_sealed, id)
    return plain and auth.verifier(plain) or NO_VERIFIER
  end
  local row = db.one("SELECT secret_hash FROM apps WHERE id = ?", id)
  return row and row.secret_hash
end

local function too_many(req, whom, seconds)
  return platform.fail(req, 429, string.format("too many failed attempts %s: retry after %d second%s",
    whom, seconds, seconds == 1 and "" or "s"), { ["Retry-After"] = tostring(seconds) })
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

  local limits = token_guard.limits()
  local addr = peer.address(req.peer)
  local wait = token_guard.address_wait(addr, time.now(), limits)
  if wait then return too_many(req, "from this address", wait) end

  local key = crypto.to_hex(crypto.sha256(id))
  local verifier = stored_verifier(entity, id)
  local function verify() return auth.check_verifier(secret, verifier or NO_VERIFIER) and verifier ~= nil end
  local outcome
  if verifier then
    -- One transaction: check, verify, count. On SQLite workers queue on the write lock; on
    -- PostgreSQL (SERIALIZABLE) a concurrent count makes one of them run again. Either way no two
    -- attempts both slip past a limit. attempt() touches nothing but the database, so a re-run
    -- is safe.
    outcome, wait = db.tx(function()
      return token_guard.attempt(token_guard.durable, key, addr, time.now(), limits, verify)
    end)
  else
    outcome, wait = token_guard.attempt(token_guard.shared, key, addr, time.now(), limits, verify)
  end

  if outcome == "ok" then
    return platform.ok(req, auth.issue(entity, id))
  elseif outcome == "failed" then
    token_guard.address_failed(addr, time.now(), limits)
    return platform.fail(req, 401, "invalid Id or Secret")
  end
  return too_many(req, "for this Id", wait)
end)
