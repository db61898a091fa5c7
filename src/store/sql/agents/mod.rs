//! Agents, their states and history: registration, the batched state
//! reports (which move tasks on in the same transaction), reads and lists.

mod one_round;
mod reports;

use std::sync::LazyLock;

use sqlx::{ColumnIndex, Decode, Encode, Executor, IntoArguments, Type};

use super::backend::RowsAffected;
use super::{in_list, Backend, SqlStore};
use crate::domain::agent::{AgentId, Registration};
use crate::domain::audit::{Actor, NewAudit};
use crate::domain::event::NewEvent;
use crate::domain::state::{StateRecord, StateReport, UNKNOWN};
use crate::store::health::PROBE_WRITE;
use crate::store::readmodel::{Change, Details};
use crate::store::reads::AgentRead;
use crate::store::{
    Agent, AgentQuery, AgentReads, AgentState, AgentStore, AppliedReports, HistoryEntry,
    HistoryQuery, Liveness, PoolStats, RegisterOutcome, StoreError, StoreResult,
};

/// Columns of `agents` in the order `agent_from_row` reads them.
pub(in crate::store) const AGENT_COLUMNS: &str =
    "agent_id, name, version, contact_endpoint, capabilities, metadata, \
     registered_at_us, updated_at_us, deregistered_at_us, last_seen_us, \
     state, state_details, state_ts_us, state_received_us, ttl_secs";

/// Columns of `agents` a state read needs, in the order `state_from_row`
/// reads them.
pub(in crate::store) const STATE_COLUMNS: &str =
    "agent_id, state, state_details, state_ts_us, state_received_us, \
     last_seen_us, ttl_secs, deregistered_at_us";

pub(in crate::store) const INSERT_AGENT: &str = "INSERT INTO agents (agent_id, name, version, contact_endpoint, capabilities, metadata, \
     registered_at_us, updated_at_us, last_seen_us, state, state_details, state_ts_us, state_received_us, state_reported, ttl_secs) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $7, $7, 'UNKNOWN', NULL, $7, $7, 0, $8) \
     ON CONFLICT (agent_id) DO NOTHING";

/// Registering again is hearing from the agent: a stale agent comes back
/// (`stale_since_us` 0 in the returned row means "announce it fresh"). A
/// registration that names no TTL keeps the lease the agent has (AgentKit
/// re-registers a restarted agent without metadata).
pub(in crate::store) const UPDATE_AGENT: &str =
    "UPDATE agents SET name = $2, version = $3, contact_endpoint = $4, capabilities = $5, \
     metadata = $6, updated_at_us = $7, deregistered_at_us = NULL, ttl_secs = COALESCE($8, ttl_secs), \
     last_seen_us = CASE WHEN last_seen_us < $7 THEN $7 ELSE last_seen_us END, \
     stale_since_us = CASE WHEN stale_since_us > 0 THEN 0 ELSE NULL END \
     WHERE agent_id = $1 RETURNING stale_since_us";

/// Set a registered agent's own lease `$2`. The returned `stale_since_us`
/// is 0 when an agent announced stale no longer is under its new lease
/// (`$3` the default TTL, `$4` the grace, `$5` now): "announce it fresh".
/// The condition names `$2`, not the column: SET expressions see the row as
/// it was.
pub(in crate::store) static SET_LEASE: LazyLock<String> = LazyLock::new(|| {
    format!(
        "UPDATE agents SET ttl_secs = $2, \
         stale_since_us = CASE WHEN stale_since_us > 0 AND NOT {} THEN 0 ELSE stale_since_us END \
         WHERE agent_id = $1 AND deregistered_at_us IS NULL RETURNING stale_since_us",
        Liveness::lease_over_sql("last_seen_us", "COALESCE($2, $3)", "$4", "$5")
    )
});

pub(in crate::store) const DELETE_CAPABILITIES: &str =
    "DELETE FROM agent_capabilities WHERE agent_id = $1";

pub(in crate::store) const INSERT_CAPABILITY: &str =
    "INSERT INTO agent_capabilities (capability, agent_id) VALUES ($1, $2) ON CONFLICT DO NOTHING";

pub(in crate::store) const INSERT_HISTORY: &str =
    "INSERT INTO state_history (agent_id, state, details, ts_us, received_us) VALUES ($1, $2, $3, $4, $5)";

/// Returns whether the agent was registered until now (a repeated
/// deregistration changes nothing and announces nothing).
pub(in crate::store) const DEREGISTER: &str =
    "UPDATE agents SET deregistered_at_us = COALESCE(deregistered_at_us, $2) WHERE agent_id = $1 \
     RETURNING CASE WHEN deregistered_at_us = $2 THEN 1 ELSE 0 END";

/// Puts an agent back to `UNKNOWN` (`$2` the details, `$3` now) as if just
/// registered: the next report becomes current whatever its timestamp.
pub(in crate::store) const RESET_STATE: &str =
    "UPDATE agents SET state = 'UNKNOWN', state_details = $2, \
     state_ts_us = $3, state_received_us = $3, state_reported = 0 \
     WHERE agent_id = $1 AND deregistered_at_us IS NULL RETURNING last_seen_us";

pub(in crate::store) const AGENT_EXISTS: &str = "SELECT 1 FROM agents WHERE agent_id = $1";

pub(in crate::store) const HISTORY_FIRST_PAGE: &str =
    "SELECT seq, state, details, ts_us, received_us FROM state_history \
     WHERE agent_id = $1 ORDER BY ts_us DESC, seq DESC LIMIT $2";

pub(in crate::store) const HISTORY_NEXT_PAGE: &str =
    "SELECT seq, state, details, ts_us, received_us FROM state_history \
     WHERE agent_id = $1 AND (ts_us < $3 OR (ts_us = $3 AND seq < $4)) \
     ORDER BY ts_us DESC, seq DESC LIMIT $2";

/// Registered agents past their lease (TTL plus grace): `$1` the default
/// TTL, `$2` the grace, both in seconds, `$3` now.
pub(in crate::store) static COUNT_STALE_AGENTS: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT COUNT(*) FROM agents WHERE {}",
        Liveness::holds_stale_sql("", "$1", "$2", "$3")
    )
});

pub(in crate::store) const COUNT_AGENTS_BY_STATE: &str =
    "SELECT state, COUNT(*) FROM agents WHERE deregistered_at_us IS NULL GROUP BY state";

pub(in crate::store) const LATEST_MIGRATION: &str =
    "SELECT MAX(version) FROM _sqlx_migrations WHERE success";

/// Build the listing query for `q`, returning SQL and its text binds in
/// order (`$1`, `$2`, …) plus the limit as the last bind.
pub(in crate::store) fn list_agents_sql(q: &AgentQuery, live: &Liveness) -> (String, Vec<String>) {
    let mut sql = format!("SELECT {AGENT_COLUMNS} FROM agents a WHERE 1 = 1");
    let mut binds = Vec::new();
    let next = |sql: &mut String, clause: &str, value: &str, binds: &mut Vec<String>| {
        binds.push(value.to_owned());
        sql.push_str(&clause.replace("$?", &format!("${}", binds.len())));
    };
    if !q.include_deregistered {
        sql.push_str(" AND deregistered_at_us IS NULL");
    }
    if let Some(state) = &q.state {
        next(&mut sql, " AND state = $?", state, &mut binds);
    }
    if let Some(stale) = q.stale {
        // Numbers from the server itself, not from the request.
        let stale_sql = Liveness::holds_stale_sql(
            "",
            &live.ttl_sql(),
            &live.grace_secs.to_string(),
            &q.now.to_string(),
        );
        if stale {
            sql.push_str(&format!(" AND {stale_sql}"));
        } else {
            sql.push_str(&format!(" AND NOT ({stale_sql})"));
        }
    }
    if let Some(cap) = &q.capability {
        next(
            &mut sql,
            " AND EXISTS (SELECT 1 FROM agent_capabilities c WHERE c.capability = $? AND c.agent_id = a.agent_id)",
            cap,
            &mut binds,
        );
    }
    if let Some(after) = &q.after {
        next(&mut sql, " AND agent_id > $?", after, &mut binds);
    }
    sql.push_str(&format!(" ORDER BY agent_id LIMIT ${}", binds.len() + 1));
    (sql, binds)
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
    /// An [`AgentState`](crate::store::AgentState) from `STATE_COLUMNS`
    /// (without its event index, which is not one of them).
    pub(in crate::store) fn state_from_row(row: &B::Row) -> StoreResult<AgentState> {
        use sqlx::Row;
        Ok(AgentState {
            agent_id: row.try_get(0)?,
            current: StateRecord {
                state: row.try_get(1)?,
                details: crate::store::decode_details(row.try_get(2)?),
                timestamp: row.try_get(3)?,
                received_at: row.try_get(4)?,
            },
            last_seen: row.try_get(5)?,
            ttl_secs: row.try_get(6)?,
            deregistered_at: row.try_get(7)?,
            event_index: None,
        })
    }

    pub(in crate::store) fn agent_from_row(row: &B::Row) -> StoreResult<Agent> {
        use sqlx::Row;
        let caps: String = row.try_get(4)?;
        let meta: String = row.try_get(5)?;
        Ok(Agent {
            agent_id: row.try_get(0)?,
            name: row.try_get(1)?,
            version: row.try_get(2)?,
            contact_endpoint: row.try_get(3)?,
            capabilities: crate::store::decode_capabilities(&caps),
            metadata: crate::store::decode_metadata(&meta),
            registered_at: row.try_get(6)?,
            updated_at: row.try_get(7)?,
            deregistered_at: row.try_get(8)?,
            last_seen: row.try_get(9)?,
            ttl_secs: row.try_get(14)?,
            current: StateRecord {
                state: row.try_get(10)?,
                details: crate::store::decode_details(row.try_get(11)?),
                timestamp: row.try_get(12)?,
                received_at: row.try_get(13)?,
            },
        })
    }
}

#[async_trait::async_trait]
impl<B> AgentStore for SqlStore<B>
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
    async fn ready(&self) -> StoreResult<()> {
        let want = B::migrator().iter().map(|m| m.version).max().unwrap_or(0);
        let have: Option<i64> = sqlx::query_scalar(LATEST_MIGRATION)
            .fetch_one(self.reader())
            .await?;
        if !matches!(have, Some(v) if v >= want) {
            return Err(StoreError::Unavailable(format!(
                "database schema is not at the latest migration ({want})"
            )));
        }
        let problems: Vec<String> = sqlx::query_scalar(B::TABLE_PROBLEMS)
            .bind(crate::store::health::tables_json())
            .fetch_all(self.reader())
            .await?;
        if !problems.is_empty() {
            return Err(StoreError::Unavailable(problems.join("; ")));
        }
        sqlx::query(PROBE_WRITE).execute(self.writer()).await?;
        Ok(())
    }

    async fn register_agent(
        &self,
        reg: &Registration,
        by: &Actor,
        now: i64,
    ) -> StoreResult<RegisterOutcome> {
        let caps = serde_json::to_string(&reg.capabilities)
            .map_err(|e| StoreError::Internal(e.to_string()))?;
        let meta = serde_json::to_string(&reg.metadata)
            .map_err(|e| StoreError::Internal(e.to_string()))?;
        let id = reg.agent_id.as_str();
        let mut events = vec![NewEvent::registered(reg, now)];
        let mut tx = self.writer().begin().await?;
        let inserted = sqlx::query(INSERT_AGENT)
            .bind(id)
            .bind(&reg.name)
            .bind(&reg.version)
            .bind(&reg.contact_endpoint)
            .bind(&caps)
            .bind(&meta)
            .bind(now)
            .bind(reg.ttl_secs)
            .execute(&mut *tx)
            .await?
            .rows_affected()
            == 1;
        let outcome = if inserted {
            sqlx::query(INSERT_HISTORY)
                .bind(id)
                .bind(UNKNOWN)
                .bind(None::<&str>)
                .bind(now)
                .bind(now)
                .execute(&mut *tx)
                .await?;
            RegisterOutcome::Created
        } else {
            let stale_since: Option<i64> = sqlx::query_scalar(UPDATE_AGENT)
                .bind(id)
                .bind(&reg.name)
                .bind(&reg.version)
                .bind(&reg.contact_endpoint)
                .bind(&caps)
                .bind(&meta)
                .bind(now)
                .bind(reg.ttl_secs)
                .fetch_one(&mut *tx)
                .await?;
            if stale_since == Some(0) {
                events.push(NewEvent::fresh(id, now));
            }
            sqlx::query(DELETE_CAPABILITIES)
                .bind(id)
                .execute(&mut *tx)
                .await?;
            RegisterOutcome::Updated
        };
        for cap in &reg.capabilities {
            sqlx::query(INSERT_CAPABILITY)
                .bind(cap)
                .bind(id)
                .execute(&mut *tx)
                .await?;
        }
        let audit = NewAudit::agent_registered(by, reg, inserted, now);
        let entry = Self::write_audit(&mut tx, &audit, &mut events).await?;
        let indexed = Self::flush_events(&mut tx, &events).await?;
        tx.commit().await?;
        // The registration's own event is the first about the agent.
        if let Some(index) = indexed.iter().map(|(_, i)| *i).min() {
            let details = Details {
                name: &reg.name,
                version: &reg.version,
                contact_endpoint: &reg.contact_endpoint,
                capabilities: &caps,
                metadata: &meta,
                ttl_secs: reg.ttl_secs,
            };
            self.model()
                .apply(id, index, Change::Registered { details, at: now });
        }
        self.events_committed(&events, &indexed);
        Self::audit_committed(&[entry]);
        Ok(outcome)
    }

    async fn deregister_agent(&self, id: &AgentId, by: &Actor, now: i64) -> StoreResult<()> {
        let mut tx = self.writer().begin().await?;
        let changed: Option<i32> = sqlx::query_scalar(DEREGISTER)
            .bind(id.as_str())
            .bind(now)
            .fetch_optional(&mut *tx)
            .await?;
        // Deregistering a deregistered agent changes nothing: no event,
        // nothing to audit.
        let mut events = Vec::new();
        let mut audited = Vec::new();
        match changed {
            None => return Err(StoreError::agent_not_found(id)),
            Some(1) => {
                events.push(NewEvent::deregistered(id.as_str(), now));
                let audit = NewAudit::agent_deregistered(by, id.as_str(), now);
                audited.push(Self::write_audit(&mut tx, &audit, &mut events).await?);
            }
            Some(_) => {}
        }
        let indexed = Self::flush_events(&mut tx, &events).await?;
        tx.commit().await?;
        self.events_committed(&events, &indexed);
        Self::audit_committed(&audited);
        Ok(())
    }

    async fn reset_state(
        &self,
        id: &AgentId,
        details: Option<String>,
        by: &Actor,
        now: i64,
    ) -> StoreResult<()> {
        let mut tx = self.writer().begin().await?;
        let last_seen: Option<i64> = sqlx::query_scalar(RESET_STATE)
            .bind(id.as_str())
            .bind(details.as_deref())
            .bind(now)
            .fetch_optional(&mut *tx)
            .await?;
        if last_seen.is_none() {
            return Err(StoreError::agent_not_found(id));
        }
        let details = details
            .map(serde_json::value::RawValue::from_string)
            .transpose()
            .map_err(|e| StoreError::Internal(e.to_string()))?;
        let report = StateReport {
            agent_id: id.clone(),
            state: UNKNOWN.to_owned(),
            details,
            timestamp: now,
            received_at: now,
        };
        sqlx::query(INSERT_HISTORY)
            .bind(id.as_str())
            .bind(&report.state)
            .bind(report.details.as_ref().map(|d| d.get()))
            .bind(now)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        let mut events = vec![NewEvent::state(&report)];
        let audit = NewAudit::agent_state_reset(by, id.as_str(), now);
        let entry = Self::write_audit(&mut tx, &audit, &mut events).await?;
        let indexed = Self::flush_events(&mut tx, &events).await?;
        tx.commit().await?;
        self.events_committed(&events, &indexed);
        Self::audit_committed(&[entry]);
        Ok(())
    }

    async fn set_agent_lease(
        &self,
        id: &AgentId,
        ttl_secs: Option<i64>,
        by: &Actor,
        now: i64,
    ) -> StoreResult<Agent> {
        let live = self.rules().liveness;
        let mut tx = self.writer().begin().await?;
        let stale_since: Option<Option<i64>> = sqlx::query_scalar(SET_LEASE.as_str())
            .bind(id.as_str())
            .bind(ttl_secs)
            .bind(live.ttl_secs)
            .bind(live.grace_secs)
            .bind(now)
            .fetch_optional(&mut *tx)
            .await?;
        let Some(stale_since) = stale_since else {
            return Err(StoreError::agent_not_found(id));
        };
        let mut events = Vec::new();
        if stale_since == Some(0) {
            events.push(NewEvent::fresh(id.as_str(), now));
        }
        let audit = NewAudit::agent_lease_set(by, id.as_str(), ttl_secs, now);
        let entry = Self::write_audit(&mut tx, &audit, &mut events).await?;
        let indexed = Self::flush_events(&mut tx, &events).await?;
        tx.commit().await?;
        self.events_committed(&events, &indexed);
        Self::audit_committed(&[entry]);
        self.get_agent(id).await
    }

    async fn apply_state_reports(&self, reports: &[StateReport]) -> StoreResult<AppliedReports> {
        self.apply_reports(reports).await
    }

    async fn get_agent(&self, id: &AgentId) -> StoreResult<Agent> {
        self.reads().answered_from_memory(AgentRead::Agent);
        self.model()
            .get_agent(id.as_str())
            .ok_or_else(|| StoreError::agent_not_found(id))
    }

    async fn get_agent_consistent(&self, id: &AgentId) -> StoreResult<Agent> {
        self.reads().answered_from_database(AgentRead::Agent);
        let sql = format!("SELECT {} FROM agents WHERE agent_id = $1", AGENT_COLUMNS);
        let row = sqlx::query(&sql)
            .bind(id.as_str())
            .fetch_optional(self.reader())
            .await?
            .ok_or_else(|| StoreError::agent_not_found(id))?;
        Self::agent_from_row(&row)
    }

    async fn get_state(&self, id: &AgentId) -> StoreResult<AgentState> {
        self.reads().answered_from_memory(AgentRead::State);
        self.model()
            .get_state(id.as_str())
            .ok_or_else(|| StoreError::agent_not_found(id))
    }

    async fn get_state_consistent(&self, id: &AgentId) -> StoreResult<AgentState> {
        self.reads().answered_from_database(AgentRead::State);
        // The newest feed index about it comes from the same
        // snapshot as its state: a blocking read waiting past it
        // misses nothing and is not woken by what it returned.
        let sql = format!(
            "SELECT {}, (SELECT MAX(idx) FROM events e WHERE e.agent_id = $1) \
             FROM agents WHERE agent_id = $1",
            STATE_COLUMNS
        );
        let row = sqlx::query(&sql)
            .bind(id.as_str())
            .fetch_optional(self.reader())
            .await?
            .ok_or_else(|| StoreError::agent_not_found(id))?;
        let mut state = Self::state_from_row(&row)?;
        state.event_index = sqlx::Row::try_get(&row, 8)?;
        Ok(state)
    }

    async fn list_agents(&self, q: &AgentQuery) -> StoreResult<Vec<Agent>> {
        if let (Some(state), false) = (&q.state, q.consistent) {
            self.reads().answered_from_memory(AgentRead::List);
            return Ok(self.model().list_in_state(state, q, &self.rules().liveness));
        }
        self.reads().answered_from_database(AgentRead::List);
        let (sql, binds) = list_agents_sql(q, &self.rules().liveness);
        let mut query = sqlx::query(&sql);
        for b in &binds {
            query = query.bind(b);
        }
        let rows = query
            .bind(i64::from(q.limit))
            .fetch_all(self.reader())
            .await?;
        rows.iter().map(Self::agent_from_row).collect()
    }

    async fn state_history(
        &self,
        id: &AgentId,
        q: &HistoryQuery,
    ) -> StoreResult<Vec<HistoryEntry>> {
        use sqlx::Row;
        let mut conn = self.reader().acquire().await?;
        let rows = match q.before {
            None => {
                sqlx::query(HISTORY_FIRST_PAGE)
                    .bind(id.as_str())
                    .bind(i64::from(q.limit))
                    .fetch_all(&mut *conn)
                    .await?
            }
            Some((ts, seq)) => {
                sqlx::query(HISTORY_NEXT_PAGE)
                    .bind(id.as_str())
                    .bind(i64::from(q.limit))
                    .bind(ts)
                    .bind(seq)
                    .fetch_all(&mut *conn)
                    .await?
            }
        };
        if rows.is_empty()
            && sqlx::query(AGENT_EXISTS)
                .bind(id.as_str())
                .fetch_optional(&mut *conn)
                .await?
                .is_none()
        {
            return Err(StoreError::agent_not_found(id));
        }
        rows.iter()
            .map(|row| {
                Ok(HistoryEntry {
                    seq: row.try_get(0)?,
                    record: StateRecord {
                        state: row.try_get(1)?,
                        details: crate::store::decode_details(row.try_get(2)?),
                        timestamp: row.try_get(3)?,
                        received_at: row.try_get(4)?,
                    },
                })
            })
            .collect()
    }

    async fn close(&self) {
        self.writer().close().await;
        self.reader().close().await;
    }

    async fn count_agents_by_state(&self) -> StoreResult<Vec<(String, i64)>> {
        Ok(sqlx::query_as(COUNT_AGENTS_BY_STATE)
            .fetch_all(self.reader())
            .await?)
    }

    async fn count_stale_agents(&self, now: i64) -> StoreResult<i64> {
        let live = self.rules().liveness;
        Ok(sqlx::query_scalar(COUNT_STALE_AGENTS.as_str())
            .bind(live.ttl_secs)
            .bind(live.grace_secs)
            .bind(now)
            .fetch_one(self.reader())
            .await?)
    }

    fn pool_stats(&self) -> Vec<PoolStats> {
        self.pools()
    }

    fn agent_reads(&self) -> AgentReads {
        self.reads().snapshot()
    }

    fn report_batches(&self) -> [u64; 2] {
        self.batches().snapshot()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listing_numbers_its_binds_in_order() {
        let (sql, binds) = list_agents_sql(
            &AgentQuery {
                state: Some("idle".into()),
                capability: Some("summarise".into()),
                include_deregistered: false,
                stale: None,
                now: 0,
                after: Some("a5".into()),
                limit: 10,
                consistent: false,
            },
            &Default::default(),
        );
        assert!(sql.contains("state = $1"), "{sql}");
        assert!(sql.contains("c.capability = $2"), "{sql}");
        assert!(sql.contains("agent_id > $3"), "{sql}");
        assert!(sql.ends_with("LIMIT $4"), "{sql}");
        assert!(sql.contains("deregistered_at_us IS NULL"));
        assert_eq!(binds, ["idle", "summarise", "a5"]);
    }
}
