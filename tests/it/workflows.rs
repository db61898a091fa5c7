//! End-to-end tests of the workflow engine over real HTTP both ways: Ops-Core
//! dispatches to a scripted fake AgentKit, and the test plays the agent by
//! reporting states. Every test runs on SQLite and on PostgreSQL.

use crate::common;

use std::path::PathBuf;
use std::time::Duration;

use crate::common::agentkit::{FakeAgentKit, Reply};
use crate::common::{Backend, TestServer};
use opscore::config::DispatchTarget;
use opscore::domain::workflow::Backoff;
use reqwest::StatusCode;
use serde_json::{json, Value};

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

fn now() -> String {
    chrono::Utc::now().to_rfc3339()
}

async fn trigger(s: &TestServer, agent: &str, body: Value) -> (StatusCode, Value) {
    let r = s
        .post(&format!("/v1/opscore/agent/{agent}/workflow"))
        .json(&body)
        .send()
        .await
        .unwrap();
    (r.status(), r.json().await.unwrap_or(Value::Null))
}

fn status_is(want: &'static str) -> impl Fn(&Value) -> bool {
    move |v| v["status"] == want
}

async fn sample_workflow_completes(backend: Backend) {
    let kit = FakeAgentKit::start().await;
    let s = start(backend, &kit).await;
    s.register("a1").await;
    let (status, body) = trigger(
        &s,
        "a1",
        json!({"workflowDefinitionId": "sample_workflow_id", "initialPayload": {"x": 1},
               "agentId": "ignored", "context": {"also": "ignored"}}),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["message"], "Workflow triggered successfully");
    assert_eq!(body["workflowId"], "sample_workflow_id");
    let sid = body["sessionId"].as_str().unwrap().to_owned();

    let calls = kit.wait_calls(1, 10).await;
    let c = &calls[0];
    assert_eq!(c.agent_id, "a1");
    assert_eq!(c.body["senderId"], "opscore");
    assert_eq!(c.body["messageType"], "workflow_task");
    assert_eq!(c.body["payload"], json!({"x": 1}));
    assert_eq!(c.body["sessionContext"], json!({"sessionId": sid}));
    assert_eq!(c.body["task_name"], "First");
    assert_eq!(c.body["opscore_session_id"], sid.as_str());
    let run1 = c.body["opscore_task_id"].as_str().unwrap().to_owned();
    assert_eq!(c.idempotency_key, format!("{run1}:1"));

    let v = s.wait_session(&sid, status_is("running")).await;
    assert_eq!(v["tasks"][0]["status"], "dispatched");
    s.report_now("a1", "active", json!({})).await;
    let v = s.session(&sid).await;
    assert_eq!(v["tasks"][0]["status"], "running");
    assert!(v["tasks"][0]["startedAt"].is_string());
    s.report_now("a1", "idle", json!({"summary": "done 1"}))
        .await;

    let calls = kit.wait_calls(2, 10).await;
    assert_eq!(calls[1].body["payload"], json!({"value": 123}));
    assert_eq!(calls[1].body["task_name"], "Second");
    assert_ne!(calls[1].body["opscore_task_id"], run1.as_str());
    s.report_now("a1", "active", json!({})).await;
    s.report_now("a1", "finished", json!({"final": true})).await;

    let v = s.wait_session(&sid, status_is("completed")).await;
    assert_eq!(v["result"], json!({"final": true}));
    assert!(v["finishedAt"].is_string());
    let tasks = v["tasks"].as_array().unwrap();
    assert_eq!(tasks.len(), 2);
    assert_eq!(tasks[0]["result"], json!({"summary": "done 1"}));
    for t in tasks {
        assert_eq!(t["status"], "completed");
        assert_eq!(t["attempts"], 1);
    }
    assert_eq!(kit.calls().len(), 2, "no extra dispatches");
    s.stop().await;
}

async fn retry_then_success(backend: Backend) {
    let kit = FakeAgentKit::start().await;
    kit.script(&[Reply::Status(503), Reply::Status(500)]);
    let s = start(backend, &kit).await;
    s.register("a1").await;
    let (_, body) = trigger(
        &s,
        "a1",
        json!({"workflowDefinitionId": "sample_workflow_id"}),
    )
    .await;
    let sid = body["sessionId"].as_str().unwrap().to_owned();
    let calls = kit.wait_calls(3, 10).await;
    let run = calls[0].body["opscore_task_id"].as_str().unwrap();
    let keys: Vec<_> = calls.iter().map(|c| c.idempotency_key.clone()).collect();
    assert_eq!(
        keys,
        [format!("{run}:1"), format!("{run}:2"), format!("{run}:3")]
    );
    // With no initialPayload the first task gets its own parameters.
    assert_eq!(calls[2].body["payload"], json!({"message": "hi"}));
    let v = s
        .wait_session(&sid, |v| v["tasks"][0]["status"] == "dispatched")
        .await;
    assert_eq!(v["tasks"][0]["attempts"], 3);
    assert!(
        v["tasks"][0]["lastError"].as_str().unwrap().contains("500"),
        "{v}"
    );
    s.stop().await;
}

fn one_task(id: &str, extra: Value) -> Value {
    let mut task = json!({"taskId": "only", "name": "Only", "parameters": {"p": 1}});
    if let (Some(t), Some(e)) = (task.as_object_mut(), extra.as_object()) {
        t.extend(e.clone());
    }
    json!({"id": id, "name": id, "tasks": [task]})
}

async fn retries_exhausted_fail_the_session(backend: Backend) {
    let kit = FakeAgentKit::start().await;
    kit.script(&[Reply::Status(500), Reply::Status(502)]);
    let s = start(backend, &kit).await;
    s.register("a1").await;
    let (status, body) = trigger(
        &s,
        "a1",
        json!({"workflowDefinition": one_task("w_fail", json!({"maxRetries": 1}))}),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let sid = body["sessionId"].as_str().unwrap().to_owned();
    let v = s.wait_session(&sid, status_is("failed")).await;
    let err = v["error"].as_str().unwrap();
    assert!(
        err.contains("task only failed after 2 attempts") && err.contains("502"),
        "{err}"
    );
    assert_eq!(v["tasks"][0]["status"], "failed");
    assert_eq!(kit.calls().len(), 2);
    s.stop().await;
}

async fn client_errors_are_not_retried(backend: Backend) {
    let kit = FakeAgentKit::start().await;
    kit.script(&[Reply::Status(404)]);
    let s = start(backend, &kit).await;
    s.register("a1").await;
    let (_, body) = trigger(
        &s,
        "a1",
        json!({"workflowDefinitionId": "sample_workflow_id"}),
    )
    .await;
    let sid = body["sessionId"].as_str().unwrap().to_owned();
    let v = s.wait_session(&sid, status_is("failed")).await;
    assert!(
        v["error"].as_str().unwrap().contains("after 1 attempt:"),
        "{v}"
    );
    assert_eq!(kit.calls().len(), 1);
    s.stop().await;
}

async fn retry_after_and_429_are_honoured(backend: Backend) {
    let kit = FakeAgentKit::start().await;
    kit.script(&[Reply::RetryAfter(429, 1)]);
    let s = start(backend, &kit).await;
    s.register("a1").await;
    let (_, body) = trigger(
        &s,
        "a1",
        json!({"workflowDefinitionId": "sample_workflow_id"}),
    )
    .await;
    let sid = body["sessionId"].as_str().unwrap().to_owned();
    kit.wait_calls(1, 10).await;
    let v = s
        .wait_session(&sid, |v| v["tasks"][0]["status"] == "queued")
        .await;
    // The retry is due no earlier than Retry-After (1 s) after the refusal,
    // far beyond the 40-200 ms backoff this server is configured with.
    let due =
        chrono::DateTime::parse_from_rfc3339(v["tasks"][0]["dueAt"].as_str().unwrap()).unwrap();
    let wait = due.signed_duration_since(chrono::Utc::now());
    assert!(wait > chrono::Duration::milliseconds(500), "due in {wait}");
    kit.wait_calls(2, 10).await;
    s.stop().await;
}

async fn timeout_then_retry(backend: Backend) {
    let kit = FakeAgentKit::start().await;
    let s = start(backend, &kit).await;
    s.register("a1").await;
    let def = one_task("w_timeout", json!({"timeoutSeconds": 1, "maxRetries": 1}));
    let (_, body) = trigger(&s, "a1", json!({"workflowDefinition": def})).await;
    let sid = body["sessionId"].as_str().unwrap().to_owned();
    // The agent never answers the first attempt; the deadline passes and the
    // task is sent again.
    let calls = kit.wait_calls(2, 15).await;
    assert!(calls[1].idempotency_key.ends_with(":2"));
    // The reports below name no task: an `active` received after the
    // second attempt was sent starts it, then `idle` finishes it (a plain
    // `idle` alone is a heartbeat and finishes nothing).
    let v = s
        .wait_session(&sid, |v| {
            v["tasks"][0]["status"] == "dispatched" && v["tasks"][0]["attempts"] == 2
        })
        .await;
    assert!(
        v["tasks"][0]["lastError"]
            .as_str()
            .unwrap()
            .contains("timed out"),
        "{v}"
    );
    s.report_now("a1", "active", json!({})).await;
    s.report_now("a1", "idle", json!({"ok": true})).await;
    let v = s.wait_session(&sid, status_is("completed")).await;
    assert_eq!(v["tasks"][0]["attempts"], 2);
    s.stop().await;
}

async fn delay_seconds_holds_a_task_back(backend: Backend) {
    let kit = FakeAgentKit::start().await;
    let s = start(backend, &kit).await;
    s.register("a1").await;
    let def = one_task("w_delay", json!({"delaySeconds": 2}));
    let (_, body) = trigger(&s, "a1", json!({"workflowDefinition": def})).await;
    let sid = body["sessionId"].as_str().unwrap().to_owned();
    let v = s.session(&sid).await;
    assert_eq!(v["tasks"][0]["status"], "queued");
    let due =
        chrono::DateTime::parse_from_rfc3339(v["tasks"][0]["dueAt"].as_str().unwrap()).unwrap();
    let created = chrono::DateTime::parse_from_rfc3339(v["createdAt"].as_str().unwrap()).unwrap();
    assert_eq!(
        due.signed_duration_since(created),
        chrono::Duration::seconds(2)
    );
    let calls = kit.wait_calls(1, 10).await;
    assert_eq!(calls[0].body["opscore_session_id"], sid.as_str());
    let v = s
        .wait_session(&sid, |v| v["tasks"][0]["dispatchedAt"].is_string())
        .await;
    let sent =
        chrono::DateTime::parse_from_rfc3339(v["tasks"][0]["dispatchedAt"].as_str().unwrap())
            .unwrap();
    assert!(sent >= due, "dispatched at {sent}, due at {due}");
    s.stop().await;
}

async fn agent_error_fails_the_attempt(backend: Backend) {
    let kit = FakeAgentKit::start().await;
    let s = start(backend, &kit).await;
    s.register("a1").await;
    let (_, body) = trigger(
        &s,
        "a1",
        json!({"workflowDefinition": one_task("w_err", json!({"maxRetries": 0}))}),
    )
    .await;
    let sid = body["sessionId"].as_str().unwrap().to_owned();
    kit.wait_calls(1, 10).await;
    s.wait_session(&sid, status_is("running")).await;
    s.report_now("a1", "active", json!({})).await;
    s.report_now("a1", "error", json!({"reason": "model unavailable"}))
        .await;
    let v = s.wait_session(&sid, status_is("failed")).await;
    assert!(
        v["error"].as_str().unwrap().contains("model unavailable"),
        "{v}"
    );
    s.stop().await;
}

async fn cancel_mid_flight(backend: Backend) {
    let kit = FakeAgentKit::start().await;
    let s = start(backend, &kit).await;
    s.register("a1").await;
    let (_, body) = trigger(
        &s,
        "a1",
        json!({"workflowDefinitionId": "sample_workflow_id"}),
    )
    .await;
    let sid = body["sessionId"].as_str().unwrap().to_owned();
    kit.wait_calls(1, 10).await;
    s.wait_session(&sid, status_is("running")).await;
    s.report_now("a1", "active", json!({})).await;
    for _ in 0..2 {
        let r = s
            .post(&format!("/v1/opscore/sessions/{sid}/cancel"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["status"], "cancelled");
        assert_eq!(v["tasks"][0]["status"], "cancelled");
    }
    // The agent finishes the task it had; nothing further is dispatched.
    s.report_now("a1", "idle", json!({})).await;
    // A second session proves the dispatcher is alive and past the first.
    let (_, body) = trigger(
        &s,
        "a1",
        json!({"workflowDefinition": one_task("w_after", json!({}))}),
    )
    .await;
    let calls = kit.wait_calls(2, 10).await;
    assert_eq!(calls[1].body["opscore_session_id"], body["sessionId"]);
    assert_eq!(calls.len(), 2);
    assert_eq!(s.session(&sid).await["status"], "cancelled");
    let r = s
        .post("/v1/opscore/sessions/nope/cancel")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["code"], "session_not_found");
    s.stop().await;
}

async fn late_and_duplicate_reports_change_nothing(backend: Backend) {
    let kit = FakeAgentKit::start().await;
    let s = start(backend, &kit).await;
    s.register("a1").await;
    let (_, body) = trigger(
        &s,
        "a1",
        json!({"workflowDefinitionId": "sample_workflow_id"}),
    )
    .await;
    let sid = body["sessionId"].as_str().unwrap().to_owned();
    let calls = kit.wait_calls(1, 10).await;
    let run1 = calls[0].body["opscore_task_id"]
        .as_str()
        .unwrap()
        .to_owned();
    s.wait_session(&sid, status_is("running")).await;
    s.report_now("a1", "idle", json!({"taskId": run1, "n": 1}))
        .await;
    kit.wait_calls(2, 10).await;
    // A duplicate completion and an error for the finished attempt.
    s.report_now("a1", "idle", json!({"taskId": run1, "n": 2}))
        .await;
    s.report_now("a1", "error", json!({"taskId": run1})).await;
    // The second task's 202 may still be on its way to being recorded.
    let v = s
        .wait_session(&sid, |v| v["tasks"][1]["status"] == "dispatched")
        .await;
    assert_eq!(v["tasks"][0]["status"], "completed");
    assert_eq!(v["tasks"][0]["result"], json!({"taskId": run1, "n": 1}));
    assert_eq!(v["status"], "running");
    s.stop().await;
}

async fn idle_heartbeat_from_before_dispatch_is_not_completion(backend: Backend) {
    let kit = FakeAgentKit::start().await;
    let s = start(backend, &kit).await;
    s.register("a1").await;
    let before = now();
    let (_, body) = trigger(
        &s,
        "a1",
        json!({"workflowDefinitionId": "sample_workflow_id"}),
    )
    .await;
    let sid = body["sessionId"].as_str().unwrap().to_owned();
    kit.wait_calls(1, 10).await;
    s.wait_session(&sid, status_is("running")).await;
    let r = s
        .post("/v1/opscore/agent/a1/state")
        .json(&json!({"agentId": "a1", "timestamp": before, "state": "idle"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let v = s.session(&sid).await;
    assert_eq!(v["tasks"][0]["status"], "dispatched", "{v}");
    s.stop().await;
}

async fn heartbeat_during_a_retry_send_is_not_completion(backend: Backend) {
    let kit = FakeAgentKit::start().await;
    kit.script(&[Reply::Status(202), Reply::SlowAccept(1500)]);
    let s = start(backend, &kit).await;
    s.register("a1").await;
    let def = one_task("w_retry_hb", json!({"maxRetries": 1}));
    let (_, body) = trigger(&s, "a1", json!({"workflowDefinition": def})).await;
    let sid = body["sessionId"].as_str().unwrap().to_owned();
    kit.wait_calls(1, 10).await;
    s.wait_session(&sid, status_is("running")).await;
    s.report_now("a1", "active", json!({})).await;
    s.report_now("a1", "error", json!({})).await;
    s.report_now("a1", "idle", json!({})).await;
    // The retry is on its way (the framework holds it); a plain idle
    // heartbeat now is not about it, whatever the first attempt's send time.
    kit.wait_calls(2, 10).await;
    s.report_now("a1", "idle", json!({})).await;
    let v = s.session(&sid).await;
    assert_ne!(v["tasks"][0]["status"], "completed", "{v}");
    assert_eq!(v["tasks"][0]["attempts"], 2);
    let v = s
        .wait_session(&sid, |v| v["tasks"][0]["status"] == "dispatched")
        .await;
    assert_eq!(v["status"], "running");
    s.stop().await;
}

async fn definitions_api(backend: Backend) {
    let kit = FakeAgentKit::start().await;
    let s = start(backend, &kit).await;
    let def = one_task("w_api", json!({}));
    let r = s
        .post("/v1/opscore/workflows")
        .json(&def)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let stored: Value = r.json().await.unwrap();
    assert_eq!(
        stored["tasks"][0]["maxRetries"], 3,
        "defaults are filled in"
    );
    let r = s
        .post("/v1/opscore/workflows")
        .json(&def)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK, "identical re-create is a no-op");
    let r = s
        .post("/v1/opscore/workflows")
        .json(&one_task("w_api", json!({"maxRetries": 5})))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        StatusCode::CREATED,
        "a changed definition is the next revision (docs/api.md §3.1)"
    );
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["revision"], 2);
    let yaml = "id: w_yaml\nname: Y\ntasks:\n  - taskId: a\n    nextTaskId: b\n  - taskId: b\n";
    let r = s
        .post("/v1/opscore/workflows")
        .header("content-type", "application/yaml")
        .body(yaml)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED, "{:?}", r.text().await);
    let list: Value = s
        .get("/v1/opscore/workflows")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let ids: Vec<_> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids, ["sample_workflow_id", "w_api", "w_yaml"]);
    let r = s.get("/v1/opscore/workflows/w_yaml").send().await.unwrap();
    assert_eq!(
        r.json::<Value>().await.unwrap()["tasks"][0]["nextTaskId"],
        "b"
    );

    // In use by an unfinished session: cannot be deleted.
    s.register("a1").await;
    s.report("a1", "busy", &now()).await;
    let (status, body) = trigger(&s, "a1", json!({"workflowDefinitionId": "w_api"})).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let r = s
        .client
        .delete(s.url("/v1/opscore/workflows/w_api"))
        .bearer_auth(common::KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CONFLICT);
    let sid = body["sessionId"].as_str().unwrap();
    s.post(&format!("/v1/opscore/sessions/{sid}/cancel"))
        .send()
        .await
        .unwrap();
    let r = s
        .client
        .delete(s.url("/v1/opscore/workflows/w_api"))
        .bearer_auth(common::KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let r = s.get("/v1/opscore/workflows/w_api").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    // The cancelled session still shows what it ran.
    assert_eq!(s.session(sid).await["workflowId"], "w_api");
    assert!(kit.calls().is_empty(), "a busy agent gets no task");
    s.stop().await;
}

async fn invalid_triggers_and_definitions_are_refused(backend: Backend) {
    let kit = FakeAgentKit::start().await;
    let s = start(backend, &kit).await;
    s.register("a1").await;
    let cycle = json!({"id": "w_cycle", "tasks": [{"taskId": "a", "nextTaskId": "b"}, {"taskId": "b", "nextTaskId": "a"}]});
    let r = s
        .post("/v1/opscore/workflows")
        .json(&cycle)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let v: Value = r.json().await.unwrap();
    assert!(v["detail"].as_str().unwrap().contains("cycle"), "{v}");

    let cases = [
        (
            json!({}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        ),
        (
            json!({"workflowDefinitionId": "sample_workflow_id", "workflowDefinition": one_task("x", json!({}))}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        ),
        (
            json!({"workflowDefinition": cycle}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        ),
        (
            json!({"workflowDefinition": {"id": "w_dangling", "tasks": [{"taskId": "a", "nextTaskId": "zz"}]}}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        ),
        (
            json!({"workflowDefinitionId": "sample_workflow_id", "initialPayload": [1]}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        ),
        (
            json!({"workflowDefinitionId": "no_such"}),
            StatusCode::NOT_FOUND,
            "not_found",
        ),
    ];
    for (body, status, code) in cases {
        let (got, v) = trigger(&s, "a1", body.clone()).await;
        assert_eq!(got, status, "{body} -> {v}");
        assert_eq!(v["code"], code, "{body} -> {v}");
    }
    let (got, v) = trigger(
        &s,
        "ghost",
        json!({"workflowDefinition": one_task("w_ghost", json!({}))}),
    )
    .await;
    assert_eq!(got, StatusCode::NOT_FOUND);
    assert_eq!(v["code"], "agent_not_found");
    // Nothing was stored by the refused triggers.
    for id in ["w_cycle", "w_dangling", "w_ghost", "x"] {
        let r = s
            .get(&format!("/v1/opscore/workflows/{id}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::NOT_FOUND, "{id}");
    }
    let r = s.get("/v1/opscore/agent/a1/sessions").send().await.unwrap();
    assert_eq!(r.json::<Value>().await.unwrap()["items"], json!([]));

    // An inline definition is stored; a different one under its id runs as
    // sent and leaves the stored one alone (docs/api.md §1.4).
    let (got, _) = trigger(
        &s,
        "a1",
        json!({"workflowDefinition": one_task("w_inline", json!({}))}),
    )
    .await;
    assert_eq!(got, StatusCode::ACCEPTED);
    assert_eq!(
        s.get("/v1/opscore/workflows/w_inline")
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
    let (got, v) = trigger(
        &s,
        "a1",
        json!({"workflowDefinition": one_task("w_inline", json!({"maxRetries": 9}))}),
    )
    .await;
    assert_eq!(got, StatusCode::ACCEPTED, "{v}");
    let ran = s.session(v["sessionId"].as_str().unwrap()).await;
    assert_eq!(ran["tasks"][0]["maxRetries"], 9, "{ran}");
    let stored: Value = s
        .get("/v1/opscore/workflows/w_inline")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(stored["tasks"][0]["maxRetries"], 3, "{stored}");

    // No tasks: accepted and completed at once.
    let (got, v) = trigger(
        &s,
        "a1",
        json!({"workflowDefinition": {"id": "w_empty", "tasks": []}}),
    )
    .await;
    assert_eq!(got, StatusCode::ACCEPTED);
    let v = s.session(v["sessionId"].as_str().unwrap()).await;
    assert_eq!(v["status"], "completed");
    s.stop().await;
}

async fn sessions_are_listed_per_agent(backend: Backend) {
    let kit = FakeAgentKit::start().await;
    let s = start(backend, &kit).await;
    s.register("a1").await;
    s.report("a1", "busy", &now()).await;
    let mut ids = Vec::new();
    for _ in 0..5 {
        let (_, v) = trigger(
            &s,
            "a1",
            json!({"workflowDefinitionId": "sample_workflow_id"}),
        )
        .await;
        ids.push(v["sessionId"].as_str().unwrap().to_owned());
    }
    s.post(&format!("/v1/opscore/sessions/{}/cancel", ids[1]))
        .send()
        .await
        .unwrap();
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/v1/opscore/agent/a1/sessions?limit=2&cursor={c}"),
            None => "/v1/opscore/agent/a1/sessions?limit=2".to_owned(),
        };
        let v: Value = s.get(&path).send().await.unwrap().json().await.unwrap();
        seen.extend(
            v["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|i| i["sessionId"].as_str().unwrap().to_owned()),
        );
        match v["nextCursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    let mut newest_first = ids.clone();
    newest_first.reverse();
    assert_eq!(seen, newest_first);
    let v: Value = s
        .get("/v1/opscore/agent/a1/sessions?status=cancelled")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["items"].as_array().unwrap().len(), 1);
    assert_eq!(v["items"][0]["sessionId"], ids[1].as_str());
    let r = s
        .get("/v1/opscore/agent/a1/sessions?status=bogus")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let r = s
        .get("/v1/opscore/agent/ghost/sessions")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    s.stop().await;
}

async fn direct_mode_sends_to_the_contact_endpoint(backend: Backend) {
    let kit = FakeAgentKit::start().await;
    let s = TestServer::start_with(backend, |c| {
        c.dispatch.target = DispatchTarget::Direct;
        c.dispatch.poll_interval = Duration::from_millis(20);
    })
    .await;
    let endpoint = format!("{}/direct/a1", kit.base.trim_end_matches("/v1"));
    let body = json!({"event_type": "REGISTER", "agent_details": {"agentId": "a1", "agentName": "A", "version": "1",
        "contactEndpoint": endpoint}});
    let r = s
        .post("/v1/opscore/internal/agent/notify")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let (_, v) = trigger(
        &s,
        "a1",
        json!({"workflowDefinition": one_task("w_direct", json!({}))}),
    )
    .await;
    let calls = kit.wait_calls(1, 10).await;
    assert_eq!(calls[0].body["opscore_session_id"], v["sessionId"]);
    assert_eq!(calls[0].body["payload"], json!({"p": 1}));
    s.stop().await;
}

async fn queued_task_survives_restart(backend: Backend) {
    let kit = FakeAgentKit::start().await;
    // First life: the dispatcher is off, so the task stays queued.
    let s = TestServer::start_with(backend, |c| c.dispatch.enabled = false).await;
    s.register("a1").await;
    let (_, v) = trigger(
        &s,
        "a1",
        json!({"workflowDefinition": one_task("w_restart", json!({}))}),
    )
    .await;
    let sid = v["sessionId"].as_str().unwrap().to_owned();
    let db = s.stop().await;
    let mut config = common::test_config(&db);
    config.dispatch.target = DispatchTarget::AgentKit(kit.base.parse().unwrap());
    config.dispatch.poll_interval = Duration::from_millis(20);
    let s = TestServer::start_on(db, config).await;
    let calls = kit.wait_calls(1, 10).await;
    assert_eq!(calls[0].body["opscore_session_id"], sid.as_str());
    s.stop().await;
}

async fn queued_task_survives_sigkill(backend: Backend) {
    let kit = FakeAgentKit::start().await;
    let db = common::TestDb::new(backend).await;
    let p = common::ServerProcess::spawn_with(
        &db.url,
        db.dir.path(),
        &[("OPSCORE_DISPATCHER", "false")],
    )
    .await;
    let client = reqwest::Client::new();
    common::register_at(&client, &p.base, "a1", &["x"]).await;
    let r = client
        .post(format!("{}/v1/opscore/agent/a1/workflow", p.base))
        .bearer_auth(common::KEY)
        .json(&json!({"workflowDefinition": one_task("w_kill", json!({}))}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let sid = r.json::<Value>().await.unwrap()["sessionId"]
        .as_str()
        .unwrap()
        .to_owned();
    p.kill().await;
    let p = common::ServerProcess::spawn_with(
        &db.url,
        db.dir.path(),
        &[
            ("AGENTKIT_API_URL", kit.base.as_str()),
            ("OPSCORE_DISPATCH_POLL_MS", "20"),
        ],
    )
    .await;
    let calls = kit.wait_calls(1, 15).await;
    assert_eq!(calls[0].body["opscore_session_id"], sid.as_str());
    p.kill().await;
}

async fn bad_definition_file_stops_startup(backend: Backend) {
    let db = common::TestDb::new(backend).await;
    let dir = db.dir.path().join("wf");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("good.json"),
        one_task("w_good", json!({})).to_string(),
    )
    .unwrap();
    std::fs::write(
        dir.join("broken.yaml"),
        "id: w\ntasks: [ {taskId: a, nextTaskId: a} ]\n",
    )
    .unwrap();
    let mut config = common::test_config(&db);
    config.workflows_dir = dir;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let err = opscore::serve(config, listener, tokio_util::sync::CancellationToken::new())
        .await
        .expect_err("startup must fail");
    let msg = format!("{err:#}");
    assert!(
        msg.contains("broken.yaml") && msg.contains("cycle"),
        "{msg}"
    );
}

backend_tests!(
    sample_workflow_completes,
    retry_then_success,
    retries_exhausted_fail_the_session,
    client_errors_are_not_retried,
    retry_after_and_429_are_honoured,
    timeout_then_retry,
    delay_seconds_holds_a_task_back,
    agent_error_fails_the_attempt,
    cancel_mid_flight,
    late_and_duplicate_reports_change_nothing,
    idle_heartbeat_from_before_dispatch_is_not_completion,
    heartbeat_during_a_retry_send_is_not_completion,
    definitions_api,
    invalid_triggers_and_definitions_are_refused,
    sessions_are_listed_per_agent,
    direct_mode_sends_to_the_contact_endpoint,
    queued_task_survives_restart,
    queued_task_survives_sigkill,
    bad_definition_file_stops_startup,
);
