//! Webhook secret rotation and replay protection, on both backends.
//! Deliveries are signed by Python's `hmac`, as AgentKit signs them.

use crate::common;

use crate::common::keys::key_with_role;
use crate::common::{
    agentkit_sign, assert_error, register_payload, send, Backend, TestServer, NOTIFY, SECRET,
};
use opscore::config::Secret;
use reqwest::StatusCode;
use serde_json::{json, Value};

const NEW_SECRET: &str = "agentkit-rotated-secret";

fn reg(id: &str, name: &str) -> Value {
    register_payload(id, name, &["summarise"], "http://agent-7:8080/task")
}

/// During a rotation the server holds the old and the new secret: a
/// delivery signed with either verifies, one with neither does not.
async fn old_and_new_secrets_both_verify(backend: Backend) {
    let s = TestServer::start_with(backend, |c| {
        c.more_webhook_secrets = vec![Secret::new(NEW_SECRET)];
    })
    .await;
    let r = s
        .notify_signed(&agentkit_sign(&reg("a1", "Old"), SECRET, 0, false).await)
        .await;
    assert_eq!(r.status, StatusCode::OK, "old secret: {}", r.body);
    let r = s
        .notify_signed(&agentkit_sign(&reg("a2", "New"), NEW_SECRET, 0, false).await)
        .await;
    assert_eq!(r.status, StatusCode::OK, "new secret: {}", r.body);
    let r = s
        .notify_signed(&agentkit_sign(&reg("a3", "Other"), "a-third-secret", 0, false).await)
        .await;
    assert_error(&r, StatusCode::UNAUTHORIZED, "invalid_signature");
    s.stop().await;

    // Once the old secret is retired, only the new one verifies.
    let s = TestServer::start_with(backend, |c| {
        c.webhook_secret = None;
        c.more_webhook_secrets = vec![Secret::new(NEW_SECRET)];
    })
    .await;
    let r = s
        .notify_signed(&agentkit_sign(&reg("a1", "Old"), SECRET, 0, false).await)
        .await;
    assert_error(&r, StatusCode::UNAUTHORIZED, "invalid_signature");
    let r = s
        .notify_signed(&agentkit_sign(&reg("a1", "New"), NEW_SECRET, 0, false).await)
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    s.stop().await;
}

/// The same signed delivery twice: the second is a replay and changes
/// nothing. A second delivery of the same body, signed anew, is accepted.
async fn a_replayed_signature_is_refused(backend: Backend) {
    let s = TestServer::start(backend).await;
    let first = agentkit_sign(&reg("a1", "First"), SECRET, 0, false).await;
    let r = s.notify_signed(&first).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let before = s.everything().await;
    let r = s.notify_signed(&first).await;
    assert_error(&r, StatusCode::UNAUTHORIZED, "webhook_replayed");
    // A replay of a DEREGISTER must not take the agent away either.
    let dereg = agentkit_sign(
        &json!({"event_type": "DEREGISTER", "agent_details": {"agentId": "a1"}}),
        SECRET,
        0,
        false,
    )
    .await;
    assert_eq!(s.notify_signed(&dereg).await.status, StatusCode::OK);
    let r = s.notify_bearer(&reg("a1", "First")).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let r = s.notify_signed(&dereg).await;
    assert_error(&r, StatusCode::UNAUTHORIZED, "webhook_replayed");
    assert_eq!(
        s.get_json("/v1/opscore/agent/a1").await.body["registered"],
        true
    );
    // Idempotent re-registration, signed anew (a different timestamp makes
    // a different signature: an RFC 3339 one, with microseconds), is
    // accepted.
    let again = agentkit_sign(&reg("a1", "First"), SECRET, 0, true).await;
    assert_ne!(again.signature, first.signature);
    let r = s.notify_signed(&again).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    // Registered, with the same details and history as after the first
    // delivery (only the times of the last contact move).
    let moving = |mut v: Value| {
        for a in v.as_array_mut().into_iter().flatten() {
            for field in ["lastSeen", "updatedAt", "deregisteredAt"] {
                a["agent"][field] = Value::Null;
            }
        }
        v
    };
    assert_eq!(moving(s.everything().await), moving(before));
    // The same signature with `sha256=` in front is the same signature.
    let mut prefixed = again.clone();
    prefixed.signature = format!("sha256={}", again.signature);
    let r = s.notify_signed(&prefixed).await;
    assert_error(&r, StatusCode::UNAUTHORIZED, "webhook_replayed");
    s.stop().await;
}

/// A captured signed delivery is still a replay after the server restarts
/// (the guard lived in memory and forgot), and for a second server on the
/// same database (a replica): accepted signatures are kept in the database.
async fn a_replay_is_refused_after_a_restart_and_by_another_server(backend: Backend) {
    let s = TestServer::start(backend).await;
    let captured = agentkit_sign(&reg("a1", "First"), SECRET, 0, false).await;
    let r = s.notify_signed(&captured).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let db = s.stop().await;
    let config = common::test_config(&db);
    let s = TestServer::start_on(db, config).await;
    let r = s.notify_signed(&captured).await;
    assert_error(&r, StatusCode::UNAUTHORIZED, "webhook_replayed");
    if backend == Backend::Postgres {
        // A second process on the same database (SQLite takes one).
        let other = common::ServerProcess::spawn(&s.db.url, s.db.dir.path()).await;
        let r = common::notify_signed_at(&s.client, &other.base, &captured).await;
        assert_error(&r, StatusCode::UNAUTHORIZED, "webhook_replayed");
        // And a fresh delivery sent to that replica is a replay on the first.
        let fresh = agentkit_sign(&reg("a2", "Second"), SECRET, 0, true).await;
        let r = common::notify_signed_at(&s.client, &other.base, &fresh).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
        let r = s.notify_signed(&fresh).await;
        assert_error(&r, StatusCode::UNAUTHORIZED, "webhook_replayed");
        other.kill().await;
    }
}

/// A registrar key registers with a bearer key; other roles may not.
async fn registrar_keys_register_and_others_may_not(backend: Backend) {
    let s = TestServer::start(backend).await;
    let registrar = key_with_role(&s, "registrar", &[]).await;
    let operator = key_with_role(&s, "operator", &[]).await;
    let post = |key: String, body: Value| {
        send(
            s.client
                .post(s.url(NOTIFY))
                .bearer_auth(key)
                .header("content-type", "application/json")
                .body(body.to_string()),
        )
    };
    let r = post(operator.plaintext.clone(), reg("a1", "x")).await;
    assert_error(&r, StatusCode::FORBIDDEN, "forbidden");
    assert_eq!(s.everything().await, json!([]));
    let r = post(registrar.plaintext.clone(), reg("a1", "x")).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    // The registrar can do nothing else.
    let r = send(
        s.client
            .get(s.url("/v1/opscore/agent/a1"))
            .bearer_auth(&registrar.plaintext),
    )
    .await;
    assert_error(&r, StatusCode::FORBIDDEN, "forbidden");
    s.stop().await;
}

backend_tests!(
    old_and_new_secrets_both_verify,
    a_replayed_signature_is_refused,
    a_replay_is_refused_after_a_restart_and_by_another_server,
    registrar_keys_register_and_others_may_not,
);
