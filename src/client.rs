//! A typed HTTP client for Ops-Core, used by the simulator (and by the CLI
//! and tests as they grow). Errors carry the server's `detail` and `code`.

use std::time::Duration;

use serde::de::DeserializeOwned;
use serde_json::{json, Value};

use crate::http::auth::sign;

/// Which Ops-Core server a client-side command talks to, and with what
/// credentials. Shared by `opscore simulate` and `opscore bench`.
#[derive(Debug, Clone, clap::Args)]
pub struct TargetArgs {
    /// Ops-Core base URL.
    #[arg(long, env = "OPSCORE_URL", default_value = "http://127.0.0.1:8000")]
    pub url: String,
    /// API key (state reports, reads, triggers; registration when no secret is given).
    #[arg(long, env = "OPSCORE_API_KEY", hide_env_values = true)]
    pub api_key: String,
    /// Webhook secret to sign registrations with, as AgentKit does.
    #[arg(long, env = "OPSCORE_WEBHOOK_SECRET", hide_env_values = true)]
    pub webhook_secret: Option<String>,
}

/// What went wrong talking to Ops-Core.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The request did not complete (connection refused, timeout, …).
    #[error("request to Ops-Core failed: {0}")]
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
            rb.header("X-AgentKit-Timestamp", ts)
                .header("X-AgentKit-Signature", sig)
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
}

impl Client {
    /// A client for the server at `base` (e.g. `http://127.0.0.1:8000`).
    pub fn new(base: &str, api_key: Option<String>) -> Self {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap_or_default();
        Self {
            base: base.trim_end_matches('/').to_owned(),
            api_key,
            http,
        }
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

    async fn parse<T: DeserializeOwned>(resp: reqwest::Response) -> Result<T, ClientError> {
        let status = resp.status();
        if status.is_success() {
            return Ok(resp.json().await?);
        }
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        Err(ClientError::Api {
            status: status.as_u16(),
            code: body["code"].as_str().unwrap_or("unknown").to_owned(),
            detail: body["detail"].as_str().unwrap_or("no detail").to_owned(),
        })
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
        Self::parse(rb.send().await?).await
    }

    /// Report an agent's state, stamped now.
    pub async fn report_state(
        &self,
        agent_id: &str,
        state: &str,
        details: Option<&Value>,
    ) -> Result<Value, ClientError> {
        let body = json!({
            "agentId": agent_id,
            "timestamp": chrono::Utc::now().to_rfc3339(),
            "state": state,
            "details": details,
        });
        let rb = self
            .http
            .post(self.url(&format!("/v1/opscore/agent/{agent_id}/state")))
            .json(&body);
        Self::parse(self.authed(rb).send().await?).await
    }

    /// GET a path and decode the JSON answer.
    pub async fn get_json(&self, path: &str) -> Result<Value, ClientError> {
        let rb = self.http.get(self.url(path));
        Self::parse(self.authed(rb).send().await?).await
    }

    /// POST a JSON body to a path and decode the JSON answer.
    pub async fn post_json(&self, path: &str, body: &Value) -> Result<Value, ClientError> {
        let rb = self.http.post(self.url(path)).json(body);
        Self::parse(self.authed(rb).send().await?).await
    }
}
