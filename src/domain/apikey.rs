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

use sha2::{Digest, Sha256};

use super::time::Micros;

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
/// Highest per-key cap on open event streams and blocking reads.
pub const MAX_STREAMS: u32 = 100_000;

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
                | P::ReadEvents
                | P::ManageLeases,
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
    /// `PUT /v1/opscore/agent/{agentId}/lease`.
    ManageLeases,
    /// `POST /v1/opscore/agent/{agentId}/state/reset` (admin only).
    ResetState,
    /// `GET /v1/opscore/audit`, and `audit.*` events on the feed (admin
    /// only: entries name keys).
    ReadAudit,
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
            Self::ManageLeases => "set agent leases",
            Self::ResetState => "reset an agent's state",
            Self::ReadAudit => "read the audit trail",
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
    /// Event streams and blocking reads it may hold open at once; `None`:
    /// the server's default.
    pub max_streams: Option<u32>,
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
            P::ManageLeases,
            P::ResetState,
            P::ReadAudit,
        ];
        for p in all {
            assert_eq!(Role::Admin.access(p), All, "{p:?}");
        }
        let granted = |r: Role| all.iter().filter(|p| r.access(**p) != Denied).count();
        assert_eq!(granted(Role::Operator), 9);
        assert_eq!(Role::Operator.access(P::ManageLeases), All);
        assert_eq!(Role::Agent.access(P::ManageLeases), Denied);
        assert_eq!(Role::Operator.access(P::ResetState), Denied);
        assert_eq!(Role::Operator.access(P::ReadAudit), Denied);
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
    fn status_prefers_revocation() {
        let g = generate();
        let mut k = ApiKey {
            key_id: g.key_id,
            name: "n".into(),
            role: Role::Operator,
            agent_ids: vec![],
            secret_sha256: g.secret_sha256,
            rate_limit: None,
            max_streams: None,
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
