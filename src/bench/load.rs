//! The load generators: one HTTP client, the requests the scenarios send,
//! a closed-loop driver (C connections, each sending its next request when
//! the last is answered) and an open-loop one (requests leave on a schedule,
//! latency counted from the scheduled time).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::Rng;
use reqwest::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE, RETRY_AFTER};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::stats::{Failure, Recorder, Stats};

/// A request ready to go, and the status that counts as success.
pub(crate) struct Op {
    /// Which recorder it counts in (an index into the driver's recorders).
    pub kind: usize,
    pub req: reqwest::Request,
    pub expect: StatusCode,
}

/// The client side of a run: one connection pool for every measured request.
#[derive(Debug)]
pub(crate) struct Bench {
    pub client: reqwest::Client,
    pub base: String,
    bearer: HeaderValue,
    secret: Option<String>,
    /// Per-request timeout.
    pub timeout: Duration,
    /// Where reports and reads go, round robin: `base` and the replicas.
    spread: Vec<String>,
    next: std::sync::atomic::AtomicUsize,
}

impl Bench {
    /// A client whose pool keeps up to `pool` idle connections to the server,
    /// so a closed loop at C connections or an open loop with `pool` requests
    /// in flight reuses its connections instead of opening new ones.
    pub(crate) fn new(
        base: &str,
        api_key: &str,
        secret: Option<String>,
        pool: usize,
        timeout: Duration,
    ) -> anyhow::Result<Self> {
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(pool)
            .pool_idle_timeout(Duration::from_secs(90))
            .tcp_nodelay(true)
            .connect_timeout(Duration::from_secs(5).min(timeout))
            .timeout(timeout)
            .build()?;
        let mut bearer = HeaderValue::from_str(&format!("Bearer {api_key}"))
            .map_err(|_| anyhow::anyhow!("the API key holds characters not allowed in a header"))?;
        bearer.set_sensitive(true);
        Ok(Self {
            client,
            base: base.trim_end_matches('/').to_owned(),
            bearer,
            secret,
            timeout,
            spread: Vec::new(),
            next: Default::default(),
        })
    }

    /// Send reports and reads round robin over the base URL and `replicas`.
    pub(crate) fn with_replicas(mut self, replicas: &[String]) -> Self {
        self.spread = std::iter::once(self.base.clone())
            .chain(replicas.iter().map(|u| u.trim_end_matches('/').to_owned()))
            .collect();
        self
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// `path` on the next replica in turn (the base URL without replicas).
    fn spread_url(&self, path: &str) -> String {
        if self.spread.len() < 2 {
            return self.url(path);
        }
        let i = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        format!("{}{path}", self.spread[i % self.spread.len()])
    }

    fn build(&self, method: Method, url: &str, body: Option<Vec<u8>>) -> reqwest::Request {
        let mut rb = self
            .client
            .request(method, url)
            .header(AUTHORIZATION, self.bearer.clone());
        if let Some(b) = body {
            rb = rb.header(CONTENT_TYPE, "application/json").body(b);
        }
        rb.build().expect("URLs are checked before the run")
    }

    /// `GET /health`.
    pub(crate) fn health(&self, kind: usize) -> Op {
        let req = self
            .client
            .get(self.url("/health"))
            .build()
            .expect("URL checked");
        Op {
            kind,
            req,
            expect: StatusCode::OK,
        }
    }

    /// A state report for `agent`, stamped now.
    pub(crate) fn report(&self, kind: usize, agent: &str, seq: u64) -> Op {
        let state = if seq % 2 == 0 { "active" } else { "idle" };
        let body = json!({
            "agentId": agent,
            "timestamp": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, false),
            "state": state,
            "details": {"bench": true, "seq": seq},
        });
        let url = self.spread_url(&format!("/v1/opscore/agent/{agent}/state"));
        Op {
            kind,
            req: self.build(Method::POST, &url, Some(body.to_string().into_bytes())),
            expect: StatusCode::ACCEPTED,
        }
    }

    /// `GET` the current state of `agent`.
    pub(crate) fn read(&self, kind: usize, agent: &str) -> Op {
        let url = self.spread_url(&format!("/v1/opscore/agent/{agent}/state"));
        Op {
            kind,
            req: self.build(Method::GET, &url, None),
            expect: StatusCode::OK,
        }
    }

    /// Trigger `workflow` on `agent`.
    pub(crate) fn trigger(&self, kind: usize, agent: &str, workflow: &str, seq: u64) -> Op {
        let body = json!({"workflowDefinitionId": workflow, "initialPayload": {"bench": seq}});
        let url = self.url(&format!("/v1/opscore/agent/{agent}/workflow"));
        Op {
            kind,
            req: self.build(Method::POST, &url, Some(body.to_string().into_bytes())),
            expect: StatusCode::ACCEPTED,
        }
    }

    /// Send `op` and read the whole response.
    pub(crate) async fn send(&self, op: Op) -> Result<(), Failure> {
        let resp = self
            .client
            .execute(op.req)
            .await
            .map_err(|e| Failure::from_reqwest(&e))?;
        let status = resp.status();
        let retry_after = resp.headers().contains_key(RETRY_AFTER);
        resp.bytes().await.map_err(|e| Failure::from_reqwest(&e))?;
        if status == op.expect {
            Ok(())
        } else {
            Err(Failure::Status {
                code: status.as_u16(),
                retry_after,
            })
        }
    }

    /// Send a registration webhook event, signed when a secret was given,
    /// else with the API key.
    pub(crate) async fn notify(&self, event: &str, details: &Value) -> anyhow::Result<()> {
        let rb = crate::client::notify_request(
            &self.client,
            &self.base,
            event,
            details,
            self.secret.as_deref(),
        );
        let rb = if self.secret.is_none() {
            rb.header(AUTHORIZATION, self.bearer.clone())
        } else {
            rb
        };
        let resp = rb.send().await?;
        let status = resp.status();
        if status.is_success() {
            return Ok(());
        }
        let text = resp.text().await.unwrap_or_default();
        anyhow::bail!("{event} refused: HTTP {status}: {text}")
    }

    /// GET a path with the key; the JSON body of a 200, else an error.
    pub(crate) async fn get_json(&self, path: &str) -> anyhow::Result<Value> {
        let resp = self
            .client
            .get(self.url(path))
            .header(AUTHORIZATION, self.bearer.clone())
            .send()
            .await?;
        let status = resp.status();
        let text = resp.text().await?;
        if status != StatusCode::OK {
            anyhow::bail!("GET {path}: HTTP {status}: {text}");
        }
        Ok(serde_json::from_str(&text)?)
    }

    /// POST to a path with the key and no body; whether it answered 2xx.
    pub(crate) async fn post_empty(&self, path: &str) -> bool {
        match self
            .client
            .post(self.url(path))
            .header(AUTHORIZATION, self.bearer.clone())
            .send()
            .await
        {
            Ok(r) => r.status().is_success(),
            Err(_) => false,
        }
    }
}

/// What a driver measured: wall time and one `Stats` per kind of request.
pub(crate) struct Measured {
    pub elapsed: Duration,
    pub kinds: Vec<Stats>,
}

impl Measured {
    /// Every kind added together.
    pub(crate) fn total(&self) -> Stats {
        let mut t = Stats::new();
        for k in &self.kinds {
            t.merge(k);
        }
        t
    }
}

/// Closed loop: `conns` workers, each sending `make(seq)` and, once it is
/// fully answered, the next, until `duration` is over (requests in flight
/// then are finished and counted) or `stop` is cancelled. Latency runs from
/// just before the send to the last byte of the response.
pub(crate) async fn closed_loop<F>(
    bench: &Arc<Bench>,
    conns: usize,
    kinds: usize,
    duration: Duration,
    stop: &CancellationToken,
    make: F,
) -> Measured
where
    F: Fn(&Bench, u64) -> Op + Send + Sync + 'static,
{
    let recorders: Arc<Vec<Recorder>> = Arc::new((0..kinds).map(|_| Recorder::new()).collect());
    let make = Arc::new(make);
    let seq = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let deadline = start + duration;
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..conns {
        let (bench, recorders, make, seq, stop) = (
            bench.clone(),
            recorders.clone(),
            make.clone(),
            seq.clone(),
            stop.clone(),
        );
        workers.spawn(async move {
            while Instant::now() < deadline && !stop.is_cancelled() {
                let n = seq.fetch_add(1, Ordering::Relaxed);
                let op = make(&bench, n);
                let kind = op.kind;
                let t0 = Instant::now();
                let outcome = bench.send(op).await;
                recorders[kind].record(t0.elapsed(), outcome);
            }
        });
    }
    while workers.join_next().await.is_some() {}
    Measured {
        elapsed: start.elapsed(),
        kinds: recorders.iter().map(Recorder::snapshot).collect(),
    }
}

/// Open loop: request `i` of `schedule` (its offset from the start, and an
/// index passed to `make`) leaves at its time whatever became of the earlier
/// ones, with at most `max_in_flight` in flight (a request waiting for a slot
/// is late, and its lateness counts). Latency runs from the *scheduled* time
/// to the last byte of the response, so a server stall shows in every
/// request it delayed instead of being hidden by a sender that waited
/// (coordinated omission). A request not answered within the timeout of its
/// scheduled time counts as a timeout, so the run ends at most one timeout
/// after the last scheduled time. The elapsed time reported is the
/// scheduled window, or longer if the last answers came after it.
pub(crate) async fn open_loop<F>(
    bench: &Arc<Bench>,
    window: Duration,
    schedule: Vec<(Duration, usize)>,
    max_in_flight: usize,
    kinds: usize,
    stop: &CancellationToken,
    make: F,
) -> Measured
where
    F: Fn(&Bench, usize, u64) -> Op + Send + Sync + 'static,
{
    let recorders: Arc<Vec<Recorder>> = Arc::new((0..kinds).map(|_| Recorder::new()).collect());
    let make = Arc::new(make);
    let slots = Arc::new(Semaphore::new(max_in_flight.max(1)));
    let tracker = TaskTracker::new();
    let start = Instant::now();
    for (seq, (offset, index)) in schedule.into_iter().enumerate() {
        let at = start + offset;
        if at > Instant::now() {
            tokio::select! {
                () = tokio::time::sleep_until(at.into()) => {}
                () = stop.cancelled() => break,
            }
        } else if stop.is_cancelled() {
            break;
        }
        let (bench, recorders, make, slots) = (
            bench.clone(),
            recorders.clone(),
            make.clone(),
            slots.clone(),
        );
        tracker.spawn(async move {
            let mut kind = 0;
            let deadline = at + bench.timeout;
            let outcome = tokio::time::timeout_at(deadline.into(), async {
                let _slot = slots.acquire_owned().await.expect("never closed");
                let op = make(&bench, index, seq as u64);
                kind = op.kind;
                recorders[kind].record_lag(Instant::now().saturating_duration_since(at));
                bench.send(op).await
            })
            .await
            .unwrap_or(Err(Failure::Timeout));
            recorders[kind].record(Instant::now().saturating_duration_since(at), outcome);
        });
    }
    tracker.close();
    tracker.wait().await;
    Measured {
        elapsed: start.elapsed().max(window),
        kinds: recorders.iter().map(Recorder::snapshot).collect(),
    }
}

/// S1's schedule: each of `agents` agents reports every `min..=max`
/// (drawn once per agent), starting at a random phase within its first
/// period so the fleet's reports are spread evenly from the first second.
pub(crate) fn fleet_schedule(
    agents: usize,
    min: Duration,
    max: Duration,
    duration: Duration,
) -> Vec<(Duration, usize)> {
    let mut rng = rand::thread_rng();
    let end = duration.as_secs_f64();
    let mut out = Vec::new();
    for i in 0..agents {
        let period = rng.gen_range(min.as_secs_f64()..=max.as_secs_f64());
        let mut t = rng.gen_range(0.0..period);
        while t < end {
            out.push((Duration::from_secs_f64(t), i));
            t += period;
        }
    }
    out.sort_by_key(|(t, _)| *t);
    out
}

/// A constant-rate schedule: `rate` requests per second for `duration`,
/// indices counting up from 0.
pub(crate) fn rate_schedule(rate: f64, duration: Duration) -> Vec<(Duration, usize)> {
    let n = (rate * duration.as_secs_f64()).floor() as usize;
    (0..n)
        .map(|k| (Duration::from_secs_f64(k as f64 / rate), k))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fleet_schedule_is_sorted_and_within_the_periods() {
        let s = fleet_schedule(
            200,
            Duration::from_secs(5),
            Duration::from_secs(10),
            Duration::from_secs(30),
        );
        assert!(s.windows(2).all(|w| w[0].0 <= w[1].0));
        assert!(s.iter().all(|(t, _)| *t < Duration::from_secs(30)));
        // Each agent reports every 5-10 s over 30 s: 3 to 6 reports.
        for i in 0..200 {
            let n = s.iter().filter(|(_, a)| *a == i).count();
            assert!((3..=6).contains(&n), "agent {i}: {n} reports");
        }
        let fixed = fleet_schedule(
            3,
            Duration::from_secs(1),
            Duration::from_secs(1),
            Duration::from_secs(2),
        );
        assert_eq!(fixed.len(), 6);
    }

    #[test]
    fn rate_schedule_is_even() {
        let s = rate_schedule(500.0, Duration::from_secs(2));
        assert_eq!(s.len(), 1000);
        assert_eq!(s[1].0, Duration::from_millis(2));
        assert_eq!(s[999].1, 999);
    }
}
