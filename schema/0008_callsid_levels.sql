-- 0008_callsid_levels.sql - CallSid idempotency held by the database at a few dirty pages per batch
-- (issue 15, item 4).
--
-- 0007's unique index calls(customer_id, call_sid) made the first record of a CallSid per customer
-- win whoever writes, but CallSids arrive in random order: each record of a batch of 1,000 landed on
-- its own leaf page of that index, ~1,000 pages written to the WAL and again by the checkpoint per
-- batch, which held ingestion near 8,000 records/s at 10 million stored records (README,
-- Benchmarks). Here the same rule is kept by a leveled key table (engine/db_levels.h):
--   calls_sid(lvl, h, seq): h = engine_key64(customer_id, call_sid), seq = the call's row.
-- New keys go to level 0, a few hundred pages at most; the engine's checkpointer thread folds a
-- level into the next one in key order once it passes its limit (l0 * fanout^lvl entries, from
-- _engine_levels), so each page of a deeper level is rewritten once per fold, not once per key.
--
-- The triggers make it the database's rule, whoever writes (scripts, the sqlite3 shell with the
-- engine's function, a restore):
--   * an INSERT of a (customer_id, call_sid) already stored is skipped (RAISE(IGNORE), as
--     INSERT ... ON CONFLICT DO NOTHING would): the statement succeeds and the row is not counted
--     in changes(). The lookup compares the stored row itself, so a collision of two keys' 64-bit
--     hashes costs a row read, never a lost record;
--   * deleting a call (a customer's deletion cascades to its calls) deletes its key;
--   * a call's customer_id, call_sid and seq cannot change.
-- A writer without engine_key64() (the plain sqlite3 shell) cannot insert calls at all ("no such
-- function: engine_key64"): nothing gets around the rule. Reads need nothing.
--
-- Building the bottom level reads and sorts every stored call once (like 0007's index), during the
-- first start after the upgrade, before the workers listen. The unique index goes: the triggers do
-- its job. PostgreSQL keeps the unique index (0008_callsid_levels.pg.sql says why).

CREATE TABLE IF NOT EXISTS _engine_levels (
  tbl     TEXT PRIMARY KEY,   -- a leveled key table: (lvl, h, seq), PRIMARY KEY (lvl, h, seq), WITHOUT ROWID
  l0      INTEGER NOT NULL,   -- entries level 0 may hold before it is folded into level 1
  fanout  INTEGER NOT NULL,   -- each level's limit is fanout times the one above; the last has none
  levels  INTEGER NOT NULL    -- must match the levels the table's triggers look at
);

CREATE TABLE calls_sid (
  lvl  INTEGER NOT NULL,
  h    INTEGER NOT NULL,      -- engine_key64(customer_id, call_sid)
  seq  INTEGER NOT NULL,      -- calls.seq
  PRIMARY KEY (lvl, h, seq)
) WITHOUT ROWID;

-- 16,384 keys in level 0 (about 120 pages), 262,144 in level 1, 4,194,304 in level 2, the rest in 3.
INSERT INTO _engine_levels (tbl, l0, fanout, levels) VALUES ('calls_sid', 16384, 16, 4);

INSERT INTO calls_sid (lvl, h, seq)
  SELECT 3, engine_key64(customer_id, call_sid), seq FROM calls ORDER BY 2, 3;

DROP INDEX calls_customer_sid;

-- The levels come from a VALUES list, not lvl IN (0, 1, 2, 3): SQLite runs an IN list on an index
-- column from an ephemeral table it builds at every execution, which in a trigger is every row
-- (40% of a small batch's insert time; a 1,000-record batch under AddressSanitizer took 0.9 s),
-- and four EXISTS, one per level, hashed the key four times. CROSS JOIN keeps this join order:
-- SQLite would otherwise start at calls (by customer, all of its rows) instead of at the key.
CREATE TRIGGER calls_sid_unique BEFORE INSERT ON calls
  WHEN EXISTS (SELECT 1 FROM (VALUES (0), (1), (2), (3)) AS l
                CROSS JOIN calls_sid s ON s.lvl = l.column1 AND s.h = engine_key64(NEW.customer_id, NEW.call_sid)
                CROSS JOIN calls c ON c.seq = s.seq
                WHERE c.customer_id = NEW.customer_id AND c.call_sid = NEW.call_sid)
BEGIN
  SELECT RAISE(IGNORE);
END;

CREATE TRIGGER calls_sid_insert AFTER INSERT ON calls
BEGIN
  INSERT INTO calls_sid (lvl, h, seq) VALUES (0, engine_key64(NEW.customer_id, NEW.call_sid), NEW.seq);
END;

CREATE TRIGGER calls_sid_delete AFTER DELETE ON calls
BEGIN
  DELETE FROM calls_sid WHERE lvl = 0 AND h = engine_key64(OLD.customer_id, OLD.call_sid) AND seq = OLD.seq;
  DELETE FROM calls_sid WHERE lvl = 1 AND h = engine_key64(OLD.customer_id, OLD.call_sid) AND seq = OLD.seq;
  DELETE FROM calls_sid WHERE lvl = 2 AND h = engine_key64(OLD.customer_id, OLD.call_sid) AND seq = OLD.seq;
  DELETE FROM calls_sid WHERE lvl = 3 AND h = engine_key64(OLD.customer_id, OLD.call_sid) AND seq = OLD.seq;
END;

CREATE TRIGGER calls_sid_fixed BEFORE UPDATE OF customer_id, call_sid, seq ON calls
BEGIN
  SELECT RAISE(ABORT, 'a call record''s customer_id, call_sid and seq cannot change');
END;
