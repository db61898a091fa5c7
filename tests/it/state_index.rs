//! Every process answers state reads from its read model
//! (`store::readmodel`). These tests drive the store with random sequences
//! of registrations, deregistrations, report batches (out of order, ties,
//! duplicates in one batch, unknown and deregistered agents) and lease
//! sweeps, and after every step compare what memory says with what the
//! database says, and at the end with what a fresh process loads from the
//! same database; on both backends.

use crate::common::{self, Backend, TestDb};

use opscore::domain::agent::AgentId;
use opscore::domain::state::StateReport;
use opscore::store::{
    AgentState, AgentStore, EngineRules, Liveness, SqliteStore, Store, StoreOptions,
};
use serde_json::value::RawValue;

/// A small deterministic generator (xorshift64*), so a failure names its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

const AGENTS: u64 = 6;
const STATES: [&str; 5] = ["idle", "active", "error", "finished", "custom_state"];

fn id(n: u64) -> AgentId {
    AgentId::parse(&format!("agent-{n}")).expect("valid id")
}

/// Whether two reads agree; `index` compares the feed index too.
fn same(a: &Option<AgentState>, b: &Option<AgentState>, index: bool) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(a), Some(b)) => {
            a.agent_id == b.agent_id
                && a.current.state == b.current.state
                && a.current.details.as_ref().map(|d| d.get())
                    == b.current.details.as_ref().map(|d| d.get())
                && a.current.timestamp == b.current.timestamp
                && a.current.received_at == b.current.received_at
                && a.last_seen == b.last_seen
                && a.ttl_secs == b.ttl_secs
                && a.deregistered_at == b.deregistered_at
                && (!index || a.event_index == b.event_index)
        }
        _ => false,
    }
}

async fn check_all(store: &dyn Store, seed: u64, step: usize, what: &str) {
    for n in 0..AGENTS {
        let memory = store.get_state(&id(n)).await.ok();
        let database = store.get_state_consistent(&id(n)).await.ok();
        let agent = store.get_agent(&id(n)).await.ok();
        let stored = store.get_agent_consistent(&id(n)).await.ok();
        assert!(
            same(&memory, &database, true),
            "seed {seed}, step {step} ({what}), agent-{n}:\n memory   {memory:?}\n database {database:?}"
        );
        assert_eq!(
            format!("{agent:?}"),
            format!("{stored:?}"),
            "seed {seed}, step {step} ({what}), agent-{n}"
        );
    }
}

async fn run(backend: Backend, seed: u64, steps: usize) {
    let db = TestDb::new(backend).await;
    // A one-second lease, so that sweeps find stale agents.
    let opts = StoreOptions {
        engine: EngineRules {
            liveness: Liveness {
                ttl_secs: Some(1),
                grace_secs: 0,
            },
            ..EngineRules::default()
        },
        ..StoreOptions::default()
    };
    let store = opscore::store::connect(&db.url, &opts).await.expect("open");
    let store = &*store;
    let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    // Server time moves forward in uneven steps; agents' own timestamps are
    // drawn around it, so reports arrive out of order and tie.
    let mut now: i64 = 1_700_000_000_000_000;
    for step in 0..steps {
        now += rng.below(1_500_000) as i64;
        let what = match rng.below(10) {
            0 => {
                let ttl = [None, Some(1), Some(30)][rng.below(3) as usize];
                store
                    .register_agent(
                        &common::registration(id(rng.below(AGENTS)), ttl),
                        &opscore::domain::audit::Actor::system("test"),
                        now,
                    )
                    .await
                    .expect("register");
                "register"
            }
            1 => {
                let _ = store
                    .deregister_agent(
                        &id(rng.below(AGENTS + 1)),
                        &opscore::domain::audit::Actor::system("test"),
                        now,
                    )
                    .await;
                "deregister"
            }
            2 => {
                store.mark_stale_agents(now, 100).await.expect("sweep");
                "sweep"
            }
            _ => {
                let batch: Vec<StateReport> = (0..1 + rng.below(5))
                    .map(|_| {
                        let details = match rng.below(3) {
                            0 => None,
                            _ => Some(
                                RawValue::from_string(format!("{{\"n\":{}}}", rng.below(100)))
                                    .expect("json"),
                            ),
                        };
                        StateReport {
                            // One more than registered: an unknown agent.
                            agent_id: id(rng.below(AGENTS + 1)),
                            state: STATES[rng.below(STATES.len() as u64) as usize].into(),
                            details,
                            timestamp: now - rng.below(4) as i64 * 1_000_000,
                            received_at: now - rng.below(2) as i64,
                        }
                    })
                    .collect();
                store.apply_state_reports(&batch).await.expect("batch");
                "reports"
            }
        };
        check_all(store, seed, step, what).await;
    }
    // What a restarted process loads is what memory held; its feed index
    // is where it was loaded, which is at least the newest event.
    let mut before = Vec::new();
    for n in 0..AGENTS {
        before.push(store.get_state(&id(n)).await.ok());
    }
    store.close().await;
    let reopened = opscore::store::connect(&db.url, &opts)
        .await
        .expect("reopen");
    for (n, held) in before.iter().enumerate() {
        let loaded = reopened.get_state(&id(n as u64)).await.ok();
        assert!(
            same(held, &loaded, false),
            "seed {seed}, after reopening, agent-{n}:\n held   {held:?}\n loaded {loaded:?}"
        );
        let newest = held.as_ref().and_then(|h| h.event_index).unwrap_or(0);
        assert!(reopened.read_model_head() >= newest, "seed {seed}");
    }
    reopened.close().await;
}

async fn memory_agrees_with_the_database_after_every_write(backend: Backend) {
    for seed in 1..=12 {
        run(backend, seed, 150).await;
    }
}

backend_tests!(memory_agrees_with_the_database_after_every_write);

/// The writer wakes the dispatcher only when a batch may have made a queued
/// task claimable: an agent with one queued became idle (or came back from
/// stale). Reports from agents with nothing queued, and reports that change
/// nothing claimable, do not wake it.
#[tokio::test]
async fn batches_say_when_a_queued_task_may_go_out() {
    use opscore::domain::workflow::parse_definition;
    use opscore::store::{EngineRules, NewRun, NewSession, WorkflowStore};
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("sqlite://{}", dir.path().join("ops.db").display());
    let store = SqliteStore::open(&url, &StoreOptions::default())
        .await
        .expect("open");
    let now: i64 = 1_700_000_000_000_000;
    for n in 0..2 {
        store
            .register_agent(
                &common::registration(id(n), None),
                &opscore::domain::audit::Actor::system("test"),
                now,
            )
            .await
            .expect("register");
    }
    let report = |n: u64, state: &str, at: i64| StateReport {
        agent_id: id(n),
        state: state.into(),
        details: None,
        timestamp: at,
        received_at: at,
    };
    let batch = |reports: Vec<StateReport>| {
        let store = &store;
        async move {
            let applied = store.apply_state_reports(&reports).await.expect("batch");
            assert!(applied.results.iter().all(|r| r.is_ok()));
            applied.dispatchable
        }
    };
    assert!(
        !batch(vec![report(0, "idle", now + 1)]).await,
        "nothing is queued"
    );

    // Queue a task for agent-0 while it is busy.
    assert!(!batch(vec![report(0, "active", now + 2)]).await);
    let definition = parse_definition(
        &std::fs::read_to_string("workflows/sample_workflow.json").expect("sample"),
        false,
    )
    .expect("definition");
    let payload = serde_json::json!({});
    let runs = NewRun::for_session(
        &definition,
        Some(&payload),
        false,
        now,
        &EngineRules::default(),
    );
    store
        .create_session(
            &NewSession {
                session_id: uuid::Uuid::now_v7().to_string(),
                agent_id: Some(id(0)),
                selector: opscore::domain::workflow::AgentSelector::one(id(0).as_str()),
                definition,
                store_definition: true,
                runs,
                trace: None,
            },
            &opscore::domain::audit::Actor::system("test"),
            now + 3,
        )
        .await
        .expect("session");

    assert!(
        !batch(vec![report(1, "idle", now + 4)]).await,
        "another agent's report"
    );
    assert!(
        !batch(vec![report(0, "active", now + 5)]).await,
        "still busy"
    );
    assert!(
        !batch(vec![report(0, "idle", now - 10)]).await,
        "an older report does not change the current state"
    );
    assert!(
        batch(vec![report(1, "idle", now + 6), report(0, "idle", now + 6)]).await,
        "agent-0 is idle with a task queued"
    );
}
