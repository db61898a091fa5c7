//! How a task run moves on inside the transaction of what moved it: a
//! state report (`advance_on_report`), a finished run (`complete_run`: the
//! next task or the session's end), a failed attempt (`fail_attempt`: a
//! retry after backoff, or the run and its session fail). The rules are
//! `domain::run_rules`; these load what a rule needs and apply its decision.

use sqlx::{ColumnIndex, Decode, Encode, Executor, IntoArguments, Type};

use super::*;
use crate::domain::event::{NewEvent, SessionEnd, TaskRef};
use crate::domain::run_rules::{
    after_completion, after_failure, agent_error_reason, concerned_run, mention, report_effect,
    AfterFailure, FailedAttempt, ReportEffect, ReportView,
};
use crate::domain::state::StateReport;
use crate::domain::workflow::{RunStatus, SessionStatus, WorkflowDefinition};
use crate::store::sql::backend::RowsAffected;
use crate::store::sql::{Backend, SqlStore};
use crate::store::{EngineRules, NewRun, StoreError, StoreResult};

/// The `output` of a finishing report's details, as JSON text
/// (docs/api.md §3.4).
fn output_of(details: &str) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Output<'a> {
        #[serde(borrow)]
        output: Option<&'a serde_json::value::RawValue>,
    }
    serde_json::from_str::<Output<'_>>(details)
        .ok()
        .and_then(|o| o.output)
        .map(|o| o.get().to_owned())
}

impl<B> SqlStore<B>
where
    B: Backend,
    for<'c> &'c mut B::Connection: Executor<'c, Database = B>,
    for<'q> B::Arguments<'q>: IntoArguments<'q, B>,
    usize: ColumnIndex<B::Row>,
    for<'q> &'q str: Encode<'q, B> + Type<B>,
    for<'q> Option<&'q str>: Encode<'q, B>,
    for<'q> String: Encode<'q, B> + Decode<'q, B> + Type<B>,
    for<'q> i64: Encode<'q, B> + Decode<'q, B> + Type<B>,
    for<'q> Option<i64>: Encode<'q, B>,
    for<'q> i32: Decode<'q, B> + Type<B>,
    for<'q> bool: Encode<'q, B> + Type<B>,
{
    pub(in crate::store) async fn insert_run(
        conn: &mut B::Connection,
        session_id: &str,
        agent_id: Option<&str>,
        run: &NewRun,
        now: i64,
        events: &mut Vec<NewEvent>,
    ) -> StoreResult<()> {
        let task = TaskRef {
            run_id: &run.run_id,
            task_id: &run.task_id,
            session_id,
            agent_id: agent_id.unwrap_or_default(),
            attempt: 0,
        };
        events.push(NewEvent::task(task, RunStatus::Queued, None, now));
        let inputs_from = (!run.inputs_from.is_empty())
            .then(|| serde_json::to_string(&run.inputs_from).unwrap_or_default());
        sqlx::query(INSERT_RUN)
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
            .bind(run.deps_left)
            .bind(run.capability.as_deref())
            .bind(inputs_from.as_deref())
            .bind(run.queue_timeout_secs)
            .execute(&mut *conn)
            .await?;
        Ok(())
    }

    /// Take session `id`'s row lock, as every transaction does before it
    /// moves one of the session's runs: a run's row is waited for only by
    /// a transaction holding its session's, so none holds a run while
    /// waiting for its session (docs/operations.md, "PostgreSQL under
    /// load"). A sweep does not `wait`: `false` when another transaction
    /// holds the session, and the sweep leaves its runs for the next one.
    /// Where one writer serialises every transaction (SQLite), there is
    /// nothing to take.
    pub(in crate::store) async fn lock_session(
        conn: &mut B::Connection,
        id: &str,
        wait: bool,
    ) -> StoreResult<bool> {
        if B::SESSION_LOCK.is_empty() {
            return Ok(true);
        }
        let sql = format!(
            "SELECT 1 FROM sessions WHERE session_id = $1{}{}",
            B::SESSION_LOCK,
            if wait { "" } else { " SKIP LOCKED" }
        );
        let got: Option<i32> = sqlx::query_scalar(&sql)
            .bind(id)
            .fetch_optional(&mut *conn)
            .await?;
        Ok(got.is_some())
    }

    /// Which of `agents` have a task in flight, and which have one
    /// queued.
    pub(in crate::store) async fn agents_with_runs(
        conn: &mut B::Connection,
        agents: &[&str],
    ) -> StoreResult<AgentRuns> {
        let mut runs = AgentRuns::default();
        for chunk in agents.chunks(AGENT_CHUNK) {
            let sql = agent_runs_sql(&super::super::in_list(chunk.len()), ("1", "0"), "");
            let mut q = sqlx::query_as::<_, (i32, String, Option<String>)>(&sql);
            for a in chunk {
                q = q.bind(*a);
            }
            for (in_flight, agent, session) in q.fetch_all(&mut *conn).await? {
                runs.note(agent, in_flight == 1, session);
            }
        }
        let unassigned: Option<i32> = sqlx::query_scalar(
            "SELECT 1 FROM task_runs WHERE status = 'queued' AND agent_id IS NULL LIMIT 1",
        )
        .fetch_optional(&mut *conn)
        .await?;
        runs.unassigned = unassigned.is_some();
        Ok(runs)
    }

    /// Apply `reports` (each from a different agent) to the runs they
    /// concern, as [`advance_on_report`](Self::advance_on_report) does, in
    /// the order of those runs' sessions (`runs.session_of`); whether any
    /// run moved on.
    ///
    /// Moving a run on locks its session's row. Where transactions write at
    /// once (PostgreSQL), two batches that took two sessions' rows in
    /// opposite orders deadlocked: their agents are locked in one order,
    /// but a pool's parallel tasks put one session's runs on agents far
    /// apart in it. In session order, every batch takes session rows the
    /// same way round.
    pub(in crate::store) async fn advance_in_session_order(
        conn: &mut B::Connection,
        runs: &AgentRuns,
        mut reports: Vec<&StateReport>,
        rules: &EngineRules,
        events: &mut Vec<NewEvent>,
    ) -> StoreResult<bool> {
        reports.sort_by_key(|r| runs.session_of.get(r.agent_id.as_str()));
        let before = events.len();
        for r in reports {
            Self::advance_on_report(conn, r, rules, events).await?;
        }
        Ok(events.len() > before)
    }

    /// Apply a state report to the agent's run it concerns: the engine
    /// decides (`run_rules::report_effect`), this applies.
    pub(in crate::store) async fn advance_on_report(
        conn: &mut B::Connection,
        r: &StateReport,
        rules: &EngineRules,
        events: &mut Vec<NewEvent>,
    ) -> StoreResult<()> {
        let sql = format!(
            "SELECT {IN_FLIGHT_COLUMNS} FROM task_runs WHERE agent_id = $1 \
             AND (status IN {in_flight} OR (status = 'queued' AND attempts > 0))",
            in_flight = IN_FLIGHT.as_str()
        );
        let rows: Vec<InFlightRow> = sqlx::query_as(&sql)
            .bind(r.agent_id.as_str())
            .fetch_all(&mut *conn)
            .await?;
        let runs: Vec<InFlight> = rows.into_iter().map(InFlight::from_row).collect();
        let seen: Vec<_> = runs
            .iter()
            .map(|run| {
                let m = mention(
                    r.details.as_deref(),
                    &run.run_id,
                    &run.task_id,
                    &run.session_id,
                );
                (run.view(), m)
            })
            .collect();
        let Some(i) = concerned_run(&seen) else {
            return Ok(());
        };
        let run = &runs[i];
        let other_in_flight = runs
            .iter()
            .enumerate()
            .any(|(j, o)| j != i && o.status.in_flight());
        let report = ReportView {
            state: &r.state,
            timestamp: r.timestamp,
            received_at: r.received_at,
        };
        let effect = report_effect(&seen[i].0, seen[i].1, &report, other_in_flight);
        if effect == ReportEffect::None {
            return Ok(());
        }
        Self::lock_session(conn, &run.session_id, true).await?;
        match effect {
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
                    events.push(NewEvent::task(
                        run.task_ref(),
                        RunStatus::Running,
                        None,
                        r.received_at,
                    ));
                }
                Ok(())
            }
            ReportEffect::Completed => {
                Self::complete_run(
                    conn,
                    run,
                    r.details.as_ref().map(|d| d.get()),
                    r.received_at,
                    rules,
                    events,
                )
                .await
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
                let failure = Failure {
                    reason: &reason,
                    guard: IN_FLIGHT.as_str(),
                    retryable: true,
                    not_before: None,
                };
                Self::fail_attempt(conn, run, &failure, r.received_at, rules, events).await
            }
        }
    }

    /// The run is done: store its result and output, then release the
    /// tasks that depended on it, or complete the session when it was the
    /// last unfinished run (docs/api.md §3.5).
    pub(in crate::store) async fn complete_run(
        conn: &mut B::Connection,
        run: &InFlight,
        details: Option<&str>,
        now: i64,
        _rules: &EngineRules,
        events: &mut Vec<NewEvent>,
    ) -> StoreResult<()> {
        let output = details.and_then(output_of);
        // The claim (`lease_owner`) stays: a delivery still on its way
        // records its outcome on this attempt when it returns.
        let done = sqlx::query(&format!(
            "UPDATE task_runs SET status = 'completed', result = $2, finished_at_us = $3, output = $4 \
             WHERE run_id = $1 AND status IN {unfinished}",
            unfinished = UNFINISHED_RUNS.as_str()
        ))
        .bind(&run.run_id)
        .bind(details)
        .bind(now)
        .bind(output.as_deref())
        .execute(&mut *conn)
        .await?
        .rows_affected();
        if done == 0 {
            return Ok(());
        }
        events.push(NewEvent::task(
            run.task_ref(),
            RunStatus::Completed,
            None,
            now,
        ));
        // Locks the session row and re-checks it is still unfinished, so
        // a concurrent cancel cannot be followed by a new task.
        let definition: Option<String> = sqlx::query_scalar(&format!(
            "UPDATE sessions SET updated_at_us = $2 \
             WHERE session_id = $1 AND status IN {unfinished} RETURNING definition",
            unfinished = UNFINISHED_SESSIONS.as_str()
        ))
        .bind(&run.session_id)
        .bind(now)
        .fetch_optional(&mut *conn)
        .await?;
        let Some(definition) = definition else {
            return Ok(());
        };
        let def: WorkflowDefinition = serde_json::from_str(&definition).map_err(|e| {
            StoreError::Internal(format!(
                "stored definition of session {}: {e}",
                run.session_id
            ))
        })?;
        let unfinished: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM task_runs WHERE session_id = $1 AND status <> 'completed'",
        )
        .bind(&run.session_id)
        .fetch_one(&mut *conn)
        .await?;
        let next = after_completion(&def, &run.task_id, usize::try_from(unfinished).unwrap_or(0));
        for task in &next.dependents {
            // The last dependency done: due after its delay from now.
            sqlx::query(
                "UPDATE task_runs SET deps_left = deps_left - 1, \
                 due_at_us = CASE WHEN deps_left = 1 THEN $3 ELSE due_at_us END \
                 WHERE session_id = $1 AND task_id = $2 AND status = 'queued' AND deps_left > 0",
            )
            .bind(&run.session_id)
            .bind(&task.task_id)
            .bind(NewRun::released_due(task, now))
            .execute(&mut *conn)
            .await?;
        }
        if !next.session_completed {
            return Ok(());
        }
        let created_at: Option<i64> = sqlx::query_scalar(&format!(
            "UPDATE sessions SET status = 'completed', result = $2, finished_at_us = $3, \
             updated_at_us = $3 WHERE session_id = $1 AND status IN {unfinished} \
             RETURNING created_at_us",
            unfinished = UNFINISHED_SESSIONS.as_str()
        ))
        .bind(&run.session_id)
        .bind(details)
        .bind(now)
        .fetch_optional(&mut *conn)
        .await?;
        if let Some(created_at) = created_at {
            let end = SessionEnd {
                workflow_id: def.id.clone(),
                outcome: SessionStatus::Completed,
                created_at,
                finished_at: now,
            };
            events.push(NewEvent::session_ended(
                &run.agent_id,
                &run.session_id,
                end,
                None,
            ));
        }
        Ok(())
    }

    /// An attempt failed: queue a retry after backoff (or not before
    /// `not_before`), or fail the run and its session when retries are
    /// spent or the failure is not retryable.
    pub(in crate::store) async fn fail_attempt(
        conn: &mut B::Connection,
        run: &InFlight,
        failure: &Failure<'_>,
        now: i64,
        rules: &EngineRules,
        events: &mut Vec<NewEvent>,
    ) -> StoreResult<()> {
        let Failure {
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
        // The rule is pure; its jitter comes from the source the engine
        // handed over. The claim (`lease_owner`) stays, as in
        // `complete_run`.
        let why = match after_failure(&attempt, &rules.backoff, now, rules.jitter.draw()) {
            AfterFailure::Retry { due } => {
                // A pool's retry may go to another agent: it holds none
                // until claimed again (a per-agent session keeps its own).
                let queued = sqlx::query(&format!(
                    "UPDATE task_runs SET status = 'queued', due_at_us = $2, last_error = $3, \
                     {RELEASE_POOL_AGENT} WHERE run_id = $1 AND status IN {guard}"
                ))
                .bind(&run.run_id)
                .bind(due)
                .bind(reason)
                .execute(&mut *conn)
                .await?
                .rows_affected();
                if queued == 1 {
                    events.push(NewEvent::task(
                        run.task_ref(),
                        RunStatus::Queued,
                        Some(reason),
                        now,
                    ));
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
            events.push(NewEvent::task(
                run.task_ref(),
                RunStatus::Failed,
                Some(reason),
                now,
            ));
            let ended: Option<(String, i64)> = sqlx::query_as(&format!(
                "UPDATE sessions SET status = 'failed', error = $2, finished_at_us = $3, \
                 updated_at_us = $3 WHERE session_id = $1 AND status IN {unfinished} \
                 RETURNING workflow_id, created_at_us",
                unfinished = UNFINISHED_SESSIONS.as_str()
            ))
            .bind(&run.session_id)
            .bind(&why)
            .bind(now)
            .fetch_optional(&mut *conn)
            .await?;
            if let Some((workflow_id, created_at)) = ended {
                // The session failed: its other unfinished runs are
                // cancelled, in flight or not; a report about one finds
                // it final and changes nothing (docs/workflows.md).
                let others: Vec<(String, String, i64, Option<String>)> = sqlx::query_as(&format!(
                    "UPDATE task_runs SET status = 'cancelled', finished_at_us = $2, lease_owner = NULL \
                     WHERE session_id = $1 AND status IN {unfinished} \
                     RETURNING run_id, task_id, attempts, agent_id",
                    unfinished = UNFINISHED_RUNS.as_str()
                ))
                .bind(&run.session_id)
                .bind(now)
                .fetch_all(&mut *conn)
                .await?;
                for (run_id, task_id, attempt, agent) in &others {
                    let task = TaskRef {
                        run_id,
                        task_id,
                        session_id: &run.session_id,
                        agent_id: agent.as_deref().unwrap_or_default(),
                        attempt: *attempt,
                    };
                    events.push(NewEvent::task(task, RunStatus::Cancelled, None, now));
                }
                let end = SessionEnd {
                    workflow_id,
                    outcome: SessionStatus::Failed,
                    created_at,
                    finished_at: now,
                };
                events.push(NewEvent::session_ended(
                    &run.agent_id,
                    &run.session_id,
                    end,
                    Some(&why),
                ));
            }
        }
        Ok(())
    }
}
