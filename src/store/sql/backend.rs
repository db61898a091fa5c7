//! What the shared store needs of a database: sqlx's [`Database`] and the
//! few places where SQLite and PostgreSQL differ (the dialect items).

use futures_util::future::BoxFuture;
use sqlx::migrate::Migrator;
use sqlx::{Database, Pool};
use tokio_util::sync::CancellationToken;

use crate::store::RemoteSignals;

/// How a backend writes the placeholders of the batch statements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Binds {
    /// `$1`, `$2`, …: PostgreSQL's only form.
    Numbered,
    /// A bare `?` each, bound in order of appearance. sqlx asks SQLite for
    /// the name of every parameter it binds, and SQLite finds a named
    /// parameter's name (`$n` is a name to it) by a linear scan: binding a
    /// 1,000-parameter batch cost half a million steps, 6-8% of the store
    /// bench's CPU at batch 64. Bare `?`s have no name to look up, and the
    /// store bench measured 6-11% more reports per second at batch 64 and
    /// 23-40% at batch 200.
    Anonymous,
}

/// How many rows a statement changed (each backend's query result says so
/// in a method of its own).
pub trait RowsAffected {
    /// Rows inserted, updated or deleted.
    fn rows_affected(&self) -> u64;
}

impl RowsAffected for sqlx::sqlite::SqliteQueryResult {
    fn rows_affected(&self) -> u64 {
        self.rows_affected()
    }
}

impl RowsAffected for sqlx::postgres::PgQueryResult {
    fn rows_affected(&self) -> u64 {
        self.rows_affected()
    }
}

/// A database the store runs on, with its dialect. Every statement of the
/// store is written once, in what both dialects mean the same way (SQLite
/// accepts PostgreSQL's `$N` placeholders); these items are where they
/// differ.
///
/// The sqlx bounds the shared statements need (executors, argument lists,
/// the column types they bind and read) are listed on each `impl` block
/// over [`SqlStore`](super::SqlStore): Rust does not carry a trait's where
/// clauses to its users, only its supertraits.
pub trait Backend: Database<QueryResult: RowsAffected> {
    /// How the batch statements write their placeholders.
    const BINDS: Binds;
    /// What is wrong with the tables named by the JSON array bound to `$1`,
    /// one line per table: missing, or (where the database has privileges)
    /// not granted to the service. No rows: all is well.
    const TABLE_PROBLEMS: &'static str;
    /// Ends `lock_agents_sql` where report batches can run concurrently
    /// (PostgreSQL: several writer workers and replicas), so that every
    /// transaction takes its agents' row locks in one order; `""` (one
    /// writer connection, whose transactions never wait on each other's
    /// rows) skips that statement.
    const LOCK_AGENTS_IN_ORDER: &'static str;
    /// Ends the query that takes a session's row lock before any of its
    /// runs is moved (`SqlStore::lock_session`), where transactions write
    /// at once (PostgreSQL); `""` (one writer connection) skips that query.
    const SESSION_LOCK: &'static str;
    /// Ends the queries that pick runs to claim or expire, so concurrent
    /// dispatchers (PostgreSQL replicas) skip rows another holds; `""`
    /// where one dispatcher runs per database (SQLite).
    const CLAIM_LOCK: &'static str;
    /// Ends the query that takes the row lock of the agent a claim picked,
    /// so replicas claiming at once never pick the same agent (each skips
    /// an agent another holds); `""` where one dispatcher runs per
    /// database (SQLite).
    const AGENT_CLAIM_LOCK: &'static str;
    /// Sent after event-writing commits, on its own and never inside a
    /// write transaction: tells other processes' feeds to look; `""` where
    /// one process owns the database. (PostgreSQL takes one lock for every
    /// transaction that notifies and holds it through the commit's WAL
    /// flush: a NOTIFY inside each write transaction made every replica's
    /// commits wait on one another.)
    const EVENT_NOTIFY: &'static str;
    /// Takes a feed [`Mark`](super::horizon::Mark) and the oldest xid
    /// running in the database after it: one row `(reserved, xid_bound,
    /// xmin)` (see
    /// `sql::horizon`); `""` where commits are in index order by
    /// themselves (one writer), and the feed needs no horizon.
    const FEED_MARK: &'static str;
    /// Run, with a key id bound to `$1`, by the transaction that creates or
    /// revokes that key: tells every other process to read it again (see
    /// `follow_remote`); `""` where one process owns the database.
    const KEY_NOTIFY: &'static str;
    /// Run first in the transaction that loads the read model, so that
    /// every query of it reads one snapshot; `""` where a transaction does
    /// so by itself (SQLite in WAL mode).
    const SNAPSHOT: &'static str;
    /// Whether `WITH` may hold INSERTs and UPDATEs (PostgreSQL): report
    /// batches then take fewer round trips (`agents::one_round`).
    const DATA_MODIFYING_WITH: bool;
    /// This backend's migrations.
    fn migrator() -> &'static Migrator;
    /// Until `stop`, tell `signals` whenever another process commits events
    /// or changes a key.
    fn follow_remote(
        pool: &Pool<Self>,
        signals: RemoteSignals,
        stop: CancellationToken,
    ) -> BoxFuture<'_, ()>;
}
