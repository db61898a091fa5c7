//! The durable queue's side of dispatching: claiming due runs under a
//! lease, recording how a delivery went, and expiring claims and deadlines.

use sqlx::{ColumnIndex, Decode, Encode, Executor, IntoArguments, Type};

use super::*;
use crate::domain::event::{NewEvent, TaskRef};
use crate::domain::run_rules::{delivery_decision, pick_agent, Delivery, DeliveryDecision};
use crate::domain::trace::TraceContext;
use crate::domain::workflow::{RunStatus, SessionStatus};
use crate::store::sql::backend::RowsAffected;
use crate::store::sql::{Backend, SqlStore};
use crate::store::{ClaimedRun, DispatchOutcome, StoreError, StoreResult};

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
    pub(super) async fn claim(
        &self,
        owner: &str,
        now: i64,
        lease_until: i64,
        limit: u32,
        allow_unknown: bool,
    ) -> StoreResult<Vec<ClaimedRun>> {
        type Candidate = (
            String,
            String,
            String,
            String,
            i64,
            String,
            Option<String>,
            Option<String>,
            Option<String>,
        );
        let sql = format!("{}{}", CLAIM_CANDIDATES.as_str(), B::CLAIM_LOCK);
        let live = self.rules().liveness;
        let mut tx = self.writer().begin().await?;
        let free: i64 = sqlx::query_scalar(FREE_AGENTS.as_str())
            .bind(now)
            .bind(allow_unknown)
            .bind(live.ttl_secs)
            .bind(live.grace_secs)
            .bind(i64::from(limit))
            .fetch_one(&mut *tx)
            .await?;
        if free == 0 {
            return Ok(Vec::new());
        }
        let candidates: Vec<Candidate> = sqlx::query_as(&sql)
            .bind(now)
            .bind(allow_unknown)
            .bind(free.min(i64::from(limit)))
            .bind(live.ttl_secs)
            .bind(live.grace_secs)
            .fetch_all(&mut *tx)
            .await?;
        let mut claimed = Vec::new();
        let mut events = Vec::new();
        // Agents given a run this round: one run per agent.
        let mut taken: Vec<String> = Vec::new();
        for c in candidates {
            let free: Vec<(String, String)> = sqlx::query_as(CLAIM_AGENTS.as_str())
                .bind(now)
                .bind(allow_unknown)
                .bind(&c.0)
                .bind(live.ttl_secs)
                .bind(live.grace_secs)
                .fetch_all(&mut *tx)
                .await?;
            let ids: Vec<String> = free.iter().map(|(id, _)| id.clone()).collect();
            let Some((agent, endpoint)) = Self::lock_free_agent(
                &mut tx,
                &free,
                pick_agent(&ids, &taken, self.rules().jitter.draw()),
                &mut taken,
            )
            .await?
            else {
                continue;
            };
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
                .bind(&agent)
                .execute(&mut *tx)
                .await;
            match n {
                Ok(r) if r.rows_affected() == 1 => {
                    let inputs = match &c.8 {
                        Some(from) => Some(Self::inputs(&mut tx, &c.1, from).await?),
                        None => None,
                    };
                    let task = TaskRef {
                        run_id: &c.0,
                        task_id: &c.5,
                        session_id: &c.1,
                        agent_id: &agent,
                        attempt: c.4 + 1,
                    };
                    events.push(NewEvent::task(task, RunStatus::Dispatching, None, now));
                    claimed.push(ClaimedRun {
                        run_id: c.0,
                        session_id: c.1,
                        task_name: c.2,
                        agent_id: agent,
                        contact_endpoint: endpoint,
                        payload: c.3,
                        attempt: c.4 + 1,
                        claim,
                        trace: TraceContext::from_headers(c.6.as_deref(), c.7.as_deref()),
                        inputs,
                    })
                }
                Ok(_) => {}
                Err(e) => {
                    return match StoreError::from(e) {
                        // Another replica put a run of this agent in
                        // flight first; nothing is claimed this round.
                        StoreError::Conflict(_) => Ok(Vec::new()),
                        other => Err(other),
                    };
                }
            }
        }
        let indexed = Self::flush_events(&mut tx, &events).await?;
        tx.commit().await?;
        self.events_committed(&events, &indexed);
        Ok(claimed)
    }

    /// The agent a claim takes, from the free ones (`free`, starting at
    /// `first`, skipping `taken`): the first whose row lock it gets and
    /// that still has nothing in flight. On PostgreSQL another replica's
    /// claim holds its agent's row until it commits, so two replicas never
    /// pick one agent (and the unique index never has to refuse one);
    /// every agent tried is added to `taken`.
    async fn lock_free_agent(
        conn: &mut B::Connection,
        free: &[(String, String)],
        first: Option<usize>,
        taken: &mut Vec<String>,
    ) -> StoreResult<Option<(String, String)>> {
        let Some(first) = first else {
            return Ok(None);
        };
        let lock = format!(
            "SELECT 1 FROM agents a WHERE a.agent_id = $1 \
             AND NOT EXISTS (SELECT 1 FROM task_runs f WHERE f.agent_id = a.agent_id \
                             AND f.status IN {}){}",
            IN_FLIGHT.as_str(),
            B::AGENT_CLAIM_LOCK
        );
        for k in 0..free.len() {
            let (agent, endpoint) = &free[(first + k) % free.len()];
            if taken.contains(agent) {
                continue;
            }
            taken.push(agent.clone());
            let got: Option<i32> = sqlx::query_scalar(&lock)
                .bind(agent)
                .fetch_optional(&mut *conn)
                .await?;
            if got.is_some() {
                return Ok(Some((agent.clone(), endpoint.clone())));
            }
        }
        Ok(None)
    }

    /// The `inputs` of a run of `session` depending on the tasks `from`
    /// (a JSON array of task ids): each one's output, null when it gave
    /// none (docs/api.md §3.4).
    async fn inputs(conn: &mut B::Connection, session: &str, from: &str) -> StoreResult<String> {
        let from: Vec<String> = serde_json::from_str(from)
            .map_err(|e| StoreError::Internal(format!("stored inputs_from: {e}")))?;
        let done: Vec<(String, Option<String>)> = sqlx::query_as(
            "SELECT task_id, output FROM task_runs WHERE session_id = $1 AND status = 'completed'",
        )
        .bind(session)
        .fetch_all(&mut *conn)
        .await?;
        let mut inputs = serde_json::Map::new();
        for task in from {
            let output = done
                .iter()
                .find(|(t, _)| *t == task)
                .and_then(|(_, o)| o.as_deref())
                .and_then(|o| serde_json::from_str(o).ok())
                .unwrap_or(serde_json::Value::Null);
            inputs.insert(task, output);
        }
        Ok(serde_json::Value::Object(inputs).to_string())
    }

    pub(super) async fn record(
        &self,
        run_id: &str,
        claim: &str,
        attempt: i64,
        now: i64,
        outcome: &DispatchOutcome,
    ) -> StoreResult<()> {
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
        Self::lock_session(&mut tx, &run.session_id, true).await?;
        let (delivery, error, retryable, not_before) = match outcome {
            DispatchOutcome::Accepted => (Delivery::Accepted, None, true, None),
            DispatchOutcome::Retry { error, not_before } => {
                (Delivery::Failed, Some(error.as_str()), true, *not_before)
            }
            DispatchOutcome::Fail { error } => {
                (Delivery::Failed, Some(error.as_str()), false, None)
            }
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
                    events.push(NewEvent::task(
                        run.task_ref(),
                        RunStatus::Dispatched,
                        None,
                        now,
                    ));
                }
                session_running = sent == 1;
            }
            DeliveryDecision::NoteError => {
                sqlx::query(
                    "UPDATE task_runs SET last_error = $2, lease_owner = NULL WHERE run_id = $1",
                )
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
                Self::fail_attempt(&mut tx, &run, &failure, now, self.rules(), &mut events).await?;
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
                events.push(NewEvent::session(
                    &run.agent_id,
                    &run.session_id,
                    &workflow,
                    SessionStatus::Running,
                    None,
                    now,
                ));
            }
        }
        sqlx::query(
            "UPDATE task_runs SET lease_owner = NULL WHERE run_id = $1 AND lease_owner = $2",
        )
        .bind(run_id)
        .bind(claim)
        .execute(&mut *tx)
        .await?;
        let indexed = Self::flush_events(&mut tx, &events).await?;
        tx.commit().await?;
        self.events_committed(&events, &indexed);
        Ok(())
    }

    pub(super) async fn expire(&self, now: i64) -> StoreResult<u64> {
        let mut tx = self.writer().begin().await?;
        let recovered: Vec<(String, String, String, String, i64, Option<String>)> =
            sqlx::query_as(&recover_leases_sql(B::CLAIM_LOCK))
                .bind(now)
                .fetch_all(&mut *tx)
                .await?;
        let mut touched = recovered.len() as u64;
        let mut events: Vec<NewEvent> = recovered
            .iter()
            .map(|(run_id, task_id, session_id, agent_id, attempt, error)| {
                let task = TaskRef {
                    run_id,
                    task_id,
                    session_id,
                    agent_id,
                    attempt: *attempt,
                };
                NewEvent::task(task, RunStatus::Queued, error.as_deref(), now)
            })
            .collect();
        let sql = format!(
            "SELECT {IN_FLIGHT_COLUMNS} FROM task_runs r \
             WHERE status IN ('dispatched', 'running') AND due_at_us <= $1 LIMIT 256{}",
            B::CLAIM_LOCK
        );
        let overdue: Vec<InFlightRow> = sqlx::query_as(&sql).bind(now).fetch_all(&mut *tx).await?;
        for row in overdue {
            let run = InFlight::from_row(row);
            if !Self::lock_session(&mut tx, &run.session_id, false).await? {
                continue;
            }
            let reason = crate::domain::run_rules::timeout_reason(&run.view());
            let failure = Failure {
                reason: &reason,
                guard: SENT,
                retryable: true,
                not_before: None,
            };
            Self::fail_attempt(&mut tx, &run, &failure, now, self.rules(), &mut events).await?;
            touched += 1;
        }
        // A due run no agent took within its queue timeout fails its
        // attempt, with why it waited (docs/api.md §3.6); the retry
        // rules apply. The attempt counts, so retries run out.
        let sql = format!(
            "SELECT run_id, session_id, queue_timeout_secs FROM task_runs r WHERE {} LIMIT 256{}",
            crate::domain::run_rules::queue_timeout_over_sql("$1"),
            B::CLAIM_LOCK
        );
        let waited: Vec<(String, String, i64)> =
            sqlx::query_as(&sql).bind(now).fetch_all(&mut *tx).await?;
        let live = self.rules().liveness;
        for (run_id, session_id, secs) in waited {
            if !Self::lock_session(&mut tx, &session_id, false).await? {
                continue;
            }
            let pool = Self::pool_summary(&mut tx, &run_id, now, live).await?;
            let row: Option<InFlightRow> = sqlx::query_as(&format!(
                "UPDATE task_runs SET attempts = attempts + 1 WHERE run_id = $1 AND status = 'queued' \
                 RETURNING {IN_FLIGHT_COLUMNS}"
            ))
            .bind(&run_id)
            .fetch_optional(&mut *tx)
            .await?;
            let Some(run) = row.map(InFlight::from_row) else {
                continue;
            };
            let wait = crate::domain::run_rules::WaitView {
                status: RunStatus::Queued,
                attempts: run.attempts,
                deps_left: 0,
                due_at: now,
            };
            let why = crate::domain::run_rules::waiting_for(&wait, &pool, now);
            let reason = crate::domain::run_rules::queue_timeout_reason(secs, why);
            let failure = Failure {
                reason: &reason,
                guard: QUEUED,
                retryable: true,
                not_before: None,
            };
            Self::fail_attempt(&mut tx, &run, &failure, now, self.rules(), &mut events).await?;
            touched += 1;
        }
        // A retry its agent was never free to take ends the session
        // rather than waiting for ever.
        let sql = format!(
            "SELECT {IN_FLIGHT_COLUMNS} FROM task_runs r WHERE {} LIMIT 256{}",
            crate::domain::run_rules::retry_wait_over_sql("$1"),
            B::CLAIM_LOCK
        );
        let unsent: Vec<InFlightRow> = sqlx::query_as(&sql).bind(now).fetch_all(&mut *tx).await?;
        for row in unsent {
            let run = InFlight::from_row(row);
            if !Self::lock_session(&mut tx, &run.session_id, false).await? {
                continue;
            }
            let reason = crate::domain::run_rules::unsent_retry_reason(&run.view());
            let failure = Failure {
                reason: &reason,
                guard: QUEUED,
                retryable: false,
                not_before: None,
            };
            Self::fail_attempt(&mut tx, &run, &failure, now, self.rules(), &mut events).await?;
            touched += 1;
        }
        let indexed = Self::flush_events(&mut tx, &events).await?;
        tx.commit().await?;
        self.events_committed(&events, &indexed);
        Ok(touched)
    }
}
