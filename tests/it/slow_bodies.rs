//! Clients that have not proven who they are cannot starve those that
//! have: 1,100 connections trickle webhook bodies at a byte a second, with
//! no credentials or with signature headers that cannot be checked until
//! the body is in, while a client with a valid key reads twice a second.
//! Every read must be answered 200 and slow bodies must end with 408
//! `request_timeout`. What the stalled connections held must be given
//! back: within a few idle seconds of each round's end, the server's
//! resident memory is back within 10% of what it was before the first
//! (after a warm-up), and a second round changes nothing.
//!
//! The server is the real binary in a child process, so that its resident
//! memory can be measured on its own (and with the allocator it ships
//! with).

use crate::common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::{register_at, send, Backend, ServerProcess, TestDb, KEY};
use reqwest::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

/// Stalled connections held open at once.
const ATTACKERS: usize = 1_100;
/// How long the attack lasts.
const ATTACK: Duration = Duration::from_secs(15);
/// And its second round.
const SECOND_ROUND: Duration = Duration::from_secs(8);
/// The body deadline the server runs with.
const BODY_TIMEOUT_SECS: &str = "5";
/// How long the server may take, once a round is over, to give back what
/// the stalled connections held.
const RELEASE_WITHIN: Duration = Duration::from_secs(10);

/// Resident memory of a process, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/PID/status")
}

/// Wait (up to [`RELEASE_WITHIN`]) for the resident memory of `pid` to
/// come back within 10% of `start`; the last value read, and how long it
/// took.
async fn settled_rss_kib(pid: u32, start: u64) -> (u64, Duration) {
    let began = Instant::now();
    loop {
        let rss = rss_kib(pid);
        if rss <= within_10_percent(start) || began.elapsed() >= RELEASE_WITHIN {
            return (rss, began.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The largest value within 10% of `start`.
fn within_10_percent(start: u64) -> u64 {
    start + start / 10
}

/// The soft limit on open files of this process (the server inherits it).
/// The attack needs one descriptor per connection on each side: raise the
/// soft limit to the hard one when it is too low, and fail clearly if even
/// that is not enough.
fn ensure_open_files(needed: u64) {
    let limits = std::fs::read_to_string("/proc/self/limits").expect("read limits");
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("open files limit");
    let nums: Vec<u64> = line
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    let (soft, hard) = (nums[0], nums[1]);
    if soft >= needed {
        return;
    }
    assert!(
        hard >= needed,
        "this test needs {needed} open files; the hard limit is {hard}"
    );
    let status = std::process::Command::new("prlimit")
        .arg(format!("--pid={}", std::process::id()))
        .arg(format!("--nofile={hard}:{hard}"))
        .status()
        .expect("run prlimit");
    assert!(
        status.success(),
        "prlimit could not raise the open files limit"
    );
}

/// What happened to the attackers' connections.
#[derive(Default)]
struct Tally {
    by_status: BTreeMap<u16, usize>,
    closed_silently: usize,
}

/// Read a response's status line; `None` when the connection closes (or
/// fails) first.
async fn status_of(rd: &mut tokio::net::tcp::OwnedReadHalf) -> Option<u16> {
    let mut buf = Vec::new();
    loop {
        if let Some(i) = buf.windows(2).position(|w| w == b"\r\n") {
            let line = String::from_utf8_lossy(&buf[..i]).to_string();
            return line.split(' ').nth(1).and_then(|c| c.parse().ok());
        }
        let mut chunk = [0u8; 512];
        match rd.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// One attacker: connect, send a webhook head announcing 100,000 bytes
/// (with made-up signature headers when `signed`), then a byte a second.
/// When the server answers or hangs up, reconnect half a second later,
/// until `stop`.
async fn attacker(addr: String, signed: bool, stop: CancellationToken, tally: Arc<Mutex<Tally>>) {
    while !stop.is_cancelled() {
        let Ok(sock) = TcpStream::connect(&addr).await else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        let mut head = format!(
            "POST {} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
             Content-Length: 100000\r\n",
            common::NOTIFY
        );
        if signed {
            head.push_str(&format!(
                "X-AgentKit-Timestamp: {}\r\nX-AgentKit-Signature: {}\r\n",
                chrono::Utc::now().timestamp(),
                "0".repeat(64)
            ));
        }
        head.push_str("\r\n{");
        let (mut rd, mut wr) = sock.into_split();
        if wr.write_all(head.as_bytes()).await.is_err() {
            continue;
        }
        let trickle = async {
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                if wr.write_all(b" ").await.is_err() {
                    // The server stopped reading; wait for its answer.
                    std::future::pending::<()>().await;
                }
            }
        };
        tokio::select! {
            status = status_of(&mut rd) => {
                let mut t = tally.lock().unwrap();
                match status {
                    Some(s) => *t.by_status.entry(s).or_default() += 1,
                    None => t.closed_silently += 1,
                }
            }
            () = trickle => {}
            () = stop.cancelled() => return,
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Every authenticated read made twice a second (when, status, body)
/// while [`ATTACKERS`] attackers run for `len`, what the attackers got,
/// and the server's peak RSS meanwhile.
async fn attack(
    addr: &str,
    client: &reqwest::Client,
    read_path: &str,
    pid: u32,
    len: Duration,
) -> (Vec<(Duration, StatusCode, String)>, Tally, u64) {
    let stop = CancellationToken::new();
    let tally = Arc::new(Mutex::new(Tally::default()));
    let attackers: Vec<_> = (0..ATTACKERS)
        .map(|i| {
            tokio::spawn(attacker(
                addr.to_owned(),
                i % 2 == 0,
                stop.clone(),
                tally.clone(),
            ))
        })
        .collect();
    let began = Instant::now();
    let mut reads = Vec::new();
    let mut peak_rss = 0;
    while began.elapsed() < len {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let at = began.elapsed();
        let r = send(client.get(read_path).bearer_auth(KEY)).await;
        reads.push((at, r.status, r.body.to_string()));
        peak_rss = peak_rss.max(rss_kib(pid));
    }
    stop.cancel();
    for a in attackers {
        a.await.expect("attacker task");
    }
    let tally = Arc::try_unwrap(tally)
        .ok()
        .expect("attackers done")
        .into_inner()
        .unwrap();
    (reads, tally, peak_rss)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_unauthenticated_bodies_never_starve_valid_keys() {
    ensure_open_files(2 * ATTACKERS as u64 + 500);
    let db = TestDb::new(Backend::Sqlite).await;
    let p = ServerProcess::spawn_with(
        &db.url,
        db.dir.path(),
        &[
            ("OPSCORE_BODY_READ_TIMEOUT_SECS", BODY_TIMEOUT_SECS),
            // Keep the startup line, not a line per attacking request.
            ("LOG_LEVEL", "info,opscore::http=warn"),
        ],
    )
    .await;
    let pid = p.child.id().expect("server pid");
    let addr = p.base.trim_start_matches("http://").to_owned();
    let client = reqwest::Client::new();
    register_at(&client, &p.base, "reader-0", &["x"]).await;
    let read_path = format!("{}/v1/opscore/agent/reader-0/state", p.base);

    // Warm up the paths the test uses, then take the baseline.
    for _ in 0..20 {
        let r = send(client.get(&read_path).bearer_auth(KEY)).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
        let r = send(
            client
                .post(format!("{}{}", p.base, common::NOTIFY))
                .header("content-type", "application/json")
                .body("{}"),
        )
        .await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.body);
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let start_rss = rss_kib(pid);

    // The attack, with reads twice a second throughout; then, once its
    // connections are gone, a shorter second round.
    let (reads, tally, peak_rss) = attack(&addr, &client, &read_path, pid, ATTACK).await;
    let (after_first, took_first) = settled_rss_kib(pid, start_rss).await;
    println!(
        "attackers: {:?}, closed without an answer: {}; reads: {}",
        tally.by_status,
        tally.closed_silently,
        reads.len()
    );

    let refused: Vec<_> = reads
        .iter()
        .filter(|(_, status, _)| *status != StatusCode::OK)
        .collect();
    assert!(
        refused.is_empty(),
        "{} of {} authenticated reads during the attack were not 200: {refused:?}",
        refused.len(),
        reads.len()
    );
    assert!(
        reads.len() >= 20,
        "only {} reads in {ATTACK:?}",
        reads.len()
    );
    // Bodies that never finish are cut off at the body deadline.
    assert!(
        tally.by_status.get(&408).copied().unwrap_or(0) > 0,
        "no stalled body ended with 408: {:?}",
        tally.by_status
    );
    for status in tally.by_status.keys() {
        assert!(
            matches!(status, 401 | 408 | 503),
            "an attacker got {status}: {:?}",
            tally.by_status
        );
    }

    // What the stalled connections held is given back, after each round:
    // the server's memory returns within 10% of its start.
    let (reads, _, peak_second) = attack(&addr, &client, &read_path, pid, SECOND_ROUND).await;
    assert!(
        reads.iter().all(|(_, status, _)| *status == StatusCode::OK),
        "{reads:?}"
    );
    let (after_second, took_second) = settled_rss_kib(pid, start_rss).await;
    println!(
        "server RSS (KiB): start {start_rss}, peak {peak_rss}, after the attack {after_first} \
         ({took_first:.1?} later), peak of a second round {peak_second}, after it \
         {after_second} ({took_second:.1?} later)"
    );
    for (round, after) in [("first", after_first), ("second", after_second)] {
        assert!(
            after <= within_10_percent(start_rss),
            "server RSS was {after} KiB {RELEASE_WITHIN:?} after the {round} round, more than \
             10% above its {start_rss} KiB at the start: memory held for stalled bodies was \
             not given back"
        );
    }

    // And the server still serves.
    let r = send(client.get(&read_path).bearer_auth(KEY)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    p.kill().await;
}
