//! Definitions and sessions: storing and reading them, starting a session
//! with its first run, cancelling one; and the [`WorkflowStore`] impl,
//! whose dispatch methods are in `dispatch.rs`.
//!
//! [`WorkflowStore`]: crate::store::WorkflowStore

use sqlx::{ColumnIndex, Decode, Encode, Executor, IntoArguments, Type};

use super::*;
use crate::domain::audit::{Actor, NewAudit};
use crate::domain::event::{NewEvent, SessionEnd, TaskRef};
use crate::domain::run_rules::{waiting_for, waits_for_agent, PoolSummary, WaitView};
use crate::domain::workflow::{AgentSelector, RunStatus, SessionStatus, WorkflowDefinition};
use crate::store::sql::backend::RowsAffected;
use crate::store::sql::{Backend, SqlStore};
use crate::store::{
    ClaimedRun, DefinitionRecord, DispatchOutcome, Entity, FleetSessionQuery, NewSession,
    PutOutcome, RunRecord, SessionQuery, SessionRecord, StoreError, StoreResult, WorkflowStore,
};

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
    pub(in crate::store) fn session_from_row(row: &B::Row) -> StoreResult<SessionRecord> {
        use sqlx::Row;
        let status: String = row.try_get(3)?;
        let agent: String = row.try_get(2)?;
        let selector: Option<String> = row.try_get(9)?;
        let selector = match selector {
            Some(text) => serde_json::from_str(&text)
                .map_err(|e| StoreError::Internal(format!("stored selector: {e}")))?,
            None => AgentSelector::one(&agent),
        };
        Ok(SessionRecord {
            session_id: row.try_get(0)?,
            workflow_id: row.try_get(1)?,
            agent_id: (!agent.is_empty()).then_some(agent),
            selector,
            status: SessionStatus::parse(&status)
                .ok_or_else(|| StoreError::Internal(format!("unknown session status {status}")))?,
            result: crate::store::decode_details(row.try_get(4)?),
            error: row.try_get(5)?,
            created_at: row.try_get(6)?,
            updated_at: row.try_get(7)?,
            finished_at: row.try_get(8)?,
            revision: row.try_get(10)?,
            runs: Vec::new(),
        })
    }

    /// A run as read, and what [`waiting_for`] needs of it.
    pub(in crate::store) fn run_from_row(row: &B::Row) -> StoreResult<(RunRecord, WaitView)> {
        use sqlx::Row;
        let status: String = row.try_get(3)?;
        let status = RunStatus::parse(&status)
            .ok_or_else(|| StoreError::Internal(format!("unknown run status {status}")))?;
        let due_at: i64 = row.try_get(7)?;
        let record = RunRecord {
            run_id: row.try_get(0)?,
            task_id: row.try_get(1)?,
            task_name: row.try_get(2)?,
            status,
            attempts: row.try_get(4)?,
            max_retries: row.try_get(5)?,
            payload: crate::store::decode_details(row.try_get(6)?),
            due_at: (due_at < crate::domain::engine_rules::NOT_DUE).then_some(due_at),
            dispatched_at: row.try_get(8)?,
            started_at: row.try_get(9)?,
            finished_at: row.try_get(10)?,
            last_error: row.try_get(11)?,
            result: crate::store::decode_details(row.try_get(12)?),
            agent_id: row.try_get(13)?,
            output: crate::store::decode_details(row.try_get(14)?),
            waiting_for: None,
        };
        let wait = WaitView {
            status,
            attempts: record.attempts,
            deps_left: row.try_get(15)?,
            due_at,
        };
        Ok((record, wait))
    }

    /// Why each unsent run of a session waits, at `now` (docs/api.md
    /// §3.6): one count of the agents that may take it per run that waits
    /// for an agent.
    pub(in crate::store) async fn fill_waiting(
        conn: &mut B::Connection,
        runs: Vec<(RunRecord, WaitView)>,
        now: i64,
        live: crate::store::Liveness,
    ) -> StoreResult<Vec<RunRecord>> {
        let mut out = Vec::with_capacity(runs.len());
        for (mut run, wait) in runs {
            let pool = if waits_for_agent(&wait, now) {
                Self::pool_summary(conn, &run.run_id, now, live).await?
            } else {
                PoolSummary::default()
            };
            run.waiting_for = waiting_for(&wait, &pool, now);
            out.push(run);
        }
        Ok(out)
    }

    /// The agents that may take run `run_id`.
    pub(in crate::store) async fn pool_summary(
        conn: &mut B::Connection,
        run_id: &str,
        now: i64,
        live: crate::store::Liveness,
    ) -> StoreResult<PoolSummary> {
        let (matching, fresh): (i64, i64) = sqlx::query_as(POOL_SUMMARY.as_str())
            .bind(now)
            .bind(run_id)
            .bind(live.ttl_secs)
            .bind(live.grace_secs)
            .fetch_one(&mut *conn)
            .await?;
        Ok(PoolSummary { matching, fresh })
    }
}

#[async_trait::async_trait]
impl<B> WorkflowStore for SqlStore<B>
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
    async fn put_definition(
        &self,
        def: &WorkflowDefinition,
        by: &Actor,
        now: i64,
    ) -> StoreResult<(PutOutcome, i64)> {
        let mut tx = self.writer().begin().await?;
        let (outcome, revision) = Self::put_definition_in(&mut tx, def, now).await?;
        let audit = match outcome {
            PutOutcome::Created => NewAudit::workflow_created(by, def, revision, now),
            PutOutcome::Revised => NewAudit::workflow_updated(by, def, revision, now),
            // Nothing changed: nothing to audit.
            PutOutcome::Unchanged => return Ok((outcome, revision)),
        };
        let mut events = Vec::new();
        let entry = Self::write_audit(&mut tx, &audit, &mut events).await?;
        let indexed = Self::flush_events(&mut tx, &events).await?;
        tx.commit().await?;
        self.events_committed(&events, &indexed);
        Self::audit_committed(&[entry]);
        Ok((outcome, revision))
    }

    async fn get_definition(&self, id: &str) -> StoreResult<WorkflowDefinition> {
        let text: Option<String> = sqlx::query_scalar(
            "SELECT definition FROM workflow_definitions WHERE workflow_id = $1",
        )
        .bind(id)
        .fetch_optional(self.reader())
        .await?;
        let text = text.ok_or_else(|| StoreError::not_found(Entity::WorkflowDefinition, id))?;
        serde_json::from_str(&text).map_err(|e| StoreError::Internal(e.to_string()))
    }

    async fn get_definition_record(&self, id: &str) -> StoreResult<DefinitionRecord> {
        self.newest_revision(id)
            .await?
            .ok_or_else(|| StoreError::not_found(Entity::WorkflowDefinition, id))
    }

    async fn list_definitions(&self) -> StoreResult<Vec<DefinitionRecord>> {
        self.newest_revisions().await
    }

    async fn list_revisions(
        &self,
        id: &str,
        before: Option<i64>,
        limit: u32,
    ) -> StoreResult<Vec<DefinitionRecord>> {
        let page = self.revisions_page(id, before, limit).await?;
        if page.is_empty() && !self.has_revisions(id).await? {
            return Err(StoreError::not_found(Entity::WorkflowDefinition, id));
        }
        Ok(page)
    }

    async fn delete_definition(&self, id: &str, by: &Actor, now: i64) -> StoreResult<()> {
        let mut tx = self.writer().begin().await?;
        let busy: Option<String> = sqlx::query_scalar(&format!(
"SELECT session_id FROM sessions WHERE workflow_id = $1 AND status IN {unfinished} LIMIT 1",
unfinished = UNFINISHED_SESSIONS.as_str()
))
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
            return Err(StoreError::not_found(Entity::WorkflowDefinition, id));
        }
        let mut events = Vec::new();
        let audit = NewAudit::workflow_deleted(by, id, now);
        let entry = Self::write_audit(&mut tx, &audit, &mut events).await?;
        let indexed = Self::flush_events(&mut tx, &events).await?;
        tx.commit().await?;
        self.events_committed(&events, &indexed);
        Self::audit_committed(&[entry]);
        Ok(())
    }

    async fn create_session(&self, s: &NewSession, by: &Actor, now: i64) -> StoreResult<()> {
        let mut tx = self.writer().begin().await?;
        if let Some(agent) = &s.agent_id {
            let exists: Option<i32> = sqlx::query_scalar(
                "SELECT 1 FROM agents WHERE agent_id = $1 AND deregistered_at_us IS NULL",
            )
            .bind(agent.as_str())
            .fetch_optional(&mut *tx)
            .await?;
            if exists.is_none() {
                return Err(StoreError::agent_not_found(agent));
            }
        }
        let agent = s.agent_id.as_ref().map_or("", |a| a.as_str());
        let mut audits = Vec::new();
        // Contract 1.4: an inline definition is stored when its id is not
        // stored; one that differs from the stored one runs as sent (the
        // session keeps it), the stored one left as it is. The old
        // service's load scripts send theirs on every trigger. The
        // session records the stored revision it runs (§3.1), if any.
        let stored: Option<i64> = if s.store_definition {
            sqlx::query_scalar("SELECT revision FROM workflow_definitions WHERE workflow_id = $1")
                .bind(&s.definition.id)
                .fetch_optional(&mut *tx)
                .await?
        } else {
            None
        };
        let revision = if s.store_definition && stored.is_none() {
            let (outcome, revision) = Self::put_definition_in(&mut tx, &s.definition, now).await?;
            // A concurrent trigger may have stored the same one first.
            if outcome != PutOutcome::Unchanged {
                audits.push(NewAudit::workflow_created(by, &s.definition, revision, now));
            }
            Some(revision)
        } else {
            Self::revision_of(&mut tx, &s.definition).await?
        };
        audits.push(NewAudit::session_triggered(
            by,
            agent,
            &s.session_id,
            &s.definition.id,
            s.store_definition,
            now,
        ));
        // A workflow without tasks is complete as soon as it exists.
        let (status, finished, event) = if s.runs.is_empty() {
            (
                SessionStatus::Completed,
                Some(now),
                NewEvent::session_ended(
                    agent,
                    &s.session_id,
                    SessionEnd {
                        workflow_id: s.definition.id.clone(),
                        outcome: SessionStatus::Completed,
                        created_at: now,
                        finished_at: now,
                    },
                    None,
                ),
            )
        } else {
            (
                SessionStatus::Started,
                None,
                NewEvent::session(
                    agent,
                    &s.session_id,
                    &s.definition.id,
                    SessionStatus::Started,
                    None,
                    now,
                ),
            )
        };
        let mut events = vec![event];
        let traceparent = s.trace.as_ref().map(|t| t.parent.to_string());
        // A per-agent session shows its agent, not a selector.
        let selector = match &s.agent_id {
            Some(_) => None,
            None => Some(
                serde_json::to_string(&s.selector)
                    .map_err(|e| StoreError::Internal(e.to_string()))?,
            ),
        };
        let mut pool_agents: Vec<&str> = s
            .selector
            .agent_ids
            .iter()
            .flatten()
            .map(String::as_str)
            .collect();
        pool_agents.sort_unstable();
        pool_agents.dedup();
        sqlx::query(
            "INSERT INTO sessions (session_id, workflow_id, agent_id, definition, status, \
             created_at_us, updated_at_us, finished_at_us, traceparent, tracestate, selector, \
             pool_capability, pool_agents, revision) \
             VALUES ($1, $2, $3, $4, $5, $6, $6, $7, $8, $9, $10, $11, $12, $13)",
        )
        .bind(&s.session_id)
        .bind(&s.definition.id)
        .bind(agent)
        .bind(s.definition.canonical_json())
        .bind(status.as_str())
        .bind(now)
        .bind(finished)
        .bind(traceparent.as_deref())
        .bind(s.trace.as_ref().and_then(|t| t.state.as_deref()))
        .bind(selector.as_deref())
        .bind(s.selector.capability.as_deref())
        .bind(pool_agents.len() as i64)
        .bind(revision)
        .execute(&mut *tx)
        .await?;
        for a in &pool_agents {
            sqlx::query("INSERT INTO session_agents (session_id, agent_id) VALUES ($1, $2)")
                .bind(&s.session_id)
                .bind(*a)
                .execute(&mut *tx)
                .await?;
        }
        let pinned = s.agent_id.as_ref().map(|a| a.as_str());
        for run in &s.runs {
            Self::insert_run(&mut tx, &s.session_id, pinned, run, now, &mut events).await?;
        }
        let mut entries = Vec::with_capacity(audits.len());
        for audit in &audits {
            entries.push(Self::write_audit(&mut tx, audit, &mut events).await?);
        }
        let indexed = Self::flush_events(&mut tx, &events).await?;
        tx.commit().await?;
        self.events_committed(&events, &indexed);
        Self::audit_committed(&entries);
        Ok(())
    }

    async fn get_session(&self, id: &str) -> StoreResult<SessionRecord> {
        let mut conn = self.reader().acquire().await?;
        let row = sqlx::query(&format!(
            "SELECT {SESSION_COLUMNS} FROM sessions WHERE session_id = $1"
        ))
        .bind(id)
        .fetch_optional(&mut *conn)
        .await?
        .ok_or_else(|| StoreError::not_found(Entity::Session, id))?;
        let mut session = Self::session_from_row(&row)?;
        let runs = sqlx::query(&format!(
            "SELECT {RUN_COLUMNS} FROM task_runs WHERE session_id = $1 ORDER BY position, created_at_us"
        ))
        .bind(id)
        .fetch_all(&mut *conn)
        .await?;
        let runs = runs
            .iter()
            .map(Self::run_from_row)
            .collect::<Result<Vec<_>, _>>()?;
        let now = crate::domain::time::now_micros();
        session.runs = Self::fill_waiting(&mut conn, runs, now, self.rules().liveness).await?;
        Ok(session)
    }

    async fn list_sessions(&self, q: &SessionQuery) -> StoreResult<Vec<SessionRecord>> {
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
        sql.push_str(&format!(
            " ORDER BY session_id DESC LIMIT ${}",
            binds.len() + 1
        ));
        let mut query = sqlx::query(&sql);
        for b in binds {
            query = query.bind(b);
        }
        let rows = query
            .bind(i64::from(q.limit))
            .fetch_all(self.reader())
            .await?;
        rows.iter().map(Self::session_from_row).collect()
    }

    async fn list_fleet_sessions(&self, q: &FleetSessionQuery) -> StoreResult<Vec<SessionRecord>> {
        self.fleet_sessions(q).await
    }

    async fn count_fleet_sessions(&self, q: &FleetSessionQuery) -> StoreResult<Vec<(String, i64)>> {
        self.fleet_counts(q).await
    }

    async fn retry_session(&self, id: &str, by: &Actor, now: i64) -> StoreResult<()> {
        self.retry(id, by, now).await
    }

    async fn cancel_session(&self, id: &str, by: &Actor, now: i64) -> StoreResult<SessionStatus> {
        let mut tx = self.writer().begin().await?;
        let cancelled: Option<(String, String, i64)> = sqlx::query_as(&format!(
            "UPDATE sessions SET status = 'cancelled', finished_at_us = $2, updated_at_us = $2, \
             error = 'cancelled by operator' WHERE session_id = $1 AND status IN {unfinished} \
             RETURNING agent_id, workflow_id, created_at_us",
            unfinished = UNFINISHED_SESSIONS.as_str()
        ))
        .bind(id)
        .bind(now)
        .fetch_optional(&mut *tx)
        .await?;
        let Some((agent, workflow, created_at)) = cancelled else {
            let status: Option<String> =
                sqlx::query_scalar("SELECT status FROM sessions WHERE session_id = $1")
                    .bind(id)
                    .fetch_optional(&mut *tx)
                    .await?;
            return match status.as_deref().and_then(SessionStatus::parse) {
                None => Err(StoreError::not_found(Entity::Session, id)),
                Some(SessionStatus::Cancelled) => Ok(SessionStatus::Cancelled),
                Some(other) => Err(StoreError::Conflict(format!(
                    "session {id} already {} and cannot be cancelled",
                    other.as_str()
                ))),
            };
        };
        let runs: Vec<(String, String, i64)> = sqlx::query_as(&format!(
            "UPDATE task_runs SET status = 'cancelled', finished_at_us = $2, lease_owner = NULL \
             WHERE session_id = $1 AND status IN {unfinished} \
             RETURNING run_id, task_id, attempts",
            unfinished = UNFINISHED_RUNS.as_str()
        ))
        .bind(id)
        .bind(now)
        .fetch_all(&mut *tx)
        .await?;
        let mut events: Vec<NewEvent> = runs
            .iter()
            .map(|(run_id, task_id, attempt)| {
                let task = TaskRef {
                    run_id,
                    task_id,
                    session_id: id,
                    agent_id: &agent,
                    attempt: *attempt,
                };
                NewEvent::task(task, RunStatus::Cancelled, None, now)
            })
            .collect();
        let audit = NewAudit::session_cancelled(by, &agent, id, &workflow, now);
        events.push(NewEvent::session_ended(
            &agent,
            id,
            SessionEnd {
                workflow_id: workflow,
                outcome: SessionStatus::Cancelled,
                created_at,
                finished_at: now,
            },
            Some("cancelled by operator"),
        ));
        let entry = Self::write_audit(&mut tx, &audit, &mut events).await?;
        let indexed = Self::flush_events(&mut tx, &events).await?;
        tx.commit().await?;
        self.events_committed(&events, &indexed);
        Self::audit_committed(&[entry]);
        Ok(SessionStatus::Cancelled)
    }

    async fn claim_due_runs(
        &self,
        owner: &str,
        now: i64,
        lease_until: i64,
        limit: u32,
        allow_unknown: bool,
    ) -> StoreResult<Vec<ClaimedRun>> {
        self.claim(owner, now, lease_until, limit, allow_unknown)
            .await
    }

    async fn record_dispatch(
        &self,
        run_id: &str,
        claim: &str,
        attempt: i64,
        now: i64,
        outcome: &DispatchOutcome,
    ) -> StoreResult<()> {
        self.record(run_id, claim, attempt, now, outcome).await
    }

    async fn expire_overdue(&self, now: i64) -> StoreResult<u64> {
        self.expire(now).await
    }

    async fn count_sessions_by_status(&self) -> StoreResult<Vec<(String, i64)>> {
        Ok(sqlx::query_as(COUNT_SESSIONS_BY_STATUS)
            .fetch_all(self.reader())
            .await?)
    }

    async fn count_queued_runs(&self) -> StoreResult<i64> {
        Ok(sqlx::query_scalar(COUNT_QUEUED_RUNS)
            .fetch_one(self.reader())
            .await?)
    }

    async fn oldest_due_run(&self, now: i64) -> StoreResult<Option<i64>> {
        Ok(sqlx::query_scalar(OLDEST_DUE_RUN)
            .bind(now)
            .fetch_one(self.reader())
            .await?)
    }
}
