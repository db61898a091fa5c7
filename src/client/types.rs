//! What a client call asks for, and the answers only the client shapes.
//! The bodies themselves are [`crate::wire`]'s, shared with the server;
//! unknown fields are ignored, so a newer server (more fields) still
//! decodes.

use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::Value;

pub use crate::domain::workflow::{TaskDefinition, WorkflowDefinition};

/// The answer of `POST /v1/opscore/workflows`: the stored definition and
/// whether this call stored it (201) or it was already there (200).
#[derive(Debug, Clone)]
pub struct Stored {
    /// True for 201 Created.
    pub created: bool,
    /// The definition as stored (defaults filled in).
    pub definition: WorkflowDefinition,
}

/// Which definition a trigger runs.
#[derive(Debug, Clone)]
pub enum TriggerSource {
    /// A stored definition, by id.
    Stored(String),
    /// An inline definition (stored if its id is new).
    Inline(WorkflowDefinition),
}

/// Filters of `GET /v1/opscore/agents`.
#[derive(Debug, Clone, Default)]
pub struct AgentFilter {
    /// Only agents whose current state is this.
    pub state: Option<String>,
    /// Only agents with this capability.
    pub capability: Option<String>,
    /// Deregistered agents too.
    pub include_deregistered: bool,
    /// Only stale (true) or fresh (false) agents (servers with leases).
    pub stale: Option<bool>,
}

/// Paging of any listing.
#[derive(Debug, Clone, Default)]
pub struct PageRequest {
    /// Page size (server default 100, at most 1000).
    pub limit: Option<u32>,
    /// The `nextCursor` of the previous page.
    pub cursor: Option<String>,
}

/// One change-feed event (`data:` of `GET /v1/opscore/events`).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FeedEvent {
    /// Its position in the feed; resume after it with `Last-Event-ID`.
    pub index: u64,
    /// `agent.state`, `session.status`, …
    pub kind: String,
    /// When it happened.
    pub at: DateTime<Utc>,
    /// The agent it concerns.
    #[serde(default)]
    pub agent_id: Option<String>,
    /// The session it concerns.
    #[serde(default)]
    pub session_id: Option<String>,
    /// Kind-specific fields.
    #[serde(default)]
    pub data: Value,
    /// The event's JSON exactly as the server sent it.
    #[serde(skip)]
    pub raw: String,
}
