//! The registration webhook (docs/api.md §1.1): AgentKit's signed calls, or a
//! key with the right to register.

use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::HeaderMap;
use axum::Json;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::auth::authenticate;
use super::extract::{parse_json, require_json, RawBody};
use crate::domain::agent::{NotifyBody, NotifyError, NotifyEvent};
use crate::domain::apikey::Permission;
use crate::domain::audit::Actor;
use crate::domain::signature::{
    check_signature_headers, verify_signature_any, SignatureError, VerifiedSignature,
    SIGNATURE_HEADER, TIMESTAMP_HEADER,
};
use crate::domain::time::now_micros;
use crate::error::{ApiError, ErrorBody, ErrorCode, Result};
use crate::http::state::AppState;
use crate::store::RegisterOutcome;
use crate::wire::StatusMessage;

/// Routes of this resource (see `http::openapi` for how to add one).
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(notify))
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
        (status = 200, description = "Registered, updated or deregistered", body = StatusMessage,
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
) -> Result<Json<StatusMessage>> {
    let (verified, by) = match caller {
        WebhookCaller::Signed => {
            let (secret, verified) = verify_webhook(&state, &headers, &body).await?;
            // Counted from 1, in the order of `Config::webhook_secrets`.
            (Some(verified), Actor::webhook_secret(secret + 1))
        }
        WebhookCaller::Key(actor) => (None, actor),
        WebhookCaller::Unsigned => (None, Actor::unsigned()),
    };
    let result = apply_notify(&state, &headers, &body, &by).await;
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
    by: &Actor,
) -> Result<Json<StatusMessage>> {
    require_json(headers)?;
    let event = parse_json::<NotifyBody>(body)?
        .validate()
        .map_err(|e| match e {
            NotifyError::UnknownEventType(t) => ApiError::new(
                ErrorCode::UnknownEventType,
                format!("Unknown event_type '{t}' (expected REGISTER or DEREGISTER)"),
            ),
            NotifyError::Invalid(errors) => ApiError::validation(errors),
        })?;
    let now = now_micros();
    let message = match event {
        NotifyEvent::Register(reg) => {
            let outcome = state.store.register_agent(&reg, by, now).await?;
            tracing::info!(agent_id = %reg.agent_id, new = outcome == RegisterOutcome::Created, "agent registered");
            format!("Agent {} registered successfully.", reg.agent_id)
        }
        NotifyEvent::Deregister(id) => {
            state.store.deregister_agent(&id, by, now).await?;
            tracing::info!(agent_id = %id, "agent deregistered");
            format!("Agent {id} deregistered successfully.")
        }
    };
    Ok(Json(StatusMessage::success(message)))
}

/// How a webhook call authenticates, settled from its headers before its
/// body is read: a bearer key with the right to register (admin or
/// registrar); AgentKit's signature headers, present, well formed and
/// within the timestamp window (the signature itself is checked once the
/// body is in); or (only when the operator allowed it) nothing at all. A
/// wrong key or bad signature headers are refused even when unsigned calls
/// are allowed: it is a client that means to authenticate and got it wrong.
enum WebhookCaller {
    /// A bearer key: who it is, for the audit trail.
    Key(Actor),
    Signed,
    Unsigned,
}

impl FromRequestParts<AppState> for WebhookCaller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self> {
        let headers = &parts.headers;
        if let Some(principal) = authenticate(&state.keys, headers, &parts.extensions).await? {
            principal.require(Permission::Register)?;
            return Ok(Self::Key(principal.actor()));
        }
        let (ts, sig) = signature_headers(headers);
        if ts.is_some() || sig.is_some() {
            if state.config.webhook_secrets().is_empty() {
                return Err(ApiError::new(
                    ErrorCode::InvalidSignature,
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
        Err(ApiError::new(
            ErrorCode::MissingCredentials,
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
        SignatureError::Stale(..) => ErrorCode::StaleTimestamp,
        SignatureError::MissingHeader(_) => ErrorCode::MissingSignature,
        _ => ErrorCode::InvalidSignature,
    };
    ApiError::new(code, format!("Webhook signature refused: {e}"))
}

/// Verify a signed webhook's signature over its body, and that it is seen
/// for the first time. Returns the index of the secret that verified it
/// (in `Config::webhook_secrets`) and the signature.
async fn verify_webhook(
    state: &AppState,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<(usize, VerifiedSignature)> {
    let (ts, sig) = signature_headers(headers);
    let secrets = state.config.webhook_secrets();
    let now = crate::domain::time::now_micros() / 1_000_000;
    let tolerance = state.config.webhook_tolerance;
    let (which, verified) =
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
        return Err(ApiError::new(
            ErrorCode::WebhookReplayed,
            "Webhook refused: this signature was already used (a replay); sign each delivery anew",
        ));
    }
    Ok((which, verified))
}
