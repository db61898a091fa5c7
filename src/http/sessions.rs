//! Workflow sessions: read, list per agent, cancel.

use axum::extract::State;
use axum::Json;
use serde::Deserialize;
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::access::{perm, Require};
use super::extract::{path_agent, AgentPath};
use super::extract::{Path, Query};
use super::paging::{bad_cursor, decode_cursor, next_cursor, parse_limit, Page, DEFAULT_LIMIT};
use crate::domain::time::{from_micros, now_micros};
use crate::domain::workflow::{RunStatus, SessionStatus};
use crate::domain::{FieldError, Validator};
use crate::error::{ApiError, ErrorBody, Result};
use crate::http::state::AppState;
use crate::store::{RunRecord, SessionQuery, SessionRecord};
use crate::wire::{RawJson, Session, TaskRun};

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

/// A task run as the wire shows it.
fn run_view(r: RunRecord) -> TaskRun {
    let pending = matches!(
        r.status,
        RunStatus::Queued | RunStatus::Dispatched | RunStatus::Running | RunStatus::Dispatching
    );
    TaskRun {
        run_id: r.run_id,
        task_id: r.task_id,
        name: r.task_name,
        status: r.status.as_str().to_owned(),
        attempts: r.attempts,
        max_retries: r.max_retries,
        payload: r.payload.map(RawJson),
        due_at: (pending && r.due_at < crate::domain::engine_rules::NOT_DUE)
            .then(|| from_micros(r.due_at)),
        dispatched_at: r.dispatched_at.map(from_micros),
        started_at: r.started_at.map(from_micros),
        finished_at: r.finished_at.map(from_micros),
        last_error: r.last_error,
        result: r.result.map(RawJson),
        agent_id: r.agent_id,
        output: r.output.map(RawJson),
        waiting_for: r.waiting_for,
    }
}

/// A session as the wire shows it, with its runs when `with_tasks`.
fn view(s: SessionRecord, with_tasks: bool) -> Session {
    Session {
        session_id: s.session_id,
        workflow_id: s.workflow_id,
        agent_id: s.agent_id,
        agent_selector: s.selector,
        status: s.status.as_str().to_owned(),
        result: s.result.map(RawJson),
        error: s.error,
        created_at: from_micros(s.created_at),
        updated_at: from_micros(s.updated_at),
        finished_at: s.finished_at.map(from_micros),
        tasks: with_tasks.then(|| s.runs.into_iter().map(run_view).collect()),
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
        (status = 200, description = "The session", body = Session),
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
) -> Result<Json<Session>> {
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
        (status = 200, description = "The cancelled session", body = Session),
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
) -> Result<Json<Session>> {
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
        (status = 200, description = "A page of sessions", body = Page<Session>),
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
) -> Result<Json<Page<Session>>> {
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
