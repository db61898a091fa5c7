//! Agents that report only when their state changes, as AgentKit's own
//! example agent does, keep getting tasks however long they stay quiet:
//! leases (staleness) are opt-in, per server or per agent, and only an agent
//! that holds one can go stale. Each test runs on both backends.
//!
//! "Quiet for ten minutes" is made without waiting: the agent registers and
//! reports, the server stops, its `last_seen_us` is moved ten minutes back in
//! the database, and the server starts again on the same data.

use crate::common;

use std::time::Duration;

use crate::common::agentkit::FakeAgentKit;
use crate::common::sse::Stream;
use crate::common::{Backend, TestDb, TestServer};
use opscore::config::{Config, DispatchTarget};
use reqwest::StatusCode;
use serde_json::{json, Value};

const QUIET_MICROS: i64 = 10 * 60 * 1_000_000;

/// A server dispatching through `kit`, with `adjust` applied on top of the
/// defaults.
fn config_for(db: &TestDb, kit: &FakeAgentKit, adjust: impl Fn(&mut Config)) -> Config {
    let mut c = common::test_config(db);
    c.dispatch.target = DispatchTarget::AgentKit(kit.base.parse().expect("kit url"));
    c.dispatch.poll_interval = Duration::from_millis(20);
    adjust(&mut c);
    c
}

/// Register `id` as AgentKit does and report `initializing` then `idle`,
/// then make it quiet for ten minutes; the server is running again on return.
async fn quiet_agent(
    backend: Backend,
    kit: &FakeAgentKit,
    id: &str,
    adjust: impl Fn(&mut Config) + Copy,
) -> TestServer {
    let db = TestDb::new(backend).await;
    let config = config_for(&db, kit, adjust);
    let s = TestServer::start_on(db, config).await;
    s.register(id).await;
    for state in ["initializing", "idle"] {
        let (status, body) = s.report(id, state, &chrono::Utc::now().to_rfc3339()).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    }
    let db = s.stop().await;
    backdate_last_seen(&db, id, QUIET_MICROS).await;
    let config = config_for(&db, kit, adjust);
    TestServer::start_on(db, config).await
}

/// Move an agent's `last_seen_us` back by `micros`, as if it had been silent
/// that long (the server must be stopped).
async fn backdate_last_seen(db: &TestDb, id: &str, micros: i64) {
    let n = db
        .execute(&format!(
            "UPDATE agents SET last_seen_us = last_seen_us - {micros} WHERE agent_id = '{id}'"
        ))
        .await;
    assert_eq!(n, 1, "agent {id} not found to backdate");
}

async fn agent(s: &TestServer, id: &str) -> Value {
    let r = s.get_json(&format!("/v1/opscore/agent/{id}")).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    r.body
}

async fn trigger_one_task(s: &TestServer, id: &str) -> String {
    let r = s
        .post(&format!("/v1/opscore/agent/{id}/workflow"))
        .json(&json!({"workflowDefinition": {"id": "one", "tasks": [{"taskId": "t1"}]}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let body: Value = r.json().await.unwrap();
    body["sessionId"].as_str().unwrap().to_owned()
}

/// Under default settings a report-on-change agent silent for ten minutes
/// is not stale, is announced as nothing on the feed, and its task goes out
/// within a second of the trigger.
async fn default_quiet_agent_gets_its_task(backend: Backend) {
    let kit = FakeAgentKit::start().await;
    let s = quiet_agent(backend, &kit, "q1", |_| {}).await;
    let mut feed = Stream::open(&s.base, "?kinds=agent.stale", None).await;
    let a = agent(&s, "q1").await;
    assert_eq!(a["stale"], false, "{a}");
    assert_eq!(a["ttlSeconds"], Value::Null, "{a}");
    assert_eq!(s.state("q1").await.1["stale"], false);
    trigger_one_task(&s, "q1").await;
    let calls = kit.wait_calls(1, 1).await;
    assert_eq!(calls[0].agent_id, "q1");
    assert!(
        feed.next(Duration::from_millis(1500)).await.is_none(),
        "a quiet agent without a lease was announced stale"
    );
}

/// The same steps with a 1-second lease turned on server-wide: stale, and
/// nothing is sent. This is what proves the default is what differs.
async fn server_wide_lease_makes_the_quiet_agent_stale(backend: Backend) {
    let kit = FakeAgentKit::start().await;
    let s = quiet_agent(backend, &kit, "q1", |c| {
        c.db.engine.liveness.ttl_secs = Some(1);
        c.db.engine.liveness.grace_secs = 0;
    })
    .await;
    let a = agent(&s, "q1").await;
    assert_eq!(
        (a["stale"].clone(), a["ttlSeconds"].clone()),
        (json!(true), json!(1))
    );
    trigger_one_task(&s, "q1").await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(kit.calls().is_empty(), "a stale agent was sent a task");
}

async fn put_lease(s: &TestServer, id: &str, body: Value, key: &str) -> common::Resp {
    common::send(
        s.client
            .put(s.url(&format!("/v1/opscore/agent/{id}/lease")))
            .bearer_auth(key)
            .json(&body),
    )
    .await
}

/// A lease turned on through the API makes the quiet agent stale (its task
/// waits, announced on the feed); cleared again, the agent is fresh and the
/// task goes out. Bad bodies are refused naming the field, and only admin
/// and operator keys may set leases.
async fn lease_set_and_cleared_through_the_api(backend: Backend) {
    let kit = FakeAgentKit::start().await;
    let s = quiet_agent(backend, &kit, "q1", |c| c.db.engine.liveness.grace_secs = 0).await;
    let mut feed = Stream::open(&s.base, "?kinds=agent.stale,agent.fresh", None).await;

    let r = put_lease(&s, "q1", json!({"ttlSeconds": 30}), common::KEY).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["ttlSeconds"], 30, "{}", r.body);
    let e = feed
        .next(Duration::from_secs(5))
        .await
        .expect("agent.stale");
    assert_eq!(
        (e.kind.as_str(), &e.data["agentId"]),
        ("agent.stale", &json!("q1"))
    );
    let a = agent(&s, "q1").await;
    assert_eq!(
        (a["stale"].clone(), a["ttlSeconds"].clone()),
        (json!(true), json!(30))
    );
    let sid = trigger_one_task(&s, "q1").await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(kit.calls().is_empty(), "a stale agent was sent a task");
    assert_eq!(s.session(&sid).await["tasks"][0]["status"], "queued");

    let r = put_lease(&s, "q1", json!({"ttlSeconds": null}), common::KEY).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["ttlSeconds"], Value::Null, "{}", r.body);
    let e = feed
        .next(Duration::from_secs(5))
        .await
        .expect("agent.fresh");
    assert_eq!(
        (e.kind.as_str(), &e.data["agentId"]),
        ("agent.fresh", &json!("q1"))
    );
    assert_eq!(agent(&s, "q1").await["stale"], false);
    let calls = kit.wait_calls(1, 2).await;
    assert_eq!(calls[0].agent_id, "q1");

    for (body, field) in [
        (json!({"ttlSeconds": 0}), "ttlSeconds"),
        (json!({"ttlSeconds": 86_401}), "ttlSeconds"),
        (json!({"ttlSeconds": "60"}), "ttlSeconds"),
        (json!({}), "ttlSeconds"),
    ] {
        let r = put_lease(&s, "q1", body.clone(), common::KEY).await;
        common::assert_invalid_field(&r, field);
    }
    let r = put_lease(&s, "nobody", json!({"ttlSeconds": 5}), common::KEY).await;
    common::assert_error(&r, StatusCode::NOT_FOUND, "agent_not_found");

    let registrar = common::keys::key_with_role(&s, "registrar", &[]).await;
    let r = put_lease(&s, "q1", json!({"ttlSeconds": 5}), &registrar.plaintext).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.body);
    let agent_key = common::keys::key_with_role(&s, "agent", &["q1"]).await;
    let r = put_lease(&s, "q1", json!({"ttlSeconds": 5}), &agent_key.plaintext).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.body);
    let operator = common::keys::key_with_role(&s, "operator", &[]).await;
    let r = put_lease(&s, "q1", json!({"ttlSeconds": 3600}), &operator.plaintext).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(agent(&s, "q1").await["ttlSeconds"], 3600);
}

/// A lease from the registration's metadata, and one from the API, outlive a
/// re-registration that names none (AgentKit re-registers an agent that
/// restarts, without metadata); a registration that names one replaces it.
async fn reregistration_without_metadata_keeps_the_lease(backend: Backend) {
    let s = TestServer::start(backend).await;
    let mut body = common::register_payload("r1", "R", &[], "http://r1.test/task");
    body["agent_details"]["metadata"]["ttlSeconds"] = json!(120);
    assert_eq!(s.notify_bearer(&body).await.status, StatusCode::OK);
    assert_eq!(agent(&s, "r1").await["ttlSeconds"], 120);
    s.register("r1").await;
    assert_eq!(agent(&s, "r1").await["ttlSeconds"], 120);
    let r = put_lease(&s, "r1", json!({"ttlSeconds": 45}), common::KEY).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    s.register("r1").await;
    assert_eq!(agent(&s, "r1").await["ttlSeconds"], 45);
    body["agent_details"]["metadata"]["ttlSeconds"] = json!(90);
    assert_eq!(s.notify_bearer(&body).await.status, StatusCode::OK);
    assert_eq!(agent(&s, "r1").await["ttlSeconds"], 90);
}

/// An agent with a lease that goes stale while its task is in flight: the
/// task fails with the reason `agent stale` when the lease ends (plus the
/// grace), not when the task's timeout (here an hour) runs out.
async fn in_flight_task_fails_when_its_agent_goes_stale(backend: Backend) {
    let kit = FakeAgentKit::start().await;
    let db = TestDb::new(backend).await;
    let config = config_for(&db, &kit, |c| c.db.engine.liveness.grace_secs = 0);
    let s = TestServer::start_on(db, config).await;
    let mut body = common::register_payload("l1", "L", &[], "http://l1.test/task");
    body["agent_details"]["metadata"]["ttlSeconds"] = json!(2);
    assert_eq!(s.notify_bearer(&body).await.status, StatusCode::OK);
    let (status, _) = s
        .report("l1", "idle", &chrono::Utc::now().to_rfc3339())
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let r = s
        .post("/v1/opscore/agent/l1/workflow")
        .json(&json!({"workflowDefinition": {"id": "long", "tasks": [
            {"taskId": "t1", "timeoutSeconds": 3600, "maxRetries": 2}]}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let sid = r.json::<Value>().await.unwrap()["sessionId"]
        .as_str()
        .unwrap()
        .to_owned();
    let calls = kit.wait_calls(1, 2).await;
    // The agent starts the task, then goes silent.
    let r = s
        .report_json(
            "l1",
            &common::report(
                "l1",
                &chrono::Utc::now().to_rfc3339(),
                "active",
                json!({"taskId": calls[0].body["opscore_task_id"], "sessionId": sid}),
            ),
        )
        .await;
    common::assert_accepted(&r);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let body = loop {
        let body = s.session(&sid).await;
        if body["status"] == "failed" || std::time::Instant::now() > deadline {
            break body;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(body["status"], "failed", "{body}");
    assert_eq!(body["tasks"][0]["status"], "failed", "{body}");
    assert_eq!(body["tasks"][0]["lastError"], "agent stale", "{body}");
    assert!(
        body["error"].as_str().unwrap_or("").contains("agent stale"),
        "{body}"
    );
    assert_eq!(
        kit.calls().len(),
        1,
        "the stale agent was sent the task again"
    );
}

backend_tests!(
    default_quiet_agent_gets_its_task,
    server_wide_lease_makes_the_quiet_agent_stale,
    lease_set_and_cleared_through_the_api,
    reregistration_without_metadata_keeps_the_lease,
    in_flight_task_fails_when_its_agent_goes_stale,
);
