//! What the engine hands the store to apply inside its transactions: the
//! [`EngineRules`] (backoff and where its jitter comes from, the default
//! task timeout, agent leases) and the [`NewRun`] a task becomes. The store
//! applies these; it holds no policy and draws no random numbers itself.

use super::liveness::Liveness;
use super::time::Micros;
use super::workflow::{Backoff, TaskDefinition};

/// The workflow rules the engine hands the store, applied inside its
/// transactions when a task moves on (a report fails an attempt, a deadline
/// passes, the next task is queued).
/// Its `Default` is that of the settings (`OPSCORE_*`), written in `config`.
#[derive(Debug, Clone, Copy)]
pub struct EngineRules {
    /// Delay between attempts.
    pub backoff: Backoff,
    /// Where the backoff's jitter comes from.
    pub jitter: Jitter,
    /// Deadline of an attempt whose task sets no `timeoutSeconds`.
    pub default_timeout_secs: u64,
    /// When an agent counts as stale.
    pub liveness: Liveness,
}

/// The source of a backoff's jitter: a number in [0, 1) each time it is
/// drawn. The rules stay pure (they take the number), and the store draws
/// from the source the engine handed it rather than choosing its own, so a
/// test can fix the retry times by handing another source.
#[derive(Debug, Clone, Copy)]
pub struct Jitter(pub fn() -> f64);

impl Default for Jitter {
    /// Uniformly random: retries of many runs failing at once spread out.
    fn default() -> Self {
        Self(rand::random::<f64>)
    }
}

impl Jitter {
    /// The next number in [0, 1).
    pub fn draw(&self) -> f64 {
        (self.0)()
    }
}

/// A task run to insert (the store inserts it as it is).
#[derive(Debug, Clone)]
pub struct NewRun {
    /// Run id (UUIDv7).
    pub run_id: String,
    /// Position in the session (0 for the first task).
    pub position: i64,
    /// The definition's task id.
    pub task_id: String,
    /// The task's name.
    pub task_name: String,
    /// JSON payload sent to the agent.
    pub payload: String,
    /// Retries after the first attempt.
    pub max_retries: i64,
    /// Attempt deadline in seconds.
    pub timeout_secs: i64,
    /// When it becomes due.
    pub due_at: Micros,
}

impl NewRun {
    /// The run for `task` at `position`, due after its delay, with the
    /// task's timeout or the default one.
    pub fn for_task(
        task: &TaskDefinition,
        position: i64,
        payload: &serde_json::Value,
        now: Micros,
        rules: &EngineRules,
    ) -> Self {
        let delay_us =
            i64::try_from(task.delay_seconds).unwrap_or(i64::MAX / 2_000_000) * 1_000_000;
        Self {
            run_id: uuid::Uuid::now_v7().to_string(),
            position,
            task_id: task.task_id.clone(),
            task_name: if task.name.is_empty() {
                task.task_id.clone()
            } else {
                task.name.clone()
            },
            payload: payload.to_string(),
            max_retries: i64::from(task.max_retries),
            timeout_secs: task.timeout_seconds.unwrap_or(rules.default_timeout_secs) as i64,
            due_at: now.saturating_add(delay_us),
        }
    }

    /// The run of `task`, the one after the run at `position` that just
    /// completed: only a session's first task takes the trigger's payload,
    /// every later one its own parameters.
    pub fn next(task: &TaskDefinition, position: i64, now: Micros, rules: &EngineRules) -> Self {
        Self::for_task(task, position + 1, &task.parameters, now, rules)
    }
}
