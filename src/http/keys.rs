//! API key management, admin only: `/v1/opscore/keys`. A key's plaintext
//! is in the answer to its creation and nowhere else, ever.

use std::future::Future;

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::Serialize;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::access::{perm, Require};
use super::extract::{JsonBody, Path};
use super::paging::Page;
use crate::domain::apikey::{generate, is_key_id, ApiKey};
use crate::domain::newkey::NewKeyBody;
use crate::domain::time::{format_micros, now_micros};
use crate::error::{ApiError, ErrorBody, Result};
use crate::http::state::AppState;
use crate::store::{Entity, StoreError, StoreResult};

/// Routes of this resource.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list, create))
        .routes(routes!(fetch, revoke))
}

/// The key id in the path.
#[derive(IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code)]
struct KeyPath {
    /// The key's id (the part after `opk_` in the key).
    #[param(rename = "keyId")]
    key_id: String,
}

/// A key on the wire, without any secret.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct KeyView {
    key_id: String,
    name: String,
    role: &'static str,
    agent_ids: Vec<String>,
    rate_limit: Option<u32>,
    /// Its own cap on open event streams and blocking reads (null: the
    /// server's `OPSCORE_MAX_STREAMS_PER_KEY`).
    max_streams: Option<u32>,
    status: &'static str,
    created_at: String,
    expires_at: Option<String>,
    revoked_at: Option<String>,
    last_used_at: Option<String>,
}

impl KeyView {
    fn new(k: &ApiKey, state: &AppState) -> Self {
        // This process may know of a use it has not written yet.
        let last_used = match (k.last_used_at, state.keys.pending_use(&k.key_id)) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        Self {
            key_id: k.key_id.clone(),
            name: k.name.clone(),
            role: k.role.as_str(),
            agent_ids: k.agent_ids.clone(),
            rate_limit: k.rate_limit,
            max_streams: k.max_streams,
            status: k.status(now_micros()).as_str(),
            created_at: format_micros(k.created_at),
            expires_at: k.expires_at.map(format_micros),
            revoked_at: k.revoked_at.map(format_micros),
            last_used_at: last_used.map(format_micros),
        }
    }
}

/// The answer to a creation: the key, and its plaintext this one time.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
struct CreatedKey {
    #[serde(flatten)]
    view: KeyView,
    key: String,
}

/// Create an API key; the answer holds its plaintext, shown only this once.
#[utoipa::path(
    post,
    operation_id = "createKey",
    path = "/v1/opscore/keys",
    tag = "keys",
    request_body = NewKeyBody,
    responses(
        (status = 201, description = "The key, with its plaintext `key`", body = CreatedKey),
        (status = 400, description = "`invalid_json`", body = ErrorBody),
        (status = 401, description = "`missing_credentials`, `invalid_api_key`, `key_revoked`, `key_expired`", body = ErrorBody),
        (status = 403, description = "`forbidden`: not an admin key", body = ErrorBody),
        (status = 415, description = "`unsupported_media_type`", body = ErrorBody),
        (status = 422, description = "`validation_failed`, naming each field", body = ErrorBody),
    ),
    security(("bearerAuth" = [])),
)]
async fn create(
    caller: Require<perm::ManageKeys>,
    State(state): State<AppState>,
    JsonBody(body): JsonBody<NewKeyBody>,
) -> Result<(StatusCode, Json<CreatedKey>)> {
    let now = now_micros();
    let new = body.validate(now).map_err(ApiError::validation)?;
    let generated = generate();
    let key = ApiKey {
        key_id: generated.key_id,
        name: new.name,
        role: new.role,
        agent_ids: new.agent_ids,
        secret_sha256: generated.secret_sha256,
        rate_limit: new.rate_limit,
        max_streams: new.max_streams,
        created_at: now,
        expires_at: new.expires_at,
        revoked_at: None,
        last_used_at: None,
    };
    state.store.create_key(&key, &caller.actor()).await?;
    tracing::info!(key_id = %key.key_id, role = key.role.as_str(), "API key created");
    Ok((
        StatusCode::CREATED,
        Json(CreatedKey {
            view: KeyView::new(&key, &state),
            key: generated.plaintext,
        }),
    ))
}

/// Every key, oldest first, without secrets.
#[utoipa::path(
    get,
    operation_id = "listKeys",
    path = "/v1/opscore/keys",
    tag = "keys",
    responses(
        (status = 200, description = "Every key in one page", body = Page<KeyView>),
        (status = 401, description = "`missing_credentials`, `invalid_api_key`, `key_revoked`, `key_expired`", body = ErrorBody),
        (status = 403, description = "`forbidden`: not an admin key", body = ErrorBody),
    ),
    security(("bearerAuth" = [])),
)]
async fn list(
    _: Require<perm::ManageKeys>,
    State(state): State<AppState>,
) -> Result<Json<Page<KeyView>>> {
    let keys = state.store.list_keys().await?;
    Ok(Json(Page {
        items: keys.iter().map(|k| KeyView::new(k, &state)).collect(),
        next_cursor: None,
    }))
}

/// Run `op` on the key `id` names. An id not shaped like a key id is
/// `key_not_found` without asking the store, as is one the store does not
/// hold.
async fn on_key<F, Fut>(id: &str, op: F) -> Result<ApiKey>
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = StoreResult<ApiKey>>,
{
    if !is_key_id(id) {
        return Err(StoreError::not_found(Entity::Key, id).into());
    }
    Ok(op().await?)
}

/// One key, without its secret.
#[utoipa::path(
    get,
    operation_id = "getKey",
    path = "/v1/opscore/keys/{keyId}",
    tag = "keys",
    params(KeyPath),
    responses(
        (status = 200, description = "The key", body = KeyView),
        (status = 401, description = "`missing_credentials`, `invalid_api_key`, `key_revoked`, `key_expired`", body = ErrorBody),
        (status = 403, description = "`forbidden`: not an admin key", body = ErrorBody),
        (status = 404, description = "`key_not_found`", body = ErrorBody),
    ),
    security(("bearerAuth" = [])),
)]
async fn fetch(
    _: Require<perm::ManageKeys>,
    State(state): State<AppState>,
    Path(key_id): Path<String>,
) -> Result<Json<KeyView>> {
    let key = on_key(&key_id, || state.store.get_key(&key_id)).await?;
    Ok(Json(KeyView::new(&key, &state)))
}

/// Revoke: idempotent, answers the key as it now is. This process refuses
/// the key from the moment the answer is sent.
#[utoipa::path(
    delete,
    operation_id = "revokeKey",
    path = "/v1/opscore/keys/{keyId}",
    tag = "keys",
    params(KeyPath),
    responses(
        (status = 200, description = "The revoked key", body = KeyView),
        (status = 401, description = "`missing_credentials`, `invalid_api_key`, `key_revoked`, `key_expired`", body = ErrorBody),
        (status = 403, description = "`forbidden`: not an admin key", body = ErrorBody),
        (status = 404, description = "`key_not_found`", body = ErrorBody),
    ),
    security(("bearerAuth" = [])),
)]
async fn revoke(
    caller: Require<perm::ManageKeys>,
    State(state): State<AppState>,
    Path(key_id): Path<String>,
) -> Result<Json<KeyView>> {
    let by = caller.actor();
    let key = on_key(&key_id, || {
        state.store.revoke_key(&key_id, &by, now_micros())
    })
    .await?;
    state.keys.remember(key.clone());
    tracing::info!(key_id = %key.key_id, "API key revoked");
    Ok(Json(KeyView::new(&key, &state)))
}
