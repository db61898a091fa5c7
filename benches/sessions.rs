//! Benchmark: workflow sessions completed per second, end to end.
//!
//! One process runs Ops-Core (in direct dispatch mode) and `opscore
//! simulate`'s agents, which answer every task at once (active, then idle).
//! The bench triggers the two-step sample workflow many times across the
//! agents and times until every session has completed: each session is two
//! dispatches, four state reports and their database transactions.
//!
//! Three shapes run one after the other on one server: the sample workflow
//! triggered per agent (1.4), the same chain triggered on the pool of every
//! agent with its capability (§3.3), and the simulator's fan-out and join
//! (`sim_parallel`: five tasks, three of them at once) on that pool.
//!
//! `cargo bench --bench sessions` runs it on SQLite; with
//! OPSCORE_BENCH_POSTGRES_URL=postgres://postgres@127.0.0.1:5432/postgres it
//! also runs on a scratch PostgreSQL database (created and dropped).
//! BENCH_SESSIONS and BENCH_AGENTS change the size (defaults 2000 and 50).

use std::time::{Duration, Instant};

use futures::StreamExt;
use opscore::config::{Config, DispatchTarget};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

mod common;
use common::env_usize;

const KEY: &str = "bench-admin-key-0123456789";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let sessions = env_usize("BENCH_SESSIONS", 2000);
    let agents = env_usize("BENCH_AGENTS", 50);
    println!("sessions completed per second: {sessions} sessions of each shape over {agents} simulated agents");
    println!(
        "{:<10} {:<13} {:>10} {:>12} {:>12}",
        "backend", "shape", "seconds", "sessions/s", "tasks/s"
    );
    common::on_each_backend(|label, url| async move { run(label, &url, sessions, agents).await })
        .await
}

async fn run(label: &str, url: &str, sessions: usize, agents: usize) -> anyhow::Result<()> {
    let mut config = Config::new(url, KEY);
    config.dispatch.target = DispatchTarget::Direct;
    config.dispatch.poll_interval = Duration::from_millis(10);
    config.workflows_dir = concat!(env!("CARGO_MANIFEST_DIR"), "/workflows").into();
    config.log_level = "warn".into();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    let stop = CancellationToken::new();
    let server = tokio::spawn(opscore::serve(config, listener, stop.clone()));

    let sim_args = opscore::sim::SimArgs {
        target: opscore::client::TargetArgs {
            server: opscore::client::ServerArgs {
                url: Some(base.clone()),
                api_key: Some(KEY.into()),
                ..Default::default()
            },
            webhook_secret: None,
        },
        agents,
        id_prefix: "bench".into(),
        listen: "127.0.0.1:0".parse()?,
        advertise_url: None,
        task_ms: 0,
        error_rate: 0.0,
        trigger_workflow: None,
        trigger_every_ms: 1000,
        trigger_capability: None,
        capabilities: vec!["summarise".into()],
    };
    let sim_stop = CancellationToken::new();
    let sim = tokio::spawn(opscore::sim::run(sim_args, sim_stop.clone()));

    let client = opscore::client::Client::new(&base, Some(KEY.into()));
    // Wait until every simulated agent is registered and idle.
    loop {
        let v = client
            .get_json("/v1/opscore/agents?state=idle&limit=1000")
            .await;
        if v.is_ok_and(|v| v["items"].as_array().is_some_and(|a| a.len() == agents)) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    client
        .post_json("/v1/opscore/workflows", &opscore::sim::parallel_demo())
        .await?;
    for shape in Shape::ALL {
        run_shape(label, &client, shape, sessions, agents).await?;
    }
    sim_stop.cancel();
    let _ = sim.await;
    stop.cancel();
    server.await??;
    Ok(())
}

/// How the sessions are triggered.
#[derive(Debug, Clone, Copy)]
enum Shape {
    /// The 2-task sample chain, each session on one named agent.
    AgentChain,
    /// The same chain on the pool of agents with its capability.
    PoolChain,
    /// `sim_parallel` (split, three parts at once, merge) on that pool.
    PoolFanOut,
}

impl Shape {
    const ALL: [Shape; 3] = [Shape::AgentChain, Shape::PoolChain, Shape::PoolFanOut];

    fn name(self) -> &'static str {
        match self {
            Shape::AgentChain => "agent chain",
            Shape::PoolChain => "pool chain",
            Shape::PoolFanOut => "pool fan-out",
        }
    }

    fn tasks(self) -> f64 {
        match self {
            Shape::AgentChain | Shape::PoolChain => 2.0,
            Shape::PoolFanOut => 5.0,
        }
    }

    /// The trigger's path and body for session `i`.
    fn trigger(self, i: usize, agents: usize) -> (String, Value) {
        let pool = json!({"capability": "summarise"});
        match self {
            Shape::AgentChain => (
                format!("/v1/opscore/agent/bench-{}/workflow", i % agents),
                json!({"workflowDefinitionId": "sample_workflow_id", "initialPayload": {"i": i}}),
            ),
            Shape::PoolChain => (
                "/v1/opscore/workflows/sample_workflow_id/trigger".to_owned(),
                json!({"agentSelector": pool, "initialPayload": {"i": i}}),
            ),
            Shape::PoolFanOut => (
                format!(
                    "/v1/opscore/workflows/{}/trigger",
                    opscore::sim::PARALLEL_DEMO
                ),
                json!({"agentSelector": pool, "initialPayload": {"i": i}}),
            ),
        }
    }
}

async fn completed(client: &opscore::client::Client) -> anyhow::Result<usize> {
    let v: Value = client.get_json("/v1/opscore/sessions/counts").await?;
    Ok(v["completed"].as_u64().unwrap_or(0) as usize)
}

async fn run_shape(
    label: &str,
    client: &opscore::client::Client,
    shape: Shape,
    sessions: usize,
    agents: usize,
) -> anyhow::Result<()> {
    let before = completed(client).await?;
    let started = Instant::now();
    futures::stream::iter(0..sessions)
        .map(|i| {
            let client = client.clone();
            async move {
                let (path, body) = shape.trigger(i, agents);
                client.post_json(&path, &body).await
            }
        })
        .buffer_unordered(32)
        .for_each(|r| async move {
            if let Err(e) = r {
                eprintln!("trigger failed: {e}");
            }
        })
        .await;
    loop {
        let done = completed(client).await? - before;
        if done >= sessions {
            break;
        }
        if started.elapsed() > Duration::from_secs(600) {
            anyhow::bail!("only {done} of {sessions} sessions completed in 10 minutes");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "{label:<10} {:<13} {secs:>10.2} {:>12.0} {:>12.0}",
        shape.name(),
        sessions as f64 / secs,
        shape.tasks() * sessions as f64 / secs
    );
    Ok(())
}
