//! Agents, their states and history: registration, the batched state
//! reports (which move tasks on in the same transaction), reads and lists.

use std::sync::LazyLock;

use sqlx::{ColumnIndex, Decode, Encode, Executor, IntoArguments, Type};

use super::backend::RowsAffected;
use super::{in_list, value_rows, Backend, Binds, SqlStore};

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
        crate::store::Liveness::lease_over_sql("last_seen_us", "COALESCE($2, $3)", "$4", "$5")
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

/// Most reports in one `UPDATE` of [`apply_reports_sql`] or rows in one
/// history `INSERT` (5 binds each: far below either backend's bind limit).
pub(in crate::store) const REPORT_CHUNK: usize = 200;

/// `state_reported` of an agent whose first report (after registration or a
/// reset) is timestamped before the `UNKNOWN` the service set: that entry's
/// history time is moved below the report's ([`UNKNOWN_BELOW`]), so the
/// history never shows `UNKNOWN` above the state that superseded it. Any
/// value but 0 means "reported".
pub(in crate::store) const SUPERSEDED_LATER: i64 = 2;

/// Moves the agent's (`$1`) latest service-made `UNKNOWN` history entry to
/// just before `$2`, the timestamp of the report that superseded it.
pub(in crate::store) const UNKNOWN_BELOW: &str = "UPDATE state_history SET ts_us = $2 - 1 \
     WHERE agent_id = $1 AND state = 'UNKNOWN' AND ts_us > $2 AND seq = \
     (SELECT MAX(seq) FROM state_history WHERE agent_id = $1 AND state = 'UNKNOWN')";

/// Puts an agent back to `UNKNOWN` (`$2` the details, `$3` now) as if just
/// registered: the next report becomes current whatever its timestamp.
pub(in crate::store) const RESET_STATE: &str =
    "UPDATE agents SET state = 'UNKNOWN', state_details = $2, \
     state_ts_us = $3, state_received_us = $3, state_reported = 0 \
     WHERE agent_id = $1 AND deregistered_at_us IS NULL RETURNING last_seen_us";

/// Applies `rows` reports, for `rows` different agents, to their current
/// states in one statement. Each report binds five values in order: agent
/// id, state, details, agent timestamp, receive time (`v.column1` to
/// `v.column5`; both backends name VALUES columns so, and the casts give
/// PostgreSQL their types).
///
/// Every SET expression reads the row as it was before the update, so
/// `newer` judges against the old state: latest agent timestamp wins, and
/// on a tie the later arrival does. Returns, per agent updated, the current
/// state's position afterwards (equal to the report's when it became
/// current), `stale_since_us` (0 when this report brings a stale agent back;
/// the next report clears that to NULL), `last_seen_us` and
/// `state_reported` ([`SUPERSEDED_LATER`] when the report took the place of
/// a later `UNKNOWN`). A deregistered or unknown agent returns no row.
pub(in crate::store) fn apply_reports_sql(rows: usize, binds: Binds) -> String {
    const NEWER: &str = "(state_reported = 0 OR state_ts_us < v.column4 \
                         OR (state_ts_us = v.column4 AND state_received_us <= v.column5))";
    let mut sql = format!(
        "UPDATE agents SET \
         last_seen_us = CASE WHEN last_seen_us < v.column5 THEN v.column5 ELSE last_seen_us END, \
         state = CASE WHEN {NEWER} THEN v.column2 ELSE state END, \
         state_details = CASE WHEN {NEWER} THEN v.column3 ELSE state_details END, \
         state_ts_us = CASE WHEN {NEWER} THEN v.column4 ELSE state_ts_us END, \
         state_received_us = CASE WHEN {NEWER} THEN v.column5 ELSE state_received_us END, \
         state_reported = CASE WHEN state_reported = 0 AND state_ts_us > v.column4 \
                               THEN {SUPERSEDED_LATER} ELSE 1 END, \
         stale_since_us = CASE WHEN stale_since_us > 0 THEN 0 ELSE NULL END \
         FROM (VALUES "
    );
    sql.push_str(&value_rows(
        rows,
        &["TEXT", "TEXT", "TEXT", "BIGINT", "BIGINT"],
        binds,
    ));
    sql.push_str(
        ") AS v WHERE agents.agent_id = v.column1 AND agents.deregistered_at_us IS NULL \
         RETURNING agents.agent_id, agents.state_ts_us, agents.state_received_us, \
         agents.stale_since_us, agents.last_seen_us, CAST(agents.state_reported AS BIGINT)",
    );
    sql
}

/// Locks the rows of `rows` agents (binds `$1`…, given in ascending byte
/// order, chunk after chunk). `lock_in_order` orders the rows by id in byte
/// order and names the lock, so every transaction takes its agents' locks
/// in one order: `agent_id` byte order, which is also Rust's `str` order.
pub(in crate::store) fn lock_agents_sql(rows: usize, lock_in_order: &str) -> String {
    format!(
        "SELECT agent_id FROM agents WHERE agent_id IN ({}) {lock_in_order}",
        in_list(rows)
    )
}

/// History rows for `rows` reports, binds as in [`apply_reports_sql`].
pub(in crate::store) fn insert_history_sql(rows: usize, binds: Binds) -> String {
    format!(
        "INSERT INTO state_history (agent_id, state, details, ts_us, received_us) VALUES {}",
        value_rows(rows, &[""; 5], binds)
    )
}

/// Split a batch into rounds that each hold at most one report per agent
/// (an `UPDATE ... FROM` must not meet a row twice): round k holds every
/// agent's k-th report, in arrival order. Within a round, reports are in
/// agent-id order.
pub(in crate::store) fn report_rounds(agents: &[&str]) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..agents.len()).collect();
    // Stable: one agent's reports keep arrival order.
    order.sort_by(|&a, &b| agents[a].cmp(agents[b]));
    let mut rounds: Vec<Vec<usize>> = Vec::new();
    let mut k = 0;
    for (pos, &i) in order.iter().enumerate() {
        k = if pos > 0 && agents[order[pos - 1]] == agents[i] {
            k + 1
        } else {
            0
        };
        if rounds.len() <= k {
            rounds.push(Vec::new());
        }
        rounds[k].push(i);
    }
    rounds
}

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
        crate::store::Liveness::holds_stale_sql("", "$1", "$2", "$3")
    )
});

pub(in crate::store) const COUNT_AGENTS_BY_STATE: &str =
    "SELECT state, COUNT(*) FROM agents WHERE deregistered_at_us IS NULL GROUP BY state";

pub(in crate::store) const LATEST_MIGRATION: &str =
    "SELECT MAX(version) FROM _sqlx_migrations WHERE success";

/// Build the listing query for `q`, returning SQL and its text binds in
/// order (`$1`, `$2`, …) plus the limit as the last bind.
pub(in crate::store) fn list_agents_sql(
    q: &crate::store::AgentQuery,
    live: &crate::store::Liveness,
) -> (String, Vec<String>) {
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
        let stale_sql = crate::store::Liveness::holds_stale_sql(
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
    pub(in crate::store) fn state_from_row(
        row: &B::Row,
    ) -> crate::store::StoreResult<crate::store::AgentState> {
        use sqlx::Row;
        Ok(crate::store::AgentState {
            agent_id: row.try_get(0)?,
            current: crate::domain::state::StateRecord {
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

    pub(in crate::store) fn agent_from_row(
        row: &B::Row,
    ) -> crate::store::StoreResult<crate::store::Agent> {
        use sqlx::Row;
        let caps: String = row.try_get(4)?;
        let meta: String = row.try_get(5)?;
        Ok(crate::store::Agent {
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
            current: crate::domain::state::StateRecord {
                state: row.try_get(10)?,
                details: crate::store::decode_details(row.try_get(11)?),
                timestamp: row.try_get(12)?,
                received_at: row.try_get(13)?,
            },
        })
    }
}

#[async_trait::async_trait]
impl<B> crate::store::AgentStore for SqlStore<B>
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
    async fn ready(&self) -> crate::store::StoreResult<()> {
        use crate::store::StoreError;
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
        sqlx::query(crate::store::health::PROBE_WRITE)
            .execute(self.writer())
            .await?;
        Ok(())
    }

    async fn register_agent(
        &self,
        reg: &crate::domain::agent::Registration,
        now: i64,
    ) -> crate::store::StoreResult<crate::store::RegisterOutcome> {
        let caps = serde_json::to_string(&reg.capabilities)
            .map_err(|e| crate::store::StoreError::Internal(e.to_string()))?;
        let meta = serde_json::to_string(&reg.metadata)
            .map_err(|e| crate::store::StoreError::Internal(e.to_string()))?;
        let id = reg.agent_id.as_str();
        let mut events = vec![crate::domain::event::NewEvent::registered(reg, now)];
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
                .bind(crate::domain::state::UNKNOWN)
                .bind(None::<&str>)
                .bind(now)
                .bind(now)
                .execute(&mut *tx)
                .await?;
            crate::store::RegisterOutcome::Created
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
                events.push(crate::domain::event::NewEvent::fresh(id, now));
            }
            sqlx::query(DELETE_CAPABILITIES)
                .bind(id)
                .execute(&mut *tx)
                .await?;
            crate::store::RegisterOutcome::Updated
        };
        for cap in &reg.capabilities {
            sqlx::query(INSERT_CAPABILITY)
                .bind(cap)
                .bind(id)
                .execute(&mut *tx)
                .await?;
        }
        let indexed = Self::flush_events(&mut tx, &events).await?;
        tx.commit().await?;
        if let Some(c) = self.current() {
            c.registered(reg, now, inserted);
        }
        self.events_committed(&events, &indexed);
        Ok(outcome)
    }

    async fn deregister_agent(
        &self,
        id: &crate::domain::agent::AgentId,
        now: i64,
    ) -> crate::store::StoreResult<()> {
        let mut tx = self.writer().begin().await?;
        let changed: Option<i32> = sqlx::query_scalar(DEREGISTER)
            .bind(id.as_str())
            .bind(now)
            .fetch_optional(&mut *tx)
            .await?;
        let events = match changed {
            None => return Err(crate::store::StoreError::agent_not_found(id)),
            Some(1) => vec![crate::domain::event::NewEvent::deregistered(
                id.as_str(),
                now,
            )],
            Some(_) => Vec::new(),
        };
        let indexed = Self::flush_events(&mut tx, &events).await?;
        tx.commit().await?;
        if let Some(c) = self.current() {
            c.deregistered(id.as_str(), now);
        }
        self.events_committed(&events, &indexed);
        Ok(())
    }

    async fn reset_state(
        &self,
        id: &crate::domain::agent::AgentId,
        details: Option<String>,
        now: i64,
    ) -> crate::store::StoreResult<()> {
        let mut tx = self.writer().begin().await?;
        let last_seen: Option<i64> = sqlx::query_scalar(RESET_STATE)
            .bind(id.as_str())
            .bind(details.as_deref())
            .bind(now)
            .fetch_optional(&mut *tx)
            .await?;
        let Some(last_seen) = last_seen else {
            return Err(crate::store::StoreError::agent_not_found(id));
        };
        let details = details
            .map(serde_json::value::RawValue::from_string)
            .transpose()
            .map_err(|e| crate::store::StoreError::Internal(e.to_string()))?;
        let report = crate::domain::state::StateReport {
            agent_id: id.clone(),
            state: crate::domain::state::UNKNOWN.to_owned(),
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
        let events = vec![crate::domain::event::NewEvent::state(&report)];
        let indexed = Self::flush_events(&mut tx, &events).await?;
        tx.commit().await?;
        if let Some(c) = self.current() {
            // The reset UNKNOWN is current whatever came before it.
            c.reported(&report, true, last_seen);
        }
        self.events_committed(&events, &indexed);
        Ok(())
    }

    async fn set_agent_lease(
        &self,
        id: &crate::domain::agent::AgentId,
        ttl_secs: Option<i64>,
        now: i64,
    ) -> crate::store::StoreResult<crate::store::Agent> {
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
            return Err(crate::store::StoreError::agent_not_found(id));
        };
        let mut events = Vec::new();
        if stale_since == Some(0) {
            events.push(crate::domain::event::NewEvent::fresh(id.as_str(), now));
        }
        let indexed = Self::flush_events(&mut tx, &events).await?;
        tx.commit().await?;
        if let Some(c) = self.current() {
            c.lease_set(id.as_str(), ttl_secs);
        }
        self.events_committed(&events, &indexed);
        self.get_agent(id).await
    }

    async fn apply_state_reports(
        &self,
        reports: &[crate::domain::state::StateReport],
    ) -> crate::store::StoreResult<crate::store::AppliedReports> {
        use crate::domain::workflow::MEANINGFUL_STATES;
        // A handful of statements per batch, not per report: each
        // statement is a round trip to the database (for SQLite, to
        // its connection's thread), and those dominated the cost.
        let mut results: Vec<crate::store::StoreResult<()>> =
            (0..reports.len()).map(|_| Ok(())).collect();
        let mut events = Vec::new();
        // (report, became current, last seen) in the order applied:
        // for the history and the state index.
        let mut applied_reports = Vec::with_capacity(reports.len());
        let ids: Vec<&str> = reports.iter().map(|r| r.agent_id.as_str()).collect();
        let mut tx = self.writer().begin().await?;
        let mut agents = ids.clone();
        agents.sort_unstable();
        agents.dedup();
        // Where several transactions write at once (PostgreSQL: a few
        // writer workers, several replicas), lock the batch's agents
        // first, in one global order: an `UPDATE ... FROM` locks rows
        // in whatever order its plan visits them, and two batches
        // sharing agents then deadlocked.
        let lock: &str = B::LOCK_AGENTS_IN_ORDER;
        if !lock.is_empty() {
            for chunk in agents.chunks(super::workflows::AGENT_CHUNK) {
                let sql = lock_agents_sql(chunk.len(), lock);
                let mut q = sqlx::query(&sql);
                for &a in chunk {
                    q = q.bind(a);
                }
                q.execute(&mut *tx).await?;
            }
        }
        // Only an agent with a task in flight or queued can have one
        // moved on by a report, and only one with a task queued can
        // make it claimable: ask once.
        let runs = Self::agents_with_runs(&mut tx, &agents).await?;
        let mut dispatchable = false;
        for round in report_rounds(&ids) {
            for chunk in round.chunks(REPORT_CHUNK) {
                let sql = apply_reports_sql(chunk.len(), B::BINDS);
                let mut q = sqlx::query_as::<_, (String, i64, i64, Option<i64>, i64, i64)>(&sql);
                for &i in chunk {
                    let r = &reports[i];
                    q = q
                        .bind(r.agent_id.as_str())
                        .bind(&r.state)
                        .bind(r.details.as_ref().map(|d| d.get()))
                        .bind(r.timestamp)
                        .bind(r.received_at);
                }
                let rows: std::collections::HashMap<String, (i64, i64, Option<i64>, i64, i64)> = q
                    .fetch_all(&mut *tx)
                    .await?
                    .into_iter()
                    .map(|(id, ts, received, stale, seen, reported)| {
                        (id, (ts, received, stale, seen, reported))
                    })
                    .collect();
                for &i in chunk {
                    let r = &reports[i];
                    let Some(&(ts, received, stale_since, last_seen, reported)) =
                        rows.get(r.agent_id.as_str())
                    else {
                        results[i] = Err(crate::store::StoreError::agent_not_found(&r.agent_id));
                        continue;
                    };
                    if reported == SUPERSEDED_LATER {
                        sqlx::query(UNKNOWN_BELOW)
                            .bind(r.agent_id.as_str())
                            .bind(r.timestamp)
                            .execute(&mut *tx)
                            .await?;
                    }
                    let fresh = stale_since == Some(0);
                    if fresh {
                        events.push(crate::domain::event::NewEvent::fresh(
                            r.agent_id.as_str(),
                            last_seen,
                        ));
                    }
                    let current = (ts, received) == (r.timestamp, r.received_at);
                    if current {
                        events.push(crate::domain::event::NewEvent::state(r));
                    }
                    let claimable = fresh
                        || (current
                            && super::workflows::CLAIMABLE_STATES.contains(&r.state.as_str()));
                    dispatchable |= claimable && runs.queued.contains(r.agent_id.as_str());
                    applied_reports.push((r, current, last_seen));
                }
            }
            // Tasks move on in report order per agent: this round's
            // before the next round's reports are applied.
            for &i in &round {
                let r = &reports[i];
                // A run waiting for a retry counts too: a report
                // naming it may show the agent has it after all.
                let agent = r.agent_id.as_str();
                if results[i].is_ok()
                    && (runs.in_flight.contains(agent) || runs.queued.contains(agent))
                    && MEANINGFUL_STATES.contains(&r.state.as_str())
                {
                    let before = events.len();
                    Self::advance_on_report(&mut tx, r, self.rules(), &mut events).await?;
                    // A task moved on: the agent may be free, a next
                    // task or a retry queued.
                    dispatchable |= events.len() > before;
                }
            }
        }
        for chunk in applied_reports.chunks(REPORT_CHUNK) {
            let sql = insert_history_sql(chunk.len(), B::BINDS);
            let mut q = sqlx::query(&sql);
            for (r, _, _) in chunk {
                q = q
                    .bind(r.agent_id.as_str())
                    .bind(&r.state)
                    .bind(r.details.as_ref().map(|d| d.get()))
                    .bind(r.timestamp)
                    .bind(r.received_at);
            }
            q.execute(&mut *tx).await?;
        }
        let indexed = Self::flush_events(&mut tx, &events).await?;
        tx.commit().await?;
        if let Some(c) = self.current() {
            for (r, current, last_seen) in applied_reports {
                c.reported(r, current, last_seen);
            }
        }
        self.events_committed(&events, &indexed);
        Ok(crate::store::AppliedReports {
            results,
            dispatchable,
        })
    }

    async fn get_agent(
        &self,
        id: &crate::domain::agent::AgentId,
    ) -> crate::store::StoreResult<crate::store::Agent> {
        let sql = format!("SELECT {} FROM agents WHERE agent_id = $1", AGENT_COLUMNS);
        let row = sqlx::query(&sql)
            .bind(id.as_str())
            .fetch_optional(self.reader())
            .await?
            .ok_or_else(|| crate::store::StoreError::agent_not_found(id))?;
        Self::agent_from_row(&row)
    }

    async fn get_state(
        &self,
        id: &crate::domain::agent::AgentId,
    ) -> crate::store::StoreResult<crate::store::AgentState> {
        if let Some(c) = self.current() {
            return c
                .get(id.as_str())
                .ok_or_else(|| crate::store::StoreError::agent_not_found(id));
        }
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
            .ok_or_else(|| crate::store::StoreError::agent_not_found(id))?;
        let mut state = Self::state_from_row(&row)?;
        state.event_index = sqlx::Row::try_get(&row, 8)?;
        Ok(state)
    }

    async fn list_agents(
        &self,
        q: &crate::store::AgentQuery,
    ) -> crate::store::StoreResult<Vec<crate::store::Agent>> {
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
        id: &crate::domain::agent::AgentId,
        q: &crate::store::HistoryQuery,
    ) -> crate::store::StoreResult<Vec<crate::store::HistoryEntry>> {
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
            return Err(crate::store::StoreError::agent_not_found(id));
        }
        rows.iter()
            .map(|row| {
                Ok(crate::store::HistoryEntry {
                    seq: row.try_get(0)?,
                    record: crate::domain::state::StateRecord {
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

    async fn count_agents_by_state(&self) -> crate::store::StoreResult<Vec<(String, i64)>> {
        Ok(sqlx::query_as(COUNT_AGENTS_BY_STATE)
            .fetch_all(self.reader())
            .await?)
    }

    async fn count_stale_agents(&self, now: i64) -> crate::store::StoreResult<i64> {
        let live = self.rules().liveness;
        Ok(sqlx::query_scalar(COUNT_STALE_AGENTS.as_str())
            .bind(live.ttl_secs)
            .bind(live.grace_secs)
            .bind(now)
            .fetch_one(self.reader())
            .await?)
    }

    fn pool_stats(&self) -> Vec<crate::store::PoolStats> {
        self.pools()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::AgentQuery;

    #[test]
    fn rounds_hold_each_agent_once_in_arrival_order() {
        let agents = ["b", "a", "b", "c", "b", "a"];
        assert_eq!(
            report_rounds(&agents),
            [vec![1, 0, 3], vec![5, 2], vec![4]],
            "round k holds each agent's k-th report, agents in id order"
        );
        assert!(report_rounds(&[]).is_empty());
    }

    #[test]
    fn batch_statements_number_five_binds_per_row() {
        let update = apply_reports_sql(2, Binds::Numbered);
        assert!(update.contains("CAST($6 AS TEXT)"), "{update}");
        assert!(update.contains("CAST($10 AS BIGINT))"), "{update}");
        assert!(!update.contains("$11"), "{update}");
        assert!(insert_history_sql(2, Binds::Numbered).ends_with("($6, $7, $8, $9, $10)"));
    }

    #[test]
    fn anonymous_batch_statements_hold_five_bare_binds_per_row() {
        let update = apply_reports_sql(2, Binds::Anonymous);
        assert_eq!(update.matches('?').count(), 10, "{update}");
        assert!(!update.contains('$'), "{update}");
        assert!(update.contains("(CAST(? AS TEXT), CAST(? AS TEXT), CAST(? AS TEXT), CAST(? AS BIGINT), CAST(? AS BIGINT)), ("), "{update}");
        assert!(insert_history_sql(2, Binds::Anonymous)
            .ends_with("VALUES (?, ?, ?, ?, ?), (?, ?, ?, ?, ?)"));
    }

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
