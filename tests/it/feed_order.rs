//! The change feed's order under concurrent commits (PostgreSQL; extends
//! `feed.rs`, which holds the feed's other stories): several real
//! `opscore serve` processes on one database take reports at once while a
//! client keeps dropping its stream and resuming with `Last-Event-ID`, each
//! time from another replica. Whatever the commit order, the client must end
//! up with every committed event exactly once, in index order
//! (docs/guarantees.md, "Feed order").

use crate::common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::common::sse::Stream;
use crate::common::{Backend, ServerProcess, TestDb, KEY};
use reqwest::StatusCode;
use serde_json::json;

const REPLICAS: usize = 3;
const AGENTS: usize = 48;
const WRITERS: usize = 24;
const REPORTS: usize = 3000;

/// Every index the database holds, in order.
async fn committed(db: &TestDb) -> Vec<i64> {
    let pool = sqlx::PgPool::connect(&db.url).await.expect("connect");
    let ids: Vec<i64> = sqlx::query_scalar("SELECT idx FROM events ORDER BY idx")
        .fetch_all(&pool)
        .await
        .expect("read events");
    pool.close().await;
    ids
}

/// Events of one connection: from `last` on, until `want` arrived or the
/// stream stays quiet for `quiet`; returns their indexes in arrival order.
async fn read_some(base: &str, last: i64, want: usize, quiet: Duration) -> Vec<i64> {
    let mut s = Stream::open(base, "", Some(last)).await;
    let mut got = Vec::new();
    while got.len() < want {
        match s.next(quiet).await {
            Some(m) => got.push(m.id),
            None => break,
        }
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resumed_feed_misses_and_repeats_nothing_under_concurrent_replica_commits() {
    let db = TestDb::new(Backend::Postgres).await;
    let mut procs = Vec::new();
    for _ in 0..REPLICAS {
        procs.push(ServerProcess::spawn(&db.url, db.dir.path()).await);
    }
    // Hold each event-writing transaction open for a random while after
    // its events took their indexes, so that commits often land out of
    // index order (as a slow commit or a busy server would make them).
    for sql in [
        "CREATE FUNCTION test_slow_commit() RETURNS trigger LANGUAGE plpgsql AS $$ \
         BEGIN PERFORM pg_sleep(random() * 0.02); RETURN NULL; END $$",
        "CREATE TRIGGER test_slow_commit AFTER INSERT ON events \
         FOR EACH STATEMENT EXECUTE FUNCTION test_slow_commit()",
    ] {
        db.execute(sql).await;
    }
    let bases: Vec<String> = procs.iter().map(|p| p.base.clone()).collect();
    let client = reqwest::Client::new();
    for i in 0..AGENTS {
        common::register_at(&client, &bases[i % REPLICAS], &format!("o{i}"), &["x"]).await;
    }

    // Writers: reports through every replica at once.
    let done = Arc::new(AtomicBool::new(false));
    let next = Arc::new(AtomicUsize::new(0));
    let mut writers = Vec::new();
    for _ in 0..WRITERS {
        let (client, bases, next) = (client.clone(), bases.clone(), next.clone());
        writers.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= REPORTS {
                    return;
                }
                let agent = format!("o{}", i % AGENTS);
                let state = if i % 2 == 0 { "active" } else { "idle" };
                let r = client
                    .post(format!(
                        "{}/v1/opscore/agent/{agent}/state",
                        bases[i % REPLICAS]
                    ))
                    .bearer_auth(KEY)
                    .json(
                        &json!({"agentId": agent, "timestamp": chrono::Utc::now().to_rfc3339(),
                                  "state": state, "details": {"n": i}}),
                    )
                    .send()
                    .await
                    .expect("report");
                assert_eq!(r.status(), StatusCode::ACCEPTED);
            }
        }));
    }

    // The reader: short connections, each resuming where the last ended,
    // on the next replica; some read a few events, some many, so both the
    // store catch-up and the live broadcast are exercised.
    let reader = {
        let (bases, done) = (bases.clone(), done.clone());
        tokio::spawn(async move {
            let mut seen: Vec<i64> = Vec::new();
            let mut last = 0;
            let mut round = 0usize;
            loop {
                let finished = done.load(Ordering::Acquire);
                let base = &bases[round % bases.len()];
                let want = if finished {
                    usize::MAX
                } else {
                    1 + (round * 37) % 120
                };
                let quiet = Duration::from_millis(if finished { 1500 } else { 150 });
                let got = read_some(base, last, want, quiet).await;
                round += 1;
                if let Some(&l) = got.last() {
                    last = l;
                }
                let empty = got.is_empty();
                seen.extend(got);
                if finished && empty {
                    return (seen, round);
                }
            }
        })
    };

    for w in writers {
        w.await.expect("writer");
    }
    done.store(true, Ordering::Release);
    let (seen, rounds) = reader.await.expect("reader");
    let all = committed(&db).await;
    println!(
        "{} events committed, {} read over {rounds} connections",
        all.len(),
        seen.len()
    );
    assert!(all.len() >= REPORTS, "{} events", all.len());
    let repeated: Vec<_> = seen.windows(2).filter(|w| w[1] <= w[0]).collect();
    assert!(
        repeated.is_empty(),
        "repeated or out of order: {repeated:?}"
    );
    let got: std::collections::BTreeSet<i64> = seen.iter().copied().collect();
    let missed: Vec<i64> = all.iter().copied().filter(|i| !got.contains(i)).collect();
    assert!(
        missed.is_empty(),
        "{} events missed, e.g. {:?}",
        missed.len(),
        &missed[..missed.len().min(20)]
    );
    assert_eq!(seen, all);
    for p in procs {
        p.kill().await;
    }
}
