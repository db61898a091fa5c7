//! Persistence: the `Store` trait, its SQLite and PostgreSQL implementations,
//! and the group-commit writer that batches state reports.
//!
//! Handlers never see SQL errors: each backend maps them to [`StoreError`].

mod error;
mod health;
mod interface;
mod postgres;
pub mod readmodel;
mod reads;
mod sql;
mod sqlite;
pub mod writer;

use std::sync::Arc;

use serde_json::{Map, Value};

use crate::domain::agent::AgentId;
use crate::domain::event::SessionEnd;
use crate::domain::run_rules::WaitingFor;
use crate::domain::state::StateRecord;
use crate::domain::time::Micros;
use crate::domain::trace::TraceContext;
use crate::domain::workflow::{AgentSelector, RunStatus, SessionStatus, WorkflowDefinition};

pub use crate::domain::engine_rules::{EngineRules, Jitter, NewRun};
pub use crate::domain::liveness::Liveness;
pub use error::{Entity, StoreError, StoreResult};
pub use interface::{
    AgentStore, AuditStore, EventStore, KeyStore, RetentionStore, Store, WorkflowStore,
};
pub use postgres::PgStore;
pub use sqlite::SqliteStore;

/// Whether a registration created the agent or updated an existing one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegisterOutcome {
    /// First registration.
    Created,
    /// The agent existed; its details were updated (and it is registered again
    /// if it had been deregistered).
    Updated,
}

/// An agent as stored: registration details plus its current state.
#[derive(Debug, Clone)]
pub struct Agent {
    /// The agent's id.
    pub agent_id: String,
    /// Human name.
    pub name: String,
    /// Version string.
    pub version: String,
    /// Declared capabilities.
    pub capabilities: Vec<String>,
    /// Where it is reached.
    pub contact_endpoint: String,
    /// Free-form metadata object.
    pub metadata: Map<String, Value>,
    /// First registration time.
    pub registered_at: Micros,
    /// Last time the registration details changed.
    pub updated_at: Micros,
    /// When it was deregistered, if it is.
    pub deregistered_at: Option<Micros>,
    /// Last time the server heard from it (registration or report).
    pub last_seen: Micros,
    /// Its own lease TTL, if its registration set one.
    pub ttl_secs: Option<i64>,
    /// Its current state.
    pub current: StateRecord,
}

impl Agent {
    /// Whether its lease has run out at `now` (see [`Liveness::holds_stale`]).
    pub fn is_stale(&self, live: &Liveness, now: Micros) -> bool {
        live.holds_stale(self.deregistered_at, self.last_seen, self.ttl_secs, now)
    }
}

/// How a batch of state reports was stored, in the order of
/// [`AgentStore::report_batches`]: in one statement committed on its own
/// (PostgreSQL, when the batch moves no task on), or in a transaction of
/// several statements.
pub const REPORT_BATCH_PATHS: [&str; 2] = ["one_statement", "transaction"];

/// The agent reads [`AgentStore::agent_reads`] counts, in its order.
pub const AGENT_READS: [&str; 3] = ["state", "agent", "list"];

/// Agent reads this process has answered since it started, by where the
/// answer came from: one count per [`AGENT_READS`] entry, in its order.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AgentReads {
    /// Answered from the in-memory read model.
    pub memory: [u64; 3],
    /// Answered by a query of the database.
    pub database: [u64; 3],
}

/// What storing a batch of state reports did.
#[derive(Debug)]
pub struct AppliedReports {
    /// One result per report, in order (`NotFound` for an unknown or
    /// deregistered agent).
    pub results: Vec<StoreResult<()>>,
    /// Whether a queued task may have become claimable: a task moved on, or
    /// an agent with a queued task became `idle` (or `UNKNOWN`) or came back
    /// from stale. The dispatcher is woken only then, so that a stream of
    /// reports does not make it query after every batch.
    pub dispatchable: bool,
}

/// What a state read needs of an agent: its current state and lease, without
/// the registration details.
#[derive(Debug, Clone)]
pub struct AgentState {
    /// The agent's id.
    pub agent_id: String,
    /// Its current state.
    pub current: StateRecord,
    /// Last time the server heard from it (registration or report).
    pub last_seen: Micros,
    /// Its own lease TTL, if its registration set one.
    pub ttl_secs: Option<i64>,
    /// When it was deregistered, if it is.
    pub deregistered_at: Option<Micros>,
    /// Feed index of the newest event about it, as of the same moment as
    /// `current` (see [`AgentStore::get_state`]).
    pub event_index: Option<i64>,
}

impl AgentState {
    /// Whether its lease has run out at `now` (see [`Liveness::holds_stale`]).
    pub fn is_stale(&self, live: &Liveness, now: Micros) -> bool {
        live.holds_stale(self.deregistered_at, self.last_seen, self.ttl_secs, now)
    }
}

/// Filters and paging for listing agents.
#[derive(Debug, Clone, Default)]
pub struct AgentQuery {
    /// Only agents whose current state is this.
    pub state: Option<String>,
    /// Only agents declaring this capability.
    pub capability: Option<String>,
    /// Include deregistered agents.
    pub include_deregistered: bool,
    /// Only stale (`Some(true)`) or only fresh (`Some(false)`) agents, as of
    /// `now`.
    pub stale: Option<bool>,
    /// The time staleness is judged at.
    pub now: Micros,
    /// Start after this agent id (keyset pagination).
    pub after: Option<String>,
    /// Page size.
    pub limit: u32,
    /// Read the database rather than the read model.
    pub consistent: bool,
}

/// Paging for state history, newest first.
#[derive(Debug, Clone, Default)]
pub struct HistoryQuery {
    /// Start strictly before this (timestamp, sequence) position.
    pub before: Option<(Micros, i64)>,
    /// Page size.
    pub limit: u32,
}

/// A history entry with its position, for the next page's cursor.
#[derive(Debug, Clone)]
pub struct HistoryEntry {
    /// Storage sequence number, the tie-breaker within one timestamp.
    pub seq: i64,
    /// The state itself.
    pub record: StateRecord,
}

/// How many of each agent's newest records a per-agent pass keeps (`None`:
/// no limit).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KeepPerAgent {
    /// State history entries.
    pub history: Option<u32>,
    /// Finished sessions.
    pub sessions: Option<u32>,
}

/// What a per-agent retention pass did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PerAgentPass {
    /// Where the next pass starts (`None`: the last agent was reached).
    pub next: Option<String>,
    /// Rows deleted.
    pub deleted: u64,
}

/// A managed key another replica created or revoked: what this process's
/// key cache must read again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyChange {
    /// The key with this id.
    Key(String),
    /// Any key: changes may have been missed (the connection that hears
    /// them was down), so every cached key is read again.
    All,
}

/// Where a store that follows other replicas delivers what they did.
#[derive(Debug, Clone)]
pub struct RemoteSignals {
    /// Notified when another process commits events.
    pub events: Arc<tokio::sync::Notify>,
    /// Told when another process creates or revokes a key.
    pub keys: tokio::sync::broadcast::Sender<KeyChange>,
}

/// What the event table holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventBounds {
    /// Every event at or below this index was deleted by retention.
    pub pruned_through: i64,
    /// The newest index written (`pruned_through` when there are none).
    pub head: i64,
}

/// Use of one connection pool at a moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolStats {
    /// Which pool: `main` (PostgreSQL), `writer` or `reader` (SQLite).
    pub name: &'static str,
    /// Connections open (idle or in use).
    pub size: u32,
    /// Connections open and idle.
    pub idle: usize,
    /// Most connections the pool may open.
    pub max: u32,
}

impl PoolStats {
    /// The current use of `pool`.
    pub fn of<DB: sqlx::Database>(name: &'static str, pool: &sqlx::Pool<DB>) -> Self {
        Self {
            name,
            size: pool.size(),
            idle: pool.num_idle(),
            max: pool.options().get_max_connections(),
        }
    }
}

/// Tuning for opening a store.
/// Its `Default` is that of the settings (`OPSCORE_*`), written in `config`.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// Most connections in the pool (PostgreSQL), or readers (SQLite).
    pub max_connections: u32,
    /// How long a request waits for a connection before `Unavailable`.
    pub acquire_timeout: std::time::Duration,
    /// The workflow rules the store applies inside its transactions.
    pub engine: EngineRules,
    /// Told of each session this process's commits end.
    pub on_session_end: OnSessionEnd,
}

/// What the store tells, right after a commit, of each session that commit
/// ended (see [`SessionEnd`]): the end of a session is told once, by the
/// process whose transaction ended it, never by the others that read it
/// from the change feed. None by default.
#[derive(Clone, Default)]
pub struct OnSessionEnd(Option<Arc<SessionEndFn>>);

type SessionEndFn = dyn Fn(&SessionEnd) + Send + Sync;

impl OnSessionEnd {
    /// Call `f` for each session ended.
    pub fn new(f: impl Fn(&SessionEnd) + Send + Sync + 'static) -> Self {
        Self(Some(Arc::new(f)))
    }

    pub(crate) fn tell(&self, end: &SessionEnd) {
        if let Some(f) = &self.0 {
            f(end);
        }
    }
}

impl std::fmt::Debug for OnSessionEnd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "OnSessionEnd(set)"
        } else {
            "OnSessionEnd(none)"
        })
    }
}

/// Whether storing a definition created it, found it unchanged, or stored
/// it as the next revision (docs/api.md §3.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutOutcome {
    /// Its id was not stored (never, or deleted since): a new revision.
    Created,
    /// It is identical to the newest revision: nothing stored.
    Unchanged,
    /// It differs from the newest revision: stored as the next one.
    Revised,
}

/// A stored revision of a definition.
#[derive(Debug, Clone)]
pub struct DefinitionRecord {
    /// The definition (defaults filled in).
    pub definition: WorkflowDefinition,
    /// Its revision number, from 1.
    pub revision: i64,
    /// When this revision was stored.
    pub stored_at: Micros,
}

/// A session to create, with every task run (none for an empty workflow).
#[derive(Debug, Clone)]
pub struct NewSession {
    /// Session id (UUIDv7).
    pub session_id: String,
    /// The agent of a per-agent trigger (docs/api.md §1.4); `None` for a
    /// pool (§3.3).
    pub agent_id: Option<AgentId>,
    /// Which agents may take its tasks.
    pub selector: AgentSelector,
    /// The definition it runs.
    pub definition: WorkflowDefinition,
    /// Also store the definition (sent inline with the trigger) when its
    /// id is new, in the same transaction.
    pub store_definition: bool,
    /// Its runs, queued in the same transaction.
    pub runs: Vec<NewRun>,
    /// The trace of the request that triggered it, which each of its
    /// dispatches joins.
    pub trace: Option<TraceContext>,
}

/// A session as stored.
#[derive(Debug, Clone)]
pub struct SessionRecord {
    /// Id.
    pub session_id: String,
    /// Definition id.
    pub workflow_id: String,
    /// The agent of a per-agent trigger; `None` for a pool.
    pub agent_id: Option<String>,
    /// Which agents may take its tasks.
    pub selector: AgentSelector,
    /// Status.
    pub status: SessionStatus,
    /// The last task's result, once completed.
    pub result: Option<Box<serde_json::value::RawValue>>,
    /// Why it failed.
    pub error: Option<String>,
    /// The definition revision it runs; `None` for an inline definition
    /// that differs from every stored revision.
    pub revision: Option<i64>,
    /// Created.
    pub created_at: Micros,
    /// Last change.
    pub updated_at: Micros,
    /// Reached a final status.
    pub finished_at: Option<Micros>,
    /// Its task runs in order (empty in listings).
    pub runs: Vec<RunRecord>,
}

/// A task run as stored.
#[derive(Debug, Clone)]
pub struct RunRecord {
    /// Run id.
    pub run_id: String,
    /// The definition's task id.
    pub task_id: String,
    /// Task name.
    pub task_name: String,
    /// Status.
    pub status: RunStatus,
    /// Attempts made.
    pub attempts: i64,
    /// Retries allowed after the first attempt.
    pub max_retries: i64,
    /// Payload sent.
    pub payload: Option<Box<serde_json::value::RawValue>>,
    /// When queued: due time (`None` while it waits for its
    /// dependencies); in flight: deadline.
    pub due_at: Option<Micros>,
    /// Last dispatch.
    pub dispatched_at: Option<Micros>,
    /// Agent reported active.
    pub started_at: Option<Micros>,
    /// Reached a final status.
    pub finished_at: Option<Micros>,
    /// Last failure reason.
    pub last_error: Option<String>,
    /// The agent's details when it finished.
    pub result: Option<Box<serde_json::value::RawValue>>,
    /// The agent it was sent to (or is pinned to), if any yet.
    pub agent_id: Option<String>,
    /// The finishing report's `details.output`.
    pub output: Option<Box<serde_json::value::RawValue>>,
    /// Why it is not sent yet (docs/api.md §3.6); `None` once sent.
    pub waiting_for: Option<WaitingFor>,
}

/// Whose audit entries to list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ActorFilter {
    /// Those of one managed key, by id.
    Key(String),
    /// Those of every actor of a type (`bootstrap`, `webhook`, ...).
    Type(crate::domain::audit::ActorType),
}

/// Filters and paging of the audit trail, newest first.
#[derive(Debug, Clone, Default)]
pub struct AuditQuery {
    /// Only this actor's entries.
    pub actor: Option<ActorFilter>,
    /// Only these kinds.
    pub kinds: Option<Vec<crate::domain::audit::AuditKind>>,
    /// Only entries about this agent, session, workflow or key id.
    pub target: Option<String>,
    /// Only entries at or after this time.
    pub since: Option<Micros>,
    /// Only entries before this time.
    pub until: Option<Micros>,
    /// Start strictly before this entry id (the cursor).
    pub before: Option<i64>,
    /// Page size.
    pub limit: u32,
}

/// Filters and paging for an agent's sessions, newest first.
#[derive(Debug, Clone)]
pub struct SessionQuery {
    /// Whose sessions.
    pub agent_id: AgentId,
    /// Only this status.
    pub status: Option<SessionStatus>,
    /// Start strictly before this session id.
    pub before: Option<String>,
    /// Page size.
    pub limit: u32,
}

/// Filters and paging for sessions across the fleet, newest first
/// (docs/api.md §3.2).
#[derive(Debug, Clone, Default)]
pub struct FleetSessionQuery {
    /// Only this status.
    pub status: Option<SessionStatus>,
    /// Only sessions of this definition id.
    pub workflow_id: Option<String>,
    /// Only sessions with a task run on this agent.
    pub agent_id: Option<String>,
    /// Only sessions created at or after this time.
    pub since: Option<Micros>,
    /// Only sessions created before this time.
    pub until: Option<Micros>,
    /// Start strictly before this session id (the cursor).
    pub before: Option<String>,
    /// Page size.
    pub limit: u32,
}

/// A run claimed for dispatch.
#[derive(Debug, Clone)]
pub struct ClaimedRun {
    /// Run id (`opscore_task_id`).
    pub run_id: String,
    /// Session.
    pub session_id: String,
    /// Task name.
    pub task_name: String,
    /// Agent.
    pub agent_id: String,
    /// The agent's contact endpoint (direct mode).
    pub contact_endpoint: String,
    /// JSON payload.
    pub payload: String,
    /// This attempt's number, from 1.
    pub attempt: i64,
    /// The claim's own token (fencing): its outcome is recorded with it.
    pub claim: String,
    /// The session's trace, which the dispatch joins.
    pub trace: Option<TraceContext>,
    /// The outputs of the tasks it depends on, as a JSON object
    /// (docs/api.md §3.4); `None` for a start task.
    pub inputs: Option<String>,
}

/// How a dispatch attempt went.
#[derive(Debug, Clone)]
pub enum DispatchOutcome {
    /// The framework accepted it.
    Accepted,
    /// It failed and may be retried, not before the given time (Retry-After).
    Retry {
        /// Why.
        error: String,
        /// Earliest retry time the target asked for.
        not_before: Option<Micros>,
    },
    /// It failed and must not be retried (a 4xx).
    Fail {
        /// Why.
        error: String,
    },
}

/// Open the database named by `url` (`sqlite://…` or `postgres://…`) and run
/// its migrations.
pub async fn connect(url: &str, opts: &StoreOptions) -> anyhow::Result<Arc<dyn Store>> {
    if url.starts_with("sqlite:") {
        Ok(Arc::new(SqliteStore::open(url, opts).await?))
    } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
        Ok(Arc::new(PgStore::open(url, opts).await?))
    } else {
        anyhow::bail!("unsupported database URL scheme (expected sqlite:// or postgres://)")
    }
}

/// Apply migrations only, for `opscore migrate`.
pub async fn migrate(url: &str) -> anyhow::Result<()> {
    let store = connect(url, &StoreOptions::default()).await?;
    store.close().await;
    Ok(())
}

/// Parse a capabilities JSON array as stored.
fn decode_capabilities(text: &str) -> Vec<String> {
    serde_json::from_str(text).unwrap_or_default()
}

/// Parse a metadata JSON object as stored.
fn decode_metadata(text: &str) -> Map<String, Value> {
    serde_json::from_str(text).unwrap_or_default()
}

/// Parse stored details text back into raw JSON.
fn decode_details(text: Option<String>) -> Option<Box<serde_json::value::RawValue>> {
    text.and_then(|t| serde_json::value::RawValue::from_string(t).ok())
}

/// A registration of `id` for the store's own tests; `ttl` is its lease.
#[cfg(test)]
pub(crate) fn test_registration(id: &str, ttl: Option<i64>) -> crate::domain::agent::Registration {
    crate::domain::agent::Registration {
        agent_id: AgentId::parse(id).expect("id"),
        name: id.into(),
        version: "1".into(),
        capabilities: vec![],
        contact_endpoint: "http://127.0.0.1:1".into(),
        metadata: Default::default(),
        ttl_secs: ttl,
    }
}

#[cfg(test)]
mod tests {
    use sqlx::Connection;

    use super::*;

    /// `Liveness::expired_sql`, run by SQLite, agrees with `is_stale` on
    /// either side of the limit, with and without the agent's own TTL, with
    /// placeholders and with inlined numbers, and with a column prefix.
    #[tokio::test]
    async fn expired_sql_agrees_with_is_stale() {
        let mut db = sqlx::SqliteConnection::connect("sqlite::memory:")
            .await
            .unwrap();
        let s = 1_000_000;
        for live in [
            Liveness::default(),
            Liveness {
                ttl_secs: Some(60),
                grace_secs: 5,
            },
            Liveness {
                ttl_secs: Some(1),
                grace_secs: 0,
            },
        ] {
            // With no lease at all (the default server, an agent with no
            // TTL of its own) the limit is never reached.
            let default_limit = live
                .ttl_secs
                .map_or(i64::MAX / 4, |t| (t + live.grace_secs) * s);
            let own_limit = (30 + live.grace_secs) * s;
            let mut cases = Vec::new();
            for (ttl, limit) in [(None, default_limit), (Some(30), own_limit)] {
                let last_seen = 1_700_000_000 * s;
                for now in [
                    last_seen - 1,
                    last_seen,
                    last_seen + limit - 1,
                    last_seen + limit,
                    last_seen + limit + 1,
                    last_seen + limit + 3600 * s,
                ] {
                    cases.push((last_seen, ttl, now));
                }
            }
            // Both sides of the limit are covered, so a rule off by one
            // either way fails.
            let stale: Vec<bool> = cases
                .iter()
                .map(|&(seen, ttl, now)| live.is_stale(seen, ttl, now))
                .collect();
            assert!(stale.contains(&true) && stale.contains(&false));
            for (&(last_seen, ttl, now), &want) in cases.iter().zip(&stale) {
                let bound = format!(
                    "SELECT {} FROM (SELECT $1 AS last_seen_us, $2 AS ttl_secs) a",
                    Liveness::expired_sql("a.", "$3", "$4", "$5")
                );
                let got: bool = sqlx::query_scalar(&bound)
                    .bind(last_seen)
                    .bind(ttl)
                    .bind(live.ttl_secs)
                    .bind(live.grace_secs)
                    .bind(now)
                    .fetch_one(&mut db)
                    .await
                    .unwrap();
                let case = format!("{live:?}, last_seen {last_seen}, ttl {ttl:?}, now {now}");
                assert_eq!(got, want, "placeholders: {case}");
                let inlined = format!(
                    "SELECT {} FROM (SELECT $1 AS last_seen_us, $2 AS ttl_secs)",
                    Liveness::expired_sql(
                        "",
                        &live.ttl_sql(),
                        &live.grace_secs.to_string(),
                        &now.to_string()
                    )
                );
                let got: bool = sqlx::query_scalar(&inlined)
                    .bind(last_seen)
                    .bind(ttl)
                    .fetch_one(&mut db)
                    .await
                    .unwrap();
                assert_eq!(got, want, "inlined: {case}");
            }
        }
    }
}
