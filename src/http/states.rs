//! Agent states: reports (docs/api.md §1.2), the current state with its
//! blocking reads (1.3), the history, and an operator's reset.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;
use serde_json::value::RawValue;
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::access::{perm, Require};
use super::extract::{path_agent, AgentPath};
use super::extract::{JsonBody, Path, Query};
use super::paging::PageParams;
use super::paging::{bounded_page, page_query, Page};
use crate::domain::state::{ReportError, StateRecord, StateReportBody};
use crate::domain::time::{from_micros, now_micros};
use crate::domain::Validator;
use crate::error::{ApiError, ErrorBody, ErrorCode, Result};
use crate::http::state::AppState;
use crate::store::{HistoryQuery, Liveness};
use crate::wire::{CurrentState, RawJson, StateEntry, StatusMessage};

/// The state route's template: `GET` with `index` is a blocking read.
pub const STATE_PATH: &str = "/v1/opscore/agent/{agentId}/state";

/// Routes of this resource (see `http::openapi` for how to add one).
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(report_state, get_state))
        .routes(routes!(state_history))
        .routes(routes!(reset_state))
}

/// Report a state.
///
/// 202 only once the report is durably stored (and, for a workflow task,
/// once the task has moved on). The current state is the report with the
/// latest `timestamp` (ties: the later arrival); a late report goes into the
/// history only.
#[utoipa::path(
    post,
    operation_id = "reportAgentState",
    path = "/v1/opscore/agent/{agentId}/state",
    tag = "states",
    params(AgentPath),
    request_body(content = StateReportBody, content_type = "application/json"),
    responses(
        (status = 202, description = "Stored durably", body = StatusMessage,
         example = json!({"status": "success", "message": "State update accepted"})),
        (status = 400, description = "`invalid_json`, `agent_id_mismatch` (path and body differ), `invalid_body`", body = ErrorBody),
        (status = 401, description = "`missing_credentials`, `invalid_authorization`, `invalid_api_key`", body = ErrorBody),
        (status = 404, description = "`agent_not_found`: unknown or deregistered agent", body = ErrorBody),
        (status = 413, description = "`payload_too_large`", body = ErrorBody),
        (status = 415, description = "`unsupported_media_type`: not JSON", body = ErrorBody),
        (status = 422, description = "`validation_failed`, naming each field; `timestamp_in_future`: \
                                      more than `OPSCORE_MAX_CLOCK_SKEW_SECS` ahead of the server's clock", body = ErrorBody),
        (status = 503, description = "`storage_unavailable`", body = ErrorBody),
    ),
    security(("bearerAuth" = [])),
)]
async fn report_state(
    _: Require<perm::ReportState>,
    State(state): State<AppState>,
    Path(agent_id): Path<String>,
    JsonBody(body): JsonBody<StateReportBody>,
) -> Result<(StatusCode, Json<StatusMessage>)> {
    let agent = path_agent(&agent_id)?;
    let report = body
        .validate(
            &agent,
            crate::domain::time::now(),
            state.config.max_clock_skew,
        )
        .map_err(|e| match e {
            ReportError::AgentMismatch { path, body } => ApiError::new(
                ErrorCode::AgentIdMismatch,
                format!("agentId in the body ({body}) does not match the path ({path})"),
            ),
            ReportError::Invalid(errors) => ApiError::validation(errors),
            ReportError::InFuture {
                ahead_secs,
                max_skew_secs,
            } => {
                let message = format!(
                    "is {ahead_secs} s ahead of the server's clock (at most {max_skew_secs} s \
                     allowed, OPSCORE_MAX_CLOCK_SKEW_SECS); check the agent's clock"
                );
                ApiError::invalid_field("timestamp", message)
                    .with_code(ErrorCode::TimestampInFuture)
            }
        })?;
    let reported = crate::metrics::state_label(&report.state);
    state.writer.submit(report).await?;
    state.metrics.observe_state_report(reported);
    Ok((
        StatusCode::ACCEPTED,
        Json(StatusMessage::success("State update accepted")),
    ))
}

/// Reset an agent's state to `UNKNOWN` (admin only).
///
/// For a state pinned by an agent whose clock ran ahead: the current state
/// becomes `UNKNOWN` now, as right after registration, so the agent's next
/// report becomes current whatever its timestamp. Recorded in the history
/// (with `details.resetBy`, the acting key) and announced as `agent.state`.
#[utoipa::path(
    post,
    operation_id = "resetAgentState",
    path = "/v1/opscore/agent/{agentId}/state/reset",
    tag = "agents",
    params(AgentPath),
    responses(
        (status = 200, description = "The state as it now is", body = CurrentState),
        (status = 401, description = "`missing_credentials`, `invalid_authorization`, `invalid_api_key`", body = ErrorBody),
        (status = 403, description = "`forbidden`: admin keys only", body = ErrorBody),
        (status = 404, description = "`agent_not_found` (or deregistered)", body = ErrorBody),
        (status = 503, description = "`storage_unavailable`", body = ErrorBody),
    ),
    security(("bearerAuth" = [])),
)]
async fn reset_state(
    caller: Require<perm::ResetState>,
    State(state): State<AppState>,
    Path(agent_id): Path<String>,
) -> Result<Json<CurrentState>> {
    let id = path_agent(&agent_id)?;
    let by = caller.0.key_id().unwrap_or("bootstrap key");
    let details = serde_json::json!({ "resetBy": by }).to_string();
    state
        .store
        .reset_state(&id, Some(details), &caller.actor(), now_micros())
        .await?;
    tracing::warn!(agent_id = %id, by, "agent state reset to UNKNOWN by an operator");
    let current = state.store.get_state(&id).await?;
    Ok(Json(current_state(
        current,
        &state.config.db.engine.liveness,
    )))
}

/// A stored state as the wire shows it.
pub(super) fn state_entry(r: StateRecord) -> StateEntry {
    StateEntry {
        state: r.state,
        details: r.details.map(RawJson),
        timestamp: from_micros(r.timestamp),
        received_at: from_micros(r.received_at),
    }
}

/// Header of every state read: the feed index the read is current as of.
pub const INDEX_HEADER: &str = "x-opscore-index";

/// The blocking-read parameters of a state read.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct StateReadParams {
    /// Makes this a blocking read: answer once the agent's state has changed
    /// past this feed index (pass the previous answer's `X-Opscore-Index`).
    #[param(value_type = Option<i64>, minimum = 0)]
    index: Option<String>,
    /// Longest wait of a blocking read: `500ms`, `30s`, `5m` or bare
    /// seconds, at most `10m`; default `5m` when `index` is given.
    #[param(example = "30s")]
    wait: Option<String>,
    /// `true`: read the database, which holds every replica's commits the
    /// moment they are made, rather than this process's read model.
    #[param(value_type = Option<bool>)]
    consistent: Option<String>,
}

/// The agent's current state; with `index`, a blocking read.
///
/// `UNKNOWN` from registration until its first report. A deregistered
/// agent's state can still be read. With `index` (and optionally `wait`)
/// the answer comes once the agent's state has moved past that feed index,
/// or with the current state when the wait ends. Every answer carries
/// `X-Opscore-Index`. Answered from this process's read model, which has
/// what another replica committed within milliseconds (what this process
/// committed, at once); `consistent=true` reads the database. Blocking reads count against the feed's subscriber
/// limit and their key's stream cap, not the request limit and deadline.
#[utoipa::path(
    get,
    operation_id = "getAgentState",
    path = "/v1/opscore/agent/{agentId}/state",
    tag = "states",
    params(AgentPath, StateReadParams),
    responses(
        (status = 200, description = "The current state", body = CurrentState,
         headers(("X-Opscore-Index" = i64, description = "The feed index this read is current as of; pass it as the next `index`"))),
        (status = 401, description = "`missing_credentials`, `invalid_authorization`, `invalid_api_key`, `key_revoked`, `key_expired` (a blocking read also answers the last two when its key is revoked or expires while it waits)", body = ErrorBody),
        (status = 404, description = "`agent_not_found`", body = ErrorBody),
        (status = 422, description = "`validation_failed`: a bad `index`, `wait` or `consistent`; or `invalid_query`", body = ErrorBody),
        (status = 429, description = "`too_many_streams` (a blocking read): this key holds all the streams and blocking reads it may", body = ErrorBody),
        (status = 503, description = "`storage_unavailable`; for a blocking read, `overloaded` when the feed is at its subscriber limit", body = ErrorBody),
    ),
    security(("bearerAuth" = [])),
)]
async fn get_state(
    caller: Require<perm::ReadAgent>,
    State(state): State<AppState>,
    Path(agent_id): Path<String>,
    Query(p): Query<StateReadParams>,
) -> Result<([(&'static str, String); 1], Json<CurrentState>)> {
    let id = path_agent(&agent_id)?;
    let consistent = super::agents::ConsistentParam {
        consistent: p.consistent,
    }
    .consistent()?;
    let blocking = super::events::blocking_params(p.index.as_deref(), p.wait.as_deref())?;
    // The index is taken before the read, so the state returned is at
    // least as new as it: a client waiting past it misses nothing.
    let index = match blocking {
        None => state.feed.head(),
        Some((after, wait)) => {
            // One key cannot take every feed slot.
            let _slot = state.keys.open_stream(&caller)?;
            // An unknown agent is refused at once rather than waited on.
            state.store.get_state(&id).await?;
            // The wait outlives the authentication: a key revoked or
            // expiring meanwhile ends it with the 401 it would get now.
            tokio::select! {
                waited = state.feed.wait_for_agent(&id, after, wait) => {
                    waited?.ok_or_else(ApiError::overloaded)?
                }
                refused = state.keys.key_withdrawn(&caller) => return Err(refused),
            }
        }
    };
    let agent = if consistent {
        state.store.get_state_consistent(&id).await?
    } else {
        state.store.get_state(&id).await?
    };
    let index = index.max(agent.event_index.unwrap_or(0));
    Ok((
        [(INDEX_HEADER, index.to_string())],
        Json(current_state(agent, &state.config.db.engine.liveness)),
    ))
}

/// An agent's current state as the wire shows it.
fn current_state(agent: crate::store::AgentState, live: &Liveness) -> CurrentState {
    CurrentState {
        stale: Some(agent.is_stale(live, now_micros())),
        last_seen: Some(from_micros(agent.last_seen)),
        state: state_entry(agent.current),
        agent_id: agent.agent_id,
    }
}

/// The agent's state history, latest `timestamp` first.
///
/// Includes the `UNKNOWN` of its registration.
#[utoipa::path(
    get,
    operation_id = "listAgentStateHistory",
    path = "/v1/opscore/agent/{agentId}/state/history",
    tag = "states",
    params(AgentPath, PageParams),
    responses(
        (status = 200, description = "A page of states", body = Page<StateEntry>),
        (status = 401, description = "`missing_credentials`, `invalid_authorization`, `invalid_api_key`", body = ErrorBody),
        (status = 404, description = "`agent_not_found`", body = ErrorBody),
        (status = 422, description = "`validation_failed` (a bad limit or cursor) or `invalid_query`", body = ErrorBody),
        (status = 503, description = "`storage_unavailable`", body = ErrorBody),
    ),
    security(("bearerAuth" = [])),
)]
async fn state_history(
    _: Require<perm::ReadAgent>,
    State(state): State<AppState>,
    Path(agent_id): Path<String>,
    Query(p): Query<PageParams>,
) -> Result<Json<Page<Box<RawValue>>>> {
    let agent = path_agent(&agent_id)?;
    let mut v = Validator::default();
    let (limit, before) = page_query(&mut v, p.limit.as_deref(), p.cursor.as_deref(), |s| {
        let (ts, seq) = s.split_once(':')?;
        Some((ts.parse::<i64>().ok()?, seq.parse::<i64>().ok()?))
    });
    v.finish().map_err(ApiError::validation)?;
    let entries = state
        .store
        .state_history(&agent, &HistoryQuery { before, limit })
        .await?;
    bounded_page(
        entries,
        limit,
        |e| format!("{}:{}", e.record.timestamp, e.seq),
        |e| state_entry(e.record),
    )
    .map(Json)
}
