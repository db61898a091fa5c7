//! `opscore watch`, against the real feed on both backends, and against a
//! scripted feed (raw HTTP over a real socket, written here byte for byte)
//! for what a healthy server does not do on demand: drop the connection
//! mid-event, refuse a resume, answer with something that is not a feed.

use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::net::TcpListener;
use tokio::process::{Child, ChildStdout};
use tokio::sync::mpsc;

use super::{client, opscore, registration, start};
use crate::common::{Backend, KEY};

/// A feed that answers the n-th connection with the n-th response, sends
/// each request's head (method, path, headers) on the channel, and closes
/// the connection after a response only when told to.
async fn scripted_feed(
    responses: Vec<(String, bool)>,
) -> (String, mpsc::UnboundedReceiver<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut open = Vec::new();
        for (response, close) in responses {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") {
                match sock.read(&mut byte).await {
                    Ok(1) => head.push(byte[0]),
                    _ => return,
                }
            }
            let _ = tx.send(String::from_utf8_lossy(&head).into_owned());
            let _ = sock.write_all(response.as_bytes()).await;
            if close {
                let _ = sock.shutdown().await;
            } else {
                open.push(sock);
            }
        }
        // Hold the open streams until the test ends.
        std::future::pending::<()>().await;
    });
    (base, rx)
}

fn sse_head() -> String {
    "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\nconnection: close\r\n\r\n".to_owned()
}

fn event_json(index: u64, state: &str) -> String {
    format!(
        r#"{{"index":{index},"kind":"agent.state","at":"2026-11-28T10:00:0{index}.000000Z","agentId":"a1","sessionId":null,"data":{{"state":"{state}","timestamp":"2026-11-28T10:00:00Z","details":null}}}}"#
    )
}

fn event_block(index: u64, state: &str) -> String {
    format!(
        "id: {index}\nevent: agent.state\ndata: {}\n\n",
        event_json(index, state)
    )
}

/// Start `opscore watch ARGS` against `base`, stdout piped.
fn spawn_watch(base: &str, args: &[&str]) -> (Child, Lines<BufReader<ChildStdout>>) {
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_opscore"))
        .arg("watch")
        .args(args)
        .env_clear()
        .env("OPSCORE_URL", base)
        .env("OPSCORE_CLIENT_KEY", KEY)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn opscore watch");
    let stdout = child.stdout.take().expect("stdout");
    (child, BufReader::new(stdout).lines())
}

async fn next_line(lines: &mut Lines<BufReader<ChildStdout>>) -> String {
    tokio::time::timeout(Duration::from_secs(20), lines.next_line())
        .await
        .expect("a line within 20s")
        .expect("read")
        .expect("watch still running")
}

/// Two connections: the first sends events 6 and 7 and half of 8, then
/// drops; the watcher must resume with `Last-Event-ID: 7` and print 8 once.
async fn follow_and_resume(json: bool) {
    let first = format!(
        "{}: keep-alive\n\n{}{}id: 8\nevent: agent.state\ndata: {{\"index\":8,",
        sse_head(),
        event_block(6, "busy"),
        event_block(7, "idle"),
    );
    let second = format!("{}: keep-alive\n\n{}", sse_head(), event_block(8, "active"));
    let (base, mut requests) = scripted_feed(vec![(first, true), (second, false)]).await;
    let mut args = vec![
        "--since",
        "5",
        "--agent",
        "a1",
        "--agent",
        "a2",
        "--kinds",
        "agent.state,session.status",
    ];
    if json {
        args.push("--json");
    }
    let (mut child, mut lines) = spawn_watch(&base, &args);
    let mut got = Vec::new();
    for _ in 0..3 {
        got.push(next_line(&mut lines).await);
    }
    if json {
        assert_eq!(
            got,
            [
                event_json(6, "busy"),
                event_json(7, "idle"),
                event_json(8, "active")
            ]
        );
    } else {
        assert_eq!(
            got,
            [
                "6 2026-11-28 10:00:06.000Z agent.state a1 state=busy timestamp=2026-11-28T10:00:00Z",
                "7 2026-11-28 10:00:07.000Z agent.state a1 state=idle timestamp=2026-11-28T10:00:00Z",
                "8 2026-11-28 10:00:08.000Z agent.state a1 state=active timestamp=2026-11-28T10:00:00Z",
            ]
        );
    }
    let head = requests.recv().await.expect("first request").to_lowercase();
    assert!(head.starts_with("get /v1/opscore/events?"), "{head}");
    for part in [
        "agentid=a1%2ca2",
        "kinds=agent.state%2csession.status",
        "after=5",
    ] {
        assert!(head.contains(part), "{part} missing from {head}");
    }
    assert!(
        head.contains(&format!("authorization: bearer {}", KEY.to_lowercase())),
        "{head}"
    );
    assert!(head.contains("accept: text/event-stream"), "{head}");
    assert!(!head.contains("last-event-id"), "{head}");
    let head = requests
        .recv()
        .await
        .expect("second request")
        .to_lowercase();
    assert!(head.contains("last-event-id: 7\r\n"), "{head}");
    assert!(
        !head.contains("after="),
        "resumes by Last-Event-ID only: {head}"
    );
    child.kill().await.expect("kill");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_follows_and_resumes_a_scripted_feed() {
    follow_and_resume(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_json_follows_and_resumes_a_scripted_feed() {
    follow_and_resume(true).await;
}

/// A refused resume is the server's error (exit 1); an answer that is not
/// an event stream means this is not an Ops-Core feed (exit 3).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_exits_on_a_refused_or_foreign_feed() {
    let body = r#"{"detail":"Resume index 3 is older than the oldest retained event (10)","code":"feed_index_expired"}"#;
    let gone = format!(
        "HTTP/1.1 410 Gone\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let (base, _requests) = scripted_feed(vec![(gone, true)]).await;
    let run = opscore(&base, &["watch", "--since", "3"]).await;
    assert_eq!(
        run.failed(1),
        "error: Resume index 3 is older than the oldest retained event (10) (feed_index_expired)\n"
    );

    let html = "HTTP/1.1 200 OK\r\ncontent-type: text/html\r\ncontent-length: 5\r\nconnection: close\r\n\r\nhello";
    let (base, _requests) = scripted_feed(vec![(html.to_owned(), true)]).await;
    let run = opscore(&base, &["watch"]).await;
    assert!(run.failed(3).contains("text/event-stream"), "{run:?}");

    let run = opscore(&base, &["watch", "--kinds", "agent.nope"]).await;
    assert_eq!(run.code, 2, "unknown kinds are refused by clap: {run:?}");
}

/// The real feed: state reports show up as `agent.state` lines, in both
/// output modes.
async fn watch_prints_state_changes(backend: Backend) {
    let s = start(backend).await;
    let c = client(&s);
    c.register(&registration("a1")).await.expect("register");
    c.register(&registration("a2")).await.expect("register");
    // Start after the feed's current position, which every state read
    // carries, so the test does not race the watcher's connection.
    let r = s
        .get("/v1/opscore/agent/a1/state")
        .send()
        .await
        .expect("state");
    let head: u64 = r
        .headers()
        .get("x-opscore-index")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .expect("X-Opscore-Index on a state read");
    let since = head.to_string();
    let (mut text, mut text_lines) = spawn_watch(&s.base, &["--since", &since, "--agent", "a1"]);
    let (mut json, mut json_lines) = spawn_watch(
        &s.base,
        &["--since", &since, "--kinds", "agent.state", "--json"],
    );
    let now = chrono::Utc::now();
    for (i, state) in ["busy", "idle"].iter().enumerate() {
        let ts = crate::common::ts_at(now, i as i64);
        c.report_state_at("a1", state, Some(&serde_json::json!({"step": i})), &ts)
            .await
            .expect("report");
    }
    c.report_state("a2", "active", None).await.expect("report");

    for (i, state) in ["busy", "idle"].iter().enumerate() {
        let line = next_line(&mut text_lines).await;
        let words: Vec<&str> = line.split(' ').collect();
        assert!(words[0].parse::<u64>().expect("index") > head, "{line}");
        assert_eq!(words[4], "a1", "{line}");
        assert_eq!(words[3], "agent.state", "{line}");
        assert_eq!(words[5], format!("state={state}"), "{line}");
        assert!(
            line.ends_with(&format!(r#"details={{"step":{i}}}"#)),
            "{line}"
        );
    }
    let mut seen = Vec::new();
    for _ in 0..3 {
        let v: Value = serde_json::from_str(&next_line(&mut json_lines).await).expect("JSON line");
        assert_eq!(v["kind"], "agent.state", "{v}");
        assert!(v["index"].as_u64().expect("index") > head, "{v}");
        seen.push((
            v["agentId"].as_str().unwrap_or("").to_owned(),
            v["data"]["state"].as_str().unwrap_or("").to_owned(),
        ));
    }
    seen.sort();
    assert_eq!(
        seen,
        [
            ("a1".into(), "busy".into()),
            ("a1".into(), "idle".into()),
            ("a2".into(), "active".into())
        ]
    );
    text.kill().await.expect("kill");
    json.kill().await.expect("kill");
}

crate::backend_tests!(watch_prints_state_changes);
