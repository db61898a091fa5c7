-- The audit trail: who changed what through the API (keys, definitions,
-- triggers, cancels, state resets, leases, registrations). Each row is
-- written by the transaction that makes the change, and kept for
-- OPSCORE_AUDIT_RETENTION_SECS (its own retention, longer than the change
-- feed's). The actor columns never hold a secret: a key by id, name and
-- role; the webhook by the position of the secret that verified it.
CREATE TABLE audit_log (
    id           BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at_us        BIGINT  NOT NULL,
    kind         TEXT    NOT NULL,
    actor_type   TEXT    NOT NULL,
    actor_key_id TEXT,
    actor_name   TEXT    NOT NULL,
    actor_role   TEXT,
    agent_id     TEXT,
    session_id   TEXT,
    workflow_id  TEXT,
    key_id       TEXT,
    details      TEXT    NOT NULL -- JSON object
);

-- The listing's filters, newest first within each.
CREATE INDEX audit_by_actor ON audit_log (actor_key_id, id);
CREATE INDEX audit_by_agent ON audit_log (agent_id, id);
CREATE INDEX audit_by_session ON audit_log (session_id, id);
CREATE INDEX audit_by_workflow ON audit_log (workflow_id, id);
CREATE INDEX audit_by_key ON audit_log (key_id, id);
