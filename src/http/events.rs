//! The change feed over HTTP: `GET /v1/opscore/events` as Server-Sent
//! Events, resumable with `Last-Event-ID`, and the parameters of Consul-style
//! blocking state reads (`?index=N&wait=30s`).

use std::collections::{HashSet, VecDeque};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use futures_util::{Stream, StreamExt};
use serde::Deserialize;
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::access::{perm, Require};
use super::extract::Query;
use super::keyring::{forbidden, StreamSlot};
use crate::domain::agent::AgentId;
use crate::domain::apikey::{Access, Permission};
use crate::domain::event::{Event, EventKind};
use crate::domain::{FieldError, Validator};
use crate::engine::feed::{Feed, Subscription};
use crate::error::{ApiError, ErrorBody, ErrorCode, Result};
use crate::http::state::AppState;

/// The feed's route.
pub const EVENTS_PATH: &str = "/v1/opscore/events";

/// Events read from the store per query while a client catches up.
const PAGE: u32 = 500;

/// Longest `wait` of a blocking read.
pub const MAX_WAIT: Duration = Duration::from_secs(600);

/// `wait` of a blocking read that gives an index but no wait.
pub const DEFAULT_WAIT: Duration = Duration::from_secs(300);

/// Routes of this resource (see `http::openapi` for how to add one).
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(stream))
}

/// Filters and resume point of the event stream.
#[derive(Deserialize, IntoParams)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Query, rename_all = "camelCase")]
struct FeedParams {
    /// Only events of these agents (comma-separated ids).
    agent_id: Option<String>,
    /// Only these kinds (comma-separated): `agent.registered`,
    /// `agent.deregistered`, `agent.state`, `agent.stale`, `agent.fresh`,
    /// `session.status`, `task.status`, and (admin keys only) the
    /// `audit.*` kinds of `GET /v1/opscore/audit`.
    kinds: Option<String>,
    /// Resume after this feed index (as `Last-Event-ID`, for clients that
    /// cannot set headers).
    #[param(value_type = Option<i64>, minimum = 0)]
    after: Option<String>,
}

/// Which events a client asked for (and may see).
struct Filter {
    agents: Option<HashSet<String>>,
    kinds: Option<HashSet<EventKind>>,
    /// Whether `audit.*` events are sent: admin keys only, as they name
    /// keys and who did what.
    audit: bool,
}

impl Filter {
    fn matches(&self, e: &Event) -> bool {
        (self.audit || !e.kind.is_audit())
            && self.kinds.as_ref().is_none_or(|k| k.contains(&e.kind))
            && self
                .agents
                .as_ref()
                .is_none_or(|a| e.agent_id.as_ref().is_some_and(|id| a.contains(id)))
    }
}

/// Parse a feed index (a `Last-Event-ID`, `after` or `index`).
fn parse_index(field: &str, raw: &str) -> std::result::Result<i64, FieldError> {
    raw.trim()
        .parse::<i64>()
        .ok()
        .filter(|n| *n >= 0)
        .ok_or_else(|| FieldError::new(field, "must be a feed index (a whole number, 0 or more)"))
}

/// Parse a wait such as `30s`, `500ms`, `5m` or a bare number of seconds,
/// at most [`MAX_WAIT`].
pub fn parse_wait(raw: &str) -> std::result::Result<Duration, FieldError> {
    let bad = || {
        FieldError::new(
            "wait",
            "must be a duration such as 500ms, 30s or 5m (at most 10m)",
        )
    };
    let raw = raw.trim();
    let (digits, unit_ms) = if let Some(n) = raw.strip_suffix("ms") {
        (n, 1)
    } else if let Some(n) = raw.strip_suffix('s') {
        (n, 1000)
    } else if let Some(n) = raw.strip_suffix('m') {
        (n, 60_000)
    } else {
        (raw, 1000)
    };
    let n: u64 = digits.parse().map_err(|_| bad())?;
    let d = Duration::from_millis(n.checked_mul(unit_ms).ok_or_else(bad)?);
    if d > MAX_WAIT {
        return Err(bad());
    }
    Ok(d)
}

/// The `index`/`wait` of a state read: `Some` makes it a blocking read.
pub fn blocking_params(index: Option<&str>, wait: Option<&str>) -> Result<Option<(i64, Duration)>> {
    let mut v = Validator::default();
    let index = index.and_then(|i| v.check(parse_index("index", i)));
    let wait = wait.and_then(|w| v.check(parse_wait(w)));
    v.finish().map_err(ApiError::validation)?;
    Ok(index.map(|i| (i, wait.unwrap_or(DEFAULT_WAIT))))
}

/// The change feed as Server-Sent Events.
///
/// Each event has `id: <index>`, `event: <kind>` and `data:` the event as
/// JSON (`{index, kind, at, agentId, sessionId, data}`); `audit.*` events
/// (whose `data` is the audit entry) go to admin keys only; a `: keep-alive`
/// comment comes every 15 s. Without `Last-Event-ID` or `after` the stream
/// starts after the current head (nothing old is replayed). Streams count
/// against the feed's subscriber limit and their key's stream cap, not the
/// request limit and deadline.
/// A stream ends when its API key is revoked or expires.
#[utoipa::path(
    get,
    operation_id = "streamEvents",
    path = "/v1/opscore/events",
    tag = "events",
    params(
        FeedParams,
        ("Last-Event-ID" = Option<i64>, Header, description = "Resume after this feed index (what EventSource sends on reconnect)"),
    ),
    responses(
        (status = 200, description = "The event stream", content_type = "text/event-stream", body = String),
        (status = 401, description = "`missing_credentials`, `invalid_authorization`, `invalid_api_key`, `key_revoked`, `key_expired`", body = ErrorBody),
        (status = 403, description = "`forbidden`: an agent key asking for agents outside its scope, or a key other than admin asking for `audit.*` kinds", body = ErrorBody),
        (status = 410, description = "`feed_index_expired`: the resume index is older than what is retained", body = ErrorBody),
        (status = 422, description = "`validation_failed`: a bad `agentId`, `kinds` (names the unknown kind), `after` or `Last-Event-ID`; or `invalid_query`", body = ErrorBody),
        (status = 429, description = "`too_many_streams`: this key holds all the streams and blocking reads it may (`OPSCORE_MAX_STREAMS_PER_KEY` or its `maxStreams`)", body = ErrorBody),
        (status = 503, description = "`overloaded`: the feed is at its subscriber limit; `storage_unavailable`", body = ErrorBody),
    ),
    security(("bearerAuth" = [])),
)]
async fn stream(
    caller: Require<perm::ReadEvents>,
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(p): Query<FeedParams>,
) -> Result<Sse<impl Stream<Item = std::result::Result<SseEvent, Infallible>>>> {
    let mut v = Validator::default();
    let agents = p.agent_id.as_deref().map(|list| {
        list.split(',')
            .filter(|s| !s.is_empty())
            .filter_map(|id| {
                v.check(
                    AgentId::parse(id)
                        .map(|a| a.as_str().to_owned())
                        .map_err(|m| FieldError::new("agentId", m)),
                )
            })
            .collect::<HashSet<_>>()
    });
    let kinds = p.kinds.as_deref().map(|list| {
        list.split(',')
            .filter(|s| !s.is_empty())
            .filter_map(|k| {
                v.check(EventKind::parse(k.trim()).ok_or_else(|| {
                    let known: Vec<_> = EventKind::ALL.iter().map(|k| k.as_str()).collect();
                    FieldError::new(
                        "kinds",
                        format!("unknown event kind '{k}' (known: {})", known.join(", ")),
                    )
                }))
            })
            .collect::<HashSet<_>>()
    });
    let last_event_id = headers
        .get("last-event-id")
        .map(|h| h.to_str().unwrap_or("invalid"));
    let resume = match (last_event_id, p.after.as_deref()) {
        (Some(h), _) => v.check(parse_index("Last-Event-ID", h)),
        (None, Some(a)) => v.check(parse_index("after", a)),
        (None, None) => None,
    };
    v.finish().map_err(ApiError::validation)?;
    // Audit entries name keys and who did what: admin keys only.
    let audit = caller.role().access(Permission::ReadAudit) == Access::All;
    if !audit
        && kinds
            .as_ref()
            .is_some_and(|k| k.iter().any(|k| k.is_audit()))
    {
        return Err(forbidden(caller.role(), Permission::ReadAudit));
    }
    // An agent key sees only its own agents' events (every event about an
    // agent, sessions and tasks included, carries its agent id).
    let agents = match (caller.agent_scope(), agents) {
        (None, agents) => agents,
        (Some(scope), None) => Some(scope.iter().cloned().collect()),
        (Some(scope), Some(asked)) => {
            if let Some(outside) = asked.iter().find(|a| !scope.contains(a)) {
                return Err(ApiError::new(
                    ErrorCode::Forbidden,
                    format!(
                        "This API key may not read events of agent {outside} (outside its scope)"
                    ),
                ));
            }
            Some(asked)
        }
    };

    // One key cannot take every slot: 429 past its own share.
    let slot = state.keys.open_stream(&caller)?;
    let feed = state.feed.clone();
    // Every subscriber slot is taken: refused at once (503 overloaded).
    let sub = feed.subscribe().ok_or_else(ApiError::overloaded)?;
    // Subscribed first: whatever commits after the bounds are read arrives
    // through the subscription.
    let bounds = feed.store().event_bounds().await?;
    let last = match resume {
        Some(n) => {
            if n < bounds.pruned_through {
                return Err(ApiError::new(
                    ErrorCode::FeedIndexExpired,
                    format!(
                        "Events up to index {} are no longer retained; resume from {} or later, \
                         or reconnect without Last-Event-ID",
                        bounds.pruned_through, bounds.pruned_through
                    ),
                ));
            }
            n
        }
        // "From now" means from what is committed now, which the tailer
        // may not have read yet.
        None => bounds.head.max(feed.head()),
    };
    let cursor = Cursor {
        feed,
        sub,
        last,
        filter: Filter {
            agents,
            kinds,
            audit,
        },
        backlog: VecDeque::new(),
        catching_up: resume.is_some(),
        _slot: slot,
    };
    // A stream outlives the request that authenticated it: it ends when
    // its key is revoked or expires (a reconnect then gets the 401 that
    // says which).
    let (keys, principal) = (state.keys.clone(), caller.0);
    let withdrawn = async move {
        let refused = keys.key_withdrawn(&principal).await;
        tracing::info!(
            key_id = principal.key_id().unwrap_or_default(),
            reason = refused.code().as_str(),
            "event stream closed: its API key is no longer accepted"
        );
    };
    let events =
        futures_util::stream::unfold(
            cursor,
            |mut c| async move { c.next().await.map(|e| (Ok(e), c)) },
        )
        .take_until(withdrawn);
    Ok(Sse::new(events).keep_alive(
        KeepAlive::new()
            .interval(Duration::from_secs(15))
            .text("keep-alive"),
    ))
}

/// One client's position in the feed.
struct Cursor {
    feed: Feed,
    sub: Subscription,
    /// Index of the last event passed (sent or filtered out).
    last: i64,
    filter: Filter,
    backlog: VecDeque<Arc<Event>>,
    /// Read from the store rather than the broadcast: on resume, and after
    /// falling behind the broadcast buffer.
    catching_up: bool,
    /// The key's stream slot, held as long as the stream.
    _slot: StreamSlot,
}

impl Cursor {
    /// The next event to send; `None` ends the stream (shutdown, or the
    /// store failing while catching up: the client resumes with its
    /// `Last-Event-ID`).
    async fn next(&mut self) -> Option<SseEvent> {
        use tokio::sync::broadcast::error::RecvError;
        loop {
            if let Some(e) = self.backlog.pop_front() {
                if e.index <= self.last {
                    continue;
                }
                self.last = e.index;
                if self.filter.matches(&e) {
                    return Some(to_sse(&e));
                }
                continue;
            }
            if self.catching_up {
                match self.feed.store().read_events(self.last, PAGE).await {
                    Ok(events) => {
                        self.catching_up = events.len() == PAGE as usize;
                        self.backlog.extend(events.into_iter().map(Arc::new));
                        continue;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "feed client could not catch up; closing its stream");
                        return None;
                    }
                }
            }
            tokio::select! {
                _ = self.feed.stopping().cancelled() => return None,
                ev = self.sub.rx.recv() => match ev {
                    Ok(e) => self.backlog.push_back(e),
                    Err(RecvError::Lagged(_)) => self.catching_up = true,
                    Err(RecvError::Closed) => return None,
                },
            }
        }
    }
}

fn to_sse(e: &Event) -> SseEvent {
    let data = serde_json::to_string(e).unwrap_or_else(|_| "{}".into());
    SseEvent::default()
        .id(e.index.to_string())
        .event(e.kind.as_str())
        .data(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_parse_with_units_and_a_cap() {
        assert_eq!(parse_wait("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_wait("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_wait("5m").unwrap(), Duration::from_secs(300));
        assert_eq!(parse_wait("7").unwrap(), Duration::from_secs(7));
        assert_eq!(parse_wait("10m").unwrap(), MAX_WAIT);
        for bad in [
            "",
            "11m",
            "-1s",
            "1h",
            "abc",
            "1.5s",
            "99999999999999999999m",
        ] {
            assert!(parse_wait(bad).is_err(), "{bad}");
        }
    }
}
