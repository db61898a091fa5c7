//! The change feed's storage: events are collected while a transaction
//! runs and written at its end by `flush_events`, then read back in index
//! order by the feed.
//!
//! Ordering: a reader that has seen index N must already see every event
//! below N, or a client resuming after N would miss one for good. SQLite has
//! one writer, so that holds by itself. On PostgreSQL indexes are handed out
//! in call order, not commit order, and writers take no lock shared with
//! each other (several replicas commit at once); instead every read stops at
//! the feed horizon (`sql::horizon`), below which no event can still
//! appear. After each event-writing commit, the process tells every other
//! replica's feed to look (`SqlStore::announce_commits`).

use std::sync::LazyLock;

use sqlx::{ColumnIndex, Decode, Encode, Executor, IntoArguments, Type};

use super::backend::RowsAffected;
use super::{horizon, Backend, SqlStore};
use crate::domain::agent::AgentId;
use crate::domain::event::{Event, EventKind, NewEvent};
use crate::domain::workflow::AGENT_STALE;
use crate::store::{EventBounds, EventStore, Liveness, StoreError, StoreResult};

/// Columns of an event, in `event_from_row` order.
pub(in crate::store) const EVENT_COLUMNS: &str = "idx, kind, agent_id, session_id, at_us, data";

/// When the first event after index `$1` happened: one probe of the
/// primary key.
pub(in crate::store) const FIRST_EVENT_AFTER: &str =
    "SELECT at_us FROM events WHERE idx > $1 ORDER BY idx LIMIT 1";

/// Most rows per INSERT (5 binds each; far below SQLite's bind limit).
pub(in crate::store) const INSERT_CHUNK: usize = 200;

/// The multi-row INSERT for `rows` events.
pub(in crate::store) fn insert_events_sql(rows: usize, binds: super::Binds) -> String {
    format!(
        "INSERT INTO events (kind, agent_id, session_id, at_us, data) VALUES {}",
        super::value_rows(rows, &[""; 5], binds)
    )
}

/// Agents whose lease ran out and that have not been announced stale yet:
/// last heard from longer ago than their TTL (or `$2`, the default) plus the
/// grace `$3`, both in seconds, as of `$1`.
pub(in crate::store) static LEASE_EXPIRED: LazyLock<String> = LazyLock::new(|| {
    format!(
        "deregistered_at_us IS NULL \
         AND (stale_since_us IS NULL OR stale_since_us = 0) \
         AND {}",
        Liveness::expired_sql("", "$2", "$3", "$1")
    )
});

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
    /// Write the events collected by a transaction, in order, as its last
    /// step before commit (see the module docs for why last). Returns
    /// the feed index given to each event about an agent.
    pub(in crate::store) async fn flush_events(
        conn: &mut B::Connection,
        events: &[NewEvent],
    ) -> StoreResult<Vec<(String, i64)>> {
        let mut indexed = Vec::new();
        if events.is_empty() {
            return Ok(indexed);
        }
        for chunk in events.chunks(INSERT_CHUNK) {
            let sql = format!(
                "{} RETURNING agent_id, idx",
                insert_events_sql(chunk.len(), B::BINDS)
            );
            let mut q = sqlx::query_as::<_, (Option<String>, i64)>(&sql);
            for e in chunk {
                q = q
                    .bind(e.kind.as_str())
                    .bind(e.agent_id.as_deref())
                    .bind(e.session_id.as_deref())
                    .bind(e.at)
                    .bind(&e.data);
            }
            let rows = q.fetch_all(&mut *conn).await?;
            indexed.extend(rows.into_iter().filter_map(|(a, i)| Some((a?, i))));
        }
        Ok(indexed)
    }

    pub(in crate::store) fn event_from_row(row: &B::Row) -> StoreResult<Event> {
        use sqlx::Row;
        let kind: String = row.try_get(1)?;
        let data: String = row.try_get(5)?;
        Ok(Event {
            index: row.try_get(0)?,
            kind: EventKind::parse(&kind)
                .ok_or_else(|| StoreError::Internal(format!("unknown event kind {kind}")))?,
            agent_id: row.try_get(2)?,
            session_id: row.try_get(3)?,
            at: row.try_get(4)?,
            data: serde_json::value::RawValue::from_string(data)
                .map_err(|e| StoreError::Internal(format!("stored event data: {e}")))?,
        })
    }
}

#[async_trait::async_trait]
impl<B> EventStore for SqlStore<B>
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
    async fn read_events(&self, after: i64, limit: u32) -> StoreResult<Vec<Event>> {
        let (horizon, _) = self.feed_horizon().await?;
        let sql = format!(
            "SELECT {} FROM events WHERE idx > $1 AND idx <= $3 ORDER BY idx LIMIT $2",
            EVENT_COLUMNS
        );
        let rows = sqlx::query(&sql)
            .bind(after)
            .bind(i64::from(limit))
            .bind(horizon)
            .fetch_all(self.reader())
            .await?;
        rows.iter().map(Self::event_from_row).collect()
    }

    async fn event_bounds(&self) -> StoreResult<EventBounds> {
        // The head is what a client starting "from now" starts after:
        // the horizon once every index handed out by now has settled, so
        // no event committed later can land below it. That takes as long
        // as the transactions running now; a transaction that runs on
        // (anywhere on the server) is waited for a bounded time only, and
        // the head is then the horizon reached (such a client may receive
        // a few events committed before it connected).
        let horizon = settled_horizon(|| self.feed_horizon(), HEAD_SETTLE_WAIT).await?;
        let (pruned_through, head): (i64, Option<i64>) = sqlx::query_as(
            "SELECT pruned_through, (SELECT MAX(idx) FROM events WHERE idx <= $1) \
             FROM event_retention WHERE id = 1",
        )
        .bind(horizon)
        .fetch_one(self.reader())
        .await?;
        Ok(EventBounds {
            pruned_through,
            head: head.unwrap_or(pruned_through).max(pruned_through),
        })
    }

    async fn first_event_after(&self, after: i64) -> StoreResult<Option<i64>> {
        Ok(sqlx::query_scalar(FIRST_EVENT_AFTER)
            .bind(after)
            .fetch_optional(self.reader())
            .await?)
    }

    async fn agent_changed_since(&self, agent: &AgentId, after: i64) -> StoreResult<bool> {
        let kinds = EventKind::ALL
            .into_iter()
            .filter(|k| k.touches_agent_state())
            .map(|k| format!("'{}'", k.as_str()))
            .collect::<Vec<_>>()
            .join(", ");
        let sql = format!(
            "SELECT 1 FROM events WHERE agent_id = $1 AND idx > $2 AND kind IN ({kinds}) LIMIT 1"
        );
        let found: Option<i32> = sqlx::query_scalar(&sql)
            .bind(agent.as_str())
            .bind(after)
            .fetch_optional(self.reader())
            .await?;
        Ok(found.is_some())
    }

    async fn mark_stale_agents(&self, now: i64, limit: u32) -> StoreResult<u64> {
        let expired = LEASE_EXPIRED.as_str();
        let live = self.rules().liveness;
        let ttl = live.ttl_secs;
        let grace = live.grace_secs;
        // Find candidates on a reader, so the scan never holds up
        // writes; each is re-checked under its row lock below.
        let mut ids: Vec<String> = sqlx::query_scalar(&format!(
            "SELECT agent_id FROM agents WHERE {expired} LIMIT $4"
        ))
        .bind(now)
        .bind(ttl)
        .bind(grace)
        .bind(i64::from(limit))
        .fetch_all(self.reader())
        .await?;
        if ids.is_empty() {
            return Ok(0);
        }
        // Row locks in the order report batches take them (agent id
        // byte order), so a sweep and a batch cannot deadlock.
        ids.sort_unstable();
        let mark = format!(
            "UPDATE agents SET stale_since_us = $1 WHERE agent_id = $4 AND {expired} \
             RETURNING last_seen_us, COALESCE(ttl_secs, $2)"
        );
        let mut events = Vec::new();
        let mut stale = Vec::new();
        let mut tx = self.writer().begin().await?;
        for id in &ids {
            let row: Option<(i64, i64)> = sqlx::query_as(&mark)
                .bind(now)
                .bind(ttl)
                .bind(grace)
                .bind(id)
                .fetch_optional(&mut *tx)
                .await?;
            if let Some((last_seen, ttl_secs)) = row {
                events.push(NewEvent::stale(id, last_seen, ttl_secs, now));
                stale.push(id);
            }
        }
        // A stale agent is not going to finish what it holds: its
        // runs in flight fail for good now, with the reason, rather
        // than wait out their task timeout (docs/agents.md). In session
        // order, each session's row before its run, as report batches.
        use super::workflows::{Failure, InFlight, InFlightRow, IN_FLIGHT, IN_FLIGHT_COLUMNS};
        let mut held = Vec::new();
        for id in stale {
            let rows: Vec<InFlightRow> = sqlx::query_as(&format!(
                "SELECT {IN_FLIGHT_COLUMNS} FROM task_runs WHERE agent_id = $1 AND status IN {in_flight}",
                in_flight = IN_FLIGHT.as_str()
            ))
            .bind(id)
            .fetch_all(&mut *tx)
            .await?;
            held.extend(rows.into_iter().map(InFlight::from_row));
        }
        held.sort_by(|a, b| a.session_id.cmp(&b.session_id));
        for run in held {
            Self::lock_session(&mut tx, &run.session_id, true).await?;
            // A pool's run is retried, on another agent of the pool
            // if one is free; a per-agent session's fails for good.
            let pinned: Option<String> =
                sqlx::query_scalar("SELECT agent_id FROM sessions WHERE session_id = $1")
                    .bind(&run.session_id)
                    .fetch_optional(&mut *tx)
                    .await?;
            let failure = Failure {
                reason: AGENT_STALE,
                guard: IN_FLIGHT.as_str(),
                retryable: pinned.as_deref() == Some(""),
                not_before: None,
            };
            Self::fail_attempt(&mut tx, &run, &failure, now, self.rules(), &mut events).await?;
        }
        let indexed = Self::flush_events(&mut tx, &events).await?;
        tx.commit().await?;
        self.events_committed(&events, &indexed);
        Ok(events.len() as u64)
    }

    async fn prune_events(&self, before: i64, limit: u32) -> StoreResult<u64> {
        let newest: Option<i64> = sqlx::query_scalar(
            "SELECT MAX(idx) FROM (SELECT idx FROM events WHERE at_us < $1 ORDER BY idx LIMIT $2) old",
        )
        .bind(before)
        .bind(i64::from(limit))
        .fetch_one(self.reader())
        .await?;
        let Some(through) = newest else {
            return Ok(0);
        };
        let mut tx = self.writer().begin().await?;
        let deleted = sqlx::query("DELETE FROM events WHERE idx <= $1")
            .bind(through)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        sqlx::query(
            "UPDATE event_retention SET pruned_through = $1 WHERE id = 1 AND pruned_through < $1",
        )
        .bind(through)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(deleted)
    }

    async fn apply_feed_events(&self, events: &[Event]) -> StoreResult<()> {
        self.apply_feed(events).await
    }

    fn read_model_head(&self) -> i64 {
        self.model().loaded_through()
    }

    fn feed_signal(&self) -> std::sync::Arc<tokio::sync::Notify> {
        self.feed().clone()
    }

    async fn follow_remote_events(
        &self,
        wake: std::sync::Arc<tokio::sync::Notify>,
        stop: tokio_util::sync::CancellationToken,
    ) {
        self.follow_remote(wake, stop).await
    }
}

/// How long `event_bounds` waits for the indexes handed out before it to
/// settle.
const HEAD_SETTLE_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// How soon a reader looks again while a mark waits for transactions to end
/// (a few of the report path's transactions).
const HORIZON_RECHECK: std::time::Duration = std::time::Duration::from_millis(3);

/// The horizon once every feed index reserved by now has settled, `read`
/// (`(horizon, reserved)`, as [`SqlStore::read_mark`] gives them) again
/// every few milliseconds until then. A transaction that runs on is waited
/// for `wait` only; the horizon reached by then is still a correct head,
/// the feed replaying what settles later.
pub(in crate::store) async fn settled_horizon<F, Fut>(
    mut read: F,
    wait: std::time::Duration,
) -> StoreResult<i64>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = StoreResult<(i64, i64)>>,
{
    let (mut horizon, reserved) = read().await?;
    let deadline = tokio::time::Instant::now() + wait;
    while horizon < reserved && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(HORIZON_RECHECK).await;
        horizon = read().await?.0;
    }
    Ok(horizon)
}

impl<B> SqlStore<B>
where
    B: Backend,
    for<'c> &'c mut B::Connection: Executor<'c, Database = B>,
    for<'q> B::Arguments<'q>: IntoArguments<'q, B>,
    usize: ColumnIndex<B::Row>,
    for<'q> i64: Encode<'q, B> + Decode<'q, B> + Type<B>,
{
    /// Read a new feed mark through `pool` into `horizon`: the horizon
    /// after it, and the mark's `reserved` (PostgreSQL only; see
    /// [`Backend::FEED_MARK`]).
    pub(in crate::store) async fn read_mark(
        pool: &sqlx::Pool<B>,
        horizon: &horizon::FeedHorizon,
    ) -> StoreResult<(i64, i64)> {
        let (reserved, xid_bound, xmin): (i64, i64, i64) =
            sqlx::query_as(B::FEED_MARK).fetch_one(pool).await?;
        let mark = horizon::Mark {
            reserved,
            xid_bound,
        };
        Ok((horizon.observe(mark, xmin), reserved))
    }

    /// The feed horizon after one new mark, and the mark's `reserved`:
    /// every event at or below the horizon is final for any statement run
    /// from now on. Without a horizon (one writer), everything committed
    /// is final: `i64::MAX`.
    ///
    /// While a mark waits, the process's feed is woken again shortly, so
    /// that it does not wait for the next commit (or its once-a-second
    /// look) to read what has settled meanwhile.
    async fn feed_horizon(&self) -> StoreResult<(i64, i64)> {
        if B::FEED_MARK.is_empty() {
            return Ok((i64::MAX, i64::MAX));
        }
        let (settled, reserved) = Self::read_mark(self.reader(), &self.horizon).await?;
        let h = &self.horizon;
        if h.waiting() && h.arm_recheck() {
            let (h, feed) = (h.clone(), self.feed().clone());
            tokio::spawn(async move {
                tokio::time::sleep(HORIZON_RECHECK).await;
                h.disarm_recheck();
                feed.notify_one();
            });
        }
        Ok((settled, reserved))
    }
}

impl<B: Backend> SqlStore<B> {
    /// After a commit that wrote `events`: apply them to the read model
    /// with the feed index each got (`indexed`, from `flush_events`), tell
    /// the observer of the sessions the commit ended, then wake this
    /// process's feed.
    pub(in crate::store) fn events_committed(
        &self,
        events: &[NewEvent],
        indexed: &[(String, i64)],
    ) {
        self.apply_committed(events, indexed);
        for end in events.iter().filter_map(|e| e.ended.as_ref()) {
            self.on_session_end().tell(end);
        }
        if !events.is_empty() {
            self.feed().notify_one();
            self.announce().notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insert_numbers_binds_per_row() {
        assert_eq!(
            insert_events_sql(2, super::super::Binds::Numbered),
            "INSERT INTO events (kind, agent_id, session_id, at_us, data) VALUES \
             ($1, $2, $3, $4, $5), ($6, $7, $8, $9, $10)"
        );
    }
}
