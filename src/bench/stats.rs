//! Recording what each request did: its latency in an HDR histogram, and
//! how it ended (success, or which kind of failure).
//!
//! Latencies are kept in an HDR histogram rather than a list of samples or a
//! fixed-bucket one: memory stays constant (a few hundred KiB) however many
//! requests a run sends, every percentile up to the max is exact to three
//! significant digits across microseconds to an hour, and histograms of
//! different workers or kinds of request add up exactly.

use std::sync::Mutex;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

/// Longest latency the histograms hold, in microseconds (one hour); longer
/// values are clamped to it.
const MAX_MICROS: u64 = 3_600_000_000;

/// A new, empty latency histogram (microseconds, three significant digits).
pub(crate) fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_MICROS, 3).expect("valid histogram bounds")
}

/// Record `d` into `h`, in microseconds.
pub(crate) fn record(h: &mut Histogram<u64>, d: Duration) {
    let us = u64::try_from(d.as_micros()).unwrap_or(MAX_MICROS).max(1);
    h.saturating_record(us);
}

/// Why a request did not succeed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Failure {
    /// The server answered, with another status than the expected one.
    Status {
        /// The status it answered with.
        code: u16,
        /// Whether the answer carried `Retry-After`.
        retry_after: bool,
    },
    /// No connection could be made (refused, unreachable).
    Connect,
    /// The connection was reset or closed before the full response.
    Reset,
    /// No full response within the request timeout.
    Timeout,
    /// Anything else (a body that could not be read, …).
    Other,
}

impl Failure {
    /// Classify a client error.
    pub(crate) fn from_reqwest(e: &reqwest::Error) -> Self {
        if e.is_timeout() {
            return Self::Timeout;
        }
        if e.is_connect() {
            return Self::Connect;
        }
        let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
        while let Some(err) = source {
            if let Some(io) = err.downcast_ref::<std::io::Error>() {
                use std::io::ErrorKind::*;
                match io.kind() {
                    ConnectionReset | ConnectionAborted | BrokenPipe | UnexpectedEof => {
                        return Self::Reset
                    }
                    ConnectionRefused => return Self::Connect,
                    TimedOut => return Self::Timeout,
                    _ => {}
                }
            }
            // hyper says "connection closed before message completed" for
            // a connection the server dropped; it carries no io::Error.
            let text = err.to_string().to_ascii_lowercase();
            if text.contains("connection closed")
                || text.contains("reset")
                || text.contains("incomplete")
                || text.contains("broken pipe")
            {
                return Self::Reset;
            }
            source = err.source();
        }
        Self::Other
    }
}

/// Failed requests by kind. `unavailable` (503) and `retryAfter` are counted
/// apart from connection errors: a 503 with `Retry-After` is the server
/// shedding load on purpose, a reset is it falling over.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ErrorCounts {
    /// 503 answers (load shed or storage outage).
    pub unavailable: u64,
    /// How many of those 503 answers carried `Retry-After`.
    pub retry_after: u64,
    /// 429 answers.
    pub too_many_requests: u64,
    /// Other 4xx answers.
    pub client_error: u64,
    /// Other 5xx answers (and any other unexpected status).
    pub server_error: u64,
    /// Connections that could not be made.
    pub connect: u64,
    /// Connections reset or closed before the full response.
    pub reset: u64,
    /// Requests with no full response within the timeout.
    pub timeout: u64,
    /// Anything else.
    pub other: u64,
}

impl ErrorCounts {
    /// Every failed request (`retryAfter` is a subset of `unavailable`).
    pub fn total(&self) -> u64 {
        self.unavailable
            + self.too_many_requests
            + self.client_error
            + self.server_error
            + self.connect
            + self.reset
            + self.timeout
            + self.other
    }

    /// Connection-level failures: could not connect, or reset.
    pub fn connection(&self) -> u64 {
        self.connect + self.reset
    }

    pub(crate) fn count(&mut self, f: Failure) {
        match f {
            Failure::Status {
                code: 503,
                retry_after,
            } => {
                self.unavailable += 1;
                self.retry_after += u64::from(retry_after);
            }
            Failure::Status { code: 429, .. } => self.too_many_requests += 1,
            Failure::Status { code, .. } if (400..500).contains(&code) => self.client_error += 1,
            Failure::Status { .. } => self.server_error += 1,
            Failure::Connect => self.connect += 1,
            Failure::Reset => self.reset += 1,
            Failure::Timeout => self.timeout += 1,
            Failure::Other => self.other += 1,
        }
    }

    pub(crate) fn add(&mut self, o: &ErrorCounts) {
        self.unavailable += o.unavailable;
        self.retry_after += o.retry_after;
        self.too_many_requests += o.too_many_requests;
        self.client_error += o.client_error;
        self.server_error += o.server_error;
        self.connect += o.connect;
        self.reset += o.reset;
        self.timeout += o.timeout;
        self.other += o.other;
    }
}

/// What a set of requests did.
#[derive(Debug, Clone)]
pub(crate) struct Stats {
    /// Latency of every finished request, failed ones included.
    pub latency: Histogram<u64>,
    /// Open loop only: how late each request left against its schedule.
    pub lag: Option<Histogram<u64>>,
    pub successes: u64,
    pub errors: ErrorCounts,
}

impl Stats {
    pub(crate) fn new() -> Self {
        Self {
            latency: histogram(),
            lag: None,
            successes: 0,
            errors: ErrorCounts::default(),
        }
    }

    pub(crate) fn requests(&self) -> u64 {
        self.successes + self.errors.total()
    }

    /// Add `o` into `self`.
    pub(crate) fn merge(&mut self, o: &Stats) {
        self.latency.add(&o.latency).expect("same bounds");
        match (&mut self.lag, &o.lag) {
            (Some(a), Some(b)) => a.add(b).expect("same bounds"),
            (None, Some(b)) => self.lag = Some(b.clone()),
            _ => {}
        }
        self.successes += o.successes;
        self.errors.add(&o.errors);
    }
}

/// A thread-safe sink for request outcomes.
#[derive(Debug)]
pub(crate) struct Recorder(Mutex<Stats>);

impl Recorder {
    pub(crate) fn new() -> Self {
        Self(Mutex::new(Stats::new()))
    }

    /// One finished request.
    pub(crate) fn record(&self, latency: Duration, outcome: Result<(), Failure>) {
        let mut s = self.0.lock().unwrap_or_else(|e| e.into_inner());
        record(&mut s.latency, latency);
        match outcome {
            Ok(()) => s.successes += 1,
            Err(f) => s.errors.count(f),
        }
    }

    /// How late an open-loop request left.
    pub(crate) fn record_lag(&self, lag: Duration) {
        let mut s = self.0.lock().unwrap_or_else(|e| e.into_inner());
        record(s.lag.get_or_insert_with(histogram), lag);
    }

    pub(crate) fn snapshot(&self) -> Stats {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// Milliseconds of a microsecond histogram value.
pub(crate) fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_add_up_by_kind() {
        let r = Recorder::new();
        r.record(Duration::from_millis(1), Ok(()));
        r.record(
            Duration::from_millis(2),
            Err(Failure::Status {
                code: 503,
                retry_after: true,
            }),
        );
        r.record(
            Duration::from_millis(2),
            Err(Failure::Status {
                code: 503,
                retry_after: false,
            }),
        );
        r.record(Duration::from_millis(3), Err(Failure::Reset));
        r.record(Duration::from_millis(3), Err(Failure::Connect));
        r.record(
            Duration::from_millis(3),
            Err(Failure::Status {
                code: 404,
                retry_after: false,
            }),
        );
        r.record(Duration::from_secs(10), Err(Failure::Timeout));
        let s = r.snapshot();
        assert_eq!(s.successes, 1);
        assert_eq!(s.errors.unavailable, 2);
        assert_eq!(s.errors.retry_after, 1);
        assert_eq!(s.errors.connection(), 2);
        assert_eq!(s.errors.client_error, 1);
        assert_eq!(s.errors.timeout, 1);
        assert_eq!(s.errors.total(), 6);
        assert_eq!(s.requests(), 7);
        assert_eq!(s.latency.len(), 7);
        assert!(s.latency.max() >= 9_990_000);
        let mut m = Stats::new();
        m.merge(&s);
        m.merge(&s);
        assert_eq!(m.requests(), 14);
        assert_eq!(m.latency.len(), 14);
    }
}
