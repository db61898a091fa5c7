//! Listing helpers shared by every resource: page shape, limits, cursors.

use serde::Serialize;

use crate::domain::FieldError;

/// Default page size for listings.
pub const DEFAULT_LIMIT: u32 = 100;
/// Largest page size a client may ask for.
pub const MAX_LIMIT: u32 = 1000;

/// A page of results and the cursor of the next page (null on the last).
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Page<T> {
    /// The results.
    pub items: Vec<T>,
    /// Pass as `cursor` to get the next page.
    pub next_cursor: Option<String>,
}

/// Parse `limit`: absent means the default; outside 1..=MAX_LIMIT is refused.
pub fn parse_limit(raw: Option<&str>) -> Result<u32, FieldError> {
    match raw {
        None => Ok(DEFAULT_LIMIT),
        Some(s) => match s.parse::<u32>() {
            Ok(n) if (1..=MAX_LIMIT).contains(&n) => Ok(n),
            _ => Err(FieldError::new(
                "limit",
                format!("must be a whole number from 1 to {MAX_LIMIT}"),
            )),
        },
    }
}

/// Cursors are opaque to clients: hex of a position string.
pub fn encode_cursor(position: &str) -> String {
    hex::encode(position)
}

/// The position inside a cursor, if it is one.
pub fn decode_cursor(raw: &str) -> Option<String> {
    hex::decode(raw)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
}

/// The error for a cursor this server did not issue.
pub fn bad_cursor() -> FieldError {
    FieldError::new("cursor", "is not a cursor this server issued")
}

/// The next cursor: the last item's position when the page is full.
pub fn next_cursor<T>(items: &[T], limit: u32, position: impl Fn(&T) -> String) -> Option<String> {
    if items.len() == limit as usize {
        items.last().map(|last| encode_cursor(&position(last)))
    } else {
        None
    }
}
