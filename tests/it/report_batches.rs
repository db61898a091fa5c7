//! How a batch of state reports is stored (docs/performance.md, "Where a
//! batch's time goes"): on PostgreSQL, a batch that moves no task on, ends
//! no staleness and takes no later `UNKNOWN`'s place is one statement
//! committed on its own, one round trip; every other batch, and every batch
//! on SQLite, is a transaction of several. `opscore_report_batches{path}`
//! counts which way each went, and the reads check that each stored all it
//! should. Every test runs on both backends.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::common::agentkit::FakeAgentKit;
use crate::common::sse::Stream;
use crate::common::{future_base, register_payload, ts_at, Backend, TestServer};
use crate::metrics::Scrape;
use opscore::config::DispatchTarget;

/// `(one_statement, transaction)` batches so far.
async fn batches(s: &TestServer) -> (f64, f64) {
    let m = Scrape::at(&s.client, &s.base).await;
    (
        m.value("opscore_report_batches", &[("path", "one_statement")]),
        m.value("opscore_report_batches", &[("path", "transaction")]),
    )
}

/// Reports from `before` to now went the way `backend` takes for a batch
/// that needs `more` than one statement.
async fn went(s: &TestServer, backend: Backend, before: (f64, f64), more: bool, what: &str) {
    let after = batches(s).await;
    let (one, tx) = (after.0 - before.0, after.1 - before.1);
    if backend == Backend::Postgres && !more {
        assert!(
            one >= 1.0 && tx == 0.0,
            "{what}: {one} one-statement, {tx} transaction batches"
        );
    } else {
        assert!(
            tx >= 1.0 && one == 0.0,
            "{what}: {one} one-statement, {tx} transaction batches"
        );
    }
}

async fn agent(s: &TestServer, id: &str) -> Value {
    let r = s.get_json(&format!("/v1/opscore/agent/{id}")).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    r.body
}

/// The `n` events of `kinds` for `agent` after index `after`, as `(kind,
/// state)`, and no more.
async fn events(
    s: &TestServer,
    after: i64,
    kinds: &str,
    agent: &str,
    n: usize,
) -> Vec<(String, Value)> {
    let query = format!("?after={after}&kinds={kinds}&agentId={agent}");
    let mut feed = Stream::open(&s.base, &query, None).await;
    let mut seen = Vec::new();
    for _ in 0..n {
        let e = feed.next(Duration::from_secs(5)).await;
        let e = e.unwrap_or_else(|| panic!("{agent}: only {seen:?}"));
        seen.push((e.kind, e.data["data"]["state"].clone()));
    }
    if let Some(more) = feed.next(Duration::from_millis(300)).await {
        panic!("{agent}: {seen:?}, then {} {}", more.kind, more.data);
    }
    seen
}

async fn head(s: &TestServer) -> i64 {
    let r = s.get_json("/v1/opscore/agent/plain-1/state").await;
    r.headers["x-opscore-index"]
        .to_str()
        .expect("ascii")
        .parse()
        .expect("a number")
}

async fn batches_go_one_statement_unless_they_need_more(backend: Backend) {
    let kit = FakeAgentKit::start().await;
    let url: url::Url = kit.base.parse().expect("fake url");
    let s = TestServer::start_with(backend, move |c| {
        c.dispatch.target = DispatchTarget::AgentKit(url);
        c.dispatch.poll_interval = Duration::from_millis(20);
        c.db.engine.liveness.grace_secs = 0;
    })
    .await;
    for id in ["plain-1", "plain-2", "plain-3", "late", "worker"] {
        s.register(id).await;
    }
    let mut short = register_payload("short", "Short", &["summarise"], "http://short.test/task");
    short["agent_details"]["metadata"]["ttlSeconds"] = json!(1);
    assert_eq!(s.notify_bearer(&short).await.status, StatusCode::OK);
    let base = future_base();
    let t = |secs| ts_at(base, secs);

    // Plain reports: stored in full, whichever way they went.
    let mark = head(&s).await;
    let before = batches(&s).await;
    for (i, id) in ["plain-1", "plain-2", "plain-3"].into_iter().enumerate() {
        assert_eq!(s.report(id, "idle", &t(1)).await.0, StatusCode::ACCEPTED);
        assert_eq!(
            s.report(id, "active", &t(2 + i as i64)).await.0,
            StatusCode::ACCEPTED
        );
    }
    // A late one, behind the current state: history only.
    assert_eq!(
        s.report("plain-1", "error", &t(0)).await.0,
        StatusCode::ACCEPTED
    );
    let (status, body) = s.report("nobody", "idle", &t(1)).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    went(&s, backend, before, false, "plain reports").await;
    for id in ["plain-1", "plain-2", "plain-3"] {
        assert_eq!(s.state(id).await.1["state"], "active");
        let states: Vec<Value> = s
            .history(id)
            .await
            .iter()
            .map(|h| h["state"].clone())
            .collect();
        let want = if id == "plain-1" {
            json!(["active", "idle", "error", "UNKNOWN"])
        } else {
            json!(["active", "idle", "UNKNOWN"])
        };
        assert_eq!(json!(states), want, "{id}");
        assert_eq!(
            events(&s, mark, "agent.state", id, 2).await,
            [
                ("agent.state".to_owned(), json!("idle")),
                ("agent.state".to_owned(), json!("active"))
            ],
            "{id}: one event per report that became current, in order"
        );
    }

    // A first report older than the registration's UNKNOWN: that entry
    // moves below it.
    let before = batches(&s).await;
    let old = ts_at(chrono::Utc::now() - chrono::Duration::hours(1), 0);
    assert_eq!(s.report("late", "idle", &old).await.0, StatusCode::ACCEPTED);
    went(&s, backend, before, true, "a report older than its UNKNOWN").await;
    let states: Vec<Value> = s
        .history("late")
        .await
        .iter()
        .map(|h| h["state"].clone())
        .collect();
    assert_eq!(
        json!(states),
        json!(["idle", "UNKNOWN"]),
        "the UNKNOWN moved below the report that took its place"
    );

    // An agent coming back from stale (announced): `agent.fresh`.
    let mut stale = Stream::open(&s.base, "?kinds=agent.stale&agentId=short", Some(0)).await;
    stale
        .next(Duration::from_secs(10))
        .await
        .expect("agent.stale for short");
    let mark = head(&s).await;
    let before = batches(&s).await;
    assert_eq!(
        s.report("short", "idle", &t(1)).await.0,
        StatusCode::ACCEPTED
    );
    went(&s, backend, before, true, "a stale agent's report").await;
    assert_eq!(agent(&s, "short").await["stale"], false);
    let kinds: Vec<String> = events(&s, mark, "agent.fresh,agent.state", "short", 2)
        .await
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    assert_eq!(kinds, ["agent.fresh", "agent.state"]);

    // An agent with a task in flight: its reports move the task on.
    let r = s
        .post("/v1/opscore/agent/worker/workflow")
        .json(&json!({"workflowDefinition": {"id": "wf", "tasks": [{"taskId": "t1"}]}}))
        .send()
        .await
        .expect("trigger");
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let sid = r.json::<Value>().await.expect("JSON")["sessionId"]
        .as_str()
        .expect("sessionId")
        .to_owned();
    kit.wait_calls(1, 10).await;
    s.wait_session(&sid, |v| v["tasks"][0]["status"] == "dispatched")
        .await;
    let before = batches(&s).await;
    let now = || chrono::Utc::now().to_rfc3339();
    assert_eq!(
        s.report("worker", "active", &now()).await.0,
        StatusCode::ACCEPTED
    );
    went(
        &s,
        backend,
        before,
        true,
        "a report for an agent with a task",
    )
    .await;
    s.wait_session(&sid, |v| v["tasks"][0]["status"] == "running")
        .await;
    assert_eq!(
        s.report("worker", "idle", &now()).await.0,
        StatusCode::ACCEPTED
    );
    s.wait_session(&sid, |v| v["status"] == "completed").await;

    // Done: its reports are plain again.
    let before = batches(&s).await;
    assert_eq!(
        s.report("worker", "idle", &now()).await.0,
        StatusCode::ACCEPTED
    );
    went(&s, backend, before, false, "a report after the task").await;
    s.stop().await;
}

backend_tests!(batches_go_one_statement_unless_they_need_more);
