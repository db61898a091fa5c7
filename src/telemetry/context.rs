//! The trace context of a span: every request and every dispatch is a span
//! in a W3C trace, continuing the caller's trace when it sent a valid
//! `traceparent` (or the trace stored with a session), else a new one.
//!
//! When spans are exported ([`super::otel`]), the exported span's own ids
//! are the context, so what is sent on and logged matches what the
//! collector shows; otherwise ids are made here. Either way the span
//! records `trace_id` (text logs show it with the span) and remembers both
//! ids for the JSON lines logged inside it.

use tracing::Span;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::Registry;

pub use super::otel::Kind;
use crate::domain::trace::{TraceContext, TraceParent, SAMPLED};

/// What the JSON formatter puts on each line logged inside a span.
#[derive(Debug, Clone)]
pub(super) struct LogIds {
    pub trace_id: String,
    pub span_id: String,
}

/// Make `span` a span of `parent`'s trace (a child of its span), or the
/// root of a new trace, and return the span's own context: its trace, its
/// span id, its flags, and the parent's `tracestate`. `span` should declare
/// the empty fields `trace_id`, `otel.kind` and `otel.name` (it may not
/// declare them, then they are not recorded). `name` makes the exported
/// span's name (called only when spans are exported).
pub fn start(
    span: &Span,
    parent: Option<&TraceContext>,
    kind: Kind,
    name: impl FnOnce() -> String,
) -> TraceContext {
    let own = super::otel::start(span, parent, kind, name).unwrap_or_else(|| match parent {
        Some(p) => p.parent.with_span(new_span_id()),
        // Nobody decided before us: we do, and say the trace is wanted,
        // so that whoever receives it may record their part.
        None => TraceParent {
            trace_id: new_trace_id(),
            span_id: new_span_id(),
            flags: SAMPLED,
        },
    });
    // A span below the log level is not built: nothing to record on it.
    if !span.is_disabled() {
        let ids = LogIds {
            trace_id: own.trace_id_hex(),
            span_id: own.span_id_hex(),
        };
        span.record("trace_id", tracing::field::display(&ids.trace_id));
        span.with_subscriber(|(id, dispatch)| {
            if let Some(data) = dispatch
                .downcast_ref::<Registry>()
                .and_then(|registry| registry.span(id))
            {
                data.extensions_mut().replace(ids);
            }
        });
    }
    TraceContext {
        parent: own,
        state: parent.and_then(|p| p.state.clone()),
    }
}

/// A random trace id, never all zero.
fn new_trace_id() -> [u8; 16] {
    loop {
        let id = rand::random::<u128>();
        if id != 0 {
            return id.to_be_bytes();
        }
    }
}

/// A random span id, never all zero.
fn new_span_id() -> [u8; 8] {
    loop {
        let id = rand::random::<u64>();
        if id != 0 {
            return id.to_be_bytes();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CALLER: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00";

    /// Without a subscriber (or with one that exports nothing): the
    /// caller's trace and flags with a span id of our own, or a new,
    /// sampled trace.
    #[test]
    fn continues_the_callers_trace_or_starts_one() {
        let caller = TraceContext::from_headers(Some(CALLER), Some("k=v")).expect("valid");
        let span = tracing::info_span!("t", trace_id = tracing::field::Empty);
        let child = start(&span, Some(&caller), Kind::Server, || "t".into());
        assert_eq!(child.parent.trace_id, caller.parent.trace_id);
        assert_ne!(child.parent.span_id, caller.parent.span_id);
        assert_eq!(child.parent.flags, 0, "an unsampled trace stays unsampled");
        assert_eq!(child.state.as_deref(), Some("k=v"));

        let a = start(&span, None, Kind::Client, || "t".into());
        let b = start(&span, None, Kind::Client, || "t".into());
        assert_ne!(a.parent.trace_id, b.parent.trace_id);
        assert!(a.parent.sampled());
        assert_eq!(a.state, None);
        // What is sent reads back as itself.
        let sent = a.parent.to_string();
        assert_eq!(TraceParent::parse(&sent), Some(a.parent));
    }
}
