-- 0001_init.sql - the integrations platform: customers, apps, app settings, users, call records,
-- and the brute-force counters of POST /token.
--
-- Every table has an explicit INTEGER PRIMARY KEY `seq` so creation order is stable (VACUUM may
-- renumber implicit rowids) and usable as a keyset cursor; public ids are UUID v4 text in `id`.
-- Timestamps are RFC 3339 UTC text with milliseconds (engine.time.format), except call times,
-- which are integer milliseconds so usage can compare ranges on an index.
-- Secrets never appear in plain text: sealed (AEAD, crypto.seal) when the API must return them
-- again, otherwise a hex SHA-256 verifier.

CREATE TABLE customers (
  seq            INTEGER PRIMARY KEY,
  id             TEXT NOT NULL UNIQUE,
  name           TEXT NOT NULL,
  email          TEXT NOT NULL,
  secret_sealed  BLOB NOT NULL,               -- crypto.seal(CustomerSecret, id): GET returns it
  plan           TEXT NOT NULL DEFAULT 'standard',
  account_sid    TEXT,
  status         TEXT NOT NULL DEFAULT 'active',
  created_at     TEXT NOT NULL,
  updated_at     TEXT NOT NULL
);

CREATE TABLE apps (
  seq                      INTEGER PRIMARY KEY,
  id                       TEXT NOT NULL UNIQUE,
  customer_id              TEXT NOT NULL REFERENCES customers(id) ON DELETE CASCADE,
  name                     TEXT NOT NULL,
  secret_hash              TEXT NOT NULL,     -- hex sha256 of AppSecret
  exotel_account_sid       TEXT NOT NULL,
  exotel_api_key_sealed    BLOB NOT NULL,     -- crypto.seal(ExotelApiKey, id)
  exotel_api_token_sealed  BLOB NOT NULL,     -- crypto.seal(ExotelApiToken, id)
  exotel_domain            TEXT NOT NULL CHECK (exotel_domain IN ('mumbai', 'singapore')),
  is_active                INTEGER NOT NULL CHECK (is_active IN (0, 1)),
  created_at               TEXT NOT NULL,
  updated_at               TEXT NOT NULL
);
CREATE INDEX apps_by_customer ON apps(customer_id, seq);

CREATE TABLE app_settings (
  app_id      TEXT NOT NULL REFERENCES apps(id) ON DELETE CASCADE,
  key         TEXT NOT NULL,
  value       TEXT NOT NULL,
  created_at  TEXT NOT NULL,
  updated_at  TEXT NOT NULL,
  PRIMARY KEY (app_id, key)
) WITHOUT ROWID;

-- Users of an app (API.md section 9). Deleting the app deletes them.
CREATE TABLE users (
  seq                 INTEGER PRIMARY KEY,    -- creation order: the pagination cursor
  app_id              TEXT NOT NULL REFERENCES apps(id) ON DELETE CASCADE,
  app_user_id         TEXT NOT NULL,
  app_username        TEXT NOT NULL,
  email               TEXT NOT NULL,
  exotel_account_sid  TEXT NOT NULL,
  exotel_user_id      TEXT,
  exotel_user_name    TEXT NOT NULL,
  virtual_number      TEXT NOT NULL,
  agent_number        TEXT,
  active_device_id    TEXT,
  phone_device_id     TEXT,
  sip_device_id       TEXT,
  phone_enabled       INTEGER NOT NULL DEFAULT 0 CHECK (phone_enabled IN (0, 1)),
  sip_enabled         INTEGER NOT NULL DEFAULT 1 CHECK (sip_enabled IN (0, 1)),
  outbound_active     INTEGER NOT NULL DEFAULT 0 CHECK (outbound_active IN (0, 1)),
  role                TEXT NOT NULL DEFAULT 'user',
  sip_id              TEXT,
  sip_secret_hash     TEXT,                   -- hex sha256 of SipSecret
  is_active           INTEGER NOT NULL DEFAULT 1 CHECK (is_active IN (0, 1)),
  user_detail         TEXT,                   -- JSON text or NULL
  created_at          TEXT NOT NULL,
  updated_at          TEXT NOT NULL,
  UNIQUE (app_id, app_user_id)
);

-- Call records (API.md section 6). They belong to the customer; app_id is plain text on
-- purpose (no foreign key) so a deleted app's calls stay in the customer's usage history.
CREATE TABLE calls (
  customer_id  TEXT NOT NULL REFERENCES customers(id) ON DELETE CASCADE,
  call_sid     TEXT NOT NULL,
  app_id       TEXT NOT NULL,
  app_user_id  TEXT,
  direction    TEXT NOT NULL CHECK (direction IN ('inbound', 'outbound')),
  channel      TEXT NOT NULL CHECK (channel IN ('sip', 'pstn')),
  start_ms     INTEGER NOT NULL,              -- StartTime, ms since the epoch, UTC
  duration_s   INTEGER NOT NULL CHECK (duration_s BETWEEN 0 AND 86400),
  created_at   TEXT NOT NULL,
  PRIMARY KEY (customer_id, call_sid)         -- idempotency: the first record wins
) WITHOUT ROWID;
CREATE INDEX calls_by_customer_start ON calls(customer_id, start_ms);

-- Failed POST /token attempts per Id (hashed), shared by all workers.
CREATE TABLE token_failures (
  id_hash       TEXT PRIMARY KEY,             -- hex sha256 of the presented Id
  window_start  INTEGER NOT NULL,             -- ms, first failure of the current window
  failures      INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX token_failures_by_window ON token_failures(window_start);
