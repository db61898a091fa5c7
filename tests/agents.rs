//! End-to-end tests of the agent registry and state routes, on both backends.

mod common;

use common::{Backend, TestServer};
use reqwest::StatusCode;

async fn register_then_state_is_unknown(backend: Backend) {
    let s = TestServer::start(backend).await;
    s.register("a1").await;
    let (status, body) = s.state("a1").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["agentId"], "a1");
    assert_eq!(body["state"], "UNKNOWN");
    let (status, body) = s
        .report("a1", "idle", "2026-04-21T10:00:00.123456+00:00")
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(
        body,
        serde_json::json!({"status": "success", "message": "State update accepted"})
    );
    let (_, body) = s.state("a1").await;
    assert_eq!(body["state"], "idle");
    assert_eq!(body["details"], serde_json::json!({"n": 1}));
    assert_eq!(body["timestamp"], "2026-04-21T10:00:00.123456+00:00");
    s.stop().await;
}

backend_tests!(register_then_state_is_unknown);
