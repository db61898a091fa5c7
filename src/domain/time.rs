//! Timestamps as they travel: RFC 3339 / ISO 8601 on the wire, whole
//! microseconds since the Unix epoch in storage.

use std::sync::OnceLock;
use std::time::Instant;

use chrono::{DateTime, NaiveDateTime, SecondsFormat, TimeZone, Utc};

/// Microseconds since the Unix epoch, UTC. The storage representation of every
/// instant, identical in SQLite and PostgreSQL so ordering is exact in both.
pub type Micros = i64;

/// Parse an ISO 8601 / RFC 3339 timestamp. A timestamp without an offset is
/// UTC (Python's `datetime.utcnow().isoformat()` sends exactly that).
pub fn parse_timestamp(s: &str) -> Result<DateTime<Utc>, String> {
    let s = s.trim();
    if s.is_empty() {
        return Err("must not be empty".into());
    }
    if let Ok(dt) = DateTime::parse_from_rfc3339(s) {
        return in_range(dt.with_timezone(&Utc));
    }
    // ISO 8601 variants RFC 3339 does not allow: an offset without a colon,
    // a space separator with an offset.
    for fmt in ["%Y-%m-%dT%H:%M:%S%.f%z", "%Y-%m-%d %H:%M:%S%.f%z"] {
        if let Ok(dt) = DateTime::parse_from_str(s, fmt) {
            return in_range(dt.with_timezone(&Utc));
        }
    }
    for fmt in ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M:%S%.f"] {
        if let Ok(naive) = NaiveDateTime::parse_from_str(s, fmt) {
            return in_range(Utc.from_utc_datetime(&naive));
        }
    }
    Err(format!(
        "'{}' is not an ISO 8601 timestamp (expected e.g. 2026-04-21T10:00:00.123456+00:00)",
        truncate(s, 64)
    ))
}

fn in_range(dt: DateTime<Utc>) -> Result<DateTime<Utc>, String> {
    // The year of the instant as stored, not as written: a leap second
    // (23:59:60) is stored as the next second, so 9999-12-31T23:59:60 is in
    // year 10000 and would render as "+10000-…", which is not RFC 3339 (found
    // by the timestamp fuzz target).
    let stored = DateTime::from_timestamp_micros(to_micros(dt));
    let year = stored.map_or(i32::MAX, |d| chrono::Datelike::year(&d));
    if (1970..=9999).contains(&year) {
        Ok(dt)
    } else {
        Err(format!("year {year} is out of range (1970-9999)"))
    }
}

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// Convert to storage form.
pub fn to_micros(dt: DateTime<Utc>) -> Micros {
    dt.timestamp_micros()
}

/// Convert from storage form. Values come from our own writes, so an
/// out-of-range value cannot occur; it maps to the epoch rather than panic.
pub fn from_micros(us: Micros) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(us).unwrap_or_default()
}

/// Render for the wire: RFC 3339 with microseconds and a `+00:00` offset, the
/// same shape Python's `isoformat()` produces for an aware UTC datetime.
pub fn format_micros(us: Micros) -> String {
    from_micros(us).to_rfc3339_opts(SecondsFormat::Micros, false)
}

/// The current time in storage form: the wall clock as it read when the
/// process first asked, advanced since by the monotonic clock. Leases,
/// deadlines, backoff and staleness are all measured with it, so a step of
/// the wall clock (an operator, a VM resumed, NTP stepping instead of
/// slewing) moves none of them; NTP's gradual corrections still apply, as
/// the monotonic clock follows them. A process keeps the wall time it
/// started with, so replicas agree as closely as their clocks did when they
/// started (docs/operations.md, "Clocks").
pub fn now_micros() -> Micros {
    let (wall, start) = anchor();
    let elapsed = i64::try_from(start.elapsed().as_micros()).unwrap_or(i64::MAX / 2);
    wall.saturating_add(elapsed)
}

/// The wall clock and the monotonic clock, read together once.
fn anchor() -> &'static (Micros, Instant) {
    static ANCHOR: OnceLock<(Micros, Instant)> = OnceLock::new();
    ANCHOR.get_or_init(|| (Utc::now().timestamp_micros(), Instant::now()))
}

/// When the process first read the time (in practice, its start).
pub fn process_start_micros() -> Micros {
    anchor().0
}

/// One duration grammar for every command line: humantime's (`500ms`,
/// `90s`, `15m`, `12h`, `30d`, `5w`, `1h30m`, `1h 30m`), or a bare number of
/// seconds.
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let s = s.trim();
    if let Ok(secs) = s.parse::<u64>() {
        return Ok(std::time::Duration::from_secs(secs));
    }
    humantime::parse_duration(s).map_err(|e| {
        format!("'{s}' is not a duration such as 500ms, 90s, 15m, 12h, 30d, 5w or 1h30m ({e})")
    })
}

/// The current time as [`now_micros`] reads it.
pub fn now() -> DateTime<Utc> {
    from_micros(now_micros())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_duration_grammar() {
        use std::time::Duration as D;
        for (text, want) in [
            ("3600", D::from_secs(3600)),
            ("500ms", D::from_millis(500)),
            ("90s", D::from_secs(90)),
            ("15m", D::from_secs(900)),
            ("12h", D::from_secs(43_200)),
            ("30d", D::from_secs(2_592_000)),
            ("5w", D::from_secs(3_024_000)),
            ("1h30m", D::from_secs(5400)),
            (" 1h 30m ", D::from_secs(5400)),
        ] {
            assert_eq!(parse_duration(text), Ok(want), "{text}");
        }
        for bad in ["", "x", "5 parsecs", "-1s", "1.5.2s"] {
            let err = parse_duration(bad).unwrap_err();
            assert!(err.contains("is not a duration such as"), "{bad}: {err}");
        }
    }

    #[test]
    fn parses_common_shapes() {
        let want = Utc.with_ymd_and_hms(2026, 4, 21, 10, 0, 0).unwrap();
        for s in [
            "2026-04-21T10:00:00+00:00",
            "2026-04-21T10:00:00Z",
            "2026-04-21T10:00:00",
            "2026-04-21 10:00:00",
            "2026-04-21T12:00:00+02:00",
            "2026-04-21T12:00:00+0200",
            "2026-04-21 12:00:00+02:00",
        ] {
            assert_eq!(parse_timestamp(s).unwrap(), want, "{s}");
        }
        let us = parse_timestamp("2026-04-21T10:00:00.123456+00:00").unwrap();
        assert_eq!(us.timestamp_subsec_micros(), 123456);
    }

    #[test]
    fn rejects_garbage_and_out_of_range() {
        for s in [
            "",
            "yesterday",
            "2026-13-01T00:00:00",
            "1960-01-01T00:00:00Z",
            "12345",
            // Leap seconds that land in year 10000 once stored (fuzz corpus
            // timestamp/seed-regress-leap-second-9999).
            "9999-12-31T23:59:60.172",
            "9999-12-31T23:59:60.999999-00:00",
        ] {
            assert!(parse_timestamp(s).is_err(), "{s}");
        }
        // A leap second elsewhere is kept, as the next second.
        let leap = parse_timestamp("2016-12-31T23:59:60.5Z").unwrap();
        assert_eq!(
            format_micros(to_micros(leap)),
            "2017-01-01T00:00:00.500000+00:00"
        );
        let last = parse_timestamp("9999-12-31T23:59:59.999999Z").unwrap();
        assert_eq!(
            format_micros(to_micros(last)),
            "9999-12-31T23:59:59.999999+00:00"
        );
    }

    #[test]
    fn round_trips_through_storage() {
        let dt = parse_timestamp("2026-04-21T10:00:00.123456+00:00").unwrap();
        assert_eq!(
            format_micros(to_micros(dt)),
            "2026-04-21T10:00:00.123456+00:00"
        );
    }
}
