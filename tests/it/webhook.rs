//! End-to-end tests of the registration webhook (docs/api.md §1.1), on both
//! backends. Signed webhooks are built and signed by Python's `json`, `hmac`
//! and `hashlib`, exactly as AgentKit does, never by our own `sign`.

use crate::common;

use crate::common::{
    agentkit_sign, assert_error, assert_invalid_field, deregister_payload, parse_time,
    register_payload, send, Backend, TestServer, KEY, NOTIFY, SECRET,
};
use reqwest::StatusCode;
use serde_json::{json, Value};

fn success(id: &str) -> Value {
    json!({"status": "success", "message": format!("Agent {id} registered successfully.")})
}

/// A REGISTER payload for `id` with a fixed name and endpoint.
fn reg(id: &str) -> Value {
    register_payload(id, "Summariser", &["summarise"], "http://agent-7:8080/task")
}

async fn signed_like_agentkit_is_accepted(backend: Backend) {
    let s = TestServer::start(backend).await;
    // A non-ASCII name: Python escapes it (\u00e9) in the signed bytes.
    let mut payload = register_payload(
        "5b0e-a1:x_y.z",
        "Résumé writer",
        &["summarise", "translate"],
        "https://agent-7.example:8443/task",
    );
    // Unknown fields are ignored, wherever they are.
    payload["sentBy"] = json!("agentkit 0.9");
    payload["agent_details"]["region"] = json!("eu");
    let signed = agentkit_sign(&payload, SECRET, 0, false).await;
    assert!(
        !signed.body.contains("\": ") && !signed.body.contains(", \""),
        "compact body: {}",
        signed.body
    );
    assert!(signed.body.contains(r"R\u00e9sum\u00e9"), "{}", signed.body);
    assert!(signed.timestamp.bytes().all(|b| b.is_ascii_digit()));
    let r = s.notify_signed(&signed).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body, success("5b0e-a1:x_y.z"));

    // The state is UNKNOWN at once (no eventual consistency).
    let state = s.get_json("/v1/opscore/agent/5b0e-a1:x_y.z/state").await;
    assert_eq!(state.status, StatusCode::OK, "{}", state.body);
    assert_eq!(state.body["agentId"], "5b0e-a1:x_y.z");
    assert_eq!(state.body["state"], "UNKNOWN");
    assert_eq!(state.body["details"], Value::Null);

    let agent = s.get_json("/v1/opscore/agent/5b0e-a1:x_y.z").await;
    assert_eq!(agent.status, StatusCode::OK, "{}", agent.body);
    assert_eq!(agent.body["agentName"], "Résumé writer");
    assert_eq!(agent.body["version"], "1.0");
    assert_eq!(
        agent.body["capabilities"],
        json!(["summarise", "translate"])
    );
    assert_eq!(
        agent.body["contactEndpoint"],
        "https://agent-7.example:8443/task"
    );
    assert_eq!(agent.body["metadata"], json!({"team": "blue"}));
    assert_eq!(agent.body["registered"], true);
    // registrationTime in the body is ignored: registeredAt is the server's.
    let registered_at = parse_time(&agent.body["registeredAt"]);
    let age = chrono::Utc::now().signed_duration_since(registered_at);
    assert!(age.num_hours().abs() < 1, "registeredAt {registered_at}");
    assert_eq!(s.history("5b0e-a1:x_y.z").await.len(), 1);
    s.stop().await;
}

/// AgentKit's webhook body exactly as it sends it: `registrationTime`
/// present, and `metadata` absent (real deployments register without it,
/// since AgentKit's own webhook fails when an agent has metadata) or a
/// plain object. Both are accepted, signed by Python as AgentKit signs.
async fn agentkit_exact_bodies_with_and_without_metadata(backend: Backend) {
    let s = TestServer::start(backend).await;
    let without = json!({"event_type": "REGISTER", "agent_details": {
        "agentId": "ak-1", "agentName": "Example", "version": "0.1.0",
        "capabilities": ["echo"], "contactEndpoint": "http://localhost:8001/run",
        "registrationTime": "2026-12-05T10:00:00.123456"}});
    let mut with = without.clone();
    with["agent_details"]["agentId"] = json!("ak-2");
    with["agent_details"]["metadata"] = json!({"owner": "team-a", "gpu": false});
    for (id, body, metadata) in [
        ("ak-1", without, json!({})),
        ("ak-2", with, json!({"owner": "team-a", "gpu": false})),
    ] {
        let r = s
            .notify_signed(&agentkit_sign(&body, SECRET, 0, false).await)
            .await;
        assert_eq!(r.status, StatusCode::OK, "{id}: {}", r.body);
        assert_eq!(r.body, success(id));
        let agent = s.get_json(&format!("/v1/opscore/agent/{id}")).await;
        assert_eq!(agent.body["metadata"], metadata, "{}", agent.body);
        assert_eq!(s.state(id).await.1["state"], "UNKNOWN");
    }
}

async fn one_changed_byte_is_refused(backend: Backend) {
    let s = TestServer::start(backend).await;
    let signed = agentkit_sign(&reg("a1"), SECRET, 0, false).await;
    let tampered = signed.body.replacen("Summariser", "Summarisor", 1);
    let diff = signed
        .body
        .bytes()
        .zip(tampered.bytes())
        .filter(|(a, b)| a != b)
        .count();
    assert_eq!((diff, signed.body.len()), (1, tampered.len()));
    let mut bad = signed.clone();
    bad.body = tampered;
    let r = s.notify_signed(&bad).await;
    assert_error(&r, StatusCode::UNAUTHORIZED, "invalid_signature");
    assert_eq!(s.everything().await, json!([]));

    // Also refused against an existing agent: its details stay as they were.
    s.notify_signed(&signed).await;
    let before = s.everything().await;
    let update = agentkit_sign(
        &register_payload("a1", "Renamed", &["other"], "http://elsewhere:1/x"),
        SECRET,
        0,
        false,
    )
    .await;
    let mut bad = update.clone();
    bad.body = update.body.replacen("Renamed", "Renamer", 1);
    let r = s.notify_signed(&bad).await;
    assert_error(&r, StatusCode::UNAUTHORIZED, "invalid_signature");
    // A signature that is not hex, or has the wrong length.
    for sig in ["zz".repeat(32), "ab".repeat(31), String::new()] {
        let mut bad = update.clone();
        bad.signature = sig;
        let r = s.notify_signed(&bad).await;
        assert_error(&r, StatusCode::UNAUTHORIZED, "invalid_signature");
    }
    assert_eq!(s.everything().await, before);
    s.stop().await;
}

async fn stale_timestamp_is_refused(backend: Backend) {
    let s = TestServer::start(backend).await;
    for (age, rfc3339) in [(600, false), (-600, false), (600, true)] {
        let signed = agentkit_sign(&reg("a1"), SECRET, age, rfc3339).await;
        let r = s.notify_signed(&signed).await;
        assert_error(&r, StatusCode::UNAUTHORIZED, "stale_timestamp");
    }
    // A timestamp that is neither Unix seconds nor RFC 3339.
    let mut signed = agentkit_sign(&reg("a1"), SECRET, 0, false).await;
    signed.timestamp = "yesterday".into();
    let r = s.notify_signed(&signed).await;
    assert_error(&r, StatusCode::UNAUTHORIZED, "invalid_signature");
    assert_eq!(s.everything().await, json!([]));
    s.stop().await;
}

async fn wrong_secret_is_refused(backend: Backend) {
    let s = TestServer::start(backend).await;
    let signed = agentkit_sign(&reg("a1"), "not-the-secret", 0, false).await;
    let r = s.notify_signed(&signed).await;
    assert_error(&r, StatusCode::UNAUTHORIZED, "invalid_signature");
    // Only one of the two headers.
    let signed = agentkit_sign(&reg("a1"), SECRET, 0, false).await;
    let r = send(
        s.client
            .post(s.url(NOTIFY))
            .header("content-type", "application/json")
            .header("X-AgentKit-Signature", &signed.signature)
            .body(signed.body.clone()),
    )
    .await;
    assert_error(&r, StatusCode::UNAUTHORIZED, "missing_signature");
    assert_eq!(s.everything().await, json!([]));
    s.stop().await;
}

async fn rfc3339_timestamp_is_accepted(backend: Backend) {
    let s = TestServer::start(backend).await;
    let signed = agentkit_sign(&reg("a1"), SECRET, 0, true).await;
    assert!(signed.timestamp.contains('T'), "{}", signed.timestamp);
    let r = s.notify_signed(&signed).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body, success("a1"));
    assert_eq!(
        s.get_json("/v1/opscore/agent/a1/state").await.body["state"],
        "UNKNOWN"
    );
    s.stop().await;
}

async fn bearer_key_instead_of_signature(backend: Backend) {
    let s = TestServer::start(backend).await;
    let r = s.notify_bearer(&reg("a1")).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body, success("a1"));
    let before = s.everything().await;
    for auth in ["Bearer wrong-key-0123456789", "Basic x", "Bearer"] {
        let r = send(
            s.client
                .post(s.url(NOTIFY))
                .header("authorization", auth)
                .header("content-type", "application/json")
                .body(reg("a2").to_string()),
        )
        .await;
        let code = if auth.contains("wrong") {
            "invalid_api_key"
        } else {
            "invalid_authorization"
        };
        assert_error(&r, StatusCode::UNAUTHORIZED, code);
    }
    assert_eq!(s.everything().await, before);
    s.stop().await;
}

async fn unsigned_is_refused_by_default(backend: Backend) {
    let s = TestServer::start(backend).await;
    let r = s.notify_unsigned(&reg("a1")).await;
    assert_error(&r, StatusCode::UNAUTHORIZED, "missing_credentials");
    assert_eq!(
        r.headers.get("www-authenticate").map(|v| v.as_bytes()),
        Some(&b"Bearer"[..])
    );
    assert_eq!(s.everything().await, json!([]));
    s.stop().await;

    // A server with no secret cannot check a signature: refused too.
    let s = TestServer::start_with(backend, |c| c.webhook_secret = None).await;
    let signed = agentkit_sign(&reg("a1"), SECRET, 0, false).await;
    let r = s.notify_signed(&signed).await;
    assert_error(&r, StatusCode::UNAUTHORIZED, "invalid_signature");
    let r = s.notify_unsigned(&reg("a1")).await;
    assert_error(&r, StatusCode::UNAUTHORIZED, "missing_credentials");
    assert_eq!(s.everything().await, json!([]));
    s.stop().await;
}

async fn unsigned_allowed_when_configured(backend: Backend) {
    let s = TestServer::start_with(backend, |c| c.allow_unsigned_notify = true).await;
    // A bad signature, a stale one, or a wrong key is still refused.
    let signed = agentkit_sign(&reg("a1"), "not-the-secret", 0, false).await;
    let r = s.notify_signed(&signed).await;
    assert_error(&r, StatusCode::UNAUTHORIZED, "invalid_signature");
    let signed = agentkit_sign(&reg("a1"), SECRET, 600, false).await;
    let r = s.notify_signed(&signed).await;
    assert_error(&r, StatusCode::UNAUTHORIZED, "stale_timestamp");
    let r = send(
        s.client
            .post(s.url(NOTIFY))
            .header("authorization", "Bearer wrong-key-0123456789")
            .header("content-type", "application/json")
            .body(reg("a1").to_string()),
    )
    .await;
    assert_error(&r, StatusCode::UNAUTHORIZED, "invalid_api_key");
    assert_eq!(s.everything().await, json!([]));

    let r = s.notify_unsigned(&reg("a1")).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body, success("a1"));
    assert_eq!(
        s.get_json("/v1/opscore/agent/a1/state").await.body["state"],
        "UNKNOWN"
    );
    s.stop().await;
}

async fn unknown_event_type_is_400(backend: Backend) {
    let s = TestServer::start(backend).await;
    for event in ["UPDATE", "", "REGISTERED"] {
        let mut body = reg("a1");
        body["event_type"] = json!(event);
        let r = s.notify_bearer(&body).await;
        assert_error(&r, StatusCode::BAD_REQUEST, "unknown_event_type");
        // Signed the AgentKit way too.
        let r = s
            .notify_signed(&agentkit_sign(&body, SECRET, 0, false).await)
            .await;
        assert_error(&r, StatusCode::BAD_REQUEST, "unknown_event_type");
    }
    assert_eq!(s.everything().await, json!([]));
    s.stop().await;
}

async fn event_type_is_case_insensitive(backend: Backend) {
    let s = TestServer::start(backend).await;
    for (id, event) in [("a1", "register"), ("a2", "Register"), ("a3", "rEgIsTeR")] {
        let mut body = reg(id);
        body["event_type"] = json!(event);
        let r = s
            .notify_signed(&agentkit_sign(&body, SECRET, 0, false).await)
            .await;
        assert_eq!(r.status, StatusCode::OK, "{event}: {}", r.body);
        assert_eq!(r.body, success(id));
    }
    let r = s
        .notify_bearer(&json!({"event_type": "deregister", "agent_details": {"agentId": "a2"}}))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let agents = s.get_json("/v1/opscore/agents").await;
    let ids: Vec<&str> = agents.body["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|a| a["agentId"].as_str().expect("id"))
        .collect();
    assert_eq!(ids, ["a1", "a3"]);
    s.stop().await;
}

async fn invalid_registration_names_the_field(backend: Backend) {
    let s = TestServer::start(backend).await;
    let cases: Vec<(Value, &str)> = vec![
        (reg("a b"), "agent_details.agentId"),
        (reg("a/b"), "agent_details.agentId"),
        (reg(""), "agent_details.agentId"),
        (reg(&"x".repeat(129)), "agent_details.agentId"),
        (
            json!({"event_type": "REGISTER", "agent_details": {"agentName": "S", "version": "1",
                "contactEndpoint": "http://a:1/"}}),
            "agent_details.agentId",
        ),
        (
            json!({"event_type": "REGISTER", "agent_details": {"agentId": "a1", "version": "1",
                "contactEndpoint": "http://a:1/"}}),
            "agent_details.agentName",
        ),
        (
            json!({"event_type": "REGISTER", "agent_details": {"agentId": "a1", "agentName": "S",
                "contactEndpoint": "http://a:1/"}}),
            "agent_details.version",
        ),
        (
            json!({"event_type": "REGISTER", "agent_details": {"agentId": "a1", "agentName": "S",
                "version": "1"}}),
            "agent_details.contactEndpoint",
        ),
        (json!({"event_type": "REGISTER"}), "agent_details"),
        (json!({"agent_details": {"agentId": "a1"}}), "event_type"),
        (
            json!({"event_type": "DEREGISTER", "agent_details": {"agentId": "a b"}}),
            "agent_details.agentId",
        ),
    ];
    for (body, field) in cases {
        let r = s.notify_bearer(&body).await;
        assert_invalid_field(&r, field);
    }
    for endpoint in [
        "ftp://agent-7/task",
        "mailto:ops@example.com",
        "/relative/task",
        "agent-7:8080/task",
        "http://",
        "not a url",
    ] {
        let body = register_payload("a1", "S", &[], endpoint);
        let r = s.notify_bearer(&body).await;
        assert_invalid_field(&r, "agent_details.contactEndpoint");
        // The same through the signed path.
        let r = s
            .notify_signed(&agentkit_sign(&body, SECRET, 0, false).await)
            .await;
        assert_invalid_field(&r, "agent_details.contactEndpoint");
    }
    // Wrong types are 422 naming the field as well.
    let mut body = reg("a1");
    body["agent_details"]["capabilities"] = json!("summarise");
    assert_invalid_field(&s.notify_bearer(&body).await, "agent_details.capabilities");
    let mut body = reg("a1");
    body["agent_details"]["metadata"] = json!([1]);
    assert_invalid_field(&s.notify_bearer(&body).await, "agent_details.metadata");
    assert_eq!(s.everything().await, json!([]));

    // Not JSON: 400; not declared as JSON: 415.
    let r = send(
        s.post(NOTIFY)
            .header("content-type", "application/json")
            .body("{\"event_type\":"),
    )
    .await;
    assert_error(&r, StatusCode::BAD_REQUEST, "invalid_json");
    let r = send(
        s.post(NOTIFY)
            .header("content-type", "text/plain")
            .body(reg("a1").to_string()),
    )
    .await;
    assert_error(
        &r,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
    );
    assert_eq!(s.everything().await, json!([]));
    s.stop().await;
}

async fn reregistration_updates_details_and_keeps_state(backend: Backend) {
    let s = TestServer::start(backend).await;
    let r = s.notify_bearer(&reg("a1")).await;
    assert_eq!(r.status, StatusCode::OK);
    let base = common::future_base();
    let r = s
        .report_json(
            "a1",
            &json!({"agentId": "a1", "timestamp": common::ts_at(base, 0), "state": "active",
                "details": {"task": 1}}),
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.body);
    let before = s.get_json("/v1/opscore/agent/a1").await.body;
    let last_seen_before = parse_time(&before["lastSeen"]);
    let history_before = s.history("a1").await;
    assert_eq!(history_before.len(), 2);

    let signed = agentkit_sign(
        &register_payload(
            "a1",
            "Summariser v2",
            &["translate"],
            "https://new-host:9000/run",
        ),
        SECRET,
        0,
        false,
    )
    .await;
    let r = s.notify_signed(&signed).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body, success("a1"));

    let after = s.get_json("/v1/opscore/agent/a1").await.body;
    assert_eq!(after["agentName"], "Summariser v2");
    assert_eq!(after["capabilities"], json!(["translate"]));
    assert_eq!(after["contactEndpoint"], "https://new-host:9000/run");
    assert_eq!(after["registeredAt"], before["registeredAt"]);
    assert_eq!(after["currentState"], before["currentState"]);
    assert!(parse_time(&after["lastSeen"]) >= last_seen_before);
    assert_eq!(after["currentState"]["state"], "active");
    assert_eq!(s.history("a1").await, history_before);
    // The capability index follows the new details.
    let r = s.get_json("/v1/opscore/agents?capability=summarise").await;
    assert_eq!(r.body["items"], json!([]), "{}", r.body);
    let r = s.get_json("/v1/opscore/agents?capability=translate").await;
    assert_eq!(r.body["items"][0]["agentId"], "a1", "{}", r.body);
    s.stop().await;
}

async fn deregister_then_register_again(backend: Backend) {
    let s = TestServer::start(backend).await;
    s.register("a1").await;
    let base = common::future_base();
    let report = |secs: i64, state: &str| {
        json!({"agentId": "a1", "timestamp": common::ts_at(base, secs), "state": state,
            "details": {"at": secs}})
    };
    assert_eq!(
        s.report_json("a1", &report(0, "idle")).await.status,
        StatusCode::ACCEPTED
    );

    let signed = agentkit_sign(&deregister_payload("a1"), SECRET, 0, false).await;
    let r = s.notify_signed(&signed).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["status"], "success");
    assert!(
        r.body["message"].as_str().is_some_and(|m| m.contains("a1")),
        "{}",
        r.body
    );

    let before = s.everything().await;
    let r = s.report_json("a1", &report(1, "active")).await;
    assert_error(&r, StatusCode::NOT_FOUND, "agent_not_found");
    assert_eq!(s.everything().await, before);

    // State and history stay readable.
    let state = s.get_json("/v1/opscore/agent/a1/state").await;
    assert_eq!(state.status, StatusCode::OK);
    assert_eq!(state.body["state"], "idle");
    assert_eq!(s.history("a1").await.len(), 2);
    let agent = s.get_json("/v1/opscore/agent/a1").await.body;
    let registered_at = agent["registeredAt"].clone();
    assert_eq!(agent["registered"], false);
    assert!(agent["deregisteredAt"].is_string(), "{agent}");
    let listed = s.get_json("/v1/opscore/agents").await.body;
    assert_eq!(listed["items"], json!([]));
    // Deregistering again is harmless.
    assert_eq!(
        s.notify_bearer(&deregister_payload("a1")).await.status,
        StatusCode::OK
    );

    // Registering again makes it accept reports, keeping its history.
    s.register("a1").await;
    let agent = s.get_json("/v1/opscore/agent/a1").await.body;
    assert_eq!(agent["registered"], true);
    assert_eq!(agent["deregisteredAt"], Value::Null);
    assert_eq!(agent["registeredAt"], registered_at);
    assert_eq!(agent["currentState"]["state"], "idle");
    let r = s.report_json("a1", &report(2, "active")).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.body);
    assert_eq!(
        s.get_json("/v1/opscore/agent/a1/state").await.body["state"],
        "active"
    );
    assert_eq!(s.history("a1").await.len(), 3);
    s.stop().await;
}

async fn deregister_unknown_agent_is_404(backend: Backend) {
    let s = TestServer::start(backend).await;
    s.register("a1").await;
    let before = s.everything().await;
    let r = s.notify_bearer(&deregister_payload("ghost")).await;
    assert_error(&r, StatusCode::NOT_FOUND, "agent_not_found");
    let signed = agentkit_sign(&deregister_payload("ghost"), SECRET, 0, false).await;
    let r = s.notify_signed(&signed).await;
    assert_error(&r, StatusCode::NOT_FOUND, "agent_not_found");
    assert_eq!(s.everything().await, before);
    // The key is not echoed in any error.
    assert!(!r.body.to_string().contains(KEY));
    s.stop().await;
}

async fn nul_characters_are_422_on_every_backend(backend: Backend) {
    // SQLite would store a NUL character, PostgreSQL cannot: the same
    // request must get the same answer on both, a 422 naming the field.
    let s = TestServer::start(backend).await;
    s.register("a1").await;
    let before = s.everything().await;
    let endpoint = "http://agent-7:8080/task";
    let cases: Vec<(Value, &str)> = vec![
        (
            register_payload("a2", "bad\u{0}name", &["x"], endpoint),
            "agent_details.agentName",
        ),
        (
            register_payload("a1", "bad\u{0}name", &["x"], endpoint),
            "agent_details.agentName",
        ),
        (
            register_payload("a2", "ok", &["x\u{0}"], endpoint),
            "agent_details.capabilities",
        ),
        (
            register_payload("a2", "ok", &["x"], "http://agent-7:8080/\u{0}"),
            "agent_details.contactEndpoint",
        ),
    ];
    for (body, field) in cases {
        assert_invalid_field(&s.notify_bearer(&body).await, field);
        let signed = agentkit_sign(&body, SECRET, 0, false).await;
        assert_invalid_field(&s.notify_signed(&signed).await, field);
    }
    let mut body = reg("a2");
    body["agent_details"]["version"] = json!("1.0\u{0}");
    assert_invalid_field(&s.notify_bearer(&body).await, "agent_details.version");
    assert_eq!(s.everything().await, before);
    // NUL inside metadata is stored escaped, which both backends can hold.
    let mut body = reg("a2");
    body["agent_details"]["metadata"] = json!({"k\u{0}": "v\u{0}"});
    let r = s.notify_bearer(&body).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let agent = s.get_json("/v1/opscore/agent/a2").await;
    assert_eq!(agent.body["metadata"], json!({"k\u{0}": "v\u{0}"}));
    s.stop().await;
}

backend_tests!(
    signed_like_agentkit_is_accepted,
    agentkit_exact_bodies_with_and_without_metadata,
    one_changed_byte_is_refused,
    stale_timestamp_is_refused,
    wrong_secret_is_refused,
    rfc3339_timestamp_is_accepted,
    bearer_key_instead_of_signature,
    unsigned_is_refused_by_default,
    unsigned_allowed_when_configured,
    unknown_event_type_is_400,
    event_type_is_case_insensitive,
    invalid_registration_names_the_field,
    reregistration_updates_details_and_keeps_state,
    deregister_then_register_again,
    deregister_unknown_agent_is_404,
    nul_characters_are_422_on_every_backend,
);
