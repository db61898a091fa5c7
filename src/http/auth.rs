//! Authentication: bearer API keys (resolved by [`KeyRing`]). AgentKit's
//! webhook signature scheme is in `domain::signature`.

use std::net::{IpAddr, SocketAddr};

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{header, Extensions, HeaderMap};

pub use super::keyring::{KeyRing, Principal};
use crate::error::{ApiError, ErrorCode};
use crate::http::state::AppState;

/// What the `Authorization` header held.
enum Bearer<'a> {
    Missing,
    Malformed,
    Key(&'a str),
}

fn bearer(headers: &HeaderMap) -> Bearer<'_> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Bearer::Missing;
    };
    let Ok(value) = value.to_str() else {
        return Bearer::Malformed;
    };
    match value.trim().split_once(' ') {
        Some((scheme, key)) if scheme.eq_ignore_ascii_case("bearer") && !key.trim().is_empty() => {
            Bearer::Key(key.trim())
        }
        _ => Bearer::Malformed,
    }
}

/// Who a request is from, worked out once from its headers before anything
/// else is done for it (by the request limits, which budget authenticated
/// and unauthenticated requests apart), and kept in the request's
/// extensions for the extractors.
#[derive(Debug, Clone)]
pub struct Authenticated(pub Result<Option<Principal>, ApiError>);

/// The address a request came from, when the server knows it.
pub fn peer(ext: &Extensions) -> Option<IpAddr> {
    ext.get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip())
}

/// Authenticate the bearer key of a request from `peer`, and take a token
/// from its rate limit: `Ok(None)` when no `Authorization` header was
/// sent; 401 when one was sent and is malformed, unknown, revoked or
/// expired; 429 when the key is over its rate limit, or when `peer` has
/// failed too often (see [`KeyRing`]).
pub async fn authenticate_request(
    keys: &KeyRing,
    headers: &HeaderMap,
    peer: Option<IpAddr>,
) -> Result<Option<Principal>, ApiError> {
    match bearer(headers) {
        Bearer::Missing => Ok(None),
        Bearer::Malformed => Err(keys.refuse(
            peer,
            ApiError::new(
                ErrorCode::InvalidAuthorization,
                "Authorization header must be 'Bearer <api key>'",
            ),
        )),
        Bearer::Key(k) => keys.authenticate_from(k, peer).await.map(Some),
    }
}

/// The caller of a request: what [`Authenticated`] recorded, or (for a
/// request that did not pass the request limits) authenticated now.
pub async fn authenticate(
    keys: &KeyRing,
    headers: &HeaderMap,
    ext: &Extensions,
) -> Result<Option<Principal>, ApiError> {
    match ext.get::<Authenticated>() {
        Some(Authenticated(done)) => done.clone(),
        None => authenticate_request(keys, headers, peer(ext)).await,
    }
}

/// The 401 of a request that sent no credentials.
pub fn missing_credentials() -> ApiError {
    ApiError::new(
        ErrorCode::MissingCredentials,
        "Missing Authorization header (expected 'Bearer <api key>')",
    )
}

/// Any authenticated caller, whatever its role. Routes use
/// [`Require`](super::access::Require) instead, which also checks the right.
impl FromRequestParts<AppState> for Principal {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        authenticate(&state.keys, &parts.headers, &parts.extensions)
            .await?
            .ok_or_else(missing_credentials)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_parsing() {
        let mut h = HeaderMap::new();
        assert!(matches!(bearer(&h), Bearer::Missing));
        for ok in [
            "Bearer k-0123456789abcdef",
            "bearer k-0123456789abcdef",
            "BEARER  k-0123456789abcdef ",
        ] {
            h.insert(header::AUTHORIZATION, ok.parse().unwrap());
            assert!(
                matches!(bearer(&h), Bearer::Key("k-0123456789abcdef")),
                "{ok}"
            );
        }
        for bad in ["Basic abc", "Bearer", "k-0123456789abcdef"] {
            h.insert(header::AUTHORIZATION, bad.parse().unwrap());
            assert!(matches!(bearer(&h), Bearer::Malformed), "{bad}");
        }
    }
}
