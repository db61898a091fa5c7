//! Report batches take session rows in one order. On PostgreSQL several
//! batches commit at once; moving a run on locks its session's row, and a
//! pool's parallel tasks put one session's runs on agents far apart in the
//! agent order the batch locks in. Two batches that took two sessions'
//! rows in opposite orders deadlocked, and PostgreSQL broke the cycle
//! after its one-second `deadlock_timeout` by failing one of them (seen
//! under `cargo bench --bench sessions`, pool fan-out). This holds one
//! session's row from outside and checks that a batch waiting for it has
//! not already taken the other's.

use std::time::Duration;

use sqlx::{Connection, PgConnection};

use crate::common::{registration, Backend, TestDb};
use opscore::domain::agent::AgentId;
use opscore::domain::audit::Actor;
use opscore::domain::state::StateReport;
use opscore::domain::time::now_micros;
use opscore::domain::workflow::{parse_definition, AgentSelector, SessionStatus};
use opscore::store::{DispatchOutcome, NewRun, NewSession, Store, StoreOptions};

/// A one-task session pinned to `agent`, created at `now`.
async fn session_on(store: &dyn Store, agent: &AgentId, now: i64) -> String {
    let def = parse_definition(r#"{"id":"w","tasks":[{"taskId":"t"}]}"#, false).unwrap();
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
    store
        .create_session(&session, &Actor::system("test"), now)
        .await
        .unwrap();
    session.session_id
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
async fn lock_session(conn: &mut PgConnection, id: &str, nowait: bool) -> Result<(), sqlx::Error> {
    sqlx::query("BEGIN").execute(&mut *conn).await?;
    let sql = format!(
        "SELECT 1 FROM sessions WHERE session_id = $1 FOR UPDATE{}",
        if nowait { " NOWAIT" } else { "" }
    );
    sqlx::query(&sql)
        .bind(id)
        .execute(&mut *conn)
        .await
        .map(|_| ())
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

    let mut holder = PgConnection::connect(&db.url).await.unwrap();
    lock_session(&mut holder, &older, false).await.unwrap();
    let done = [report(&a1, "idle", now + 2), report(&a2, "idle", now + 2)];
    let (applied, newer_free) = tokio::join!(store.apply_state_reports(&done), async {
        // Probe only once the batch waits on a lock (the held row): before
        // that, the newer session would be free on the old code too.
        let mut probe = PgConnection::connect(&db.url).await.unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let waiting: i64 = sqlx::query_scalar(
                "SELECT COUNT(*) FROM pg_stat_activity \
                 WHERE datname = current_database() AND wait_event_type = 'Lock'",
            )
            .fetch_one(&mut probe)
            .await
            .unwrap();
            if waiting > 0 {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the batch never waited for the held session"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let free = lock_session(&mut probe, &newer, true).await;
        drop(probe);
        drop(holder);
        free
    });
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
