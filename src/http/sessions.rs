//! Workflow sessions: read, list per agent, cancel.

use axum::extract::State;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::access::{perm, Require};
use super::agents::path_agent;
use super::extract::{Path, Query};
use super::paging::{bad_cursor, decode_cursor, next_cursor, parse_limit, Page, DEFAULT_LIMIT};
use crate::domain::time::{format_micros, now_micros};
use crate::domain::workflow::{RunStatus, SessionStatus};
use crate::domain::{FieldError, Validator};
use crate::error::{ApiError, Result};
use crate::state::AppState;
use crate::store::{RunRecord, SessionQuery, SessionRecord, StoreError};

/// Routes of this resource.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/opscore/sessions/{session_id}", get(fetch))
        .route("/v1/opscore/sessions/{session_id}/cancel", post(cancel))
        .route("/v1/opscore/agent/{agent_id}/sessions", get(list))
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct SessionView {
    session_id: String,
    workflow_id: String,
    agent_id: String,
    status: SessionStatus,
    result: Option<Box<RawValue>>,
    error: Option<String>,
    created_at: String,
    updated_at: String,
    finished_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tasks: Option<Vec<RunView>>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct RunView {
    run_id: String,
    task_id: String,
    name: String,
    status: RunStatus,
    attempts: i64,
    max_retries: i64,
    payload: Option<Box<RawValue>>,
    /// When queued: the time it becomes due; in flight: its deadline.
    due_at: Option<String>,
    dispatched_at: Option<String>,
    started_at: Option<String>,
    finished_at: Option<String>,
    last_error: Option<String>,
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

async fn fetch(
    _: Require<perm::ReadSessions>,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<SessionView>> {
    let s = state.store.get_session(&id).await.map_err(session_error)?;
    Ok(Json(view(s, true)))
}

fn session_error(e: StoreError) -> ApiError {
    match e {
        StoreError::NotFound { id, .. } => {
            ApiError::not_found("session_not_found", format!("Session not found: {id}"))
        }
        other => other.into(),
    }
}

async fn cancel(
    _: Require<perm::CancelSessions>,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<SessionView>> {
    state
        .store
        .cancel_session(&id, now_micros())
        .await
        .map_err(session_error)?;
    tracing::info!(session_id = %id, "session cancelled");
    let s = state.store.get_session(&id).await.map_err(session_error)?;
    Ok(Json(view(s, true)))
}

#[derive(Deserialize)]
struct ListParams {
    status: Option<String>,
    cursor: Option<String>,
    limit: Option<String>,
}

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
