-- 0003_users.sql - users of an app (API.md section 9), rebuilt from 0001's table so that:
--   * seq is AUTOINCREMENT: a plain INTEGER PRIMARY KEY reuses the largest rowid after that row
--     is deleted, so it is not monotonic; AUTOINCREMENT never hands out a number twice, which
--     makes seq an immutable, strictly increasing keyset cursor for GET /usermapping;
--   * SipSecret is sealed at rest (crypto.seal(SipSecret, "user:<app_id>/<app_user_id>")) in
--     sip_secret_sealed; 0001's sip_secret_hash (never written) is dropped;
--   * the device rule holds in the table too: at least one device enabled, and the phone only
--     with an AgentNumber;
--   * the app's users can be walked by (app_id, seq) on an index.
-- Nothing references users, so dropping and renaming it keeps every foreign key intact.

CREATE TABLE users_v3 (
  seq                 INTEGER PRIMARY KEY AUTOINCREMENT,  -- creation order: the pagination cursor
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
  sip_secret_sealed   BLOB,                   -- crypto.seal(SipSecret, "user:<app_id>/<app_user_id>")
  is_active           INTEGER NOT NULL DEFAULT 1 CHECK (is_active IN (0, 1)),
  user_detail         TEXT,                   -- JSON text or NULL
  created_at          TEXT NOT NULL,
  updated_at          TEXT NOT NULL,
  UNIQUE (app_id, app_user_id),
  CHECK (phone_enabled + sip_enabled >= 1),
  CHECK (phone_enabled = 0 OR agent_number IS NOT NULL)
);

INSERT INTO users_v3 (seq, app_id, app_user_id, app_username, email, exotel_account_sid, exotel_user_id,
                      exotel_user_name, virtual_number, agent_number, active_device_id, phone_device_id,
                      sip_device_id, phone_enabled, sip_enabled, outbound_active, role, sip_id, is_active,
                      user_detail, created_at, updated_at)
  SELECT seq, app_id, app_user_id, app_username, email, exotel_account_sid, exotel_user_id,
         exotel_user_name, virtual_number, agent_number, active_device_id, phone_device_id,
         sip_device_id, phone_enabled, sip_enabled, outbound_active, role, sip_id, is_active,
         user_detail, created_at, updated_at
  FROM users ORDER BY seq;

DROP TABLE users;
ALTER TABLE users_v3 RENAME TO users;

CREATE INDEX users_by_app ON users(app_id, seq);
