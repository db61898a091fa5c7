//! Wall-clock steps move no lease, deadline or backoff: the real binary runs
//! under libfaketime (Debian's `faketime`; `scripts/test` installs it), its
//! wall clock read from a file on every call and its monotonic clock left
//! alone, and the test steps that clock 60 s forward and back again while
//! sessions are running. No attempt times out early or is sent twice, and
//! every session completes. Both backends.

use crate::common;

use std::path::Path;
use std::time::Duration;

use crate::common::agentkit::{FakeAgentKit, Reply};
use crate::common::{register_at, Backend, ServerProcess, TestDb, KEY};
use reqwest::StatusCode;
use serde_json::{json, Value};

const LIBFAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";

/// Set the server's wall clock to the real one plus `offset` (libfaketime's
/// relative form, e.g. `+60`).
fn set_clock(file: &Path, offset: &str) {
    std::fs::write(file, format!("{offset}\n")).expect("write the faketime file");
}

async fn report(base: &str, agent: &str, state: &str, details: Value) {
    let r = reqwest::Client::new()
        .post(format!("{base}/v1/opscore/agent/{agent}/state"))
        .bearer_auth(KEY)
        .json(
            &json!({"agentId": agent, "timestamp": chrono::Utc::now().to_rfc3339(),
                      "state": state, "details": details}),
        )
        .send()
        .await
        .expect("report");
    assert_eq!(r.status(), StatusCode::ACCEPTED, "{:?}", r.text().await);
}

async fn session(base: &str, id: &str) -> Value {
    reqwest::Client::new()
        .get(format!("{base}/v1/opscore/sessions/{id}"))
        .bearer_auth(KEY)
        .send()
        .await
        .expect("get session")
        .json()
        .await
        .expect("session json")
}

fn ids(call: &common::agentkit::Call) -> Value {
    json!({"taskId": call.body["opscore_task_id"], "sessionId": call.body["opscore_session_id"]})
}

async fn clock_steps_move_no_lease_or_deadline(backend: Backend) {
    assert!(
        Path::new(LIBFAKETIME).exists(),
        "{LIBFAKETIME} is missing: install Debian's faketime (scripts/test does)"
    );
    let db = TestDb::new(backend).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = dir.path().join("faketime");
    set_clock(&clock, "+0");
    let kit = FakeAgentKit::start().await;
    let clock_file = clock.to_string_lossy().into_owned();
    let server = ServerProcess::spawn_with(
        &db.url,
        &dir.path().join("data"),
        &[
            ("LD_PRELOAD", LIBFAKETIME),
            ("FAKETIME_TIMESTAMP_FILE", &clock_file),
            ("FAKETIME_NO_CACHE", "1"),
            ("DONT_FAKE_MONOTONIC", "1"),
            ("AGENTKIT_API_URL", &kit.base),
            ("OPSCORE_DISPATCH_POLL_MS", "20"),
            ("OPSCORE_RETRY_BASE_MS", "200"),
        ],
    )
    .await;
    let base = server.base.clone();
    let client = reqwest::Client::new();
    let agents = ["c1", "c2", "c3"];
    for a in agents {
        register_at(&client, &base, a, &[]).await;
        report(&base, a, "idle", Value::Null).await;
    }
    // The third delivery is slow to be answered: its claim is still open
    // (35 s lease by default) when the clock steps past it.
    kit.script(&[
        Reply::Status(202),
        Reply::Status(202),
        Reply::SlowAccept(3000),
    ]);
    let task = |id: &str, next: Option<&str>| json!({"taskId": id, "name": id, "nextTaskId": next, "timeoutSeconds": 4, "maxRetries": 2});
    let mut sessions = Vec::new();
    for a in agents {
        let r = client
            .post(format!("{base}/v1/opscore/agent/{a}/workflow"))
            .bearer_auth(KEY)
            .json(&json!({"workflowDefinition": {"id": format!("clock_{a}"),
                "tasks": [task("a", Some("b")), task("b", None)]}}))
            .send()
            .await
            .expect("trigger");
        assert_eq!(r.status(), StatusCode::ACCEPTED);
        let v: Value = r.json().await.expect("trigger json");
        sessions.push(v["sessionId"].as_str().expect("sessionId").to_owned());
    }
    // Every agent has its first task; two of them start it.
    let first = kit.wait_calls(3, 10).await;
    for c in &first[..2] {
        report(&base, &c.agent_id, "active", ids(c)).await;
    }

    // Sixty seconds forward: past every attempt's 4 s deadline and past the
    // open claim's lease, by the wall clock only.
    set_clock(&clock, "+60");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // And back.
    set_clock(&clock, "+0");
    tokio::time::sleep(Duration::from_millis(500)).await;

    report(&base, &first[2].agent_id, "active", ids(&first[2])).await;
    for c in &first {
        report(&base, &c.agent_id, "idle", ids(c)).await;
    }
    // The second tasks, done at once.
    let calls = kit.wait_calls(6, 10).await;
    for c in &calls[3..] {
        report(&base, &c.agent_id, "active", ids(c)).await;
        report(&base, &c.agent_id, "idle", ids(c)).await;
    }
    for id in &sessions {
        let mut v = session(&base, id).await;
        for _ in 0..250 {
            if v["status"] != "running" && v["status"] != "started" {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
            v = session(&base, id).await;
        }
        assert_eq!(v["status"], "completed", "{v:#}");
        for t in v["tasks"].as_array().expect("tasks") {
            assert_eq!(t["attempts"], 1, "no attempt failed or was resent: {v:#}");
            assert!(t["lastError"].is_null(), "{v:#}");
        }
    }
    let calls = kit.calls();
    assert_eq!(calls.len(), 6, "each task sent once: {calls:#?}");
    assert!(kit.duplicates().is_empty(), "{:?}", kit.duplicates());
    server.kill().await;
}

backend_tests!(clock_steps_move_no_lease_or_deadline);
