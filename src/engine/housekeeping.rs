//! Background upkeep every process runs: announcing agents whose lease ran
//! out, and deleting change-feed events past their retention. Both are safe
//! to run in every replica at once (each change is re-checked under its row
//! lock, and deleting twice deletes nothing twice).

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::domain::time::now_micros;
use crate::store::Store;

/// How often the lease sweep runs. Staleness is judged by the clock wherever
/// it matters (reads, dispatch); the sweep only announces it on the feed, so
/// a second of lag is what the grace margin absorbs.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// Agents announced stale per transaction.
const SWEEP_BATCH: u32 = 500;

/// How often old events are pruned, and how many per transaction (small
/// batches, so a prune never holds the writer for long).
const PRUNE_EVERY: Duration = Duration::from_secs(30);
const PRUNE_BATCH: u32 = 2000;

/// Run until `stop`.
pub async fn run(store: Arc<dyn Store>, event_retention: Duration, stop: CancellationToken) {
    let mut since_prune = PRUNE_EVERY;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(SWEEP_EVERY) => {}
        }
        loop {
            match store.mark_stale_agents(now_micros(), SWEEP_BATCH).await {
                Ok(n) if n == u64::from(SWEEP_BATCH) => continue,
                Ok(n) => {
                    if n > 0 {
                        tracing::info!(agents = n, "agents went stale");
                    }
                }
                Err(e) => tracing::warn!(error = %e, "lease sweep failed; retrying"),
            }
            break;
        }
        since_prune += SWEEP_EVERY;
        if since_prune >= PRUNE_EVERY {
            since_prune = Duration::ZERO;
            let cutoff = now_micros()
                .saturating_sub(i64::try_from(event_retention.as_micros()).unwrap_or(i64::MAX));
            loop {
                if stop.is_cancelled() {
                    return;
                }
                match store.prune_events(cutoff, PRUNE_BATCH).await {
                    Ok(n) if n >= u64::from(PRUNE_BATCH) => tokio::task::yield_now().await,
                    Ok(_) => break,
                    Err(e) => {
                        tracing::warn!(error = %e, "pruning old events failed; retrying later");
                        break;
                    }
                }
            }
        }
    }
}
