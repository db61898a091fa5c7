//! A key's rate limit as one token bucket shared by every replica: the
//! bucket is stored in the database and each replica takes a few tokens at
//! a time from it (a lease), under the bucket row's lock. This module is the
//! rule, with no I/O: how a stored bucket refills and what a take grants.
//!
//! A key limited to `r` requests a second holds at most `r` tokens (one
//! second's worth, a burst after a quiet spell) and gains `r` a second,
//! exactly as one process's in-memory bucket does. Tokens are counted in
//! millionths, so that refill is integer arithmetic on microseconds: `r`
//! tokens a second is `r` micro-tokens a microsecond.
//!
//! Why the limit holds across replicas: every token a replica hands out was
//! taken from the one stored bucket, under its row lock, so all replicas
//! together admit at most what the bucket gives: its burst plus `r` a
//! second. The only slack is the unused rest of each replica's last lease,
//! at most [`lease_size`]` - 1` tokens a replica, which is admitted later
//! than it was taken (never more in total).

use super::time::Micros;

/// Micro-tokens in one token.
pub const MICRO: i64 = 1_000_000;

/// A bucket as stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenBucket {
    /// Tokens left, in millionths.
    pub micro_tokens: i64,
    /// When it was last refilled (microseconds since the epoch).
    pub at: Micros,
}

/// What one take gave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grant {
    /// Whole tokens handed out (0: none left).
    pub granted: u32,
    /// When none were: microseconds until one is back.
    pub wait_micros: i64,
}

/// Tokens a replica takes at once for a key limited to `rate` a second: a
/// tenth of a second's worth, at least one. The bucket row is then touched
/// at most about ten times a second per replica and key, whatever the
/// rate, and a replica holds back at most a tenth of the burst.
pub fn lease_size(rate: u32) -> u32 {
    (rate / 10).max(1)
}

impl TokenBucket {
    /// A new bucket of a key limited to `rate`: full.
    pub fn full(rate: u32, now: Micros) -> Self {
        Self {
            micro_tokens: i64::from(rate) * MICRO,
            at: now,
        }
    }

    /// Refill for the time since the last take (a clock that went back,
    /// here or on another replica, refills nothing: `at` never moves
    /// back), then take up to `want` whole tokens.
    pub fn take(self, rate: u32, want: u32, now: Micros) -> (Self, Grant) {
        let cap = i64::from(rate) * MICRO;
        let elapsed = now.saturating_sub(self.at).max(0);
        let tokens = self
            .micro_tokens
            .saturating_add(elapsed.saturating_mul(i64::from(rate)))
            .min(cap);
        let at = self.at.max(now);
        let granted = (tokens / MICRO).clamp(0, i64::from(want));
        let left = tokens - granted * MICRO;
        let wait_micros = if granted > 0 || rate == 0 {
            0
        } else {
            // Ceiling division: the first microsecond at which a whole
            // token is back.
            (MICRO - left + i64::from(rate) - 1) / i64::from(rate)
        };
        (
            Self {
                micro_tokens: left,
                at,
            },
            Grant {
                granted: u32::try_from(granted).unwrap_or(0),
                wait_micros,
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: Micros = 1_700_000_000_000_000;

    #[test]
    fn takes_refill_and_cap_as_one_bucket() {
        // (tokens before, its time, rate, want, now) -> (granted, tokens after, wait)
        type Case = (i64, Micros, u32, u32, Micros, u32, i64, i64);
        let cases: [Case; 9] = [
            // A full bucket of 20 gives a lease of 2.
            (20 * MICRO, T0, 20, 2, T0, 2, 18 * MICRO, 0),
            // Never more than it holds...
            (MICRO, T0, 20, 2, T0, 1, 0, 0),
            // ...and none when empty: a token is back in 1/20 s.
            (0, T0, 20, 2, T0, 0, 0, 50_000),
            // Half a token: back in the other half's time.
            (MICRO / 2, T0, 20, 2, T0, 0, MICRO / 2, 25_000),
            // 50 ms at 20/s refill exactly one token.
            (0, T0, 20, 2, T0 + 50_000, 1, 0, 0),
            // A long quiet spell refills to the burst, no further.
            (0, T0, 20, 100, T0 + 3_600_000_000, 20, 0, 0),
            // A clock behind the stored time refills nothing.
            (0, T0, 20, 2, T0 - 1_000_000, 0, 0, 50_000),
            // One a second: the wait is a whole second.
            (0, T0, 1, 1, T0, 0, 0, MICRO),
            // Decades of silence at the highest rate do not overflow.
            (0, 0, 1_000_000, 5, T0, 5, (1_000_000 - 5) * MICRO, 0),
        ];
        for (tokens, at, rate, want, now, granted, after, wait) in cases {
            let b = TokenBucket {
                micro_tokens: tokens,
                at,
            };
            let (b2, g) = b.take(rate, want, now);
            assert_eq!(
                (g.granted, b2.micro_tokens, g.wait_micros),
                (granted, after, wait),
                "{tokens} at {at}, rate {rate}, want {want}, now {now}"
            );
            assert_eq!(b2.at, at.max(now));
        }
    }

    #[test]
    fn many_takers_never_get_more_than_burst_plus_rate() {
        // Three replicas taking leases in turn for 3 s from one bucket of
        // 20/s: together at most 20 + 3 * 20 tokens.
        let rate = 20;
        let mut b = TokenBucket::full(rate, T0);
        let mut total = 0;
        for step in 0..=3000 {
            let now = T0 + step * 1000;
            for _ in 0..3 {
                let (next, g) = b.take(rate, lease_size(rate), now);
                b = next;
                total += g.granted;
            }
        }
        assert_eq!(total, 20 + 3 * 20);
    }

    #[test]
    fn leases_are_a_tenth_of_a_second() {
        assert_eq!([1, 9, 10, 20, 1000].map(lease_size), [1, 1, 1, 2, 100]);
    }
}
