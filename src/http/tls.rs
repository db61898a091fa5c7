//! Native TLS (rustls): the certificate and key files the operator names,
//! optionally a CA whose client certificates are required (mutual TLS), and
//! their reload without a restart: on SIGHUP, or when a file's modification
//! time or size changes (checked every few seconds). A reload that fails
//! (a half-written file, a key that does not match) keeps serving with the
//! previous certificate and says why in the log. Connections already open
//! keep the certificate they were made with; new ones get the new one.

use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_util::sync::CancellationToken;

pub use crate::config::TlsFiles;

/// How often the files are checked for changes.
const WATCH_EVERY: Duration = Duration::from_secs(2);

fn read_err(what: &str, path: &Path, e: impl std::fmt::Display) -> String {
    format!("{what} {}: {e}", path.display())
}

impl TlsFiles {
    /// Build a server configuration from the files as they are now.
    pub fn load(&self) -> Result<ServerConfig, String> {
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&self.cert)
            .map_err(|e| read_err("cannot read the certificate file", &self.cert, e))?
            .collect::<Result<_, _>>()
            .map_err(|e| read_err("the certificate file holds a bad PEM block:", &self.cert, e))?;
        if certs.is_empty() {
            return Err(format!(
                "the certificate file {} holds no certificate",
                self.cert.display()
            ));
        }
        let key = PrivateKeyDer::from_pem_file(&self.key)
            .map_err(|e| read_err("cannot read a private key from", &self.key, e))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS setup: {e}"))?;
        let builder = match &self.client_ca {
            None => builder.with_no_client_auth(),
            Some(ca) => {
                let mut roots = RootCertStore::empty();
                for cert in CertificateDer::pem_file_iter(ca)
                    .map_err(|e| read_err("cannot read the client CA file", ca, e))?
                {
                    let cert = cert.map_err(|e| {
                        read_err("the client CA file holds a bad PEM block:", ca, e)
                    })?;
                    roots.add(cert).map_err(|e| {
                        read_err("the client CA file holds a bad certificate:", ca, e)
                    })?;
                }
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                        .build()
                        .map_err(|e| {
                            read_err("the client CA file cannot verify clients:", ca, e)
                        })?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let mut config = builder
            .with_single_cert(certs, key)
            .map_err(|e| format!("the certificate and the key do not go together: {e}"))?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(config)
    }

    /// What the watcher compares: each file's modification time and size.
    fn stamp(&self) -> Vec<Option<(SystemTime, u64)>> {
        [Some(&self.cert), Some(&self.key), self.client_ca.as_ref()]
            .into_iter()
            .flatten()
            .map(|p| {
                std::fs::metadata(p)
                    .ok()
                    .and_then(|m| Some((m.modified().ok()?, m.len())))
            })
            .collect()
    }
}

/// The configuration new connections are accepted with, replaced on reload.
pub struct Tls {
    files: TlsFiles,
    current: RwLock<Arc<ServerConfig>>,
}

impl Tls {
    /// Load the files; a failure here stops the start.
    pub fn new(files: TlsFiles) -> Result<Arc<Self>, String> {
        let config = files.load()?;
        Ok(Arc::new(Self {
            files,
            current: RwLock::new(Arc::new(config)),
        }))
    }

    /// The acceptor for the next connection.
    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        let config = self
            .current
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        tokio_rustls::TlsAcceptor::from(config)
    }

    /// Load the files again; keep the current configuration if that fails.
    pub fn reload(&self, why: &str) -> bool {
        match self.files.load() {
            Ok(config) => {
                *self
                    .current
                    .write()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(config);
                tracing::info!(why, cert = %self.files.cert.display(), "TLS certificate reloaded");
                true
            }
            Err(e) => {
                tracing::warn!(why, error = %e, "TLS reload failed; still serving the previous certificate");
                false
            }
        }
    }

    /// Reload on SIGHUP and when the files change, until `stop`.
    pub fn watch(self: &Arc<Self>, stop: CancellationToken) {
        let tls = self.clone();
        tokio::spawn(async move {
            let mut hangup = hangups();
            let mut seen = tls.files.stamp();
            let mut tick = tokio::time::interval(WATCH_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    () = stop.cancelled() => break,
                    () = next_hangup(&mut hangup) => {
                        tls.reload("SIGHUP");
                        seen = tls.files.stamp();
                    }
                    _ = tick.tick() => {
                        let now = tls.files.stamp();
                        if now != seen {
                            // A certificate written before its key fails to
                            // load; the key's change then loads both.
                            tls.reload("files changed");
                            seen = now;
                        }
                    }
                }
            }
        });
    }
}

#[cfg(unix)]
type Hangups = Option<tokio::signal::unix::Signal>;
#[cfg(not(unix))]
type Hangups = ();

#[cfg(unix)]
fn hangups() -> Hangups {
    use tokio::signal::unix::{signal, SignalKind};
    signal(SignalKind::hangup()).ok()
}

#[cfg(not(unix))]
fn hangups() -> Hangups {}

#[cfg(unix)]
async fn next_hangup(h: &mut Hangups) {
    match h {
        Some(s) => {
            s.recv().await;
        }
        None => std::future::pending().await,
    }
}

#[cfg(not(unix))]
async fn next_hangup(_: &mut Hangups) {
    std::future::pending().await
}
