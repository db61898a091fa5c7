//! Workflow definitions and the trigger (contract 1.4, 1.6).

use axum::extract::{FromRequest, Request, State};
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};

use super::access::{perm, Require};
use super::agents::path_agent;
use super::extract::{parse_json, require_json, JsonBody, Path, RawBody};
use super::paging::Page;
use crate::domain::time::now_micros;
use crate::domain::workflow::{WorkflowDefinition, MAX_DEFINITION_BYTES};
use crate::domain::FieldError;
use crate::engine::{self, DefinitionSource};
use crate::error::{ApiError, Result};
use crate::state::AppState;
use crate::store::PutOutcome;

/// Routes of this resource.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/opscore/workflows", post(create).get(list))
        .route(
            "/v1/opscore/workflows/{workflow_id}",
            get(fetch).delete(remove),
        )
        .route("/v1/opscore/agent/{agent_id}/workflow", post(trigger))
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
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    "unsupported_media_type",
                    "Content-Type must be application/json or application/yaml",
                )
            })?;
        }
        let RawBody(bytes) = RawBody::from_request(req, state).await?;
        let def = if yaml {
            let text = std::str::from_utf8(&bytes).map_err(|_| {
                ApiError::bad_request("invalid_yaml", "Request body is not UTF-8 text")
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

async fn create(
    _: Require<perm::ManageWorkflows>,
    State(state): State<AppState>,
    DefinitionBody(def): DefinitionBody,
) -> Result<impl IntoResponse> {
    def.validate().map_err(ApiError::validation)?;
    let outcome = state
        .store
        .put_definition(&def, false, now_micros())
        .await?;
    let status = match outcome {
        PutOutcome::Created => {
            tracing::info!(workflow_id = %def.id, "workflow definition created");
            StatusCode::CREATED
        }
        PutOutcome::Unchanged | PutOutcome::Replaced => StatusCode::OK,
    };
    Ok((status, Json(def)))
}

async fn list(
    _: Require<perm::ReadWorkflows>,
    State(state): State<AppState>,
) -> Result<Json<Page<WorkflowDefinition>>> {
    Ok(Json(Page {
        items: state.store.list_definitions().await?,
        next_cursor: None,
    }))
}

async fn fetch(
    _: Require<perm::ReadWorkflows>,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<WorkflowDefinition>> {
    Ok(Json(state.store.get_definition(&id).await?))
}

async fn remove(
    _: Require<perm::ManageWorkflows>,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<StatusCode> {
    state.store.delete_definition(&id).await?;
    tracing::info!(workflow_id = %id, "workflow definition deleted");
    Ok(StatusCode::NO_CONTENT)
}

/// The trigger body. Extra fields (old clients send `agentId`, `context`)
/// are ignored.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct TriggerBody {
    workflow_definition_id: Option<String>,
    workflow_definition: Option<WorkflowDefinition>,
    initial_payload: Option<Value>,
}

async fn trigger(
    _: Require<perm::Trigger>,
    State(state): State<AppState>,
    Path(agent_id): Path<String>,
    JsonBody(body): JsonBody<TriggerBody>,
) -> Result<(StatusCode, Json<Value>)> {
    let agent = path_agent(&agent_id)?;
    let source = match (body.workflow_definition_id, body.workflow_definition) {
        (Some(id), None) => DefinitionSource::Stored(id),
        (None, Some(def)) => {
            def.validate().map_err(|errors| {
                ApiError::validation(
                    errors
                        .into_iter()
                        .map(|e| {
                            FieldError::new(format!("workflowDefinition.{}", e.field), e.message)
                        })
                        .collect(),
                )
            })?;
            DefinitionSource::Inline(def)
        }
        _ => {
            return Err(ApiError::invalid_field(
                "workflowDefinitionId",
                "exactly one of workflowDefinitionId or workflowDefinition is required",
            ))
        }
    };
    let initial_payload = match body.initial_payload {
        None | Some(Value::Null) => None,
        Some(v @ Value::Object(_)) if v.to_string().len() <= MAX_DEFINITION_BYTES => Some(v),
        Some(Value::Object(_)) => {
            return Err(ApiError::invalid_field(
                "initialPayload",
                format!("must be at most {MAX_DEFINITION_BYTES} bytes"),
            ))
        }
        Some(_) => {
            return Err(ApiError::invalid_field(
                "initialPayload",
                "must be a JSON object",
            ))
        }
    };
    let t = engine::trigger(
        &*state.store,
        &state.config.db.engine,
        &agent,
        source,
        initial_payload,
    )
    .await?;
    state.wake.notify_one();
    tracing::info!(session_id = %t.session_id, workflow_id = %t.workflow_id, agent_id = %agent, "workflow triggered");
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({
            "sessionId": t.session_id,
            "workflowId": t.workflow_id,
            "message": "Workflow triggered successfully",
        })),
    ))
}
