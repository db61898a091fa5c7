//! The change feed's events: what an operator may watch, numbered by the
//! store in commit order. Built here (pure), stored and numbered by `store`,
//! streamed by `http::events`.

use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::{json, Value};

use super::audit::{AuditEntry, AuditKind};
use super::state::StateReport;
use super::time::{format_micros, Micros};
use super::workflow::{RunStatus, SessionStatus};

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventKind {
    /// An agent registered (or registered again with new details).
    AgentRegistered,
    /// An agent was deregistered.
    AgentDeregistered,
    /// A state report became the agent's current state.
    AgentState,
    /// The agent was not heard from within its TTL (plus grace).
    AgentStale,
    /// A stale agent was heard from again.
    AgentFresh,
    /// A session changed status (including its creation).
    SessionStatus,
    /// A task run changed status (including being queued).
    TaskStatus,
    /// A change was made through the API: an audit entry (admins only).
    Audit(AuditKind),
}

impl EventKind {
    /// Every kind, in documentation order.
    pub const ALL: [EventKind; 19] = [
        Self::AgentRegistered,
        Self::AgentDeregistered,
        Self::AgentState,
        Self::AgentStale,
        Self::AgentFresh,
        Self::SessionStatus,
        Self::TaskStatus,
        Self::Audit(AuditKind::KeyCreated),
        Self::Audit(AuditKind::KeyRevoked),
        Self::Audit(AuditKind::WorkflowCreated),
        Self::Audit(AuditKind::WorkflowUpdated),
        Self::Audit(AuditKind::WorkflowDeleted),
        Self::Audit(AuditKind::SessionTriggered),
        Self::Audit(AuditKind::SessionCancelled),
        Self::Audit(AuditKind::SessionRetried),
        Self::Audit(AuditKind::AgentRegistered),
        Self::Audit(AuditKind::AgentDeregistered),
        Self::Audit(AuditKind::AgentStateReset),
        Self::Audit(AuditKind::AgentLeaseSet),
    ];

    /// Wire and stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::AgentRegistered => "agent.registered",
            Self::AgentDeregistered => "agent.deregistered",
            Self::AgentState => "agent.state",
            Self::AgentStale => "agent.stale",
            Self::AgentFresh => "agent.fresh",
            Self::SessionStatus => "session.status",
            Self::TaskStatus => "task.status",
            Self::Audit(k) => k.as_str(),
        }
    }

    /// Whether this is an audit entry (which only admin keys see).
    pub fn is_audit(self) -> bool {
        matches!(self, Self::Audit(_))
    }

    /// Parse a wire name.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// Whether this kind changes what a state read of the agent returns
    /// (what a blocking state read waits for).
    pub fn touches_agent_state(self) -> bool {
        matches!(
            self,
            Self::AgentRegistered
                | Self::AgentDeregistered
                | Self::AgentState
                | Self::AgentStale
                | Self::AgentFresh
        )
    }
}

/// An event to be stored; the store gives it its index.
#[derive(Debug, Clone)]
pub struct NewEvent {
    /// What happened.
    pub kind: EventKind,
    /// The agent it concerns, if any.
    pub agent_id: Option<String>,
    /// The session it concerns, if any.
    pub session_id: Option<String>,
    /// When (server clock).
    pub at: Micros,
    /// Kind-specific fields, a JSON object.
    pub data: String,
    /// Set on the `session.status` event of a session's end (never
    /// stored): what the store tells its observer once the transaction
    /// that wrote the event has committed.
    pub ended: Option<SessionEnd>,
}

/// A session reaching a final status: what the metrics of finished
/// sessions count, by workflow and outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionEnd {
    /// The workflow definition's id.
    pub workflow_id: String,
    /// `completed`, `failed` or `cancelled`.
    pub outcome: SessionStatus,
    /// When the session was created.
    pub created_at: Micros,
    /// When it ended.
    pub finished_at: Micros,
}

impl SessionEnd {
    /// How long the session took, in seconds (never negative).
    pub fn duration_secs(&self) -> f64 {
        (self.finished_at - self.created_at).max(0) as f64 / 1e6
    }
}

impl NewEvent {
    fn new(kind: EventKind, agent: &str, session: Option<&str>, at: Micros, data: Value) -> Self {
        Self {
            kind,
            // A pool session, or a run no agent holds yet, concerns no
            // agent.
            agent_id: (!agent.is_empty()).then(|| agent.to_owned()),
            session_id: session.map(str::to_owned),
            at,
            data: data.to_string(),
            ended: None,
        }
    }

    /// `agent.registered`.
    pub fn registered(reg: &super::agent::Registration, at: Micros) -> Self {
        Self::new(
            EventKind::AgentRegistered,
            reg.agent_id.as_str(),
            None,
            at,
            json!({
                "agentName": reg.name,
                "version": reg.version,
                "capabilities": reg.capabilities,
                "contactEndpoint": reg.contact_endpoint,
            }),
        )
    }

    /// `agent.deregistered`.
    pub fn deregistered(agent: &str, at: Micros) -> Self {
        Self::new(EventKind::AgentDeregistered, agent, None, at, json!({}))
    }

    /// `agent.state`: `r` became the agent's current state.
    pub fn state(r: &StateReport) -> Self {
        // Details are a JSON object as the agent sent it (validated on the
        // way in), so they are spliced in as they are.
        let details = r.details.as_ref().map_or("null", |d| d.get());
        let data = format!(
            r#"{{"state":{},"timestamp":"{}","details":{details}}}"#,
            Value::String(r.state.clone()),
            format_micros(r.timestamp),
        );
        Self {
            kind: EventKind::AgentState,
            agent_id: Some(r.agent_id.as_str().to_owned()),
            session_id: None,
            at: r.received_at,
            data,
            ended: None,
        }
    }

    /// `agent.stale`: last heard from at `last_seen`, TTL `ttl_secs`.
    pub fn stale(agent: &str, last_seen: Micros, ttl_secs: i64, at: Micros) -> Self {
        Self::new(
            EventKind::AgentStale,
            agent,
            None,
            at,
            json!({"lastSeen": format_micros(last_seen), "ttlSeconds": ttl_secs}),
        )
    }

    /// `agent.fresh`: heard from again at `last_seen`.
    pub fn fresh(agent: &str, last_seen: Micros) -> Self {
        Self::new(
            EventKind::AgentFresh,
            agent,
            None,
            last_seen,
            json!({"lastSeen": format_micros(last_seen)}),
        )
    }

    /// `session.status` of a session that goes on (its creation, or
    /// `running`); a session's end is [`NewEvent::session_ended`].
    pub fn session(
        agent: &str,
        session: &str,
        workflow_id: &str,
        status: SessionStatus,
        error: Option<&str>,
        at: Micros,
    ) -> Self {
        Self::new(
            EventKind::SessionStatus,
            agent,
            Some(session),
            at,
            json!({"workflowId": workflow_id, "status": status.as_str(), "error": error}),
        )
    }

    /// `session.status` of a session's end (`end.outcome`, at
    /// `end.finished_at`), carrying `end` for the store's observer.
    pub fn session_ended(agent: &str, session: &str, end: SessionEnd, error: Option<&str>) -> Self {
        let mut e = Self::session(
            agent,
            session,
            &end.workflow_id,
            end.outcome,
            error,
            end.finished_at,
        );
        e.ended = Some(end);
        e
    }

    /// `task.status`.
    pub fn task(run: TaskRef<'_>, status: RunStatus, error: Option<&str>, at: Micros) -> Self {
        Self::new(
            EventKind::TaskStatus,
            run.agent_id,
            Some(run.session_id),
            at,
            json!({
                "runId": run.run_id,
                "taskId": run.task_id,
                "status": status.as_str(),
                "attempt": run.attempt,
                "error": error,
            }),
        )
    }
}

impl NewEvent {
    /// `audit.*`: the stored entry, about its agent and session if it has
    /// them.
    pub fn audit(entry: &AuditEntry) -> Self {
        Self {
            kind: EventKind::Audit(entry.kind),
            agent_id: entry.target.agent_id.clone(),
            session_id: entry.target.session_id.clone(),
            at: entry.at,
            // Serialising plain data cannot fail; "{}" keeps the row valid.
            data: serde_json::to_string(entry).unwrap_or_else(|_| "{}".into()),
            ended: None,
        }
    }
}

/// Which task run a `task.status` event is about.
#[derive(Debug, Clone, Copy)]
pub struct TaskRef<'a> {
    /// Run id.
    pub run_id: &'a str,
    /// The definition's task id.
    pub task_id: &'a str,
    /// Its session.
    pub session_id: &'a str,
    /// The agent running it.
    pub agent_id: &'a str,
    /// Attempt number (0 before the first dispatch).
    pub attempt: i64,
}

/// A stored event, as the feed sends it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Event {
    /// Position in the feed; strictly increasing in commit order.
    pub index: i64,
    /// What happened.
    #[serde(serialize_with = "kind_name")]
    pub kind: EventKind,
    /// When (server clock), RFC 3339.
    #[serde(serialize_with = "micros_text")]
    pub at: Micros,
    /// The agent it concerns.
    pub agent_id: Option<String>,
    /// The session it concerns.
    pub session_id: Option<String>,
    /// Kind-specific fields.
    pub data: Box<RawValue>,
}

fn kind_name<S: serde::Serializer>(k: &EventKind, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(k.as_str())
}

fn micros_text<S: serde::Serializer>(us: &Micros, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format_micros(*us))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::agent::AgentId;

    #[test]
    fn kinds_round_trip_their_names() {
        for k in EventKind::ALL {
            assert_eq!(EventKind::parse(k.as_str()), Some(k));
        }
        assert_eq!(EventKind::parse("agent"), None);
        let audit = EventKind::ALL.iter().filter(|k| k.is_audit()).count();
        assert_eq!(audit, AuditKind::ALL.len());
        for k in AuditKind::ALL {
            assert!(EventKind::ALL.contains(&EventKind::Audit(k)), "{k:?}");
        }
    }

    #[test]
    fn a_session_end_is_a_session_status_event_that_carries_it() {
        let end = SessionEnd {
            workflow_id: "w".into(),
            outcome: SessionStatus::Failed,
            created_at: 1_000_000,
            finished_at: 3_500_000,
        };
        let e = NewEvent::session_ended("a-1", "s-1", end.clone(), Some("boom"));
        let plain = NewEvent::session(
            "a-1",
            "s-1",
            "w",
            SessionStatus::Failed,
            Some("boom"),
            3_500_000,
        );
        assert_eq!((e.kind, &e.data, e.at), (plain.kind, &plain.data, plain.at));
        assert_eq!(e.session_id.as_deref(), Some("s-1"));
        assert_eq!(e.ended, Some(end.clone()));
        assert_eq!(plain.ended, None);
        assert_eq!(end.duration_secs(), 2.5);
        let clock_went_back = SessionEnd {
            finished_at: 0,
            ..end
        };
        assert_eq!(clock_went_back.duration_secs(), 0.0);
    }

    #[test]
    fn state_event_data_is_valid_json_with_details_verbatim() {
        let r = StateReport {
            agent_id: AgentId::parse("a-1").unwrap(),
            state: "ac\"tive".into(),
            details: Some(RawValue::from_string(r#"{"taskId":"t","n":1}"#.into()).unwrap()),
            timestamp: 1_000_000,
            received_at: 2_000_000,
        };
        let e = NewEvent::state(&r);
        let v: Value = serde_json::from_str(&e.data).unwrap();
        assert_eq!(v["state"], "ac\"tive");
        assert_eq!(v["details"]["taskId"], "t");
        assert_eq!(v["timestamp"], "1970-01-01T00:00:01.000000+00:00");
        let r = StateReport { details: None, ..r };
        let v: Value = serde_json::from_str(&NewEvent::state(&r).data).unwrap();
        assert!(v["details"].is_null());
    }
}
