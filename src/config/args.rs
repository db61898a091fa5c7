//! The settings of `opscore serve` and `opscore migrate` as clap arguments:
//! each is one field with its variable, its flag, its parser (which checks
//! it, see [`super::parse`]) and its default, written here once.
//! `.env.example` and docs/configuration.md describe the same settings; a
//! test (tests/it/config_reference.rs) fails when they disagree with these fields.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{ArgAction, Args};
use url::Url;

use super::parse::{
    api_key, boolean, database_url, http_url, log_filter, log_format, millis, name, number, one_of,
    or_unset, secret, secret_list, secs, socket_addr, whole, whole_i64, whole_u32, whole_usize,
    OrUnset, SecretList,
};
use super::{LogFormat, OtlpProtocol, Secret};
use crate::domain::agent::MAX_TTL_SECS;
use crate::domain::apikey::{MAX_RATE_LIMIT, MAX_STREAMS};
use crate::domain::workflow::MAX_SECONDS;

/// The default of `OPSCORE_BIND`, which `opscore healthcheck` reads too.
pub const DEFAULT_BIND: &str = "127.0.0.1:8000";

/// Most of anything counted per process (requests, failures).
const A_MILLION: u32 = 1_000_000;
/// A day, in seconds.
const DAY: u64 = 86_400;

/// Where the database lives; shared by `serve` and `migrate`.
#[derive(Debug, Clone, Args)]
pub struct DbArgs {
    /// Directory for the SQLite database and the generated API key.
    #[arg(long, env = "OPSCORE_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,
    /// Database URL: sqlite://PATH or postgres://USER@HOST/DB.
    /// [default: sqlite://<data-dir>/opscore.db]
    #[arg(long, env = "DATABASE_URL", hide_env_values = true, value_parser = database_url())]
    pub database_url: Option<Secret>,
}

impl DbArgs {
    /// The database URL, defaulting to a SQLite file in the data directory.
    pub fn url(&self) -> String {
        match &self.database_url {
            Some(url) => url.expose().to_owned(),
            None => format!("sqlite://{}", self.data_dir.join("opscore.db").display()),
        }
    }
}

/// Where tasks are sent, as configured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DispatchMode {
    /// `agentkit` when `AGENTKIT_API_URL` is set, else `direct`.
    Auto,
    /// To AgentKit (`AGENTKIT_API_URL` must be set).
    AgentKit,
    /// To each agent's `contactEndpoint`.
    Direct,
}

/// Every setting of `opscore serve`, as given on the command line or in
/// the environment, each checked as it is read.
/// [`resolve`](Self::resolve) checks how they combine and builds the
/// [`Config`](super::Config).
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Database location.
    #[command(flatten)]
    pub db: DbArgs,
    /// Address to listen on.
    #[arg(long, env = "OPSCORE_BIND", default_value = DEFAULT_BIND, value_parser = socket_addr())]
    pub bind: SocketAddr,
    /// Bootstrap admin API key. Unset: one is generated once and kept in
    /// <data-dir>/api_key (mode 0600).
    #[arg(long, env = "OPSCORE_API_KEY", hide_env_values = true, value_parser = api_key())]
    pub api_key: Option<Secret>,
    /// HMAC secret the agent framework signs registration webhooks with.
    #[arg(long, env = "OPSCORE_WEBHOOK_SECRET", hide_env_values = true, value_parser = secret())]
    pub webhook_secret: Option<Secret>,
    /// More webhook secrets, comma-separated; any configured secret
    /// verifies (for rotation).
    #[arg(long, env = "OPSCORE_WEBHOOK_SECRETS", hide_env_values = true, value_parser = secret_list())]
    pub webhook_secrets: Option<SecretList>,
    /// Requests per second allowed to each API key that sets no rateLimit
    /// of its own. [default: unlimited]
    #[arg(long, env = "OPSCORE_RATE_LIMIT_PER_KEY", value_parser = or_unset(whole_u32(1, MAX_RATE_LIMIT)))]
    pub rate_limit_per_key: Option<OrUnset<u32>>,
    /// Largest accepted distance between a webhook's timestamp and now, in seconds.
    #[arg(long, env = "OPSCORE_WEBHOOK_TOLERANCE_SECS", default_value = "300", value_parser = secs(1, DAY))]
    pub webhook_tolerance_secs: Duration,
    /// How far ahead of the server's clock a state report's timestamp may
    /// be, in seconds; further is refused (422 timestamp_in_future).
    #[arg(long, env = "OPSCORE_MAX_CLOCK_SKEW_SECS", default_value = "300", value_parser = secs(0, 365 * DAY))]
    pub max_clock_skew_secs: Duration,
    /// Accept unauthenticated registration webhooks (legacy load scripts only).
    #[arg(long, env = "OPSCORE_ALLOW_UNSIGNED_NOTIFY", default_value = "false", action = ArgAction::Set, value_parser = boolean())]
    pub allow_unsigned_notify: bool,
    /// AgentKit API base URL including /v1, e.g. http://agentkit:8000/v1.
    #[arg(long, env = "AGENTKIT_API_URL", value_parser = or_unset(http_url()))]
    pub agentkit_api_url: Option<OrUnset<Url>>,
    /// Log filter: a level (error, warn, info, debug, trace) or tracing directives.
    #[arg(long, env = "LOG_LEVEL", default_value = "info", value_parser = log_filter())]
    pub log_level: String,
    /// Log format: json or text.
    #[arg(long, env = "OPSCORE_LOG_FORMAT", default_value = "json", value_parser = log_format())]
    pub log_format: LogFormat,
    /// Largest request body accepted on any route, in bytes.
    #[arg(long, env = "OPSCORE_MAX_BODY_BYTES", default_value = "1048576", value_parser = whole_usize(1024, 1 << 30))]
    pub max_body_bytes: usize,
    /// How long shutdown waits for in-flight requests, in seconds.
    #[arg(long, env = "OPSCORE_SHUTDOWN_GRACE_SECS", default_value = "10", value_parser = secs(0, 3600))]
    pub shutdown_grace_secs: Duration,
    /// Longest a request may take (reading its body included) before it is
    /// answered 503 request_timeout, in seconds.
    #[arg(long, env = "OPSCORE_REQUEST_TIMEOUT_SECS", default_value = "30", value_parser = secs(1, 3600))]
    pub request_timeout_secs: Duration,
    /// Longest a client may take to send a request's headers, in seconds;
    /// also how long an idle kept-alive connection stays open.
    #[arg(long, env = "OPSCORE_HEADER_READ_TIMEOUT_SECS", default_value = "10", value_parser = secs(1, 3600))]
    pub header_read_timeout_secs: Duration,
    /// Most requests handled at once; past it requests are refused at once
    /// with 503 overloaded (GET /health is exempt).
    #[arg(long, env = "OPSCORE_MAX_CONCURRENT_REQUESTS", default_value = "1024", value_parser = whole_usize(1, A_MILLION))]
    pub max_concurrent_requests: usize,
    /// Most requests without a valid API key (no key, a wrong one, or a
    /// webhook not yet verified) handled at once, apart from the above;
    /// past it they get 503 overloaded.
    #[arg(long, env = "OPSCORE_MAX_UNAUTHENTICATED_REQUESTS", default_value = "64", value_parser = whole_usize(1, A_MILLION))]
    pub max_unauthenticated_requests: usize,
    /// Longest a client may take to send a request's body, from the end of
    /// its headers, in seconds; past it the request gets 408 request_timeout.
    #[arg(long, env = "OPSCORE_BODY_READ_TIMEOUT_SECS", default_value = "10", value_parser = secs(1, 3600))]
    pub body_read_timeout_secs: Duration,
    /// Failed authentications one client address may make in a burst
    /// before it is throttled (429 too_many_failures); one more is allowed
    /// each second.
    #[arg(long, env = "OPSCORE_AUTH_FAILURE_BURST", default_value = "20", value_parser = whole_u32(1, A_MILLION))]
    pub auth_failure_burst: u32,
    /// Most database connections (PostgreSQL pool; SQLite readers).
    #[arg(long, env = "OPSCORE_DB_MAX_CONNECTIONS", default_value = "16", value_parser = whole_u32(1, 1000))]
    pub db_max_connections: u32,
    /// How long a request waits for a database connection, in seconds.
    #[arg(long, env = "OPSCORE_DB_ACQUIRE_TIMEOUT_SECS", default_value = "5", value_parser = secs(1, 600))]
    pub db_acquire_timeout_secs: Duration,
    /// Directory of workflow definitions (*.json, *.yaml, *.yml) loaded at
    /// startup. [default: ./workflows, skipped if absent]
    #[arg(long, env = "OPSCORE_WORKFLOWS_DIR")]
    pub workflows_dir: Option<PathBuf>,
    /// Where tasks are sent: agentkit (AGENTKIT_API_URL), direct (each agent's
    /// contactEndpoint), or auto (agentkit when AGENTKIT_API_URL is set).
    #[arg(long, env = "OPSCORE_DISPATCH_MODE", default_value = "auto", value_parser = one_of(
        &[("auto", DispatchMode::Auto), ("agentkit", DispatchMode::AgentKit), ("direct", DispatchMode::Direct)],
        "auto, agentkit, direct",
    ))]
    pub dispatch_mode: DispatchMode,
    /// Run the dispatcher in this process (false: serve the API only).
    #[arg(long, env = "OPSCORE_DISPATCHER", default_value = "true", action = ArgAction::Set, value_parser = boolean())]
    pub dispatcher: bool,
    /// Also send tasks to agents whose state is still UNKNOWN (just registered).
    #[arg(long, env = "OPSCORE_DISPATCH_TO_UNKNOWN", default_value = "true", action = ArgAction::Set, value_parser = boolean())]
    pub dispatch_to_unknown: bool,
    /// Deadline of an attempt when the task sets no timeoutSeconds, in seconds.
    #[arg(long, env = "OPSCORE_TASK_TIMEOUT_SECS", default_value = "300", value_parser = whole(1, MAX_SECONDS))]
    pub task_timeout_secs: u64,
    /// How long a due task may wait for a free agent when it sets no
    /// queueTimeoutSeconds, in seconds; then its attempt fails.
    #[arg(long, env = "OPSCORE_QUEUE_TIMEOUT_SECS", default_value = "300", value_parser = whole(1, MAX_SECONDS))]
    pub queue_timeout_secs: u64,
    /// Delay before the first retry, in milliseconds (doubles per attempt by default).
    #[arg(long, env = "OPSCORE_RETRY_BASE_MS", default_value = "1000", value_parser = whole(1, 3_600_000))]
    pub retry_base_ms: u64,
    /// Growth of the retry delay per attempt.
    #[arg(long, env = "OPSCORE_RETRY_FACTOR", default_value = "2", value_parser = number(1.0, 10.0))]
    pub retry_factor: f64,
    /// Longest retry delay, in milliseconds.
    #[arg(long, env = "OPSCORE_RETRY_MAX_MS", default_value = "60000", value_parser = whole(1, 86_400_000))]
    pub retry_max_ms: u64,
    /// Connect timeout of a dispatch request, in milliseconds.
    #[arg(long, env = "OPSCORE_DISPATCH_CONNECT_TIMEOUT_MS", default_value = "2000", value_parser = millis(1, 600_000))]
    pub dispatch_connect_timeout_ms: Duration,
    /// Overall timeout of a dispatch request, in milliseconds.
    #[arg(long, env = "OPSCORE_DISPATCH_TIMEOUT_MS", default_value = "10000", value_parser = millis(1, 600_000))]
    pub dispatch_timeout_ms: Duration,
    /// Most dispatch requests in flight at once.
    #[arg(long, env = "OPSCORE_DISPATCH_CONCURRENCY", default_value = "64", value_parser = whole_usize(1, 10_000))]
    pub dispatch_concurrency: usize,
    /// How often the dispatcher looks for due tasks when nothing woke it, in milliseconds.
    #[arg(long, env = "OPSCORE_DISPATCH_POLL_MS", default_value = "250", value_parser = millis(1, 60_000))]
    pub dispatch_poll_ms: Duration,
    /// Agent lease for every agent that sets none of its own, in seconds:
    /// an agent not heard from for this long (plus the grace) is stale and
    /// sent no task. Leases are opt-in: unset, only agents with their own
    /// (metadata.ttlSeconds, or PUT .../lease) can go stale. [default: none]
    #[arg(long, env = "OPSCORE_AGENT_TTL_SECS", value_parser = or_unset(whole_i64(1, MAX_TTL_SECS as u32)))]
    pub agent_ttl_secs: Option<OrUnset<i64>>,
    /// Extra margin before an agent counts as stale, in seconds.
    #[arg(long, env = "OPSCORE_STALE_GRACE_SECS", default_value = "5", value_parser = whole_i64(0, 3600))]
    pub stale_grace_secs: i64,
    /// How long change-feed events are kept (and can be resumed from), in seconds.
    #[arg(long, env = "OPSCORE_EVENT_RETENTION_SECS", default_value = "86400", value_parser = secs(60, 90 * DAY))]
    pub event_retention_secs: Duration,
    /// Audit entries (who changed what) older than this are deleted, in
    /// seconds (0: kept forever).
    #[arg(long, env = "OPSCORE_AUDIT_RETENTION_SECS", default_value = "31536000", value_parser = secs(0, 100 * 365 * DAY))]
    pub audit_retention_secs: Duration,
    /// State history entries older than this are deleted, in seconds (0: kept forever).
    #[arg(long, env = "OPSCORE_HISTORY_MAX_AGE_SECS", default_value = "2592000", value_parser = secs(0, 100 * 365 * DAY))]
    pub history_max_age_secs: Duration,
    /// Most state history entries kept per agent, newest first (0: no limit).
    #[arg(long, env = "OPSCORE_HISTORY_MAX_PER_AGENT", default_value = "10000", value_parser = whole_u32(0, u32::MAX))]
    pub history_max_per_agent: u32,
    /// Finished sessions older than this are deleted, in seconds (0: kept forever).
    #[arg(long, env = "OPSCORE_SESSIONS_MAX_AGE_SECS", default_value = "2592000", value_parser = secs(0, 100 * 365 * DAY))]
    pub sessions_max_age_secs: Duration,
    /// Most finished sessions kept per agent, newest first (0: no limit).
    #[arg(long, env = "OPSCORE_SESSIONS_MAX_PER_AGENT", default_value = "1000", value_parser = whole_u32(0, u32::MAX))]
    pub sessions_max_per_agent: u32,
    /// Most event streams and blocking reads open at once; past it they get
    /// 503 overloaded.
    #[arg(long, env = "OPSCORE_MAX_FEED_SUBSCRIBERS", default_value = "1024", value_parser = whole_usize(1, 100_000))]
    pub max_feed_subscribers: usize,
    /// Most event streams and blocking reads one API key may hold open at
    /// once, unless the key sets its own maxStreams; past it, 429
    /// too_many_streams.
    #[arg(long, env = "OPSCORE_MAX_STREAMS_PER_KEY", default_value = "16", value_parser = whole_u32(1, MAX_STREAMS))]
    pub max_streams_per_key: u32,
    /// PEM certificate chain (leaf first) to serve HTTPS with, together with
    /// OPSCORE_TLS_KEY_FILE; unset: plain HTTP. Reloaded on SIGHUP or when
    /// the file changes.
    #[arg(long, env = "OPSCORE_TLS_CERT_FILE")]
    pub tls_cert_file: Option<PathBuf>,
    /// PEM private key of OPSCORE_TLS_CERT_FILE.
    #[arg(long, env = "OPSCORE_TLS_KEY_FILE")]
    pub tls_key_file: Option<PathBuf>,
    /// PEM CA certificates: with TLS on, every client must present a
    /// certificate signed by one of them (mutual TLS).
    #[arg(long, env = "OPSCORE_TLS_CLIENT_CA_FILE")]
    pub tls_client_ca_file: Option<PathBuf>,
    /// OTLP/HTTP collector to export trace spans to, e.g.
    /// http://otel-collector:4318 (spans go to <endpoint>/v1/traces);
    /// unset: nothing is exported.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT", value_parser = or_unset(http_url()))]
    pub otel_exporter_otlp_endpoint: Option<OrUnset<Url>>,
    /// OTLP encoding: http/protobuf or http/json.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_PROTOCOL", default_value = "http/protobuf", value_parser = one_of(
        &[("http/protobuf", OtlpProtocol::HttpProtobuf), ("http/json", OtlpProtocol::HttpJson)],
        "http/protobuf, http/json",
    ))]
    pub otel_exporter_otlp_protocol: OtlpProtocol,
    /// The service.name of exported spans.
    #[arg(long, env = "OTEL_SERVICE_NAME", default_value = "opscore", value_parser = name())]
    pub otel_service_name: String,
}
