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
                assert_eq!(r.status(), StatusCode::ACCEPTED);
                r.json::<Value>().await.unwrap()["sessionId"]
                    .as_str()
                    .unwrap()
                    .to_owned()
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
