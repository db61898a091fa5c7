//! Logging and tracing: tracing to stdout, one JSON object per line by
//! default or readable text; W3C trace context on every request and
//! dispatch ([`context`]); and, when a collector is configured, spans
//! exported over OTLP/HTTP ([`otel`]).
//!
//! Lines are formatted on the thread that logs them, then handed to one
//! writer thread that writes them to stdout in as few `write` calls as it
//! can: everything queued at that moment, then a flush, so each line still
//! leaves the process as soon as the writer gets to it and `docker logs`
//! shows it at once. A request thread never waits on stdout (a slow pipe or
//! terminal cannot stall the service); if the queue ever fills, lines are
//! dropped and counted (`opscore_log_lines_dropped_total`), never blocked on.

pub mod context;
mod json;
pub mod otel;

use std::io::{BufWriter, IsTerminal, Write};
use std::os::fd::AsFd;

use tracing::Subscriber;
use tracing_appender::non_blocking::{ErrorCounter, NonBlocking, NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::config::{LogFormat, OtelConfig};

/// Lines the writer thread may have queued before new ones are dropped.
const QUEUED_LINES: usize = 128 * 1024;

/// Keeps the writer thread (and the span exporter, if any) alive; dropping
/// it exports the spans still queued, then writes out the queued lines.
/// Hold it until the process is about to exit.
#[must_use = "dropping the guard stops logging"]
pub struct LogGuard {
    exporter: Option<otel::Exporter>,
    _worker: Option<WorkerGuard>,
}

impl Drop for LogGuard {
    fn drop(&mut self) {
        // Spans first: what the exporter logs about its last batch still
        // reaches the writer, which `_worker` then drains.
        if let Some(exporter) = self.exporter.take() {
            exporter.shutdown();
        }
    }
}

/// Install the global subscriber. `filter` was validated with the config.
/// Calling it twice (tests) keeps the first subscriber.
pub fn init(filter: &str, format: LogFormat) -> LogGuard {
    match init_with(filter, format, None) {
        Ok(guard) => guard,
        // Only span export can fail to start, and none was asked for.
        Err(_) => LogGuard {
            exporter: None,
            _worker: None,
        },
    }
}

/// [`init`], and export spans to the collector of `otel` when given.
/// Fails only when the exporter cannot be built.
pub fn init_with(
    filter: &str,
    format: LogFormat,
    otel: Option<&OtelConfig>,
) -> anyhow::Result<LogGuard> {
    let filter = EnvFilter::try_new(filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let (writer, worker) = NonBlockingBuilder::default()
        .buffered_lines_limit(QUEUED_LINES)
        .lossy(true)
        .thread_name("opscore-log")
        .finish(stdout_writer());
    // Set once: a second call (tests) keeps the first subscriber, and with
    // it the first writer's count.
    let _ = DROPPED.set(writer.error_counter());
    // Without export the level filter is global, so a span or event below
    // it is never built (a request's span costs nothing at LOG_LEVEL=warn).
    // With export it filters the log lines only: spans are exported
    // whatever the log level.
    let (exporter, installed) = match otel {
        Some(cfg) => {
            let (exporter, spans) = otel::Exporter::start(cfg)?;
            let installed = tracing_subscriber::registry()
                .with(lines_layer(format, writer).with_filter(filter))
                .with(spans)
                .try_init()
                .is_ok();
            if installed {
                otel::set_exporting();
            }
            (Some(exporter), installed)
        }
        None => {
            let installed = tracing_subscriber::registry()
                .with(filter)
                .with(lines_layer(format, writer))
                .try_init()
                .is_ok();
            (None, installed)
        }
    };
    Ok(LogGuard {
        exporter: exporter.filter(|_| installed),
        _worker: installed.then_some(worker),
    })
}

/// The layer that writes log lines to `writer`, in `format`.
fn lines_layer<S>(format: LogFormat, writer: NonBlocking) -> Box<dyn Layer<S> + Send + Sync>
where
    S: Subscriber + for<'a> LookupSpan<'a> + Send + Sync,
{
    let lines = tracing_subscriber::fmt::layer()
        .with_writer(writer)
        .with_target(false)
        .with_ansi(std::io::stdout().is_terminal());
    match format {
        LogFormat::Json => lines
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .map_event_format(json::WithTraceIds)
            .boxed(),
        LogFormat::Text => lines.boxed(),
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
