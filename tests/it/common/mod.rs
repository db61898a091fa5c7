//! Test harness: a real Ops-Core listening on port 0 over a fresh database
//! (a SQLite file in a temp dir, or a uniquely named PostgreSQL database that
//! is dropped afterwards), plus helpers to talk to it over real HTTP.
#![allow(dead_code)]

pub mod agentkit;
pub mod keys;
pub mod proxy;
pub mod sse;

use std::process::Stdio;
use std::time::Duration;

use opscore::config::{Config, Secret};
use opscore::domain::agent::{AgentId, Registration};
use reqwest::StatusCode;
use serde_json::{json, Value};
use sqlx::Connection;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio_util::sync::CancellationToken;

/// The key every test server accepts.
pub const KEY: &str = "test-admin-key-0123456789";
/// The webhook secret every test server is configured with.
pub const SECRET: &str = "agentkit-test-secret";

/// Which database a test runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// The PostgreSQL server tests create their databases on.
pub fn pg_admin_url() -> String {
    std::env::var("OPSCORE_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

/// A fresh database, removed when dropped.
pub struct TestDb {
    pub url: String,
    pub backend: Backend,
    pub dir: tempfile::TempDir,
    pg_name: Option<String>,
}

impl TestDb {
    pub async fn new(backend: Backend) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        match backend {
            Backend::Sqlite => Self {
                url: format!("sqlite://{}", dir.path().join("opscore.db").display()),
                backend,
                dir,
                pg_name: None,
            },
            Backend::Postgres => {
                let admin = pg_admin_url();
                let name = format!("opscore_test_{}", uuid::Uuid::new_v4().simple());
                let mut conn = sqlx::PgConnection::connect(&admin).await.unwrap_or_else(|e| {
                    panic!(
                        "PostgreSQL is required for the postgres test leg and is not reachable at {admin}: {e}. \
                         Start it (pg_ctlcluster ... main start) or set OPSCORE_TEST_POSTGRES_URL."
                    )
                });
                sqlx::query(&format!("CREATE DATABASE {name}"))
                    .execute(&mut conn)
                    .await
                    .expect("create test database");
                let url = match admin.rfind('/') {
                    Some(i) if !admin[..i].ends_with('/') => format!("{}/{name}", &admin[..i]),
                    _ => format!("{admin}/{name}"),
                };
                Self {
                    url,
                    backend,
                    dir,
                    pg_name: Some(name),
                }
            }
        }
    }
}

impl TestDb {
    /// Run one statement on this database behind the server's back (the
    /// server of a SQLite file must be stopped for a write to be seen);
    /// returns the rows it changed. Values are written into `sql` by the
    /// test itself.
    pub async fn execute(&self, sql: &str) -> u64 {
        match self.backend {
            Backend::Sqlite => {
                let mut c = sqlx::SqliteConnection::connect(&self.url)
                    .await
                    .expect("open sqlite");
                sqlx::query(sql)
                    .execute(&mut c)
                    .await
                    .expect(sql)
                    .rows_affected()
            }
            Backend::Postgres => {
                let mut c = sqlx::PgConnection::connect(&self.url)
                    .await
                    .expect("open postgres");
                sqlx::query(sql)
                    .execute(&mut c)
                    .await
                    .expect(sql)
                    .rows_affected()
            }
        }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let Some(name) = self.pg_name.take() else {
            return;
        };
        // Drop runs outside async context; use a thread with its own runtime.
        let admin = pg_admin_url();
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            rt.block_on(async {
                let mut conn = sqlx::PgConnection::connect(&admin).await.ok()?;
                sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .execute(&mut conn)
                    .await
                    .ok()
            })
        })
        .join();
    }
}

/// A running Ops-Core, in this process, on a real socket.
pub struct TestServer {
    pub base: String,
    pub client: reqwest::Client,
    pub db: TestDb,
    shutdown: CancellationToken,
    handle: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

/// The configuration tests start from: the given database, the test key and
/// webhook secret, everything else default.
pub fn test_config(db: &TestDb) -> Config {
    let mut c = Config::new(db.url.clone(), KEY);
    c.webhook_secret = Some(Secret::new(SECRET));
    c.data_dir = db.dir.path().to_owned();
    c.shutdown_grace = Duration::from_secs(5);
    // The PostgreSQL server is shared by every test running at once (and by
    // other checkouts on the machine): keep each server's pool small.
    c.db.max_connections = 6;
    c
}

impl TestServer {
    pub async fn start(backend: Backend) -> Self {
        Self::start_with(backend, |_| {}).await
    }

    pub async fn start_with(backend: Backend, adjust: impl FnOnce(&mut Config)) -> Self {
        let db = TestDb::new(backend).await;
        let mut config = test_config(&db);
        adjust(&mut config);
        Self::start_on(db, config).await
    }

    /// Start over an existing database (to restart on the same data).
    pub async fn start_on(db: TestDb, config: Config) -> Self {
        // OPSCORE_TEST_LOG=debug (or any filter) shows the server's logs.
        if let Ok(filter) = std::env::var("OPSCORE_TEST_LOG") {
            // Kept for the life of the test process.
            std::mem::forget(opscore::telemetry::init(
                &filter,
                opscore::config::LogFormat::Text,
            ));
        }
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        // Over TLS the test's own client (with the test CA, maybe a client
        // certificate) is the one that can tell the server is up.
        let tls = config.tls.is_some();
        let shutdown = CancellationToken::new();
        let handle = tokio::spawn(opscore::serve(config, listener, shutdown.clone()));
        let server = Self {
            base,
            client: reqwest::Client::new(),
            db,
            shutdown,
            handle: Some(handle),
        };
        if !tls {
            server.wait_ready().await;
        }
        server
    }

    async fn wait_ready(&self) {
        for _ in 0..200 {
            if let Ok(r) = self.client.get(self.url("/ready")).send().await {
                if r.status() == StatusCode::OK {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("server at {} never became ready", self.base);
    }

    /// Shut down gracefully and hand back the database.
    pub async fn stop(mut self) -> TestDb {
        self.shutdown.cancel();
        if let Some(h) = self.handle.take() {
            h.await.expect("server task").expect("server result");
        }
        // Move the db out; Drop of TestServer does nothing more.
        std::mem::replace(&mut self.db, placeholder_db())
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub fn get(&self, path: &str) -> reqwest::RequestBuilder {
        self.client.get(self.url(path)).bearer_auth(KEY)
    }

    pub fn post(&self, path: &str) -> reqwest::RequestBuilder {
        self.client.post(self.url(path)).bearer_auth(KEY)
    }

    /// Register an agent through the webhook with a bearer key.
    pub async fn register(&self, id: &str) {
        register_at(&self.client, &self.base, id, &["summarise"]).await;
    }

    /// Report a state; returns the status and body.
    pub async fn report(&self, id: &str, state: &str, ts: &str) -> (StatusCode, Value) {
        let r = self
            .post(&format!("/v1/opscore/agent/{id}/state"))
            .json(&json!({"agentId": id, "timestamp": ts, "state": state, "details": {"n": 1}}))
            .send()
            .await
            .expect("send");
        let status = r.status();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// Report `state` with `details`, timestamped now (panics unless 202).
    pub async fn report_now(&self, id: &str, state: &str, details: Value) {
        let ts = chrono::Utc::now().to_rfc3339();
        let r = self.report_json(id, &report(id, &ts, state, details)).await;
        assert_accepted(&r);
    }

    /// Trigger a workflow on agent `agent` with `body` (a definition id or
    /// an inline definition); returns the session id (panics unless 202).
    pub async fn trigger(&self, agent: &str, body: Value) -> String {
        let r = send(
            self.post(&format!("/v1/opscore/agent/{agent}/workflow"))
                .json(&body),
        )
        .await;
        assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.body);
        r.body["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no sessionId: {}", r.body))
            .to_owned()
    }

    /// One session with its task runs, as JSON (panics unless 200).
    pub async fn session(&self, id: &str) -> Value {
        let r = self
            .get(&format!("/v1/opscore/sessions/{id}"))
            .send()
            .await
            .expect("send");
        assert_eq!(r.status(), StatusCode::OK);
        r.json().await.expect("session JSON")
    }

    /// Poll a session until `pred` holds (panics after 15 s).
    pub async fn wait_session(&self, id: &str, pred: impl Fn(&Value) -> bool) -> Value {
        for _ in 0..750 {
            let v = self.session(id).await;
            if pred(&v) {
                return v;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!(
            "session {id} never reached the expected state: {:#}",
            self.session(id).await
        );
    }

    /// Current state, as JSON.
    pub async fn state(&self, id: &str) -> (StatusCode, Value) {
        let r = self
            .get(&format!("/v1/opscore/agent/{id}/state"))
            .send()
            .await
            .expect("send");
        let status = r.status();
        (status, r.json().await.unwrap_or(Value::Null))
    }
}

fn placeholder_db() -> TestDb {
    TestDb {
        url: String::new(),
        backend: Backend::Sqlite,
        dir: tempfile::tempdir().expect("temp dir"),
        pg_name: None,
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// POST a signed webhook delivery to the server at `base`.
pub async fn notify_signed_at(client: &reqwest::Client, base: &str, s: &Signed) -> Resp {
    send(
        client
            .post(format!("{base}{NOTIFY}"))
            .header("content-type", "application/json")
            .header("X-AgentKit-Timestamp", &s.timestamp)
            .header("X-AgentKit-Signature", &s.signature)
            .body(s.body.clone()),
    )
    .await
}

/// A registration body as AgentKit sends it (compact JSON).
pub fn register_body(id: &str, caps: &[&str]) -> String {
    json!({"event_type": "REGISTER", "agent_details": {
        "agentId": id, "agentName": format!("Agent {id}"), "version": "1.0",
        "capabilities": caps, "contactEndpoint": format!("http://agent-{id}.test:8080/task"),
        "metadata": {}}})
    .to_string()
}

pub async fn register_at(client: &reqwest::Client, base: &str, id: &str, caps: &[&str]) {
    let r = client
        .post(format!("{base}/v1/opscore/internal/agent/notify"))
        .bearer_auth(KEY)
        .header("content-type", "application/json")
        .body(register_body(id, caps))
        .send()
        .await
        .expect("send");
    assert_eq!(
        r.status(),
        StatusCode::OK,
        "register {id}: {:?}",
        r.text().await
    );
}

/// A response read in full: status, headers, and the body as JSON (a
/// non-JSON body becomes a JSON string, so assertions on it fail visibly).
#[derive(Debug)]
pub struct Resp {
    pub status: StatusCode,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
}

/// Send a request and read the whole response.
pub async fn send(rb: reqwest::RequestBuilder) -> Resp {
    let r = rb.send().await.expect("send");
    let status = r.status();
    let headers = r.headers().clone();
    let text = r.text().await.expect("read body");
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    Resp {
        status,
        headers,
        body,
    }
}

/// Assert a docs/api.md §1.8 error: the status, a JSON object body holding a
/// non-empty `detail` and exactly `code`, and nothing but `detail`, `code`
/// and (for validation errors) `errors`.
#[track_caller]
pub fn assert_error(r: &Resp, status: StatusCode, code: &str) {
    assert_eq!(r.status, status, "body: {}", r.body);
    let obj = r
        .body
        .as_object()
        .unwrap_or_else(|| panic!("error body is not a JSON object: {}", r.body));
    assert_eq!(
        obj.get("code").and_then(Value::as_str),
        Some(code),
        "body: {}",
        r.body
    );
    let detail = obj
        .get("detail")
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("error body has no detail string: {}", r.body));
    assert!(!detail.is_empty(), "empty detail: {}", r.body);
    for k in obj.keys() {
        assert!(
            matches!(k.as_str(), "detail" | "code" | "errors"),
            "unexpected key {k} in error body {}",
            r.body
        );
    }
    let ct = r
        .headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    assert!(ct.starts_with("application/json"), "content-type {ct}");
}

/// Assert a 422 `validation_failed` whose `errors` name `field`.
#[track_caller]
pub fn assert_invalid_field(r: &Resp, field: &str) {
    assert_error(r, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed");
    let errors = r.body["errors"]
        .as_array()
        .unwrap_or_else(|| panic!("no errors array: {}", r.body));
    assert!(
        errors
            .iter()
            .any(|e| e["field"] == field && e["message"].as_str().is_some_and(|m| !m.is_empty())),
        "no error for field {field}: {}",
        r.body
    );
}

/// The exact 202 body of an accepted state report.
pub const ACCEPTED_BODY: &str = r#"{"status":"success","message":"State update accepted"}"#;

/// A state report body.
pub fn report(id: &str, ts: &str, state: &str, details: Value) -> Value {
    json!({"agentId": id, "timestamp": ts, "state": state, "details": details})
}

/// Assert a 202 with exactly the contract's body.
#[track_caller]
pub fn assert_accepted(r: &Resp) {
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.body);
    assert_eq!(
        r.body,
        serde_json::from_str::<Value>(ACCEPTED_BODY).unwrap()
    );
}

/// Parse an RFC 3339 time from a JSON value, or fail the test.
#[track_caller]
pub fn parse_time(v: &Value) -> chrono::DateTime<chrono::FixedOffset> {
    chrono::DateTime::parse_from_rfc3339(v.as_str().unwrap_or_else(|| panic!("not a time: {v}")))
        .unwrap_or_else(|e| panic!("{v}: {e}"))
}

/// An RFC 3339 timestamp `secs` seconds after `base`, in the shape the
/// server renders (microseconds, `+00:00`).
pub fn ts_at(base: chrono::DateTime<chrono::Utc>, secs: i64) -> String {
    (base + chrono::Duration::seconds(secs)).to_rfc3339_opts(chrono::SecondsFormat::Micros, false)
}

/// A base instant ten seconds from now, on a whole second: report
/// timestamps built on it sort after every registration's `UNKNOWN` entry,
/// and stay within the server's allowed clock skew (300 s by default) for
/// offsets up to a few minutes.
pub fn future_base() -> chrono::DateTime<chrono::Utc> {
    let t = chrono::Utc::now() + chrono::Duration::seconds(10);
    chrono::DateTime::from_timestamp(t.timestamp(), 0).expect("in range")
}

/// A webhook body, signature and timestamp made the way AgentKit makes them,
/// by Python's own `json`, `hmac` and `hashlib` (not by our Rust code).
#[derive(Debug, Clone)]
pub struct Signed {
    pub body: String,
    pub timestamp: String,
    pub signature: String,
}

const AGENTKIT_SIGNER: &str = r#"
import datetime, hashlib, hmac, json, sys, time
payload = json.loads(sys.argv[1])
secret, age, mode = sys.argv[2], int(sys.argv[3]), sys.argv[4]
body = json.dumps(payload, separators=(",", ":"))
if mode == "rfc3339":
    ts = (datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(seconds=age)).isoformat()
else:
    ts = str(int(time.time()) - age)
sig = hmac.new(secret.encode(), (ts + "." + body).encode(), hashlib.sha256).hexdigest()
print(json.dumps({"body": body, "timestamp": ts, "signature": sig}))
"#;

/// Sign `payload` with `secret` as AgentKit does: compact JSON body,
/// `str(int(time.time()))` timestamp (minus `age_secs`), lowercase hex
/// HMAC-SHA256 of `timestamp + "." + body`. With `rfc3339` the timestamp is
/// an ISO time instead of Unix seconds.
pub async fn agentkit_sign(payload: &Value, secret: &str, age_secs: i64, rfc3339: bool) -> Signed {
    let out = tokio::process::Command::new("python3")
        .arg("-c")
        .arg(AGENTKIT_SIGNER)
        .arg(payload.to_string())
        .arg(secret)
        .arg(age_secs.to_string())
        .arg(if rfc3339 { "rfc3339" } else { "unix" })
        .output()
        .await
        .expect("run python3");
    assert!(
        out.status.success(),
        "python3 signer failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("signer output");
    let field = |k: &str| v[k].as_str().expect("signer field").to_owned();
    Signed {
        body: field("body"),
        timestamp: field("timestamp"),
        signature: field("signature"),
    }
}

/// A REGISTER payload with every field AgentKit sends.
pub fn register_payload(id: &str, name: &str, caps: &[&str], endpoint: &str) -> Value {
    json!({"event_type": "REGISTER", "agent_details": {
        "agentId": id, "agentName": name, "version": "1.0", "capabilities": caps,
        "contactEndpoint": endpoint, "metadata": {"team": "blue"},
        "registrationTime": "2026-04-21T10:00:00Z"}})
}

/// A DEREGISTER payload.
pub fn deregister_payload(id: &str) -> Value {
    json!({"event_type": "DEREGISTER", "agent_details": {"agentId": id}})
}

pub const NOTIFY: &str = "/v1/opscore/internal/agent/notify";

impl TestServer {
    /// POST a signed webhook exactly as given.
    pub async fn notify_signed(&self, s: &Signed) -> Resp {
        notify_signed_at(&self.client, &self.base, s).await
    }

    /// POST a webhook with the bearer key.
    pub async fn notify_bearer(&self, body: &Value) -> Resp {
        send(
            self.post(NOTIFY)
                .header("content-type", "application/json")
                .body(body.to_string()),
        )
        .await
    }

    /// POST a webhook with no credentials at all.
    pub async fn notify_unsigned(&self, body: &Value) -> Resp {
        send(
            self.client
                .post(self.url(NOTIFY))
                .header("content-type", "application/json")
                .body(body.to_string()),
        )
        .await
    }

    /// GET with the key, read in full.
    pub async fn get_json(&self, path: &str) -> Resp {
        send(self.get(path)).await
    }

    /// POST a state report body (any JSON) for `id` with the key.
    pub async fn report_json(&self, id: &str, body: &Value) -> Resp {
        send(
            self.post(&format!("/v1/opscore/agent/{id}/state"))
                .header("content-type", "application/json")
                .body(body.to_string()),
        )
        .await
    }

    /// Every history entry of `id`, newest first, across all pages.
    pub async fn history(&self, id: &str) -> Vec<Value> {
        history_at(&self.client, &self.base, id).await
    }

    /// Every agent (deregistered too) with its full history: everything the
    /// service has stored about agents. Rejected requests must leave it equal.
    pub async fn everything(&self) -> Value {
        everything_at(&self.client, &self.base).await
    }
}

/// Every history entry of `id` on the server at `base`, newest first.
pub async fn history_at(client: &reqwest::Client, base: &str, id: &str) -> Vec<Value> {
    let mut out = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut url = format!("{base}/v1/opscore/agent/{id}/state/history?limit=1000");
        if let Some(c) = &cursor {
            url.push_str(&format!("&cursor={c}"));
        }
        let r = send(client.get(url).bearer_auth(KEY)).await;
        assert_eq!(r.status, StatusCode::OK, "history of {id}: {}", r.body);
        out.extend(r.body["items"].as_array().expect("items").iter().cloned());
        match r.body["nextCursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => return out,
        }
    }
}

/// Every agent (deregistered too) on the server at `base`, in listing order.
pub async fn all_agents_at(client: &reqwest::Client, base: &str) -> Vec<Value> {
    let mut out = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut url = format!("{base}/v1/opscore/agents?includeDeregistered=true&limit=1000");
        if let Some(c) = &cursor {
            url.push_str(&format!("&cursor={c}"));
        }
        let r = send(client.get(url).bearer_auth(KEY)).await;
        assert_eq!(r.status, StatusCode::OK, "list agents: {}", r.body);
        out.extend(r.body["items"].as_array().expect("items").iter().cloned());
        match r.body["nextCursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => return out,
        }
    }
}

/// Every agent with its history, as one JSON value.
pub async fn everything_at(client: &reqwest::Client, base: &str) -> Value {
    let mut out = Vec::new();
    for agent in all_agents_at(client, base).await {
        let id = agent["agentId"].as_str().expect("agentId").to_owned();
        let history = history_at(client, base, &id).await;
        out.push(json!({"agent": agent, "history": history}));
    }
    Value::Array(out)
}

/// The Ops-Core binary run as a child process, for tests that kill it.
pub struct ServerProcess {
    pub child: tokio::process::Child,
    pub base: String,
    /// Every line it printed after its listening address.
    pub logs: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl ServerProcess {
    /// Start `opscore serve` on a free port over `db_url`; waits until ready.
    pub async fn spawn(db_url: &str, data_dir: &std::path::Path) -> Self {
        Self::spawn_with(db_url, data_dir, &[]).await
    }

    /// As `spawn`, with extra environment settings.
    pub async fn spawn_with(
        db_url: &str,
        data_dir: &std::path::Path,
        env: &[(&str, &str)],
    ) -> Self {
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_opscore"))
            .arg("serve")
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("DATABASE_URL", db_url)
            .env("OPSCORE_DATA_DIR", data_dir)
            .env("OPSCORE_BIND", "127.0.0.1:0")
            .env("OPSCORE_API_KEY", KEY)
            .env("OPSCORE_WEBHOOK_SECRET", SECRET)
            .env("LOG_LEVEL", "info")
            .envs(env.iter().copied())
            .env("OPSCORE_DB_MAX_CONNECTIONS", "6")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn opscore");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let addr = tokio::time::timeout(Duration::from_secs(30), async {
            while let Ok(Some(line)) = lines.next_line().await {
                if let Ok(v) = serde_json::from_str::<Value>(&line) {
                    if v["message"] == "listening" {
                        return v["addr"].as_str().map(str::to_owned);
                    }
                }
            }
            None
        })
        .await
        .ok()
        .flatten()
        .expect("opscore printed its listening address");
        // Keep draining stdout so the child never blocks on a full pipe.
        let echo = std::env::var("OPSCORE_TEST_LOG").is_ok();
        let logs = std::sync::Arc::<std::sync::Mutex<Vec<String>>>::default();
        let kept = logs.clone();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                if echo {
                    println!("{line}");
                }
                kept.lock().expect("logs").push(line);
            }
        });
        Self {
            child,
            base: format!("http://{addr}"),
            logs,
        }
    }

    /// Whether a line it printed contains `text`.
    pub fn logged(&self, text: &str) -> bool {
        self.logs
            .lock()
            .expect("logs")
            .iter()
            .any(|l| l.contains(text))
    }

    /// SIGKILL: no chance to flush or clean up.
    pub async fn kill(mut self) {
        self.child.kill().await.expect("kill");
    }
}

/// Define each listed `async fn name(backend: Backend)` test once per
/// backend: `sqlite::name` and `postgres::name`.
#[macro_export]
macro_rules! backend_tests {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::common::Backend::Sqlite).await
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::common::Backend::Postgres).await
                }
            )*
        }
    };
}

/// Start a session of the workflow `definition` (JSON) pinned to `agent`
/// at `now`, through the store directly, as a per-agent trigger does.
pub async fn start_session(
    store: &dyn opscore::store::Store,
    agent: &AgentId,
    definition: &str,
    now: i64,
) -> opscore::store::NewSession {
    use opscore::domain::workflow::{parse_definition, AgentSelector};
    use opscore::store::{NewRun, NewSession, StoreOptions};
    let def = parse_definition(definition, false).unwrap();
    let runs = NewRun::for_session(&def, None, false, now, &StoreOptions::default().engine);
    let session = NewSession {
        session_id: uuid::Uuid::now_v7().to_string(),
        selector: AgentSelector::one(agent.as_str()),
        agent_id: Some(agent.clone()),
        definition: def,
        store_definition: false,
        runs,
        trace: None,
    };
    let by = opscore::domain::audit::Actor::system("test");
    store.create_session(&session, &by, now).await.unwrap();
    session
}

/// A registration of `agent_id` as the tests' agents have it, for tests that
/// call the store directly; `ttl_secs` is its own lease, if any.
pub fn registration(agent_id: AgentId, ttl_secs: Option<i64>) -> Registration {
    Registration {
        name: format!("agent {agent_id}"),
        agent_id,
        version: "1.0".into(),
        capabilities: vec!["summarise".into()],
        contact_endpoint: "http://127.0.0.1:9/".into(),
        metadata: Default::default(),
        ttl_secs,
    }
}
