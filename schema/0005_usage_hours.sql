-- 0005_usage_hours.sql - hourly rollups, so a usage period whose ends fall mid-day reads the raw
-- calls of at most its two partial edge hours instead of its two partial edge days.
--
-- Keys: `hour` = UTC hours since 1970-01-01 (start_ms // 3600000, floored); `day` as in 0002.
-- Written by lib/usage.store in the same transaction as the raw rows, like 0002's rollups. A
-- query now answers the counters of the whole hours of its edge days from usage_hours and their
-- presence from the *_days tables (hour bitmask), and only the partial edge hours from the raw
-- rows (covering index calls_usage).
-- Data-preserving: the rollups of the calls already stored are computed here.

-- The usage counters of one customer in one UTC hour.
CREATE TABLE usage_hours (
  customer_id  TEXT NOT NULL,
  hour         INTEGER NOT NULL,
  calls        INTEGER NOT NULL,
  minutes      INTEGER NOT NULL,              -- sum of ceil(duration_s / 60)
  inbound      INTEGER NOT NULL,
  outbound     INTEGER NOT NULL,
  sip          INTEGER NOT NULL,
  pstn         INTEGER NOT NULL,
  PRIMARY KEY (customer_id, hour)
) WITHOUT ROWID;

-- Presence: the apps and the (app, AppUserId) pairs with at least one call, one row per day with
-- a bitmask of its hours (bit h = hour h, 0..23, UTC).
CREATE TABLE usage_app_days (
  customer_id  TEXT NOT NULL,
  day          INTEGER NOT NULL,
  app_id       TEXT NOT NULL,
  hours        INTEGER NOT NULL,
  PRIMARY KEY (customer_id, day, app_id)
) WITHOUT ROWID;

CREATE TABLE usage_user_days (
  customer_id  TEXT NOT NULL,
  day          INTEGER NOT NULL,
  app_id       TEXT NOT NULL,
  app_user_id  TEXT NOT NULL,
  hours        INTEGER NOT NULL,
  PRIMARY KEY (customer_id, day, app_id, app_user_id)
) WITHOUT ROWID;

-- Backfill. SQLite's `/` truncates towards zero; the hour is floored, so calls before 1970 land
-- in the hour lib/usage.lua (Lua's `//`) puts them in. A hour bitmask is the sum of the
-- distinct bits of the group, which is their OR.
INSERT INTO usage_hours (customer_id, hour, calls, minutes, inbound, outbound, sip, pstn)
  SELECT customer_id, hour, count(*), sum((duration_s + 59) / 60), sum(direction = 'inbound'),
         sum(direction = 'outbound'), sum(channel = 'sip'), sum(channel = 'pstn')
    FROM (SELECT customer_id, (start_ms - ((start_ms % 3600000) + 3600000) % 3600000) / 3600000 AS hour,
                 duration_s, direction, channel FROM calls)
   GROUP BY customer_id, hour;

INSERT INTO usage_app_days (customer_id, day, app_id, hours)
  SELECT customer_id, hour / 24 - (hour % 24 < 0), app_id, sum(DISTINCT 1 << ((hour % 24 + 24) % 24))
    FROM (SELECT customer_id, app_id,
                 (start_ms - ((start_ms % 3600000) + 3600000) % 3600000) / 3600000 AS hour FROM calls)
   GROUP BY customer_id, hour / 24 - (hour % 24 < 0), app_id;

INSERT INTO usage_user_days (customer_id, day, app_id, app_user_id, hours)
  SELECT customer_id, hour / 24 - (hour % 24 < 0), app_id, app_user_id, sum(DISTINCT 1 << ((hour % 24 + 24) % 24))
    FROM (SELECT customer_id, app_id, app_user_id,
                 (start_ms - ((start_ms % 3600000) + 3600000) % 3600000) / 3600000 AS hour FROM calls
           WHERE app_user_id IS NOT NULL)
   GROUP BY customer_id, hour / 24 - (hour % 24 < 0), app_id, app_user_id;

-- A deleted customer takes these rollups along too (as 0002's usage_forget_customer).
CREATE TRIGGER usage_hours_forget_customer AFTER DELETE ON customers
BEGIN
  DELETE FROM usage_hours WHERE customer_id = old.id;
  DELETE FROM usage_app_days WHERE customer_id = old.id;
  DELETE FROM usage_user_days WHERE customer_id = old.id;
END;
