//! What every request passes through on its way in and out, from
//! tower-http: its request id, its span and log line, its metrics, and the
//! 500 that answers a handler's panic.
//!
//! - **Request id**: the caller's `x-request-id` if it is a sane token
//!   (1-128 visible ASCII characters), else a new UUID
//!   ([`SetRequestIdLayer`]); returned on every response
//!   ([`PropagateRequestIdLayer`]).
//! - **Trace context** ([`trace_context`]): the caller's W3C `traceparent`
//!   (and `tracestate`) when valid, else a new trace; an invalid header is
//!   ignored, never refused. The request's own context ([`RequestTrace`])
//!   is what a trigger stores with its session.
//! - **Span and log line** ([`TraceLayer`]): one `request` span per request
//!   with its method, matched route template (never the raw path, so ids do
//!   not multiply log series), request id and trace id; one `request
//!   finished` line when the response head is ready, with status and latency. Probes and
//!   scrapes (responses marked [`QuietLog`]) log it at debug. Bodies, keys
//!   and signatures are never recorded; 5xx reasons are logged once by
//!   [`ApiError`] inside the span.
//! - **Metrics**: requests and latency by method, route template and status.
//! - **Panics** ([`CatchPanicLayer`]): a handler that panics answers the
//!   same 500 `internal_error` body as any other failure of ours, logged
//!   with the panic message; the process and the connection carry on.

use std::any::Any;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::Router;
use tower::util::MapRequestLayer;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;
use tracing::Span;

use crate::domain::trace::{TraceContext, TRACEPARENT, TRACESTATE};
use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::telemetry::context::{self, Kind};
use crate::telemetry::otel;

/// Header that carries the request id both ways.
pub static REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Longest request id kept from a caller.
const MAX_REQUEST_ID: usize = 128;

/// Marks a response whose `request finished` line is logged at debug:
/// health probes and metric scrapes, so they do not drown the rest. Set by
/// the routes themselves ([`quiet_log`] as a route layer).
#[derive(Debug, Clone, Copy)]
pub struct QuietLog;

/// Route middleware that marks its responses [`QuietLog`].
pub async fn quiet_log(mut resp: Response) -> Response {
    resp.extensions_mut().insert(QuietLog);
    resp
}

/// The trace context of a request: its own span in the caller's trace (or
/// a new one), with the caller's `tracestate`.
#[derive(Debug, Clone)]
pub struct RequestTrace(pub TraceContext);

/// The request's span, made with its trace context before [`TraceLayer`]
/// (which takes it from here) enters it.
#[derive(Clone)]
struct RequestSpan(Span);

/// Wrap `routes` (already routed, so every layer sees the matched route)
/// in the request id, trace context, span and log line, metrics and panic
/// layers. Outermost first: request id (so every response, even a panic's,
/// carries it), trace context and span, log line, metrics, panic.
pub fn layer<S>(routes: Router<S>, metrics: Arc<Metrics>) -> Router<S>
where
    S: Clone + Send + Sync + 'static,
{
    let log = TraceLayer::new_for_http()
        .make_span_with(request_span)
        .on_request(())
        .on_response(log_response)
        .on_body_chunk(())
        .on_eos(())
        // 5xx are logged once by ApiError, with their reason.
        .on_failure(());
    routes
        .layer(CatchPanicLayer::custom(panic_response))
        .layer(middleware::from_fn_with_state(metrics, record_metrics))
        .layer(log)
        .layer(MapRequestLayer::new(trace_context))
        .layer(PropagateRequestIdLayer::new(REQUEST_ID.clone()))
        .layer(SetRequestIdLayer::new(REQUEST_ID.clone(), MakeRequestUuid))
        .layer(MapRequestLayer::new(drop_unusable_request_id))
}

/// A caller's request id is kept only when it is safe to log and echo.
fn usable_request_id(v: &HeaderValue) -> bool {
    let b = v.as_bytes();
    !b.is_empty() && b.len() <= MAX_REQUEST_ID && b.iter().all(u8::is_ascii_graphic)
}

/// Remove a caller's request id that is not [`usable_request_id`], so that
/// [`SetRequestIdLayer`] mints one instead (it keeps whatever is there).
fn drop_unusable_request_id(mut req: Request) -> Request {
    if req
        .headers()
        .get(&REQUEST_ID)
        .is_some_and(|v| !usable_request_id(v))
    {
        req.headers_mut().remove(&REQUEST_ID);
    }
    req
}

/// The matched route template, or `unmatched` (no route: a 404).
fn route(req: &Request) -> &str {
    req.extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", MatchedPath::as_str)
}

/// The caller's trace context: exactly one valid `traceparent` (two are
/// as good as none, says the specification), and its `tracestate`, whose
/// several headers make one list.
fn incoming_trace(headers: &HeaderMap) -> Option<TraceContext> {
    let mut parents = headers.get_all(TRACEPARENT).iter();
    let parent = parents.next()?.to_str().ok()?;
    if parents.next().is_some() {
        return None;
    }
    let states: Vec<&str> = headers
        .get_all(TRACESTATE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    let state = (!states.is_empty()).then(|| states.join(","));
    TraceContext::from_headers(Some(parent), state.as_deref())
}

/// Make the request's span in its trace, and hand both on (a plain map of
/// the request: no boxed future per request, as `from_fn` would cost).
fn trace_context(mut req: Request) -> Request {
    let id = req
        .headers()
        .get(&REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("invalid");
    let span = tracing::info_span!(
        "request",
        method = %req.method(),
        route = %route(&req),
        request_id = %id,
        trace_id = tracing::field::Empty,
        otel.kind = tracing::field::Empty,
        otel.name = tracing::field::Empty,
        http.response.status_code = tracing::field::Empty,
        otel.status_code = tracing::field::Empty,
    );
    let incoming = incoming_trace(req.headers());
    let name = || format!("{} {}", req.method(), route(&req));
    let trace = context::start(&span, incoming.as_ref(), Kind::Server, name);
    req.extensions_mut().insert(RequestTrace(trace));
    // A span below the log level is Span::none() anyway: [`request_span`]
    // makes that without an extension.
    if !span.is_disabled() {
        req.extensions_mut().insert(RequestSpan(span));
    }
    req
}

/// The span [`trace_context`] made (none if it did not run).
fn request_span(req: &Request) -> Span {
    req.extensions()
        .get::<RequestSpan>()
        .map_or_else(Span::none, |s| s.0.clone())
}

/// The one line of a finished request, inside its span.
fn log_response(resp: &Response, latency: Duration, span: &Span) {
    let status = resp.status().as_u16();
    if otel::exporting() {
        span.record("http.response.status_code", status);
        if resp.status().is_server_error() {
            span.record("otel.status_code", "error");
        }
    }
    let latency_ms = latency.as_secs_f64() * 1000.0;
    if resp.extensions().get::<QuietLog>().is_some() {
        tracing::debug!(status, latency_ms, "request finished");
    } else {
        tracing::info!(status, latency_ms, "request finished");
    }
}

/// Request count and latency by method, route template and status.
async fn record_metrics(State(metrics): State<Arc<Metrics>>, req: Request, next: Next) -> Response {
    let start = Instant::now();
    let method = req.method().clone();
    // Cloning MatchedPath clones an Arc, not the string.
    let matched = req.extensions().get::<MatchedPath>().cloned();
    let resp = next.run(req).await;
    let route = matched.as_ref().map_or("unmatched", MatchedPath::as_str);
    metrics.observe_request(&method, route, resp.status().as_u16(), start.elapsed());
    resp
}

/// The 500 of a handler that panicked: the usual `internal_error` body,
/// with the panic message in the log only.
fn panic_response(panic: Box<dyn Any + Send + 'static>) -> Response {
    let message = panic
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| panic.downcast_ref::<&str>().copied())
        .unwrap_or("(no message)");
    ApiError::internal(format!("handler panicked: {message}")).into_response()
}

#[cfg(test)]
mod tests {
    use axum::routing::get;

    use super::*;

    async fn boom() -> &'static str {
        panic!("kaboom")
    }

    /// A handler that panics answers the JSON 500 of any failure of ours,
    /// with its request id, is counted, and the server carries on.
    #[tokio::test]
    async fn a_panic_is_a_json_500() {
        let metrics = Arc::new(Metrics::new());
        let routes = Router::new()
            .route("/boom/{id}", get(boom))
            .route("/ok", get(|| async { "ok" }));
        let app = layer(routes, metrics.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let server = tokio::spawn(async move { axum::serve(listener, app).await });
        let client = reqwest::Client::new();

        let r = client
            .get(format!("{base}/boom/7"))
            .header("x-request-id", "panic-1")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 500);
        assert_eq!(r.headers()["x-request-id"], "panic-1");
        assert!(r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/json"));
        let body: serde_json::Value = r.json().await.unwrap();
        assert_eq!(
            body,
            serde_json::json!({"detail": "Internal server error", "code": "internal_error"})
        );

        let r = client.get(format!("{base}/ok")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert!(!r.headers()["x-request-id"].is_empty());
        let text = metrics.encode().unwrap();
        assert!(
            text.contains(
                r#"opscore_http_requests_total{method="GET",route="/boom/{id}",status="500"} 1"#
            ),
            "{text}"
        );
        server.abort();
    }

    #[test]
    fn one_traceparent_and_every_tracestate() {
        const P: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let headers = |pairs: &[(&str, &str)]| {
            let mut h = HeaderMap::new();
            for (k, v) in pairs {
                h.append(
                    HeaderName::from_bytes(k.as_bytes()).unwrap(),
                    HeaderValue::from_str(v).unwrap(),
                );
            }
            h
        };
        assert_eq!(incoming_trace(&headers(&[])), None);
        let c = incoming_trace(&headers(&[
            ("traceparent", P),
            ("tracestate", "a=1"),
            ("tracestate", "b=2"),
        ]))
        .expect("valid");
        assert_eq!(c.parent.to_string(), P);
        assert_eq!(c.state.as_deref(), Some("a=1,b=2"));
        assert_eq!(
            incoming_trace(&headers(&[("traceparent", P), ("traceparent", P)])),
            None
        );
        assert_eq!(
            incoming_trace(&headers(&[
                ("traceparent", "nonsense"),
                ("tracestate", "a=1")
            ])),
            None
        );
    }

    #[test]
    fn request_ids_kept_only_when_sane() {
        for ok in ["req-abc.123", "x", &"y".repeat(MAX_REQUEST_ID)] {
            assert!(
                usable_request_id(&HeaderValue::from_str(ok).unwrap()),
                "{ok}"
            );
        }
        for bad in ["", "a b", &"y".repeat(MAX_REQUEST_ID + 1), "tab\there"] {
            assert!(
                !usable_request_id(&HeaderValue::from_str(bad).unwrap()),
                "{bad:?}"
            );
        }
        // Not ASCII at all.
        assert!(!usable_request_id(
            &HeaderValue::from_bytes(b"caf\xc3\xa9").unwrap()
        ));
    }
}
