//! `/ready`'s check of the database, shared by every probe.

use std::time::{Duration, Instant};

use crate::store::Store;

/// How long `/ready` reuses its last check of the database.
const READY_CHECK_REUSE: Duration = Duration::from_secs(1);

/// `/ready`'s last check of the database, reused for
/// [`READY_CHECK_REUSE`]: however many load balancers and orchestrators
/// probe, the database sees one check (with its one small write) a second.
#[derive(Debug, Default)]
pub struct Readiness {
    last: tokio::sync::Mutex<Option<(Instant, Result<(), String>)>>,
}

impl Readiness {
    /// The last result if recent enough, else a new check. Probes that
    /// arrive during a check wait for its result.
    pub(crate) async fn check(&self, store: &dyn Store) -> Result<(), String> {
        let mut last = self.last.lock().await;
        if let Some((at, result)) = &*last {
            if at.elapsed() < READY_CHECK_REUSE {
                return result.clone();
            }
        }
        let result = store.ready().await.map_err(|e| e.to_string());
        if let Err(e) = &result {
            // Once per check, not once per probe.
            tracing::warn!(error = %e, "not ready");
        }
        *last = Some((Instant::now(), result.clone()));
        result
    }
}
