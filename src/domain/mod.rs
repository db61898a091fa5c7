//! Domain types and rules: agents, their states, and validation.
//!
//! Nothing here knows about HTTP or SQL; the `http` layer turns requests into
//! these types and the `store` layer persists them.

pub mod agent;
pub mod event;
pub mod state;
pub mod time;
pub mod workflow;

use serde::Serialize;

/// One reason a request body or query failed validation, naming the field.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct FieldError {
    /// Dotted path of the offending field, e.g. `agent_details.agentId`.
    pub field: String,
    /// What is wrong with it, in words a client developer understands.
    pub message: String,
}

impl FieldError {
    /// Build a field error from anything string-like.
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// Collects field errors while validating a whole body, so a client sees every
/// problem at once rather than one per round trip.
#[derive(Debug, Default)]
pub struct Validator {
    errors: Vec<FieldError>,
}

impl Validator {
    /// Record that `field` is wrong.
    pub fn push(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.errors.push(FieldError::new(field, message));
    }

    /// Record an error built elsewhere.
    pub fn add(&mut self, e: FieldError) {
        self.errors.push(e);
    }

    /// Keep the value of a check, or record its error and return `None`.
    pub fn check<T>(&mut self, result: Result<T, FieldError>) -> Option<T> {
        match result {
            Ok(v) => Some(v),
            Err(e) => {
                self.errors.push(e);
                None
            }
        }
    }

    /// Record a missing required field and return `None`.
    pub fn required<T>(&mut self, field: &str, value: Option<T>) -> Option<T> {
        if value.is_none() {
            self.push(field, "field required");
        }
        value
    }

    /// The collected errors, or `Ok` when there were none.
    pub fn finish(self) -> Result<(), Vec<FieldError>> {
        if self.errors.is_empty() {
            Ok(())
        } else {
            Err(self.errors)
        }
    }
}
