//! The workflow side of a run: the simulated AgentKit and agents
//! (`crate::sim`) that complete the tasks S2 and S3 trigger, and reading
//! back from the server what became of the sessions.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use super::load::Bench;
use super::report::SessionCounts;
use super::stats::{histogram, record, Stats};
use crate::sim::SimArgs;

/// Simulated agents running in this process.
pub(crate) struct SimFleet {
    pub ids: Vec<String>,
    stop: CancellationToken,
    handle: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl SimFleet {
    /// Start `crate::sim::run` on a free loopback port with `agents` agents
    /// named `PREFIX-sim-N`, and wait until the last of them reports idle
    /// (the simulator registers them one after the other).
    pub(crate) async fn start(
        bench: &Bench,
        api_key: &str,
        webhook_secret: Option<String>,
        prefix: &str,
        agents: usize,
        task_ms: u64,
    ) -> anyhow::Result<Self> {
        let id_prefix = format!("{prefix}-sim");
        let args = SimArgs {
            target: crate::client::TargetArgs {
                server: crate::client::ServerArgs {
                    url: Some(bench.base.clone()),
                    api_key: Some(api_key.to_owned()),
                    ..Default::default()
                },
                webhook_secret,
            },
            agents,
            id_prefix: id_prefix.clone(),
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            advertise_url: None,
            task_ms,
            error_rate: 0.0,
            trigger_workflow: None,
            trigger_every_ms: 2000,
            trigger_capability: None,
            capabilities: vec!["summarise".to_owned(), "simulate".to_owned()],
        };
        let ids: Vec<String> = (0..agents).map(|i| format!("{id_prefix}-{i}")).collect();
        let stop = CancellationToken::new();
        let mut handle = tokio::spawn(crate::sim::run(args, stop.clone()));
        let last = ids.last().cloned().unwrap_or_default();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(v) = bench
                .get_json(&format!("/v1/opscore/agent/{last}/state"))
                .await
            {
                if v["state"] == "idle" {
                    break;
                }
            }
            if handle.is_finished() {
                let err = match (&mut handle).await {
                    Ok(Err(e)) => e,
                    Ok(Ok(())) => anyhow::anyhow!("it stopped"),
                    Err(e) => anyhow::anyhow!("it panicked: {e}"),
                };
                anyhow::bail!("the simulated agents did not start: {err:#}");
            }
            if Instant::now() > deadline {
                stop.cancel();
                let _ = handle.await;
                anyhow::bail!("the simulated agents were not all registered and idle within 60s");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(Self { ids, stop, handle })
    }

    /// Stop the simulator; it deregisters its agents on the way out.
    pub(crate) async fn stop(self) -> anyhow::Result<()> {
        self.stop.cancel();
        self.handle.await??;
        Ok(())
    }
}

/// One session as the per-agent listing shows it.
#[derive(Debug, Clone)]
pub(crate) struct SessionInfo {
    pub id: String,
    pub status: String,
    pub created_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
}

impl SessionInfo {
    fn finished(&self) -> bool {
        matches!(self.status.as_str(), "completed" | "failed" | "cancelled")
    }
}

fn time(v: &Value) -> Option<DateTime<Utc>> {
    v.as_str()
        .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
        .map(|t| t.with_timezone(&Utc))
}

/// Every session of `agents`, except those in `exclude`.
pub(crate) async fn census(
    bench: &Bench,
    agents: &[String],
    exclude: &HashSet<String>,
) -> anyhow::Result<Vec<SessionInfo>> {
    let mut out = Vec::new();
    for agent in agents {
        let mut cursor: Option<String> = None;
        loop {
            let mut path = format!("/v1/opscore/agent/{agent}/sessions?limit=1000");
            if let Some(c) = &cursor {
                path.push_str(&format!("&cursor={c}"));
            }
            let page = bench.get_json(&path).await?;
            for s in page["items"].as_array().into_iter().flatten() {
                let id = s["sessionId"].as_str().unwrap_or_default().to_owned();
                if exclude.contains(&id) {
                    continue;
                }
                out.push(SessionInfo {
                    id,
                    status: s["status"].as_str().unwrap_or_default().to_owned(),
                    created_at: time(&s["createdAt"]),
                    finished_at: time(&s["finishedAt"]),
                });
            }
            match page["nextCursor"].as_str() {
                Some(c) => cursor = Some(c.to_owned()),
                None => break,
            }
        }
    }
    Ok(out)
}

/// Ids of every session `agents` have now (to tell a later scenario's apart).
pub(crate) async fn seen(bench: &Bench, agents: &[String]) -> anyhow::Result<HashSet<String>> {
    Ok(census(bench, agents, &HashSet::new())
        .await?
        .into_iter()
        .map(|s| s.id)
        .collect())
}

/// After a scenario's triggers stopped at `window_end` (having run for
/// `window`): wait up to `drain` for its sessions to finish, cancel those
/// still open, and count them. Also returns the completed sessions'
/// end-to-end durations (created to finished, by the server's clock) as
/// `Stats`: each completed session a success, each failed or unfinished one
/// an error, and the latency histogram that of the completed ones.
pub(crate) async fn settle(
    bench: &Arc<Bench>,
    agents: &[String],
    exclude: &HashSet<String>,
    window: Duration,
    window_end: DateTime<Utc>,
    drain: Duration,
    stop: &CancellationToken,
) -> anyhow::Result<(SessionCounts, Stats)> {
    let deadline = Instant::now() + drain;
    let mut sessions = census(bench, agents, exclude).await?;
    while sessions.iter().any(|s| !s.finished())
        && Instant::now() < deadline
        && !stop.is_cancelled()
    {
        tokio::time::sleep(Duration::from_millis(250)).await;
        sessions = census(bench, agents, exclude).await?;
    }
    let mut counts = SessionCounts {
        started: sessions.len() as u64,
        ..SessionCounts::default()
    };
    let mut stats = Stats::new();
    let mut durations = histogram();
    for s in &sessions {
        match s.status.as_str() {
            "completed" => {
                counts.completed += 1;
                stats.successes += 1;
                if s.finished_at.is_some_and(|f| f <= window_end) {
                    counts.completed_in_window += 1;
                }
                if let (Some(c), Some(f)) = (s.created_at, s.finished_at) {
                    record(&mut durations, (f - c).to_std().unwrap_or_default());
                }
            }
            "failed" => {
                counts.failed += 1;
                stats.errors.server_error += 1;
            }
            "cancelled" => {
                counts.unfinished += 1;
                stats.errors.other += 1;
            }
            _ => {
                counts.unfinished += 1;
                stats.errors.other += 1;
                if bench
                    .post_empty(&format!("/v1/opscore/sessions/{}/cancel", s.id))
                    .await
                {
                    counts.cancelled += 1;
                }
            }
        }
    }
    // The latency columns are those of the completed sessions only.
    stats.latency = durations;
    let secs = window.as_secs_f64();
    counts.completed_per_sec = if secs > 0.0 {
        counts.completed_in_window as f64 / secs
    } else {
        0.0
    };
    Ok((counts, stats))
}
