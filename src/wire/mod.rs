//! The bodies on the wire: what the handlers (`http`) send, what the
//! OpenAPI document describes, and what the client (`client`) reads, each
//! written once. No axum, no sqlx: serde, utoipa's schemas and chrono only,
//! so the client does not need the server.
//!
//! Two rules let one type serve both ends:
//! - JSON the server stores and sends verbatim (state details, payloads,
//!   results) is [`RawJson`]: raw text, so the server never re-encodes it.
//! - Fields added after the first release are `Option` on the Rust side,
//!   so the client still reads an older server's answers; the document
//!   says the server always sends them.
//!
//! The schema names (`AgentView`, `StateView`, ...) are those the document
//! has always used.

mod agents;
mod sessions;
mod workflows;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::Value;

pub use self::agents::{Agent, CurrentState, Registration, StateEntry};
pub use self::sessions::{Session, TaskRun, Triggered};
pub use self::workflows::{SessionCounts, StoredWorkflow};

/// A page of a listing and the cursor of the next page (null on the last).
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Page<T> {
    /// The results.
    pub items: Vec<T>,
    /// Pass as `cursor` to get the next page.
    pub next_cursor: Option<String>,
}

/// `{"status": "success", "message": …}`: the answer of the webhook and of
/// a state report.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[schema(as = StatusBody)]
pub struct StatusMessage {
    /// `success`.
    #[schema(example = "success")]
    pub status: String,
    /// What happened, in words.
    pub message: String,
}

impl StatusMessage {
    /// A `success` with `message`.
    pub fn success(message: impl Into<String>) -> Self {
        Self {
            status: "success".into(),
            message: message.into(),
        }
    }
}

/// JSON the server sends as it stored it (state details, payloads,
/// results): written verbatim, never re-encoded. A reader gets it through
/// [`Value`], which works anywhere (a bare `RawValue` cannot be read inside
/// `#[serde(flatten)]`); the text is then that value's compact form.
#[derive(Debug, Clone, Serialize)]
#[serde(transparent)]
pub struct RawJson(pub Box<RawValue>);

impl RawJson {
    /// The JSON text.
    pub fn get(&self) -> &str {
        self.0.get()
    }

    /// The JSON as a value.
    pub fn value(&self) -> Value {
        // The text is JSON by construction; `Null` would only hide a bug.
        serde_json::from_str(self.0.get()).unwrap_or(Value::Null)
    }
}

impl<'de> Deserialize<'de> for RawJson {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = Value::deserialize(d)?;
        serde_json::value::to_raw_value(&v)
            .map(RawJson)
            .map_err(serde::de::Error::custom)
    }
}

/// Times on the wire: RFC 3339 in UTC with microseconds, written by
/// [`format_micros`](crate::domain::time::format_micros), read as any RFC
/// 3339 time.
pub mod time {
    use chrono::{DateTime, Utc};
    use serde::{Deserialize, Deserializer, Serializer};

    use crate::domain::time::{format_micros, to_micros};

    /// For `#[serde(with = "time")]`.
    pub fn serialize<S: Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format_micros(to_micros(*t)))
    }

    /// For `#[serde(with = "time")]`.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
        DateTime::<Utc>::deserialize(d)
    }

    /// An optional time (null when absent).
    pub mod option {
        use chrono::{DateTime, Utc};
        use serde::{Deserialize, Deserializer, Serializer};

        /// For `#[serde(default, with = "time::option")]`.
        pub fn serialize<S: Serializer>(
            t: &Option<DateTime<Utc>>,
            s: S,
        ) -> Result<S::Ok, S::Error> {
            match t {
                Some(t) => super::serialize(t, s),
                None => s.serialize_none(),
            }
        }

        /// For `#[serde(default, with = "time::option")]`.
        pub fn deserialize<'de, D: Deserializer<'de>>(
            d: D,
        ) -> Result<Option<DateTime<Utc>>, D::Error> {
            Option::<DateTime<Utc>>::deserialize(d)
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn at(s: &str) -> chrono::DateTime<chrono::Utc> {
        s.parse().unwrap()
    }

    #[test]
    fn stored_json_and_times_are_sent_as_the_server_always_sent_them() {
        let details = RawValue::from_string(r#"{"z":1.0e3,"a":"\u00e9"}"#.into()).unwrap();
        let current = CurrentState {
            agent_id: "a1".into(),
            state: StateEntry {
                state: "idle".into(),
                details: Some(RawJson(details)),
                timestamp: at("2026-01-02T03:04:05.1234567Z"),
                received_at: at("2026-01-02T03:04:06Z"),
            },
            last_seen: Some(at("2026-01-02T03:04:06Z")),
            stale: Some(false),
        };
        let sent = serde_json::to_string(&current).unwrap();
        assert_eq!(
            sent,
            r#"{"agentId":"a1","state":"idle","details":{"z":1.0e3,"a":"\u00e9"},"timestamp":"2026-01-02T03:04:05.123456+00:00","receivedAt":"2026-01-02T03:04:06.000000+00:00","lastSeen":"2026-01-02T03:04:06.000000+00:00","stale":false}"#
        );
        // A reader gets the same state back, the details as their value
        // (through the flattened entry, where a bare RawValue cannot go).
        let read: CurrentState = serde_json::from_str(&sent).unwrap();
        let details = read.state.details.as_ref().map(RawJson::value);
        assert_eq!(details, Some(json!({"z": 1000.0, "a": "é"})));
        assert_eq!(read.state.timestamp, at("2026-01-02T03:04:05.123456Z"));
        assert_eq!(read.last_seen, current.last_seen);
        assert_eq!(read.stale, Some(false));
    }

    #[test]
    fn answers_of_older_servers_still_read() {
        // Before leases: no `stale`, `ttlSeconds` or `lastSeen` in a state.
        let read: CurrentState = serde_json::from_value(json!({
            "agentId": "a1", "state": "UNKNOWN", "details": null,
            "timestamp": "2026-01-02T03:04:05+00:00", "receivedAt": "2026-01-02T03:04:05Z",
            "somethingNewer": 1,
        }))
        .unwrap();
        assert_eq!((read.last_seen, read.stale), (None, None));
        assert!(read.state.details.is_none());
        let page: Page<StateEntry> = serde_json::from_value(json!({
            "items": [{"state": "idle", "timestamp": "2026-01-02T03:04:05Z",
                       "receivedAt": "2026-01-02T03:04:05Z"}],
            "nextCursor": null,
        }))
        .unwrap();
        assert_eq!(page.items.len(), 1);
    }
}
