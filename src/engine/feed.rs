//! The change feed's hub: one tailer per process reads newly committed
//! events from the store, in index order, and broadcasts them to this
//! process's subscribers (SSE streams, blocking reads, the dashboard).
//!
//! Events are written by the transactions that make the changes (see
//! `store::sql::events`), so every process, whichever replica made the
//! change, serves the same numbered feed. The tailer wakes when this process
//! commits events, when another replica does (PostgreSQL NOTIFY), and at
//! least once a second in case a notification was lost.

use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{broadcast, Notify};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::domain::agent::AgentId;
use crate::domain::event::Event;
use crate::store::{Store, StoreResult};

/// Events read from the store per query.
const PAGE: u32 = 1000;

/// Events buffered per subscriber before it counts as lagging (and catches
/// up from the store instead).
const BUFFER: usize = 4096;

/// The hub. Cheap to clone.
#[derive(Clone)]
pub struct Feed {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<dyn Store>,
    tx: broadcast::Sender<Arc<Event>>,
    /// Highest index broadcast so far (everything at or below it is
    /// committed and has been read).
    head: AtomicI64,
    subscribers: AtomicUsize,
    max_subscribers: usize,
    stop: CancellationToken,
}

/// A subscriber slot, released on drop.
pub struct Subscription {
    /// Events as the tailer reads them.
    pub rx: broadcast::Receiver<Arc<Event>>,
    feed: Feed,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.feed.inner.subscribers.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Feed {
    /// Start the hub: its tailer, and the listener for other processes'
    /// events. Both stop when `stop` is cancelled, which also ends every
    /// stream and blocking read (so shutdown never waits on them).
    pub async fn start(
        store: Arc<dyn Store>,
        max_subscribers: usize,
        stop: CancellationToken,
        tasks: &mut JoinSet<()>,
    ) -> StoreResult<Self> {
        // From where the read model was loaded, so that the model learns
        // of everything committed since.
        let head = store
            .event_bounds()
            .await?
            .head
            .min(store.read_model_head());
        let (tx, _) = broadcast::channel(BUFFER);
        let feed = Self {
            inner: Arc::new(Inner {
                store: store.clone(),
                tx,
                head: AtomicI64::new(head),
                subscribers: AtomicUsize::new(0),
                max_subscribers,
                stop: stop.clone(),
            }),
        };
        let wake = store.feed_signal();
        let remote = store.clone();
        let (w, s) = (wake.clone(), stop.clone());
        tasks.spawn(async move { remote.follow_remote_events(w, s).await });
        let tailer = feed.clone();
        tasks.spawn(async move { tailer.tail(wake, stop).await });
        Ok(feed)
    }

    /// The highest index this process has seen committed.
    pub fn head(&self) -> i64 {
        self.inner.head.load(Ordering::Acquire)
    }

    /// Subscribers connected now (SSE streams and blocking reads).
    pub fn subscribers(&self) -> usize {
        self.inner.subscribers.load(Ordering::Relaxed)
    }

    /// Cancelled when the service shuts down.
    pub fn stopping(&self) -> &CancellationToken {
        &self.inner.stop
    }

    /// The store events are read from.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.inner.store
    }

    /// Take a subscriber slot, or `None` when all are taken.
    pub fn subscribe(&self) -> Option<Subscription> {
        let n = self.inner.subscribers.fetch_add(1, Ordering::Relaxed);
        let sub = Subscription {
            rx: self.inner.tx.subscribe(),
            feed: self.clone(),
        };
        // The slot is released by the Subscription's drop either way.
        (n < self.inner.max_subscribers).then_some(sub)
    }

    /// Wait until something changes what a state read of `agent` returns
    /// after feed index `index`, or `wait` passes, or shutdown; returns the
    /// index to report with the read that follows. `None`: no subscriber
    /// slot was free.
    pub async fn wait_for_agent(
        &self,
        agent: &AgentId,
        index: i64,
        wait: Duration,
    ) -> StoreResult<Option<i64>> {
        let Some(mut sub) = self.subscribe() else {
            return Ok(None);
        };
        // Subscribed first, so nothing committed from here on is missed;
        // what was committed before is in the store.
        if index < self.head() && self.inner.store.agent_changed_since(agent, index).await? {
            return Ok(Some(self.head()));
        }
        let deadline = tokio::time::sleep(wait);
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                _ = &mut deadline => return Ok(Some(self.head())),
                _ = self.inner.stop.cancelled() => return Ok(Some(self.head())),
                ev = sub.rx.recv() => match ev {
                    Ok(e) => {
                        if e.index > index
                            && e.kind.touches_agent_state()
                            && e.agent_id.as_deref() == Some(agent.as_str())
                        {
                            return Ok(Some(self.head()));
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        if self.inner.store.agent_changed_since(agent, index).await? {
                            return Ok(Some(self.head()));
                        }
                    }
                    Err(broadcast::error::RecvError::Closed) => return Ok(Some(self.head())),
                },
            }
        }
    }

    /// The tailer: read what was committed after `head`, broadcast it in
    /// order, repeat when woken.
    async fn tail(self, wake: Arc<Notify>, stop: CancellationToken) {
        let mut failing = false;
        loop {
            match self.catch_up().await {
                Ok(()) => {
                    if failing {
                        tracing::info!("change feed reading events again");
                        failing = false;
                    }
                }
                Err(e) => {
                    if !failing {
                        tracing::warn!(error = %e, "change feed cannot read events; retrying");
                        failing = true;
                    }
                }
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = wake.notified() => {}
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }

    async fn catch_up(&self) -> StoreResult<()> {
        loop {
            let after = self.head();
            let events = self.inner.store.read_events(after, PAGE).await?;
            let full = events.len() == PAGE as usize;
            // The read model first: a read that reports index N reflects
            // every change up to N.
            self.inner.store.apply_feed_events(&events).await?;
            for e in events {
                self.inner.head.store(e.index, Ordering::Release);
                // No receivers is fine: nobody is watching.
                let _ = self.inner.tx.send(Arc::new(e));
            }
            if !full {
                return Ok(());
            }
        }
    }
}
