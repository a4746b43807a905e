-- 0005_usage_hours.pg.sql - PostgreSQL variant of 0005_usage_hours.sql (read that file for the
-- hourly rollups). Data-preserving like the SQLite file.
--
-- The backfill is the same arithmetic in PostgreSQL's spelling: bigint `/` and `%` truncate
-- towards zero as SQLite's do, so the same flooring expressions give the same hour and day;
-- comparisons are boolean, not 0/1, so they are counted with FILTER and turned into 0/1 with
-- CASE. sum() of bigint is numeric; the insert casts it back to bigint.

CREATE TABLE usage_hours (
  customer_id  text NOT NULL,
  hour         bigint NOT NULL,
  calls        bigint NOT NULL,
  minutes      bigint NOT NULL,
  inbound      bigint NOT NULL,
  outbound     bigint NOT NULL,
  sip          bigint NOT NULL,
  pstn         bigint NOT NULL,
  PRIMARY KEY (customer_id, hour)
);

CREATE TABLE usage_app_days (
  customer_id  text NOT NULL,
  day          bigint NOT NULL,
  app_id       text NOT NULL,
  hours        bigint NOT NULL,
  PRIMARY KEY (customer_id, day, app_id)
);

CREATE TABLE usage_user_days (
  customer_id  text NOT NULL,
  day          bigint NOT NULL,
  app_id       text NOT NULL,
  app_user_id  text NOT NULL,
  hours        bigint NOT NULL,
  PRIMARY KEY (customer_id, day, app_id, app_user_id)
);

INSERT INTO usage_hours (customer_id, hour, calls, minutes, inbound, outbound, sip, pstn)
  SELECT customer_id, hour, count(*), sum((duration_s + 59) / 60),
         count(*) FILTER (WHERE direction = 'inbound'), count(*) FILTER (WHERE direction = 'outbound'),
         count(*) FILTER (WHERE channel = 'sip'), count(*) FILTER (WHERE channel = 'pstn')
    FROM (SELECT customer_id, (start_ms - ((start_ms % 3600000) + 3600000) % 3600000) / 3600000 AS hour,
                 duration_s, direction, channel FROM calls) AS c
   GROUP BY customer_id, hour;

INSERT INTO usage_app_days (customer_id, day, app_id, hours)
  SELECT customer_id, hour / 24 - CASE WHEN hour % 24 < 0 THEN 1 ELSE 0 END, app_id,
         sum(DISTINCT 1::bigint << ((hour % 24 + 24) % 24)::integer)
    FROM (SELECT customer_id, app_id,
                 (start_ms - ((start_ms % 3600000) + 3600000) % 3600000) / 3600000 AS hour FROM calls) AS c
   GROUP BY customer_id, hour / 24 - CASE WHEN hour % 24 < 0 THEN 1 ELSE 0 END, app_id;

INSERT INTO usage_user_days (customer_id, day, app_id, app_user_id, hours)
  SELECT customer_id, hour / 24 - CASE WHEN hour % 24 < 0 THEN 1 ELSE 0 END, app_id, app_user_id,
         sum(DISTINCT 1::bigint << ((hour % 24 + 24) % 24)::integer)
    FROM (SELECT customer_id, app_id, app_user_id,
                 (start_ms - ((start_ms % 3600000) + 3600000) % 3600000) / 3600000 AS hour FROM calls
           WHERE app_user_id IS NOT NULL) AS c
   GROUP BY customer_id, hour / 24 - CASE WHEN hour % 24 < 0 THEN 1 ELSE 0 END, app_id, app_user_id;

CREATE FUNCTION usage_hours_forget_customer() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  DELETE FROM usage_hours WHERE customer_id = old.id;
  DELETE FROM usage_app_days WHERE customer_id = old.id;
  DELETE FROM usage_user_days WHERE customer_id = old.id;
  RETURN NULL;
END;
$$;

CREATE TRIGGER usage_hours_forget_customer AFTER DELETE ON customers
  FOR EACH ROW EXECUTE FUNCTION usage_hours_forget_customer();
