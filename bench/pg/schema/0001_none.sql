-- bench/pg/schema: the non-blocking proof needs no table; a migration that creates nothing keeps
-- the schema directory a valid one on both backends.
SELECT 1;
