//! The feed horizon: how far the change feed may be read without a later
//! commit landing below what was read (PostgreSQL; SQLite's single writer
//! commits in index order by itself).
//!
//! Writers take no lock shared with each other, so index order is not
//! commit order: index 9 may commit after index 10. A reader must not hand
//! out 10 while 9 may still appear. The rule (docs/guarantees.md, "Feed
//! order"; the SQL in migrations/postgres/0015_feed_horizon.sql):
//!
//! - a transaction has its xid before it takes an index;
//! - a [`Mark`] reads the highest index handed out (`reserved`), then the
//!   next xid to be assigned (`xid_bound`): every transaction holding an
//!   index `<= reserved` has an xid `< xid_bound`;
//! - once the oldest xid still running in the database is `>= xid_bound`
//!   (or none runs), no such transaction is still running, so every later
//!   snapshot sees every event `<= reserved` that will ever commit. That
//!   mark is *settled*, and the horizon moves up to its `reserved`.
//!
//! This is the decision, kept free of I/O; the store takes the marks and
//! snapshots and reads events only up to [`FeedHorizon::observe`]'s answer.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

/// Marks kept waiting at most: a long transaction elsewhere on the server
/// holds every mark back, and a reader keeps marking meanwhile. Past this
/// the newest replaces the newest kept (older marks settle first anyway).
const MAX_PENDING: usize = 64;

/// One reading of the sequence and of the next xid, in that order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(in crate::store) struct Mark {
    /// The highest index handed out when the mark was taken.
    pub reserved: i64,
    /// The next transaction id to be assigned, read after `reserved`.
    pub xid_bound: i64,
}

/// This process's horizon, shared by every reader of the feed (the
/// tailer, streams catching up), so it only ever moves up: a stream that
/// catches up from the store after subscribing never reads less than the
/// tailer already broadcast.
#[derive(Debug, Default)]
pub(in crate::store) struct FeedHorizon {
    state: Mutex<State>,
    /// A wake-up to look again is already on its way.
    recheck: AtomicBool,
}

#[derive(Debug, Default)]
struct State {
    /// Every event at or below this is final.
    settled: i64,
    /// Marks above `settled`, oldest first; both fields ascending.
    pending: Vec<Mark>,
}

impl FeedHorizon {
    /// Take `mark` and the oldest xid running in the database, read after
    /// it (`xmin`; `xid_bound` when none runs); returns the horizon: every
    /// event at or below it is final, for any snapshot taken after `xmin`
    /// was read.
    pub fn observe(&self, mark: Mark, xmin: i64) -> i64 {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if mark.reserved > s.settled
            && s.pending
                .last()
                .is_none_or(|last| mark.reserved > last.reserved)
        {
            if s.pending.len() >= MAX_PENDING {
                s.pending.pop();
            }
            s.pending.push(mark);
        }
        // `xmin >= xid_bound`: no transaction older than the mark is
        // still running, whenever `xmin` was read relative to the mark
        // (none running is below xmin, and an xid below the bound was
        // assigned before the mark).
        if let Some(top) = s
            .pending
            .iter()
            .filter(|m| m.xid_bound <= xmin)
            .map(|m| m.reserved)
            .max()
        {
            s.settled = s.settled.max(top);
        }
        let settled = s.settled;
        s.pending.retain(|m| m.reserved > settled);
        settled
    }

    /// Claim the one pending wake-up; false if one is on its way.
    pub fn arm_recheck(&self) -> bool {
        !self.recheck.swap(true, Ordering::AcqRel)
    }

    /// The wake-up has been given: the next waiting mark may arm another.
    pub fn disarm_recheck(&self) {
        self.recheck.store(false, Ordering::Release);
    }

    /// Whether some mark waits for transactions to end (a reader should
    /// look again soon, not only when the next commit wakes it).
    pub fn waiting(&self) -> bool {
        !self
            .state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pending
            .is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mark(reserved: i64, xid_bound: i64) -> Mark {
        Mark {
            reserved,
            xid_bound,
        }
    }

    #[test]
    fn a_mark_settles_once_every_older_transaction_ended() {
        let h = FeedHorizon::default();
        // Nothing running: settled at once.
        assert_eq!(h.observe(mark(5, 100), 100), 5);
        assert!(!h.waiting());
        // Transaction 99 still runs (xmin 99 < bound 110): held back.
        assert_eq!(h.observe(mark(9, 110), 99), 5);
        assert!(h.waiting());
        // A newer mark waits for still more; the older one settles first.
        assert_eq!(h.observe(mark(12, 120), 110), 9);
        assert_eq!(h.observe(mark(12, 125), 130), 12);
        assert!(!h.waiting());
    }

    #[test]
    fn the_horizon_never_moves_down_and_ignores_stale_marks() {
        let h = FeedHorizon::default();
        assert_eq!(h.observe(mark(7, 50), 60), 7);
        // A mark taken before (a concurrent reader's): nothing new.
        assert_eq!(h.observe(mark(4, 40), 10), 7);
        assert!(!h.waiting());
        // Same reserved as the pending one: the earlier (lower bound) stays.
        assert_eq!(h.observe(mark(9, 70), 65), 7);
        assert_eq!(h.observe(mark(9, 90), 65), 7);
        assert_eq!(h.observe(mark(9, 95), 70), 9);
    }

    #[test]
    fn pending_marks_are_bounded() {
        let h = FeedHorizon::default();
        for i in 1..=1000 {
            assert_eq!(h.observe(mark(i, 10 + i), 10), 0);
        }
        assert!(h.state.lock().unwrap().pending.len() <= MAX_PENDING);
        // The oldest kept settles first; the newest kept settles all.
        assert_eq!(h.observe(mark(1000, 2000), 11), 1);
        assert_eq!(h.observe(mark(1000, 2000), 2000), 1000);
    }
}
