//! Background upkeep every process runs: announcing agents whose lease ran
//! out, and retention (old change-feed events, state history, finished
//! sessions and audit entries, by age; history and sessions also by count
//! per agent). Everything here is safe to run
//! in every replica at once: each change is re-checked under its row lock,
//! and deleting twice deletes nothing twice. Work is done in small batches,
//! each its own short transaction, so it never holds up writes for long.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::config::RetentionConfig;
use crate::domain::time::{now_micros, Micros};
use crate::store::{Store, StoreResult};

/// How often the lease sweep (and a step of the per-agent retention pass)
/// runs. Staleness is judged by the clock wherever it matters (reads,
/// dispatch); the sweep only announces it, and the grace margin absorbs a
/// second of lag.
const TICK: Duration = Duration::from_secs(1);

/// Agents announced stale per transaction.
const SWEEP_BATCH: u32 = 500;

/// Rows deleted per statement by the by-age passes.
const PRUNE_BATCH: u32 = 2000;

/// Agents visited per tick by the per-agent pass.
const AGENTS_PER_TICK: u32 = 200;

/// Logs a failing job once when it starts failing and once when it
/// recovers, not on every tick of an outage.
#[derive(Default)]
struct Health(bool);

impl Health {
    fn report<T>(&mut self, job: &str, r: StoreResult<T>) -> Option<T> {
        match r {
            Ok(v) => {
                if std::mem::take(&mut self.0) {
                    tracing::info!(job, "housekeeping recovered");
                }
                Some(v)
            }
            Err(e) => {
                if !std::mem::replace(&mut self.0, true) {
                    tracing::warn!(job, error = %e, "housekeeping failed; retrying");
                }
                None
            }
        }
    }
}

/// The by-age retention passes.
#[derive(Clone, Copy)]
enum Pass {
    Events,
    History,
    Sessions,
    Audit,
}

impl Pass {
    fn name(self) -> &'static str {
        match self {
            Self::Events => "event retention",
            Self::History => "history retention",
            Self::Sessions => "session retention",
            Self::Audit => "audit retention",
        }
    }
}

fn micros(d: Duration) -> Micros {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

/// Run until `stop`.
pub async fn run(store: Arc<dyn Store>, retention: RetentionConfig, stop: CancellationToken) {
    // One per job, so one failing job does not hide (or re-log) another.
    let (mut sweep, mut per_agent_health) = (Health::default(), Health::default());
    let mut by_age: [Health; 4] = Default::default();
    let mut since_prune = retention.prune_every;
    let mut cursor: Option<String> = None;
    let per_agent = retention.keep.history.is_some() || retention.keep.sessions.is_some();
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(TICK.min(retention.prune_every)) => {}
        }
        loop {
            let r = store.mark_stale_agents(now_micros(), SWEEP_BATCH).await;
            match sweep.report("lease sweep", r) {
                Some(n) if n == u64::from(SWEEP_BATCH) => continue,
                Some(n) if n > 0 => tracing::info!(agents = n, "agents went stale"),
                _ => {}
            }
            break;
        }
        if per_agent {
            let r = store
                .prune_per_agent(cursor.as_deref(), AGENTS_PER_TICK, &retention.keep)
                .await;
            if let Some(pass) = per_agent_health.report("per-agent retention", r) {
                cursor = pass.next;
            }
        }
        since_prune += TICK.min(retention.prune_every);
        if since_prune < retention.prune_every {
            continue;
        }
        since_prune = Duration::ZERO;
        let now = now_micros();
        let passes = [
            (Pass::Events, Some(retention.events)),
            (Pass::History, retention.history_max_age),
            (Pass::Sessions, retention.sessions_max_age),
            (Pass::Audit, retention.audit_max_age),
        ];
        for (pass, max_age) in passes {
            let Some(max_age) = max_age else { continue };
            let before = now.saturating_sub(micros(max_age));
            loop {
                if stop.is_cancelled() {
                    return;
                }
                let r = match pass {
                    Pass::Events => store.prune_events(before, PRUNE_BATCH).await,
                    Pass::History => store.prune_history_before(before, PRUNE_BATCH).await,
                    Pass::Sessions => store.prune_sessions_before(before, PRUNE_BATCH).await,
                    Pass::Audit => store.prune_audit_before(before, PRUNE_BATCH).await,
                };
                match by_age[pass as usize].report(pass.name(), r) {
                    Some(n) if n >= u64::from(PRUNE_BATCH) => tokio::task::yield_now().await,
                    _ => break,
                }
            }
        }
    }
}
