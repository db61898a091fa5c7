//! Span export over OTLP/HTTP, when `OTEL_EXPORTER_OTLP_ENDPOINT` is set
//! (nothing here runs otherwise).
//!
//! Request and dispatch spans (the `opscore` crate's spans at info and
//! above, whatever `LOG_LEVEL` says) go to a batch processor that exports
//! them from a thread of its own, with a blocking HTTP client: a request
//! never waits on the collector. The queue holds 2,048 spans
//! (`OTEL_BSP_MAX_QUEUE_SIZE`); past it spans are dropped, never waited
//! for. A failed export is logged at most once a minute with the number
//! of failures since the last line. At shutdown the queue is exported
//! before the process exits.

use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use opentelemetry::trace::{
    SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState, TracerProvider,
};
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{SdkTracerProvider, SpanData, SpanExporter};
use opentelemetry_sdk::Resource;
use tracing::{Level, Span, Subscriber};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::Layer;

use crate::config::{OtelConfig, OtlpProtocol};
use crate::domain::trace::{TraceContext, TraceParent};

/// The span's role, for exported spans (`otel.kind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Serving a request.
    Server,
    /// Calling out (a dispatch).
    Client,
}

/// How often a failing collector is complained about.
const REPORT_EVERY: Duration = Duration::from_secs(60);

/// Whether spans are being exported (set once, when the subscriber with
/// the exporting layer was installed).
static EXPORTING: AtomicBool = AtomicBool::new(false);

pub(super) fn set_exporting() {
    EXPORTING.store(true, Ordering::Relaxed);
}

/// Whether this process exports spans.
pub fn exporting() -> bool {
    EXPORTING.load(Ordering::Relaxed)
}

/// The running exporter; [`shutdown`](Self::shutdown) exports what is
/// queued and stops it.
pub struct Exporter {
    provider: SdkTracerProvider,
}

impl Exporter {
    /// Build the exporter and the tracing layer that feeds it.
    pub(super) fn start<S>(
        cfg: &OtelConfig,
    ) -> anyhow::Result<(Self, Box<dyn Layer<S> + Send + Sync>)>
    where
        S: Subscriber + for<'a> LookupSpan<'a> + Send + Sync,
    {
        let protocol = match cfg.protocol {
            OtlpProtocol::HttpProtobuf => Protocol::HttpBinary,
            OtlpProtocol::HttpJson => Protocol::HttpJson,
        };
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(protocol)
            .with_endpoint(cfg.traces_url.as_str())
            .build()
            .map_err(|e| {
                anyhow::anyhow!("cannot export spans to OTEL_EXPORTER_OTLP_ENDPOINT: {e}")
            })?;
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(Complaining::new(exporter))
            .with_resource(
                Resource::builder()
                    .with_service_name(cfg.service_name.clone())
                    .build(),
            )
            .build();
        let tracer = provider.tracer("opscore");
        let layer = tracing_opentelemetry::layer()
            .with_tracer(tracer)
            .with_location(false)
            .with_threads(false)
            .with_target(false)
            .with_level(false)
            .with_tracked_inactivity(false)
            .with_filter(Targets::new().with_target("opscore", Level::INFO))
            .boxed();
        Ok((Self { provider }, layer))
    }

    /// Export the spans still queued (bounded by the export timeout) and
    /// stop.
    pub(super) fn shutdown(self) {
        if let Err(e) = self.provider.shutdown() {
            tracing::warn!(error = %e, "span export did not finish at shutdown");
        }
    }
}

/// The exported span's context, when spans are exported and `span` is one
/// of them: a child of `parent` when given. `None` otherwise; the caller
/// makes its own ids.
pub(super) fn start(
    span: &Span,
    parent: Option<&TraceContext>,
    kind: Kind,
    name: impl FnOnce() -> String,
) -> Option<TraceParent> {
    if !exporting() {
        return None;
    }
    span.record(
        "otel.kind",
        match kind {
            Kind::Server => "server",
            Kind::Client => "client",
        },
    );
    span.record("otel.name", name());
    if let Some(p) = parent {
        let remote = SpanContext::new(
            TraceId::from_bytes(p.parent.trace_id),
            SpanId::from_bytes(p.parent.span_id),
            TraceFlags::new(p.parent.flags),
            true,
            p.state
                .as_deref()
                .and_then(|s| TraceState::from_str(s).ok())
                .unwrap_or_default(),
        );
        // Fails only for a span the layer does not see; then there is
        // nothing exported to be the child of anything.
        let _ = span.set_parent(opentelemetry::Context::new().with_remote_span_context(remote));
    }
    let cx = span.context();
    let sc = cx.span().span_context().clone();
    sc.is_valid().then(|| TraceParent {
        trace_id: sc.trace_id().to_bytes(),
        span_id: sc.span_id().to_bytes(),
        flags: sc.trace_flags().to_u8(),
    })
}

/// The OTLP exporter, with its failures logged at most once per
/// [`REPORT_EVERY`] instead of once per batch.
struct Complaining<E> {
    inner: E,
    limit: Mutex<RateLimit>,
}

impl<E> Complaining<E> {
    fn new(inner: E) -> Self {
        Self {
            inner,
            limit: Mutex::new(RateLimit::new(REPORT_EVERY)),
        }
    }
}

impl<E: fmt::Debug> fmt::Debug for Complaining<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.inner.fmt(f)
    }
}

impl<E: SpanExporter> SpanExporter for Complaining<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let spans = batch.len();
        let result = self.inner.export(batch).await;
        if let Err(e) = &result {
            let report = self
                .limit
                .lock()
                .map(|mut l| l.hit(Instant::now()))
                .unwrap_or(None);
            if let Some(failures) = report {
                tracing::warn!(error = %e, spans, failures, "span export failed (spans dropped; logged at most once a minute)");
            }
        }
        result
    }

    fn shutdown_with_timeout(&mut self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&mut self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

/// Lets one report through per interval, counting what it held back.
#[derive(Debug)]
struct RateLimit {
    every: Duration,
    last: Option<Instant>,
    held: u64,
}

impl RateLimit {
    fn new(every: Duration) -> Self {
        Self {
            every,
            last: None,
            held: 0,
        }
    }

    /// One more failure at `now`: `Some(failures)` (this one and those
    /// held back since the last report) when it is to be reported.
    fn hit(&mut self, now: Instant) -> Option<u64> {
        self.held += 1;
        if self
            .last
            .is_some_and(|last| now.duration_since(last) < self.every)
        {
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.held))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_are_reported_once_per_interval_with_their_count() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut l = RateLimit::new(Duration::from_secs(60));
        assert_eq!(l.hit(at(0)), Some(1), "the first is reported at once");
        assert_eq!(l.hit(at(5_000)), None);
        assert_eq!(l.hit(at(59_999)), None);
        assert_eq!(l.hit(at(60_000)), Some(3), "then with the held-back ones");
        assert_eq!(l.hit(at(61_000)), None);
        assert_eq!(l.hit(at(200_000)), Some(2));
    }
}
