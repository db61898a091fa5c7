//! The audit trail: who changed what. Every change made through the API
//! (keys, definitions, triggers, cancels, state resets, leases,
//! registrations and deregistrations) is recorded as an [`AuditEntry`] by
//! the transaction that makes it, published on the change feed as an
//! `audit.*` event and logged (target `audit`). Pure: no HTTP, no SQL, no
//! clock (callers pass `at`).
//!
//! An entry never holds a secret: keys appear by id and name, the webhook
//! by the position of the secret that verified it, never its signature.

use serde::Serialize;
use serde_json::{json, Value};

use super::agent::Registration;
use super::apikey::{ApiKey, Role};
use super::time::{format_micros, Micros};
use super::workflow::WorkflowDefinition;

/// How a caller proved who it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ActorType {
    /// A managed API key.
    Key,
    /// The bootstrap admin key (`OPSCORE_API_KEY`).
    Bootstrap,
    /// AgentKit, by a webhook signature.
    Webhook,
    /// An unauthenticated webhook call (`OPSCORE_ALLOW_UNSIGNED_NOTIFY`).
    Unsigned,
    /// The service itself (definitions loaded from files at startup).
    System,
}

impl ActorType {
    /// Every type, in documentation order.
    pub const ALL: [ActorType; 5] = [
        Self::Key,
        Self::Bootstrap,
        Self::Webhook,
        Self::Unsigned,
        Self::System,
    ];

    /// Wire and stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Key => "key",
            Self::Bootstrap => "bootstrap",
            Self::Webhook => "webhook",
            Self::Unsigned => "unsigned",
            Self::System => "system",
        }
    }

    /// Parse a wire name.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.as_str() == s)
    }
}

/// Who made a change. Produced where a request is authenticated
/// (`http::keyring` for keys, `http::webhook` for signatures).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Actor {
    /// How it authenticated.
    #[serde(rename = "type")]
    pub kind: ActorType,
    /// The managed key's id (`key` actors only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_id: Option<String>,
    /// The key's name, `bootstrap key`, `webhook secret N`,
    /// `unsigned webhook`, or what the service did (`workflow file x.json`).
    pub name: String,
    /// The key's role (`key` and `bootstrap` actors).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub role: Option<&'static str>,
}

impl Actor {
    /// A managed key.
    pub fn key(key: &ApiKey) -> Self {
        Self {
            kind: ActorType::Key,
            key_id: Some(key.key_id.clone()),
            name: key.name.clone(),
            role: Some(key.role.as_str()),
        }
    }

    /// The bootstrap admin key.
    pub fn bootstrap() -> Self {
        Self {
            kind: ActorType::Bootstrap,
            key_id: None,
            name: "bootstrap key".into(),
            role: Some(Role::Admin.as_str()),
        }
    }

    /// AgentKit, signing with the `n`th configured webhook secret (from 1:
    /// `OPSCORE_WEBHOOK_SECRET` first, then `OPSCORE_WEBHOOK_SECRETS` in
    /// order).
    pub fn webhook_secret(n: usize) -> Self {
        Self {
            kind: ActorType::Webhook,
            key_id: None,
            name: format!("webhook secret {n}"),
            role: None,
        }
    }

    /// A webhook call with no credentials, let in by
    /// `OPSCORE_ALLOW_UNSIGNED_NOTIFY`.
    pub fn unsigned() -> Self {
        Self {
            kind: ActorType::Unsigned,
            key_id: None,
            name: "unsigned webhook".into(),
            role: None,
        }
    }

    /// The service itself, doing `what`.
    pub fn system(what: impl Into<String>) -> Self {
        Self {
            kind: ActorType::System,
            key_id: None,
            name: what.into(),
            role: None,
        }
    }

    /// An actor read back from its stored columns; `None` for a type or
    /// role this code does not know.
    pub fn from_stored(
        kind: &str,
        key_id: Option<String>,
        name: String,
        role: Option<&str>,
    ) -> Option<Self> {
        let role = match role {
            None => None,
            Some(r) => Some(Role::parse(r)?.as_str()),
        };
        Some(Self {
            kind: ActorType::parse(kind)?,
            key_id,
            name,
            role,
        })
    }
}

/// What kind of change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AuditKind {
    /// An API key was created.
    KeyCreated,
    /// An API key was revoked.
    KeyRevoked,
    /// A workflow definition was stored under a new id.
    WorkflowCreated,
    /// A changed workflow definition was stored as the next revision.
    WorkflowUpdated,
    /// A workflow definition was deleted.
    WorkflowDeleted,
    /// A workflow was triggered: a session was created.
    SessionTriggered,
    /// A session was cancelled.
    SessionCancelled,
    /// A failed or cancelled session was run again.
    SessionRetried,
    /// An agent registered, or registered again with new details.
    AgentRegistered,
    /// An agent was deregistered.
    AgentDeregistered,
    /// An agent's current state was reset to `UNKNOWN`.
    AgentStateReset,
    /// An agent's own lease was set or cleared.
    AgentLeaseSet,
}

impl AuditKind {
    /// Every kind, in documentation order.
    pub const ALL: [AuditKind; 12] = [
        Self::KeyCreated,
        Self::KeyRevoked,
        Self::WorkflowCreated,
        Self::WorkflowUpdated,
        Self::WorkflowDeleted,
        Self::SessionTriggered,
        Self::SessionCancelled,
        Self::SessionRetried,
        Self::AgentRegistered,
        Self::AgentDeregistered,
        Self::AgentStateReset,
        Self::AgentLeaseSet,
    ];

    /// Wire and stored name (also the feed event's kind).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::KeyCreated => "audit.key.created",
            Self::KeyRevoked => "audit.key.revoked",
            Self::WorkflowCreated => "audit.workflow.created",
            Self::WorkflowUpdated => "audit.workflow.updated",
            Self::WorkflowDeleted => "audit.workflow.deleted",
            Self::SessionTriggered => "audit.session.triggered",
            Self::SessionCancelled => "audit.session.cancelled",
            Self::SessionRetried => "audit.session.retried",
            Self::AgentRegistered => "audit.agent.registered",
            Self::AgentDeregistered => "audit.agent.deregistered",
            Self::AgentStateReset => "audit.agent.state_reset",
            Self::AgentLeaseSet => "audit.agent.lease_set",
        }
    }

    /// Parse a wire name.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// The kinds a `kind` filter names: a whole kind (`audit.key.created`)
    /// or a dotted prefix of some (`key`, `audit.key`, `audit`), with or
    /// without the leading `audit.`. `None` when it names none.
    pub fn matching(filter: &str) -> Option<Vec<Self>> {
        let filter = filter.trim();
        if filter.is_empty() {
            return None;
        }
        let full = if filter == "audit" || filter.starts_with("audit.") {
            filter.to_owned()
        } else {
            format!("audit.{filter}")
        };
        let prefix = format!("{full}.");
        let kinds: Vec<_> = Self::ALL
            .into_iter()
            .filter(|k| k.as_str() == full || k.as_str().starts_with(&prefix))
            .collect();
        (!kinds.is_empty()).then_some(kinds)
    }
}

/// What a change was made to. Any of these is what the audit listing's
/// `target` filter matches.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AuditTarget {
    /// The agent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent_id: Option<String>,
    /// The session.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
    /// The workflow definition.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub workflow_id: Option<String>,
    /// The API key (the one changed, not the one acting).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_id: Option<String>,
}

/// An audit entry to be stored; the store gives it its id.
#[derive(Debug, Clone, PartialEq)]
pub struct NewAudit {
    /// What kind of change.
    pub kind: AuditKind,
    /// Who made it.
    pub actor: Actor,
    /// What it was made to.
    pub target: AuditTarget,
    /// Kind-specific facts, a JSON object (never a secret).
    pub details: Value,
    /// When (server clock).
    pub at: Micros,
}

impl NewAudit {
    fn new(
        kind: AuditKind,
        actor: &Actor,
        target: AuditTarget,
        details: Value,
        at: Micros,
    ) -> Self {
        Self {
            kind,
            actor: actor.clone(),
            target,
            details,
            at,
        }
    }

    fn agent(agent: &str) -> AuditTarget {
        AuditTarget {
            agent_id: Some(agent.to_owned()),
            ..AuditTarget::default()
        }
    }

    /// `audit.key.created`: its name, role, scope and expiry (never its
    /// secret or digest).
    pub fn key_created(by: &Actor, key: &ApiKey, at: Micros) -> Self {
        Self::new(
            AuditKind::KeyCreated,
            by,
            AuditTarget {
                key_id: Some(key.key_id.clone()),
                ..AuditTarget::default()
            },
            json!({
                "name": key.name,
                "role": key.role.as_str(),
                "agentIds": key.agent_ids,
                "expiresAt": key.expires_at.map(format_micros),
            }),
            at,
        )
    }

    /// `audit.key.revoked`.
    pub fn key_revoked(by: &Actor, key: &ApiKey, at: Micros) -> Self {
        Self::new(
            AuditKind::KeyRevoked,
            by,
            AuditTarget {
                key_id: Some(key.key_id.clone()),
                ..AuditTarget::default()
            },
            json!({"name": key.name, "role": key.role.as_str()}),
            at,
        )
    }

    fn workflow(kind: AuditKind, by: &Actor, id: &str, details: Value, at: Micros) -> Self {
        Self::new(
            kind,
            by,
            AuditTarget {
                workflow_id: Some(id.to_owned()),
                ..AuditTarget::default()
            },
            details,
            at,
        )
    }

    fn definition_facts(def: &WorkflowDefinition, revision: i64) -> Value {
        json!({"name": def.name, "version": def.version, "tasks": def.tasks.len(),
               "revision": revision})
    }

    /// `audit.workflow.created`: the first revision stored under an id
    /// not stored (or deleted) before.
    pub fn workflow_created(
        by: &Actor,
        def: &WorkflowDefinition,
        revision: i64,
        at: Micros,
    ) -> Self {
        Self::workflow(
            AuditKind::WorkflowCreated,
            by,
            &def.id,
            Self::definition_facts(def, revision),
            at,
        )
    }

    /// `audit.workflow.updated`: a changed definition stored as the next
    /// revision.
    pub fn workflow_updated(
        by: &Actor,
        def: &WorkflowDefinition,
        revision: i64,
        at: Micros,
    ) -> Self {
        Self::workflow(
            AuditKind::WorkflowUpdated,
            by,
            &def.id,
            Self::definition_facts(def, revision),
            at,
        )
    }

    /// `audit.workflow.deleted`.
    pub fn workflow_deleted(by: &Actor, id: &str, at: Micros) -> Self {
        Self::workflow(AuditKind::WorkflowDeleted, by, id, json!({}), at)
    }

    fn session(
        kind: AuditKind,
        by: &Actor,
        agent: &str,
        session: &str,
        workflow: &str,
        details: Value,
        at: Micros,
    ) -> Self {
        Self::new(
            kind,
            by,
            AuditTarget {
                agent_id: Some(agent.to_owned()),
                session_id: Some(session.to_owned()),
                workflow_id: Some(workflow.to_owned()),
                key_id: None,
            },
            details,
            at,
        )
    }

    /// `audit.session.triggered`; `inline` when the definition came with
    /// the trigger.
    pub fn session_triggered(
        by: &Actor,
        agent: &str,
        session: &str,
        workflow: &str,
        inline: bool,
        at: Micros,
    ) -> Self {
        Self::session(
            AuditKind::SessionTriggered,
            by,
            agent,
            session,
            workflow,
            json!({"inlineDefinition": inline}),
            at,
        )
    }

    /// `audit.session.cancelled`.
    pub fn session_cancelled(
        by: &Actor,
        agent: &str,
        session: &str,
        workflow: &str,
        at: Micros,
    ) -> Self {
        Self::session(
            AuditKind::SessionCancelled,
            by,
            agent,
            session,
            workflow,
            json!({}),
            at,
        )
    }

    /// `audit.session.retried`: `tasks` runs queued again.
    pub fn session_retried(
        by: &Actor,
        agent: &str,
        session: &str,
        workflow: &str,
        tasks: usize,
        at: Micros,
    ) -> Self {
        Self::session(
            AuditKind::SessionRetried,
            by,
            agent,
            session,
            workflow,
            json!({"tasks": tasks}),
            at,
        )
    }

    /// `audit.agent.registered`; `created` for an agent that was new.
    pub fn agent_registered(by: &Actor, reg: &Registration, created: bool, at: Micros) -> Self {
        Self::new(
            AuditKind::AgentRegistered,
            by,
            Self::agent(reg.agent_id.as_str()),
            json!({
                "created": created,
                "agentName": reg.name,
                "version": reg.version,
                "contactEndpoint": reg.contact_endpoint,
            }),
            at,
        )
    }

    /// `audit.agent.deregistered`.
    pub fn agent_deregistered(by: &Actor, agent: &str, at: Micros) -> Self {
        Self::new(
            AuditKind::AgentDeregistered,
            by,
            Self::agent(agent),
            json!({}),
            at,
        )
    }

    /// `audit.agent.state_reset`.
    pub fn agent_state_reset(by: &Actor, agent: &str, at: Micros) -> Self {
        Self::new(
            AuditKind::AgentStateReset,
            by,
            Self::agent(agent),
            json!({}),
            at,
        )
    }

    /// `audit.agent.lease_set`; `ttl_secs` `None` when cleared.
    pub fn agent_lease_set(by: &Actor, agent: &str, ttl_secs: Option<i64>, at: Micros) -> Self {
        Self::new(
            AuditKind::AgentLeaseSet,
            by,
            Self::agent(agent),
            json!({"ttlSeconds": ttl_secs}),
            at,
        )
    }

    /// The entry as stored under `id`.
    pub fn stored(&self, id: i64) -> AuditEntry {
        AuditEntry {
            id,
            kind: self.kind,
            at: self.at,
            actor: self.actor.clone(),
            target: self.target.clone(),
            details: self.details.clone(),
        }
    }
}

/// A stored audit entry: what `GET /v1/opscore/audit` lists and what an
/// `audit.*` feed event carries as its `data`.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AuditEntry {
    /// Its id: increasing in the order entries were written.
    pub id: i64,
    /// What kind of change, e.g. `audit.key.created`.
    #[serde(serialize_with = "kind_name")]
    #[schema(value_type = String, example = "audit.key.created")]
    pub kind: AuditKind,
    /// When (server clock), RFC 3339.
    #[serde(serialize_with = "micros_text")]
    #[schema(value_type = String)]
    pub at: Micros,
    /// Who made it.
    pub actor: Actor,
    /// What it was made to.
    pub target: AuditTarget,
    /// Kind-specific facts.
    #[schema(value_type = Object)]
    pub details: Value,
}

fn kind_name<S: serde::Serializer>(k: &AuditKind, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(k.as_str())
}

fn micros_text<S: serde::Serializer>(us: &Micros, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format_micros(*us))
}

impl AuditEntry {
    /// Write the entry's log line (target `audit`, message `audit`), with
    /// the same fields as the entry. Called once its transaction has
    /// committed.
    pub fn log(&self) {
        let details = self.details.to_string();
        tracing::info!(
            target: "audit",
            audit_id = self.id,
            kind = self.kind.as_str(),
            actor_type = self.actor.kind.as_str(),
            actor_key_id = self.actor.key_id.as_deref(),
            actor_name = %self.actor.name,
            actor_role = self.actor.role,
            agent_id = self.target.agent_id.as_deref(),
            session_id = self.target.session_id.as_deref(),
            workflow_id = self.target.workflow_id.as_deref(),
            key_id = self.target.key_id.as_deref(),
            details = %details,
            "audit"
        );
    }
}

#[cfg(test)]
mod tests;
