//! Prometheus metrics: what `GET /metrics` serves.
//!
//! One [`Metrics`] per process (tests run several servers in one process, so
//! nothing here is global), held in `AppState` and handed to the dispatcher.
//! Counters and histograms move on the hot path (the request middleware, the
//! state report handler, each dispatch attempt, and each session's end, which
//! the store tells right after the commit that ended it, see
//! [`Metrics::on_session_end`]); gauges that describe the database (agents by
//! state, sessions by status, queue depth, the oldest due run, the feed's
//! lag, pool use) are read from the store when `/metrics` is scraped, see
//! [`Metrics::refresh_from_store`].
//!
//! Label values are always bounded: routes are matched route templates
//! (never raw paths), states outside the known set are `other`, workflow ids
//! past the first [`MAX_WORKFLOW_LABELS`] are `_other`, and agent ids are
//! never labels.
//!
//! The exposition is OpenMetrics 1.0 text (what Prometheus asks for first
//! when it scrapes), produced by the `prometheus-client` crate, or the same
//! in Prometheus's text format 0.0.4 for a scraper that does not ask for
//! OpenMetrics ([`wants_openmetrics`], [`to_prometheus_text`]). Besides
//! `opscore_*`, it carries `opscore_build_info` and the conventional
//! `process_*` metrics.
//!
//! Adding a metric: a value the code keeps up to date itself gets a handle
//! from [`Metrics::register_gauge`] (or [`Metrics::register_counter`]) once
//! at startup, moved where the thing happens (cheap to clone, lock-free to
//! update); a value read from the database belongs in
//! [`Metrics::refresh_from_store`], like stale agents. Feed subscribers are
//! read from the feed by the `/metrics` handler.

use std::collections::HashSet;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::domain::event::SessionEnd;
use crate::store::{OnSessionEnd, Store, StoreResult};

mod exposition;
mod labels;
mod process;

pub use exposition::{
    to_prometheus_text, wants_openmetrics, CONTENT_TYPE, PROMETHEUS_CONTENT_TYPE,
};
use labels::*;
pub use labels::{state_label, DispatchResult, KNOWN_STATES, MAX_WORKFLOW_LABELS, OTHER_WORKFLOW};

/// Every metric of the process, and the registry that encodes them.
pub struct Metrics {
    registry: Mutex<Registry>,
    /// Route templates seen so far, so that a request's label borrows an
    /// `Arc<str>` instead of allocating a `String` (the set is bounded by the
    /// router's routes plus `unmatched`).
    routes: RwLock<HashSet<Arc<str>>>,
    requests: Family<RequestLabels, Counter>,
    request_seconds: HistogramFamily<RouteLabels>,
    state_reports: Family<StateLabel, Counter>,
    dispatch_attempts: Family<OutcomeLabel, Counter>,
    dispatch_seconds: HistogramFamily<OutcomeLabel>,
    /// Workflow ids that have a label value of their own (at most
    /// [`MAX_WORKFLOW_LABELS`]).
    workflows: RwLock<HashSet<Arc<str>>>,
    other_workflow: Arc<str>,
    sessions_finished: Family<SessionLabels, Counter>,
    session_seconds: HistogramFamily<SessionLabels>,
    oldest_due_run_age: Gauge<f64, AtomicU64>,
    feed_lag: Gauge<f64, AtomicU64>,
    agents: Family<StateLabel, Gauge>,
    sessions: Family<StatusLabel, Gauge>,
    queue_depth: Gauge,
    agents_stale: Gauge,
    feed_subscribers: Gauge,
    pool_connections: Family<PoolLabel, Gauge>,
    pool_idle: Family<PoolLabel, Gauge>,
    pool_max: Family<PoolLabel, Gauge>,
    store_errors: Counter,
    agent_reads: Family<ReadLabels, Counter>,
    report_batches: Family<BatchLabels, Counter>,
    log_lines_dropped: Counter,
    process: process::ProcessMetrics,
    /// Serialises scrapes: a refresh clears and refills gauge families.
    scrape: tokio::sync::Mutex<()>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A fresh set of metrics, all registered.
    pub fn new() -> Self {
        let mut r = Registry::default();
        let requests = Family::<RequestLabels, Counter>::default();
        r.register(
            "opscore_http_requests",
            "HTTP requests handled, by method, matched route template and status",
            requests.clone(),
        );
        let request_seconds =
            HistogramFamily::<RouteLabels>::new_with_constructor(http_histogram as fn() -> _);
        // Units are in the names, not in `# UNIT` lines: some parsers
        // refuse a unit on a histogram, and Prometheus ignores them.
        r.register(
            "opscore_http_request_duration_seconds",
            "Time to produce the response head, by method and matched route template",
            request_seconds.clone(),
        );
        let state_reports = Family::<StateLabel, Counter>::default();
        r.register(
            "opscore_state_reports",
            "State reports accepted (durably stored), by reported state (other: any state outside the known set)",
            state_reports.clone(),
        );
        let dispatch_attempts = Family::<OutcomeLabel, Counter>::default();
        r.register(
            "opscore_dispatch_attempts",
            "Task dispatch attempts made by this process, by outcome (accepted, retry, failed)",
            dispatch_attempts.clone(),
        );
        let dispatch_seconds =
            HistogramFamily::<OutcomeLabel>::new_with_constructor(dispatch_histogram as fn() -> _);
        r.register(
            "opscore_dispatch_duration_seconds",
            "Time a dispatch request took, by outcome",
            dispatch_seconds.clone(),
        );
        let sessions_finished = Family::<SessionLabels, Counter>::default();
        r.register(
            "opscore_sessions_finished",
            format!(
                "Sessions this process ended (counted on its commit of the final status), by \
                 workflow (at most {MAX_WORKFLOW_LABELS} values, then {OTHER_WORKFLOW}) and outcome \
                 (completed, failed, cancelled)"
            ),
            sessions_finished.clone(),
        );
        let session_seconds =
            HistogramFamily::<SessionLabels>::new_with_constructor(session_histogram as fn() -> _);
        r.register(
            "opscore_session_duration_seconds",
            "Time from a session's creation to its end, by workflow and outcome, for the sessions \
             this process ended",
            session_seconds.clone(),
        );
        let oldest_due_run_age = Gauge::<f64, AtomicU64>::default();
        r.register(
            "opscore_oldest_queued_run_age_seconds",
            "How long the queued task run that has been due longest has waited to be sent (0 when \
             none is due; read from the database at scrape time)",
            oldest_due_run_age.clone(),
        );
        let feed_lag = Gauge::<f64, AtomicU64>::default();
        r.register(
            "opscore_feed_lag_seconds",
            "How long the oldest committed event this process's change feed has not served yet \
             has existed (0 when it has served every committed event)",
            feed_lag.clone(),
        );
        let agents = Family::<StateLabel, Gauge>::default();
        r.register(
            "opscore_agents",
            "Registered agents by current state (read from the database at scrape time)",
            agents.clone(),
        );
        let sessions = Family::<StatusLabel, Gauge>::default();
        r.register(
            "opscore_sessions",
            "Workflow sessions by status (read from the database at scrape time)",
            sessions.clone(),
        );
        let queue_depth = Gauge::default();
        r.register(
            "opscore_task_queue_depth",
            "Task runs queued: waiting to be due or for an agent to be free (not those waiting for other tasks)",
            queue_depth.clone(),
        );
        let agents_stale = Gauge::default();
        r.register(
            "opscore_agents_stale",
            "Registered agents whose lease ran out (not heard from within their TTL plus grace)",
            agents_stale.clone(),
        );
        let feed_subscribers = Gauge::default();
        r.register(
            "opscore_feed_subscribers",
            "Event streams and blocking reads waiting on this process's change feed",
            feed_subscribers.clone(),
        );
        let pool_connections = Family::<PoolLabel, Gauge>::default();
        r.register(
            "opscore_db_pool_connections",
            "Open database connections, by pool",
            pool_connections.clone(),
        );
        let agent_reads = Family::<ReadLabels, Counter>::default();
        r.register(
            "opscore_agent_reads",
            "Agent reads answered (read: state, agent, list), by source: memory (the read model) or database",
            agent_reads.clone(),
        );
        let report_batches = Family::<BatchLabels, Counter>::default();
        r.register(
            "opscore_report_batches",
            "Batches of state reports stored, by path: one_statement (one round trip, committed on its own; PostgreSQL, when no task moves) or transaction",
            report_batches.clone(),
        );
        let pool_idle = Family::<PoolLabel, Gauge>::default();
        r.register(
            "opscore_db_pool_idle_connections",
            "Idle database connections, by pool",
            pool_idle.clone(),
        );
        let pool_max = Family::<PoolLabel, Gauge>::default();
        r.register(
            "opscore_db_pool_max_connections",
            "Most connections a pool may open, by pool",
            pool_max.clone(),
        );
        let store_errors = Counter::default();
        r.register(
            "opscore_metrics_store_errors",
            "Scrapes whose database gauges could not be read (those gauges kept their last values)",
            store_errors.clone(),
        );
        let log_lines_dropped = Counter::default();
        r.register(
            "opscore_log_lines_dropped",
            "Log lines dropped because the log writer fell behind (stdout too slow)",
            log_lines_dropped.clone(),
        );
        let build_info = Family::<BuildLabels, Gauge>::default();
        r.register(
            "opscore_build_info",
            "Always 1: the version and the commit this binary was built from",
            build_info.clone(),
        );
        build_info
            .get_or_create(&BuildLabels {
                version: env!("CARGO_PKG_VERSION"),
                commit: option_env!("OPSCORE_COMMIT").unwrap_or("unknown"),
            })
            .set(1);
        let process = process::ProcessMetrics::register(&mut r);
        Self {
            registry: Mutex::new(r),
            routes: RwLock::new(HashSet::new()),
            requests,
            request_seconds,
            state_reports,
            dispatch_attempts,
            dispatch_seconds,
            workflows: RwLock::new(HashSet::new()),
            other_workflow: Arc::from(OTHER_WORKFLOW),
            sessions_finished,
            session_seconds,
            oldest_due_run_age,
            feed_lag,
            agents,
            sessions,
            queue_depth,
            agents_stale,
            feed_subscribers,
            pool_connections,
            pool_idle,
            pool_max,
            store_errors,
            agent_reads,
            report_batches,
            log_lines_dropped,
            process,
            scrape: tokio::sync::Mutex::new(()),
        }
    }

    /// Register a gauge named `name` (with the `opscore_` prefix, no unit
    /// suffix unless it is part of the name) and return its handle. For
    /// values the code keeps up to date itself (feed subscribers: `inc` on
    /// subscribe, `dec` on drop; stale agents: `set` by the sweeper).
    ///
    /// Call once per name at startup: registering a name twice makes the
    /// exposition invalid.
    pub fn register_gauge(&self, name: &str, help: &str) -> Gauge {
        let g = Gauge::default();
        self.with_registry(|r| r.register(name, help, g.clone()));
        g
    }

    /// Register a counter (named without `_total`: the encoder adds it) and
    /// return its handle. Call once per name at startup.
    pub fn register_counter(&self, name: &str, help: &str) -> Counter {
        let c = Counter::default();
        self.with_registry(|r| r.register(name, help, c.clone()));
        c
    }

    fn with_registry(&self, f: impl FnOnce(&mut Registry)) {
        // A panic while holding the lock cannot leave the registry half
        // written in a way that matters; keep serving metrics.
        let mut r = self.registry.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut r);
    }

    /// Record one finished HTTP request. `route` is the matched route
    /// template (`unmatched` when no route matched), never the raw path.
    pub fn observe_request(
        &self,
        method: &axum::http::Method,
        route: &str,
        status: u16,
        elapsed: Duration,
    ) {
        let route = self.intern(route);
        let method = method_label(method);
        self.requests
            .get_or_create(&RequestLabels {
                method,
                route: route.clone(),
                status,
            })
            .inc();
        self.request_seconds
            .get_or_create(&RouteLabels { method, route })
            .observe(elapsed.as_secs_f64());
    }

    fn intern(&self, route: &str) -> Arc<str> {
        // The router's routes bound the set.
        intern_at_most(&self.routes, route, usize::MAX).unwrap_or_else(|| Arc::from(route))
    }

    /// Set the number of feed subscribers (read from the feed at scrape time).
    pub fn set_feed_subscribers(&self, n: usize) {
        self.feed_subscribers
            .set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// Record one accepted state report.
    pub fn observe_state_report(&self, state: &str) {
        self.state_reports
            .get_or_create(&StateLabel {
                state: state_label(state),
            })
            .inc();
    }

    /// Record one dispatch attempt and how long its request took.
    pub fn observe_dispatch(&self, result: DispatchResult, elapsed: Duration) {
        let label = OutcomeLabel {
            outcome: result.label(),
        };
        self.dispatch_attempts.get_or_create(&label).inc();
        self.dispatch_seconds
            .get_or_create(&label)
            .observe(elapsed.as_secs_f64());
    }

    /// Record one session's end, once, where it was committed (see
    /// [`OnSessionEnd`]).
    pub fn observe_session_end(&self, end: &SessionEnd) {
        let labels = SessionLabels {
            workflow: self.workflow_label(&end.workflow_id),
            outcome: end.outcome.as_str(),
        };
        self.sessions_finished.get_or_create(&labels).inc();
        self.session_seconds
            .get_or_create(&labels)
            .observe(end.duration_secs());
    }

    /// What the store is to call for each session a commit of this process
    /// ends.
    pub fn on_session_end(self: &Arc<Self>) -> OnSessionEnd {
        let me = self.clone();
        OnSessionEnd::new(move |end| me.observe_session_end(end))
    }

    /// The label value of a workflow: its id while fewer than
    /// [`MAX_WORKFLOW_LABELS`] ids have one, else [`OTHER_WORKFLOW`].
    fn workflow_label(&self, id: &str) -> Arc<str> {
        intern_at_most(&self.workflows, id, MAX_WORKFLOW_LABELS)
            .unwrap_or_else(|| self.other_workflow.clone())
    }

    /// Read the database gauges from `store`: agents by state, sessions by
    /// status, queue depth, the oldest due run, the feed's lag behind the
    /// events committed after `feed_head` (the last index this process's
    /// feed has served), pool use. Called by the `/metrics` handler before
    /// [`Metrics::encode`].
    /// A failure is counted in `opscore_metrics_store_errors_total`.
    pub async fn refresh_from_store(&self, store: &dyn Store, feed_head: i64) -> StoreResult<()> {
        let _one_at_a_time = self.scrape.lock().await;
        let result = self.refresh(store, feed_head).await;
        if result.is_err() {
            self.store_errors.inc();
        }
        result
    }

    async fn refresh(&self, store: &dyn Store, feed_head: i64) -> StoreResult<()> {
        // Pool use needs no query: it is current even when queries fail.
        for p in store.pool_stats() {
            let label = PoolLabel { pool: p.name };
            self.pool_connections
                .get_or_create(&label)
                .set(i64::from(p.size));
            self.pool_idle
                .get_or_create(&label)
                .set(i64::try_from(p.idle).unwrap_or(i64::MAX));
            self.pool_max.get_or_create(&label).set(i64::from(p.max));
        }
        let reads = store.agent_reads();
        for (i, read) in crate::store::AGENT_READS.into_iter().enumerate() {
            for (source, n) in [("memory", reads.memory[i]), ("database", reads.database[i])] {
                // The store counts; this catches the counter up (scrapes
                // run one at a time).
                let c = self.agent_reads.get_or_create(&ReadLabels { read, source });
                c.inc_by(n.saturating_sub(c.get()));
            }
        }
        let batches = store.report_batches();
        for (path, n) in crate::store::REPORT_BATCH_PATHS.into_iter().zip(batches) {
            let c = self.report_batches.get_or_create(&BatchLabels { path });
            c.inc_by(n.saturating_sub(c.get()));
        }
        let agents = store.count_agents_by_state().await?;
        let sessions = store.count_sessions_by_status().await?;
        let queued = store.count_queued_runs().await?;
        let now = crate::domain::time::now_micros();
        let stale = store.count_stale_agents(now).await?;
        let oldest_due = store.oldest_due_run(now).await?;
        let unserved = store.first_event_after(feed_head).await?;
        // Read after the queries: an event committed while they ran is not
        // older than this.
        let now = crate::domain::time::now_micros();
        self.oldest_due_run_age.set(age_secs(oldest_due, now));
        self.feed_lag.set(age_secs(unserved, now));
        self.agents_stale.set(stale);
        // Every known value is always present (at 0), so a series does not
        // vanish when its count drops to nothing.
        self.agents.clear();
        for s in KNOWN_STATES.iter().chain(["other"].iter()) {
            self.agents.get_or_create(&StateLabel { state: s }).set(0);
        }
        for (state, n) in agents {
            self.agents
                .get_or_create(&StateLabel {
                    state: state_label(&state),
                })
                .inc_by(n);
        }
        self.sessions.clear();
        for s in SESSION_STATUSES {
            self.sessions
                .get_or_create(&StatusLabel { status: s })
                .set(0);
        }
        for (status, n) in sessions {
            let status = SESSION_STATUSES
                .iter()
                .find(|s| **s == status)
                .copied()
                .unwrap_or("other");
            self.sessions
                .get_or_create(&StatusLabel { status })
                .inc_by(n);
        }
        self.queue_depth.set(queued);
        Ok(())
    }

    /// The exposition text.
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        self.process.refresh();
        // The log writer counts its drops itself; catch up to it.
        let dropped = crate::telemetry::dropped_lines();
        let seen = self.log_lines_dropped.get();
        if dropped > seen {
            self.log_lines_dropped.inc_by(dropped - seen);
        }
        let mut out = String::with_capacity(16 * 1024);
        let r = self.registry.lock().unwrap_or_else(|e| e.into_inner());
        prometheus_client::encoding::text::encode(&mut out, &r)?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_bounded() {
        assert_eq!(state_label("idle"), "idle");
        assert_eq!(state_label("UNKNOWN"), "UNKNOWN");
        assert_eq!(state_label("Idle"), "other");
        assert_eq!(state_label("agent-7-custom"), "other");
        assert_eq!(method_label(&axum::http::Method::CONNECT), "other");
    }

    #[test]
    fn workflow_labels_are_capped() {
        let m = Metrics::new();
        for i in 0..MAX_WORKFLOW_LABELS {
            assert_eq!(&*m.workflow_label(&format!("w{i}")), format!("w{i}"));
        }
        assert_eq!(&*m.workflow_label("one-too-many"), OTHER_WORKFLOW);
        assert_eq!(&*m.workflow_label("w0"), "w0", "admitted ids keep theirs");
        let a = m.workflow_label("w7");
        assert!(Arc::ptr_eq(&a, &m.workflow_label("w7")));
    }

    #[test]
    fn ages_are_never_negative() {
        assert_eq!(age_secs(None, 5_000_000), 0.0);
        assert_eq!(age_secs(Some(3_500_000), 5_000_000), 1.5);
        assert_eq!(age_secs(Some(6_000_000), 5_000_000), 0.0);
    }

    #[test]
    fn session_ends_are_counted_by_workflow_and_outcome() {
        use crate::domain::workflow::SessionStatus;
        let m = Arc::new(Metrics::new());
        let tell = m.on_session_end();
        for (outcome, took) in [
            (SessionStatus::Completed, 2_000_000),
            (SessionStatus::Completed, 500_000),
            (SessionStatus::Cancelled, 0),
        ] {
            tell.tell(&SessionEnd {
                workflow_id: "w".into(),
                outcome,
                created_at: 10_000_000,
                finished_at: 10_000_000 + took,
            });
        }
        let text = m.encode().unwrap();
        for line in [
            r#"opscore_sessions_finished_total{workflow="w",outcome="completed"} 2"#,
            r#"opscore_sessions_finished_total{workflow="w",outcome="cancelled"} 1"#,
            r#"opscore_session_duration_seconds_sum{workflow="w",outcome="completed"} 2.5"#,
            r#"opscore_session_duration_seconds_count{workflow="w",outcome="completed"} 2"#,
            r#"opscore_session_duration_seconds_bucket{le="0.5",workflow="w",outcome="completed"} 1"#,
        ] {
            assert!(text.contains(line), "no {line} in\n{text}");
        }
    }

    #[test]
    fn routes_are_interned_once() {
        let m = Metrics::new();
        let a = m.intern("/v1/opscore/agents");
        let b = m.intern("/v1/opscore/agents");
        assert!(Arc::ptr_eq(&a, &b));
    }

    #[test]
    fn encodes_registered_families() {
        let m = Metrics::new();
        let g = m.register_gauge("opscore_feed_subscribers", "Open feed streams");
        g.set(3);
        m.observe_request(
            &axum::http::Method::GET,
            "/health",
            200,
            Duration::from_millis(2),
        );
        let text = m.encode().unwrap();
        assert!(text.contains("opscore_feed_subscribers 3"), "{text}");
        assert!(
            text.contains(
                r#"opscore_http_requests_total{method="GET",route="/health",status="200"} 1"#
            ),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}
