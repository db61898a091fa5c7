//! The live dashboard: one HTML page and its script, style sheet and icon,
//! embedded in the binary (no CDN, no build step) and served without a key.
//! The files hold no data; every data call the page makes carries the API
//! key the operator types into it, exactly like any other client.
//!
//! The page runs under a strict Content-Security-Policy (`default-src
//! 'self'`, no inline script or style), so all behaviour lives in
//! `dashboard/app.js` and all styling in `dashboard/app.css`.

use std::sync::LazyLock;

use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::extract::Path;
use crate::error::{ApiError, ErrorBody, ErrorCode};
use crate::http::state::AppState;

/// The policy every dashboard response carries. `connect-src 'self'` is what
/// lets the page call the API (and read the event stream) on its own origin
/// and nowhere else; `frame-ancestors 'none'` keeps it out of other sites'
/// frames.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; \
     style-src 'self'; img-src 'self'; connect-src 'self'; object-src 'none'; \
     base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// An embedded file and how to serve it.
struct Asset {
    body: &'static [u8],
    content_type: &'static str,
    /// A strong validator derived from the content: it changes exactly when
    /// a new binary ships a different file.
    etag: String,
}

impl Asset {
    fn new(body: &'static [u8], content_type: &'static str) -> Self {
        let digest = Sha256::digest(body);
        Self {
            body,
            content_type,
            etag: format!("\"{}\"", hex::encode(&digest[..12])),
        }
    }
}

static INDEX: LazyLock<Asset> = LazyLock::new(|| {
    Asset::new(
        include_bytes!("dashboard/index.html"),
        "text/html; charset=utf-8",
    )
});

const JS: &str = "text/javascript; charset=utf-8";

/// The files under `/dashboard/`: the page's ES modules, its style sheet
/// and its icon.
static ASSETS: LazyLock<[(&str, Asset); 8]> = LazyLock::new(|| {
    [
        ("app.js", Asset::new(include_bytes!("dashboard/app.js"), JS)),
        ("api.js", Asset::new(include_bytes!("dashboard/api.js"), JS)),
        ("dom.js", Asset::new(include_bytes!("dashboard/dom.js"), JS)),
        (
            "panel.js",
            Asset::new(include_bytes!("dashboard/panel.js"), JS),
        ),
        ("sse.js", Asset::new(include_bytes!("dashboard/sse.js"), JS)),
        (
            "sessions.js",
            Asset::new(include_bytes!("dashboard/sessions.js"), JS),
        ),
        (
            "app.css",
            Asset::new(
                include_bytes!("dashboard/app.css"),
                "text/css; charset=utf-8",
            ),
        ),
        (
            "icon.svg",
            Asset::new(include_bytes!("dashboard/icon.svg"), "image/svg+xml"),
        ),
    ]
});

/// Routes of the dashboard: the page at `/` and its assets under
/// `/dashboard/`.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(index))
        .routes(routes!(asset))
}

/// The live dashboard page (no key needed: the page asks for one).
#[utoipa::path(
    get,
    operation_id = "getDashboard",
    path = "/",
    tag = "dashboard",
    responses((status = 200, description = "The page; never cached",
               content_type = "text/html; charset=utf-8", body = String)),
)]
async fn index() -> Response {
    // The page is tiny and names its assets by fixed URLs: never cache it,
    // so a new binary's page is always the one that loads.
    serve(&INDEX, None, "no-store")
}

/// One of the dashboard's files: its script modules, style sheet and icon.
///
/// Revalidated on every load (`no-cache`) and answered with 304 while its
/// ETag matches: a fresh binary's files are picked up at once, yet an
/// unchanged file costs one empty response.
#[utoipa::path(
    get,
    operation_id = "getDashboardAsset",
    path = "/dashboard/{file}",
    tag = "dashboard",
    params(("file" = String, Path, description = "File name, e.g. app.js, app.css, icon.svg")),
    responses(
        (status = 200, description = "The file, with an ETag", body = String,
         content_type = "text/javascript; charset=utf-8"),
        (status = 304, description = "Unchanged since the ETag in If-None-Match"),
        (status = 404, description = "No such file (`file_not_found`)", body = ErrorBody),
    ),
)]
async fn asset(Path(file): Path<String>, headers: HeaderMap) -> Result<Response, ApiError> {
    let asset = ASSETS
        .iter()
        .find(|(name, _)| *name == file)
        .map(|(_, a)| a)
        .ok_or_else(|| {
            ApiError::new(
                ErrorCode::FileNotFound,
                format!("No such dashboard file: {file}"),
            )
        })?;
    Ok(serve(asset, Some(&headers), "no-cache"))
}

/// The asset, or 304 when the request already holds this version of it.
fn serve(asset: &Asset, request: Option<&HeaderMap>, cache_control: &'static str) -> Response {
    let etag = HeaderValue::from_str(&asset.etag).unwrap_or(HeaderValue::from_static("\"\""));
    let fresh = request
        .and_then(|h| h.get(header::IF_NONE_MATCH))
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| etag_matches(v, &asset.etag));
    let mut resp = if fresh {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static(asset.content_type),
            )],
            asset.body,
        )
            .into_response()
    };
    let h = resp.headers_mut();
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static(cache_control),
    );
    if request.is_some() {
        h.insert(header::ETAG, etag);
    }
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    resp
}

/// `If-None-Match` holds `*` or a comma-separated list of (possibly weak)
/// entity tags; weak comparison is the one GET revalidation uses.
fn etag_matches(if_none_match: &str, etag: &str) -> bool {
    if_none_match
        .split(',')
        .map(str::trim)
        .any(|t| t == "*" || t.strip_prefix("W/").unwrap_or(t) == etag)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etags_compare_weakly_and_in_lists() {
        let tag = "\"abc\"";
        assert!(etag_matches("\"abc\"", tag));
        assert!(etag_matches("W/\"abc\"", tag));
        assert!(etag_matches("\"x\", \"abc\"", tag));
        assert!(etag_matches("*", tag));
        assert!(!etag_matches("\"abd\"", tag));
        assert!(!etag_matches("abc", tag));
    }

    #[test]
    fn embedded_files_reference_only_their_own_assets() {
        let html = std::str::from_utf8(INDEX.body).unwrap_or_default();
        for asset in [
            "/dashboard/app.js",
            "/dashboard/app.css",
            "/dashboard/icon.svg",
        ] {
            assert!(html.contains(asset), "index.html does not load {asset}");
        }
        // Every module the page imports, directly or not, is served.
        for (name, a) in ASSETS.iter().filter(|(n, _)| n.ends_with(".js")) {
            let js = std::str::from_utf8(a.body).unwrap_or_default();
            for import in js.lines().filter_map(|l| l.split(" from './").nth(1)) {
                let target = import.split('\'').next().unwrap_or_default();
                assert!(
                    ASSETS.iter().any(|(n, _)| *n == target),
                    "{name} imports {target}, which is not served"
                );
            }
        }
        // The policy forbids inline code; the page must not rely on any.
        assert!(!html.contains("<script>"), "inline script in index.html");
        assert!(!html.contains("<style"), "inline style in index.html");
        assert!(
            !html.contains("style="),
            "inline style attribute in index.html"
        );
        assert!(
            !html
                .split_whitespace()
                .any(|w| w.starts_with("on") && w.contains('=')),
            "inline event handler in index.html"
        );
        for (name, a) in ASSETS.iter().filter(|(n, _)| n.ends_with(".js")) {
            let js = std::str::from_utf8(a.body).unwrap_or_default();
            for sink in [
                "innerHTML",
                "outerHTML",
                "insertAdjacentHTML",
                "document.write",
                "eval(",
            ] {
                assert!(
                    !js.contains(sink),
                    "{name} uses {sink}: insert text, not HTML"
                );
            }
        }
    }
}
