//! Durability and concurrency of state reports, on both backends: a 202 is
//! only sent once the report is stored, so a SIGKILL or a graceful shutdown
//! in the middle of a stream of reports loses none that were acknowledged;
//! and many agents reporting at once, out of order, end with the
//! latest-timestamped report as each one's current state.

use crate::common;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::common::{
    future_base, history_at, register_at, test_config, ts_at, Backend, ServerProcess, TestDb,
    TestServer, KEY,
};
use futures::stream::{self, StreamExt};
use opscore::domain::agent::AgentId;
use opscore::domain::state::StateReport;
use opscore::domain::time::now_micros;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use reqwest::StatusCode;
use serde_json::{json, Value};

/// What a stream of reports came to.
#[derive(Debug, Default)]
struct LoadResult {
    /// Report numbers answered 202.
    acked: Vec<u64>,
    /// Requests that got no response (connection refused or reset).
    transport_errors: usize,
    /// Responses other than 202: (report number, status, body).
    other: Vec<(u64, u16, String)>,
}

/// A response's status and body, or `None` when none came.
type Outcome = Option<(u16, String)>;

/// Send reports numbered `numbers` round-robin to `agents`, `in_flight` at
/// a time, until `stop` is set or all have been sent. Report `n` carries
/// `details.n = n` and a timestamp `n` microseconds after a base.
async fn load(
    client: reqwest::Client,
    base_url: String,
    agents: Vec<String>,
    numbers: std::ops::Range<u64>,
    in_flight: usize,
    stop: Arc<AtomicBool>,
    acked: Arc<AtomicUsize>,
) -> LoadResult {
    let base = future_base();
    let outcomes: Vec<(u64, Outcome)> = stream::iter(numbers)
        .take_while(|_| futures::future::ready(!stop.load(Ordering::SeqCst)))
        .map(|n| {
            let agent = agents[(n % agents.len() as u64) as usize].clone();
            let url = format!("{base_url}/v1/opscore/agent/{agent}/state");
            // One microsecond apart: even the last round's numbers (3
            // million and up) stay seconds from now, inside the clock skew
            // the server allows.
            let ts = (base + chrono::Duration::microseconds(n as i64))
                .to_rfc3339_opts(chrono::SecondsFormat::Micros, false);
            let body = json!({"agentId": agent, "timestamp": ts, "state": "active",
                "details": {"n": n}});
            let (client, acked) = (client.clone(), acked.clone());
            async move {
                let sent = client.post(url).bearer_auth(KEY).json(&body).send().await;
                let outcome = match sent {
                    Ok(r) => {
                        let status = r.status().as_u16();
                        r.text().await.ok().map(|text| (status, text))
                    }
                    Err(_) => None,
                };
                if matches!(outcome, Some((202, _))) {
                    acked.fetch_add(1, Ordering::SeqCst);
                }
                (n, outcome)
            }
        })
        .buffer_unordered(in_flight)
        .collect()
        .await;
    let mut result = LoadResult::default();
    for (n, outcome) in outcomes {
        match outcome {
            Some((202, text)) => {
                let body: Value = serde_json::from_str(&text).expect("202 body is JSON");
                assert_eq!(
                    body,
                    json!({"status": "success", "message": "State update accepted"})
                );
                result.acked.push(n);
            }
            Some((status, text)) => result.other.push((n, status, text)),
            None => result.transport_errors += 1,
        }
    }
    result
}

/// Wait (generously) until `count` reaches `at_least`.
async fn wait_for(count: &AtomicUsize, at_least: usize) {
    tokio::time::timeout(Duration::from_secs(180), async {
        while count.load(Ordering::SeqCst) < at_least {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .unwrap_or_else(|_| {
        panic!(
            "only {} of {at_least} reports acknowledged",
            count.load(Ordering::SeqCst)
        )
    });
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .expect("client")
}

/// Check every acknowledged report is in its agent's history exactly once.
async fn assert_all_stored(client: &reqwest::Client, base: &str, agents: &[String], acked: &[u64]) {
    let mut stored: HashSet<u64> = HashSet::new();
    for (i, agent) in agents.iter().enumerate() {
        for entry in history_at(client, base, agent).await {
            if entry["state"] == "UNKNOWN" {
                continue;
            }
            let n = entry["details"]["n"].as_u64().expect("details.n");
            assert_eq!(
                n % agents.len() as u64,
                i as u64,
                "report {n} stored under {agent}"
            );
            assert!(stored.insert(n), "report {n} stored twice");
        }
    }
    let missing: Vec<u64> = acked
        .iter()
        .copied()
        .filter(|n| !stored.contains(n))
        .collect();
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged reports are missing, e.g. {:?}",
        missing.len(),
        acked.len(),
        &missing[..missing.len().min(10)]
    );
}

async fn sigkill_loses_no_acknowledged_report(backend: Backend) {
    let db = TestDb::new(backend).await;
    let server = ServerProcess::spawn(&db.url, db.dir.path()).await;
    let client = client();
    let agents: Vec<String> = (0..8).map(|i| format!("crash-{i}")).collect();
    for a in &agents {
        register_at(&client, &server.base, a, &["summarise"]).await;
    }
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(AtomicUsize::new(0));
    let task = tokio::spawn(load(
        client.clone(),
        server.base.clone(),
        agents.clone(),
        0..100_000,
        32,
        stop.clone(),
        acked.clone(),
    ));
    wait_for(&acked, 300).await;
    // SIGKILL while 32 reports are in flight: no chance to flush anything.
    server.kill().await;
    stop.store(true, Ordering::SeqCst);
    let result = tokio::time::timeout(Duration::from_secs(180), task)
        .await
        .expect("load finishes after the kill")
        .expect("load task");
    assert!(result.acked.len() >= 300, "{result:?}");
    assert!(
        result.transport_errors > 0,
        "the kill did not interrupt the stream"
    );
    assert!(
        result.other.is_empty(),
        "unexpected answers: {:?}",
        result.other
    );

    let server = ServerProcess::spawn(&db.url, db.dir.path()).await;
    assert_all_stored(&client, &server.base, &agents, &result.acked).await;
    // It accepts reports again after the restart.
    let r = client
        .post(format!("{}/v1/opscore/agent/crash-0/state", server.base))
        .bearer_auth(KEY)
        .json(
            &json!({"agentId": "crash-0", "timestamp": ts_at(future_base(), 200),
            "state": "idle", "details": null}),
        )
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    server.kill().await;
}

/// The crash test: sustained concurrent reports while the server is
/// SIGKILLed and restarted several times over the same database; at the end
/// every report acknowledged in any round is stored, exactly once.
async fn repeated_sigkill_loses_no_acknowledged_report(backend: Backend) {
    const ROUNDS: u64 = 4;
    let db = TestDb::new(backend).await;
    let client = client();
    let agents: Vec<String> = (0..8).map(|i| format!("crash-{i}")).collect();
    let mut all_acked = Vec::new();
    for round in 0..ROUNDS {
        let server = ServerProcess::spawn(&db.url, db.dir.path()).await;
        if round == 0 {
            for a in &agents {
                register_at(&client, &server.base, a, &["summarise"]).await;
            }
        }
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(AtomicUsize::new(0));
        // Numbers of each round are their own (and multiples of the agent
        // count apart, so report n still belongs to agent n % 8).
        let first = round * 1_000_000;
        let task = tokio::spawn(load(
            client.clone(),
            server.base.clone(),
            agents.clone(),
            first..first + 100_000,
            32,
            stop.clone(),
            acked.clone(),
        ));
        wait_for(&acked, 200).await;
        server.kill().await;
        stop.store(true, Ordering::SeqCst);
        let result = tokio::time::timeout(Duration::from_secs(180), task)
            .await
            .expect("load finishes after the kill")
            .expect("load task");
        assert!(
            result.transport_errors > 0,
            "round {round}: the kill did not interrupt the stream"
        );
        assert!(
            result.other.is_empty(),
            "round {round}: unexpected answers: {:?}",
            result.other
        );
        all_acked.extend(result.acked);
    }
    let server = ServerProcess::spawn(&db.url, db.dir.path()).await;
    assert_all_stored(&client, &server.base, &agents, &all_acked).await;
    println!(
        "{ROUNDS} SIGKILLs: {} acknowledged reports, all stored once",
        all_acked.len()
    );
    server.kill().await;
}

async fn graceful_shutdown_loses_no_acknowledged_report(backend: Backend) {
    let s = TestServer::start(backend).await;
    let client = client();
    let agents: Vec<String> = (0..8).map(|i| format!("drain-{i}")).collect();
    for a in &agents {
        register_at(&client, &s.base, a, &["summarise"]).await;
    }
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(AtomicUsize::new(0));
    let task = tokio::spawn(load(
        client.clone(),
        s.base.clone(),
        agents.clone(),
        0..100_000,
        32,
        stop.clone(),
        acked.clone(),
    ));
    wait_for(&acked, 200).await;
    // Shut down with 32 reports in flight; stop() waits for the server to end.
    let db = tokio::time::timeout(Duration::from_secs(120), s.stop())
        .await
        .expect("graceful shutdown finishes");
    stop.store(true, Ordering::SeqCst);
    let result = tokio::time::timeout(Duration::from_secs(180), task)
        .await
        .expect("load finishes after shutdown")
        .expect("load task");
    assert!(result.acked.len() >= 200, "{result:?}");
    // A request that got an answer during shutdown got a 202: in-flight
    // requests are finished, not failed.
    assert!(
        result.other.is_empty(),
        "unexpected answers: {:?}",
        result.other
    );

    let config = test_config(&db);
    let s = TestServer::start_on(db, config).await;
    assert_all_stored(&s.client, &s.base, &agents, &result.acked).await;
    s.stop().await;
}

/// Read from `sock` until `buf` holds a full response head; return its
/// length (through the blank line).
async fn read_head(sock: &mut tokio::net::TcpStream, buf: &mut Vec<u8>) -> usize {
    use tokio::io::AsyncReadExt;
    loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            return i + 4;
        }
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(60), sock.read(&mut chunk))
            .await
            .expect("response in time")
            .expect("read");
        assert!(
            n > 0,
            "connection closed early: {:?}",
            String::from_utf8_lossy(buf)
        );
        buf.extend_from_slice(&chunk[..n]);
    }
}

async fn graceful_shutdown_finishes_request_in_flight(backend: Backend) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let s = TestServer::start_with(backend, |c| c.shutdown_grace = Duration::from_secs(120)).await;
    s.register("slow-0").await;
    let addr = s.base.trim_start_matches("http://").to_owned();
    let ts = ts_at(future_base(), 0);
    let body = json!({"agentId": "slow-0", "timestamp": ts, "state": "active",
        "details": {"slow": true}})
    .to_string();
    // Headers first, body later: with Expect: 100-continue the server says
    // when the handler (past authentication) starts reading the body.
    let mut sock = tokio::net::TcpStream::connect(&addr)
        .await
        .expect("connect");
    let head = format!(
        "POST /v1/opscore/agent/slow-0/state HTTP/1.1\r\nHost: {addr}\r\n\
         Authorization: Bearer {KEY}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nExpect: 100-continue\r\n\r\n",
        body.len()
    );
    sock.write_all(head.as_bytes()).await.expect("write head");
    let mut buf = Vec::new();
    let n = read_head(&mut sock, &mut buf).await;
    assert!(
        buf.starts_with(b"HTTP/1.1 100"),
        "{:?}",
        String::from_utf8_lossy(&buf)
    );
    buf.drain(..n);

    // Shut down while the request is in the handler, then send the body.
    let stopping = tokio::spawn(s.stop());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !stopping.is_finished(),
        "shutdown did not wait for the request in flight"
    );
    sock.write_all(body.as_bytes()).await.expect("write body");
    let n = read_head(&mut sock, &mut buf).await;
    let head = String::from_utf8_lossy(&buf[..n]).to_string();
    assert!(head.starts_with("HTTP/1.1 202"), "{head}");
    let mut rest = buf[n..].to_vec();
    let _ = tokio::time::timeout(Duration::from_secs(60), sock.read_to_end(&mut rest)).await;
    let got: Value = serde_json::from_slice(&rest).expect("JSON body");
    assert_eq!(
        got,
        json!({"status": "success", "message": "State update accepted"})
    );

    let db = tokio::time::timeout(Duration::from_secs(120), stopping)
        .await
        .expect("shutdown finishes")
        .expect("stop task");
    let config = test_config(&db);
    let s = TestServer::start_on(db, config).await;
    let (_, cur) = s.state("slow-0").await;
    assert_eq!(cur["state"], "active");
    assert_eq!(cur["details"], json!({"slow": true}));
    assert_eq!(s.history("slow-0").await.len(), 2);
    s.stop().await;
}

/// A store on `db`, used directly (no server), with `n` agents registered
/// as `prefix-000`, `prefix-001`, ….
async fn store_with_agents(
    db: &TestDb,
    prefix: &str,
    n: usize,
) -> (Arc<dyn opscore::store::Store>, Vec<AgentId>) {
    let store = opscore::store::connect(&db.url, &opscore::store::StoreOptions::default())
        .await
        .expect("store");
    let agents: Vec<AgentId> = (0..n)
        .map(|i| AgentId::parse(&format!("{prefix}-{i:03}")).expect("id"))
        .collect();
    for a in &agents {
        store
            .register_agent(
                &common::registration(a.clone(), None),
                &opscore::domain::audit::Actor::system("test"),
                now_micros(),
            )
            .await
            .expect("register");
    }
    (store, agents)
}

/// Batches that share agents, written by several transactions at once (on
/// PostgreSQL the group commit runs a few writer workers, and replicas add
/// more), all commit. Each batch holds the same agents in its own shuffled
/// order: before batches locked their agents in one order, two of them
/// could each hold a row the other needed, and PostgreSQL aborted one as a
/// deadlock (a 500 for its reports).
async fn overlapping_batches_all_commit(backend: Backend) {
    const AGENTS: u64 = 16;
    const WRITERS: u64 = 6;
    const BATCHES: u64 = 60;
    let db = TestDb::new(backend).await;
    let (store, agents) = store_with_agents(&db, "overlap", AGENTS as usize).await;
    let registered = history_len(&*store, &agents[0]).await;
    let seed: u64 = rand::random();
    eprintln!("overlapping_batches seed = {seed}");
    let mut writers = tokio::task::JoinSet::new();
    for w in 0..WRITERS {
        let (store, mut agents) = (store.clone(), agents.clone());
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ w);
        writers.spawn(async move {
            for b in 0..BATCHES {
                agents.shuffle(&mut rng);
                let at = now_micros();
                let batch: Vec<StateReport> = agents
                    .iter()
                    .map(|a| StateReport {
                        agent_id: a.clone(),
                        state: format!("w{w}b{b}"),
                        details: None,
                        timestamp: at,
                        received_at: at,
                    })
                    .collect();
                let applied = store.apply_state_reports(&batch).await;
                let refused = applied.map(|a| a.results.into_iter().filter(Result::is_err).count());
                assert!(
                    matches!(refused, Ok(0)),
                    "writer {w}, batch {b}: {refused:?}"
                );
            }
        });
    }
    while let Some(done) = writers.join_next().await {
        done.expect("writer");
    }
    // Every batch left one history row per agent.
    for a in &agents {
        assert_eq!(
            history_len(&*store, a).await,
            registered + WRITERS * BATCHES,
            "{a}"
        );
    }
    store.close().await;
}

/// A batch larger than one statement holds (reports go in chunks of 200 per
/// `UPDATE` and `INSERT`, five binds each, bound positionally on SQLite and
/// by number on PostgreSQL) stores every report with its own agent: its
/// current state, its history rows and its feed event. Each agent sends two
/// reports in the batch, the second one late, so the batch also runs in two
/// rounds.
async fn large_batches_keep_each_report_with_its_agent(backend: Backend) {
    const AGENTS: usize = 450;
    let db = TestDb::new(backend).await;
    let (store, agents) = store_with_agents(&db, "large", AGENTS).await;
    let after = store
        .read_events(0, 10_000)
        .await
        .expect("feed")
        .last()
        .map_or(0, |e| e.index);
    let at = now_micros();
    let report = |i: usize, which: &str, timestamp: i64| StateReport {
        agent_id: agents[i].clone(),
        state: format!("s{i}{which}"),
        details: Some(
            serde_json::value::RawValue::from_string(format!(r#"{{"i":{i},"which":"{which}"}}"#))
                .expect("json"),
        ),
        timestamp,
        received_at: at + i as i64,
    };
    let batch: Vec<StateReport> = (0..AGENTS)
        .map(|i| report(i, "new", at + 1_000_000))
        .chain((0..AGENTS).map(|i| report(i, "late", at)))
        .collect();
    let applied = store.apply_state_reports(&batch).await.expect("batch");
    assert_eq!(applied.results.len(), 2 * AGENTS);
    assert!(applied.results.iter().all(Result::is_ok));

    let events = store.read_events(after, 10_000).await.expect("feed");
    assert_eq!(
        events.len(),
        AGENTS,
        "one agent.state event per current report"
    );
    for (i, a) in agents.iter().enumerate() {
        let current = store.get_state(a).await.expect("state").current;
        assert_eq!(current.state, format!("s{i}new"), "{a}");
        assert_eq!(
            current.details.as_ref().map(|d| d.get()),
            Some(format!(r#"{{"i":{i},"which":"new"}}"#).as_str()),
            "{a}"
        );
        assert_eq!(
            (current.timestamp, current.received_at),
            (at + 1_000_000, at + i as i64),
            "{a}"
        );
        let q = opscore::store::HistoryQuery {
            before: None,
            limit: 10,
        };
        let history: Vec<(String, i64)> = store
            .state_history(a, &q)
            .await
            .expect("history")
            .into_iter()
            .map(|h| (h.record.state, h.record.timestamp))
            .collect();
        assert_eq!(
            history[..2],
            [
                (format!("s{i}new"), at + 1_000_000),
                (format!("s{i}late"), at)
            ],
            "{a}: {history:?}"
        );
        let mine: Vec<Value> = events
            .iter()
            .filter(|e| e.agent_id.as_deref() == Some(a.as_str()))
            .map(|e| serde_json::from_str(e.data.get()).expect("event data"))
            .collect();
        assert_eq!(mine.len(), 1, "{a}");
        assert_eq!(mine[0]["state"], format!("s{i}new"), "{a}");
        assert_eq!(mine[0]["details"], json!({"i": i, "which": "new"}), "{a}");
    }
    store.close().await;
}

/// How many history entries `agent` has.
async fn history_len(store: &dyn opscore::store::Store, agent: &AgentId) -> u64 {
    let q = opscore::store::HistoryQuery {
        before: None,
        limit: 1000,
    };
    let history = store.state_history(agent, &q).await.expect("history");
    history.len() as u64
}

async fn parallel_reports_latest_timestamp_wins(backend: Backend) {
    const AGENTS: usize = 200;
    const REPORTS: usize = 50;
    let s = TestServer::start(backend).await;
    let client = client();
    let agents: Vec<String> = (0..AGENTS).map(|i| format!("par-{i:03}")).collect();
    stream::iter(&agents)
        .for_each_concurrent(16, |a| register_at(&client, &s.base, a, &["summarise"]))
        .await;

    // Report k of agent a has timestamp base + perm[a][k] seconds; every
    // (agent, report) pair is sent in one shuffled order.
    let seed: u64 = rand::random();
    eprintln!("parallel_reports seed = {seed}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let perms: Vec<Vec<i64>> = (0..AGENTS)
        .map(|_| {
            let mut p: Vec<i64> = (0..REPORTS as i64).collect();
            p.shuffle(&mut rng);
            p
        })
        .collect();
    let mut jobs: Vec<(usize, usize)> = (0..AGENTS)
        .flat_map(|a| (0..REPORTS).map(move |k| (a, k)))
        .collect();
    jobs.shuffle(&mut rng);
    let base = future_base();
    let answers: Vec<(usize, usize, StatusCode, String)> = stream::iter(jobs)
        .map(|(a, k)| {
            let agent = &agents[a];
            let rb = client
                .post(s.url(&format!("/v1/opscore/agent/{agent}/state")))
                .bearer_auth(KEY)
                .json(
                    &json!({"agentId": agent, "timestamp": ts_at(base, perms[a][k]),
                    "state": format!("s{k}"), "details": {"agent": a, "k": k}}),
                );
            async move {
                let r = rb.send().await.expect("send");
                let status = r.status();
                (a, k, status, r.text().await.unwrap_or_default())
            }
        })
        .buffer_unordered(64)
        .collect()
        .await;
    let failed: Vec<_> = answers
        .iter()
        .filter(|(_, _, status, _)| *status != StatusCode::ACCEPTED)
        .collect();
    assert!(
        failed.is_empty(),
        "{} refused, e.g. {:?}",
        failed.len(),
        failed.first()
    );
    assert_eq!(answers.len(), AGENTS * REPORTS);

    let checks = stream::iter(0..AGENTS)
        .map(|a| {
            let (client, base_url, agent, perm) = (&client, &s.base, &agents[a], &perms[a]);
            async move {
                let latest = perm
                    .iter()
                    .position(|&t| t == REPORTS as i64 - 1)
                    .expect("max");
                let r = client
                    .get(format!("{base_url}/v1/opscore/agent/{agent}/state"))
                    .bearer_auth(KEY)
                    .send()
                    .await
                    .expect("send");
                assert_eq!(r.status(), StatusCode::OK);
                let cur: Value = r.json().await.expect("json");
                assert_eq!(cur["state"], format!("s{latest}"), "{agent}: {cur}");
                assert_eq!(cur["details"], json!({"agent": a, "k": latest}), "{agent}");
                assert_eq!(cur["timestamp"], ts_at(base, REPORTS as i64 - 1), "{agent}");

                let history = history_at(client, base_url, agent).await;
                assert_eq!(history.len(), REPORTS + 1, "{agent}");
                let mut ks: Vec<u64> = Vec::new();
                for (i, e) in history.iter().enumerate() {
                    if i == REPORTS {
                        assert_eq!(e["state"], "UNKNOWN", "{agent}: oldest entry");
                        continue;
                    }
                    // Newest first: entry i has timestamp REPORTS-1-i.
                    let k = e["details"]["k"].as_u64().expect("k") as usize;
                    assert_eq!(e["details"]["agent"], a);
                    assert_eq!(e["state"], format!("s{k}"));
                    assert_eq!(perm[k], (REPORTS - 1 - i) as i64, "{agent}: order");
                    ks.push(k as u64);
                }
                ks.sort_unstable();
                assert_eq!(ks, (0..REPORTS as u64).collect::<Vec<_>>(), "{agent}");
            }
        })
        .buffer_unordered(16);
    checks.collect::<Vec<()>>().await;
    s.stop().await;
}

backend_tests!(
    sigkill_loses_no_acknowledged_report,
    repeated_sigkill_loses_no_acknowledged_report,
    graceful_shutdown_loses_no_acknowledged_report,
    graceful_shutdown_finishes_request_in_flight,
    parallel_reports_latest_timestamp_wins,
    overlapping_batches_all_commit,
    large_batches_keep_each_report_with_its_agent,
);
