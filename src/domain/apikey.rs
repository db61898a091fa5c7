//! API keys: roles, what each role may do, the key format, and validation of
//! a new key's settings. Pure: no HTTP, no SQL, no clock (callers pass `now`).
//!
//! Key format: `opk_<key id>_<secret>`, the id 16 lowercase hex characters
//! (64 random bits, shown in listings, names the stored row) and the secret
//! 64 lowercase hex characters (256 random bits). Only a SHA-256 digest of
//! the secret is stored. A slow password hash (argon2, bcrypt) protects
//! low-entropy secrets that people choose; a 256-bit random secret cannot
//! be brute-forced from its digest, and a fast digest keeps authentication
//! cheap on the hot path (thousands of state reports a second).

use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::agent::AgentId;
use super::time::Micros;
use super::{FieldError, Validator};

/// Prefix of every managed key, so a key is recognisable in a leak scanner
/// and told apart from the bootstrap key without a lookup.
pub const KEY_PREFIX: &str = "opk_";
/// Length of a key id in hex characters.
pub const KEY_ID_LEN: usize = 16;
/// Length of a key secret in hex characters.
pub const SECRET_LEN: usize = 64;
/// Longest key name.
pub const MAX_NAME_LEN: usize = 128;
/// Most agent ids in one agent key's scope.
pub const MAX_SCOPE: usize = 1000;
/// Longest key lifetime: ten years.
pub const MAX_TTL_SECS: u64 = 10 * 365 * 86_400;
/// Highest per-key rate limit, in requests per second.
pub const MAX_RATE_LIMIT: u32 = 1_000_000;

/// What a key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// Everything, including managing keys.
    Admin,
    /// Read everything; trigger and cancel workflows; report state for any
    /// agent.
    Operator,
    /// Report and read state only for the agent ids in its scope.
    Agent,
    /// The registration webhook only (what AgentKit holds).
    Registrar,
}

impl Role {
    /// Every role, in documentation order.
    pub const ALL: [Role; 4] = [Self::Admin, Self::Operator, Self::Agent, Self::Registrar];

    /// Wire and stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Admin => "admin",
            Self::Operator => "operator",
            Self::Agent => "agent",
            Self::Registrar => "registrar",
        }
    }

    /// Parse a wire name (exact, lowercase).
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.as_str() == s)
    }

    /// What this role may do with `p`.
    pub fn access(self, p: Permission) -> Access {
        use Permission as P;
        match (self, p) {
            (Self::Admin, _) => Access::All,
            (
                Self::Operator,
                P::ListAgents
                | P::ReadAgent
                | P::ReportState
                | P::ReadWorkflows
                | P::Trigger
                | P::ReadSessions
                | P::CancelSessions
                | P::ReadEvents,
            ) => Access::All,
            (Self::Agent, P::ReadAgent | P::ReportState | P::ReadEvents) => Access::Scoped,
            (Self::Registrar, P::Register) => Access::All,
            _ => Access::Denied,
        }
    }
}

/// A right a route needs. Each route asks for exactly one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permission {
    /// `POST /v1/opscore/internal/agent/notify` with a bearer key.
    Register,
    /// `GET /v1/opscore/agents`.
    ListAgents,
    /// One agent's registration, current state and history.
    ReadAgent,
    /// `POST /v1/opscore/agent/{agentId}/state`.
    ReportState,
    /// Read workflow definitions.
    ReadWorkflows,
    /// Store and delete workflow definitions.
    ManageWorkflows,
    /// Trigger a workflow on an agent.
    Trigger,
    /// Read sessions.
    ReadSessions,
    /// Cancel sessions.
    CancelSessions,
    /// `GET /v1/opscore/events` (agent keys: their own agents' events).
    ReadEvents,
    /// `/v1/opscore/keys`.
    ManageKeys,
}

impl Permission {
    /// Words for a 403 detail.
    pub fn describe(self) -> &'static str {
        match self {
            Self::Register => "register or deregister agents",
            Self::ListAgents => "list agents",
            Self::ReadAgent => "read this agent",
            Self::ReportState => "report state for this agent",
            Self::ReadWorkflows => "read workflow definitions",
            Self::ManageWorkflows => "store or delete workflow definitions",
            Self::Trigger => "trigger workflows",
            Self::ReadSessions => "read sessions",
            Self::CancelSessions => "cancel sessions",
            Self::ReadEvents => "read the event feed",
            Self::ManageKeys => "manage API keys",
        }
    }
}

/// How far a role's right reaches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Not at all: 403.
    Denied,
    /// Only for the agent ids in the key's scope.
    Scoped,
    /// Everywhere.
    All,
}

/// A managed key as stored (never with its plaintext).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKey {
    /// The public id (the middle part of the plaintext).
    pub key_id: String,
    /// Human label.
    pub name: String,
    /// Its role.
    pub role: Role,
    /// Agent keys: the agents it may act for (empty for other roles).
    pub agent_ids: Vec<String>,
    /// SHA-256 of the secret part.
    pub secret_sha256: [u8; 32],
    /// Requests per second it may make, if limited.
    pub rate_limit: Option<u32>,
    /// Created.
    pub created_at: Micros,
    /// Refused from this instant on, if set.
    pub expires_at: Option<Micros>,
    /// Revoked at, if it is.
    pub revoked_at: Option<Micros>,
    /// Last successful authentication, recorded at most about once a minute.
    pub last_used_at: Option<Micros>,
}

/// Whether a key is usable at a given time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyStatus {
    /// Usable.
    Active,
    /// Revoked.
    Revoked,
    /// Past its expiry.
    Expired,
}

impl KeyStatus {
    /// Wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Revoked => "revoked",
            Self::Expired => "expired",
        }
    }
}

impl ApiKey {
    /// Its status at `now`; revocation wins over expiry.
    pub fn status(&self, now: Micros) -> KeyStatus {
        if self.revoked_at.is_some() {
            KeyStatus::Revoked
        } else if self.expires_at.is_some_and(|e| e <= now) {
            KeyStatus::Expired
        } else {
            KeyStatus::Active
        }
    }

    /// Whether `secret` is this key's secret, compared in constant time.
    pub fn secret_matches(&self, secret: &str) -> bool {
        use subtle::ConstantTimeEq;
        digest(secret).ct_eq(&self.secret_sha256).into()
    }
}

/// SHA-256 of a key or secret.
pub fn digest(s: &str) -> [u8; 32] {
    Sha256::digest(s.as_bytes()).into()
}

/// A presented token split into its parts. Borrowed from the header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyToken<'a> {
    /// The key id.
    pub key_id: &'a str,
    /// The secret.
    pub secret: &'a str,
}

fn is_lower_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Split `opk_<id>_<secret>`; `None` when it is not in that shape.
pub fn parse_token(token: &str) -> Option<KeyToken<'_>> {
    let rest = token.strip_prefix(KEY_PREFIX)?;
    let (key_id, secret) = rest.split_once('_')?;
    (is_lower_hex(key_id, KEY_ID_LEN) && is_lower_hex(secret, SECRET_LEN))
        .then_some(KeyToken { key_id, secret })
}

/// Whether `s` is shaped like a key id (for path parameters).
pub fn is_key_id(s: &str) -> bool {
    is_lower_hex(s, KEY_ID_LEN)
}

/// A freshly generated key: its id, the SHA-256 of its secret, and the
/// plaintext to show once.
#[derive(Debug)]
pub struct GeneratedKey {
    /// The public id.
    pub key_id: String,
    /// What to store.
    pub secret_sha256: [u8; 32],
    /// `opk_<id>_<secret>`; returned to the creator once, never stored.
    pub plaintext: String,
}

/// Generate a key from the OS random generator.
pub fn generate() -> GeneratedKey {
    use rand::RngCore;
    let mut id = [0u8; KEY_ID_LEN / 2];
    let mut secret = [0u8; SECRET_LEN / 2];
    rand::rngs::OsRng.fill_bytes(&mut id);
    rand::rngs::OsRng.fill_bytes(&mut secret);
    let (key_id, secret) = (hex::encode(id), hex::encode(secret));
    GeneratedKey {
        secret_sha256: digest(&secret),
        plaintext: format!("{KEY_PREFIX}{key_id}_{secret}"),
        key_id,
    }
}

/// The body of `POST /v1/opscore/keys`. Every field is loosely typed so
/// that each mistake is reported by name, all at once.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NewKeyBody {
    /// Label.
    pub name: Option<String>,
    /// Role name.
    pub role: Option<String>,
    /// Scope of an agent key.
    pub agent_ids: Option<Vec<String>>,
    /// Absolute expiry (RFC 3339).
    pub expires_at: Option<String>,
    /// Relative expiry, in seconds from now.
    pub ttl_seconds: Option<u64>,
    /// Requests per second.
    pub rate_limit: Option<u32>,
}

/// A validated new key's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewKey {
    /// Label.
    pub name: String,
    /// Role.
    pub role: Role,
    /// Scope (agent keys only; sorted, without duplicates).
    pub agent_ids: Vec<String>,
    /// Expiry.
    pub expires_at: Option<Micros>,
    /// Rate limit.
    pub rate_limit: Option<u32>,
}

impl NewKeyBody {
    /// Validate against the time `now`, naming every offending field.
    pub fn validate(self, now: Micros) -> Result<NewKey, Vec<FieldError>> {
        let mut v = Validator::default();
        let name = v.required("name", self.name).and_then(|n| {
            let n = n.trim().to_owned();
            if n.is_empty() || n.chars().count() > MAX_NAME_LEN {
                v.push("name", format!("must be 1 to {MAX_NAME_LEN} characters"));
                None
            } else if n.chars().any(char::is_control) {
                v.push("name", "must not contain control characters");
                None
            } else {
                Some(n)
            }
        });
        let role = v.required("role", self.role).and_then(|r| {
            let role = Role::parse(&r);
            if role.is_none() {
                v.push(
                    "role",
                    format!("'{r}' is not one of admin, operator, agent, registrar"),
                );
            }
            role
        });
        let mut agent_ids = self.agent_ids.unwrap_or_default();
        match role {
            Some(Role::Agent) if agent_ids.is_empty() => {
                v.push("agentIds", "an agent key needs at least one agent id");
            }
            Some(Role::Agent) if agent_ids.len() > MAX_SCOPE => {
                v.push("agentIds", format!("at most {MAX_SCOPE} agent ids"));
            }
            Some(Role::Agent) => {
                for (i, id) in agent_ids.iter().enumerate() {
                    if let Err(m) = AgentId::parse(id) {
                        v.push(format!("agentIds[{i}]"), m);
                    }
                }
            }
            Some(_) if !agent_ids.is_empty() => {
                v.push("agentIds", "only agent keys have a scope of agent ids");
            }
            _ => {}
        }
        agent_ids.sort();
        agent_ids.dedup();
        let expires_at = match (self.expires_at, self.ttl_seconds) {
            (Some(_), Some(_)) => {
                v.push("ttlSeconds", "give expiresAt or ttlSeconds, not both");
                None
            }
            (Some(t), None) => match super::time::parse_timestamp(&t) {
                Ok(dt) => {
                    let at = super::time::to_micros(dt);
                    if at <= now {
                        v.push("expiresAt", "must be in the future");
                    }
                    Some(at)
                }
                Err(m) => {
                    v.push("expiresAt", m);
                    None
                }
            },
            (None, Some(ttl)) if ttl == 0 || ttl > MAX_TTL_SECS => {
                v.push(
                    "ttlSeconds",
                    format!("must be from 1 to {MAX_TTL_SECS} (ten years)"),
                );
                None
            }
            (None, Some(ttl)) => Some(now.saturating_add(ttl as i64 * 1_000_000)),
            (None, None) => None,
        };
        if let Some(r) = self.rate_limit {
            if r == 0 || r > MAX_RATE_LIMIT {
                v.push(
                    "rateLimit",
                    format!("must be from 1 to {MAX_RATE_LIMIT} requests per second"),
                );
            }
        }
        v.finish()?;
        match (name, role) {
            (Some(name), Some(role)) => Ok(NewKey {
                name,
                role,
                agent_ids,
                expires_at,
                rate_limit: self.rate_limit,
            }),
            // Both were checked above; a missing one already recorded an error.
            _ => Err(vec![FieldError::new("body", "invalid key settings")]),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_parse_and_match_only_their_secret() {
        let g = generate();
        let t = parse_token(&g.plaintext).expect("parses");
        assert_eq!(t.key_id, g.key_id);
        assert_eq!(digest(t.secret), g.secret_sha256);
        assert!(!g.plaintext.contains(&hex::encode(g.secret_sha256)));
        let other = generate();
        assert_ne!(other.key_id, g.key_id);
        for bad in [
            "opk_",
            "opk_0123_abcd",
            "opscore_0123456789abcdef",
            &g.plaintext.to_uppercase(),
            &format!("{}x", g.plaintext),
            &g.plaintext.replacen('_', "-", 2),
        ] {
            assert_eq!(parse_token(bad), None, "{bad}");
        }
    }

    #[test]
    fn roles_grant_what_the_readme_says() {
        use Access::*;
        use Permission as P;
        let all = [
            P::Register,
            P::ListAgents,
            P::ReadAgent,
            P::ReportState,
            P::ReadWorkflows,
            P::ManageWorkflows,
            P::Trigger,
            P::ReadSessions,
            P::CancelSessions,
            P::ReadEvents,
            P::ManageKeys,
        ];
        for p in all {
            assert_eq!(Role::Admin.access(p), All, "{p:?}");
        }
        let granted = |r: Role| all.iter().filter(|p| r.access(**p) != Denied).count();
        assert_eq!(granted(Role::Operator), 8);
        assert_eq!(Role::Operator.access(P::Register), Denied);
        assert_eq!(Role::Operator.access(P::ManageKeys), Denied);
        assert_eq!(Role::Operator.access(P::ManageWorkflows), Denied);
        assert_eq!(granted(Role::Agent), 3);
        assert_eq!(Role::Agent.access(P::ReportState), Scoped);
        assert_eq!(Role::Agent.access(P::ListAgents), Denied);
        assert_eq!(granted(Role::Registrar), 1);
        assert_eq!(Role::Registrar.access(P::Register), All);
    }

    #[test]
    fn new_key_validation_names_each_field() {
        let now = 1_800_000_000_000_000; // 2027
        let ok = NewKeyBody {
            name: Some(" ci ".into()),
            role: Some("agent".into()),
            agent_ids: Some(vec!["b".into(), "a".into(), "b".into()]),
            ttl_seconds: Some(60),
            rate_limit: Some(5),
            ..Default::default()
        }
        .validate(now)
        .unwrap();
        assert_eq!(ok.name, "ci");
        assert_eq!(ok.agent_ids, ["a", "b"]);
        assert_eq!(ok.expires_at, Some(now + 60_000_000));
        let fields = |b: NewKeyBody| -> Vec<String> {
            b.validate(now)
                .unwrap_err()
                .into_iter()
                .map(|e| e.field)
                .collect()
        };
        assert_eq!(fields(NewKeyBody::default()), ["name", "role"]);
        assert_eq!(
            fields(NewKeyBody {
                name: Some("x".into()),
                role: Some("root".into()),
                ..Default::default()
            }),
            ["role"]
        );
        assert_eq!(
            fields(NewKeyBody {
                name: Some("x".into()),
                role: Some("agent".into()),
                ..Default::default()
            }),
            ["agentIds"]
        );
        assert_eq!(
            fields(NewKeyBody {
                name: Some("x".into()),
                role: Some("operator".into()),
                agent_ids: Some(vec!["a".into()]),
                expires_at: Some("2001-01-01T00:00:00Z".into()),
                rate_limit: Some(0),
                ..Default::default()
            }),
            ["agentIds", "expiresAt", "rateLimit"]
        );
        assert_eq!(
            fields(NewKeyBody {
                name: Some("x".into()),
                role: Some("agent".into()),
                agent_ids: Some(vec!["a b".into()]),
                expires_at: Some("2999-01-01T00:00:00Z".into()),
                ttl_seconds: Some(5),
                ..Default::default()
            }),
            ["agentIds[0]", "ttlSeconds"]
        );
    }

    #[test]
    fn status_prefers_revocation() {
        let g = generate();
        let mut k = ApiKey {
            key_id: g.key_id,
            name: "n".into(),
            role: Role::Operator,
            agent_ids: vec![],
            secret_sha256: g.secret_sha256,
            rate_limit: None,
            created_at: 0,
            expires_at: Some(10),
            revoked_at: None,
            last_used_at: None,
        };
        assert_eq!(k.status(9), KeyStatus::Active);
        assert_eq!(k.status(10), KeyStatus::Expired);
        k.revoked_at = Some(5);
        assert_eq!(k.status(9), KeyStatus::Revoked);
    }
}
