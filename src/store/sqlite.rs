//! SQLite backend: the zero-configuration default.
//!
//! WAL mode with `synchronous = FULL`, so an acknowledged commit survives a
//! crash or power loss. SQLite has one writer at a time; writes go through a
//! one-connection pool (no `SQLITE_BUSY` storms between our own connections),
//! reads through a separate pool that WAL lets run beside the writer. One
//! Ops-Core process per database file.

use std::str::FromStr;

use sqlx::migrate::Migrator;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use futures_util::future::BoxFuture;
use sqlx::Sqlite;

use super::sql::{Backend, Binds, SqlStore};
use super::{RemoteSignals, StoreOptions};

static MIGRATOR: Migrator = sqlx::migrate!("migrations/sqlite");

/// WAL pages the writer lets build up before it copies them back into the
/// database file (SQLite's default is 1,000, about 4 MB). Every state report
/// dirties pages spread across the agents table and its indexes, and a
/// checkpoint runs on the writer's connection between two batches. At 1,000
/// pages it ran every few batches and rewrote the same hot pages each time;
/// at 10,000 (about 40 MB of WAL) one copy of a page serves many batches, and
/// the store bench (`cargo bench --bench store_reports`) measured 10-27% more
/// reports per second. Readers look pages up in the WAL's index, so a longer
/// WAL does not slow them down.
const WAL_AUTOCHECKPOINT_PAGES: &str = "10000";

impl Backend for Sqlite {
    const BINDS: Binds = Binds::Anonymous;
    const TABLE_PROBLEMS: &'static str = "SELECT t.value || ' is missing' FROM json_each($1) AS t \
         WHERE NOT EXISTS (SELECT 1 FROM sqlite_master m WHERE m.type = 'table' AND m.name = t.value)";
    // One writer connection: its transactions never wait on each other's rows.
    const LOCK_AGENTS_IN_ORDER: &'static str = "";
    const SESSION_LOCK: &'static str = "";
    // One dispatcher per SQLite database: its single writer serialises claims.
    const CLAIM_LOCK: &'static str = "";
    const AGENT_CLAIM_LOCK: &'static str = "";
    // One process: its feed is woken by its own commits.
    const EVENT_NOTIFY: &'static str = "";
    // One writer: events are numbered in commit order by themselves.
    const FEED_MARK: &'static str = "";
    // SQLite's WITH holds only SELECTs.
    const DATA_MODIFYING_WITH: bool = false;
    // One process: its key cache learns of its own changes directly.
    const KEY_NOTIFY: &'static str = "";
    // A read transaction sees one snapshot from its first read.
    const SNAPSHOT: &'static str = "";

    fn migrator() -> &'static Migrator {
        &MIGRATOR
    }

    /// One process per database file: every event is this process's own.
    fn follow_remote(
        _pool: &SqlitePool,
        _signals: RemoteSignals,
        _stop: CancellationToken,
    ) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }
}

/// The SQLite store.
pub type SqliteStore = SqlStore<Sqlite>;

impl SqlStore<Sqlite> {
    /// Open (creating if needed) the database at `url` and migrate it.
    pub async fn open(url: &str, opts: &StoreOptions) -> anyhow::Result<Self> {
        let connect = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(opts.acquire_timeout)
            .foreign_keys(true)
            .pragma("temp_store", "memory");
        let in_memory = url.contains(":memory:") || url.contains("mode=memory");
        if !in_memory {
            // Zero-config start: the data directory may not exist yet.
            if let Some(dir) = connect
                .get_filename()
                .parent()
                .filter(|d| !d.as_os_str().is_empty())
            {
                crate::private_files::create_private_dir(dir).map_err(|e| {
                    anyhow::anyhow!("cannot create database directory {}: {e}", dir.display())
                })?;
            }
            let file = connect.get_filename();
            make_private(file).map_err(|e| {
                anyhow::anyhow!("cannot make database file {} private: {e}", file.display())
            })?;
        }
        // No ping before handing out a connection: a local file cannot drop
        // a connection the way a network can, and the ping is a round trip
        // to the connection's thread on every query.
        let write = SqlitePoolOptions::new()
            .max_connections(1)
            .test_before_acquire(false)
            .after_release(super::health::release_check)
            .acquire_timeout(opts.acquire_timeout)
            .connect_with(
                connect
                    .clone()
                    .pragma("wal_autocheckpoint", WAL_AUTOCHECKPOINT_PAGES),
            )
            .await?;
        MIGRATOR.run(&write).await?;
        // An in-memory database exists once per connection: read through the
        // writer's pool there, or reads would see an empty database.
        let read = if in_memory {
            write.clone()
        } else {
            SqlitePoolOptions::new()
                .max_connections(opts.max_connections.max(1))
                .test_before_acquire(false)
                .acquire_timeout(opts.acquire_timeout)
                .connect_with(connect.read_only(true))
                .await?
        };
        let model = Arc::new(SqlStore::<Sqlite>::load_read_model(&read).await?);
        // An in-memory database reads through the writer's pool.
        let read = (!in_memory).then_some(("reader", read));
        Ok(Self::new(
            ("writer", write),
            read,
            opts.engine,
            opts.on_session_end.clone(),
            model,
        ))
    }
}

/// Make the database file and its companions readable by their owner only,
/// whatever the mode of the directory and the umask. SQLite creates the
/// database file 0644 less the umask, and its `-wal` and `-shm` files with
/// the database file's mode: creating the file 0600 first makes all three
/// private. Files an earlier version left readable by others are made
/// private again.
#[cfg(unix)]
fn make_private(db: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(db)
    {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    for suffix in ["", "-wal", "-shm", "-journal"] {
        let mut name = db.as_os_str().to_owned();
        name.push(suffix);
        let path = std::path::Path::new(&name);
        let mode = match std::fs::metadata(path) {
            Ok(m) => m.permissions().mode() & 0o777,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        if mode & 0o077 != 0 {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode & 0o700))?;
            tracing::warn!(file = %path.display(), was = format!("{mode:o}"), "database file was readable by others; made it owner-only");
        }
    }
    Ok(())
}

#[cfg(not(unix))]
fn make_private(_: &std::path::Path) -> std::io::Result<()> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;
    use crate::domain::agent::AgentId;
    use crate::store::{test_registration, AgentStore, StoreError};

    fn by() -> crate::domain::audit::Actor {
        crate::domain::audit::Actor::system("test")
    }

    /// A database file's URL in a fresh scratch directory (removed when
    /// the returned guard drops).
    fn scratch_url() -> (tempfile::TempDir, String) {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("opscore.db").display());
        (dir, url)
    }

    /// Writes take the writer's one connection in turn: one that waits
    /// longer than the acquire timeout is refused as unavailable (a 503),
    /// and the writer serves the next write once it is free.
    #[tokio::test]
    async fn a_write_waits_for_the_writer_at_most_the_acquire_timeout() {
        let (_dir, url) = scratch_url();
        let opts = StoreOptions {
            acquire_timeout: Duration::from_millis(300),
            ..StoreOptions::default()
        };
        let store = SqliteStore::open(&url, &opts).await.unwrap();
        let held = store.writer().acquire().await.unwrap();
        let started = Instant::now();
        // Bounded here, so that a writer that waits forever fails the test
        // instead of hanging it.
        let refused = tokio::time::timeout(
            Duration::from_secs(10),
            store.register_agent(&test_registration("a-1", None), &by(), 1),
        )
        .await
        .expect("refused within the acquire timeout, not left waiting");
        assert!(
            matches!(refused, Err(StoreError::Unavailable(_))),
            "{refused:?}"
        );
        assert!(started.elapsed() >= Duration::from_millis(300));
        drop(held);
        store
            .register_agent(&test_registration("a-1", None), &by(), 1)
            .await
            .unwrap();
        store.close().await;
    }

    /// After `close`, writes are refused as unavailable, and what was
    /// written before is in the file for the next process.
    #[tokio::test]
    async fn closing_ends_writes_and_keeps_what_was_written() {
        let (_dir, url) = scratch_url();
        let store = SqliteStore::open(&url, &StoreOptions::default())
            .await
            .unwrap();
        store
            .register_agent(&test_registration("a-1", None), &by(), 1)
            .await
            .unwrap();
        store.close().await;
        let refused = store
            .register_agent(&test_registration("a-2", None), &by(), 2)
            .await;
        assert!(
            matches!(refused, Err(StoreError::Unavailable(_))),
            "{refused:?}"
        );
        let reopened = SqliteStore::open(&url, &StoreOptions::default())
            .await
            .unwrap();
        let id = AgentId::parse("a-1").unwrap();
        assert_eq!(reopened.get_agent(&id).await.unwrap().agent_id, "a-1");
        reopened.close().await;
    }

    /// The writer's connection, the one that checkpoints after its commits,
    /// has the longer interval, in WAL mode.
    #[tokio::test]
    async fn writer_checkpoints_at_the_longer_interval() {
        let (_dir, url) = scratch_url();
        let store = SqliteStore::open(&url, &StoreOptions::default())
            .await
            .unwrap();
        let pages: i64 = sqlx::query_scalar("PRAGMA wal_autocheckpoint")
            .fetch_one(store.writer())
            .await
            .unwrap();
        assert_eq!(pages.to_string(), WAL_AUTOCHECKPOINT_PAGES);
        let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
            .fetch_one(store.writer())
            .await
            .unwrap();
        assert_eq!(mode, "wal");
    }
}
