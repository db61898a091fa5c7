//! Request limits: a cap on requests in flight, past which new ones are
//! refused at once (load shedding) instead of queueing without bound, and a
//! deadline per request.
//!
//! A semaphore with `try_acquire` is the whole mechanism: a request that
//! finds no permit free gets 503 `overloaded` with `Retry-After: 1` before
//! anything else is done for it. (tower's `ConcurrencyLimitLayer` plus
//! `LoadShedLayer` does the same in three layers, with errors to map back
//! through `HandleErrorLayer`, and cannot exempt one route.)
//!
//! Event streams and blocking reads (`http::events`) are exempt from both:
//! they are meant to wait, and the feed caps its subscribers itself.
//!
//! `GET /health` is exempt from the cap: it needs no database and costs
//! nothing, and an orchestrator must not kill an instance that is busy but
//! alive. `/ready` is not exempt: an instance at capacity may well drop out
//! of a load balancer's rotation until it has room again.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tokio::sync::Semaphore;

use crate::error::ApiError;

/// The shared limit state, cheap to clone.
#[derive(Clone)]
pub struct Limits {
    in_flight: Arc<Semaphore>,
    request_timeout: Duration,
    shed: Arc<ShedLog>,
}

impl Limits {
    /// At most `max_concurrent` requests at once, each within `request_timeout`.
    pub fn new(max_concurrent: usize, request_timeout: Duration) -> Self {
        Self {
            in_flight: Arc::new(Semaphore::new(max_concurrent)),
            request_timeout,
            shed: Arc::new(ShedLog::new()),
        }
    }
}

/// Middleware: take a permit or refuse, then run the request under its
/// deadline. The permit is held until the response head is ready (bodies
/// here are small JSON documents, sent in one piece).
pub async fn limit(State(limits): State<Limits>, req: Request, next: Next) -> Response {
    // Event streams and blocking reads wait on purpose, holding nothing
    // but a feed subscriber slot (which the feed caps itself).
    if super::events::is_long_poll(req.method(), req.uri().path(), req.uri().query()) {
        return next.run(req).await;
    }
    let _permit = if req.uri().path() == "/health" {
        None
    } else {
        match limits.in_flight.try_acquire() {
            Ok(permit) => Some(permit),
            Err(_) => {
                limits.shed.record();
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
    start: Instant,
    /// Milliseconds since `start` of the last summary line.
    last_ms: AtomicU64,
    /// Requests shed since the last summary line.
    count: AtomicU64,
}

impl ShedLog {
    fn new() -> Self {
        Self {
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
                "at the concurrent request limit (OPSCORE_MAX_CONCURRENT_REQUESTS): refusing requests with 503 overloaded"
            );
        }
    }
}
