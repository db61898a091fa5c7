//! Persistence: the `Store` trait, its SQLite and PostgreSQL implementations,
//! and the group-commit writer that batches state reports.
//!
//! Handlers never see SQL errors: each backend maps them to [`StoreError`].

mod postgres;
mod sql;
mod sqlite;
pub mod writer;

use std::sync::Arc;

use async_trait::async_trait;
use serde_json::{Map, Value};

use crate::domain::agent::{AgentId, Registration};
use crate::domain::state::{StateRecord, StateReport};
use crate::domain::time::Micros;

pub use postgres::PgStore;
pub use sqlite::SqliteStore;

/// What went wrong in storage, in terms a handler can act on.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The addressed row does not exist.
    #[error("{entity} not found: {id}")]
    NotFound {
        /// Kind of thing, e.g. "Agent".
        entity: &'static str,
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

impl StoreError {
    /// Shorthand for a missing agent.
    pub fn agent_not_found(id: &AgentId) -> Self {
        Self::NotFound {
            entity: "Agent",
            id: id.to_string(),
        }
    }
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        use sqlx::Error as E;
        match e {
            E::RowNotFound => Self::NotFound {
                entity: "Row",
                id: String::new(),
            },
            E::PoolTimedOut | E::PoolClosed | E::Io(_) | E::Tls(_) | E::Protocol(_) => {
                Self::Unavailable(e.to_string())
            }
            E::Database(ref db) => {
                if db.is_unique_violation() {
                    return Self::Conflict(db.message().to_owned());
                }
                // SQLite: busy, locked, read-only, disk full, I/O error;
                // PostgreSQL: connection exceptions (08xxx), admin shutdown
                // (57P01..57P03), insufficient resources (53xxx).
                let code = db.code().map(|c| c.into_owned()).unwrap_or_default();
                let transient = matches!(
                    code.as_str(),
                    "5" | "6" | "8" | "10" | "13" | "14" | "261" | "517"
                ) || code.starts_with("08")
                    || code.starts_with("53")
                    || code.starts_with("57P");
                if transient {
                    Self::Unavailable(e.to_string())
                } else {
                    Self::Internal(e.to_string())
                }
            }
            other => Self::Internal(other.to_string()),
        }
    }
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
    /// Its current state.
    pub current: StateRecord,
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

/// The storage interface the service runs on. Both backends implement it and
/// both run the same test suite.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Check the database answers and its migrations are applied.
    async fn ready(&self) -> StoreResult<()>;

    /// Create or update an agent. A new agent's state is `UNKNOWN` on return.
    async fn register_agent(&self, reg: &Registration, now: Micros)
        -> StoreResult<RegisterOutcome>;

    /// Mark an agent deregistered. Unknown agent: `NotFound`.
    async fn deregister_agent(&self, id: &AgentId, now: Micros) -> StoreResult<()>;

    /// Store a batch of state reports in one transaction. The outer error
    /// means nothing was stored; otherwise there is one result per report, in
    /// order (`NotFound` for an unknown or deregistered agent).
    async fn apply_state_reports(
        &self,
        reports: &[StateReport],
    ) -> StoreResult<Vec<StoreResult<()>>>;

    /// One agent with its current state.
    async fn get_agent(&self, id: &AgentId) -> StoreResult<Agent>;

    /// A page of agents ordered by id.
    async fn list_agents(&self, q: &AgentQuery) -> StoreResult<Vec<Agent>>;

    /// A page of an agent's state history, newest first. Unknown agent:
    /// `NotFound`.
    async fn state_history(&self, id: &AgentId, q: &HistoryQuery)
        -> StoreResult<Vec<HistoryEntry>>;

    /// Release connections; called once at shutdown.
    async fn close(&self);
}

/// Tuning for opening a store.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// Most connections in the pool (PostgreSQL), or readers (SQLite).
    pub max_connections: u32,
    /// How long a request waits for a connection before `Unavailable`.
    pub acquire_timeout: std::time::Duration,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            max_connections: 16,
            acquire_timeout: std::time::Duration::from_secs(5),
        }
    }
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
