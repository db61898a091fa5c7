//! From the settings to the [`Config`]: the checks that involve more than
//! one setting, the API key file, and the defaults of the types other
//! layers take their settings in (which are the settings' defaults, so
//! each is written once, in [`ServeArgs`]).

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Command, FromArgMatches};

use super::keyfile::{load_or_create_key, KeySource};
use super::{
    Config, ConfigError, DispatchConfig, DispatchMode, DispatchTarget, OtelConfig, RetentionConfig,
    Secret, ServeArgs, TlsFiles,
};
use crate::domain::workflow::Backoff;
use crate::store::{EngineRules, Jitter, KeepPerAgent, Liveness, OnSessionEnd, StoreOptions};

/// Where workflow definitions are read from unless `OPSCORE_WORKFLOWS_DIR`
/// says otherwise; skipped when it does not exist.
const DEFAULT_WORKFLOWS_DIR: &str = "./workflows";

/// How often the by-age retention passes run (not a setting).
const PRUNE_EVERY: Duration = Duration::from_secs(30);

impl ServeArgs {
    /// Every setting at its default, whatever the environment says.
    pub fn defaults() -> Self {
        let cmd = Self::augment_args(Command::new("serve")).mut_args(|a| a.env(None::<&str>));
        let parsed = cmd
            .try_get_matches_from(["serve"])
            .and_then(|m| Self::from_arg_matches(&m));
        // The test `defaults_are_valid` below checks that this holds.
        parsed.expect("every default is a valid setting")
    }

    /// Check how the settings combine and build the configuration. The API
    /// key, when not given, is read from (or generated into) the data
    /// directory; the second value says which.
    pub fn resolve(self) -> Result<(Config, KeySource), anyhow::Error> {
        // Everything is checked before a key file is created.
        self.dispatch_target()?;
        let (api_key, source) = match self.api_key.clone() {
            Some(key) => (key, KeySource::Configured),
            None => {
                let path = self.db.data_dir.join("api_key");
                let (key, created) = load_or_create_key(&path)?;
                (key, KeySource::File { path, created })
            }
        };
        Ok((self.config(api_key)?, source))
    }

    /// The AgentKit URL, if one is set (an empty one reads as unset).
    fn agentkit_api_url(&self) -> Option<url::Url> {
        self.agentkit_api_url.clone().and_then(|u| u.0)
    }

    fn dispatch_target(&self) -> Result<DispatchTarget, ConfigError> {
        let url = self.agentkit_api_url();
        match (self.dispatch_mode, url) {
            (DispatchMode::Direct, _) | (DispatchMode::Auto, None) => Ok(DispatchTarget::Direct),
            (DispatchMode::AgentKit | DispatchMode::Auto, Some(url)) => {
                Ok(DispatchTarget::AgentKit(url))
            }
            (DispatchMode::AgentKit, None) => Err(ConfigError::new(
                "OPSCORE_DISPATCH_MODE",
                "dispatch-mode",
                "agentkit needs AGENTKIT_API_URL to be set",
            )),
        }
    }

    /// Span export, when a collector is set: its base URL plus the
    /// traces path, as the OTLP specification builds it.
    fn otel(&self) -> Option<OtelConfig> {
        let base = self.otel_exporter_otlp_endpoint.clone().and_then(|u| u.0)?;
        Some(OtelConfig {
            traces_url: otlp_traces_url(base),
            protocol: self.otel_exporter_otlp_protocol,
            service_name: self.otel_service_name.clone(),
        })
    }

    /// The TLS files, when TLS is asked for: a certificate needs its key
    /// and the other way round; a client CA needs both.
    fn tls(&self) -> Result<Option<TlsFiles>, ConfigError> {
        match (&self.tls_cert_file, &self.tls_key_file) {
            (Some(cert), Some(key)) => Ok(Some(TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
                client_ca: self.tls_client_ca_file.clone(),
            })),
            (Some(_), None) => Err(ConfigError::new(
                "OPSCORE_TLS_KEY_FILE",
                "tls-key-file",
                "must be set with OPSCORE_TLS_CERT_FILE",
            )),
            (None, Some(_)) => Err(ConfigError::new(
                "OPSCORE_TLS_CERT_FILE",
                "tls-cert-file",
                "must be set with OPSCORE_TLS_KEY_FILE",
            )),
            (None, None) if self.tls_client_ca_file.is_some() => Err(ConfigError::new(
                "OPSCORE_TLS_CLIENT_CA_FILE",
                "tls-client-ca-file",
                "needs OPSCORE_TLS_CERT_FILE and OPSCORE_TLS_KEY_FILE (client certificates are checked only over TLS)",
            )),
            (None, None) => Ok(None),
        }
    }

    /// The configuration these settings make, with `api_key`.
    pub(super) fn config(self, api_key: Secret) -> Result<Config, ConfigError> {
        let tls = self.tls()?;
        let otel = self.otel();
        let dispatch = DispatchConfig {
            enabled: self.dispatcher,
            target: self.dispatch_target()?,
            allow_unknown: self.dispatch_to_unknown,
            connect_timeout: self.dispatch_connect_timeout_ms,
            request_timeout: self.dispatch_timeout_ms,
            concurrency: self.dispatch_concurrency,
            poll_interval: self.dispatch_poll_ms,
        };
        let engine = EngineRules {
            backoff: Backoff {
                base_ms: self.retry_base_ms,
                factor: self.retry_factor,
                cap_ms: self.retry_max_ms,
            },
            jitter: Jitter::default(),
            default_timeout_secs: self.task_timeout_secs,
            queue_timeout_secs: self.queue_timeout_secs,
            liveness: Liveness {
                ttl_secs: self.agent_ttl_secs.and_then(|t| t.0),
                grace_secs: self.stale_grace_secs,
            },
        };
        // 0 means "no limit" for these.
        let max_age = |d: Duration| (!d.is_zero()).then_some(d);
        let keep = |n: u32| (n > 0).then_some(n);
        let retention = RetentionConfig {
            events: self.event_retention_secs,
            audit_max_age: max_age(self.audit_retention_secs),
            history_max_age: max_age(self.history_max_age_secs),
            sessions_max_age: max_age(self.sessions_max_age_secs),
            keep: KeepPerAgent {
                history: keep(self.history_max_per_agent),
                sessions: keep(self.sessions_max_per_agent),
            },
            prune_every: PRUNE_EVERY,
        };
        Ok(Config {
            bind: self.bind,
            database_url: Secret::new(self.db.url()),
            data_dir: self.db.data_dir,
            api_key,
            webhook_secret: self.webhook_secret,
            more_webhook_secrets: self.webhook_secrets.map(|l| l.0).unwrap_or_default(),
            rate_limit_per_key: self.rate_limit_per_key.and_then(|r| r.0),
            webhook_tolerance: self.webhook_tolerance_secs,
            max_clock_skew: self.max_clock_skew_secs,
            allow_unsigned_notify: self.allow_unsigned_notify,
            agentkit_api_url: self.agentkit_api_url.and_then(|u| u.0),
            log_level: self.log_level,
            log_format: self.log_format,
            max_body_bytes: self.max_body_bytes,
            shutdown_grace: self.shutdown_grace_secs,
            request_timeout: self.request_timeout_secs,
            header_read_timeout: self.header_read_timeout_secs,
            max_concurrent_requests: self.max_concurrent_requests,
            max_unauthenticated_requests: self.max_unauthenticated_requests,
            body_read_timeout: self.body_read_timeout_secs,
            auth_failure_burst: self.auth_failure_burst,
            db: StoreOptions {
                engine,
                max_connections: self.db_max_connections,
                acquire_timeout: self.db_acquire_timeout_secs,
                on_session_end: OnSessionEnd::default(),
            },
            workflows_dir_explicit: self.workflows_dir.is_some(),
            workflows_dir: self
                .workflows_dir
                .unwrap_or_else(|| PathBuf::from(DEFAULT_WORKFLOWS_DIR)),
            dispatch,
            retention,
            max_feed_subscribers: self.max_feed_subscribers,
            max_streams_per_key: self.max_streams_per_key,
            otel,
            tls,
        })
    }
}

/// `<endpoint>/v1/traces`, keeping any path the endpoint has (a collector
/// behind a proxy at `/otel` takes spans at `/otel/v1/traces`).
fn otlp_traces_url(mut base: url::Url) -> url::Url {
    let path = format!("{}/v1/traces", base.path().trim_end_matches('/'));
    base.set_path(&path);
    base
}

/// The configuration of the default settings (with no API key).
fn default_config() -> Config {
    Config::new("", "")
}

// The types the store and the engine take their settings in default to
// the settings' defaults. They are written here, not beside the types,
// so that the store need not know the configuration.

impl Default for StoreOptions {
    fn default() -> Self {
        default_config().db
    }
}

impl Default for EngineRules {
    fn default() -> Self {
        default_config().db.engine
    }
}

impl Default for Liveness {
    fn default() -> Self {
        default_config().db.engine.liveness
    }
}

impl Default for Backoff {
    fn default() -> Self {
        default_config().db.engine.backoff
    }
}

impl Default for RetentionConfig {
    fn default() -> Self {
        default_config().retention
    }
}

impl Default for DispatchConfig {
    fn default() -> Self {
        default_config().dispatch
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    /// `opscore serve` with `args` (which override the environment).
    fn parse(args: &[&str]) -> Result<ServeArgs, clap::Error> {
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            serve: ServeArgs,
        }
        let cmd = <Cli as clap::CommandFactory>::command();
        let m = cmd.try_get_matches_from(std::iter::once("serve").chain(args.iter().copied()))?;
        Cli::from_arg_matches(&m).map(|c| c.serve)
    }

    #[test]
    fn defaults_are_valid() {
        let c = ServeArgs::defaults().config(Secret::new("k")).unwrap();
        assert_eq!(c.bind.to_string(), "127.0.0.1:8000");
        assert_eq!(c.db.engine.liveness.ttl_secs, None, "leases are opt-in");
        assert_eq!(c.dispatch.target, DispatchTarget::Direct);
        assert!(c.dispatch.enabled && !c.allow_unsigned_notify);
        assert_eq!(c.workflows_dir, PathBuf::from("./workflows"));
        assert!(!c.workflows_dir_explicit);
        assert_eq!(c.database_url.expose(), "sqlite://./data/opscore.db");
        assert_eq!(c.retention.keep.history, Some(10_000));
    }

    #[test]
    fn errors_name_the_setting() {
        let e = parse(&["--request-timeout-secs", "30s"]).unwrap_err();
        let msg = crate::config::invalid_setting(&e).unwrap();
        assert_eq!(
            msg,
            "invalid setting OPSCORE_REQUEST_TIMEOUT_SECS (--request-timeout-secs): \
             '30s' is not a whole number"
        );
        let e = parse(&["--dispatcher", ""]).unwrap_err();
        assert!(
            crate::config::invalid_setting(&e).is_some_and(|m| m.contains("OPSCORE_DISPATCHER"))
        );
        // The key itself is never repeated.
        let e = parse(&["--api-key", "short-secret"]).unwrap_err();
        let msg = crate::config::invalid_setting(&e).unwrap();
        assert!(
            msg.contains("OPSCORE_API_KEY") && !msg.contains("short-secret"),
            "{msg}"
        );
        // A usage mistake is not a refused setting.
        let e = parse(&["--no-such-flag"]).unwrap_err();
        assert_eq!(crate::config::invalid_setting(&e), None);
    }

    #[test]
    fn span_export_is_off_unless_a_collector_is_set() {
        let c = ServeArgs::defaults().config(Secret::new("k")).unwrap();
        assert_eq!(c.otel, None);
        let c = parse(&["--otel-exporter-otlp-endpoint", ""])
            .unwrap()
            .config(Secret::new("k"))
            .unwrap();
        assert_eq!(c.otel, None);
        for (endpoint, traces) in [
            ("http://collector:4318", "http://collector:4318/v1/traces"),
            ("http://collector:4318/", "http://collector:4318/v1/traces"),
            (
                "https://gw.example/otel/",
                "https://gw.example/otel/v1/traces",
            ),
        ] {
            let c = parse(&["--otel-exporter-otlp-endpoint", endpoint])
                .unwrap()
                .config(Secret::new("k"))
                .unwrap();
            let otel = c.otel.expect("on");
            assert_eq!(otel.traces_url.as_str(), traces);
            assert_eq!(otel.protocol, crate::config::OtlpProtocol::HttpProtobuf);
            assert_eq!(otel.service_name, "opscore");
        }
        let c = parse(&[
            "--otel-exporter-otlp-endpoint",
            "http://c:4318",
            "--otel-exporter-otlp-protocol",
            "HTTP/JSON",
            "--otel-service-name",
            " opscore-eu ",
        ])
        .unwrap()
        .config(Secret::new("k"))
        .unwrap();
        let otel = c.otel.expect("on");
        assert_eq!(otel.protocol, crate::config::OtlpProtocol::HttpJson);
        assert_eq!(otel.service_name, "opscore-eu");
        for (flag, value, var) in [
            (
                "--otel-exporter-otlp-protocol",
                "grpc",
                "OTEL_EXPORTER_OTLP_PROTOCOL",
            ),
            (
                "--otel-exporter-otlp-endpoint",
                "collector:4318",
                "OTEL_EXPORTER_OTLP_ENDPOINT",
            ),
            ("--otel-service-name", " ", "OTEL_SERVICE_NAME"),
        ] {
            let e = parse(&[flag, value]).unwrap_err();
            let msg = crate::config::invalid_setting(&e).unwrap_or_default();
            assert!(msg.contains(var), "{flag} {value}: {msg}");
        }
    }

    #[test]
    fn settings_combine() {
        let a = parse(&["--dispatch-mode", "AgentKit"]).unwrap();
        let e = a.resolve().unwrap_err().to_string();
        assert!(
            e.contains("OPSCORE_DISPATCH_MODE") && e.contains("AGENTKIT_API_URL"),
            "{e}"
        );
        let url = "http://agentkit:8000/v1";
        let a = parse(&[
            "--agentkit-api-url",
            url,
            "--api-key",
            "supersecretkey-123456",
        ])
        .unwrap();
        let (c, source) = a.resolve().unwrap();
        assert_eq!(source, KeySource::Configured);
        assert!(matches!(c.dispatch.target, DispatchTarget::AgentKit(ref u) if u.as_str() == url));
        let a = parse(&[
            "--agentkit-api-url",
            "",
            "--rate-limit-per-key",
            "",
            "--history-max-age-secs",
            "0",
            "--sessions-max-per-agent",
            "0",
            "--agent-ttl-secs",
            "60",
            "--webhook-secrets",
            "a, b",
            "--workflows-dir",
            "wf",
        ])
        .unwrap();
        let c = a.config(Secret::new("k")).unwrap();
        assert_eq!(c.agentkit_api_url, None);
        assert_eq!(c.dispatch.target, DispatchTarget::Direct);
        assert_eq!(c.rate_limit_per_key, None);
        assert_eq!(c.retention.history_max_age, None);
        assert_eq!(c.retention.keep.sessions, None);
        assert_eq!(c.db.engine.liveness.ttl_secs, Some(60));
        assert_eq!(c.more_webhook_secrets, [Secret::new("a"), Secret::new("b")]);
        assert!(c.workflows_dir_explicit);
    }
}
