-- Definition revisions (docs/api.md §3.1): every content ever stored under a
-- definition id, numbered from 1. workflow_definitions keeps the newest
-- revision (and its number), so reads and triggers by id stay one lookup.
-- Deleting a definition removes it from workflow_definitions only: its
-- revisions stay, so a session's revision always names what it ran, and
-- storing the id again continues the numbering.
CREATE TABLE workflow_revisions (
    workflow_id   TEXT    NOT NULL,
    revision      INTEGER  NOT NULL,
    name          TEXT    NOT NULL,
    definition    TEXT    NOT NULL, -- canonical JSON
    created_at_us INTEGER  NOT NULL,
    PRIMARY KEY (workflow_id, revision)
);

ALTER TABLE workflow_definitions ADD COLUMN revision INTEGER NOT NULL DEFAULT 1;

INSERT INTO workflow_revisions (workflow_id, revision, name, definition, created_at_us)
    SELECT workflow_id, 1, name, definition, updated_at_us FROM workflow_definitions;

-- The revision a session started with; NULL for an inline definition that
-- differs from every stored revision. Sessions from before this migration
-- that run the stored definition are revision 1.
ALTER TABLE sessions ADD COLUMN revision INTEGER;
UPDATE sessions SET revision = 1 WHERE definition =
    (SELECT d.definition FROM workflow_definitions d WHERE d.workflow_id = sessions.workflow_id);

-- The fleet-wide session listing (docs/api.md §3.2), newest first under
-- each filter. Session ids are UUIDv7, so id order is creation order.
CREATE INDEX sessions_by_status ON sessions (status, session_id);
CREATE INDEX sessions_by_workflow_id ON sessions (workflow_id, session_id);
CREATE INDEX sessions_by_created ON sessions (created_at_us);
-- "Sessions with a task on this agent".
CREATE INDEX task_runs_by_agent ON task_runs (agent_id, session_id);
