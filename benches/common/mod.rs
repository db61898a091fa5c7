//! What the benches share.

use std::future::Future;

use sqlx::Connection;

/// `name`'s value as a number, or `default` when unset or not a number.
pub fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Runs `bench` on each backend in turn, given its label and a database URL:
/// first a SQLite file in a scratch directory, then, when
/// OPSCORE_BENCH_POSTGRES_URL is set (a PostgreSQL URL allowed to create
/// databases), a scratch database created there and dropped afterwards,
/// whether or not the bench succeeded.
pub async fn on_each_backend<F, Fut>(mut bench: F) -> anyhow::Result<()>
where
    F: FnMut(&'static str, String) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let dir = tempfile::tempdir()?;
    let sqlite = format!("sqlite://{}", dir.path().join("bench.db").display());
    bench("sqlite", sqlite).await?;
    let Ok(admin) = std::env::var("OPSCORE_BENCH_POSTGRES_URL") else {
        return Ok(());
    };
    let name = format!("opscore_bench_{}", uuid::Uuid::new_v4().simple());
    let mut conn = sqlx::PgConnection::connect(&admin).await?;
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut conn)
        .await?;
    let url = format!(
        "{}/{name}",
        admin
            .rsplit_once('/')
            .map_or(admin.as_str(), |(base, _)| base)
    );
    let result = bench("postgres", url).await;
    sqlx::query(&format!("DROP DATABASE {name} WITH (FORCE)"))
        .execute(&mut conn)
        .await?;
    result
}
