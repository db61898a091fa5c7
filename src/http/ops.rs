//! Operational routes: liveness and readiness.

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};

use crate::error::{ApiError, Result};
use crate::state::AppState;

/// `/health` and `/ready`.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/health", get(health))
        .route("/ready", get(ready))
}

/// Liveness: the process answers. No key, no database (contract 1.5).
async fn health() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

/// Readiness: the database answers and its migrations are applied.
async fn ready(State(state): State<AppState>) -> Result<Json<Value>> {
    match state.store.ready().await {
        Ok(()) => Ok(Json(json!({"status": "ready"}))),
        Err(e) => {
            tracing::warn!(error = %e, "not ready");
            Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "not_ready",
                "The database is unreachable or not migrated",
            ))
        }
    }
}
