//! Agents: the registration webhook, agent reads, and state reports and
//! reads (contract 1.1-1.3).

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use super::access::{perm, Require};
use super::auth::{
    authenticate, verify_signature_any, SignatureError, VerifiedSignature, SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
};
use super::extract::{parse_json, require_json, JsonBody, Path, Query, RawBody};
use super::paging::{bad_cursor, decode_cursor, next_cursor, parse_limit, Page, DEFAULT_LIMIT};
use crate::domain::agent::{has_nul, AgentId, NotifyBody, NotifyError, NotifyEvent};
use crate::domain::apikey::Permission;
use crate::domain::state::{validate_state_name, ReportError, StateRecord, StateReportBody};
use crate::domain::time::{format_micros, now_micros, Micros};
use crate::domain::{FieldError, Validator};
use crate::error::{ApiError, Result};
use crate::state::AppState;
use crate::store::{Agent, AgentQuery, HistoryQuery, Liveness, RegisterOutcome};

/// Routes of this resource.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/opscore/internal/agent/notify", post(notify))
        .route("/v1/opscore/agents", get(list_agents))
        .route("/v1/opscore/agent/{agent_id}", get(get_agent))
        .route(
            "/v1/opscore/agent/{agent_id}/state",
            post(report_state).get(get_state),
        )
        .route(
            "/v1/opscore/agent/{agent_id}/state/history",
            get(state_history),
        )
}

#[derive(Serialize)]
struct StatusBody {
    status: &'static str,
    message: String,
}

/// The registration webhook. Authentication comes before anything in the
/// body is looked at.
async fn notify(
    State(state): State<AppState>,
    headers: HeaderMap,
    RawBody(body): RawBody,
) -> Result<Json<StatusBody>> {
    let verified = authorize_webhook(&state, &headers, &body).await?;
    let result = apply_notify(&state, &headers, &body).await;
    if let (Err(e), Some(v)) = (&result, verified) {
        // Our failure, not the sender's: let its retry of the same
        // delivery through.
        if e.status().is_server_error() {
            state.replay.forget(&v.signature);
        }
    }
    result
}

async fn apply_notify(
    state: &AppState,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Json<StatusBody>> {
    require_json(headers)?;
    let event = parse_json::<NotifyBody>(body)?
        .validate()
        .map_err(|e| match e {
            NotifyError::UnknownEventType(t) => ApiError::bad_request(
                "unknown_event_type",
                format!("Unknown event_type '{t}' (expected REGISTER or DEREGISTER)"),
            ),
            NotifyError::Invalid(errors) => ApiError::validation(errors),
        })?;
    let now = now_micros();
    let message = match event {
        NotifyEvent::Register(reg) => {
            let outcome = state.store.register_agent(&reg, now).await?;
            tracing::info!(agent_id = %reg.agent_id, new = outcome == RegisterOutcome::Created, "agent registered");
            format!("Agent {} registered successfully.", reg.agent_id)
        }
        NotifyEvent::Deregister(id) => {
            state.store.deregister_agent(&id, now).await?;
            tracing::info!(agent_id = %id, "agent deregistered");
            format!("Agent {id} deregistered successfully.")
        }
    };
    Ok(Json(StatusBody {
        status: "success",
        message,
    }))
}

/// A bearer key with the right to register (admin or registrar), or a valid
/// AgentKit signature seen for the first time, or (only when the operator
/// allowed it) nothing at all. A wrong key or a bad signature is refused
/// even when unsigned calls are allowed: it is a client that means to
/// authenticate and got it wrong. Returns the signature when one was used.
async fn authorize_webhook(
    state: &AppState,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Option<VerifiedSignature>> {
    if let Some(principal) = authenticate(&state.keys, headers).await? {
        principal.require(Permission::Register)?;
        return Ok(None);
    }
    let header = |name| headers.get(name).map(|v| v.to_str().unwrap_or(""));
    let (ts, sig) = (header(TIMESTAMP_HEADER), header(SIGNATURE_HEADER));
    if ts.is_some() || sig.is_some() {
        let secrets = state.config.webhook_secrets();
        if secrets.is_empty() {
            return Err(ApiError::unauthorized(
                "invalid_signature",
                "Webhook is signed but this server has no OPSCORE_WEBHOOK_SECRET to verify it",
            ));
        }
        let now = chrono::Utc::now().timestamp();
        let tolerance = state.config.webhook_tolerance;
        let verified =
            verify_signature_any(&secrets, ts, sig, body, now, tolerance).map_err(|e| {
                let code = match e {
                    SignatureError::Stale(..) => "stale_timestamp",
                    SignatureError::MissingHeader(_) => "missing_signature",
                    _ => "invalid_signature",
                };
                ApiError::unauthorized(code, format!("Webhook signature refused: {e}"))
            })?;
        // Remembered until the timestamp leaves the window, after which
        // the timestamp check refuses it anyway.
        let expires = verified
            .timestamp
            .saturating_add(tolerance.as_secs() as i64);
        if !state
            .replay
            .first_sighting(verified.signature, expires, now)
        {
            return Err(ApiError::unauthorized(
                "webhook_replayed",
                "Webhook refused: this signature was already used (a replay); sign each delivery anew",
            ));
        }
        return Ok(Some(verified));
    }
    if state.config.allow_unsigned_notify {
        return Ok(None);
    }
    Err(ApiError::unauthorized(
        "missing_credentials",
        "Webhook needs X-AgentKit-Timestamp and X-AgentKit-Signature headers, or a bearer API key",
    ))
}

/// A path agent id that is not well formed names no agent: 404.
pub(super) fn path_agent(raw: &str) -> Result<AgentId> {
    AgentId::parse(raw).map_err(|why| {
        ApiError::not_found("agent_not_found", format!("Agent not found: {raw} ({why})"))
    })
}

/// A state report (contract 1.2): 202 only once durably stored.
async fn report_state(
    _: Require<perm::ReportState>,
    State(state): State<AppState>,
    Path(agent_id): Path<String>,
    JsonBody(body): JsonBody<StateReportBody>,
) -> Result<(StatusCode, Json<StatusBody>)> {
    let agent = path_agent(&agent_id)?;
    let report = body
        .validate(&agent, chrono::Utc::now())
        .map_err(|e| match e {
            ReportError::AgentMismatch { path, body } => ApiError::bad_request(
                "agent_id_mismatch",
                format!("agentId in the body ({body}) does not match the path ({path})"),
            ),
            ReportError::Invalid(errors) => ApiError::validation(errors),
        })?;
    state.writer.submit(report).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(StatusBody {
            status: "success",
            message: "State update accepted".into(),
        }),
    ))
}

/// A stored state on the wire.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct StateView {
    state: String,
    details: Option<Box<RawValue>>,
    timestamp: String,
    received_at: String,
}

impl From<StateRecord> for StateView {
    fn from(r: StateRecord) -> Self {
        Self {
            state: r.state,
            details: r.details,
            timestamp: format_micros(r.timestamp),
            received_at: format_micros(r.received_at),
        }
    }
}

/// The current state with the agent id, as contract 1.3 shows it, plus
/// whether the agent's lease has run out.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct CurrentStateView {
    agent_id: String,
    #[serde(flatten)]
    state: StateView,
    last_seen: String,
    stale: bool,
}

/// Header of every state read: the feed index the read is current as of.
pub const INDEX_HEADER: &str = "x-opscore-index";

#[derive(Deserialize)]
struct StateReadParams {
    index: Option<String>,
    wait: Option<String>,
}

/// A state read; with `index` (and optionally `wait`) a blocking read that
/// answers once the agent's state has moved past that feed index, or when
/// the wait ends.
async fn get_state(
    _: Require<perm::ReadAgent>,
    State(state): State<AppState>,
    Path(agent_id): Path<String>,
    Query(p): Query<StateReadParams>,
) -> Result<([(&'static str, String); 1], Json<CurrentStateView>)> {
    let id = path_agent(&agent_id)?;
    let blocking = super::events::blocking_params(p.index.as_deref(), p.wait.as_deref())?;
    // The index is taken before the read, so the state returned is at
    // least as new as it: a client waiting past it misses nothing.
    let index = match blocking {
        None => state.feed.head(),
        Some((after, wait)) => {
            // An unknown agent is refused at once rather than waited on.
            state.store.get_agent(&id).await?;
            state
                .feed
                .wait_for_agent(&id, after, wait)
                .await?
                .ok_or_else(ApiError::overloaded)?
        }
    };
    let agent = state.store.get_agent(&id).await?;
    let index = index.max(agent.event_index.unwrap_or(0));
    let now = now_micros();
    let stale = state
        .config
        .db
        .engine
        .liveness
        .is_stale(agent.last_seen, agent.ttl_secs, now);
    Ok((
        [(INDEX_HEADER, index.to_string())],
        Json(CurrentStateView {
            agent_id: agent.agent_id,
            state: agent.current.into(),
            last_seen: format_micros(agent.last_seen),
            stale,
        }),
    ))
}

/// An agent's registration and current state.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct AgentView {
    agent_id: String,
    agent_name: String,
    version: String,
    capabilities: Vec<String>,
    contact_endpoint: String,
    metadata: Map<String, Value>,
    registered: bool,
    registered_at: String,
    updated_at: String,
    deregistered_at: Option<String>,
    last_seen: String,
    stale: bool,
    ttl_seconds: i64,
    current_state: StateView,
}

impl AgentView {
    fn new(a: Agent, live: &Liveness, now: Micros) -> Self {
        Self {
            stale: a.deregistered_at.is_none() && live.is_stale(a.last_seen, a.ttl_secs, now),
            ttl_seconds: a.ttl_secs.unwrap_or(live.ttl_secs),
            agent_id: a.agent_id,
            agent_name: a.name,
            version: a.version,
            capabilities: a.capabilities,
            contact_endpoint: a.contact_endpoint,
            metadata: a.metadata,
            registered: a.deregistered_at.is_none(),
            registered_at: format_micros(a.registered_at),
            updated_at: format_micros(a.updated_at),
            deregistered_at: a.deregistered_at.map(format_micros),
            last_seen: format_micros(a.last_seen),
            current_state: a.current.into(),
        }
    }
}

async fn get_agent(
    _: Require<perm::ReadAgent>,
    State(state): State<AppState>,
    Path(agent_id): Path<String>,
) -> Result<Json<AgentView>> {
    let agent = state.store.get_agent(&path_agent(&agent_id)?).await?;
    Ok(Json(AgentView::new(
        agent,
        &state.config.db.engine.liveness,
        now_micros(),
    )))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ListAgentsParams {
    state: Option<String>,
    capability: Option<String>,
    include_deregistered: Option<String>,
    stale: Option<String>,
    cursor: Option<String>,
    limit: Option<String>,
}

/// A `true`/`false` (or `1`/`0`) query flag.
fn flag(v: &mut Validator, name: &str, raw: Option<&str>) -> Option<bool> {
    match raw {
        None => None,
        Some("true") | Some("1") => Some(true),
        Some("false") | Some("0") => Some(false),
        Some(_) => {
            v.add(FieldError::new(name, "must be true or false"));
            None
        }
    }
}

async fn list_agents(
    _: Require<perm::ListAgents>,
    State(state): State<AppState>,
    Query(p): Query<ListAgentsParams>,
) -> Result<Json<Page<AgentView>>> {
    let mut v = Validator::default();
    let limit = v
        .check(parse_limit(p.limit.as_deref()))
        .unwrap_or(DEFAULT_LIMIT);
    let include_deregistered = flag(
        &mut v,
        "includeDeregistered",
        p.include_deregistered.as_deref(),
    )
    .unwrap_or(false);
    let stale = flag(&mut v, "stale", p.stale.as_deref());
    if let Some(s) = &p.state {
        if let Err(m) = validate_state_name(s) {
            v.add(FieldError::new("state", m));
        }
    }
    if p.capability.as_deref().is_some_and(has_nul) {
        v.add(FieldError::new(
            "capability",
            "must not contain NUL characters",
        ));
    }
    let after = match p.cursor.as_deref() {
        None => None,
        Some(c) => match decode_cursor(c).filter(|id| AgentId::parse(id).is_ok()) {
            Some(id) => Some(id),
            None => {
                v.add(bad_cursor());
                None
            }
        },
    };
    v.finish().map_err(ApiError::validation)?;
    let now = now_micros();
    let q = AgentQuery {
        state: p.state,
        capability: p.capability,
        include_deregistered,
        stale,
        now,
        after,
        limit,
    };
    let agents = state.store.list_agents(&q).await?;
    let next_cursor = next_cursor(&agents, limit, |a| a.agent_id.clone());
    let live = state.config.db.engine.liveness;
    Ok(Json(Page {
        items: agents
            .into_iter()
            .map(|a| AgentView::new(a, &live, now))
            .collect(),
        next_cursor,
    }))
}

#[derive(Deserialize)]
struct PageParams {
    cursor: Option<String>,
    limit: Option<String>,
}

async fn state_history(
    _: Require<perm::ReadAgent>,
    State(state): State<AppState>,
    Path(agent_id): Path<String>,
    Query(p): Query<PageParams>,
) -> Result<Json<Page<StateView>>> {
    let agent = path_agent(&agent_id)?;
    let mut v = Validator::default();
    let limit = v
        .check(parse_limit(p.limit.as_deref()))
        .unwrap_or(DEFAULT_LIMIT);
    let before = match p.cursor.as_deref() {
        None => None,
        Some(c) => {
            let pos = decode_cursor(c).and_then(|s| {
                let (ts, seq) = s.split_once(':')?;
                Some((ts.parse::<i64>().ok()?, seq.parse::<i64>().ok()?))
            });
            if pos.is_none() {
                v.add(bad_cursor());
            }
            pos
        }
    };
    v.finish().map_err(ApiError::validation)?;
    let entries = state
        .store
        .state_history(&agent, &HistoryQuery { before, limit })
        .await?;
    let next_cursor = next_cursor(&entries, limit, |e| {
        format!("{}:{}", e.record.timestamp, e.seq)
    });
    Ok(Json(Page {
        items: entries.into_iter().map(|e| e.record.into()).collect(),
        next_cursor,
    }))
}
