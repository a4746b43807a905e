-- The benchmark's table: 1000 rows, ids 1..1000, read by scripts/row.lua.
CREATE TABLE bench_rows (
  id INTEGER PRIMARY KEY,
  name TEXT NOT NULL,
  score INTEGER NOT NULL
);

WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 1000)
INSERT INTO bench_rows (id, name, score) SELECT i, 'row-' || i, (i * 7919) % 1000 FROM n;
