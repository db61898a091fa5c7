//! What a client call asks for, and the answers only the client shapes.
//! The bodies themselves are [`crate::wire`]'s, shared with the server;
//! unknown fields are ignored, so a newer server (more fields) still
//! decodes.

use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::Value;

pub use crate::domain::run_rules::WaitingFor;
pub use crate::domain::workflow::{AgentSelector, TaskDefinition, WorkflowDefinition};

/// The answer of `POST /v1/opscore/workflows`: the stored definition and
/// whether this call stored it (201) or it was already there (200).
#[derive(Debug, Clone)]
pub struct Stored {
    /// True for 201 Created.
    pub created: bool,
    /// The definition as stored (defaults filled in).
    pub definition: WorkflowDefinition,
    /// The revision it is (servers before revisions send none).
    pub revision: Option<i64>,
}

/// Filters of `GET /v1/opscore/sessions`.
#[derive(Debug, Clone, Default)]
pub struct SessionFilter {
    /// Only sessions in this status.
    pub status: Option<String>,
    /// Only sessions of this definition id.
    pub workflow_id: Option<String>,
    /// Only sessions with a task run on this agent.
    pub agent_id: Option<String>,
    /// RFC 3339: created at or after.
    pub since: Option<String>,
    /// RFC 3339: created before.
    pub until: Option<String>,
}

impl SessionFilter {
    /// The query parameters it sets.
    pub(crate) fn query(&self) -> Vec<(&'static str, String)> {
        [
            ("status", &self.status),
            ("workflowId", &self.workflow_id),
            ("agentId", &self.agent_id),
            ("since", &self.since),
            ("until", &self.until),
        ]
        .into_iter()
        .filter_map(|(k, v)| v.clone().map(|v| (k, v)))
        .collect()
    }
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

/// Who made a change, as an audit entry names it.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuditActor {
    /// `key`, `bootstrap`, `webhook`, `unsigned` or `system`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The managed key's id (`key` actors).
    pub key_id: Option<String>,
    /// The key's name, `bootstrap key`, `webhook secret N`, ...
    pub name: String,
    /// The key's role.
    pub role: Option<String>,
}

/// What a change was made to.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuditTarget {
    /// The agent.
    pub agent_id: Option<String>,
    /// The session.
    pub session_id: Option<String>,
    /// The workflow definition.
    pub workflow_id: Option<String>,
    /// The API key changed.
    pub key_id: Option<String>,
}

/// One entry of the audit trail (`GET /v1/opscore/audit`).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuditEntry {
    /// Its id, increasing in write order.
    pub id: i64,
    /// What kind of change, e.g. `audit.key.created`.
    pub kind: String,
    /// When.
    pub at: DateTime<Utc>,
    /// Who made it.
    pub actor: AuditActor,
    /// What it was made to.
    #[serde(default)]
    pub target: AuditTarget,
    /// Kind-specific facts.
    #[serde(default)]
    pub details: Value,
}

/// Filters of the audit listing (every one optional).
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    /// A key id, or an actor type (`bootstrap`, `webhook`, ...).
    pub actor: Option<String>,
    /// A kind, or a dotted prefix of kinds (`key`).
    pub kind: Option<String>,
    /// An agent, session, workflow or key id.
    pub target: Option<String>,
    /// RFC 3339: at or after.
    pub since: Option<String>,
    /// RFC 3339: before.
    pub until: Option<String>,
}
