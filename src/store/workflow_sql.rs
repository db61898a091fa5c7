//! Workflow storage, written once for both backends like `sql.rs`: the SQL,
//! the plain helpers, and `impl_workflow_store!`, which implements
//! [`WorkflowStore`](super::WorkflowStore) plus the in-transaction steps that
//! state reports, dispatch results and deadlines share.

use std::sync::LazyLock;

use crate::domain::workflow::RunStatus;

pub(super) const SESSION_COLUMNS: &str =
    "session_id, workflow_id, agent_id, status, result, error, created_at_us, updated_at_us, finished_at_us";

pub(super) const RUN_COLUMNS: &str =
    "run_id, task_id, task_name, status, attempts, max_retries, payload, due_at_us, \
     dispatched_at_us, started_at_us, finished_at_us, last_error, result";

pub(super) const COUNT_SESSIONS_BY_STATUS: &str =
    "SELECT status, COUNT(*) FROM sessions GROUP BY status";

pub(super) const COUNT_QUEUED_RUNS: &str = "SELECT COUNT(*) FROM task_runs WHERE status = 'queued'";

/// Columns of a run that is being moved along, in `InFlight` order.
pub(super) const IN_FLIGHT_COLUMNS: &str =
    "run_id, session_id, agent_id, task_id, position, status, attempts, max_retries, timeout_secs, dispatched_at_us, \
     last_report_ts_us";

pub(super) const INSERT_RUN: &str = "INSERT INTO task_runs (run_id, session_id, position, task_id, task_name, agent_id, status, payload, \
     attempts, max_retries, timeout_secs, due_at_us, created_at_us) \
     VALUES ($1, $2, $3, $4, $5, $6, 'queued', $7, 0, $8, $9, $10, $11)";

/// Due runs of free agents. A stale agent (not heard from within its TTL
/// plus grace, `$4` being the default TTL and `$5` the grace, in seconds) is
/// never sent a task, whether or not the sweep has announced it yet.
pub(super) static CLAIM_CANDIDATES: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT r.run_id, r.session_id, r.task_name, r.agent_id, a.contact_endpoint, r.payload, r.attempts, r.task_id \
         FROM task_runs r JOIN agents a ON a.agent_id = r.agent_id \
         WHERE r.status = 'queued' AND r.due_at_us <= $1 AND a.deregistered_at_us IS NULL \
           AND {} \
           AND NOT ({}) \
           AND NOT EXISTS (SELECT 1 FROM task_runs f WHERE f.agent_id = r.agent_id \
                           AND f.status IN ('dispatching', 'dispatched', 'running')) \
         ORDER BY r.due_at_us LIMIT $3",
        crate::domain::run_rules::may_send_sql("a.state", "r.attempts", "$2"),
        super::Liveness::expired_sql("a.", "$4", "$5", "$1")
    )
});

/// The current states in which `CLAIM_CANDIDATES` sends an agent a new task
/// (`UNKNOWN` only when sending to agents never heard from is allowed); see
/// [`may_send`](crate::domain::run_rules::may_send).
pub(super) const CLAIMABLE_STATES: [&str; 2] = ["idle", crate::domain::state::UNKNOWN];

/// Claims one run. The attempt counts as sent from now (`$4`): reports
/// stamped before it are not about it; whether the agent started it is
/// known only from reports after it.
pub(super) const CLAIM_ONE: &str =
    "UPDATE task_runs SET status = 'dispatching', lease_owner = $2, due_at_us = $3, \
     attempts = attempts + 1, dispatched_at_us = $4, started_at_us = NULL \
     WHERE run_id = $1 AND status = 'queued'";

/// A dispatcher that stopped before confirming delivery gives its claim
/// back. The attempt number goes back too, so the resend carries the same
/// Idempotency-Key and the framework can drop a duplicate.
pub(super) const RECOVER_LEASES: &str =
    "UPDATE task_runs SET status = 'queued', attempts = attempts - 1, lease_owner = NULL, \
     last_error = 'dispatcher stopped before confirming delivery; resending' \
     WHERE status = 'dispatching' AND due_at_us <= $1 \
     RETURNING run_id, task_id, session_id, agent_id, attempts, last_error";

/// Statuses of a run the agent may be working on. Guards on updates name
/// the whole set, not the status last read: on PostgreSQL another
/// transaction (the dispatcher recording its answer) may move the run from
/// one to another in between, and the update must still apply.
pub(super) const IN_FLIGHT: &str = "('dispatching', 'dispatched', 'running')";
/// Most agent ids bound in one [`agents_with_runs_sql`] or
/// [`lock_agents_sql`](super::sql::lock_agents_sql).
pub(super) const AGENT_CHUNK: usize = 500;

/// Which of `rows` agents (binds `$1`…) have a task in flight (`1`) or
/// queued (`0`); each half uses its own partial index.
pub(super) fn agents_with_runs_sql(rows: usize) -> String {
    let binds = super::sql::in_list(rows);
    format!(
        "SELECT agent_id, 1 FROM task_runs WHERE status IN {IN_FLIGHT} AND agent_id IN ({binds}) \
         UNION ALL \
         SELECT DISTINCT agent_id, 0 FROM task_runs WHERE status = 'queued' AND agent_id IN ({binds})"
    )
}

/// Agents of a report batch by the task runs they have.
#[derive(Debug, Default)]
pub(super) struct AgentRuns {
    /// With a task in flight: a report may move it on.
    pub in_flight: std::collections::HashSet<String>,
    /// With a task queued: becoming idle or fresh may let it go out.
    pub queued: std::collections::HashSet<String>,
}

/// A run claimed by a dispatcher that has not recorded the answer yet.
pub(super) const CLAIMED: &str = "('dispatching')";
/// A run waiting to be sent.
pub(super) const QUEUED: &str = "('queued')";
/// A run the framework accepted.
pub(super) const SENT: &str = "('dispatched', 'running')";

/// Why and how an attempt failed.
#[derive(Debug, Clone, Copy)]
pub(super) struct Failure<'a> {
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
pub(super) struct InFlight {
    pub run_id: String,
    pub session_id: String,
    pub agent_id: String,
    pub task_id: String,
    pub position: i64,
    pub status: RunStatus,
    pub attempts: i64,
    pub max_retries: i64,
    pub timeout_secs: i64,
    pub dispatched_at: Option<i64>,
    pub last_report_at: Option<i64>,
}

pub(super) type InFlightRow = (
    String,
    String,
    String,
    String,
    i64,
    String,
    i64,
    i64,
    i64,
    Option<i64>,
    Option<i64>,
);

impl InFlight {
    pub(super) fn from_row(r: InFlightRow) -> Self {
        Self {
            run_id: r.0,
            session_id: r.1,
            agent_id: r.2,
            task_id: r.3,
            position: r.4,
            status: RunStatus::parse(&r.5).unwrap_or(RunStatus::Failed),
            attempts: r.6,
            max_retries: r.7,
            timeout_secs: r.8,
            dispatched_at: r.9,
            last_report_at: r.10,
        }
    }

    /// What the engine's rules need to know of it.
    pub(super) fn view(&self) -> crate::domain::run_rules::RunView {
        crate::domain::run_rules::RunView {
            status: self.status,
            attempts: self.attempts,
            dispatched_at: self.dispatched_at,
            last_report_at: self.last_report_at,
            timeout_secs: self.timeout_secs,
        }
    }

    /// This run, as a `task.status` event names it.
    pub(super) fn task_ref(&self) -> crate::domain::event::TaskRef<'_> {
        crate::domain::event::TaskRef {
            run_id: &self.run_id,
            task_id: &self.task_id,
            session_id: &self.session_id,
            agent_id: &self.agent_id,
            attempt: self.attempts,
        }
    }
}

macro_rules! impl_workflow_store {
    ($store:ty, $db:ty, $claim_lock:expr) => {
        type Conn = <$db as sqlx::Database>::Connection;

        async fn insert_run(
            conn: &mut Conn,
            session_id: &str,
            agent_id: &str,
            run: &$crate::store::NewRun,
            now: i64,
            events: &mut Vec<$crate::domain::event::NewEvent>,
        ) -> $crate::store::StoreResult<()> {
            let task = $crate::domain::event::TaskRef {
                run_id: &run.run_id,
                task_id: &run.task_id,
                session_id,
                agent_id,
                attempt: 0,
            };
            events.push($crate::domain::event::NewEvent::task(
                task,
                $crate::domain::workflow::RunStatus::Queued,
                None,
                now,
            ));
            sqlx::query($crate::store::workflow_sql::INSERT_RUN)
                .bind(&run.run_id)
                .bind(session_id)
                .bind(run.position)
                .bind(&run.task_id)
                .bind(&run.task_name)
                .bind(agent_id)
                .bind(&run.payload)
                .bind(run.max_retries)
                .bind(run.timeout_secs)
                .bind(run.due_at)
                .bind(now)
                .execute(&mut *conn)
                .await?;
            Ok(())
        }

        /// Apply a state report's meaning to the agent's run in flight.
        /// Which of `agents` have a task in flight, and which have one
        /// queued.
        async fn agents_with_runs(
            conn: &mut Conn,
            agents: &[&str],
        ) -> $crate::store::StoreResult<$crate::store::workflow_sql::AgentRuns> {
            let mut runs = $crate::store::workflow_sql::AgentRuns::default();
            for chunk in agents.chunks($crate::store::workflow_sql::AGENT_CHUNK) {
                let sql = $crate::store::workflow_sql::agents_with_runs_sql(chunk.len());
                let mut q = sqlx::query_as::<_, (String, i32)>(&sql);
                for a in chunk {
                    q = q.bind(*a);
                }
                for (agent, in_flight) in q.fetch_all(&mut *conn).await? {
                    if in_flight == 1 {
                        runs.in_flight.insert(agent);
                    } else {
                        runs.queued.insert(agent);
                    }
                }
            }
            Ok(runs)
        }

        /// Apply a state report to the agent's run it concerns: the engine
        /// decides (`run_rules::report_effect`), this applies.
        async fn advance_on_report(
            conn: &mut Conn,
            r: &$crate::domain::state::StateReport,
            rules: &$crate::store::EngineRules,
            events: &mut Vec<$crate::domain::event::NewEvent>,
        ) -> $crate::store::StoreResult<()> {
            use $crate::domain::run_rules::{
                agent_error_reason, concerned_run, mention, report_effect, ReportEffect, ReportView,
            };
            use $crate::domain::workflow::RunStatus;
            use $crate::store::workflow_sql::*;
            let sql = format!(
                "SELECT {IN_FLIGHT_COLUMNS} FROM task_runs WHERE agent_id = $1 \
                 AND (status IN {IN_FLIGHT} OR (status = 'queued' AND attempts > 0))"
            );
            let rows: Vec<InFlightRow> = sqlx::query_as(&sql)
                .bind(r.agent_id.as_str())
                .fetch_all(&mut *conn)
                .await?;
            let runs: Vec<InFlight> = rows.into_iter().map(InFlight::from_row).collect();
            let seen: Vec<_> = runs
                .iter()
                .map(|run| {
                    let m = mention(r.details.as_deref(), &run.run_id, &run.task_id, &run.session_id);
                    (run.view(), m)
                })
                .collect();
            let Some(i) = concerned_run(&seen) else {
                return Ok(());
            };
            let run = &runs[i];
            let other_in_flight = runs.iter().enumerate().any(|(j, o)| j != i && o.status.in_flight());
            let report = ReportView { state: &r.state, timestamp: r.timestamp, received_at: r.received_at };
            match report_effect(&seen[i].0, seen[i].1, &report, other_in_flight) {
                ReportEffect::None => Ok(()),
                ReportEffect::Started { deadline } => {
                    let started = sqlx::query(
                        "UPDATE task_runs SET status = 'running', started_at_us = $2, \
                         due_at_us = COALESCE($3, due_at_us), last_report_ts_us = $4 \
                         WHERE run_id = $1 AND status IN ('queued', 'dispatching', 'dispatched')",
                    )
                    .bind(&run.run_id)
                    .bind(r.received_at)
                    .bind(deadline)
                    .bind(r.timestamp)
                    .execute(&mut *conn)
                    .await?
                    .rows_affected();
                    if started == 1 {
                        events.push($crate::domain::event::NewEvent::task(
                            run.task_ref(),
                            RunStatus::Running,
                            None,
                            r.received_at,
                        ));
                    }
                    Ok(())
                }
                ReportEffect::Completed => {
                    complete_run(conn, run, r.details.as_ref().map(|d| d.get()), r.received_at, rules, events).await
                }
                ReportEffect::Failed => {
                    // A late report stamped before this one must not
                    // restart the run once it waits for its retry.
                    sqlx::query("UPDATE task_runs SET last_report_ts_us = $2 WHERE run_id = $1")
                        .bind(&run.run_id)
                        .bind(r.timestamp)
                        .execute(&mut *conn)
                        .await?;
                    let reason = agent_error_reason(r.details.as_deref());
                    let failure = Failure { reason: &reason, guard: IN_FLIGHT, retryable: true, not_before: None };
                    fail_attempt(conn, run, &failure, r.received_at, rules, events).await
                }
            }
        }

        /// The run is done: store its result, then queue the next task or
        /// complete the session.
        async fn complete_run(
            conn: &mut Conn,
            run: &$crate::store::workflow_sql::InFlight,
            details: Option<&str>,
            now: i64,
            rules: &$crate::store::EngineRules,
            events: &mut Vec<$crate::domain::event::NewEvent>,
        ) -> $crate::store::StoreResult<()> {
            use $crate::domain::event::NewEvent;
            use $crate::domain::workflow::{RunStatus, SessionStatus};
            use $crate::store::StoreError;
            // The claim (`lease_owner`) stays: a delivery still on its way
            // records its outcome on this attempt when it returns.
            let done = sqlx::query(
                "UPDATE task_runs SET status = 'completed', result = $2, finished_at_us = $3 \
                 WHERE run_id = $1 AND status IN ('queued', 'dispatching', 'dispatched', 'running')",
            )
            .bind(&run.run_id)
            .bind(details)
            .bind(now)
            .execute(&mut *conn)
            .await?
            .rows_affected();
            if done == 0 {
                return Ok(());
            }
            events.push(NewEvent::task(run.task_ref(), RunStatus::Completed, None, now));
            // Locks the session row and re-checks it is still unfinished, so
            // a concurrent cancel cannot be followed by a new task.
            let definition: Option<String> = sqlx::query_scalar(
                "UPDATE sessions SET updated_at_us = $2 \
                 WHERE session_id = $1 AND status IN ('started', 'running') RETURNING definition",
            )
            .bind(&run.session_id)
            .bind(now)
            .fetch_optional(&mut *conn)
            .await?;
            let Some(definition) = definition else {
                return Ok(());
            };
            let def: $crate::domain::workflow::WorkflowDefinition = serde_json::from_str(&definition)
                .map_err(|e| StoreError::Internal(format!("stored definition of session {}: {e}", run.session_id)))?;
            use $crate::domain::run_rules::{after_completion, AfterCompletion};
            match after_completion(&def, &run.task_id) {
                AfterCompletion::Next(task) => {
                    let new = $crate::store::NewRun::for_task(task, run.position + 1, &task.parameters, now, rules);
                    insert_run(conn, &run.session_id, &run.agent_id, &new, now, events).await
                }
                AfterCompletion::SessionCompleted => {
                    let completed = sqlx::query(
                        "UPDATE sessions SET status = 'completed', result = $2, finished_at_us = $3, updated_at_us = $3 \
                         WHERE session_id = $1 AND status IN ('started', 'running')",
                    )
                    .bind(&run.session_id)
                    .bind(details)
                    .bind(now)
                    .execute(&mut *conn)
                    .await?
                    .rows_affected();
                    if completed == 1 {
                        events.push(NewEvent::session(
                            &run.agent_id,
                            &run.session_id,
                            &def.id,
                            SessionStatus::Completed,
                            None,
                            now,
                        ));
                    }
                    Ok(())
                }
            }
        }

        /// An attempt failed: queue a retry after backoff (or not before
        /// `not_before`), or fail the run and its session when retries are
        /// spent or the failure is not retryable.
        async fn fail_attempt(
            conn: &mut Conn,
            run: &$crate::store::workflow_sql::InFlight,
            failure: &$crate::store::workflow_sql::Failure<'_>,
            now: i64,
            rules: &$crate::store::EngineRules,
            events: &mut Vec<$crate::domain::event::NewEvent>,
        ) -> $crate::store::StoreResult<()> {
            use $crate::domain::event::NewEvent;
            use $crate::domain::workflow::{RunStatus, SessionStatus};
            use $crate::domain::run_rules::{after_failure, AfterFailure, FailedAttempt};
            let $crate::store::workflow_sql::Failure {
                reason,
                guard,
                retryable,
                not_before,
            } = *failure;
            let attempt = FailedAttempt {
                task_id: &run.task_id,
                attempts: run.attempts,
                max_retries: run.max_retries,
                retryable,
                reason,
                not_before,
            };
            // The jitter is drawn here, the rule is pure. The claim
            // (`lease_owner`) stays, as in `complete_run`.
            let why = match after_failure(&attempt, &rules.backoff, now, rand::random::<f64>()) {
                AfterFailure::Retry { due } => {
                    let queued = sqlx::query(&format!(
                        "UPDATE task_runs SET status = 'queued', due_at_us = $2, last_error = $3 \
                         WHERE run_id = $1 AND status IN {guard}"
                    ))
                    .bind(&run.run_id)
                    .bind(due)
                    .bind(reason)
                    .execute(&mut *conn)
                    .await?
                    .rows_affected();
                    if queued == 1 {
                        events.push(NewEvent::task(run.task_ref(), RunStatus::Queued, Some(reason), now));
                    }
                    return Ok(());
                }
                AfterFailure::Fail { session_error } => session_error,
            };
            let failed = sqlx::query(&format!(
                "UPDATE task_runs SET status = 'failed', finished_at_us = $2, last_error = $3 \
                 WHERE run_id = $1 AND status IN {guard}"
            ))
            .bind(&run.run_id)
            .bind(now)
            .bind(reason)
            .execute(&mut *conn)
            .await?
            .rows_affected();
            if failed == 1 {
                events.push(NewEvent::task(run.task_ref(), RunStatus::Failed, Some(reason), now));
                let workflow: Option<String> = sqlx::query_scalar(
                    "UPDATE sessions SET status = 'failed', error = $2, finished_at_us = $3, updated_at_us = $3 \
                     WHERE session_id = $1 AND status IN ('started', 'running') RETURNING workflow_id",
                )
                .bind(&run.session_id)
                .bind(&why)
                .bind(now)
                .fetch_optional(&mut *conn)
                .await?;
                if let Some(workflow) = workflow {
                    events.push(NewEvent::session(
                        &run.agent_id,
                        &run.session_id,
                        &workflow,
                        SessionStatus::Failed,
                        Some(&why),
                        now,
                    ));
                }
            }
            Ok(())
        }

        /// Store a definition whose id is not stored yet; `false` (and
        /// nothing changed) when one is.
        async fn insert_definition(
            conn: &mut Conn,
            def: &$crate::domain::workflow::WorkflowDefinition,
            now: i64,
        ) -> $crate::store::StoreResult<bool> {
            let inserted = sqlx::query(
                "INSERT INTO workflow_definitions (workflow_id, name, definition, created_at_us, updated_at_us) \
                 VALUES ($1, $2, $3, $4, $4) ON CONFLICT (workflow_id) DO NOTHING",
            )
            .bind(&def.id)
            .bind(&def.name)
            .bind(def.canonical_json())
            .bind(now)
            .execute(&mut *conn)
            .await?
            .rows_affected();
            Ok(inserted == 1)
        }

        /// Store a definition inside the caller's transaction (see
        /// `WorkflowStore::put_definition`).
        async fn put_definition_in(
            conn: &mut Conn,
            def: &$crate::domain::workflow::WorkflowDefinition,
            replace: bool,
            now: i64,
        ) -> $crate::store::StoreResult<$crate::store::PutOutcome> {
            use $crate::store::{PutOutcome, StoreError};
            let canonical = def.canonical_json();
            let outcome = if insert_definition(conn, def, now).await? {
                PutOutcome::Created
            } else {
                let stored: String =
                    sqlx::query_scalar("SELECT definition FROM workflow_definitions WHERE workflow_id = $1")
                        .bind(&def.id)
                        .fetch_one(&mut *conn)
                        .await?;
                if stored == canonical {
                    PutOutcome::Unchanged
                } else if replace {
                    sqlx::query(
                        "UPDATE workflow_definitions SET name = $2, definition = $3, updated_at_us = $4 \
                         WHERE workflow_id = $1",
                    )
                    .bind(&def.id)
                    .bind(&def.name)
                    .bind(&canonical)
                    .bind(now)
                    .execute(&mut *conn)
                    .await?;
                    PutOutcome::Replaced
                } else {
                    return Err(StoreError::Conflict(format!(
                        "a different workflow definition with id '{}' already exists",
                        def.id
                    )));
                }
            };
            Ok(outcome)
        }

        fn session_from_row(
            row: &<$db as sqlx::Database>::Row,
        ) -> $crate::store::StoreResult<$crate::store::SessionRecord> {
            use sqlx::Row;
            let status: String = row.try_get(3)?;
            Ok($crate::store::SessionRecord {
                session_id: row.try_get(0)?,
                workflow_id: row.try_get(1)?,
                agent_id: row.try_get(2)?,
                status: $crate::domain::workflow::SessionStatus::parse(&status)
                    .ok_or_else(|| $crate::store::StoreError::Internal(format!("unknown session status {status}")))?,
                result: $crate::store::decode_details(row.try_get(4)?),
                error: row.try_get(5)?,
                created_at: row.try_get(6)?,
                updated_at: row.try_get(7)?,
                finished_at: row.try_get(8)?,
                runs: Vec::new(),
            })
        }

        fn run_from_row(row: &<$db as sqlx::Database>::Row) -> $crate::store::StoreResult<$crate::store::RunRecord> {
            use sqlx::Row;
            let status: String = row.try_get(3)?;
            Ok($crate::store::RunRecord {
                run_id: row.try_get(0)?,
                task_id: row.try_get(1)?,
                task_name: row.try_get(2)?,
                status: $crate::domain::workflow::RunStatus::parse(&status)
                    .ok_or_else(|| $crate::store::StoreError::Internal(format!("unknown run status {status}")))?,
                attempts: row.try_get(4)?,
                max_retries: row.try_get(5)?,
                payload: $crate::store::decode_details(row.try_get(6)?),
                due_at: row.try_get(7)?,
                dispatched_at: row.try_get(8)?,
                started_at: row.try_get(9)?,
                finished_at: row.try_get(10)?,
                last_error: row.try_get(11)?,
                result: $crate::store::decode_details(row.try_get(12)?),
            })
        }

        #[async_trait::async_trait]
        impl $crate::store::WorkflowStore for $store {
            async fn put_definition(
                &self,
                def: &$crate::domain::workflow::WorkflowDefinition,
                replace: bool,
                now: i64,
            ) -> $crate::store::StoreResult<$crate::store::PutOutcome> {
                let mut tx = self.writer().begin().await?;
                let outcome = put_definition_in(&mut tx, def, replace, now).await?;
                tx.commit().await?;
                Ok(outcome)
            }

            async fn get_definition(
                &self,
                id: &str,
            ) -> $crate::store::StoreResult<$crate::domain::workflow::WorkflowDefinition> {
                let text: Option<String> =
                    sqlx::query_scalar("SELECT definition FROM workflow_definitions WHERE workflow_id = $1")
                        .bind(id)
                        .fetch_optional(self.reader())
                        .await?;
                let text = text.ok_or_else(|| $crate::store::StoreError::not_found($crate::store::Entity::WorkflowDefinition, id))?;
                serde_json::from_str(&text).map_err(|e| $crate::store::StoreError::Internal(e.to_string()))
            }

            async fn list_definitions(
                &self,
            ) -> $crate::store::StoreResult<Vec<$crate::domain::workflow::WorkflowDefinition>> {
                let rows: Vec<String> =
                    sqlx::query_scalar("SELECT definition FROM workflow_definitions ORDER BY workflow_id")
                        .fetch_all(self.reader())
                        .await?;
                rows.iter()
                    .map(|t| serde_json::from_str(t).map_err(|e| $crate::store::StoreError::Internal(e.to_string())))
                    .collect()
            }

            async fn delete_definition(&self, id: &str) -> $crate::store::StoreResult<()> {
                use $crate::store::StoreError;
                let mut tx = self.writer().begin().await?;
                let busy: Option<String> = sqlx::query_scalar(
                    "SELECT session_id FROM sessions WHERE workflow_id = $1 AND status IN ('started', 'running') LIMIT 1",
                )
                .bind(id)
                .fetch_optional(&mut *tx)
                .await?;
                if let Some(session) = busy {
                    return Err(StoreError::Conflict(format!(
                        "workflow definition '{id}' is in use by unfinished session {session}"
                    )));
                }
                let deleted = sqlx::query("DELETE FROM workflow_definitions WHERE workflow_id = $1")
                    .bind(id)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                if deleted == 0 {
                    return Err(StoreError::not_found($crate::store::Entity::WorkflowDefinition, id));
                }
                tx.commit().await?;
                Ok(())
            }

            async fn create_session(&self, s: &$crate::store::NewSession, now: i64) -> $crate::store::StoreResult<()> {
                let mut tx = self.writer().begin().await?;
                let exists: Option<i32> =
                    sqlx::query_scalar("SELECT 1 FROM agents WHERE agent_id = $1 AND deregistered_at_us IS NULL")
                        .bind(s.agent_id.as_str())
                        .fetch_optional(&mut *tx)
                        .await?;
                if exists.is_none() {
                    return Err($crate::store::StoreError::agent_not_found(&s.agent_id));
                }
                if s.store_definition {
                    // Contract 1.4: an inline definition is stored when its
                    // id is new; one that differs from the stored one runs
                    // as sent (the session keeps it), the stored one left
                    // as it is. The old service's load scripts send theirs
                    // on every trigger.
                    insert_definition(&mut tx, &s.definition, now).await?;
                }
                let (status, finished) = match s.first_run {
                    Some(_) => ($crate::domain::workflow::SessionStatus::Started, None),
                    None => ($crate::domain::workflow::SessionStatus::Completed, Some(now)),
                };
                let mut events = vec![$crate::domain::event::NewEvent::session(
                    s.agent_id.as_str(),
                    &s.session_id,
                    &s.definition.id,
                    status,
                    None,
                    now,
                )];
                sqlx::query(
                    "INSERT INTO sessions (session_id, workflow_id, agent_id, definition, status, \
                     created_at_us, updated_at_us, finished_at_us) VALUES ($1, $2, $3, $4, $5, $6, $6, $7)",
                )
                .bind(&s.session_id)
                .bind(&s.definition.id)
                .bind(s.agent_id.as_str())
                .bind(s.definition.canonical_json())
                .bind(status.as_str())
                .bind(now)
                .bind(finished)
                .execute(&mut *tx)
                .await?;
                if let Some(run) = &s.first_run {
                    insert_run(&mut tx, &s.session_id, s.agent_id.as_str(), run, now, &mut events).await?;
                }
                let indexed = flush_events(&mut tx, &events).await?;
                tx.commit().await?;
                self.events_committed(&events, &indexed);
                Ok(())
            }

            async fn get_session(&self, id: &str) -> $crate::store::StoreResult<$crate::store::SessionRecord> {
                use $crate::store::workflow_sql::*;
                let mut conn = self.reader().acquire().await?;
                let row = sqlx::query(&format!("SELECT {SESSION_COLUMNS} FROM sessions WHERE session_id = $1"))
                    .bind(id)
                    .fetch_optional(&mut *conn)
                    .await?
                    .ok_or_else(|| $crate::store::StoreError::not_found($crate::store::Entity::Session, id))?;
                let mut session = session_from_row(&row)?;
                let runs = sqlx::query(&format!(
                    "SELECT {RUN_COLUMNS} FROM task_runs WHERE session_id = $1 ORDER BY position, created_at_us"
                ))
                .bind(id)
                .fetch_all(&mut *conn)
                .await?;
                session.runs = runs.iter().map(run_from_row).collect::<Result<_, _>>()?;
                Ok(session)
            }

            async fn list_sessions(
                &self,
                q: &$crate::store::SessionQuery,
            ) -> $crate::store::StoreResult<Vec<$crate::store::SessionRecord>> {
                use $crate::store::workflow_sql::*;
                let mut sql = format!("SELECT {SESSION_COLUMNS} FROM sessions WHERE agent_id = $1");
                let mut binds: Vec<&str> = vec![q.agent_id.as_str()];
                if let Some(status) = q.status {
                    binds.push(status.as_str());
                    sql.push_str(&format!(" AND status = ${}", binds.len()));
                }
                if let Some(before) = &q.before {
                    binds.push(before);
                    sql.push_str(&format!(" AND session_id < ${}", binds.len()));
                }
                sql.push_str(&format!(" ORDER BY session_id DESC LIMIT ${}", binds.len() + 1));
                let mut query = sqlx::query(&sql);
                for b in binds {
                    query = query.bind(b);
                }
                let rows = query.bind(i64::from(q.limit)).fetch_all(self.reader()).await?;
                rows.iter().map(session_from_row).collect()
            }

            async fn cancel_session(
                &self,
                id: &str,
                now: i64,
            ) -> $crate::store::StoreResult<$crate::domain::workflow::SessionStatus> {
                use $crate::domain::workflow::SessionStatus;
                use $crate::store::StoreError;
                use $crate::domain::event::{NewEvent, TaskRef};
                use $crate::domain::workflow::RunStatus;
                let mut tx = self.writer().begin().await?;
                let cancelled: Option<(String, String)> = sqlx::query_as(
                    "UPDATE sessions SET status = 'cancelled', finished_at_us = $2, updated_at_us = $2, \
                     error = 'cancelled by operator' WHERE session_id = $1 AND status IN ('started', 'running') \
                     RETURNING agent_id, workflow_id",
                )
                .bind(id)
                .bind(now)
                .fetch_optional(&mut *tx)
                .await?;
                let Some((agent, workflow)) = cancelled else {
                    let status: Option<String> = sqlx::query_scalar("SELECT status FROM sessions WHERE session_id = $1")
                        .bind(id)
                        .fetch_optional(&mut *tx)
                        .await?;
                    return match status.as_deref().and_then(SessionStatus::parse) {
                        None => Err(StoreError::not_found($crate::store::Entity::Session, id)),
                        Some(SessionStatus::Cancelled) => Ok(SessionStatus::Cancelled),
                        Some(other) => Err(StoreError::Conflict(format!(
                            "session {id} already {} and cannot be cancelled",
                            other.as_str()
                        ))),
                    };
                };
                let runs: Vec<(String, String, i64)> = sqlx::query_as(
                    "UPDATE task_runs SET status = 'cancelled', finished_at_us = $2, lease_owner = NULL \
                     WHERE session_id = $1 AND status IN ('queued', 'dispatching', 'dispatched', 'running') \
                     RETURNING run_id, task_id, attempts",
                )
                .bind(id)
                .bind(now)
                .fetch_all(&mut *tx)
                .await?;
                let mut events: Vec<NewEvent> = runs
                    .iter()
                    .map(|(run_id, task_id, attempt)| {
                        let task = TaskRef { run_id, task_id, session_id: id, agent_id: &agent, attempt: *attempt };
                        NewEvent::task(task, RunStatus::Cancelled, None, now)
                    })
                    .collect();
                events.push(NewEvent::session(
                    &agent,
                    id,
                    &workflow,
                    SessionStatus::Cancelled,
                    Some("cancelled by operator"),
                    now,
                ));
                let indexed = flush_events(&mut tx, &events).await?;
                tx.commit().await?;
                self.events_committed(&events, &indexed);
                Ok(SessionStatus::Cancelled)
            }

            async fn claim_due_runs(
                &self,
                owner: &str,
                now: i64,
                lease_until: i64,
                limit: u32,
                allow_unknown: bool,
            ) -> $crate::store::StoreResult<Vec<$crate::store::ClaimedRun>> {
                use $crate::store::workflow_sql::*;
                type Candidate = (String, String, String, String, String, String, i64, String);
                let sql = format!("{}{}", CLAIM_CANDIDATES.as_str(), $claim_lock);
                let live = self.rules().liveness;
                let mut tx = self.writer().begin().await?;
                let candidates: Vec<Candidate> = sqlx::query_as(&sql)
                    .bind(now)
                    .bind(allow_unknown)
                    .bind(i64::from(limit))
                    .bind(live.ttl_secs)
                    .bind(live.grace_secs)
                    .fetch_all(&mut *tx)
                    .await?;
                let mut claimed = Vec::new();
                let mut events = Vec::new();
                let mut agents = std::collections::HashSet::new();
                for c in candidates {
                    // One run per agent: the first due wins this round.
                    if !agents.insert(c.3.clone()) {
                        continue;
                    }
                    // Each claim is its own fencing token: a delivery's late
                    // answer is recorded only against the claim it was sent
                    // under, never against a newer claim of the same run, even
                    // by the same dispatcher.
                    let claim = format!("{owner}/{}", uuid::Uuid::new_v4().simple());
                    let n = sqlx::query(CLAIM_ONE)
                        .bind(&c.0)
                        .bind(&claim)
                        .bind(lease_until)
                        .bind(now)
                        .execute(&mut *tx)
                        .await;
                    match n {
                        Ok(r) if r.rows_affected() == 1 => {
                            let task = $crate::domain::event::TaskRef {
                                run_id: &c.0,
                                task_id: &c.7,
                                session_id: &c.1,
                                agent_id: &c.3,
                                attempt: c.6 + 1,
                            };
                            events.push($crate::domain::event::NewEvent::task(
                                task,
                                $crate::domain::workflow::RunStatus::Dispatching,
                                None,
                                now,
                            ));
                            claimed.push($crate::store::ClaimedRun {
                                run_id: c.0,
                                session_id: c.1,
                                task_name: c.2,
                                agent_id: c.3,
                                contact_endpoint: c.4,
                                payload: c.5,
                                attempt: c.6 + 1,
                                claim,
                            })
                        }
                        Ok(_) => {}
                        Err(e) => {
                            return match $crate::store::StoreError::from(e) {
                                // Another replica put a run of this agent in
                                // flight first; nothing is claimed this round.
                                $crate::store::StoreError::Conflict(_) => Ok(Vec::new()),
                                other => Err(other),
                            };
                        }
                    }
                }
                let indexed = flush_events(&mut tx, &events).await?;
                tx.commit().await?;
                self.events_committed(&events, &indexed);
                Ok(claimed)
            }

            async fn record_dispatch(
                &self,
                run_id: &str,
                claim: &str,
                attempt: i64,
                now: i64,
                outcome: &$crate::store::DispatchOutcome,
            ) -> $crate::store::StoreResult<()> {
                use $crate::domain::event::NewEvent;
                use $crate::domain::run_rules::{delivery_decision, Delivery, DeliveryDecision};
                use $crate::domain::workflow::{RunStatus, SessionStatus};
                use $crate::store::workflow_sql::*;
                use $crate::store::DispatchOutcome;
                let mut events = Vec::new();
                let mut tx = self.writer().begin().await?;
                // The attempt this dispatcher claimed, whatever the agent's
                // reports did to it since. A claim that ran out and was taken
                // over by another dispatcher is found no more.
                let sql = format!(
                    "SELECT {IN_FLIGHT_COLUMNS} FROM task_runs \
                     WHERE run_id = $1 AND lease_owner = $2 AND attempts = $3"
                );
                let row: Option<InFlightRow> = sqlx::query_as(&sql)
                    .bind(run_id)
                    .bind(claim)
                    .bind(attempt)
                    .fetch_optional(&mut *tx)
                    .await?;
                let Some(run) = row.map(InFlight::from_row) else {
                    return Ok(());
                };
                let (delivery, error, retryable, not_before) = match outcome {
                    DispatchOutcome::Accepted => (Delivery::Accepted, None, true, None),
                    DispatchOutcome::Retry { error, not_before } => (Delivery::Failed, Some(error.as_str()), true, *not_before),
                    DispatchOutcome::Fail { error } => (Delivery::Failed, Some(error.as_str()), false, None),
                };
                let mut session_running = false;
                match delivery_decision(&run.view(), delivery, now) {
                    DeliveryDecision::Sent { deadline } | DeliveryDecision::StillRunning { deadline } => {
                        let sent = sqlx::query(
                            "UPDATE task_runs SET \
                             status = CASE WHEN status = 'dispatching' THEN 'dispatched' ELSE status END, \
                             due_at_us = $2, lease_owner = NULL \
                             WHERE run_id = $1 AND status IN ('dispatching', 'running')",
                        )
                        .bind(run_id)
                        .bind(deadline)
                        .execute(&mut *tx)
                        .await?
                        .rows_affected();
                        if sent == 1 && run.status == RunStatus::Dispatching {
                            events.push(NewEvent::task(run.task_ref(), RunStatus::Dispatched, None, now));
                        }
                        session_running = sent == 1;
                    }
                    DeliveryDecision::NoteError => {
                        sqlx::query("UPDATE task_runs SET last_error = $2, lease_owner = NULL WHERE run_id = $1")
                            .bind(run_id)
                            .bind(error)
                            .execute(&mut *tx)
                            .await?;
                        // Watchers see the failed delivery on the run's
                        // unchanged status.
                        events.push(NewEvent::task(run.task_ref(), run.status, error, now));
                        session_running = run.status == RunStatus::Running;
                    }
                    DeliveryDecision::FailAttempt => {
                        let failure = Failure {
                            reason: error.unwrap_or_default(),
                            guard: CLAIMED,
                            retryable,
                            not_before,
                        };
                        fail_attempt(&mut tx, &run, &failure, now, self.rules(), &mut events).await?;
                    }
                    DeliveryDecision::Nothing => {}
                }
                if session_running {
                    let workflow: Option<String> = sqlx::query_scalar(
                        "UPDATE sessions SET status = 'running', updated_at_us = $2 \
                         WHERE session_id = $1 AND status = 'started' RETURNING workflow_id",
                    )
                    .bind(&run.session_id)
                    .bind(now)
                    .fetch_optional(&mut *tx)
                    .await?;
                    if let Some(workflow) = workflow {
                        events.push(NewEvent::session(&run.agent_id, &run.session_id, &workflow, SessionStatus::Running, None, now));
                    }
                }
                sqlx::query("UPDATE task_runs SET lease_owner = NULL WHERE run_id = $1 AND lease_owner = $2")
                    .bind(run_id)
                    .bind(claim)
                    .execute(&mut *tx)
                    .await?;
                let indexed = flush_events(&mut tx, &events).await?;
                tx.commit().await?;
                self.events_committed(&events, &indexed);
                Ok(())
            }

            async fn expire_overdue(&self, now: i64) -> $crate::store::StoreResult<u64> {
                use $crate::domain::event::{NewEvent, TaskRef};
                use $crate::domain::workflow::RunStatus;
                use $crate::store::workflow_sql::*;
                let mut tx = self.writer().begin().await?;
                let recovered: Vec<(String, String, String, String, i64, Option<String>)> =
                    sqlx::query_as(RECOVER_LEASES).bind(now).fetch_all(&mut *tx).await?;
                let mut touched = recovered.len() as u64;
                let mut events: Vec<NewEvent> = recovered
                    .iter()
                    .map(|(run_id, task_id, session_id, agent_id, attempt, error)| {
                        let task = TaskRef { run_id, task_id, session_id, agent_id, attempt: *attempt };
                        NewEvent::task(task, RunStatus::Queued, error.as_deref(), now)
                    })
                    .collect();
                let sql = format!(
                    "SELECT {IN_FLIGHT_COLUMNS} FROM task_runs r \
                     WHERE status IN ('dispatched', 'running') AND due_at_us <= $1 LIMIT 256{}",
                    $claim_lock
                );
                let overdue: Vec<InFlightRow> = sqlx::query_as(&sql).bind(now).fetch_all(&mut *tx).await?;
                for row in overdue {
                    let run = InFlight::from_row(row);
                    let reason = $crate::domain::run_rules::timeout_reason(&run.view());
                    let failure = Failure { reason: &reason, guard: SENT, retryable: true, not_before: None };
                    fail_attempt(&mut tx, &run, &failure, now, self.rules(), &mut events).await?;
                    touched += 1;
                }
                // A retry its agent was never free to take ends the session
                // rather than waiting for ever.
                let sql = format!(
                    "SELECT {IN_FLIGHT_COLUMNS} FROM task_runs r WHERE {} LIMIT 256{}",
                    $crate::domain::run_rules::retry_wait_over_sql("$1"),
                    $claim_lock
                );
                let unsent: Vec<InFlightRow> = sqlx::query_as(&sql).bind(now).fetch_all(&mut *tx).await?;
                for row in unsent {
                    let run = InFlight::from_row(row);
                    let reason = $crate::domain::run_rules::unsent_retry_reason(&run.view());
                    let failure = Failure { reason: &reason, guard: QUEUED, retryable: false, not_before: None };
                    fail_attempt(&mut tx, &run, &failure, now, self.rules(), &mut events).await?;
                    touched += 1;
                }
                let indexed = flush_events(&mut tx, &events).await?;
                tx.commit().await?;
                self.events_committed(&events, &indexed);
                Ok(touched)
            }

            async fn count_sessions_by_status(&self) -> $crate::store::StoreResult<Vec<(String, i64)>> {
                Ok(sqlx::query_as($crate::store::workflow_sql::COUNT_SESSIONS_BY_STATUS)
                    .fetch_all(self.reader())
                    .await?)
            }

            async fn count_queued_runs(&self) -> $crate::store::StoreResult<i64> {
                Ok(sqlx::query_scalar($crate::store::workflow_sql::COUNT_QUEUED_RUNS)
                    .fetch_one(self.reader())
                    .await?)
            }
        }
    };
}

pub(super) use impl_workflow_store;
