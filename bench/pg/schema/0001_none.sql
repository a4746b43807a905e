-- bench/pg/schema: the non-blocking proof reads no table; one small table keeps this a valid
-- schema directory on both backends.
CREATE TABLE bench_pg (id INTEGER PRIMARY KEY);
