//! Pools, parallel tasks, outputs and why a task waits (docs/api.md
//! §3.3-§3.6), end to end: Ops-Core dispatches to the scripted fake
//! AgentKit and the test (or a scripted agent behind the fake) reports.
//! Every test runs on SQLite and on PostgreSQL.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use opscore::config::{Config, DispatchTarget};
use opscore::domain::workflow::Backoff;
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::common::agentkit::{Call, FakeAgentKit};
use crate::common::sse::Stream;
use crate::common::{register_at, Backend, TestServer, KEY};

async fn start(
    backend: Backend,
    kit: &FakeAgentKit,
    adjust: impl FnOnce(&mut Config) + Send,
) -> TestServer {
    let url: url::Url = kit.base.parse().expect("fake url");
    TestServer::start_with(backend, move |c| {
        c.dispatch.target = DispatchTarget::AgentKit(url);
        c.dispatch.poll_interval = Duration::from_millis(20);
        c.db.engine.backoff = Backoff {
            base_ms: 40,
            factor: 2.0,
            cap_ms: 200,
        };
        c.workflows_dir = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/workflows"));
        adjust(c);
    })
    .await
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339()
}

async fn report(s: &TestServer, agent: &str, state: &str, details: Value) {
    report_at(&s.client, &s.base, agent, state, details).await
}

async fn report_at(client: &reqwest::Client, base: &str, agent: &str, state: &str, details: Value) {
    let r = client
        .post(format!("{base}/v1/opscore/agent/{agent}/state"))
        .bearer_auth(KEY)
        .json(&json!({"agentId": agent, "timestamp": now(), "state": state, "details": details}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED, "{:?}", r.text().await);
}

async fn put_workflow(s: &TestServer, def: Value) -> (StatusCode, Value) {
    let r = s
        .post("/v1/opscore/workflows")
        .json(&def)
        .send()
        .await
        .unwrap();
    (r.status(), r.json().await.unwrap_or(Value::Null))
}

async fn pool_trigger(s: &TestServer, workflow: &str, body: Value) -> (StatusCode, Value) {
    let r = s
        .post(&format!("/v1/opscore/workflows/{workflow}/trigger"))
        .json(&body)
        .send()
        .await
        .unwrap();
    (r.status(), r.json().await.unwrap_or(Value::Null))
}

async fn pool_session(s: &TestServer, workflow: &str, body: Value) -> String {
    let (status, v) = pool_trigger(s, workflow, body).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{v}");
    assert_eq!(v["message"], "Workflow triggered successfully");
    assert_eq!(v["workflowId"], workflow);
    v["sessionId"].as_str().unwrap().to_owned()
}

fn task<'a>(session: &'a Value, id: &str) -> &'a Value {
    session["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["taskId"] == id)
        .unwrap_or_else(|| panic!("no task {id} in {session:#}"))
}

/// An agent behind the fake AgentKit: each task it is sent, it starts,
/// works on for `work`, and finishes with an output naming the task and
/// the keys of its inputs. It records a violation when it is sent a task
/// while it still holds one.
#[derive(Clone, Default)]
struct Workers {
    busy: Arc<Mutex<HashSet<String>>>,
    violations: Arc<Mutex<Vec<String>>>,
}

impl Workers {
    fn play(&self, kit: &FakeAgentKit, s: &TestServer, work: Duration) {
        let (me, client, base) = (self.clone(), s.client.clone(), s.base.clone());
        kit.on_call(Arc::new(move |c: &Call| {
            if !me.busy.lock().unwrap().insert(c.agent_id.clone()) {
                me.violations
                    .lock()
                    .unwrap()
                    .push(format!("{} sent a task while busy", c.agent_id));
            }
            let (me, client, base, c) = (me.clone(), client.clone(), base.clone(), c.clone());
            tokio::spawn(async move {
                let run = c.body["opscore_task_id"].as_str().unwrap().to_owned();
                report_at(
                    &client,
                    &base,
                    &c.agent_id,
                    "active",
                    json!({"taskId": run}),
                )
                .await;
                tokio::time::sleep(work).await;
                let keys: Vec<String> = c.body["inputs"]
                    .as_object()
                    .map(|o| o.keys().cloned().collect())
                    .unwrap_or_default();
                let output = json!({"task": c.body["task_name"], "inputs": keys});
                // Free before saying so: a task sent after this report is
                // no violation.
                me.busy.lock().unwrap().remove(&c.agent_id);
                report_at(
                    &client,
                    &base,
                    &c.agent_id,
                    "idle",
                    json!({"taskId": run, "output": output}),
                )
                .await;
            });
        }));
    }
}

fn independent(n: usize) -> Value {
    let tasks: Vec<Value> = (0..n)
        .map(|i| {
            json!({"taskId": format!("t{i}"), "name": format!("Task {i}"),
                   "agentCapability": "summarise", "dependsOn": []})
        })
        .collect();
    json!({"id": "fan", "name": "Fan out", "tasks": tasks})
}

async fn six_independent_tasks_share_the_capable_agents(backend: Backend) {
    let kit = FakeAgentKit::start().await;
    let s = start(backend, &kit, |_| {}).await;
    for a in ["p1", "p2", "p3"] {
        register_at(&s.client, &s.base, a, &["summarise", "translate"]).await;
    }
    register_at(&s.client, &s.base, "incapable", &["translate"]).await;
    let workers = Workers::default();
    workers.play(&kit, &s, Duration::from_millis(150));
    let (status, body) = put_workflow(&s, independent(6)).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let sid = pool_session(&s, "fan", json!({"initialPayload": {"doc": 1}})).await;
    let v = s.wait_session(&sid, |v| v["status"] == "completed").await;
    assert_eq!(v["agentId"], Value::Null);
    assert_eq!(v["agentSelector"], json!({}));
    let calls = kit.calls();
    assert_eq!(calls.len(), 6, "one delivery per task");
    let used: HashSet<&str> = calls.iter().map(|c| c.agent_id.as_str()).collect();
    assert!(!used.contains("incapable"), "{used:?}");
    assert!(used.len() >= 2, "the work is shared: {used:?}");
    assert!(
        workers.violations.lock().unwrap().is_empty(),
        "{:?}",
        workers.violations
    );
    for c in &calls {
        // Every task is a start task: the trigger's payload, no inputs.
        assert_eq!(c.body["payload"], json!({"doc": 1}));
        assert!(c.body.get("inputs").is_none(), "{}", c.body);
    }
    for t in v["tasks"].as_array().unwrap() {
        assert_eq!(t["status"], "completed");
        assert_eq!(t["waitingFor"], Value::Null);
        assert!(used.contains(t["agentId"].as_str().unwrap()), "{t}");
        assert_eq!(t["output"]["task"], t["name"]);
    }
    s.stop().await;
}

const DIAMOND: &str = r#"{"id": "diamond", "tasks": [
    {"taskId": "a", "name": "A", "parameters": {"p": "a"}, "dependsOn": []},
    {"taskId": "b", "name": "B", "parameters": {"p": "b"}, "dependsOn": ["a"]},
    {"taskId": "c", "name": "C", "parameters": {"p": "c"}, "dependsOn": ["a"]},
    {"taskId": "d", "name": "D", "parameters": {"p": "d"}, "dependsOn": ["b", "c"]},
    {"taskId": "later", "name": "Later", "delaySeconds": 600, "dependsOn": []}]}"#;

fn run_of(c: &Call) -> String {
    c.body["opscore_task_id"].as_str().unwrap().to_owned()
}

async fn finish(s: &TestServer, c: &Call, output: Value) {
    report(
        s,
        &c.agent_id,
        "idle",
        json!({"taskId": run_of(c), "output": output}),
    )
    .await;
}

async fn diamond_passes_outputs_and_runs_in_parallel(backend: Backend) {
    let kit = FakeAgentKit::start().await;
    let s = start(backend, &kit, |_| {}).await;
    for a in ["d1", "d2", "d3"] {
        s.register(a).await;
    }
    let def: Value = serde_json::from_str(DIAMOND).unwrap();
    assert_eq!(put_workflow(&s, def).await.0, StatusCode::CREATED);
    let sid = pool_session(
        &s,
        "diamond",
        json!({"agentSelector": {"agentIds": ["d1", "d2", "d3"]}, "initialPayload": {"x": 1}}),
    )
    .await;
    let calls = kit.wait_calls(1, 10).await;
    assert_eq!(calls[0].body["task_name"], "A");
    assert_eq!(calls[0].body["payload"], json!({"x": 1}));
    assert!(calls[0].body.get("inputs").is_none());
    let v = s.session(&sid).await;
    assert_eq!(v["agentSelector"], json!({"agentIds": ["d1", "d2", "d3"]}));
    assert_eq!(task(&v, "b")["waitingFor"], "dependencies");
    assert_eq!(task(&v, "d")["waitingFor"], "dependencies");
    assert_eq!(task(&v, "later")["waitingFor"], "delay");
    assert_eq!(task(&v, "b")["agentId"], Value::Null);
    finish(&s, &calls[0], json!({"from": "a"})).await;

    // b and c go out together, on two agents, before either finishes.
    let calls = kit.wait_calls(3, 10).await;
    let (b, c) = if calls[1].body["task_name"] == "B" {
        (&calls[1], &calls[2])
    } else {
        (&calls[2], &calls[1])
    };
    assert_eq!(
        (b.body["task_name"].as_str(), c.body["task_name"].as_str()),
        (Some("B"), Some("C"))
    );
    assert_ne!(b.agent_id, c.agent_id);
    assert_eq!(b.body["payload"], json!({"p": "b"}));
    assert_eq!(b.body["inputs"], json!({"a": {"from": "a"}}));
    assert_eq!(c.body["inputs"], json!({"a": {"from": "a"}}));
    let v = s
        .wait_session(&sid, |v| {
            ["b", "c"]
                .iter()
                .all(|t| task(v, t)["status"] == "dispatched")
        })
        .await;
    for t in ["b", "c"] {
        assert_eq!(task(&v, t)["waitingFor"], Value::Null);
    }
    assert_eq!(task(&v, "a")["output"], json!({"from": "a"}));
    assert_eq!(task(&v, "d")["waitingFor"], "dependencies");
    finish(&s, b, json!("b's output")).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(kit.calls().len(), 3, "d waits for c");
    assert_eq!(
        task(&s.session(&sid).await, "d")["waitingFor"],
        "dependencies"
    );
    finish(&s, c, json!([1, 2, 3])).await;

    let calls = kit.wait_calls(4, 10).await;
    let d = &calls[3];
    assert_eq!(d.body["task_name"], "D");
    assert_eq!(d.body["inputs"], json!({"b": "b's output", "c": [1, 2, 3]}));
    finish(&s, d, json!({"done": true})).await;
    let v = s
        .wait_session(&sid, |v| task(v, "d")["status"] == "completed")
        .await;
    // The delayed start task still waits: the session is not done.
    assert_eq!(v["status"], "running");
    assert_eq!(task(&v, "later")["waitingFor"], "delay");
    s.stop().await;
}

async fn invalid_graphs_are_refused_naming_the_tasks(backend: Backend) {
    let kit = FakeAgentKit::start().await;
    let s = start(backend, &kit, |_| {}).await;
    for (def, field, names) in [
        (
            json!({"id": "cyc", "tasks": [{"taskId": "s", "dependsOn": []},
                {"taskId": "x", "dependsOn": ["s", "y"]}, {"taskId": "y", "dependsOn": ["x"]}]}),
            "tasks",
            vec!["'x'", "'y'", "cycle"],
        ),
        (
            json!({"id": "unk", "tasks": [{"taskId": "a", "dependsOn": ["ghost"]}]}),
            "tasks[0].dependsOn",
            vec!["'a'", "'ghost'"],
        ),
        (
            json!({"id": "mix", "tasks": [{"taskId": "a", "nextTaskId": "b"},
                {"taskId": "b", "dependsOn": ["c"]}, {"taskId": "c"}]}),
            "tasks[1].dependsOn",
            vec!["'a'", "'b'"],
        ),
    ] {
        let (status, body) = put_workflow(&s, def.clone()).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
        let e = &body["errors"][0];
        assert_eq!(e["field"], field, "{body}");
        for n in names {
            assert!(e["message"].as_str().unwrap().contains(n), "{body}");
        }
        // The same definition inline on the pool trigger.
        let id = def["id"].as_str().unwrap().to_owned();
        let (status, body) = pool_trigger(&s, &id, json!({"workflowDefinition": def})).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
        assert_eq!(
            body["errors"][0]["field"],
            format!("workflowDefinition.{field}")
        );
    }
    // The pool trigger's own checks.
    let (status, body) = pool_trigger(&s, "no_such_workflow", json!({})).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    let (status, body) = pool_trigger(
        &s,
        "other_id",
        json!({"workflowDefinition": {"id": "mine", "tasks": []}}),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["errors"][0]["field"], "workflowDefinition.id");
    for (selector, field) in [
        (json!({"agentIds": ["a b"]}), "agentSelector.agentIds[0]"),
        (json!({"capability": ""}), "agentSelector.capability"),
    ] {
        let (status, body) =
            pool_trigger(&s, "sample_workflow_id", json!({"agentSelector": selector})).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
        assert_eq!(body["errors"][0]["field"], field, "{body}");
    }
    let (status, body) =
        pool_trigger(&s, "sample_workflow_id", json!({"initialPayload": [1]})).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    // An inline definition with the path's id runs as sent.
    let (status, body) = pool_trigger(
        &s,
        "sample_workflow_id",
        json!({"workflowDefinition": {"id": "sample_workflow_id", "tasks": []}}),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let v = s.session(body["sessionId"].as_str().unwrap()).await;
    assert_eq!(v["status"], "completed");
    s.stop().await;
}

async fn a_busy_agent_then_the_queue_timeout(backend: Backend) {
    let kit = FakeAgentKit::start().await;
    let s = start(backend, &kit, |_| {}).await;
    s.register("b1").await;
    // The first session takes b1 and keeps it.
    let first = pool_session(
        &s,
        "sample_workflow_id",
        json!({"agentSelector": {"agentIds": ["b1"]}}),
    )
    .await;
    kit.wait_calls(1, 10).await;
    s.wait_session(&first, |v| v["tasks"][0]["status"] == "dispatched")
        .await;
    let def = json!({"id": "short_wait", "tasks": [
        {"taskId": "only", "queueTimeoutSeconds": 1, "maxRetries": 0}]});
    let second = pool_session(
        &s,
        "short_wait",
        json!({"workflowDefinition": def, "agentSelector": {"agentIds": ["b1"]}}),
    )
    .await;
    let v = s.session(&second).await;
    assert_eq!(v["tasks"][0]["waitingFor"], "agent_busy", "{v:#}");
    assert_eq!(v["tasks"][0]["status"], "queued");
    let v = s.wait_session(&second, |v| v["status"] == "failed").await;
    let error = v["error"].as_str().unwrap();
    assert!(
        error.contains("not started within 1 s (agent_busy)"),
        "{error}"
    );
    assert_eq!(v["tasks"][0]["status"], "failed");
    assert_eq!(v["tasks"][0]["waitingFor"], Value::Null);
    assert_eq!(kit.calls().len(), 1, "never sent");

    // A selector no agent matches says so.
    let nobody = pool_session(
        &s,
        "sample_workflow_id",
        json!({"agentSelector": {"capability": "juggling"}}),
    )
    .await;
    let v = s.session(&nobody).await;
    assert_eq!(v["tasks"][0]["waitingFor"], "no_matching_agent", "{v:#}");
    assert_eq!(v["tasks"][1]["waitingFor"], "dependencies", "{v:#}");
    assert_eq!(v["agentSelector"], json!({"capability": "juggling"}));
    s.stop().await;
}

async fn a_stale_agents_task_moves_to_another_of_its_pool(backend: Backend) {
    let kit = FakeAgentKit::start().await;
    let s = start(backend, &kit, |c| {
        c.db.engine.liveness.ttl_secs = Some(1);
        c.db.engine.liveness.grace_secs = 0;
    })
    .await;
    s.register("m1").await;
    s.register("m2").await;
    let def = json!({"id": "one", "tasks": [{"taskId": "only", "agentCapability": "summarise"}]});
    let sid = pool_session(
        &s,
        "one",
        json!({"workflowDefinition": def, "agentSelector": {"capability": "summarise"}}),
    )
    .await;
    let calls = kit.wait_calls(1, 10).await;
    let first = calls[0].agent_id.clone();
    let other = if first == "m1" { "m2" } else { "m1" }.to_owned();
    // The other agent stays fresh; the first goes silent.
    let keep = {
        let (client, base, other) = (s.client.clone(), s.base.clone(), other.clone());
        tokio::spawn(async move {
            loop {
                report_at(&client, &base, &other, "idle", json!({})).await;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    };
    let calls = kit.wait_calls(2, 15).await;
    assert_eq!(
        calls[1].agent_id, other,
        "the retry goes to the fresh agent"
    );
    assert_eq!(run_of(&calls[0]), run_of(&calls[1]));
    keep.abort();
    finish(&s, &calls[1], json!("done elsewhere")).await;
    let v = s.wait_session(&sid, |v| v["status"] == "completed").await;
    let t = &v["tasks"][0];
    assert_eq!(t["agentId"], other.as_str());
    assert_eq!(t["attempts"], 2);
    assert_eq!(t["output"], "done elsewhere");
    // A late report from the stale agent changes nothing.
    report(
        &s,
        &first,
        "idle",
        json!({"taskId": run_of(&calls[0]), "output": "late"}),
    )
    .await;
    assert_eq!(
        s.session(&sid).await["tasks"][0]["output"],
        "done elsewhere"
    );

    // Both gone silent: a new task of the pool waits, and says why.
    for id in ["m1", "m2"] {
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        while s.get_json(&format!("/v1/opscore/agent/{id}")).await.body["stale"] != true {
            assert!(
                std::time::Instant::now() < deadline,
                "{id} never went stale"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let sid = pool_session(
        &s,
        "one",
        json!({"workflowDefinition": def, "agentSelector": {"capability": "summarise"}}),
    )
    .await;
    let v = s.session(&sid).await;
    assert_eq!(v["tasks"][0]["waitingFor"], "agent_stale", "{v:#}");
    assert_eq!(v["tasks"][0]["status"], "queued");
    assert_eq!(kit.calls().len(), 2, "nothing sent to a stale agent");
    s.stop().await;
}

/// A failing task fails its session and cancels the rest, also runs in
/// flight; a report about a cancelled run changes nothing.
async fn a_failed_task_cancels_the_others(backend: Backend) {
    let kit = FakeAgentKit::start().await;
    let s = start(backend, &kit, |_| {}).await;
    s.register("f1").await;
    s.register("f2").await;
    let def = json!({"id": "two", "tasks": [
        {"taskId": "x", "maxRetries": 0, "dependsOn": []},
        {"taskId": "y", "maxRetries": 0, "dependsOn": []},
        {"taskId": "z", "dependsOn": ["x", "y"]}]});
    let sid = pool_session(&s, "two", json!({"workflowDefinition": def})).await;
    let calls = kit.wait_calls(2, 10).await;
    let x = calls.iter().find(|c| c.body["task_name"] == "x").unwrap();
    let y = calls.iter().find(|c| c.body["task_name"] == "y").unwrap();
    report(
        &s,
        &x.agent_id,
        "error",
        json!({"taskId": run_of(x), "why": "boom"}),
    )
    .await;
    let v = s.wait_session(&sid, |v| v["status"] == "failed").await;
    assert!(
        v["error"].as_str().unwrap().contains("task x failed"),
        "{v:#}"
    );
    assert_eq!(task(&v, "y")["status"], "cancelled");
    assert_eq!(task(&v, "z")["status"], "cancelled");
    finish(&s, y, json!("too late")).await;
    let v = s.session(&sid).await;
    assert_eq!(task(&v, "y")["status"], "cancelled");
    assert_eq!(task(&v, "y")["output"], Value::Null);
    assert_eq!(v["status"], "failed");
    s.stop().await;
}

/// The per-agent trigger's runs all exist from the start, on its agent,
/// and the chain passes each output on as `inputs`.
async fn the_per_agent_chain_passes_outputs_on(backend: Backend) {
    let kit = FakeAgentKit::start().await;
    let s = start(backend, &kit, |_| {}).await;
    s.register("c1").await;
    let r = s
        .post("/v1/opscore/agent/c1/workflow")
        .json(&json!({"workflowDefinitionId": "sample_workflow_id"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let sid = r.json::<Value>().await.unwrap()["sessionId"]
        .as_str()
        .unwrap()
        .to_owned();
    let v = s.session(&sid).await;
    assert_eq!(v["agentId"], "c1");
    assert_eq!(v["agentSelector"], json!({"agentIds": ["c1"]}));
    assert_eq!(v["tasks"].as_array().unwrap().len(), 2);
    assert_eq!(v["tasks"][1]["agentId"], "c1");
    assert_eq!(v["tasks"][1]["waitingFor"], "dependencies");
    let calls = kit.wait_calls(1, 10).await;
    finish(&s, &calls[0], json!({"summary": "s"})).await;
    let calls = kit.wait_calls(2, 10).await;
    assert_eq!(calls[1].body["inputs"], json!({"step_1": {"summary": "s"}}));
    s.stop().await;
}

/// `opscore simulate` registers its agents with capabilities, stores and
/// triggers its parallel demo on a pool, and finishes tasks with outputs:
/// the join gets the three parts' outputs, and the parts ran on several
/// agents.
async fn the_simulator_runs_a_parallel_workflow_on_a_pool(backend: Backend) {
    let s = TestServer::start_with(backend, |c| {
        c.dispatch.target = DispatchTarget::Direct;
        c.dispatch.poll_interval = Duration::from_millis(20);
    })
    .await;
    let mut feed = Stream::open(&s.base, "?kinds=session.status", None).await;
    let args = opscore::sim::SimArgs {
        target: opscore::client::TargetArgs {
            server: opscore::client::ServerArgs {
                url: Some(s.base.clone()),
                api_key: Some(KEY.to_owned()),
                ..Default::default()
            },
            webhook_secret: None,
        },
        agents: 4,
        id_prefix: "simp".into(),
        listen: "127.0.0.1:0".parse().unwrap(),
        advertise_url: None,
        task_ms: 100,
        error_rate: 0.0,
        trigger_workflow: Some(opscore::sim::PARALLEL_DEMO.into()),
        trigger_every_ms: 5000,
        trigger_capability: Some("summarise".into()),
        capabilities: vec!["summarise".into(), "translate".into()],
    };
    let stop = tokio_util::sync::CancellationToken::new();
    let sim = tokio::spawn(opscore::sim::run(args, stop.clone()));
    let sid = loop {
        let m = feed
            .next(Duration::from_secs(20))
            .await
            .expect("a session ends");
        if m.data["data"]["status"] == "completed" {
            break m.data["sessionId"].as_str().unwrap().to_owned();
        }
        assert_ne!(m.data["data"]["status"], "failed", "{m:?}");
    };
    let v = s.session(&sid).await;
    assert_eq!(v["workflowId"], opscore::sim::PARALLEL_DEMO);
    assert_eq!(v["agentSelector"], json!({"capability": "summarise"}));
    assert_eq!(
        task(&v, "merge")["output"]["inputs"],
        json!(["part_a", "part_b", "part_c"])
    );
    assert_eq!(task(&v, "part_b")["output"]["inputs"], json!(["split"]));
    let parts: HashSet<&str> = ["part_a", "part_b", "part_c"]
        .iter()
        .map(|t| task(&v, t)["agentId"].as_str().unwrap())
        .collect();
    assert!(parts.len() >= 2, "the parts ran side by side: {parts:?}");
    stop.cancel();
    sim.await.unwrap().unwrap();
    s.stop().await;
}

backend_tests!(
    the_simulator_runs_a_parallel_workflow_on_a_pool,
    six_independent_tasks_share_the_capable_agents,
    diamond_passes_outputs_and_runs_in_parallel,
    invalid_graphs_are_refused_naming_the_tasks,
    a_busy_agent_then_the_queue_timeout,
    a_stale_agents_task_moves_to_another_of_its_pool,
    a_failed_task_cancels_the_others,
    the_per_agent_chain_passes_outputs_on,
);
