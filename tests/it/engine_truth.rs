//! A task's status follows what really happened to it: end-to-end tests of
//! the workflow engine against a fake AgentKit that misbehaves the way real
//! networks and agents do (it cuts answers, answers after the agent has
//! reported, or never delivers). Every test runs on SQLite and PostgreSQL.

use crate::common;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::common::agentkit::{FakeAgentKit, Reply};
use crate::common::{Backend, TestServer};
use opscore::config::DispatchTarget;
use opscore::domain::workflow::Backoff;
use reqwest::StatusCode;
use serde_json::{json, Value};

async fn start(backend: Backend, kit: &FakeAgentKit, backoff_ms: u64) -> TestServer {
    let url: url::Url = kit.base.parse().expect("fake url");
    TestServer::start_with(backend, move |c| {
        c.dispatch.target = DispatchTarget::AgentKit(url);
        c.dispatch.poll_interval = Duration::from_millis(20);
        c.dispatch.request_timeout = Duration::from_secs(8);
        c.db.engine.backoff = Backoff {
            base_ms: backoff_ms,
            factor: 2.0,
            cap_ms: backoff_ms * 5,
        };
        c.workflows_dir = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/workflows"));
    })
    .await
}

/// Tasks `a` → `b` (or `a` alone), each with a 4 s timeout and 2 retries.
fn chain(id: &str, two: bool) -> Value {
    let t = |task: &str, next: Option<&str>| {
        json!({"taskId": task, "name": task, "nextTaskId": next,
               "timeoutSeconds": 4, "maxRetries": 2})
    };
    let tasks = if two {
        vec![t("a", Some("b")), t("b", None)]
    } else {
        vec![t("a", None)]
    };
    json!({"id": id, "name": id, "tasks": tasks})
}

async fn report_at(base: &str, agent: &str, state: &str, details: Value, ts: String) {
    let r = reqwest::Client::new()
        .post(format!("{base}/v1/opscore/agent/{agent}/state"))
        .bearer_auth(common::KEY)
        .json(&json!({"agentId": agent, "timestamp": ts, "state": state, "details": details}))
        .send()
        .await
        .expect("report");
    assert_eq!(r.status(), StatusCode::ACCEPTED, "{:?}", r.text().await);
}

async fn report(s: &TestServer, agent: &str, state: &str, details: Value) {
    report_at(
        &s.base,
        agent,
        state,
        details,
        chrono::Utc::now().to_rfc3339(),
    )
    .await
}

/// Trigger an inline definition on `agent`; returns the session id.
async fn trigger(s: &TestServer, agent: &str, def: Value) -> String {
    s.trigger(agent, json!({"workflowDefinition": def})).await
}

fn ids(call: &common::agentkit::Call) -> Value {
    json!({"taskId": call.body["opscore_task_id"], "sessionId": call.body["opscore_session_id"]})
}

/// Finding 1: AgentKit accepts (202) and never delivers; the agent, alive,
/// sends plain `idle` heartbeats. They complete nothing. Once the agent
/// reports `active` and then `idle` without ids (as AgentKit's example
/// agent does), the task completes.
async fn heartbeat_does_not_complete_an_undelivered_task(backend: Backend) {
    let kit = FakeAgentKit::start().await;
    let s = start(backend, &kit, 200).await;
    s.register("a1").await;
    let sid = trigger(&s, "a1", chain("w_heartbeat", true)).await;
    kit.wait_calls(1, 10).await;
    s.wait_session(&sid, |v| v["tasks"][0]["status"] == "dispatched")
        .await;
    for _ in 0..3 {
        report(&s, "a1", "idle", Value::Null).await;
    }
    let v = s.session(&sid).await;
    assert_eq!(v["tasks"][0]["status"], "dispatched", "{v:#}");
    assert!(v["tasks"][0]["startedAt"].is_null(), "{v:#}");
    assert_eq!(v["status"], "running");

    // An agent that reports without ids still gets its work done.
    report(&s, "a1", "active", Value::Null).await;
    report(&s, "a1", "idle", Value::Null).await;
    kit.wait_calls(2, 10).await;
    s.wait_session(&sid, |v| v["tasks"][1]["status"] == "dispatched")
        .await;
    report(&s, "a1", "idle", Value::Null).await;
    assert_eq!(s.session(&sid).await["tasks"][1]["status"], "dispatched");
    report(&s, "a1", "active", Value::Null).await;
    report(&s, "a1", "idle", json!({"out": 2})).await;
    let v = s.wait_session(&sid, |v| v["status"] == "completed").await;
    for t in v["tasks"].as_array().unwrap() {
        assert_eq!(t["status"], "completed");
        assert!(t["startedAt"].is_string(), "{v:#}");
        assert_eq!(t["attempts"], 1);
    }
    assert_eq!(kit.calls().len(), 2);
    s.stop().await;
}

/// Finding 2: AgentKit cuts its 202 mid-way; the delivery counts as failed
/// and a retry waits out its backoff. Meanwhile the agent reports `active`
/// and `idle` naming the run: the task completes and nothing is re-sent.
async fn finish_during_backoff_is_honoured(backend: Backend) {
    let kit = FakeAgentKit::start().await;
    kit.script(&[Reply::Cut]);
    // Backoff of 1.5 s or more: the reports below land inside it.
    let s = start(backend, &kit, 3000).await;
    s.register("a1").await;
    let sid = trigger(&s, "a1", chain("w_cut", false)).await;
    let calls = kit.wait_calls(1, 10).await;
    let v = s
        .wait_session(&sid, |v| {
            v["tasks"][0]["status"] == "queued" && v["tasks"][0]["lastError"].is_string()
        })
        .await;
    assert_eq!(v["tasks"][0]["attempts"], 1);
    report(&s, "a1", "active", ids(&calls[0])).await;
    let mut done = ids(&calls[0]);
    done["summary"] = json!("done");
    report(&s, "a1", "idle", done.clone()).await;
    let v = s.wait_session(&sid, |v| v["status"] == "completed").await;
    assert_eq!(v["tasks"][0]["status"], "completed");
    assert_eq!(v["tasks"][0]["attempts"], 1);
    assert_eq!(v["tasks"][0]["result"], done);
    assert_eq!(v["result"], done);
    assert_eq!(kit.calls().len(), 1, "nothing re-sent");
    s.stop().await;
}

/// Finding 3: the agent reports `active`, then `error` naming the run, and
/// stays in `error`. Each retry is still sent, and the session ends
/// `failed` after the last one, with the agent's reason.
async fn retry_is_sent_to_an_agent_left_in_error(backend: Backend) {
    let kit = FakeAgentKit::start().await;
    let s = start(backend, &kit, 200).await;
    s.register("a1").await;
    let sid = trigger(&s, "a1", chain("w_error", false)).await;
    for n in 1..=3 {
        let calls = kit.wait_calls(n, 10).await;
        s.wait_session(&sid, |v| {
            v["tasks"][0]["status"] == "dispatched" && v["tasks"][0]["attempts"] == n
        })
        .await;
        let mut d = ids(&calls[n - 1]);
        report(&s, "a1", "active", d.clone()).await;
        d["reason"] = json!(format!("model unavailable {n}"));
        report(&s, "a1", "error", d).await;
    }
    let v = s.wait_session(&sid, |v| v["status"] == "failed").await;
    let err = v["error"].as_str().unwrap();
    assert!(
        err.contains("task a failed after 3 attempts") && err.contains("model unavailable 3"),
        "{err}"
    );
    assert_eq!(v["tasks"][0]["status"], "failed");
    assert_eq!(kit.calls().len(), 3);
    s.stop().await;
}

/// Finding 4: the agent reports `active` naming the run before AgentKit
/// answers 503. The failure is recorded on the attempt, and the run goes on
/// (the agent has it) until the agent finishes it; nothing is re-sent.
async fn delivery_failure_after_the_agent_started_is_recorded(backend: Backend) {
    let kit = FakeAgentKit::start().await;
    kit.script(&[Reply::Status(503)]);
    let s = start(backend, &kit, 200).await;
    s.register("a1").await;
    let base = s.base.clone();
    kit.before_answer(Arc::new(move |call, _| {
        let base = base.clone();
        Box::pin(async move {
            let now = chrono::Utc::now().to_rfc3339();
            report_at(&base, &call.agent_id, "active", ids(&call), now).await;
        })
    }));
    let sid = trigger(&s, "a1", chain("w_503", false)).await;
    let calls = kit.wait_calls(1, 10).await;
    let v = s
        .wait_session(&sid, |v| v["tasks"][0]["lastError"].is_string())
        .await;
    assert!(
        v["tasks"][0]["lastError"].as_str().unwrap().contains("503"),
        "{v:#}"
    );
    assert_eq!(v["tasks"][0]["status"], "running", "{v:#}");
    report(&s, "a1", "idle", ids(&calls[0])).await;
    let v = s.wait_session(&sid, |v| v["status"] == "completed").await;
    assert_eq!(v["tasks"][0]["attempts"], 1);
    assert_eq!(kit.calls().len(), 1, "nothing re-sent");
    s.stop().await;
}

/// Finding 5: after task a completes and b is dispatched, an `active`
/// timestamped before b's dispatch does not start b, and so a later plain
/// `idle` does not complete it.
async fn late_active_does_not_start_the_next_task(backend: Backend) {
    let kit = FakeAgentKit::start().await;
    let s = start(backend, &kit, 200).await;
    s.register("a1").await;
    let sid = trigger(&s, "a1", chain("w_late", true)).await;
    kit.wait_calls(1, 10).await;
    s.wait_session(&sid, |v| v["tasks"][0]["status"] == "dispatched")
        .await;
    report(&s, "a1", "active", Value::Null).await;
    report(&s, "a1", "idle", Value::Null).await;
    kit.wait_calls(2, 10).await;
    let v = s
        .wait_session(&sid, |v| v["tasks"][1]["status"] == "dispatched")
        .await;
    let sent = common::parse_time(&v["tasks"][1]["dispatchedAt"]);
    let late = (sent - chrono::Duration::milliseconds(200)).to_rfc3339();
    report_at(&s.base, "a1", "active", Value::Null, late).await;
    let v = s.session(&sid).await;
    assert_eq!(v["tasks"][1]["status"], "dispatched", "{v:#}");
    assert!(v["tasks"][1]["startedAt"].is_null(), "{v:#}");
    report(&s, "a1", "idle", Value::Null).await;
    let v = s.session(&sid).await;
    assert_eq!(v["tasks"][1]["status"], "dispatched", "{v:#}");
    s.stop().await;
}

/// The name from the report: clears the screen, retitles the window and
/// forges a table row when written raw to a terminal.
const EVIL: &str = "Evil\u{1b}[2J\u{1b}]0;PWNED\u{7}\r\nFAKE-ROW  idle";

/// Finding 7: control characters in an agent's registered text are refused
/// with a 422 naming the field, and nothing is stored.
async fn control_characters_are_refused_at_registration(backend: Backend) {
    let s = TestServer::start(backend).await;
    let cases = [
        (
            "agent_details.agentName",
            common::register_payload("a1", EVIL, &["x"], "http://a1.test/task"),
        ),
        ("agent_details.version", {
            let mut p = common::register_payload("a1", "ok", &["x"], "http://a1.test/task");
            p["agent_details"]["version"] = json!("1.0\u{1b}[31m");
            p
        }),
        (
            "agent_details.capabilities",
            common::register_payload("a1", "ok", &["sum\u{9b}2J"], "http://a1.test/task"),
        ),
        (
            "agent_details.contactEndpoint",
            common::register_payload("a1", "ok", &["x"], "http://a1.test/\r\ntask"),
        ),
    ];
    for (field, body) in cases {
        let r = s.notify_bearer(&body).await;
        common::assert_invalid_field(&r, field);
        let msg = r.body["errors"][0]["message"].as_str().unwrap_or_default();
        assert!(msg.contains("control characters"), "{field}: {}", r.body);
    }
    let r = s.get_json("/v1/opscore/agents").await;
    assert_eq!(r.body["items"], json!([]), "nothing stored: {}", r.body);
    s.stop().await;
}

/// Finding 8: a definition whose chain skips tasks is refused, naming each
/// task that could never run; an expiry beyond the ten-year cap is refused
/// however it is given.
async fn unreachable_tasks_and_far_expiries_are_refused(backend: Backend) {
    let kit = FakeAgentKit::start().await;
    let s = start(backend, &kit, 200).await;
    s.register("a1").await;
    let mut tasks = vec![json!({"taskId": "t0", "nextTaskId": "t9"})];
    for i in 1..10 {
        tasks.push(json!({"taskId": format!("t{i}")}));
    }
    let def = json!({"id": "w_skip", "name": "skip", "tasks": tasks});
    let r = common::send(s.post("/v1/opscore/workflows").json(&def)).await;
    for i in 1..9 {
        common::assert_invalid_field(&r, &format!("tasks[{i}].taskId"));
    }
    let errors = r.body["errors"].as_array().unwrap();
    assert_eq!(errors.len(), 8, "{}", r.body);
    assert!(errors[0]["message"]
        .as_str()
        .unwrap()
        .contains("'t1' is unreachable"));
    let r = common::send(
        s.post("/v1/opscore/agent/a1/workflow")
            .json(&json!({"workflowDefinition": def})),
    )
    .await;
    common::assert_invalid_field(&r, "workflowDefinition.tasks[1].taskId");
    assert!(kit.calls().is_empty());

    let r = common::send(
        s.post("/v1/opscore/keys")
            .json(&json!({"name": "far", "role": "operator", "expiresAt": "9999-12-31T00:00:00Z"})),
    )
    .await;
    common::assert_invalid_field(&r, "expiresAt");
    let r = common::send(
        s.post("/v1/opscore/keys")
            .json(&json!({"name": "far", "role": "operator", "ttlSeconds": 20u64 * 365 * 86_400})),
    )
    .await;
    common::assert_invalid_field(&r, "ttlSeconds");
    let r = common::send(s.post("/v1/opscore/keys").json(
        &json!({"name": "near", "role": "operator", "expiresAt": (chrono::Utc::now() + chrono::Duration::days(365)).to_rfc3339()}),
    ))
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    s.stop().await;
}

/// An agent that reports without ids the moment its task arrives (before
/// the dispatcher has even recorded AgentKit's answer) gets each task of a
/// chain done, session after session: `active` then `idle`, nothing else.
/// The dashboard's test once saw the second task stay `running` this way
/// under load.
async fn bare_reports_on_arrival_finish_every_task(backend: Backend) {
    let kit = FakeAgentKit::start().await;
    let s = start(backend, &kit, 200).await;
    s.register("a1").await;
    report(&s, "a1", "idle", Value::Null).await;
    let mut calls = 0;
    for round in 0..8 {
        let sid = trigger(&s, "a1", chain(&format!("w_bare_{round}"), true)).await;
        for _ in 0..2 {
            calls += 1;
            kit.wait_calls(calls, 10).await;
            report(&s, "a1", "active", Value::Null).await;
            report(&s, "a1", "idle", json!({"round": round})).await;
        }
        let v = s
            .wait_session(&sid, |v| {
                v["status"] != "running" && v["status"] != "started"
            })
            .await;
        assert_eq!(v["status"], "completed", "round {round}: {v:#}");
    }
    assert_eq!(kit.calls().len(), calls, "no task was sent twice");
    s.stop().await;
}

backend_tests!(
    bare_reports_on_arrival_finish_every_task,
    control_characters_are_refused_at_registration,
    unreachable_tasks_and_far_expiries_are_refused,
    heartbeat_does_not_complete_an_undelivered_task,
    finish_during_backoff_is_honoured,
    retry_is_sent_to_an_agent_left_in_error,
    delivery_failure_after_the_agent_started_is_recorded,
    late_active_does_not_start_the_next_task,
);
