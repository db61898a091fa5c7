//! Domain types and rules: agents, their states, and validation.
//!
//! Nothing here knows about HTTP or SQL; the `http` layer turns requests into
//! these types and the `store` layer persists them.

pub mod agent;
pub mod apikey;
pub mod audit;
pub mod engine_rules;
pub mod event;
pub mod graph;
pub mod liveness;
pub mod newkey;
pub mod ratelimit;
pub mod run_rules;
pub mod signature;
pub mod state;
pub mod time;
pub mod trace;
pub mod workflow;

use serde::Serialize;

/// `raw` as one URL path segment, percent-encoded: ids may hold characters
/// (`/`, `?`, spaces) that would otherwise change the route, and a segment
/// of only dots (`.`, `..`) would mean "here" or "up one" to every URL
/// parser, so its dots are encoded too. Every URL this service or its
/// client builds from an id goes through here.
pub fn path_segment(raw: &str) -> String {
    let all_dots = !raw.is_empty() && raw.bytes().all(|b| b == b'.');
    let mut out = String::with_capacity(raw.len());
    for b in raw.bytes() {
        if b.is_ascii_alphanumeric()
            || matches!(b, b'-' | b'_' | b'~' | b':')
            || (b == b'.' && !all_dots)
        {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

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

#[cfg(test)]
mod tests {
    use super::path_segment;

    #[test]
    fn path_segments_are_encoded() {
        assert_eq!(path_segment("a1:x_y.z-2"), "a1:x_y.z-2");
        assert_eq!(path_segment("a/b c?d"), "a%2Fb%20c%3Fd");
        assert_eq!(path_segment("é"), "%C3%A9");
        assert_eq!(path_segment("."), "%2E");
        assert_eq!(path_segment(".."), "%2E%2E");
        assert_eq!(path_segment("..."), "%2E%2E%2E");
        assert_eq!(path_segment("a..b"), "a..b");
    }
}
