//! Per-key rate limits: one token bucket per key.
//!
//! A key limited to `r` requests a second holds at most `r` tokens (one
//! second's worth, so a short burst after a quiet spell is allowed) and
//! gains `r` a second. A request takes one token; with none left it is
//! refused with 429 and `Retry-After` (whole seconds until a token is back).
//!
//! Where one process owns the database (SQLite) the buckets are in memory
//! ([`RateLimiter`]). Where replicas share it (PostgreSQL) each key has one
//! bucket in the database, and each replica takes a lease of a few tokens
//! at a time from it ([`SharedLimiter`], the rule in
//! `domain::ratelimit`): together the replicas admit what one process
//! would, and a query is made at most once per lease, or once per token
//! refill while the key is refused.
//!
//! The same buckets count failed authentications per client address
//! ([`FailureThrottle`]).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::domain::ratelimit::lease_size;
use crate::domain::time::now_micros;
use crate::store::Store;

/// Past this many buckets, idle ones are dropped. A bucket idle for a
/// second is full again, exactly like a new one, so dropping it changes
/// nothing.
const PRUNE_ABOVE: usize = 10_000;

/// The buckets of every key seen, and the default limit of keys without
/// their own.
#[derive(Debug, Default)]
pub struct RateLimiter {
    default: Option<u32>,
    buckets: Mutex<HashMap<String, Bucket>>,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

impl RateLimiter {
    /// A limiter applying `default` (requests per second) to keys that set
    /// no limit of their own; `None` leaves them unlimited.
    pub fn new(default: Option<u32>) -> Self {
        Self {
            default,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// The limit of a key whose own is `own`: its own, else the default;
    /// `None` for unlimited.
    pub fn rate(&self, own: Option<u32>) -> Option<u32> {
        own.or(self.default).filter(|r| *r > 0)
    }

    /// Take a token for the key `id` whose own limit is `own`. `Err` holds
    /// the seconds to wait (at least 1).
    pub fn check(&self, id: &str, own: Option<u32>, now: Instant) -> Result<(), u64> {
        let Some(rate) = self.rate(own) else {
            return Ok(());
        };
        let rate = f64::from(rate);
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if buckets.len() > PRUNE_ABOVE {
            buckets.retain(|_, b| now.saturating_duration_since(b.last).as_secs_f64() < 1.0);
        }
        let bucket = match buckets.get_mut(id) {
            Some(b) => b,
            None => buckets.entry(id.to_owned()).or_insert(Bucket {
                tokens: rate,
                last: now,
            }),
        };
        bucket.refill(rate, rate, now);
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(bucket.wait(rate))
        }
    }
}

impl Bucket {
    /// Add what `rate` tokens a second gave since the last use, up to `cap`.
    fn refill(&mut self, rate: f64, cap: f64, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate).min(cap);
        self.last = now;
    }

    /// Whole seconds (at least 1) until a token is back.
    fn wait(&self, rate: f64) -> u64 {
        (((1.0 - self.tokens) / rate).ceil() as u64).max(1)
    }
}

/// Rate limits shared by the replicas of one database: each key's tokens
/// are leased from its bucket in the store (see the module notes).
pub struct SharedLimiter {
    store: Arc<dyn Store>,
    /// This process's lease per key. The async lock makes one request per
    /// key and process ask the store at a time; the others wait for its
    /// answer and use it.
    leases: Mutex<HashMap<String, Arc<tokio::sync::Mutex<Lease>>>>,
    /// When the store last failed to answer and this was logged.
    failing: Mutex<Option<Instant>>,
}

#[derive(Debug, Default)]
struct Lease {
    /// Tokens taken from the store and not used yet.
    tokens: u32,
    /// The store had none: refuse without asking until then.
    empty_until: Option<Instant>,
}

impl SharedLimiter {
    /// Limits kept in `store`'s buckets.
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self {
            store,
            leases: Mutex::new(HashMap::new()),
            failing: Mutex::new(None),
        }
    }

    /// As [`RateLimiter::check`], with `local` saying each key's limit.
    /// While the store cannot answer, `local` enforces the limit in this
    /// process alone (a database outage must not refuse every request).
    pub async fn check(
        &self,
        local: &RateLimiter,
        id: &str,
        own: Option<u32>,
        now: Instant,
    ) -> Result<(), u64> {
        let Some(rate) = local.rate(own) else {
            return Ok(());
        };
        let lease = {
            let mut leases = self.leases.lock().unwrap_or_else(|e| e.into_inner());
            if leases.len() > PRUNE_ABOVE {
                // A dropped lease loses at most its unused tokens: fewer
                // requests admitted, never more.
                leases.retain(|_, l| Arc::strong_count(l) > 1);
            }
            leases.entry(id.to_owned()).or_default().clone()
        };
        let mut lease = lease.lock().await;
        if lease.tokens > 0 {
            lease.tokens -= 1;
            return Ok(());
        }
        if let Some(until) = lease.empty_until.filter(|u| *u > now) {
            return Err(whole_seconds(until - now));
        }
        match self
            .store
            .take_rate_tokens(id, rate, lease_size(rate), now_micros())
            .await
        {
            Ok(grant) if grant.granted > 0 => {
                lease.tokens = grant.granted - 1;
                lease.empty_until = None;
                Ok(())
            }
            Ok(grant) => {
                let wait = Duration::from_micros(u64::try_from(grant.wait_micros).unwrap_or(0));
                lease.empty_until = Some(now + wait);
                Err(whole_seconds(wait))
            }
            Err(e) => {
                let mut failing = self.failing.lock().unwrap_or_else(|e| e.into_inner());
                if failing.is_none_or(|at| at.elapsed() >= Duration::from_secs(10)) {
                    *failing = Some(Instant::now());
                    tracing::warn!(error = %e, "cannot reach the shared rate-limit buckets; \
                        limiting each key in this process alone meanwhile");
                }
                drop(failing);
                local.check(id, own, now)
            }
        }
    }
}

/// Whole seconds (at least 1) of `wait`, rounded up: a `Retry-After`.
fn whole_seconds(wait: Duration) -> u64 {
    wait.as_secs()
        .saturating_add(u64::from(wait.subsec_nanos() > 0))
        .max(1)
}

/// Failed authentications per client address: a bucket of `burst`
/// failures per address that refills at [`FAILURE_REFILL_PER_SEC`]. While
/// an address's bucket is empty it is throttled.
#[derive(Debug)]
pub struct FailureThrottle {
    burst: f64,
    buckets: Mutex<HashMap<IpAddr, Bucket>>,
}

/// Failures an address earns back per second.
pub const FAILURE_REFILL_PER_SEC: f64 = 1.0;

impl FailureThrottle {
    /// A throttle allowing `burst` failures in a row per address.
    pub fn new(burst: u32) -> Self {
        Self {
            burst: f64::from(burst.max(1)),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// `Some(seconds to wait)` while `addr` is throttled.
    pub fn throttled(&self, addr: IpAddr, now: Instant) -> Option<u64> {
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        let b = buckets.get_mut(&addr)?;
        b.refill(FAILURE_REFILL_PER_SEC, self.burst, now);
        (b.tokens < 1.0).then(|| b.wait(FAILURE_REFILL_PER_SEC))
    }

    /// Count a failure from `addr`; `Some(seconds to wait)` when the
    /// address was already throttled before it.
    pub fn fail(&self, addr: IpAddr, now: Instant) -> Option<u64> {
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if buckets.len() > PRUNE_ABOVE {
            // A bucket that has refilled is exactly like a new one.
            let full = self.burst / FAILURE_REFILL_PER_SEC;
            buckets.retain(|_, b| now.saturating_duration_since(b.last).as_secs_f64() < full);
        }
        let b = buckets.entry(addr).or_insert(Bucket {
            tokens: self.burst,
            last: now,
        });
        b.refill(FAILURE_REFILL_PER_SEC, self.burst, now);
        if b.tokens < 1.0 {
            return Some(b.wait(FAILURE_REFILL_PER_SEC));
        }
        b.tokens -= 1.0;
        None
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn bucket_allows_a_burst_then_refills() {
        let l = RateLimiter::new(None);
        let t0 = Instant::now();
        assert!(l.check("k", Some(3), t0).is_ok());
        assert!(l.check("k", Some(3), t0).is_ok());
        assert!(l.check("k", Some(3), t0).is_ok());
        assert_eq!(l.check("k", Some(3), t0), Err(1));
        // Another key has its own bucket; an unlimited key is never refused.
        assert!(l.check("other", Some(3), t0).is_ok());
        for _ in 0..100 {
            assert!(l.check("free", None, t0).is_ok());
        }
        // A third of a second later one token is back.
        let t1 = t0 + Duration::from_millis(340);
        assert!(l.check("k", Some(3), t1).is_ok());
        assert!(l.check("k", Some(3), t1).is_err());
        // Slow limits ask for a longer wait.
        assert!(l.check("slow", Some(1), t0).is_ok());
        assert_eq!(l.check("slow", Some(1), t0), Err(1));
    }

    #[test]
    fn default_applies_to_keys_without_their_own() {
        let l = RateLimiter::new(Some(1));
        let t0 = Instant::now();
        assert!(l.check("k", None, t0).is_ok());
        assert!(l.check("k", None, t0).is_err());
        // A key's own limit wins over the default.
        assert!(l.check("big", Some(5), t0).is_ok());
        assert!(l.check("big", Some(5), t0).is_ok());
    }

    #[test]
    fn failures_are_throttled_after_the_burst_and_refill() {
        let t = FailureThrottle::new(3);
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let t0 = Instant::now();
        assert_eq!(t.throttled(a, t0), None);
        for _ in 0..3 {
            assert_eq!(t.fail(a, t0), None);
        }
        assert_eq!(t.throttled(a, t0), Some(1));
        assert_eq!(t.fail(a, t0), Some(1));
        // Another address is not affected.
        assert_eq!(t.throttled(b, t0), None);
        // A second later one failure is allowed again.
        let t1 = t0 + Duration::from_millis(1001);
        assert_eq!(t.throttled(a, t1), None);
        assert_eq!(t.fail(a, t1), None);
        assert_eq!(t.throttled(a, t1), Some(1));
    }
}
