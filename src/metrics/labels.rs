//! Label values and buckets: every label a metric carries is bounded here
//! (routes are matched templates, states outside the known set are
//! `other`, workflow ids past the first [`MAX_WORKFLOW_LABELS`] are
//! `_other`).

use std::collections::HashSet;
use std::sync::{Arc, RwLock};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;

/// State names that get their own label value; anything else is `other`.
/// These are the states with a meaning to the service (docs/api.md §1.2).
pub const KNOWN_STATES: [&str; 6] = [
    "UNKNOWN",
    "initializing",
    "idle",
    "active",
    "error",
    "finished",
];

/// Session statuses, as stored.
pub(super) const SESSION_STATUSES: [&str; 5] =
    ["started", "running", "completed", "failed", "cancelled"];

/// Request latency buckets, in seconds: from a cached read to the request
/// timeout's neighbourhood.
pub(super) const HTTP_BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Session duration buckets, in seconds: from a workflow that ends at once
/// (100 ms) to one that runs for most of a day.
pub(super) const SESSION_BUCKETS: [f64; 17] = [
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0,
    21600.0, 86400.0,
];

/// Most distinct `workflow` label values per process; sessions of any
/// workflow seen after that many are counted under [`OTHER_WORKFLOW`].
/// Workflow ids are chosen by whoever writes definitions, so their number
/// is not the service's to bound.
pub const MAX_WORKFLOW_LABELS: usize = 100;

/// The `workflow` label value shared by the workflows past
/// [`MAX_WORKFLOW_LABELS`].
pub const OTHER_WORKFLOW: &str = "_other";

/// Dispatch latency buckets, in seconds (bounded by the dispatch timeout).
pub(super) const DISPATCH_BUCKETS: [f64; 12] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct RequestLabels {
    pub(super) method: &'static str,
    pub(super) route: Arc<str>,
    pub(super) status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct RouteLabels {
    pub(super) method: &'static str,
    pub(super) route: Arc<str>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct StateLabel {
    pub(super) state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct StatusLabel {
    pub(super) status: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct OutcomeLabel {
    pub(super) outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct SessionLabels {
    pub(super) workflow: Arc<str>,
    pub(super) outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct ReadLabels {
    pub(super) read: &'static str,
    pub(super) source: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct BatchLabels {
    pub(super) path: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct PoolLabel {
    pub(super) pool: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct BuildLabels {
    pub(super) version: &'static str,
    pub(super) commit: &'static str,
}

pub(super) type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// How a dispatch attempt ended, as a label value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DispatchResult {
    /// The target accepted the task (2xx).
    Accepted,
    /// It failed and will be retried (connection error, timeout, 408, 429, 5xx).
    Retry,
    /// It failed for good (any other status).
    Failed,
}

impl DispatchResult {
    pub(super) fn label(self) -> &'static str {
        match self {
            Self::Accepted => "accepted",
            Self::Retry => "retry",
            Self::Failed => "failed",
        }
    }
}

pub(super) fn http_histogram() -> Histogram {
    Histogram::new(HTTP_BUCKETS)
}

pub(super) fn dispatch_histogram() -> Histogram {
    Histogram::new(DISPATCH_BUCKETS)
}

pub(super) fn session_histogram() -> Histogram {
    Histogram::new(SESSION_BUCKETS)
}

/// `value` as kept in `set`, added if the set holds fewer than `max`
/// values; `None` when it is not there and the set is full.
pub(super) fn intern_at_most(
    set: &RwLock<HashSet<Arc<str>>>,
    value: &str,
    max: usize,
) -> Option<Arc<str>> {
    // A panic while holding the lock cannot leave the set half written.
    if let Some(v) = set.read().unwrap_or_else(|e| e.into_inner()).get(value) {
        return Some(v.clone());
    }
    let mut set = set.write().unwrap_or_else(|e| e.into_inner());
    if let Some(v) = set.get(value) {
        return Some(v.clone());
    }
    if set.len() >= max {
        return None;
    }
    let v: Arc<str> = Arc::from(value);
    set.insert(v.clone());
    Some(v)
}

/// Seconds from `since` to `now`; 0 when there is no `since` (or it is
/// in the future: another replica's clock may be ahead).
pub(super) fn age_secs(since: Option<i64>, now: i64) -> f64 {
    since.map_or(0.0, |t| (now - t).max(0) as f64 / 1e6)
}

/// A bounded label for an HTTP method.
pub(super) fn method_label(m: &axum::http::Method) -> &'static str {
    use axum::http::Method;
    match *m {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// A bounded label for a state name.
pub fn state_label(state: &str) -> &'static str {
    KNOWN_STATES
        .iter()
        .find(|s| **s == state)
        .copied()
        .unwrap_or("other")
}
