//! Test harness: a real Ops-Core listening on port 0 over a fresh database
//! (a SQLite file in a temp dir, or a uniquely named PostgreSQL database that
//! is dropped afterwards), plus helpers to talk to it over real HTTP.
#![allow(dead_code)]

pub mod agentkit;

use std::process::Stdio;
use std::time::Duration;

use opscore::config::{Config, Secret};
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
            opscore::telemetry::init(&filter, opscore::config::LogFormat::Text);
        }
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        let shutdown = CancellationToken::new();
        let handle = tokio::spawn(opscore::serve(config, listener, shutdown.clone()));
        let server = Self {
            base,
            client: reqwest::Client::new(),
            db,
            shutdown,
            handle: Some(handle),
        };
        server.wait_ready().await;
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

/// The Ops-Core binary run as a child process, for tests that kill it.
pub struct ServerProcess {
    pub child: tokio::process::Child,
    pub base: String,
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
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                if echo {
                    println!("{line}");
                }
            }
        });
        Self {
            child,
            base: format!("http://{addr}"),
        }
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
