-- lib/token_guard.lua - the counters of POST /token's brute-force guard. The rule they serve is
-- written at the top of scripts/token.lua; this file keeps the counts and applies it.
--   local limits = token_guard.limits()                   -- the settings, read per request
--   token_guard.address_wait(addr, now, limits)           -> seconds to wait, or nil
--   token_guard.address_failed(addr, now, limits)         -- one more failure from addr
--   token_guard.attempt(store, key, addr, now, limits, verify)
--     -> "ok" | "failed" | "locked", seconds | "throttled", seconds
--        verify() is called only when the rule lets the attempt be checked.
-- Two stores hold the (Id, address) and Id counters with the same rule:
--   token_guard.durable   the database (0006), for Ids that exist: call attempt inside db.tx, so
--                         the check, the verification and the count are one step on every worker
--                         and node. It has no effect outside the database (db.tx may run it again
--                         on PostgreSQL).
--   token_guard.shared    engine.limit's fixed-window counters, for unknown Ids: in the
--                         process's memory, shared by every worker, no write, forgotten on
--                         restart. The address counts live there too.
-- A window is limits.window_ms long from the first failure it counts; a count whose window is
-- over reads as no count, and the next failure starts a new window.
local db = require "engine.db"
local limit = require "engine.limit"
local settings = require "lib.settings"
local auth = require "lib.auth"

local M = {}

local DAY_MS = 86400 * 1000
-- An address's trust is rewritten at most this often: a token issued again within a day
-- costs no write.
local TRUST_REFRESH_MS = DAY_MS

function M.limits()
  return {
    max_failures = settings.number("token_max_failures", 5, 1, true),
    window_ms = math.floor(settings.number("token_failure_window_seconds", 300, 1) * 1000),
    id_max_failures = settings.number("token_id_max_failures", 100, 1, true),
    throttle_ms = settings.number("token_id_throttle_seconds", 1, 1, true) * 1000,
    address_max_failures = settings.number("token_address_max_failures", 50, 1, true),
    trust_ms = auth.ttl_seconds() * 1000,
  }
end

-- Whole seconds until `ms` milliseconds have passed, at least 1 (for Retry-After).
local function seconds(ms)
  return math.max(1, math.ceil(ms / 1000))
end

-- The counter if its window is still running, else nil.
local function live(counter, now, limits)
  if counter and now - counter.window_start < limits.window_ms then return counter end
  return nil
end

function M.attempt(store, key, addr, now, limits, verify)
  local pair = store.pair(key, addr, limits)
  local pair_live = live(pair, now, limits)
  if pair_live and pair_live.failures >= limits.max_failures then
    return "locked", seconds(pair_live.window_start + limits.window_ms - now)
  end
  local id_live = live(store.id(key, limits), now, limits)
  if id_live and id_live.failures >= limits.id_max_failures
      and now - id_live.last_failure < limits.throttle_ms
      and not store.trusted(key, addr, now, limits) then
    local until_ms = math.min(id_live.last_failure + limits.throttle_ms, id_live.window_start + limits.window_ms)
    return "throttled", seconds(until_ms - now)
  end
  if verify() then
    store.succeeded(key, addr, now, limits, pair)
    return "ok"
  end
  store.failed(key, addr, now, limits, pair_live, id_live)
  return "failed"
end

-- The database, for Ids that exist. key is the hex SHA-256 of the Id.
local durable = {}
M.durable = durable

function durable.pair(key, addr)
  return db.one("SELECT window_start, failures FROM token_failures WHERE id_hash = ? AND addr = ?", key, addr)
end

function durable.id(key)
  return db.one("SELECT window_start, failures, last_failure FROM token_id_failures WHERE id_hash = ?", key)
end

function durable.trusted(key, addr, now, limits)
  return db.one("SELECT 1 AS yes FROM token_trusted WHERE id_hash = ? AND addr = ? AND last_ok > ?",
    key, addr, now - limits.trust_ms) ~= nil
end

function durable.failed(key, addr, now, limits, pair_live, id_live)
  if pair_live then
    db.exec("UPDATE token_failures SET failures = failures + 1 WHERE id_hash = ? AND addr = ?", key, addr)
  else
    db.exec([[INSERT INTO token_failures (id_hash, addr, window_start, failures) VALUES (?, ?, ?, 1)
              ON CONFLICT (id_hash, addr) DO UPDATE SET window_start = excluded.window_start, failures = 1]],
      key, addr, now)
    -- Forget counters whose window is over, so the table stays small.
    db.exec("DELETE FROM token_failures WHERE window_start <= ?", now - limits.window_ms)
  end
  if id_live then
    db.exec("UPDATE token_id_failures SET failures = failures + 1, last_failure = ? WHERE id_hash = ?", now, key)
  else
    db.exec([[INSERT INTO token_id_failures (id_hash, window_start, failures, last_failure) VALUES (?, ?, 1, ?)
              ON CONFLICT (id_hash) DO UPDATE SET window_start = excluded.window_start, failures = 1,
                last_failure = excluded.last_failure]], key, now, now)
    db.exec("DELETE FROM token_id_failures WHERE window_start <= ?", now - limits.window_ms)
  end
end

-- A success clears the pair's count (not the Id's: the victim's own logins must not reset an
-- attacker's progress towards the ceiling) and trusts the address for the Id.
function durable.succeeded(key, addr, now, limits, pair)
  if pair then db.exec("DELETE FROM token_failures WHERE id_hash = ? AND addr = ?", key, addr) end
  local trust = db.one("SELECT last_ok FROM token_trusted WHERE id_hash = ? AND addr = ?", key, addr)
  if trust and now - trust.last_ok < TRUST_REFRESH_MS then return end
  db.exec([[INSERT INTO token_trusted (id_hash, addr, last_ok) VALUES (?, ?, ?)
            ON CONFLICT (id_hash, addr) DO UPDATE SET last_ok = excluded.last_ok]], key, addr, now)
  if not trust then
    db.exec("DELETE FROM token_trusted WHERE last_ok <= ?", now - limits.trust_ms)
  end
end

-- engine.limit's counters, for unknown Ids and addresses. engine.limit keeps them bounded (the
-- least recently used are forgotten first): they are a brake, not a record, and what an
-- attacker gains by flushing them is a fresh start, which new addresses or Ids would give it
-- anyway. Between the check and the count another worker may count too, so a burst of
-- simultaneous attempts can pass a limit by the number of workers at most.
local shared = {}
M.shared = shared

local function seconds_of(limits) return limits.window_ms / 1000 end

-- A counter as the rule reads it, or nil.
local function counter(name, k, limits)
  local failures, start, last = limit.count(name, k, seconds_of(limits))
  if failures == 0 then return nil end
  return { window_start = start, failures = failures, last_failure = last }
end

function shared.pair(key, addr, limits) return counter("token-pair", key .. "|" .. addr, limits) end
function shared.id(key, limits) return counter("token-id", key, limits) end
function shared.trusted() return false end -- nothing is ever issued for an unknown Id
function shared.failed(key, addr, _, limits)
  limit.hit("token-pair", key .. "|" .. addr, seconds_of(limits))
  limit.hit("token-id", key, seconds_of(limits))
end
function shared.succeeded(key, addr) limit.reset("token-pair", key .. "|" .. addr) end

-- Failures from one address on any Id, known or not (enumeration).
function M.address_wait(addr, now, limits)
  local a = live(counter("token-address", addr, limits), now, limits)
  if a and a.failures >= limits.address_max_failures then
    return seconds(a.window_start + limits.window_ms - now)
  end
  return nil
end

function M.address_failed(addr, _, limits)
  limit.hit("token-address", addr, seconds_of(limits))
end

return M
