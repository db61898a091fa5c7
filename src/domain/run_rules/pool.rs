//! Pools (docs/api.md §3.3, §3.6): which agent a run goes to, why a run
//! that is not sent yet waits, and when it has waited too long.

use serde::{Deserialize, Serialize};

use crate::domain::time::Micros;
use crate::domain::workflow::RunStatus;

/// Why a run that is not sent yet waits (docs/api.md §3.6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum WaitingFor {
    /// Its task's `delaySeconds`.
    Delay,
    /// The backoff before a retry.
    Backoff,
    /// Tasks it depends on that have not completed.
    Dependencies,
    /// Every agent that may take it is busy (or not in a state to take a
    /// task); a free one is about to be sent it.
    AgentBusy,
    /// Every agent that may take it is stale.
    AgentStale,
    /// No registered agent matches the session's selector and the task's
    /// capability.
    NoMatchingAgent,
}

impl WaitingFor {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Delay => "delay",
            Self::Backoff => "backoff",
            Self::Dependencies => "dependencies",
            Self::AgentBusy => "agent_busy",
            Self::AgentStale => "agent_stale",
            Self::NoMatchingAgent => "no_matching_agent",
        }
    }
}

/// What [`waiting_for`] needs of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WaitView {
    /// Its status.
    pub status: RunStatus,
    /// Attempts so far.
    pub attempts: i64,
    /// Dependencies not completed yet.
    pub deps_left: i64,
    /// When it becomes due (queued).
    pub due_at: Micros,
}

/// The registered agents that may take a run: matching its session's
/// selector and its task's capability.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PoolSummary {
    /// How many.
    pub matching: i64,
    /// Of those, how many are not stale.
    pub fresh: i64,
}

/// Whether [`waiting_for`] needs the run's [`PoolSummary`]: only a run
/// that is due and free of dependencies waits for an agent.
pub fn waits_for_agent(run: &WaitView, now: Micros) -> bool {
    run.status == RunStatus::Queued && run.deps_left == 0 && run.due_at <= now
}

/// Why `run` is not sent yet at `now`, or `None` once it is sent (or
/// ended). `pool` matters only when [`waits_for_agent`].
pub fn waiting_for(run: &WaitView, pool: &PoolSummary, now: Micros) -> Option<WaitingFor> {
    if run.status != RunStatus::Queued {
        return None;
    }
    Some(if run.deps_left > 0 {
        WaitingFor::Dependencies
    } else if run.due_at > now {
        if run.attempts > 0 {
            WaitingFor::Backoff
        } else {
            WaitingFor::Delay
        }
    } else if pool.matching == 0 {
        WaitingFor::NoMatchingAgent
    } else if pool.fresh == 0 {
        WaitingFor::AgentStale
    } else {
        WaitingFor::AgentBusy
    })
}

/// A due run waiting for an agent longer than its queue timeout (`secs`)
/// fails its attempt, as SQL over a `task_runs` row, `now` a placeholder.
/// The timeout is at least a second: that bound lets the due-time index
/// skip every run not due a second ago.
pub fn queue_timeout_over_sql(now: &str) -> String {
    format!(
        "status = 'queued' AND deps_left = 0 AND due_at_us <= {now} - 1000000 \
         AND due_at_us + queue_timeout_secs * 1000000 <= {now}"
    )
}

/// Why an attempt that waited out its queue timeout failed.
pub fn queue_timeout_reason(secs: i64, waiting: Option<WaitingFor>) -> String {
    format!(
        "not started within {secs} s ({})",
        waiting.map_or("agent_busy", WaitingFor::as_str)
    )
}

/// Which of `candidates` (free agents that may take a run, in a stable
/// order) gets it, none of `taken` (agents given a run this round): the
/// first free one from a rotating start (`unit` in [0, 1), drawn by the
/// caller), so the free agents of a pool share the work.
pub fn pick_agent(candidates: &[String], taken: &[String], unit: f64) -> Option<usize> {
    let n = candidates.len();
    if n == 0 {
        return None;
    }
    let start = ((unit.clamp(0.0, 1.0) * n as f64) as usize).min(n - 1);
    (0..n)
        .map(|k| (start + k) % n)
        .find(|&i| !taken.contains(&candidates[i]))
}

/// An agent `a` may take a run `r` of session `s` (SQL over rows of those
/// aliases): it is in the session's selector (its agent ids, when it names
/// any, and its capability) and has the run's capability, when it names
/// one.
pub fn pool_match_sql(s: &str, r: &str, a: &str) -> String {
    format!(
        "({s}.pool_agents = 0 OR EXISTS (SELECT 1 FROM session_agents sa \
           WHERE sa.session_id = {s}.session_id AND sa.agent_id = {a}.agent_id)) \
         AND ({s}.pool_capability IS NULL OR EXISTS (SELECT 1 FROM agent_capabilities sc \
           WHERE sc.agent_id = {a}.agent_id AND sc.capability = {s}.pool_capability)) \
         AND ({r}.capability IS NULL OR EXISTS (SELECT 1 FROM agent_capabilities rc \
           WHERE rc.agent_id = {a}.agent_id AND rc.capability = {r}.capability))"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn why_a_run_waits() {
        let now = 100;
        let q = |attempts, deps_left, due_at| WaitView {
            status: RunStatus::Queued,
            attempts,
            deps_left,
            due_at,
        };
        let pool = |matching, fresh| PoolSummary { matching, fresh };
        use WaitingFor::*;
        for (run, p, want) in [
            (q(0, 2, 0), pool(0, 0), Some(Dependencies)),
            (q(0, 1, 500), pool(3, 3), Some(Dependencies)),
            (q(0, 0, 500), pool(3, 3), Some(Delay)),
            (q(1, 0, 500), pool(3, 3), Some(Backoff)),
            (q(0, 0, 100), pool(0, 0), Some(NoMatchingAgent)),
            (q(0, 0, 50), pool(2, 0), Some(AgentStale)),
            (q(2, 0, 50), pool(2, 1), Some(AgentBusy)),
        ] {
            assert_eq!(waiting_for(&run, &p, now), want, "{run:?} {p:?}");
            assert_eq!(
                waits_for_agent(&run, now),
                run.deps_left == 0 && run.due_at <= now
            );
        }
        for status in RunStatus::ALL
            .into_iter()
            .filter(|s| *s != RunStatus::Queued)
        {
            let run = WaitView {
                status,
                ..q(0, 0, 0)
            };
            assert_eq!(waiting_for(&run, &pool(0, 0), now), None, "{status:?}");
            assert!(!waits_for_agent(&run, now));
        }
    }

    #[test]
    fn queue_timeout_names_the_wait() {
        assert_eq!(
            queue_timeout_reason(5, Some(WaitingFor::NoMatchingAgent)),
            "not started within 5 s (no_matching_agent)"
        );
        assert!(queue_timeout_over_sql("$1").contains("deps_left = 0"));
    }

    #[test]
    fn free_agents_share_the_work() {
        let c: Vec<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
        assert_eq!(pick_agent(&c, &[], 0.0), Some(0));
        assert_eq!(pick_agent(&c, &[], 0.5), Some(1));
        assert_eq!(pick_agent(&c, &[], 0.99), Some(2));
        assert_eq!(pick_agent(&c, &[], 1.0), Some(2));
        assert_eq!(pick_agent(&c, &["c".into()], 0.99), Some(0));
        assert_eq!(
            pick_agent(&c, &["a".into(), "b".into(), "c".into()], 0.3),
            None
        );
        assert_eq!(pick_agent(&[], &[], 0.3), None);
        let sql = pool_match_sql("s", "r", "a");
        for piece in ["s.pool_agents = 0", "s.pool_capability", "r.capability"] {
            assert!(sql.contains(piece), "{sql}");
        }
    }
}
