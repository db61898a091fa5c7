//! A report batch in few round trips, where the dialect has data-modifying
//! `WITH` (PostgreSQL), for a batch that holds at most one report per agent
//! (one round of `report_rounds`, the common case under load).
//!
//! First, in **one statement** and so one round trip, committed on its own
//! ([`one_statement_sql`]): lock the agents' rows in id order, update their
//! current states, insert the history rows and the `agent.state` events of
//! the reports that became current. The statement first checks that the
//! batch needs nothing more: no report for an agent with a task run in
//! flight or queued in a state that may move the task on (decided in Rust)
//! or let it go out, none that ends an agent's staleness (an `agent.fresh`
//! event) and none that takes the place of a later `UNKNOWN` (its history
//! entry is moved). If one does, it writes nothing and says so, and the
//! batch is applied as below.
//!
//! Otherwise, two statements between BEGIN and COMMIT instead of six:
//!
//! 1. lock the agents' rows in id order and update their current states
//!    ([`lock_and_apply_sql`]);
//! 2. the history rows, the events, and which of the agents have task runs
//!    ([`tail_sql`]), after the locks are held, as the separate query did.
//!
//! Only agents with a task run (known from 2) take more statements, to move
//! their tasks on: their events follow the batch's own, as before. The
//! decisions are those of `reports.rs`, unchanged.
//!
//! The one statement reads the task runs in the snapshot it starts with,
//! not after it holds the agents' locks as 2 does. That is enough: a report
//! that a run may follow was sent by an agent that had been sent the run,
//! after the transaction that made the run in flight (or queued it)
//! committed, so before the statement began. A run made while the
//! statement waits for a lock is one the reporting agent cannot know of
//! yet (docs/guarantees.md, "Reports and tasks").

use std::collections::HashMap;

use serde_json::json;
use sqlx::{ColumnIndex, Decode, Encode, Executor, IntoArguments, Type};

use super::reports::{apply_reports_sql, update_states_sql, SUPERSEDES_LATER};
use crate::domain::event::NewEvent;
use crate::domain::state::StateReport;
use crate::store::sql::workflows::{agent_runs_sql, AgentRuns, MOVABLE_BY_REPORT, STATES_FOR_RUNS};
use crate::store::sql::{value_rows, Backend, Binds, SqlStore};
use crate::store::{AppliedReports, StoreError, StoreResult};

/// [`apply_reports_sql`] for `rows` reports of distinct agents, taking the
/// agents' row locks first, in id byte order (`lock_in_order`), in the same
/// statement: the materialised CTE locks them in that order, and the update
/// reaches a row only through it.
pub(in crate::store) fn lock_and_apply_sql(rows: usize, lock_in_order: &str) -> String {
    let ids: Vec<String> = (0..rows).map(|r| format!("${}", r * 5 + 1)).collect();
    let update = apply_reports_sql(rows, Binds::Numbered);
    let (head, tail) = update
        .split_once(" RETURNING ")
        .unwrap_or((update.as_str(), ""));
    format!(
        "WITH l AS MATERIALIZED (SELECT agent_id FROM agents WHERE agent_id IN ({}) {lock_in_order}) \
         {head} AND agents.agent_id IN (SELECT agent_id FROM l) RETURNING {tail}",
        ids.join(", ")
    )
}

/// A row of [`one_statement_sql`]: a tag, then what the tag says.
type OneStatementRow = (i64, Option<String>, i64, i64, Option<i64>, i64, i64);

/// The whole of a batch of `rows` reports for distinct agents in one
/// statement, as the module docs say: `(0, agent, ts, received,
/// stale_since, last_seen, reported)` per agent updated (as
/// [`apply_reports_sql`] returns), `(1, agent, index)` per event inserted,
/// `(2, …)` when the batch needs more and nothing was written, `(4, …)`
/// when a pool's run waits for any agent. `lock_in_order` as in
/// [`lock_and_apply_sql`].
pub(in crate::store) fn one_statement_sql(rows: usize, lock_in_order: &str) -> String {
    let values = value_rows(
        rows,
        &["TEXT", "TEXT", "TEXT", "BIGINT", "BIGINT", "BIGINT", "TEXT"],
        Binds::Numbered,
    );
    let update = update_states_sql("v");
    let (head, tail) = update
        .split_once(" RETURNING ")
        .unwrap_or((update.as_str(), ""));
    format!(
        "WITH v (column1, column2, column3, column4, column5, column6, column7) AS (VALUES {values}), \
         l AS MATERIALIZED (SELECT agent_id, stale_since_us, state_reported, state_ts_us FROM agents \
           WHERE agent_id IN (SELECT column1 FROM v) {lock_in_order}), \
         go AS MATERIALIZED (SELECT NOT EXISTS (SELECT 1 FROM l JOIN v ON v.column1 = l.agent_id \
             WHERE stale_since_us > 0 OR ({SUPERSEDES_LATER})) \
           AND NOT EXISTS (SELECT 1 FROM task_runs WHERE status IN {movable} \
             AND agent_id IN (SELECT column1 FROM v WHERE column2 IN {for_runs})) AS ok), \
         u AS ({head} AND agents.agent_id IN (SELECT agent_id FROM l) AND (SELECT ok FROM go) \
           RETURNING {tail}), \
         h AS (INSERT INTO state_history (agent_id, state, details, ts_us, received_us) \
           SELECT v.column1, v.column2, v.column3, v.column4, v.column5 FROM v JOIN u ON u.agent_id = v.column1 \
           ORDER BY v.column1 COLLATE \"C\"), \
         e AS (INSERT INTO events (kind, agent_id, session_id, at_us, data) \
           SELECT '{kind}', v.column1, NULL, v.column6, v.column7 FROM v JOIN u ON u.agent_id = v.column1 \
           WHERE u.state_ts_us = v.column4 AND u.state_received_us = v.column5 \
           ORDER BY v.column1 COLLATE \"C\" RETURNING agent_id, idx) \
         SELECT CAST(0 AS BIGINT), agent_id, state_ts_us, state_received_us, stale_since_us, last_seen_us, state_reported FROM u \
         UNION ALL SELECT 1, agent_id, idx, 0, NULL, 0, 0 FROM e \
         UNION ALL SELECT 2, NULL, 0, 0, NULL, 0, 0 FROM go WHERE NOT ok \
         UNION ALL SELECT 4, NULL, 0, 0, NULL, 0, 0 \
           WHERE EXISTS (SELECT 1 FROM task_runs WHERE status = 'queued' AND agent_id IS NULL)",
        movable = MOVABLE_BY_REPORT.as_str(),
        for_runs = STATES_FOR_RUNS.as_str(),
        kind = crate::domain::event::EventKind::AgentState.as_str(),
    )
}

/// History rows (`$1`), events (`$2`, in order) and agent ids (`$3`), each
/// a JSON array; returns `(0, agent, index)` per event inserted, `(1,
/// agent, 0)` per agent with a run in flight, `(2, agent, 0)` per agent
/// with a run queued.
pub(in crate::store) fn tail_sql() -> String {
    format!(
        "WITH h AS (INSERT INTO state_history (agent_id, state, details, ts_us, received_us) \
           SELECT x->>0, x->>1, x->>2, CAST(x->>3 AS BIGINT), CAST(x->>4 AS BIGINT) \
           FROM jsonb_array_elements(CAST($1 AS JSONB)) AS x), \
         e AS (INSERT INTO events (kind, agent_id, session_id, at_us, data) \
           SELECT x->>0, x->>1, x->>2, CAST(x->>3 AS BIGINT), x->>4 \
           FROM jsonb_array_elements(CAST($2 AS JSONB)) WITH ORDINALITY AS t(x, n) ORDER BY n \
           RETURNING agent_id, idx), \
         ids AS (SELECT jsonb_array_elements_text(CAST($3 AS JSONB)) AS agent_id) \
         SELECT CAST(0 AS BIGINT), agent_id, idx, CAST(NULL AS TEXT) FROM e \
         UNION ALL {runs} \
         UNION ALL SELECT CAST(4 AS BIGINT), NULL, CAST(0 AS BIGINT), CAST(NULL AS TEXT) \
           WHERE EXISTS (SELECT 1 FROM task_runs WHERE status = 'queued' AND agent_id IS NULL)",
        runs = agent_runs_sql(
            "SELECT agent_id FROM ids",
            ("CAST(1 AS BIGINT)", "CAST(2 AS BIGINT)"),
            "CAST(0 AS BIGINT), "
        )
    )
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
    /// Apply `reports`, at most one per agent, given in agent-id order
    /// (`order`: indexes into `reports`), as the module docs say.
    pub(super) async fn apply_one_round(
        &self,
        reports: &[StateReport],
        order: &[usize],
    ) -> StoreResult<AppliedReports> {
        if order.len() <= super::reports::REPORT_CHUNK {
            if let Some(applied) = self.apply_in_one_statement(reports, order).await? {
                return Ok(applied);
            }
        }
        let mut results: Vec<StoreResult<()>> = (0..reports.len()).map(|_| Ok(())).collect();
        let mut events = Vec::new();
        let mut applied = Vec::with_capacity(reports.len());
        // (report, fresh, current) of each report applied, for the runs.
        let mut moved = Vec::with_capacity(reports.len());
        let mut tx = self.writer().begin().await?;
        for chunk in order.chunks(super::reports::REPORT_CHUNK) {
            let sql = lock_and_apply_sql(chunk.len(), B::LOCK_AGENTS_IN_ORDER);
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
            let rows: HashMap<String, (i64, i64, Option<i64>, i64, i64)> = q
                .fetch_all(&mut *tx)
                .await?
                .into_iter()
                .map(|(id, ts, rec, stale, seen, rep)| (id, (ts, rec, stale, seen, rep)))
                .collect();
            for &i in chunk {
                let r = &reports[i];
                let Some(row) = rows.get(r.agent_id.as_str()) else {
                    results[i] = Err(StoreError::agent_not_found(&r.agent_id));
                    continue;
                };
                let (fresh, current, last_seen) =
                    Self::note_applied(&mut tx, r, row, &mut events).await?;
                applied.push((r, current, last_seen));
                moved.push((i, fresh, current));
            }
        }
        let history: Vec<_> = applied
            .iter()
            .map(|(r, _, _)| {
                json!([
                    r.agent_id.as_str(),
                    r.state,
                    r.details.as_ref().map(|d| d.get()),
                    r.timestamp,
                    r.received_at
                ])
            })
            .collect();
        let new_events: Vec<_> = events
            .iter()
            .map(|e| json!([e.kind.as_str(), e.agent_id, e.session_id, e.at, e.data]))
            .collect();
        let agents: Vec<&str> = applied
            .iter()
            .map(|(r, _, _)| r.agent_id.as_str())
            .collect();
        let rows: Vec<(i64, Option<String>, i64, Option<String>)> = sqlx::query_as(&tail_sql())
            .bind(serde_json::Value::Array(history).to_string())
            .bind(serde_json::Value::Array(new_events).to_string())
            .bind(json!(agents).to_string())
            .fetch_all(&mut *tx)
            .await?;
        let mut indexed = Vec::new();
        let mut runs = AgentRuns::default();
        for (tag, agent, idx, session) in rows {
            match (tag, agent) {
                (0, Some(a)) => indexed.push((a, idx)),
                (1, Some(a)) => runs.note(a, true, session),
                (2, Some(a)) => runs.note(a, false, session),
                // A pool's run no agent holds yet: any freed agent may
                // take it (docs/api.md §3.3).
                (4, None) => runs.unassigned = true,
                _ => {}
            }
        }
        let mut dispatchable = false;
        let before = events.len();
        let mut moving = Vec::new();
        for (i, fresh, current) in moved {
            let r = &reports[i];
            dispatchable |= runs.may_wake(r, fresh, current);
            if runs.may_move(r) {
                moving.push(r);
            }
        }
        dispatchable |=
            Self::advance_in_session_order(&mut tx, &runs, moving, self.rules(), &mut events)
                .await?;
        indexed.extend(Self::flush_events(&mut tx, &events[before..]).await?);
        tx.commit().await?;
        self.batches().transaction();
        // Every report is a sighting, also one that did not become
        // current (no event says so); the states come with the events.
        for (r, _, last_seen) in applied {
            self.model().seen(r.agent_id.as_str(), last_seen);
        }
        self.events_committed(&events, &indexed);
        Ok(AppliedReports {
            results,
            dispatchable,
        })
    }

    /// The batch in [`one_statement_sql`], committed on its own; `None`
    /// (nothing written) when it needs more than that statement does.
    async fn apply_in_one_statement(
        &self,
        reports: &[StateReport],
        order: &[usize],
    ) -> StoreResult<Option<AppliedReports>> {
        let sql = one_statement_sql(order.len(), B::LOCK_AGENTS_IN_ORDER);
        // Each report's `agent.state` event, inserted if it became current.
        let candidates: Vec<NewEvent> = order
            .iter()
            .map(|&i| NewEvent::state(&reports[i]))
            .collect();
        let mut q = sqlx::query_as::<_, OneStatementRow>(&sql);
        for (&i, event) in order.iter().zip(&candidates) {
            let r = &reports[i];
            q = q
                .bind(r.agent_id.as_str())
                .bind(&r.state)
                .bind(r.details.as_ref().map(|d| d.get()))
                .bind(r.timestamp)
                .bind(r.received_at)
                .bind(event.at)
                .bind(event.data.as_str());
        }
        let mut updated = HashMap::with_capacity(order.len());
        let mut indexed = Vec::new();
        let mut unassigned = false;
        for (tag, agent, a, b, stale, last_seen, reported) in q.fetch_all(self.writer()).await? {
            match (tag, agent) {
                (0, Some(agent)) => {
                    updated.insert(agent, (a, b, stale, last_seen, reported));
                }
                (1, Some(agent)) => indexed.push((agent, a)),
                (2, _) => return Ok(None),
                (4, _) => unassigned = true,
                _ => {}
            }
        }
        self.batches().one_statement();
        let runs = AgentRuns {
            unassigned,
            ..AgentRuns::default()
        };
        let mut results: Vec<StoreResult<()>> = (0..reports.len()).map(|_| Ok(())).collect();
        let mut events = Vec::with_capacity(indexed.len());
        let mut dispatchable = false;
        for (&i, event) in order.iter().zip(candidates) {
            let r = &reports[i];
            let Some(&(ts, received, _, last_seen, _)) = updated.get(r.agent_id.as_str()) else {
                results[i] = Err(StoreError::agent_not_found(&r.agent_id));
                continue;
            };
            // The statement went ahead only if no report ends a staleness
            // or takes a later UNKNOWN's place: what is left to know is
            // whether the report became current.
            let current = (ts, received) == (r.timestamp, r.received_at);
            dispatchable |= runs.may_wake(r, false, current);
            if current {
                events.push(event);
            }
            self.model().seen(r.agent_id.as_str(), last_seen);
        }
        self.events_committed(&events, &indexed);
        Ok(Some(AppliedReports {
            results,
            dispatchable,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lock_names_each_report_agent_bind() {
        let sql = lock_and_apply_sql(2, "ORDER BY agent_id FOR UPDATE");
        assert!(
            sql.starts_with(
                "WITH l AS MATERIALIZED (SELECT agent_id FROM agents WHERE agent_id IN ($1, $6) \
                 ORDER BY agent_id FOR UPDATE) UPDATE agents"
            ),
            "{sql}"
        );
        assert!(
            sql.contains(
                "AND agents.agent_id IN (SELECT agent_id FROM l) RETURNING agents.agent_id"
            ),
            "{sql}"
        );
    }
}
