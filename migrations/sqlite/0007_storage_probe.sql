-- /ready proves the database takes writes by committing a change to this
-- one row (at most about once a second per process).
CREATE TABLE storage_probe (
    id     INTEGER NOT NULL PRIMARY KEY CHECK (id = 1),
    probes BIGINT  NOT NULL
);
