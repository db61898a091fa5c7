-- Which agents have a task waiting: a batch of state reports asks, to wake
-- the dispatcher only when a report may have made a queued task claimable.
CREATE INDEX task_runs_queued_by_agent ON task_runs (agent_id) WHERE status = 'queued';
