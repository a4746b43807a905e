-- 0003_users.pg.sql - PostgreSQL variant of 0003_users.sql (read that file for why).
--
-- SQLite rebuilds the table to get AUTOINCREMENT and to add table CHECKs; PostgreSQL needs
-- neither rebuild: 0001_init.pg.sql's identity `seq` already never hands out a number twice, and
-- ALTER TABLE can drop and add columns and constraints in place. The rows stay as they are
-- (sip_secret_hash was never written; ADD CHECK validates the existing rows, as SQLite's copy
-- does). One visible difference: sip_secret_sealed is the last column here, not the one after
-- sip_id; scripts read columns by name.

ALTER TABLE users
  DROP COLUMN sip_secret_hash,
  ADD COLUMN sip_secret_sealed bytea,
  ADD CONSTRAINT users_device_enabled_check CHECK (phone_enabled + sip_enabled >= 1),
  ADD CONSTRAINT users_phone_agent_check CHECK (phone_enabled = 0 OR agent_number IS NOT NULL);

CREATE INDEX users_by_app ON users(app_id, seq);
