//! What each change-feed event does to the read model: one rule for this
//! process's own commits and for other replicas' commits read from the
//! feed, so both reach the same model the same way.

use serde::Deserialize;
use serde_json::value::RawValue;

use super::Details;
use crate::domain::audit::AuditKind;
use crate::domain::event::EventKind;
use crate::domain::state::{StateRecord, UNKNOWN};
use crate::domain::time::{parse_timestamp, to_micros, Micros};

/// One change to an agent's entry.
#[derive(Debug)]
pub enum Change<'a> {
    /// Registered (or registered again) at `at` with `details`.
    Registered {
        /// The registration's details.
        details: Details<'a>,
        /// When.
        at: Micros,
    },
    /// Deregistered at `at`.
    Deregistered {
        /// When.
        at: Micros,
    },
    /// A new current state; `sighting`: it is also a sighting of the
    /// agent (a report), which an operator's reset is not.
    State {
        /// The state.
        record: StateRecord,
        /// Whether `last_seen` moves to `record.received_at`.
        sighting: bool,
    },
    /// Heard from at `at`.
    Seen {
        /// When.
        at: Micros,
    },
    /// Its own lease set (or cleared).
    Lease {
        /// The new TTL, seconds.
        ttl_secs: Option<i64>,
    },
    /// Nothing but the feed index moves on.
    Other,
}

#[derive(Deserialize)]
struct StateData {
    state: String,
    timestamp: String,
    details: Option<Box<RawValue>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct LeaseDetails {
    ttl_seconds: Option<i64>,
}

#[derive(Deserialize)]
struct LeaseData {
    details: LeaseDetails,
}

impl Change<'static> {
    /// The change an event of `kind` at `at` with `data` (its JSON) makes.
    /// Registrations are not read from here: their event does not carry
    /// every detail (the caller supplies them); nor are events whose data
    /// does not parse (never written by this service), which only move the
    /// feed index.
    pub fn of_event(kind: EventKind, at: Micros, data: &str) -> Self {
        match kind {
            EventKind::AgentState => match serde_json::from_str::<StateData>(data) {
                Ok(d) => match parse_timestamp(&d.timestamp) {
                    Ok(ts) => {
                        let timestamp = to_micros(ts);
                        // An operator's reset announces `UNKNOWN` stamped
                        // with the server's own time, and is no sighting;
                        // a report is stamped by the agent's clock.
                        let reset = d.state == UNKNOWN && timestamp == at;
                        Self::State {
                            record: StateRecord {
                                state: d.state,
                                details: d.details,
                                timestamp,
                                received_at: at,
                            },
                            sighting: !reset,
                        }
                    }
                    Err(_) => Self::Other,
                },
                Err(_) => Self::Other,
            },
            EventKind::AgentDeregistered => Self::Deregistered { at },
            EventKind::AgentFresh => Self::Seen { at },
            EventKind::Audit(AuditKind::AgentLeaseSet) => {
                match serde_json::from_str::<LeaseData>(data) {
                    Ok(d) => Self::Lease {
                        ttl_secs: d.details.ttl_seconds,
                    },
                    Err(_) => Self::Other,
                }
            }
            _ => Self::Other,
        }
    }
}
