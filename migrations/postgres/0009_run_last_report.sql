-- The agent's own timestamp of its latest report that moved a run (started,
-- finished or failed it). A report stamped before it is late news and does
-- not move the run again (docs/workflows.md).
ALTER TABLE task_runs ADD COLUMN last_report_ts_us BIGINT;
