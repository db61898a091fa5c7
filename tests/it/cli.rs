//! End-to-end tests of the operator CLI: the real `opscore` binary against a
//! real server, every client subcommand in table and `--json` output, and
//! its error exits (the server's `detail` and `code` on stderr, exit 1 for a
//! refusal, 2 for bad usage, 3 for an unreachable server). What the tests
//! set up and check on the side goes through `opscore::client`, the same
//! typed client the CLI is built on.

use crate::common;
#[path = "cli/escape.rs"]
mod escape;
#[path = "cli/sessions.rs"]
mod sessions;
#[path = "cli/watch.rs"]
mod watch;
#[path = "cli/workflows.rs"]
mod workflows;

use std::path::PathBuf;
use std::time::Duration;

use crate::common::{Backend, TestServer, KEY};
use opscore::client::{Client, ClientError, Registration};
use serde_json::{json, Value};

/// What one run of the binary did.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// Its stdout, after checking it succeeded with nothing on stderr.
    #[track_caller]
    pub fn ok(&self) -> &str {
        assert_eq!(self.code, 0, "{self:?}");
        assert_eq!(self.stderr, "", "{self:?}");
        &self.stdout
    }

    /// Its stdout as JSON, after checking it succeeded.
    #[track_caller]
    pub fn json(&self) -> Value {
        serde_json::from_str(self.ok()).unwrap_or_else(|e| panic!("not JSON ({e}): {self:?}"))
    }

    /// Check it failed with `code`, printed nothing on stdout and one
    /// `error: …` line on stderr; return that line.
    #[track_caller]
    pub fn failed(&self, code: i32) -> &str {
        assert_eq!(self.code, code, "{self:?}");
        assert_eq!(self.stdout, "", "{self:?}");
        assert!(self.stderr.starts_with("error: "), "{self:?}");
        &self.stderr
    }

    /// The first column of each row of a table (the header skipped), after
    /// checking the header starts with `first_header`.
    #[track_caller]
    pub fn column(&self, first_header: &str) -> Vec<String> {
        let out = self.ok();
        let mut lines = out.lines();
        let header = lines.next().unwrap_or_default();
        assert!(header.starts_with(first_header), "{out}");
        lines
            .map(|l| l.split_whitespace().next().unwrap_or_default().to_owned())
            .collect()
    }

    /// The value of `Field:` in a `Field: value` block.
    #[track_caller]
    pub fn field(&self, name: &str) -> String {
        let out = self.ok();
        out.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}:")))
            .unwrap_or_else(|| panic!("no {name}: in {out}"))
            .trim()
            .to_owned()
    }
}

/// Run `opscore ARGS` with exactly `env` (no inherited OPSCORE_* setting).
pub async fn opscore_env(env: &[(&str, &str)], args: &[&str]) -> Run {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_opscore"))
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(env.iter().copied())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(60), out)
        .await
        .expect("opscore finished within 60s")
        .expect("run opscore");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Run `opscore ARGS` against the server at `base` with the test key.
pub async fn opscore(base: &str, args: &[&str]) -> Run {
    opscore_env(&[("OPSCORE_URL", base), ("OPSCORE_CLIENT_KEY", KEY)], args).await
}

/// The typed client, for setting up and checking on the side.
pub fn client(s: &TestServer) -> Client {
    Client::new(&s.base, Some(KEY.to_owned()))
}

/// A server with the sample workflow and no dispatcher, so sessions stay
/// where a test put them; no lease grace, so an agent registered with a
/// one-second TTL is stale a second later.
pub async fn start(backend: Backend) -> TestServer {
    TestServer::start_with(backend, |c| {
        c.dispatch.enabled = false;
        c.db.engine.liveness.grace_secs = 0;
        c.workflows_dir = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/workflows"));
        c.workflows_dir_explicit = true;
    })
    .await
}

/// A registration of `id` with the `summarise` capability.
pub fn registration(id: &str) -> Registration {
    Registration {
        agent_id: id.to_owned(),
        agent_name: format!("Agent {id}"),
        version: "1.0".to_owned(),
        capabilities: vec!["summarise".to_owned()],
        contact_endpoint: format!("http://agent-{id}.test:8080/task"),
        metadata: Default::default(),
    }
}

/// Check `run` failed with exit 1 and printed exactly the error the server
/// gives the typed client for the same request: `error: <detail> (<code>)`.
#[track_caller]
pub fn assert_refused<T: std::fmt::Debug>(run: &Run, server: Result<T, ClientError>) {
    let Err(ClientError::Api { detail, code, .. }) = server else {
        panic!("the server did not refuse: {server:?}");
    };
    assert_eq!(run.failed(1), format!("error: {detail} ({code})\n"));
}

/// A report timestamp `secs` seconds after a base a day ahead, so it sorts
/// after the registration's UNKNOWN.
fn ts(secs: i64) -> String {
    common::ts_at(common::future_base(), secs)
}

async fn agents_commands(backend: Backend) {
    let s = start(backend).await;
    let c = client(&s);
    for id in ["a1", "a2"] {
        c.register(&registration(id)).await.expect("register");
    }
    // a3 has a one-second lease and never reports: it goes stale.
    let mut a3 = registration("a3");
    a3.metadata.insert("ttlSeconds".into(), json!(1));
    c.register(&a3).await.expect("register");
    c.report_state_at("a1", "active", Some(&json!({"task": "t1"})), &ts(1))
        .await
        .expect("report");
    c.report_state_at("a2", "idle", None, &ts(1))
        .await
        .expect("report");
    let b = s.base.as_str();

    // Listing: a table by id, the server's page with --json.
    let run = opscore(b, &["agents", "list"]).await;
    assert_eq!(run.column("AGENT"), ["a1", "a2", "a3"]);
    let a1_row = run.stdout.lines().nth(1).expect("row");
    assert!(
        a1_row.contains("active") && a1_row.contains("registered") && a1_row.contains("summarise"),
        "{a1_row}"
    );
    let page = opscore(b, &["agents", "list", "--json"]).await.json();
    let direct = c
        .list_agents(&Default::default(), &Default::default())
        .json()
        .await
        .expect("list");
    assert_eq!(page, direct);
    let run = opscore(b, &["agents", "list", "--state", "active"]).await;
    assert_eq!(run.column("AGENT"), ["a1"]);

    // Leases: the stale agent shows as such and the filter finds it.
    for _ in 0..100 {
        if c.get_agent("a3").await.expect("a3").stale == Some(true) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let run = opscore(b, &["agents", "list", "--stale", "true"]).await;
    assert_eq!(run.column("AGENT"), ["a3"]);
    assert_eq!(
        run.stdout
            .lines()
            .nth(1)
            .and_then(|l| l.split_whitespace().nth(2)),
        Some("stale")
    );
    let run = opscore(b, &["agents", "list", "--stale", "false"]).await;
    assert_eq!(run.column("AGENT"), ["a1", "a2"]);
    let run = opscore(b, &["agents", "get", "a3"]).await;
    assert_eq!(run.field("Status"), "stale");
    assert_eq!(run.field("Lease"), "1s");

    // Leases on and off from the CLI: a1 holds none (never stale), gets
    // one, and loses it again; a bad lease is the server's refusal.
    assert_eq!(
        opscore(b, &["agents", "get", "a1"]).await.field("Lease"),
        "none (never stale)"
    );
    let run = opscore(b, &["agents", "lease", "a1", "--ttl", "5m"]).await;
    assert_eq!(run.field("Lease"), "300s");
    assert_eq!(c.get_agent("a1").await.expect("a1").ttl_seconds, Some(300));
    let run = opscore(b, &["agents", "lease", "a1", "--clear", "--json"]).await;
    assert_eq!(run.json()["ttlSeconds"], Value::Null);
    assert_eq!(c.get_agent("a1").await.expect("a1").ttl_seconds, None);
    let run = opscore(b, &["agents", "lease", "a1", "--ttl", "2d"]).await;
    assert_refused(&run, c.set_lease("a1", Some(2 * 86_400)).await);
    assert!(run.stderr.contains("ttlSeconds"), "{run:?}");
    let run = opscore(b, &["agents", "lease", "a1"]).await;
    assert!(run.failed(2).contains("--ttl"), "{run:?}");

    // Paging: a page and the cursor of the rest, on stderr; --all follows it.
    let run = opscore(b, &["agents", "list", "--limit", "2"]).await;
    assert_eq!(run.code, 0, "{run:?}");
    let cursor = run
        .stderr
        .split_whitespace()
        .skip_while(|w| *w != "--cursor")
        .nth(1)
        .expect("a cursor on stderr")
        .trim_end_matches(',')
        .to_owned();
    let first_page: Vec<&str> = run.stdout.lines().skip(1).collect();
    assert_eq!(first_page.len(), 2, "{run:?}");
    let run = opscore(b, &["agents", "list", "--cursor", &cursor]).await;
    assert_eq!(run.column("AGENT"), ["a3"]);
    let all = opscore(b, &["agents", "list", "--limit", "1", "--all", "--json"])
        .await
        .json();
    let ids: Vec<&str> = all["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|a| a["agentId"].as_str().expect("id"))
        .collect();
    assert_eq!(ids, ["a1", "a2", "a3"]);
    assert_eq!(all["nextCursor"], Value::Null);
    let run = opscore(b, &["agents", "list", "--limit", "1", "--all"]).await;
    assert_eq!(run.column("AGENT"), ["a1", "a2", "a3"]);

    // One agent.
    let run = opscore(b, &["agents", "get", "a1"]).await;
    assert_eq!(run.field("Agent"), "a1");
    assert_eq!(run.field("State"), "active");
    assert_eq!(run.field("State details"), r#"{"task":"t1"}"#);
    assert_eq!(run.field("Status"), "registered");
    let got = opscore(b, &["agents", "get", "a1", "--json"]).await.json();
    assert_eq!(got, c.get_agent("a1").json().await.expect("get"));

    // History, latest first.
    let run = opscore(b, &["agents", "history", "a1"]).await;
    let states: Vec<&str> = run
        .ok()
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().nth(4).expect("state column"))
        .collect();
    assert_eq!(states, ["active", "UNKNOWN"], "{}", run.stdout);
    let h = opscore(b, &["agents", "history", "a1", "--json"])
        .await
        .json();
    assert_eq!(h["items"][0]["state"], "active");
    assert_eq!(h["items"][1]["state"], "UNKNOWN");

    // Refusals carry the server's detail and code.
    let run = opscore(b, &["agents", "get", "ghost"]).await;
    assert_refused(&run, c.get_agent("ghost").await);
    let run = opscore(b, &["agents", "history", "ghost", "--json"]).await;
    assert_refused(&run, c.history("ghost", &Default::default()).await);
    let run = opscore(b, &["agents", "list", "--cursor", "zz"]).await;
    assert!(run.failed(1).ends_with("(validation_failed)\n"), "{run:?}");
    assert!(run.stderr.contains("cursor"), "{run:?}");
    // Bad usage is clap's: exit 2.
    let run = opscore(b, &["agents", "list", "--limit", "0"]).await;
    assert_eq!(run.code, 2, "{run:?}");
}

async fn state_commands(backend: Backend) {
    let s = start(backend).await;
    let c = client(&s);
    c.register(&registration("a1")).await.expect("register");
    let b = s.base.as_str();

    let t1 = ts(1);
    let run = opscore(
        b,
        &[
            "state",
            "report",
            "a1",
            "busy",
            "--details",
            r#"{"k":1}"#,
            "--timestamp",
            &t1,
        ],
    )
    .await;
    assert_eq!(run.ok(), "State update accepted (a1: busy)\n");
    let current = c.get_state("a1").await.expect("state");
    assert_eq!(current.state.state, "busy");
    assert_eq!(
        current.state.details.as_ref().map(|d| d.value()),
        Some(json!({"k": 1}))
    );
    assert_eq!(
        current
            .state
            .timestamp
            .to_rfc3339_opts(chrono::SecondsFormat::Micros, false),
        t1
    );

    let run = opscore(b, &["state", "get", "a1"]).await;
    assert_eq!(run.field("Agent"), "a1");
    assert_eq!(run.field("State"), "busy");
    assert_eq!(run.field("Details"), r#"{"k":1}"#);
    let got = opscore(b, &["state", "get", "a1", "--json"]).await.json();
    assert_eq!(got, c.get_state("a1").json().await.expect("state"));

    // Without --timestamp the report is stamped now: it becomes current
    // only over reports that are older, so check it in the history.
    let run = opscore(b, &["state", "report", "a1", "idle", "--json"]).await;
    assert_eq!(
        run.json(),
        json!({"status": "success", "message": "State update accepted"})
    );
    let history = c.history("a1", &Default::default()).await.expect("history");
    assert_eq!(history.items.len(), 3, "{history:?}");
    assert!(history.items.iter().any(|e| e.state == "idle"));

    // A --details that is not a JSON object is refused before sending.
    for (bad, why) in [
        ("{nope", "--details is not valid JSON"),
        ("[1]", "--details must be a JSON object"),
    ] {
        let run = opscore(b, &["state", "report", "a1", "busy", "--details", bad]).await;
        assert!(run.failed(2).contains(why), "{run:?}");
    }
    assert_eq!(
        c.history("a1", &Default::default())
            .await
            .expect("history")
            .items
            .len(),
        3,
        "nothing was stored by the refused runs"
    );
    // The server's own validation: exit 1 with its detail.
    let run = opscore(
        b,
        &["state", "report", "a1", "busy", "--timestamp", "yesterday"],
    )
    .await;
    assert_refused(
        &run,
        c.report_state_at("a1", "busy", None, "yesterday").await,
    );
    assert!(run.stderr.contains("timestamp"), "{run:?}");
    let run = opscore(b, &["state", "get", "ghost", "--json"]).await;
    assert_refused(&run, c.get_state("ghost").await);

    // An admin resets the state to UNKNOWN (the test key is the admin's).
    let run = opscore(b, &["state", "reset", "a1"]).await;
    assert_eq!(run.field("State"), "UNKNOWN");
    assert_eq!(
        c.get_state("a1").await.expect("state").state.state,
        "UNKNOWN"
    );
    let run = opscore(b, &["state", "reset", "ghost"]).await;
    assert_refused(&run, c.reset_state("ghost").await);
    let run = opscore(b, &["state", "report", "ghost", "idle"]).await;
    assert_refused(&run, c.report_state("ghost", "idle", None).await);
}

crate::backend_tests!(agents_commands, state_commands);

/// `opscore serve` over a workflows directory holding a link to the data
/// directory's generated API key (`zz.yaml`), or to a file outside it, stops
/// with the link's name and never prints what the file holds; a YAML file
/// that does not parse is named with its line and column, not its content.
/// A link that stays inside the directory is read as usual.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workflow_files_never_echo_their_content() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("data");
    let wf = tmp.path().join("workflows");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::create_dir_all(&wf).unwrap();
    let secret = "opk_0123456789abcdef_xyzzy-key-material";
    std::fs::write(data.join("api_key"), secret).unwrap();
    std::fs::write(
        wf.join("a.json"),
        r#"{"id":"w1","tasks":[{"taskId":"t1"}]}"#,
    )
    .unwrap();
    std::fs::write(wf.join("c.def"), "id: w2\ntasks: [{taskId: t1}]\n").unwrap();
    std::os::unix::fs::symlink(wf.join("c.def"), wf.join("b.yml")).unwrap();
    let serve = |dir: &std::path::Path| {
        let env = [
            (
                "DATABASE_URL",
                format!("sqlite://{}", tmp.path().join("db.sqlite").display()),
            ),
            ("OPSCORE_DATA_DIR", data.display().to_string()),
            ("OPSCORE_WORKFLOWS_DIR", dir.display().to_string()),
            ("OPSCORE_BIND", "127.0.0.1:1".to_owned()),
            ("OPSCORE_API_KEY", KEY.to_owned()),
        ];
        async move {
            let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
            opscore_env(&env, &["serve"]).await
        }
    };

    std::os::unix::fs::symlink(data.join("api_key"), wf.join("zz.yaml")).unwrap();
    let run = serve(&wf).await;
    assert_ne!(run.code, 0, "{run:?}");
    let all = format!("{}{}", run.stdout, run.stderr);
    assert!(all.contains("zz.yaml"), "{run:?}");
    assert!(all.contains("outside the workflows directory"), "{run:?}");
    assert!(!all.contains("xyzzy"), "the key was printed: {run:?}");

    std::fs::remove_file(wf.join("zz.yaml")).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", wf.join("pw.yaml")).unwrap();
    let run = serve(&wf).await;
    let all = format!("{}{}", run.stdout, run.stderr);
    assert!(all.contains("pw.yaml") && !all.contains("root:"), "{run:?}");

    // A file inside the directory holding the secret's text itself: named,
    // with line and column, its content never printed.
    std::fs::remove_file(wf.join("pw.yaml")).unwrap();
    std::fs::write(wf.join("zz.yaml"), format!("{secret}\n")).unwrap();
    let run = serve(&wf).await;
    let all = format!("{}{}", run.stdout, run.stderr);
    assert!(all.contains("zz.yaml") && all.contains("line 1"), "{run:?}");
    assert!(
        !all.contains("xyzzy"),
        "the file's content was printed: {run:?}"
    );
    std::fs::write(
        wf.join("zz.json"),
        format!("{{\"id\": \"{secret}\", \"tasks\": 7}}"),
    )
    .unwrap();
    std::fs::remove_file(wf.join("zz.yaml")).unwrap();
    let run = serve(&wf).await;
    let all = format!("{}{}", run.stdout, run.stderr);
    assert!(all.contains("zz.json") && all.contains("line 1"), "{run:?}");
    assert!(
        !all.contains("xyzzy"),
        "the file's content was printed: {run:?}"
    );
}

/// A wrong key is the server's refusal (1), a missing key or a bad URL is
/// usage (2), a server that is not there is a connection failure (3).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_and_connection_errors() {
    let s = start(Backend::Sqlite).await;
    let b = s.base.as_str();
    let wrong = Client::new(b, Some("wrong-key-0123456789".into()));
    let run = opscore_env(
        &[
            ("OPSCORE_URL", b),
            ("OPSCORE_CLIENT_KEY", "wrong-key-0123456789"),
        ],
        &["agents", "list"],
    )
    .await;
    assert_refused(
        &run,
        wrong
            .list_agents(&Default::default(), &Default::default())
            .await,
    );
    let run = opscore(
        b,
        &[
            "agents",
            "list",
            "--api-key",
            "wrong-key-0123456789",
            "--json",
        ],
    )
    .await;
    assert_eq!(
        run.code, 1,
        "--api-key overrides OPSCORE_CLIENT_KEY: {run:?}"
    );

    let run = opscore_env(&[("OPSCORE_URL", b)], &["agents", "list"]).await;
    assert_eq!(run.code, 2, "{run:?}");
    assert!(run.stderr.contains("--api-key"), "{run:?}");
    let run = opscore(b, &["agents", "list", "--url", "not a url"]).await;
    assert!(run.failed(2).contains("--url"), "{run:?}");

    // A port nothing listens on any more.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr")
    };
    let run = opscore(&format!("http://{closed}"), &["sessions", "get", "x"]).await;
    assert!(
        run.failed(3).contains("request to Ops-Core failed"),
        "{run:?}"
    );
}

/// `-o json` and `--json` print the server's JSON; `-o yaml` the same value
/// as YAML, for a single answer, a listing and `--all`; anything else is
/// refused as usage.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_formats_print_the_same_answer() {
    let s = start(Backend::Sqlite).await;
    let b = s.base.as_str();
    let c = client(&s);
    c.register(&registration("a1")).await.expect("register");
    for args in [
        vec!["agents", "get", "a1"],
        vec!["agents", "list"],
        vec!["agents", "list", "--all"],
    ] {
        let with = |extra: &[&'static str]| {
            let mut a = args.clone();
            a.extend_from_slice(extra);
            a
        };
        let json = opscore(b, &with(&["--json"])).await.json();
        assert_eq!(opscore(b, &with(&["-o", "json"])).await.json(), json);
        let yaml = opscore(b, &with(&["-o", "yaml"])).await;
        let from_yaml: Value = serde_norway::from_str(yaml.ok()).expect("YAML");
        // The same value, times and all (JSON and YAML differ only in form).
        assert_eq!(from_yaml, json, "{args:?}");
    }
    let run = opscore(b, &["agents", "list", "-o", "xml"]).await;
    assert_eq!(run.code, 2, "{run:?}");
    let run = opscore(b, &["agents", "list", "-o", "yaml", "--json"]).await;
    assert_eq!(run.code, 2, "{run:?}");
}

/// Contexts: `opscore context add/use/list/remove` keep named servers in
/// the client's config file (a key file's path or a key command, never a
/// key), and a command with no `--url` or key talks to the current one;
/// `--context` picks another, flags and variables win over both. The
/// server's `OPSCORE_API_KEY` still works as the client's key, with a
/// notice naming `OPSCORE_CLIENT_KEY`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contexts_name_servers_and_their_keys() {
    let s = start(Backend::Sqlite).await;
    let b = s.base.as_str();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("opscore").join("config.yaml");
    let cfg = config.to_str().unwrap();
    let key_file = dir.path().join("key");
    std::fs::write(&key_file, format!("{KEY}\n")).unwrap();
    let with_config = |args: Vec<String>| async move {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        opscore_env(&[("OPSCORE_CONFIG", cfg)], &args).await
    };
    let argv = |a: &[&str]| a.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();

    let key_path = key_file.to_str().unwrap();
    with_config(argv(&[
        "context",
        "add",
        "local",
        "--url",
        b,
        "--key-file",
        key_path,
    ]))
    .await
    .ok();
    with_config(argv(&[
        "context",
        "add",
        "gone",
        "--url",
        "http://127.0.0.1:1",
        "--key-command",
        "echo other-key-0123456789",
    ]))
    .await
    .ok();
    let text = std::fs::read_to_string(&config).unwrap();
    assert!(!text.contains(KEY), "the config holds a key: {text}");
    let list = with_config(argv(&["context", "list"])).await;
    let rows: Vec<&str> = list.ok().lines().collect();
    assert!(rows[0].starts_with("CURRENT"), "{rows:?}");
    assert!(
        rows.iter()
            .any(|r| r.starts_with('*') && r.contains("local")),
        "the first added is current: {rows:?}"
    );

    // No --url, no key: the current context's.
    with_config(argv(&["agents", "list"])).await.ok();
    // Another context by name: nothing listens there.
    let run = with_config(argv(&["--context", "gone", "agents", "list"])).await;
    assert_eq!(
        run.code, 2,
        "--context is a client option, after the command: {run:?}"
    );
    let run = with_config(argv(&["agents", "list", "--context", "gone"])).await;
    assert!(
        run.failed(3).contains("request to Ops-Core failed"),
        "{run:?}"
    );
    with_config(argv(&["context", "use", "gone"])).await.ok();
    with_config(argv(&["agents", "list"])).await.failed(3);
    // Flags win over the context.
    with_config(argv(&["agents", "list", "--url", b, "--api-key", KEY]))
        .await
        .ok();
    let run = with_config(argv(&["context", "use", "nope"])).await;
    assert!(run.failed(2).contains("no context named 'nope'"), "{run:?}");
    with_config(argv(&["context", "remove", "gone"])).await.ok();
    let list = with_config(argv(&["context", "list"])).await;
    assert!(!list.ok().contains("gone"), "{list:?}");
    // With no current context and no key: usage, naming the ways to give one.
    let run = with_config(argv(&["agents", "list", "--url", b])).await;
    assert!(run.failed(2).contains("OPSCORE_CLIENT_KEY"), "{run:?}");

    // Given a URL and a key, the config file is not read at all (the
    // simulator in a container runs with an unreadable HOME); a command
    // that needs it says which file is wrong.
    std::fs::write(&config, "contexts: [not, a, map]").unwrap();
    let given = [
        ("OPSCORE_CONFIG", cfg),
        ("OPSCORE_URL", b),
        ("OPSCORE_CLIENT_KEY", KEY),
    ];
    opscore_env(&given, &["agents", "list"]).await.ok();
    let run = opscore_env(&given[..2], &["agents", "list"]).await;
    assert!(
        run.failed(2).contains("not a valid opscore config"),
        "{run:?}"
    );

    let run = opscore_env(
        &[("OPSCORE_URL", b), ("OPSCORE_API_KEY", KEY)],
        &["agents", "list"],
    )
    .await;
    assert_eq!(run.code, 0, "{run:?}");
    assert!(
        run.stderr.contains("set OPSCORE_CLIENT_KEY instead"),
        "{run:?}"
    );
}

#[tokio::test]
async fn completions_for_each_shell() {
    for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
        let run = opscore_env(&[], &["completions", shell]).await;
        let out = run.ok();
        for word in [
            "opscore",
            "agents",
            "workflows",
            "sessions",
            "watch",
            "api-key",
        ] {
            assert!(out.contains(word), "{shell} completion lacks {word}");
        }
    }
    let run = opscore_env(&[], &["completions", "tcsh"]).await;
    assert_eq!(run.code, 2, "{run:?}");
}

/// `opscore completions bash | head -n 1`, `opscore agents list | head`:
/// a reader that goes away early is not an error. The output goes into a
/// pipe whose reader closes after the first line; the command must end
/// quietly with 0, not panic (101).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_pipe_ends_output_quietly() {
    let s = start(Backend::Sqlite).await;
    let c = client(&s);
    for i in 0..300 {
        c.register(&registration(&format!("agent-{i:03}")))
            .await
            .expect("register");
    }
    for args in [vec!["completions", "bash"], vec!["agents", "list", "--all"]] {
        let script = format!(
            "set -o pipefail; {} {} | head -n 1 >/dev/null",
            env!("CARGO_BIN_EXE_opscore"),
            args.join(" ")
        );
        let out = tokio::process::Command::new("bash")
            .arg("-c")
            .arg(&script)
            .env("OPSCORE_URL", &s.base)
            .env("OPSCORE_CLIENT_KEY", KEY)
            .output()
            .await
            .expect("bash");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
}
