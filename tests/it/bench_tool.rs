//! The load tool (`opscore bench`) against a test server: a short run of
//! every scenario, whose counts must add up with each other and with what
//! the server stored, and which must leave no agent registered and no
//! session open behind it.

use crate::common;

use std::path::PathBuf;
use std::time::Duration;

use crate::common::{Backend, TestServer, KEY, SECRET};
use clap::Parser;
use opscore::bench::{BenchArgs, Report, ScenarioReport};
use opscore::cli::{Cli, Command};
use serde_json::Value;

/// Bench settings for `base`, parsed as the command line would.
fn args(base: &str, extra: &[&str]) -> BenchArgs {
    let mut argv = vec![
        "opscore",
        "bench",
        "--url",
        base,
        "--api-key",
        KEY,
        "--webhook-secret",
        SECRET,
    ];
    argv.extend_from_slice(extra);
    match Cli::try_parse_from(argv)
        .expect("bench flags parse")
        .command
    {
        Command::Bench(a) => *a,
        other => panic!("parsed as {other:?}"),
    }
}

fn row<'a>(r: &'a Report, name: &str) -> &'a ScenarioReport {
    r.row(name)
        .unwrap_or_else(|| panic!("no row {name} in {:?}", names(r)))
}

fn names(r: &Report) -> Vec<&str> {
    r.scenarios.iter().map(|s| s.scenario.as_str()).collect()
}

const AGENTS: usize = 12;
const SIM_AGENTS: usize = 3;

async fn every_scenario_adds_up(backend: Backend) {
    let server = TestServer::start_with(backend, |c| {
        c.dispatch.poll_interval = Duration::from_millis(20);
        c.workflows_dir = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/workflows"));
    })
    .await;
    let prefix = format!("bt-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let agents = AGENTS.to_string();
    let sims = SIM_AGENTS.to_string();
    let a = args(
        &server.base,
        &[
            "--scenario",
            "all",
            "--duration",
            "600ms",
            "--connections",
            "4",
            "--agents",
            &agents,
            "--report-every",
            "100ms-200ms",
            "--trigger-rate",
            "20",
            "--sim-agents",
            &sims,
            "--sim-task-ms",
            "5",
            "--drain",
            "3s",
            "--stress-start-rate",
            "50",
            "--stress-step",
            "400ms",
            "--stress-max-steps",
            "3",
            "--timeout",
            "5s",
            "--id-prefix",
            &prefix,
        ],
    );
    let report = opscore::bench::run(a).await.expect("bench run");
    let table = report.table();
    println!("{table}");

    // Every scenario ran, health first.
    let n = names(&report);
    assert_eq!(n[0], "health", "{n:?}");
    for name in [
        "s1",
        "s1-max",
        "reads",
        "s2",
        "s2-sessions",
        "s3",
        "s3:report",
        "s3:read",
        "s3:trigger",
        "s3-sessions",
        "s4#1",
    ] {
        row(&report, name);
    }
    assert!(
        table.contains("x health") && table.contains("p99 ms"),
        "{table}"
    );

    // Each row: requests = successes + errors, errors = the sum of the kinds.
    for s in &report.scenarios {
        assert_eq!(s.requests, s.successes + s.errors, "{}", s.scenario);
        assert_eq!(s.errors, s.error_kinds.total(), "{}", s.scenario);
        if !s.scenario.ends_with("-sessions") {
            // A small load on a test server: nothing may fail.
            assert_eq!(s.errors, 0, "{}: {:?}", s.scenario, s.error_kinds);
            assert!(s.requests > 0, "{} sent nothing", s.scenario);
            assert!(s.p50_ms <= s.p90_ms && s.p90_ms <= s.p99_ms && s.p99_ms <= s.max_ms);
        }
    }
    let health = row(&report, "health");
    assert!((health.x_health - 1.0).abs() < 1e-9);
    assert!((report.health_rps - health.rps).abs() < 1e-9);
    assert!(row(&report, "s1-max").x_health > 0.0);

    // S1 sent what its schedule held: every agent every 100-200 ms over
    // 600 ms is 3 to 6 reports each.
    let s1 = row(&report, "s1");
    assert!(
        (3 * AGENTS as u64..=6 * AGENTS as u64).contains(&s1.requests),
        "s1 sent {}",
        s1.requests
    );
    assert!(s1.offered_rate.is_some() && s1.send_lag_p99_ms.is_some());

    // S3's parts add up to its total, in roughly the 80/15/5 mix.
    let s3 = row(&report, "s3");
    let parts = ["s3:report", "s3:read", "s3:trigger"].map(|k| row(&report, k));
    assert_eq!(parts.iter().map(|p| p.requests).sum::<u64>(), s3.requests);
    assert_eq!(parts.iter().map(|p| p.successes).sum::<u64>(), s3.successes);
    assert!(parts[0].requests >= parts[1].requests && parts[1].requests >= parts[2].requests);

    // Every accepted state report is in the bench agents' history, and
    // nothing else is (each history also holds the UNKNOWN of registration).
    let mut accepted = row(&report, "s1").successes
        + row(&report, "s1-max").successes
        + row(&report, "s3:report").successes;
    for s in report
        .scenarios
        .iter()
        .filter(|s| s.scenario.starts_with("s4#"))
    {
        accepted += s.successes;
    }
    let mut stored = 0;
    for i in 0..AGENTS {
        let id = format!("{prefix}-{i}");
        stored += common::history_at(&server.client, &server.base, &id)
            .await
            .len() as u64
            - 1;
    }
    assert_eq!(stored, accepted, "reports stored vs accepted");

    // One session per accepted trigger, each accounted for.
    for (name, triggers) in [("s2", "s2"), ("s3", "s3:trigger")] {
        let c = row(&report, name).sessions.clone().expect("session counts");
        assert_eq!(c.started, row(&report, triggers).successes, "{name}");
        assert_eq!(c.completed + c.failed + c.unfinished, c.started, "{name}");
        assert_eq!(c.cancelled, c.unfinished, "{name}");
        let d = row(&report, &format!("{name}-sessions"));
        assert_eq!(
            (d.requests, d.successes),
            (c.started, c.completed),
            "{name}"
        );
    }
    let s2 = row(&report, "s2").sessions.clone().unwrap();
    assert!(
        s2.completed > 0,
        "the simulated agents completed nothing: {s2:?}"
    );
    assert_eq!(s2.failed, 0);
    let mut sessions_total = 0;
    for i in 0..SIM_AGENTS {
        let id = format!("{prefix}-sim-{i}");
        let r = server
            .get_json(&format!("/v1/opscore/agent/{id}/sessions?limit=1000"))
            .await;
        let items = r.body["items"].as_array().expect("items");
        sessions_total += items.len() as u64;
        for s in items {
            let status = s["status"].as_str().unwrap_or_default();
            assert!(
                matches!(status, "completed" | "failed" | "cancelled"),
                "session left {status}: {s}"
            );
        }
    }
    assert_eq!(
        sessions_total,
        row(&report, "s2").successes + row(&report, "s3:trigger").successes
    );

    // S4 stepped up from 50/s and reported where it stopped.
    let s4 = row(&report, "s4#1");
    assert_eq!(s4.offered_rate, Some(50.0));
    let knee = report.knee.clone().expect("knee");
    assert!(!knee.reason.is_empty());
    assert!(knee.last_good_rate.is_some() || knee.broken_rate == Some(50.0));

    // Cleanup: every agent the run registered is deregistered.
    let c = &report.cleanup;
    assert_eq!(
        (c.registered, c.deregistered, c.failed),
        (AGENTS as u64, AGENTS as u64, 0)
    );
    assert_eq!(c.sim_agents, SIM_AGENTS as u64);
    let ids = (0..AGENTS)
        .map(|i| format!("{prefix}-{i}"))
        .chain((0..SIM_AGENTS).map(|i| format!("{prefix}-sim-{i}")));
    for id in ids {
        let r = server.get_json(&format!("/v1/opscore/agent/{id}")).await;
        assert_eq!(r.status, 200, "{id}: {}", r.body);
        assert_eq!(r.body["registered"], Value::Bool(false), "{id}: {}", r.body);
    }

    // The JSON form holds the same figures.
    let v = serde_json::to_value(&report).unwrap();
    assert_eq!(v["scenarios"][0]["scenario"], "health");
    assert_eq!(v["idPrefix"], prefix.as_str());
    assert!(v["scenarios"][0]["p99Ms"].is_number());
}

backend_tests!(every_scenario_adds_up);

#[tokio::test]
async fn bad_settings_are_refused_before_any_request() {
    // Port 9 on loopback: if anything were sent, it would fail differently.
    for (flags, needle) in [
        (&["--connections", "0"][..], "--connections"),
        (&["--stress-error-limit", "2"][..], "--stress-error-limit"),
        (&["--duration", "0s"][..], "--duration"),
    ] {
        let e = opscore::bench::run(args("http://127.0.0.1:9", flags))
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains(needle), "{flags:?}: {e}");
    }
    let e = opscore::bench::run(args("http://127.0.0.1:9", &["--scenario", "health"]))
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("no Ops-Core answering"), "{e}");
    let bad = Cli::try_parse_from(["opscore", "bench", "--api-key", KEY, "--scenario", "s9"]);
    assert!(bad.is_err());
}

/// The latency scenario's parts: the delay proxy holds bytes the set time
/// each way (a round trip through it takes at least twice the delay), and
/// replicas reaching PostgreSQL through it take the load tool's reports,
/// spread over all of them by `--replica-urls`. No timing is asserted
/// beyond the delay being applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latency_scenario_delays_the_database_and_spreads_over_replicas() {
    use opscore::bench::DelayProxy;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    // An echo server behind a 25 ms proxy: each round trip >= 50 ms.
    let echo = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let echo_addr = echo.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = echo.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    let delay = Duration::from_millis(25);
    let slow = DelayProxy::start("127.0.0.1:0".parse().unwrap(), echo_addr, delay)
        .await
        .expect("proxy");
    let mut c = tokio::net::TcpStream::connect(slow.addr).await.unwrap();
    for i in 0..3u8 {
        let sent = std::time::Instant::now();
        c.write_all(&[i; 10]).await.unwrap();
        let mut got = [0u8; 10];
        c.read_exact(&mut got).await.unwrap();
        let took = sent.elapsed();
        assert_eq!(got, [i; 10]);
        assert!(took >= delay * 2, "round trip {i} took {took:?}");
    }

    // Two replicas on one PostgreSQL database, each through a 1 ms proxy.
    let db = common::TestDb::new(Backend::Postgres).await;
    let pg = url::Url::parse(&db.url).unwrap();
    let pg_addr = format!(
        "{}:{}",
        pg.host_str().unwrap(),
        pg.port_or_known_default().unwrap()
    );
    let proxy = DelayProxy::start(
        "127.0.0.1:0".parse().unwrap(),
        pg_addr,
        Duration::from_millis(1),
    )
    .await
    .expect("proxy");
    let mut via = pg.clone();
    via.set_host(Some("127.0.0.1")).unwrap();
    via.set_port(Some(proxy.addr.port())).unwrap();
    let mut replicas = Vec::new();
    for _ in 0..2 {
        replicas.push(common::ServerProcess::spawn(via.as_str(), db.dir.path()).await);
    }
    let a = args(
        &replicas[0].base,
        &[
            "--scenario",
            "s1-max",
            "--duration",
            "1s",
            "--connections",
            "8",
            "--agents",
            "16",
            "--replica-urls",
            &replicas[1].base,
        ],
    );
    let report = opscore::bench::run(a).await.expect("bench run");
    println!("{}", report.table());
    let r = row(&report, "s1-max");
    assert!(r.requests > 0 && r.errors == 0, "{r:?}");
    let client = reqwest::Client::new();
    for p in &replicas {
        let m = crate::metrics::Scrape::at(&client, &p.base).await;
        let reports = m.value(
            "opscore_http_requests",
            &[
                ("route", "/v1/opscore/agent/{agentId}/state"),
                ("method", "POST"),
                ("status", "202"),
            ],
        );
        assert!(reports > 0.0, "replica {} took no reports", p.base);
    }
    for p in replicas {
        p.kill().await;
    }
}
