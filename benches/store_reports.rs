//! Benchmark: state reports per second through the store alone, no HTTP.
//!
//! `opscore bench`'s closed-loop report figure is the whole path: the load
//! tool, HTTP, the group-commit writer and the database, all on one machine.
//! This one times only the last step, `Store::apply_state_reports`, with
//! batches of fixed sizes over registered agents, each batch one durable
//! transaction. It is the ceiling the HTTP figure can approach: no batch
//! size the writer forms can go faster than its row here.
//!
//! `cargo bench --bench store_reports` runs it on SQLite; with
//! OPSCORE_BENCH_POSTGRES_URL=postgres://postgres@127.0.0.1:5432/postgres it
//! also runs on a scratch PostgreSQL database (created and dropped).
//! BENCH_AGENTS (default 5000) and BENCH_SECS per batch size (default 3)
//! change the size; BENCH_BATCHES (default `1,16,64,256`) picks the batch
//! sizes, e.g. one size alone to profile it.

use std::time::{Duration, Instant};

use opscore::domain::agent::{AgentId, Registration};
use opscore::domain::state::StateReport;
use opscore::domain::time::now_micros;
use opscore::store::StoreOptions;

mod common;
use common::env_usize;

const BATCHES: &str = "1,16,64,256";
const STATES: [&str; 3] = ["idle", "active", "error"];

fn agent(n: usize) -> anyhow::Result<AgentId> {
    AgentId::parse(&format!("bench-agent-{n}")).map_err(|e| anyhow::anyhow!("{e}"))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let batches = std::env::var("BENCH_BATCHES").unwrap_or_else(|_| BATCHES.into());
    let batches = batches
        .split(',')
        .map(|b| match b.trim().parse::<usize>() {
            Ok(n) if n > 0 => Ok(n),
            _ => Err(anyhow::anyhow!(
                "BENCH_BATCHES: {b:?} is not a batch size (a whole number above 0)"
            )),
        })
        .collect::<anyhow::Result<Vec<usize>>>()?;
    let largest = batches.iter().copied().max().unwrap_or(1);
    let agents = env_usize("BENCH_AGENTS", 5000).max(largest);
    let secs = Duration::from_secs(env_usize("BENCH_SECS", 3) as u64);
    println!(
        "state reports through Store::apply_state_reports, {agents} agents, {}s per batch size",
        secs.as_secs()
    );
    println!(
        "{:<10} {:>6} {:>10} {:>12} {:>14} {:>15}",
        "backend", "batch", "batches", "reports/s", "ms per batch", "us per report"
    );
    common::on_each_backend(|backend, url| {
        let batches = batches.clone();
        async move { run(backend, &url, agents, &batches, secs).await }
    })
    .await
}

async fn run(
    backend: &str,
    url: &str,
    agents: usize,
    batches: &[usize],
    secs: Duration,
) -> anyhow::Result<()> {
    let store = opscore::store::connect(url, &StoreOptions::default()).await?;
    for n in 0..agents {
        let reg = Registration {
            agent_id: agent(n)?,
            name: format!("bench agent {n}"),
            version: "1.0".into(),
            capabilities: vec!["summarise".into()],
            contact_endpoint: "http://127.0.0.1:9/".into(),
            metadata: Default::default(),
            ttl_secs: None,
        };
        store
            .register_agent(
                &reg,
                &opscore::domain::audit::Actor::system("bench"),
                now_micros(),
            )
            .await?;
    }
    // A fixed-seed xorshift: the same agents and states every run.
    let mut seed: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for &size in batches {
        let (mut batches, mut reports) = (0u64, 0u64);
        let started = Instant::now();
        while started.elapsed() < secs {
            // `size` different agents drawn at random, as a busy fleet's
            // reports arrive (neighbours in the table would share pages).
            let mut picked = std::collections::HashSet::with_capacity(size);
            while picked.len() < size {
                picked.insert(next() as usize % agents);
            }
            let now = now_micros();
            let batch = picked
                .into_iter()
                .map(|n| {
                    Ok(StateReport {
                        agent_id: agent(n)?,
                        state: STATES[next() as usize % STATES.len()].into(),
                        details: None,
                        timestamp: now,
                        received_at: now,
                    })
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            let applied = store.apply_state_reports(&batch).await?;
            if let Some(Err(e)) = applied.results.into_iter().find(Result::is_err) {
                anyhow::bail!("a report was refused: {e}");
            }
            batches += 1;
            reports += size as u64;
        }
        let elapsed = started.elapsed().as_secs_f64();
        println!(
            "{backend:<10} {size:>6} {batches:>10} {:>12.0} {:>14.3} {:>15.1}",
            reports as f64 / elapsed,
            elapsed * 1e3 / batches as f64,
            elapsed * 1e6 / reports as f64
        );
    }
    store.close().await;
    Ok(())
}
