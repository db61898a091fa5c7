//! The one error type handlers return, and how it becomes a response.
//!
//! Every error body is `{"detail": "...", "code": "..."}` (plus `errors` for
//! validation failures), per contract 1.8. A 5xx never carries internal text:
//! that is logged once, inside the request's span, and the client gets a
//! generic detail.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;

use crate::domain::FieldError;
use crate::store::StoreError;

/// Result alias for handlers.
pub type Result<T, E = ApiError> = std::result::Result<T, E>;

/// An error on its way to becoming an HTTP response.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{status} {code}: {detail}")]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
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
    /// An error with a status, a stable code and a human-readable detail.
    pub fn new(status: StatusCode, code: &'static str, detail: impl Into<String>) -> Self {
        Self {
            status,
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

    /// 400.
    pub fn bad_request(code: &'static str, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, detail)
    }

    /// 401.
    pub fn unauthorized(code: &'static str, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, code, detail)
    }

    /// 404.
    pub fn not_found(code: &'static str, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, code, detail)
    }

    /// 422 with one entry per offending field.
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
            ..Self::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "validation_failed",
                detail,
            )
        }
    }

    /// 422 for a single field.
    pub fn invalid_field(field: &str, message: impl Into<String>) -> Self {
        Self::validation(vec![FieldError::new(field, message)])
    }

    /// The same error under a more specific code (e.g. a validation failure
    /// that clients tell apart, `timestamp_in_future`).
    pub fn with_code(mut self, code: &'static str) -> Self {
        self.code = code;
        self
    }

    /// 500 with an internal reason that is logged, not sent.
    pub fn internal(reason: impl Into<String>) -> Self {
        Self {
            internal: Some(reason.into()),
            ..Self::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal_error",
                "Internal server error",
            )
        }
    }

    /// 503 for a storage outage.
    pub fn unavailable(reason: impl Into<String>) -> Self {
        Self {
            internal: Some(reason.into()),
            ..Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "storage_unavailable",
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
                StatusCode::SERVICE_UNAVAILABLE,
                "overloaded",
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
                StatusCode::SERVICE_UNAVAILABLE,
                "request_timeout",
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
            StatusCode::REQUEST_TIMEOUT,
            "request_timeout",
            format!(
                "The request body was not received within {}s",
                limit.as_secs()
            ),
        )
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The machine-readable code.
    pub fn code(&self) -> &'static str {
        self.code
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound { entity, id } => {
                let code = match entity {
                    "Agent" => "agent_not_found",
                    _ => "not_found",
                };
                Self::not_found(code, format!("{entity} not found: {id}"))
            }
            StoreError::Conflict(m) => Self::new(StatusCode::CONFLICT, "conflict", m),
            StoreError::Unavailable(m) => Self::unavailable(m),
            StoreError::Internal(m) => Self::internal(m),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            // Logged here, inside the request span, once per failed request.
            let status = self.status.as_u16();
            let reason = self.internal.as_deref().unwrap_or(&self.detail);
            match self.log {
                LogAs::Error => {
                    tracing::error!(status, code = self.code, reason, "request failed")
                }
                LogAs::Warn => {
                    tracing::warn!(status, code = self.code, reason, "request failed")
                }
                LogAs::Summary => {}
            }
        }
        let body = Body {
            detail: &self.detail,
            code: self.code,
            errors: &self.errors,
        };
        let mut resp = (self.status, Json(body)).into_response();
        let headers = resp.headers_mut();
        match self.status {
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
