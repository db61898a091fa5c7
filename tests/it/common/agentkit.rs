//! A scriptable fake of the agent framework (AgentKit): it serves
//! `POST /v1/agents/{agentId}/run` (and `/direct/{agentId}`) on a real
//! socket, records every call (with its headers), and answers with scripted replies (202 once
//! the script is used up). It speaks HTTP/1.1 itself, one request per
//! connection, so it can also misbehave the way real networks do: cut a
//! response mid-way, or hold its answer until the agent has reported.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Notify;

/// One request the fake received.
#[derive(Debug, Clone)]
pub struct Call {
    pub agent_id: String,
    pub idempotency_key: String,
    pub body: Value,
    /// Every request header, names in lower case, in the order sent.
    pub headers: Vec<(String, String)>,
}

impl Call {
    /// The values of header `name` (lower case).
    pub fn header(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

/// A scripted answer.
#[derive(Debug, Clone, Copy)]
pub enum Reply {
    Status(u16),
    RetryAfter(u16, u64),
    /// 202, but only after this many milliseconds (the call is recorded at
    /// once, so a test can act while the dispatcher is still waiting).
    SlowAccept(u64),
    /// Write `HTTP/1.1 202 Acc` and close the connection: the framework
    /// took the task, but its answer never arrives whole.
    Cut,
}

/// Called for every first delivery of an Idempotency-Key (the agent's side).
pub type OnCall = Arc<dyn Fn(&Call) + Send + Sync>;

/// The agent's side, awaited before the fake answers: for every first
/// delivery of an Idempotency-Key, whatever the scripted reply.
pub type BeforeAnswer =
    Arc<dyn Fn(Call, Reply) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

#[derive(Default)]
struct Inner {
    calls: Mutex<Vec<Call>>,
    script: Mutex<VecDeque<Reply>>,
    arrived: Notify,
    on_call: Mutex<Option<OnCall>>,
    before_answer: Mutex<Option<BeforeAnswer>>,
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
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let shared = inner.clone();
        tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                tokio::spawn(serve_one(sock, shared.clone()));
            }
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

    /// Play the agent: `f` runs for each new attempt the framework accepts
    /// (a repeated Idempotency-Key is acknowledged but not passed on, as
    /// AgentKit does).
    pub fn on_call(&self, f: OnCall) {
        *self.inner.on_call.lock().unwrap() = Some(f);
    }

    /// Play the agent before the framework answers: `f` is awaited for each
    /// new attempt, whatever the scripted reply, and only then is the reply
    /// written.
    pub fn before_answer(&self, f: BeforeAnswer) {
        *self.inner.before_answer.lock().unwrap() = Some(f);
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

/// A request as read: path, Idempotency-Key, headers, body.
struct Request {
    path: String,
    key: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

/// A request's path, Idempotency-Key, headers and body, or None if the
/// peer closed or sent something that is not a request with a length.
async fn read_request(sock: &mut TcpStream) -> Option<Request> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        let n = sock.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let path = lines.next()?.split(' ').nth(1)?.to_owned();
    let (mut length, mut key) = (0usize, String::new());
    let mut headers = Vec::new();
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        headers.push((name.trim().to_ascii_lowercase(), value.trim().to_owned()));
        match name.trim().to_ascii_lowercase().as_str() {
            "content-length" => length = value.trim().parse().ok()?,
            "idempotency-key" => key = value.trim().to_owned(),
            _ => {}
        }
    }
    let mut body = buf[head_end + 4..].to_vec();
    while body.len() < length {
        let n = sock.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    Some(Request {
        path,
        key,
        headers,
        body,
    })
}

fn agent_of(path: &str) -> Option<String> {
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match parts.as_slice() {
        ["v1", "agents", id, "run"] | ["direct", id] => Some((*id).to_owned()),
        _ => None,
    }
}

async fn respond(sock: &mut TcpStream, status: u16, extra: &str) {
    let reason = reqwest::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("Unknown");
    let text = format!(
        "HTTP/1.1 {status} {reason}\r\ncontent-length: 0\r\nconnection: close\r\n{extra}\r\n"
    );
    let _ = sock.write_all(text.as_bytes()).await;
    let _ = sock.shutdown().await;
}

async fn serve_one(mut sock: TcpStream, inner: Arc<Inner>) {
    let Some(Request {
        path,
        key: idempotency_key,
        headers,
        body,
    }) = read_request(&mut sock).await
    else {
        return;
    };
    let Some(agent_id) = agent_of(&path) else {
        respond(&mut sock, 404, "").await;
        return;
    };
    let reply = inner
        .script
        .lock()
        .unwrap()
        .pop_front()
        .unwrap_or(Reply::Status(202));
    let call = Call {
        agent_id,
        idempotency_key,
        body: serde_json::from_slice(&body).unwrap_or(Value::Null),
        headers,
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
    let before = inner.before_answer.lock().unwrap().clone();
    inner.calls.lock().unwrap().push(call.clone());
    inner.arrived.notify_waiters();
    if let (true, Some(f)) = (first, before) {
        f(call, reply).await;
    }
    match reply {
        Reply::SlowAccept(ms) => {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            respond(&mut sock, 202, "").await;
        }
        Reply::Status(s) => respond(&mut sock, s, "").await,
        Reply::RetryAfter(s, secs) => {
            respond(&mut sock, s, &format!("retry-after: {secs}\r\n")).await
        }
        Reply::Cut => {
            let _ = sock.write_all(b"HTTP/1.1 202 Acc").await;
            let _ = sock.shutdown().await;
        }
    }
}
