//! Sessions across the fleet (docs/api.md §3.2: listing, filters, counts)
//! and running a failed or cancelled session again (§3.7), over real HTTP
//! against the scripted fake AgentKit. Every test runs on SQLite and on
//! PostgreSQL.

use crate::common;

use std::path::PathBuf;
use std::time::Duration;

use crate::common::agentkit::{FakeAgentKit, Reply};
use crate::common::{Backend, TestServer};
use opscore::config::DispatchTarget;
use reqwest::StatusCode;
use serde_json::{json, Value};

async fn start(backend: Backend, kit: &FakeAgentKit) -> TestServer {
    let url: url::Url = kit.base.parse().expect("fake url");
    TestServer::start_with(backend, move |c| {
        c.dispatch.target = DispatchTarget::AgentKit(url);
        c.dispatch.poll_interval = Duration::from_millis(20);
        c.workflows_dir = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/workflows"));
    })
    .await
}

async fn get(s: &TestServer, path: &str) -> (StatusCode, Value) {
    let r = s.get(path).send().await.unwrap();
    (r.status(), r.json().await.unwrap_or(Value::Null))
}

async fn post(s: &TestServer, path: &str) -> (StatusCode, Value) {
    let r = s.post(path).send().await.unwrap();
    (r.status(), r.json().await.unwrap_or(Value::Null))
}

fn ids(page: &Value) -> Vec<String> {
    page["items"]
        .as_array()
        .unwrap_or_else(|| panic!("not a page: {page}"))
        .iter()
        .map(|i| i["sessionId"].as_str().unwrap().to_owned())
        .collect()
}

/// A definition of the tasks `ids`, chained in order, each with `extra`.
fn chain(id: &str, tasks: &[&str], extra: Value) -> Value {
    let tasks: Vec<Value> = tasks
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let mut task = json!({"taskId": t, "name": t.to_uppercase(),
                                  "nextTaskId": tasks.get(i + 1)});
            if let (Some(o), Some(e)) = (task.as_object_mut(), extra.as_object()) {
                o.extend(e.clone());
            }
            task
        })
        .collect();
    json!({"id": id, "name": id, "tasks": tasks})
}

async fn sessions_are_listed_across_the_fleet(backend: Backend) {
    let kit = FakeAgentKit::start().await;
    let s = start(backend, &kit).await;
    for a in ["a1", "a2"] {
        s.register(a).await;
        // Busy agents: nothing is sent, every session stays put.
        s.report_now(a, "busy", json!({})).await;
    }
    let t0 = chrono::Utc::now();
    let mut made = Vec::new();
    for (agent, wf) in [
        ("a1", "sample_workflow_id"),
        ("a2", "sample_workflow_id"),
        ("a1", "w_other"),
        ("a2", "w_other"),
        ("a1", "sample_workflow_id"),
    ] {
        let body = if wf == "w_other" {
            json!({"workflowDefinition": chain("w_other", &["x"], json!({}))})
        } else {
            json!({"workflowDefinitionId": wf})
        };
        made.push(s.trigger(agent, body).await);
    }
    let t_mid = chrono::Utc::now();
    tokio::time::sleep(Duration::from_millis(20)).await;
    let last = s
        .trigger("a2", json!({"workflowDefinitionId": "sample_workflow_id"}))
        .await;
    made.push(last.clone());
    let (status, _) = post(&s, &format!("/v1/opscore/sessions/{}/cancel", made[1])).await;
    assert_eq!(status, StatusCode::OK);

    // Everything, newest first, without tasks.
    let (status, page) = get(&s, "/v1/opscore/sessions").await;
    assert_eq!(status, StatusCode::OK, "{page}");
    let mut newest_first = made.clone();
    newest_first.reverse();
    assert_eq!(ids(&page), newest_first);
    assert!(page["nextCursor"].is_null());
    assert!(page["items"][0].get("tasks").is_none(), "{page}");
    assert_eq!(page["items"][0]["revision"], 1);

    // Paging.
    let mut seen = Vec::new();
    let mut path = "/v1/opscore/sessions?limit=4".to_owned();
    loop {
        let (status, page) = get(&s, &path).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        seen.extend(ids(&page));
        match page["nextCursor"].as_str() {
            Some(c) => path = format!("/v1/opscore/sessions?limit=4&cursor={c}"),
            None => break,
        }
    }
    assert_eq!(seen, newest_first);

    // Filters, alone and together.
    let want =
        |idx: &[usize]| -> Vec<String> { idx.iter().rev().map(|&i| made[i].clone()).collect() };
    let (_, page) = get(&s, "/v1/opscore/sessions?status=cancelled").await;
    assert_eq!(ids(&page), want(&[1]));
    let (_, page) = get(&s, "/v1/opscore/sessions?workflowId=w_other").await;
    assert_eq!(ids(&page), want(&[2, 3]));
    let (_, page) = get(&s, "/v1/opscore/sessions?agentId=a1").await;
    assert_eq!(ids(&page), want(&[0, 2, 4]));
    let (_, page) = get(
        &s,
        "/v1/opscore/sessions?agentId=a2&workflowId=sample_workflow_id&status=started",
    )
    .await;
    assert_eq!(ids(&page), want(&[5]));
    let since = urlencode(&t_mid.to_rfc3339());
    let (_, page) = get(&s, &format!("/v1/opscore/sessions?since={since}")).await;
    assert_eq!(ids(&page), want(&[5]));
    let (_, page) = get(&s, &format!("/v1/opscore/sessions?until={since}")).await;
    assert_eq!(ids(&page), want(&[0, 1, 2, 3, 4]));
    let before = urlencode(&t0.to_rfc3339());
    let (_, page) = get(&s, &format!("/v1/opscore/sessions?until={before}")).await;
    assert_eq!(ids(&page), Vec::<String>::new());
    let (_, page) = get(&s, "/v1/opscore/sessions?agentId=ghost").await;
    assert_eq!(ids(&page), Vec::<String>::new());

    // Counts by status, under the same filters (status aside).
    let (status, c) = get(&s, "/v1/opscore/sessions/counts").await;
    assert_eq!(status, StatusCode::OK, "{c}");
    assert_eq!(
        c,
        json!({"started": 5, "running": 0, "completed": 0, "failed": 0, "cancelled": 1, "total": 6})
    );
    let (_, c) = get(&s, "/v1/opscore/sessions/counts?agentId=a2").await;
    assert_eq!(
        (c["started"].as_i64(), c["cancelled"].as_i64()),
        (Some(2), Some(1))
    );
    let (_, c) = get(&s, "/v1/opscore/sessions/counts?workflowId=w_other").await;
    assert_eq!(c["total"], 2);

    // Bad values: 422 naming each.
    for (query, field) in [
        ("status=bogus", "status"),
        ("limit=0", "limit"),
        ("limit=1001", "limit"),
        ("limit=x", "limit"),
        ("cursor=nothex", "cursor"),
        ("since=yesterday", "since"),
        ("until=2026-13-01T00:00:00Z", "until"),
        ("workflowId=", "workflowId"),
        ("agentId=", "agentId"),
    ] {
        let resp = common::send(s.get(&format!("/v1/opscore/sessions?{query}"))).await;
        common::assert_invalid_field(&resp, field);
    }
    let (status, v) = get(&s, "/v1/opscore/sessions/counts?since=soon").await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{v}");

    // The per-agent listing still works.
    let (_, page) = get(&s, "/v1/opscore/agent/a1/sessions").await;
    assert_eq!(ids(&page), want(&[0, 2, 4]));
    s.stop().await;
}

fn urlencode(s: &str) -> String {
    s.replace('+', "%2B").replace(':', "%3A")
}

async fn a_failed_session_runs_again_to_completion(backend: Backend) {
    let kit = FakeAgentKit::start().await;
    // The second task's first delivery fails for good (maxRetries 0).
    let s = start(backend, &kit).await;
    s.register("a1").await;
    let def = chain(
        "w_retry",
        &["one", "two", "three"],
        json!({"maxRetries": 0}),
    );
    let sid = s.trigger("a1", json!({"workflowDefinition": def})).await;
    kit.wait_calls(1, 10).await;
    kit.script(&[Reply::Status(500)]);
    s.report_now("a1", "active", json!({})).await;
    s.report_now("a1", "idle", json!({})).await;
    let v = s.wait_session(&sid, |v| v["status"] == "failed").await;
    assert!(
        v["error"].as_str().unwrap().contains("task two failed"),
        "{v}"
    );
    assert_eq!(kit.calls().len(), 2);
    let first_run = v["tasks"][0]["runId"].clone();
    let two_run = v["tasks"][1]["runId"].as_str().unwrap().to_owned();

    let (status, v) = post(&s, &format!("/v1/opscore/sessions/{sid}/retry")).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v["status"], "running");
    assert!(v["error"].is_null(), "{v}");
    assert!(v["finishedAt"].is_null(), "{v}");
    let tasks = v["tasks"].as_array().unwrap();
    // Every task has its run from the trigger on (§3.5): the third was
    // cancelled with the session and is queued again, behind the second.
    assert_eq!(tasks.len(), 3);
    assert_eq!(tasks[2]["status"], "queued", "{v}");
    assert_eq!(tasks[2]["waitingFor"], "dependencies", "{v}");
    assert_eq!(tasks[2]["attempts"], 0, "{v}");
    assert_eq!(tasks[0]["status"], "completed", "completed runs are kept");
    assert_eq!(tasks[0]["runId"], first_run);
    assert_eq!(tasks[1]["runId"], two_run.as_str());
    assert_eq!(tasks[1]["attempts"], 1, "attempts are kept");
    assert_eq!(tasks[1]["maxRetries"], 1, "a fresh budget: maxRetries more");
    assert!(
        tasks[1]["lastError"].as_str().unwrap().contains("500"),
        "{v}"
    );
    assert!(["queued", "dispatching", "dispatched"].contains(&tasks[1]["status"].as_str().unwrap()));

    // The failed task is sent again with the next attempt number; the
    // completed one is not sent again; the chain goes on.
    let calls = kit.wait_calls(3, 10).await;
    assert_eq!(calls[2].body["opscore_task_id"], two_run.as_str());
    assert_eq!(calls[2].idempotency_key, format!("{two_run}:2"));
    s.report_now("a1", "active", json!({})).await;
    s.report_now("a1", "idle", json!({})).await;
    let calls = kit.wait_calls(4, 10).await;
    assert_eq!(calls[3].body["task_name"], "THREE");
    s.report_now("a1", "active", json!({})).await;
    s.report_now("a1", "finished", json!({})).await;
    let v = s.wait_session(&sid, |v| v["status"] == "completed").await;
    assert_eq!(v["tasks"].as_array().unwrap().len(), 3);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(kit.calls().len(), 4, "nothing sent twice");

    // Only a failed or cancelled session runs again.
    let (status, v) = post(&s, &format!("/v1/opscore/sessions/{sid}/retry")).await;
    assert_eq!(status, StatusCode::CONFLICT, "{v}");
    assert_eq!(v["code"], "conflict");
    let (status, v) = post(
        &s,
        "/v1/opscore/sessions/0190a000-0000-7000-8000-000000000000/retry",
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{v}");

    // Audited, and on the feed as the status changes.
    let (_, audit) = get(&s, &format!("/v1/opscore/audit?target={sid}&kind=session")).await;
    let kinds: Vec<&str> = audit["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["audit.session.retried", "audit.session.triggered"]);
    assert_eq!(audit["items"][0]["details"], json!({"tasks": 2}));
    s.stop().await;
}

async fn a_cancelled_session_runs_again(backend: Backend) {
    let kit = FakeAgentKit::start().await;
    let s = start(backend, &kit).await;
    s.register("a1").await;
    s.report_now("a1", "busy", json!({})).await;
    let sid = s
        .trigger("a1", json!({"workflowDefinitionId": "sample_workflow_id"}))
        .await;
    // Not failed or cancelled yet: refused.
    let (status, _) = post(&s, &format!("/v1/opscore/sessions/{sid}/retry")).await;
    assert_eq!(status, StatusCode::CONFLICT);
    let (status, _) = post(&s, &format!("/v1/opscore/sessions/{sid}/cancel")).await;
    assert_eq!(status, StatusCode::OK);
    let (status, v) = post(&s, &format!("/v1/opscore/sessions/{sid}/retry")).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v["status"], "running");
    assert_eq!(v["tasks"][0]["status"], "queued");
    assert_eq!(v["tasks"][0]["attempts"], 0);
    assert!(kit.calls().is_empty());
    // The agent becomes free: the task goes out, and the chain completes.
    s.report_now("a1", "idle", json!({})).await;
    kit.wait_calls(1, 10).await;
    s.report_now("a1", "active", json!({})).await;
    s.report_now("a1", "idle", json!({})).await;
    kit.wait_calls(2, 10).await;
    s.report_now("a1", "active", json!({})).await;
    s.report_now("a1", "idle", json!({})).await;
    s.wait_session(&sid, |v| v["status"] == "completed").await;
    s.stop().await;
}

backend_tests!(
    sessions_are_listed_across_the_fleet,
    a_failed_session_runs_again_to_completion,
    a_cancelled_session_runs_again,
);
