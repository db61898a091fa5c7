//! State reports in batches: a handful of statements per batch, not per
//! report, applied in one transaction with the task moves they cause.

use sqlx::{ColumnIndex, Decode, Encode, Executor, IntoArguments, Type};

use super::*;
use crate::domain::event::NewEvent;
use crate::domain::state::StateReport;
use crate::store::sql::workflows::AGENT_CHUNK;
use crate::store::sql::{value_rows, Backend, Binds, SqlStore};
use crate::store::{AppliedReports, StoreError, StoreResult};

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
    let values = value_rows(rows, &["TEXT", "TEXT", "TEXT", "BIGINT", "BIGINT"], binds);
    update_states_sql(&format!("(VALUES {values}) AS v"))
}

/// A report (`v`) takes the place of a later `UNKNOWN` the service set
/// (the agent's row as it was before the update): [`SUPERSEDED_LATER`].
pub(in crate::store) const SUPERSEDES_LATER: &str =
    "state_reported = 0 AND state_ts_us > v.column4";

/// The `UPDATE` of [`apply_reports_sql`] from `source`, a row source named
/// `v` whose columns `column1` to `column5` are the reports' five values.
pub(in crate::store) fn update_states_sql(source: &str) -> String {
    const NEWER: &str = "(state_reported = 0 OR state_ts_us < v.column4 \
                         OR (state_ts_us = v.column4 AND state_received_us <= v.column5))";
    format!(
        "UPDATE agents SET \
         last_seen_us = CASE WHEN last_seen_us < v.column5 THEN v.column5 ELSE last_seen_us END, \
         state = CASE WHEN {NEWER} THEN v.column2 ELSE state END, \
         state_details = CASE WHEN {NEWER} THEN v.column3 ELSE state_details END, \
         state_ts_us = CASE WHEN {NEWER} THEN v.column4 ELSE state_ts_us END, \
         state_received_us = CASE WHEN {NEWER} THEN v.column5 ELSE state_received_us END, \
         state_reported = CASE WHEN {SUPERSEDES_LATER} THEN {SUPERSEDED_LATER} ELSE 1 END, \
         stale_since_us = CASE WHEN stale_since_us > 0 THEN 0 ELSE NULL END \
         FROM {source} WHERE agents.agent_id = v.column1 AND agents.deregistered_at_us IS NULL \
         RETURNING agents.agent_id, agents.state_ts_us, agents.state_received_us, \
         agents.stale_since_us, agents.last_seen_us, CAST(agents.state_reported AS BIGINT)"
    )
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
    pub(super) async fn apply_reports(
        &self,
        reports: &[StateReport],
    ) -> StoreResult<AppliedReports> {
        // A handful of statements per batch, not per report: each
        // statement is a round trip to the database (for SQLite, to
        // its connection's thread), and those dominated the cost.
        let ids: Vec<&str> = reports.iter().map(|r| r.agent_id.as_str()).collect();
        let rounds = report_rounds(&ids);
        if B::DATA_MODIFYING_WITH && rounds.len() == 1 {
            return self.apply_one_round(reports, &rounds[0]).await;
        }
        let mut results: Vec<StoreResult<()>> = (0..reports.len()).map(|_| Ok(())).collect();
        let mut events = Vec::new();
        // (report, became current, last seen) in the order applied:
        // for the history and the state index.
        let mut applied_reports = Vec::with_capacity(reports.len());
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
            for chunk in agents.chunks(AGENT_CHUNK) {
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
        for round in rounds {
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
                    let Some(row) = rows.get(r.agent_id.as_str()) else {
                        results[i] = Err(StoreError::agent_not_found(&r.agent_id));
                        continue;
                    };
                    let (fresh, current, last_seen) =
                        Self::note_applied(&mut tx, r, row, &mut events).await?;
                    dispatchable |= runs.may_wake(r, fresh, current);
                    applied_reports.push((r, current, last_seen));
                }
            }
            // Tasks move on in report order per agent: this round's
            // before the next round's reports are applied.
            let moving: Vec<&StateReport> = round
                .iter()
                .filter(|&&i| results[i].is_ok() && runs.may_move(&reports[i]))
                .map(|&i| &reports[i])
                .collect();
            // A task moved on: the agent may be free, a next task or a
            // retry queued.
            dispatchable |=
                Self::advance_in_session_order(&mut tx, &runs, moving, self.rules(), &mut events)
                    .await?;
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
        self.batches().transaction();
        // Every report is a sighting, also one that did not become
        // current (no event says so); the states come with the events.
        for (r, _, last_seen) in applied_reports {
            self.model().seen(r.agent_id.as_str(), last_seen);
        }
        self.events_committed(&events, &indexed);
        Ok(AppliedReports {
            results,
            dispatchable,
        })
    }
}

/// What the apply statement answers for one agent's report: its agent's
/// `(ts, received, stale_since, last_seen, reported)` after the update.
pub(in crate::store) type AppliedRow = (i64, i64, Option<i64>, i64, i64);

impl<B> SqlStore<B>
where
    B: Backend,
    for<'c> &'c mut B::Connection: Executor<'c, Database = B>,
    for<'q> B::Arguments<'q>: IntoArguments<'q, B>,
    for<'q> &'q str: Encode<'q, B> + Type<B>,
    for<'q> i64: Encode<'q, B> + Type<B>,
{
    /// The bookkeeping of one applied report, the same whichever way the
    /// batch reached the database: a late report that took a later one's
    /// place moves that one's history below it; the events of an agent
    /// becoming fresh again and of a state becoming current. Returns
    /// `(fresh, current, last_seen)`.
    pub(in crate::store) async fn note_applied(
        conn: &mut B::Connection,
        r: &StateReport,
        &(ts, received, stale_since, last_seen, reported): &AppliedRow,
        events: &mut Vec<NewEvent>,
    ) -> StoreResult<(bool, bool, i64)> {
        if reported == SUPERSEDED_LATER {
            sqlx::query(UNKNOWN_BELOW)
                .bind(r.agent_id.as_str())
                .bind(r.timestamp)
                .execute(&mut *conn)
                .await?;
        }
        let fresh = stale_since == Some(0);
        if fresh {
            events.push(NewEvent::fresh(r.agent_id.as_str(), last_seen));
        }
        let current = (ts, received) == (r.timestamp, r.received_at);
        if current {
            events.push(NewEvent::state(r));
        }
        Ok((fresh, current, last_seen))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
