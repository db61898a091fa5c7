//! A small Server-Sent Events reader for tests of the change feed, kept
//! apart from `opscore::client` on purpose: it checks the wire format as a
//! browser or curl sees it, independently of the client under test.

use std::time::Duration;

use serde_json::Value;

/// One event as received.
#[derive(Debug, Clone)]
pub struct Msg {
    pub id: i64,
    pub kind: String,
    pub data: Value,
}

/// An open event stream.
pub struct Stream {
    resp: reqwest::Response,
    buf: String,
}

impl Stream {
    /// Open `GET {base}/v1/opscore/events{query}`, resuming after
    /// `last_event_id` if given. Panics unless the server answers 200.
    pub async fn open(base: &str, query: &str, last_event_id: Option<i64>) -> Self {
        let resp = Self::request(base, query, last_event_id).await;
        assert_eq!(resp.status(), 200, "event stream refused");
        let ct = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        assert!(ct.starts_with("text/event-stream"), "content type {ct}");
        Self {
            resp,
            buf: String::new(),
        }
    }

    /// As [`open`](Self::open) without resuming, with another API key.
    pub async fn open_as(base: &str, query: &str, key: &str) -> Self {
        let resp = reqwest::Client::new()
            .get(format!("{base}/v1/opscore/events{query}"))
            .bearer_auth(key)
            .send()
            .await
            .expect("open event stream");
        Self::wrap(resp)
    }

    /// A stream over a response already received. Panics unless it is a
    /// 200.
    pub fn wrap(resp: reqwest::Response) -> Self {
        assert_eq!(resp.status(), 200, "event stream refused");
        Self {
            resp,
            buf: String::new(),
        }
    }

    /// The raw response, for tests of refusals.
    pub async fn request(base: &str, query: &str, last_event_id: Option<i64>) -> reqwest::Response {
        let mut rb = reqwest::Client::new()
            .get(format!("{base}/v1/opscore/events{query}"))
            .bearer_auth(super::KEY);
        if let Some(id) = last_event_id {
            rb = rb.header("Last-Event-ID", id.to_string());
        }
        rb.send().await.expect("open event stream")
    }

    /// The next event, or `None` if none arrives within `within` (or the
    /// stream ends).
    pub async fn next(&mut self, within: Duration) -> Option<Msg> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Some(end) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..end + 2).collect();
                if let Some(msg) = parse_block(&block) {
                    return Some(msg);
                }
                continue;
            }
            let chunk = tokio::time::timeout_at(deadline, self.resp.chunk()).await;
            match chunk {
                Ok(Ok(Some(bytes))) => self.buf.push_str(&String::from_utf8_lossy(&bytes)),
                _ => return None,
            }
        }
    }

    /// Whether the server ends the stream within `within` (events and
    /// keep-alives before the end are skipped).
    pub async fn ended(&mut self, within: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            match tokio::time::timeout_at(deadline, self.resp.chunk()).await {
                Ok(Ok(Some(_))) => continue,
                Ok(Ok(None)) => return true,
                // Cut mid-chunk: not the clean end the server gives.
                Ok(Err(e)) => panic!("event stream failed: {e}"),
                Err(_) => return false,
            }
        }
    }

    /// Events until `pred` holds for one (returned last), failing the test
    /// if that takes longer than `within`.
    pub async fn until(&mut self, within: Duration, pred: impl Fn(&Msg) -> bool) -> Vec<Msg> {
        let deadline = tokio::time::Instant::now() + within;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next(left).await {
                Some(m) => {
                    let done = pred(&m);
                    seen.push(m);
                    if done {
                        return seen;
                    }
                }
                None => panic!(
                    "no matching event within {within:?}; saw {:?}",
                    seen.iter().map(|m| (&m.id, &m.kind)).collect::<Vec<_>>()
                ),
            }
        }
    }
}

/// Parse one SSE block; comments-only blocks (keep-alives) give `None`.
fn parse_block(block: &str) -> Option<Msg> {
    let (mut id, mut kind, mut data) = (None, None, String::new());
    for line in block.lines() {
        if let Some(v) = line.strip_prefix("id:") {
            id = v.trim().parse().ok();
        } else if let Some(v) = line.strip_prefix("event:") {
            kind = Some(v.trim().to_owned());
        } else if let Some(v) = line.strip_prefix("data:") {
            data.push_str(v.strip_prefix(' ').unwrap_or(v));
        }
    }
    Some(Msg {
        id: id?,
        kind: kind?,
        data: serde_json::from_str(&data).expect("event data is JSON"),
    })
}
