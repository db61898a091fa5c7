-- The change feed: every registration, deregistration, state change, lease
-- change and session/task transition, numbered in commit order. Sequence
-- values are not handed out in commit order by themselves; every
-- transaction that writes events takes one advisory lock just before it
-- inserts them and holds it to its commit, so a reader that has seen index
-- N has seen everything below N.
CREATE TABLE events (
    idx        BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    kind       TEXT   NOT NULL,
    agent_id   TEXT,
    session_id TEXT,
    at_us      BIGINT NOT NULL,
    data       TEXT   NOT NULL -- JSON object
);

CREATE INDEX events_by_agent ON events (agent_id, idx);

-- Leases. ttl_secs overrides the global TTL for one agent (from its
-- registration metadata). stale_since_us is when the agent was announced
-- stale; NULL or 0 means fresh (0 marks the report that announced it fresh
-- again, and is cleared by the next one).
ALTER TABLE agents ADD COLUMN ttl_secs BIGINT;
ALTER TABLE agents ADD COLUMN stale_since_us BIGINT;

-- Everything at or below pruned_through has been deleted by retention: a
-- feed client resuming from below it has missed events and is told so
-- (gaps in idx alone cannot tell, as a rolled-back insert leaves one).
CREATE TABLE event_retention (
    id             INTEGER NOT NULL PRIMARY KEY CHECK (id = 1),
    pruned_through BIGINT  NOT NULL
);
INSERT INTO event_retention (id, pruned_through) VALUES (1, 0);
