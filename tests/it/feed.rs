//! The change feed end to end: Server-Sent Events over real HTTP (live,
//! filtered, resumed with Last-Event-ID), Consul-style blocking state reads,
//! and, on PostgreSQL, events crossing from one process to another's
//! clients. Each test runs on SQLite and on PostgreSQL unless it says.

use crate::common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use crate::common::keys::{key_with_role, make_key};
use crate::common::sse::{Msg, Stream};
use crate::common::{assert_error, send, Backend, Resp, TestDb, TestServer};
use opscore::store::StoreOptions;
use reqwest::StatusCode;
use serde_json::json;

fn now() -> String {
    chrono::Utc::now().to_rfc3339()
}

async fn report(s: &TestServer, agent: &str, state: &str) {
    let (status, body) = s.report(agent, state, &now()).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
}

const SECOND: Duration = Duration::from_secs(1);

/// A client connected to the feed sees a state change within a second of
/// the report being acknowledged, with the fields the feed documents.
async fn state_change_reaches_a_connected_client_within_a_second(backend: Backend) {
    let s = TestServer::start(backend).await;
    s.register("a1").await;
    let mut feed = Stream::open(&s.base, "", None).await;
    let acked = Instant::now();
    report(&s, "a1", "active").await;
    let seen = feed.until(SECOND, |m| m.kind == "agent.state").await;
    let took = acked.elapsed();
    assert!(took < SECOND, "took {took:?}");
    let e = seen.last().unwrap();
    assert_eq!(e.data["kind"], "agent.state");
    assert_eq!(e.data["index"], e.id);
    assert_eq!(e.data["agentId"], "a1");
    assert_eq!(e.data["data"]["state"], "active");
    assert_eq!(e.data["data"]["details"], json!({"n": 1}));
    // Nothing from before the connection is replayed without Last-Event-ID.
    assert!(
        seen.iter().all(|m| m.kind != "agent.registered"),
        "{seen:?}"
    );
}

/// Disconnecting and resuming with Last-Event-ID gives exactly the events a
/// single uninterrupted client would have seen: none missed, none repeated.
async fn resuming_with_last_event_id_misses_and_repeats_nothing(backend: Backend) {
    let s = TestServer::start(backend).await;
    let mut first = Stream::open(&s.base, "", None).await;
    for i in 0..5 {
        s.register(&format!("r{i}")).await;
    }
    let mut got: Vec<Msg> = Vec::new();
    got.extend(first.until(SECOND * 5, |m| m.data["agentId"] == "r4").await);
    drop(first);
    // Written while no client is connected.
    for i in 0..5 {
        report(&s, &format!("r{i}"), "idle").await;
    }
    let last = got.last().unwrap().id;
    let mut second = Stream::open(&s.base, "", Some(last)).await;
    got.extend(
        second
            .until(SECOND * 5, |m| {
                m.kind == "agent.state" && m.data["agentId"] == "r4"
            })
            .await,
    );
    s.register("late").await;
    got.extend(
        second
            .until(SECOND * 5, |m| m.data["agentId"] == "late")
            .await,
    );

    // What a client replaying everything sees.
    let mut all = Stream::open(&s.base, "?after=0", None).await;
    let reference = all.until(SECOND * 5, |m| m.data["agentId"] == "late").await;
    let ids: Vec<i64> = got.iter().map(|m| m.id).collect();
    let want: Vec<i64> = reference
        .iter()
        .map(|m| m.id)
        .filter(|id| *id >= ids[0])
        .collect();
    assert_eq!(
        ids, want,
        "resumed stream differs from an uninterrupted one"
    );
    assert!(
        ids.windows(2).all(|w| w[0] < w[1]),
        "indexes not increasing: {ids:?}"
    );
    assert_eq!(
        got.iter().filter(|m| m.kind == "agent.state").count(),
        5,
        "{got:?}"
    );
}

/// Filters by agent and by kind; unknown kinds and bad indexes are refused
/// with the reason.
async fn filters_and_bad_parameters(backend: Backend) {
    let s = TestServer::start(backend).await;
    s.register("f1").await;
    s.register("f2").await;
    let mut only = Stream::open(&s.base, "?agentId=f2&kinds=agent.state", None).await;
    report(&s, "f1", "active").await;
    report(&s, "f2", "error").await;
    let e = only.next(SECOND * 5).await.expect("an event");
    assert_eq!(
        (e.kind.as_str(), &e.data["agentId"]),
        ("agent.state", &json!("f2"))
    );
    assert_eq!(e.data["data"]["state"], "error");
    s.register("f2").await; // agent.registered: filtered out
    assert!(only.next(Duration::from_millis(300)).await.is_none());

    let r = Stream::request(&s.base, "?kinds=agent.state,agent.exploded", None).await;
    let r = common::Resp {
        status: r.status(),
        headers: r.headers().clone(),
        body: r.json().await.unwrap(),
    };
    common::assert_invalid_field(&r, "kinds");
    assert!(
        r.body["detail"]
            .as_str()
            .unwrap()
            .contains("agent.exploded")
            || r.body.to_string().contains("agent.exploded")
    );
    for (q, last, field) in [
        ("?after=-3", None, "after"),
        ("?after=x", None, "after"),
        ("?agentId=bad%20id", None, "agentId"),
        ("", Some(-1), "Last-Event-ID"),
    ] {
        let r = Stream::request(&s.base, q, last).await;
        let r = common::Resp {
            status: r.status(),
            headers: r.headers().clone(),
            body: r.json().await.unwrap(),
        };
        common::assert_invalid_field(&r, field);
    }
    let r = reqwest::Client::new()
        .get(s.url("/v1/opscore/events"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
}

/// Resuming from an index retention has deleted is refused with 410, so a
/// client knows it missed events instead of silently skipping them.
async fn resuming_from_a_pruned_index_is_gone(backend: Backend) {
    let s = TestServer::start(backend).await;
    for i in 0..3 {
        s.register(&format!("p{i}")).await;
    }
    let store = opscore::store::connect(&s.db.url, &StoreOptions::default())
        .await
        .unwrap();
    let far_future = i64::MAX / 2;
    assert_eq!(store.prune_events(far_future, 2).await.unwrap(), 2);
    let r = Stream::request(&s.base, "", Some(1)).await;
    assert_eq!(r.status(), StatusCode::GONE);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["code"], "feed_index_expired");
    // From the retained range on, resuming works: the first event after
    // the pruned ones comes first (each registration is also an audit
    // event, so the index, not the agent, says which).
    let mut ok = Stream::open(&s.base, "", Some(2)).await;
    let e = ok.next(SECOND * 5).await.expect("the retained event");
    assert_eq!(e.id, 3);
    assert_eq!(e.data["index"], 3);
    store.close().await;
}

/// A blocking read returns as soon as the state moves past the index, and
/// with the unchanged state when the wait ends.
async fn blocking_read_returns_on_change_and_after_wait(backend: Backend) {
    let s = TestServer::start(backend).await;
    s.register("b1").await;
    report(&s, "b1", "idle").await;
    let r = s.get("/v1/opscore/agent/b1/state").send().await.unwrap();
    let index: i64 = r.headers()["x-opscore-index"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(index > 0);

    // No change: answers when the wait ends, not before, with the state.
    let started = Instant::now();
    let r = s
        .get(&format!(
            "/v1/opscore/agent/b1/state?index={index}&wait=400ms"
        ))
        .send()
        .await
        .unwrap();
    let waited = started.elapsed();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(
        waited >= Duration::from_millis(400),
        "returned early: {waited:?}"
    );
    assert!(waited < SECOND * 5, "{waited:?}");
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["state"], "idle");

    // A change while waiting: answers promptly with the new state and a
    // higher index.
    let waiter = {
        let rb = s.get(&format!(
            "/v1/opscore/agent/b1/state?index={index}&wait=30s"
        ));
        tokio::spawn(async move {
            let started = Instant::now();
            let r = rb.send().await.unwrap();
            (started.elapsed(), r)
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let reported = Instant::now();
    report(&s, "b1", "active").await;
    let (_, r) = waiter.await.unwrap();
    let after_report = reported.elapsed();
    assert!(
        after_report < SECOND * 2,
        "blocking read took {after_report:?} after the change"
    );
    let next: i64 = r.headers()["x-opscore-index"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(next > index);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["state"], "active");

    // A change before the call (index already behind): answers at once.
    report(&s, "b1", "error").await;
    let started = Instant::now();
    let r = s
        .get(&format!("/v1/opscore/agent/b1/state?index={next}&wait=30s"))
        .send()
        .await
        .unwrap();
    assert!(started.elapsed() < SECOND * 2);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["state"], "error");

    // Another agent's changes do not end the wait.
    s.register("b2").await;
    let r = s.get("/v1/opscore/agent/b1/state").send().await.unwrap();
    let idx: i64 = r.headers()["x-opscore-index"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let waiter = {
        let rb = s.get(&format!(
            "/v1/opscore/agent/b1/state?index={idx}&wait=700ms"
        ));
        tokio::spawn(async move {
            let started = Instant::now();
            rb.send().await.unwrap();
            started.elapsed()
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    report(&s, "b2", "active").await;
    let waited = waiter.await.unwrap();
    assert!(
        waited >= Duration::from_millis(700),
        "woken by another agent: {waited:?}"
    );

    for (q, field) in [
        ("index=-1", "index"),
        ("index=1&wait=forever", "wait"),
        ("index=1&wait=11m", "wait"),
    ] {
        let r = s.get_json(&format!("/v1/opscore/agent/b1/state?{q}")).await;
        common::assert_invalid_field(&r, field);
    }
    let r = s
        .get_json("/v1/opscore/agent/nobody/state?index=1&wait=5s")
        .await;
    assert_error(&r, StatusCode::NOT_FOUND, "agent_not_found");
}

/// Sessions and tasks announce their transitions.
async fn workflow_transitions_are_on_the_feed(backend: Backend) {
    let s = TestServer::start_with(backend, |c| {
        c.dispatch.enabled = false;
    })
    .await;
    s.register("w1").await;
    let mut feed = Stream::open(&s.base, "?kinds=session.status,task.status", None).await;
    let r = s
        .post("/v1/opscore/agent/w1/workflow")
        .json(&json!({"workflowDefinition": {"id": "wf", "tasks": [{"taskId": "t1"}]}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let session: serde_json::Value = r.json().await.unwrap();
    let sid = session["sessionId"].as_str().unwrap().to_owned();
    let started = feed.next(SECOND * 5).await.expect("session event");
    assert_eq!(started.kind, "session.status");
    assert_eq!(started.data["sessionId"], sid.as_str());
    assert_eq!(started.data["data"]["status"], "started");
    assert_eq!(started.data["data"]["workflowId"], "wf");
    let queued = feed.next(SECOND * 5).await.expect("task event");
    assert_eq!(queued.kind, "task.status");
    assert_eq!(queued.data["data"]["status"], "queued");
    assert_eq!(queued.data["data"]["taskId"], "t1");

    let r = s
        .post(&format!("/v1/opscore/sessions/{sid}/cancel"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let mut kinds = HashSet::new();
    for _ in 0..2 {
        let e = feed.next(SECOND * 5).await.expect("cancel events");
        assert_eq!(e.data["data"]["status"], "cancelled");
        kinds.insert(e.kind);
    }
    assert_eq!(kinds.len(), 2, "{kinds:?}");
}

/// One key cannot take every feed slot: an agent key may hold 16 streams
/// and blocking reads at once (its own `maxStreams`, when set, instead);
/// past that it gets 429 `too_many_streams` with `Retry-After`, while other
/// keys, the admin's included, still open streams and blocking reads.
async fn one_key_cannot_take_every_feed_slot(backend: Backend) {
    let s = TestServer::start(backend).await;
    s.register("h1").await;
    let agent = key_with_role(&s, "agent", &["h1"]).await;
    let mut held = Vec::new();
    for i in 0..16 {
        let r = reqwest::Client::new()
            .get(s.url("/v1/opscore/events"))
            .bearer_auth(&agent.plaintext)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK, "stream {i} of the agent key");
        held.push(r);
    }
    // The answer to one more: its status, and its body unless it is a
    // stream (which would never end).
    let over = |key: String, path: &'static str| {
        let url = s.url(path);
        async move {
            let r = reqwest::Client::new()
                .get(url)
                .bearer_auth(key)
                .send()
                .await
                .unwrap();
            let streaming = r
                .headers()
                .get("content-type")
                .is_some_and(|ct| ct.as_bytes().starts_with(b"text/event-stream"));
            if streaming {
                Resp {
                    status: r.status(),
                    headers: r.headers().clone(),
                    body: serde_json::Value::String("<an event stream>".into()),
                }
            } else {
                let status = r.status();
                let headers = r.headers().clone();
                let text = r.text().await.unwrap();
                let body = serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text));
                Resp {
                    status,
                    headers,
                    body,
                }
            }
        }
    };
    let r = over(agent.plaintext.clone(), "/v1/opscore/events").await;
    assert_error(&r, StatusCode::TOO_MANY_REQUESTS, "too_many_streams");
    assert!(r.headers.contains_key("retry-after"), "{:?}", r.headers);
    let r = over(
        agent.plaintext.clone(),
        "/v1/opscore/agent/h1/state?index=0&wait=5s",
    )
    .await;
    assert_error(&r, StatusCode::TOO_MANY_REQUESTS, "too_many_streams");
    // Its plain reads are not streams: still served.
    let r = over(agent.plaintext.clone(), "/v1/opscore/agent/h1/state").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    // The admin is not affected.
    let _admin = Stream::open(&s.base, "", None).await;
    let head = s.get("/v1/opscore/agent/h1/state").send().await.unwrap();
    let index = head.headers()["x-opscore-index"]
        .to_str()
        .unwrap()
        .to_owned();
    let r = s
        .get(&format!(
            "/v1/opscore/agent/h1/state?index={index}&wait=200ms"
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    // A slot given back can be taken again.
    drop(held.pop());
    let reopened = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let r = reqwest::Client::new()
                .get(s.url("/v1/opscore/events"))
                .bearer_auth(&agent.plaintext)
                .send()
                .await
                .unwrap();
            if r.status() == StatusCode::OK {
                return r;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("a closed stream's slot is given back");
    held.push(reopened);

    // A key's own maxStreams replaces the default.
    let narrow = make_key(
        &s,
        json!({"name": "narrow", "role": "agent", "agentIds": ["h1"], "maxStreams": 2}),
    )
    .await;
    assert_eq!(narrow.body["maxStreams"], 2, "{}", narrow.body);
    let _one = Stream::open_as(&s.base, "", &narrow.plaintext).await;
    let _two = Stream::open_as(&s.base, "", &narrow.plaintext).await;
    let r = over(narrow.plaintext.clone(), "/v1/opscore/events").await;
    assert_error(&r, StatusCode::TOO_MANY_REQUESTS, "too_many_streams");
    let r = send(s.get(&format!("/v1/opscore/keys/{}", narrow.id))).await;
    assert_eq!(r.body["maxStreams"], 2, "{}", r.body);
    s.stop().await;
}

backend_tests!(
    state_change_reaches_a_connected_client_within_a_second,
    resuming_with_last_event_id_misses_and_repeats_nothing,
    filters_and_bad_parameters,
    resuming_from_a_pruned_index_is_gone,
    blocking_read_returns_on_change_and_after_wait,
    workflow_transitions_are_on_the_feed,
    one_key_cannot_take_every_feed_slot,
);

/// Two processes on one PostgreSQL database: a report made through one
/// reaches a feed client of the other, and both number events alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_events_cross_processes() {
    let db = TestDb::new(Backend::Postgres).await;
    let a = common::ServerProcess::spawn(&db.url, db.dir.path()).await;
    let b = common::ServerProcess::spawn(&db.url, db.dir.path()).await;
    let client = reqwest::Client::new();
    common::register_at(&client, &a.base, "x1", &["summarise"]).await;
    let mut on_b = Stream::open(&b.base, "?agentId=x1", None).await;
    let mut on_a = Stream::open(&a.base, "?agentId=x1", None).await;
    let sent = Instant::now();
    let r = client
        .post(format!("{}/v1/opscore/agent/x1/state", a.base))
        .bearer_auth(common::KEY)
        .json(&json!({"agentId": "x1", "timestamp": now(), "state": "active"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let from_b = on_b.until(SECOND * 5, |m| m.kind == "agent.state").await;
    let took = sent.elapsed();
    let from_a = on_a.until(SECOND * 5, |m| m.kind == "agent.state").await;
    assert_eq!(from_a.last().unwrap().id, from_b.last().unwrap().id);
    assert_eq!(from_b.last().unwrap().data["data"]["state"], "active");
    println!("report through one process reached the other's feed in {took:?}");
    a.kill().await;
    b.kill().await;
}
