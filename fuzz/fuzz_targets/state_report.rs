//! State reports (docs/api.md §1.2), through the same steps as the handler
//! (`http::agents::report_state`): the body parsed by `parse_json` into
//! `StateReportBody`, the path's agent id checked, then `validate`.
//!
//! Input: the path's agent id on the first line, the raw body after it:
//!
//! ```text
//! agent-7
//! {"agentId":"agent-7","timestamp":"2026-04-21T10:00:00Z","state":"idle","details":null}
//! ```
//!
//! Properties checked, beyond "no panic":
//! - the route's JSON parser accepts exactly what serde_json does;
//! - a refused body is 400 (not JSON) or 422 (wrong shape); a refused report
//!   is a mismatch naming two different ids, or a 422 naming at least one
//!   field, each one of the body's fields;
//! - an accepted report is for the path's agent; its
//!   state is a valid state name; its timestamp survives the storage round
//!   trip; its details are absent or a strict JSON object of at most 64 KiB
//!   that re-serialises (as the read routes send it) to parseable JSON.
#![no_main]

use chrono::{TimeZone, Utc};
use libfuzzer_sys::fuzz_target;
use opscore::domain::agent::AgentId;
use opscore::domain::state::{
    validate_state_name, ReportError, StateReportBody, MAX_DETAILS_BYTES,
};
use opscore::domain::time::{format_micros, parse_timestamp, to_micros};
use opscore::error::ApiError;
use opscore::http::extract::parse_json;

const FIELDS: [&str; 4] = ["agentId", "timestamp", "state", "details"];

fuzz_target!(|data: &[u8]| {
    let (path, body) = match data.iter().position(|&b| b == b'\n') {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    let Ok(path) = std::str::from_utf8(path) else {
        return;
    };

    let route = parse_json::<StateReportBody>(body);
    // The route's parser is as strict as serde_json's own (one JSON value,
    // nothing after it).
    assert_eq!(
        route.is_ok(),
        serde_json::from_slice::<StateReportBody>(body).is_ok(),
        "parse_json and serde_json disagree"
    );
    let parsed = match route {
        Ok(b) => b,
        Err(e) => {
            assert!(
                matches!(e.status().as_u16(), 400 | 422),
                "body refused with {}",
                e.status()
            );
            return;
        }
    };
    let Ok(agent) = AgentId::parse(path) else {
        return;
    };
    // A fixed receive time keeps runs reproducible.
    let received = Utc
        .timestamp_opt(1_776_765_600, 0)
        .single()
        .unwrap_or_default();
    let max_skew = std::time::Duration::from_secs(300);
    match parsed.validate(&agent, received, max_skew) {
        Err(ReportError::AgentMismatch { path: p, body: b }) => {
            assert_eq!(p, agent.as_str());
            assert_ne!(p, b);
        }
        Err(ReportError::InFuture {
            ahead_secs,
            max_skew_secs,
        }) => {
            assert_eq!(max_skew_secs, 300);
            assert!(ahead_secs >= max_skew_secs, "{ahead_secs} s ahead refused");
        }
        Err(ReportError::Invalid(errors)) => {
            assert!(!errors.is_empty(), "422 that names no field");
            for e in &errors {
                assert!(
                    FIELDS.contains(&e.field.as_str()),
                    "unexpected field {:?}",
                    e.field
                );
                assert!(!e.message.is_empty());
            }
            assert_eq!(ApiError::validation(errors).status().as_u16(), 422);
        }
        Ok(report) => {
            assert_eq!(report.agent_id, agent);
            assert_eq!(validate_state_name(&report.state), Ok(()));
            assert_eq!(report.received_at, to_micros(received));
            assert!(report.timestamp <= to_micros(received) + 300_000_000);
            let wire = format_micros(report.timestamp);
            assert_eq!(parse_timestamp(&wire).map(to_micros), Ok(report.timestamp));
            if let Some(details) = &report.details {
                let text = details.get();
                assert!(text.len() <= MAX_DETAILS_BYTES);
                let value: serde_json::Value = match serde_json::from_str(text) {
                    Ok(v) => v,
                    Err(e) => panic!("stored details are not JSON: {e}"),
                };
                assert!(value.is_object(), "details {text:?} stored");
                // The read routes serialise the stored text verbatim.
                let view = serde_json::to_string(&report.details).unwrap_or_default();
                assert!(
                    serde_json::from_str::<serde_json::Value>(&view).is_ok(),
                    "{view:?}"
                );
            }
        }
    }
});
