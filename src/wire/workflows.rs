//! Stored workflow definitions with their revision (docs/api.md §3.1).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::time;
use crate::domain::workflow::WorkflowDefinition;

/// A stored revision of a definition: the definition's own fields, plus its
/// revision number and when it was stored.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct StoredWorkflow {
    /// The definition, defaults filled in.
    #[serde(flatten)]
    pub definition: WorkflowDefinition,
    /// Its revision: 1 for the first stored under its id, then one more
    /// for each changed definition stored under it. (The definition's own
    /// `version` is the author's label and is left alone.) Always sent;
    /// optional only to read older servers.
    #[serde(default)]
    pub revision: Option<i64>,
    /// When this revision was stored. Always sent; optional only to read
    /// older servers.
    #[serde(default, with = "time::option")]
    #[schema(value_type = Option<String>)]
    pub stored_at: Option<DateTime<Utc>>,
}

/// How many sessions are in each status (`GET /v1/opscore/sessions/counts`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SessionCounts {
    /// `started`.
    pub started: i64,
    /// `running`.
    pub running: i64,
    /// `completed`.
    pub completed: i64,
    /// `failed`.
    pub failed: i64,
    /// `cancelled`.
    pub cancelled: i64,
    /// All of them.
    pub total: i64,
}
