//! Workflow sessions, their task runs, and a trigger's answer. Statuses are
//! text on the Rust side, so a client shows a status it does not know
//! rather than refusing the answer; the document names the statuses.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::{time, RawJson};
use crate::domain::run_rules::WaitingFor;
use crate::domain::workflow::{AgentSelector, RunStatus, SessionStatus};

/// A session; `tasks` only when read by id.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = SessionView)]
pub struct Session {
    /// Its id (UUIDv7).
    pub session_id: String,
    /// The definition it runs.
    pub workflow_id: String,
    /// The agent of a per-agent trigger (docs/api.md §1.4); null for a
    /// session triggered on a pool (§3.3).
    pub agent_id: Option<String>,
    /// Which agents may take its tasks; a per-agent trigger's is
    /// `{"agentIds": [agentId]}`.
    #[serde(default)]
    pub agent_selector: AgentSelector,
    /// The definition revision it runs (docs/api.md §3.1); null for an
    /// inline definition that differs from every stored revision.
    #[serde(default)]
    pub revision: Option<i64>,
    /// `started`, `running`, `completed`, `failed` or `cancelled`.
    #[schema(value_type = SessionStatus)]
    pub status: String,
    /// The last task's result, once completed.
    #[schema(value_type = Option<Object>)]
    pub result: Option<RawJson>,
    /// Why it failed or was cancelled.
    pub error: Option<String>,
    /// When it was triggered.
    #[serde(with = "time")]
    #[schema(value_type = String)]
    pub created_at: DateTime<Utc>,
    /// Its last change.
    #[serde(with = "time")]
    #[schema(value_type = String)]
    pub updated_at: DateTime<Utc>,
    /// When it ended.
    #[serde(default, with = "time::option")]
    #[schema(value_type = Option<String>)]
    pub finished_at: Option<DateTime<Utc>>,
    /// Its task runs (read by id and cancel only; listings leave them out).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tasks: Option<Vec<TaskRun>>,
}

/// One task run of a session, as far as it got.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = RunView)]
pub struct TaskRun {
    /// The run's id, sent to the agent as `opscore_task_id`.
    pub run_id: String,
    /// The definition's task id.
    pub task_id: String,
    /// The task's name.
    pub name: String,
    /// Where the run is in its lifecycle.
    #[schema(value_type = RunStatus)]
    pub status: String,
    /// Attempts made.
    pub attempts: i64,
    /// Retries allowed after the first attempt.
    pub max_retries: i64,
    /// The payload sent to the agent.
    #[schema(value_type = Option<Object>)]
    pub payload: Option<RawJson>,
    /// When queued: the time it becomes due; in flight: its deadline.
    #[serde(default, with = "time::option")]
    #[schema(value_type = Option<String>)]
    pub due_at: Option<DateTime<Utc>>,
    /// When the latest attempt was accepted for delivery.
    #[serde(default, with = "time::option")]
    #[schema(value_type = Option<String>)]
    pub dispatched_at: Option<DateTime<Utc>>,
    /// When the agent reported `active`.
    #[serde(default, with = "time::option")]
    #[schema(value_type = Option<String>)]
    pub started_at: Option<DateTime<Utc>>,
    /// When it ended.
    #[serde(default, with = "time::option")]
    #[schema(value_type = Option<String>)]
    pub finished_at: Option<DateTime<Utc>>,
    /// The latest failure.
    pub last_error: Option<String>,
    /// The `details` of the report that completed it.
    #[schema(value_type = Option<Object>)]
    pub result: Option<RawJson>,
    /// The agent its latest attempt went to, or the session's agent; null
    /// while a pool's run waits for one.
    #[serde(default)]
    pub agent_id: Option<String>,
    /// The finishing report's `details.output` (docs/api.md §3.4).
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub output: Option<RawJson>,
    /// Why it is not sent yet (docs/api.md §3.6); null once sent or
    /// ended.
    #[serde(default)]
    pub waiting_for: Option<WaitingFor>,
}

/// The trigger's answer.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Triggered {
    /// The new session (UUIDv7).
    pub session_id: String,
    /// The definition it runs.
    pub workflow_id: String,
    /// Always `Workflow triggered successfully`.
    #[schema(example = "Workflow triggered successfully")]
    pub message: String,
}
