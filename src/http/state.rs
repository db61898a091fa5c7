//! Shared application state handed to every handler. It belongs to the
//! HTTP layer: it holds the HTTP layer's own parts (the key cache, the
//! readiness check), and only `lib.rs` (which builds it) and `http/` use it.

use std::sync::Arc;

use tokio::sync::Notify;

use crate::config::Config;
use crate::engine::feed::Feed;
use crate::http::keyring::KeyRing;
use crate::http::readiness::Readiness;
use crate::metrics::Metrics;
use crate::store::writer::StateWriter;
use crate::store::Store;

/// Everything a handler needs, behind one `Arc`: a request clones the
/// state several times (each layer's and handler's `State`), and one
/// reference count is cheaper than one per part.
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

impl AppState {
    /// The state over `shared`.
    pub fn new(shared: Shared) -> Self {
        Self(Arc::new(shared))
    }
}

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// The parts of [`AppState`].
pub struct Shared {
    /// Validated configuration.
    pub config: Arc<Config>,
    /// The database.
    pub store: Arc<dyn Store>,
    /// Group-commit writer for state reports.
    pub writer: StateWriter,
    /// Accepted API keys (bootstrap and managed), with their rate limits.
    pub keys: Arc<KeyRing>,
    /// Wakes the dispatcher when work may have become due (a trigger, a
    /// state report that finished a task).
    pub wake: Arc<Notify>,
    /// Prometheus metrics; register new ones with `Metrics::register_gauge`.
    pub metrics: Arc<Metrics>,
    /// The change feed.
    pub feed: Feed,
    /// `/ready`'s last check of the database, reused for about a second.
    pub readiness: Arc<Readiness>,
}
