//! Table tests of the run rules, one module per concern, and a property
//! test that plays random interleavings of deliveries, agent reports and
//! passing time against them.

mod delivery;
mod model;
mod reports;

use serde_json::value::RawValue;

use super::*;

const SENT: Micros = 10_000_000;

fn run(status: RunStatus, attempts: i64, dispatched_at: Option<Micros>) -> RunView {
    RunView {
        status,
        attempts,
        dispatched_at,
        last_report_at: None,
        timeout_secs: 4,
    }
}

/// `r` after the agent's report stamped `at` moved it.
fn moved(r: RunView, at: Micros) -> RunView {
    RunView {
        last_report_at: Some(at),
        ..r
    }
}

fn at(state: &str, timestamp: Micros, received_at: Micros) -> ReportView<'_> {
    ReportView {
        state,
        timestamp,
        received_at,
    }
}

fn raw(s: &str) -> Box<RawValue> {
    RawValue::from_string(s.to_owned()).unwrap()
}
