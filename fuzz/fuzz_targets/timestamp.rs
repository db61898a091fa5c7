//! The two timestamp parsers that read untrusted text: the webhook's
//! `X-AgentKit-Timestamp` (Unix seconds or RFC 3339) and the state report's
//! ISO 8601 `timestamp`. Input: the text itself (UTF-8; other bytes skip).
//!
//! Properties checked, beyond "no panic":
//! - an accepted report timestamp is stored as an instant within
//!   1970..=9999 (UTC) and survives the
//!   storage round trip: `format_micros` renders it as RFC 3339 with
//!   microseconds and `+00:00`, which parses back to the same microsecond and
//!   renders identically again;
//! - an accepted webhook timestamp renders back (as decimal seconds, or as
//!   RFC 3339 in UTC when its year has four digits) to text that parses to
//!   the same second;
//! - where both parsers accept an RFC 3339 text they agree on the second,
//!   and the report parser refuses RFC 3339 text only for its year range.
#![no_main]

use chrono::{DateTime, Datelike, SecondsFormat};
use libfuzzer_sys::fuzz_target;
use opscore::domain::signature::parse_webhook_timestamp;
use opscore::domain::time::{format_micros, parse_timestamp, to_micros};

/// 9999-12-31T23:59:59.999999Z, the last instant with a four-digit year.
const MAX_MICROS: i64 = 253_402_300_799_999_999;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };

    let report = parse_timestamp(text);
    if let Ok(dt) = report {
        // The stored instant is within 1970..=9999 (a leap second counts as
        // the next second: 1969-12-31T23:59:60Z is stored as the epoch).
        let us = to_micros(dt);
        assert!((0..=MAX_MICROS).contains(&us), "{text:?} stored as {us}");
        let wire = format_micros(us);
        assert!(
            wire.ends_with("+00:00") && wire.len() == 32,
            "wire form {wire:?}"
        );
        let again = parse_timestamp(&wire).map(to_micros);
        assert_eq!(again, Ok(us), "{text:?} -> {wire:?}");
        assert_eq!(format_micros(us), wire);
    }

    let webhook = parse_webhook_timestamp(text);
    if let Ok(secs) = webhook {
        let trimmed = text.trim();
        if trimmed.bytes().all(|b| b.is_ascii_digit()) {
            assert!(secs >= 0);
            assert_eq!(parse_webhook_timestamp(&secs.to_string()), Ok(secs));
        } else {
            // Accepted as RFC 3339: renders and parses back to the second.
            let Some(dt) = DateTime::from_timestamp(secs, 0) else {
                panic!("{text:?} accepted as {secs}, outside chrono's range");
            };
            // RFC 3339 has four-digit years: 9999-12-31T23:59:59-01:00 is
            // an instant in year 10000 UTC that has no UTC rendering.
            if (0..=9999).contains(&dt.year()) {
                let rendered = dt.to_rfc3339_opts(SecondsFormat::Secs, true);
                assert_eq!(parse_webhook_timestamp(&rendered), Ok(secs), "{rendered:?}");
            }
            match &report {
                Ok(r) => assert_eq!(r.timestamp(), secs, "parsers disagree on {text:?}"),
                Err(why) => assert!(why.contains("out of range"), "{text:?}: {why}"),
            }
        }
    }
});
