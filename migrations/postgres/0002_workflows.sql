-- Workflow definitions, sessions and their task runs. The queue of due
-- tasks is the task_runs table itself, so a restart loses nothing.
CREATE TABLE workflow_definitions (
    workflow_id   TEXT    NOT NULL PRIMARY KEY,
    name          TEXT    NOT NULL,
    definition    TEXT    NOT NULL, -- canonical JSON
    created_at_us BIGINT NOT NULL,
    updated_at_us BIGINT NOT NULL
);

-- Session ids are UUIDv7, so ordering by id is ordering by creation.
CREATE TABLE sessions (
    session_id     TEXT    NOT NULL PRIMARY KEY,
    workflow_id    TEXT    NOT NULL,
    agent_id       TEXT    NOT NULL,
    definition     TEXT    NOT NULL, -- the definition this session runs, as triggered
    status         TEXT    NOT NULL, -- started | running | completed | failed | cancelled
    result         TEXT,
    error          TEXT,
    created_at_us  BIGINT NOT NULL,
    updated_at_us  BIGINT NOT NULL,
    finished_at_us BIGINT
);

CREATE INDEX sessions_by_agent ON sessions (agent_id, session_id);
CREATE INDEX sessions_by_workflow ON sessions (workflow_id, status);

-- One row per task of a session. due_at_us means: when queued, the time it
-- may be sent; when dispatching, when the dispatcher's lease ends; when
-- dispatched or running, the attempt's deadline.
CREATE TABLE task_runs (
    run_id           TEXT    NOT NULL PRIMARY KEY,
    session_id       TEXT    NOT NULL REFERENCES sessions (session_id) ON DELETE CASCADE,
    position         BIGINT  NOT NULL,
    task_id          TEXT    NOT NULL,
    task_name        TEXT    NOT NULL,
    agent_id         TEXT    NOT NULL,
    status           TEXT    NOT NULL, -- queued | dispatching | dispatched | running | completed | failed | cancelled
    payload          TEXT    NOT NULL,
    attempts         BIGINT  NOT NULL DEFAULT 0,
    max_retries      BIGINT  NOT NULL,
    timeout_secs     BIGINT NOT NULL,
    due_at_us        BIGINT NOT NULL,
    lease_owner      TEXT,
    dispatched_at_us BIGINT,
    started_at_us    BIGINT,
    finished_at_us   BIGINT,
    last_error       TEXT,
    result           TEXT,
    created_at_us    BIGINT NOT NULL
);

CREATE INDEX task_runs_due ON task_runs (status, due_at_us);
CREATE INDEX task_runs_by_session ON task_runs (session_id, position);
-- The database itself guarantees an agent has at most one task in flight,
-- whatever number of dispatchers race for it.
CREATE UNIQUE INDEX task_runs_one_in_flight ON task_runs (agent_id)
    WHERE status IN ('dispatching', 'dispatched', 'running');
