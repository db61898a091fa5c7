//! The one error type handlers return, and how it becomes a response.
//!
//! Every error body is `{"detail": "...", "code": "..."}` (plus `errors` for
//! validation failures), per docs/api.md §1.8. The codes are [`ErrorCode`], each
//! with its one HTTP status. A 5xx never carries internal text: that is
//! logged once, inside the request's span, and the client gets a generic
//! detail.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;

use crate::domain::FieldError;
use crate::store::{Entity, StoreError};

/// Result alias for handlers.
pub type Result<T, E = ApiError> = std::result::Result<T, E>;

/// Every machine-readable error code, each with the one HTTP status it is
/// sent with ([`ErrorCode::status`]). The snake_case names are the wire
/// contract (docs/api.md lists them; a test below keeps that list true).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// 400: the body is not JSON.
    InvalidJson,
    /// 400: a YAML definition body is not UTF-8.
    InvalidYaml,
    /// 400: the path and body `agentId` differ.
    AgentIdMismatch,
    /// 400: a webhook `event_type` other than REGISTER or DEREGISTER.
    UnknownEventType,
    /// 400: the body could not be read.
    InvalidBody,
    /// 400: a path parameter could not be parsed.
    InvalidPath,
    /// 401: no key (or webhook signature) given.
    MissingCredentials,
    /// 401: an `Authorization` header that is not `Bearer <key>`.
    InvalidAuthorization,
    /// 401: an unknown key or a wrong secret.
    InvalidApiKey,
    /// 401: a revoked key.
    KeyRevoked,
    /// 401: an expired key.
    KeyExpired,
    /// 401: a webhook signature header is missing.
    MissingSignature,
    /// 401: a webhook signature that does not verify.
    InvalidSignature,
    /// 401: a webhook timestamp outside the tolerance window.
    StaleTimestamp,
    /// 401: a webhook signature already used.
    WebhookReplayed,
    /// 403: a valid key whose role, or agent scope, lacks the right.
    Forbidden,
    /// 404: an unknown agent (or, for reports and triggers, deregistered).
    AgentNotFound,
    /// 404: an unknown workflow definition (the generic code).
    NotFound,
    /// 404: an unknown session.
    SessionNotFound,
    /// 404: an unknown API key.
    KeyNotFound,
    /// 404: no route has this path.
    RouteNotFound,
    /// 404: no dashboard file has this name.
    FileNotFound,
    /// 405: the route does not serve this method.
    MethodNotAllowed,
    /// 408 `request_timeout`: the body did not arrive within the body
    /// deadline (the client's slowness; compare [`Self::RequestTimeout`]).
    BodyTimeout,
    /// 409: the write conflicts with what is stored.
    Conflict,
    /// 410: resuming the change feed below what is retained.
    FeedIndexExpired,
    /// 413: the body is over the size limit.
    PayloadTooLarge,
    /// 415: the body is not of a type the route reads.
    UnsupportedMediaType,
    /// 422: fields that fail validation (with `errors`).
    ValidationFailed,
    /// 422: a state report stamped too far ahead of the server's clock.
    TimestampInFuture,
    /// 422: a query string that does not parse.
    InvalidQuery,
    /// 429: the key's rate limit.
    RateLimited,
    /// 429: too many failed authentications from this address.
    TooManyFailures,
    /// 429: the key holds all the streams and blocking reads it may.
    TooManyStreams,
    /// 500: a failure of ours.
    InternalError,
    /// 503: the database cannot take the request right now.
    StorageUnavailable,
    /// 503: at a concurrent request (or feed subscriber) limit.
    Overloaded,
    /// 503 `request_timeout`: the request was not completed within the
    /// request deadline (our slowness; compare [`Self::BodyTimeout`]).
    RequestTimeout,
    /// 503: `/ready` says the database cannot be read or written.
    NotReady,
}

impl ErrorCode {
    /// Every code, in declaration order.
    pub const ALL: [ErrorCode; 39] = {
        use ErrorCode::*;
        [
            InvalidJson,
            InvalidYaml,
            AgentIdMismatch,
            UnknownEventType,
            InvalidBody,
            InvalidPath,
            MissingCredentials,
            InvalidAuthorization,
            InvalidApiKey,
            KeyRevoked,
            KeyExpired,
            MissingSignature,
            InvalidSignature,
            StaleTimestamp,
            WebhookReplayed,
            Forbidden,
            AgentNotFound,
            NotFound,
            SessionNotFound,
            KeyNotFound,
            RouteNotFound,
            FileNotFound,
            MethodNotAllowed,
            BodyTimeout,
            Conflict,
            FeedIndexExpired,
            PayloadTooLarge,
            UnsupportedMediaType,
            ValidationFailed,
            TimestampInFuture,
            InvalidQuery,
            RateLimited,
            TooManyFailures,
            TooManyStreams,
            InternalError,
            StorageUnavailable,
            Overloaded,
            RequestTimeout,
            NotReady,
        ]
    };

    /// The status and wire name of each code: the one place they are set.
    const fn parts(self) -> (StatusCode, &'static str) {
        use ErrorCode::*;
        match self {
            InvalidJson => (StatusCode::BAD_REQUEST, "invalid_json"),
            InvalidYaml => (StatusCode::BAD_REQUEST, "invalid_yaml"),
            AgentIdMismatch => (StatusCode::BAD_REQUEST, "agent_id_mismatch"),
            UnknownEventType => (StatusCode::BAD_REQUEST, "unknown_event_type"),
            InvalidBody => (StatusCode::BAD_REQUEST, "invalid_body"),
            InvalidPath => (StatusCode::BAD_REQUEST, "invalid_path"),
            MissingCredentials => (StatusCode::UNAUTHORIZED, "missing_credentials"),
            InvalidAuthorization => (StatusCode::UNAUTHORIZED, "invalid_authorization"),
            InvalidApiKey => (StatusCode::UNAUTHORIZED, "invalid_api_key"),
            KeyRevoked => (StatusCode::UNAUTHORIZED, "key_revoked"),
            KeyExpired => (StatusCode::UNAUTHORIZED, "key_expired"),
            MissingSignature => (StatusCode::UNAUTHORIZED, "missing_signature"),
            InvalidSignature => (StatusCode::UNAUTHORIZED, "invalid_signature"),
            StaleTimestamp => (StatusCode::UNAUTHORIZED, "stale_timestamp"),
            WebhookReplayed => (StatusCode::UNAUTHORIZED, "webhook_replayed"),
            Forbidden => (StatusCode::FORBIDDEN, "forbidden"),
            AgentNotFound => (StatusCode::NOT_FOUND, "agent_not_found"),
            NotFound => (StatusCode::NOT_FOUND, "not_found"),
            SessionNotFound => (StatusCode::NOT_FOUND, "session_not_found"),
            KeyNotFound => (StatusCode::NOT_FOUND, "key_not_found"),
            RouteNotFound => (StatusCode::NOT_FOUND, "route_not_found"),
            FileNotFound => (StatusCode::NOT_FOUND, "file_not_found"),
            MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
            BodyTimeout => (StatusCode::REQUEST_TIMEOUT, "request_timeout"),
            Conflict => (StatusCode::CONFLICT, "conflict"),
            FeedIndexExpired => (StatusCode::GONE, "feed_index_expired"),
            PayloadTooLarge => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
            UnsupportedMediaType => (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type"),
            ValidationFailed => (StatusCode::UNPROCESSABLE_ENTITY, "validation_failed"),
            TimestampInFuture => (StatusCode::UNPROCESSABLE_ENTITY, "timestamp_in_future"),
            InvalidQuery => (StatusCode::UNPROCESSABLE_ENTITY, "invalid_query"),
            RateLimited => (StatusCode::TOO_MANY_REQUESTS, "rate_limited"),
            TooManyFailures => (StatusCode::TOO_MANY_REQUESTS, "too_many_failures"),
            TooManyStreams => (StatusCode::TOO_MANY_REQUESTS, "too_many_streams"),
            InternalError => (StatusCode::INTERNAL_SERVER_ERROR, "internal_error"),
            StorageUnavailable => (StatusCode::SERVICE_UNAVAILABLE, "storage_unavailable"),
            Overloaded => (StatusCode::SERVICE_UNAVAILABLE, "overloaded"),
            RequestTimeout => (StatusCode::SERVICE_UNAVAILABLE, "request_timeout"),
            NotReady => (StatusCode::SERVICE_UNAVAILABLE, "not_ready"),
        }
    }

    /// The HTTP status this code is sent with.
    pub const fn status(self) -> StatusCode {
        self.parts().0
    }

    /// The code as it appears in error bodies.
    pub const fn as_str(self) -> &'static str {
        self.parts().1
    }

    /// The code a missing `entity` is reported with.
    pub const fn not_found(entity: Entity) -> Self {
        match entity {
            Entity::Agent => Self::AgentNotFound,
            Entity::Session => Self::SessionNotFound,
            Entity::Key => Self::KeyNotFound,
            Entity::WorkflowDefinition | Entity::Row => Self::NotFound,
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An error on its way to becoming an HTTP response.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{} {code}: {detail}", .code.status())]
pub struct ApiError {
    code: ErrorCode,
    detail: String,
    errors: Vec<FieldError>,
    /// For 5xx only: what to log, never sent.
    internal: Option<String>,
    /// How a 5xx is logged.
    log: LogAs,
    /// `Retry-After` seconds, when the client should wait (429).
    retry_after: Option<u64>,
}

/// How a server error is logged when it becomes a response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LogAs {
    /// A failure of ours: logged at error.
    Error,
    /// Expected under stress (a slow client, a slow database): warn.
    Warn,
    /// Logged elsewhere in summary (load shedding); the request's own
    /// "request finished" line still records the status.
    Summary,
}

/// The error body as the OpenAPI document shows it. The body actually sent
/// is [`Body`] (borrowing from the error); a test below keeps the two alike.
#[derive(Serialize, utoipa::ToSchema)]
#[schema(example = json!({"detail": "Agent not found: agent-9", "code": "agent_not_found"}))]
pub struct ErrorBody {
    /// Human-readable reason (existing clients read it).
    pub detail: String,
    /// Stable machine-readable code, e.g. `agent_not_found`, `validation_failed`.
    pub code: String,
    /// For validation failures (`validation_failed`): one entry per offending field.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub errors: Option<Vec<FieldError>>,
}

#[derive(Serialize)]
struct Body<'a> {
    detail: &'a str,
    code: &'a str,
    #[serde(skip_serializing_if = "<[FieldError]>::is_empty")]
    errors: &'a [FieldError],
}

impl ApiError {
    /// An error with a stable code (which sets the status) and a
    /// human-readable detail.
    pub fn new(code: ErrorCode, detail: impl Into<String>) -> Self {
        Self {
            code,
            detail: detail.into(),
            errors: Vec::new(),
            internal: None,
            log: LogAs::Error,
            retry_after: None,
        }
    }

    /// Tell the client to wait `secs` seconds before retrying
    /// (`Retry-After`).
    pub fn with_retry_after(mut self, secs: u64) -> Self {
        self.retry_after = Some(secs);
        self
    }

    /// 422 `validation_failed` with one entry per offending field.
    pub fn validation(errors: Vec<FieldError>) -> Self {
        let detail = if errors.is_empty() {
            "Validation failed".to_owned()
        } else {
            let parts: Vec<String> = errors
                .iter()
                .map(|e| format!("{}: {}", e.field, e.message))
                .collect();
            format!("Validation failed: {}", parts.join("; "))
        };
        Self {
            errors,
            ..Self::new(ErrorCode::ValidationFailed, detail)
        }
    }

    /// 422 for a single field.
    pub fn invalid_field(field: &str, message: impl Into<String>) -> Self {
        Self::validation(vec![FieldError::new(field, message)])
    }

    /// The same error under a more specific code (e.g. a validation failure
    /// that clients tell apart, `timestamp_in_future`); the status is the
    /// new code's.
    pub fn with_code(mut self, code: ErrorCode) -> Self {
        self.code = code;
        self
    }

    /// 500 with an internal reason that is logged, not sent.
    pub fn internal(reason: impl Into<String>) -> Self {
        Self {
            internal: Some(reason.into()),
            ..Self::new(ErrorCode::InternalError, "Internal server error")
        }
    }

    /// 503 for a storage outage.
    pub fn unavailable(reason: impl Into<String>) -> Self {
        Self {
            internal: Some(reason.into()),
            ..Self::new(
                ErrorCode::StorageUnavailable,
                "Storage is unavailable; retry shortly",
            )
        }
    }

    /// 503 when the service is at its concurrent request limit: refused at
    /// once rather than queued. Retry-After says when to try again.
    pub fn overloaded() -> Self {
        Self {
            log: LogAs::Summary,
            ..Self::new(
                ErrorCode::Overloaded,
                "The service is at capacity; retry shortly",
            )
        }
    }

    /// 503 when a request took longer than the request timeout. 503 rather
    /// than 504: this service is the origin, not a gateway waiting on one,
    /// and 503 with Retry-After is what clients already retry on.
    pub fn request_timeout(limit: std::time::Duration) -> Self {
        Self {
            log: LogAs::Warn,
            ..Self::new(
                ErrorCode::RequestTimeout,
                format!(
                    "The request was not completed within {}s; retry shortly",
                    limit.as_secs()
                ),
            )
        }
    }

    /// 408 when a request's body did not arrive within the body deadline:
    /// the client's slowness, not ours (a slow handler is the 503 above).
    /// The rest of the body is never read, so the connection closes.
    pub fn body_timeout(limit: std::time::Duration) -> Self {
        Self::new(
            ErrorCode::BodyTimeout,
            format!(
                "The request body was not received within {}s",
                limit.as_secs()
            ),
        )
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        self.code.status()
    }

    /// The machine-readable code.
    pub fn code(&self) -> ErrorCode {
        self.code
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound { entity, id } => Self::new(
                ErrorCode::not_found(entity),
                format!("{entity} not found: {id}"),
            ),
            StoreError::Conflict(m) => Self::new(ErrorCode::Conflict, m),
            StoreError::Unavailable(m) | StoreError::ConnectionLost(m) => Self::unavailable(m),
            StoreError::Internal(m) => Self::internal(m),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.code.status();
        let code = self.code.as_str();
        if status.is_server_error() {
            // Logged here, inside the request span, once per failed request.
            let status = status.as_u16();
            let reason = self.internal.as_deref().unwrap_or(&self.detail);
            match self.log {
                LogAs::Error => {
                    tracing::error!(status, code, reason, "request failed")
                }
                LogAs::Warn => {
                    tracing::warn!(status, code, reason, "request failed")
                }
                LogAs::Summary => {}
            }
        }
        let body = Body {
            detail: &self.detail,
            code,
            errors: &self.errors,
        };
        let mut resp = (status, Json(body)).into_response();
        let headers = resp.headers_mut();
        match status {
            StatusCode::UNAUTHORIZED => {
                headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            StatusCode::SERVICE_UNAVAILABLE => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            // The rest of an oversized body is never read, so the server
            // closes the connection after this answer; saying so keeps a
            // client from sending its next request down a closing connection.
            StatusCode::PAYLOAD_TOO_LARGE | StatusCode::REQUEST_TIMEOUT => {
                headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            _ => {}
        }
        if let Some(secs) = self.retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        resp
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use super::*;

    #[test]
    fn all_lists_every_code_once_in_order() {
        for (i, c) in ErrorCode::ALL.iter().enumerate() {
            assert_eq!(*c as usize, i, "{c:?} out of place in ErrorCode::ALL");
        }
        // Only the two request timeouts share a name (408 and 503).
        let mut names: BTreeMap<&str, BTreeSet<u16>> = BTreeMap::new();
        for c in ErrorCode::ALL {
            let name = c.as_str();
            assert!(
                !name.is_empty() && name.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
                "{name}"
            );
            assert!(
                c.status().is_client_error() || c.status().is_server_error(),
                "{c:?}"
            );
            names.entry(name).or_default().insert(c.status().as_u16());
        }
        assert_eq!(names.len(), ErrorCode::ALL.len() - 1);
        assert_eq!(names["request_timeout"], BTreeSet::from([408, 503]));
    }

    /// docs/api.md's table of codes by status says what the code sends:
    /// every code is listed under its status, and every code listed exists
    /// with that status.
    #[test]
    fn api_docs_list_every_code_under_its_status() {
        let docs = include_str!("../docs/api.md");
        let mut documented: BTreeMap<u16, BTreeSet<&str>> = BTreeMap::new();
        for line in docs.lines() {
            let cells: Vec<&str> = line.split('|').map(str::trim).collect();
            let Some(status) = cells.get(1).and_then(|c| c.parse::<u16>().ok()) else {
                continue;
            };
            let Some(codes) = cells.get(2) else { continue };
            // Backticked words in the cell; `errors` and `timestamp` name
            // parts of the body, not codes.
            let words = codes.split('`').skip(1).step_by(2);
            documented
                .entry(status)
                .or_default()
                .extend(words.filter(|w| {
                    w.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
                        && !matches!(*w, "errors" | "timestamp")
                }));
        }
        assert!(
            documented.len() >= 10,
            "no status table found: {documented:?}"
        );
        let mut known: BTreeMap<u16, BTreeSet<&str>> = BTreeMap::new();
        for c in ErrorCode::ALL {
            known
                .entry(c.status().as_u16())
                .or_default()
                .insert(c.as_str());
        }
        assert_eq!(documented, known, "docs/api.md (left) vs ErrorCode (right)");
    }

    #[test]
    fn the_body_sent_is_the_body_documented() {
        for errors in [vec![], vec![FieldError::new("f", "m")]] {
            let sent = Body {
                detail: "d",
                code: "c",
                errors: &errors,
            };
            let documented = ErrorBody {
                detail: "d".into(),
                code: "c".into(),
                errors: (!errors.is_empty()).then(|| errors.clone()),
            };
            assert_eq!(
                serde_json::to_value(sent).unwrap(),
                serde_json::to_value(documented).unwrap()
            );
        }
    }

    #[test]
    fn store_not_found_is_coded_by_entity() {
        let cases = [
            (Entity::Agent, "agent_not_found", "Agent not found: x"),
            (Entity::Session, "session_not_found", "Session not found: x"),
            (Entity::Key, "key_not_found", "API key not found: x"),
            (
                Entity::WorkflowDefinition,
                "not_found",
                "Workflow definition not found: x",
            ),
        ];
        for (entity, code, detail) in cases {
            let e = ApiError::from(StoreError::not_found(entity, "x"));
            assert_eq!(e.status(), StatusCode::NOT_FOUND);
            assert_eq!(e.code().as_str(), code);
            assert_eq!(e.detail, detail);
        }
    }
}
