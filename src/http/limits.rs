//! Request limits: a cap on requests in flight, past which new ones are
//! refused at once (load shedding) instead of queueing without bound, a
//! deadline per request, and a deadline for its body.
//!
//! Who is calling is settled first, from the headers alone (the bearer key
//! is checked once here and the outcome handed to the extractors; see
//! [`Authenticated`]). Requests with a valid key draw on the main budget;
//! every other request (no key, a wrong one, or a webhook whose signature
//! cannot be checked before its body is in) draws on its own small budget.
//! So clients that have not proven who they are cannot hold the capacity
//! that authenticated clients need, however many of them stall.
//!
//! Every request's body must arrive within the body deadline
//! ([`BodyDeadline`], enforced where bodies are read): a slow or stalled
//! body ends with 408 `request_timeout` and its buffer is dropped.
//!
//! A semaphore with `try_acquire` is the whole mechanism: a request that
//! finds no permit free gets 503 `overloaded` with `Retry-After: 1` before
//! anything else is done for it. (tower's `ConcurrencyLimitLayer` plus
//! `LoadShedLayer` does the same in three layers, with errors to map back
//! through `HandleErrorLayer`, and cannot exempt one route.)
//!
//! Event streams and blocking reads (`http::events`) are exempt from the
//! request budgets and deadline: they are meant to wait; the feed caps its
//! subscribers, and each key its own share of them.
//!
//! `GET /health` is exempt from the cap: it needs no database and costs
//! nothing, and an orchestrator must not kill an instance that is busy but
//! alive. `/ready` is not exempt: an instance at capacity may well drop out
//! of a load balancer's rotation until it has room again.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tokio::sync::Semaphore;

use super::auth::{authenticate_request, peer, Authenticated, KeyRing};
use super::events::EVENTS_PATH;
use super::extract::BodyDeadline;
use super::ops::HEALTH_PATH;
use super::states::STATE_PATH;
use crate::error::ApiError;

/// The shared limit state, behind one `Arc`: every request clones it (one
/// reference count, not one per part).
#[derive(Clone)]
pub struct Limits(Arc<LimitParts>);

impl std::ops::Deref for Limits {
    type Target = LimitParts;

    fn deref(&self) -> &LimitParts {
        &self.0
    }
}

/// The parts of [`Limits`].
pub struct LimitParts {
    in_flight: Arc<Semaphore>,
    unauthenticated: Arc<Semaphore>,
    request_timeout: Duration,
    body_timeout: Duration,
    keys: Arc<KeyRing>,
    shed: Arc<ShedLog>,
    shed_unauthenticated: Arc<ShedLog>,
}

/// The settings of [`Limits`].
#[derive(Debug, Clone, Copy)]
pub struct LimitSettings {
    /// Requests with a valid key in flight at once.
    pub max_concurrent: usize,
    /// Requests without one in flight at once.
    pub max_unauthenticated: usize,
    /// Deadline of a whole request.
    pub request_timeout: Duration,
    /// Deadline of a request's body, from its arrival.
    pub body_timeout: Duration,
}

impl Limits {
    /// Limits as `settings` say, authenticating callers with `keys`.
    pub fn new(settings: LimitSettings, keys: Arc<KeyRing>) -> Self {
        Self(Arc::new(LimitParts {
            in_flight: Arc::new(Semaphore::new(settings.max_concurrent)),
            unauthenticated: Arc::new(Semaphore::new(settings.max_unauthenticated)),
            request_timeout: settings.request_timeout,
            body_timeout: settings.body_timeout,
            keys,
            shed: Arc::new(ShedLog::new("OPSCORE_MAX_CONCURRENT_REQUESTS")),
            shed_unauthenticated: Arc::new(ShedLog::new("OPSCORE_MAX_UNAUTHENTICATED_REQUESTS")),
        }))
    }
}

/// Middleware: set the body deadline, authenticate, take a permit from the
/// caller's budget or refuse, then run the request under its deadline. The
/// permit is held until the response head is ready (bodies here are small
/// JSON documents, sent in one piece).
pub async fn limit(State(limits): State<Limits>, mut req: Request, next: Next) -> Response {
    req.extensions_mut().insert(BodyDeadline {
        at: tokio::time::Instant::now() + limits.body_timeout,
        limit: limits.body_timeout,
    });
    let route = req.extensions().get::<MatchedPath>().cloned();
    let route = route.as_ref().map(MatchedPath::as_str);
    let health = route == Some(HEALTH_PATH);
    let mut authenticated = false;
    if !health {
        let who = authenticate_request(&limits.keys, req.headers(), peer(req.extensions())).await;
        authenticated = matches!(who, Ok(Some(_)));
        req.extensions_mut().insert(Authenticated(who));
    }
    // Event streams and blocking reads wait on purpose, holding nothing
    // but a feed subscriber slot (which the feed and each key's stream cap
    // limit).
    if is_long_poll(req.method(), route, req.uri().query()) {
        return next.run(req).await;
    }
    let _permit = if health {
        None
    } else {
        let (budget, shed) = if authenticated {
            (&limits.in_flight, &limits.shed)
        } else {
            (&limits.unauthenticated, &limits.shed_unauthenticated)
        };
        match budget.try_acquire() {
            Ok(permit) => Some(permit),
            Err(_) => {
                shed.record();
                return ApiError::overloaded().into_response();
            }
        }
    };
    match tokio::time::timeout(limits.request_timeout, next.run(req)).await {
        Ok(response) => response,
        // The handler is dropped here, which releases what it held (a
        // database transaction rolls back).
        Err(_) => ApiError::request_timeout(limits.request_timeout).into_response(),
    }
}

/// Counts shed requests and logs a summary at most once a second: a line
/// per refused request would flood the logs exactly when the instance has
/// the least capacity to spare (each request still gets its own
/// "request finished" line at info, with status 503).
struct ShedLog {
    /// The setting whose limit was reached.
    setting: &'static str,
    start: Instant,
    /// Milliseconds since `start` of the last summary line.
    last_ms: AtomicU64,
    /// Requests shed since the last summary line.
    count: AtomicU64,
}

impl ShedLog {
    fn new(setting: &'static str) -> Self {
        Self {
            setting,
            start: Instant::now(),
            last_ms: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }

    fn record(&self) {
        self.count.fetch_add(1, Ordering::Relaxed);
        let now = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        let last = self.last_ms.load(Ordering::Relaxed);
        if now.saturating_sub(last) < 1000 && last != 0 {
            return;
        }
        // One caller per interval wins the right to log.
        if self
            .last_ms
            .compare_exchange(last, now.max(1), Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
        {
            let shed = self.count.swap(0, Ordering::Relaxed);
            tracing::warn!(
                shed,
                setting = self.setting,
                "at a concurrent request limit: refusing requests with 503 overloaded"
            );
        }
    }
}

/// Whether a request waits on the feed (an event stream or a blocking
/// read), from its method, matched route template and query: such
/// requests are exempt from the request deadline and the concurrency
/// limit, and are capped by the feed's subscriber limit instead.
pub fn is_long_poll(method: &axum::http::Method, route: Option<&str>, query: Option<&str>) -> bool {
    method == axum::http::Method::GET
        && (route == Some(EVENTS_PATH)
            || (route == Some(STATE_PATH)
                && query.is_some_and(|q| q.split('&').any(|kv| kv.starts_with("index=")))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_polls_are_recognised() {
        use axum::http::Method;
        let state = Some(STATE_PATH);
        assert!(is_long_poll(&Method::GET, Some(EVENTS_PATH), None));
        assert!(is_long_poll(&Method::GET, state, Some("wait=1s&index=4")));
        assert!(!is_long_poll(&Method::GET, state, None));
        assert!(!is_long_poll(&Method::POST, state, Some("index=4")));
        assert!(!is_long_poll(&Method::GET, state, Some("reindex=4")));
        // Routes are told apart by template, not by how the path ends.
        let history = Some("/v1/opscore/agent/{agentId}/state/history");
        assert!(!is_long_poll(&Method::GET, history, Some("index=4")));
        assert!(!is_long_poll(&Method::GET, None, Some("index=4")));
    }
}
