//! Operational routes: liveness, readiness, metrics, and the API's own
//! documentation (`/openapi.json` and the `/docs` page that renders it).
//!
//! None of these needs a key: probes and Prometheus scrapers usually carry
//! none, and nothing here names an agent (metric labels are bounded: route
//! templates, state names, statuses). The README says how to keep them off a
//! public network.

use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::trace::quiet_log;
use crate::error::{ApiError, ErrorBody, ErrorCode, Result};
use crate::http::state::AppState;

/// The liveness route, exempt from the request limits.
pub const HEALTH_PATH: &str = "/health";

/// The routes of this module.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(health))
        .routes(routes!(ready))
        .routes(routes!(metrics))
        // Probes and scrapes log their request line at debug.
        .route_layer(axum::middleware::map_response(quiet_log))
        .routes(routes!(openapi_json))
        .routes(routes!(docs_page))
        .routes(routes!(docs_script))
        .routes(routes!(docs_style))
}

/// `{"status": …}`.
#[derive(Serialize, utoipa::ToSchema)]
pub struct StatusOnly {
    /// `ok` (health) or `ready` (readiness).
    #[schema(example = "ok")]
    status: &'static str,
}

/// Liveness: the process answers.
///
/// No key, no database (docs/api.md §1.5); exempt from the concurrency limit.
#[utoipa::path(
    get,
    operation_id = "getHealth",
    path = "/health",
    tag = "ops",
    responses((status = 200, description = "The process is alive", body = StatusOnly,
               example = json!({"status": "ok"}))),
)]
async fn health() -> Json<StatusOnly> {
    Json(StatusOnly { status: "ok" })
}

/// Readiness: the service can read and write its database.
///
/// Checks (at most about once a second; probes in between get the last
/// answer) that the migrations are applied, that every table is there and,
/// on PostgreSQL, granted to the service, and that a small write commits.
/// 503 for as long as any of that fails: a full disk, a lost connection, a
/// read-only database, a revoked privilege, a dropped table.
#[utoipa::path(
    get,
    operation_id = "getReady",
    path = "/ready",
    tag = "ops",
    responses(
        (status = 200, description = "Ready to serve", body = StatusOnly,
         example = json!({"status": "ready"})),
        (status = 503, description = "`not_ready`: the database cannot be read or written, \
                                      or is not migrated (the log says why)",
         body = ErrorBody),
    ),
)]
async fn ready(State(state): State<AppState>) -> Result<Json<StatusOnly>> {
    match state.readiness.check(&*state.store).await {
        Ok(()) => Ok(Json(StatusOnly { status: "ready" })),
        Err(_) => Err(ApiError::new(
            ErrorCode::NotReady,
            "The database cannot be read or written, or is not migrated",
        )),
    }
}

/// Prometheus metrics.
///
/// OpenMetrics 1.0 text when the `Accept` header asks for it (Prometheus
/// does), else Prometheus text 0.0.4 (a `curl` or an older scraper). The database
/// gauges (agents by state, sessions by status, queue depth, the oldest due
/// run's age, the feed's lag) are read at scrape time; if the database cannot be read they keep their last values,
/// `opscore_metrics_store_errors_total` counts it, and the rest is served.
#[utoipa::path(
    get,
    operation_id = "getMetrics",
    path = "/metrics",
    tag = "ops",
    responses((status = 200, description = "The exposition: OpenMetrics when the Accept header asks for it, else Prometheus text 0.0.4",
               content(
                   (String = "application/openmetrics-text; version=1.0.0; charset=utf-8"),
                   (String = "text/plain; version=0.0.4; charset=utf-8"),
               ))),
)]
async fn metrics(State(state): State<AppState>, headers: HeaderMap) -> Result<Response> {
    state.metrics.set_feed_subscribers(state.feed.subscribers());
    if let Err(e) = state
        .metrics
        .refresh_from_store(&*state.store, state.feed.head())
        .await
    {
        tracing::warn!(error = %e, "metrics: could not read the database gauges");
    }
    let text = state
        .metrics
        .encode()
        .map_err(|e| ApiError::internal(format!("encoding metrics: {e}")))?;
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
    let (content_type, text) = if crate::metrics::wants_openmetrics(accept) {
        (crate::metrics::CONTENT_TYPE, text)
    } else {
        (
            crate::metrics::PROMETHEUS_CONTENT_TYPE,
            crate::metrics::to_prometheus_text(&text),
        )
    };
    Ok((
        [(header::CONTENT_TYPE, HeaderValue::from_static(content_type))],
        text,
    )
        .into_response())
}

/// This API's OpenAPI 3.1 document.
#[utoipa::path(
    get,
    operation_id = "getOpenApiDocument",
    path = "/openapi.json",
    tag = "ops",
    responses((status = 200, description = "The OpenAPI document", content_type = "application/json",
               body = Object)),
)]
async fn openapi_json() -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        super::openapi::spec_json(),
    )
        .into_response()
}

/// The documentation page's own files, compiled into the binary: it works
/// with no internet access, and the Content-Security-Policy lets it load
/// nothing from anywhere else.
const DOCS_HTML: &str = include_str!("docs/index.html");
const DOCS_JS: &str = include_str!("docs/docs.js");
const DOCS_CSS: &str = include_str!("docs/docs.css");
const DOCS_CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
                        connect-src 'self'; img-src 'self' data:; base-uri 'none'; \
                        form-action 'none'; frame-ancestors 'none'";

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(DOCS_CSP),
            ),
            (
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ),
        ],
        body,
    )
        .into_response()
}

/// Human-readable API documentation, rendered from `/openapi.json`.
#[utoipa::path(
    get,
    operation_id = "getApiDocsPage",
    path = "/docs",
    tag = "ops",
    responses((status = 200, description = "The page", content_type = "text/html; charset=utf-8",
               body = String)),
)]
async fn docs_page() -> Response {
    asset("text/html; charset=utf-8", DOCS_HTML)
}

/// The documentation page's script.
#[utoipa::path(
    get,
    operation_id = "getApiDocsScript",
    path = "/docs/docs.js",
    tag = "ops",
    responses((status = 200, description = "The script", content_type = "text/javascript; charset=utf-8",
               body = String)),
)]
async fn docs_script() -> Response {
    asset("text/javascript; charset=utf-8", DOCS_JS)
}

/// The documentation page's style sheet.
#[utoipa::path(
    get,
    operation_id = "getApiDocsStyle",
    path = "/docs/docs.css",
    tag = "ops",
    responses((status = 200, description = "The style sheet", content_type = "text/css; charset=utf-8",
               body = String)),
)]
async fn docs_style() -> Response {
    asset("text/css; charset=utf-8", DOCS_CSS)
}
