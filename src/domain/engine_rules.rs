//! What the engine hands the store to apply inside its transactions: the
//! [`EngineRules`] (backoff and where its jitter comes from, the default
//! task timeout, agent leases) and the [`NewRun`] a task becomes. The store
//! applies these; it holds no policy and draws no random numbers itself.

use super::liveness::Liveness;
use super::time::Micros;
use super::workflow::{Backoff, TaskDefinition, WorkflowDefinition};

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
    /// How long a due run may wait for an agent when its task sets no
    /// `queueTimeoutSeconds` (docs/api.md §3.6).
    pub queue_timeout_secs: u64,
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
    /// Position in the session: the task's index in the definition.
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
    /// When it becomes due; [`NOT_DUE`] while `deps_left` is not 0.
    pub due_at: Micros,
    /// Dependencies not completed yet; claimable only at 0.
    pub deps_left: i64,
    /// The capability its agent must have (pool sessions only: the
    /// per-agent trigger of docs/api.md §1.4 never checked it).
    pub capability: Option<String>,
    /// The tasks whose outputs its dispatch carries as `inputs`.
    pub inputs_from: Vec<String>,
    /// How long it may wait for an agent once due, in seconds.
    pub queue_timeout_secs: i64,
}

/// The due time of a run that waits for dependencies: after any time a
/// clock will read, so it is never in the range of due runs.
pub const NOT_DUE: Micros = i64::MAX / 2;

/// `secs` as microseconds, bounded.
pub fn secs_us(secs: u64) -> Micros {
    i64::try_from(secs).unwrap_or(i64::MAX / 2_000_000) * 1_000_000
}

impl NewRun {
    /// Every run of a session of `def`, in definition order, all queued at
    /// once: start tasks (no dependency) due after their delay with
    /// `initial_payload` (else their parameters), every other task with its
    /// parameters, waiting for its dependencies. `pool`: the session is
    /// triggered on a pool (tasks' `agentCapability` is then required).
    pub fn for_session(
        def: &WorkflowDefinition,
        initial_payload: Option<&serde_json::Value>,
        pool: bool,
        now: Micros,
        rules: &EngineRules,
    ) -> Vec<Self> {
        let deps = super::graph::dependencies(def);
        def.tasks
            .iter()
            .zip(deps)
            .enumerate()
            .map(|(i, (task, deps))| {
                let start = deps.is_empty();
                let payload = match initial_payload {
                    Some(p) if start => p,
                    _ => &task.parameters,
                };
                Self {
                    run_id: uuid::Uuid::now_v7().to_string(),
                    position: i as i64,
                    task_id: task.task_id.clone(),
                    task_name: if task.name.is_empty() {
                        task.task_id.clone()
                    } else {
                        task.name.clone()
                    },
                    payload: payload.to_string(),
                    max_retries: i64::from(task.max_retries),
                    timeout_secs: task.timeout_seconds.unwrap_or(rules.default_timeout_secs) as i64,
                    // A run waiting for dependencies is due only once they
                    // completed: until then it stays out of the due range
                    // every claim scans.
                    due_at: if start {
                        now.saturating_add(secs_us(task.delay_seconds))
                    } else {
                        NOT_DUE
                    },
                    deps_left: deps.len() as i64,
                    capability: if pool {
                        task.agent_capability.clone()
                    } else {
                        None
                    },
                    inputs_from: deps.iter().map(|&j| def.tasks[j].task_id.clone()).collect(),
                    queue_timeout_secs: task
                        .queue_timeout_seconds
                        .unwrap_or(rules.queue_timeout_secs)
                        as i64,
                }
            })
            .collect()
    }

    /// When a dependent of a task completed at `now` becomes due.
    pub fn released_due(task: &TaskDefinition, now: Micros) -> Micros {
        now.saturating_add(secs_us(task.delay_seconds))
    }
}
