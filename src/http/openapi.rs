//! The OpenAPI 3.1 document, generated from the code.
//!
//! Routes are declared once: each handler carries a `#[utoipa::path(...)]`
//! attribute (method, path, parameters, bodies, every status it can answer
//! with), and each resource's `router()` adds it with
//! `.routes(utoipa_axum::routes!(handler))`. That one call registers the
//! handler in the axum router *and* its operation in this document, so the
//! two cannot drift apart. `tests/it/openapi.rs` checks it anyway: every
//! (method, path) the real router answers must be in the document and every
//! documented operation must be answered.
//!
//! # Adding a route
//!
//! 1. Write the handler in its resource's file (`http/events.rs` for the
//!    feed) with `#[utoipa::path(get, path = "/v1/opscore/events", tag =
//!    "...", params(...), responses(...), security(("bearerAuth" = [])))]`.
//!    Path parameters are named as on the wire (`{agentId}`); query
//!    parameters are a `#[derive(Deserialize, IntoParams)]` struct named in
//!    `params(...)`; list every status the handler can return, errors with
//!    `body = ErrorBody`. Types that appear in bodies derive `ToSchema`.
//! 2. Add it to the resource's `router()`:
//!    `.routes(routes!(handler))` (handlers that share a path go in one
//!    `routes!`), and merge that router in `http::api()`.
//! 3. Never call `.route(...)` with a plain axum `MethodRouter`: the route
//!    would be served but undocumented, and `tests/it/openapi.rs` fails.
//!
//! What is the same for every operation is added here, after the fact, by
//! [`spec`]: the `X-Request-Id` header on every response, `Retry-After` on
//! every 503, `WWW-Authenticate` on every 401, and the 500 and 503 answers
//! any route can give (internal error; overload, request timeout, storage
//! outage).

use std::sync::OnceLock;

use utoipa::openapi::header::HeaderBuilder;
use utoipa::openapi::path::Operation;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ObjectBuilder, OpenApi, Ref, RefOr, ResponseBuilder, Type};
use utoipa::{Modify, OpenApi as _};

use crate::error::ErrorBody;

/// Name of the bearer API key scheme in `security(...)`.
pub const BEARER: &str = "bearerAuth";
/// Name of the AgentKit webhook signature scheme in `security(...)`.
pub const SIGNATURE: &str = "agentkitSignature";

#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "Ops-Core",
        description = "The control plane for fleets of AI agents: registration, state reports, \
                       state reads and history, workflow definitions, sessions and their tasks.\n\n\
                       Every error is `{detail, code}` (plus `errors` for validation failures); \
                       every response carries `X-Request-Id`.",
        license(name = "Apache-2.0", identifier = "Apache-2.0"),
    ),
    tags(
        (name = "agents", description = "Registration (the AgentKit webhook) and agent reads"),
        (name = "states", description = "State reports and reads"),
        (name = "workflows", description = "Workflow definitions and triggers"),
        (name = "sessions", description = "Workflow sessions and their tasks"),
        (name = "events", description = "The change feed: every change an operator might watch, numbered"),
        (name = "keys", description = "API keys with roles (admin only)"),
        (name = "audit", description = "Who changed what: the audit trail (admin only)"),
        (name = "ops", description = "Liveness, readiness, metrics and this documentation"),
        (name = "dashboard", description = "The live dashboard's page and files (no key; the page asks for one)"),
    ),
    components(schemas(ErrorBody, crate::domain::FieldError)),
    modifiers(&SecuritySchemes),
)]
struct ApiDoc;

struct SecuritySchemes;

impl Modify for SecuritySchemes {
    fn modify(&self, openapi: &mut OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            BEARER,
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "API key: `Authorization: Bearer <OPSCORE_API_KEY>` (the scheme word is \
                         case-insensitive)",
                    ))
                    .build(),
            ),
        );
        components.add_security_scheme(
            SIGNATURE,
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                "X-AgentKit-Signature",
                "AgentKit's webhook signature: lowercase hex HMAC-SHA256, keyed with \
                 OPSCORE_WEBHOOK_SECRET, of `<X-AgentKit-Timestamp> + \".\" + <raw body>`. \
                 Needs the X-AgentKit-Timestamp header too (Unix seconds or RFC 3339, within \
                 OPSCORE_WEBHOOK_TOLERANCE_SECS of the server clock).",
            ))),
        );
    }
}

/// The document before the per-route operations are merged in.
pub fn base() -> OpenApi {
    ApiDoc::openapi()
}

/// The complete document: every route of [`super::api`], with the parts
/// common to all operations filled in.
pub fn spec() -> OpenApi {
    let (_, mut doc) = super::api().split_for_parts();
    for (path, item) in doc.paths.paths.iter_mut() {
        let ops = [
            &mut item.get,
            &mut item.put,
            &mut item.post,
            &mut item.delete,
            &mut item.patch,
            &mut item.head,
            &mut item.options,
            &mut item.trace,
        ];
        for op in ops.into_iter().flatten() {
            complete(path, op);
        }
    }
    doc
}

/// The document as JSON, built once.
pub fn spec_json() -> &'static str {
    static JSON: OnceLock<String> = OnceLock::new();
    JSON.get_or_init(|| {
        // Serialising plain data structures cannot fail; an empty object
        // would still be valid JSON if it somehow did.
        spec().to_json().unwrap_or_else(|_| "{}".to_owned())
    })
}

fn error_response(description: &str) -> RefOr<utoipa::openapi::Response> {
    RefOr::T(
        ResponseBuilder::new()
            .description(description)
            .content(
                "application/json",
                utoipa::openapi::ContentBuilder::new()
                    .schema(Some(Ref::from_schema_name("ErrorBody")))
                    .build(),
            )
            .build(),
    )
}

fn string_header(description: &str) -> utoipa::openapi::header::Header {
    HeaderBuilder::new()
        .schema(ObjectBuilder::new().schema_type(Type::String))
        .description(Some(description))
        .build()
}

/// Fill in what every operation shares.
fn complete(path: &str, op: &mut Operation) {
    let responses = &mut op.responses.responses;
    responses.entry("500".to_owned()).or_insert_with(|| {
        error_response("`internal_error`: a failure of the server (logged, never detailed)")
    });
    // /health is exempt from the concurrency limit and touches nothing.
    if path != "/health" {
        const SHED: &str = "`overloaded` (at the concurrent request limit) or \
                            `request_timeout` (past the request deadline)";
        match responses.get_mut("503") {
            Some(RefOr::T(r)) => r.description = format!("{}; {SHED}", r.description),
            Some(RefOr::Ref(_)) => {}
            None => {
                responses.insert("503".to_owned(), error_response(SHED));
            }
        }
    }
    for (status, response) in responses.iter_mut() {
        let RefOr::T(response) = response else {
            continue;
        };
        response.headers.insert(
            "X-Request-Id".to_owned(),
            string_header("The caller's own id if it sent a sane one, else a new UUID"),
        );
        match status.as_str() {
            "503" => {
                response.headers.insert(
                    "Retry-After".to_owned(),
                    string_header("Seconds to wait before retrying (always 1)"),
                );
            }
            "401" => {
                response
                    .headers
                    .insert("WWW-Authenticate".to_owned(), string_header("`Bearer`"));
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_operation_has_request_id_and_503_retry_after() {
        let doc = spec();
        let json: serde_json::Value = serde_json::from_str(spec_json()).unwrap();
        assert!(json["openapi"].as_str().unwrap().starts_with("3.1"));
        let mut seen = 0;
        for (path, item) in &doc.paths.paths {
            for op in [&item.get, &item.post, &item.delete].into_iter().flatten() {
                seen += 1;
                for (status, r) in &op.responses.responses {
                    let RefOr::T(r) = r else { continue };
                    assert!(r.headers.contains_key("X-Request-Id"), "{path} {status}");
                    if status == "503" {
                        assert!(r.headers.contains_key("Retry-After"), "{path}");
                    }
                }
            }
        }
        assert!(seen > 10, "only {seen} operations");
    }
}
