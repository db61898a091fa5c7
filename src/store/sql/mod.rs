//! The one `Store` implementation, [`SqlStore`], generic over the
//! [`Backend`] (SQLite or PostgreSQL), and the SQL both backends share.
//! SQLite accepts PostgreSQL's `$N` placeholders, and every statement here
//! sticks to what both dialects mean the same way, so the storage behaviour
//! is written once; each backend says how it connects and where its dialect
//! differs.

pub(super) mod agents;
pub(super) mod audit;
mod backend;
pub(super) mod events;
mod horizon;
pub(super) mod keys;
mod model;
pub(super) mod retention;
pub(super) mod workflows;

use std::sync::Arc;

use sqlx::Pool;
use tokio::sync::{broadcast, Notify};

pub use backend::{Backend, Binds};

use super::readmodel::ReadModel;
use super::reads::{BatchCounters, ReadCounters};
use super::{EngineRules, KeyChange, OnSessionEnd, PoolStats, RemoteSignals};

/// Key changes buffered for a key cache that falls behind (it then reads
/// every key again).
const KEY_CHANGES: usize = 256;

/// The store over a [`Backend`]'s database: a pool that writes and one that
/// reads (the same pool where the backend has one), the rules the engine
/// handed it, this process's feed signal, and the read model.
pub struct SqlStore<B: Backend> {
    write: Pool<B>,
    read: Pool<B>,
    /// Names of the pools for metrics: the writer's, and the reader's when
    /// it is a pool of its own.
    pool_names: (&'static str, Option<&'static str>),
    rules: EngineRules,
    on_session_end: OnSessionEnd,
    feed: Arc<Notify>,
    /// Keys other replicas created or revoked, as this process hears of
    /// them.
    keys: broadcast::Sender<KeyChange>,
    model: Arc<ReadModel>,
    /// Agent reads answered, by source.
    reads: Arc<ReadCounters>,
    /// Report batches stored, by how.
    batches: Arc<BatchCounters>,
    /// How far the feed may be read (see `horizon`).
    horizon: Arc<horizon::FeedHorizon>,
    /// Rung after each event-writing commit (see `announce_commits`).
    announce: Arc<Notify>,
}

impl<B: Backend> std::fmt::Debug for SqlStore<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqlStore")
            .field("backend", &std::any::type_name::<B>())
            .field("pools", &self.pools())
            .field("rules", &self.rules)
            .finish_non_exhaustive()
    }
}

impl<B: Backend> Clone for SqlStore<B> {
    fn clone(&self) -> Self {
        Self {
            write: self.write.clone(),
            read: self.read.clone(),
            pool_names: self.pool_names,
            rules: self.rules,
            on_session_end: self.on_session_end.clone(),
            feed: self.feed.clone(),
            keys: self.keys.clone(),
            model: self.model.clone(),
            reads: self.reads.clone(),
            batches: self.batches.clone(),
            horizon: self.horizon.clone(),
            announce: self.announce.clone(),
        }
    }
}

impl<B: Backend> SqlStore<B> {
    /// A store over open, migrated pools. `read` is `None` where reads go
    /// through the writer's pool; `model` is the read model, loaded.
    pub(super) fn new(
        (write_name, write): (&'static str, Pool<B>),
        read: Option<(&'static str, Pool<B>)>,
        rules: EngineRules,
        on_session_end: OnSessionEnd,
        model: Arc<ReadModel>,
    ) -> Self {
        let (read_name, read) = match read {
            Some((name, pool)) => (Some(name), pool),
            None => (None, write.clone()),
        };
        Self {
            write,
            read,
            pool_names: (write_name, read_name),
            rules,
            on_session_end,
            feed: Arc::new(Notify::new()),
            keys: broadcast::channel(KEY_CHANGES).0,
            model,
            reads: Arc::default(),
            batches: Arc::default(),
            horizon: Arc::default(),
            announce: Arc::new(Notify::new()),
        }
    }

    /// Agent reads answered so far, by source.
    pub(super) fn reads(&self) -> &ReadCounters {
        &self.reads
    }

    /// Report batches stored so far, by how.
    pub(super) fn batches(&self) -> &BatchCounters {
        &self.batches
    }

    /// The pool every write goes through.
    pub(super) fn writer(&self) -> &Pool<B> {
        &self.write
    }

    /// The pool reads go through.
    pub(super) fn reader(&self) -> &Pool<B> {
        &self.read
    }

    /// The engine's rules, applied inside the store's transactions.
    pub(super) fn rules(&self) -> &EngineRules {
        &self.rules
    }

    /// The read model: every agent, in memory.
    pub(super) fn model(&self) -> &ReadModel {
        &self.model
    }

    /// Who is told of the sessions this process's commits end.
    pub(super) fn on_session_end(&self) -> &OnSessionEnd {
        &self.on_session_end
    }

    /// This process's feed signal.
    pub(super) fn feed(&self) -> &Arc<Notify> {
        &self.feed
    }

    pub(super) fn pools(&self) -> Vec<PoolStats> {
        let mut pools = vec![PoolStats::of(self.pool_names.0, &self.write)];
        if let Some(name) = self.pool_names.1 {
            pools.push(PoolStats::of(name, &self.read));
        }
        pools
    }

    /// Until `stop`, hear what other replicas do (their events wake
    /// `wake`, their key changes go to [`key_changes`](Self::key_changes)),
    /// and tell them of this process's commits ([`Self::announce_commits`]).
    pub(super) async fn follow_remote(
        &self,
        wake: Arc<Notify>,
        stop: tokio_util::sync::CancellationToken,
    ) where
        for<'c> &'c mut B::Connection: sqlx::Executor<'c, Database = B>,
        for<'q> B::Arguments<'q>: sqlx::IntoArguments<'q, B>,
    {
        let signals = RemoteSignals {
            events: wake,
            keys: self.keys.clone(),
        };
        tokio::join!(
            B::follow_remote(&self.write, signals, stop.clone()),
            self.announce_commits(stop)
        );
    }

    /// What event-writing commits ring to have [`Self::announce_commits`]
    /// tell the other replicas.
    pub(super) fn announce(&self) -> &Notify {
        &self.announce
    }

    /// Until `stop`, send [`Backend::EVENT_NOTIFY`] after event-writing
    /// commits, on its own: one at a time, so the commits made while one
    /// is on its way share the next. Other replicas' feeds also look on a
    /// timer, so a NOTIFY lost (the process stopped, the database was
    /// unreachable) delays them, never loses an event.
    async fn announce_commits(&self, stop: tokio_util::sync::CancellationToken)
    where
        for<'c> &'c mut B::Connection: sqlx::Executor<'c, Database = B>,
        for<'q> B::Arguments<'q>: sqlx::IntoArguments<'q, B>,
    {
        let notify: &str = B::EVENT_NOTIFY;
        if notify.is_empty() {
            return;
        }
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                () = self.announce.notified() => {}
            }
            if let Err(e) = sqlx::query(notify).execute(&self.write).await {
                tracing::debug!(error = %e, "cannot tell other replicas of new events");
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(std::time::Duration::from_millis(100)) => {}
                }
            }
        }
    }

    /// Keys other replicas create or revoke from now on.
    pub(super) fn key_changes(&self) -> broadcast::Receiver<KeyChange> {
        self.keys.subscribe()
    }
}

/// The lease rule ([`Liveness::is_stale`]) rendered as SQL.
impl crate::store::Liveness {
    /// The rule of [`is_stale`](Self::is_stale) as a SQL condition, true for
    /// an `agents` row whose lease has run out. Every query that judges
    /// leases takes it from here, so the rule is written once in SQL (the
    /// test at the end of this file checks it agrees with `is_stale`).
    ///
    /// `cols` prefixes the column names (`""`, or `"a."` for an aliased
    /// table); `ttl` (the default TTL, seconds, or NULL for none), `grace`
    /// (seconds) and `now` (microseconds) are placeholders such as `$2`, or
    /// values the server itself chose ([`ttl_sql`](Self::ttl_sql)), never
    /// text from a request. An agent with no lease has a NULL limit, and
    /// the condition is false for it, never NULL, so `NOT (…)` holds.
    pub(crate) fn expired_sql(cols: &str, ttl: &str, grace: &str, now: &str) -> String {
        Self::lease_over_sql(
            &format!("{cols}last_seen_us"),
            &format!("COALESCE({cols}ttl_secs, {ttl})"),
            grace,
            now,
        )
    }

    /// The rule of [`holds_stale`](Self::holds_stale) as a SQL condition:
    /// registered and [`expired_sql`](Self::expired_sql) (arguments as
    /// there).
    pub(crate) fn holds_stale_sql(cols: &str, ttl: &str, grace: &str, now: &str) -> String {
        format!(
            "{cols}deregistered_at_us IS NULL AND {}",
            Self::expired_sql(cols, ttl, grace, now)
        )
    }

    /// [`expired_sql`](Self::expired_sql) for any expression of the last
    /// sighting and of the lease in seconds (NULL: none).
    pub(crate) fn lease_over_sql(last_seen: &str, lease: &str, grace: &str, now: &str) -> String {
        format!("COALESCE({last_seen} + ({lease} + {grace}) * 1000000 < {now}, FALSE)")
    }

    /// The default TTL as an SQL literal, for [`expired_sql`](Self::expired_sql)
    /// when it is written into a statement rather than bound.
    pub(crate) fn ttl_sql(&self) -> String {
        self.ttl_secs
            .map_or_else(|| "NULL".to_owned(), |t| t.to_string())
    }
}

/// `rows` rows of VALUES placeholders, one per entry of `types`, bound in
/// order (numbered on from `$1` where `binds` numbers them): as they are
/// where the type is `""`, else `CAST(… AS type)` (PostgreSQL cannot infer a
/// placeholder's type inside a VALUES list).
pub(in crate::store) fn value_rows(rows: usize, types: &[&str], binds: Binds) -> String {
    use std::fmt::Write;
    let mut sql = String::with_capacity(rows * types.len() * 24);
    for row in 0..rows {
        sql.push_str(if row == 0 { "(" } else { ", (" });
        for (col, ty) in types.iter().enumerate() {
            if col > 0 {
                sql.push_str(", ");
            }
            if !ty.is_empty() {
                sql.push_str("CAST(");
            }
            // Writing to a String cannot fail.
            let _ = match binds {
                Binds::Numbered => write!(sql, "${}", row * types.len() + col + 1),
                Binds::Anonymous => write!(sql, "?"),
            };
            if !ty.is_empty() {
                let _ = write!(sql, " AS {ty})");
            }
        }
        sql.push(')');
    }
    sql
}

/// `$1, $2, …, $rows`: the placeholders of an `IN` list.
pub(in crate::store) fn in_list(rows: usize) -> String {
    let binds: Vec<String> = (1..=rows).map(|i| format!("${i}")).collect();
    binds.join(", ")
}
