//! Webhook replay protection: every signature accepted within the timestamp
//! tolerance window is remembered until its timestamp leaves the window, and
//! the same signature again is refused (401 `webhook_replayed`).
//!
//! The memory is bounded: at most `capacity` signatures (100,000 in the
//! service, a few megabytes). Entries leave when their window closes; if
//! more than `capacity` signatures arrive within one window the one closest
//! to expiring is evicted first, so only a replay of that oldest delivery
//! could slip through. The guard is per process: with several replicas
//! behind a load balancer a replay sent to another replica within the window
//! is not caught (see the README).

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;

/// Signatures the service remembers at most.
pub const DEFAULT_CAPACITY: usize = 100_000;

/// The remembered signatures.
#[derive(Debug)]
pub struct ReplayGuard {
    capacity: usize,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// Signature -> the Unix second after which it is stale anyway.
    seen: HashMap<[u8; 32], i64>,
    /// The same entries ordered by expiry, for expiring and evicting.
    by_expiry: BTreeSet<(i64, [u8; 32])>,
}

impl ReplayGuard {
    /// A guard remembering at most `capacity` signatures (at least 1).
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            inner: Mutex::new(Inner::default()),
        }
    }

    /// Remember `sig`, valid until `expires` (Unix seconds), at time `now`.
    /// `false` when it was already remembered: a replay.
    pub fn first_sighting(&self, sig: [u8; 32], expires: i64, now: i64) -> bool {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        while let Some(&(exp, old)) = inner.by_expiry.first() {
            if exp >= now {
                break;
            }
            inner.by_expiry.pop_first();
            inner.seen.remove(&old);
        }
        if inner.seen.contains_key(&sig) {
            return false;
        }
        while inner.seen.len() >= self.capacity {
            let Some((_, old)) = inner.by_expiry.pop_first() else {
                break;
            };
            inner.seen.remove(&old);
        }
        inner.seen.insert(sig, expires);
        inner.by_expiry.insert((expires, sig));
        true
    }

    /// Forget `sig`: its delivery failed on our side (a 5xx), so the sender
    /// may retry it.
    pub fn forget(&self, sig: &[u8; 32]) {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(exp) = inner.seen.remove(sig) {
            inner.by_expiry.remove(&(exp, *sig));
        }
    }

    /// How many signatures are remembered.
    pub fn len(&self) -> usize {
        self.inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .seen
            .len()
    }

    /// Whether none are.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sig(n: u8) -> [u8; 32] {
        [n; 32]
    }

    #[test]
    fn repeats_are_refused_until_the_window_closes() {
        let g = ReplayGuard::new(10);
        assert!(g.first_sighting(sig(1), 100, 50));
        assert!(!g.first_sighting(sig(1), 100, 60));
        assert!(g.first_sighting(sig(2), 100, 60));
        // Past its expiry it is dropped (the timestamp check refuses it
        // anyway by then).
        assert!(g.first_sighting(sig(3), 200, 101));
        assert_eq!(g.len(), 1);
        assert!(g.first_sighting(sig(1), 200, 101));
        // A forgotten signature may come again.
        g.forget(&sig(1));
        assert!(g.first_sighting(sig(1), 200, 102));
        assert!(!g.first_sighting(sig(1), 200, 102));
    }

    #[test]
    fn the_store_is_bounded_and_evicts_the_oldest() {
        let g = ReplayGuard::new(3);
        for n in 0..3 {
            assert!(g.first_sighting(sig(n), 100 + i64::from(n), 0));
        }
        assert!(g.first_sighting(sig(9), 200, 0));
        assert_eq!(g.len(), 3);
        // sig(0) expired first, so it was the one evicted; the rest are
        // still refused.
        assert!(!g.first_sighting(sig(1), 101, 0));
        assert!(!g.first_sighting(sig(2), 102, 0));
        assert!(!g.first_sighting(sig(9), 200, 0));
        assert!(g.first_sighting(sig(0), 100, 0));
        assert_eq!(g.len(), 3);
        // Many more than the capacity never grow it.
        for n in 10..=255u8 {
            g.first_sighting(sig(n), 300, 0);
        }
        assert_eq!(g.len(), 3);
    }
}
