//! The `opscore` binary: parse the command line, start logging, run.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;
use opscore::cli::{Cli, Command};
use opscore::config::{KeySource, LogFormat};
use tokio_util::sync::CancellationToken;

/// jemalloc, not the system's malloc: glibc keeps what it freed in the
/// middle of its heaps, so the buffers of a burst of connections (1,100
/// stalled bodies: about 20 MB of hyper's per-connection buffers) stayed
/// resident for good after they were freed. jemalloc gives pages back once
/// they have been unused for a while ([`give_back_freed_memory`]).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// How long freed pages stay mapped for reuse before jemalloc returns them
/// to the system (its default is ten seconds).
const FREED_PAGES_KEPT_MS: isize = 1000;

/// Have jemalloc return freed pages after [`FREED_PAGES_KEPT_MS`], from a
/// background thread of its own, so an idle process shrinks too (without
/// it, pages are only returned while the process keeps allocating). Set at
/// run time: a build-time setting would not reach every build (the
/// Dockerfile builds from Cargo.toml and the sources alone).
fn give_back_freed_memory() {
    use tikv_jemalloc_ctl::{background_thread, Access, AsName};
    // Arenas created from now on; then those already in use (arenas are
    // made as threads first allocate, and tokio's may have started).
    let _ = b"arenas.dirty_decay_ms\0".name().write(FREED_PAGES_KEPT_MS);
    let arenas: u32 = tikv_jemalloc_ctl::arenas::narenas::read().unwrap_or(0);
    for i in 0..arenas {
        // Arenas not made yet refuse the write, and take the default above.
        let _ = format!("arena.{i}.dirty_decay_ms\0")
            .name()
            .write(FREED_PAGES_KEPT_MS);
    }
    if let Err(e) = background_thread::write(true) {
        eprintln!("opscore: warning: jemalloc's background thread did not start: {e}");
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    give_back_freed_memory();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        // A refused setting reads like any other startup failure; usage
        // mistakes (and --help) are clap's to report.
        Err(e) => match opscore::config::invalid_setting(&e) {
            Some(message) => {
                eprintln!("opscore: {message}");
                return ExitCode::FAILURE;
            }
            None => e.exit(),
        },
    };
    let result = match cli.command {
        Command::Serve(raw) => run_serve(*raw).await,
        Command::Migrate { db } => run_migrate(db).await,
        Command::Simulate(args) => run_simulate(*args).await,
        Command::Bench(args) => run_bench(*args).await,
        Command::DelayProxy(args) => opscore::bench::delay_proxy::run(args).await,
        // These print their own errors and choose their exit code.
        Command::Healthcheck(args) => return opscore::cli::healthcheck::run(args).await,
        Command::Client(cmd) => return opscore::cli::run(cmd).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Logging may not be set up yet (a bad setting), so say it plainly.
            eprintln!("opscore: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run_serve(raw: opscore::config::ServeArgs) -> anyhow::Result<()> {
    let (config, key_source) = raw.resolve()?;
    // Held to the end, so the last lines (shutdown) are written out.
    let _log =
        opscore::telemetry::init_with(&config.log_level, config.log_format, config.otel.as_ref())?;
    if let Some(otel) = &config.otel {
        tracing::info!(url = %otel.traces_url, service = %otel.service_name, "exporting trace spans (OTLP/HTTP)");
    }
    match key_source {
        KeySource::Configured => tracing::info!("using the API key from OPSCORE_API_KEY"),
        KeySource::File {
            path,
            created: true,
        } => {
            tracing::warn!(path = %path.display(), "OPSCORE_API_KEY is not set: generated an API key and stored it (mode 0600); read it from that file")
        }
        KeySource::File {
            path,
            created: false,
        } => {
            tracing::info!(path = %path.display(), "using the generated API key stored in the data directory")
        }
    }
    if config.webhook_secrets().is_empty() && !config.allow_unsigned_notify {
        tracing::warn!("OPSCORE_WEBHOOK_SECRET is not set: the registration webhook accepts only bearer API keys");
    }
    let listener = tokio::net::TcpListener::bind(config.bind)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on OPSCORE_BIND={}: {e}", config.bind))?;
    let shutdown = CancellationToken::new();
    tokio::spawn(on_signal(shutdown.clone()));
    opscore::serve(config, listener, shutdown).await
}

async fn run_simulate(args: opscore::sim::SimArgs) -> anyhow::Result<()> {
    let _log = opscore::telemetry::init("info", LogFormat::Text);
    let stop = CancellationToken::new();
    tokio::spawn(on_signal(stop.clone()));
    opscore::sim::run(args, stop).await
}

async fn run_bench(args: opscore::bench::BenchArgs) -> anyhow::Result<()> {
    // Warnings (from the in-process simulated agents) go to stderr, so that
    // stdout holds only the table or the JSON.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new("warn"))
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
    let stop = CancellationToken::new();
    tokio::spawn(on_signal(stop.clone()));
    let json = args.json;
    let report = opscore::bench::run_until(args, stop).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.table());
    }
    Ok(())
}

async fn run_migrate(db: opscore::config::DbArgs) -> anyhow::Result<()> {
    let _log = opscore::telemetry::init("info", LogFormat::Text);
    opscore::store::migrate(&db.url()).await?;
    tracing::info!("migrations applied");
    Ok(())
}

/// Cancel `token` on SIGINT or SIGTERM.
async fn on_signal(token: CancellationToken) {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
    tracing::info!("shutdown signal received; draining");
    token.cancel();
}
