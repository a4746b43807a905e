-- lib/token_guard.lua - the counters of POST /token's brute-force guard. The rule they serve is
-- written at the top of scripts/token.lua; this file keeps the counts and applies it.
--   local limits = token_guard.limits()                   -- the settings, read per request
--   local guard = token_guard.new()                       -- one per worker: its memory counters
--   guard.address_wait(addr, now, limits)                 -> seconds to wait, or nil
--   guard.address_failed(addr, now, limits)               -- one more failure from addr
--   token_guard.attempt(store, key, addr, now, limits, verify)
--     -> "ok" | "failed" | "locked", seconds | "throttled", seconds
--        verify() is called only when the rule lets the attempt be checked.
-- Two stores hold the (Id, address) and Id counters with the same rule:
--   token_guard.durable   SQLite (0006), for Ids that exist: call attempt inside db.tx, so the
--                         check, the verification and the count are one step on every worker.
--   guard.memory          this worker's memory, for unknown Ids: no write, forgotten on restart.
-- A window is limits.window_ms long from the first failure it counts; a count whose window is
-- over reads as no count, and the next failure starts a new window.
local db = require "engine.db"
local settings = require "lib.settings"
local auth = require "lib.auth"

local M = {}

local DAY_MS = 86400 * 1000
-- An address's trust is rewritten at most this often: a token issued again within a day
-- costs no write.
local TRUST_REFRESH_MS = DAY_MS
-- Each memory map holds at most this many counters (a few hundred bytes each), so an attacker
-- spraying Ids or addresses cannot grow a worker's memory without bound.
local MEMORY_COUNTERS = 10000
M.MEMORY_COUNTERS = MEMORY_COUNTERS

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
  local pair = store.pair(key, addr)
  local pair_live = live(pair, now, limits)
  if pair_live and pair_live.failures >= limits.max_failures then
    return "locked", seconds(pair_live.window_start + limits.window_ms - now)
  end
  local id_live = live(store.id(key), now, limits)
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

-- SQLite, for Ids that exist. key is the hex SHA-256 of the Id.
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

-- A bounded map of counters. When it is full it first forgets the counters whose window is
-- over; if that frees less than half of it, it forgets them all (each full sweep is paid for
-- by half a map of new counters, so a request never costs more than a constant on average).
-- These counters are a brake, not a record: what an attacker gains by filling them is a fresh
-- start, which new addresses or Ids would give it anyway.
local function counters()
  local map, n = {}, 0
  local c = {}
  function c.get(k) return map[k] end
  function c.drop(k)
    if map[k] ~= nil then map[k], n = nil, n - 1 end
  end
  function c.put(k, v, now, limits)
    if map[k] == nil then
      if n >= MEMORY_COUNTERS then
        for old_k, old in pairs(map) do
          if not live(old, now, limits) then map[old_k], n = nil, n - 1 end
        end
        if n > MEMORY_COUNTERS // 2 then map, n = {}, 0 end
      end
      n = n + 1
    end
    map[k] = v
  end
  return c
end

function M.new()
  local by_pair, by_id, by_address = counters(), counters(), counters()
  local guard = {}

  -- Unknown Ids, by the same rule as token_guard.durable. Nothing is ever issued for them, so
  -- no address is trusted and `succeeded` only keeps the store complete.
  local memory = {}
  guard.memory = memory
  function memory.pair(key, addr) return by_pair.get(key .. "|" .. addr) end
  function memory.id(key) return by_id.get(key) end
  function memory.trusted() return false end
  function memory.failed(key, addr, now, limits, pair_live, id_live)
    if pair_live then
      pair_live.failures = pair_live.failures + 1
    else
      by_pair.put(key .. "|" .. addr, { window_start = now, failures = 1 }, now, limits)
    end
    if id_live then
      id_live.failures, id_live.last_failure = id_live.failures + 1, now
    else
      by_id.put(key, { window_start = now, failures = 1, last_failure = now }, now, limits)
    end
  end
  function memory.succeeded(key, addr) by_pair.drop(key .. "|" .. addr) end

  -- Failures from one address on any Id, known or not (enumeration), in this worker's memory.
  function guard.address_wait(addr, now, limits)
    local a = live(by_address.get(addr), now, limits)
    if a and a.failures >= limits.address_max_failures then
      return seconds(a.window_start + limits.window_ms - now)
    end
    return nil
  end
  function guard.address_failed(addr, now, limits)
    local a = live(by_address.get(addr), now, limits)
    if a then
      a.failures = a.failures + 1
    else
      by_address.put(addr, { window_start = now, failures = 1 }, now, limits)
    end
  end

  return guard
end

return M
