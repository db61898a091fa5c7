//! `GET /metrics`: the exposition parses as OpenMetrics text (with a real
//! parser, `openmetrics-parser`), and its counters, histograms and gauges
//! move by exactly what the requests, reports and dispatch attempts made
//! between two scrapes account for. Run on both backends: the gauges are
//! read from the database.

use crate::common;

use std::path::PathBuf;
use std::time::Duration;

use crate::common::agentkit::{FakeAgentKit, Reply};
use crate::common::{register_at, report, send, Backend, TestServer, KEY};
use openmetrics_parser::{MetricsExposition, OpenMetricsType, OpenMetricsValue};
use opscore::config::DispatchTarget;
use opscore::domain::workflow::Backoff;
use reqwest::StatusCode;
use serde_json::{json, Value};

type Exposition = MetricsExposition<OpenMetricsType, OpenMetricsValue>;

/// What Prometheus 2.x and 3.x send when they scrape.
const PROMETHEUS_ACCEPT: &str = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";

/// One parsed scrape.
pub(crate) struct Scrape(Exposition);

impl Scrape {
    async fn take(s: &TestServer) -> Self {
        Self::at(&s.client, &s.base).await
    }

    /// Scrape the server at `base` (a test server or a server process).
    pub(crate) async fn at(client: &reqwest::Client, base: &str) -> Self {
        // No key: scrapers usually carry none. Prometheus's own Accept.
        let r = client
            .get(format!("{base}/metrics"))
            .header("accept", PROMETHEUS_ACCEPT)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        let ct = r.headers()["content-type"].to_str().unwrap().to_owned();
        assert!(ct.starts_with("application/openmetrics-text"), "{ct}");
        let text = r.text().await.unwrap();
        let parsed = openmetrics_parser::openmetrics::parse_openmetrics(&text)
            .unwrap_or_else(|e| panic!("not OpenMetrics text ({e:?}):\n{text}"));
        for name in parsed.families.keys() {
            assert!(
                name.starts_with("opscore_") || name.starts_with("process_"),
                "unprefixed family {name}"
            );
        }
        Self(parsed)
    }

    fn samples<'a>(
        &'a self,
        family: &str,
        labels: &'a [(&'a str, &'a str)],
    ) -> impl Iterator<Item = &'a OpenMetricsValue> + 'a {
        self.0
            .families
            .get(family)
            .into_iter()
            .flat_map(|f| f.iter_samples())
            .filter(move |s| {
                let set = s.get_labelset().expect("labelset");
                labels
                    .iter()
                    .all(|(k, v)| set.get_label_value(k) == Some(*v))
            })
            .map(|s| &s.value)
    }

    /// A counter's or gauge's value (0 when the series does not exist yet).
    pub(crate) fn value(&self, family: &str, labels: &[(&str, &str)]) -> f64 {
        let mut found = self.samples(family, labels).map(|v| match v {
            OpenMetricsValue::Counter(c) => c.value.as_f64(),
            OpenMetricsValue::Gauge(g) => g.as_f64(),
            other => panic!("{family} is not a counter or gauge: {other:?}"),
        });
        let v = found.next().unwrap_or(0.0);
        assert!(
            found.next().is_none(),
            "{family}{labels:?} matches several series"
        );
        v
    }

    /// A histogram's observation count, after checking its buckets are
    /// cumulative and end at +Inf with that count.
    pub(crate) fn histogram_count(&self, family: &str, labels: &[(&str, &str)]) -> u64 {
        self.histogram(family, labels).0
    }

    /// A histogram's observation count and sum (0 and 0 when the series
    /// does not exist yet), after checking its buckets are cumulative and
    /// end at +Inf with that count.
    fn histogram(&self, family: &str, labels: &[(&str, &str)]) -> (u64, f64) {
        let mut found = self.samples(family, labels);
        let Some(v) = found.next() else {
            return (0, 0.0);
        };
        assert!(
            found.next().is_none(),
            "{family}{labels:?} matches several series"
        );
        let OpenMetricsValue::Histogram(h) = v else {
            panic!("{family} is not a histogram: {v:?}");
        };
        let count = h.count.expect("histogram count");
        let mut last = 0.0;
        for b in &h.buckets {
            assert!(b.count.as_f64() >= last, "{family}: buckets not cumulative");
            last = b.count.as_f64();
        }
        let inf = h.buckets.last().expect("buckets");
        assert!(inf.upper_bound.is_infinite(), "{family}: no +Inf bucket");
        assert_eq!(inf.count.as_f64() as u64, count, "{family}: +Inf != count");
        (count, h.sum.as_ref().expect("histogram sum").as_f64())
    }

    /// The sum of a counter family's values over all its series.
    fn samples_sum(&self, family: &str) -> f64 {
        self.samples(family, &[])
            .map(|v| match v {
                OpenMetricsValue::Counter(c) => c.value.as_f64(),
                other => panic!("{family} is not a counter: {other:?}"),
            })
            .sum()
    }

    /// The values of label `name` among the series of `family`.
    fn label_values_of(&self, family: &str, name: &str) -> Vec<String> {
        self.0
            .families
            .get(family)
            .into_iter()
            .flat_map(|f| f.iter_samples())
            .filter_map(|s| {
                let set = s.get_labelset().expect("labelset");
                set.get_label_value(name).map(str::to_owned)
            })
            .collect()
    }

    fn label_values(&self) -> Vec<String> {
        let mut out = Vec::new();
        for f in self.0.families.values() {
            for s in f.iter_samples() {
                let set = s.get_labelset().expect("labelset");
                out.extend(set.iter_values().cloned());
            }
        }
        out
    }
}

async fn start(backend: Backend, kit: &FakeAgentKit) -> TestServer {
    let url: url::Url = kit.base.parse().expect("fake url");
    TestServer::start_with(backend, move |c| {
        c.dispatch.target = DispatchTarget::AgentKit(url);
        c.dispatch.poll_interval = Duration::from_millis(20);
        c.db.engine.backoff = Backoff {
            base_ms: 40,
            factor: 2.0,
            cap_ms: 200,
        };
        c.workflows_dir = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/workflows"));
    })
    .await
}

async fn trigger(s: &TestServer, agent: &str) -> String {
    let r = send(
        s.post(&format!("/v1/opscore/agent/{agent}/workflow"))
            .json(&json!({"workflowDefinitionId": "sample_workflow_id"})),
    )
    .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.body);
    r.body["sessionId"].as_str().unwrap().to_owned()
}

async fn wait_status(s: &TestServer, sid: &str, want: &str) {
    for _ in 0..400 {
        let r = send(s.get(&format!("/v1/opscore/sessions/{sid}"))).await;
        if r.body["status"] == want {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("session {sid} never became {want}");
}

const REQUESTS: &str = "opscore_http_requests";
const LATENCY: &str = "opscore_http_request_duration_seconds";
const STATE_ROUTE: &str = "/v1/opscore/agent/{agentId}/state";

async fn counters_and_gauges_move_with_the_requests(backend: Backend) {
    let kit = FakeAgentKit::start().await;
    let s = start(backend, &kit).await;
    let before = Scrape::take(&s).await;

    // Two agents: one reports `idle` three times, the other a state outside
    // the known set.
    register_at(&s.client, &s.base, "metrics-agent-1", &["summarise"]).await;
    register_at(&s.client, &s.base, "metrics-agent-2", &[]).await;
    let ts = |i: u32| format!("2026-04-21T10:00:0{i}Z");
    for i in 1..=3 {
        let r = send(
            s.post("/v1/opscore/agent/metrics-agent-1/state")
                .json(&report("metrics-agent-1", &ts(i), "idle", Value::Null)),
        )
        .await;
        assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.body);
    }
    let r = send(
        s.post("/v1/opscore/agent/metrics-agent-2/state")
            .json(&report(
                "metrics-agent-2",
                &ts(1),
                "custom-thing",
                Value::Null,
            )),
    )
    .await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    // A refused report is not counted as a state report.
    let r = send(s.post("/v1/opscore/agent/nobody/state").json(&report(
        "nobody",
        &ts(1),
        "idle",
        Value::Null,
    )))
    .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    // An unmatched path and an unauthenticated call.
    let r = send(s.get("/v1/opscore/no-such-route/metrics-agent-1")).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let r = send(s.client.get(s.url("/v1/opscore/agents"))).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);

    // Dispatch: the first attempt is refused with a 503 (retried), the
    // second accepted. A second session waits in the queue: its agent is
    // not idle.
    kit.script(&[Reply::Status(503), Reply::Status(202)]);
    let running = trigger(&s, "metrics-agent-1").await;
    kit.wait_calls(2, 10).await;
    wait_status(&s, &running, "running").await;
    let queued = trigger(&s, "metrics-agent-2").await;

    let after = Scrape::take(&s).await;
    let delta = |family: &str, labels: &[(&str, &str)]| {
        after.value(family, labels) - before.value(family, labels)
    };
    let req = |method, route, status| [("method", method), ("route", route), ("status", status)];

    assert_eq!(
        delta(
            REQUESTS,
            &req("POST", "/v1/opscore/internal/agent/notify", "200")
        ),
        2.0
    );
    assert_eq!(delta(REQUESTS, &req("POST", STATE_ROUTE, "202")), 4.0);
    assert_eq!(delta(REQUESTS, &req("POST", STATE_ROUTE, "404")), 1.0);
    assert_eq!(delta(REQUESTS, &req("GET", "unmatched", "404")), 1.0);
    assert_eq!(
        delta(REQUESTS, &req("GET", "/v1/opscore/agents", "401")),
        1.0
    );
    // The first scrape is counted once it has answered.
    assert_eq!(delta(REQUESTS, &req("GET", "/metrics", "200")), 1.0);
    assert_eq!(
        delta(
            REQUESTS,
            &req("POST", "/v1/opscore/agent/{agentId}/workflow", "202")
        ),
        2.0
    );
    let lat = [("method", "POST"), ("route", STATE_ROUTE)];
    assert_eq!(
        after.histogram_count(LATENCY, &lat) - before.histogram_count(LATENCY, &lat),
        5
    );

    assert_eq!(delta("opscore_state_reports", &[("state", "idle")]), 3.0);
    assert_eq!(delta("opscore_state_reports", &[("state", "other")]), 1.0);
    assert_eq!(delta("opscore_state_reports", &[("state", "active")]), 0.0);

    for (outcome, n) in [("retry", 1), ("accepted", 1), ("failed", 0)] {
        let l = [("outcome", outcome)];
        assert_eq!(
            delta("opscore_dispatch_attempts", &l),
            n as f64,
            "{outcome}"
        );
        assert_eq!(
            after.histogram_count("opscore_dispatch_duration_seconds", &l),
            n,
            "{outcome}"
        );
    }

    // Gauges read from the database.
    assert_eq!(after.value("opscore_agents", &[("state", "idle")]), 1.0);
    assert_eq!(after.value("opscore_agents", &[("state", "other")]), 1.0);
    assert_eq!(after.value("opscore_agents", &[("state", "UNKNOWN")]), 0.0);
    assert_eq!(
        after.value("opscore_sessions", &[("status", "running")]),
        1.0
    );
    assert_eq!(
        after.value("opscore_sessions", &[("status", "started")]),
        1.0
    );
    assert_eq!(
        after.value("opscore_sessions", &[("status", "completed")]),
        0.0
    );
    assert_eq!(after.value("opscore_task_queue_depth", &[]), 1.0);
    let pools: &[&str] = match backend {
        Backend::Sqlite => &["writer", "reader"],
        Backend::Postgres => &["main"],
    };
    for pool in pools {
        let l = [("pool", *pool)];
        let (size, idle, max) = (
            after.value("opscore_db_pool_connections", &l),
            after.value("opscore_db_pool_idle_connections", &l),
            after.value("opscore_db_pool_max_connections", &l),
        );
        assert!(
            size >= 1.0 && idle <= size && size <= max,
            "{pool}: {size} {idle} {max}"
        );
    }
    assert_eq!(after.value("opscore_metrics_store_errors", &[]), 0.0);

    // Agent ids and raw paths never become label values.
    for v in after.label_values() {
        assert!(!v.contains("metrics-agent"), "agent id in a label: {v}");
        assert!(!v.contains("no-such-route"), "raw path in a label: {v}");
    }

    // Once the session moves on, the gauges follow.
    let r = send(s.post(&format!("/v1/opscore/sessions/{queued}/cancel"))).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let last = Scrape::take(&s).await;
    assert_eq!(
        last.value("opscore_sessions", &[("status", "cancelled")]),
        1.0
    );
    assert_eq!(
        last.value("opscore_sessions", &[("status", "started")]),
        0.0
    );
    assert_eq!(last.value("opscore_task_queue_depth", &[]), 0.0);
    s.stop().await;
}

/// `/metrics` needs no key (a scraper with a stale key still gets it),
/// while the API next to it does.
async fn metrics_are_open_like_health(backend: Backend) {
    let s = TestServer::start(backend).await;
    for rb in [
        s.client.get(s.url("/metrics")),
        s.client.get(s.url("/metrics")).bearer_auth("not-the-key"),
        s.client.get(s.url("/metrics")).bearer_auth(KEY),
    ] {
        assert_eq!(send(rb).await.status, StatusCode::OK);
    }
    let r = send(
        s.client
            .get(s.url("/v1/opscore/agents"))
            .bearer_auth("not-the-key"),
    )
    .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    s.stop().await;
}

/// The format follows `Accept`: OpenMetrics when asked for (Prometheus
/// does), else Prometheus text 0.0.4 (curl, older scrapers), each parsed by
/// a real parser. Both carry `opscore_build_info` (this version, the commit
/// built) and the conventional `process_*` metrics, with live values.
#[tokio::test]
async fn formats_follow_accept_and_carry_build_and_process_metrics() {
    use openmetrics_parser::PrometheusValue;
    let s = TestServer::start(Backend::Sqlite).await;
    let scrape = |accept: Option<&'static str>| {
        let mut rb = s.client.get(s.url("/metrics"));
        if let Some(a) = accept {
            rb = rb.header("accept", a);
        }
        async move {
            let r = rb.send().await.unwrap();
            assert_eq!(r.status(), StatusCode::OK);
            let ct = r.headers()["content-type"].to_str().unwrap().to_owned();
            (ct, r.text().await.unwrap())
        }
    };
    for accept in [
        None,
        Some("text/plain"),
        Some("*/*"),
        Some("application/openmetrics-text;q=0, text/plain;version=0.0.4"),
    ] {
        let (ct, text) = scrape(accept).await;
        assert_eq!(ct, "text/plain; version=0.0.4; charset=utf-8", "{accept:?}");
        assert!(!text.contains("# EOF"), "{accept:?}");
        let parsed = openmetrics_parser::prometheus::parse_prometheus(&text)
            .unwrap_or_else(|e| panic!("not Prometheus text ({e:?}):\n{text}"));
        let value = |family: &str| -> f64 {
            let f = parsed
                .families
                .get(family)
                .unwrap_or_else(|| panic!("no {family} in\n{text}"));
            let sample = f.iter_samples().next().expect("a sample");
            match &sample.value {
                PrometheusValue::Gauge(n) | PrometheusValue::Unknown(n) => n.as_f64(),
                PrometheusValue::Counter(c) => c.value.as_f64(),
                other => panic!("{family}: {other:?}"),
            }
        };
        assert!(value("process_resident_memory_bytes") > 1e6);
        assert!(value("process_open_fds") > 0.0);
        assert!(value("process_max_fds") >= value("process_open_fds"));
        assert!(value("process_threads") >= 1.0);
        assert!(value("process_cpu_seconds_total") > 0.0);
        let start = value("process_start_time_seconds");
        let now = chrono::Utc::now().timestamp() as f64;
        assert!(start > now - 3600.0 && start <= now + 1.0, "{start}");
        assert_eq!(value("opscore_build_info"), 1.0);
    }
    let (ct, text) = scrape(Some(PROMETHEUS_ACCEPT)).await;
    assert!(ct.starts_with("application/openmetrics-text"), "{ct}");
    let parsed = openmetrics_parser::openmetrics::parse_openmetrics(&text)
        .unwrap_or_else(|e| panic!("not OpenMetrics ({e:?}):\n{text}"));
    let info = parsed
        .families
        .get("opscore_build_info")
        .expect("build info");
    let labels = info
        .iter_samples()
        .next()
        .expect("sample")
        .get_labelset()
        .expect("labels");
    assert_eq!(
        labels.get_label_value("version"),
        Some(env!("CARGO_PKG_VERSION"))
    );
    let commit = labels.get_label_value("commit").expect("commit").to_owned();
    // Built from a checkout: the commit is HEAD's, as git says.
    let head = std::process::Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned());
    match head {
        Some(head) => assert_eq!(commit, head),
        None => assert_eq!(commit, "unknown"),
    }
    s.stop().await;
}

/// Stale agents (by the same rule as the agent's `stale` flag) and open
/// feed streams.
async fn stale_agents_and_feed_subscribers(backend: Backend) {
    let s = TestServer::start_with(backend, |c| {
        c.db.engine.liveness.ttl_secs = Some(1);
        c.db.engine.liveness.grace_secs = 0;
    })
    .await;
    let first = Scrape::take(&s).await;
    assert_eq!(first.value("opscore_agents_stale", &[]), 0.0);
    assert_eq!(first.value("opscore_feed_subscribers", &[]), 0.0);

    let mut feed = common::sse::Stream::open(&s.base, "", None).await;
    s.register("metrics-stale-1").await;
    let mut stale = false;
    for _ in 0..200 {
        let r = send(s.get("/v1/opscore/agent/metrics-stale-1")).await;
        if r.body["stale"] == true {
            stale = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(stale, "the agent never turned stale");
    let during = Scrape::take(&s).await;
    assert_eq!(during.value("opscore_agents_stale", &[]), 1.0);
    assert_eq!(during.value("opscore_feed_subscribers", &[]), 1.0);

    // A report makes it fresh again; a closed stream stops counting.
    let r = send(
        s.post("/v1/opscore/agent/metrics-stale-1/state")
            .json(&report(
                "metrics-stale-1",
                "2026-04-21T10:00:00Z",
                "idle",
                Value::Null,
            )),
    )
    .await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    let _ = feed.next(Duration::from_millis(1)).await;
    drop(feed);
    let mut last = Scrape::take(&s).await;
    for _ in 0..200 {
        if last.value("opscore_feed_subscribers", &[]) == 0.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
        last = Scrape::take(&s).await;
    }
    assert_eq!(last.value("opscore_feed_subscribers", &[]), 0.0);
    assert_eq!(last.value("opscore_agents_stale", &[]), 0.0);
    s.stop().await;
}

const FINISHED: &str = "opscore_sessions_finished";
const SESSION_SECONDS: &str = "opscore_session_duration_seconds";

async fn trigger_definition(s: &TestServer, agent: &str, definition: Value) -> String {
    let r = send(
        s.post(&format!("/v1/opscore/agent/{agent}/workflow"))
            .json(&json!({ "workflowDefinition": definition })),
    )
    .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.body);
    r.body["sessionId"].as_str().unwrap().to_owned()
}

/// A one-task workflow; `extra` is merged into the task.
fn one_task(id: &str, extra: Value) -> Value {
    let mut task = json!({"taskId": "only", "name": "Only"});
    if let (Some(t), Some(e)) = (task.as_object_mut(), extra.as_object()) {
        t.extend(e.clone());
    }
    json!({"id": id, "tasks": [task]})
}

async fn report_now(s: &TestServer, agent: &str, state: &str) {
    let now = chrono::Utc::now().to_rfc3339();
    let r = send(
        s.post(&format!("/v1/opscore/agent/{agent}/state"))
            .json(&report(agent, &now, state, json!({}))),
    )
    .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.body);
}

/// How long a finished session took, as its stored times say, in seconds.
async fn stored_duration(s: &TestServer, sid: &str) -> f64 {
    let v = s.session(sid).await;
    let took = common::parse_time(&v["finishedAt"]) - common::parse_time(&v["createdAt"]);
    took.num_microseconds().expect("duration") as f64 / 1e6
}

/// Sessions that end (completed, failed, cancelled, and an empty workflow
/// that completes as it is created) move the outcome counter and the
/// duration histogram of their workflow by exactly one, the histogram's sum
/// by exactly the session's stored duration, and nothing else; a later
/// scrape or a repeated cancel counts nothing again.
async fn finished_sessions_count_by_workflow_and_outcome(backend: Backend) {
    let kit = FakeAgentKit::start().await;
    let s = start(backend, &kit).await;
    for a in ["m-ok", "m-fail", "m-later", "m-empty"] {
        s.register(a).await;
    }
    let before = Scrape::take(&s).await;

    let ok = trigger_definition(&s, "m-ok", one_task("m_ok", json!({}))).await;
    kit.wait_calls(1, 10).await;
    wait_status(&s, &ok, "running").await;
    report_now(&s, "m-ok", "active").await;
    report_now(&s, "m-ok", "idle").await;
    wait_status(&s, &ok, "completed").await;

    let failed =
        trigger_definition(&s, "m-fail", one_task("m_fail", json!({"maxRetries": 0}))).await;
    kit.wait_calls(2, 10).await;
    wait_status(&s, &failed, "running").await;
    report_now(&s, "m-fail", "active").await;
    report_now(&s, "m-fail", "error").await;
    wait_status(&s, &failed, "failed").await;

    let later = trigger_definition(
        &s,
        "m-later",
        one_task("m_later", json!({"delaySeconds": 3600})),
    )
    .await;
    let r = send(s.post(&format!("/v1/opscore/sessions/{later}/cancel"))).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    wait_status(&s, &later, "cancelled").await;

    let empty = trigger_definition(&s, "m-empty", json!({"id": "m_empty", "tasks": []})).await;
    wait_status(&s, &empty, "completed").await;

    let after = Scrape::take(&s).await;
    let expected = [
        ("m_ok", "completed", &ok),
        ("m_fail", "failed", &failed),
        ("m_later", "cancelled", &later),
        ("m_empty", "completed", &empty),
    ];
    for (workflow, outcome, sid) in expected {
        let l = [("workflow", workflow), ("outcome", outcome)];
        assert_eq!(before.value(FINISHED, &l), 0.0, "{l:?}");
        assert_eq!(after.value(FINISHED, &l), 1.0, "{l:?}");
        let (count, sum) = after.histogram(SESSION_SECONDS, &l);
        assert_eq!(count, 1, "{l:?}");
        let took = stored_duration(&s, sid).await;
        assert!((sum - took).abs() < 1e-6, "{l:?}: sum {sum}, took {took}");
    }
    // An empty workflow ends in the transaction that creates it.
    assert_eq!(stored_duration(&s, &empty).await, 0.0);
    // Nothing else: four sessions ended, four observations.
    let total = |scrape: &Scrape| -> f64 { scrape.samples_sum(FINISHED) };
    assert_eq!(total(&after) - total(&before), 4.0);
    let observed: u64 = expected
        .iter()
        .map(|(w, o, _)| after.histogram_count(SESSION_SECONDS, &[("workflow", w), ("outcome", o)]))
        .sum();
    assert_eq!(observed, 4);
    assert_eq!(
        after.label_values_of(FINISHED, "workflow").len(),
        4,
        "one series per workflow and outcome that happened"
    );

    // Counted once: a second cancel answers as before and counts nothing,
    // and another scrape reads the same.
    let r = send(s.post(&format!("/v1/opscore/sessions/{later}/cancel"))).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let again = Scrape::take(&s).await;
    assert_eq!(total(&again), total(&after));
    s.stop().await;
}

/// `opscore_oldest_queued_run_age_seconds`: how long the oldest run that is
/// due has waited for dispatch. A run not due yet does not count; a due run
/// whose agent is busy does, until it is sent.
async fn oldest_queued_run_age(backend: Backend) {
    const AGE: &str = "opscore_oldest_queued_run_age_seconds";
    let kit = FakeAgentKit::start().await;
    let s = start(backend, &kit).await;
    s.register("q-busy").await;
    s.register("q-later").await;
    report_now(&s, "q-busy", "active").await;
    assert_eq!(Scrape::take(&s).await.value(AGE, &[]), 0.0);

    // Queued, but due in an hour: not waiting yet.
    trigger_definition(
        &s,
        "q-later",
        one_task("q_later", json!({"delaySeconds": 3600})),
    )
    .await;
    let scrape = Scrape::take(&s).await;
    assert_eq!(scrape.value("opscore_task_queue_depth", &[]), 1.0);
    assert_eq!(scrape.value(AGE, &[]), 0.0);

    // Due now, and its agent is busy: it waits.
    let started = std::time::Instant::now();
    let sid = trigger_definition(&s, "q-busy", one_task("q_now", json!({}))).await;
    let triggered = std::time::Instant::now();
    tokio::time::sleep(Duration::from_millis(400)).await;
    // Due by the time the trigger answered, still waiting when the scrape
    // was sent; not due before the trigger was sent.
    let waited = triggered.elapsed().as_secs_f64();
    let scrape = Scrape::take(&s).await;
    let age = scrape.value(AGE, &[]);
    let most = started.elapsed().as_secs_f64();
    assert!(
        age >= waited - 0.001 && age <= most,
        "age {age}, waited {waited}..{most}"
    );
    assert_eq!(scrape.value("opscore_task_queue_depth", &[]), 2.0);
    assert!(kit.calls().is_empty(), "sent to a busy agent");

    // The agent is free: the run goes out and nothing due waits any more.
    report_now(&s, "q-busy", "idle").await;
    kit.wait_calls(1, 10).await;
    wait_status(&s, &sid, "running").await;
    let scrape = Scrape::take(&s).await;
    assert_eq!(scrape.value(AGE, &[]), 0.0);
    assert_eq!(scrape.value("opscore_task_queue_depth", &[]), 1.0);
    s.stop().await;
}

/// The workflow label takes at most `MAX_WORKFLOW_LABELS` values per
/// process: the first workflows seen keep their own series, later ones
/// share `_other`.
async fn workflow_labels_are_capped(backend: Backend) {
    let cap = opscore::metrics::MAX_WORKFLOW_LABELS;
    let s = TestServer::start(backend).await;
    s.register("cap-agent").await;
    for i in 0..cap + 3 {
        let sid = trigger_definition(
            &s,
            "cap-agent",
            json!({"id": format!("cap_{i:03}"), "tasks": []}),
        )
        .await;
        wait_status(&s, &sid, "completed").await;
    }
    let scrape = Scrape::take(&s).await;
    let mut workflows = scrape.label_values_of(FINISHED, "workflow");
    workflows.sort();
    let mut want: Vec<String> = (0..cap).map(|i| format!("cap_{i:03}")).collect();
    want.push("_other".into());
    want.sort();
    assert_eq!(workflows, want);
    for i in 0..cap {
        let w = format!("cap_{i:03}");
        let l = [("workflow", w.as_str()), ("outcome", "completed")];
        assert_eq!(scrape.value(FINISHED, &l), 1.0, "{w}");
        assert_eq!(scrape.histogram_count(SESSION_SECONDS, &l), 1, "{w}");
    }
    let other = [("workflow", "_other"), ("outcome", "completed")];
    assert_eq!(scrape.value(FINISHED, &other), 3.0);
    assert_eq!(scrape.histogram_count(SESSION_SECONDS, &other), 3);
    for v in scrape.label_values_of(SESSION_SECONDS, "workflow") {
        assert!(want.contains(&v), "{v}");
    }
    s.stop().await;
}

/// `opscore_feed_lag_seconds`: how long the oldest committed event this
/// process's feed has not served yet has been waiting (0 when it has
/// served everything). An event the feed cannot read (an unknown kind,
/// written behind the server's back) holds the feed up; the lag grows with
/// its age, and drops to 0 once it is gone and the feed has caught up.
async fn feed_lag_follows_the_unserved_events(backend: Backend) {
    const LAG: &str = "opscore_feed_lag_seconds";
    let s = TestServer::start(backend).await;
    s.register("lag-agent").await;
    let mut caught_up = false;
    for _ in 0..200 {
        if Scrape::take(&s).await.value(LAG, &[]) == 0.0 {
            caught_up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(caught_up, "the feed never caught up");

    let at = chrono::Utc::now().timestamp_micros() - 30_000_000;
    let started = std::time::Instant::now();
    s.db.execute(&format!(
        "INSERT INTO events (kind, agent_id, session_id, at_us, data) \
             VALUES ('test.unreadable', NULL, NULL, {at}, '{{}}')"
    ))
    .await;
    // Later events wait behind it.
    s.register("lag-agent-2").await;
    let lag = Scrape::take(&s).await.value(LAG, &[]);
    let most = 30.0 + started.elapsed().as_secs_f64() + 1.0;
    assert!((30.0..=most).contains(&lag), "lag {lag}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let later = Scrape::take(&s).await.value(LAG, &[]);
    assert!(later >= lag + 0.3, "lag {lag}, then {later}");

    s.db.execute("DELETE FROM events WHERE kind = 'test.unreadable'")
        .await;
    let mut last = f64::NAN;
    for _ in 0..200 {
        last = Scrape::take(&s).await.value(LAG, &[]);
        if last == 0.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(last, 0.0, "the feed never caught up again");
    s.stop().await;
}

backend_tests!(
    counters_and_gauges_move_with_the_requests,
    metrics_are_open_like_health,
    stale_agents_and_feed_subscribers,
    finished_sessions_count_by_workflow_and_outcome,
    oldest_queued_run_age,
    workflow_labels_are_capped,
    feed_lag_follows_the_unserved_events
);

/// The Grafana dashboard in deploy/grafana queries only metrics the
/// service exposes: every `opscore_*`/`process_*` name in its queries is a
/// family of a live scrape (a histogram's `_bucket` series included).
#[tokio::test]
async fn the_grafana_dashboard_queries_metrics_that_exist() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/grafana/opscore.json");
    let dashboard: Value =
        serde_json::from_str(&std::fs::read_to_string(path).expect("dashboard")).expect("JSON");
    // Traffic first: a family shows only once it has a series.
    let kit = FakeAgentKit::start().await;
    let s = start(Backend::Sqlite, &kit).await;
    s.register("a1").await;
    let (status, _) = s
        .report("a1", "idle", &chrono::Utc::now().to_rfc3339())
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let sid = trigger(&s, "a1").await;
    kit.wait_calls(1, 10).await;
    // A finished session, for the outcome and duration series.
    let r = send(s.post(&format!("/v1/opscore/sessions/{sid}/cancel"))).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    for _ in 0..100 {
        let text = s
            .client
            .get(s.url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if text.contains("opscore_dispatch_attempts_total{") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let text = s
        .client
        .get(s.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let families: std::collections::HashSet<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split(' ').next())
        .collect();
    let mut checked = 0;
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().expect("targets") {
            let expr = target["expr"].as_str().expect("expr");
            let names = expr
                .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .filter(|w| w.starts_with("opscore_") || w.starts_with("process_"));
            for name in names {
                let family = name.strip_suffix("_bucket").unwrap_or(name);
                assert!(
                    families.contains(name) || families.contains(family),
                    "panel '{}' queries {name}, which /metrics does not expose",
                    panel["title"]
                );
                checked += 1;
            }
        }
    }
    assert!(checked >= 19, "{checked} names checked");
    s.stop().await;
}
