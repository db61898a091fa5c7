//! What a bench run found, as a table for people and JSON for machines.

use std::fmt::Write as _;

use serde::Serialize;

use super::stats::{ms, ErrorCounts, Stats};

/// How load was applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Mode {
    /// Each connection sends its next request when the last one is answered.
    Closed,
    /// Requests leave on a schedule whatever the answers; latency is counted
    /// from the scheduled time, so a stall shows up in full.
    Open,
    /// Derived from the server's own records (workflow sessions).
    Derived,
}

/// One row: one scenario, or one kind of request within it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ScenarioReport {
    /// `health`, `s1`, `s1-max`, `reads`, `s2`, `s2-sessions`, `s3`,
    /// `s3:report`, `s3:read`, `s3:trigger`, `s4#1`, …
    pub scenario: String,
    /// How load was applied.
    pub mode: Mode,
    /// Closed loop: connections.
    pub connections: Option<usize>,
    /// Open loop: the scheduled rate, requests per second.
    pub offered_rate: Option<f64>,
    /// Wall time from the first request to the last answer, in seconds.
    pub elapsed_secs: f64,
    /// Requests finished (`successes + errors`).
    pub requests: u64,
    /// Requests answered with the expected status.
    pub successes: u64,
    /// Requests that failed, of any kind.
    pub errors: u64,
    /// Failures by kind.
    pub error_kinds: ErrorCounts,
    /// Finished requests per second of `elapsedSecs`.
    pub rps: f64,
    /// `rps` as a multiple of the `health` row's.
    pub x_health: f64,
    /// Median latency, ms (failed requests included).
    pub p50_ms: f64,
    /// 90th percentile latency, ms.
    pub p90_ms: f64,
    /// 99th percentile latency, ms.
    pub p99_ms: f64,
    /// Largest latency, ms.
    pub max_ms: f64,
    /// `p50Ms` as a multiple of the `health` row's.
    pub p50_x_health: f64,
    /// `p99Ms` as a multiple of the `health` row's.
    pub p99_x_health: f64,
    /// Open loop: 99th percentile of how late requests left against their
    /// schedule (ms); large values mean the load tool itself fell behind.
    pub send_lag_p99_ms: Option<f64>,
    /// Workflow sessions the scenario started (S2, S3).
    pub sessions: Option<SessionCounts>,
}

impl ScenarioReport {
    pub(crate) fn new(
        scenario: impl Into<String>,
        mode: Mode,
        elapsed_secs: f64,
        s: &Stats,
    ) -> Self {
        let requests = s.requests();
        let q = |p: f64| {
            if requests == 0 {
                0.0
            } else {
                ms(s.latency.value_at_quantile(p))
            }
        };
        Self {
            scenario: scenario.into(),
            mode,
            connections: None,
            offered_rate: None,
            elapsed_secs,
            requests,
            successes: s.successes,
            errors: s.errors.total(),
            error_kinds: s.errors,
            rps: if elapsed_secs > 0.0 {
                requests as f64 / elapsed_secs
            } else {
                0.0
            },
            x_health: 0.0,
            p50_ms: q(0.5),
            p90_ms: q(0.9),
            p99_ms: q(0.99),
            max_ms: if requests == 0 {
                0.0
            } else {
                ms(s.latency.max())
            },
            p50_x_health: 0.0,
            p99_x_health: 0.0,
            send_lag_p99_ms: s.lag.as_ref().map(|h| ms(h.value_at_quantile(0.99))),
            sessions: None,
        }
    }

    pub(crate) fn closed(mut self, connections: usize) -> Self {
        self.connections = Some(connections);
        self
    }

    pub(crate) fn offered(mut self, rate: f64) -> Self {
        self.offered_rate = Some(rate);
        self
    }

    /// Share of failed requests (0 when none were sent).
    pub fn error_rate(&self) -> f64 {
        if self.requests == 0 {
            0.0
        } else {
            self.errors as f64 / self.requests as f64
        }
    }
}

/// What became of the workflow sessions a scenario started, read back from
/// the server once the triggers stopped and the drain time was over.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SessionCounts {
    /// Sessions the server holds for this scenario (one per accepted trigger).
    pub started: u64,
    /// Of those, completed by the simulated agents.
    pub completed: u64,
    /// Of those, completed before the triggers stopped.
    pub completed_in_window: u64,
    /// `completedInWindow` per second of the trigger window.
    pub completed_per_sec: f64,
    /// Of those, failed.
    pub failed: u64,
    /// Still unfinished after the drain time; the tool cancelled them.
    pub unfinished: u64,
    /// How many of the unfinished ones the cancel call reached.
    pub cancelled: u64,
}

/// The S4 outcome: the highest step that held, and the one that broke.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Knee {
    /// Offered rate of the last step within the limits (none if the first broke).
    pub last_good_rate: Option<f64>,
    /// Throughput reached at that step, requests per second.
    pub last_good_rps: Option<f64>,
    /// Offered rate of the step that broke a limit (none if none did).
    pub broken_rate: Option<f64>,
    /// Why the search stopped.
    pub reason: String,
}

/// The tool's own agents, and whether it removed them again.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Cleanup {
    /// Report agents registered.
    pub registered: u64,
    /// Report agents deregistered at the end.
    pub deregistered: u64,
    /// Deregistrations that failed.
    pub failed: u64,
    /// Simulated agents started (they deregister themselves on stop).
    pub sim_agents: u64,
    /// Workflow sessions still open at the end that the tool cancelled.
    pub sessions_cancelled: u64,
}

/// The whole run.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    /// The server the run was against.
    pub target: String,
    /// Prefix of every agent id the run registered (`PREFIX-0`, … and
    /// `PREFIX-sim-0`, …).
    pub id_prefix: String,
    /// Report agents registered.
    pub agents: usize,
    /// Closed-loop connections.
    pub connections: usize,
    /// Requests per second of the `health` row: the yardstick.
    pub health_rps: f64,
    /// Every row, in the order run.
    pub scenarios: Vec<ScenarioReport>,
    /// S4's knee, when S4 ran.
    pub knee: Option<Knee>,
    /// Cleanup counts.
    pub cleanup: Cleanup,
}

impl Report {
    /// The row named `name`.
    pub fn row(&self, name: &str) -> Option<&ScenarioReport> {
        self.scenarios.iter().find(|s| s.scenario == name)
    }

    /// Fill in the ratios to the health row.
    pub(crate) fn relate_to_health(&mut self) {
        let Some(h) = self.row("health").cloned() else {
            return;
        };
        self.health_rps = h.rps;
        let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { 0.0 };
        for s in &mut self.scenarios {
            s.x_health = ratio(s.rps, h.rps);
            s.p50_x_health = ratio(s.p50_ms, h.p50_ms);
            s.p99_x_health = ratio(s.p99_ms, h.p99_ms);
        }
    }

    /// The report as a text table, with the error breakdown and the knee.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{:<13} {:>6} {:>9} {:>10} {:>9} {:>8} {:>9} {:>9} {:>9} {:>9} {:>7}",
            "scenario",
            "mode",
            "load",
            "requests",
            "req/s",
            "x health",
            "p50 ms",
            "p90 ms",
            "p99 ms",
            "max ms",
            "errors"
        );
        for s in &self.scenarios {
            let load = match (s.connections, s.offered_rate) {
                (Some(c), _) => format!("C={c}"),
                (None, Some(r)) => format!("{}/s", fmt_rate(r)),
                _ => "-".to_owned(),
            };
            let mode = match s.mode {
                Mode::Closed => "closed",
                Mode::Open => "open",
                Mode::Derived => "server",
            };
            let _ = writeln!(
                out,
                "{:<13} {:>6} {:>9} {:>10} {:>9.1} {:>8.3} {:>9.2} {:>9.2} {:>9.2} {:>9.2} {:>7}",
                s.scenario,
                mode,
                load,
                s.requests,
                s.rps,
                s.x_health,
                s.p50_ms,
                s.p90_ms,
                s.p99_ms,
                s.max_ms,
                s.errors
            );
        }
        let failing: Vec<_> = self.scenarios.iter().filter(|s| s.errors > 0).collect();
        if !failing.is_empty() {
            let _ = writeln!(out, "\nerrors by kind:");
            for s in failing {
                let e = &s.error_kinds;
                let _ = writeln!(
                    out,
                    "  {:<13} 503={} (with Retry-After {}) 429={} 4xx={} 5xx={} connect={} reset={} timeout={} other={}",
                    s.scenario,
                    e.unavailable,
                    e.retry_after,
                    e.too_many_requests,
                    e.client_error,
                    e.server_error,
                    e.connect,
                    e.reset,
                    e.timeout,
                    e.other
                );
            }
        }
        for s in self.scenarios.iter().filter(|s| s.mode != Mode::Derived) {
            if let Some(c) = &s.sessions {
                let _ = writeln!(
                    out,
                    "\n{} sessions: {} started, {} completed ({} within the window, {:.1}/s), {} failed, {} unfinished (cancelled {})",
                    s.scenario,
                    c.started,
                    c.completed,
                    c.completed_in_window,
                    c.completed_per_sec,
                    c.failed,
                    c.unfinished,
                    c.cancelled
                );
            }
        }
        if let Some(k) = &self.knee {
            let good = match (k.last_good_rate, k.last_good_rps) {
                (Some(r), Some(t)) => format!(
                    "{}/s offered ({t:.1} req/s done, {:.0}% of offered)",
                    fmt_rate(r),
                    t / r * 100.0
                ),
                _ => "none".to_owned(),
            };
            let _ = writeln!(
                out,
                "\ns4 knee: last step within limits: {good}; {}",
                k.reason
            );
        }
        let c = &self.cleanup;
        let _ = writeln!(
            out,
            "\nhealth: {:.1} req/s; agents {}-*: {} registered, {} deregistered, {} failed; {} simulated agents; {} sessions cancelled",
            self.health_rps,
            self.id_prefix,
            c.registered,
            c.deregistered,
            c.failed,
            c.sim_agents,
            c.sessions_cancelled
        );
        out
    }
}

fn fmt_rate(r: f64) -> String {
    if (r - r.round()).abs() < 1e-9 {
        format!("{r:.0}")
    } else {
        format!("{r:.1}")
    }
}
