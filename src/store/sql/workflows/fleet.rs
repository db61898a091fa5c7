//! Sessions across the fleet (docs/api.md §3.2: listing and counts by
//! status) and running a failed or cancelled session again (§3.7).

use sqlx::{ColumnIndex, Decode, Encode, Executor, IntoArguments, Type};

use super::*;
use crate::domain::audit::{Actor, NewAudit};
use crate::domain::event::{NewEvent, TaskRef};
use crate::domain::run_rules::{retry_session, RetryCandidate, RetryDecision};
use crate::domain::workflow::WorkflowDefinition;
use crate::store::sql::{Backend, SqlStore};
use crate::store::{Entity, FleetSessionQuery, SessionRecord, StoreError, StoreResult};

/// The WHERE condition of `q`'s filters (with its status when
/// `with_status`, and its cursor), its text binds in order, then its number
/// binds: `$1…` are the texts, the numbers follow.
pub(in crate::store) fn fleet_filter_sql(
    q: &FleetSessionQuery,
    with_status: bool,
) -> (String, Vec<String>, Vec<i64>) {
    let mut cond = String::from("1 = 1");
    let mut texts: Vec<String> = Vec::new();
    let mut nums: Vec<i64> = Vec::new();
    if let (true, Some(s)) = (with_status, q.status) {
        texts.push(s.as_str().to_owned());
        cond.push_str(&format!(" AND status = ${}", texts.len()));
    }
    if let Some(w) = &q.workflow_id {
        texts.push(w.clone());
        cond.push_str(&format!(" AND workflow_id = ${}", texts.len()));
    }
    if let Some(a) = &q.agent_id {
        // Runs carry the agent that ran (or will run) them; the
        // task_runs_by_agent index answers this without a scan.
        texts.push(a.clone());
        cond.push_str(&format!(
            " AND session_id IN (SELECT session_id FROM task_runs WHERE agent_id = ${})",
            texts.len()
        ));
    }
    if with_status {
        if let Some(b) = &q.before {
            texts.push(b.clone());
            cond.push_str(&format!(" AND session_id < ${}", texts.len()));
        }
    }
    // Session ids are UUIDv7, whose text starts with the creation time in
    // milliseconds: a range of ids around the asked times lets the primary
    // key's order serve the time filter too; `created_at_us` stays the exact
    // rule. The margin covers the moment between the two clock reads.
    if let Some(since) = q.since {
        texts.push(v7_prefix(since / 1000 - ID_TIME_MARGIN_MS));
        cond.push_str(&format!(" AND session_id >= ${}", texts.len()));
    }
    if let Some(until) = q.until {
        texts.push(v7_prefix(until / 1000 + ID_TIME_MARGIN_MS));
        cond.push_str(&format!(" AND session_id < ${}", texts.len()));
    }
    for (v, op) in [(q.since, ">="), (q.until, "<")] {
        if let Some(v) = v {
            nums.push(v);
            cond.push_str(&format!(
                " AND created_at_us {op} ${}",
                texts.len() + nums.len()
            ));
        }
    }
    (cond, texts, nums)
}

/// How far apart a session's id time and its `created_at_us` may be, at
/// most (both are read from the clock within one trigger).
const ID_TIME_MARGIN_MS: i64 = 60_000;

/// The text every UUIDv7 made at millisecond `ms` starts with
/// (`01a24754-5ba8`): ids made before it sort below it, ids made at or
/// after it above.
fn v7_prefix(ms: i64) -> String {
    let ms = ms.clamp(0, (1 << 48) - 1);
    format!("{:08x}-{:04x}", ms >> 16, ms & 0xffff)
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
    pub(in crate::store) async fn fleet_sessions(
        &self,
        q: &FleetSessionQuery,
    ) -> StoreResult<Vec<SessionRecord>> {
        let (cond, texts, nums) = fleet_filter_sql(q, true);
        let sql = format!(
            "SELECT {SESSION_COLUMNS} FROM sessions WHERE {cond} ORDER BY session_id DESC LIMIT ${}",
            texts.len() + nums.len() + 1
        );
        let mut query = sqlx::query(&sql);
        for t in &texts {
            query = query.bind(t.as_str());
        }
        for n in &nums {
            query = query.bind(*n);
        }
        let rows = query
            .bind(i64::from(q.limit))
            .fetch_all(self.reader())
            .await?;
        rows.iter().map(Self::session_from_row).collect()
    }

    pub(in crate::store) async fn fleet_counts(
        &self,
        q: &FleetSessionQuery,
    ) -> StoreResult<Vec<(String, i64)>> {
        let (cond, texts, nums) = fleet_filter_sql(q, false);
        let sql = format!("SELECT status, COUNT(*) FROM sessions WHERE {cond} GROUP BY status");
        let mut query = sqlx::query_as::<_, (String, i64)>(&sql);
        for t in &texts {
            query = query.bind(t.as_str());
        }
        for n in &nums {
            query = query.bind(*n);
        }
        Ok(query.fetch_all(self.reader()).await?)
    }

    /// See `WorkflowStore::retry_session`: the rule is
    /// `run_rules::retry_session`; this loads and applies it in one
    /// transaction, with the feed events and the audit entry.
    pub(in crate::store) async fn retry(&self, id: &str, by: &Actor, now: i64) -> StoreResult<()> {
        let mut tx = self.writer().begin().await?;
        // Taking the session back to running first locks its row
        // (PostgreSQL), so a concurrent retry or report waits for this one.
        let reopened: Option<(String, String, String, String)> = sqlx::query_as(
            "UPDATE sessions SET status = 'running', error = NULL, result = NULL, \
             finished_at_us = NULL, updated_at_us = $2 \
             WHERE session_id = $1 AND status IN ('failed', 'cancelled') \
             RETURNING agent_id, workflow_id, definition, status",
        )
        .bind(id)
        .bind(now)
        .fetch_optional(&mut *tx)
        .await?;
        let Some((agent, workflow, definition, _)) = reopened else {
            let status: Option<String> =
                sqlx::query_scalar("SELECT status FROM sessions WHERE session_id = $1")
                    .bind(id)
                    .fetch_optional(&mut *tx)
                    .await?;
            return match status.as_deref().and_then(SessionStatus::parse) {
                None => Err(StoreError::not_found(Entity::Session, id)),
                Some(other) => Err(refused(id, &retry_session(other, &[], &empty(id)))),
            };
        };
        let def: WorkflowDefinition = serde_json::from_str(&definition)
            .map_err(|e| StoreError::Internal(format!("stored definition of session {id}: {e}")))?;
        let rows: Vec<(String, String, String, String, i64, i64)> = sqlx::query_as(
            "SELECT run_id, task_id, COALESCE(agent_id, ''), status, attempts, max_retries FROM task_runs \
             WHERE session_id = $1 AND status IN ('failed', 'cancelled') ORDER BY position, created_at_us",
        )
        .bind(id)
        .fetch_all(&mut *tx)
        .await?;
        let candidates: Vec<RetryCandidate<'_>> = rows
            .iter()
            .map(
                |(_, task_id, _, status, attempts, max_retries)| RetryCandidate {
                    task_id,
                    status: RunStatus::parse(status).unwrap_or(RunStatus::Failed),
                    attempts: *attempts,
                    max_retries: *max_retries,
                },
            )
            .collect();
        // The session was failed or cancelled when reopened above.
        let decision = retry_session(SessionStatus::Failed, &candidates, &def);
        let RetryDecision::Requeue(again) = decision else {
            // Dropping the transaction rolls the reopening back.
            return Err(refused(id, &decision));
        };
        let mut events = Vec::with_capacity(again.len() + 2);
        for (i, max_retries) in &again {
            let (run_id, task_id, run_agent, _, attempts, _) = &rows[*i];
            sqlx::query(&format!(
                "UPDATE task_runs SET status = 'queued', max_retries = $3, \
                 due_at_us = CASE WHEN deps_left > 0 THEN $4 ELSE $2 END, \
                 finished_at_us = NULL, lease_owner = NULL, {RELEASE_POOL_AGENT} \
                 WHERE run_id = $1 AND status IN ('failed', 'cancelled')"
            ))
            .bind(run_id)
            .bind(now)
            .bind(*max_retries)
            // A run whose dependencies are not done is not due until they
            // are (docs/api.md §3.5).
            .bind(crate::domain::engine_rules::NOT_DUE)
            .execute(&mut *tx)
            .await?;
            let task = TaskRef {
                run_id,
                task_id,
                session_id: id,
                agent_id: run_agent,
                attempt: *attempts,
            };
            events.push(NewEvent::task(task, RunStatus::Queued, None, now));
        }
        events.push(NewEvent::session(
            &agent,
            id,
            &workflow,
            SessionStatus::Running,
            None,
            now,
        ));
        let audit = NewAudit::session_retried(by, &agent, id, &workflow, again.len(), now);
        let entry = Self::write_audit(&mut tx, &audit, &mut events).await?;
        let indexed = Self::flush_events(&mut tx, &events).await?;
        tx.commit().await?;
        self.events_committed(&events, &indexed);
        Self::audit_committed(&[entry]);
        Ok(())
    }
}

/// A definition with no tasks, for asking the rule about a status alone.
fn empty(id: &str) -> WorkflowDefinition {
    WorkflowDefinition {
        id: id.to_owned(),
        name: String::new(),
        description: None,
        version: None,
        tasks: Vec::new(),
    }
}

/// The conflict a refused retry answers.
fn refused(id: &str, decision: &RetryDecision) -> StoreError {
    StoreError::Conflict(match decision {
        RetryDecision::NotFinishedBadly(status) => format!(
            "session {id} is {}; only a failed or cancelled session can be run again",
            status.as_str()
        ),
        _ => format!("session {id} has no failed or cancelled task to run again"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_render_in_bind_order() {
        let q = FleetSessionQuery {
            status: Some(SessionStatus::Failed),
            workflow_id: Some("w".into()),
            agent_id: Some("a1".into()),
            since: Some(5),
            until: Some(9),
            before: Some("0190".into()),
            limit: 10,
        };
        let (cond, texts, nums) = fleet_filter_sql(&q, true);
        assert_eq!(
            cond,
            "1 = 1 AND status = $1 AND workflow_id = $2 AND session_id IN \
             (SELECT session_id FROM task_runs WHERE agent_id = $3) AND session_id < $4 \
             AND session_id >= $5 AND session_id < $6 \
             AND created_at_us >= $7 AND created_at_us < $8"
        );
        assert_eq!(
            texts,
            [
                "failed",
                "w",
                "a1",
                "0190",
                "00000000-0000",
                "00000000-ea60"
            ]
        );
        assert_eq!(nums, [5, 9]);
        // Counts: every filter but the status and the cursor.
        let (cond, texts, nums) = fleet_filter_sql(&q, false);
        assert_eq!(
            cond,
            "1 = 1 AND workflow_id = $1 AND session_id IN \
             (SELECT session_id FROM task_runs WHERE agent_id = $2) \
             AND session_id >= $3 AND session_id < $4 \
             AND created_at_us >= $5 AND created_at_us < $6"
        );
        assert_eq!(texts, ["w", "a1", "00000000-0000", "00000000-ea60"]);
        assert_eq!(nums, [5, 9]);
        let (cond, texts, nums) = fleet_filter_sql(&FleetSessionQuery::default(), true);
        assert_eq!((cond.as_str(), texts.len(), nums.len()), ("1 = 1", 0, 0));
    }

    #[test]
    fn id_prefixes_order_like_the_ids_of_their_time() {
        for _ in 0..50 {
            let id = uuid::Uuid::now_v7().to_string();
            let ms = chrono::Utc::now().timestamp_millis();
            assert!(v7_prefix(ms - 5).as_str() <= id.as_str(), "{id}");
            assert!(v7_prefix(ms + 5).as_str() > id.as_str(), "{id}");
        }
        assert_eq!(v7_prefix(-3), "00000000-0000");
        assert_eq!(v7_prefix(i64::MAX), "ffffffff-ffff");
    }
}
