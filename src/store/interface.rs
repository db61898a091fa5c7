//! The storage interface the service runs on, in parts: agents and their
//! states, workflows, the change feed, retention and API keys. Both
//! backends implement every part and run the same test suite.

use std::sync::Arc;

use async_trait::async_trait;

use super::*;
use crate::domain::agent::{AgentId, Registration};
use crate::domain::audit::{Actor, AuditEntry};
use crate::domain::state::StateReport;
use crate::domain::time::Micros;
use crate::domain::workflow::{SessionStatus, WorkflowDefinition};

/// The storage interface the service runs on: agents and their states,
/// workflows, the feed, retention, keys and the audit trail. Every method
/// that makes a change an operator asked for takes the [`Actor`] who asked,
/// and records an audit entry in the change's own transaction. Both backends implement it and both run the same test suite.
pub trait Store:
    AgentStore + WorkflowStore + EventStore + RetentionStore + KeyStore + AuditStore
{
}

impl<T: AgentStore + WorkflowStore + EventStore + RetentionStore + KeyStore + AuditStore> Store
    for T
{
}

/// The audit trail. Entries are written by the transactions that make
/// the changes (each changing method takes the [`Actor`] it records);
/// this reads and prunes them.
#[async_trait]
pub trait AuditStore: Send + Sync + 'static {
    /// A page of entries, newest first.
    async fn list_audit(&self, q: &AuditQuery) -> StoreResult<Vec<AuditEntry>>;

    /// Delete up to `limit` of the oldest entries written before `before`.
    async fn prune_audit_before(&self, before: Micros, limit: u32) -> StoreResult<u64>;
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
    /// Store a new key, audited as made `by`. A key id that exists
    /// already is a `Conflict`.
    async fn create_key(&self, key: &crate::domain::apikey::ApiKey, by: &Actor) -> StoreResult<()>;

    /// One key by id; `NotFound` (`Entity::Key`) when there is none.
    async fn get_key(&self, key_id: &str) -> StoreResult<crate::domain::apikey::ApiKey>;

    /// Every key, oldest first, revoked and expired ones included.
    async fn list_keys(&self) -> StoreResult<Vec<crate::domain::apikey::ApiKey>>;

    /// Revoke a key (idempotent: a second call keeps the first time, and
    /// only the first is audited) and return it; `NotFound` when there is
    /// none.
    async fn revoke_key(
        &self,
        key_id: &str,
        by: &Actor,
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

    /// Take up to `want` tokens from the stored rate-limit bucket `bucket`
    /// (a key id; `""` for the bootstrap key) of a key limited to `rate`
    /// requests a second, under the bucket's lock
    /// ([`TokenBucket::take`](crate::domain::ratelimit::TokenBucket::take));
    /// a bucket not stored yet starts full.
    async fn take_rate_tokens(
        &self,
        bucket: &str,
        rate: u32,
        want: u32,
        now: Micros,
    ) -> StoreResult<crate::domain::ratelimit::Grant>;

    /// Keys other processes create or revoke from now on, as this process
    /// hears of them (while `follow_remote_events` runs). Nothing, where
    /// one process owns the database.
    fn key_changes(&self) -> tokio::sync::broadcast::Receiver<crate::store::KeyChange>;
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

    /// When the first event after index `after` happened (its `at`), or
    /// `None` when there is none (for the feed's lag).
    async fn first_event_after(&self, after: i64) -> StoreResult<Option<Micros>>;

    /// Whether something that changes `agent`'s state reads happened after
    /// index `after` (a blocking read's first check).
    async fn agent_changed_since(&self, agent: &AgentId, after: i64) -> StoreResult<bool>;

    /// Mark up to `limit` agents whose lease ran out as stale, announcing
    /// each on the feed; returns how many. Safe to run in every replica.
    async fn mark_stale_agents(&self, now: Micros, limit: u32) -> StoreResult<u64>;

    /// Delete up to `limit` of the oldest events written before `before`.
    async fn prune_events(&self, before: Micros, limit: u32) -> StoreResult<u64>;

    /// Bring the read model up to `events`, just read from the feed in
    /// index order (other replicas' commits among them), before the feed
    /// serves them. Registrations from elsewhere read their details from
    /// the database.
    async fn apply_feed_events(&self, events: &[crate::domain::event::Event]) -> StoreResult<()>;

    /// The feed index the read model was loaded at: the feed must start
    /// at or before it.
    fn read_model_head(&self) -> i64;

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
    async fn register_agent(
        &self,
        reg: &Registration,
        by: &Actor,
        now: Micros,
    ) -> StoreResult<RegisterOutcome>;

    /// Mark an agent deregistered. Unknown agent: `NotFound`.
    async fn deregister_agent(&self, id: &AgentId, by: &Actor, now: Micros) -> StoreResult<()>;

    /// Put a registered agent's current state back to `UNKNOWN` at `now`,
    /// as at registration (the next report becomes current whatever its
    /// timestamp), recorded in its history with `details`. For an operator
    /// to clear a state pinned by a skewed clock. Unknown or deregistered
    /// agent: `NotFound`.
    async fn reset_state(
        &self,
        id: &AgentId,
        details: Option<String>,
        by: &Actor,
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
        by: &Actor,
        now: Micros,
    ) -> StoreResult<Agent>;

    /// Store a batch of state reports in one transaction, and in the same
    /// transaction move on any task a report completes, starts or fails
    /// (docs/api.md §1.7). The outer error means nothing was stored; otherwise
    /// there is one result per report, in order (`NotFound` for an unknown or
    /// deregistered agent).
    async fn apply_state_reports(&self, reports: &[StateReport]) -> StoreResult<AppliedReports>;

    /// One agent with its current state, from the read model (memory).
    async fn get_agent(&self, id: &AgentId) -> StoreResult<Agent>;

    /// [`get_agent`](Self::get_agent) read from the database itself
    /// (`consistent=true`): every commit of every replica so far.
    async fn get_agent_consistent(&self, id: &AgentId) -> StoreResult<Agent>;

    /// One agent's current state and lease (a deregistered agent's too),
    /// from the read model (memory). `event_index` is never older than
    /// `current`: a blocking read waiting past it misses nothing and is not
    /// woken by what it already returned.
    async fn get_state(&self, id: &AgentId) -> StoreResult<AgentState>;

    /// [`get_state`](Self::get_state) read from the database itself, with
    /// the newest feed index about the agent from the same snapshot.
    async fn get_state_consistent(&self, id: &AgentId) -> StoreResult<AgentState>;

    /// A page of agents ordered by id. With a state filter, and unless
    /// `q.consistent`, answered from the read model.
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

    /// Agent reads answered so far, from memory and from the database (for
    /// metrics, and for tests that check reads stay off the database). No
    /// I/O.
    fn agent_reads(&self) -> AgentReads;

    /// Report batches stored so far, by how, in
    /// [`REPORT_BATCH_PATHS`](super::REPORT_BATCH_PATHS) order (for
    /// metrics, and for tests that check which way a batch went). No I/O.
    fn report_batches(&self) -> [u64; 2];
}

/// Workflows: definitions, sessions, and the durable queue of task runs.
#[async_trait]
pub trait WorkflowStore: Send + Sync + 'static {
    /// Store a definition: nothing changes when it is the newest revision
    /// of its id; otherwise it is stored as the next revision
    /// (docs/api.md §3.1). Returns what happened and the revision it is.
    async fn put_definition(
        &self,
        def: &WorkflowDefinition,
        by: &Actor,
        now: Micros,
    ) -> StoreResult<(PutOutcome, i64)>;

    /// One definition (its newest revision).
    async fn get_definition(&self, id: &str) -> StoreResult<WorkflowDefinition>;

    /// One definition's newest revision, with its number.
    async fn get_definition_record(&self, id: &str) -> StoreResult<DefinitionRecord>;

    /// Every definition's newest revision, by id.
    async fn list_definitions(&self) -> StoreResult<Vec<DefinitionRecord>>;

    /// A page of a definition id's revisions, newest first, before the
    /// revision `before` when given; `NotFound` when the id never had one
    /// (a deleted definition's revisions are still listed).
    async fn list_revisions(
        &self,
        id: &str,
        before: Option<i64>,
        limit: u32,
    ) -> StoreResult<Vec<DefinitionRecord>>;

    /// Delete a definition; `Conflict` while an unfinished session uses it.
    async fn delete_definition(&self, id: &str, by: &Actor, now: Micros) -> StoreResult<()>;

    /// Create a session and queue its first task (and store an inline
    /// definition), in one transaction. `NotFound` when the agent is unknown
    /// or deregistered.
    async fn create_session(&self, s: &NewSession, by: &Actor, now: Micros) -> StoreResult<()>;

    /// One session with its task runs.
    async fn get_session(&self, id: &str) -> StoreResult<SessionRecord>;

    /// A page of an agent's sessions, newest first (without runs).
    async fn list_sessions(&self, q: &SessionQuery) -> StoreResult<Vec<SessionRecord>>;

    /// A page of sessions across the fleet, newest first (without runs).
    async fn list_fleet_sessions(&self, q: &FleetSessionQuery) -> StoreResult<Vec<SessionRecord>>;

    /// How many sessions match `q`'s filters (its status, paging and limit
    /// aside), by status.
    async fn count_fleet_sessions(&self, q: &FleetSessionQuery) -> StoreResult<Vec<(String, i64)>>;

    /// Run a `failed` or `cancelled` session again (docs/api.md §3.7):
    /// its failed and cancelled runs are queued afresh, due at `now`, with
    /// a fresh retry budget; completed runs are kept. `NotFound` when
    /// unknown, `Conflict` when it is not failed or cancelled.
    async fn retry_session(&self, id: &str, by: &Actor, now: Micros) -> StoreResult<()>;

    /// Cancel a session and its unfinished runs; idempotent. `Conflict` when
    /// it already completed or failed. Returns the status it now has.
    async fn cancel_session(&self, id: &str, by: &Actor, now: Micros)
        -> StoreResult<SessionStatus>;

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

    /// The due time of the queued run that has been due longest at `now`,
    /// or `None` when no queued run is due (for metrics).
    async fn oldest_due_run(&self, now: Micros) -> StoreResult<Option<Micros>>;
}
