-- 0006_token_guard.pg.sql - PostgreSQL variant of 0006_token_guard.sql (read that file for the
-- counters). Types as in 0001_init.pg.sql.

DROP INDEX token_failures_by_window;
DROP TABLE token_failures;

CREATE TABLE token_failures (
  id_hash       text NOT NULL,
  addr          text NOT NULL,
  window_start  bigint NOT NULL,
  failures      bigint NOT NULL,
  PRIMARY KEY (id_hash, addr)
);
CREATE INDEX token_failures_by_window ON token_failures(window_start);

CREATE TABLE token_id_failures (
  id_hash       text PRIMARY KEY,
  window_start  bigint NOT NULL,
  failures      bigint NOT NULL,
  last_failure  bigint NOT NULL
);
CREATE INDEX token_id_failures_by_window ON token_id_failures(window_start);

CREATE TABLE token_trusted (
  id_hash  text NOT NULL,
  addr     text NOT NULL,
  last_ok  bigint NOT NULL,
  PRIMARY KEY (id_hash, addr)
);
CREATE INDEX token_trusted_by_last_ok ON token_trusted(last_ok);
