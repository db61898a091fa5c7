//! PostgreSQL backend: for real deployments and for several Ops-Core
//! replicas sharing one database.

use sqlx::migrate::Migrator;
use sqlx::postgres::{PgPool, PgPoolOptions};

use super::sql::impl_agent_store;
use super::workflow_sql::impl_workflow_store;
use super::{EngineRules, PoolStats, StoreOptions};

static MIGRATOR: Migrator = sqlx::migrate!("migrations/postgres");

/// The PostgreSQL store.
#[derive(Debug, Clone)]
pub struct PgStore {
    pool: PgPool,
    rules: EngineRules,
}

impl PgStore {
    /// Connect to `url` and migrate the database. Several replicas may start
    /// at once: sqlx serialises migrations with an advisory lock.
    pub async fn open(url: &str, opts: &StoreOptions) -> anyhow::Result<Self> {
        let pool = PgPoolOptions::new()
            .max_connections(opts.max_connections.max(2))
            .acquire_timeout(opts.acquire_timeout)
            .connect(url)
            .await?;
        MIGRATOR.run(&pool).await?;
        Ok(Self {
            pool,
            rules: opts.engine,
        })
    }

    fn writer(&self) -> &PgPool {
        &self.pool
    }

    fn reader(&self) -> &PgPool {
        &self.pool
    }

    fn rules(&self) -> &EngineRules {
        &self.rules
    }

    fn pools(&self) -> Vec<PoolStats> {
        vec![PoolStats::of("main", &self.pool)]
    }
}

impl_agent_store!(PgStore, sqlx::Postgres, MIGRATOR);
// Replicas claim due runs concurrently: each skips rows another holds.
impl_workflow_store!(PgStore, sqlx::Postgres, " FOR UPDATE OF r SKIP LOCKED");
