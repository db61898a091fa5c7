//! Agents: the listing, one agent, and its lease. The registration webhook
//! is in `webhook.rs`, states in `states.rs`.

use axum::extract::State;
use axum::Json;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::access::{perm, Require};
use super::extract::{path_agent, AgentPath, JsonBody, Path, Query};
use super::paging::{bounded_page, page_query, Page};
use super::states::state_entry;
use crate::domain::agent::{has_nul, lease_body, AgentId};
use crate::domain::state::validate_state_name;
use crate::domain::time::{from_micros, now_micros, Micros};
use crate::domain::{FieldError, Validator};
use crate::error::{ApiError, ErrorBody, Result};
use crate::http::state::AppState;
use crate::store::{Agent, AgentQuery, Liveness};
use crate::wire;

/// Routes of this resource (see `http::openapi` for how to add one).
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_agents))
        .routes(routes!(get_agent))
        .routes(routes!(set_lease))
}

/// An agent as the wire shows it, `now` deciding whether it is stale.
fn agent_view(a: Agent, live: &Liveness, now: Micros) -> wire::Agent {
    wire::Agent {
        stale: Some(a.is_stale(live, now)),
        ttl_seconds: live.lease_secs(a.ttl_secs),
        agent_id: a.agent_id,
        agent_name: a.name,
        version: a.version,
        capabilities: a.capabilities,
        contact_endpoint: a.contact_endpoint,
        metadata: a.metadata,
        registered: a.deregistered_at.is_none(),
        registered_at: from_micros(a.registered_at),
        updated_at: from_micros(a.updated_at),
        deregistered_at: a.deregistered_at.map(from_micros),
        last_seen: from_micros(a.last_seen),
        current_state: state_entry(a.current),
    }
}

/// The `consistent` query flag of the agent reads.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct ConsistentParam {
    /// `true`: read the database, which holds every replica's commits the
    /// moment they are made, rather than this process's read model (which
    /// has them within milliseconds). Default `false`.
    #[param(value_type = Option<bool>)]
    pub(super) consistent: Option<String>,
}

impl ConsistentParam {
    /// Whether the read must ask the database; 422 naming `consistent`.
    pub(super) fn consistent(&self) -> Result<bool> {
        let mut v = Validator::default();
        let on = flag(&mut v, "consistent", self.consistent.as_deref()).unwrap_or(false);
        v.finish().map_err(ApiError::validation)?;
        Ok(on)
    }
}

/// One agent: registration details and current state.
///
/// Answered from this process's read model, which has what another
/// replica committed within milliseconds; `consistent=true` reads the
/// database.
#[utoipa::path(
    get,
    operation_id = "getAgent",
    path = "/v1/opscore/agent/{agentId}",
    tag = "agents",
    params(AgentPath, ConsistentParam),
    responses(
        (status = 200, description = "The agent", body = wire::Agent),
        (status = 401, description = "`missing_credentials`, `invalid_authorization`, `invalid_api_key`", body = ErrorBody),
        (status = 404, description = "`agent_not_found`", body = ErrorBody),
        (status = 422, description = "`validation_failed`: a bad `consistent`", body = ErrorBody),
        (status = 503, description = "`storage_unavailable`", body = ErrorBody),
    ),
    security(("bearerAuth" = [])),
)]
async fn get_agent(
    _: Require<perm::ReadAgent>,
    State(state): State<AppState>,
    Path(agent_id): Path<String>,
    Query(p): Query<ConsistentParam>,
) -> Result<Json<wire::Agent>> {
    let id = path_agent(&agent_id)?;
    let agent = if p.consistent()? {
        state.store.get_agent_consistent(&id).await?
    } else {
        state.store.get_agent(&id).await?
    };
    Ok(Json(agent_view(
        agent,
        &state.config.db.engine.liveness,
        now_micros(),
    )))
}

/// `{"ttlSeconds": N}` sets the agent's own lease; `null` clears it.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
#[allow(dead_code)] // The schema of the body; it is read as a JSON object.
struct LeaseBody {
    /// Seconds (1 to 86400), or null for no lease of its own.
    ttl_seconds: Option<i64>,
}

/// Set or clear one agent's lease.
///
/// Leases are opt-in (docs/agents.md): an agent that holds one and is not
/// heard from for `ttlSeconds` (plus the grace) is stale, is sent no task,
/// and the task it holds fails with `agent stale`. `{"ttlSeconds": null}`
/// clears the agent's own lease (the server-wide `OPSCORE_AGENT_TTL_SECS`
/// then applies, if set). A stale agent whose new lease has not run out is
/// announced fresh (`agent.fresh`) at once. A registration that names no
/// `metadata.ttlSeconds` keeps the lease set here.
#[utoipa::path(
    put,
    operation_id = "setAgentLease",
    path = "/v1/opscore/agent/{agentId}/lease",
    tag = "agents",
    params(AgentPath),
    request_body = LeaseBody,
    responses(
        (status = 200, description = "The agent with its new lease", body = wire::Agent),
        (status = 400, description = "`invalid_json`", body = ErrorBody),
        (status = 401, description = "`missing_credentials`, `invalid_authorization`, `invalid_api_key`", body = ErrorBody),
        (status = 403, description = "`forbidden`: admin and operator keys only", body = ErrorBody),
        (status = 404, description = "`agent_not_found` (or deregistered)", body = ErrorBody),
        (status = 415, description = "`unsupported_media_type`", body = ErrorBody),
        (status = 422, description = "`validation_failed`, naming `ttlSeconds`", body = ErrorBody),
        (status = 503, description = "`storage_unavailable`", body = ErrorBody),
    ),
    security(("bearerAuth" = [])),
)]
async fn set_lease(
    caller: Require<perm::ManageLeases>,
    State(state): State<AppState>,
    Path(agent_id): Path<String>,
    JsonBody(body): JsonBody<Map<String, Value>>,
) -> Result<Json<wire::Agent>> {
    let id = path_agent(&agent_id)?;
    let ttl = lease_body(&body).map_err(|e| ApiError::validation(vec![e]))?;
    let now = now_micros();
    let agent = state
        .store
        .set_agent_lease(&id, ttl, &caller.actor(), now)
        .await?;
    Ok(Json(agent_view(
        agent,
        &state.config.db.engine.liveness,
        now_micros(),
    )))
}

/// Filters and paging of the agent listing. Values are read as text and
/// validated by hand, so every bad one is named in one 422.
#[derive(Deserialize, IntoParams)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Query, rename_all = "camelCase")]
struct ListAgentsParams {
    /// Only agents whose current state is this.
    state: Option<String>,
    /// Only agents declaring this capability.
    capability: Option<String>,
    /// Also list deregistered agents.
    #[param(value_type = Option<bool>)]
    include_deregistered: Option<String>,
    /// Only agents whose lease has (`true`) or has not (`false`) run out.
    #[param(value_type = Option<bool>)]
    stale: Option<String>,
    /// `nextCursor` of the previous page.
    cursor: Option<String>,
    /// Page size.
    #[param(value_type = Option<u32>, minimum = 1, maximum = 1000, default = 100)]
    limit: Option<String>,
    /// `true`: read the database rather than the read model (which
    /// answers the `state` filter from memory).
    #[param(value_type = Option<bool>)]
    consistent: Option<String>,
}

/// A `true`/`false` (or `1`/`0`) query flag.
fn flag(v: &mut Validator, name: &str, raw: Option<&str>) -> Option<bool> {
    match raw {
        None => None,
        Some("true") | Some("1") => Some(true),
        Some("false") | Some("0") => Some(false),
        Some(_) => {
            v.add(FieldError::new(name, "must be true or false"));
            None
        }
    }
}

/// Registered agents, ordered by id.
#[utoipa::path(
    get,
    operation_id = "listAgents",
    path = "/v1/opscore/agents",
    tag = "agents",
    params(ListAgentsParams),
    responses(
        (status = 200, description = "A page of agents", body = Page<wire::Agent>),
        (status = 401, description = "`missing_credentials`, `invalid_authorization`, `invalid_api_key`", body = ErrorBody),
        (status = 422, description = "`validation_failed` (a bad filter, limit or cursor) or `invalid_query`", body = ErrorBody),
        (status = 503, description = "`storage_unavailable`", body = ErrorBody),
    ),
    security(("bearerAuth" = [])),
)]
async fn list_agents(
    _: Require<perm::ListAgents>,
    State(state): State<AppState>,
    Query(p): Query<ListAgentsParams>,
) -> Result<Json<Page<Box<RawValue>>>> {
    let mut v = Validator::default();
    let (limit, after) = page_query(&mut v, p.limit.as_deref(), p.cursor.as_deref(), |id| {
        AgentId::parse(id).is_ok().then(|| id.to_owned())
    });
    let include_deregistered = flag(
        &mut v,
        "includeDeregistered",
        p.include_deregistered.as_deref(),
    )
    .unwrap_or(false);
    let stale = flag(&mut v, "stale", p.stale.as_deref());
    let consistent = flag(&mut v, "consistent", p.consistent.as_deref()).unwrap_or(false);
    if let Some(s) = &p.state {
        if let Err(m) = validate_state_name(s) {
            v.add(FieldError::new("state", m));
        }
    }
    if p.capability.as_deref().is_some_and(has_nul) {
        v.add(FieldError::new(
            "capability",
            "must not contain NUL characters",
        ));
    }
    v.finish().map_err(ApiError::validation)?;
    let now = now_micros();
    let q = AgentQuery {
        state: p.state,
        capability: p.capability,
        include_deregistered,
        stale,
        now,
        after,
        limit,
        consistent,
    };
    let agents = state.store.list_agents(&q).await?;
    let live = state.config.db.engine.liveness;
    bounded_page(
        agents,
        limit,
        |a| a.agent_id.clone(),
        |a| agent_view(a, &live, now),
    )
    .map(Json)
}
