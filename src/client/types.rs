//! What the server answers, as typed values. Every struct mirrors a response
//! body of `src/http/`; unknown fields are ignored, so a newer server (more
//! fields) still decodes. Statuses are kept as strings for the same reason:
//! a status this client does not know is shown, not refused.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

pub use crate::domain::workflow::{TaskDefinition, WorkflowDefinition};

/// A page of a listing and the cursor of the next page (`None` on the last).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Page<T> {
    /// The results.
    pub items: Vec<T>,
    /// Pass as `cursor` to get the next page.
    pub next_cursor: Option<String>,
}

/// The `{status, message}` answer of the webhook and of a state report.
#[derive(Debug, Clone, Deserialize)]
pub struct StatusMessage {
    /// `success`.
    pub status: String,
    /// What happened, in words.
    pub message: String,
}

/// One stored state: an agent's current state or a history entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StateEntry {
    /// The state name (`idle`, `active`, `UNKNOWN`, …).
    pub state: String,
    /// The report's details, if any.
    pub details: Option<Value>,
    /// The agent's own timestamp of the report.
    pub timestamp: DateTime<Utc>,
    /// When the server received it.
    pub received_at: DateTime<Utc>,
}

/// `GET /v1/opscore/agent/{id}/state`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CurrentState {
    /// The agent.
    pub agent_id: String,
    /// Its current state.
    #[serde(flatten)]
    pub state: StateEntry,
}

/// An agent's registration and current state (GET agent, listing items).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Agent {
    /// Its id.
    pub agent_id: String,
    /// Human name.
    pub agent_name: String,
    /// Version string it registered with.
    pub version: String,
    /// What it can do.
    pub capabilities: Vec<String>,
    /// Where tasks go in direct dispatch mode.
    pub contact_endpoint: String,
    /// Free-form registration metadata.
    pub metadata: Map<String, Value>,
    /// False once deregistered.
    pub registered: bool,
    /// First registration.
    pub registered_at: DateTime<Utc>,
    /// Last change to the registration.
    pub updated_at: DateTime<Utc>,
    /// When it went away, if it did.
    pub deregistered_at: Option<DateTime<Utc>>,
    /// The last time the server heard from it.
    pub last_seen: DateTime<Utc>,
    /// Its current state.
    pub current_state: StateEntry,
    /// Whether its lease ran out (servers with leases only).
    #[serde(default)]
    pub stale: Option<bool>,
    /// Its lease length (servers with leases only).
    #[serde(default)]
    pub ttl_seconds: Option<u64>,
}

/// What a registration tells the server about an agent (the webhook's
/// `agent_details`).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Registration {
    /// Its id.
    pub agent_id: String,
    /// Human name.
    pub agent_name: String,
    /// Version string.
    pub version: String,
    /// What it can do.
    pub capabilities: Vec<String>,
    /// Absolute http(s) URL tasks are sent to in direct mode.
    pub contact_endpoint: String,
    /// Free-form metadata.
    pub metadata: Map<String, Value>,
}

/// A workflow session (GET session, cancel, listing items).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Session {
    /// Its id (UUIDv7).
    pub session_id: String,
    /// The definition it runs.
    pub workflow_id: String,
    /// The agent it runs on.
    pub agent_id: String,
    /// `started`, `running`, `completed`, `failed` or `cancelled`.
    pub status: String,
    /// The last task's result once completed.
    pub result: Option<Value>,
    /// Why it failed or was cancelled.
    pub error: Option<String>,
    /// When it was triggered.
    pub created_at: DateTime<Utc>,
    /// Its last change.
    pub updated_at: DateTime<Utc>,
    /// When it ended.
    pub finished_at: Option<DateTime<Utc>>,
    /// Its task runs (GET and cancel only; listings leave them out).
    #[serde(default)]
    pub tasks: Option<Vec<TaskRun>>,
}

/// One task of a session, as far as it got.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TaskRun {
    /// The run's id, sent to the agent as `opscore_task_id`.
    pub run_id: String,
    /// The definition's task id.
    pub task_id: String,
    /// The task's name.
    pub name: String,
    /// `queued`, `dispatching`, `dispatched`, `running`, `completed`,
    /// `failed` or `cancelled`.
    pub status: String,
    /// Attempts made.
    pub attempts: i64,
    /// Retries allowed after the first attempt.
    pub max_retries: i64,
    /// What was (or will be) sent to the agent.
    pub payload: Option<Value>,
    /// When queued: when it becomes due; in flight: its deadline.
    pub due_at: Option<DateTime<Utc>>,
    /// When the latest attempt was accepted for delivery.
    pub dispatched_at: Option<DateTime<Utc>>,
    /// When the agent reported `active`.
    pub started_at: Option<DateTime<Utc>>,
    /// When it ended.
    pub finished_at: Option<DateTime<Utc>>,
    /// The latest failure.
    pub last_error: Option<String>,
    /// The completing report's details.
    pub result: Option<Value>,
}

/// The 202 answer of a trigger.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Triggered {
    /// The new session.
    pub session_id: String,
    /// The definition it runs.
    pub workflow_id: String,
    /// `Workflow triggered successfully`.
    pub message: String,
}

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
