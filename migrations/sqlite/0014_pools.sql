-- Pools, parallel tasks and outputs (docs/api.md §3.3-§3.6).
--
-- A session's agent selector: sessions.agent_id is the agent of a
-- per-agent trigger (docs/api.md §1.4) and '' for a pool session;
-- pool_capability and the session_agents rows (pool_agents of them; 0:
-- any agent) say which agents may take its tasks. Sessions from before
-- this migration are pools of their one agent.
ALTER TABLE sessions ADD COLUMN selector TEXT; -- as triggered (JSON), NULL for a per-agent trigger
ALTER TABLE sessions ADD COLUMN pool_capability TEXT;
ALTER TABLE sessions ADD COLUMN pool_agents INTEGER NOT NULL DEFAULT 1;

CREATE TABLE session_agents (
    session_id TEXT NOT NULL REFERENCES sessions (session_id) ON DELETE CASCADE,
    agent_id   TEXT NOT NULL,
    PRIMARY KEY (session_id, agent_id)
);
INSERT INTO session_agents (session_id, agent_id) SELECT session_id, agent_id FROM sessions;

-- Every task of a session has its run from the trigger on. agent_id is
-- NULL until a claim picks an agent (a per-agent session's runs carry
-- their agent from the start); deps_left counts the run's unfinished
-- dependencies (claimable only at 0); capability is what its agent must
-- have (pool sessions only); inputs_from the task ids whose outputs its
-- dispatch carries (JSON array); output the finishing report's
-- details.output. SQLite cannot drop a NOT NULL: the table is rebuilt.
CREATE TABLE task_runs_new (
    run_id             TEXT    NOT NULL PRIMARY KEY,
    session_id         TEXT    NOT NULL REFERENCES sessions (session_id) ON DELETE CASCADE,
    position           INTEGER NOT NULL,
    task_id            TEXT    NOT NULL,
    task_name          TEXT    NOT NULL,
    agent_id           TEXT,
    status             TEXT    NOT NULL,
    payload            TEXT    NOT NULL,
    attempts           INTEGER NOT NULL DEFAULT 0,
    max_retries        INTEGER NOT NULL,
    timeout_secs       INTEGER NOT NULL,
    due_at_us          INTEGER NOT NULL,
    lease_owner        TEXT,
    dispatched_at_us   INTEGER,
    started_at_us      INTEGER,
    finished_at_us     INTEGER,
    last_error         TEXT,
    result             TEXT,
    created_at_us      INTEGER NOT NULL,
    last_report_ts_us  BIGINT,
    deps_left          INTEGER NOT NULL DEFAULT 0,
    capability         TEXT,
    inputs_from        TEXT,
    output             TEXT,
    queue_timeout_secs INTEGER NOT NULL DEFAULT 300
);
INSERT INTO task_runs_new (run_id, session_id, position, task_id, task_name, agent_id, status,
    payload, attempts, max_retries, timeout_secs, due_at_us, lease_owner, dispatched_at_us,
    started_at_us, finished_at_us, last_error, result, created_at_us, last_report_ts_us)
SELECT run_id, session_id, position, task_id, task_name, agent_id, status,
    payload, attempts, max_retries, timeout_secs, due_at_us, lease_owner, dispatched_at_us,
    started_at_us, finished_at_us, last_error, result, created_at_us, last_report_ts_us
FROM task_runs;
DROP TABLE task_runs;
ALTER TABLE task_runs_new RENAME TO task_runs;

CREATE INDEX task_runs_due ON task_runs (status, due_at_us);
CREATE INDEX task_runs_by_session ON task_runs (session_id, position);
-- The database itself guarantees an agent has at most one task in flight,
-- whatever number of dispatchers race for it.
CREATE UNIQUE INDEX task_runs_one_in_flight ON task_runs (agent_id)
    WHERE status IN ('dispatching', 'dispatched', 'running');
CREATE INDEX task_runs_queued_by_agent ON task_runs (agent_id) WHERE status = 'queued';
-- Queued runs no agent holds yet: a report that frees an agent asks.
CREATE INDEX task_runs_unassigned ON task_runs (due_at_us) WHERE status = 'queued' AND agent_id IS NULL;
-- 0013's "sessions with a task on this agent" index went with the old table.
CREATE INDEX task_runs_by_agent ON task_runs (agent_id, session_id);
