//! PostgreSQL backend: for real deployments and for several Ops-Core
//! replicas sharing one database.

use std::str::FromStr;
use std::time::Duration;

use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgListener, PgPool, PgPoolOptions};
use sqlx::Connection;
use tokio_util::sync::CancellationToken;

use futures_util::future::BoxFuture;
use sqlx::Postgres;

use super::sql::{Backend, Binds, SqlStore};
use super::{KeyChange, RemoteSignals, StoreOptions};

static MIGRATOR: Migrator = sqlx::migrate!("migrations/postgres");

impl Backend for Postgres {
    const BINDS: Binds = Binds::Numbered;
    const TABLE_PROBLEMS: &'static str = "SELECT t.name || CASE WHEN to_regclass(t.name) IS NULL \
         THEN ' is missing' ELSE ' lacks SELECT, INSERT, UPDATE or DELETE for this role' END \
         FROM json_array_elements_text(CAST($1 AS JSON)) AS t(name) \
         WHERE NOT COALESCE(has_table_privilege(to_regclass(t.name), 'SELECT') \
         AND has_table_privilege(to_regclass(t.name), 'INSERT') \
         AND has_table_privilege(to_regclass(t.name), 'UPDATE') \
         AND has_table_privilege(to_regclass(t.name), 'DELETE'), FALSE)";
    const LOCK_AGENTS_IN_ORDER: &'static str = LOCK_AGENTS_IN_ORDER;
    const SESSION_LOCK: &'static str = " FOR NO KEY UPDATE";
    // Replicas claim due runs concurrently: each skips rows another holds.
    const CLAIM_LOCK: &'static str = " FOR UPDATE OF r SKIP LOCKED";
    const AGENT_CLAIM_LOCK: &'static str = " FOR UPDATE SKIP LOCKED";
    const EVENT_NOTIFY: &'static str = "SELECT pg_notify('opscore_events', '')";
    const FEED_MARK: &'static str =
        "SELECT reserved, xid_bound, after_xmin FROM opscore_feed_mark()";
    const KEY_NOTIFY: &'static str = "SELECT pg_notify('opscore_keys', $1)";
    const SNAPSHOT: &'static str = "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY";
    const DATA_MODIFYING_WITH: bool = true;

    fn migrator() -> &'static Migrator {
        &MIGRATOR
    }

    fn follow_remote(
        pool: &PgPool,
        signals: RemoteSignals,
        stop: CancellationToken,
    ) -> BoxFuture<'_, ()> {
        Box::pin(follow_remote(pool, signals, stop))
    }
}

/// The PostgreSQL store.
pub type PgStore = SqlStore<Postgres>;

/// The NOTIFY channel every event-writing commit signals on.
const EVENTS_CHANNEL: &str = "opscore_events";
/// The NOTIFY channel a key's creation or revocation signals on, with the
/// key id (`Backend::KEY_NOTIFY`).
const KEYS_CHANNEL: &str = "opscore_keys";

/// How a report batch locks its agents' rows before updating them: in
/// byte order of the id (`COLLATE "C"`, whatever the database's collation),
/// the order the staleness sweep takes them in too. `NO KEY UPDATE` is the
/// lock the update itself takes, so rows referencing the agent (history,
/// events) are not held up.
const LOCK_AGENTS_IN_ORDER: &str = r#"ORDER BY agent_id COLLATE "C" FOR NO KEY UPDATE"#;

impl SqlStore<Postgres> {
    /// Connect to `url` and migrate the database. Several replicas may start
    /// at once: sqlx serialises migrations with an advisory lock.
    pub async fn open(url: &str, opts: &StoreOptions) -> anyhow::Result<Self> {
        let connect = PgConnectOptions::from_str(url)
            .map_err(|e| anyhow::anyhow!("invalid PostgreSQL URL in DATABASE_URL: {e}"))?;
        let target = describe(&connect);
        first_connection(&connect, opts.acquire_timeout)
            .await
            .map_err(|e| anyhow::anyhow!("cannot connect to PostgreSQL at {target}: {e}"))?;
        let pool = PgPoolOptions::new()
            .max_connections(opts.max_connections.max(2))
            .acquire_timeout(opts.acquire_timeout)
            .test_before_acquire(false)
            .before_acquire(super::health::idle_check)
            .after_release(super::health::release_check)
            .connect_with(connect)
            .await
            .map_err(|e| anyhow::anyhow!("cannot connect to PostgreSQL at {target}: {e}"))?;
        MIGRATOR
            .run(&pool)
            .await
            .map_err(|e| anyhow::anyhow!("cannot migrate PostgreSQL at {target}: {e}"))?;
        let model = Self::load_read_model(&pool)
            .await
            .map_err(|e| anyhow::anyhow!("cannot load agents from PostgreSQL at {target}: {e}"))?;
        Ok(Self::new(
            ("main", pool),
            None,
            opts.engine,
            opts.on_session_end.clone(),
            std::sync::Arc::new(model),
        ))
    }
}

/// LISTEN for other replicas' events and key changes. While the
/// connection is down the feed still polls (it also wakes on a timer), and
/// key caches keep their entries for at most their lifetime; after
/// (re)connecting the feed is woken once and every cached key is read
/// again, since notifications sent meanwhile are lost.
async fn follow_remote(pool: &PgPool, signals: RemoteSignals, stop: CancellationToken) {
    let wake = signals.events;
    loop {
        let listener = async {
            let mut l = PgListener::connect_with(pool).await?;
            l.listen_all([EVENTS_CHANNEL, KEYS_CHANNEL]).await?;
            Ok::<_, sqlx::Error>(l)
        };
        let mut listener = tokio::select! {
            _ = stop.cancelled() => return,
            l = listener => match l {
                Ok(l) => l,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot LISTEN for other replicas' events; retrying");
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    }
                }
            },
        };
        wake.notify_one();
        // No receiver (no key cache yet) is fine: it reads keys afresh.
        let _ = signals.keys.send(KeyChange::All);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                n = listener.try_recv() => match n {
                    Ok(Some(n)) if n.channel() == KEYS_CHANNEL => {
                        let _ = signals.keys.send(KeyChange::Key(n.payload().to_owned()));
                    }
                    Ok(Some(_)) => wake.notify_one(),
                    // The connection dropped; reconnect.
                    Ok(None) => break,
                    Err(e) => {
                        tracing::warn!(error = %e, "lost the LISTEN connection for other replicas' events");
                        break;
                    }
                },
            }
        }
    }
}

/// Where `connect` leads, for messages: host (or socket), port, database
/// and user; never the password.
fn describe(connect: &PgConnectOptions) -> String {
    let host = match connect.get_socket() {
        Some(dir) => format!("socket {}", dir.display()),
        None => format!("host {}", connect.get_host()),
    };
    let user = connect.get_username();
    format!(
        "{host}, port {}, database {}, user {user}",
        connect.get_port(),
        connect.get_database().unwrap_or(user)
    )
}

/// Open one connection, retrying for up to `wait` while it is refused (the
/// database may be starting beside us), and say why it failed: a pool that
/// cannot connect says only that it timed out.
async fn first_connection(connect: &PgConnectOptions, wait: Duration) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let attempt = tokio::time::timeout_at(deadline, PgConnection::connect_with(connect)).await;
        match attempt {
            Ok(Ok(conn)) => {
                // Only the answer mattered; the pool opens its own.
                let _ = conn.close().await;
                return Ok(());
            }
            Err(_) => anyhow::bail!("no answer within {}s", wait.as_secs_f32()),
            // Refused or reset: perhaps not listening yet.
            Ok(Err(e @ sqlx::Error::Io(_))) => {
                let retry_at = tokio::time::Instant::now() + Duration::from_millis(250);
                if retry_at >= deadline {
                    return Err(e.into());
                }
                tokio::time::sleep_until(retry_at).await;
            }
            // Anything else (authentication, no such database) will not
            // change by waiting.
            Ok(Err(e)) => return Err(e.into()),
        }
    }
}
