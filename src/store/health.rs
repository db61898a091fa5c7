//! Whether the database can take the service's writes, and keeping a
//! connection that could not end its transaction out of the pool.
//!
//! A failed statement or COMMIT must never leave a connection inside a
//! transaction: every later "commit" on it would only release a savepoint
//! of that transaction, acknowledged and never stored. sqlx rolls back a
//! transaction dropped without a commit when the connection goes back to
//! its pool, but its count of open transactions can part from the
//! database's: SQLite rolls the whole transaction back by itself when a
//! COMMIT fails for a full disk, the ROLLBACK sqlx then sends fails ("no
//! transaction is active"), the count stays at one, and the next `begin`
//! opens a savepoint instead of a transaction. [`release_check`] runs as
//! each connection goes back to its pool and closes any that still counts
//! an open transaction once the pending rollback has run.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::LazyLock;
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use sqlx::pool::PoolConnectionMetadata;
use sqlx::Connection;

/// The tables the service reads and writes. `/ready` checks each is there
/// (and, on PostgreSQL, that the service holds SELECT, INSERT, UPDATE and
/// DELETE on it).
pub(super) const TABLES: [&str; 14] = [
    "agents",
    "agent_capabilities",
    "state_history",
    "workflow_definitions",
    "workflow_revisions",
    "sessions",
    "task_runs",
    "events",
    "event_retention",
    "api_keys",
    "webhook_signatures",
    "storage_probe",
    "audit_log",
    "rate_buckets",
];

/// The tables of [`TABLES`] as the JSON array the backends' table checks
/// bind.
pub(super) fn tables_json() -> String {
    serde_json::Value::from(TABLES.to_vec()).to_string()
}

/// The write `/ready` commits: it changes a row every time, so the database
/// has something to write and commit (an UPDATE that changes nothing may
/// write nothing).
pub(super) const PROBE_WRITE: &str = "INSERT INTO storage_probe (id, probes) VALUES (1, 1) \
     ON CONFLICT (id) DO UPDATE SET probes = storage_probe.probes + 1";

/// For a pool's `after_release`: keep the connection unless it is still in a
/// transaction after its pending rollback ran (see the module docs). Such a
/// connection is closed, which ends its transaction, and the pool opens a
/// fresh one when it next needs it.
pub(super) fn release_check<C: Connection>(
    conn: &mut C,
    _: PoolConnectionMetadata,
) -> BoxFuture<'_, Result<bool, sqlx::Error>> {
    Box::pin(async move {
        if !conn.is_in_transaction() {
            return Ok(true);
        }
        // The rollback of a dropped transaction is queued on the connection:
        // a round trip runs it.
        conn.ping().await?;
        if conn.is_in_transaction() {
            tracing::warn!(
                "a database connection is still inside a transaction that failed; closing it"
            );
            return Ok(false);
        }
        Ok(true)
    })
}

/// How long a pooled connection may sit idle before it is pinged when
/// handed out ([`idle_check`]).
const PING_AFTER_IDLE: std::time::Duration = std::time::Duration::from_secs(1);

/// When a statement last found its connection ended by the database, in
/// microseconds after [`EPOCH`] (0: never). One clock for the process:
/// the pools' callbacks see only a connection, not the store it serves,
/// and a ping too many costs a round trip, not a request.
static LAST_LOSS_US: AtomicU64 = AtomicU64::new(0);
static EPOCH: LazyLock<Instant> = LazyLock::new(Instant::now);

/// A statement found its connection ended by the database
/// ([`StoreError::ConnectionLost`](super::StoreError::ConnectionLost)):
/// the others pooled with it likely were too.
pub(super) fn note_connection_lost() {
    let at = u64::try_from(EPOCH.elapsed().as_micros()).unwrap_or(u64::MAX);
    LAST_LOSS_US.store(at.max(1), Ordering::Release);
}

/// Whether a connection idle for `idle_for` went idle before the last
/// connection loss was noticed.
fn idle_since_a_loss(idle_for: Duration) -> bool {
    let lost = LAST_LOSS_US.load(Ordering::Acquire);
    let now = u64::try_from(EPOCH.elapsed().as_micros()).unwrap_or(u64::MAX);
    let idle = u64::try_from(idle_for.as_micros()).unwrap_or(u64::MAX);
    lost > 0 && now.saturating_sub(idle) <= lost
}

/// For a pool's `before_acquire`, in place of sqlx's ping on every
/// acquire: ping only a connection idle for [`PING_AFTER_IDLE`] or more.
/// sqlx already pings each connection as it goes back to the pool, so one
/// handed out sooner was working a moment ago; the ping on acquire was a
/// round trip more for every batch and query under load (2 ms more each
/// with the database 1 ms away). One idle longer may have been cut off
/// (the database restarted), and so may one that went idle before a
/// statement found its own connection ended ([`note_connection_lost`]); a
/// failed ping here gets a fresh one.
pub(super) fn idle_check<C: Connection>(
    conn: &mut C,
    meta: PoolConnectionMetadata,
) -> BoxFuture<'_, Result<bool, sqlx::Error>> {
    Box::pin(async move {
        if meta.idle_for >= PING_AFTER_IDLE || idle_since_a_loss(meta.idle_for) {
            conn.ping().await?;
        }
        Ok(true)
    })
}
