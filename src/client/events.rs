//! The change feed, `GET /v1/opscore/events` (Server-Sent Events): a parser
//! for the `text/event-stream` format and a reader that decodes events and,
//! when the connection drops, reconnects with `Last-Event-ID` so no event
//! is missed or repeated.

use std::collections::VecDeque;
use std::time::Duration;

use super::types::FeedEvent;
use super::{api_error, Client, ClientError};

/// One dispatched SSE event block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseFrame {
    /// The block's `id:` field, if it had one.
    pub id: Option<String>,
    /// The block's `event:` field, if it had one.
    pub event: Option<String>,
    /// Its `data:` lines joined with `\n`; `None` when it had none (such a
    /// block only moves the last event id).
    pub data: Option<String>,
}

/// An incremental `text/event-stream` parser (the WHATWG rules): lines end
/// in `\n`, `\r\n` or `\r`, even split across chunks; `field: value` with
/// one optional space; lines starting with `:` are comments (keep-alives);
/// a blank line ends the block; `retry:` and unknown fields are ignored.
#[derive(Debug, Default)]
pub struct SseParser {
    line: Vec<u8>,
    /// The previous chunk ended in `\r`: a `\n` starting this one belongs
    /// to the same line end.
    after_cr: bool,
    id: Option<String>,
    event: Option<String>,
    data: Option<String>,
}

impl SseParser {
    /// Feed the next bytes of the stream; returns the blocks they complete.
    pub fn push(&mut self, bytes: &[u8]) -> Vec<SseFrame> {
        let mut out = Vec::new();
        for &b in bytes {
            let after_cr = std::mem::replace(&mut self.after_cr, false);
            match b {
                b'\n' if after_cr => {}
                b'\n' => self.end_line(&mut out),
                b'\r' => {
                    self.after_cr = true;
                    self.end_line(&mut out);
                }
                _ => self.line.push(b),
            }
        }
        out
    }

    /// Forget a half-received block (after a dropped connection).
    pub fn reset(&mut self) {
        *self = Self::default();
    }

    fn end_line(&mut self, out: &mut Vec<SseFrame>) {
        let line = std::mem::take(&mut self.line);
        if line.is_empty() {
            if self.id.is_some() || self.data.is_some() {
                out.push(SseFrame {
                    id: self.id.take(),
                    event: self.event.take(),
                    data: self.data.take(),
                });
            }
            self.event = None;
            return;
        }
        if line[0] == b':' {
            return;
        }
        let line = String::from_utf8_lossy(&line);
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line.as_ref(), ""),
        };
        match field {
            "data" => match &mut self.data {
                Some(d) => {
                    d.push('\n');
                    d.push_str(value);
                }
                None => self.data = Some(value.to_owned()),
            },
            "event" => self.event = Some(value.to_owned()),
            "id" if !value.contains('\0') => self.id = Some(value.to_owned()),
            _ => {}
        }
    }
}

/// Which events to follow, and from where.
#[derive(Debug, Clone, Default)]
pub struct EventFilter {
    /// Only events of these agents (all when empty).
    pub agents: Vec<String>,
    /// Only events of these kinds (all when empty).
    pub kinds: Vec<String>,
    /// Start after this feed index; `None` starts at the current head.
    pub after: Option<u64>,
}

/// A followed change feed. [`EventStream::next`] waits for the next event;
/// when the connection ends it reconnects, resuming after the last event
/// seen, up to `max_reconnects` failed attempts in a row.
pub struct EventStream {
    client: Client,
    filter: EventFilter,
    last_id: Option<String>,
    resp: Option<reqwest::Response>,
    parser: SseParser,
    pending: VecDeque<SseFrame>,
    connected_once: bool,
    /// Failed reconnect attempts in a row before giving up.
    pub max_reconnects: u32,
    /// Wait before the first reconnect attempt; doubles up to 5 s.
    pub reconnect_delay: Duration,
}

impl Client {
    /// Follow the change feed. Nothing is sent until the first
    /// [`EventStream::next`]; a failure to connect then is returned at once.
    pub fn events(&self, filter: EventFilter) -> EventStream {
        EventStream {
            client: self.clone(),
            filter,
            last_id: None,
            resp: None,
            parser: SseParser::default(),
            pending: VecDeque::new(),
            connected_once: false,
            max_reconnects: 10,
            reconnect_delay: Duration::from_millis(250),
        }
    }
}

impl EventStream {
    /// The id of the last event received (what a reconnect resumes after).
    pub fn last_event_id(&self) -> Option<&str> {
        self.last_id.as_deref()
    }

    /// The next event, in feed order.
    pub async fn next(&mut self) -> Result<FeedEvent, ClientError> {
        loop {
            if let Some(frame) = self.pending.pop_front() {
                if let Some(id) = frame.id {
                    self.last_id = Some(id);
                }
                let Some(data) = frame.data else { continue };
                let mut ev: FeedEvent = serde_json::from_str(&data).map_err(|e| {
                    ClientError::Protocol(format!("feed event is not an event: {e}: {data}"))
                })?;
                ev.raw = data;
                return Ok(ev);
            }
            let chunk = match &mut self.resp {
                Some(resp) => resp.chunk().await,
                None => {
                    self.resp = Some(self.reconnect().await?);
                    continue;
                }
            };
            match chunk {
                Ok(Some(bytes)) => self.pending.extend(self.parser.push(&bytes)),
                // The server ended the stream or the connection broke: a
                // half-received block is dropped and comes again after
                // the reconnect, which resumes after the last whole one.
                Ok(None) | Err(_) => {
                    self.resp = None;
                    self.parser.reset();
                }
            }
        }
    }

    /// Connect; after the first success, retry failures that may pass
    /// (connection errors, 5xx) with a growing delay.
    async fn reconnect(&mut self) -> Result<reqwest::Response, ClientError> {
        if !self.connected_once {
            let resp = self.connect().await?;
            self.connected_once = true;
            return Ok(resp);
        }
        let mut delay = self.reconnect_delay;
        let mut failures = 0;
        loop {
            tokio::time::sleep(delay).await;
            match self.connect().await {
                Ok(resp) => return Ok(resp),
                Err(e) if failures < self.max_reconnects && retryable(&e) => {
                    failures += 1;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn connect(&self) -> Result<reqwest::Response, ClientError> {
        let c = &self.client;
        let mut q: Vec<(&str, String)> = Vec::new();
        if !self.filter.agents.is_empty() {
            q.push(("agentId", self.filter.agents.join(",")));
        }
        if !self.filter.kinds.is_empty() {
            q.push(("kinds", self.filter.kinds.join(",")));
        }
        let mut rb = c
            .authed(c.stream_http.get(c.url("/v1/opscore/events")))
            .header("accept", "text/event-stream");
        match (&self.last_id, self.filter.after) {
            (Some(id), _) => rb = rb.header("last-event-id", id.as_str()),
            (None, Some(after)) => q.push(("after", after.to_string())),
            (None, None) => {}
        }
        let resp = rb.query(&q).send().await?;
        let status = resp.status();
        if !status.is_success() {
            let body = resp.bytes().await.unwrap_or_default();
            return Err(api_error(status, &body));
        }
        let ct = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if !ct.starts_with("text/event-stream") {
            return Err(ClientError::Protocol(format!(
                "the event feed answered with Content-Type '{ct}', not text/event-stream"
            )));
        }
        Ok(resp)
    }
}

/// Worth another try: the connection failed, or the server was briefly
/// unable (5xx: overloaded, restarting behind a proxy).
fn retryable(e: &ClientError) -> bool {
    match e {
        ClientError::Transport(_) => true,
        ClientError::Api { status, .. } => *status >= 500,
        ClientError::Protocol(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(id: Option<&str>, event: Option<&str>, data: Option<&str>) -> SseFrame {
        SseFrame {
            id: id.map(Into::into),
            event: event.map(Into::into),
            data: data.map(Into::into),
        }
    }

    #[test]
    fn parses_events_and_ignores_comments() {
        let mut p = SseParser::default();
        let text = ": keep-alive\n\nid: 42\nevent: agent.state\ndata: {\"index\":42}\n\n\
                    : another comment\nid: 43\nevent: agent.fresh\ndata: {\"index\":43}\n\n";
        assert_eq!(
            p.push(text.as_bytes()),
            vec![
                frame(Some("42"), Some("agent.state"), Some("{\"index\":42}")),
                frame(Some("43"), Some("agent.fresh"), Some("{\"index\":43}")),
            ]
        );
    }

    #[test]
    fn any_split_of_the_bytes_gives_the_same_frames() {
        let text =
            "id: 7\r\nevent: task.status\r\ndata: {\"a\":\"é\"}\r\n\r\nid:8\rdata:x\rdata: y\r\r";
        let whole = SseParser::default().push(text.as_bytes());
        assert_eq!(
            whole,
            vec![
                frame(Some("7"), Some("task.status"), Some("{\"a\":\"é\"}")),
                frame(Some("8"), None, Some("x\ny")),
            ]
        );
        let bytes = text.as_bytes();
        for cut in 0..=bytes.len() {
            let mut p = SseParser::default();
            let mut got = p.push(&bytes[..cut]);
            got.extend(p.push(&bytes[cut..]));
            assert_eq!(got, whole, "split at {cut}");
        }
        // One byte at a time.
        let mut p = SseParser::default();
        let got: Vec<_> = bytes.iter().flat_map(|b| p.push(&[*b])).collect();
        assert_eq!(got, whole);
    }

    #[test]
    fn an_unfinished_block_is_not_dispatched_and_reset_drops_it() {
        let mut p = SseParser::default();
        assert!(p.push(b"id: 1\ndata: {}\n").is_empty());
        p.reset();
        assert!(p.push(b"\n").is_empty());
        assert_eq!(
            p.push(b"id: 2\ndata: {}\n\n"),
            vec![frame(Some("2"), None, Some("{}"))]
        );
    }

    #[test]
    fn fields_without_space_or_value_and_unknown_fields() {
        let mut p = SseParser::default();
        let got = p.push(b"retry: 1000\nfoo: bar\ndata\nid\n\nevent: x\n\n");
        // `data` alone is an empty data line; `id` alone sets an empty id;
        // a block with only `event` dispatches nothing.
        assert_eq!(got, vec![frame(Some(""), None, Some(""))]);
        assert!(p.push(b"data: a\n\n")[0].event.is_none());
    }
}
