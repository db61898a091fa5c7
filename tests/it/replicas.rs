//! Several Ops-Core processes on one PostgreSQL database: each attempt is
//! sent once, also when one process is SIGKILLed mid-run. (SQLite runs one
//! dispatcher per database file, so this is a PostgreSQL-only test.)

use crate::common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::common::agentkit::FakeAgentKit;
use crate::common::{Backend, ServerProcess, TestDb, KEY};
use futures::StreamExt;
use reqwest::StatusCode;
use serde_json::{json, Value};

const AGENTS: usize = 100;
const SESSIONS: usize = 2000;

async fn run_sessions_on_three_replicas(kill_one: bool) {
    let kit = FakeAgentKit::start().await;
    let db = TestDb::new(Backend::Postgres).await;
    let env = [
        ("AGENTKIT_API_URL", kit.base.as_str()),
        ("OPSCORE_DISPATCH_POLL_MS", "20"),
        // A short request timeout makes the lease (3x + 5 s) short, so a
        // killed replica's claims come back within the test.
        ("OPSCORE_DISPATCH_TIMEOUT_MS", "1000"),
        ("OPSCORE_RETRY_BASE_MS", "50"),
        ("OPSCORE_RETRY_MAX_MS", "500"),
    ];
    let mut procs = Vec::new();
    for _ in 0..3 {
        procs.push(ServerProcess::spawn_with(&db.url, db.dir.path(), &env).await);
    }
    let bases: Vec<String> = procs.iter().map(|p| p.base.clone()).collect();
    let client = reqwest::Client::new();

    // The agent side: complete every new attempt by reporting idle, through
    // a replica that is alive (round robin; the first is never killed).
    let alive = Arc::new(std::sync::Mutex::new(bases.clone()));
    let rr = Arc::new(AtomicUsize::new(0));
    {
        let (client, alive, rr) = (client.clone(), alive.clone(), rr.clone());
        kit.on_call(Arc::new(move |call| {
            let (client, alive, rr) = (client.clone(), alive.clone(), rr.clone());
            let agent = call.agent_id.clone();
            let task = call.body["opscore_task_id"].clone();
            tokio::spawn(async move {
                for _ in 0..50 {
                    let base = {
                        let alive = alive.lock().unwrap();
                        alive[rr.fetch_add(1, Ordering::Relaxed) % alive.len()].clone()
                    };
                    let r = client
                        .post(format!("{base}/v1/opscore/agent/{agent}/state"))
                        .bearer_auth(KEY)
                        .json(
                            &json!({"agentId": agent, "timestamp": chrono::Utc::now().to_rfc3339(),
                                      "state": "idle", "details": {"taskId": task}}),
                        )
                        .send()
                        .await;
                    if matches!(r, Ok(ref r) if r.status() == StatusCode::ACCEPTED) {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            });
        }));
    }

    for i in 0..AGENTS {
        common::register_at(&client, &bases[i % 3], &format!("r{i}"), &["x"]).await;
    }
    let sessions: Vec<String> = futures::stream::iter(0..SESSIONS)
        .map(|i| {
            let (client, base) = (client.clone(), bases[i % 3].clone());
            async move {
                let r = client
                    .post(format!("{base}/v1/opscore/agent/r{}/workflow", i % AGENTS))
                    .bearer_auth(KEY)
                    .json(&json!({"workflowDefinitionId": "sample_workflow_id"}))
                    .send()
                    .await
                    .expect("trigger");
                let status = r.status();
                let body: Value = r.json().await.unwrap_or_default();
                assert_eq!(status, StatusCode::ACCEPTED, "trigger: {body}");
                body["sessionId"].as_str().unwrap().to_owned()
            }
        })
        .buffer_unordered(32)
        .collect()
        .await;

    if kill_one {
        // Let work get going, then kill the third replica mid-run.
        kit.wait_calls(SESSIONS / 4, 120).await;
        alive.lock().unwrap().pop();
        if let Some(p) = procs.pop() {
            p.kill().await;
        }
    }

    // Every session completes: 2 tasks each.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(300);
    let completed = loop {
        let mut done = 0;
        for sid in &sessions {
            let v: Value = client
                .get(format!("{}/v1/opscore/sessions/{sid}", bases[0]))
                .bearer_auth(KEY)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            assert_ne!(v["status"], "failed", "{v}");
            if v["status"] == "completed" {
                done += 1;
            } else {
                break;
            }
        }
        if done == sessions.len() || tokio::time::Instant::now() > deadline {
            break done;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert_eq!(completed, SESSIONS, "sessions completed");

    let calls = kit.calls();
    let distinct: std::collections::HashSet<_> =
        calls.iter().map(|c| c.idempotency_key.clone()).collect();
    // Each task ran with exactly one attempt: no attempt was ever split in two.
    assert_eq!(distinct.len(), SESSIONS * 2, "distinct attempts");
    assert!(
        distinct.iter().all(|k| k.ends_with(":1")),
        "no retries were needed"
    );
    let dups = kit.duplicates();
    println!(
        "kill_one={kill_one}: {} sessions, {} deliveries, {} distinct attempts, {} repeated keys",
        SESSIONS,
        calls.len(),
        distinct.len(),
        dups.len()
    );
    if kill_one {
        // Only an attempt the killed replica sent but could not record is
        // sent again, with the same key; the framework drops the repeat.
        assert!(dups.len() <= 64, "{} duplicate deliveries", dups.len());
    } else {
        assert!(
            dups.is_empty(),
            "duplicate deliveries without a crash: {dups:?}"
        );
    }
    // Each replica counts the sessions its own commits finished, not those
    // it hears of on the feed: summed over the replicas, every session once
    // (a killed replica takes its counts with it).
    let completed_series = [("workflow", "sample_workflow_id"), ("outcome", "completed")];
    let mut counted = (0.0, 0);
    for _ in 0..50 {
        counted = (0.0, 0);
        for p in &procs {
            let m = crate::metrics::Scrape::at(&client, &p.base).await;
            counted.0 += m.value("opscore_sessions_finished", &completed_series);
            counted.1 += m.histogram_count("opscore_session_duration_seconds", &completed_series);
        }
        if counted.0 >= SESSIONS as f64 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(counted.0, counted.1 as f64, "counter and histogram agree");
    if kill_one {
        assert!(counted.0 <= SESSIONS as f64, "{} finished", counted.0);
    } else {
        assert_eq!(counted.0, SESSIONS as f64, "finished sessions counted");
    }
    for p in procs {
        p.kill().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_send_each_attempt_once() {
    run_sessions_on_three_replicas(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_survive_one_killed() {
    run_sessions_on_three_replicas(true).await;
}

/// Pool sessions of a fan-out workflow (a start task, four parts, a join)
/// over 50 agents through three replicas: every attempt is sent exactly
/// once, no agent ever has two tasks in flight, the work spreads over the
/// agents, and every session completes. `OPSCORE_TEST_POOL_SESSIONS` sets
/// how many (default 300; the 2,000 is docs/workflows.md's figure).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_share_a_pool() {
    const POOL_AGENTS: usize = 50;
    let sessions_wanted: usize = std::env::var("OPSCORE_TEST_POOL_SESSIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300);
    let kit = FakeAgentKit::start().await;
    let db = TestDb::new(Backend::Postgres).await;
    let env = [
        ("AGENTKIT_API_URL", kit.base.as_str()),
        ("OPSCORE_DISPATCH_POLL_MS", "20"),
        ("OPSCORE_RETRY_BASE_MS", "50"),
        ("OPSCORE_RETRY_MAX_MS", "500"),
    ];
    let mut procs = Vec::new();
    for _ in 0..3 {
        procs.push(ServerProcess::spawn_with(&db.url, db.dir.path(), &env).await);
    }
    let bases: Vec<String> = procs.iter().map(|p| p.base.clone()).collect();
    let client = reqwest::Client::new();

    // The agents: each finishes its task through the next replica, after
    // marking itself free; a task sent to an agent that is not free is a
    // violation.
    let busy = Arc::new(std::sync::Mutex::new(std::collections::HashSet::new()));
    let violations = Arc::new(std::sync::Mutex::new(Vec::new()));
    let rr = Arc::new(AtomicUsize::new(0));
    {
        let (client, bases) = (client.clone(), bases.clone());
        let (busy, violations, rr) = (busy.clone(), violations.clone(), rr.clone());
        kit.on_call(Arc::new(move |call| {
            let agent = call.agent_id.clone();
            if !busy.lock().unwrap().insert(agent.clone()) {
                violations.lock().unwrap().push(agent.clone());
            }
            let (client, bases, busy, rr) = (client.clone(), bases.clone(), busy.clone(), rr.clone());
            let task = call.body["opscore_task_id"].clone();
            let name = call.body["task_name"].clone();
            tokio::spawn(async move {
                busy.lock().unwrap().remove(&agent);
                for _ in 0..50 {
                    let base = &bases[rr.fetch_add(1, Ordering::Relaxed) % bases.len()];
                    let r = client
                        .post(format!("{base}/v1/opscore/agent/{agent}/state"))
                        .bearer_auth(KEY)
                        .json(&json!({"agentId": agent, "timestamp": chrono::Utc::now().to_rfc3339(),
                                      "state": "idle", "details": {"taskId": task, "output": name}}))
                        .send()
                        .await;
                    if matches!(r, Ok(ref r) if r.status() == StatusCode::ACCEPTED) {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            });
        }));
    }

    for i in 0..POOL_AGENTS {
        common::register_at(&client, &bases[i % 3], &format!("p{i}"), &["x"]).await;
    }
    let parts = ["p1", "p2", "p3", "p4"];
    let mut tasks = vec![json!({"taskId": "start", "agentCapability": "x", "dependsOn": []})];
    for p in parts {
        tasks.push(json!({"taskId": p, "agentCapability": "x", "dependsOn": ["start"]}));
    }
    tasks.push(json!({"taskId": "join", "agentCapability": "x", "dependsOn": parts}));
    let per_session = tasks.len();
    let r = client
        .post(format!("{}/v1/opscore/workflows", bases[0]))
        .bearer_auth(KEY)
        .json(&json!({"id": "fan_out", "tasks": tasks}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);

    let started = std::time::Instant::now();
    let sessions: Vec<String> = futures::stream::iter(0..sessions_wanted)
        .map(|i| {
            let (client, base) = (client.clone(), bases[i % 3].clone());
            async move {
                let r = client
                    .post(format!("{base}/v1/opscore/workflows/fan_out/trigger"))
                    .bearer_auth(KEY)
                    .json(
                        &json!({"agentSelector": {"capability": "x"}, "initialPayload": {"i": i}}),
                    )
                    .send()
                    .await
                    .expect("trigger");
                let status = r.status();
                let body: Value = r.json().await.unwrap_or_default();
                assert_eq!(status, StatusCode::ACCEPTED, "trigger: {body}");
                body["sessionId"].as_str().unwrap().to_owned()
            }
        })
        .buffer_unordered(32)
        .collect()
        .await;

    let deadline = tokio::time::Instant::now() + Duration::from_secs(600);
    let mut done = 0;
    while done < sessions.len() && tokio::time::Instant::now() < deadline {
        let v: Value = client
            .get(format!(
                "{}/v1/opscore/sessions/{}",
                bases[done % 3],
                sessions[done]
            ))
            .bearer_auth(KEY)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_ne!(v["status"], "failed", "{v}");
        if v["status"] == "completed" {
            let join = &v["tasks"][per_session - 1];
            assert_eq!(join["output"], "join", "{v}");
            done += 1;
        } else {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let took = started.elapsed();
    assert_eq!(done, sessions.len(), "sessions completed");

    let calls = kit.calls();
    let distinct: std::collections::HashSet<_> =
        calls.iter().map(|c| c.idempotency_key.clone()).collect();
    assert_eq!(
        distinct.len(),
        sessions.len() * per_session,
        "distinct attempts"
    );
    assert!(
        distinct.iter().all(|k| k.ends_with(":1")),
        "no retries were needed"
    );
    assert!(kit.duplicates().is_empty(), "{:?}", kit.duplicates());
    assert!(violations.lock().unwrap().is_empty(), "{:?}", violations);
    let mut per_agent = std::collections::HashMap::<&str, usize>::new();
    for c in &calls {
        *per_agent.entry(c.agent_id.as_str()).or_default() += 1;
    }
    assert_eq!(per_agent.len(), POOL_AGENTS, "every agent took work");
    println!(
        "pool: {} sessions x {per_session} tasks over {POOL_AGENTS} agents and 3 replicas in {:.1} s; \
         tasks per agent {}..{}",
        sessions.len(),
        took.as_secs_f64(),
        per_agent.values().min().unwrap_or(&0),
        per_agent.values().max().unwrap_or(&0)
    );
    for p in procs {
        p.kill().await;
    }
}
