//! Ops-Core: the control plane for fleets of AI agents.
//!
//! [`serve`] is the one entry point, used by the binary and by every
//! end-to-end test.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod bench;
pub mod cli;
pub mod client;
pub mod config;
pub mod domain;
pub mod engine;
pub mod error;
pub mod http;
pub mod metrics;
pub mod private_files;
pub mod sim;
pub mod store;
pub mod telemetry;
pub mod wire;

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::http::keyring::KeyRing;
use crate::http::state::{AppState, Shared};
use crate::store::writer::{StateWriter, WriterOptions};

/// Run the service on `listener` until `shutdown` is cancelled.
///
/// Opens (and migrates) the database, starts the background writers, serves
/// HTTP (with the header read timeout, request timeout and concurrency limit
/// of `config`), and on shutdown stops accepting, lets in-flight requests
/// finish within `config.shutdown_grace`, writes every report already
/// accepted, and closes the database.
pub async fn serve(
    config: Config,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let url = config.database_url.expose().to_owned();
    // Read the definition files before touching the database: a broken file
    // stops startup with its name and the reason.
    let definitions = if config.workflows_dir.is_dir() || config.workflows_dir_explicit {
        engine::read_definitions(&config.workflows_dir)?
    } else {
        Vec::new()
    };
    let metrics = Arc::new(metrics::Metrics::new());
    let store_options = store::StoreOptions {
        on_session_end: metrics.on_session_end(),
        ..config.db.clone()
    };
    let store = store::connect(&url, &store_options).await?;
    engine::load_definitions(&*store, &definitions).await?;
    let sqlite = url.starts_with("sqlite:");
    let writer_opts = WriterOptions {
        // SQLite has one writer; PostgreSQL overlaps a few commits.
        workers: if sqlite { 1 } else { 4 },
        max_batch: 512,
        queue: 16_384,
    };
    let wake = Arc::new(Notify::new());
    let writer_stop = CancellationToken::new();
    let (writer, mut writers) = StateWriter::spawn(
        store.clone(),
        writer_opts,
        wake.clone(),
        writer_stop.clone(),
    );
    let dispatcher_stop = CancellationToken::new();
    let dispatcher = config.dispatch.enabled.then(|| {
        engine::dispatcher::spawn(
            store.clone(),
            config.dispatch.clone(),
            wake.clone(),
            metrics.clone(),
            dispatcher_stop.clone(),
        )
    });
    // Background work that ends with the HTTP server: the change feed (its
    // streams and blocking reads end at shutdown, so draining never waits
    // on them) and housekeeping.
    let background_stop = shutdown.child_token();
    let mut background = tokio::task::JoinSet::new();
    let feed = engine::feed::Feed::start(
        store.clone(),
        config.max_feed_subscribers,
        background_stop.clone(),
        &mut background,
    )
    .await?;
    background.spawn(engine::housekeeping::run(
        store.clone(),
        config.retention.clone(),
        background_stop.clone(),
    ));
    let keys = Arc::new(
        KeyRing::new(
            config.api_key.expose(),
            store.clone(),
            config.rate_limit_per_key,
        )
        .with_shared_rate_limits(!sqlite)
        .with_max_streams(config.max_streams_per_key)
        .with_failure_burst(config.auth_failure_burst),
    );
    background.spawn(http::keyring::run_usage_flusher(
        keys.clone(),
        background_stop.clone(),
    ));
    background.spawn(http::keyring::run_key_follower(
        keys.clone(),
        background_stop.clone(),
    ));
    // TLS files that cannot be loaded stop the start, naming the file.
    let tls = match config.tls.clone() {
        Some(files) => {
            let tls = http::tls::Tls::new(files).map_err(anyhow::Error::msg)?;
            tls.watch(background_stop.clone());
            Some(tls)
        }
        None => None,
    };
    let server_options = http::server::ServerOptions {
        tls,
        header_read_timeout: config.header_read_timeout,
        shutdown_grace: config.shutdown_grace,
    };
    let state = AppState::new(Shared {
        keys,
        config: Arc::new(config),
        store: store.clone(),
        writer,
        wake,
        metrics,
        feed,
        readiness: Arc::default(),
    });
    let app = http::router(state);
    tracing::info!(addr = %listener.local_addr()?, backend = if sqlite { "sqlite" } else { "postgres" }, "listening");

    // Returns once every connection has ended: requests in flight finished,
    // or the grace period ran out and the rest were closed.
    http::server::run(listener, app, server_options, shutdown).await;
    background_stop.cancel();
    while background.join_next().await.is_some() {}
    // Stop claiming tasks and let deliveries in flight record their result.
    dispatcher_stop.cancel();
    if let Some(d) = dispatcher {
        let _ = d.await;
    }
    // No new reports from here on; write out what was accepted.
    writer_stop.cancel();
    if tokio::time::timeout(Duration::from_secs(30), async {
        while writers.join_next().await.is_some() {}
    })
    .await
    .is_err()
    {
        tracing::error!("state writer did not finish within 30s");
    }
    store.close().await;
    tracing::info!("stopped");
    Ok(())
}
