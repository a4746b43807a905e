-- 0002_usage.pg.sql - PostgreSQL variant of 0002_usage.sql (read that file for the rollups' keys
-- and bitmasks). Types as in 0001_init.pg.sql; SQLite's trigger body becomes a plpgsql function
-- called by a row trigger.

CREATE TABLE usage_days (
  customer_id  text NOT NULL,
  day          bigint NOT NULL,
  calls        bigint NOT NULL,
  minutes      bigint NOT NULL,
  inbound      bigint NOT NULL,
  outbound     bigint NOT NULL,
  sip          bigint NOT NULL,
  pstn         bigint NOT NULL,
  PRIMARY KEY (customer_id, day)
);

CREATE TABLE usage_app_months (
  customer_id  text NOT NULL,
  month        bigint NOT NULL,
  app_id       text NOT NULL,
  days         bigint NOT NULL,
  PRIMARY KEY (customer_id, month, app_id)
);

CREATE TABLE usage_user_months (
  customer_id  text NOT NULL,
  month        bigint NOT NULL,
  app_id       text NOT NULL,
  app_user_id  text NOT NULL,
  days         bigint NOT NULL,
  PRIMARY KEY (customer_id, month, app_id, app_user_id)
);

CREATE TABLE usage_app_years (
  customer_id  text NOT NULL,
  year         bigint NOT NULL,
  app_id       text NOT NULL,
  months       bigint NOT NULL,
  PRIMARY KEY (customer_id, year, app_id)
);

CREATE TABLE usage_user_years (
  customer_id  text NOT NULL,
  year         bigint NOT NULL,
  app_id       text NOT NULL,
  app_user_id  text NOT NULL,
  months       bigint NOT NULL,
  PRIMARY KEY (customer_id, year, app_id, app_user_id)
);

DROP INDEX calls_by_customer_start;
CREATE INDEX calls_usage ON calls(customer_id, start_ms, duration_s, direction, channel, app_id, app_user_id);

CREATE FUNCTION usage_forget_customer() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  DELETE FROM usage_days WHERE customer_id = old.id;
  DELETE FROM usage_app_months WHERE customer_id = old.id;
  DELETE FROM usage_user_months WHERE customer_id = old.id;
  DELETE FROM usage_app_years WHERE customer_id = old.id;
  DELETE FROM usage_user_years WHERE customer_id = old.id;
  RETURN NULL;
END;
$$;

CREATE TRIGGER usage_forget_customer AFTER DELETE ON customers
  FOR EACH ROW EXECUTE FUNCTION usage_forget_customer();
