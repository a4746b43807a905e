-- 0006_token_guard.sql - the brute-force guard of POST /token counts per (Id, client address),
-- with a per-Id ceiling that throttles instead of locking (the rule: top of scripts/token.lua).
--
-- Replaces 0001's token_failures, one counter per Id, which let anyone who knew an Id lock it
-- for everyone. Its rows are dropped, not carried over: they were per Id, not per address, and
-- hold at most one window (5 minutes by default) of counts.
-- Only Ids that exist are counted here; failures on unknown Ids are counted in worker memory
-- (scripts/lib/token_guard.lua), so they cost no write. Ids are stored as the hex SHA-256 of
-- the presented Id, never in plain; addresses as lib/peer.lua gives them (no port).
DROP INDEX token_failures_by_window;
DROP TABLE token_failures;

-- Failed attempts for one Id from one address in the pair's current window.
CREATE TABLE token_failures (
  id_hash       TEXT NOT NULL,                -- hex sha256 of the Id
  addr          TEXT NOT NULL,                -- client address: "203.0.113.7", "2001:db8::7"
  window_start  INTEGER NOT NULL,             -- ms, first failure of the current window
  failures      INTEGER NOT NULL,
  PRIMARY KEY (id_hash, addr)
) WITHOUT ROWID;
CREATE INDEX token_failures_by_window ON token_failures(window_start);

-- Failed attempts for one Id from every address in the Id's current window: past
-- token_id_max_failures the Id is throttled.
CREATE TABLE token_id_failures (
  id_hash       TEXT PRIMARY KEY,
  window_start  INTEGER NOT NULL,             -- ms, first failure of the current window
  failures      INTEGER NOT NULL,
  last_failure  INTEGER NOT NULL              -- ms; the throttle counts from it
) WITHOUT ROWID;
CREATE INDEX token_id_failures_by_window ON token_id_failures(window_start);

-- Addresses that were issued a token for an Id: the throttle lets them through for a token
-- lifetime (token_ttl_days) after the latest one.
CREATE TABLE token_trusted (
  id_hash  TEXT NOT NULL,
  addr     TEXT NOT NULL,
  last_ok  INTEGER NOT NULL,                  -- ms of the latest token issued (refreshed at most daily)
  PRIMARY KEY (id_hash, addr)
) WITHOUT ROWID;
CREATE INDEX token_trusted_by_last_ok ON token_trusted(last_ok);
