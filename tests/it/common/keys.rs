//! Helpers for tests of API keys: create keys through the API with the
//! bootstrap key, and send requests with any key.

use serde_json::{json, Value};

use super::{send, Resp, TestServer};

/// A key created through `POST /v1/opscore/keys`.
#[derive(Debug, Clone)]
pub struct MadeKey {
    pub id: String,
    pub plaintext: String,
    pub body: Value,
}

/// Create a key with the bootstrap admin key; panics unless 201.
pub async fn make_key(s: &TestServer, body: Value) -> MadeKey {
    let r = send(s.post("/v1/opscore/keys").json(&body)).await;
    assert_eq!(r.status, 201, "create key {body}: {}", r.body);
    MadeKey {
        id: r.body["keyId"].as_str().expect("keyId").to_owned(),
        plaintext: r.body["key"].as_str().expect("key").to_owned(),
        body: r.body,
    }
}

/// A key of `role` (agent keys scoped to `agents`).
pub async fn key_with_role(s: &TestServer, role: &str, agents: &[&str]) -> MadeKey {
    let mut body = json!({"name": format!("{role} key"), "role": role});
    if !agents.is_empty() {
        body["agentIds"] = json!(agents);
    }
    make_key(s, body).await
}

/// Revoke a key with the bootstrap admin key; panics unless 200.
pub async fn revoke(s: &TestServer, id: &str) -> Resp {
    let r = send(
        s.client
            .delete(s.url(&format!("/v1/opscore/keys/{id}")))
            .bearer_auth(super::KEY),
    )
    .await;
    assert_eq!(r.status, 200, "revoke {id}: {}", r.body);
    r
}

/// A well-formed managed key that was never created.
pub fn unknown_key() -> String {
    format!("opk_{}_{}", "0".repeat(16), "ab".repeat(32))
}
