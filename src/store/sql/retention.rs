//! Retention: state history and finished sessions are deleted by age and
//! by count per agent, in small batches (each its own short transaction,
//! so pruning never holds up writes for long). The current state lives in
//! the `agents` row and is never touched; unfinished sessions are never
//! deleted.

use async_trait::async_trait;
use sqlx::{ColumnIndex, Decode, Encode, Executor, IntoArguments, Type};

use super::backend::RowsAffected;
use super::{Backend, SqlStore};
use crate::store::{KeepPerAgent, PerAgentPass, RetentionStore, StoreResult};

#[async_trait]
impl<B> RetentionStore for SqlStore<B>
where
    B: Backend,
    for<'c> &'c mut B::Connection: Executor<'c, Database = B>,
    for<'q> B::Arguments<'q>: IntoArguments<'q, B>,
    usize: ColumnIndex<B::Row>,
    for<'q> &'q str: Encode<'q, B> + Type<B>,
    for<'q> String: Encode<'q, B> + Decode<'q, B> + Type<B>,
    for<'q> i64: Encode<'q, B> + Decode<'q, B> + Type<B>,
{
    async fn prune_history_before(&self, before: i64, limit: u32) -> StoreResult<u64> {
        // Oldest first by sequence, which follows arrival: the scan
        // stops after `limit` matches at the start of the table.
        Ok(sqlx::query(
            "DELETE FROM state_history WHERE seq IN \
             (SELECT seq FROM state_history WHERE received_us < $1 ORDER BY seq LIMIT $2)",
        )
        .bind(before)
        .bind(i64::from(limit))
        .execute(self.writer())
        .await?
        .rows_affected())
    }

    async fn prune_sessions_before(&self, before: i64, limit: u32) -> StoreResult<u64> {
        // Session ids are UUIDv7: id order is creation order. Task
        // runs go with their session (ON DELETE CASCADE).
        Ok(sqlx::query(
            "DELETE FROM sessions WHERE session_id IN \
             (SELECT session_id FROM sessions WHERE finished_at_us < $1 ORDER BY session_id LIMIT $2)",
        )
        .bind(before)
        .bind(i64::from(limit))
        .execute(self.writer())
        .await?
        .rows_affected())
    }

    async fn prune_per_agent(
        &self,
        after: Option<&str>,
        agents: u32,
        keep: &KeepPerAgent,
    ) -> StoreResult<PerAgentPass> {
        let ids: Vec<String> = sqlx::query_scalar(
            "SELECT agent_id FROM agents WHERE agent_id > $1 ORDER BY agent_id LIMIT $2",
        )
        .bind(after.unwrap_or(""))
        .bind(i64::from(agents))
        .fetch_all(self.reader())
        .await?;
        let mut deleted = 0;
        for id in &ids {
            if let Some(n) = keep.history {
                // The newest `n` entries, in the order history is
                // shown, stay; the (n+1)th and older go.
                let cut: Option<(i64, i64)> = sqlx::query_as(
                    "SELECT ts_us, seq FROM state_history WHERE agent_id = $1 \
                     ORDER BY ts_us DESC, seq DESC LIMIT 1 OFFSET $2",
                )
                .bind(id)
                .bind(i64::from(n))
                .fetch_optional(self.reader())
                .await?;
                if let Some((ts, seq)) = cut {
                    deleted += sqlx::query(
                        "DELETE FROM state_history WHERE agent_id = $1 \
                         AND (ts_us < $2 OR (ts_us = $2 AND seq <= $3))",
                    )
                    .bind(id)
                    .bind(ts)
                    .bind(seq)
                    .execute(self.writer())
                    .await?
                    .rows_affected();
                }
            }
            if let Some(n) = keep.sessions {
                let cut: Option<String> = sqlx::query_scalar(
                    "SELECT session_id FROM sessions WHERE agent_id = $1 AND finished_at_us IS NOT NULL \
                     ORDER BY session_id DESC LIMIT 1 OFFSET $2",
                )
                .bind(id)
                .bind(i64::from(n))
                .fetch_optional(self.reader())
                .await?;
                if let Some(cut) = cut {
                    deleted += sqlx::query(
                        "DELETE FROM sessions WHERE agent_id = $1 AND finished_at_us IS NOT NULL \
                         AND session_id <= $2",
                    )
                    .bind(id)
                    .bind(cut)
                    .execute(self.writer())
                    .await?
                    .rows_affected();
                }
            }
        }
        let next = if ids.len() < agents as usize {
            None
        } else {
            ids.last().cloned()
        };
        Ok(PerAgentPass { next, deleted })
    }
}
