-- Feed order without a global lock is a PostgreSQL matter (see
-- migrations/postgres/0015_feed_horizon.sql): SQLite has one writer, whose
-- commits are in index order by themselves. Kept so both schemas number
-- their migrations alike.
SELECT 1;
