//! Agent leases end to end: with a short TTL an agent turns stale (shown in
//! reads and listings, announced on the feed), is sent no task, and turns
//! fresh on its next report, when its queued task goes out. Staleness is
//! judged by the server's clock only. Each test runs on both backends.

use crate::common;

use std::time::Duration;

use crate::common::agentkit::FakeAgentKit;
use crate::common::sse::Stream;
use crate::common::{deregister_payload, register_payload, Backend, TestServer};
use opscore::config::DispatchTarget;
use reqwest::StatusCode;
use serde_json::{json, Value};

async fn agent(s: &TestServer, id: &str) -> Value {
    let r = s.get_json(&format!("/v1/opscore/agent/{id}")).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    r.body
}

async fn listed(s: &TestServer, query: &str) -> Vec<String> {
    let r = s.get_json(&format!("/v1/opscore/agents?{query}")).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    r.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["agentId"].as_str().unwrap().to_owned())
        .collect()
}

async fn stale_agent_gets_no_task_and_comes_back_on_report(backend: Backend) {
    let kit = FakeAgentKit::start().await;
    let url: url::Url = kit.base.parse().unwrap();
    let s = TestServer::start_with(backend, move |c| {
        c.dispatch.target = DispatchTarget::AgentKit(url);
        c.dispatch.poll_interval = Duration::from_millis(20);
        c.db.engine.liveness.ttl_secs = Some(1);
        c.db.engine.liveness.grace_secs = 0;
    })
    .await;
    let mut feed = Stream::open(&s.base, "?kinds=agent.stale,agent.fresh", None).await;
    s.register("s1").await;
    let fresh = agent(&s, "s1").await;
    assert_eq!(fresh["stale"], false);
    assert_eq!(fresh["ttlSeconds"], 1);

    let e = feed
        .next(Duration::from_secs(5))
        .await
        .expect("agent.stale");
    assert_eq!(
        (e.kind.as_str(), &e.data["agentId"]),
        ("agent.stale", &json!("s1"))
    );
    assert_eq!(e.data["data"]["ttlSeconds"], 1);
    assert_eq!(agent(&s, "s1").await["stale"], true);
    assert_eq!(s.state("s1").await.1["stale"], true);
    assert_eq!(listed(&s, "stale=true").await, ["s1"]);
    assert!(listed(&s, "stale=false").await.is_empty());
    let bad = s.get_json("/v1/opscore/agents?stale=maybe").await;
    common::assert_invalid_field(&bad, "stale");

    // A stale agent is sent nothing, however long the task waits.
    let r = s
        .post("/v1/opscore/agent/s1/workflow")
        .json(&json!({"workflowDefinition": {"id": "wf", "tasks": [{"taskId": "t1"}]}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let session: Value = r.json().await.unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(kit.calls().is_empty(), "a stale agent was sent a task");
    let sid = session["sessionId"].as_str().unwrap();
    let r = s.get_json(&format!("/v1/opscore/sessions/{sid}")).await;
    assert_eq!(r.body["tasks"][0]["status"], "queued", "{}", r.body);

    // Its next report brings it back, on the feed and in reads, and the
    // waiting task goes out.
    let (status, _) = s
        .report("s1", "idle", &chrono::Utc::now().to_rfc3339())
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let e = feed
        .next(Duration::from_secs(5))
        .await
        .expect("agent.fresh");
    assert_eq!(
        (e.kind.as_str(), &e.data["agentId"]),
        ("agent.fresh", &json!("s1"))
    );
    let calls = kit.wait_calls(1, 5).await;
    assert_eq!(calls[0].agent_id, "s1");
}

async fn registration_sets_its_own_ttl(backend: Backend) {
    let s = TestServer::start_with(backend, |c| {
        c.db.engine.liveness.ttl_secs = Some(1);
        c.db.engine.liveness.grace_secs = 0;
    })
    .await;
    let mut long = register_payload("long", "Long", &[], "http://long.test/task");
    long["agent_details"]["metadata"]["ttlSeconds"] = json!(3600);
    assert_eq!(s.notify_bearer(&long).await.status, StatusCode::OK);
    s.register("short").await;
    let mut feed = Stream::open(&s.base, "?kinds=agent.stale", None).await;
    let e = feed
        .next(Duration::from_secs(5))
        .await
        .expect("agent.stale");
    assert_eq!(e.data["agentId"], "short");
    assert!(feed.next(Duration::from_millis(1500)).await.is_none());
    let a = agent(&s, "long").await;
    assert_eq!(
        (a["stale"].clone(), a["ttlSeconds"].clone()),
        (json!(false), json!(3600))
    );

    for bad in [json!(0), json!(-5), json!(86_401), json!(1.5), json!("60")] {
        let mut body = register_payload("bad", "Bad", &[], "http://bad.test/task");
        body["agent_details"]["metadata"]["ttlSeconds"] = bad.clone();
        let r = s.notify_bearer(&body).await;
        common::assert_invalid_field(&r, "agent_details.metadata.ttlSeconds");
    }
    let r = s.get_json("/v1/opscore/agent/bad").await;
    assert_eq!(
        r.status,
        StatusCode::NOT_FOUND,
        "a refused registration stored the agent"
    );
}

/// A deregistered agent holds no lease, so it is never stale: GET state
/// says so like GET agent, even once its lease would have run out, and the
/// listing's `stale` filter agrees with the flag it shows.
async fn deregistered_agent_is_not_stale(backend: Backend) {
    let s = TestServer::start_with(backend, |c| {
        c.db.engine.liveness.ttl_secs = Some(1);
        c.db.engine.liveness.grace_secs = 0;
    })
    .await;
    let mut feed = Stream::open(&s.base, "?kinds=agent.stale", None).await;
    s.register("gone").await;
    let r = s.notify_bearer(&deregister_payload("gone")).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    // Registered after "gone" was last heard from: once this one is stale,
    // "gone"'s lease has run out too.
    s.register("kept").await;
    let e = feed
        .next(Duration::from_secs(5))
        .await
        .expect("agent.stale");
    assert_eq!(e.data["agentId"], "kept");
    assert_eq!(s.state("kept").await.1["stale"], true);

    let (status, body) = s.state("gone").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["stale"], false, "{body}");
    let a = agent(&s, "gone").await;
    assert_eq!(
        (a["registered"].clone(), a["stale"].clone()),
        (json!(false), json!(false))
    );
    assert_eq!(
        listed(&s, "includeDeregistered=true&stale=true").await,
        ["kept"]
    );
    assert_eq!(
        listed(&s, "includeDeregistered=true&stale=false").await,
        ["gone"]
    );
}

backend_tests!(
    stale_agent_gets_no_task_and_comes_back_on_report,
    registration_sets_its_own_ttl,
    deregistered_agent_is_not_stale,
);
