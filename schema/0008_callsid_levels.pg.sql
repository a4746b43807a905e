-- 0008_callsid_levels.pg.sql - PostgreSQL keeps 0007's unique index calls(customer_id, call_sid).
--
-- SQLite replaces it with a leveled key table (0008_callsid_levels.sql) because each random
-- CallSid dirtied an index page that SQLite writes to its WAL and copies again at every checkpoint.
-- PostgreSQL logs a page in full only at its first change after a checkpoint and writes the rest
-- back from shared buffers, and its INSERT ... ON CONFLICT DO NOTHING against the unique index is
-- exact across nodes, which is what scripts/lib/usage.lua relies on there. So this migration only
-- keeps the numbering the same on both databases.
SELECT 1;
