-- Feed order without a global lock (docs/guarantees.md, "Feed order").
-- Until now every event-writing transaction took one advisory lock and held
-- it to its commit, so that index order was commit order; replicas' commits
-- ran one at a time. Now writers take no lock shared with each other, and
-- readers only read below a horizon they have proven final:
--
-- 1. An event's index comes from opscore_next_event_index(), which makes
--    sure the transaction has its transaction id before it takes the next
--    value of the sequence event_index: a transaction holding index i had
--    its xid before i was handed out.
-- 2. opscore_feed_mark() reads, in this order, the highest index handed out
--    so far (reserved) and the next transaction id to be assigned
--    (xid_bound). Every transaction holding an index <= reserved has an
--    xid < xid_bound.
-- 3. Once a snapshot's xmin is >= xid_bound, no such transaction is still
--    running: every event <= reserved that will ever commit is visible, and
--    the feed may hand out everything up to reserved.

CREATE SEQUENCE event_index AS BIGINT;

DO $$
DECLARE
    old TEXT := pg_get_serial_sequence('events', 'idx');
    top BIGINT;
BEGIN
    EXECUTE format('SELECT CASE WHEN is_called THEN last_value ELSE last_value - 1 END FROM %s', old)
        INTO top;
    top := GREATEST(top, (SELECT COALESCE(MAX(idx), 0) FROM events),
                    (SELECT pruned_through FROM event_retention WHERE id = 1));
    IF top > 0 THEN
        PERFORM setval('event_index', top, true);
    END IF;
END $$;

ALTER TABLE events ALTER COLUMN idx DROP IDENTITY;

CREATE FUNCTION opscore_next_event_index() RETURNS BIGINT
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    -- The xid first (assigned now if the transaction has none yet), then
    -- the index: plpgsql runs these in order, which an expression would
    -- not promise.
    PERFORM pg_current_xact_id();
    RETURN nextval('event_index');
END $$;

ALTER TABLE events ALTER COLUMN idx SET DEFAULT opscore_next_event_index();

-- Also returns after_xmin: the oldest xid still running in this database,
-- read after both (xid_bound when none is): the mark is settled when it is
-- >= xid_bound. Only this database's transactions can hold an index, so
-- only they are waited for: a long transaction elsewhere on the server (a
-- DROP DATABASE, which holds an xid through a checkpoint) holds no feed
-- back. A transaction's xid is set in its backend's entry when assigned
-- and cleared only once its commit is visible to new snapshots.
CREATE FUNCTION opscore_feed_mark(OUT reserved BIGINT, OUT xid_bound BIGINT, OUT after_xmin BIGINT)
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    oldest xid8;
BEGIN
    SELECT CASE WHEN is_called THEN last_value ELSE last_value - 1 END
        INTO reserved FROM event_index;
    -- The next xid to be assigned, read after the sequence: age() measures
    -- from it (a transaction without an xid of its own reads it on its
    -- first call) and is a 32-bit difference, so it is taken from a 64-bit
    -- xid less than 2^31 behind (the oldest running one), whose epoch it
    -- then carries. pg_snapshot_xmax() would not do: it is one past the
    -- latest *completed* xid, and a running transaction may hold a larger
    -- one.
    oldest := pg_snapshot_xmin(pg_current_snapshot());
    xid_bound := CAST(CAST(oldest AS TEXT) AS BIGINT) + age(xid(oldest));
    -- age() measures from the same next xid as xid_bound (it is stable
    -- for the transaction), so xid_bound - age(x) is x in 64 bits.
    SELECT COALESCE(MIN(xid_bound - age(backend_xid)), xid_bound) INTO after_xmin
        FROM pg_stat_activity
        WHERE datname = current_database() AND backend_xid IS NOT NULL;
END $$;
