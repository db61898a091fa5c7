//! Definition revisions (docs/api.md §3.1): a changed definition under a
//! stored id is its next revision, sessions run the revision they started
//! with to the end, and definition files at startup follow the same rule.
//! Every test runs on SQLite and on PostgreSQL.

use crate::common;

use std::path::PathBuf;
use std::time::Duration;

use crate::common::agentkit::FakeAgentKit;
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

/// A two-task chain `a` → `b` whose task names end in `tag`.
fn chain(id: &str, tag: &str) -> Value {
    json!({"id": id, "name": id, "tasks": [
        {"taskId": "a", "name": format!("A{tag}"), "nextTaskId": "b"},
        {"taskId": "b", "name": format!("B{tag}"), "parameters": {"tag": tag}},
    ]})
}

async fn post_definition(s: &TestServer, def: &Value) -> (StatusCode, Value) {
    let r = s
        .post("/v1/opscore/workflows")
        .json(def)
        .send()
        .await
        .unwrap();
    (r.status(), r.json().await.unwrap_or(Value::Null))
}

async fn get(s: &TestServer, path: &str) -> (StatusCode, Value) {
    let r = s.get(path).send().await.unwrap();
    (r.status(), r.json().await.unwrap_or(Value::Null))
}

fn revisions_of(page: &Value) -> Vec<i64> {
    page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["revision"].as_i64().unwrap())
        .collect()
}

async fn changed_definitions_are_new_revisions(backend: Backend) {
    let kit = FakeAgentKit::start().await;
    let s = start(backend, &kit).await;
    let (status, v) = post_definition(&s, &chain("w_rev", "1")).await;
    assert_eq!(status, StatusCode::CREATED, "{v}");
    assert_eq!(v["revision"], 1);
    assert!(v["storedAt"].is_string(), "{v}");
    // Identical: nothing new.
    let (status, v) = post_definition(&s, &chain("w_rev", "1")).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v["revision"], 1);
    // Different content under the same id: the next revision, not a 409.
    let (status, v) = post_definition(&s, &chain("w_rev", "2")).await;
    assert_eq!(status, StatusCode::CREATED, "{v}");
    assert_eq!(v["revision"], 2);
    assert_eq!(v["tasks"][1]["name"], "B2");
    // The author's `version` label is left alone.
    let mut labelled = chain("w_rev", "2");
    labelled["version"] = json!("7.0");
    let (status, v) = post_definition(&s, &labelled).await;
    assert_eq!(
        (status, v["revision"].as_i64()),
        (StatusCode::CREATED, Some(3))
    );
    assert_eq!(v["version"], "7.0");

    let (status, v) = get(&s, "/v1/opscore/workflows/w_rev").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(v["revision"], 3);
    assert_eq!(v["version"], "7.0");
    let (_, list) = get(&s, "/v1/opscore/workflows").await;
    let listed = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["id"] == "w_rev")
        .cloned()
        .unwrap();
    assert_eq!(listed["revision"], 3);

    // Every revision, newest first, paged.
    let (status, page) = get(&s, "/v1/opscore/workflows/w_rev/revisions").await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert_eq!(revisions_of(&page), [3, 2, 1]);
    assert_eq!(page["items"][2]["tasks"][1]["name"], "B1");
    assert!(page["nextCursor"].is_null());
    let mut seen = Vec::new();
    let mut path = "/v1/opscore/workflows/w_rev/revisions?limit=2".to_owned();
    loop {
        let (status, page) = get(&s, &path).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        seen.extend(revisions_of(&page));
        match page["nextCursor"].as_str() {
            Some(c) => path = format!("/v1/opscore/workflows/w_rev/revisions?limit=2&cursor={c}"),
            None => break,
        }
    }
    assert_eq!(seen, [3, 2, 1]);
    let (status, v) = get(&s, "/v1/opscore/workflows/w_rev/revisions?cursor=zz").await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(v["errors"][0]["field"], "cursor", "{v}");
    let (status, v) = get(&s, "/v1/opscore/workflows/w_rev/revisions?limit=0").await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(v["errors"][0]["field"], "limit", "{v}");
    let (status, _) = get(&s, "/v1/opscore/workflows/ghost/revisions").await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // Deleting: the definition is gone, its history stays, and storing
    // the id again continues the numbering.
    let r = s
        .client
        .delete(s.url("/v1/opscore/workflows/w_rev"))
        .bearer_auth(common::KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let (status, _) = get(&s, "/v1/opscore/workflows/w_rev").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (_, page) = get(&s, "/v1/opscore/workflows/w_rev/revisions").await;
    assert_eq!(revisions_of(&page), [3, 2, 1]);
    let (status, v) = post_definition(&s, &chain("w_rev", "1")).await;
    assert_eq!(
        (status, v["revision"].as_i64()),
        (StatusCode::CREATED, Some(4))
    );

    // Audited: created, then updated for each new revision.
    let (_, audit) = get(&s, "/v1/opscore/audit?target=w_rev").await;
    let kinds: Vec<&str> = audit["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        [
            "audit.workflow.created",
            "audit.workflow.deleted",
            "audit.workflow.updated",
            "audit.workflow.updated",
            "audit.workflow.created",
        ]
    );
    assert_eq!(audit["items"][2]["details"]["revision"], 3);
    s.stop().await;
}

async fn a_session_runs_its_own_revision(backend: Backend) {
    let kit = FakeAgentKit::start().await;
    let s = start(backend, &kit).await;
    s.register("a1").await;
    post_definition(&s, &chain("w_run", "1")).await;
    let sid = s
        .trigger("a1", json!({"workflowDefinitionId": "w_run"}))
        .await;
    assert_eq!(s.session(&sid).await["revision"], 1);
    let calls = kit.wait_calls(1, 10).await;
    assert_eq!(calls[0].body["task_name"], "A1");

    // A new revision is stored while the session runs its first task.
    let mut rev2 = chain("w_run", "2");
    rev2["tasks"][1]["nextTaskId"] = json!("c");
    rev2["tasks"]
        .as_array_mut()
        .unwrap()
        .push(json!({"taskId": "c", "name": "C2"}));
    let (status, v) = post_definition(&s, &rev2).await;
    assert_eq!(
        (status, v["revision"].as_i64()),
        (StatusCode::CREATED, Some(2))
    );

    s.report_now("a1", "active", json!({})).await;
    s.report_now("a1", "idle", json!({})).await;
    let calls = kit.wait_calls(2, 10).await;
    assert_eq!(
        calls[1].body["task_name"], "B1",
        "the session's own revision"
    );
    assert_eq!(calls[1].body["payload"], json!({"tag": "1"}));
    s.report_now("a1", "active", json!({})).await;
    s.report_now("a1", "idle", json!({})).await;
    let v = s.wait_session(&sid, |v| v["status"] == "completed").await;
    assert_eq!(v["revision"], 1);
    let names: Vec<&str> = v["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["A1", "B1"], "no task of revision 2");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(kit.calls().len(), 2);

    // A new session runs the newest revision.
    let sid2 = s
        .trigger("a1", json!({"workflowDefinitionId": "w_run"}))
        .await;
    assert_eq!(s.session(&sid2).await["revision"], 2);
    s.post(&format!("/v1/opscore/sessions/{sid2}/cancel"))
        .send()
        .await
        .unwrap();
    // Inline: identical to a stored revision records it; different from
    // every one records none, runs as sent, and stores nothing.
    let sid3 = s
        .trigger("a1", json!({"workflowDefinition": chain("w_run", "1")}))
        .await;
    assert_eq!(s.session(&sid3).await["revision"], 1);
    s.post(&format!("/v1/opscore/sessions/{sid3}/cancel"))
        .send()
        .await
        .unwrap();
    let sid4 = s
        .trigger("a1", json!({"workflowDefinition": chain("w_run", "9")}))
        .await;
    let v = s.session(&sid4).await;
    assert!(v["revision"].is_null(), "{v}");
    assert_eq!(v["tasks"][0]["name"], "A9");
    let (_, page) = get(&s, "/v1/opscore/workflows/w_run/revisions").await;
    assert_eq!(revisions_of(&page), [2, 1]);
    // Inline under a new id: stored as its revision 1.
    let sid5 = s
        .trigger("a1", json!({"workflowDefinition": chain("w_new", "1")}))
        .await;
    assert_eq!(s.session(&sid5).await["revision"], 1);
    let (_, v) = get(&s, "/v1/opscore/workflows/w_new").await;
    assert_eq!(v["revision"], 1);
    s.stop().await;
}

async fn definition_files_become_revisions(backend: Backend) {
    let db = common::TestDb::new(backend).await;
    let dir = db.dir.path().join("wf");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("w.json"), chain("w_file", "1").to_string()).unwrap();
    let mut config = common::test_config(&db);
    config.workflows_dir = dir.clone();
    let s = TestServer::start_on(db, config.clone()).await;
    s.register("a1").await;
    s.report_now("a1", "busy", json!({})).await;
    let sid = s
        .trigger("a1", json!({"workflowDefinitionId": "w_file"}))
        .await;
    let db = s.stop().await;
    // The same file again: nothing new; a changed file: the next revision.
    let s = TestServer::start_on(db, config.clone()).await;
    let db = s.stop().await;
    std::fs::write(dir.join("w.json"), chain("w_file", "2").to_string()).unwrap();
    let s = TestServer::start_on(db, config).await;
    let (_, v) = get(&s, "/v1/opscore/workflows/w_file").await;
    assert_eq!(v["revision"], 2);
    assert_eq!(v["tasks"][0]["name"], "A2");
    let (_, page) = get(&s, "/v1/opscore/workflows/w_file/revisions").await;
    assert_eq!(revisions_of(&page), [2, 1]);
    let v = s.session(&sid).await;
    assert_eq!(v["revision"], 1);
    assert_eq!(v["tasks"][0]["name"], "A1");
    s.stop().await;
}

backend_tests!(
    changed_definitions_are_new_revisions,
    a_session_runs_its_own_revision,
    definition_files_become_revisions,
);
