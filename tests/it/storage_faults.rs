//! Storage faults: a database that cannot take writes (a full disk under
//! SQLite, commits failing under PostgreSQL) gets every write refused with
//! `503 storage_unavailable` and `Retry-After`, `/ready` says 503 for as long
//! as it lasts, the service recovers by itself once writes work again, and
//! every write it acknowledged with a 2xx is still there after a restart.

use crate::common;

use std::collections::BTreeSet;
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::common::{
    assert_error, register_body, send, test_config, Backend, Resp, TestDb, TestServer,
};
use opscore::config::{Config, Secret};
use reqwest::StatusCode;
use serde_json::{json, Value};

/// A tmpfs mounted on a fresh directory, unmounted when dropped: a small
/// real filesystem that fills up, the way a data volume does.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let out = std::process::Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(dir.path())
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "mounting a {size} tmpfs on {} failed (this test needs root): {}",
            dir.path().display(),
            String::from_utf8_lossy(&out.stderr)
        );
        Self { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

const ENOSPC: i32 = 28;

/// Grow the filler file in `dir` until the filesystem is full, then give
/// back `leave` bytes of it.
fn fill(dir: &Path, leave: u64) {
    let path = dir.join("filler");
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .expect("open filler");
    for chunk in [
        vec![0xa5u8; 256 * 1024],
        vec![0xa5u8; 4096],
        vec![0xa5u8; 1],
    ] {
        loop {
            match f.write(&chunk) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(ENOSPC) => break,
                Err(e) => panic!("filling {}: {e}", path.display()),
            }
        }
    }
    let len = f.metadata().expect("filler size").len();
    f.set_len(len.saturating_sub(leave)).expect("shrink filler");
}

/// What the fault does to the database, and how it ends.
enum Fault {
    /// The SQLite file's filesystem fills up.
    DiskFull(Tmpfs),
    /// Every PostgreSQL commit that wrote a row fails with `disk_full`
    /// (SQLSTATE 53100), raised by a deferred constraint trigger: the
    /// statements succeed and the COMMIT itself fails, as it does when the
    /// server cannot write its WAL.
    CommitFails(sqlx::PgPool),
}

/// Installs the commit-failing trigger on every table the service writes.
const PG_FAULT_SETUP: &str = r#"
CREATE TABLE test_fault (failing BOOLEAN NOT NULL);
INSERT INTO test_fault VALUES (false);
CREATE FUNCTION test_fail_commit() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF (SELECT failing FROM test_fault) THEN
        RAISE EXCEPTION 'could not extend file: No space left on device (test fault)'
            USING ERRCODE = 'disk_full';
    END IF;
    RETURN NULL;
END $$;
DO $$
DECLARE t TEXT;
BEGIN
    FOR t IN SELECT tablename FROM pg_tables
             WHERE schemaname = 'public' AND tablename NOT IN ('test_fault', '_sqlx_migrations')
    LOOP
        EXECUTE format('CREATE CONSTRAINT TRIGGER test_fail_commit AFTER INSERT OR UPDATE OR DELETE ON %I
                        DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION test_fail_commit()', t);
    END LOOP;
END $$;
"#;

/// Everything the server acknowledged with a 2xx.
#[derive(Debug, Default)]
struct Acked {
    /// `details.n` of each report of agent [`REPORTER`].
    reports: BTreeSet<u64>,
    keys: BTreeSet<String>,
    agents: BTreeSet<String>,
    sessions: BTreeSet<String>,
}

const REPORTER: &str = "reporter";

/// The kinds of write the story tries during and after each fault.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Report,
    Key,
    Register,
    Trigger,
}

const WRITES: [Kind; 4] = [Kind::Report, Kind::Key, Kind::Register, Kind::Trigger];

struct Story {
    s: TestServer,
    acked: Acked,
    next: u64,
}

impl Story {
    /// Send one write of `kind` (a report carrying `pad` bytes of padding);
    /// a 2xx is recorded as acknowledged, anything else returned as is.
    async fn write(&mut self, kind: Kind, pad: usize) -> Resp {
        self.next += 1;
        let n = self.next;
        let s = &self.s;
        let r = match kind {
            Kind::Report => {
                let body = json!({"agentId": REPORTER, "timestamp": chrono::Utc::now().to_rfc3339(),
                    "state": "active", "details": {"n": n, "pad": "x".repeat(pad)}});
                send(
                    s.post(&format!("/v1/opscore/agent/{REPORTER}/state"))
                        .json(&body),
                )
                .await
            }
            Kind::Key => {
                send(
                    s.post("/v1/opscore/keys")
                        .json(&json!({"name": format!("key {n}"), "role": "operator"})),
                )
                .await
            }
            Kind::Register => {
                send(
                    s.post(common::NOTIFY)
                        .header("content-type", "application/json")
                        .body(register_body(&format!("agent-{n}"), &["summarise"])),
                )
                .await
            }
            Kind::Trigger => {
                let def = json!({"id": "fault_wf", "name": "Fault", "tasks": [
                    {"taskId": "t1", "name": "T1", "parameters": {}}]});
                send(
                    s.post(&format!("/v1/opscore/agent/{REPORTER}/workflow"))
                        .json(&json!({"workflowDefinition": def, "initialPayload": {"n": n}})),
                )
                .await
            }
        };
        if r.status.is_success() {
            let a = &mut self.acked;
            match kind {
                Kind::Report => a.reports.insert(n),
                Kind::Key => a
                    .keys
                    .insert(r.body["keyId"].as_str().expect("keyId").into()),
                Kind::Register => a.agents.insert(format!("agent-{n}")),
                Kind::Trigger => a
                    .sessions
                    .insert(r.body["sessionId"].as_str().expect("sessionId").into()),
            };
        }
        r
    }

    /// `/ready`'s status, polled until it is `want` (or the deadline).
    async fn ready_becomes(&self, want: StatusCode, deadline: Duration) -> StatusCode {
        let started = Instant::now();
        loop {
            let r = send(self.s.client.get(self.s.url("/ready"))).await;
            if r.status == want || started.elapsed() > deadline {
                return r.status;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// A refusal as the contract promises it.
#[track_caller]
fn assert_refused(r: &Resp, what: &str) {
    assert_error(r, StatusCode::SERVICE_UNAVAILABLE, "storage_unavailable");
    assert!(
        r.headers.contains_key("retry-after"),
        "{what}: a 503 without Retry-After: {:?}",
        r.headers
    );
}

impl Fault {
    async fn start(&self, story: &mut Story) {
        match self {
            Fault::DiskFull(fs) => {
                // Large reports until the disk refuses one, as a busy fleet
                // would find out; then the last bytes go too.
                fill(fs.path(), 512 * 1024);
                let mut sent = 0;
                loop {
                    let r = story.write(Kind::Report, 30_000).await;
                    if !r.status.is_success() {
                        assert_refused(&r, "the first report the full disk refused");
                        break;
                    }
                    sent += 1;
                    assert!(sent < 1000, "1000 reports of 30 KB fit in 512 KB of disk");
                }
                fill(fs.path(), 0);
            }
            Fault::CommitFails(pool) => {
                sqlx::query("UPDATE test_fault SET failing = true")
                    .execute(pool)
                    .await
                    .expect("start failing commits");
            }
        }
    }

    async fn end(&self) {
        match self {
            Fault::DiskFull(fs) => std::fs::remove_file(fs.path().join("filler")).expect("free"),
            Fault::CommitFails(pool) => {
                sqlx::query("UPDATE test_fault SET failing = false")
                    .execute(pool)
                    .await
                    .expect("stop failing commits");
            }
        }
    }
}

fn config_for(db: &TestDb, tmpfs: Option<&Tmpfs>) -> Config {
    let mut c = test_config(db);
    // Tasks stay queued: the story is about what the API acknowledges.
    c.dispatch.enabled = false;
    if let Some(fs) = tmpfs {
        c.database_url = Secret::new(format!(
            "sqlite://{}",
            fs.path().join("opscore.db").display()
        ));
        c.data_dir = fs.path().to_owned();
    }
    c
}

/// The `keyId` (or `agentId`) of each item of a listing.
fn ids(items: &Value, field: &str) -> BTreeSet<String> {
    items
        .as_array()
        .expect("items")
        .iter()
        .map(|k| k[field].as_str().expect("id").to_owned())
        .collect()
}

/// Assert that everything in `acked` is stored on the server `s`.
async fn assert_nothing_lost(s: &TestServer, acked: &Acked) {
    let stored: BTreeSet<u64> = s
        .history(REPORTER)
        .await
        .iter()
        .filter_map(|h| h["details"]["n"].as_u64())
        .collect();
    let lost: Vec<_> = acked.reports.difference(&stored).collect();
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged reports lost: {lost:?}",
        lost.len(),
        acked.reports.len()
    );
    let r = send(s.get("/v1/opscore/keys")).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let keys = ids(&r.body["items"], "keyId");
    let lost: Vec<_> = acked.keys.difference(&keys).collect();
    assert!(lost.is_empty(), "acknowledged keys lost: {lost:?}");
    let agents = ids(
        &Value::Array(common::all_agents_at(&s.client, &s.base).await),
        "agentId",
    );
    let lost: Vec<_> = acked.agents.difference(&agents).collect();
    assert!(lost.is_empty(), "acknowledged registrations lost: {lost:?}");
    for id in &acked.sessions {
        let r = send(s.get(&format!("/v1/opscore/sessions/{id}"))).await;
        assert_eq!(
            r.status,
            StatusCode::OK,
            "acknowledged session {id}: {}",
            r.body
        );
    }
}

/// Three rounds of: the database stops taking writes; every kind of write
/// is refused with 503 `storage_unavailable` and Retry-After, and `/ready`
/// says 503; writes work again; `/ready` says 200 and every kind of write is
/// acknowledged, with no restart. Then a restart, after which everything
/// acknowledged (reports, keys, registrations, sessions) is there.
async fn acknowledged_writes_survive_storage_faults(backend: Backend) {
    let db = TestDb::new(backend).await;
    let tmpfs = (backend == Backend::Sqlite).then(|| Tmpfs::mount("16m"));
    let config = config_for(&db, tmpfs.as_ref());
    let s = TestServer::start_on(db, config.clone()).await;
    s.register(REPORTER).await;
    let fault = match tmpfs {
        Some(fs) => Fault::DiskFull(fs),
        None => {
            let pool = sqlx::PgPool::connect(&s.db.url).await.expect("connect");
            sqlx::raw_sql(PG_FAULT_SETUP)
                .execute(&pool)
                .await
                .expect("install the fault");
            Fault::CommitFails(pool)
        }
    };
    let mut story = Story {
        s,
        acked: Acked::default(),
        next: 0,
    };
    for round in 1..=3 {
        fault.start(&mut story).await;
        for kind in WRITES {
            // A write that still fits (SQLite reuses the part of its log a
            // failed commit left behind) may be acknowledged; then it must
            // be stored. The disk being full, one is soon refused.
            let mut refused = false;
            for _ in 0..20 {
                let r = story.write(kind, 0).await;
                if !r.status.is_success() {
                    assert_refused(&r, &format!("round {round}: {kind:?} during the fault"));
                    refused = true;
                    break;
                }
            }
            assert!(
                refused,
                "round {round}: {kind:?} acknowledged 20 times while the database could not take writes"
            );
        }
        assert_eq!(
            story
                .ready_becomes(StatusCode::SERVICE_UNAVAILABLE, Duration::from_secs(10))
                .await,
            StatusCode::SERVICE_UNAVAILABLE,
            "round {round}: /ready while writes fail"
        );
        fault.end().await;
        assert_eq!(
            story
                .ready_becomes(StatusCode::OK, Duration::from_secs(20))
                .await,
            StatusCode::OK,
            "round {round}: /ready once writes work again"
        );
        for kind in WRITES {
            let r = story.write(kind, 0).await;
            assert!(
                r.status.is_success(),
                "round {round}: {kind:?} once writes work again: {} {}",
                r.status,
                r.body
            );
        }
    }
    let Story { s, acked, .. } = story;
    let db = s.stop().await;
    let s = TestServer::start_on(db, config).await;
    assert_nothing_lost(&s, &acked).await;
    println!(
        "{backend:?}: acknowledged {} reports, {} keys, {} registrations, {} sessions; none lost",
        acked.reports.len(),
        acked.keys.len(),
        acked.agents.len(),
        acked.sessions.len()
    );
    s.stop().await;
    drop(fault);
}

backend_tests!(acknowledged_writes_survive_storage_faults);

/// The mode bits of `path`.
fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

/// `opscore.db` and its `-wal` and `-shm` files in `dir`.
fn db_files(dir: &Path) -> [std::path::PathBuf; 3] {
    ["opscore.db", "opscore.db-wal", "opscore.db-shm"].map(|f| dir.join(f))
}

#[track_caller]
fn assert_private(dir: &Path, when: &str) {
    for f in db_files(dir) {
        assert_eq!(
            mode(&f),
            0o600,
            "{when}: {} is {:o}, not 0600",
            f.display(),
            mode(&f)
        );
    }
}

/// The database and its WAL and shared-memory files are readable by their
/// owner only: created so in a directory anyone may read (0755), and made so
/// again when an earlier version left them readable (0644).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_files_are_private_whatever_the_directory_mode() {
    let status = std::fs::read_to_string("/proc/self/status").expect("status");
    let umask = status
        .lines()
        .find_map(|l| l.strip_prefix("Umask:"))
        .map(|m| m.trim().to_owned())
        .unwrap_or_default();
    let db = TestDb::new(Backend::Sqlite).await;
    let dir = db.dir.path().join("data");
    std::fs::create_dir(&dir).expect("data dir");
    set_mode(&dir, 0o755);
    let mut config = test_config(&db);
    config.database_url = Secret::new(format!("sqlite://{}", dir.join("opscore.db").display()));
    config.data_dir = dir.clone();
    let s = TestServer::start_on(db, config.clone()).await;
    s.register("a1").await;
    assert_eq!(
        s.report("a1", "idle", &chrono::Utc::now().to_rfc3339())
            .await
            .0,
        202
    );
    assert_private(&dir, &format!("new files (umask {umask})"));

    // Left readable by an earlier version: made private again at start.
    let db = s.stop().await;
    for f in db_files(&dir) {
        if f.exists() {
            set_mode(&f, 0o644);
        } else {
            // A clean stop removes the WAL; an older crash may have left it.
            std::fs::File::create(&f).expect("create");
            set_mode(&f, 0o644);
        }
    }
    let s = TestServer::start_on(db, config).await;
    assert_eq!(
        s.report("a1", "active", &chrono::Utc::now().to_rfc3339())
            .await
            .0,
        202
    );
    assert_private(&dir, "files an earlier version left at 0644");
    assert_eq!(mode(&dir), 0o755, "the operator's directory is left alone");
    s.stop().await;
}

/// A PostgreSQL login role of its own for one test (not a superuser, so
/// privileges apply to it), dropped when the guard drops.
struct PgRole {
    name: String,
}

impl PgRole {
    async fn create() -> Self {
        let name = format!("opscore_role_{}", uuid::Uuid::new_v4().simple());
        superuser(
            &common::pg_admin_url(),
            &format!("CREATE ROLE {name} LOGIN"),
        )
        .await;
        Self { name }
    }
}

impl Drop for PgRole {
    fn drop(&mut self) {
        let sql = format!("DROP ROLE IF EXISTS {}", self.name);
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            rt.block_on(async {
                use sqlx::Connection;
                let mut c = sqlx::PgConnection::connect(&common::pg_admin_url())
                    .await
                    .ok()?;
                sqlx::query(&sql).execute(&mut c).await.ok()
            })
        })
        .join();
    }
}

/// Run `sql` as the superuser on the database at `url`.
async fn superuser(url: &str, sql: &str) {
    use sqlx::Connection;
    let mut c = sqlx::PgConnection::connect(url).await.expect("connect");
    sqlx::raw_sql(sql)
        .execute(&mut c)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    c.close().await.expect("close");
}

/// `/ready` of the server at `base`, polled until it is `want` (or 20 s).
async fn ready_becomes(client: &reqwest::Client, base: &str, want: StatusCode) -> StatusCode {
    let started = Instant::now();
    loop {
        let r = send(client.get(format!("{base}/ready"))).await;
        if r.status == want || started.elapsed() > Duration::from_secs(20) {
            return r.status;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A line of the server's log names `cause` (JSON logs escape quotes, so
/// each word is looked for on its own).
#[track_caller]
fn assert_logged(server: &common::ServerProcess, words: &[&str]) {
    // Copied out first: a failed assertion must not poison the lock the
    // server's log reader takes.
    let logs = server.logs.lock().expect("logs").clone();
    assert!(
        logs.iter().any(|l| words.iter().all(|w| l.contains(w))),
        "no log line holds all of {words:?}; the log:\n{}",
        logs.join("\n")
    );
}

/// PostgreSQL refusing the service (a revoked privilege, a role that may no
/// longer log in, a read-only database, a dropped table) is a storage outage: 503
/// `storage_unavailable` with Retry-After, the cause in the log, `/ready`
/// 503 (it checks the service can read and write its tables), and recovery
/// without a restart once the database takes the service back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_refusals_are_storage_outages() {
    let role = PgRole::create().await;
    let db = TestDb::new(Backend::Postgres).await;
    let admin = common::pg_admin_url();
    let db_name = db.url.rsplit('/').next().expect("name").to_owned();
    superuser(
        &admin,
        &format!("ALTER DATABASE {db_name} OWNER TO {}", role.name),
    )
    .await;
    let url = db.url.replacen("postgres@", &format!("{}@", role.name), 1);
    assert_ne!(url, db.url, "the test database URL names the postgres user");
    let server = common::ServerProcess::spawn_with(
        &url,
        db.dir.path(),
        &[
            ("OPSCORE_DISPATCHER", "false"),
            ("OPSCORE_DB_ACQUIRE_TIMEOUT_SECS", "2"),
        ],
    )
    .await;
    let (client, base) = (reqwest::Client::new(), server.base.clone());
    assert_eq!(
        ready_becomes(&client, &base, StatusCode::OK).await,
        StatusCode::OK
    );
    common::register_at(&client, &base, "a1", &["summarise"]).await;
    let report = || async {
        send(
            client
                .post(format!("{base}/v1/opscore/agent/a1/state"))
                .bearer_auth(common::KEY)
                .json(
                    &json!({"agentId": "a1", "timestamp": chrono::Utc::now().to_rfc3339(),
                    "state": "idle"}),
                ),
        )
        .await
    };
    let read = |path: &str| send(client.get(format!("{base}{path}")).bearer_auth(common::KEY));
    assert_eq!(report().await.status, StatusCode::ACCEPTED);

    // A revoked privilege.
    superuser(
        &db.url,
        &format!("REVOKE INSERT ON state_history FROM {}", role.name),
    )
    .await;
    assert_refused(&report().await, "a report without the INSERT privilege");
    assert_eq!(
        ready_becomes(&client, &base, StatusCode::SERVICE_UNAVAILABLE).await,
        StatusCode::SERVICE_UNAVAILABLE,
        "/ready without the INSERT privilege on state_history"
    );
    assert_logged(&server, &["permission denied", "state_history"]);
    superuser(
        &db.url,
        &format!("GRANT INSERT ON state_history TO {}", role.name),
    )
    .await;
    assert_eq!(
        ready_becomes(&client, &base, StatusCode::OK).await,
        StatusCode::OK
    );
    assert_eq!(report().await.status, StatusCode::ACCEPTED);

    // The role may no longer log in, and its sessions are ended (each
    // statement on its own, so the first is committed before the second
    // runs, which waits for the sessions to end).
    let end_sessions = format!(
        "SELECT pg_terminate_backend(pid, 10000) FROM pg_stat_activity WHERE usename = '{}'",
        role.name
    );
    superuser(&admin, &format!("ALTER ROLE {} NOLOGIN", role.name)).await;
    superuser(&admin, &end_sessions).await;
    assert_refused(&report().await, "a report while the role may not log in");
    assert_refused(
        &read("/v1/opscore/agents").await,
        "a listing while the role may not log in",
    );
    assert_eq!(
        ready_becomes(&client, &base, StatusCode::SERVICE_UNAVAILABLE).await,
        StatusCode::SERVICE_UNAVAILABLE,
        "/ready while the role may not log in"
    );
    assert_logged(&server, &["not permitted to log in"]);
    superuser(&admin, &format!("ALTER ROLE {} LOGIN", role.name)).await;
    assert_eq!(
        ready_becomes(&client, &base, StatusCode::OK).await,
        StatusCode::OK
    );
    assert_eq!(report().await.status, StatusCode::ACCEPTED);

    // The database turns read-only (as a demoted primary does), and the
    // service's sessions are ended so that new ones see it.
    superuser(
        &admin,
        &format!("ALTER DATABASE {db_name} SET default_transaction_read_only = on"),
    )
    .await;
    superuser(&admin, &end_sessions).await;
    // Each report must be refused; the cause is logged once one reaches
    // the read-only database (a batch that met a connection the database
    // had just ended is applied again on a fresh one first).
    for _ in 0..20 {
        assert_refused(&report().await, "a report to a read-only database");
        if server.logged("read-only transaction") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        ready_becomes(&client, &base, StatusCode::SERVICE_UNAVAILABLE).await,
        StatusCode::SERVICE_UNAVAILABLE,
        "/ready with the database read-only"
    );
    assert_logged(&server, &["read-only transaction"]);
    superuser(
        &admin,
        &format!("ALTER DATABASE {db_name} RESET default_transaction_read_only"),
    )
    .await;
    superuser(&admin, &end_sessions).await;
    assert_eq!(
        ready_becomes(&client, &base, StatusCode::OK).await,
        StatusCode::OK
    );
    assert_eq!(report().await.status, StatusCode::ACCEPTED);

    // A table is gone.
    superuser(&db.url, "DROP TABLE state_history").await;
    assert_refused(&report().await, "a report with state_history dropped");
    assert_refused(
        &read("/v1/opscore/agent/a1/state/history").await,
        "history with state_history dropped",
    );
    assert_eq!(
        ready_becomes(&client, &base, StatusCode::SERVICE_UNAVAILABLE).await,
        StatusCode::SERVICE_UNAVAILABLE,
        "/ready with state_history dropped"
    );
    assert_logged(&server, &["state_history", "does not exist"]);
    server.kill().await;
    drop(db);
    drop(role);
}

/// The database ending the service's connections (a restart, a failover,
/// an operator's `pg_terminate_backend`) costs no report: a connection used
/// in the last second is handed out unpinged, and a batch that meets one
/// the database ended is applied again on a fresh one, not refused. Before
/// that, the first batch of each writer worker was refused with 503.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_connections_the_database_ended_cost_no_report() {
    let db = TestDb::new(Backend::Postgres).await;
    let db_name = db.url.rsplit('/').next().expect("name").to_owned();
    let server = common::ServerProcess::spawn_with(
        &db.url,
        db.dir.path(),
        &[("OPSCORE_DISPATCHER", "false")],
    )
    .await;
    let (client, base) = (reqwest::Client::new(), server.base.clone());
    let agents: Vec<String> = (0..16).map(|i| format!("a{i}")).collect();
    for a in &agents {
        common::register_at(&client, &base, a, &["summarise"]).await;
    }
    let burst = || {
        let reports = agents.iter().map(|a| {
            send(
                client
                    .post(format!("{base}/v1/opscore/agent/{a}/state"))
                    .bearer_auth(common::KEY)
                    .json(&json!({"agentId": a,
                        "timestamp": chrono::Utc::now().to_rfc3339(), "state": "idle"})),
            )
        });
        futures_util::future::join_all(reports)
    };
    let end_sessions = format!(
        "SELECT pg_terminate_backend(pid, 10000) FROM pg_stat_activity \
         WHERE datname = '{db_name}' AND pid <> pg_backend_pid()"
    );
    for round in 0..3 {
        // Every writer worker's connection was used a moment ago.
        for r in burst().await {
            assert_eq!(r.status, StatusCode::ACCEPTED, "warm-up: {}", r.body);
        }
        superuser(&common::pg_admin_url(), &end_sessions).await;
        let refused: Vec<String> = burst()
            .await
            .into_iter()
            .filter(|r| r.status != StatusCode::ACCEPTED)
            .map(|r| format!("{} {}", r.status, r.body))
            .collect();
        assert!(
            refused.is_empty(),
            "round {round}: reports refused after the database ended the connections: {refused:?}"
        );
    }
    server.kill().await;
}

/// A PostgreSQL server that cannot be reached at startup is named (host,
/// port, database) with the reason, and the password is not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_startup_failure_names_where_it_connected() {
    let dir = tempfile::tempdir().expect("temp dir");
    let run = tokio::process::Command::new(env!("CARGO_BIN_EXE_opscore"))
        .arg("serve")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env(
            "DATABASE_URL",
            "postgres://opscore:s3cret-pw@127.0.0.1:1/opscore_prod",
        )
        .env("OPSCORE_DATA_DIR", dir.path())
        .env("OPSCORE_BIND", "127.0.0.1:0")
        .env("OPSCORE_API_KEY", common::KEY)
        .env("OPSCORE_DB_ACQUIRE_TIMEOUT_SECS", "2")
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .expect("startup gave up within a minute")
        .expect("run opscore");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success(), "started without a database: {text}");
    for want in [
        "host 127.0.0.1",
        "port 1",
        "database opscore_prod",
        "refused",
    ] {
        assert!(
            text.contains(want),
            "the error does not say {want:?}: {text}"
        );
    }
    assert!(
        !text.contains("s3cret-pw"),
        "the error shows the password: {text}"
    );
}
