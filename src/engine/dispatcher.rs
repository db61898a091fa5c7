//! The dispatcher: a background loop that claims due task runs from the
//! database and sends them to the agent framework (docs/api.md §1.7).
//!
//! Claims are leased, so on PostgreSQL any number of replicas can run this
//! loop over one database (each skips rows another holds, and a stopped
//! replica's claims come back when the lease ends). On SQLite run one
//! dispatcher per database file. Delivery results are recorded with the same
//! claim, so a result from a dispatcher that lost its lease changes nothing.

use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::header::{HeaderMap, RETRY_AFTER};
use reqwest::StatusCode;
use serde::Serialize;
use serde_json::value::RawValue;
use tokio::sync::{Notify, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::config::{DispatchConfig, DispatchTarget};
use crate::domain::time::{now_micros, Micros};
use crate::domain::trace::{TraceContext, TRACEPARENT, TRACESTATE};
use crate::metrics::{DispatchResult, Metrics};
use crate::store::{ClaimedRun, DispatchOutcome, Store};
use crate::telemetry::context::{self, Kind};
use crate::telemetry::otel;

/// The body sent for a task (docs/api.md §1.7).
#[derive(Serialize)]
struct TaskMessage<'a> {
    #[serde(rename = "senderId")]
    sender_id: &'static str,
    #[serde(rename = "messageType")]
    message_type: &'static str,
    payload: &'a RawValue,
    #[serde(rename = "sessionContext")]
    session_context: SessionContext<'a>,
    task_name: &'a str,
    opscore_session_id: &'a str,
    opscore_task_id: &'a str,
    /// The outputs of the tasks it depends on (docs/api.md §3.4).
    #[serde(skip_serializing_if = "Option::is_none")]
    inputs: Option<&'a RawValue>,
}

#[derive(Serialize)]
struct SessionContext<'a> {
    #[serde(rename = "sessionId")]
    session_id: &'a str,
}

/// Build the HTTP client dispatch uses.
pub fn http_client(cfg: &DispatchConfig) -> reqwest::Client {
    reqwest::Client::builder()
        .connect_timeout(cfg.connect_timeout)
        .timeout(cfg.request_timeout)
        .pool_max_idle_per_host(cfg.concurrency)
        .build()
        .unwrap_or_default()
}

/// Start the dispatcher. It runs until `stop` is cancelled, then waits for
/// the deliveries it has in flight before returning.
pub fn spawn(
    store: Arc<dyn Store>,
    cfg: DispatchConfig,
    wake: Arc<Notify>,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    let owner = format!("{}-{}", hostname(), uuid::Uuid::new_v4().simple());
    let ctx = Ctx {
        store,
        client: http_client(&cfg),
        metrics,
        owner,
    };
    tokio::spawn(run(ctx, cfg, wake, stop))
}

/// What every delivery needs, shared by the loop and its tasks.
#[derive(Clone)]
struct Ctx {
    store: Arc<dyn Store>,
    client: reqwest::Client,
    metrics: Arc<Metrics>,
    owner: String,
}

fn hostname() -> String {
    std::env::var("HOSTNAME").unwrap_or_else(|_| "opscore".into())
}

async fn run(ctx: Ctx, cfg: DispatchConfig, wake: Arc<Notify>, stop: CancellationToken) {
    let (store, owner) = (&ctx.store, &ctx.owner);
    let target = match &cfg.target {
        DispatchTarget::AgentKit(url) => url.as_str().to_owned(),
        DispatchTarget::Direct => "direct (each agent's contactEndpoint)".to_owned(),
    };
    tracing::info!(owner = %owner, target = %target, "dispatcher started");
    let permits = Arc::new(Semaphore::new(cfg.concurrency));
    let mut deliveries = JoinSet::new();
    let mut last_sweep: Option<Instant> = None;
    let mut pause = Duration::ZERO;
    let lease_us = i64::try_from(cfg.lease().as_micros()).unwrap_or(i64::MAX / 2);
    while !stop.is_cancelled() {
        while deliveries.try_join_next().is_some() {}
        if !pause.is_zero() {
            tokio::select! {
                () = tokio::time::sleep(pause) => {}
                () = stop.cancelled() => break,
            }
        }
        let now = now_micros();
        if last_sweep.is_none_or(|t| t.elapsed() >= cfg.poll_interval) {
            last_sweep = Some(Instant::now());
            match store.expire_overdue(now).await {
                Ok(n) if n > 0 => {
                    tracing::info!(runs = n, "expired overdue attempts and stale claims")
                }
                Ok(_) => {}
                Err(e) => {
                    pause = next_pause(pause);
                    tracing::warn!(error = %e, pause_ms = pause.as_millis() as u64, "dispatcher paused: storage error");
                    continue;
                }
            }
        }
        let free = permits.available_permits();
        let claimed = if free == 0 {
            Vec::new()
        } else {
            match store
                .claim_due_runs(owner, now, now + lease_us, free as u32, cfg.allow_unknown)
                .await
            {
                Ok(c) => c,
                Err(e) => {
                    pause = next_pause(pause);
                    tracing::warn!(error = %e, pause_ms = pause.as_millis() as u64, "dispatcher paused: storage error");
                    continue;
                }
            }
        };
        pause = Duration::ZERO;
        let busy = claimed.len() == free;
        for run in claimed {
            let Ok(permit) = permits.clone().acquire_owned().await else {
                break;
            };
            let (ctx, target, wake) = (ctx.clone(), cfg.target.clone(), wake.clone());
            let span = tracing::info_span!(
                "dispatch",
                run_id = %run.run_id,
                session_id = %run.session_id,
                agent_id = %run.agent_id,
                attempt = run.attempt,
                trace_id = tracing::field::Empty,
                otel.kind = tracing::field::Empty,
                otel.name = tracing::field::Empty,
                otel.status_code = tracing::field::Empty,
            );
            // A span of the triggering request's trace (stored with the
            // session), whose id goes out as the traceparent.
            let trace = context::start(&span, run.trace.as_ref(), Kind::Client, || {
                "dispatch".to_owned()
            });
            deliveries.spawn(
                async move {
                    deliver(&ctx, &target, &run, &trace).await;
                    drop(permit);
                    // A freed slot may let another due run go out.
                    wake.notify_one();
                }
                .instrument(span),
            );
        }
        if !busy {
            tokio::select! {
                () = wake.notified() => {}
                () = tokio::time::sleep(cfg.poll_interval) => {}
                () = stop.cancelled() => break,
            }
        }
    }
    // Finish what was sent so its result is recorded; each request is
    // bounded by the client's timeout.
    while deliveries.join_next().await.is_some() {}
    tracing::info!("dispatcher stopped");
}

fn next_pause(p: Duration) -> Duration {
    (p * 2).clamp(Duration::from_millis(100), Duration::from_secs(5))
}

/// Where a run goes. An agent id that is not one addressable path segment
/// (`.` or `..`, refused at registration now, but possibly stored by an
/// older version) has no URL: URL parsers resolve those segments, even
/// percent-encoded, so the task would reach another route.
pub fn target_url(target: &DispatchTarget, run: &ClaimedRun) -> Result<String, String> {
    match target {
        DispatchTarget::AgentKit(base) => {
            crate::domain::agent::AgentId::parse(&run.agent_id)
                .map_err(|why| format!("agent id '{}' cannot be addressed: {why}", run.agent_id))?;
            Ok(format!(
                "{}/agents/{}/run",
                base.as_str().trim_end_matches('/'),
                crate::domain::path_segment(&run.agent_id)
            ))
        }
        DispatchTarget::Direct => Ok(run.contact_endpoint.clone()),
    }
}

/// The Idempotency-Key of one attempt: the run id and the attempt number, so
/// a resend of the same attempt (after a dispatcher crash) repeats it and a
/// retry does not.
pub fn idempotency_key(run: &ClaimedRun) -> String {
    format!("{}:{}", run.run_id, run.attempt)
}

async fn deliver(ctx: &Ctx, target: &DispatchTarget, run: &ClaimedRun, trace: &TraceContext) {
    let started = Instant::now();
    let outcome = send(&ctx.client, target, run, trace).await;
    let elapsed = started.elapsed();
    ctx.metrics.observe_dispatch(
        match outcome {
            DispatchOutcome::Accepted => DispatchResult::Accepted,
            DispatchOutcome::Retry { .. } => DispatchResult::Retry,
            DispatchOutcome::Fail { .. } => DispatchResult::Failed,
        },
        elapsed,
    );
    let latency_ms = elapsed.as_secs_f64() * 1000.0;
    match &outcome {
        DispatchOutcome::Accepted => {
            tracing::info!(run_id = %run.run_id, session_id = %run.session_id, agent_id = %run.agent_id, attempt = run.attempt, latency_ms, "task dispatched")
        }
        DispatchOutcome::Retry { error, .. } | DispatchOutcome::Fail { error } => {
            if otel::exporting() {
                tracing::Span::current().record("otel.status_code", "error");
            }
            tracing::warn!(run_id = %run.run_id, session_id = %run.session_id, agent_id = %run.agent_id, attempt = run.attempt, latency_ms, error = %error, "dispatch failed")
        }
    }
    // Recording must not be lost to a short database hiccup; if it is, the
    // lease runs out and the same attempt is sent again with the same key.
    let mut wait = Duration::from_millis(100);
    for _ in 0..5 {
        match ctx
            .store
            .record_dispatch(&run.run_id, &run.claim, run.attempt, now_micros(), &outcome)
            .await
        {
            Ok(()) => return,
            Err(e) => {
                tracing::warn!(run_id = %run.run_id, error = %e, "could not record dispatch result; retrying");
                tokio::time::sleep(wait).await;
                wait *= 2;
            }
        }
    }
}

async fn send(
    client: &reqwest::Client,
    target: &DispatchTarget,
    run: &ClaimedRun,
    trace: &TraceContext,
) -> DispatchOutcome {
    let empty = RawValue::NULL;
    let payload = serde_json::from_str::<&RawValue>(&run.payload).unwrap_or(empty);
    let body = TaskMessage {
        sender_id: "opscore",
        message_type: "workflow_task",
        payload,
        session_context: SessionContext {
            session_id: &run.session_id,
        },
        task_name: &run.task_name,
        opscore_session_id: &run.session_id,
        opscore_task_id: &run.run_id,
        inputs: run
            .inputs
            .as_deref()
            .and_then(|i| serde_json::from_str::<&RawValue>(i).ok()),
    };
    let url = match target_url(target, run) {
        Ok(url) => url,
        Err(error) => return DispatchOutcome::Fail { error },
    };
    let mut request = client
        .post(url)
        .header("Idempotency-Key", idempotency_key(run))
        .header(TRACEPARENT, trace.parent.to_string());
    if let Some(state) = &trace.state {
        request = request.header(TRACESTATE, state);
    }
    let result = request.json(&body).send().await;
    match result {
        Ok(resp) => {
            let status = resp.status();
            let not_before = retry_after(resp.headers(), now_micros());
            let text = if status.is_success() {
                String::new()
            } else {
                resp.text().await.unwrap_or_default()
            };
            classify(status, &text, not_before)
        }
        Err(e) => DispatchOutcome::Retry {
            error: if e.is_timeout() {
                "dispatch timed out".to_owned()
            } else if e.is_connect() {
                format!(
                    "could not connect to the dispatch target: {}",
                    root_cause(&e)
                )
            } else {
                format!("dispatch request failed: {}", root_cause(&e))
            },
            not_before: None,
        },
    }
}

fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

/// What a response means: 2xx accepted; 408, 429 and 5xx retried (not
/// before `Retry-After`); any other status refused for good.
pub fn classify(status: StatusCode, body: &str, not_before: Option<Micros>) -> DispatchOutcome {
    if status.is_success() {
        return DispatchOutcome::Accepted;
    }
    let snippet: String = body.chars().take(300).collect();
    let error = format!("dispatch target answered {status}: {}", snippet.trim());
    if status.is_server_error()
        || status == StatusCode::REQUEST_TIMEOUT
        || status == StatusCode::TOO_MANY_REQUESTS
    {
        DispatchOutcome::Retry { error, not_before }
    } else {
        DispatchOutcome::Fail { error }
    }
}

/// `Retry-After` as an instant: delay-seconds or an HTTP date, capped at an
/// hour so a confused peer cannot park a task forever.
pub fn retry_after(headers: &HeaderMap, now: Micros) -> Option<Micros> {
    const CAP_US: i64 = 3600 * 1_000_000;
    let raw = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    let delay_us = if let Ok(secs) = raw.parse::<u64>() {
        i64::try_from(secs.saturating_mul(1_000_000)).unwrap_or(CAP_US)
    } else {
        let at = chrono::DateTime::parse_from_rfc2822(raw).ok()?;
        (at.timestamp_micros() - now).max(0)
    };
    Some(now + delay_us.min(CAP_US))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The agent id is one segment of the AgentKit URL; an id that cannot
    /// be one (stored before "." and ".." were refused) is not sent at all.
    #[test]
    fn agentkit_url_carries_the_id_as_one_segment() {
        let base = DispatchTarget::AgentKit("http://kit:8000/v1/".parse().expect("url"));
        let run = |id: &str| ClaimedRun {
            run_id: "r".into(),
            session_id: "s".into(),
            task_name: "t".into(),
            agent_id: id.into(),
            contact_endpoint: String::new(),
            payload: "{}".into(),
            attempt: 1,
            claim: "c".into(),
            trace: None,
            inputs: None,
        };
        assert_eq!(
            target_url(&base, &run("a1:x.y")).as_deref(),
            Ok("http://kit:8000/v1/agents/a1:x.y/run")
        );
        for id in [".", "..", "a/b", ""] {
            assert!(target_url(&base, &run(id)).is_err(), "{id:?}");
        }
    }

    #[test]
    fn classification() {
        assert!(matches!(
            classify(StatusCode::ACCEPTED, "", None),
            DispatchOutcome::Accepted
        ));
        for s in [500, 502, 503, 408, 429] {
            let st = StatusCode::from_u16(s).unwrap();
            assert!(
                matches!(classify(st, "x", None), DispatchOutcome::Retry { .. }),
                "{s}"
            );
        }
        for s in [400, 401, 404, 409, 422] {
            let st = StatusCode::from_u16(s).unwrap();
            assert!(
                matches!(classify(st, "x", None), DispatchOutcome::Fail { .. }),
                "{s}"
            );
        }
    }

    #[test]
    fn retry_after_forms() {
        let now = 1_700_000_000_000_000;
        let mut h = HeaderMap::new();
        assert_eq!(retry_after(&h, now), None);
        h.insert(RETRY_AFTER, "7".parse().unwrap());
        assert_eq!(retry_after(&h, now), Some(now + 7_000_000));
        h.insert(RETRY_AFTER, "999999999".parse().unwrap());
        assert_eq!(retry_after(&h, now), Some(now + 3_600_000_000));
        // 2023-11-14T22:13:30Z is 10 s after `now`.
        h.insert(
            RETRY_AFTER,
            "Tue, 14 Nov 2023 22:13:30 GMT".parse().unwrap(),
        );
        assert_eq!(retry_after(&h, now), Some(now + 10_000_000));
        h.insert(RETRY_AFTER, "soon".parse().unwrap());
        assert_eq!(retry_after(&h, now), None);
    }
}
