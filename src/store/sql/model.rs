//! The read model's side of the store (`store::readmodel`): loading it from
//! one snapshot, applying this process's commits to it, and applying what
//! the change feed brings from other replicas.

use std::collections::HashMap;

use sqlx::{ColumnIndex, Decode, Encode, Executor, IntoArguments, Pool, Type};

use super::agents::AGENT_COLUMNS;
use super::events::settled_horizon;
use super::horizon::FeedHorizon;
use super::workflows::AGENT_CHUNK;
use super::{in_list, Backend, SqlStore};
use crate::domain::event::{Event, EventKind, NewEvent};
use crate::store::readmodel::{Change, Details, ReadModel};
use crate::store::{Agent, StoreResult};

/// The feed's head: the newest index written, or the pruning point when
/// every event is gone (as `event_bounds` reads it).
pub(in crate::store) const EVENT_HEAD: &str =
    "SELECT COALESCE((SELECT MAX(idx) FROM events), pruned_through) FROM event_retention WHERE id = 1";

/// Pair each event about an agent with its feed index. `indexed` is what
/// `flush_events` returned: one `(agent, index)` per such event, indexes
/// given in the order the events were written.
pub(in crate::store) fn indexed_events<'e>(
    events: &'e [NewEvent],
    indexed: &[(String, i64)],
) -> Vec<(&'e NewEvent, i64)> {
    let mut indexes: Vec<i64> = indexed.iter().map(|(_, i)| *i).collect();
    indexes.sort_unstable();
    events
        .iter()
        .filter(|e| e.agent_id.is_some())
        .zip(indexes)
        .collect()
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
    /// A feed horizon (`sql::horizon`) settled now, waiting a bounded time
    /// for the transactions running now to end; `None` where commits are
    /// in index order by themselves (SQLite).
    async fn settled_head(pool: &Pool<B>) -> StoreResult<Option<i64>> {
        if B::FEED_MARK.is_empty() {
            return Ok(None);
        }
        let horizon = FeedHorizon::default();
        let wait = std::time::Duration::from_secs(5);
        let settled = settled_horizon(|| Self::read_mark(pool, &horizon), wait).await?;
        Ok(Some(settled))
    }

    /// Every agent, and the feed index they are current as of, read from
    /// one snapshot of the database.
    pub(in crate::store) async fn load_read_model(pool: &Pool<B>) -> StoreResult<ReadModel> {
        use futures_util::TryStreamExt;
        let model = ReadModel::default();
        let settled = Self::settled_head(pool).await?;
        let mut tx = pool.begin().await?;
        if !B::SNAPSHOT.is_empty() {
            sqlx::query(B::SNAPSHOT).execute(&mut *tx).await?;
        }
        let newest: i64 = sqlx::query_scalar(EVENT_HEAD).fetch_one(&mut *tx).await?;
        // Where writers commit out of index order (PostgreSQL), the model
        // is current only up to a horizon settled before its snapshot was
        // taken: an event below the newest index may still have been
        // uncommitted. The feed then applies again what lies above it.
        let head = settled.map_or(newest, |s| s.min(newest));
        {
            let sql = format!("SELECT {AGENT_COLUMNS} FROM agents");
            let mut rows = sqlx::query(&sql).fetch(&mut *tx);
            while let Some(row) = rows.try_next().await? {
                model.load(Self::agent_from_row(&row)?, head);
            }
        }
        tx.commit().await?;
        model.set_loaded_through(head);
        Ok(model)
    }

    /// Apply what the change feed read (every replica's commits, in index
    /// order) before it is served: registrations it has not applied yet
    /// take their details from the database, the rest is in the events.
    pub(in crate::store) async fn apply_feed(&self, events: &[Event]) -> StoreResult<()> {
        let model = self.model();
        let mut wanted: Vec<&str> = events
            .iter()
            .filter(|e| e.kind == EventKind::AgentRegistered)
            .filter_map(|e| Some((e.agent_id.as_deref()?, e.index)))
            .filter(|(id, index)| model.lacks_registration(id, *index))
            .map(|(id, _)| id)
            .collect();
        wanted.sort_unstable();
        wanted.dedup();
        let mut registered: HashMap<String, Agent> = HashMap::new();
        for chunk in wanted.chunks(AGENT_CHUNK) {
            let sql = format!(
                "SELECT {AGENT_COLUMNS} FROM agents WHERE agent_id IN ({})",
                in_list(chunk.len())
            );
            let mut q = sqlx::query(&sql);
            for id in chunk {
                q = q.bind(*id);
            }
            for row in q.fetch_all(self.reader()).await? {
                let a = Self::agent_from_row(&row)?;
                registered.insert(a.agent_id.clone(), a);
            }
        }
        for e in events {
            let Some(id) = e.agent_id.as_deref() else {
                continue;
            };
            if !model.is_news(id, e.index, e.kind) {
                model.apply(id, e.index, Change::Other);
                continue;
            }
            let change = match (e.kind, registered.get(id)) {
                (EventKind::AgentRegistered, Some(a)) => {
                    let capabilities =
                        serde_json::to_string(&a.capabilities).unwrap_or_else(|_| "[]".into());
                    let metadata =
                        serde_json::to_string(&a.metadata).unwrap_or_else(|_| "{}".into());
                    model.apply(
                        id,
                        e.index,
                        Change::Registered {
                            details: Details {
                                name: &a.name,
                                version: &a.version,
                                contact_endpoint: &a.contact_endpoint,
                                capabilities: &capabilities,
                                metadata: &metadata,
                                ttl_secs: a.ttl_secs,
                            },
                            at: e.at,
                        },
                    );
                    continue;
                }
                (EventKind::AgentRegistered, None) => Change::Other,
                (kind, _) => Change::of_event(kind, e.at, e.data.get()),
            };
            model.apply(id, e.index, change);
        }
        Ok(())
    }
}

impl<B: Backend> SqlStore<B> {
    /// Apply this process's just-committed `events` (indexed as
    /// `flush_events` returned) to the read model, before the write is
    /// acknowledged. Registrations are applied by `register_agent` itself,
    /// which has every detail.
    pub(in crate::store) fn apply_committed(&self, events: &[NewEvent], indexed: &[(String, i64)]) {
        let model = self.model();
        for (e, index) in indexed_events(events, indexed) {
            let Some(id) = e.agent_id.as_deref() else {
                continue;
            };
            let change = match e.kind {
                EventKind::AgentRegistered => Change::Other,
                kind => Change::of_event(kind, e.at, &e.data),
            };
            model.apply(id, index, change);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_pair_with_their_indexes_in_written_order() {
        let events = [
            NewEvent::deregistered("a", 1),
            NewEvent::fresh("b", 2),
            NewEvent::deregistered("a", 3),
        ];
        let indexed = [("a".into(), 9), ("a".into(), 7), ("b".into(), 8)];
        let pairs: Vec<(i64, i64)> = indexed_events(&events, &indexed)
            .into_iter()
            .map(|(e, i)| (e.at, i))
            .collect();
        assert_eq!(pairs, [(1, 7), (2, 8), (3, 9)]);
    }
}
