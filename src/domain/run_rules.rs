//! How a task run's status follows what happened to it (docs/workflows.md,
//! "How a task's status follows what happened"): what an agent's report
//! does to a run, what a delivery's outcome does, when a failed attempt is
//! retried, what comes after a completed task, and which agents a task may
//! be sent to. Pure functions of what the store loaded; the store applies
//! the decision in the same transaction. No I/O, no clock, no random
//! numbers: the jitter of a backoff is drawn by the caller.
//!
//! The evidence rules, in short:
//! - a run is `running` only once the agent has shown it started *that*
//!   run: a report naming it (`details.taskId`/`sessionId`), or a report
//!   that names no run saying `active`, received after the run was sent;
//! - a run is `completed` only by a finishing report (`idle`, `finished`)
//!   that names it, or that names no run while the run is `running`;
//! - a report timestamped before the run was sent never starts or finishes
//!   it, nor does one timestamped before the agent's latest report that
//!   moved the run (a late or replayed report cannot undo what a newer one
//!   said: an `idle` stamped before the agent's `active` does not finish the
//!   run, an `active` stamped before its `error` does not restart it);
//! - a report naming a run is honoured while that run's task is unfinished,
//!   also while it waits to be retried after a failed delivery.

use serde::Deserialize;
use serde_json::value::RawValue;

use super::state::UNKNOWN;
use super::time::Micros;
use super::workflow::{Backoff, RunStatus, TaskDefinition, WorkflowDefinition};

/// Reports that say the agent finished what it was doing.
const FINISHING: [&str; 2] = ["idle", "finished"];

impl RunStatus {
    /// Sent (or being sent) and not finished: the agent may be working on
    /// it. At most one run of an agent is in flight.
    pub fn in_flight(self) -> bool {
        matches!(self, Self::Dispatching | Self::Dispatched | Self::Running)
    }

    /// No further change happens to a run in this status.
    pub fn is_final(self) -> bool {
        matches!(self, Self::Completed | Self::Failed | Self::Cancelled)
    }
}

/// Whether a report's details name a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mention {
    /// The details name no run (no `taskId`, no `sessionId`).
    Unnamed,
    /// They name this run.
    This,
    /// They name some other run.
    Other,
}

#[derive(Deserialize)]
struct Refs {
    #[serde(rename = "taskId")]
    task_id: Option<String>,
    #[serde(rename = "sessionId")]
    session_id: Option<String>,
}

/// Does a report's `details` name the run `run_id` (task `task_id` of
/// session `session_id`)? `taskId` may be the run id (`opscore_task_id`) or
/// the definition's task id; `sessionId` the session's id.
pub fn mention(
    details: Option<&RawValue>,
    run_id: &str,
    task_id: &str,
    session_id: &str,
) -> Mention {
    let Some(refs) = details.and_then(|d| serde_json::from_str::<Refs>(d.get()).ok()) else {
        return Mention::Unnamed;
    };
    let mut named = false;
    if let Some(s) = refs.session_id {
        if s != session_id {
            return Mention::Other;
        }
        named = true;
    }
    if let Some(t) = refs.task_id {
        if t != run_id && t != task_id {
            return Mention::Other;
        }
        named = true;
    }
    if named {
        Mention::This
    } else {
        Mention::Unnamed
    }
}

/// What the store knows of a run a report or a delivery may concern.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunView {
    /// Its status.
    pub status: RunStatus,
    /// Attempts claimed so far (0: never sent).
    pub attempts: i64,
    /// When its latest attempt was claimed for sending, if ever.
    pub dispatched_at: Option<Micros>,
    /// The agent's own timestamp of its latest report that moved this run
    /// (started, finished or failed it), if any.
    pub last_report_at: Option<Micros>,
    /// Its task's timeout, in seconds.
    pub timeout_secs: i64,
}

/// An agent's report, as the engine sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReportView<'a> {
    /// The reported state.
    pub state: &'a str,
    /// The agent's own timestamp.
    pub timestamp: Micros,
    /// When the server received it.
    pub received_at: Micros,
}

/// Which of an agent's unfinished runs a report concerns: the run it names,
/// else (when it names none) the run in flight. `runs` are the agent's runs
/// in flight or waiting for a retry, each with what the report says of it.
pub fn concerned_run(runs: &[(RunView, Mention)]) -> Option<usize> {
    if let Some(i) = runs.iter().position(|(_, m)| *m == Mention::This) {
        return Some(i);
    }
    runs.iter()
        .position(|(r, m)| *m == Mention::Unnamed && r.status.in_flight())
}

/// What a report does to the run it concerns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReportEffect {
    /// Nothing.
    None,
    /// The agent started it: `running`, and when `deadline` is set its
    /// attempt must end by then (the run was not yet confirmed sent, or was
    /// waiting for a retry).
    Started {
        /// The attempt's new deadline, if it changes.
        deadline: Option<Micros>,
    },
    /// The task is done.
    Completed,
    /// The attempt failed.
    Failed,
}

/// Decide what `report` does to `run`, given what it says of the run and
/// whether another run of the agent is in flight (`other_in_flight`).
pub fn report_effect(
    run: &RunView,
    mention: Mention,
    report: &ReportView<'_>,
    other_in_flight: bool,
) -> ReportEffect {
    let Some(sent) = run.dispatched_at else {
        return ReportEffect::None;
    };
    let older = run
        .last_report_at
        .is_some_and(|last| report.timestamp < last);
    if mention == Mention::Other || report.timestamp < sent || older || run.attempts < 1 {
        return ReportEffect::None;
    }
    let named = mention == Mention::This;
    let finishing = FINISHING.contains(&report.state);
    let deadline = Some(
        report
            .received_at
            .saturating_add(run.timeout_secs.saturating_mul(1_000_000)),
    );
    match run.status {
        // Waiting for a retry after a failed attempt: only a report naming
        // the run can be about it, and the agent has it after all.
        RunStatus::Queued if named => match report.state {
            "active" if !other_in_flight => ReportEffect::Started { deadline },
            _ if finishing => ReportEffect::Completed,
            _ => ReportEffect::None,
        },
        RunStatus::Dispatching | RunStatus::Dispatched => {
            let started = named || (report.state == "active" && report.received_at >= sent);
            let deadline = if run.status == RunStatus::Dispatching {
                deadline
            } else {
                None
            };
            match report.state {
                "active" if started => ReportEffect::Started { deadline },
                "error" if named => ReportEffect::Failed,
                _ if finishing && named => ReportEffect::Completed,
                _ => ReportEffect::None,
            }
        }
        RunStatus::Running => match report.state {
            "error" => ReportEffect::Failed,
            _ if finishing => ReportEffect::Completed,
            _ => ReportEffect::None,
        },
        _ => ReportEffect::None,
    }
}

/// The reason recorded when an agent reports `error`, with its details.
pub fn agent_error_reason(details: Option<&RawValue>) -> String {
    match details {
        Some(d) => {
            let text = d.get();
            let cut = text
                .char_indices()
                .nth(500)
                .map_or(text, |(i, _)| &text[..i]);
            format!("agent reported error: {cut}")
        }
        None => "agent reported error".to_owned(),
    }
}

/// How a delivery went, as the engine needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// The framework accepted the task.
    Accepted,
    /// It did not.
    Failed,
}

/// What a delivery's outcome does to its run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryDecision {
    /// Accepted: `dispatched`, to finish by `deadline`.
    Sent {
        /// The attempt's deadline.
        deadline: Micros,
    },
    /// Accepted after the agent had already started it: still `running`,
    /// to finish by `deadline`.
    StillRunning {
        /// The attempt's deadline.
        deadline: Micros,
    },
    /// Failed before the agent showed any sign of it: retry or fail the
    /// attempt (see [`after_failure`]).
    FailAttempt,
    /// Failed, but the agent has started (or even finished) the run: the
    /// error is recorded on the attempt and the run goes on as it is.
    NoteError,
    /// Accepted, but the run has moved on (finished, or waiting for a retry
    /// after a deadline): nothing changes.
    Nothing,
}

/// Decide what a delivery's outcome does to the attempt it sent (`run`, as
/// loaded now), at `now`.
pub fn delivery_decision(run: &RunView, delivery: Delivery, now: Micros) -> DeliveryDecision {
    let deadline = now.saturating_add(run.timeout_secs.saturating_mul(1_000_000));
    match (delivery, run.status) {
        (Delivery::Accepted, RunStatus::Dispatching) => DeliveryDecision::Sent { deadline },
        (Delivery::Accepted, RunStatus::Running) => DeliveryDecision::StillRunning { deadline },
        (Delivery::Accepted, _) => DeliveryDecision::Nothing,
        (Delivery::Failed, RunStatus::Dispatching) => DeliveryDecision::FailAttempt,
        (Delivery::Failed, _) => DeliveryDecision::NoteError,
    }
}

/// What follows a failed attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AfterFailure {
    /// Send it again, not before `due`.
    Retry {
        /// When the retry becomes due.
        due: Micros,
    },
    /// The run fails for good, and its session with `session_error`.
    Fail {
        /// The session's error.
        session_error: String,
    },
}

/// A failed attempt of an attempt-counted run.
#[derive(Debug, Clone, Copy)]
pub struct FailedAttempt<'a> {
    /// The definition's task id.
    pub task_id: &'a str,
    /// Attempts so far, this one included.
    pub attempts: i64,
    /// Retries allowed after the first attempt.
    pub max_retries: i64,
    /// Whether another attempt may follow at all.
    pub retryable: bool,
    /// Why it failed.
    pub reason: &'a str,
    /// Earliest retry the dispatch target asked for (`Retry-After`).
    pub not_before: Option<Micros>,
}

/// Retry after backoff (jitter `unit` in [0, 1) drawn by the caller), or
/// fail when retries are spent or the failure is not retryable.
pub fn after_failure(
    f: &FailedAttempt<'_>,
    backoff: &Backoff,
    now: Micros,
    unit: f64,
) -> AfterFailure {
    if f.retryable && f.attempts <= f.max_retries {
        let attempt = u32::try_from(f.attempts).unwrap_or(u32::MAX);
        let delay_us = i64::try_from(backoff.delay_ms(attempt, unit))
            .unwrap_or(i64::MAX / 1000)
            .saturating_mul(1000);
        let due = now.saturating_add(delay_us).max(f.not_before.unwrap_or(0));
        return AfterFailure::Retry { due };
    }
    AfterFailure::Fail {
        session_error: format!(
            "task {} failed after {} attempt{}: {}",
            f.task_id,
            f.attempts,
            if f.attempts == 1 { "" } else { "s" },
            f.reason
        ),
    }
}

/// Why an attempt whose deadline passed failed.
pub fn timeout_reason(run: &RunView) -> String {
    if run.status == RunStatus::Running {
        format!("timed out after {}s without finishing", run.timeout_secs)
    } else {
        format!(
            "timed out after {}s without the agent reporting that it started",
            run.timeout_secs
        )
    }
}

/// Whether a retry (`run` queued after a failed attempt, due at `due_at`)
/// has waited for its agent to be free for as long as its task's timeout:
/// then it fails for good, so every session ends within a bound set by its
/// timeouts, retries and backoff.
pub fn retry_wait_over(run: &RunView, due_at: Micros, now: Micros) -> bool {
    run.status == RunStatus::Queued
        && run.attempts > 0
        && now >= due_at.saturating_add(run.timeout_secs.saturating_mul(1_000_000))
}

/// [`retry_wait_over`] as a SQL condition over a `task_runs` row, `now`
/// being a placeholder.
pub fn retry_wait_over_sql(now: &str) -> String {
    format!("status = 'queued' AND attempts > 0 AND due_at_us + timeout_secs * 1000000 <= {now}")
}

/// Why a retry that waited out [`retry_wait_over`] failed.
pub fn unsent_retry_reason(run: &RunView) -> String {
    format!(
        "the retry was not sent: the agent was not free to take it within {}s of its due time",
        run.timeout_secs
    )
}

/// What follows a completed task (docs/api.md §3.5).
#[derive(Debug, Clone, PartialEq)]
pub struct AfterCompletion<'a> {
    /// The tasks that depended on it: each has one dependency fewer, and
    /// becomes due (after its `delaySeconds`, counted from now) when that
    /// was its last.
    pub dependents: Vec<&'a TaskDefinition>,
    /// No other run of the session is unfinished: it is completed.
    pub session_completed: bool,
}

/// What the completion of `task_id` in `def` does, `unfinished` being how
/// many other runs of its session have not completed yet.
pub fn after_completion<'a>(
    def: &'a WorkflowDefinition,
    task_id: &str,
    unfinished: usize,
) -> AfterCompletion<'a> {
    let deps = super::graph::dependencies(def);
    let dependents = def
        .tasks
        .iter()
        .position(|t| t.task_id == task_id)
        .map(|i| super::graph::dependents(&deps, i))
        .unwrap_or_default()
        .into_iter()
        .map(|i| &def.tasks[i])
        .collect();
    AfterCompletion {
        dependents,
        session_completed: unfinished == 0,
    }
}

/// An agent in this state is free for a new task.
pub const FREE_STATE: &str = "idle";
/// An agent in this state is still sent the retry of a run it failed: it
/// may stay in `error` (AgentKit's example agent does) and the retry is
/// what the definition asked for.
pub const RETRY_STATE: &str = "error";

/// Whether a run with `attempts` attempts so far may be sent to an agent
/// whose current state is `state` (`UNKNOWN` only when `allow_unknown`).
pub fn may_send(state: &str, attempts: i64, allow_unknown: bool) -> bool {
    state == FREE_STATE
        || (allow_unknown && state == UNKNOWN)
        || (attempts > 0 && state == RETRY_STATE)
}

/// [`may_send`] as a SQL condition over the columns `state` and `attempts`
/// and the boolean placeholder `allow_unknown`.
pub fn may_send_sql(state: &str, attempts: &str, allow_unknown: &str) -> String {
    format!(
        "({state} = '{FREE_STATE}' OR ({allow_unknown} AND {state} = '{UNKNOWN}') \
         OR ({attempts} > 0 AND {state} = '{RETRY_STATE}'))"
    )
}

mod pool;
pub use pool::*;
mod retry;
pub use retry::{retry_session, RetryCandidate, RetryDecision};

#[cfg(test)]
mod tests;
