//! Agents: the registration webhook, agent reads, and state reports and
//! reads (contract 1.1-1.3).

use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::access::{perm, Require};
use super::auth::{
    authenticate, check_signature_headers, verify_signature_any, SignatureError, VerifiedSignature,
    SIGNATURE_HEADER, TIMESTAMP_HEADER,
};
use super::extract::{parse_json, require_json, JsonBody, Path, Query, RawBody};
use super::paging::{bad_cursor, bounded_page, decode_cursor, parse_limit, Page, DEFAULT_LIMIT};
use crate::domain::agent::{has_nul, lease_body, AgentId, NotifyBody, NotifyError, NotifyEvent};
use crate::domain::apikey::Permission;
use crate::domain::state::{validate_state_name, ReportError, StateRecord, StateReportBody};
use crate::domain::time::{format_micros, now_micros, Micros};
use crate::domain::{FieldError, Validator};
use crate::error::{ApiError, ErrorBody, Result};
use crate::http::state::AppState;
use crate::store::{Agent, AgentQuery, HistoryQuery, Liveness, RegisterOutcome};

/// Routes of this resource (see `http::openapi` for how to add one).
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(notify))
        .routes(routes!(list_agents))
        .routes(routes!(get_agent))
        .routes(routes!(set_lease))
        .routes(routes!(report_state, get_state))
        .routes(routes!(state_history))
        .routes(routes!(reset_state))
}

/// `{"status": "success", "message": …}`.
#[derive(Serialize, utoipa::ToSchema)]
pub(super) struct StatusBody {
    #[schema(example = "success")]
    status: &'static str,
    message: String,
}

/// Registration webhook (AgentKit).
///
/// `REGISTER` creates or updates an agent (a new agent's state is `UNKNOWN`
/// from the moment of the 200); `DEREGISTER` marks it deregistered.
/// Authenticated by AgentKit's signature (`X-AgentKit-Timestamp` and
/// `X-AgentKit-Signature`) or a bearer key; with neither it is refused
/// unless the server runs with `OPSCORE_ALLOW_UNSIGNED_NOTIFY=true`.
/// Authentication comes before the body is read: a call without a key or
/// signature headers, or whose timestamp is outside the window, is refused
/// without its body being read; the signature itself is checked once the
/// body is in.
#[utoipa::path(
    post,
    operation_id = "notifyAgentEvent",
    path = "/v1/opscore/internal/agent/notify",
    tag = "agents",
    params(
        ("X-AgentKit-Timestamp" = Option<String>, Header,
         description = "Signing time: whole Unix seconds, or an RFC 3339 time"),
        ("X-AgentKit-Signature" = Option<String>, Header,
         description = "Lowercase hex HMAC-SHA256 of `timestamp + \".\" + raw body` (an optional `sha256=` prefix is accepted)"),
    ),
    request_body(content = NotifyBody, content_type = "application/json"),
    responses(
        (status = 200, description = "Registered, updated or deregistered", body = StatusBody,
         example = json!({"status": "success", "message": "Agent agent-7 registered successfully."})),
        (status = 400, description = "`invalid_json`, `unknown_event_type`, `invalid_body`", body = ErrorBody),
        (status = 401, description = "`missing_credentials`, `invalid_authorization`, `invalid_api_key`, \
                                      `missing_signature`, `invalid_signature`, `stale_timestamp`", body = ErrorBody),
        (status = 408, description = "`request_timeout`: the body did not arrive within `OPSCORE_BODY_READ_TIMEOUT_SECS`", body = ErrorBody),
        (status = 404, description = "`agent_not_found`: DEREGISTER of an unknown agent", body = ErrorBody),
        (status = 413, description = "`payload_too_large`", body = ErrorBody),
        (status = 415, description = "`unsupported_media_type`: not JSON", body = ErrorBody),
        (status = 422, description = "`validation_failed`, naming each field", body = ErrorBody),
        (status = 503, description = "`storage_unavailable`", body = ErrorBody),
    ),
    security((), ("agentkitSignature" = []), ("bearerAuth" = [])),
)]
async fn notify(
    State(state): State<AppState>,
    caller: WebhookCaller,
    headers: HeaderMap,
    RawBody(body): RawBody,
) -> Result<Json<StatusBody>> {
    let verified = match caller {
        WebhookCaller::Signed => Some(verify_webhook(&state, &headers, &body).await?),
        WebhookCaller::Key | WebhookCaller::Unsigned => None,
    };
    let result = apply_notify(&state, &headers, &body).await;
    if let (Err(e), Some(v)) = (&result, verified) {
        // Our failure, not the sender's: let its retry of the same
        // delivery through.
        if e.status().is_server_error() {
            if let Err(forget) = state
                .store
                .forget_signature(&hex::encode(v.signature))
                .await
            {
                tracing::warn!(error = %forget, "could not forget a failed webhook's signature; its retry will be refused as a replay");
            }
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

/// How a webhook call authenticates, settled from its headers before its
/// body is read: a bearer key with the right to register (admin or
/// registrar); AgentKit's signature headers, present, well formed and
/// within the timestamp window (the signature itself is checked once the
/// body is in); or (only when the operator allowed it) nothing at all. A
/// wrong key or bad signature headers are refused even when unsigned calls
/// are allowed: it is a client that means to authenticate and got it wrong.
enum WebhookCaller {
    Key,
    Signed,
    Unsigned,
}

impl FromRequestParts<AppState> for WebhookCaller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self> {
        let headers = &parts.headers;
        if let Some(principal) = authenticate(&state.keys, headers, &parts.extensions).await? {
            principal.require(Permission::Register)?;
            return Ok(Self::Key);
        }
        let (ts, sig) = signature_headers(headers);
        if ts.is_some() || sig.is_some() {
            if state.config.webhook_secrets().is_empty() {
                return Err(ApiError::unauthorized(
                    "invalid_signature",
                    "Webhook is signed but this server has no OPSCORE_WEBHOOK_SECRET to verify it",
                ));
            }
            let now = crate::domain::time::now_micros() / 1_000_000;
            check_signature_headers(ts, sig, now, state.config.webhook_tolerance)
                .map_err(signature_refused)?;
            return Ok(Self::Signed);
        }
        if state.config.allow_unsigned_notify {
            return Ok(Self::Unsigned);
        }
        Err(ApiError::unauthorized(
            "missing_credentials",
            "Webhook needs X-AgentKit-Timestamp and X-AgentKit-Signature headers, or a bearer API key",
        ))
    }
}

/// The two signature headers, as text (a header that is not text reads as
/// empty, and fails the check).
fn signature_headers(headers: &HeaderMap) -> (Option<&str>, Option<&str>) {
    let header = |name| headers.get(name).map(|v| v.to_str().unwrap_or(""));
    (header(TIMESTAMP_HEADER), header(SIGNATURE_HEADER))
}

/// The 401 of a signature refused for `e`.
fn signature_refused(e: SignatureError) -> ApiError {
    let code = match e {
        SignatureError::Stale(..) => "stale_timestamp",
        SignatureError::MissingHeader(_) => "missing_signature",
        _ => "invalid_signature",
    };
    ApiError::unauthorized(code, format!("Webhook signature refused: {e}"))
}

/// Verify a signed webhook's signature over its body, and that it is seen
/// for the first time. Returns the signature.
async fn verify_webhook(
    state: &AppState,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<VerifiedSignature> {
    let (ts, sig) = signature_headers(headers);
    let secrets = state.config.webhook_secrets();
    let now = crate::domain::time::now_micros() / 1_000_000;
    let tolerance = state.config.webhook_tolerance;
    let verified =
        verify_signature_any(&secrets, ts, sig, body, now, tolerance).map_err(signature_refused)?;
    // Remembered (in the database: across restarts, by every replica)
    // until the timestamp leaves the window, after which the timestamp
    // check refuses it anyway.
    let expires = verified
        .timestamp
        .saturating_add(tolerance.as_secs() as i64)
        .saturating_mul(1_000_000);
    let first = state
        .store
        .first_sighting(
            &hex::encode(verified.signature),
            expires,
            now.saturating_mul(1_000_000),
        )
        .await?;
    if !first {
        return Err(ApiError::unauthorized(
            "webhook_replayed",
            "Webhook refused: this signature was already used (a replay); sign each delivery anew",
        ));
    }
    Ok(verified)
}

/// A path agent id that is not well formed names no agent: 404.
pub(super) fn path_agent(raw: &str) -> Result<AgentId> {
    AgentId::parse(raw).map_err(|why| {
        ApiError::not_found("agent_not_found", format!("Agent not found: {raw} ({why})"))
    })
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
        (status = 202, description = "Stored durably", body = StatusBody,
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
) -> Result<(StatusCode, Json<StatusBody>)> {
    let agent = path_agent(&agent_id)?;
    let report = body
        .validate(
            &agent,
            crate::domain::time::now(),
            state.config.max_clock_skew,
        )
        .map_err(|e| match e {
            ReportError::AgentMismatch { path, body } => ApiError::bad_request(
                "agent_id_mismatch",
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
                ApiError::invalid_field("timestamp", message).with_code("timestamp_in_future")
            }
        })?;
    let reported = crate::metrics::state_label(&report.state);
    state.writer.submit(report).await?;
    state.metrics.observe_state_report(reported);
    Ok((
        StatusCode::ACCEPTED,
        Json(StatusBody {
            status: "success",
            message: "State update accepted".into(),
        }),
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
        (status = 200, description = "The state as it now is", body = CurrentStateView),
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
) -> Result<Json<CurrentStateView>> {
    let id = path_agent(&agent_id)?;
    let by = caller.0.key_id().unwrap_or("bootstrap key");
    let details = serde_json::json!({ "resetBy": by }).to_string();
    state
        .store
        .reset_state(&id, Some(details), now_micros())
        .await?;
    tracing::warn!(agent_id = %id, by, "agent state reset to UNKNOWN by an operator");
    let current = state.store.get_state(&id).await?;
    Ok(Json(CurrentStateView::new(
        current,
        &state.config.db.engine.liveness,
    )))
}

/// The `agentId` path parameter.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code)] // documents the path; handlers read it positionally
pub(super) struct AgentPath {
    /// The agent's id.
    #[serde(rename = "agentId")]
    #[param(rename = "agentId")]
    agent_id: String,
}

/// A stored state on the wire.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
struct StateView {
    /// The state name.
    state: String,
    /// The report's details object, or null.
    #[schema(value_type = Option<Object>)]
    details: Option<Box<RawValue>>,
    /// The agent's own timestamp of the report.
    timestamp: String,
    /// When the service received it.
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
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
struct CurrentStateView {
    agent_id: String,
    #[serde(flatten)]
    state: StateView,
    /// Last time the server heard from the agent.
    last_seen: String,
    /// Its lease ran out.
    stale: bool,
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
}

/// The agent's current state; with `index`, a blocking read.
///
/// `UNKNOWN` from registration until its first report. A deregistered
/// agent's state can still be read. With `index` (and optionally `wait`)
/// the answer comes once the agent's state has moved past that feed index,
/// or with the current state when the wait ends. Every answer carries
/// `X-Opscore-Index`. Blocking reads count against the feed's subscriber
/// limit and their key's stream cap, not the request limit and deadline.
#[utoipa::path(
    get,
    operation_id = "getAgentState",
    path = "/v1/opscore/agent/{agentId}/state",
    tag = "states",
    params(AgentPath, StateReadParams),
    responses(
        (status = 200, description = "The current state", body = CurrentStateView,
         headers(("X-Opscore-Index" = i64, description = "The feed index this read is current as of; pass it as the next `index`"))),
        (status = 401, description = "`missing_credentials`, `invalid_authorization`, `invalid_api_key`, `key_revoked`, `key_expired` (a blocking read also answers the last two when its key is revoked or expires while it waits)", body = ErrorBody),
        (status = 404, description = "`agent_not_found`", body = ErrorBody),
        (status = 422, description = "`validation_failed`: a bad `index` or `wait`; or `invalid_query`", body = ErrorBody),
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
) -> Result<([(&'static str, String); 1], Json<CurrentStateView>)> {
    let id = path_agent(&agent_id)?;
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
    let agent = state.store.get_state(&id).await?;
    let index = index.max(agent.event_index.unwrap_or(0));
    Ok((
        [(INDEX_HEADER, index.to_string())],
        Json(CurrentStateView::new(
            agent,
            &state.config.db.engine.liveness,
        )),
    ))
}

impl CurrentStateView {
    fn new(agent: crate::store::AgentState, live: &Liveness) -> Self {
        Self {
            stale: agent.is_stale(live, now_micros()),
            last_seen: format_micros(agent.last_seen),
            state: agent.current.into(),
            agent_id: agent.agent_id,
        }
    }
}

/// An agent's registration and current state.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
struct AgentView {
    agent_id: String,
    agent_name: String,
    version: String,
    capabilities: Vec<String>,
    contact_endpoint: String,
    #[schema(value_type = Object)]
    metadata: Map<String, Value>,
    /// False once deregistered.
    registered: bool,
    registered_at: String,
    updated_at: String,
    deregistered_at: Option<String>,
    /// Last time the server heard from it (registration or report).
    last_seen: String,
    /// Its lease ran out: not heard from within `ttlSeconds` (plus grace).
    /// Stale agents are never sent a task.
    stale: bool,
    /// Its lease in seconds: its own (from the registration's
    /// `metadata.ttlSeconds` or `PUT .../lease`), else `OPSCORE_AGENT_TTL_SECS`;
    /// null when it holds none (the default), and then it is never stale.
    ttl_seconds: Option<i64>,
    current_state: StateView,
}

impl AgentView {
    fn new(a: Agent, live: &Liveness, now: Micros) -> Self {
        Self {
            stale: a.is_stale(live, now),
            ttl_seconds: live.lease_secs(a.ttl_secs),
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

/// One agent: registration details and current state.
#[utoipa::path(
    get,
    operation_id = "getAgent",
    path = "/v1/opscore/agent/{agentId}",
    tag = "agents",
    params(AgentPath),
    responses(
        (status = 200, description = "The agent", body = AgentView),
        (status = 401, description = "`missing_credentials`, `invalid_authorization`, `invalid_api_key`", body = ErrorBody),
        (status = 404, description = "`agent_not_found`", body = ErrorBody),
        (status = 503, description = "`storage_unavailable`", body = ErrorBody),
    ),
    security(("bearerAuth" = [])),
)]
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

/// `{"ttlSeconds": N}` sets the agent's own lease; `null` clears it.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
#[allow(dead_code)] // The schema of the body; it is read as a JSON object.
struct LeaseBody {
    /// Seconds (1 to 86400), or null for no lease of its own.
    ttl_seconds: Option<i64>,
}

/// Set or clear one agent's lease.
///
/// Leases are opt-in (docs/agents.md): an agent that holds one and is not
/// heard from for `ttlSeconds` (plus the grace) is stale, is sent no task,
/// and the task it holds fails with `agent stale`. `{"ttlSeconds": null}`
/// clears the agent's own lease (the server-wide `OPSCORE_AGENT_TTL_SECS`
/// then applies, if set). A stale agent whose new lease has not run out is
/// announced fresh (`agent.fresh`) at once. A registration that names no
/// `metadata.ttlSeconds` keeps the lease set here.
#[utoipa::path(
    put,
    operation_id = "setAgentLease",
    path = "/v1/opscore/agent/{agentId}/lease",
    tag = "agents",
    params(AgentPath),
    request_body = LeaseBody,
    responses(
        (status = 200, description = "The agent with its new lease", body = AgentView),
        (status = 400, description = "`invalid_json`", body = ErrorBody),
        (status = 401, description = "`missing_credentials`, `invalid_authorization`, `invalid_api_key`", body = ErrorBody),
        (status = 403, description = "`forbidden`: admin and operator keys only", body = ErrorBody),
        (status = 404, description = "`agent_not_found` (or deregistered)", body = ErrorBody),
        (status = 415, description = "`unsupported_media_type`", body = ErrorBody),
        (status = 422, description = "`validation_failed`, naming `ttlSeconds`", body = ErrorBody),
        (status = 503, description = "`storage_unavailable`", body = ErrorBody),
    ),
    security(("bearerAuth" = [])),
)]
async fn set_lease(
    _: Require<perm::ManageLeases>,
    State(state): State<AppState>,
    Path(agent_id): Path<String>,
    JsonBody(body): JsonBody<Map<String, Value>>,
) -> Result<Json<AgentView>> {
    let id = path_agent(&agent_id)?;
    let ttl = lease_body(&body).map_err(|e| ApiError::validation(vec![e]))?;
    let now = now_micros();
    let agent = state.store.set_agent_lease(&id, ttl, now).await?;
    Ok(Json(AgentView::new(
        agent,
        &state.config.db.engine.liveness,
        now_micros(),
    )))
}

/// Filters and paging of the agent listing. Values are read as text and
/// validated by hand, so every bad one is named in one 422.
#[derive(Deserialize, IntoParams)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Query, rename_all = "camelCase")]
struct ListAgentsParams {
    /// Only agents whose current state is this.
    state: Option<String>,
    /// Only agents declaring this capability.
    capability: Option<String>,
    /// Also list deregistered agents.
    #[param(value_type = Option<bool>)]
    include_deregistered: Option<String>,
    /// Only agents whose lease has (`true`) or has not (`false`) run out.
    #[param(value_type = Option<bool>)]
    stale: Option<String>,
    /// `nextCursor` of the previous page.
    cursor: Option<String>,
    /// Page size.
    #[param(value_type = Option<u32>, minimum = 1, maximum = 1000, default = 100)]
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

/// Registered agents, ordered by id.
#[utoipa::path(
    get,
    operation_id = "listAgents",
    path = "/v1/opscore/agents",
    tag = "agents",
    params(ListAgentsParams),
    responses(
        (status = 200, description = "A page of agents", body = Page<AgentView>),
        (status = 401, description = "`missing_credentials`, `invalid_authorization`, `invalid_api_key`", body = ErrorBody),
        (status = 422, description = "`validation_failed` (a bad filter, limit or cursor) or `invalid_query`", body = ErrorBody),
        (status = 503, description = "`storage_unavailable`", body = ErrorBody),
    ),
    security(("bearerAuth" = [])),
)]
async fn list_agents(
    _: Require<perm::ListAgents>,
    State(state): State<AppState>,
    Query(p): Query<ListAgentsParams>,
) -> Result<Json<Page<Box<RawValue>>>> {
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
    let live = state.config.db.engine.liveness;
    bounded_page(
        agents,
        limit,
        |a| a.agent_id.clone(),
        |a| AgentView::new(a, &live, now),
    )
    .map(Json)
}

/// Paging of a listing.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct PageParams {
    /// `nextCursor` of the previous page.
    cursor: Option<String>,
    /// Page size.
    #[param(value_type = Option<u32>, minimum = 1, maximum = 1000, default = 100)]
    limit: Option<String>,
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
        (status = 200, description = "A page of states", body = Page<StateView>),
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
    bounded_page(
        entries,
        limit,
        |e| format!("{}:{}", e.record.timestamp, e.seq),
        |e| StateView::from(e.record),
    )
    .map(Json)
}
