//! The HTTP layer: routes, extraction, authentication, the middleware every
//! request passes through (request id, one log line, concurrency limit and
//! deadline, body limit), and the accept loop that serves it all.

pub mod access;
pub mod agents;
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
pub mod workflows;

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::Router;
use tracing::Instrument;
use utoipa_axum::router::OpenApiRouter;

use crate::error::ApiError;
use crate::http::state::AppState;
use crate::metrics::Metrics;

/// Header that carries the request id both ways.
pub static REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Every route of the service, each with its OpenAPI operation: the one
/// place both the router and `/openapi.json` come from (see [`openapi`] for
/// how to add a route).
pub fn api() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(openapi::base())
        .merge(ops::router())
        .merge(agents::router())
        .merge(workflows::router())
        .merge(sessions::router())
        .merge(events::router())
        .merge(keys::router())
        .merge(dashboard::router())
}

/// The whole application: every resource's routes plus the shared layers.
///
/// Layers, outermost first: the request log and request metrics (so shed
/// and timed-out requests are logged and counted with their status and
/// request id), authentication with the concurrency limits, request and
/// body deadlines, the body limit.
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
    routes
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(max_body))
        .layer(middleware::from_fn_with_state(limits, limits::limit))
        .layer(middleware::from_fn_with_state(
            state.metrics.clone(),
            request_log,
        ))
        .with_state(state)
}

async fn not_found() -> ApiError {
    ApiError::not_found("route_not_found", "No such route")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "Method not allowed on this route",
    )
}

/// Reuse the caller's `x-request-id` when it is a sane token, else mint one.
fn request_id(req: &Request) -> HeaderValue {
    req.headers()
        .get(&REQUEST_ID)
        .filter(|v| {
            let b = v.as_bytes();
            !b.is_empty() && b.len() <= 128 && b.iter().all(|c| c.is_ascii_graphic())
        })
        .cloned()
        .unwrap_or_else(|| {
            HeaderValue::from_str(&uuid::Uuid::new_v4().to_string())
                .unwrap_or(HeaderValue::from_static("invalid"))
        })
}

/// One span per request (method, matched route, request id), one log line
/// when it ends (status, latency), and the request metrics (by matched route
/// template, never the raw path). Health probes and scrapes log at debug so
/// they do not drown the rest. Bodies, keys and signatures are never
/// recorded.
async fn request_log(
    State(metrics): State<Arc<Metrics>>,
    mut req: Request,
    next: Next,
) -> Response {
    let start = Instant::now();
    let id = request_id(&req);
    req.headers_mut().insert(REQUEST_ID.clone(), id.clone());
    // Cloning MatchedPath clones an Arc, not the string.
    let matched = req.extensions().get::<MatchedPath>().cloned();
    let route = matched.as_ref().map_or("unmatched", |p| p.as_str());
    let method = req.method().clone();
    let span = tracing::info_span!(
        "request",
        method = %method,
        route = %route,
        request_id = %id.to_str().unwrap_or("invalid"),
    );
    let mut resp = next.run(req).instrument(span.clone()).await;
    let status = resp.status().as_u16();
    let elapsed = start.elapsed();
    metrics.observe_request(&method, route, status, elapsed);
    let latency_ms = elapsed.as_secs_f64() * 1000.0;
    let _enter = span.enter();
    if matches!(route, "/health" | "/ready" | "/metrics") {
        tracing::debug!(status, latency_ms, "request finished");
    } else {
        tracing::info!(status, latency_ms, "request finished");
    }
    resp.headers_mut().insert(REQUEST_ID.clone(), id);
    resp
}
