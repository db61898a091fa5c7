//! Logging: tracing to stdout, one JSON object per line by default or
//! readable text.
//!
//! Lines are formatted on the thread that logs them, then handed to one
//! writer thread that writes them to stdout in as few `write` calls as it
//! can: everything queued at that moment, then a flush, so each line still
//! leaves the process as soon as the writer gets to it and `docker logs`
//! shows it at once. A request thread never waits on stdout (a slow pipe or
//! terminal cannot stall the service); if the queue ever fills, lines are
//! dropped and counted (`opscore_log_lines_dropped_total`), never blocked on.

use std::io::{BufWriter, IsTerminal, Write};
use std::os::fd::AsFd;

use tracing_appender::non_blocking::{ErrorCounter, NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Lines the writer thread may have queued before new ones are dropped.
const QUEUED_LINES: usize = 128 * 1024;

/// Keeps the writer thread alive; dropping it writes out what is queued.
/// Hold it until the process is about to exit.
#[must_use = "dropping the guard stops logging"]
pub struct LogGuard {
    _worker: Option<WorkerGuard>,
}

/// Install the global subscriber. `filter` was validated with the config.
/// Calling it twice (tests) keeps the first subscriber.
pub fn init(filter: &str, format: LogFormat) -> LogGuard {
    let filter = EnvFilter::try_new(filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let (writer, worker) = NonBlockingBuilder::default()
        .buffered_lines_limit(QUEUED_LINES)
        .lossy(true)
        .thread_name("opscore-log")
        .finish(stdout_writer());
    // Set once: a second call (tests) keeps the first subscriber, and with
    // it the first writer's count.
    let _ = DROPPED.set(writer.error_counter());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_target(false)
        .with_ansi(std::io::stdout().is_terminal());
    let installed = match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .try_init(),
        LogFormat::Text => builder.try_init(),
    };
    LogGuard {
        _worker: installed.is_ok().then_some(worker),
    }
}

/// Log lines dropped because the writer thread fell behind (0 when logging
/// was never set up in this process).
pub fn dropped_lines() -> u64 {
    DROPPED.get().map_or(0, |c| c.dropped_lines() as u64)
}

static DROPPED: std::sync::OnceLock<ErrorCounter> = std::sync::OnceLock::new();

/// Stdout without Rust's line buffering (the writer thread flushes after
/// each burst instead), falling back to plain stdout if it cannot be cloned.
fn stdout_writer() -> Box<dyn Write + Send + Sync> {
    match std::io::stdout().as_fd().try_clone_to_owned() {
        Ok(fd) => Box::new(BufWriter::with_capacity(64 * 1024, std::fs::File::from(fd))),
        Err(_) => Box::new(std::io::stdout()),
    }
}
