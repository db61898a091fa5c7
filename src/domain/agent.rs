//! Agents: identity, registration details and the registration webhook's
//! events.

use serde::Deserialize;
use serde_json::{Map, Value};

use super::{FieldError, Validator};

/// Longest agent id accepted (docs/api.md §1.1).
pub const MAX_AGENT_ID_LEN: usize = 128;
/// Longest agent name or version accepted.
const MAX_TEXT_LEN: usize = 256;
/// Most capabilities one agent may declare.
pub const MAX_CAPABILITIES: usize = 64;
/// Longest capability name.
pub const MAX_CAPABILITY_LEN: usize = 128;
/// Largest registration metadata accepted, serialised. Every listing
/// carries it, so it is kept small (the state report's `details` may be
/// larger: it is read one agent at a time).
pub const MAX_METADATA_BYTES: usize = 16 * 1024;
/// Longest contact URL.
const MAX_URL_LEN: usize = 2048;

/// A validated agent id: 1 to 128 characters of `[A-Za-z0-9._:-]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AgentId(String);

impl AgentId {
    /// Validate `s` as an agent id.
    pub fn parse(s: &str) -> Result<Self, String> {
        if s.is_empty() {
            return Err("must not be empty".into());
        }
        if s.len() > MAX_AGENT_ID_LEN {
            return Err(format!("must be at most {MAX_AGENT_ID_LEN} characters"));
        }
        if !s
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
        {
            return Err("may contain only letters, digits, '.', '_', ':' and '-'".into());
        }
        // An id is one path segment of every URL that carries it; these two
        // would mean "here" and "up one" instead.
        if s == "." || s == ".." {
            return Err("must not be '.' or '..'".into());
        }
        Ok(Self(s.to_owned()))
    }

    /// The id as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for AgentId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// What a REGISTER event carries once validated.
#[derive(Debug, Clone, PartialEq)]
pub struct Registration {
    /// The agent's id.
    pub agent_id: AgentId,
    /// Human name.
    pub name: String,
    /// The agent's own version string.
    pub version: String,
    /// What it can do; workflows match tasks to these.
    pub capabilities: Vec<String>,
    /// Where the framework (or Ops-Core in direct mode) reaches the agent.
    pub contact_endpoint: String,
    /// Free-form metadata, always a JSON object.
    pub metadata: Map<String, Value>,
    /// The agent's own lease TTL in seconds (`metadata.ttlSeconds`), which
    /// overrides the service's default.
    pub ttl_secs: Option<i64>,
}

/// Longest TTL a registration may ask for: a day.
pub const MAX_TTL_SECS: i64 = 86_400;

/// Read `ttlSeconds` from registration metadata: absent (or null) means the
/// service default; anything but a whole number of seconds from 1 to a day
/// is refused rather than ignored, so a typo cannot silently change when an
/// agent counts as stale.
fn metadata_ttl(metadata: &Map<String, Value>) -> Result<Option<i64>, FieldError> {
    lease_ttl(
        metadata.get("ttlSeconds"),
        "agent_details.metadata.ttlSeconds",
    )
}

/// Read an agent's lease TTL: null means none; anything but a whole number
/// of seconds from 1 to [`MAX_TTL_SECS`] is refused, naming `field`.
fn lease_ttl(v: Option<&Value>, field: &str) -> Result<Option<i64>, FieldError> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(v) => match v.as_i64() {
            Some(n) if (1..=MAX_TTL_SECS).contains(&n) => Ok(Some(n)),
            _ => Err(FieldError::new(
                field,
                format!("must be a whole number of seconds from 1 to {MAX_TTL_SECS}"),
            )),
        },
    }
}

/// Read the body of `PUT /v1/opscore/agent/{agentId}/lease`:
/// `{"ttlSeconds": N}` sets the agent's own lease, `{"ttlSeconds": null}`
/// clears it. The field must be present, so an empty body changes nothing
/// by accident.
pub fn lease_body(body: &Map<String, Value>) -> Result<Option<i64>, FieldError> {
    match body.get("ttlSeconds") {
        None => Err(FieldError::new(
            "ttlSeconds",
            "is required: a whole number of seconds, or null to clear the lease",
        )),
        v => lease_ttl(v, "ttlSeconds"),
    }
}

/// A registration webhook event (docs/api.md §1.1).
#[derive(Debug, Clone, PartialEq)]
pub enum NotifyEvent {
    /// An agent appeared or changed its details.
    Register(Registration),
    /// An agent went away.
    Deregister(AgentId),
}

/// The webhook body as the framework sends it. Every field is optional here
/// so that validation can name each missing or malformed one.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[schema(example = json!({"event_type": "REGISTER", "agent_details": {
    "agentId": "agent-7", "agentName": "Summariser", "version": "1.0",
    "capabilities": ["summarise"], "contactEndpoint": "http://agent-7:8080/task", "metadata": {}}}))]
pub struct NotifyBody {
    /// `REGISTER` or `DEREGISTER`, case-insensitive.
    #[schema(required = true, value_type = String, example = "REGISTER")]
    event_type: Option<String>,
    /// The agent. For `DEREGISTER` only `agentId` is needed.
    #[schema(required = true, value_type = AgentDetailsBody)]
    agent_details: Option<AgentDetailsBody>,
}

/// The agent in a registration webhook.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
struct AgentDetailsBody {
    /// At most 128 characters of `[A-Za-z0-9._:-]`.
    #[schema(required = true, value_type = String, pattern = "^[A-Za-z0-9._:-]{1,128}$")]
    agent_id: Option<String>,
    /// Required for `REGISTER`.
    #[schema(value_type = String)]
    agent_name: Option<String>,
    /// Required for `REGISTER`.
    #[schema(value_type = String)]
    version: Option<String>,
    /// Defaults to empty.
    #[schema(value_type = Vec<String>)]
    capabilities: Option<Vec<String>>,
    /// Absolute http(s) URL; required for `REGISTER`.
    #[schema(value_type = String, format = "uri")]
    contact_endpoint: Option<String>,
    /// A JSON object; defaults to empty.
    #[schema(value_type = Object)]
    metadata: Option<Value>,
}

/// Why a webhook body was refused.
#[derive(Debug, PartialEq)]
pub enum NotifyError {
    /// `event_type` is neither REGISTER nor DEREGISTER (contract: 400).
    UnknownEventType(String),
    /// Missing or malformed fields (422).
    Invalid(Vec<FieldError>),
}

impl NotifyBody {
    /// Validate the body into an event.
    pub fn validate(self) -> Result<NotifyEvent, NotifyError> {
        let mut v = Validator::default();
        let Some(event_type) = self.event_type else {
            return Err(NotifyError::Invalid(vec![FieldError::new(
                "event_type",
                "field required (REGISTER or DEREGISTER)",
            )]));
        };
        let register = if event_type.eq_ignore_ascii_case("REGISTER") {
            true
        } else if event_type.eq_ignore_ascii_case("DEREGISTER") {
            false
        } else {
            return Err(NotifyError::UnknownEventType(event_type));
        };
        let Some(d) = v.required("agent_details", self.agent_details) else {
            return Err(NotifyError::Invalid(v.finish().err().unwrap_or_default()));
        };
        let agent_id = v
            .required("agent_details.agentId", d.agent_id)
            .and_then(|id| {
                v.check(
                    AgentId::parse(&id).map_err(|m| FieldError::new("agent_details.agentId", m)),
                )
            });
        if !register {
            return match (agent_id, v.finish()) {
                (Some(id), Ok(())) => Ok(NotifyEvent::Deregister(id)),
                (_, Err(e)) => Err(NotifyError::Invalid(e)),
                (None, Ok(())) => Err(NotifyError::Invalid(vec![])),
            };
        }
        let name = v
            .required("agent_details.agentName", d.agent_name)
            .and_then(|s| v.check(bounded_text("agent_details.agentName", s)));
        let version = v
            .required("agent_details.version", d.version)
            .and_then(|s| v.check(bounded_text("agent_details.version", s)));
        let contact_endpoint = v
            .required("agent_details.contactEndpoint", d.contact_endpoint)
            .and_then(|s| v.check(validate_contact_endpoint(&s)));
        let capabilities = v.check(validate_capabilities(d.capabilities.unwrap_or_default()));
        let metadata = match d.metadata {
            None | Some(Value::Null) => Some(Map::new()),
            Some(Value::Object(m)) if serialised_len(&m) > MAX_METADATA_BYTES => {
                v.push(
                    "agent_details.metadata",
                    format!("must be at most {MAX_METADATA_BYTES} bytes serialised"),
                );
                None
            }
            Some(Value::Object(m)) => Some(m),
            Some(_) => {
                v.push("agent_details.metadata", "must be a JSON object");
                None
            }
        };
        let ttl_secs = metadata
            .as_ref()
            .and_then(|m| v.check(metadata_ttl(m)))
            .flatten();
        if let Err(e) = v.finish() {
            return Err(NotifyError::Invalid(e));
        }
        match (
            agent_id,
            name,
            version,
            contact_endpoint,
            capabilities,
            metadata,
        ) {
            (
                Some(agent_id),
                Some(name),
                Some(version),
                Some(contact_endpoint),
                Some(capabilities),
                Some(metadata),
            ) => Ok(NotifyEvent::Register(Registration {
                agent_id,
                name,
                version,
                capabilities,
                contact_endpoint,
                metadata,
                ttl_secs,
            })),
            _ => Err(NotifyError::Invalid(vec![])),
        }
    }
}

/// The length of `m` as compact JSON (as it is stored and listed).
fn serialised_len(m: &Map<String, Value>) -> usize {
    // A map of JSON values always serialises.
    serde_json::to_vec(m).map_or(usize::MAX, |v| v.len())
}

/// PostgreSQL text cannot hold a NUL character (SQLite can): refuse it in
/// every stored string, so both backends give the same 422 rather than one
/// storing it and the other failing with a 500.
pub fn has_nul(s: &str) -> bool {
    s.contains('\0')
}

/// Control characters (ESC, BEL, CR, LF, C1 codes...) in text an operator
/// will read on a terminal could clear the screen, retitle the window or
/// forge output lines: refused in every registered text, as in key names.
pub fn has_control(s: &str) -> bool {
    s.chars().any(char::is_control)
}

const NO_CONTROL: &str = "must not contain control characters";

fn bounded_text(field: &str, s: String) -> Result<String, FieldError> {
    if has_nul(&s) {
        return Err(FieldError::new(field, "must not contain NUL characters"));
    }
    if has_control(&s) {
        return Err(FieldError::new(field, NO_CONTROL));
    }
    if s.chars().count() > MAX_TEXT_LEN {
        return Err(FieldError::new(
            field,
            format!("must be at most {MAX_TEXT_LEN} characters"),
        ));
    }
    Ok(s)
}

fn validate_capabilities(caps: Vec<String>) -> Result<Vec<String>, FieldError> {
    const FIELD: &str = "agent_details.capabilities";
    if caps.len() > MAX_CAPABILITIES {
        return Err(FieldError::new(
            FIELD,
            format!("at most {MAX_CAPABILITIES} capabilities"),
        ));
    }
    let mut out: Vec<String> = Vec::with_capacity(caps.len());
    for c in caps {
        if c.is_empty() || c.chars().count() > MAX_CAPABILITY_LEN || has_nul(&c) {
            return Err(FieldError::new(
                FIELD,
                format!("each capability must be 1 to {MAX_CAPABILITY_LEN} characters, no NUL"),
            ));
        }
        if has_control(&c) {
            return Err(FieldError::new(FIELD, NO_CONTROL));
        }
        if !out.contains(&c) {
            out.push(c);
        }
    }
    Ok(out)
}

/// A contact endpoint must be an absolute http or https URL with a host.
pub fn validate_contact_endpoint(s: &str) -> Result<String, FieldError> {
    const FIELD: &str = "agent_details.contactEndpoint";
    if s.len() > MAX_URL_LEN {
        return Err(FieldError::new(
            FIELD,
            format!("must be at most {MAX_URL_LEN} characters"),
        ));
    }
    if has_nul(s) {
        return Err(FieldError::new(FIELD, "must not contain NUL characters"));
    }
    // The URL parser drops tabs and newlines silently; the text is stored
    // as sent, so refuse them here.
    if has_control(s) {
        return Err(FieldError::new(FIELD, NO_CONTROL));
    }
    let url = url::Url::parse(s)
        .map_err(|e| FieldError::new(FIELD, format!("not an absolute URL: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(FieldError::new(FIELD, "must use http or https"));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(FieldError::new(FIELD, "must name a host"));
    }
    Ok(s.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(json: &str) -> NotifyBody {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn agent_ids() {
        assert!(AgentId::parse("agent-7.a:b_c").is_ok());
        assert!(AgentId::parse(&"a".repeat(128)).is_ok());
        for bad in ["", "a b", "a/b", "é", &"a".repeat(129)] {
            assert!(AgentId::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn register_with_defaults() {
        let ev = body(r#"{"event_type":"register","agent_details":{"agentId":"a1","agentName":"S","version":"1.0","contactEndpoint":"http://agent-7:8080/task","registrationTime":"x"}}"#)
            .validate()
            .unwrap();
        let NotifyEvent::Register(r) = ev else {
            panic!("not a register")
        };
        assert!(r.capabilities.is_empty());
        assert!(r.metadata.is_empty());
    }

    #[test]
    fn deregister_needs_only_the_id() {
        let ev = body(r#"{"event_type":"DEREGISTER","agent_details":{"agentId":"a1"}}"#).validate();
        assert_eq!(
            ev,
            Ok(NotifyEvent::Deregister(AgentId::parse("a1").unwrap()))
        );
    }

    #[test]
    fn names_every_bad_field() {
        let err = body(r#"{"event_type":"REGISTER","agent_details":{"agentId":"a 1","contactEndpoint":"ftp://x","metadata":[]}}"#)
            .validate()
            .unwrap_err();
        let NotifyError::Invalid(errs) = err else {
            panic!("{err:?}")
        };
        let fields: Vec<_> = errs.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "agent_details.agentId",
                "agent_details.agentName",
                "agent_details.version",
                "agent_details.contactEndpoint",
                "agent_details.metadata"
            ]
        );
    }

    #[test]
    fn metadata_and_capabilities_are_capped() {
        let register = |caps: Value, metadata: Value| {
            body(
                &serde_json::json!({"event_type": "REGISTER", "agent_details": {
                    "agentId": "a1", "agentName": "S", "version": "1.0",
                    "contactEndpoint": "http://agent-7:8080/task",
                    "capabilities": caps, "metadata": metadata}})
                .to_string(),
            )
            .validate()
        };
        let field = |r: Result<NotifyEvent, NotifyError>| match r {
            Err(NotifyError::Invalid(errs)) => errs[0].field.clone(),
            other => panic!("{other:?}"),
        };
        // {"b":"…"} is 8 bytes plus the string.
        let fits = "m".repeat(MAX_METADATA_BYTES - 8);
        assert!(register(serde_json::json!([]), serde_json::json!({ "b": fits })).is_ok());
        let over = "m".repeat(MAX_METADATA_BYTES - 7);
        assert_eq!(
            field(register(
                serde_json::json!([]),
                serde_json::json!({ "b": over })
            )),
            "agent_details.metadata"
        );
        let caps: Vec<String> = (0..MAX_CAPABILITIES).map(|i| format!("c{i}")).collect();
        assert!(register(serde_json::json!(caps), serde_json::json!({})).is_ok());
        let caps: Vec<String> = (0..=MAX_CAPABILITIES).map(|i| format!("c{i}")).collect();
        assert_eq!(
            field(register(serde_json::json!(caps), serde_json::json!({}))),
            "agent_details.capabilities"
        );
        let long = "c".repeat(MAX_CAPABILITY_LEN + 1);
        assert_eq!(
            field(register(serde_json::json!([long]), serde_json::json!({}))),
            "agent_details.capabilities"
        );
    }

    #[test]
    fn unknown_event_type() {
        let err = body(r#"{"event_type":"UPDATE","agent_details":{}}"#)
            .validate()
            .unwrap_err();
        assert_eq!(err, NotifyError::UnknownEventType("UPDATE".into()));
    }

    #[test]
    fn contact_endpoints() {
        assert!(validate_contact_endpoint("https://a.example/x").is_ok());
        for bad in [
            "/relative",
            "mailto:x@y",
            "http://",
            "not a url",
            "http://a/\0",
        ] {
            assert!(validate_contact_endpoint(bad).is_err(), "{bad}");
        }
    }
}
