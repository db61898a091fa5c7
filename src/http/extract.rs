//! Request extraction with contract-shaped errors: bodies checked for
//! content type (415), size (413), JSON syntax (400) and shape (422, naming
//! the field); path and query rejections turned into JSON errors.

use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, Request};
use axum::http::{header, HeaderMap, StatusCode};
use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use utoipa::IntoParams;

use crate::domain::agent::AgentId;
use crate::domain::FieldError;
use crate::error::{ApiError, ErrorCode, Result};

/// When a request's body must have arrived by: set for every request by
/// the request limits, enforced by [`RawBody`] (which every body extractor
/// here reads through).
#[derive(Debug, Clone, Copy)]
pub struct BodyDeadline {
    /// The instant.
    pub at: tokio::time::Instant,
    /// The setting it came from, for the error.
    pub limit: std::time::Duration,
}

/// The raw request body, within the configured size limit, received
/// before the request's [`BodyDeadline`] (408 `request_timeout` past it;
/// what was buffered is dropped with the connection).
pub struct RawBody(pub Bytes);

impl<S: Send + Sync> FromRequest<S> for RawBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let deadline = req.extensions().get::<BodyDeadline>().copied();
        let read = Bytes::from_request(req, state);
        let bytes = match deadline {
            Some(d) => tokio::time::timeout_at(d.at, read)
                .await
                .map_err(|_| ApiError::body_timeout(d.limit))?,
            None => read.await,
        };
        bytes.map(RawBody).map_err(body_error)
    }
}

fn body_error(e: BytesRejection) -> ApiError {
    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::new(
            ErrorCode::PayloadTooLarge,
            "Request body exceeds the size limit",
        )
    } else {
        ApiError::new(
            ErrorCode::InvalidBody,
            format!("Could not read the request body: {e}"),
        )
    }
}

/// A JSON body deserialised into `T`.
pub struct JsonBody<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        require_json(req.headers())?;
        let RawBody(bytes) = RawBody::from_request(req, state).await?;
        parse_json(&bytes).map(JsonBody)
    }
}

/// 415 unless the request says its body is JSON (`application/json`, with
/// or without parameters, or any `+json` type).
pub fn require_json(headers: &HeaderMap) -> Result<(), ApiError> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let mime = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    if mime == "application/json" || (mime.starts_with("application/") && mime.ends_with("+json")) {
        Ok(())
    } else {
        let shown = if ct.is_empty() {
            "none".to_owned()
        } else {
            format!("'{ct}'")
        };
        Err(ApiError::new(
            ErrorCode::UnsupportedMediaType,
            format!("Content-Type must be application/json (got {shown})"),
        ))
    }
}

/// Parse JSON bytes into `T`: broken JSON is 400, JSON of the wrong shape is
/// 422 naming the field. The body must be one JSON value: anything but
/// whitespace after it is broken JSON too.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    match serde_path_to_error::deserialize::<_, T>(&mut *de) {
        // serde_path_to_error reads only the value; `end` is the check for
        // trailing data that serde_json::from_slice makes (found by the
        // definition fuzz target: `{"id":"w"} junk` was accepted).
        Ok(v) => de.end().map(|()| v).map_err(|e| invalid_json(&e)),
        Err(e) => {
            let path = e.path().to_string();
            let inner = e.into_inner();
            match inner.classify() {
                serde_json::error::Category::Data => {
                    let field = if path == "." { "body".to_owned() } else { path };
                    Err(ApiError::validation(vec![FieldError::new(
                        field,
                        strip_position(&inner),
                    )]))
                }
                _ => Err(invalid_json(&inner)),
            }
        }
    }
}

fn invalid_json(e: &serde_json::Error) -> ApiError {
    ApiError::new(
        ErrorCode::InvalidJson,
        format!("Request body is not valid JSON: {e}"),
    )
}

/// serde_json appends "at line 1 column 42" to data errors; the field path
/// says more, so drop it.
fn strip_position(e: &serde_json::Error) -> String {
    let s = e.to_string();
    match s.rfind(" at line ") {
        Some(i) => s[..i].to_owned(),
        None => s,
    }
}

impl From<PathRejection> for ApiError {
    fn from(e: PathRejection) -> Self {
        ApiError::new(
            ErrorCode::InvalidPath,
            format!("Invalid path parameter: {e}"),
        )
    }
}

impl From<QueryRejection> for ApiError {
    fn from(e: QueryRejection) -> Self {
        ApiError::new(
            ErrorCode::InvalidQuery,
            format!("Invalid query string: {}", e.body_text()),
        )
    }
}

/// `axum::extract::Path` with a JSON rejection.
#[derive(axum::extract::FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(ApiError))]
pub struct Path<T>(pub T);

/// `axum::extract::Query` with a JSON rejection.
#[derive(axum::extract::FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub struct Query<T>(pub T);

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize, Debug)]
    #[allow(dead_code)]
    struct T {
        a: Option<String>,
    }

    #[test]
    fn syntax_is_400_shape_is_422() {
        assert_eq!(
            parse_json::<T>(b"{").unwrap_err().status(),
            StatusCode::BAD_REQUEST
        );
        let e = parse_json::<T>(br#"{"a": 5}"#).unwrap_err();
        assert_eq!(e.status(), StatusCode::UNPROCESSABLE_ENTITY);
        assert!(e.to_string().contains("a: invalid type"), "{e}");
        assert_eq!(
            parse_json::<T>(b"[]").unwrap_err().status(),
            StatusCode::UNPROCESSABLE_ENTITY
        );
    }

    #[test]
    fn trailing_data_is_400() {
        // Regression: accepted until the definition fuzz target found it
        // (fuzz/corpus/definition/seed-regress-trailing-data).
        for raw in [
            &br#"{"a":"x"} junk"#[..],
            br#"{"a":"x"}{"a":"y"}"#,
            br#"{"a":"x"}]"#,
        ] {
            let e = parse_json::<T>(raw).unwrap_err();
            assert_eq!(e.status(), StatusCode::BAD_REQUEST);
            assert_eq!(e.code(), ErrorCode::InvalidJson);
        }
        let ok = parse_json::<T>(b" {\"a\":\"x\"} \n\t").unwrap();
        assert_eq!(ok.a.as_deref(), Some("x"));
    }

    #[test]
    fn content_types() {
        let mut h = HeaderMap::new();
        assert!(require_json(&h).is_err());
        for ok in [
            "application/json",
            "application/json; charset=utf-8",
            "Application/JSON",
            "application/vnd.x+json",
        ] {
            h.insert(header::CONTENT_TYPE, ok.parse().unwrap());
            assert!(require_json(&h).is_ok(), "{ok}");
        }
        h.insert(header::CONTENT_TYPE, "text/plain".parse().unwrap());
        assert_eq!(
            require_json(&h).unwrap_err().status(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE
        );
    }
}

/// A path agent id that is not well formed names no agent: 404.
pub(super) fn path_agent(raw: &str) -> Result<AgentId> {
    AgentId::parse(raw).map_err(|why| {
        ApiError::new(
            ErrorCode::AgentNotFound,
            format!("Agent not found: {raw} ({why})"),
        )
    })
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
