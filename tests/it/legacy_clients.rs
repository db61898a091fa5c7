//! Clients written for the old service keep working unchanged (contract
//! part 1). Here: the old service's load scripts (Locust scenarios 3 and 4)
//! trigger the sample workflow with its definition inline, on every
//! trigger, while this service already stores a different definition under
//! that id. The old service ran the inline definition as sent; so must this
//! one (docs/api.md §1.4), leaving the stored one as it is.

use crate::common;

use std::path::PathBuf;
use std::time::Duration;

use crate::common::agentkit::FakeAgentKit;
use crate::common::{Backend, TestServer};
use opscore::config::DispatchTarget;
use reqwest::StatusCode;
use serde_json::{json, Value};

/// The trigger body the old load scripts send: the inline sample definition
/// from the old service's `docs/sample_workflow.json`, plus the `agentId`
/// and `context` fields it does not know (ignored, contract part 1).
fn locust_trigger(agent: &str) -> Value {
    json!({
        "agentId": agent,
        "workflowDefinition": {
            "id": "sample_workflow_id",
            "name": "Sample Load Test Workflow",
            "description": "A simple workflow for performance testing.",
            "version": "1.0",
            "tasks": [
                {"taskId": "step_1", "name": "First Step", "agentCapability": "test_capability",
                 "parameters": {"message": "This is the first step."}, "nextTaskId": "step_2"},
                {"taskId": "step_2", "name": "Second Step", "agentCapability": "another_capability",
                 "parameters": {"value": 123}, "nextTaskId": null}
            ]
        },
        "context": {"load_test": true, "user": format!("user-{agent}"), "scenario": 3}
    })
}

async fn inline_definition_runs_as_sent_beside_a_different_stored_one(backend: Backend) {
    let kit = FakeAgentKit::start().await;
    let url: url::Url = kit.base.parse().unwrap();
    let s = TestServer::start_with(backend, move |c| {
        c.dispatch.target = DispatchTarget::AgentKit(url);
        c.dispatch.poll_interval = Duration::from_millis(20);
        // The service's own sample, stored under the same id.
        c.workflows_dir = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/workflows"));
        c.workflows_dir_explicit = true;
    })
    .await;
    let stored_before = s.get_json("/v1/opscore/workflows/sample_workflow_id").await;
    assert_eq!(stored_before.status, StatusCode::OK);
    assert_eq!(stored_before.body["name"], "Sample");

    let mut sessions = Vec::new();
    for agent in ["workflow-agent-10001", "workflow-agent-10002"] {
        s.register(agent).await;
        // Every trigger sends the definition again.
        for _ in 0..2 {
            let r = common::send(
                s.post(&format!("/v1/opscore/agent/{agent}/workflow"))
                    .json(&locust_trigger(agent)),
            )
            .await;
            assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.body);
            assert_eq!(r.body["workflowId"], "sample_workflow_id");
            assert_eq!(r.body["message"], "Workflow triggered successfully");
            sessions.push(r.body["sessionId"].as_str().unwrap().to_owned());
        }
    }
    // Each session runs the inline tasks, not the stored ones.
    for sid in &sessions {
        let r = s.get_json(&format!("/v1/opscore/sessions/{sid}")).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
        assert_eq!(r.body["tasks"][0]["name"], "First Step", "{}", r.body);
        assert_eq!(
            r.body["tasks"][0]["payload"],
            json!({"message": "This is the first step."})
        );
    }
    let calls = kit.wait_calls(2, 5).await;
    for call in &calls {
        assert_eq!(call.body["task_name"], "First Step", "{:?}", call.body);
    }
    // The stored definition is left as it was.
    let stored_after = s.get_json("/v1/opscore/workflows/sample_workflow_id").await;
    assert_eq!(stored_after.body, stored_before.body);
}

/// An inline definition whose id is not stored yet is stored (docs/api.md §1.4).
async fn a_new_inline_definition_is_stored(backend: Backend) {
    let s = TestServer::start(backend).await;
    s.register("workflow-agent-1").await;
    let mut body = locust_trigger("workflow-agent-1");
    body["workflowDefinition"]["id"] = json!("load_test_workflow");
    let missing = s.get_json("/v1/opscore/workflows/load_test_workflow").await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    let r = common::send(
        s.post("/v1/opscore/agent/workflow-agent-1/workflow")
            .json(&body),
    )
    .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.body);
    let stored = s.get_json("/v1/opscore/workflows/load_test_workflow").await;
    assert_eq!(stored.status, StatusCode::OK, "{}", stored.body);
    assert_eq!(stored.body["name"], "Sample Load Test Workflow");
}

backend_tests!(
    inline_definition_runs_as_sent_beside_a_different_stored_one,
    a_new_inline_definition_is_stored,
);
