//! Retention end to end: with small limits, the housekeeping of a running
//! server trims state history and finished sessions by count per agent and
//! by age, while the current state and unfinished sessions stay, and
//! reports keep being accepted throughout. Each test runs on both backends.

use crate::common;

use std::time::{Duration, Instant};

use crate::common::{Backend, TestServer};
use opscore::store::KeepPerAgent;
use reqwest::StatusCode;
use serde_json::{json, Value};

/// Report timestamps that sort after the registration's `UNKNOWN` entry,
/// all from one base (taken once, so the order of `secs` is their order).
fn ts(secs: i64) -> String {
    static BASE: std::sync::OnceLock<chrono::DateTime<chrono::Utc>> = std::sync::OnceLock::new();
    common::ts_at(*BASE.get_or_init(common::future_base), secs)
}

/// Poll until `f` is true (panics after 15 s).
async fn eventually<F, Fut>(what: &str, f: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = Instant::now();
    while !f().await {
        assert!(started.elapsed() < Duration::from_secs(15), "never: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn trigger_empty(s: &TestServer, agent: &str) -> String {
    let r = s
        .post(&format!("/v1/opscore/agent/{agent}/workflow"))
        .json(&json!({"workflowDefinition": {"id": "empty", "tasks": []}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let v: Value = r.json().await.unwrap();
    v["sessionId"].as_str().unwrap().to_owned()
}

async fn sessions(s: &TestServer, agent: &str) -> Vec<String> {
    let r = s
        .get_json(&format!("/v1/opscore/agent/{agent}/sessions"))
        .await;
    r.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["sessionId"].as_str().unwrap().to_owned())
        .collect()
}

async fn keeps_the_newest_per_agent(backend: Backend) {
    let s = TestServer::start_with(backend, |c| {
        c.dispatch.enabled = false;
        c.retention.keep = KeepPerAgent {
            history: Some(5),
            sessions: Some(2),
        };
        c.retention.prune_every = Duration::from_millis(200);
    })
    .await;
    s.register("busy").await;
    s.register("quiet").await;
    // Reported out of order: "newest" means latest timestamp, as history shows.
    for i in (0..20).rev() {
        let (st, _) = s.report("busy", &format!("s{i}"), &ts(i)).await;
        assert_eq!(st, StatusCode::ACCEPTED);
    }
    s.report("quiet", "idle", &ts(1)).await;
    // An unfinished session is never pruned, however old.
    let r = s
        .post("/v1/opscore/agent/busy/workflow")
        .json(&json!({"workflowDefinition": {"id": "one", "tasks": [{"taskId": "t"}]}}))
        .send()
        .await
        .unwrap();
    let unfinished: Value = r.json().await.unwrap();
    let unfinished = unfinished["sessionId"].as_str().unwrap().to_owned();
    let mut finished = Vec::new();
    for _ in 0..4 {
        finished.push(trigger_empty(&s, "busy").await);
    }

    eventually("history trimmed to 5", || async {
        s.history("busy").await.len() == 5
    })
    .await;
    let states: Vec<Value> = s
        .history("busy")
        .await
        .iter()
        .map(|h| h["state"].clone())
        .collect();
    assert_eq!(
        states,
        [
            json!("s19"),
            json!("s18"),
            json!("s17"),
            json!("s16"),
            json!("s15")
        ]
    );
    assert_eq!(s.state("busy").await.1["state"], "s19");
    // Under the limit: untouched (its report and the registration entry).
    assert_eq!(s.history("quiet").await.len(), 2);

    eventually("finished sessions trimmed to 2", || async {
        sessions(&s, "busy").await.len() == 3
    })
    .await;
    let left = sessions(&s, "busy").await;
    assert_eq!(
        left,
        [finished[3].clone(), finished[2].clone(), unfinished.clone()]
    );
    let r = s
        .get_json(&format!("/v1/opscore/sessions/{}", finished[0]))
        .await;
    common::assert_error(&r, StatusCode::NOT_FOUND, "session_not_found");

    // Writes go on while housekeeping runs.
    let (st, _) = s.report("busy", "s20", &ts(20)).await;
    assert_eq!(st, StatusCode::ACCEPTED);
    s.stop().await;
}

async fn prunes_by_age_but_never_the_current_state(backend: Backend) {
    let s = TestServer::start_with(backend, |c| {
        c.dispatch.enabled = false;
        c.retention.keep = KeepPerAgent::default();
        c.retention.history_max_age = Some(Duration::from_secs(1));
        c.retention.sessions_max_age = Some(Duration::from_secs(1));
        c.retention.prune_every = Duration::from_millis(200);
    })
    .await;
    s.register("old").await;
    for i in 0..10 {
        s.report("old", &format!("s{i}"), &ts(i)).await;
    }
    let done = trigger_empty(&s, "old").await;
    eventually("old history pruned", || async {
        s.history("old").await.is_empty()
    })
    .await;
    eventually("old sessions pruned", || async {
        sessions(&s, "old").await.is_empty()
    })
    .await;
    let r = s.get_json(&format!("/v1/opscore/sessions/{done}")).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let (st, cur) = s.state("old").await;
    assert_eq!((st, cur["state"].clone()), (StatusCode::OK, json!("s9")));
    // New reports are stored and shown until they age out in turn.
    s.report("old", "fresh", &ts(100)).await;
    assert_eq!(s.history("old").await.len(), 1);
    s.stop().await;
}

backend_tests!(
    keeps_the_newest_per_agent,
    prunes_by_age_but_never_the_current_state
);
