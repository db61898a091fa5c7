//! Listing helpers shared by every resource: page shape, limits, cursors.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use utoipa::IntoParams;

use crate::domain::{FieldError, Validator};
use crate::error::ApiError;
pub use crate::wire::Page;

/// Default page size for listings.
pub const DEFAULT_LIMIT: u32 = 100;
/// Largest page size a client may ask for.
pub const MAX_LIMIT: u32 = 1000;
/// Largest serialised size of a page's items: past it a page ends early,
/// with a cursor to the rest, so one listing's response (and the memory it
/// takes to build) stays bounded whatever the items carry. A single item
/// larger than this still makes a page of one.
pub const MAX_PAGE_BYTES: usize = 1024 * 1024;

/// Parse `limit`: absent means the default; outside 1..=MAX_LIMIT is refused.
fn parse_limit(raw: Option<&str>) -> Result<u32, FieldError> {
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
fn decode_cursor(raw: &str) -> Option<String> {
    hex::decode(raw)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
}

/// The error for a cursor this server did not issue.
fn bad_cursor() -> FieldError {
    FieldError::new("cursor", "is not a cursor this server issued")
}

/// A listing's `limit` and `cursor` read into `v`: the page size (the
/// default when `limit` is bad, so the other parameters are still checked)
/// and the position `position` reads from the cursor. A cursor that is not
/// hex of a position `position` accepts is one this server did not issue.
pub fn page_query<T>(
    v: &mut Validator,
    limit: Option<&str>,
    cursor: Option<&str>,
    position: impl FnOnce(&str) -> Option<T>,
) -> (u32, Option<T>) {
    let limit = v.check(parse_limit(limit)).unwrap_or(DEFAULT_LIMIT);
    let at = cursor.and_then(|c| {
        let at = decode_cursor(c).and_then(|p| position(&p));
        if at.is_none() {
            v.add(bad_cursor());
        }
        at
    });
    (limit, at)
}

/// The next cursor: the last item's position when the page is full.
pub fn next_cursor<T>(items: &[T], limit: u32, position: impl Fn(&T) -> String) -> Option<String> {
    if items.len() == limit as usize {
        items.last().map(|last| encode_cursor(&position(last)))
    } else {
        None
    }
}

/// A page of `items` (fetched with `limit`), each shown as `view` makes it
/// and serialised once, ended early when it would pass [`MAX_PAGE_BYTES`];
/// the cursor is the `position` of the last item sent whenever more may
/// follow.
pub fn bounded_page<S, T: Serialize>(
    items: Vec<S>,
    limit: u32,
    position: impl Fn(&S) -> String,
    view: impl Fn(S) -> T,
) -> Result<Page<Box<RawValue>>, ApiError> {
    let full = items.len() == limit as usize;
    let mut out = Vec::with_capacity(items.len());
    let mut bytes = 0;
    let mut last = None;
    let mut cut = false;
    for item in items {
        let at = position(&item);
        let raw = serde_json::value::to_raw_value(&view(item))
            .map_err(|e| ApiError::internal(format!("serialising a page item: {e}")))?;
        let len = raw.get().len();
        if !out.is_empty() && bytes + len > MAX_PAGE_BYTES {
            cut = true;
            break;
        }
        bytes += len;
        last = Some(at);
        out.push(raw);
    }
    Ok(Page {
        items: out,
        next_cursor: if cut || full {
            last.map(|p| encode_cursor(&p))
        } else {
            None
        },
    })
}

/// Paging of a listing.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct PageParams {
    /// `nextCursor` of the previous page.
    pub(super) cursor: Option<String>,
    /// Page size.
    #[param(value_type = Option<u32>, minimum = 1, maximum = 1000, default = 100)]
    pub(super) limit: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_end_early_past_the_byte_bound() {
        let big = "x".repeat(MAX_PAGE_BYTES / 3);
        let items: Vec<(u32, String)> = (0..5).map(|i| (i, big.clone())).collect();
        let page = bounded_page(items, 10, |(i, _)| i.to_string(), |(_, s)| s).unwrap();
        assert_eq!(page.items.len(), 2);
        assert_eq!(page.next_cursor, Some(encode_cursor("1")));
        // Under the bound: the usual rule (a full page has a cursor).
        let page = bounded_page(vec![1, 2], 2, u32::to_string, |n| n).unwrap();
        assert_eq!(page.next_cursor, Some(encode_cursor("2")));
        let page = bounded_page(vec![1], 2, u32::to_string, |n| n).unwrap();
        assert_eq!(page.next_cursor, None);
        // One item over the bound still makes a page of one.
        let huge = "x".repeat(MAX_PAGE_BYTES + 1);
        let page = bounded_page(vec![huge.clone(), huge], 2, |_| "p".into(), |s| s).unwrap();
        assert_eq!(page.items.len(), 1);
        assert!(page.next_cursor.is_some());
    }
}
