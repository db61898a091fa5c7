//! The auth matrix: every route × every kind of caller → the specified
//! status, against a real server on each backend. Each request carries a
//! body that would succeed for a caller with the right, so a refusal can
//! only come from authentication or authorisation.
//!
//! Callers: no key, an unknown key (well-formed and garbage), a revoked
//! key, an expired key, the bootstrap admin key, a managed admin key, an
//! operator, a registrar, an agent key for the agent in the path, and an
//! agent key for another agent.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use crate::common::keys::{key_with_role, make_key, revoke, unknown_key};
use crate::common::{assert_error, register_body, send, Backend, TestServer, KEY};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Who {
    NoKey,
    UnknownKey,
    GarbageKey,
    Revoked,
    Expired,
    Bootstrap,
    Admin,
    Operator,
    Registrar,
    AgentThis,
    AgentOther,
}

const EVERYONE: [Who; 11] = [
    Who::NoKey,
    Who::UnknownKey,
    Who::GarbageKey,
    Who::Revoked,
    Who::Expired,
    Who::Bootstrap,
    Who::Admin,
    Who::Operator,
    Who::Registrar,
    Who::AgentThis,
    Who::AgentOther,
];

/// How a row's body is sent.
#[derive(Debug, Clone)]
enum Body {
    None,
    Json(String),
}

/// One route with a body that succeeds, and the status each role gets.
/// `{n}` in the path or body is replaced by a fresh number per request.
#[derive(Debug, Clone)]
struct Row {
    method: Method,
    path: &'static str,
    body: Body,
    /// Status for admins (bootstrap and managed).
    admin: u16,
    operator: u16,
    registrar: u16,
    agent_this: u16,
    agent_other: u16,
    /// No authentication at all (health probes).
    public: bool,
    /// Before the request, store workflow `del-{n}` (for the DELETE row).
    make_workflow: bool,
    /// Only open the response (an event stream never ends).
    stream: bool,
    /// Before the request, cancel the matrix's session (so that running it
    /// again is allowed each time).
    cancel_first: bool,
}

fn row(method: Method, path: &'static str, statuses: [u16; 5]) -> Row {
    Row {
        method,
        path,
        body: Body::None,
        admin: statuses[0],
        operator: statuses[1],
        registrar: statuses[2],
        agent_this: statuses[3],
        agent_other: statuses[4],
        public: false,
        make_workflow: false,
        stream: false,
        cancel_first: false,
    }
}

fn with_body(mut r: Row, body: impl Into<String>) -> Row {
    r.body = Body::Json(body.into());
    r
}

/// A definition whose only task waits an hour: sessions of it stay
/// `started`, so cancelling them keeps answering 200.
fn definition(id: &str) -> Value {
    json!({"id": id, "name": "Matrix", "tasks": [
        {"taskId": "t1", "name": "Wait", "delaySeconds": 3600}
    ]})
}

fn rows(session: &str, victim: &str) -> Vec<Row> {
    use Method as M;
    let report = json!({"agentId": "a1", "timestamp": "2026-04-21T10:00:00+00:00",
        "state": "custom_busy", "details": {"by": "matrix"}})
    .to_string();
    let trigger = json!({"workflowDefinitionId": "mx", "initialPayload": {"x": 1}}).to_string();
    let new_key = json!({"name": "made-{n}", "role": "operator"}).to_string();
    // Paths with a session or key id are leaked into 'static strs: rows
    // are built once per test.
    let leak = |s: String| -> &'static str { Box::leak(s.into_boxed_str()) };
    let session_path = leak(format!("/v1/opscore/sessions/{session}"));
    let cancel_path = leak(format!("/v1/opscore/sessions/{session}/cancel"));
    let mut retry = row(
        M::POST,
        leak(format!("/v1/opscore/sessions/{session}/retry")),
        [200, 200, 403, 403, 403],
    );
    retry.cancel_first = true;
    let key_path = leak(format!("/v1/opscore/keys/{victim}"));
    let mut health = row(M::GET, "/health", [200; 5]);
    health.public = true;
    let mut ready = row(M::GET, "/ready", [200; 5]);
    ready.public = true;
    let mut events = row(M::GET, "/v1/opscore/events", [200, 200, 403, 200, 200]);
    events.stream = true;
    let mut events_a1 = row(
        M::GET,
        "/v1/opscore/events?agentId=a1",
        [200, 200, 403, 200, 403],
    );
    events_a1.stream = true;
    let mut delete_wf = row(
        M::DELETE,
        "/v1/opscore/workflows/del-{n}",
        [204, 403, 403, 403, 403],
    );
    delete_wf.make_workflow = true;
    // Open by design: probes, scrapers, the API document and the dashboard's
    // static files (which hold no data; the page asks for a key).
    let public = |path: &'static str| {
        let mut r = row(M::GET, path, [200; 5]);
        r.public = true;
        r
    };
    vec![
        health,
        ready,
        public("/metrics"),
        public("/openapi.json"),
        public("/docs"),
        public("/docs/docs.js"),
        public("/docs/docs.css"),
        public("/"),
        public("/dashboard/app.js"),
        with_body(
            row(
                M::POST,
                "/v1/opscore/internal/agent/notify",
                [200, 403, 200, 403, 403],
            ),
            register_body("a1", &["summarise"]),
        ),
        row(M::GET, "/v1/opscore/agents", [200, 200, 403, 403, 403]),
        row(M::GET, "/v1/opscore/agent/a1", [200, 200, 403, 200, 403]),
        with_body(
            row(
                M::POST,
                "/v1/opscore/agent/a1/state",
                [202, 202, 403, 202, 403],
            ),
            report,
        ),
        // A broken body: the right is checked before the body is read.
        with_body(
            row(
                M::POST,
                "/v1/opscore/agent/a1/state",
                [400, 400, 403, 400, 403],
            ),
            "{\"agentId\":",
        ),
        row(
            M::GET,
            "/v1/opscore/agent/a1/state",
            [200, 200, 403, 200, 403],
        ),
        row(
            M::GET,
            "/v1/opscore/agent/a1/state?index=0&wait=1s",
            [200, 200, 403, 200, 403],
        ),
        row(
            M::GET,
            "/v1/opscore/agent/a1/state/history",
            [200, 200, 403, 200, 403],
        ),
        // An agent key learns nothing about agents outside its scope, not
        // even whether they exist.
        row(
            M::GET,
            "/v1/opscore/agent/ghost/state",
            [404, 404, 403, 403, 403],
        ),
        with_body(
            row(M::POST, "/v1/opscore/workflows", [201, 403, 403, 403, 403]),
            definition("new-{n}").to_string(),
        ),
        row(M::GET, "/v1/opscore/workflows", [200, 200, 403, 403, 403]),
        row(
            M::GET,
            "/v1/opscore/workflows/mx",
            [200, 200, 403, 403, 403],
        ),
        delete_wf,
        with_body(
            row(
                M::POST,
                "/v1/opscore/agent/a1/workflow",
                [202, 202, 403, 403, 403],
            ),
            trigger,
        ),
        row(M::GET, session_path, [200, 200, 403, 403, 403]),
        row(M::POST, cancel_path, [200, 200, 403, 403, 403]),
        retry,
        row(M::GET, "/v1/opscore/sessions", [200, 200, 403, 403, 403]),
        row(
            M::GET,
            "/v1/opscore/sessions/counts",
            [200, 200, 403, 403, 403],
        ),
        row(
            M::GET,
            "/v1/opscore/workflows/mx/revisions",
            [200, 200, 403, 403, 403],
        ),
        row(
            M::GET,
            "/v1/opscore/agent/a1/sessions",
            [200, 200, 403, 403, 403],
        ),
        events,
        events_a1,
        with_body(
            row(M::POST, "/v1/opscore/keys", [201, 403, 403, 403, 403]),
            new_key,
        ),
        row(M::GET, "/v1/opscore/keys", [200, 403, 403, 403, 403]),
        row(M::GET, key_path, [200, 403, 403, 403, 403]),
        row(M::DELETE, key_path, [200, 403, 403, 403, 403]),
        row(
            M::GET,
            "/v1/opscore/audit?kind=key",
            [200, 403, 403, 403, 403],
        ),
    ]
}

/// The status (and error code) `who` must get on `r`.
fn expected(r: &Row, who: Who) -> (u16, Option<&'static str>) {
    if r.public {
        return (r.admin, None);
    }
    let status = match who {
        Who::NoKey => return (401, Some("missing_credentials")),
        Who::UnknownKey | Who::GarbageKey => return (401, Some("invalid_api_key")),
        Who::Revoked => return (401, Some("key_revoked")),
        Who::Expired => return (401, Some("key_expired")),
        Who::Bootstrap | Who::Admin => r.admin,
        Who::Operator => r.operator,
        Who::Registrar => r.registrar,
        Who::AgentThis => r.agent_this,
        Who::AgentOther => r.agent_other,
    };
    let code = match status {
        403 => Some("forbidden"),
        400 => Some("invalid_json"),
        404 => Some("agent_not_found"),
        _ => None,
    };
    (status, code)
}

async fn auth_matrix(backend: Backend) {
    // The matrix checks what each caller is told, not the throttle on
    // repeated failures (see failed_authentication_is_throttled): every
    // wrong key here comes from one address.
    let s = TestServer::start_with(backend, |c| c.auth_failure_burst = 1_000_000).await;
    // The expired key first: it needs a second to expire.
    let expired = make_key(
        &s,
        json!({"name": "short-lived", "role": "operator", "ttlSeconds": 1}),
    )
    .await;
    s.register("a1").await;
    s.register("a2").await;
    let admin = key_with_role(&s, "admin", &[]).await;
    let operator = key_with_role(&s, "operator", &[]).await;
    let registrar = key_with_role(&s, "registrar", &[]).await;
    let agent_this = key_with_role(&s, "agent", &["a1"]).await;
    let agent_other = key_with_role(&s, "agent", &["a2"]).await;
    let revoked = key_with_role(&s, "operator", &[]).await;
    revoke(&s, &revoked.id).await;
    let victim = key_with_role(&s, "registrar", &[]).await;
    let r = send(s.post("/v1/opscore/workflows").json(&definition("mx"))).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let r = send(
        s.post("/v1/opscore/agent/a1/workflow")
            .json(&json!({"workflowDefinitionId": "mx"})),
    )
    .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.body);
    let session = r.body["sessionId"].as_str().expect("sessionId").to_owned();
    // Past the expiry for sure.
    tokio::time::sleep(Duration::from_millis(1100)).await;

    let token = |who: Who| -> Option<String> {
        match who {
            Who::NoKey => None,
            Who::UnknownKey => Some(unknown_key()),
            Who::GarbageKey => Some("not-a-key-0123456789".into()),
            Who::Revoked => Some(revoked.plaintext.clone()),
            Who::Expired => Some(expired.plaintext.clone()),
            Who::Bootstrap => Some(KEY.into()),
            Who::Admin => Some(admin.plaintext.clone()),
            Who::Operator => Some(operator.plaintext.clone()),
            Who::Registrar => Some(registrar.plaintext.clone()),
            Who::AgentThis => Some(agent_this.plaintext.clone()),
            Who::AgentOther => Some(agent_other.plaintext.clone()),
        }
    };
    let counter = AtomicUsize::new(0);
    let mut checked = 0;
    for r in rows(&session, &victim.id) {
        for who in EVERYONE {
            let n = counter.fetch_add(1, Ordering::Relaxed).to_string();
            if r.make_workflow {
                let def = definition(&format!("del-{n}"));
                let made = send(s.post("/v1/opscore/workflows").json(&def)).await;
                assert_eq!(made.status, StatusCode::CREATED, "{}", made.body);
            }
            if r.cancel_first {
                let c = send(s.post(&format!("/v1/opscore/sessions/{session}/cancel"))).await;
                assert_eq!(c.status, StatusCode::OK, "{}", c.body);
            }
            let path = r.path.replace("{n}", &n);
            let mut rb = s.client.request(r.method.clone(), s.url(&path));
            if let Some(t) = token(who) {
                rb = rb.bearer_auth(t);
            }
            if let Body::Json(b) = &r.body {
                rb = rb
                    .header("content-type", "application/json")
                    .body(b.replace("{n}", &n));
            }
            let (status, code) = expected(&r, who);
            let what = format!("{} {path} as {who:?}", r.method);
            if r.stream && status == 200 {
                // Open the stream, look at the status, hang up.
                let resp = rb.send().await.expect("send");
                assert_eq!(resp.status().as_u16(), status, "{what}");
            } else {
                let resp = send(rb).await;
                assert_eq!(resp.status.as_u16(), status, "{what}: {}", resp.body);
                if let Some(code) = code {
                    assert_error(&resp, resp.status, code);
                }
                if status == 401 {
                    assert!(
                        resp.headers.contains_key("www-authenticate"),
                        "{what}: no WWW-Authenticate"
                    );
                }
            }
            checked += 1;
        }
    }
    // Every row was run for every caller (37 routes and variants).
    assert_eq!(checked, 37 * EVERYONE.len());
    s.stop().await;
}

/// A well-formed managed key that was never created, different each call.
fn guessed_key() -> String {
    let id = uuid::Uuid::new_v4().simple().to_string();
    format!("opk_{}_{}", &id[..16], "ab".repeat(32))
}

/// Failed authentication from one address is throttled after a burst: 429
/// `too_many_failures` with `Retry-After`, whatever the wrong key; keys
/// that are valid still work from that address, and the throttle lifts
/// once the client waits.
async fn failed_authentication_is_throttled(backend: Backend) {
    let s = TestServer::start(backend).await;
    s.register("a1").await;
    let agent = key_with_role(&s, "agent", &["a1"]).await;
    let operator = key_with_role(&s, "operator", &[]).await;
    let read = |key: String| {
        let url = s.url("/v1/opscore/agent/a1/state");
        let client = s.client.clone();
        async move { send(client.get(url).bearer_auth(key)).await }
    };
    assert_eq!(read(agent.plaintext.clone()).await.status, StatusCode::OK);

    let mut throttled = None;
    for i in 0..500 {
        let r = read(guessed_key()).await;
        match r.status.as_u16() {
            401 => assert_error(&r, StatusCode::UNAUTHORIZED, "invalid_api_key"),
            429 => {
                throttled = Some((i, r));
                break;
            }
            other => panic!("guess {i}: unexpected {other}: {}", r.body),
        }
    }
    let (failures, r) = throttled.expect("500 wrong keys in a row and none was throttled");
    assert!(failures >= 10, "throttled after only {failures} failures");
    assert_error(&r, StatusCode::TOO_MANY_REQUESTS, "too_many_failures");
    let wait: u64 = r.headers["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .expect("Retry-After in seconds");
    assert!((1..=60).contains(&wait), "Retry-After {wait}");
    // Every wrong key is refused alike while throttled: a guess, garbage,
    // a real key id with a wrong secret.
    let wrong_secret = format!(
        "{}{}",
        &agent.plaintext[..agent.plaintext.len() - 2],
        if agent.plaintext.ends_with("00") {
            "11"
        } else {
            "00"
        }
    );
    for bad in [guessed_key(), "garbage-key-0123456789".into(), wrong_secret] {
        let r = read(bad.clone()).await;
        assert_error(&r, StatusCode::TOO_MANY_REQUESTS, "too_many_failures");
    }
    // Valid keys from the same address still work.
    assert_eq!(read(KEY.into()).await.status, StatusCode::OK);
    assert_eq!(read(agent.plaintext.clone()).await.status, StatusCode::OK);
    // Once the client has waited, a key this server never saw works, and a
    // wrong one is told 401 again.
    tokio::time::sleep(Duration::from_secs(wait)).await;
    let r = read(operator.plaintext.clone()).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    tokio::time::sleep(Duration::from_secs(wait)).await;
    let r = read(guessed_key()).await;
    assert_error(&r, StatusCode::UNAUTHORIZED, "invalid_api_key");
    s.stop().await;
}

/// An unknown key id is looked up in the database once, then remembered
/// for a while: shown by taking the keys table away behind the server's
/// back, after which only ids it has not seen yet reach the database.
async fn unknown_key_ids_are_not_looked_up_again(backend: Backend) {
    let s = TestServer::start(backend).await;
    let read = |key: String| {
        let url = s.url("/v1/opscore/agents");
        let client = s.client.clone();
        async move { send(client.get(url).bearer_auth(key)).await }
    };
    let seen = guessed_key();
    let r = read(seen.clone()).await;
    assert_error(&r, StatusCode::UNAUTHORIZED, "invalid_api_key");

    s.db.execute("ALTER TABLE api_keys RENAME TO api_keys_away")
        .await;
    let again = read(seen.clone()).await;
    let fresh = read(guessed_key()).await;
    let admin = read(KEY.into()).await;
    s.db.execute("ALTER TABLE api_keys_away RENAME TO api_keys")
        .await;

    assert_error(&again, StatusCode::UNAUTHORIZED, "invalid_api_key");
    // The table really was gone: an id not seen before could not be read.
    assert!(
        fresh.status.is_server_error(),
        "a new unknown id was answered without the keys table: {} {}",
        fresh.status,
        fresh.body
    );
    assert_eq!(admin.status, StatusCode::OK, "{}", admin.body);
    s.stop().await;
}

backend_tests!(
    auth_matrix,
    failed_authentication_is_throttled,
    unknown_key_ids_are_not_looked_up_again,
);
