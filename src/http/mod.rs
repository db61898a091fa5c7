//! The HTTP layer: routes, extraction, authentication, the middleware every
//! request passes through (request id, span and log line, metrics, panics,
//! concurrency limit and deadlines, body limit), and the accept loop that
//! serves it all.

pub mod access;
pub mod agents;
pub mod audit;
pub mod auth;
pub mod dashboard;
pub mod events;
pub mod extract;
pub mod keyring;
pub mod keys;
pub mod limits;
pub mod openapi;
pub mod ops;
pub mod paging;
pub mod ratelimit;
pub mod readiness;
pub mod server;
pub mod sessions;
pub mod state;
pub mod states;
pub mod tls;
pub mod trace;
pub mod webhook;
pub mod workflows;

use axum::extract::DefaultBodyLimit;
use axum::middleware;
use axum::Router;
use utoipa_axum::router::OpenApiRouter;

use crate::error::{ApiError, ErrorCode};
use crate::http::state::AppState;

/// Every route of the service, each with its OpenAPI operation: the one
/// place both the router and `/openapi.json` come from (see [`openapi`] for
/// how to add a route).
pub fn api() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(openapi::base())
        .merge(ops::router())
        .merge(webhook::router())
        .merge(agents::router())
        .merge(states::router())
        .merge(workflows::router())
        .merge(sessions::router())
        .merge(events::router())
        .merge(keys::router())
        .merge(audit::router())
        .merge(dashboard::router())
}

/// The whole application: every resource's routes plus the shared layers.
///
/// Every layer is applied after routing (`Router::layer` wraps each route),
/// so each knows the matched route template ([`axum::extract::MatchedPath`])
/// and never looks at the path text. Outermost first: request id, span and
/// log line, metrics and panics ([`trace`]; so shed and timed-out requests
/// are logged and counted with their status and request id), then
/// authentication with the concurrency limits and the request and body
/// deadlines ([`limits`]), then the body limit.
///
/// The deadlines and the body limit are ours rather than tower-http's
/// `TimeoutLayer` and `RequestBodyLimitLayer`: those answer with their own
/// bodies (a bare 408; a text/plain 413), where the contract answers JSON
/// errors (`503 request_timeout` with `Retry-After`, `413
/// payload_too_large` with `Connection: close`), exempts event streams and
/// blocking reads from the request deadline, and bounds a body's whole
/// arrival (tower-http's body timeout is per frame, which a slow drip
/// resets).
pub fn router(state: AppState) -> Router {
    let max_body = state.config.max_body_bytes;
    let limits = limits::Limits::new(
        limits::LimitSettings {
            max_concurrent: state.config.max_concurrent_requests,
            max_unauthenticated: state.config.max_unauthenticated_requests,
            request_timeout: state.config.request_timeout,
            body_timeout: state.config.body_read_timeout,
        },
        state.keys.clone(),
    );
    let (routes, _) = api().split_for_parts();
    let routes = routes
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        // axum's own limit: the body extractors turn it into the JSON 413.
        .layer(DefaultBodyLimit::max(max_body))
        .layer(middleware::from_fn_with_state(limits, limits::limit));
    trace::layer(routes, state.metrics.clone()).with_state(state)
}

async fn not_found() -> ApiError {
    ApiError::new(ErrorCode::RouteNotFound, "No such route")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        ErrorCode::MethodNotAllowed,
        "Method not allowed on this route",
    )
}

#[cfg(test)]
mod tests {
    /// The route templates the shared middleware compares `MatchedPath`
    /// with are routes the service serves, spelled as the router spells
    /// them.
    #[test]
    fn route_constants_are_routes() {
        let (_, doc) = super::api().split_for_parts();
        for route in [
            super::ops::HEALTH_PATH,
            super::events::EVENTS_PATH,
            super::states::STATE_PATH,
        ] {
            assert!(doc.paths.paths.contains_key(route), "{route}");
        }
    }
}
