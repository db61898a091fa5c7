//! One method per route of the API. Each returns a [`Call`]: await it for
//! the typed answer, or take [`Call::json`] for the server's JSON.

use reqwest::StatusCode;
use serde_json::{json, Map, Value};

use super::types::*;
use super::{notify_request, seg, Call, Client};
use crate::wire::{
    Agent, CurrentState, Page, Registration, Session, SessionCounts, StateEntry, StatusMessage,
    StoredWorkflow, Triggered,
};

impl Client {
    fn get(&self, path: &str) -> reqwest::RequestBuilder {
        self.authed(self.http.get(self.url(path)))
    }

    fn post(&self, path: &str) -> reqwest::RequestBuilder {
        self.authed(self.http.post(self.url(path)))
    }

    /// Register (or re-register) an agent through the webhook, with the key.
    pub fn register(&self, agent: &Registration) -> Call<StatusMessage> {
        let details = serde_json::to_value(agent).unwrap_or(Value::Null);
        let rb = notify_request(&self.http, &self.base, "REGISTER", &details, None);
        Call::new(self.authed(rb))
    }

    /// Deregister an agent through the webhook, with the key.
    pub fn deregister(&self, agent_id: &str) -> Call<StatusMessage> {
        let details = json!({ "agentId": agent_id });
        let rb = notify_request(&self.http, &self.base, "DEREGISTER", &details, None);
        Call::new(self.authed(rb))
    }

    /// Report an agent's state, stamped now. `details` must be a JSON
    /// object or absent.
    pub fn report_state(
        &self,
        agent_id: &str,
        state: &str,
        details: Option<&Value>,
    ) -> Call<StatusMessage> {
        let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, false);
        self.report_state_at(agent_id, state, details, &now)
    }

    /// Report an agent's state with the agent's own `timestamp` (RFC 3339),
    /// sent as given: the server validates it.
    pub fn report_state_at(
        &self,
        agent_id: &str,
        state: &str,
        details: Option<&Value>,
        timestamp: &str,
    ) -> Call<StatusMessage> {
        let body = json!({
            "agentId": agent_id,
            "timestamp": timestamp,
            "state": state,
            "details": details,
        });
        Call::new(
            self.post(&format!("/v1/opscore/agent/{}/state", seg(agent_id)))
                .json(&body),
        )
    }

    /// An agent's current state.
    pub fn get_state(&self, agent_id: &str) -> Call<CurrentState> {
        Call::new(self.get(&format!("/v1/opscore/agent/{}/state", seg(agent_id))))
    }

    /// Reset an agent's state to `UNKNOWN` (admin); answers with the state
    /// as it now is.
    pub fn reset_state(&self, agent_id: &str) -> Call<CurrentState> {
        Call::new(self.post(&format!("/v1/opscore/agent/{}/state/reset", seg(agent_id))))
    }

    /// An agent's registration and current state.
    pub fn get_agent(&self, agent_id: &str) -> Call<Agent> {
        Call::new(self.get(&format!("/v1/opscore/agent/{}", seg(agent_id))))
    }

    /// Set (`Some`) or clear (`None`) an agent's own lease, in seconds;
    /// answers with the agent as it now is.
    pub fn set_lease(&self, agent_id: &str, ttl_secs: Option<u64>) -> Call<Agent> {
        Call::new(
            self.authed(
                self.http
                    .put(self.url(&format!("/v1/opscore/agent/{}/lease", seg(agent_id)))),
            )
            .json(&json!({ "ttlSeconds": ttl_secs })),
        )
    }

    /// One page of agents, by id.
    pub fn list_agents(&self, filter: &AgentFilter, page: &PageRequest) -> Call<Page<Agent>> {
        let mut q = page_query(page);
        if let Some(s) = &filter.state {
            q.push(("state", s.clone()));
        }
        if let Some(c) = &filter.capability {
            q.push(("capability", c.clone()));
        }
        if filter.include_deregistered {
            q.push(("includeDeregistered", "true".to_owned()));
        }
        if let Some(s) = filter.stale {
            q.push(("stale", s.to_string()));
        }
        Call::new(self.get("/v1/opscore/agents").query(&q))
    }

    /// One page of an agent's state history, latest `timestamp` first.
    pub fn history(&self, agent_id: &str, page: &PageRequest) -> Call<Page<StateEntry>> {
        Call::new(
            self.get(&format!(
                "/v1/opscore/agent/{}/state/history",
                seg(agent_id)
            ))
            .query(&page_query(page)),
        )
    }

    /// Every stored workflow definition.
    pub fn list_definitions(&self) -> Call<Page<WorkflowDefinition>> {
        Call::new(self.get("/v1/opscore/workflows"))
    }

    /// One workflow definition.
    pub fn get_definition(&self, workflow_id: &str) -> Call<WorkflowDefinition> {
        Call::new(self.get(&format!("/v1/opscore/workflows/{}", seg(workflow_id))))
    }

    /// Store a definition (JSON). Storing the newest revision again is not
    /// an error (`created` is false); a different one under its id is
    /// stored as the next revision.
    pub fn create_definition(&self, definition: &Value) -> Call<Stored> {
        Call::with(
            self.post("/v1/opscore/workflows").json(definition),
            |status, v| {
                let revision = v.get("revision").and_then(Value::as_i64);
                Ok(Stored {
                    created: status == StatusCode::CREATED,
                    definition: serde_json::from_value(v)?,
                    revision,
                })
            },
        )
    }

    /// One page of the revisions stored under a definition id, newest
    /// first.
    pub fn list_revisions(
        &self,
        workflow_id: &str,
        page: &PageRequest,
    ) -> Call<Page<StoredWorkflow>> {
        Call::new(
            self.get(&format!(
                "/v1/opscore/workflows/{}/revisions",
                seg(workflow_id)
            ))
            .query(&page_query(page)),
        )
    }

    /// Delete a stored definition (sessions already started keep theirs).
    pub fn delete_definition(&self, workflow_id: &str) -> Call<Value> {
        Call::new(
            self.authed(
                self.http
                    .delete(self.url(&format!("/v1/opscore/workflows/{}", seg(workflow_id)))),
            ),
        )
    }

    /// Trigger a workflow on an agent. `payload`, when given, is the first
    /// task's payload and must be a JSON object.
    pub fn trigger(
        &self,
        agent_id: &str,
        source: &TriggerSource,
        payload: Option<&Value>,
    ) -> Call<Triggered> {
        let mut body = Map::new();
        match source {
            TriggerSource::Stored(id) => {
                body.insert("workflowDefinitionId".into(), json!(id));
            }
            TriggerSource::Inline(def) => {
                body.insert("workflowDefinition".into(), json!(def));
            }
        }
        if let Some(p) = payload {
            body.insert("initialPayload".into(), p.clone());
        }
        Call::new(
            self.post(&format!("/v1/opscore/agent/{}/workflow", seg(agent_id)))
                .json(&body),
        )
    }

    /// Trigger a workflow on a pool of agents (docs/api.md §3.3):
    /// `definition`, when given, is run instead of the stored
    /// `workflow_id` (its id must be `workflow_id`).
    pub fn trigger_pool(
        &self,
        workflow_id: &str,
        selector: &AgentSelector,
        definition: Option<&WorkflowDefinition>,
        payload: Option<&Value>,
    ) -> Call<Triggered> {
        let mut body = Map::new();
        body.insert("agentSelector".into(), json!(selector));
        if let Some(def) = definition {
            body.insert("workflowDefinition".into(), json!(def));
        }
        if let Some(p) = payload {
            body.insert("initialPayload".into(), p.clone());
        }
        Call::new(
            self.post(&format!(
                "/v1/opscore/workflows/{}/trigger",
                seg(workflow_id)
            ))
            .json(&body),
        )
    }

    /// A session with its task runs.
    pub fn get_session(&self, session_id: &str) -> Call<Session> {
        Call::new(self.get(&format!("/v1/opscore/sessions/{}", seg(session_id))))
    }

    /// One page of an agent's sessions, newest first, optionally only those
    /// in `status`.
    pub fn list_sessions(
        &self,
        agent_id: &str,
        status: Option<&str>,
        page: &PageRequest,
    ) -> Call<Page<Session>> {
        let mut q = page_query(page);
        if let Some(s) = status {
            q.push(("status", s.to_owned()));
        }
        Call::new(
            self.get(&format!("/v1/opscore/agent/{}/sessions", seg(agent_id)))
                .query(&q),
        )
    }

    /// One page of the audit trail, newest first (admin keys only).
    pub fn list_audit(&self, filter: &AuditFilter, page: &PageRequest) -> Call<Page<AuditEntry>> {
        let mut q = page_query(page);
        let fields = [
            ("actor", &filter.actor),
            ("kind", &filter.kind),
            ("target", &filter.target),
            ("since", &filter.since),
            ("until", &filter.until),
        ];
        for (name, value) in fields {
            if let Some(v) = value {
                q.push((name, v.clone()));
            }
        }
        Call::new(self.get("/v1/opscore/audit").query(&q))
    }

    /// One page of sessions across the fleet, newest first.
    pub fn list_fleet_sessions(
        &self,
        filter: &SessionFilter,
        page: &PageRequest,
    ) -> Call<Page<Session>> {
        let mut q = page_query(page);
        q.extend(filter.query());
        Call::new(self.get("/v1/opscore/sessions").query(&q))
    }

    /// How many sessions are in each status (the filter's `status` aside).
    pub fn session_counts(&self, filter: &SessionFilter) -> Call<SessionCounts> {
        let q: Vec<_> = filter
            .query()
            .into_iter()
            .filter(|(k, _)| *k != "status")
            .collect();
        Call::new(self.get("/v1/opscore/sessions/counts").query(&q))
    }

    /// Run a failed or cancelled session again; answers with the session,
    /// running again.
    pub fn retry_session(&self, session_id: &str) -> Call<Session> {
        Call::new(self.post(&format!("/v1/opscore/sessions/{}/retry", seg(session_id))))
    }

    /// Cancel a session; answers with the session as it now is.
    pub fn cancel_session(&self, session_id: &str) -> Call<Session> {
        Call::new(self.post(&format!("/v1/opscore/sessions/{}/cancel", seg(session_id))))
    }
}

fn page_query(page: &PageRequest) -> Vec<(&'static str, String)> {
    let mut q = Vec::new();
    if let Some(l) = page.limit {
        q.push(("limit", l.to_string()));
    }
    if let Some(c) = &page.cursor {
        q.push(("cursor", c.clone()));
    }
    q
}
