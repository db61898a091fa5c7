#!/bin/sh
# Adds N registered agents (fleet-0 ... fleet-N-1, state idle, a one-day
# lease so none goes stale during a run) straight into the database of a
# STOPPED Ops-Core, for the large-fleet figures (docs/performance.md).
# Registering them through the API takes about 25 minutes per million here,
# one transaction each; this takes seconds. The load tool then registers,
# loads and removes its own agents beside them. The target is a SQLite file
# or a PostgreSQL URL (psql must be installed).
#
#   benches/preload_fleet.sh DATA_DIR/opscore.db 1000000
#   benches/preload_fleet.sh postgres://postgres@127.0.0.1/opscore 1000000
set -eu
db=$1
n=$2
case "$db" in
postgres://*|postgresql://*)
  psql -q -v ON_ERROR_STOP=1 "$db" <<SQL
BEGIN;
INSERT INTO agents (agent_id, name, version, contact_endpoint, capabilities, metadata,
                    registered_at_us, updated_at_us, last_seen_us, state, state_details,
                    state_ts_us, state_received_us, state_reported, ttl_secs)
SELECT 'fleet-' || i, 'fleet ' || i, '1.0', 'http://127.0.0.1:9/', '["summarise"]', '{}',
       now, now, now, 'idle', NULL, now, now, 1, 86400
FROM generate_series(0, $n - 1) AS i,
     (SELECT CAST(EXTRACT(EPOCH FROM clock_timestamp()) AS BIGINT) * 1000000 AS now) AS t;
INSERT INTO agent_capabilities (capability, agent_id)
SELECT 'summarise', agent_id FROM agents WHERE agent_id LIKE 'fleet-%';
COMMIT;
ANALYZE agents;
SQL
  echo "$(psql -tA "$db" -c 'SELECT COUNT(*) FROM agents') agents in $db"
  exit 0
  ;;
esac
[ -f "$db" ] || { echo "no database at $db: start and stop opscore once first" >&2; exit 2; }
sqlite3 "$db" <<SQL
PRAGMA journal_mode = WAL;
BEGIN;
WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < $n - 1),
     t(now) AS (SELECT CAST(strftime('%s', 'now') AS INTEGER) * 1000000)
INSERT INTO agents (agent_id, name, version, contact_endpoint, capabilities, metadata,
                    registered_at_us, updated_at_us, last_seen_us, state, state_details,
                    state_ts_us, state_received_us, state_reported, ttl_secs)
SELECT 'fleet-' || i, 'fleet ' || i, '1.0', 'http://127.0.0.1:9/', '["summarise"]', '{}',
       now, now, now, 'idle', NULL, now, now, 1, 86400
FROM n, t;
INSERT INTO agent_capabilities (capability, agent_id)
SELECT 'summarise', agent_id FROM agents WHERE agent_id LIKE 'fleet-%';
COMMIT;
SQL
echo "$(sqlite3 "$db" 'SELECT COUNT(*) FROM agents') agents in $db"
