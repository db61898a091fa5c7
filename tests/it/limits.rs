//! Limits and load shedding, over real sockets: past the concurrent request
//! limit requests are refused at once with 503 `overloaded` (and every
//! connection still gets an HTTP response), `/health` answers throughout, a
//! client that stalls while sending headers is disconnected, a request that
//! outlives the request timeout gets a contract-shaped 503, and bad values
//! of the new settings stop startup naming the setting.
//!
//! Requests are held in flight without test-only server code: a raw client
//! sends the headers with a Content-Length and then trickles the body, so
//! the handler sits in its body extractor holding a slot.

use crate::common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::common::{
    assert_error, future_base, history_at, register_at, send, ts_at, Backend, Resp, ServerProcess,
    TestDb, TestServer, KEY,
};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

/// A response read off a raw socket, in the harness's shape so that
/// `assert_error` applies.
async fn read_response<R: AsyncRead + Unpin>(rd: &mut R) -> Result<Resp, String> {
    let mut buf = Vec::new();
    let head_len = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let mut chunk = [0u8; 4096];
        match rd.read(&mut chunk).await {
            Ok(0) => {
                return Err(format!(
                    "connection closed before a response head ({} bytes: {:?})",
                    buf.len(),
                    String::from_utf8_lossy(&buf)
                ))
            }
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) => return Err(format!("reading the response head: {e}")),
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_len]).to_string();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let code: u16 = status_line
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("bad status line {status_line:?}"))?;
    let mut headers = HeaderMap::new();
    for line in lines.filter(|l| !l.is_empty()) {
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| format!("bad header line {line:?}"))?;
        headers.append(
            HeaderName::from_bytes(name.trim().as_bytes()).map_err(|e| e.to_string())?,
            HeaderValue::from_str(value.trim()).map_err(|e| e.to_string())?,
        );
    }
    let len: usize = headers
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| format!("no content-length in {head:?}"))?;
    let mut body = buf[head_len..].to_vec();
    while body.len() < len {
        let mut chunk = [0u8; 4096];
        match rd.read(&mut chunk).await {
            Ok(0) => return Err(format!("body cut short at {} of {len} bytes", body.len())),
            Ok(n) => body.extend_from_slice(&chunk[..n]),
            Err(e) => return Err(format!("reading the body: {e}")),
        }
    }
    let text = String::from_utf8_lossy(&body).to_string();
    Ok(Resp {
        status: StatusCode::from_u16(code).map_err(|e| e.to_string())?,
        headers,
        body: serde_json::from_str(&text).unwrap_or(Value::String(text)),
    })
}

/// The raw request head of a state report for `agent` with a body of `len`
/// bytes.
fn report_head(addr: &str, agent: &str, len: usize) -> String {
    format!(
        "POST /v1/opscore/agent/{agent}/state HTTP/1.1\r\nHost: {addr}\r\n\
         Authorization: Bearer {KEY}\r\nContent-Type: application/json\r\n\
         Content-Length: {len}\r\nConnection: close\r\n\r\n"
    )
}

/// A state report body padded with trailing whitespace (valid JSON), so
/// there is plenty to trickle.
fn padded_report(agent: &str, ts: &str) -> Vec<u8> {
    let body = json!({"agentId": agent, "timestamp": ts, "state": "active", "details": {}});
    format!("{body}{}", " ".repeat(512)).into_bytes()
}

/// How one slow client fared.
#[derive(Debug)]
struct Outcome {
    /// The response, or why none came.
    response: Result<Resp, String>,
    /// Whether it came while the client was still holding its body back.
    before_release: bool,
}

/// Send the head and a few bytes of `body`, then one more byte every 100 ms
/// (always keeping the last one back) until `release`, then the rest. Reads
/// the response all the while: a refused request is answered without its
/// body being read, and then the client stops sending.
async fn slow_client(
    addr: String,
    head: String,
    body: Vec<u8>,
    release: CancellationToken,
    answered_early: Arc<AtomicUsize>,
) -> Outcome {
    let sock = match TcpStream::connect(&addr).await {
        Ok(s) => s,
        Err(e) => {
            return Outcome {
                response: Err(format!("connect: {e}")),
                before_release: false,
            }
        }
    };
    let (mut rd, mut wr) = sock.into_split();
    let mut sent = 16;
    // Write errors are not failures here: a refused request's connection is
    // closed by the server while the client may still be sending. What
    // counts is that a response arrives.
    let mut writable =
        wr.write_all(head.as_bytes()).await.is_ok() && wr.write_all(&body[..sent]).await.is_ok();
    let read = read_response(&mut rd);
    tokio::pin!(read);
    let mut released = false;
    let response = loop {
        tokio::select! {
            r = &mut read => break r,
            () = release.cancelled(), if !released => {
                released = true;
                if writable {
                    writable = wr.write_all(&body[sent..]).await.is_ok();
                    sent = body.len();
                }
            }
            () = tokio::time::sleep(Duration::from_millis(100)),
                if !released && writable && sent + 1 < body.len() =>
            {
                writable = wr.write_all(&body[sent..sent + 1]).await.is_ok();
                sent += 1;
            }
        }
    };
    if response.is_ok() && !released {
        answered_early.fetch_add(1, Ordering::SeqCst);
    }
    // The write half lives until the response is in: closing it earlier
    // would half-close the connection under the server's feet.
    drop(wr);
    Outcome {
        response,
        before_release: !released,
    }
}

const LIMIT: usize = 8;
const CLIENTS: usize = 200;

async fn overload_is_shed_with_503_and_health_stays_up(backend: Backend) {
    let s = TestServer::start_with(backend, |c| {
        c.max_concurrent_requests = LIMIT;
        c.request_timeout = Duration::from_secs(300);
        c.body_read_timeout = Duration::from_secs(300);
    })
    .await;
    s.register("busy-0").await;
    let addr = s.base.trim_start_matches("http://").to_owned();
    let base = future_base();
    let release = CancellationToken::new();
    let answered_early = Arc::new(AtomicUsize::new(0));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|i| {
            let body = padded_report("busy-0", &ts_at(base, i as i64));
            let head = report_head(&addr, "busy-0", body.len());
            tokio::spawn(slow_client(
                addr.clone(),
                head,
                body,
                release.clone(),
                answered_early.clone(),
            ))
        })
        .collect();

    // With LIMIT requests held, every other one must be answered at once,
    // not queued behind them. (Without the limit none is answered until the
    // bodies are released, and this wait fails.)
    let excess = CLIENTS - LIMIT;
    let waited = tokio::time::timeout(Duration::from_secs(60), async {
        while answered_early.load(Ordering::SeqCst) < excess {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(
        waited.is_ok(),
        "only {} of the {excess} requests past the limit of {LIMIT} were answered while the limit was full",
        answered_early.load(Ordering::SeqCst)
    );

    // While saturated: liveness still answers, other API calls are shed.
    let health = send(s.client.get(s.url("/health"))).await;
    assert_eq!(health.status, StatusCode::OK, "{}", health.body);
    assert_eq!(health.body, json!({"status": "ok"}));
    let shed = s.get_json("/v1/opscore/agent/busy-0/state").await;
    assert_error(&shed, StatusCode::SERVICE_UNAVAILABLE, "overloaded");
    assert_eq!(shed.headers["retry-after"], "1");
    assert!(shed.headers.contains_key("x-request-id"));

    release.cancel();
    let mut accepted = 0;
    let mut overloaded = 0;
    for (i, c) in clients.into_iter().enumerate() {
        let outcome = tokio::time::timeout(Duration::from_secs(60), c)
            .await
            .unwrap_or_else(|_| panic!("client {i} got no response within 60s"))
            .expect("client task");
        let r = outcome
            .response
            .unwrap_or_else(|e| panic!("client {i} got no HTTP response: {e}"));
        match r.status {
            StatusCode::ACCEPTED => {
                assert!(
                    !outcome.before_release,
                    "client {i}: 202 before its body was sent"
                );
                assert_eq!(
                    r.body,
                    json!({"status": "success", "message": "State update accepted"})
                );
                accepted += 1;
            }
            _ => {
                assert_error(&r, StatusCode::SERVICE_UNAVAILABLE, "overloaded");
                assert_eq!(r.headers["retry-after"], "1", "client {i}");
                assert!(
                    outcome.before_release,
                    "client {i}: shed only after release"
                );
                overloaded += 1;
            }
        }
    }
    assert_eq!((accepted, overloaded), (LIMIT, excess));

    // The slots are free again, and exactly the held reports were stored.
    let r = s
        .report_json(
            "busy-0",
            &common::report("busy-0", &ts_at(base, 250), "idle", json!({})),
        )
        .await;
    common::assert_accepted(&r);
    let history = history_at(&s.client, &s.base, "busy-0").await;
    assert_eq!(
        history.len(),
        1 + LIMIT + 1,
        "registration + held reports + one more"
    );
    s.stop().await;
}

backend_tests!(overload_is_shed_with_503_and_health_stays_up);

/// Read until the server closes the connection; `Err` if it is still open
/// after `within`. Returns the bytes the server sent before closing.
async fn wait_closed(sock: &mut TcpStream, within: Duration) -> Result<Vec<u8>, ()> {
    let mut got = Vec::new();
    tokio::time::timeout(within, async {
        let mut chunk = [0u8; 1024];
        loop {
            match sock.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await
    .map_err(|_| ())?;
    Ok(got)
}

/// A client with no connection pool, so that no request goes out on a
/// kept-alive connection the server is closing for idleness.
fn fresh_client() -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .expect("client")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_headers_are_cut_off() {
    let db = TestDb::new(Backend::Sqlite).await;
    let p = ServerProcess::spawn_with(
        &db.url,
        db.dir.path(),
        &[("OPSCORE_HEADER_READ_TIMEOUT_SECS", "1")],
    )
    .await;
    let addr = p.base.trim_start_matches("http://").to_owned();
    let client = fresh_client();

    // Half a request head, then nothing; and a connection that sends nothing.
    let mut partial = TcpStream::connect(&addr).await.expect("connect");
    partial
        .write_all(format!("GET /health HTTP/1.1\r\nHost: {addr}\r\nX-Slow: ").as_bytes())
        .await
        .expect("write");
    let mut silent = TcpStream::connect(&addr).await.expect("connect");

    // Others are served meanwhile.
    let r = send(client.get(format!("{}/health", p.base))).await;
    assert_eq!(r.status, StatusCode::OK);

    for (name, sock) in [("partial headers", &mut partial), ("no bytes", &mut silent)] {
        let got = wait_closed(sock, Duration::from_secs(20))
            .await
            .unwrap_or_else(|()| {
                panic!("{name}: connection still open 20s after a 1s header timeout")
            });
        assert!(
            got.is_empty(),
            "{name}: unexpected bytes {:?}",
            String::from_utf8_lossy(&got)
        );
    }

    // A client that sends its whole head in time is served, even after a
    // pause before it starts.
    let mut late = TcpStream::connect(&addr).await.expect("connect");
    tokio::time::sleep(Duration::from_millis(300)).await;
    late.write_all(
        format!("GET /health HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .expect("write");
    let r = tokio::time::timeout(Duration::from_secs(10), read_response(&mut late))
        .await
        .expect("response in time")
        .expect("response");
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let r = send(client.get(format!("{}/health", p.base))).await;
    assert_eq!(r.status, StatusCode::OK);
    p.kill().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_past_its_deadline_gets_the_timeout_error() {
    let db = TestDb::new(Backend::Sqlite).await;
    let p = ServerProcess::spawn_with(
        &db.url,
        db.dir.path(),
        &[("OPSCORE_REQUEST_TIMEOUT_SECS", "1")],
    )
    .await;
    let addr = p.base.trim_start_matches("http://").to_owned();
    let client = fresh_client();
    register_at(&client, &p.base, "late-0", &["x"]).await;

    // The head and half the body, then one byte a second: never finished.
    let body = padded_report("late-0", &ts_at(future_base(), 0));
    let mut sock = TcpStream::connect(&addr).await.expect("connect");
    sock.write_all(report_head(&addr, "late-0", body.len()).as_bytes())
        .await
        .expect("write head");
    let half = body.len() / 2;
    sock.write_all(&body[..half]).await.expect("write body");
    let (mut rd, mut wr) = sock.into_split();
    let trickle = tokio::spawn(async move {
        for b in &body[half..body.len() - 1] {
            tokio::time::sleep(Duration::from_millis(500)).await;
            if wr.write_all(std::slice::from_ref(b)).await.is_err() {
                break;
            }
        }
        wr
    });
    let r = tokio::time::timeout(Duration::from_secs(20), read_response(&mut rd))
        .await
        .expect("a response within 20s of a 1s request timeout")
        .expect("an HTTP response");
    trickle.abort();
    assert_error(&r, StatusCode::SERVICE_UNAVAILABLE, "request_timeout");
    assert_eq!(r.headers["retry-after"], "1");
    assert!(r.headers.contains_key("x-request-id"));

    // Nothing was stored, and the next report goes through.
    let history = history_at(&client, &p.base, "late-0").await;
    assert_eq!(history.len(), 1, "{history:?}");
    let r = send(
        client
            .post(format!("{}/v1/opscore/agent/late-0/state", p.base))
            .bearer_auth(KEY)
            .json(&common::report(
                "late-0",
                &ts_at(future_base(), 1),
                "idle",
                json!({}),
            )),
    )
    .await;
    common::assert_accepted(&r);
    p.kill().await;
}

/// Run `opscore serve` with one extra setting (an environment variable or,
/// when `name` starts with `--`, a flag) and return its exit status and
/// stderr; fails the test if it is still running after 30 s.
async fn serve_with(name: &str, value: &str) -> (std::process::ExitStatus, String) {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_opscore"));
    cmd.arg("serve")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("OPSCORE_DATA_DIR", dir.path())
        .env(
            "DATABASE_URL",
            format!("sqlite://{}", dir.path().join("opscore.db").display()),
        )
        .env("OPSCORE_BIND", "127.0.0.1:0")
        .env("OPSCORE_API_KEY", KEY)
        .kill_on_drop(true);
    if name.starts_with("--") {
        cmd.arg(name).arg(value);
    } else {
        cmd.env(name, value);
    }
    let out = tokio::time::timeout(Duration::from_secs(30), cmd.output())
        .await
        .unwrap_or_else(|_| {
            panic!("{name}={value:?}: the server started instead of refusing the setting")
        })
        .expect("run opscore");
    (out.status, String::from_utf8_lossy(&out.stderr).to_string())
}

#[tokio::test]
async fn bad_limit_settings_stop_startup_naming_the_setting() {
    let cases = [
        (
            "OPSCORE_REQUEST_TIMEOUT_SECS",
            "0",
            "OPSCORE_REQUEST_TIMEOUT_SECS",
        ),
        (
            "OPSCORE_REQUEST_TIMEOUT_SECS",
            "30s",
            "OPSCORE_REQUEST_TIMEOUT_SECS",
        ),
        (
            "OPSCORE_HEADER_READ_TIMEOUT_SECS",
            "0",
            "OPSCORE_HEADER_READ_TIMEOUT_SECS",
        ),
        (
            "OPSCORE_HEADER_READ_TIMEOUT_SECS",
            "99999",
            "OPSCORE_HEADER_READ_TIMEOUT_SECS",
        ),
        (
            "OPSCORE_MAX_CONCURRENT_REQUESTS",
            "0",
            "OPSCORE_MAX_CONCURRENT_REQUESTS",
        ),
        (
            "OPSCORE_MAX_CONCURRENT_REQUESTS",
            "-5",
            "OPSCORE_MAX_CONCURRENT_REQUESTS",
        ),
        (
            "OPSCORE_MAX_CONCURRENT_REQUESTS",
            "",
            "OPSCORE_MAX_CONCURRENT_REQUESTS",
        ),
        (
            "--max-concurrent-requests",
            "lots",
            "--max-concurrent-requests",
        ),
        ("--request-timeout-secs", "0", "--request-timeout-secs"),
        (
            "--header-read-timeout-secs",
            "1.5",
            "--header-read-timeout-secs",
        ),
    ];
    for (name, value, named) in cases {
        let (status, stderr) = serve_with(name, value).await;
        assert!(!status.success(), "{name}={value:?} was accepted: {stderr}");
        assert!(
            stderr.contains(named) && stderr.contains("invalid setting"),
            "{name}={value:?}: stderr does not name the setting: {stderr}"
        );
    }
}
