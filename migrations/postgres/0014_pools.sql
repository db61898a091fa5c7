-- Pools, parallel tasks and outputs (docs/api.md §3.3-§3.6).
--
-- A session's agent selector: sessions.agent_id is the agent of a
-- per-agent trigger (docs/api.md §1.4) and '' for a pool session;
-- pool_capability and the session_agents rows (pool_agents of them; 0:
-- any agent) say which agents may take its tasks. Sessions from before
-- this migration are pools of their one agent.
ALTER TABLE sessions ADD COLUMN selector TEXT; -- as triggered (JSON), NULL for a per-agent trigger
ALTER TABLE sessions ADD COLUMN pool_capability TEXT;
ALTER TABLE sessions ADD COLUMN pool_agents BIGINT NOT NULL DEFAULT 1;

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
-- details.output.
ALTER TABLE task_runs ALTER COLUMN agent_id DROP NOT NULL;
ALTER TABLE task_runs ADD COLUMN deps_left BIGINT NOT NULL DEFAULT 0;
ALTER TABLE task_runs ADD COLUMN capability TEXT;
ALTER TABLE task_runs ADD COLUMN inputs_from TEXT;
ALTER TABLE task_runs ADD COLUMN output TEXT;
ALTER TABLE task_runs ADD COLUMN queue_timeout_secs BIGINT NOT NULL DEFAULT 300;
-- Queued runs no agent holds yet: a report that frees an agent asks.
CREATE INDEX task_runs_unassigned ON task_runs (due_at_us) WHERE status = 'queued' AND agent_id IS NULL;
