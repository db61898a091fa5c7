//! The lock order of everything that moves task runs (docs/operations.md,
//! "PostgreSQL under load"), on PostgreSQL, where transactions write at
//! once and a cycle costs a one-second `deadlock_timeout`:
//!
//! - Report batches take session rows in one order. Moving a run on locks
//!   its session's row, and a pool's parallel tasks put one session's runs
//!   on agents far apart in the agent order the batch locks in. Two batches
//!   that took two sessions' rows in opposite orders deadlocked (seen under
//!   `cargo bench --bench sessions`, pool fan-out).
//! - A session's row before its run's. A batch completing two tasks of one
//!   session held the session when it reached the second task, while a
//!   dispatcher recording that task's delivery held the task and wanted
//!   the session (seen in the server log during the test suites).
//! - Sweeps wait for nothing: they skip what another transaction holds.
//!
//! Each test holds a session's row from outside, lets the store's
//! transaction wait for it, and checks what that transaction already took.

use std::sync::Arc;
use std::time::Duration;

use sqlx::{Connection, PgConnection};

use crate::common::{registration, Backend, TestDb};
use opscore::domain::agent::AgentId;
use opscore::domain::audit::Actor;
use opscore::domain::state::StateReport;
use opscore::domain::time::now_micros;
use opscore::domain::workflow::SessionStatus;
use opscore::store::{DispatchOutcome, Store, StoreOptions};

/// A one-task session pinned to `agent`, created at `now`.
async fn session_on(store: &dyn Store, agent: &AgentId, now: i64) -> String {
    session_of(store, agent, r#"{"id":"w","tasks":[{"taskId":"t"}]}"#, now).await
}

/// A session of the workflow `definition` pinned to `agent`.
async fn session_of(store: &dyn Store, agent: &AgentId, definition: &str, now: i64) -> String {
    crate::common::start_session(store, agent, definition, now)
        .await
        .session_id
}

fn report(agent: &AgentId, state: &str, at: i64) -> StateReport {
    StateReport {
        agent_id: agent.clone(),
        state: state.into(),
        details: None,
        timestamp: at,
        received_at: at,
    }
}

/// `FOR UPDATE` on session `id` from a connection of its own, in a
/// transaction left open: `Ok` holds the row until `conn` is dropped.
async fn lock_session(conn: &mut PgConnection, id: &str) -> Result<(), sqlx::Error> {
    lock_row(conn, "sessions", "session_id", id, false).await
}

/// `FOR UPDATE` on the row of `table` whose `column` is `id`, as
/// [`lock_session`] does.
async fn lock_row(
    conn: &mut PgConnection,
    table: &str,
    column: &str,
    id: &str,
    nowait: bool,
) -> Result<(), sqlx::Error> {
    sqlx::query("BEGIN").execute(&mut *conn).await?;
    let sql = format!(
        "SELECT 1 FROM {table} WHERE {column} = $1 FOR UPDATE{}",
        if nowait { " NOWAIT" } else { "" }
    );
    sqlx::query(&sql)
        .bind(id)
        .execute(&mut *conn)
        .await
        .map(|_| ())
}

/// Returns once a backend of the test database waits on a lock (the held
/// row): before that, whatever the probe finds free proves nothing.
async fn until_one_waits(probe: &mut PgConnection) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM pg_stat_activity \
             WHERE datname = current_database() AND wait_event_type = 'Lock'",
        )
        .fetch_one(&mut *probe)
        .await
        .unwrap();
        if waiting > 0 {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the store's transaction never waited for the held session"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Runs `op` while session `held`'s row is held from outside and, once
/// `op` waits on a lock, asks for the row of `table` whose `column` is
/// `id` with NOWAIT: `Ok` when `op` had not taken it. The held row is let
/// go after the probe, so `op` then finishes.
async fn probe_while_held<T>(
    db: &TestDb,
    held: &str,
    op: impl std::future::Future<Output = T>,
    (table, column, id): (&str, &str, &str),
) -> (T, Result<(), sqlx::Error>) {
    let mut holder = PgConnection::connect(&db.url).await.unwrap();
    lock_session(&mut holder, held).await.unwrap();
    tokio::join!(op, async {
        let mut probe = PgConnection::connect(&db.url).await.unwrap();
        until_one_waits(&mut probe).await;
        let free = lock_row(&mut probe, table, column, id, true).await;
        drop(probe);
        drop(holder);
        free
    })
}

/// A store on a fresh PostgreSQL database with agents `ids` registered.
async fn store_with(db: &TestDb, ids: &[&str], now: i64) -> (Arc<dyn Store>, Vec<AgentId>) {
    let store = opscore::store::connect(&db.url, &StoreOptions::default())
        .await
        .unwrap();
    let mut agents = Vec::new();
    for id in ids {
        let a = AgentId::parse(id).unwrap();
        store
            .register_agent(&registration(a.clone(), None), &Actor::system("test"), now)
            .await
            .unwrap();
        agents.push(a);
    }
    (store, agents)
}

/// Claims every due run, as dispatcher `d`: (run id, claim, attempt).
async fn claim_all(store: &dyn Store, now: i64) -> Vec<(String, String, i64)> {
    store
        .claim_due_runs("d", now, now + 60_000_000, 10, true)
        .await
        .unwrap()
        .into_iter()
        .map(|c| (c.run_id, c.claim, c.attempt))
        .collect()
}

async fn accepted(store: &dyn Store, (run, claim, attempt): &(String, String, i64), now: i64) {
    store
        .record_dispatch(run, claim, *attempt, now, &DispatchOutcome::Accepted)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_report_batch_takes_session_rows_in_session_order() {
    let db = TestDb::new(Backend::Postgres).await;
    let store = opscore::store::connect(&db.url, &StoreOptions::default())
        .await
        .unwrap();
    let now = now_micros();
    let (a1, a2) = (AgentId::parse("a1").unwrap(), AgentId::parse("a2").unwrap());
    for a in [&a1, &a2] {
        store
            .register_agent(&registration(a.clone(), None), &Actor::system("test"), now)
            .await
            .unwrap();
    }
    // Agent order and session order disagree: the older session runs on
    // the later agent.
    let older = session_on(&*store, &a2, now).await;
    let newer = session_on(&*store, &a1, now).await;
    assert!(older < newer, "session ids sort by creation");
    let claimed = store
        .claim_due_runs("d", now, now + 60_000_000, 10, true)
        .await
        .unwrap();
    assert_eq!(claimed.len(), 2);
    for c in &claimed {
        store
            .record_dispatch(
                &c.run_id,
                &c.claim,
                c.attempt,
                now,
                &DispatchOutcome::Accepted,
            )
            .await
            .unwrap();
    }
    let started = store
        .apply_state_reports(&[
            report(&a1, "active", now + 1),
            report(&a2, "active", now + 1),
        ])
        .await
        .unwrap();
    assert!(started.results.iter().all(Result::is_ok));

    let done = [report(&a1, "idle", now + 2), report(&a2, "idle", now + 2)];
    let (applied, newer_free) = probe_while_held(
        &db,
        &older,
        store.apply_state_reports(&done),
        ("sessions", "session_id", &newer),
    )
    .await;
    assert!(
        newer_free.is_ok(),
        "the batch took the newer session's row before the older one's: {newer_free:?}"
    );
    let applied = applied.unwrap();
    assert!(
        applied.results.iter().all(Result::is_ok),
        "{:?}",
        applied.results
    );
    for id in [&older, &newer] {
        let s = store.get_session(id).await.unwrap();
        assert_eq!(s.status, SessionStatus::Completed, "session {id}");
    }
    store.close().await;
}

/// A dispatcher recording a delivery takes the session's row before the
/// run's: while it waits for the session, the run is free.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_record_takes_the_session_before_the_run() {
    let db = TestDb::new(Backend::Postgres).await;
    let now = now_micros();
    let (store, agents) = store_with(&db, &["a1"], now).await;
    let session = session_on(&*store, &agents[0], now).await;
    let claimed = claim_all(&*store, now).await;
    assert_eq!(claimed.len(), 1);
    let run = claimed[0].0.clone();

    let ((), run_free) = probe_while_held(
        &db,
        &session,
        accepted(&*store, &claimed[0], now),
        ("task_runs", "run_id", &run),
    )
    .await;
    assert!(
        run_free.is_ok(),
        "the delivery record held the run while it waited for the session: {run_free:?}"
    );
    let s = store.get_session(&session).await.unwrap();
    assert_eq!(s.status, SessionStatus::Running);
    store.close().await;
}

/// A report completing a task takes the session's row before the run's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_completing_report_takes_the_session_before_the_run() {
    let db = TestDb::new(Backend::Postgres).await;
    let now = now_micros();
    let (store, agents) = store_with(&db, &["a1"], now).await;
    let session = session_on(&*store, &agents[0], now).await;
    let claimed = claim_all(&*store, now).await;
    accepted(&*store, &claimed[0], now).await;
    let run = claimed[0].0.clone();
    store
        .apply_state_reports(&[report(&agents[0], "active", now + 1)])
        .await
        .unwrap();

    let done = [report(&agents[0], "idle", now + 2)];
    let (applied, run_free) = probe_while_held(
        &db,
        &session,
        store.apply_state_reports(&done),
        ("task_runs", "run_id", &run),
    )
    .await;
    assert!(
        run_free.is_ok(),
        "the batch held the run while it waited for the session: {run_free:?}"
    );
    assert!(applied.unwrap().results.iter().all(Result::is_ok));
    let s = store.get_session(&session).await.unwrap();
    assert_eq!(s.status, SessionStatus::Completed);
    store.close().await;
}

/// The timeout sweep does not wait for a session another transaction
/// holds: it leaves that session's runs for its next round.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sweep_skips_a_session_held_elsewhere() {
    let db = TestDb::new(Backend::Postgres).await;
    let now = now_micros();
    let (store, agents) = store_with(&db, &["a1"], now).await;
    let def = r#"{"id":"w","tasks":[{"taskId":"t","maxRetries":0,"timeoutSeconds":1}]}"#;
    let session = session_of(&*store, &agents[0], def, now).await;
    let claimed = claim_all(&*store, now).await;
    accepted(&*store, &claimed[0], now).await;
    let later = now + 3_600_000_000;

    let mut holder = PgConnection::connect(&db.url).await.unwrap();
    lock_session(&mut holder, &session).await.unwrap();
    let swept = tokio::time::timeout(Duration::from_secs(10), store.expire_overdue(later)).await;
    let swept = swept.expect("the sweep waited for the held session");
    assert_eq!(swept.unwrap(), 0, "the held session's run was swept");
    drop(holder);
    assert_eq!(store.expire_overdue(later).await.unwrap(), 1);
    let s = store.get_session(&session).await.unwrap();
    assert_eq!(s.status, SessionStatus::Failed);
    store.close().await;
}
