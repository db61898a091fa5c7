//! Workflow definitions and the trigger (docs/api.md §1.4, §1.6).

use axum::extract::{FromRequest, Request, State};
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::{Extension, Json};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::Value;
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::access::{perm, Require};
use super::extract::Query;
use super::extract::{parse_json, require_json, JsonBody, Path, RawBody};
use super::extract::{path_agent, AgentPath};
use super::paging::{bounded_page, page_query, Page, PageParams};
use crate::domain::time::from_micros;
use crate::domain::time::now_micros;
use crate::domain::workflow::{AgentSelector, WorkflowDefinition, MAX_DEFINITION_BYTES};
use crate::domain::FieldError;
use crate::domain::Validator;
use crate::engine::{self, DefinitionSource, Target};
use crate::error::{ApiError, ErrorBody, ErrorCode, Result};
use crate::http::state::AppState;
use crate::http::trace::RequestTrace;
use crate::store::{DefinitionRecord, PutOutcome};
use crate::wire::{StoredWorkflow, Triggered};

/// Routes of this resource (see `http::openapi` for how to add one).
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create, list))
        .routes(routes!(fetch, remove))
        .routes(routes!(revisions))
        .routes(routes!(trigger))
        .routes(routes!(trigger_pool))
}

/// The `workflowId` path parameter.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code)] // documents the path; handlers read it positionally
struct WorkflowPath {
    /// The definition's id.
    #[param(rename = "workflowId")]
    workflow_id: String,
}

/// A definition body: JSON, or YAML when the Content-Type says so.
struct DefinitionBody(WorkflowDefinition);

impl FromRequest<AppState> for DefinitionBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self> {
        let ct = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_ascii_lowercase();
        let yaml = [
            "application/yaml",
            "application/x-yaml",
            "text/yaml",
            "text/x-yaml",
        ]
        .iter()
        .any(|m| ct.starts_with(m));
        if !yaml {
            require_json(req.headers()).map_err(|_| {
                ApiError::new(
                    ErrorCode::UnsupportedMediaType,
                    "Content-Type must be application/json or application/yaml",
                )
            })?;
        }
        let RawBody(bytes) = RawBody::from_request(req, state).await?;
        let def = if yaml {
            let text = std::str::from_utf8(&bytes).map_err(|_| {
                ApiError::new(ErrorCode::InvalidYaml, "Request body is not UTF-8 text")
            })?;
            serde_norway::from_str(text).map_err(|e| {
                // Distinguishing YAML syntax from shape errors is not
                // reliable; both name the place in the document.
                ApiError::invalid_field("body", format!("invalid workflow definition YAML: {e}"))
            })?
        } else {
            parse_json(&bytes)?
        };
        Ok(Self(def))
    }
}

/// A stored revision as the wire shows it.
fn stored_view(r: DefinitionRecord) -> StoredWorkflow {
    StoredWorkflow {
        definition: r.definition,
        revision: Some(r.revision),
        stored_at: Some(from_micros(r.stored_at)),
    }
}

/// Store a workflow definition, or a new revision of one.
///
/// JSON, or YAML with a YAML `Content-Type` (`application/yaml`,
/// `application/x-yaml`, `text/yaml`, `text/x-yaml`). Defaults are filled in
/// before storing, so bodies that differ only by a default are the same
/// definition. A definition whose id is stored but whose content differs
/// from the newest revision is stored as the next revision (201); one
/// identical to it changes nothing (200). Sessions keep the revision they
/// started with (docs/api.md §3.1).
#[utoipa::path(
    post,
    operation_id = "createWorkflow",
    path = "/v1/opscore/workflows",
    tag = "workflows",
    request_body(description = "The definition (JSON or YAML)", content(
        (WorkflowDefinition = "application/json"),
        (WorkflowDefinition = "application/yaml"),
    )),
    responses(
        (status = 201, description = "Stored as a new revision (1 for a new id); the definition with defaults filled in and its `revision`", body = StoredWorkflow),
        (status = 200, description = "Identical to the newest revision: nothing stored", body = StoredWorkflow),
        (status = 400, description = "`invalid_json`, `invalid_yaml` (not UTF-8), `invalid_body`", body = ErrorBody),
        (status = 401, description = "`missing_credentials`, `invalid_authorization`, `invalid_api_key`", body = ErrorBody),
        (status = 409, description = "`conflict`: another request is storing a revision of this id at the same moment; try again", body = ErrorBody),
        (status = 413, description = "`payload_too_large`", body = ErrorBody),
        (status = 415, description = "`unsupported_media_type`", body = ErrorBody),
        (status = 422, description = "`validation_failed`: an invalid definition, one entry per problem", body = ErrorBody),
        (status = 503, description = "`storage_unavailable`", body = ErrorBody),
    ),
    security(("bearerAuth" = [])),
)]
async fn create(
    caller: Require<perm::ManageWorkflows>,
    State(state): State<AppState>,
    DefinitionBody(def): DefinitionBody,
) -> Result<impl IntoResponse> {
    def.validate().map_err(ApiError::validation)?;
    let now = now_micros();
    let (outcome, revision) = state
        .store
        .put_definition(&def, &caller.actor(), now)
        .await?;
    let (status, stored_at) = match outcome {
        PutOutcome::Created | PutOutcome::Revised => {
            tracing::info!(workflow_id = %def.id, revision, "workflow definition stored");
            (StatusCode::CREATED, now)
        }
        PutOutcome::Unchanged => {
            let found = state
                .store
                .list_revisions(&def.id, Some(revision.saturating_add(1)), 1)
                .await?;
            (StatusCode::OK, found.first().map_or(now, |r| r.stored_at))
        }
    };
    Ok((
        status,
        Json(stored_view(DefinitionRecord {
            definition: def,
            revision,
            stored_at,
        })),
    ))
}

/// Every stored definition's newest revision, ordered by id, in one page
/// (`nextCursor` is null).
#[utoipa::path(
    get,
    operation_id = "listWorkflows",
    path = "/v1/opscore/workflows",
    tag = "workflows",
    responses(
        (status = 200, description = "Every definition", body = Page<StoredWorkflow>),
        (status = 401, description = "`missing_credentials`, `invalid_authorization`, `invalid_api_key`", body = ErrorBody),
        (status = 503, description = "`storage_unavailable`", body = ErrorBody),
    ),
    security(("bearerAuth" = [])),
)]
async fn list(
    _: Require<perm::ReadWorkflows>,
    State(state): State<AppState>,
) -> Result<Json<Page<StoredWorkflow>>> {
    Ok(Json(Page {
        items: state
            .store
            .list_definitions()
            .await?
            .into_iter()
            .map(stored_view)
            .collect(),
        next_cursor: None,
    }))
}

/// One workflow definition: its newest revision.
#[utoipa::path(
    get,
    operation_id = "getWorkflow",
    path = "/v1/opscore/workflows/{workflowId}",
    tag = "workflows",
    params(WorkflowPath),
    responses(
        (status = 200, description = "The definition's newest revision", body = StoredWorkflow),
        (status = 401, description = "`missing_credentials`, `invalid_authorization`, `invalid_api_key`", body = ErrorBody),
        (status = 404, description = "`not_found`", body = ErrorBody),
        (status = 503, description = "`storage_unavailable`", body = ErrorBody),
    ),
    security(("bearerAuth" = [])),
)]
async fn fetch(
    _: Require<perm::ReadWorkflows>,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<StoredWorkflow>> {
    Ok(Json(stored_view(
        state.store.get_definition_record(&id).await?,
    )))
}

/// Every revision stored under a definition id, newest first.
///
/// A deleted definition's revisions are still listed (numbers are never
/// reused); an id never stored is 404.
#[utoipa::path(
    get,
    operation_id = "listWorkflowRevisions",
    path = "/v1/opscore/workflows/{workflowId}/revisions",
    tag = "workflows",
    params(WorkflowPath, PageParams),
    responses(
        (status = 200, description = "A page of revisions, newest first", body = Page<StoredWorkflow>),
        (status = 401, description = "`missing_credentials`, `invalid_authorization`, `invalid_api_key`", body = ErrorBody),
        (status = 404, description = "`not_found`: no revision was ever stored under this id", body = ErrorBody),
        (status = 422, description = "`validation_failed`: a bad limit or cursor", body = ErrorBody),
        (status = 503, description = "`storage_unavailable`", body = ErrorBody),
    ),
    security(("bearerAuth" = [])),
)]
async fn revisions(
    _: Require<perm::ReadWorkflows>,
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(p): Query<PageParams>,
) -> Result<Json<Page<Box<RawValue>>>> {
    let mut v = Validator::default();
    let (limit, before) = page_query(&mut v, p.limit.as_deref(), p.cursor.as_deref(), |s| {
        s.parse::<i64>().ok()
    });
    v.finish().map_err(ApiError::validation)?;
    let items = state.store.list_revisions(&id, before, limit).await?;
    Ok(Json(bounded_page(
        items,
        limit,
        |r| r.revision.to_string(),
        stored_view,
    )?))
}

/// Delete a workflow definition.
///
/// Sessions already started keep their own copy; refused while an
/// unfinished session uses it.
#[utoipa::path(
    delete,
    operation_id = "deleteWorkflow",
    path = "/v1/opscore/workflows/{workflowId}",
    tag = "workflows",
    params(WorkflowPath),
    responses(
        (status = 204, description = "Deleted"),
        (status = 401, description = "`missing_credentials`, `invalid_authorization`, `invalid_api_key`", body = ErrorBody),
        (status = 404, description = "`not_found`", body = ErrorBody),
        (status = 409, description = "`conflict`: an unfinished session uses it", body = ErrorBody),
        (status = 503, description = "`storage_unavailable`", body = ErrorBody),
    ),
    security(("bearerAuth" = [])),
)]
async fn remove(
    caller: Require<perm::ManageWorkflows>,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<StatusCode> {
    state
        .store
        .delete_definition(&id, &caller.actor(), now_micros())
        .await?;
    tracing::info!(workflow_id = %id, "workflow definition deleted");
    Ok(StatusCode::NO_CONTENT)
}

/// The trigger body: exactly one of `workflowDefinitionId` or
/// `workflowDefinition`. Extra fields (old clients send `agentId`,
/// `context`) are ignored.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(example = json!({"workflowDefinitionId": "sample_workflow_id", "initialPayload": {"text": "hello"}}))]
struct TriggerBody {
    /// A stored definition's id.
    workflow_definition_id: Option<String>,
    /// An inline definition, run exactly as sent: stored if its id is new;
    /// a different stored one under its id is left as it is.
    workflow_definition: Option<WorkflowDefinition>,
    /// The first task's payload (a JSON object of at most 256 KiB) instead
    /// of its `parameters`; null means none.
    #[schema(value_type = Option<Object>)]
    initial_payload: Option<Value>,
}

/// Trigger a workflow on the agent.
///
/// Creates a session and queues its first task in one transaction. A
/// definition with no tasks gives a session that is `completed` at once.
#[utoipa::path(
    post,
    operation_id = "triggerWorkflow",
    path = "/v1/opscore/agent/{agentId}/workflow",
    tag = "workflows",
    params(AgentPath),
    request_body(content = TriggerBody, content_type = "application/json"),
    responses(
        (status = 202, description = "Session created", body = Triggered),
        (status = 400, description = "`invalid_json`, `invalid_body`", body = ErrorBody),
        (status = 401, description = "`missing_credentials`, `invalid_authorization`, `invalid_api_key`", body = ErrorBody),
        (status = 404, description = "`agent_not_found` (unknown or deregistered agent) or `not_found` (unknown definition id)", body = ErrorBody),
        (status = 413, description = "`payload_too_large`", body = ErrorBody),
        (status = 415, description = "`unsupported_media_type`: not JSON", body = ErrorBody),
        (status = 422, description = "`validation_failed`: neither or both definition fields, an invalid inline definition, a non-object `initialPayload`", body = ErrorBody),
        (status = 503, description = "`storage_unavailable`", body = ErrorBody),
    ),
    security(("bearerAuth" = [])),
)]
async fn trigger(
    caller: Require<perm::Trigger>,
    State(state): State<AppState>,
    Path(agent_id): Path<String>,
    trace: Option<Extension<RequestTrace>>,
    JsonBody(body): JsonBody<TriggerBody>,
) -> Result<(StatusCode, Json<Triggered>)> {
    let agent = path_agent(&agent_id)?;
    let source = match (body.workflow_definition_id, body.workflow_definition) {
        (Some(id), None) => DefinitionSource::Stored(id),
        (None, Some(def)) => DefinitionSource::Inline(inline_definition(def)?),
        _ => {
            return Err(ApiError::invalid_field(
                "workflowDefinitionId",
                "exactly one of workflowDefinitionId or workflowDefinition is required",
            ))
        }
    };
    let initial_payload = initial_payload(body.initial_payload)?;
    let t = engine::trigger(
        &*state.store,
        &state.config.db.engine,
        Target::Agent(agent.clone()),
        source,
        initial_payload,
        trace.map(|Extension(RequestTrace(t))| t),
        &caller.actor(),
    )
    .await?;
    state.wake.notify_one();
    tracing::info!(session_id = %t.session_id, workflow_id = %t.workflow_id, agent_id = %agent, "workflow triggered");
    Ok((
        StatusCode::ACCEPTED,
        Json(Triggered {
            session_id: t.session_id,
            workflow_id: t.workflow_id,
            message: "Workflow triggered successfully".into(),
        }),
    ))
}

/// `initialPayload` checked: null or absent means none; otherwise a JSON
/// object of at most 256 KiB.
fn initial_payload(v: Option<Value>) -> Result<Option<Value>> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(v @ Value::Object(_)) if v.to_string().len() <= MAX_DEFINITION_BYTES => Ok(Some(v)),
        Some(Value::Object(_)) => Err(ApiError::invalid_field(
            "initialPayload",
            format!("must be at most {MAX_DEFINITION_BYTES} bytes"),
        )),
        Some(_) => Err(ApiError::invalid_field(
            "initialPayload",
            "must be a JSON object",
        )),
    }
}

/// An inline definition checked, its problems named under
/// `workflowDefinition`.
fn inline_definition(def: WorkflowDefinition) -> Result<WorkflowDefinition> {
    def.validate().map_err(|errors| {
        ApiError::validation(
            errors
                .into_iter()
                .map(|e| FieldError::new(format!("workflowDefinition.{}", e.field), e.message))
                .collect(),
        )
    })?;
    Ok(def)
}

/// The pool trigger's body (docs/api.md §3.3). Extra fields are ignored.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(example = json!({"agentSelector": {"capability": "summarise"}, "initialPayload": {"text": "hello"}}))]
struct PoolTriggerBody {
    /// The start tasks' payload (a JSON object of at most 256 KiB) instead
    /// of their `parameters`.
    #[schema(value_type = Option<Object>)]
    initial_payload: Option<Value>,
    /// Which agents may take its tasks; none: any registered agent (each
    /// task's `agentCapability` still applies).
    agent_selector: Option<AgentSelector>,
    /// An inline definition run instead of the stored one, as in the
    /// per-agent trigger; its id must be the path's.
    workflow_definition: Option<WorkflowDefinition>,
}

/// Trigger a workflow on a pool of agents.
///
/// Creates a session and queues every task in one transaction. Each task
/// goes to a registered, fresh, free agent that matches the selector and
/// has the task's `agentCapability`, chosen when it is sent.
#[utoipa::path(
    post,
    operation_id = "triggerWorkflowOnPool",
    path = "/v1/opscore/workflows/{workflowId}/trigger",
    tag = "workflows",
    params(WorkflowPath),
    request_body(content = PoolTriggerBody, content_type = "application/json"),
    responses(
        (status = 202, description = "Session created", body = Triggered),
        (status = 400, description = "`invalid_json`, `invalid_body`", body = ErrorBody),
        (status = 401, description = "`missing_credentials`, `invalid_authorization`, `invalid_api_key`", body = ErrorBody),
        (status = 403, description = "`forbidden`: the key may not trigger workflows", body = ErrorBody),
        (status = 404, description = "`not_found`: unknown definition id", body = ErrorBody),
        (status = 413, description = "`payload_too_large`", body = ErrorBody),
        (status = 415, description = "`unsupported_media_type`: not JSON", body = ErrorBody),
        (status = 422, description = "`validation_failed`: a bad selector, an invalid inline definition or one whose id is not the path's, a non-object `initialPayload`", body = ErrorBody),
        (status = 503, description = "`storage_unavailable`", body = ErrorBody),
    ),
    security(("bearerAuth" = [])),
)]
async fn trigger_pool(
    caller: Require<perm::Trigger>,
    State(state): State<AppState>,
    Path(workflow_id): Path<String>,
    trace: Option<Extension<RequestTrace>>,
    JsonBody(body): JsonBody<PoolTriggerBody>,
) -> Result<(StatusCode, Json<Triggered>)> {
    let selector = body.agent_selector.unwrap_or_default();
    selector
        .validate("agentSelector")
        .map_err(ApiError::validation)?;
    let source = match body.workflow_definition {
        Some(def) if def.id != workflow_id => {
            return Err(ApiError::invalid_field(
                "workflowDefinition.id",
                format!("must be the path's workflow id '{workflow_id}'"),
            ))
        }
        Some(def) => DefinitionSource::Inline(inline_definition(def)?),
        None => DefinitionSource::Stored(workflow_id),
    };
    let initial_payload = initial_payload(body.initial_payload)?;
    let t = engine::trigger(
        &*state.store,
        &state.config.db.engine,
        Target::Pool(selector),
        source,
        initial_payload,
        trace.map(|Extension(RequestTrace(t))| t),
        &caller.actor(),
    )
    .await?;
    state.wake.notify_one();
    tracing::info!(session_id = %t.session_id, workflow_id = %t.workflow_id, "workflow triggered on a pool");
    Ok((
        StatusCode::ACCEPTED,
        Json(Triggered {
            session_id: t.session_id,
            workflow_id: t.workflow_id,
            message: "Workflow triggered successfully".into(),
        }),
    ))
}
