//! A scriptable fake of the agent framework (AgentKit): it serves
//! `POST /v1/agents/{agentId}/run` on a real socket, records every call, and
//! answers with scripted statuses (202 once the script is used up).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde_json::Value;
use tokio::sync::Notify;

/// One request the fake received.
#[derive(Debug, Clone)]
pub struct Call {
    pub agent_id: String,
    pub idempotency_key: String,
    pub body: Value,
}

/// A scripted answer.
#[derive(Debug, Clone, Copy)]
pub enum Reply {
    Status(u16),
    RetryAfter(u16, u64),
    /// 202, but only after this many milliseconds (the call is recorded at
    /// once, so a test can act while the dispatcher is still waiting).
    SlowAccept(u64),
}

/// Called for every first delivery of an Idempotency-Key (the agent's side).
pub type OnCall = Arc<dyn Fn(&Call) + Send + Sync>;

#[derive(Default)]
struct Inner {
    calls: Mutex<Vec<Call>>,
    script: Mutex<VecDeque<Reply>>,
    arrived: Notify,
    on_call: Mutex<Option<OnCall>>,
    keys: Mutex<std::collections::HashSet<String>>,
    duplicates: Mutex<Vec<String>>,
}

#[derive(Clone)]
pub struct FakeAgentKit {
    /// Base URL including `/v1`, as AGENTKIT_API_URL expects.
    pub base: String,
    inner: Arc<Inner>,
}

impl FakeAgentKit {
    pub async fn start() -> Self {
        let inner = Arc::new(Inner::default());
        let app = Router::new()
            .route("/v1/agents/{agent_id}/run", post(run))
            .route("/direct/{agent_id}", post(run))
            .with_state(inner.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self {
            base: format!("http://{addr}/v1"),
            inner,
        }
    }

    /// Answers for the next calls, in order.
    pub fn script(&self, replies: &[Reply]) {
        self.inner
            .script
            .lock()
            .unwrap()
            .extend(replies.iter().copied());
    }

    /// Play the agent: `f` runs for each new attempt (a repeated
    /// Idempotency-Key is acknowledged but not passed on, as AgentKit does).
    pub fn on_call(&self, f: OnCall) {
        *self.inner.on_call.lock().unwrap() = Some(f);
    }

    /// Keys delivered more than once.
    pub fn duplicates(&self) -> Vec<String> {
        self.inner.duplicates.lock().unwrap().clone()
    }

    pub fn calls(&self) -> Vec<Call> {
        self.inner.calls.lock().unwrap().clone()
    }

    /// Wait until at least `n` calls arrived (panics after `secs`).
    pub async fn wait_calls(&self, n: usize, secs: u64) -> Vec<Call> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
        loop {
            let notified = self.inner.arrived.notified();
            let calls = self.calls();
            if calls.len() >= n {
                return calls;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                panic!(
                    "expected {n} dispatch calls within {secs}s, got {}: {:#?}",
                    calls.len(),
                    calls
                );
            }
        }
    }
}

async fn run(
    State(inner): State<Arc<Inner>>,
    Path(agent_id): Path<String>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    let reply = inner
        .script
        .lock()
        .unwrap()
        .pop_front()
        .unwrap_or(Reply::Status(202));
    let call = Call {
        agent_id,
        idempotency_key: headers
            .get("idempotency-key")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned(),
        body,
    };
    let first = inner
        .keys
        .lock()
        .unwrap()
        .insert(call.idempotency_key.clone());
    if !first {
        inner
            .duplicates
            .lock()
            .unwrap()
            .push(call.idempotency_key.clone());
    }
    let hook = inner.on_call.lock().unwrap().clone();
    if let (true, Some(f), Reply::Status(200..=299)) = (first, hook, reply) {
        f(&call);
    }
    inner.calls.lock().unwrap().push(call);
    inner.arrived.notify_waiters();
    match reply {
        Reply::SlowAccept(ms) => {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            StatusCode::ACCEPTED.into_response()
        }
        Reply::Status(s) => StatusCode::from_u16(s).unwrap().into_response(),
        Reply::RetryAfter(s, secs) => (
            StatusCode::from_u16(s).unwrap(),
            [("retry-after", secs.to_string())],
        )
            .into_response(),
    }
}
