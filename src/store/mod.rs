//! Persistence: the `Store` trait, its SQLite and PostgreSQL implementations,
//! and the group-commit writer that batches state reports.
//!
//! Handlers never see SQL errors: each backend maps them to [`StoreError`].

pub mod current;
mod events_sql;
mod health;
mod keys_sql;
mod postgres;
mod retention_sql;
mod sql;
mod sqlite;
mod workflow_sql;
pub mod writer;

use std::sync::Arc;

use async_trait::async_trait;
use serde_json::{Map, Value};

use crate::domain::agent::{AgentId, Registration};
use crate::domain::state::{StateRecord, StateReport};
use crate::domain::time::Micros;
use crate::domain::workflow::{
    Backoff, RunStatus, SessionStatus, TaskDefinition, WorkflowDefinition,
};

pub use postgres::PgStore;
pub use sqlite::SqliteStore;

/// What went wrong in storage, in terms a handler can act on.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The addressed row does not exist.
    #[error("{entity} not found: {id}")]
    NotFound {
        /// Kind of thing.
        entity: Entity,
        /// Its id.
        id: String,
    },
    /// The write conflicts with what is stored.
    #[error("conflict: {0}")]
    Conflict(String),
    /// The database cannot be reached or is not accepting writes right now.
    #[error("storage unavailable: {0}")]
    Unavailable(String),
    /// Anything else: a bug or corruption. Logged, never shown to clients.
    #[error("storage error: {0}")]
    Internal(String),
}

/// The kinds of thing a [`StoreError::NotFound`] can be about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Entity {
    /// An agent.
    Agent,
    /// A workflow session.
    Session,
    /// An API key.
    Key,
    /// A stored workflow definition.
    WorkflowDefinition,
    /// A row a query expected (sqlx's `RowNotFound`).
    Row,
}

impl std::fmt::Display for Entity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Agent => "Agent",
            Self::Session => "Session",
            Self::Key => "API key",
            Self::WorkflowDefinition => "Workflow definition",
            Self::Row => "Row",
        })
    }
}

impl StoreError {
    /// Shorthand for a missing agent.
    pub fn agent_not_found(id: &AgentId) -> Self {
        Self::NotFound {
            entity: Entity::Agent,
            id: id.to_string(),
        }
    }

    /// Shorthand for a missing thing of another kind.
    pub fn not_found(entity: Entity, id: &str) -> Self {
        Self::NotFound {
            entity,
            id: id.to_owned(),
        }
    }
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        use sqlx::Error as E;
        match e {
            E::RowNotFound => Self::NotFound {
                entity: Entity::Row,
                id: String::new(),
            },
            E::PoolTimedOut
            | E::PoolClosed
            | E::WorkerCrashed
            | E::Io(_)
            | E::Tls(_)
            | E::Protocol(_) => Self::Unavailable(e.to_string()),
            E::Database(ref db) => {
                if db.is_unique_violation() {
                    return Self::Conflict(db.message().to_owned());
                }
                let code = db.code().unwrap_or_default();
                let outage = if db
                    .try_downcast_ref::<sqlx::postgres::PgDatabaseError>()
                    .is_some()
                {
                    postgres_outage(&code)
                } else {
                    code.parse().is_ok_and(sqlite_outage)
                };
                if outage {
                    Self::Unavailable(e.to_string())
                } else {
                    Self::Internal(e.to_string())
                }
            }
            other => Self::Internal(other.to_string()),
        }
    }
}

/// Whether a SQLite result code means the database cannot take the request
/// right now (busy, locked, read-only, I/O error, disk full, cannot open,
/// no permission), rather than a fault in the statement. SQLite reports
/// extended codes; the primary code is the low byte.
fn sqlite_outage(code: u32) -> bool {
    const PERM: u32 = 3;
    const BUSY: u32 = 5;
    const LOCKED: u32 = 6;
    const READONLY: u32 = 8;
    const IOERR: u32 = 10;
    const FULL: u32 = 13;
    const CANTOPEN: u32 = 14;
    const PROTOCOL: u32 = 15;
    matches!(
        code & 0xff,
        PERM | BUSY | LOCKED | READONLY | IOERR | FULL | CANTOPEN | PROTOCOL
    )
}

/// Whether a PostgreSQL SQLSTATE means the database refuses the service
/// right now, rather than a fault in the statement: connection exceptions
/// (08), invalid authorization such as a role that may not log in (28),
/// insufficient resources such as a full disk (53), operator intervention
/// such as a shutdown (57P), system errors (58), a missing database
/// (3D000), a revoked privilege (42501), a missing table (42P01) and a
/// read-only transaction (25006).
fn postgres_outage(sqlstate: &str) -> bool {
    ["08", "28", "53", "57P", "58"]
        .iter()
        .any(|class| sqlstate.starts_with(class))
        || matches!(sqlstate, "3D000" | "42501" | "42P01" | "25006")
}

/// Result alias for storage calls.
pub type StoreResult<T> = Result<T, StoreError>;

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

/// The storage interface the service runs on: agents and their states, and
/// workflows. Both backends implement it and both run the same test suite.
pub trait Store: AgentStore + WorkflowStore + EventStore + RetentionStore + KeyStore {}

impl<T: AgentStore + WorkflowStore + EventStore + RetentionStore + KeyStore> Store for T {}

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

/// Retention: deleting old state history and finished sessions in small
/// batches. The current state (in the agent's row) and unfinished sessions
/// are never deleted.
#[async_trait]
pub trait RetentionStore: Send + Sync + 'static {
    /// Delete up to `limit` of the oldest history entries received before
    /// `before`.
    async fn prune_history_before(&self, before: Micros, limit: u32) -> StoreResult<u64>;

    /// Delete up to `limit` of the oldest sessions (with their task runs)
    /// that finished before `before`.
    async fn prune_sessions_before(&self, before: Micros, limit: u32) -> StoreResult<u64>;

    /// For up to `agents` agents after `after` in id order, keep only each
    /// one's newest history entries and finished sessions as `keep` says.
    async fn prune_per_agent(
        &self,
        after: Option<&str>,
        agents: u32,
        keep: &KeepPerAgent,
    ) -> StoreResult<PerAgentPass>;
}

/// Managed API keys (never their plaintext). Reads go through the cache in
/// `http::keyring`; nothing here is on the per-request path.
#[async_trait]
pub trait KeyStore: Send + Sync + 'static {
    /// Store a new key. A key id that exists already is a `Conflict`.
    async fn create_key(&self, key: &crate::domain::apikey::ApiKey) -> StoreResult<()>;

    /// One key by id; `NotFound` (`Entity::Key`) when there is none.
    async fn get_key(&self, key_id: &str) -> StoreResult<crate::domain::apikey::ApiKey>;

    /// Every key, oldest first, revoked and expired ones included.
    async fn list_keys(&self) -> StoreResult<Vec<crate::domain::apikey::ApiKey>>;

    /// Revoke a key (idempotent: a second call keeps the first time) and
    /// return it; `NotFound` when there is none.
    async fn revoke_key(
        &self,
        key_id: &str,
        now: Micros,
    ) -> StoreResult<crate::domain::apikey::ApiKey>;

    /// Record when keys were last used, in one transaction; a time older
    /// than the stored one changes nothing.
    async fn record_key_use(&self, uses: &[(String, Micros)]) -> StoreResult<()>;

    /// Remember an accepted webhook signature until `expires` (replay
    /// protection, shared by every replica and kept across restarts);
    /// `false` when it was remembered already: a replay. Signatures past
    /// their expiry at `now` are forgotten on the way.
    async fn first_sighting(
        &self,
        signature: &str,
        expires: Micros,
        now: Micros,
    ) -> StoreResult<bool>;

    /// Forget a signature whose delivery failed on our side, so that the
    /// sender's retry of it is let through.
    async fn forget_signature(&self, signature: &str) -> StoreResult<()>;
}

/// What the event table holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventBounds {
    /// Every event at or below this index was deleted by retention.
    pub pruned_through: i64,
    /// The newest index written (`pruned_through` when there are none).
    pub head: i64,
}

/// The change feed's events, and the lease sweep that writes some of them.
/// Every other event is written by the transaction that makes the change.
#[async_trait]
pub trait EventStore: Send + Sync + 'static {
    /// Up to `limit` events after index `after`, in index order.
    async fn read_events(
        &self,
        after: i64,
        limit: u32,
    ) -> StoreResult<Vec<crate::domain::event::Event>>;

    /// The retained range.
    async fn event_bounds(&self) -> StoreResult<EventBounds>;

    /// Whether something that changes `agent`'s state reads happened after
    /// index `after` (a blocking read's first check).
    async fn agent_changed_since(&self, agent: &AgentId, after: i64) -> StoreResult<bool>;

    /// Mark up to `limit` agents whose lease ran out as stale, announcing
    /// each on the feed; returns how many. Safe to run in every replica.
    async fn mark_stale_agents(&self, now: Micros, limit: u32) -> StoreResult<u64>;

    /// Delete up to `limit` of the oldest events written before `before`.
    async fn prune_events(&self, before: Micros, limit: u32) -> StoreResult<u64>;

    /// Notified after every commit of this process that wrote events.
    fn feed_signal(&self) -> Arc<tokio::sync::Notify>;

    /// Until `stop`, notify `wake` whenever another process commits events
    /// (PostgreSQL LISTEN/NOTIFY; SQLite has one process per database and
    /// returns at once).
    async fn follow_remote_events(
        &self,
        wake: Arc<tokio::sync::Notify>,
        stop: tokio_util::sync::CancellationToken,
    );
}

/// Agents, their states and history.
#[async_trait]
pub trait AgentStore: Send + Sync + 'static {
    /// Check the service can read and write: the migrations are applied,
    /// every table it uses is there (and granted to it, on PostgreSQL), and
    /// a small write commits. `Unavailable` names what is wrong.
    async fn ready(&self) -> StoreResult<()>;

    /// Create or update an agent. A new agent's state is `UNKNOWN` on return.
    async fn register_agent(&self, reg: &Registration, now: Micros)
        -> StoreResult<RegisterOutcome>;

    /// Mark an agent deregistered. Unknown agent: `NotFound`.
    async fn deregister_agent(&self, id: &AgentId, now: Micros) -> StoreResult<()>;

    /// Put a registered agent's current state back to `UNKNOWN` at `now`,
    /// as at registration (the next report becomes current whatever its
    /// timestamp), recorded in its history with `details`. For an operator
    /// to clear a state pinned by a skewed clock. Unknown or deregistered
    /// agent: `NotFound`.
    async fn reset_state(
        &self,
        id: &AgentId,
        details: Option<String>,
        now: Micros,
    ) -> StoreResult<()>;

    /// Set (or, with `None`, clear) a registered agent's own lease TTL, and
    /// return the agent. An agent announced stale whose lease no longer
    /// runs out is announced fresh; one whose new lease has run out is left
    /// to the lease sweep. Unknown or deregistered agent: `NotFound`.
    async fn set_agent_lease(
        &self,
        id: &AgentId,
        ttl_secs: Option<i64>,
        now: Micros,
    ) -> StoreResult<Agent>;

    /// Store a batch of state reports in one transaction, and in the same
    /// transaction move on any task a report completes, starts or fails
    /// (contract 1.7). The outer error means nothing was stored; otherwise
    /// there is one result per report, in order (`NotFound` for an unknown or
    /// deregistered agent).
    async fn apply_state_reports(&self, reports: &[StateReport]) -> StoreResult<AppliedReports>;

    /// One agent with its current state.
    async fn get_agent(&self, id: &AgentId) -> StoreResult<Agent>;

    /// One agent's current state and lease (a deregistered agent's too).
    /// `event_index` is never older than `current`: a blocking read waiting
    /// past it misses nothing and is not woken by what it already returned.
    /// SQLite answers from memory ([`current`]); PostgreSQL asks the
    /// database.
    async fn get_state(&self, id: &AgentId) -> StoreResult<AgentState>;

    /// A page of agents ordered by id.
    async fn list_agents(&self, q: &AgentQuery) -> StoreResult<Vec<Agent>>;

    /// A page of an agent's state history, newest first. Unknown agent:
    /// `NotFound`.
    async fn state_history(&self, id: &AgentId, q: &HistoryQuery)
        -> StoreResult<Vec<HistoryEntry>>;

    /// Release connections; called once at shutdown.
    async fn close(&self);

    /// How many registered agents are in each current state (for metrics).
    async fn count_agents_by_state(&self) -> StoreResult<Vec<(String, i64)>>;

    /// How many registered agents' leases have run out at `now`, by the
    /// same rule as the agent's `stale` flag (for metrics).
    async fn count_stale_agents(&self, now: Micros) -> StoreResult<i64>;

    /// Use of each connection pool (for metrics). No I/O.
    fn pool_stats(&self) -> Vec<PoolStats>;
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
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// Most connections in the pool (PostgreSQL), or readers (SQLite).
    pub max_connections: u32,
    /// How long a request waits for a connection before `Unavailable`.
    pub acquire_timeout: std::time::Duration,
    /// The workflow rules the store applies inside its transactions.
    pub engine: EngineRules,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            max_connections: 16,
            acquire_timeout: std::time::Duration::from_secs(5),
            engine: EngineRules::default(),
        }
    }
}

/// Workflow rules applied when a task moves on inside a storage transaction
/// (a report fails an attempt, a deadline passes, the next task is queued).
#[derive(Debug, Clone, Copy)]
pub struct EngineRules {
    /// Delay between attempts.
    pub backoff: Backoff,
    /// Deadline of an attempt whose task sets no `timeoutSeconds`.
    pub default_timeout_secs: u64,
    /// When an agent counts as stale.
    pub liveness: Liveness,
}

impl Default for EngineRules {
    fn default() -> Self {
        Self {
            backoff: Backoff::default(),
            default_timeout_secs: 300,
            liveness: Liveness::default(),
        }
    }
}

/// Agent leases, which are opt-in: an agent that holds a lease (its own
/// TTL, or the server-wide one) and is not heard from (by the server's
/// clock) for that TTL plus the grace margin is stale, and is sent no task.
/// An agent with no lease is never stale, however long it is silent: agents
/// that report only when their state changes (as AgentKit's do) keep their
/// tasks coming (docs/agents.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Liveness {
    /// TTL of agents that set none of their own, in seconds; `None` (the
    /// default): such agents hold no lease.
    pub ttl_secs: Option<i64>,
    /// Extra margin before an agent counts as stale, in seconds.
    pub grace_secs: i64,
}

impl Default for Liveness {
    fn default() -> Self {
        Self {
            ttl_secs: None,
            grace_secs: 5,
        }
    }
}

impl Liveness {
    /// The lease an agent with its own TTL `ttl_secs` (if any) holds: its
    /// own, else the server-wide one, else none.
    pub fn lease_secs(&self, ttl_secs: Option<i64>) -> Option<i64> {
        ttl_secs.or(self.ttl_secs)
    }

    /// Whether an agent last seen at `last_seen` with its own TTL
    /// `ttl_secs` (if any) is stale at `now`: it holds a lease, and that
    /// lease plus the grace has run out.
    pub fn is_stale(&self, last_seen: Micros, ttl_secs: Option<i64>, now: Micros) -> bool {
        let Some(ttl) = self.lease_secs(ttl_secs) else {
            return false;
        };
        let limit = ttl
            .saturating_add(self.grace_secs)
            .saturating_mul(1_000_000);
        now.saturating_sub(last_seen) > limit
    }

    /// Whether an agent holds a lease that has run out at `now`: registered
    /// (a deregistered agent holds no lease, so it is never stale) and
    /// [`is_stale`](Self::is_stale).
    pub fn holds_stale(
        &self,
        deregistered_at: Option<Micros>,
        last_seen: Micros,
        ttl_secs: Option<i64>,
        now: Micros,
    ) -> bool {
        deregistered_at.is_none() && self.is_stale(last_seen, ttl_secs, now)
    }

    /// The rule of [`is_stale`](Self::is_stale) as a SQL condition, true for
    /// an `agents` row whose lease has run out. Every query that judges
    /// leases takes it from here, so the rule is written once in SQL (the
    /// test at the end of this file checks it agrees with `is_stale`).
    ///
    /// `cols` prefixes the column names (`""`, or `"a."` for an aliased
    /// table); `ttl` (the default TTL, seconds, or NULL for none), `grace`
    /// (seconds) and `now` (microseconds) are placeholders such as `$2`, or
    /// values the server itself chose ([`ttl_sql`](Self::ttl_sql)), never
    /// text from a request. An agent with no lease has a NULL limit, and
    /// the condition is false for it, never NULL, so `NOT (…)` holds.
    pub(crate) fn expired_sql(cols: &str, ttl: &str, grace: &str, now: &str) -> String {
        Self::lease_over_sql(
            &format!("{cols}last_seen_us"),
            &format!("COALESCE({cols}ttl_secs, {ttl})"),
            grace,
            now,
        )
    }

    /// [`expired_sql`](Self::expired_sql) for any expression of the last
    /// sighting and of the lease in seconds (NULL: none).
    pub(crate) fn lease_over_sql(last_seen: &str, lease: &str, grace: &str, now: &str) -> String {
        format!("COALESCE({last_seen} + ({lease} + {grace}) * 1000000 < {now}, FALSE)")
    }

    /// The default TTL as an SQL literal, for [`expired_sql`](Self::expired_sql)
    /// when it is written into a statement rather than bound.
    pub(crate) fn ttl_sql(&self) -> String {
        self.ttl_secs
            .map_or_else(|| "NULL".to_owned(), |t| t.to_string())
    }
}

/// Whether storing a definition created it, found it unchanged, or replaced it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutOutcome {
    /// It was new.
    Created,
    /// An identical definition was already stored.
    Unchanged,
    /// A different definition under the same id was replaced (startup files only).
    Replaced,
}

/// A task run to insert.
#[derive(Debug, Clone)]
pub struct NewRun {
    /// Run id (UUIDv7).
    pub run_id: String,
    /// Position in the session (0 for the first task).
    pub position: i64,
    /// The definition's task id.
    pub task_id: String,
    /// The task's name.
    pub task_name: String,
    /// JSON payload sent to the agent.
    pub payload: String,
    /// Retries after the first attempt.
    pub max_retries: i64,
    /// Attempt deadline in seconds.
    pub timeout_secs: i64,
    /// When it becomes due.
    pub due_at: Micros,
}

impl NewRun {
    /// The run for `task` at `position`, due after its delay.
    pub fn for_task(
        task: &TaskDefinition,
        position: i64,
        payload: &serde_json::Value,
        now: Micros,
        rules: &EngineRules,
    ) -> Self {
        let delay_us =
            i64::try_from(task.delay_seconds).unwrap_or(i64::MAX / 2_000_000) * 1_000_000;
        Self {
            run_id: uuid::Uuid::now_v7().to_string(),
            position,
            task_id: task.task_id.clone(),
            task_name: if task.name.is_empty() {
                task.task_id.clone()
            } else {
                task.name.clone()
            },
            payload: payload.to_string(),
            max_retries: i64::from(task.max_retries),
            timeout_secs: task.timeout_seconds.unwrap_or(rules.default_timeout_secs) as i64,
            due_at: now.saturating_add(delay_us),
        }
    }
}

/// A session to create, with its first task run (none for an empty workflow).
#[derive(Debug, Clone)]
pub struct NewSession {
    /// Session id (UUIDv7).
    pub session_id: String,
    /// The agent that runs it.
    pub agent_id: AgentId,
    /// The definition it runs.
    pub definition: WorkflowDefinition,
    /// Also store the definition (sent inline with the trigger), in the same
    /// transaction: a different stored definition under its id is a
    /// `Conflict`, and a refused trigger stores nothing.
    pub store_definition: bool,
    /// Its first task, queued in the same transaction.
    pub first_run: Option<NewRun>,
}

/// A session as stored.
#[derive(Debug, Clone)]
pub struct SessionRecord {
    /// Id.
    pub session_id: String,
    /// Definition id.
    pub workflow_id: String,
    /// Agent.
    pub agent_id: String,
    /// Status.
    pub status: SessionStatus,
    /// The last task's result, once completed.
    pub result: Option<Box<serde_json::value::RawValue>>,
    /// Why it failed.
    pub error: Option<String>,
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
    /// When queued: due time; in flight: deadline.
    pub due_at: Micros,
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

/// Workflows: definitions, sessions, and the durable queue of task runs.
#[async_trait]
pub trait WorkflowStore: Send + Sync + 'static {
    /// Store a definition. With `replace` false a different definition under
    /// the same id is a `Conflict`; with true (startup files) it is replaced.
    async fn put_definition(
        &self,
        def: &WorkflowDefinition,
        replace: bool,
        now: Micros,
    ) -> StoreResult<PutOutcome>;

    /// One definition.
    async fn get_definition(&self, id: &str) -> StoreResult<WorkflowDefinition>;

    /// Every definition, by id.
    async fn list_definitions(&self) -> StoreResult<Vec<WorkflowDefinition>>;

    /// Delete a definition; `Conflict` while an unfinished session uses it.
    async fn delete_definition(&self, id: &str) -> StoreResult<()>;

    /// Create a session and queue its first task (and store an inline
    /// definition), in one transaction. `NotFound` when the agent is unknown
    /// or deregistered.
    async fn create_session(&self, s: &NewSession, now: Micros) -> StoreResult<()>;

    /// One session with its task runs.
    async fn get_session(&self, id: &str) -> StoreResult<SessionRecord>;

    /// A page of an agent's sessions, newest first (without runs).
    async fn list_sessions(&self, q: &SessionQuery) -> StoreResult<Vec<SessionRecord>>;

    /// Cancel a session and its unfinished runs; idempotent. `Conflict` when
    /// it already completed or failed. Returns the status it now has.
    async fn cancel_session(&self, id: &str, now: Micros) -> StoreResult<SessionStatus>;

    /// Claim up to `limit` due runs whose agent is free (idle, or UNKNOWN
    /// when allowed, with no other run in flight), leasing them to `owner`
    /// until `lease_until`. Expired leases and passed deadlines are dealt
    /// with first.
    async fn claim_due_runs(
        &self,
        owner: &str,
        now: Micros,
        lease_until: Micros,
        limit: u32,
        allow_unknown: bool,
    ) -> StoreResult<Vec<ClaimedRun>>;

    /// Record how dispatching attempt `attempt` of a run went, under the
    /// claim it was sent with ([`ClaimedRun::claim`]). A claim that ran out
    /// and was taken again (by any dispatcher, this one included) is left
    /// alone.
    async fn record_dispatch(
        &self,
        run_id: &str,
        claim: &str,
        attempt: i64,
        now: Micros,
        outcome: &DispatchOutcome,
    ) -> StoreResult<()>;

    /// Give back leases of dispatchers that stopped, and fail (or retry)
    /// attempts whose deadline passed. Returns how many runs were touched.
    async fn expire_overdue(&self, now: Micros) -> StoreResult<u64>;

    /// How many sessions are in each status (for metrics).
    async fn count_sessions_by_status(&self) -> StoreResult<Vec<(String, i64)>>;

    /// How many task runs are queued (for metrics).
    async fn count_queued_runs(&self) -> StoreResult<i64>;
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
pub(crate) fn test_registration(id: &str, ttl: Option<i64>) -> Registration {
    Registration {
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

    /// Outages (503) and statement faults (500), by the codes each
    /// database reports.
    #[test]
    fn database_codes_sort_into_outages_and_faults() {
        // SQLite: busy, locked, read-only (extended: cannot lock), I/O
        // (extended: write, fsync), full, cannot open, permission.
        for code in [5, 261, 517, 6, 8, 520, 10, 778, 1034, 13, 14, 3] {
            assert!(sqlite_outage(code), "{code}");
        }
        // SQLite: generic error, constraint (extended: foreign key),
        // corrupt, mismatch.
        for code in [1, 19, 787, 11, 20] {
            assert!(!sqlite_outage(code), "{code}");
        }
        for code in [
            "08006", "08001", "28000", "28P01", "53100", "53300", "57P01", "58030", "3D000",
            "42501", "42P01", "25006",
        ] {
            assert!(postgres_outage(code), "{code}");
        }
        for code in ["23503", "23514", "42601", "22P02", "40001", "P0001"] {
            assert!(!postgres_outage(code), "{code}");
        }
    }

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
