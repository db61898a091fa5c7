//! Workflow sessions: read, list per agent and across the fleet (with
//! counts by status), cancel, run again (docs/api.md §3.2, §3.7).

use axum::extract::State;
use axum::Json;
use serde::Deserialize;
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::access::{perm, Require};
use super::audit::time_param;
use super::extract::{path_agent, AgentPath};
use super::extract::{Path, Query};
use super::paging::{next_cursor, page_query, Page};
use crate::domain::time::{from_micros, now_micros};
use crate::domain::workflow::{RunStatus, SessionStatus};
use crate::domain::{FieldError, Validator};
use crate::error::{ApiError, ErrorBody, Result};
use crate::http::state::AppState;
use crate::store::{FleetSessionQuery, RunRecord, SessionQuery, SessionRecord};
use crate::wire::{RawJson, Session, SessionCounts, TaskRun};

/// Routes of this resource (see `http::openapi` for how to add one).
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(fetch))
        .routes(routes!(cancel))
        .routes(routes!(retry))
        .routes(routes!(list))
        .routes(routes!(list_fleet))
        .routes(routes!(counts))
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
        due_at: r.due_at.filter(|_| pending).map(from_micros),
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
        revision: s.revision,
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
    let (limit, before) = page_query(
        &mut v,
        p.limit.as_deref(),
        p.cursor.as_deref(),
        uuid_position,
    );
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

/// Run a failed or cancelled session again.
///
/// Completed tasks keep their results and are not sent again; failed and
/// cancelled ones are queued afresh, due now, their attempt numbers going
/// on from the last and their retries counted afresh (`maxRetries` more).
/// The session is `running` again, its error cleared (docs/api.md §3.7).
#[utoipa::path(
    post,
    operation_id = "retrySession",
    path = "/v1/opscore/sessions/{sessionId}/retry",
    tag = "sessions",
    params(SessionPath),
    responses(
        (status = 200, description = "The session, running again, with its tasks", body = Session),
        (status = 401, description = "`missing_credentials`, `invalid_authorization`, `invalid_api_key`", body = ErrorBody),
        (status = 404, description = "`session_not_found`", body = ErrorBody),
        (status = 409, description = "`conflict`: the session is started, running or completed", body = ErrorBody),
        (status = 503, description = "`storage_unavailable`", body = ErrorBody),
    ),
    security(("bearerAuth" = [])),
)]
async fn retry(
    caller: Require<perm::Trigger>,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Session>> {
    state
        .store
        .retry_session(&id, &caller.actor(), now_micros())
        .await?;
    state.wake.notify_one();
    tracing::info!(session_id = %id, "session run again");
    let s = state.store.get_session(&id).await?;
    Ok(Json(view(s, true)))
}

/// Filters and paging of sessions across the fleet. Values are read as
/// text and validated by hand, so every bad one is named in one 422.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(rename_all = "camelCase")]
struct FleetParams {
    /// Only sessions in this status.
    #[param(value_type = Option<SessionStatus>)]
    status: Option<String>,
    /// Only sessions of this definition id.
    workflow_id: Option<String>,
    /// Only sessions with a task run on this agent.
    agent_id: Option<String>,
    /// Only sessions created at or after this time (RFC 3339).
    since: Option<String>,
    /// Only sessions created before this time (RFC 3339).
    until: Option<String>,
    /// `nextCursor` of the previous page.
    cursor: Option<String>,
    /// Page size.
    #[param(value_type = Option<u32>, minimum = 1, maximum = 1000, default = 100)]
    limit: Option<String>,
}

/// Longest id filter accepted (ids are at most 128 characters).
const MAX_ID_FILTER: usize = 256;

/// A session cursor's position: the id of the last session sent.
fn uuid_position(s: &str) -> Option<String> {
    uuid::Uuid::parse_str(s).is_ok().then(|| s.to_owned())
}

impl FleetParams {
    /// The store query these parameters ask for, or the 422 naming each
    /// bad one.
    fn query(&self) -> Result<FleetSessionQuery> {
        let mut v = Validator::default();
        let (limit, before) = page_query(
            &mut v,
            self.limit.as_deref(),
            self.cursor.as_deref(),
            uuid_position,
        );
        let status = self.status.as_deref().and_then(|s| {
            let st = SessionStatus::parse(s);
            if st.is_none() {
                v.add(FieldError::new(
                    "status",
                    "must be one of started, running, completed, failed, cancelled",
                ));
            }
            st
        });
        let mut id = |name: &str, raw: Option<&str>| {
            raw.and_then(|t| {
                if t.is_empty() || t.len() > MAX_ID_FILTER {
                    v.add(FieldError::new(
                        name,
                        format!("must be an id of 1 to {MAX_ID_FILTER} characters"),
                    ));
                    None
                } else {
                    Some(t.to_owned())
                }
            })
        };
        let workflow_id = id("workflowId", self.workflow_id.as_deref());
        let agent_id = id("agentId", self.agent_id.as_deref());
        let since = time_param(&mut v, "since", self.since.as_deref());
        let until = time_param(&mut v, "until", self.until.as_deref());
        v.finish().map_err(ApiError::validation)?;
        Ok(FleetSessionQuery {
            status,
            workflow_id,
            agent_id,
            since,
            until,
            before,
            limit,
        })
    }
}

/// Sessions across the fleet, newest first, without their tasks.
///
/// `agentId` finds the sessions with a task run on that agent.
#[utoipa::path(
    get,
    operation_id = "listSessions",
    path = "/v1/opscore/sessions",
    tag = "sessions",
    params(FleetParams),
    responses(
        (status = 200, description = "A page of sessions", body = Page<Session>),
        (status = 401, description = "`missing_credentials`, `invalid_authorization`, `invalid_api_key`", body = ErrorBody),
        (status = 403, description = "`forbidden`: not an admin or operator key", body = ErrorBody),
        (status = 422, description = "`validation_failed` (a bad status, id, time, limit or cursor, each named) or `invalid_query`", body = ErrorBody),
        (status = 503, description = "`storage_unavailable`", body = ErrorBody),
    ),
    security(("bearerAuth" = [])),
)]
async fn list_fleet(
    _: Require<perm::ReadSessions>,
    State(state): State<AppState>,
    Query(p): Query<FleetParams>,
) -> Result<Json<Page<Session>>> {
    let q = p.query()?;
    let sessions = state.store.list_fleet_sessions(&q).await?;
    let next_cursor = next_cursor(&sessions, q.limit, |s| s.session_id.clone());
    Ok(Json(Page {
        items: sessions.into_iter().map(|s| view(s, false)).collect(),
        next_cursor,
    }))
}

/// How many sessions are in each status.
///
/// Takes the listing's filters but `status`, `cursor` and `limit`
/// (`workflowId`, `agentId`, `since`, `until`); every status is present,
/// 0 when none.
#[utoipa::path(
    get,
    operation_id = "countSessions",
    path = "/v1/opscore/sessions/counts",
    tag = "sessions",
    params(FleetParams),
    responses(
        (status = 200, description = "Counts by status", body = SessionCounts),
        (status = 401, description = "`missing_credentials`, `invalid_authorization`, `invalid_api_key`", body = ErrorBody),
        (status = 403, description = "`forbidden`: not an admin or operator key", body = ErrorBody),
        (status = 422, description = "`validation_failed` or `invalid_query`", body = ErrorBody),
        (status = 503, description = "`storage_unavailable`", body = ErrorBody),
    ),
    security(("bearerAuth" = [])),
)]
async fn counts(
    _: Require<perm::ReadSessions>,
    State(state): State<AppState>,
    Query(p): Query<FleetParams>,
) -> Result<Json<SessionCounts>> {
    let q = p.query()?;
    let mut c = SessionCounts::default();
    for (status, n) in state.store.count_fleet_sessions(&q).await? {
        match SessionStatus::parse(&status) {
            Some(SessionStatus::Started) => c.started += n,
            Some(SessionStatus::Running) => c.running += n,
            Some(SessionStatus::Completed) => c.completed += n,
            Some(SessionStatus::Failed) => c.failed += n,
            Some(SessionStatus::Cancelled) => c.cancelled += n,
            None => {}
        }
        c.total += n;
    }
    Ok(Json(c))
}
