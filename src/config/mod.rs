//! Configuration: every setting is an environment variable and a flag of
//! `opscore serve`, declared once in [`args`] with its parser and default.
//! A wrong value is refused as it is read, naming the setting; nothing
//! falls back to an insecure default. [`ServeArgs::resolve`] turns the
//! settings into the [`Config`] the service runs with.

mod args;
mod keyfile;
mod parse;
mod resolve;

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

pub use self::args::{DbArgs, DispatchMode, ServeArgs, DEFAULT_BIND};
pub use self::keyfile::{generate_key, load_or_create_key, KeySource};
pub use self::parse::{invalid_setting, ConfigError, OrUnset, SecretList, SettingParser};
use crate::store::{KeepPerAgent, StoreOptions};

/// A secret string whose `Debug` and `Display` never show it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wrap a secret value.
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }

    /// The secret itself; call only where it is used.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// One JSON object per line (the default; what log shippers want).
    Json,
    /// Human-readable text.
    Text,
}

/// How spans are encoded for the collector (`OTEL_EXPORTER_OTLP_PROTOCOL`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OtlpProtocol {
    /// `http/protobuf`, the OTLP/HTTP default.
    HttpProtobuf,
    /// `http/json`.
    HttpJson,
}

/// Where and how trace spans are exported (OTLP over HTTP).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OtelConfig {
    /// The traces URL: `OTEL_EXPORTER_OTLP_ENDPOINT` plus `/v1/traces`.
    pub traces_url: url::Url,
    /// The encoding.
    pub protocol: OtlpProtocol,
    /// `service.name` of every span.
    pub service_name: String,
}

/// Validated configuration of a running service.
#[derive(Debug, Clone)]
pub struct Config {
    /// Listen address.
    pub bind: SocketAddr,
    /// Data directory.
    pub data_dir: PathBuf,
    /// Database URL (may hold a password; not logged).
    pub database_url: Secret,
    /// Bootstrap admin key.
    pub api_key: Secret,
    /// Webhook signing secret (`OPSCORE_WEBHOOK_SECRET`, taken verbatim).
    pub webhook_secret: Option<Secret>,
    /// Further webhook secrets (`OPSCORE_WEBHOOK_SECRETS`); any of these or
    /// `webhook_secret` verifies a webhook.
    pub more_webhook_secrets: Vec<Secret>,
    /// Requests per second of keys without their own limit; `None`: no limit.
    pub rate_limit_per_key: Option<u32>,
    /// Webhook timestamp tolerance.
    pub webhook_tolerance: Duration,
    /// How far ahead of the server's clock a report's timestamp may be.
    pub max_clock_skew: Duration,
    /// Accept unauthenticated webhooks.
    pub allow_unsigned_notify: bool,
    /// AgentKit base URL.
    pub agentkit_api_url: Option<url::Url>,
    /// Log filter.
    pub log_level: String,
    /// Log format.
    pub log_format: LogFormat,
    /// Body limit in bytes.
    pub max_body_bytes: usize,
    /// Shutdown grace period.
    pub shutdown_grace: Duration,
    /// Deadline of one request, from its headers to its response.
    pub request_timeout: Duration,
    /// Deadline for a request's headers (and for an idle kept-alive
    /// connection's next request).
    pub header_read_timeout: Duration,
    /// Most requests with a valid key in flight; past it, 503 overloaded.
    pub max_concurrent_requests: usize,
    /// Most requests without one in flight; past it, 503 overloaded.
    pub max_unauthenticated_requests: usize,
    /// Deadline for a request's body, from the end of its headers.
    pub body_read_timeout: Duration,
    /// Failed authentications per client address before it is throttled.
    pub auth_failure_burst: u32,
    /// Database pool tuning and the workflow rules applied in storage.
    pub db: StoreOptions,
    /// Directory of workflow definitions loaded at startup; a missing
    /// directory is an error only when it was set explicitly.
    pub workflows_dir: PathBuf,
    /// Whether `workflows_dir` was set explicitly.
    pub workflows_dir_explicit: bool,
    /// Dispatcher settings.
    pub dispatch: DispatchConfig,
    /// What is kept, and how often old records are pruned.
    pub retention: RetentionConfig,
    /// Most event streams and blocking reads at once.
    pub max_feed_subscribers: usize,
    /// Most of them per key without its own cap.
    pub max_streams_per_key: u32,
    /// Serve HTTPS from these files; `None`: plain HTTP.
    pub tls: Option<TlsFiles>,
    /// Export trace spans; `None`: nothing OpenTelemetry runs.
    pub otel: Option<OtelConfig>,
}

/// The files TLS is served from (see `http::tls`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// PEM certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// PEM CA certificates; when set, clients must present a certificate
    /// signed by one of them.
    pub client_ca: Option<PathBuf>,
}

/// What is kept, and how often old records are pruned. Its `Default` is
/// that of the settings.
#[derive(Debug, Clone)]
pub struct RetentionConfig {
    /// Change-feed events.
    pub events: Duration,
    /// Audit entries older than this go (`None`: kept forever).
    pub audit_max_age: Option<Duration>,
    /// State history entries older than this go (`None`: kept forever).
    pub history_max_age: Option<Duration>,
    /// Finished sessions older than this go.
    pub sessions_max_age: Option<Duration>,
    /// Newest records kept per agent.
    pub keep: KeepPerAgent,
    /// How often the by-age passes run (the per-agent pass walks a batch of
    /// agents every second).
    pub prune_every: Duration,
}

/// Where tasks are sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DispatchTarget {
    /// `POST {AGENTKIT_API_URL}/agents/{agentId}/run` (docs/api.md §1.7).
    AgentKit(url::Url),
    /// The same body straight to the agent's `contactEndpoint`.
    Direct,
}

/// Dispatcher settings. Its `Default` is that of the settings.
#[derive(Debug, Clone)]
pub struct DispatchConfig {
    /// Run the dispatcher in this process.
    pub enabled: bool,
    /// Where tasks go.
    pub target: DispatchTarget,
    /// Dispatch to agents still `UNKNOWN`.
    pub allow_unknown: bool,
    /// Connect timeout per request.
    pub connect_timeout: Duration,
    /// Overall timeout per request.
    pub request_timeout: Duration,
    /// Most requests in flight.
    pub concurrency: usize,
    /// Idle poll interval.
    pub poll_interval: Duration,
}

impl DispatchConfig {
    /// How long a claim is held before another dispatcher may take it over:
    /// comfortably longer than one request can take.
    pub fn lease(&self) -> Duration {
        self.request_timeout * 3 + Duration::from_secs(5)
    }
}

impl Config {
    /// Every webhook secret that verifies a signature, in configuration
    /// order (`OPSCORE_WEBHOOK_SECRET` first). Empty: signatures are refused.
    pub fn webhook_secrets(&self) -> Vec<&[u8]> {
        self.webhook_secret
            .iter()
            .chain(&self.more_webhook_secrets)
            .map(|s| s.expose().as_bytes())
            .collect()
    }

    /// A configuration with every setting at its default, for a given
    /// database and key. Tests and embedders start here and adjust fields.
    pub fn new(database_url: impl Into<String>, api_key: impl Into<String>) -> Self {
        let mut config = ServeArgs::defaults()
            .config(Secret::new(api_key))
            .expect("the defaults combine (the test `defaults_are_valid` checks)");
        config.database_url = Secret::new(database_url);
        config
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_do_not_debug_print() {
        let c = Config::new("sqlite://x.db", "supersecretkey-123456");
        let dbg = format!("{c:?}");
        assert!(!dbg.contains("supersecretkey"), "{dbg}");
    }

    #[test]
    fn webhook_secrets_in_order() {
        let mut c = Config::new("sqlite://x.db", "supersecretkey-123456");
        assert!(c.webhook_secrets().is_empty());
        c.webhook_secret = Some(Secret::new("a,b"));
        c.more_webhook_secrets = vec![Secret::new("new-secret"), Secret::new("old-secret")];
        assert_eq!(
            c.webhook_secrets(),
            [&b"a,b"[..], &b"new-secret"[..], &b"old-secret"[..]]
        );
    }
}
