//! W3C trace context (<https://www.w3.org/TR/trace-context/>): the
//! `traceparent` and `tracestate` headers, read from requests, stored with
//! a session and sent on each dispatch. Pure parsing and formatting; which
//! span ids are made, and when, is `telemetry::context`'s.

use std::fmt;

/// The `traceparent` header's name.
pub const TRACEPARENT: &str = "traceparent";
/// The `tracestate` header's name.
pub const TRACESTATE: &str = "tracestate";

/// Longest `tracestate` kept: the W3C limit for what a vendor must pass on
/// (32 members of at most 256 characters is more, but 512 is what the
/// specification says may be truncated to).
pub const MAX_TRACESTATE: usize = 512;

/// The `sampled` bit of the trace flags.
pub const SAMPLED: u8 = 0x01;

/// One `traceparent`: a trace, a span in it (the caller's, or ours), and
/// the trace flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TraceParent {
    /// 16 bytes, never all zero.
    pub trace_id: [u8; 16],
    /// 8 bytes, never all zero: the span this one is the child of.
    pub span_id: [u8; 8],
    /// Trace flags (bit 0: sampled).
    pub flags: u8,
}

impl TraceParent {
    /// Parse a `traceparent` value. Anything the specification says to
    /// ignore is `None`: a wrong length, upper-case or non-hex digits,
    /// version `ff`, an all-zero trace or span id, or a version-00 value
    /// with more after it. A later version is read for its first four
    /// fields, as the specification asks, when what follows is `-`.
    pub fn parse(raw: &str) -> Option<Self> {
        let s = raw.trim_matches([' ', '\t']);
        let b = s.as_bytes();
        if b.len() < 55 || b[2] != b'-' || b[35] != b'-' || b[52] != b'-' {
            return None;
        }
        let version = hex_byte(&b[0..2])?;
        if version == 0xff {
            return None;
        }
        if b.len() > 55 && (version == 0 || b[55] != b'-') {
            return None;
        }
        let mut trace_id = [0u8; 16];
        for (i, out) in trace_id.iter_mut().enumerate() {
            *out = hex_byte(&b[3 + 2 * i..5 + 2 * i])?;
        }
        let mut span_id = [0u8; 8];
        for (i, out) in span_id.iter_mut().enumerate() {
            *out = hex_byte(&b[36 + 2 * i..38 + 2 * i])?;
        }
        let flags = hex_byte(&b[53..55])?;
        if trace_id == [0; 16] || span_id == [0; 8] {
            return None;
        }
        Some(Self {
            trace_id,
            span_id,
            flags,
        })
    }

    /// The same trace and flags, with `span_id` as the parent: what a
    /// child of this span's caller sends on.
    pub fn with_span(self, span_id: [u8; 8]) -> Self {
        Self { span_id, ..self }
    }

    /// Whether the caller may have recorded this trace.
    pub fn sampled(&self) -> bool {
        self.flags & SAMPLED != 0
    }

    /// The trace id as 32 lower-case hex digits (as logs carry it).
    pub fn trace_id_hex(&self) -> String {
        hex::encode(self.trace_id)
    }

    /// The span id as 16 lower-case hex digits.
    pub fn span_id_hex(&self) -> String {
        hex::encode(self.span_id)
    }
}

/// Version 00, as sent: `00-<trace id>-<span id>-<flags>`.
impl fmt::Display for TraceParent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "00-{}-{}-{:02x}",
            hex::encode(self.trace_id),
            hex::encode(self.span_id),
            self.flags
        )
    }
}

/// Two lower-case hex digits (the specification allows no upper case).
fn hex_byte(b: &[u8]) -> Option<u8> {
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    Some(digit(b[0])? << 4 | digit(b[1])?)
}

/// A `tracestate` worth passing on: 1-512 characters of printable ASCII
/// (what a list of `key=value` members is made of), with surrounding
/// blanks trimmed; anything else is dropped rather than forwarded.
pub fn tracestate(raw: &str) -> Option<String> {
    let s = raw.trim_matches([' ', '\t', ',']);
    (!s.is_empty() && s.len() <= MAX_TRACESTATE && s.bytes().all(|c| (0x20..0x7f).contains(&c)))
        .then(|| s.to_owned())
}

/// A trace context as received or stored: the `traceparent` and, with it,
/// the `tracestate` to pass on unchanged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceContext {
    /// The trace and the span to be the child of.
    pub parent: TraceParent,
    /// Vendor data carried along, if any.
    pub state: Option<String>,
}

impl TraceContext {
    /// From the two header values; `None` when there is no usable
    /// `traceparent` (a `tracestate` alone means nothing).
    pub fn from_headers(traceparent: Option<&str>, tracestate_value: Option<&str>) -> Option<Self> {
        let parent = TraceParent::parse(traceparent?)?;
        Some(Self {
            parent,
            state: tracestate_value.and_then(tracestate),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn reads_the_specification_example() {
        let p = TraceParent::parse(EXAMPLE).expect("valid");
        assert_eq!(p.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(p.span_id_hex(), "00f067aa0ba902b7");
        assert_eq!(p.flags, 1);
        assert!(p.sampled());
        assert_eq!(p.to_string(), EXAMPLE);
    }

    #[test]
    fn what_is_ignored_and_what_is_read() {
        let cases: &[(&str, Option<&str>)] = &[
            (EXAMPLE, Some(EXAMPLE)),
            // Blanks around the value are not part of it.
            (&format!(" {EXAMPLE}\t"), Some(EXAMPLE)),
            // Unsampled stays unsampled; unknown flag bits are kept.
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00",
                Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"),
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-09",
                Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-09"),
            ),
            // A later version: its first four fields, sent on as 00.
            (
                "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-future",
                Some(EXAMPLE),
            ),
            (
                "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                Some(EXAMPLE),
            ),
            // Version ff is forbidden.
            (
                "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                None,
            ),
            // Version 00 has nothing after the flags.
            (&format!("{EXAMPLE}-extra"), None),
            (&format!("{EXAMPLE}x"), None),
            // A later version's extra part must start with a dash.
            (
                "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x",
                None,
            ),
            // All-zero ids.
            (
                "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
                None,
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
                None,
            ),
            // Upper case, non-hex, wrong lengths and separators.
            (
                "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
                None,
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
                None,
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
                None,
            ),
            (
                "00_4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7_01",
                None,
            ),
            (
                "0-04bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                None,
            ),
            ("", None),
            ("garbage", None),
            // Not ASCII: never sliced inside a character.
            (
                "00-4bf92f3577b34da6a3ce929d0e0e47é-00f067aa0ba902b7-01",
                None,
            ),
        ];
        for (raw, want) in cases {
            assert_eq!(
                TraceParent::parse(raw).map(|p| p.to_string()).as_deref(),
                *want,
                "{raw:?}"
            );
        }
    }

    #[test]
    fn a_child_keeps_the_trace_and_flags() {
        let p = TraceParent::parse(EXAMPLE).expect("valid");
        let c = p.with_span([1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(
            c.to_string(),
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0102030405060708-01"
        );
    }

    #[test]
    fn tracestate_is_kept_only_when_sane() {
        assert_eq!(
            tracestate(" rojo=00f067aa0ba902b7,congo=t61rcWkgMzE ").as_deref(),
            Some("rojo=00f067aa0ba902b7,congo=t61rcWkgMzE")
        );
        assert_eq!(tracestate(""), None);
        assert_eq!(tracestate(" , "), None);
        assert_eq!(tracestate("a=\u{7}"), None);
        assert_eq!(tracestate("a=é"), None);
        assert_eq!(tracestate(&"k=v,".repeat(200)), None);
        assert!(tracestate(&"x".repeat(MAX_TRACESTATE)).is_some());
    }

    #[test]
    fn context_needs_a_valid_traceparent() {
        assert_eq!(TraceContext::from_headers(None, Some("a=b")), None);
        assert_eq!(TraceContext::from_headers(Some("bad"), Some("a=b")), None);
        let c = TraceContext::from_headers(Some(EXAMPLE), Some("a=b")).expect("valid");
        assert_eq!(c.state.as_deref(), Some("a=b"));
        let c = TraceContext::from_headers(Some(EXAMPLE), Some("\u{1}")).expect("valid");
        assert_eq!(c.state, None);
    }
}
