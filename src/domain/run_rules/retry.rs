//! Running a failed or cancelled session again (docs/api.md §3.7): which
//! of its runs go back to the queue, and with what retry budget. The
//! store loads the session and its runs and applies the decision in one
//! transaction.

use crate::domain::workflow::{RunStatus, SessionStatus, WorkflowDefinition};

/// A run of the session, as the retry rule sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryCandidate<'a> {
    /// The definition's task id.
    pub task_id: &'a str,
    /// Where the run is.
    pub status: RunStatus,
    /// Attempts made so far (kept: the next attempt continues the count).
    pub attempts: i64,
    /// The run's retry budget so far.
    pub max_retries: i64,
}

/// What running a session again does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RetryDecision {
    /// Queue these runs (by index into the candidates) afresh, due now, each
    /// with its new `max_retries`; the session goes back to `running`.
    Requeue(Vec<(usize, i64)>),
    /// Only a failed or cancelled session runs again.
    NotFinishedBadly(SessionStatus),
    /// A failed or cancelled session with no failed or cancelled run:
    /// nothing to run again.
    NothingToRun,
}

/// Whether and how a session in `status` with `runs` (its definition
/// `def`) runs again. Completed runs keep their results and are not sent
/// again; failed and cancelled ones are queued with their attempt count
/// kept and a fresh budget: as many retries as the task allows, counted
/// from the attempts made (`attempts + maxRetries`), so a task that had
/// used up its retries gets them all again.
pub fn retry_session(
    status: SessionStatus,
    runs: &[RetryCandidate<'_>],
    def: &WorkflowDefinition,
) -> RetryDecision {
    if !matches!(status, SessionStatus::Failed | SessionStatus::Cancelled) {
        return RetryDecision::NotFinishedBadly(status);
    }
    let again: Vec<(usize, i64)> = runs
        .iter()
        .enumerate()
        .filter(|(_, r)| matches!(r.status, RunStatus::Failed | RunStatus::Cancelled))
        .map(|(i, r)| {
            // A task no longer in the definition cannot be (the session
            // keeps the definition it started with); keep the run's own
            // budget size then.
            let allowed = def
                .tasks
                .iter()
                .find(|t| t.task_id == r.task_id)
                .map_or(r.max_retries, |t| i64::from(t.max_retries));
            (i, r.attempts.saturating_add(allowed))
        })
        .collect();
    if again.is_empty() {
        RetryDecision::NothingToRun
    } else {
        RetryDecision::Requeue(again)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn def() -> WorkflowDefinition {
        serde_json::from_value(serde_json::json!({
            "id": "w",
            "tasks": [
                {"taskId": "a", "nextTaskId": "b", "maxRetries": 2},
                {"taskId": "b", "maxRetries": 0},
            ]
        }))
        .unwrap()
    }

    fn run(
        task_id: &str,
        status: RunStatus,
        attempts: i64,
        max_retries: i64,
    ) -> RetryCandidate<'_> {
        RetryCandidate {
            task_id,
            status,
            attempts,
            max_retries,
        }
    }

    #[test]
    fn which_sessions_and_runs_run_again() {
        use RunStatus as R;
        use SessionStatus as S;
        let d = def();
        let cases: Vec<(S, Vec<RetryCandidate<'_>>, RetryDecision)> = vec![
            // Failed on the second task: only it runs again, one more
            // attempt (maxRetries 0) counted after the one made.
            (
                S::Failed,
                vec![run("a", R::Completed, 1, 2), run("b", R::Failed, 1, 0)],
                RetryDecision::Requeue(vec![(1, 1)]),
            ),
            // Retries used up: all of them again.
            (
                S::Failed,
                vec![run("a", R::Failed, 3, 2)],
                RetryDecision::Requeue(vec![(0, 5)]),
            ),
            // Retried once already: the budget grows from the attempts made.
            (
                S::Failed,
                vec![run("a", R::Failed, 6, 5)],
                RetryDecision::Requeue(vec![(0, 8)]),
            ),
            // Cancelled before it was ever sent.
            (
                S::Cancelled,
                vec![run("a", R::Cancelled, 0, 2)],
                RetryDecision::Requeue(vec![(0, 2)]),
            ),
            // A task not in the definition keeps its run's budget size.
            (
                S::Cancelled,
                vec![run("gone", R::Cancelled, 1, 4)],
                RetryDecision::Requeue(vec![(0, 5)]),
            ),
            (
                S::Failed,
                vec![run("a", R::Completed, 1, 2)],
                RetryDecision::NothingToRun,
            ),
            (
                S::Running,
                vec![],
                RetryDecision::NotFinishedBadly(S::Running),
            ),
            (
                S::Started,
                vec![],
                RetryDecision::NotFinishedBadly(S::Started),
            ),
            (
                S::Completed,
                vec![run("a", R::Completed, 1, 2)],
                RetryDecision::NotFinishedBadly(S::Completed),
            ),
        ];
        for (status, runs, want) in cases {
            assert_eq!(
                retry_session(status, &runs, &d),
                want,
                "{status:?} {runs:?}"
            );
        }
    }
}
