-- 0002_usage.sql - rollups that answer GET /v2/integrations/{customer_id}/usage (API.md section 5)
-- without scanning the raw call records.
--
-- The raw records stay in `calls` (0001): PRIMARY KEY (customer_id, call_sid) is the idempotency
-- constraint POST /calls inserts against with ON CONFLICT DO NOTHING. Everything below is derived
-- from them and written by lib/usage.lua in the same transaction as the raw rows it summarises,
-- so a committed batch and its rollups are never apart. Calls are append-only: they leave only
-- with their customer, and so do the rollups (trigger at the end).
--
-- Keys: `day` = UTC days since 1970-01-01 (start_ms // 86400000); `month` = year * 12 + month - 1
-- and `year` of the UTC calendar. A query answers the counters of whole days from usage_days,
-- the presence of whole months from the *_years tables (month bitmask), of the other whole days
-- from the *_months tables (day bitmask), and the partial edge days from the raw rows
-- (covering index calls_usage).

-- The usage counters of one customer on one UTC day.
CREATE TABLE usage_days (
  customer_id  TEXT NOT NULL,
  day          INTEGER NOT NULL,
  calls        INTEGER NOT NULL,
  minutes      INTEGER NOT NULL,              -- sum of ceil(duration_s / 60)
  inbound      INTEGER NOT NULL,
  outbound     INTEGER NOT NULL,
  sip          INTEGER NOT NULL,
  pstn         INTEGER NOT NULL,
  PRIMARY KEY (customer_id, day)
) WITHOUT ROWID;

-- Presence: the apps and the (app, AppUserId) pairs with at least one call, one row per month
-- with a bitmask of its days (bit d - 1 = day d of the month) and one row per year with a
-- bitmask of its months (bit m - 1 = month m). Distinct apps or users over a period read at
-- most one row per app / user per year touched plus the two partial months at its ends.
CREATE TABLE usage_app_months (
  customer_id  TEXT NOT NULL,
  month        INTEGER NOT NULL,
  app_id       TEXT NOT NULL,
  days         INTEGER NOT NULL,
  PRIMARY KEY (customer_id, month, app_id)
) WITHOUT ROWID;

CREATE TABLE usage_user_months (
  customer_id  TEXT NOT NULL,
  month        INTEGER NOT NULL,
  app_id       TEXT NOT NULL,
  app_user_id  TEXT NOT NULL,
  days         INTEGER NOT NULL,
  PRIMARY KEY (customer_id, month, app_id, app_user_id)
) WITHOUT ROWID;

CREATE TABLE usage_app_years (
  customer_id  TEXT NOT NULL,
  year         INTEGER NOT NULL,
  app_id       TEXT NOT NULL,
  months       INTEGER NOT NULL,
  PRIMARY KEY (customer_id, year, app_id)
) WITHOUT ROWID;

CREATE TABLE usage_user_years (
  customer_id  TEXT NOT NULL,
  year         INTEGER NOT NULL,
  app_id       TEXT NOT NULL,
  app_user_id  TEXT NOT NULL,
  months       INTEGER NOT NULL,
  PRIMARY KEY (customer_id, year, app_id, app_user_id)
) WITHOUT ROWID;

-- The edge days are read from the raw rows: a covering index, so a range of one customer's
-- calls is one index scan with no lookups into the table. It replaces 0001's
-- calls_by_customer_start (same leading columns, so every query that used it still can).
DROP INDEX calls_by_customer_start;
CREATE INDEX calls_usage ON calls(customer_id, start_ms, duration_s, direction, channel, app_id, app_user_id);

-- A deleted customer takes its rollups along (its calls go by lib/customers.delete and the
-- calls.customer_id cascade).
CREATE TRIGGER usage_forget_customer AFTER DELETE ON customers
BEGIN
  DELETE FROM usage_days WHERE customer_id = old.id;
  DELETE FROM usage_app_months WHERE customer_id = old.id;
  DELETE FROM usage_user_months WHERE customer_id = old.id;
  DELETE FROM usage_app_years WHERE customer_id = old.id;
  DELETE FROM usage_user_years WHERE customer_id = old.id;
END;
