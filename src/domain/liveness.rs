//! Agent leases: when an agent counts as stale. The SQL rendering of the
//! same rule is in `store::sql` (`Liveness::expired_sql`), tested there
//! against [`Liveness::is_stale`].

use super::time::Micros;

/// Agent leases, which are opt-in: an agent that holds a lease (its own
/// TTL, or the server-wide one) and is not heard from (by the server's
/// clock) for that TTL plus the grace margin is stale, and is sent no task.
/// An agent with no lease is never stale, however long it is silent: agents
/// that report only when their state changes (as AgentKit's do) keep their
/// tasks coming (docs/agents.md).
/// Its `Default` is that of the settings (`OPSCORE_*`), written in `config`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Liveness {
    /// TTL of agents that set none of their own, in seconds; `None` (the
    /// default): such agents hold no lease.
    pub ttl_secs: Option<i64>,
    /// Extra margin before an agent counts as stale, in seconds.
    pub grace_secs: i64,
}

impl Liveness {
    /// The lease an agent with its own TTL `ttl_secs` (if any) holds: its
    /// own, else the server-wide one, else none.
    pub fn lease_secs(&self, ttl_secs: Option<i64>) -> Option<i64> {
        ttl_secs.or(self.ttl_secs)
    }

    /// Whether an agent last seen at `last_seen` with its own TTL
    /// `ttl_secs` (if any) is stale at `now`: it holds a lease, and that
    /// lease plus the grace has run out.
    pub fn is_stale(&self, last_seen: Micros, ttl_secs: Option<i64>, now: Micros) -> bool {
        let Some(ttl) = self.lease_secs(ttl_secs) else {
            return false;
        };
        let limit = ttl
            .saturating_add(self.grace_secs)
            .saturating_mul(1_000_000);
        now.saturating_sub(last_seen) > limit
    }

    /// Whether an agent holds a lease that has run out at `now`: registered
    /// (a deregistered agent holds no lease, so it is never stale) and
    /// [`is_stale`](Self::is_stale).
    pub fn holds_stale(
        &self,
        deregistered_at: Option<Micros>,
        last_seen: Micros,
        ttl_secs: Option<i64>,
        now: Micros,
    ) -> bool {
        deregistered_at.is_none() && self.is_stale(last_seen, ttl_secs, now)
    }
}
