//! Workflow sessions: read, list per agent, cancel.

use axum::extract::State;
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::access::{perm, Require};
use super::agents::{path_agent, AgentPath};
use super::extract::{Path, Query};
use super::paging::{bad_cursor, decode_cursor, next_cursor, parse_limit, Page, DEFAULT_LIMIT};
use crate::domain::time::{format_micros, now_micros};
use crate::domain::workflow::{RunStatus, SessionStatus};
use crate::domain::{FieldError, Validator};
use crate::error::{ApiError, ErrorBody, Result};
use crate::http::state::AppState;
use crate::store::{RunRecord, SessionQuery, SessionRecord};

/// Routes of this resource (see `http::openapi` for how to add one).
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(fetch))
        .routes(routes!(cancel))
        .routes(routes!(list))
}

/// The `sessionId` path parameter.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code)] // documents the path; handlers read it positionally
struct SessionPath {
    /// The session's id (UUIDv7).
    #[param(rename = "sessionId")]
    session_id: String,
}

/// A session; `tasks` only when read by id.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
struct SessionView {
    session_id: String,
    workflow_id: String,
    agent_id: String,
    status: SessionStatus,
    /// The last task's result, once completed.
    #[schema(value_type = Option<Object>)]
    result: Option<Box<RawValue>>,
    /// Why it failed or was cancelled.
    error: Option<String>,
    created_at: String,
    updated_at: String,
    finished_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tasks: Option<Vec<RunView>>,
}

/// One task run of a session.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
struct RunView {
    run_id: String,
    task_id: String,
    name: String,
    status: RunStatus,
    attempts: i64,
    max_retries: i64,
    /// The payload sent to the agent.
    #[schema(value_type = Option<Object>)]
    payload: Option<Box<RawValue>>,
    /// When queued: the time it becomes due; in flight: its deadline.
    due_at: Option<String>,
    dispatched_at: Option<String>,
    started_at: Option<String>,
    finished_at: Option<String>,
    last_error: Option<String>,
    /// The `details` of the report that completed it.
    #[schema(value_type = Option<Object>)]
    result: Option<Box<RawValue>>,
}

impl From<RunRecord> for RunView {
    fn from(r: RunRecord) -> Self {
        let pending = matches!(
            r.status,
            RunStatus::Queued | RunStatus::Dispatched | RunStatus::Running | RunStatus::Dispatching
        );
        Self {
            run_id: r.run_id,
            task_id: r.task_id,
            name: r.task_name,
            status: r.status,
            attempts: r.attempts,
            max_retries: r.max_retries,
            payload: r.payload,
            due_at: pending.then(|| format_micros(r.due_at)),
            dispatched_at: r.dispatched_at.map(format_micros),
            started_at: r.started_at.map(format_micros),
            finished_at: r.finished_at.map(format_micros),
            last_error: r.last_error,
            result: r.result,
        }
    }
}

fn view(s: SessionRecord, with_tasks: bool) -> SessionView {
    SessionView {
        session_id: s.session_id,
        workflow_id: s.workflow_id,
        agent_id: s.agent_id,
        status: s.status,
        result: s.result,
        error: s.error,
        created_at: format_micros(s.created_at),
        updated_at: format_micros(s.updated_at),
        finished_at: s.finished_at.map(format_micros),
        tasks: with_tasks.then(|| s.runs.into_iter().map(RunView::from).collect()),
    }
}

/// A session with its tasks.
#[utoipa::path(
    get,
    operation_id = "getSession",
    path = "/v1/opscore/sessions/{sessionId}",
    tag = "sessions",
    params(SessionPath),
    responses(
        (status = 200, description = "The session", body = SessionView),
        (status = 401, description = "`missing_credentials`, `invalid_authorization`, `invalid_api_key`", body = ErrorBody),
        (status = 404, description = "`session_not_found`", body = ErrorBody),
        (status = 503, description = "`storage_unavailable`", body = ErrorBody),
    ),
    security(("bearerAuth" = [])),
)]
async fn fetch(
    _: Require<perm::ReadSessions>,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<SessionView>> {
    let s = state.store.get_session(&id).await?;
    Ok(Json(view(s, true)))
}

/// Cancel a session and its unfinished tasks.
///
/// Idempotent: cancelling a cancelled session answers 200 again.
#[utoipa::path(
    post,
    operation_id = "cancelSession",
    path = "/v1/opscore/sessions/{sessionId}/cancel",
    tag = "sessions",
    params(SessionPath),
    responses(
        (status = 200, description = "The cancelled session", body = SessionView),
        (status = 401, description = "`missing_credentials`, `invalid_authorization`, `invalid_api_key`", body = ErrorBody),
        (status = 404, description = "`session_not_found`", body = ErrorBody),
        (status = 409, description = "`conflict`: it already completed or failed", body = ErrorBody),
        (status = 503, description = "`storage_unavailable`", body = ErrorBody),
    ),
    security(("bearerAuth" = [])),
)]
async fn cancel(
    caller: Require<perm::CancelSessions>,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<SessionView>> {
    state
        .store
        .cancel_session(&id, &caller.actor(), now_micros())
        .await?;
    tracing::info!(session_id = %id, "session cancelled");
    let s = state.store.get_session(&id).await?;
    Ok(Json(view(s, true)))
}

/// Filter and paging of an agent's sessions.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct ListParams {
    /// Only sessions in this status.
    #[param(value_type = Option<SessionStatus>)]
    status: Option<String>,
    /// `nextCursor` of the previous page.
    cursor: Option<String>,
    /// Page size.
    #[param(value_type = Option<u32>, minimum = 1, maximum = 1000, default = 100)]
    limit: Option<String>,
}

/// The agent's sessions, newest first, without their tasks.
#[utoipa::path(
    get,
    operation_id = "listAgentSessions",
    path = "/v1/opscore/agent/{agentId}/sessions",
    tag = "sessions",
    params(AgentPath, ListParams),
    responses(
        (status = 200, description = "A page of sessions", body = Page<SessionView>),
        (status = 401, description = "`missing_credentials`, `invalid_authorization`, `invalid_api_key`", body = ErrorBody),
        (status = 404, description = "`agent_not_found`", body = ErrorBody),
        (status = 422, description = "`validation_failed` (a bad status, limit or cursor) or `invalid_query`", body = ErrorBody),
        (status = 503, description = "`storage_unavailable`", body = ErrorBody),
    ),
    security(("bearerAuth" = [])),
)]
async fn list(
    _: Require<perm::ReadSessions>,
    State(state): State<AppState>,
    Path(agent_id): Path<String>,
    Query(p): Query<ListParams>,
) -> Result<Json<Page<SessionView>>> {
    let agent = path_agent(&agent_id)?;
    let mut v = Validator::default();
    let limit = v
        .check(parse_limit(p.limit.as_deref()))
        .unwrap_or(DEFAULT_LIMIT);
    let status = match p.status.as_deref() {
        None => None,
        Some(s) => match SessionStatus::parse(s) {
            Some(st) => Some(st),
            None => {
                v.add(FieldError::new(
                    "status",
                    "must be one of started, running, completed, failed, cancelled",
                ));
                None
            }
        },
    };
    let before = match p.cursor.as_deref() {
        None => None,
        Some(c) => {
            let pos = decode_cursor(c).filter(|s| uuid::Uuid::parse_str(s).is_ok());
            if pos.is_none() {
                v.add(bad_cursor());
            }
            pos
        }
    };
    v.finish().map_err(ApiError::validation)?;
    state.store.get_agent(&agent).await?;
    let sessions = state
        .store
        .list_sessions(&SessionQuery {
            agent_id: agent,
            status,
            before,
            limit,
        })
        .await?;
    let next_cursor = next_cursor(&sessions, limit, |s| s.session_id.clone());
    Ok(Json(Page {
        items: sessions.into_iter().map(|s| view(s, false)).collect(),
        next_cursor,
    }))
}
