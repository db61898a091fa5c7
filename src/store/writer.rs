//! Group commit for state reports.
//!
//! Request handlers hand their validated report to the writer and wait. A
//! worker takes every report queued at that moment (up to a batch cap),
//! stores them in one transaction, and only after the commit answers each
//! waiting handler. Under load many reports share one commit (one fsync), so
//! durable throughput is not capped by the disk's commit rate; with one
//! request in flight a batch is just that request, so latency stays low.

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot, Mutex, Notify};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::{Store, StoreError, StoreResult};
use crate::domain::state::StateReport;

/// Tuning for the writer.
#[derive(Debug, Clone, Copy)]
pub struct WriterOptions {
    /// Concurrent transactions. 1 suits SQLite (one writer at a time); a few
    /// let PostgreSQL overlap commits.
    pub workers: usize,
    /// Most reports in one transaction.
    pub max_batch: usize,
    /// Reports that may wait for a worker before submitters wait too.
    pub queue: usize,
}

struct Job {
    report: StateReport,
    done: oneshot::Sender<StoreResult<()>>,
}

/// Handle used by request handlers to submit reports. Cheap to clone. When
/// the last handle is dropped the workers finish what is queued and stop.
#[derive(Clone)]
pub struct StateWriter {
    tx: mpsc::Sender<Job>,
}

impl StateWriter {
    /// Start the workers. At shutdown cancel `stop` and await the returned
    /// set: from then on new submissions are refused, and every report
    /// already queued is written before the workers end.
    pub fn spawn(
        store: Arc<dyn Store>,
        opts: WriterOptions,
        wake: Arc<Notify>,
        stop: CancellationToken,
    ) -> (Self, JoinSet<()>) {
        let (tx, rx) = mpsc::channel(opts.queue.max(1));
        let rx = Arc::new(Mutex::new(rx));
        let mut set = JoinSet::new();
        for _ in 0..opts.workers.max(1) {
            set.spawn(worker(
                store.clone(),
                rx.clone(),
                opts.max_batch.max(1),
                wake.clone(),
                stop.clone(),
            ));
        }
        (Self { tx }, set)
    }

    /// Store `report` durably; returns once it is committed (or refused).
    pub async fn submit(&self, report: StateReport) -> StoreResult<()> {
        let (done, rx) = oneshot::channel();
        self.tx
            .send(Job { report, done })
            .await
            .map_err(|_| StoreError::Unavailable("the state writer has stopped".into()))?;
        rx.await
            .map_err(|_| StoreError::Internal("the state writer dropped a report".into()))?
    }
}

async fn worker(
    store: Arc<dyn Store>,
    rx: Arc<Mutex<mpsc::Receiver<Job>>>,
    max_batch: usize,
    wake: Arc<Notify>,
    stop: CancellationToken,
) {
    let mut jobs: Vec<Job> = Vec::with_capacity(max_batch);
    loop {
        {
            // Hold the receiver only while collecting: the next batch forms
            // in another worker while this one commits.
            let mut rx = rx.lock().await;
            let received = tokio::select! {
                n = rx.recv_many(&mut jobs, max_batch) => n,
                () = stop.cancelled() => {
                    // Refuse new submissions, keep draining the queue.
                    rx.close();
                    rx.recv_many(&mut jobs, max_batch).await
                }
            };
            if received == 0 {
                return; // closed (or every handle dropped) and drained
            }
        }
        let (reports, waiters): (Vec<StateReport>, Vec<_>) =
            jobs.drain(..).map(|j| (j.report, j.done)).unzip();
        let mut applied = store.apply_state_reports(&reports).await;
        if let Err(StoreError::ConnectionLost(e)) = &applied {
            // Nothing was acknowledged: apply the batch again, once, on a
            // fresh connection (those pooled before the loss are pinged).
            tracing::warn!(error = %e, batch = reports.len(), "database connection lost; applying the batch again");
            applied = store.apply_state_reports(&reports).await;
        }
        let (results, dispatchable) = match applied {
            Ok(applied) => (applied.results, applied.dispatchable),
            // One poisonous report must not fail its neighbours: retry each
            // alone. An unavailable database fails them all at once instead.
            Err(StoreError::Internal(e)) if reports.len() > 1 => {
                tracing::warn!(error = %e, batch = reports.len(), "batch failed; retrying reports one by one");
                let mut results = Vec::with_capacity(reports.len());
                let mut dispatchable = false;
                for r in &reports {
                    let one = store.apply_state_reports(std::slice::from_ref(r)).await;
                    results.push(one.and_then(|mut a| {
                        dispatchable |= a.dispatchable;
                        a.results.pop().unwrap_or(Ok(()))
                    }));
                }
                (results, dispatchable)
            }
            Err(e) => (reports.iter().map(|_| Err(e.clone())).collect(), false),
        };
        if dispatchable {
            wake.notify_one();
        }
        for (done, result) in waiters.into_iter().zip(results) {
            // The submitter may have gone (client hung up); the report is
            // stored either way.
            let _ = done.send(result);
        }
    }
}
