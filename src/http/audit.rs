//! The audit trail over HTTP: `GET /v1/opscore/audit`, admin keys only.

use axum::extract::State;
use axum::Json;
use serde::Deserialize;
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::access::{perm, Require};
use super::extract::Query;
use super::paging::{next_cursor, page_query, Page};
use crate::domain::apikey::is_key_id;
use crate::domain::audit::{ActorType, AuditEntry, AuditKind};
use crate::domain::time::{parse_timestamp, Micros};
use crate::domain::{FieldError, Validator};
use crate::error::{ApiError, ErrorBody, Result};
use crate::http::state::AppState;
use crate::store::{ActorFilter, AuditQuery};

/// Longest `target` accepted (ids are at most 128 characters).
const MAX_TARGET_LEN: usize = 256;

/// Routes of this resource (see `http::openapi` for how to add one).
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(list))
}

/// Filters and paging of the audit trail. Values are read as text and
/// validated by hand, so every bad one is named in one 422.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct AuditParams {
    /// Only changes made by this key (its id), or by every actor of a
    /// type: `bootstrap`, `webhook`, `unsigned`, `system`.
    actor: Option<String>,
    /// Only this kind (`audit.key.created`), or every kind under a dotted
    /// prefix (`key`, `audit.agent`); the `audit.` is optional.
    kind: Option<String>,
    /// Only changes to this agent, session, workflow or key (by id).
    target: Option<String>,
    /// Only changes at or after this time (RFC 3339).
    since: Option<String>,
    /// Only changes before this time (RFC 3339).
    until: Option<String>,
    /// `nextCursor` of the previous page.
    cursor: Option<String>,
    /// Page size.
    #[param(value_type = Option<u32>, minimum = 1, maximum = 1000, default = 100)]
    limit: Option<String>,
}

/// An RFC 3339 time parameter in microseconds.
pub(super) fn time_param(v: &mut Validator, name: &str, raw: Option<&str>) -> Option<Micros> {
    let raw = raw?;
    let parsed = parse_timestamp(raw)
        .map(|t| t.timestamp_micros())
        .map_err(|m| FieldError::new(name, format!("must be an RFC 3339 time: {m}")));
    v.check(parsed)
}

impl AuditParams {
    /// The store query these parameters ask for, or the 422 naming each
    /// bad one.
    fn query(&self) -> Result<AuditQuery> {
        let mut v = Validator::default();
        let (limit, before) =
            page_query(&mut v, self.limit.as_deref(), self.cursor.as_deref(), |p| {
                p.parse::<i64>().ok()
            });
        let actor = self.actor.as_deref().and_then(|a| {
            let a = a.trim();
            if is_key_id(a) {
                Some(ActorFilter::Key(a.to_owned()))
            } else if let Some(t) = ActorType::parse(a).filter(|t| *t != ActorType::Key) {
                Some(ActorFilter::Type(t))
            } else {
                v.add(FieldError::new(
                    "actor",
                    "must be a key id (16 hex characters) or one of bootstrap, webhook, \
                     unsigned, system",
                ));
                None
            }
        });
        let kinds = self.kind.as_deref().and_then(|k| {
            let kinds = AuditKind::matching(k);
            if kinds.is_none() {
                let known: Vec<_> = AuditKind::ALL.iter().map(|k| k.as_str()).collect();
                v.add(FieldError::new(
                    "kind",
                    format!(
                        "must be an audit kind or a dotted prefix of some, such as key or \
                         audit.agent (known: {})",
                        known.join(", ")
                    ),
                ));
            }
            kinds
        });
        let target = self.target.as_deref().and_then(|t| {
            let t = t.trim();
            if t.is_empty() || t.len() > MAX_TARGET_LEN {
                v.add(FieldError::new(
                    "target",
                    format!("must be an agent, session, workflow or key id (1 to {MAX_TARGET_LEN} characters)"),
                ));
                None
            } else {
                Some(t.to_owned())
            }
        });
        let since = time_param(&mut v, "since", self.since.as_deref());
        let until = time_param(&mut v, "until", self.until.as_deref());
        v.finish().map_err(ApiError::validation)?;
        Ok(AuditQuery {
            actor,
            kinds,
            target,
            since,
            until,
            before,
            limit,
        })
    }
}

/// The audit trail: who changed what, newest first.
///
/// Every change made through the API is an entry: keys created and
/// revoked, workflow definitions stored, replaced and deleted, triggers,
/// cancels, state resets, leases, registrations and deregistrations. Each
/// names its actor (a key by id, name and role; the bootstrap key;
/// `webhook secret N`; an unsigned webhook; the service itself), its
/// target and the facts of the change, never a secret. The same entries
/// are `audit.*` events on the feed (admin keys only) and log lines with
/// target `audit`.
#[utoipa::path(
    get,
    operation_id = "listAuditEvents",
    path = "/v1/opscore/audit",
    tag = "audit",
    params(AuditParams),
    responses(
        (status = 200, description = "A page of audit entries", body = Page<AuditEntry>),
        (status = 401, description = "`missing_credentials`, `invalid_authorization`, `invalid_api_key`, `key_revoked`, `key_expired`", body = ErrorBody),
        (status = 403, description = "`forbidden`: admin keys only", body = ErrorBody),
        (status = 422, description = "`validation_failed`: a bad `actor`, `kind`, `target`, `since`, `until`, `limit` or `cursor`; or `invalid_query`", body = ErrorBody),
        (status = 503, description = "`storage_unavailable`", body = ErrorBody),
    ),
    security(("bearerAuth" = [])),
)]
async fn list(
    _: Require<perm::ReadAudit>,
    State(state): State<AppState>,
    Query(p): Query<AuditParams>,
) -> Result<Json<Page<AuditEntry>>> {
    let q = p.query()?;
    let items = state.store.list_audit(&q).await?;
    let next_cursor = next_cursor(&items, q.limit, |e| e.id.to_string());
    Ok(Json(Page { items, next_cursor }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::paging::DEFAULT_LIMIT;

    fn params(pairs: &[(&str, &str)]) -> AuditParams {
        let get = |k: &str| {
            pairs
                .iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        };
        AuditParams {
            actor: get("actor"),
            kind: get("kind"),
            target: get("target"),
            since: get("since"),
            until: get("until"),
            cursor: get("cursor"),
            limit: get("limit"),
        }
    }

    /// The fields a refused query names, in order.
    fn bad_fields(p: AuditParams) -> Vec<String> {
        let e = p.query().expect_err("refused");
        assert_eq!(e.code(), crate::error::ErrorCode::ValidationFailed);
        let debug = format!("{e:?}");
        [
            "actor", "kind", "target", "since", "until", "cursor", "limit",
        ]
        .into_iter()
        .filter(|f| debug.contains(&format!("field: \"{f}\"")))
        .map(str::to_owned)
        .collect()
    }

    #[test]
    fn filters_parse_and_bad_ones_are_named() {
        let q = params(&[
            ("actor", "0123456789abcdef"),
            ("kind", "key"),
            ("target", "a1"),
            ("since", "2026-01-01T00:00:00Z"),
            ("limit", "5"),
        ])
        .query()
        .expect("valid");
        assert_eq!(q.actor, Some(ActorFilter::Key("0123456789abcdef".into())));
        assert_eq!(q.kinds.map(|k| k.len()), Some(2));
        assert_eq!(q.target.as_deref(), Some("a1"));
        assert_eq!(q.since, Some(1_767_225_600_000_000));
        assert_eq!((q.until, q.before, q.limit), (None, None, 5));
        let q = params(&[("actor", "webhook")]).query().expect("valid");
        assert_eq!(q.actor, Some(ActorFilter::Type(ActorType::Webhook)));
        assert_eq!(q.limit, DEFAULT_LIMIT);

        let bad = params(&[
            ("actor", "key"),
            ("kind", "keys"),
            ("target", ""),
            ("since", "yesterday"),
            ("until", "2026-13-01T00:00:00Z"),
            ("cursor", "zz"),
            ("limit", "0"),
        ]);
        assert_eq!(
            bad_fields(bad),
            ["actor", "kind", "target", "since", "until", "cursor", "limit"]
        );
        assert_eq!(bad_fields(params(&[("kind", "ke")])), ["kind"]);
    }
}
