//! The audit trail end to end: every kind of change made through the API
//! is recorded with who made it (a managed key by id, name and role; the
//! bootstrap key; "webhook secret N"; the service itself) and what it was
//! made to; the listing's filters and pages; admin keys only, on the
//! listing and on the feed; a change and its entry commit together or not
//! at all; the log line; and `opscore audit`.

use crate::common;

use std::path::PathBuf;
use std::time::Duration;

use crate::common::keys::{key_with_role, make_key, MadeKey};
use crate::common::sse::Stream;
use crate::common::{
    agentkit_sign, assert_error, assert_invalid_field, deregister_payload, parse_time,
    register_payload, send, Backend, Resp, TestDb, TestServer, KEY, SECRET,
};
use opscore::config::Secret;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

/// The second webhook secret (`OPSCORE_WEBHOOK_SECRETS`): "webhook secret 2".
const SECOND_SECRET: &str = "agentkit-second-secret";

/// A definition whose only task waits an hour: its sessions stay
/// `started` until cancelled.
fn definition(id: &str) -> Value {
    json!({"id": id, "name": format!("Audit {id}"), "version": "2.1", "tasks": [
        {"taskId": "t1", "name": "Wait", "delaySeconds": 3600}
    ]})
}

/// `method path` with `key` and an optional JSON body, read in full.
async fn call(s: &TestServer, key: &str, method: Method, path: &str, body: Option<Value>) -> Resp {
    let mut rb = s.client.request(method, s.url(path)).bearer_auth(key);
    if let Some(b) = body {
        rb = rb.json(&b);
    }
    send(rb).await
}

/// `GET /v1/opscore/audit?{query}` with `key`.
async fn audit_as(s: &TestServer, key: &str, query: &str) -> Resp {
    call(
        s,
        key,
        Method::GET,
        &format!("/v1/opscore/audit?{query}"),
        None,
    )
    .await
}

/// Every entry `query` selects (following cursors), newest first, with the
/// bootstrap key.
async fn entries(s: &TestServer, query: &str) -> Vec<Value> {
    let mut out = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut q = query.to_owned();
        if let Some(c) = &cursor {
            q.push_str(&format!("&cursor={c}"));
        }
        let r = audit_as(s, KEY, &q).await;
        assert_eq!(r.status, StatusCode::OK, "{q}: {}", r.body);
        out.extend(r.body["items"].as_array().expect("items").iter().cloned());
        match r.body["nextCursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => return out,
        }
    }
}

/// The kinds of `entries`, in the order given.
fn kinds(entries: &[Value]) -> Vec<&str> {
    entries
        .iter()
        .map(|e| e["kind"].as_str().expect("kind"))
        .collect()
}

fn key_actor(k: &MadeKey, name: &str, role: &str) -> Value {
    json!({"type": "key", "keyId": k.id, "name": name, "role": role})
}

fn bootstrap() -> Value {
    json!({"type": "bootstrap", "name": "bootstrap key", "role": "admin"})
}

fn webhook(n: u32) -> Value {
    json!({"type": "webhook", "name": format!("webhook secret {n}")})
}

/// Every kind of change, each by a different kind of caller; the trail
/// holds one entry for each, in order, naming who and what, and nothing
/// for what changed nothing (reports, repeats, identical definitions).
async fn every_change_is_audited_with_the_acting_key(backend: Backend) {
    let s = TestServer::start_with(backend, |c| {
        c.more_webhook_secrets = vec![Secret::new(SECOND_SECRET)];
        c.dispatch.enabled = false;
        c.workflows_dir = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/workflows"));
        c.workflows_dir_explicit = true;
    })
    .await;
    let admin = make_key(&s, json!({"name": "alice admin", "role": "admin"})).await;
    let a = admin.plaintext.as_str();
    let r = call(
        &s,
        a,
        Method::POST,
        "/v1/opscore/keys",
        Some(json!({"name": "ops bot", "role": "operator"})),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let op = MadeKey {
        id: r.body["keyId"].as_str().expect("keyId").to_owned(),
        plaintext: r.body["key"].as_str().expect("key").to_owned(),
        body: r.body.clone(),
    };
    let o = op.plaintext.as_str();

    // AgentKit, signing with each secret; an admin key on the webhook.
    let endpoint = "http://127.0.0.1:9/task";
    let first = agentkit_sign(
        &register_payload("a1", "One", &["x"], endpoint),
        SECRET,
        0,
        false,
    )
    .await;
    assert_eq!(s.notify_signed(&first).await.status, StatusCode::OK);
    let second = agentkit_sign(
        &register_payload("a2", "Two", &["x"], endpoint),
        SECOND_SECRET,
        0,
        false,
    )
    .await;
    assert_eq!(s.notify_signed(&second).await.status, StatusCode::OK);
    let r = call(
        &s,
        a,
        Method::POST,
        common::NOTIFY,
        Some(register_payload("a3", "Three", &["x"], endpoint)),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);

    // Definitions: created, created and deleted; an identical one again
    // changes nothing.
    for id in ["wf", "spare"] {
        let r = call(
            &s,
            a,
            Method::POST,
            "/v1/opscore/workflows",
            Some(definition(id)),
        )
        .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    }
    let r = call(
        &s,
        a,
        Method::POST,
        "/v1/opscore/workflows",
        Some(definition("wf")),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let r = call(&s, a, Method::DELETE, "/v1/opscore/workflows/spare", None).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.body);

    // The operator triggers (a stored definition, then an inline one whose
    // id is new, which stores it), cancels (twice: the second changes
    // nothing) and sets a lease.
    let r = call(
        &s,
        o,
        Method::POST,
        "/v1/opscore/agent/a1/workflow",
        Some(json!({"workflowDefinitionId": "wf"})),
    )
    .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.body);
    let s1 = r.body["sessionId"].as_str().expect("sessionId").to_owned();
    let r = call(
        &s,
        o,
        Method::POST,
        "/v1/opscore/agent/a2/workflow",
        Some(json!({"workflowDefinition": definition("inline-wf")})),
    )
    .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.body);
    let s2 = r.body["sessionId"].as_str().expect("sessionId").to_owned();
    for _ in 0..2 {
        let path = format!("/v1/opscore/sessions/{s1}/cancel");
        let r = call(&s, o, Method::POST, &path, None).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    }
    let r = call(
        &s,
        o,
        Method::PUT,
        "/v1/opscore/agent/a1/lease",
        Some(json!({"ttlSeconds": 60})),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    // A state report is the agents' data, not an operator's change.
    let (status, _) = s
        .report("a1", "idle", &common::ts_at(chrono::Utc::now(), 0))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);

    let r = call(
        &s,
        a,
        Method::POST,
        "/v1/opscore/agent/a1/state/reset",
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let bye = agentkit_sign(&deregister_payload("a2"), SECOND_SECRET, 0, false).await;
    assert_eq!(s.notify_signed(&bye).await.status, StatusCode::OK);
    for _ in 0..2 {
        let path = format!("/v1/opscore/keys/{}", op.id);
        let r = call(&s, a, Method::DELETE, &path, None).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    }

    let all = entries(&s, "limit=1000").await;
    let ids: Vec<i64> = all.iter().map(|e| e["id"].as_i64().expect("id")).collect();
    assert!(ids.windows(2).all(|w| w[0] > w[1]), "newest first: {ids:?}");
    let mut oldest_first = all.clone();
    oldest_first.reverse();

    let admin_actor = key_actor(&admin, "alice admin", "admin");
    let op_actor = key_actor(&op, "ops bot", "operator");
    let agent = |id: &str| json!({"agentId": id});
    let session = |agent: &str, session: &str, wf: &str| json!({"agentId": agent, "sessionId": session, "workflowId": wf});
    let expected: Vec<(&str, Value, Value)> = vec![
        (
            "audit.workflow.created",
            Value::Null, // the service itself: checked below
            json!({"workflowId": "sample_workflow_id"}),
        ),
        ("audit.key.created", bootstrap(), json!({"keyId": admin.id})),
        (
            "audit.key.created",
            admin_actor.clone(),
            json!({"keyId": op.id}),
        ),
        ("audit.agent.registered", webhook(1), agent("a1")),
        ("audit.agent.registered", webhook(2), agent("a2")),
        ("audit.agent.registered", admin_actor.clone(), agent("a3")),
        (
            "audit.workflow.created",
            admin_actor.clone(),
            json!({"workflowId": "wf"}),
        ),
        (
            "audit.workflow.created",
            admin_actor.clone(),
            json!({"workflowId": "spare"}),
        ),
        (
            "audit.workflow.deleted",
            admin_actor.clone(),
            json!({"workflowId": "spare"}),
        ),
        (
            "audit.session.triggered",
            op_actor.clone(),
            session("a1", &s1, "wf"),
        ),
        (
            "audit.workflow.created",
            op_actor.clone(),
            json!({"workflowId": "inline-wf"}),
        ),
        (
            "audit.session.triggered",
            op_actor.clone(),
            session("a2", &s2, "inline-wf"),
        ),
        (
            "audit.session.cancelled",
            op_actor.clone(),
            session("a1", &s1, "wf"),
        ),
        ("audit.agent.lease_set", op_actor.clone(), agent("a1")),
        ("audit.agent.state_reset", admin_actor.clone(), agent("a1")),
        ("audit.agent.deregistered", webhook(2), agent("a2")),
        (
            "audit.key.revoked",
            admin_actor.clone(),
            json!({"keyId": op.id}),
        ),
    ];
    let got: Vec<(&str, Value, Value)> = oldest_first
        .iter()
        .map(|e| {
            (
                e["kind"].as_str().expect("kind"),
                e["actor"].clone(),
                e["target"].clone(),
            )
        })
        .collect();
    assert_eq!(
        got.len(),
        expected.len(),
        "kinds: {:?}",
        kinds(&oldest_first)
    );
    for (i, (g, x)) in got.iter().zip(&expected).enumerate() {
        assert_eq!(g.0, x.0, "entry {i}: {:?}", oldest_first[i]);
        assert_eq!(g.2, x.2, "entry {i}: {:?}", oldest_first[i]);
        if x.1.is_null() {
            assert_eq!(g.1["type"], "system", "entry {i}: {:?}", oldest_first[i]);
            let name = g.1["name"].as_str().unwrap_or_default();
            assert!(
                name.starts_with("workflow file ") && name.ends_with("sample_workflow.json"),
                "{name}"
            );
        } else {
            assert_eq!(g.1, x.1, "entry {i}: {:?}", oldest_first[i]);
        }
    }

    // The facts of each change.
    let at = |i: usize| &oldest_first[i];
    assert_eq!(
        at(2)["details"],
        json!({"name": "ops bot", "role": "operator", "agentIds": [], "expiresAt": null})
    );
    assert_eq!(at(3)["details"]["created"], true);
    assert_eq!(at(3)["details"]["agentName"], "One");
    assert_eq!(
        at(6)["details"],
        json!({"name": "Audit wf", "version": "2.1", "tasks": 1, "revision": 1})
    );
    assert_eq!(at(9)["details"], json!({"inlineDefinition": false}));
    assert_eq!(at(11)["details"], json!({"inlineDefinition": true}));
    assert_eq!(at(13)["details"], json!({"ttlSeconds": 60}));
    assert_eq!(
        at(16)["details"],
        json!({"name": "ops bot", "role": "operator"})
    );
    for e in &all {
        let t = parse_time(&e["at"]);
        assert!((chrono::Utc::now() - t.with_timezone(&chrono::Utc)).num_seconds() < 120);
    }

    // Never a secret: no key plaintext, no webhook secret or signature.
    let text = serde_json::to_string(&all).expect("json");
    for secret in [
        a,
        o,
        KEY,
        SECRET,
        SECOND_SECRET,
        &first.signature,
        &second.signature,
        &bye.signature,
    ] {
        assert!(!text.contains(secret), "the audit trail holds a secret");
    }
    s.stop().await;
}

/// The filters (actor, kind, target, since, until) select what they say,
/// pages follow each other newest first, and a bad value is a 422 naming
/// its parameter.
async fn filters_and_pages(backend: Backend) {
    let s = TestServer::start_with(backend, |c| c.dispatch.enabled = false).await;
    let admin = key_with_role(&s, "admin", &[]).await;
    let op = key_with_role(&s, "operator", &[]).await;
    s.register("a1").await;
    s.register("a2").await;
    let r = call(
        &s,
        &admin.plaintext,
        Method::POST,
        "/v1/opscore/workflows",
        Some(definition("wf")),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let mut sessions = Vec::new();
    for agent in ["a1", "a2"] {
        let r = call(
            &s,
            &op.plaintext,
            Method::POST,
            &format!("/v1/opscore/agent/{agent}/workflow"),
            Some(json!({"workflowDefinitionId": "wf"})),
        )
        .await;
        assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.body);
        sessions.push(r.body["sessionId"].as_str().expect("sessionId").to_owned());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let cancel = format!("/v1/opscore/sessions/{}/cancel", sessions[0]);
    let r = call(&s, &op.plaintext, Method::POST, &cancel, None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);

    // The server loaded ./workflows at startup: the first entry is the
    // service's own.
    let all = entries(&s, "").await;
    assert_eq!(all.len(), 9, "{:?}", kinds(&all));
    let system = q_system(&s).await;
    assert_eq!(kinds(&system), ["audit.workflow.created"]);
    assert_eq!(system[0]["target"]["workflowId"], "sample_workflow_id");
    assert_eq!(all.last(), system.first());
    let q = |query: String| {
        let s = &s;
        async move { entries(s, &query).await }
    };
    let by_op = q(format!("actor={}", op.id)).await;
    assert_eq!(
        kinds(&by_op),
        [
            "audit.session.cancelled",
            "audit.session.triggered",
            "audit.session.triggered"
        ]
    );
    assert!(by_op.iter().all(|e| e["actor"]["keyId"] == op.id.as_str()));
    assert_eq!(
        kinds(&q(format!("actor={}", admin.id)).await),
        ["audit.workflow.created"]
    );
    assert_eq!(
        kinds(&q("actor=bootstrap".into()).await),
        [
            "audit.agent.registered",
            "audit.agent.registered",
            "audit.key.created",
            "audit.key.created"
        ]
    );
    assert!(q("actor=webhook".into()).await.is_empty());
    assert_eq!(q("kind=session".into()).await.len(), 3);
    assert_eq!(q("kind=audit.session".into()).await.len(), 3);
    assert_eq!(
        kinds(&q("kind=audit.session.cancelled".into()).await),
        ["audit.session.cancelled"]
    );
    assert_eq!(q("kind=key".into()).await.len(), 2);
    assert_eq!(q("kind=audit".into()).await.len(), 9);
    assert_eq!(q("kind=workflow".into()).await.len(), 2);
    assert_eq!(
        kinds(&q("target=a1".into()).await),
        [
            "audit.session.cancelled",
            "audit.session.triggered",
            "audit.agent.registered"
        ]
    );
    assert_eq!(
        kinds(&q(format!("target={}", sessions[0])).await),
        ["audit.session.cancelled", "audit.session.triggered"]
    );
    assert_eq!(q("target=wf".into()).await.len(), 4);
    let op_made = q(format!("target={}", op.id)).await;
    assert_eq!(kinds(&op_made), ["audit.key.created"]);
    assert_eq!(op_made[0]["actor"], bootstrap());
    assert_eq!(
        kinds(&q(format!("actor={}&target=a2&kind=session", op.id)).await),
        ["audit.session.triggered"]
    );
    assert!(q("target=nothing-here".into()).await.is_empty());

    // since/until split the trail at one entry's time.
    let pivot = all
        .iter()
        .find(|e| e["target"]["sessionId"] == sessions[1].as_str())
        .expect("second trigger");
    let t = pivot["at"].as_str().expect("at").to_owned();
    let enc = t.replace('+', "%2B");
    let since = q(format!("since={enc}")).await;
    let until = q(format!("until={enc}")).await;
    let pivot_t = parse_time(&pivot["at"]);
    assert!(since.iter().all(|e| parse_time(&e["at"]) >= pivot_t));
    assert!(until.iter().all(|e| parse_time(&e["at"]) < pivot_t));
    assert!(since.iter().any(|e| e["id"] == pivot["id"]));
    assert_eq!(since.len() + until.len(), all.len());
    assert!(!since.is_empty() && !until.is_empty());

    // Pages of two, newest first, meet end to end.
    let mut paged = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut query = "limit=2".to_owned();
        if let Some(c) = &cursor {
            query.push_str(&format!("&cursor={c}"));
        }
        let r = audit_as(&s, KEY, &query).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
        let items = r.body["items"].as_array().expect("items");
        assert!(items.len() <= 2);
        paged.extend(items.iter().map(|e| e["id"].clone()));
        match r.body["nextCursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    let ids: Vec<Value> = all.iter().map(|e| e["id"].clone()).collect();
    assert_eq!(paged, ids);

    for (query, field) in [
        ("actor=nobody", "actor"),
        ("actor=key", "actor"),
        ("kind=keys", "kind"),
        ("kind=agent.state", "kind"),
        ("target=", "target"),
        ("since=yesterday", "since"),
        ("until=2026-13-01T00:00:00Z", "until"),
        ("limit=0", "limit"),
        ("limit=1001", "limit"),
        ("cursor=zz", "cursor"),
    ] {
        let r = audit_as(&s, KEY, query).await;
        assert_invalid_field(&r, field);
    }
    s.stop().await;
}

/// The entries of the service itself.
async fn q_system(s: &TestServer) -> Vec<Value> {
    entries(s, "actor=system").await
}

/// Only admin keys read the trail: the listing is 403 for every other
/// role, and `audit.*` events reach admin feed streams only (not even an
/// agent key whose agent an entry is about).
async fn only_admins_see_the_trail(backend: Backend) {
    let s = TestServer::start_with(backend, |c| c.dispatch.enabled = false).await;
    s.register("a1").await;
    let admin = key_with_role(&s, "admin", &[]).await;
    let op = key_with_role(&s, "operator", &[]).await;
    let registrar = key_with_role(&s, "registrar", &[]).await;
    let agent = key_with_role(&s, "agent", &["a1"]).await;
    assert_eq!(
        audit_as(&s, &admin.plaintext, "").await.status,
        StatusCode::OK
    );
    for k in [&op, &registrar, &agent] {
        let r = audit_as(&s, &k.plaintext, "").await;
        assert_error(&r, StatusCode::FORBIDDEN, "forbidden");
    }
    let r = send(s.client.get(s.url("/v1/opscore/audit"))).await;
    assert_error(&r, StatusCode::UNAUTHORIZED, "missing_credentials");

    // Asking the feed for audit kinds is refused to everyone else.
    for k in [&op, &agent] {
        let r = send(
            s.client
                .get(s.url("/v1/opscore/events?kinds=audit.key.created"))
                .bearer_auth(&k.plaintext),
        )
        .await;
        assert_error(&r, StatusCode::FORBIDDEN, "forbidden");
    }

    let mut as_admin = Stream::open_as(&s.base, "", &admin.plaintext).await;
    let mut as_op = Stream::open_as(&s.base, "", &op.plaintext).await;
    let mut as_agent = Stream::open_as(&s.base, "", &agent.plaintext).await;
    let mut only_keys = Stream::open(&s.base, "?kinds=audit.key.created", None).await;
    let r = call(
        &s,
        &admin.plaintext,
        Method::POST,
        "/v1/opscore/workflows",
        Some(definition("wf")),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let r = call(
        &s,
        &op.plaintext,
        Method::POST,
        "/v1/opscore/agent/a1/workflow",
        Some(json!({"workflowDefinitionId": "wf"})),
    )
    .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.body);
    let made = key_with_role(&s, "operator", &[]).await;
    // The marker every stream sees: a report of a1.
    let (status, _) = s
        .report("a1", "idle", &common::ts_at(chrono::Utc::now(), 0))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);

    let within = Duration::from_secs(10);
    let is_marker = |m: &common::sse::Msg| m.kind == "agent.state";
    let seen = as_admin.until(within, is_marker).await;
    let audit: Vec<&common::sse::Msg> = seen
        .iter()
        .filter(|m| m.kind.starts_with("audit."))
        .collect();
    let seen_kinds: Vec<&str> = audit.iter().map(|m| m.kind.as_str()).collect();
    assert_eq!(
        seen_kinds,
        [
            "audit.workflow.created",
            "audit.session.triggered",
            "audit.key.created"
        ]
    );
    // The event's data is the entry as the listing has it.
    let listed = entries(&s, "").await;
    for m in &audit {
        let entry = &m.data["data"];
        let same = listed
            .iter()
            .find(|e| e["id"] == entry["id"])
            .expect("listed");
        assert_eq!(entry, same);
        assert_eq!(m.data["kind"], entry["kind"]);
    }
    let triggered = audit[1];
    assert_eq!(triggered.data["agentId"], "a1");
    assert_eq!(triggered.data["data"]["actor"]["keyId"], op.id.as_str());
    for stream in [&mut as_op, &mut as_agent] {
        let seen = stream.until(within, is_marker).await;
        assert!(
            seen.iter().all(|m| !m.kind.starts_with("audit.")),
            "{:?}",
            seen.iter().map(|m| &m.kind).collect::<Vec<_>>()
        );
        assert!(seen.iter().any(|m| m.kind == "session.status"));
    }
    let m = only_keys.next(within).await.expect("audit.key.created");
    assert_eq!(m.kind, "audit.key.created");
    assert_eq!(m.data["data"]["target"]["keyId"], made.id.as_str());
    s.stop().await;
}

/// A change and its entry commit together: with the trail's table out of
/// reach, a change is refused (5xx) and nothing of it is stored; refused
/// changes (404, 409) leave no entry.
async fn a_change_and_its_entry_commit_together(backend: Backend) {
    let s = TestServer::start_with(backend, |c| c.dispatch.enabled = false).await;
    s.register("a1").await;
    let r = call(
        &s,
        KEY,
        Method::POST,
        "/v1/opscore/workflows",
        Some(definition("wf")),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let r = call(
        &s,
        KEY,
        Method::POST,
        "/v1/opscore/agent/a1/workflow",
        Some(json!({"workflowDefinitionId": "wf"})),
    )
    .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.body);
    let before = entries(&s, "").await;

    // Refused changes: nothing to audit.
    let r = call(
        &s,
        KEY,
        Method::POST,
        "/v1/opscore/agent/ghost/workflow",
        Some(json!({"workflowDefinitionId": "wf"})),
    )
    .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.body);
    let r = call(&s, KEY, Method::DELETE, "/v1/opscore/workflows/wf", None).await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.body);
    let r = call(
        &s,
        KEY,
        Method::POST,
        "/v1/opscore/sessions/nope/cancel",
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.body);
    let r = call(
        &s,
        KEY,
        Method::POST,
        "/v1/opscore/workflows",
        Some(json!({"id": "bad", "tasks": "x"})),
    )
    .await;
    assert!(r.status.is_client_error(), "{}", r.body);
    assert_eq!(entries(&s, "").await, before);

    // The trail cannot be written: every kind of change is refused whole,
    // and nothing it would have changed is changed.
    let victim = key_with_role(&s, "registrar", &[]).await;
    let r = call(
        &s,
        KEY,
        Method::POST,
        "/v1/opscore/workflows",
        Some(definition("spare")),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let (status, _) = s
        .report("a1", "busy", &common::ts_at(chrono::Utc::now(), 0))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let before = entries(&s, "").await;
    let stored = snapshot(&s).await;
    s.db.execute("ALTER TABLE audit_log RENAME TO audit_log_away")
        .await;
    let session = stored["sessions"][0]["sessionId"]
        .as_str()
        .expect("session")
        .to_owned();
    let changes: Vec<(Method, String, Option<Value>)> = vec![
        (
            Method::POST,
            "/v1/opscore/workflows".into(),
            Some(definition("lost")),
        ),
        (Method::DELETE, "/v1/opscore/workflows/spare".into(), None),
        (
            Method::POST,
            "/v1/opscore/keys".into(),
            Some(json!({"name": "lost key", "role": "operator"})),
        ),
        (
            Method::DELETE,
            format!("/v1/opscore/keys/{}", victim.id),
            None,
        ),
        (
            Method::POST,
            "/v1/opscore/agent/a1/workflow".into(),
            Some(json!({"workflowDefinitionId": "wf"})),
        ),
        (
            Method::POST,
            format!("/v1/opscore/sessions/{session}/cancel"),
            None,
        ),
        (
            Method::POST,
            "/v1/opscore/agent/a1/state/reset".into(),
            None,
        ),
        (
            Method::PUT,
            "/v1/opscore/agent/a1/lease".into(),
            Some(json!({"ttlSeconds": 60})),
        ),
        (
            Method::POST,
            common::NOTIFY.into(),
            Some(register_payload(
                "a2",
                "Two",
                &["x"],
                "http://127.0.0.1:9/task",
            )),
        ),
        (
            Method::POST,
            common::NOTIFY.into(),
            Some(deregister_payload("a1")),
        ),
    ];
    for (method, path, body) in changes {
        let what = format!("{method} {path}");
        let r = call(&s, KEY, method, &path, body).await;
        assert!(
            r.status.is_server_error(),
            "{what}: {} {}",
            r.status,
            r.body
        );
    }
    s.db.execute("ALTER TABLE audit_log_away RENAME TO audit_log")
        .await;
    assert_eq!(snapshot(&s).await, stored);
    assert_eq!(entries(&s, "").await, before);

    // Once it can be written again, changes and entries go on together.
    let r = call(
        &s,
        KEY,
        Method::POST,
        "/v1/opscore/workflows",
        Some(definition("back")),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let now = entries(&s, "").await;
    assert_eq!(now.len(), before.len() + 1);
    assert_eq!(now[0]["target"]["workflowId"], "back");
    s.stop().await;
}

/// What the service holds: agents with their histories, definitions,
/// keys, and a1's sessions with their tasks.
async fn snapshot(s: &TestServer) -> Value {
    let get = |path: &'static str| async move {
        let r = call(s, KEY, Method::GET, path, None).await;
        assert_eq!(r.status, StatusCode::OK, "{path}: {}", r.body);
        r.body
    };
    let mut sessions = Vec::new();
    for item in get("/v1/opscore/agent/a1/sessions").await["items"]
        .as_array()
        .expect("items")
    {
        let id = item["sessionId"].as_str().expect("sessionId");
        let r = call(
            s,
            KEY,
            Method::GET,
            &format!("/v1/opscore/sessions/{id}"),
            None,
        )
        .await;
        sessions.push(r.body);
    }
    json!({
        "agents": s.everything().await,
        "workflows": get("/v1/opscore/workflows").await,
        "keys": get("/v1/opscore/keys").await,
        "sessions": sessions,
    })
}

/// Entries older than `OPSCORE_AUDIT_RETENTION_SECS` are deleted by the
/// housekeeping of a running server; newer ones stay.
async fn old_entries_are_pruned(backend: Backend) {
    let s = TestServer::start_with(backend, |c| {
        c.retention.audit_max_age = Some(Duration::from_secs(1));
        c.retention.prune_every = Duration::from_millis(200);
    })
    .await;
    let old = key_with_role(&s, "operator", &[]).await;
    let target = |k: &MadeKey| format!("target={}", k.id);
    assert_eq!(entries(&s, &target(&old)).await.len(), 1);
    let started = std::time::Instant::now();
    while !entries(&s, "").await.is_empty() {
        assert!(started.elapsed() < Duration::from_secs(15), "never pruned");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Well within the second, a new entry is still there.
    let new = key_with_role(&s, "operator", &[]).await;
    assert_eq!(entries(&s, &target(&new)).await.len(), 1);
    s.stop().await;
}

/// Each entry is also one log line (message `audit`) with the same
/// fields, and no line holds the key's plaintext.
async fn each_entry_is_a_log_line(backend: Backend) {
    let db = TestDb::new(backend).await;
    let server = common::ServerProcess::spawn(&db.url, db.dir.path()).await;
    let client = reqwest::Client::new();
    let r = send(
        client
            .post(format!("{}/v1/opscore/keys", server.base))
            .bearer_auth(KEY)
            .json(&json!({"name": "logged key", "role": "registrar"})),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let id = r.body["keyId"].as_str().expect("keyId").to_owned();
    let plaintext = r.body["key"].as_str().expect("key").to_owned();
    let mut line = None;
    for _ in 0..100 {
        line = server.logs.lock().expect("logs").iter().find_map(|l| {
            let v: Value = serde_json::from_str(l).ok()?;
            (v["message"] == "audit" && v["key_id"] == id.as_str()).then_some(v)
        });
        if line.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let line = line.expect("an audit log line for the new key");
    assert_eq!(line["kind"], "audit.key.created");
    assert_eq!(line["actor_type"], "bootstrap");
    assert_eq!(line["actor_name"], "bootstrap key");
    assert_eq!(line["actor_role"], "admin");
    assert!(line["audit_id"].as_i64().is_some_and(|n| n > 0), "{line}");
    let details: Value =
        serde_json::from_str(line["details"].as_str().expect("details")).expect("json");
    assert_eq!(details["name"], "logged key");
    assert!(!server.logged(&plaintext));
    assert!(!server.logged(&plaintext[plaintext.len() - 64..]));
    server.kill().await;
}

/// `opscore audit`: a table, the server's JSON, the filters, and the
/// server's refusals as errors.
async fn the_cli_lists_the_trail(backend: Backend) {
    let s = TestServer::start(backend).await;
    let op = key_with_role(&s, "operator", &[]).await;
    s.register("a1").await;
    let table = crate::cli::opscore(&s.base, &["audit"]).await;
    let out = table.ok();
    let mut lines = out.lines();
    let header = lines.next().unwrap_or_default();
    assert!(
        header.starts_with("AT") && header.contains("KIND") && header.contains("ACTOR"),
        "{out}"
    );
    let rows: Vec<&str> = lines.collect();
    // Newest first; the oldest is the sample workflow loaded at startup.
    assert_eq!(rows.len(), 3, "{out}");
    assert!(
        rows[2].contains("workflow.created") && rows[2].contains("workflow sample_workflow_id"),
        "{out}"
    );
    assert!(
        rows[0].contains("agent.registered") && rows[0].contains("agent a1"),
        "{out}"
    );
    assert!(
        rows[1].contains("key.created") && rows[1].contains(&format!("key {}", op.id)),
        "{out}"
    );
    assert!(rows[1].contains("bootstrap key"), "{out}");

    let json = crate::cli::opscore(&s.base, &["audit", "--kind", "key", "-o", "json"])
        .await
        .json();
    let items = json["items"].as_array().expect("items");
    assert_eq!(items.len(), 1, "{json}");
    assert_eq!(items[0]["kind"], "audit.key.created");
    assert_eq!(items[0]["target"]["keyId"], op.id.as_str());
    let yaml = crate::cli::opscore(&s.base, &["audit", "--target", "a1", "-o", "yaml"]).await;
    assert!(yaml.ok().contains("audit.agent.registered"), "{yaml:?}");

    let bad = crate::cli::opscore(&s.base, &["audit", "--kind", "nonsense"]).await;
    assert!(bad.failed(1).contains("kind"), "{bad:?}");
    let refused = crate::cli::opscore_env(
        &[
            ("OPSCORE_URL", &s.base),
            ("OPSCORE_CLIENT_KEY", &op.plaintext),
        ],
        &["audit"],
    )
    .await;
    assert!(refused.failed(1).contains("forbidden"), "{refused:?}");
    s.stop().await;
}

crate::backend_tests!(
    every_change_is_audited_with_the_acting_key,
    filters_and_pages,
    only_admins_see_the_trail,
    a_change_and_its_entry_commit_together,
    each_entry_is_a_log_line,
    old_entries_are_pruned,
    the_cli_lists_the_trail,
);
