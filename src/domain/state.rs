//! Agent states and the state reports agents send (docs/api.md §1.2).

use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::value::RawValue;

use super::agent::AgentId;
use super::time::{parse_timestamp, to_micros, Micros};
use super::{FieldError, Validator};

/// Largest serialised `details` object accepted.
pub const MAX_DETAILS_BYTES: usize = 64 * 1024;
/// Longest state name.
pub const MAX_STATE_LEN: usize = 64;
/// The state every agent has from the moment it registers.
pub const UNKNOWN: &str = "UNKNOWN";

/// Validate a state name: 1 to 64 characters of `[A-Za-z0-9_-]`.
pub fn validate_state_name(s: &str) -> Result<(), String> {
    if s.is_empty() || s.len() > MAX_STATE_LEN {
        return Err(format!("must be 1 to {MAX_STATE_LEN} characters"));
    }
    if !s
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        return Err("may contain only letters, digits, '_' and '-'".into());
    }
    Ok(())
}

/// A validated state report, ready to store.
#[derive(Debug, Clone)]
pub struct StateReport {
    /// Whose state this is.
    pub agent_id: AgentId,
    /// The state name.
    pub state: String,
    /// The agent's details, kept as the exact JSON text it sent (an object),
    /// or `None` for null/absent.
    pub details: Option<Box<RawValue>>,
    /// The agent's own timestamp.
    pub timestamp: Micros,
    /// When this service received the report.
    pub received_at: Micros,
}

/// A stored state, current or historical.
#[derive(Debug, Clone)]
pub struct StateRecord {
    /// The state name.
    pub state: String,
    /// The details JSON text, if any.
    pub details: Option<Box<RawValue>>,
    /// The agent's timestamp.
    pub timestamp: Micros,
    /// The server's receive time.
    pub received_at: Micros,
}

/// The state report body as agents send it. Every field is optional here so
/// that validation can name each missing one; the schema says what is
/// required on the wire.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(example = json!({"agentId": "agent-7", "timestamp": "2026-04-21T10:00:00.123456+00:00",
                          "state": "active", "details": {"task": "summarise"}}))]
pub struct StateReportBody {
    /// Must equal the path's `agentId`.
    #[schema(required = true, value_type = String)]
    agent_id: Option<String>,
    /// The agent's own time of the report: ISO 8601 / RFC 3339; UTC when it
    /// has no offset.
    #[schema(required = true, value_type = String, example = "2026-04-21T10:00:00.123456+00:00")]
    timestamp: Option<String>,
    /// 1-64 characters of `[A-Za-z0-9_-]`. `idle`, `active`, `error`,
    /// `finished` mean something to the workflow engine; others are stored
    /// and shown only.
    #[schema(required = true, value_type = String, pattern = "^[A-Za-z0-9_-]{1,64}$")]
    state: Option<String>,
    /// A JSON object (at most 64 KiB serialised) or null.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    details: Option<Box<RawValue>>,
}

/// Why a state report body was refused.
#[derive(Debug, PartialEq)]
pub enum ReportError {
    /// The body names another agent than the path (contract: 400).
    AgentMismatch {
        /// The agent id in the path.
        path: String,
        /// The agent id in the body.
        body: String,
    },
    /// Missing or malformed fields (422).
    Invalid(Vec<FieldError>),
    /// The timestamp is further ahead of the server's clock than the skew
    /// allowed (422 `timestamp_in_future`): one skewed clock must not pin
    /// the agent's current state.
    InFuture {
        /// How far ahead it is, in whole seconds.
        ahead_secs: i64,
        /// The most allowed, in seconds.
        max_skew_secs: i64,
    },
}

impl StateReportBody {
    /// Validate against the path's agent id, stamping the receive time. A
    /// timestamp more than `max_skew` ahead of `received_at` is refused.
    pub fn validate(
        self,
        path_agent: &AgentId,
        received_at: DateTime<Utc>,
        max_skew: std::time::Duration,
    ) -> Result<StateReport, ReportError> {
        let mut v = Validator::default();
        if let Some(body_id) = &self.agent_id {
            if body_id != path_agent.as_str() {
                return Err(ReportError::AgentMismatch {
                    path: path_agent.to_string(),
                    body: body_id.clone(),
                });
            }
        } else {
            v.push("agentId", "field required");
        }
        let timestamp = v.required("timestamp", self.timestamp).and_then(|t| {
            v.check(parse_timestamp(&t).map_err(|m| FieldError::new("timestamp", m)))
        });
        let state = v.required("state", self.state).and_then(|s| {
            v.check(
                validate_state_name(&s)
                    .map(|()| s)
                    .map_err(|m| FieldError::new("state", m)),
            )
        });
        if let Some(d) = &self.details {
            let text = d.get();
            if !text.trim_start().starts_with('{') {
                v.push("details", "must be a JSON object or null");
            } else if text.len() > MAX_DETAILS_BYTES {
                v.push(
                    "details",
                    format!("must be at most {MAX_DETAILS_BYTES} bytes serialised"),
                );
            } else if let Err(e) = serde_json::from_str::<serde_json::Value>(text) {
                // RawValue does not check \u escapes: a lone surrogate stored
                // verbatim would make every later read of it unparseable.
                v.push("details", format!("is not strict JSON: {e}"));
            }
        }
        v.finish().map_err(ReportError::Invalid)?;
        let skew = chrono::Duration::from_std(max_skew).unwrap_or(chrono::Duration::MAX);
        if let Some(ts) = timestamp {
            if ts.signed_duration_since(received_at) > skew {
                return Err(ReportError::InFuture {
                    ahead_secs: ts.signed_duration_since(received_at).num_seconds(),
                    max_skew_secs: skew.num_seconds(),
                });
            }
        }
        match (timestamp, state) {
            (Some(ts), Some(state)) => Ok(StateReport {
                agent_id: path_agent.clone(),
                state,
                details: self.details,
                timestamp: to_micros(ts),
                received_at: to_micros(received_at),
            }),
            _ => Err(ReportError::Invalid(vec![])),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<StateReport, ReportError> {
        let body: StateReportBody = serde_json::from_str(json).unwrap();
        body.validate(
            &AgentId::parse("a1").unwrap(),
            Utc::now(),
            std::time::Duration::from_secs(300),
        )
    }

    #[test]
    fn accepts_a_report() {
        let r = parse(r#"{"agentId":"a1","timestamp":"2026-04-21T10:00:00.123456+00:00","state":"active","details":{"k":[1,2]}}"#).unwrap();
        assert_eq!(r.state, "active");
        assert_eq!(r.details.unwrap().get(), r#"{"k":[1,2]}"#);
    }

    #[test]
    fn null_or_missing_details() {
        for body in [
            r#"{"agentId":"a1","timestamp":"2026-04-21T10:00:00Z","state":"idle","details":null}"#,
            r#"{"agentId":"a1","timestamp":"2026-04-21T10:00:00Z","state":"idle"}"#,
        ] {
            assert!(parse(body).unwrap().details.is_none());
        }
    }

    #[test]
    fn a_timestamp_too_far_ahead_is_refused() {
        let at = |t: &str| {
            let body: StateReportBody = serde_json::from_str(&format!(
                r#"{{"agentId":"a1","timestamp":"{t}","state":"idle"}}"#
            ))
            .unwrap();
            let now = DateTime::parse_from_rfc3339("2026-12-05T10:00:00Z")
                .unwrap()
                .with_timezone(&Utc);
            body.validate(
                &AgentId::parse("a1").unwrap(),
                now,
                std::time::Duration::from_secs(300),
            )
        };
        assert!(
            at("2026-12-05T10:05:00Z").is_ok(),
            "exactly the skew is allowed"
        );
        assert!(at("2026-12-05T09:00:00Z").is_ok(), "the past is fine");
        for (t, ahead) in [
            ("2026-12-05T10:05:00.000001Z", 300),
            ("2099-01-01T00:00:00Z", 2_274_444_000),
            ("9999-12-31T23:59:59.999999Z", 251_605_835_999),
        ] {
            assert_eq!(
                at(t).unwrap_err(),
                ReportError::InFuture {
                    ahead_secs: ahead,
                    max_skew_secs: 300
                },
                "{t}"
            );
        }
    }

    #[test]
    fn mismatch_is_its_own_error() {
        let e = parse(r#"{"agentId":"a2","timestamp":"x","state":"idle"}"#).unwrap_err();
        assert!(matches!(e, ReportError::AgentMismatch { .. }));
    }

    #[test]
    fn names_bad_fields() {
        let e = parse(r#"{"agentId":"a1","timestamp":"soon","state":"not ok","details":[1]}"#)
            .unwrap_err();
        let ReportError::Invalid(errs) = e else {
            panic!()
        };
        let fields: Vec<_> = errs.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["timestamp", "state", "details"]);
    }

    #[test]
    fn state_names() {
        assert!(validate_state_name("in_progress-2").is_ok());
        for bad in ["", "a b", "é", &"x".repeat(65)] {
            assert!(validate_state_name(bad).is_err());
        }
    }

    #[test]
    fn details_with_a_lone_surrogate() {
        let e = parse(r#"{"agentId":"a1","timestamp":"2026-04-21T10:00:00Z","state":"idle","details":{"x":"\ud800"}}"#)
            .unwrap_err();
        assert!(
            matches!(e, ReportError::Invalid(ref errs) if errs[0].field == "details"),
            "{e:?}"
        );
        assert!(parse(r#"{"agentId":"a1","timestamp":"2026-04-21T10:00:00Z","state":"idle","details":{"x":"\ud83d\ude00"}}"#).is_ok());
    }

    #[test]
    fn details_size_cap() {
        let big = format!(
            r#"{{"agentId":"a1","timestamp":"2026-04-21T10:00:00Z","state":"idle","details":{{"x":"{}"}}}}"#,
            "y".repeat(MAX_DETAILS_BYTES)
        );
        assert!(parse(&big).is_err());
    }
}
