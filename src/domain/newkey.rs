//! Validation of a new API key's settings (`POST /v1/opscore/keys`).
//! Pure: the caller passes `now`.

use serde::Deserialize;

use super::agent::AgentId;
use super::apikey::{Role, MAX_NAME_LEN, MAX_RATE_LIMIT, MAX_SCOPE, MAX_STREAMS, MAX_TTL_SECS};
use super::time::Micros;
use super::{FieldError, Validator};

/// The body of `POST /v1/opscore/keys`. Every field is loosely typed so
/// that each mistake is reported by name, all at once.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
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
    /// Event streams and blocking reads open at once.
    pub max_streams: Option<u32>,
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
    /// Cap on open streams and blocking reads (`None`: the server's).
    pub max_streams: Option<u32>,
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
                    } else if at - now > MAX_TTL_SECS as i64 * 1_000_000 {
                        // One cap for both ways of saying it.
                        v.push("expiresAt", "must be at most ten years ahead");
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
        if let Some(n) = self.max_streams {
            if n == 0 || n > MAX_STREAMS {
                v.push(
                    "maxStreams",
                    format!("must be from 1 to {MAX_STREAMS} streams and blocking reads"),
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
                max_streams: self.max_streams,
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
                max_streams: Some(0),
                ..Default::default()
            }),
            ["agentIds", "expiresAt", "rateLimit", "maxStreams"]
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
        // One cap, however the expiry is given.
        assert_eq!(
            fields(NewKeyBody {
                name: Some("x".into()),
                role: Some("operator".into()),
                expires_at: Some("9999-12-31T00:00:00Z".into()),
                ..Default::default()
            }),
            ["expiresAt"]
        );
    }
}
