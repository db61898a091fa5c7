//! Native TLS: the service serves HTTPS from the certificate and key files
//! it is given (and only HTTPS on that port), picks up a new certificate
//! without a restart (files changed, or SIGHUP) while connections keep
//! working, and with a client CA refuses clients without a certificate from
//! it. The CLI trusts a private CA with `--ca-file`. Test certificates come
//! from rcgen.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::common::{Backend, ServerProcess, TestDb, TestServer, KEY};
use opscore::http::tls::TlsFiles;
use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair, KeyUsagePurpose};
use reqwest::StatusCode;

/// A certificate authority that signs server and client certificates.
struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
}

impl Ca {
    fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let key = KeyPair::generate().expect("key");
        let cert = params.self_signed(&key).expect("CA");
        Self { cert, key }
    }

    fn pem(&self) -> String {
        self.cert.pem()
    }

    /// A certificate for `names` signed by this CA: (certificate PEM, key PEM).
    fn issue(&self, names: &[&str]) -> (String, String) {
        let params =
            CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>())
                .expect("params");
        let key = KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, &self.cert, &self.key).expect("sign");
        (cert.pem(), key.serialize_pem())
    }
}

/// Write the server's certificate and key from `ca` into `dir`.
fn server_files(dir: &Path, ca: &Ca) -> (PathBuf, PathBuf) {
    let (cert, key) = ca.issue(&["localhost", "127.0.0.1"]);
    let (c, k) = (dir.join("server.pem"), dir.join("server.key"));
    // The key first, then the certificate: a watcher that sees only one
    // change still loads a matching pair once both are in.
    std::fs::write(&k, key).expect("write key");
    std::fs::write(&c, cert).expect("write cert");
    (c, k)
}

fn client(trust: &Ca, identity: Option<(String, String)>) -> reqwest::Client {
    let mut b = reqwest::Client::builder()
        .use_rustls_tls()
        .add_root_certificate(reqwest::Certificate::from_pem(trust.pem().as_bytes()).expect("CA"))
        .timeout(Duration::from_secs(10));
    if let Some((cert, key)) = identity {
        b = b.identity(
            reqwest::Identity::from_pem(format!("{cert}{key}").as_bytes()).expect("identity"),
        );
    }
    b.build().expect("client")
}

fn https(s: &TestServer) -> String {
    s.base.replacen("http://", "https://", 1)
}

async fn health(c: &reqwest::Client, base: &str) -> Result<StatusCode, reqwest::Error> {
    c.get(format!("{base}/health"))
        .send()
        .await
        .map(|r| r.status())
}

/// HTTPS with the given certificate; plain HTTP on that port gets no
/// answer; a new certificate written over the files is served without a
/// restart, while a client that kept its connection keeps working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_https_and_reloads_its_certificate() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (old_ca, new_ca) = (Ca::new("old CA"), Ca::new("new CA"));
    let (cert, key) = server_files(dir.path(), &old_ca);
    let files = TlsFiles {
        cert,
        key,
        client_ca: None,
    };
    let s = TestServer::start_with(Backend::Sqlite, move |c| c.tls = Some(files)).await;
    let base = https(&s);

    let trusts_old = client(&old_ca, None);
    assert_eq!(
        health(&trusts_old, &base).await.expect("https"),
        StatusCode::OK
    );
    let r = trusts_old
        .get(format!("{base}/v1/opscore/agents"))
        .bearer_auth(KEY)
        .send()
        .await
        .expect("an API call over https");
    assert_eq!(r.status(), StatusCode::OK);
    let plain = reqwest::Client::new()
        .get(format!("{}/health", s.base))
        .send()
        .await;
    assert!(plain.is_err(), "plain HTTP was answered: {plain:?}");

    // Rotate: a certificate from another CA, written over the files.
    server_files(dir.path(), &new_ca);
    let trusts_new = client(&new_ca, None);
    let mut rotated = false;
    for _ in 0..100 {
        if health(&trusts_new, &base).await.is_ok() {
            rotated = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(rotated, "the new certificate was not served within 10 s");
    // The old client's kept-alive connection still works (it was made with
    // the old certificate), while a fresh client trusting only the old CA
    // is refused now.
    assert_eq!(
        health(&trusts_old, &base).await.expect("kept connection"),
        StatusCode::OK
    );
    assert!(health(&client(&old_ca, None), &base).await.is_err());
    s.stop().await;
}

/// With a client CA, a client without a certificate (or with one from
/// another CA) is refused at the handshake; one with a certificate from
/// that CA is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_refuses_clients_without_a_certificate() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (server_ca, clients_ca, stranger_ca) = (
        Ca::new("server CA"),
        Ca::new("clients CA"),
        Ca::new("stranger"),
    );
    let (cert, key) = server_files(dir.path(), &server_ca);
    let client_ca = dir.path().join("clients-ca.pem");
    std::fs::write(&client_ca, clients_ca.pem()).expect("write client CA");
    let files = TlsFiles {
        cert,
        key,
        client_ca: Some(client_ca),
    };
    let s = TestServer::start_with(Backend::Sqlite, move |c| c.tls = Some(files)).await;
    let base = https(&s);
    assert!(
        health(&client(&server_ca, None), &base).await.is_err(),
        "served without a client certificate"
    );
    let stranger = client(&server_ca, Some(stranger_ca.issue(&["stranger"])));
    assert!(
        health(&stranger, &base).await.is_err(),
        "served a certificate from another CA"
    );
    let known = client(&server_ca, Some(clients_ca.issue(&["operator"])));
    assert_eq!(health(&known, &base).await.expect("mTLS"), StatusCode::OK);
    s.stop().await;
}

/// The real binary: TLS from its settings, a SIGHUP reloads the
/// certificate, and the CLI talks to it trusting the CA with `--ca-file`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_reloads_on_sighup_and_the_cli_trusts_a_given_ca() {
    let db = TestDb::new(Backend::Sqlite).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (old_ca, new_ca) = (Ca::new("old CA"), Ca::new("new CA"));
    let (cert, key) = server_files(dir.path(), &old_ca);
    let (cert, key) = (
        cert.to_string_lossy().into_owned(),
        key.to_string_lossy().into_owned(),
    );
    let server = ServerProcess::spawn_with(
        &db.url,
        &dir.path().join("data"),
        &[
            ("OPSCORE_TLS_CERT_FILE", &cert),
            ("OPSCORE_TLS_KEY_FILE", &key),
        ],
    )
    .await;
    let base = server.base.replacen("http://", "https://", 1);
    let ca_file = dir.path().join("old-ca.pem");
    std::fs::write(&ca_file, old_ca.pem()).expect("write CA");
    let cli = |ca: &Path| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_opscore"))
            .args(["agents", "list", "--url", &base, "--ca-file"])
            .arg(ca)
            .env_clear()
            .env("OPSCORE_CLIENT_KEY", KEY)
            .output()
            .expect("run the CLI");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    assert_eq!(cli(&ca_file).0, Some(0), "{:?}", cli(&ca_file));
    let (code, _) = {
        let other = dir.path().join("new-ca.pem");
        std::fs::write(&other, new_ca.pem()).expect("write CA");
        cli(&other)
    };
    assert_eq!(
        code,
        Some(3),
        "a CA that did not sign the server's certificate is refused"
    );

    // New files, then SIGHUP: the new certificate is served at once (well
    // before the 2 s file watch would notice).
    server_files(dir.path(), &new_ca);
    let pid = server.child.id().expect("pid");
    let hup = std::process::Command::new("kill")
        .args(["-HUP", &pid.to_string()])
        .status()
        .expect("kill -HUP");
    assert!(hup.success());
    let trusts_new = client(&new_ca, None);
    let mut served = false;
    for _ in 0..50 {
        if health(&trusts_new, &base).await.is_ok() {
            served = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(served, "the new certificate was not served after SIGHUP");
    assert!(server.logged("TLS certificate reloaded"));
    server.kill().await;
}
