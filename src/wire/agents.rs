//! Agents and their states: the registration's `agent_details`, an agent,
//! a stored state, a state read.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::{time, RawJson};

/// What a registration tells the server about an agent (the webhook's
/// `agent_details`, as AgentKit sends it). The server reads it field by
/// field (`domain::agent::NotifyBody`) to name every bad one.
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

/// A stored state: an agent's current state or a history entry.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = StateView)]
pub struct StateEntry {
    /// The state name.
    pub state: String,
    /// The report's details object, or null.
    #[schema(value_type = Option<Object>)]
    pub details: Option<RawJson>,
    /// The agent's own timestamp of the report.
    #[serde(with = "time")]
    #[schema(value_type = String)]
    pub timestamp: DateTime<Utc>,
    /// When the service received it.
    #[serde(with = "time")]
    #[schema(value_type = String)]
    pub received_at: DateTime<Utc>,
}

/// The current state with the agent id, as docs/api.md §1.3 shows it, plus
/// whether the agent's lease has run out.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = CurrentStateView)]
pub struct CurrentState {
    /// The agent.
    pub agent_id: String,
    /// Its current state.
    #[serde(flatten)]
    pub state: StateEntry,
    /// Last time the server heard from the agent.
    #[serde(default, with = "time::option")]
    #[schema(value_type = String, required = true)]
    pub last_seen: Option<DateTime<Utc>>,
    /// Its lease ran out.
    #[serde(default)]
    #[schema(value_type = bool, required = true)]
    pub stale: Option<bool>,
}

/// An agent's registration and current state.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = AgentView)]
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
    #[schema(value_type = Object)]
    pub metadata: Map<String, Value>,
    /// False once deregistered.
    pub registered: bool,
    /// First registration.
    #[serde(with = "time")]
    #[schema(value_type = String)]
    pub registered_at: DateTime<Utc>,
    /// Last change to the registration.
    #[serde(with = "time")]
    #[schema(value_type = String)]
    pub updated_at: DateTime<Utc>,
    /// When it went away, if it did.
    #[serde(default, with = "time::option")]
    #[schema(value_type = Option<String>)]
    pub deregistered_at: Option<DateTime<Utc>>,
    /// Last time the server heard from it (registration or report).
    #[serde(with = "time")]
    #[schema(value_type = String)]
    pub last_seen: DateTime<Utc>,
    /// Its lease ran out: not heard from within `ttlSeconds` (plus grace).
    /// Stale agents are never sent a task.
    #[serde(default)]
    #[schema(value_type = bool, required = true)]
    pub stale: Option<bool>,
    /// Its lease in seconds: its own (from the registration's
    /// `metadata.ttlSeconds` or `PUT .../lease`), else `OPSCORE_AGENT_TTL_SECS`;
    /// null when it holds none (the default), and then it is never stale.
    pub ttl_seconds: Option<i64>,
    /// Its current state.
    pub current_state: StateEntry,
}
