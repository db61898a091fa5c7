use super::*;
use crate::domain::event::{EventKind, NewEvent};
use crate::domain::state::StateReport;

fn details(name: &str, ttl: Option<i64>) -> Details<'_> {
    Details {
        name,
        version: "1",
        contact_endpoint: "http://a.test/",
        capabilities: r#"["summarise"]"#,
        metadata: "{}",
        ttl_secs: ttl,
    }
}

fn report(id: &str, state: &str, ts: Micros, at: Micros) -> StateReport {
    StateReport {
        agent_id: crate::domain::agent::AgentId::parse(id).expect("id"),
        state: state.into(),
        details: None,
        timestamp: ts,
        received_at: at,
    }
}

/// The change a report's `agent.state` event makes.
fn state_change(id: &str, state: &str, ts: Micros, at: Micros) -> Change<'static> {
    let e = NewEvent::state(&report(id, state, ts, at));
    Change::of_event(e.kind, e.at, &e.data)
}

fn query(after: Option<&str>, limit: u32) -> AgentQuery {
    AgentQuery {
        after: after.map(str::to_owned),
        limit,
        ..AgentQuery::default()
    }
}

#[test]
fn follows_an_agents_life() {
    let m = ReadModel::default();
    assert!(m.get_state("a1").is_none());
    m.apply("a1", 1, Change::Deregistered { at: 1 });
    assert!(m.get_state("a1").is_none(), "changes never invent agents");
    let reg = Change::Registered {
        details: details("A", Some(30)),
        at: 10,
    };
    m.apply("a1", 2, reg);
    let s = m.get_state("a1").expect("registered");
    assert_eq!(
        (
            s.current.state.as_str(),
            s.last_seen,
            s.ttl_secs,
            s.event_index
        ),
        ("UNKNOWN", 10, Some(30), Some(2))
    );

    m.apply("a1", 5, state_change("a1", "idle", 5, 20));
    m.seen("a1", 25);
    let s = m.get_state("a1").expect("known");
    assert_eq!(
        (s.current.state.as_str(), s.current.timestamp, s.last_seen),
        ("idle", 5, 25)
    );

    m.apply("a1", 7, Change::Deregistered { at: 30 });
    m.apply("a1", 8, Change::Deregistered { at: 40 });
    assert_eq!(m.get_state("a1").expect("kept").deregistered_at, Some(30));

    m.apply(
        "a1",
        9,
        Change::Registered {
            details: details("B", None),
            at: 50,
        },
    );
    let a = m.get_agent("a1").expect("known");
    assert_eq!(
        (a.deregistered_at, a.ttl_secs, a.last_seen, a.name.as_str()),
        (None, Some(30), 50, "B"),
        "a registration naming no TTL keeps the lease"
    );
    assert_eq!(a.current.state, "idle", "registering again keeps the state");
    assert_eq!((a.registered_at, a.updated_at), (10, 50));
    m.apply("a1", 10, Change::Lease { ttl_secs: None });
    assert_eq!(m.get_state("a1").expect("known").ttl_secs, None);
    assert_eq!(m.get_state("a1").expect("known").event_index, Some(10));
}

/// A change applied late (the feed repeating this process's own commit,
/// or two own commits applying in the other order) never undoes a newer
/// one; each group of fields is judged on its own.
#[test]
fn an_older_change_never_overwrites_a_newer_one() {
    let m = ReadModel::default();
    m.apply(
        "a1",
        1,
        Change::Registered {
            details: details("A", None),
            at: 1,
        },
    );
    m.apply("a1", 12, state_change("a1", "active", 100, 100));
    m.apply("a1", 11, state_change("a1", "idle", 200, 90));
    let s = m.get_state("a1").expect("known");
    assert_eq!(s.current.state, "active", "index 11 is older than 12");
    assert_eq!(s.last_seen, 100);
    // A lease at 13 and a deregistration at 12 applied in reverse order:
    // both stand.
    m.apply("a1", 13, Change::Lease { ttl_secs: Some(9) });
    m.apply("a1", 12, Change::Deregistered { at: 95 });
    let s = m.get_state("a1").expect("known");
    assert_eq!((s.ttl_secs, s.deregistered_at), (Some(9), Some(95)));
    // The same change twice changes nothing.
    m.apply("a1", 12, Change::Deregistered { at: 99 });
    assert_eq!(m.get_state("a1").expect("known").deregistered_at, Some(95));
    // A loaded agent ignores what its snapshot already holds.
    let mut a = m.get_agent("a1").expect("known");
    a.agent_id = "a2".into();
    m.load(a, 20);
    m.apply("a2", 20, state_change("a2", "error", 300, 300));
    assert_eq!(m.get_state("a2").expect("loaded").current.state, "active");
    m.apply("a2", 21, state_change("a2", "error", 300, 300));
    assert_eq!(m.get_state("a2").expect("loaded").current.state, "error");
}

#[test]
fn a_reset_is_no_sighting_and_a_lease_event_sets_the_lease() {
    let m = ReadModel::default();
    m.apply(
        "a1",
        1,
        Change::Registered {
            details: details("A", None),
            at: 1,
        },
    );
    m.apply("a1", 2, state_change("a1", "idle", 5, 5));
    let reset = NewEvent::state(&report("a1", UNKNOWN, 50, 50));
    m.apply("a1", 3, Change::of_event(reset.kind, reset.at, &reset.data));
    let s = m.get_state("a1").expect("known");
    assert_eq!((s.current.state.as_str(), s.last_seen), ("UNKNOWN", 5));
    let lease = r#"{"id":1,"kind":"audit.agent.lease_set","details":{"ttlSeconds":12}}"#;
    let kind = EventKind::Audit(crate::domain::audit::AuditKind::AgentLeaseSet);
    m.apply("a1", 4, Change::of_event(kind, 60, lease));
    assert_eq!(m.get_state("a1").expect("known").ttl_secs, Some(12));
    let fresh = NewEvent::fresh("a1", 70);
    m.apply("a1", 5, Change::of_event(fresh.kind, fresh.at, &fresh.data));
    assert_eq!(m.get_state("a1").expect("known").last_seen, 70);
}

#[test]
fn lists_one_state_in_id_order_with_filters_and_paging() {
    let m = ReadModel::default();
    let live = Liveness::default();
    for (i, id) in ["b", "a", "d", "c", "e"].into_iter().enumerate() {
        let i = i as i64 + 1;
        m.apply(
            id,
            i,
            Change::Registered {
                details: details(id, None),
                at: i,
            },
        );
    }
    for (i, id) in ["a", "c", "d", "e"].into_iter().enumerate() {
        m.apply(id, 10 + i as i64, state_change(id, "idle", 10, 10));
    }
    m.apply("d", 20, state_change("d", "active", 11, 11));
    m.apply("e", 21, Change::Deregistered { at: 12 });
    let names = |v: Vec<Agent>| v.into_iter().map(|a| a.agent_id).collect::<Vec<_>>();
    assert_eq!(
        names(m.list_in_state("idle", &query(None, 10), &live)),
        ["a", "c"]
    );
    assert_eq!(
        names(m.list_in_state("idle", &query(None, 1), &live)),
        ["a"]
    );
    assert_eq!(
        names(m.list_in_state("idle", &query(Some("a"), 10), &live)),
        ["c"]
    );
    let with_gone = AgentQuery {
        include_deregistered: true,
        ..query(None, 10)
    };
    assert_eq!(
        names(m.list_in_state("idle", &with_gone, &live)),
        ["a", "c", "e"]
    );
    assert_eq!(
        names(m.list_in_state("active", &query(None, 10), &live)),
        ["d"]
    );
    assert_eq!(
        names(m.list_in_state("UNKNOWN", &query(None, 10), &live)),
        ["b"]
    );
    assert!(m.list_in_state("error", &query(None, 10), &live).is_empty());
    let by_cap = |cap: &str| AgentQuery {
        capability: Some(cap.into()),
        ..query(None, 10)
    };
    assert_eq!(
        names(m.list_in_state("idle", &by_cap("summarise"), &live)),
        ["a", "c"]
    );
    assert!(m.list_in_state("idle", &by_cap("plan"), &live).is_empty());
    let lease = Liveness {
        ttl_secs: Some(1),
        grace_secs: 0,
    };
    let stale = AgentQuery {
        stale: Some(true),
        now: 10 + 2_000_000,
        ..query(None, 10)
    };
    assert_eq!(names(m.list_in_state("idle", &stale, &lease)), ["a", "c"]);
    let fresh = AgentQuery {
        stale: Some(false),
        ..stale
    };
    assert!(m.list_in_state("idle", &fresh, &lease).is_empty());
    // A state nobody holds any longer leaves nothing behind.
    m.apply("d", 30, state_change("d", "idle", 12, 12));
    assert!(!read(&m.by_state).contains_key("active"));
}

/// More agents in a state than one step of the listing takes.
#[test]
fn a_listing_pages_past_many_steps() {
    let m = ReadModel::default();
    let live = Liveness::default();
    for i in 0..(LIST_STEP * 2 + 10) {
        let id = format!("agent-{i:04}");
        m.apply(
            &id,
            1,
            Change::Registered {
                details: details("x", None),
                at: 1,
            },
        );
        if i % 3 == 0 {
            m.apply(&id, 2, Change::Deregistered { at: 2 });
        }
    }
    let page = m.list_in_state("UNKNOWN", &query(None, 1000), &live);
    assert_eq!(
        page.len(),
        (LIST_STEP * 2 + 10) - (LIST_STEP * 2 + 10).div_ceil(3)
    );
    assert!(page.windows(2).all(|w| w[0].agent_id < w[1].agent_id));
    assert_eq!(m.len(), LIST_STEP * 2 + 10);
}

#[test]
fn knows_which_events_are_news() {
    let m = ReadModel::default();
    assert!(m.is_news("a1", 1, EventKind::AgentRegistered));
    assert!(!m.is_news("a1", 1, EventKind::AgentState), "unknown agent");
    m.apply(
        "a1",
        3,
        Change::Registered {
            details: details("A", None),
            at: 1,
        },
    );
    m.apply("a1", 5, state_change("a1", "idle", 5, 5));
    assert!(!m.is_news("a1", 5, EventKind::AgentState));
    assert!(m.is_news("a1", 6, EventKind::AgentState));
    assert!(!m.is_news("a1", 3, EventKind::AgentRegistered));
    assert!(m.is_news("a1", 4, EventKind::AgentDeregistered));
    assert!(!m.is_news("a1", 9, EventKind::TaskStatus));
    m.apply("a1", 9, Change::Other);
    assert_eq!(m.get_state("a1").expect("known").event_index, Some(9));
}
