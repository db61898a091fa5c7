-- Agents and their states. Instants are whole microseconds since the Unix
-- epoch (UTC) so that ordering is exact and identical on both backends.
CREATE TABLE agents (
    agent_id           TEXT    NOT NULL PRIMARY KEY,
    name               TEXT    NOT NULL,
    version            TEXT    NOT NULL,
    contact_endpoint   TEXT    NOT NULL,
    capabilities       TEXT    NOT NULL, -- JSON array of strings
    metadata           TEXT    NOT NULL, -- JSON object
    registered_at_us   INTEGER NOT NULL,
    updated_at_us      INTEGER NOT NULL,
    deregistered_at_us INTEGER,
    last_seen_us       INTEGER NOT NULL,
    -- Current state. state_reported = 0 while it is still the UNKNOWN set at
    -- registration, which any report replaces whatever its timestamp.
    state              TEXT    NOT NULL,
    state_details      TEXT,
    state_ts_us        INTEGER NOT NULL,
    state_received_us  INTEGER NOT NULL,
    state_reported     INTEGER NOT NULL DEFAULT 0
);

CREATE INDEX agents_by_state ON agents (state, agent_id);

CREATE TABLE agent_capabilities (
    capability TEXT NOT NULL,
    agent_id   TEXT NOT NULL REFERENCES agents (agent_id) ON DELETE CASCADE,
    PRIMARY KEY (capability, agent_id)
);

CREATE TABLE state_history (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    agent_id    TEXT    NOT NULL,
    state       TEXT    NOT NULL,
    details     TEXT,
    ts_us       INTEGER NOT NULL,
    received_us INTEGER NOT NULL
);

CREATE INDEX state_history_by_agent ON state_history (agent_id, ts_us DESC, seq DESC);
