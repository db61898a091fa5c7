//! PostgreSQL outage: the connection to the database is cut through a TCP
//! proxy the test controls. Requests that need the database get a fast 503
//! `storage_unavailable`, `/ready` says so, `/health` and state reads (from
//! memory) stay up, and when the
//! connection comes back the service recovers by itself, without a
//! restart, having lost nothing it acknowledged.

use crate::common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::proxy::Proxy;
use crate::common::{Backend, TestDb, TestServer};
use reqwest::StatusCode;
use serde_json::{json, Value};

fn through(url: &str, proxy: &Proxy) -> String {
    url.replacen("127.0.0.1:5432", &proxy.addr, 1)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_outage_gives_fast_503s_and_recovers_without_loss() {
    let db = TestDb::new(Backend::Postgres).await;
    assert!(
        db.url.contains("127.0.0.1:5432"),
        "test expects the local server: {}",
        db.url
    );
    let proxy = Proxy::start("127.0.0.1:5432").await;
    let mut config = common::test_config(&db);
    config.database_url = opscore::config::Secret::new(through(&db.url, &proxy));
    config.db.acquire_timeout = Duration::from_secs(1);
    config.request_timeout = Duration::from_secs(5);
    let direct_url = db.url.clone();
    let s = TestServer::start_on(db, config).await;
    for i in 0..5 {
        s.register(&format!("o{i}")).await;
    }

    // Reporters run through the whole outage, remembering what was acknowledged.
    let acked: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
    let stop = tokio_util::sync::CancellationToken::new();
    let mut reporters = Vec::new();
    for i in 0..5 {
        let (client, base, acked, stop) = (
            s.client.clone(),
            s.base.clone(),
            acked.clone(),
            stop.clone(),
        );
        reporters.push(tokio::spawn(async move {
            let agent = format!("o{i}");
            let mut n = 0u64;
            let mut refused = 0u64;
            while !stop.is_cancelled() {
                n += 1;
                let state = format!("s{n}");
                let r = client
                    .post(format!("{base}/v1/opscore/agent/{agent}/state"))
                    .bearer_auth(common::KEY)
                    .json(&json!({"agentId": agent, "timestamp": chrono::Utc::now().to_rfc3339(), "state": state}))
                    .send()
                    .await;
                match r.map(|r| r.status()) {
                    Ok(StatusCode::ACCEPTED) => acked.lock().unwrap().push((agent.clone(), state)),
                    Ok(StatusCode::SERVICE_UNAVAILABLE) => {
                        refused += 1;
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    other => panic!("unexpected answer to a report: {other:?}"),
                }
            }
            refused
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before_cut = acked.lock().unwrap().len();
    assert!(
        before_cut > 0,
        "no report was acknowledged before the outage"
    );

    proxy.cut();
    // Reads and writes that need the database fail fast with the code.
    for path in [
        "/v1/opscore/agent/o1/state?consistent=true",
        "/v1/opscore/agents",
        "/v1/opscore/agent/o1/state/history",
    ] {
        let started = Instant::now();
        let r = common::send(s.get(path)).await;
        let took = started.elapsed();
        common::assert_error(&r, StatusCode::SERVICE_UNAVAILABLE, "storage_unavailable");
        assert!(
            took < Duration::from_secs(3),
            "{path} took {took:?} to fail"
        );
    }
    // State reads are answered from memory (docs/guarantees.md, "Reads"):
    // the database cannot have anything newer while it takes no commit.
    let started = Instant::now();
    let r = common::send(s.get("/v1/opscore/agent/o1/state")).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert!(started.elapsed() < Duration::from_secs(1));
    let started = Instant::now();
    let r = common::send(s.post("/v1/opscore/agent/o1/state").json(
        &json!({"agentId": "o1", "timestamp": chrono::Utc::now().to_rfc3339(), "state": "during"}),
    ))
    .await;
    common::assert_error(&r, StatusCode::SERVICE_UNAVAILABLE, "storage_unavailable");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "report took {:?}",
        started.elapsed()
    );
    // `/ready` reuses its last check for about a second.
    let cut = Instant::now();
    loop {
        let r = common::send(s.client.get(s.url("/ready"))).await;
        if r.status == StatusCode::SERVICE_UNAVAILABLE {
            break;
        }
        assert!(
            cut.elapsed() < Duration::from_secs(5),
            "/ready still {} {}",
            r.status,
            r.body
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let r = common::send(s.client.get(s.url("/health"))).await;
    assert_eq!(r.status, StatusCode::OK);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let during = acked.lock().unwrap().len();

    proxy.restore();
    let restored = Instant::now();
    loop {
        let r = common::send(s.client.get(s.url("/ready"))).await;
        if r.status == StatusCode::OK {
            break;
        }
        assert!(
            restored.elapsed() < Duration::from_secs(20),
            "never ready again: {}",
            r.body
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Reports are acknowledged again.
    loop {
        if acked.lock().unwrap().len() > during + 10 {
            break;
        }
        assert!(
            restored.elapsed() < Duration::from_secs(20),
            "reports never acknowledged again"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.cancel();
    let mut refused = 0;
    for r in reporters {
        refused += r.await.unwrap();
    }
    assert!(
        refused > 0,
        "the outage refused nothing: was the connection really cut?"
    );
    println!(
        "recovered {:?} after restore; {refused} reports refused during the outage",
        restored.elapsed()
    );

    // Everything acknowledged is stored (read straight from the database).
    let pool = sqlx::PgPool::connect(&direct_url).await.unwrap();
    let acked = acked.lock().unwrap().clone();
    for (agent, state) in &acked {
        let found: Option<i32> =
            sqlx::query_scalar("SELECT 1 FROM state_history WHERE agent_id = $1 AND state = $2")
                .bind(agent)
                .bind(state)
                .fetch_optional(&pool)
                .await
                .unwrap();
        assert!(
            found.is_some(),
            "acknowledged report {agent}/{state} was lost"
        );
    }
    pool.close().await;
    let v: Value = common::send(s.get("/v1/opscore/agents")).await.body;
    assert_eq!(v["items"].as_array().unwrap().len(), 5);
    s.stop().await;
}
