-- 0004_ingest.sql - call records in arrival order, for ingestion at 100,000 records/s.
--
-- 0001 keyed `calls` by PRIMARY KEY (customer_id, call_sid) WITHOUT ROWID. CallSids arrive in
-- random order, so each record of a batch landed on its own page of that B-tree: ~1000 dirty
-- pages (4 MB of WAL, written again at the checkpoint) per batch of 1000, which capped durable
-- ingestion near 35 batches/s. Here the rows are appended in arrival order (`seq`), so a batch
-- fills ~40 consecutive pages, and the idempotency check (first record of a CallSid per
-- customer wins) reads the workers' in-memory key sets instead (engine.db keys_sync /
-- keys_unseen over `seq`, lib/usage.lua), made exact by running under BEGIN IMMEDIATE.
-- AUTOINCREMENT is required: `seq` must never be reused, so a key set that has seen every row
-- up to some seq can catch up with `WHERE seq > ?`.
-- Data-preserving: every row of the old table is copied.

CREATE TABLE calls_by_seq (
  seq          INTEGER PRIMARY KEY AUTOINCREMENT,
  customer_id  TEXT NOT NULL REFERENCES customers(id) ON DELETE CASCADE,
  call_sid     TEXT NOT NULL,                 -- unique per customer, kept so by lib/usage.store
  app_id       TEXT NOT NULL,
  app_user_id  TEXT,
  direction    TEXT NOT NULL CHECK (direction IN ('inbound', 'outbound')),
  channel      TEXT NOT NULL CHECK (channel IN ('sip', 'pstn')),
  start_ms     INTEGER NOT NULL,              -- StartTime, ms since the epoch, UTC
  duration_s   INTEGER NOT NULL CHECK (duration_s BETWEEN 0 AND 86400),
  created_at   TEXT NOT NULL
);

INSERT INTO calls_by_seq (customer_id, call_sid, app_id, app_user_id, direction, channel, start_ms, duration_s,
                          created_at)
  SELECT customer_id, call_sid, app_id, app_user_id, direction, channel, start_ms, duration_s, created_at
    FROM calls ORDER BY customer_id, start_ms, call_sid;

DROP TABLE calls; -- and its index calls_usage
ALTER TABLE calls_by_seq RENAME TO calls;

-- As in 0002: the edge days of a usage query (and deleting a customer's calls) read this.
CREATE INDEX calls_usage ON calls(customer_id, start_ms, duration_s, direction, channel, app_id, app_user_id);
