//! The typed HTTP client for Ops-Core: one method per route, typed answers
//! (`types`), the change-feed reader (`events`). Used by `opscore simulate`,
//! `opscore bench`, the operator CLI and the tests. Errors carry the
//! server's `detail` and `code`.
//!
//! A route method returns a [`Call`]: awaiting it gives the typed answer,
//! [`Call::json`] the server's JSON exactly as sent (what `--json` prints).

pub mod contexts;
mod events;
mod routes;
pub mod types;

use std::future::{Future, IntoFuture};
use std::marker::PhantomData;
use std::pin::Pin;
use std::time::Duration;

use reqwest::StatusCode;
use serde::de::DeserializeOwned;
use serde_json::{json, Value};

pub use self::events::{EventFilter, EventStream, SseFrame, SseParser};
pub use self::types::*;
use crate::domain::path_segment as seg;
use crate::domain::signature::{sign, SIGNATURE_HEADER, TIMESTAMP_HEADER};
pub use crate::wire::{
    Agent, CurrentState, Page, Registration, Session, SessionCounts, StateEntry, StatusMessage,
    StoredWorkflow, TaskRun, Triggered,
};

/// Which Ops-Core server a client command talks to, and with what key:
/// these flags (or their variables) first, then the context
/// (`opscore context`), then the defaults; see [`contexts`].
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ServerArgs {
    /// Ops-Core base URL [default: the context's, else http://127.0.0.1:8000].
    #[arg(long, env = "OPSCORE_URL")]
    pub url: Option<String>,
    /// API key, sent as `Authorization: Bearer <key>` [default: the
    /// context's; OPSCORE_API_KEY, the server's variable, is still read
    /// with a notice].
    #[arg(long, env = "OPSCORE_CLIENT_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// The context to use instead of the current one (`opscore context list`).
    #[arg(long, env = "OPSCORE_CONTEXT")]
    pub context: Option<String>,
    /// A PEM file of CA certificates to trust for https:// URLs.
    #[arg(long, env = "OPSCORE_CA_FILE")]
    pub ca_file: Option<std::path::PathBuf>,
}

impl ServerArgs {
    /// The server, key and CA these arguments, the config file's context
    /// and the defaults give.
    pub fn resolve(&self) -> Result<contexts::Target, String> {
        // The config file is read only when a context can matter: given a
        // URL and a key (as the simulator in a container is) and no context
        // named, a missing or unreadable home directory is none of our
        // business.
        let needs_context = self.context.is_some() || self.url.is_none() || self.api_key.is_none();
        let config = match contexts::config_path().filter(|_| needs_context) {
            Some(path) => contexts::ClientConfig::load(&path)?,
            None => contexts::ClientConfig::default(),
        };
        let given = contexts::Given {
            url: self.url.as_deref(),
            api_key: self.api_key.as_deref(),
            context: self.context.as_deref(),
            ca_file: self.ca_file.as_deref(),
        };
        let legacy = std::env::var("OPSCORE_API_KEY")
            .ok()
            .filter(|k| !k.is_empty());
        contexts::resolve(&given, &config, legacy)
    }
}

/// The server and credentials of `opscore simulate` and `opscore bench`:
/// the server, plus the webhook secret they sign registrations with.
#[derive(Debug, Clone, clap::Args)]
pub struct TargetArgs {
    /// The server and key.
    #[command(flatten)]
    pub server: ServerArgs,
    /// Webhook secret to sign registrations with, as AgentKit does.
    #[arg(long, env = "OPSCORE_WEBHOOK_SECRET", hide_env_values = true)]
    pub webhook_secret: Option<String>,
}

/// The HTTP clients of a [`Client`]: one for calls (30 s per request), one
/// for event streams (no total deadline, 45 s between reads), both trusting
/// `ca_pem`'s certificates besides the system's.
fn http_clients(ca_pem: Option<&[u8]>) -> Result<(reqwest::Client, reqwest::Client), String> {
    let mut http = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(30));
    let mut stream_http = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(5))
        .read_timeout(Duration::from_secs(45));
    if let Some(pem) = ca_pem {
        let certs = reqwest::Certificate::from_pem_bundle(pem)
            .map_err(|e| format!("the CA file holds no PEM certificate: {e}"))?;
        for cert in certs {
            http = http.add_root_certificate(cert.clone());
            stream_http = stream_http.add_root_certificate(cert);
        }
    }
    Ok((
        http.build().map_err(|e| e.to_string())?,
        stream_http.build().map_err(|e| e.to_string())?,
    ))
}

/// What went wrong talking to Ops-Core.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The request did not complete (connection refused, timeout, …).
    #[error("request to Ops-Core failed: {}", chain(.0))]
    Transport(#[from] reqwest::Error),
    /// The server answered with an error body.
    #[error("{detail} (HTTP {status}, {code})")]
    Api {
        /// HTTP status.
        status: u16,
        /// Machine-readable code.
        code: String,
        /// Human-readable detail.
        detail: String,
    },
    /// The answer was not what an Ops-Core server sends (not JSON, wrong
    /// shape, not an event stream).
    #[error("unexpected answer from the server: {0}")]
    Protocol(String),
}

/// A reqwest error with its causes: reqwest's own text alone ("error sending
/// request") hides the reason that matters (connection refused, DNS, …).
fn chain(e: &reqwest::Error) -> String {
    let mut out = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// A registration webhook request for `event_type` (REGISTER or
/// DEREGISTER) to the server at `base`, as AgentKit sends it: compact JSON,
/// and with `secret` signed (`X-AgentKit-Timestamp` in Unix seconds,
/// `X-AgentKit-Signature`). Without a secret the caller adds its bearer key.
pub fn notify_request(
    http: &reqwest::Client,
    base: &str,
    event_type: &str,
    details: &Value,
    secret: Option<&str>,
) -> reqwest::RequestBuilder {
    let body = json!({"event_type": event_type, "agent_details": details}).to_string();
    let rb = http
        .post(format!(
            "{}/v1/opscore/internal/agent/notify",
            base.trim_end_matches('/')
        ))
        .header("content-type", "application/json");
    let rb = match secret {
        Some(secret) => {
            let ts = chrono::Utc::now().timestamp().to_string();
            let sig = sign(secret.as_bytes(), &ts, body.as_bytes());
            rb.header(TIMESTAMP_HEADER, ts)
                .header(SIGNATURE_HEADER, sig)
        }
        None => rb,
    };
    rb.body(body)
}

/// A client bound to one server and key.
#[derive(Debug, Clone)]
pub struct Client {
    base: String,
    api_key: Option<String>,
    http: reqwest::Client,
    /// For the event stream: no overall deadline (a stream lasts as long as
    /// it is followed), but a read timeout well above the server's 15 s
    /// keep-alive, so a silently dead connection is noticed.
    stream_http: reqwest::Client,
}

impl Client {
    /// A client for the server at `base` (e.g. `http://127.0.0.1:8000`).
    pub fn new(base: &str, api_key: Option<String>) -> Self {
        let (http, stream_http) = http_clients(None).unwrap_or_default();
        Self {
            base: base.trim_end_matches('/').to_owned(),
            api_key,
            http,
            stream_http,
        }
    }

    /// A client for a resolved target, trusting its CA certificates too.
    pub fn for_target(target: &contexts::Target) -> Result<Self, String> {
        let (http, stream_http) = http_clients(target.ca_pem.as_deref())?;
        Ok(Self {
            base: target.url.trim_end_matches('/').to_owned(),
            api_key: Some(target.api_key.clone()),
            http,
            stream_http,
        })
    }

    /// The base URL this client talks to.
    pub fn base(&self) -> &str {
        &self.base
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn authed(&self, rb: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.api_key {
            Some(k) => rb.bearer_auth(k),
            None => rb,
        }
    }

    /// Send a registration webhook event. With `secret` it is signed as
    /// AgentKit signs it; without, the API key authenticates it.
    pub async fn notify(
        &self,
        event_type: &str,
        details: &Value,
        secret: Option<&str>,
    ) -> Result<Value, ClientError> {
        let rb = notify_request(&self.http, &self.base, event_type, details, secret);
        let rb = if secret.is_none() {
            self.authed(rb)
        } else {
            rb
        };
        Call::<Value>::new(rb).await
    }

    /// GET a path and decode the JSON answer.
    pub async fn get_json(&self, path: &str) -> Result<Value, ClientError> {
        let rb = self.http.get(self.url(path));
        Call::<Value>::new(self.authed(rb)).await
    }

    /// POST a JSON body to a path and decode the JSON answer.
    pub async fn post_json(&self, path: &str, body: &Value) -> Result<Value, ClientError> {
        let rb = self.http.post(self.url(path)).json(body);
        Call::<Value>::new(self.authed(rb)).await
    }

    /// DELETE a path and decode the JSON answer.
    pub async fn delete_json(&self, path: &str) -> Result<Value, ClientError> {
        let rb = self.http.delete(self.url(path));
        Call::<Value>::new(self.authed(rb)).await
    }
}

/// How a successful answer becomes `T`: from its status and JSON body.
type Decode<T> = fn(StatusCode, Value) -> Result<T, serde_json::Error>;

/// One request, ready to send. `.await` it for the typed answer, or call
/// [`Call::json`] for the server's JSON as sent.
#[must_use = "a Call does nothing until awaited"]
pub struct Call<T> {
    rb: reqwest::RequestBuilder,
    decode: Decode<T>,
    _t: PhantomData<fn() -> T>,
}

impl<T: DeserializeOwned> Call<T> {
    fn new(rb: reqwest::RequestBuilder) -> Self {
        Self::with(rb, |_, v| serde_json::from_value(v))
    }
}

impl<T> Call<T> {
    fn with(rb: reqwest::RequestBuilder, decode: Decode<T>) -> Self {
        Self {
            rb,
            decode,
            _t: PhantomData,
        }
    }

    /// Send, and return the status and JSON body of a 2xx answer (`null`
    /// for an empty one); an error answer becomes [`ClientError::Api`].
    async fn send(self) -> Result<(StatusCode, Value, Decode<T>), ClientError> {
        let resp = self.rb.send().await?;
        let status = resp.status();
        let bytes = resp.bytes().await?;
        if !status.is_success() {
            return Err(api_error(status, &bytes));
        }
        let value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).map_err(|e| {
                ClientError::Protocol(format!("HTTP {status} with a body that is not JSON: {e}"))
            })?
        };
        Ok((status, value, self.decode))
    }

    /// The server's JSON answer, exactly as sent.
    pub async fn json(self) -> Result<Value, ClientError> {
        Ok(self.send().await?.1)
    }

    /// The typed answer and the JSON it was decoded from.
    pub async fn both(self) -> Result<(T, Value), ClientError> {
        let (status, value, decode) = self.send().await?;
        let typed = decode(status, value.clone())
            .map_err(|e| ClientError::Protocol(format!("HTTP {status}: {e}")))?;
        Ok((typed, value))
    }
}

impl<T: Send + 'static> IntoFuture for Call<T> {
    type Output = Result<T, ClientError>;
    type IntoFuture = Pin<Box<dyn Future<Output = Self::Output> + Send>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(async move { Ok(self.both().await?.0) })
    }
}

/// The error an error answer stands for. Ops-Core sends `{detail, code}`;
/// anything else (a proxy's HTML page) is described by its status and the
/// start of its text.
fn api_error(status: StatusCode, body: &[u8]) -> ClientError {
    let parsed: Option<Value> = serde_json::from_slice(body).ok();
    let field = |k: &str| {
        parsed
            .as_ref()
            .and_then(|v| v.get(k))
            .and_then(Value::as_str)
            .map(str::to_owned)
    };
    let detail = field("detail").unwrap_or_else(|| {
        let text = String::from_utf8_lossy(body);
        let text: String = text.trim().chars().take(200).collect();
        if text.is_empty() {
            format!("HTTP {status}")
        } else {
            format!("HTTP {status}: {text}")
        }
    });
    ClientError::Api {
        status: status.as_u16(),
        code: field("code").unwrap_or_else(|| "unknown".to_owned()),
        detail,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_bodies_keep_detail_and_code() {
        let e = api_error(
            StatusCode::NOT_FOUND,
            br#"{"detail":"Agent not found: x","code":"agent_not_found"}"#,
        );
        assert!(
            matches!(e, ClientError::Api { status: 404, ref code, ref detail }
            if code == "agent_not_found" && detail == "Agent not found: x")
        );
        let e = api_error(StatusCode::BAD_GATEWAY, b"<html>bad gateway</html>");
        assert!(
            matches!(e, ClientError::Api { status: 502, ref code, ref detail }
            if code == "unknown" && detail.contains("<html>bad gateway"))
        );
    }
}
