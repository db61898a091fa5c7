//! Configuration: every setting is an environment variable and a flag of
//! `opscore serve`. Raw values come from clap; [`RawSettings::resolve`]
//! validates them and names the setting when one is wrong. Nothing falls back
//! to an insecure default.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Args;

use crate::domain::workflow::Backoff;
use crate::store::{EngineRules, KeepPerAgent, Liveness, StoreOptions};

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

/// A setting that failed validation, named by its variable and flag.
#[derive(Debug, thiserror::Error)]
#[error("invalid setting {env} (--{flag}): {message}")]
pub struct ConfigError {
    env: &'static str,
    flag: &'static str,
    message: String,
}

impl ConfigError {
    fn new(env: &'static str, flag: &'static str, message: impl Into<String>) -> Self {
        Self {
            env,
            flag,
            message: message.into(),
        }
    }
}

/// Where the database lives; shared by `serve` and `migrate`.
#[derive(Debug, Clone, Args)]
pub struct DbArgs {
    /// Directory for the SQLite database and the generated API key.
    #[arg(long, env = "OPSCORE_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,
    /// Database URL: sqlite://PATH or postgres://USER@HOST/DB.
    /// [default: sqlite://<data-dir>/opscore.db]
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
}

impl DbArgs {
    /// The database URL, defaulting to a SQLite file in the data directory.
    pub fn url(&self) -> Result<String, ConfigError> {
        match &self.database_url {
            Some(url)
                if url.starts_with("sqlite:")
                    || url.starts_with("postgres:")
                    || url.starts_with("postgresql:") =>
            {
                Ok(url.clone())
            }
            Some(_) => Err(ConfigError::new(
                "DATABASE_URL",
                "database-url",
                "must start with sqlite:// or postgres://",
            )),
            None => Ok(format!(
                "sqlite://{}",
                self.data_dir.join("opscore.db").display()
            )),
        }
    }
}

/// Raw settings of `opscore serve`, as given on the command line or in the
/// environment. Values are strings here so that validation can name the
/// setting in its error.
#[derive(Debug, Clone, Args)]
pub struct RawSettings {
    /// Database location.
    #[command(flatten)]
    pub db: DbArgs,
    /// Address to listen on.
    #[arg(long, env = "OPSCORE_BIND", default_value = "127.0.0.1:8000")]
    pub bind: String,
    /// Bootstrap admin API key. Unset: one is generated once and kept in
    /// <data-dir>/api_key (mode 0600).
    #[arg(long, env = "OPSCORE_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// HMAC secret the agent framework signs registration webhooks with.
    #[arg(long, env = "OPSCORE_WEBHOOK_SECRET", hide_env_values = true)]
    pub webhook_secret: Option<String>,
    /// More webhook secrets, comma-separated; any configured secret
    /// verifies (for rotation).
    #[arg(long, env = "OPSCORE_WEBHOOK_SECRETS", hide_env_values = true)]
    pub webhook_secrets: Option<String>,
    /// Requests per second allowed to each API key that sets no rateLimit
    /// of its own. [default: unlimited]
    #[arg(long, env = "OPSCORE_RATE_LIMIT_PER_KEY")]
    pub rate_limit_per_key: Option<String>,
    /// Largest accepted distance between a webhook's timestamp and now, in seconds.
    #[arg(long, env = "OPSCORE_WEBHOOK_TOLERANCE_SECS", default_value = "300")]
    pub webhook_tolerance_secs: String,
    /// How far ahead of the server's clock a state report's timestamp may
    /// be, in seconds; further is refused (422 timestamp_in_future).
    #[arg(long, env = "OPSCORE_MAX_CLOCK_SKEW_SECS", default_value = "300")]
    pub max_clock_skew_secs: String,
    /// Accept unauthenticated registration webhooks (legacy load scripts only).
    #[arg(long, env = "OPSCORE_ALLOW_UNSIGNED_NOTIFY", default_value = "false")]
    pub allow_unsigned_notify: String,
    /// AgentKit API base URL including /v1, e.g. http://agentkit:8000/v1.
    #[arg(long, env = "AGENTKIT_API_URL")]
    pub agentkit_api_url: Option<String>,
    /// Log filter: a level (error, warn, info, debug, trace) or tracing directives.
    #[arg(long, env = "LOG_LEVEL", default_value = "info")]
    pub log_level: String,
    /// Log format: json or text.
    #[arg(long, env = "OPSCORE_LOG_FORMAT", default_value = "json")]
    pub log_format: String,
    /// Largest request body accepted on any route, in bytes.
    #[arg(long, env = "OPSCORE_MAX_BODY_BYTES", default_value = "1048576")]
    pub max_body_bytes: String,
    /// How long shutdown waits for in-flight requests, in seconds.
    #[arg(long, env = "OPSCORE_SHUTDOWN_GRACE_SECS", default_value = "10")]
    pub shutdown_grace_secs: String,
    /// Longest a request may take (reading its body included) before it is
    /// answered 503 request_timeout, in seconds.
    #[arg(long, env = "OPSCORE_REQUEST_TIMEOUT_SECS", default_value = "30")]
    pub request_timeout_secs: String,
    /// Longest a client may take to send a request's headers, in seconds;
    /// also how long an idle kept-alive connection stays open.
    #[arg(long, env = "OPSCORE_HEADER_READ_TIMEOUT_SECS", default_value = "10")]
    pub header_read_timeout_secs: String,
    /// Most requests handled at once; past it requests are refused at once
    /// with 503 overloaded (GET /health is exempt).
    #[arg(long, env = "OPSCORE_MAX_CONCURRENT_REQUESTS", default_value = "1024")]
    pub max_concurrent_requests: String,
    /// Most requests without a valid API key (no key, a wrong one, or a
    /// webhook not yet verified) handled at once, apart from the above;
    /// past it they get 503 overloaded.
    #[arg(
        long,
        env = "OPSCORE_MAX_UNAUTHENTICATED_REQUESTS",
        default_value = "64"
    )]
    pub max_unauthenticated_requests: String,
    /// Longest a client may take to send a request's body, from the end of
    /// its headers, in seconds; past it the request gets 408 request_timeout.
    #[arg(long, env = "OPSCORE_BODY_READ_TIMEOUT_SECS", default_value = "10")]
    pub body_read_timeout_secs: String,
    /// Failed authentications one client address may make in a burst
    /// before it is throttled (429 too_many_failures); one more is allowed
    /// each second.
    #[arg(long, env = "OPSCORE_AUTH_FAILURE_BURST", default_value = "20")]
    pub auth_failure_burst: String,
    /// Most database connections (PostgreSQL pool; SQLite readers).
    #[arg(long, env = "OPSCORE_DB_MAX_CONNECTIONS", default_value = "16")]
    pub db_max_connections: String,
    /// How long a request waits for a database connection, in seconds.
    #[arg(long, env = "OPSCORE_DB_ACQUIRE_TIMEOUT_SECS", default_value = "5")]
    pub db_acquire_timeout_secs: String,
    /// Directory of workflow definitions (*.json, *.yaml, *.yml) loaded at
    /// startup. [default: ./workflows, skipped if absent]
    #[arg(long, env = "OPSCORE_WORKFLOWS_DIR")]
    pub workflows_dir: Option<PathBuf>,
    /// Where tasks are sent: agentkit (AGENTKIT_API_URL), direct (each agent's
    /// contactEndpoint), or auto (agentkit when AGENTKIT_API_URL is set).
    #[arg(long, env = "OPSCORE_DISPATCH_MODE", default_value = "auto")]
    pub dispatch_mode: String,
    /// Run the dispatcher in this process (false: serve the API only).
    #[arg(long, env = "OPSCORE_DISPATCHER", default_value = "true")]
    pub dispatcher: String,
    /// Also send tasks to agents whose state is still UNKNOWN (just registered).
    #[arg(long, env = "OPSCORE_DISPATCH_TO_UNKNOWN", default_value = "true")]
    pub dispatch_to_unknown: String,
    /// Deadline of an attempt when the task sets no timeoutSeconds, in seconds.
    #[arg(long, env = "OPSCORE_TASK_TIMEOUT_SECS", default_value = "300")]
    pub task_timeout_secs: String,
    /// Delay before the first retry, in milliseconds (doubles per attempt by default).
    #[arg(long, env = "OPSCORE_RETRY_BASE_MS", default_value = "1000")]
    pub retry_base_ms: String,
    /// Growth of the retry delay per attempt.
    #[arg(long, env = "OPSCORE_RETRY_FACTOR", default_value = "2")]
    pub retry_factor: String,
    /// Longest retry delay, in milliseconds.
    #[arg(long, env = "OPSCORE_RETRY_MAX_MS", default_value = "60000")]
    pub retry_max_ms: String,
    /// Connect timeout of a dispatch request, in milliseconds.
    #[arg(
        long,
        env = "OPSCORE_DISPATCH_CONNECT_TIMEOUT_MS",
        default_value = "2000"
    )]
    pub dispatch_connect_timeout_ms: String,
    /// Overall timeout of a dispatch request, in milliseconds.
    #[arg(long, env = "OPSCORE_DISPATCH_TIMEOUT_MS", default_value = "10000")]
    pub dispatch_timeout_ms: String,
    /// Most dispatch requests in flight at once.
    #[arg(long, env = "OPSCORE_DISPATCH_CONCURRENCY", default_value = "64")]
    pub dispatch_concurrency: String,
    /// How often the dispatcher looks for due tasks when nothing woke it, in milliseconds.
    #[arg(long, env = "OPSCORE_DISPATCH_POLL_MS", default_value = "250")]
    pub dispatch_poll_ms: String,
    /// Agent lease for every agent that sets none of its own, in seconds:
    /// an agent not heard from for this long (plus the grace) is stale and
    /// sent no task. Leases are opt-in: unset, only agents with their own
    /// (metadata.ttlSeconds, or PUT .../lease) can go stale. [default: none]
    #[arg(long, env = "OPSCORE_AGENT_TTL_SECS")]
    pub agent_ttl_secs: Option<String>,
    /// Extra margin before an agent counts as stale, in seconds.
    #[arg(long, env = "OPSCORE_STALE_GRACE_SECS", default_value = "5")]
    pub stale_grace_secs: String,
    /// How long change-feed events are kept (and can be resumed from), in seconds.
    #[arg(long, env = "OPSCORE_EVENT_RETENTION_SECS", default_value = "86400")]
    pub event_retention_secs: String,
    /// State history entries older than this are deleted, in seconds (0: kept forever).
    #[arg(long, env = "OPSCORE_HISTORY_MAX_AGE_SECS", default_value = "2592000")]
    pub history_max_age_secs: String,
    /// Most state history entries kept per agent, newest first (0: no limit).
    #[arg(long, env = "OPSCORE_HISTORY_MAX_PER_AGENT", default_value = "10000")]
    pub history_max_per_agent: String,
    /// Finished sessions older than this are deleted, in seconds (0: kept forever).
    #[arg(long, env = "OPSCORE_SESSIONS_MAX_AGE_SECS", default_value = "2592000")]
    pub sessions_max_age_secs: String,
    /// Most finished sessions kept per agent, newest first (0: no limit).
    #[arg(long, env = "OPSCORE_SESSIONS_MAX_PER_AGENT", default_value = "1000")]
    pub sessions_max_per_agent: String,
    /// Most event streams and blocking reads open at once; past it they get
    /// 503 overloaded.
    #[arg(long, env = "OPSCORE_MAX_FEED_SUBSCRIBERS", default_value = "1024")]
    pub max_feed_subscribers: String,
    /// Most event streams and blocking reads one API key may hold open at
    /// once, unless the key sets its own maxStreams; past it, 429
    /// too_many_streams.
    #[arg(long, env = "OPSCORE_MAX_STREAMS_PER_KEY", default_value = "16")]
    pub max_streams_per_key: String,
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
}

/// What is kept, and how often old records are pruned.
#[derive(Debug, Clone)]
pub struct RetentionConfig {
    /// Change-feed events.
    pub events: Duration,
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

impl Default for RetentionConfig {
    fn default() -> Self {
        Self {
            events: Duration::from_secs(86_400),
            history_max_age: Some(Duration::from_secs(30 * 86_400)),
            sessions_max_age: Some(Duration::from_secs(30 * 86_400)),
            keep: KeepPerAgent {
                history: Some(10_000),
                sessions: Some(1_000),
            },
            prune_every: Duration::from_secs(30),
        }
    }
}

/// Where tasks are sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DispatchTarget {
    /// `POST {AGENTKIT_API_URL}/agents/{agentId}/run` (contract 1.7).
    AgentKit(url::Url),
    /// The same body straight to the agent's `contactEndpoint`.
    Direct,
}

/// Dispatcher settings.
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

impl Default for DispatchConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            target: DispatchTarget::Direct,
            allow_unknown: true,
            connect_timeout: Duration::from_secs(2),
            request_timeout: Duration::from_secs(10),
            concurrency: 64,
            poll_interval: Duration::from_millis(250),
        }
    }
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

    /// A configuration with every default, for a given database and key.
    /// Tests and embedders start here and adjust fields.
    pub fn new(database_url: impl Into<String>, api_key: impl Into<String>) -> Self {
        Self {
            bind: SocketAddr::from(([127, 0, 0, 1], 8000)),
            data_dir: PathBuf::from("./data"),
            database_url: Secret::new(database_url),
            api_key: Secret::new(api_key),
            webhook_secret: None,
            more_webhook_secrets: Vec::new(),
            rate_limit_per_key: None,
            webhook_tolerance: Duration::from_secs(300),
            max_clock_skew: Duration::from_secs(300),
            allow_unsigned_notify: false,
            agentkit_api_url: None,
            log_level: "info".into(),
            log_format: LogFormat::Json,
            max_body_bytes: 1024 * 1024,
            shutdown_grace: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            header_read_timeout: Duration::from_secs(10),
            max_concurrent_requests: 1024,
            max_unauthenticated_requests: 64,
            body_read_timeout: Duration::from_secs(10),
            auth_failure_burst: crate::http::keyring::DEFAULT_FAILURE_BURST,
            db: StoreOptions::default(),
            workflows_dir: PathBuf::from("./workflows"),
            workflows_dir_explicit: false,
            dispatch: DispatchConfig::default(),
            retention: RetentionConfig::default(),
            max_feed_subscribers: 1024,
            max_streams_per_key: crate::http::keyring::DEFAULT_MAX_STREAMS,
        }
    }
}

impl RawSettings {
    /// Validate every setting. The API key, when not given, is read from (or
    /// generated into) the data directory; the second value says which.
    pub fn resolve(self) -> Result<(Config, KeySource), anyhow::Error> {
        let workflows_dir_explicit = self.workflows_dir.is_some();
        let database_url = self.db.url()?;
        let bind: SocketAddr = self.bind.parse().map_err(|e| {
            ConfigError::new(
                "OPSCORE_BIND",
                "bind",
                format!("'{}' is not a socket address: {e}", self.bind),
            )
        })?;
        let webhook_secret = match self.webhook_secret {
            Some(s) if s.is_empty() => {
                return Err(ConfigError::new(
                    "OPSCORE_WEBHOOK_SECRET",
                    "webhook-secret",
                    "must not be empty",
                )
                .into())
            }
            Some(s) => Some(Secret::new(s)),
            None => None,
        };
        let webhook_tolerance = Duration::from_secs(parse_num(
            &self.webhook_tolerance_secs,
            1,
            86_400,
            "OPSCORE_WEBHOOK_TOLERANCE_SECS",
            "webhook-tolerance-secs",
        )?);
        let max_clock_skew = Duration::from_secs(parse_num(
            &self.max_clock_skew_secs,
            0,
            365 * 86_400,
            "OPSCORE_MAX_CLOCK_SKEW_SECS",
            "max-clock-skew-secs",
        )?);
        // Empty reads as unset for these two (as for AGENTKIT_API_URL), so
        // that docker-compose.yml can pass them through when .env leaves
        // them out; either way nothing is added or limited.
        let more_webhook_secrets = match self.webhook_secrets.as_deref() {
            None | Some("") => Vec::new(),
            Some(list) => parse_secret_list(list)?,
        };
        let rate_limit_per_key = match self.rate_limit_per_key.as_deref() {
            None | Some("") => None,
            Some(raw) => Some(parse_num(
                raw,
                1,
                u64::from(crate::domain::apikey::MAX_RATE_LIMIT),
                "OPSCORE_RATE_LIMIT_PER_KEY",
                "rate-limit-per-key",
            )? as u32),
        };
        let allow_unsigned_notify = parse_bool(
            &self.allow_unsigned_notify,
            "OPSCORE_ALLOW_UNSIGNED_NOTIFY",
            "allow-unsigned-notify",
        )?;
        let agentkit_api_url = match self.agentkit_api_url.as_deref() {
            None | Some("") => None,
            Some(s) => {
                let url = url::Url::parse(s).map_err(|e| {
                    ConfigError::new(
                        "AGENTKIT_API_URL",
                        "agentkit-api-url",
                        format!("'{s}' is not a URL: {e}"),
                    )
                })?;
                if !matches!(url.scheme(), "http" | "https") {
                    return Err(ConfigError::new(
                        "AGENTKIT_API_URL",
                        "agentkit-api-url",
                        "must be an http or https URL",
                    )
                    .into());
                }
                Some(url)
            }
        };
        tracing_subscriber::EnvFilter::try_new(&self.log_level).map_err(|e| {
            ConfigError::new(
                "LOG_LEVEL",
                "log-level",
                format!("'{}': {e}", self.log_level),
            )
        })?;
        let log_format = match self.log_format.to_ascii_lowercase().as_str() {
            "json" => LogFormat::Json,
            "text" | "pretty" => LogFormat::Text,
            other => {
                return Err(ConfigError::new(
                    "OPSCORE_LOG_FORMAT",
                    "log-format",
                    format!("'{other}' is not one of json, text"),
                )
                .into())
            }
        };
        let max_body_bytes = parse_num(
            &self.max_body_bytes,
            1024,
            1 << 30,
            "OPSCORE_MAX_BODY_BYTES",
            "max-body-bytes",
        )? as usize;
        let shutdown_grace = Duration::from_secs(parse_num(
            &self.shutdown_grace_secs,
            0,
            3600,
            "OPSCORE_SHUTDOWN_GRACE_SECS",
            "shutdown-grace-secs",
        )?);
        let request_timeout = Duration::from_secs(parse_num(
            &self.request_timeout_secs,
            1,
            3600,
            "OPSCORE_REQUEST_TIMEOUT_SECS",
            "request-timeout-secs",
        )?);
        let header_read_timeout = Duration::from_secs(parse_num(
            &self.header_read_timeout_secs,
            1,
            3600,
            "OPSCORE_HEADER_READ_TIMEOUT_SECS",
            "header-read-timeout-secs",
        )?);
        let max_concurrent_requests = parse_num(
            &self.max_concurrent_requests,
            1,
            1_000_000,
            "OPSCORE_MAX_CONCURRENT_REQUESTS",
            "max-concurrent-requests",
        )? as usize;
        let max_unauthenticated_requests = parse_num(
            &self.max_unauthenticated_requests,
            1,
            1_000_000,
            "OPSCORE_MAX_UNAUTHENTICATED_REQUESTS",
            "max-unauthenticated-requests",
        )? as usize;
        let body_read_timeout = Duration::from_secs(parse_num(
            &self.body_read_timeout_secs,
            1,
            3600,
            "OPSCORE_BODY_READ_TIMEOUT_SECS",
            "body-read-timeout-secs",
        )?);
        let auth_failure_burst = parse_num(
            &self.auth_failure_burst,
            1,
            1_000_000,
            "OPSCORE_AUTH_FAILURE_BURST",
            "auth-failure-burst",
        )? as u32;
        let max_streams_per_key = parse_num(
            &self.max_streams_per_key,
            1,
            u64::from(crate::domain::apikey::MAX_STREAMS),
            "OPSCORE_MAX_STREAMS_PER_KEY",
            "max-streams-per-key",
        )? as u32;
        let ms = |raw: &str, min, max, env, flag| {
            parse_num(raw, min, max, env, flag).map(Duration::from_millis)
        };
        let backoff = Backoff {
            base_ms: parse_num(
                &self.retry_base_ms,
                1,
                3_600_000,
                "OPSCORE_RETRY_BASE_MS",
                "retry-base-ms",
            )?,
            factor: match self.retry_factor.trim().parse::<f64>() {
                Ok(f) if (1.0..=10.0).contains(&f) => f,
                _ => {
                    return Err(ConfigError::new(
                        "OPSCORE_RETRY_FACTOR",
                        "retry-factor",
                        format!("'{}' is not a number from 1 to 10", self.retry_factor),
                    )
                    .into())
                }
            },
            cap_ms: parse_num(
                &self.retry_max_ms,
                1,
                86_400_000,
                "OPSCORE_RETRY_MAX_MS",
                "retry-max-ms",
            )?,
        };
        let target = match self.dispatch_mode.to_ascii_lowercase().as_str() {
            "auto" => agentkit_api_url
                .clone()
                .map_or(DispatchTarget::Direct, DispatchTarget::AgentKit),
            "direct" => DispatchTarget::Direct,
            "agentkit" => match &agentkit_api_url {
                Some(u) => DispatchTarget::AgentKit(u.clone()),
                None => {
                    return Err(ConfigError::new(
                        "OPSCORE_DISPATCH_MODE",
                        "dispatch-mode",
                        "agentkit needs AGENTKIT_API_URL to be set",
                    )
                    .into())
                }
            },
            other => {
                return Err(ConfigError::new(
                    "OPSCORE_DISPATCH_MODE",
                    "dispatch-mode",
                    format!("'{other}' is not one of auto, agentkit, direct"),
                )
                .into())
            }
        };
        let dispatch = DispatchConfig {
            enabled: parse_bool(&self.dispatcher, "OPSCORE_DISPATCHER", "dispatcher")?,
            target,
            allow_unknown: parse_bool(
                &self.dispatch_to_unknown,
                "OPSCORE_DISPATCH_TO_UNKNOWN",
                "dispatch-to-unknown",
            )?,
            connect_timeout: ms(
                &self.dispatch_connect_timeout_ms,
                1,
                600_000,
                "OPSCORE_DISPATCH_CONNECT_TIMEOUT_MS",
                "dispatch-connect-timeout-ms",
            )?,
            request_timeout: ms(
                &self.dispatch_timeout_ms,
                1,
                600_000,
                "OPSCORE_DISPATCH_TIMEOUT_MS",
                "dispatch-timeout-ms",
            )?,
            concurrency: parse_num(
                &self.dispatch_concurrency,
                1,
                10_000,
                "OPSCORE_DISPATCH_CONCURRENCY",
                "dispatch-concurrency",
            )? as usize,
            poll_interval: ms(
                &self.dispatch_poll_ms,
                1,
                60_000,
                "OPSCORE_DISPATCH_POLL_MS",
                "dispatch-poll-ms",
            )?,
        };
        let engine = EngineRules {
            backoff,
            jitter: crate::store::Jitter::default(),
            default_timeout_secs: parse_num(
                &self.task_timeout_secs,
                1,
                crate::domain::workflow::MAX_SECONDS,
                "OPSCORE_TASK_TIMEOUT_SECS",
                "task-timeout-secs",
            )?,
            liveness: Liveness {
                ttl_secs: match self.agent_ttl_secs.as_deref().map(str::trim) {
                    None | Some("") => None,
                    Some(raw) => Some(parse_num(
                        raw,
                        1,
                        crate::domain::agent::MAX_TTL_SECS as u64,
                        "OPSCORE_AGENT_TTL_SECS",
                        "agent-ttl-secs",
                    )? as i64),
                },
                grace_secs: parse_num(
                    &self.stale_grace_secs,
                    0,
                    3600,
                    "OPSCORE_STALE_GRACE_SECS",
                    "stale-grace-secs",
                )? as i64,
            },
        };
        let max_age = |raw: &str, env, flag| {
            parse_num(raw, 0, 100 * 365 * 86_400, env, flag)
                .map(|n| (n > 0).then(|| Duration::from_secs(n)))
        };
        let keep = |raw: &str, env, flag| {
            parse_num(raw, 0, u64::from(u32::MAX), env, flag).map(|n| (n > 0).then_some(n as u32))
        };
        let retention = RetentionConfig {
            events: Duration::from_secs(parse_num(
                &self.event_retention_secs,
                60,
                90 * 86_400,
                "OPSCORE_EVENT_RETENTION_SECS",
                "event-retention-secs",
            )?),
            history_max_age: max_age(
                &self.history_max_age_secs,
                "OPSCORE_HISTORY_MAX_AGE_SECS",
                "history-max-age-secs",
            )?,
            sessions_max_age: max_age(
                &self.sessions_max_age_secs,
                "OPSCORE_SESSIONS_MAX_AGE_SECS",
                "sessions-max-age-secs",
            )?,
            keep: KeepPerAgent {
                history: keep(
                    &self.history_max_per_agent,
                    "OPSCORE_HISTORY_MAX_PER_AGENT",
                    "history-max-per-agent",
                )?,
                sessions: keep(
                    &self.sessions_max_per_agent,
                    "OPSCORE_SESSIONS_MAX_PER_AGENT",
                    "sessions-max-per-agent",
                )?,
            },
            ..RetentionConfig::default()
        };
        let max_feed_subscribers = parse_num(
            &self.max_feed_subscribers,
            1,
            100_000,
            "OPSCORE_MAX_FEED_SUBSCRIBERS",
            "max-feed-subscribers",
        )? as usize;
        let db = StoreOptions {
            engine,
            max_connections: parse_num(
                &self.db_max_connections,
                1,
                1000,
                "OPSCORE_DB_MAX_CONNECTIONS",
                "db-max-connections",
            )? as u32,
            acquire_timeout: Duration::from_secs(parse_num(
                &self.db_acquire_timeout_secs,
                1,
                600,
                "OPSCORE_DB_ACQUIRE_TIMEOUT_SECS",
                "db-acquire-timeout-secs",
            )?),
        };
        let (api_key, source) = match self.api_key {
            Some(k) => (validate_key(&k)?, KeySource::Configured),
            None => {
                let path = self.db.data_dir.join("api_key");
                let (key, created) = load_or_create_key(&path)?;
                (key, KeySource::File { path, created })
            }
        };
        let config = Config {
            bind,
            data_dir: self.db.data_dir,
            database_url: Secret::new(database_url),
            api_key,
            webhook_secret,
            more_webhook_secrets,
            rate_limit_per_key,
            webhook_tolerance,
            max_clock_skew,
            allow_unsigned_notify,
            agentkit_api_url,
            log_level: self.log_level,
            log_format,
            max_body_bytes,
            shutdown_grace,
            request_timeout,
            header_read_timeout,
            max_concurrent_requests,
            max_unauthenticated_requests,
            body_read_timeout,
            auth_failure_burst,
            db,
            workflows_dir: self
                .workflows_dir
                .unwrap_or_else(|| PathBuf::from("./workflows")),
            workflows_dir_explicit,
            dispatch,
            retention,
            max_feed_subscribers,
            max_streams_per_key,
        };
        Ok((config, source))
    }
}

/// Where the bootstrap API key came from, for the startup log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// `OPSCORE_API_KEY` / `--api-key`.
    Configured,
    /// The key file in the data directory.
    File {
        /// Its path.
        path: PathBuf,
        /// Whether this start generated it.
        created: bool,
    },
}

fn parse_num(
    raw: &str,
    min: u64,
    max: u64,
    env: &'static str,
    flag: &'static str,
) -> Result<u64, ConfigError> {
    let n: u64 = raw
        .trim()
        .parse()
        .map_err(|_| ConfigError::new(env, flag, format!("'{raw}' is not a whole number")))?;
    if !(min..=max).contains(&n) {
        return Err(ConfigError::new(
            env,
            flag,
            format!("{n} is not between {min} and {max}"),
        ));
    }
    Ok(n)
}

fn parse_bool(raw: &str, env: &'static str, flag: &'static str) -> Result<bool, ConfigError> {
    match raw.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        _ => Err(ConfigError::new(
            env,
            flag,
            format!("'{raw}' is not true or false"),
        )),
    }
}

/// Split `OPSCORE_WEBHOOK_SECRETS` at commas; an empty entry is a mistake
/// (a stray comma), not a secret.
fn parse_secret_list(list: &str) -> Result<Vec<Secret>, ConfigError> {
    list.split(',')
        .enumerate()
        .map(|(i, s)| {
            let s = s.trim();
            if s.is_empty() {
                Err(ConfigError::new(
                    "OPSCORE_WEBHOOK_SECRETS",
                    "webhook-secrets",
                    format!("entry {} of the comma-separated list is empty", i + 1),
                ))
            } else {
                Ok(Secret::new(s))
            }
        })
        .collect()
}

/// Shortest API key accepted from configuration.
const MIN_KEY_LEN: usize = 16;

fn validate_key(k: &str) -> Result<Secret, ConfigError> {
    if k.trim().len() < MIN_KEY_LEN {
        return Err(ConfigError::new(
            "OPSCORE_API_KEY",
            "api-key",
            format!("must be at least {MIN_KEY_LEN} characters (unset it to have one generated)"),
        ));
    }
    Ok(Secret::new(k.trim()))
}

/// Read the generated key at `path`, or generate and store one (owner-only
/// permissions) if there is none. Returns the key and whether it is new.
pub fn load_or_create_key(path: &Path) -> anyhow::Result<(Secret, bool)> {
    use std::io::Write;
    match std::fs::read_to_string(path) {
        Ok(text) => {
            check_private(path)?;
            let key = text.trim();
            if key.len() < MIN_KEY_LEN {
                anyhow::bail!(
                    "API key file {} is too short or empty; delete it to generate a new key",
                    path.display()
                );
            }
            Ok((Secret::new(key), false))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if let Some(dir) = path.parent() {
                create_private_dir(dir).map_err(|e| {
                    anyhow::anyhow!("cannot create data directory {}: {e}", dir.display())
                })?;
            }
            let key = generate_key();
            let mut opts = std::fs::OpenOptions::new();
            opts.write(true).create_new(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
            let mut file = opts.open(path).map_err(|e| {
                anyhow::anyhow!("cannot create API key file {}: {e}", path.display())
            })?;
            file.write_all(format!("{key}\n").as_bytes())?;
            file.sync_all()?;
            Ok((Secret::new(key), true))
        }
        Err(e) => anyhow::bail!("cannot read API key file {}: {e}", path.display()),
    }
}

#[cfg(unix)]
fn check_private(path: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path)?.permissions().mode();
    if mode & 0o077 != 0 {
        anyhow::bail!(
            "API key file {} is readable by others (mode {:o}); run chmod 600 on it",
            path.display(),
            mode & 0o777
        );
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_private(_: &Path) -> anyhow::Result<()> {
    Ok(())
}

/// Create `dir` (and its parents) if missing; directories this creates are
/// owner-only (0700), since they hold the database and the API key.
pub fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    let mut b = std::fs::DirBuilder::new();
    b.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut b, 0o700);
    b.create(dir)
}

/// A new random key: 32 bytes from the OS generator, hex-encoded.
pub fn generate_key() -> String {
    use rand::RngCore;
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    format!("opscore_{}", hex::encode(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_file_is_created_private_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/api_key");
        let (k1, created) = load_or_create_key(&path).unwrap();
        assert!(created);
        assert!(k1.expose().len() > 64);
        let (k2, created) = load_or_create_key(&path).unwrap();
        assert!(!created);
        assert_eq!(k1, k2);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
            let err = load_or_create_key(&path).unwrap_err().to_string();
            assert!(err.contains("chmod 600"), "{err}");
        }
    }

    #[test]
    fn secrets_do_not_debug_print() {
        let c = Config::new("sqlite://x.db", "supersecretkey-123456");
        let dbg = format!("{c:?}");
        assert!(!dbg.contains("supersecretkey"), "{dbg}");
    }

    #[test]
    fn errors_name_the_setting() {
        let e = parse_num("abc", 1, 10, "OPSCORE_X", "x")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("OPSCORE_X") && e.contains("--x") && e.contains("abc"),
            "{e}"
        );
        assert!(parse_bool("maybe", "B", "b").is_err());
        // An empty value is a mistake, not "false": it must not silently
        // turn the dispatcher off.
        assert!(parse_bool("", "B", "b").is_err());
        assert!(validate_key("short").is_err());
    }

    #[test]
    fn webhook_secret_lists() {
        let list = parse_secret_list(" new-secret , old-secret").unwrap();
        assert_eq!(list, [Secret::new("new-secret"), Secret::new("old-secret")]);
        let e = parse_secret_list("a,,b").unwrap_err().to_string();
        assert!(
            e.contains("OPSCORE_WEBHOOK_SECRETS") && e.contains("entry 2"),
            "{e}"
        );
        let mut c = Config::new("sqlite://x.db", "supersecretkey-123456");
        assert!(c.webhook_secrets().is_empty());
        c.webhook_secret = Some(Secret::new("a,b"));
        c.more_webhook_secrets = list;
        assert_eq!(
            c.webhook_secrets(),
            [&b"a,b"[..], &b"new-secret"[..], &b"old-secret"[..]]
        );
    }
}
