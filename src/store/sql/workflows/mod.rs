//! Workflow storage: the SQL and the types its parts share. `sessions.rs`
//! holds definitions, sessions and the [`WorkflowStore`] impl;
//! `dispatch.rs` the queue (claim, record, expire); `runs.rs` how a run
//! moves on inside the transaction of a report, a delivery or a deadline.
//!
//! [`WorkflowStore`]: crate::store::WorkflowStore

mod dispatch;
mod fleet;
mod revisions;
mod runs;
mod sessions;

use std::sync::LazyLock;

use crate::domain::state::StateReport;
use crate::domain::workflow::{RunStatus, SessionStatus};

pub(in crate::store) const SESSION_COLUMNS: &str =
    "session_id, workflow_id, agent_id, status, result, error, created_at_us, updated_at_us, finished_at_us, \
     selector, revision";

pub(in crate::store) const RUN_COLUMNS: &str =
    "run_id, task_id, task_name, status, attempts, max_retries, payload, due_at_us, \
     dispatched_at_us, started_at_us, finished_at_us, last_error, result, agent_id, output, deps_left";

pub(in crate::store) const COUNT_SESSIONS_BY_STATUS: &str =
    "SELECT status, COUNT(*) FROM sessions GROUP BY status";

/// The assignment that frees a run being queued again for any agent of
/// its pool (docs/api.md §3.3); a per-agent session's run keeps its agent.
/// Pool sessions store `''` as their agent.
pub(in crate::store) const RELEASE_POOL_AGENT: &str = "agent_id = CASE WHEN (SELECT s.agent_id \
     FROM sessions s WHERE s.session_id = task_runs.session_id) = '' THEN NULL ELSE agent_id END";

/// Queued runs free of dependencies: the runs of tasks that wait for
/// others are not in the queue yet.
pub(in crate::store) const COUNT_QUEUED_RUNS: &str =
    "SELECT COUNT(*) FROM task_runs WHERE status = 'queued' AND deps_left = 0";

/// The due time of the queued run due longest as of `$1`, over the
/// `task_runs_due (status, due_at_us)` index on both backends. Runs still
/// waiting for their dependencies (docs/api.md §3.5) are not due work yet.
pub(in crate::store) const OLDEST_DUE_RUN: &str =
    "SELECT MIN(due_at_us) FROM task_runs WHERE status = 'queued' AND deps_left = 0 AND due_at_us <= $1";

/// Columns of a run that is being moved along, in `InFlight` order.
pub(in crate::store) const IN_FLIGHT_COLUMNS: &str =
    "run_id, session_id, COALESCE(agent_id, ''), task_id, status, attempts, max_retries, timeout_secs, dispatched_at_us, \
     last_report_ts_us";

pub(in crate::store) const INSERT_RUN: &str = "INSERT INTO task_runs (run_id, session_id, position, task_id, task_name, agent_id, status, payload, \
     attempts, max_retries, timeout_secs, due_at_us, created_at_us, deps_left, capability, inputs_from, \
     queue_timeout_secs) \
     VALUES ($1, $2, $3, $4, $5, $6, 'queued', $7, 0, $8, $9, $10, $11, $12, $13, $14, $15)";

/// Agent `a` is free to be sent run `r` (`$1` now, `$2` whether UNKNOWN
/// agents may be sent tasks, `$4` the default TTL and `$5` the grace, in
/// seconds): registered, in a state to take it, not stale (whether or not
/// the sweep has announced it yet), nothing in flight.
pub(in crate::store) static AGENT_FREE: LazyLock<String> = LazyLock::new(|| {
    format!(
        "a.deregistered_at_us IS NULL AND {} AND NOT ({}) \
         AND NOT EXISTS (SELECT 1 FROM task_runs f WHERE f.agent_id = a.agent_id AND f.status IN {})",
        crate::domain::run_rules::may_send_sql("a.state", "r.attempts", "$2"),
        crate::store::Liveness::expired_sql("a.", "$4", "$5", "$1"),
        IN_FLIGHT.as_str()
    )
});

/// Agent `a` may take run `r` of session `s`: the run's agent when it is
/// pinned to one (a per-agent session), else an agent its pool matches
/// ([`pool_match_sql`](crate::domain::run_rules::pool_match_sql)).
pub(in crate::store) static AGENT_MATCHES: LazyLock<String> = LazyLock::new(|| {
    format!(
        "((r.agent_id IS NOT NULL AND a.agent_id = r.agent_id) \
          OR (r.agent_id IS NULL AND {}))",
        crate::domain::run_rules::pool_match_sql("s", "r", "a")
    )
});

/// The agents free to take some run, `(agent_id, state)` (`$1` now, `$2`
/// whether UNKNOWN agents may be sent tasks, `ttl` and `grace` the
/// placeholders of the default TTL and the grace, in seconds): as
/// [`AGENT_FREE`] says, in a state to take a first attempt or a retry;
/// whether one may take a given run is `may_send_sql` of its attempts.
fn free_agents_sql(ttl: &str, grace: &str) -> String {
    format!(
        "SELECT a.agent_id, a.state FROM agents a WHERE a.deregistered_at_us IS NULL \
         AND {} AND NOT ({}) \
         AND NOT EXISTS (SELECT 1 FROM task_runs f WHERE f.agent_id = a.agent_id AND f.status IN {})",
        crate::domain::run_rules::may_send_sql("a.state", "1", "$2"),
        crate::store::Liveness::expired_sql("a.", ttl, grace, "$1"),
        IN_FLIGHT.as_str()
    )
}

/// How many agents (at most `$5`) are free to take some run (`$1` now,
/// `$2` whether UNKNOWN agents may be sent tasks, `$3` the default TTL,
/// `$4` the grace): a claim takes no more runs than that, and none when
/// no agent is free, before it looks at the due runs.
pub(in crate::store) static FREE_AGENTS: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT COUNT(*) FROM ({} LIMIT $5) free",
        free_agents_sql("$3", "$4")
    )
});

/// Due runs free of dependencies that some free agent may take. A run
/// pinned to its agent looks that one agent up by its key: the pool test
/// is only for runs that hold none (an `OR` of both would make every due
/// run scan every agent). The pool test reads the free agents found once
/// for the whole query (`fa`), not the agents table again for each due
/// run: on PostgreSQL that was a scan of the state index and its heap per
/// run, and it made a claim round cost in proportion to the queue.
pub(in crate::store) static CLAIM_CANDIDATES: LazyLock<String> = LazyLock::new(|| {
    format!(
        "WITH fa AS MATERIALIZED ({free_agents}) \
         SELECT r.run_id, r.session_id, r.task_name, r.payload, r.attempts, r.task_id, \
                s.traceparent, s.tracestate, r.inputs_from \
         FROM task_runs r JOIN sessions s ON s.session_id = r.session_id \
         WHERE r.status = 'queued' AND r.due_at_us <= $1 AND r.deps_left = 0 \
           AND ((r.agent_id IS NOT NULL \
                 AND EXISTS (SELECT 1 FROM agents a WHERE a.agent_id = r.agent_id AND {free})) \
             OR (r.agent_id IS NULL \
                 AND EXISTS (SELECT 1 FROM fa a WHERE {may_send} AND {pool}))) \
         ORDER BY r.due_at_us LIMIT $3",
        free_agents = free_agents_sql("$4", "$5"),
        free = AGENT_FREE.as_str(),
        may_send = crate::domain::run_rules::may_send_sql("a.state", "r.attempts", "$2"),
        pool = crate::domain::run_rules::pool_match_sql("s", "r", "a"),
    )
});

/// The free agents that may take run `$3` (placeholders as in
/// [`AGENT_FREE`]), in id order, at most 64: its own agent when it is
/// pinned to one (looked up by key), else those of its pool.
pub(in crate::store) static CLAIM_AGENTS: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT a.agent_id, a.contact_endpoint \
         FROM task_runs r JOIN agents a ON a.agent_id = r.agent_id \
         WHERE r.run_id = $3 AND {free} \
         UNION ALL \
         SELECT * FROM (SELECT a.agent_id, a.contact_endpoint \
         FROM task_runs r JOIN sessions s ON s.session_id = r.session_id, agents a \
         WHERE r.run_id = $3 AND r.agent_id IS NULL AND {free} AND {pool} \
         ORDER BY a.agent_id LIMIT 64) pooled",
        free = AGENT_FREE.as_str(),
        pool = crate::domain::run_rules::pool_match_sql("s", "r", "a"),
    )
});

/// How many registered agents may take run `$2`, and how many of them are
/// not stale (`$1` now, `$3` default TTL, `$4` grace).
pub(in crate::store) static POOL_SUMMARY: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT COUNT(*), COALESCE(SUM(CASE WHEN {} THEN 0 ELSE 1 END), 0) \
         FROM task_runs r JOIN sessions s ON s.session_id = r.session_id, agents a \
         WHERE r.run_id = $2 AND a.deregistered_at_us IS NULL AND {}",
        crate::store::Liveness::expired_sql("a.", "$3", "$4", "$1"),
        AGENT_MATCHES.as_str(),
    )
});

/// The current states in which `CLAIM_CANDIDATES` sends an agent a new task
/// (`UNKNOWN` only when sending to agents never heard from is allowed); see
/// [`may_send`](crate::domain::run_rules::may_send).
pub(in crate::store) const CLAIMABLE_STATES: [&str; 2] = [
    crate::domain::run_rules::FREE_STATE,
    crate::domain::state::UNKNOWN,
];

/// Claims one run. The attempt counts as sent from now (`$4`): reports
/// stamped before it are not about it; whether the agent started it is
/// known only from reports after it.
pub(in crate::store) const CLAIM_ONE: &str =
    "UPDATE task_runs SET status = 'dispatching', lease_owner = $2, due_at_us = $3, \
     attempts = attempts + 1, dispatched_at_us = $4, started_at_us = NULL, agent_id = $5 \
     WHERE run_id = $1 AND status = 'queued'";

/// A dispatcher that stopped before confirming delivery gives its claim
/// back. The attempt number goes back too, so the resend carries the same
/// Idempotency-Key and the framework can drop a duplicate. A sweep waits
/// for no row (see [`SqlStore::lock_session`]): `claim_lock` skips runs
/// another transaction holds.
pub(in crate::store) fn recover_leases_sql(claim_lock: &str) -> String {
    format!(
        "UPDATE task_runs SET status = 'queued', attempts = attempts - 1, lease_owner = NULL, \
         last_error = 'dispatcher stopped before confirming delivery; resending' \
         WHERE run_id IN (SELECT run_id FROM task_runs r \
           WHERE status = 'dispatching' AND due_at_us <= $1{claim_lock}) \
         RETURNING run_id, task_id, session_id, agent_id, attempts, last_error"
    )
}

/// Statuses of a run the agent may be working on
/// ([`RunStatus::in_flight`]), as an SQL list. Guards on updates name the
/// whole set, not the status last read: on PostgreSQL another transaction
/// (the dispatcher recording its answer) may move the run from one to
/// another in between, and the update must still apply.
pub(in crate::store) static IN_FLIGHT: LazyLock<String> =
    LazyLock::new(|| sql_list(RunStatus::ALL, RunStatus::in_flight, RunStatus::as_str));

/// Statuses of a run a report may move on, as an SQL list: in flight, or
/// queued (a report naming it may show the agent has it after all).
pub(in crate::store) static MOVABLE_BY_REPORT: LazyLock<String> = LazyLock::new(|| {
    sql_list(
        RunStatus::ALL,
        |s| s.in_flight() || s == RunStatus::Queued,
        RunStatus::as_str,
    )
});

/// The states in which a report may move a task on
/// ([`MEANINGFUL_STATES`](crate::domain::workflow::MEANINGFUL_STATES)) or
/// let a queued one go out ([`CLAIMABLE_STATES`]), as an SQL list.
pub(in crate::store) static STATES_FOR_RUNS: LazyLock<String> = LazyLock::new(|| {
    let mut states = crate::domain::workflow::MEANINGFUL_STATES.to_vec();
    states.extend(
        CLAIMABLE_STATES
            .iter()
            .filter(|s| !states.contains(s))
            .copied()
            .collect::<Vec<_>>(),
    );
    sql_list(states, |_| true, |s| s)
});

/// Statuses of an unfinished run (not [`RunStatus::is_final`]), as an SQL
/// list.
pub(in crate::store) static UNFINISHED_RUNS: LazyLock<String> =
    LazyLock::new(|| sql_list(RunStatus::ALL, |s| !s.is_final(), RunStatus::as_str));

/// Statuses of an unfinished session (not [`SessionStatus::is_final`]), as
/// an SQL list.
pub(in crate::store) static UNFINISHED_SESSIONS: LazyLock<String> =
    LazyLock::new(|| sql_list(SessionStatus::ALL, |s| !s.is_final(), SessionStatus::as_str));

/// `('a', 'b', …)`: the stored names of the statuses of `all` for which
/// `keep` holds, as an SQL list, so that each rule about statuses is
/// written once, in Rust.
fn sql_list<S: Copy>(
    all: impl IntoIterator<Item = S>,
    keep: impl Fn(S) -> bool,
    name: impl Fn(S) -> &'static str,
) -> String {
    let names: Vec<String> = all
        .into_iter()
        .filter(|&s| keep(s))
        .map(|s| format!("'{}'", name(s)))
        .collect();
    format!("({})", names.join(", "))
}
/// Most agent ids bound in one [`agent_runs_sql`] or
/// [`lock_agents_sql`](super::agents::lock_agents_sql).
pub(in crate::store) const AGENT_CHUNK: usize = 500;

/// Which of the agents `agents` (an SQL list or subquery of ids) have a
/// task in flight and which have one queued, each with the session of the
/// run a report may move on ([`AgentRuns::note`]): a row `(in_flight,
/// agent_id, {filler}session_id)` per run in flight and `(queued, agent_id,
/// {filler}session_id)` per agent with runs queued, the session that of
/// one waiting for a retry. `filler` puts columns of the caller's before
/// the session. Each half uses its own partial index.
pub(in crate::store) fn agent_runs_sql(
    agents: &str,
    (in_flight, queued): (&str, &str),
    filler: &str,
) -> String {
    format!(
        "SELECT {in_flight}, agent_id, {filler}session_id FROM task_runs \
         WHERE status IN {in_flight_list} AND agent_id IN ({agents}) \
         UNION ALL \
         SELECT {queued}, agent_id, {filler}MIN(CASE WHEN attempts > 0 THEN session_id END) \
         FROM task_runs WHERE status = 'queued' AND agent_id IN ({agents}) GROUP BY agent_id",
        in_flight_list = IN_FLIGHT.as_str()
    )
}

/// Agents of a report batch by the task runs they have.
#[derive(Debug, Default)]
pub(in crate::store) struct AgentRuns {
    /// With a task in flight: a report may move it on.
    pub in_flight: std::collections::HashSet<String>,
    /// With a task queued: becoming idle or fresh may let it go out.
    pub queued: std::collections::HashSet<String>,
    /// Some queued run of a pool holds no agent yet: any agent becoming
    /// idle or fresh may let it go out.
    pub unassigned: bool,
    /// The session of the run a report from each agent may move on.
    pub session_of: std::collections::HashMap<String, String>,
}

impl AgentRuns {
    /// Note a row of [`agent_runs_sql`]: `agent` has a run in
    /// flight (else queued ones), and `session` is that of the run in
    /// flight or of a queued one waiting for a retry.
    pub fn note(&mut self, agent: String, in_flight: bool, session: Option<String>) {
        if let Some(s) = session {
            self.session_of.insert(agent.clone(), s);
        }
        if in_flight {
            self.in_flight.insert(agent);
        } else {
            self.queued.insert(agent);
        }
    }

    /// Whether `r` may move on a run of its agent: one in flight, or one
    /// waiting for a retry (a report naming it may show the agent has it
    /// after all), and a state the engine reads.
    pub fn may_move(&self, r: &StateReport) -> bool {
        let agent = r.agent_id.as_str();
        (self.in_flight.contains(agent) || self.queued.contains(agent))
            && crate::domain::workflow::MEANINGFUL_STATES.contains(&r.state.as_str())
    }

    /// Whether `r`, applied (`fresh`: it ended the agent's staleness;
    /// `current`: it became the agent's state), may have made a queued run
    /// claimable, so the dispatcher should look now.
    pub fn may_wake(&self, r: &StateReport, fresh: bool, current: bool) -> bool {
        let claimable = fresh || (current && CLAIMABLE_STATES.contains(&r.state.as_str()));
        claimable && (self.unassigned || self.queued.contains(r.agent_id.as_str()))
    }
}

/// A run claimed by a dispatcher that has not recorded the answer yet.
pub(in crate::store) const CLAIMED: &str = "('dispatching')";
/// A run waiting to be sent.
pub(in crate::store) const QUEUED: &str = "('queued')";
/// A run the framework accepted.
pub(in crate::store) const SENT: &str = "('dispatched', 'running')";

/// Why and how an attempt failed.
#[derive(Debug, Clone, Copy)]
pub(in crate::store) struct Failure<'a> {
    /// Recorded as the run's last error (and the session's, if final).
    pub reason: &'a str,
    /// Statuses the run must still be in for the failure to apply.
    pub guard: &'static str,
    /// Whether another attempt may follow.
    pub retryable: bool,
    /// Earliest retry time the dispatch target asked for.
    pub not_before: Option<i64>,
}

/// A run being moved along.
#[derive(Debug, Clone)]
pub(in crate::store) struct InFlight {
    pub run_id: String,
    pub session_id: String,
    pub agent_id: String,
    pub task_id: String,
    pub status: RunStatus,
    pub attempts: i64,
    pub max_retries: i64,
    pub timeout_secs: i64,
    pub dispatched_at: Option<i64>,
    pub last_report_at: Option<i64>,
}

pub(in crate::store) type InFlightRow = (
    String,
    String,
    String,
    String,
    String,
    i64,
    i64,
    i64,
    Option<i64>,
    Option<i64>,
);

impl InFlight {
    pub(in crate::store) fn from_row(r: InFlightRow) -> Self {
        Self {
            run_id: r.0,
            session_id: r.1,
            agent_id: r.2,
            task_id: r.3,
            status: RunStatus::parse(&r.4).unwrap_or(RunStatus::Failed),
            attempts: r.5,
            max_retries: r.6,
            timeout_secs: r.7,
            dispatched_at: r.8,
            last_report_at: r.9,
        }
    }

    /// What the engine's rules need to know of it.
    pub(in crate::store) fn view(&self) -> crate::domain::run_rules::RunView {
        crate::domain::run_rules::RunView {
            status: self.status,
            attempts: self.attempts,
            dispatched_at: self.dispatched_at,
            last_report_at: self.last_report_at,
            timeout_secs: self.timeout_secs,
        }
    }

    /// This run, as a `task.status` event names it.
    pub(in crate::store) fn task_ref(&self) -> crate::domain::event::TaskRef<'_> {
        crate::domain::event::TaskRef {
            run_id: &self.run_id,
            task_id: &self.task_id,
            session_id: &self.session_id,
            agent_id: &self.agent_id,
            attempt: self.attempts,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The status lists rendered from the rules in `domain` are the ones
    /// the statements (and the migrations' partial index of runs in
    /// flight, which SQL files cannot render) were written with.
    #[test]
    fn status_lists_follow_the_domain_rules() {
        assert_eq!(*IN_FLIGHT, "('dispatching', 'dispatched', 'running')");
        assert_eq!(
            *UNFINISHED_RUNS,
            "('queued', 'dispatching', 'dispatched', 'running')"
        );
        assert_eq!(*UNFINISHED_SESSIONS, "('started', 'running')");
        for migration in [
            include_str!("../../../../migrations/sqlite/0002_workflows.sql"),
            include_str!("../../../../migrations/postgres/0002_workflows.sql"),
        ] {
            assert!(migration.contains(&format!("WHERE status IN {};", *IN_FLIGHT)));
        }
    }
}
