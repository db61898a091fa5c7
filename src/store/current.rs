//! The in-memory index of every agent's current state, for SQLite.
//!
//! State reads are the hottest read there is. On SQLite one process owns the
//! database file and every write goes through this process's store, so the
//! store can keep each agent's current state in memory and answer state
//! reads from it without touching the database.
//!
//! Kept consistent by construction:
//! - it is loaded whole when the store opens (so a miss means "no such
//!   agent", never "not loaded yet": there is no fill-on-miss race);
//! - every write that changes what it holds (registration, deregistration,
//!   state reports, events about an agent) updates it after its transaction
//!   commits, with the values the database returned, and before the write
//!   is acknowledged or the feed is woken. A read after an acknowledged
//!   write sees it, and a blocking read woken by an event sees its state.
//!
//! PostgreSQL has no such index: several replicas write the same database,
//! so each read asks the database.

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::RwLock;

use super::AgentState;
use crate::domain::agent::Registration;
use crate::domain::state::{StateRecord, StateReport, UNKNOWN};
use crate::domain::time::Micros;

/// Independent locks, so that report batches and reads rarely meet.
const SHARDS: usize = 64;

/// What is kept per agent (its id is the key).
#[derive(Debug, Clone)]
struct Entry {
    current: StateRecord,
    last_seen: Micros,
    ttl_secs: Option<i64>,
    deregistered_at: Option<Micros>,
    event_index: Option<i64>,
}

type Shard = RwLock<HashMap<Box<str>, Entry>>;

/// Every agent's current state, by agent id.
#[derive(Debug)]
pub struct CurrentStates {
    shards: Box<[Shard]>,
    hasher: RandomState,
}

impl Default for CurrentStates {
    fn default() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| RwLock::default()).collect(),
            hasher: RandomState::new(),
        }
    }
}

impl CurrentStates {
    fn shard(&self, id: &str) -> &Shard {
        let i = (self.hasher.hash_one(id) as usize) % self.shards.len();
        &self.shards[i]
    }

    /// Change one agent's entry, if it is known.
    fn update(&self, id: &str, f: impl FnOnce(&mut Entry)) {
        // A poisoned lock means a panic mid-update elsewhere; the map itself
        // is still whole (every update is a plain field assignment).
        let mut shard = self.shard(id).write().unwrap_or_else(|e| e.into_inner());
        if let Some(e) = shard.get_mut(id) {
            f(e);
        }
    }

    /// The agent's current state, if it is known (registered now or before).
    pub fn get(&self, id: &str) -> Option<AgentState> {
        let shard = self.shard(id).read().unwrap_or_else(|e| e.into_inner());
        shard.get(id).map(|e| AgentState {
            agent_id: id.to_owned(),
            current: e.current.clone(),
            last_seen: e.last_seen,
            ttl_secs: e.ttl_secs,
            deregistered_at: e.deregistered_at,
            event_index: e.event_index,
        })
    }

    /// Add (or replace) an agent as loaded from the database.
    pub fn load(&self, s: AgentState) {
        let entry = Entry {
            current: s.current,
            last_seen: s.last_seen,
            ttl_secs: s.ttl_secs,
            deregistered_at: s.deregistered_at,
            event_index: s.event_index,
        };
        let mut shard = self
            .shard(&s.agent_id)
            .write()
            .unwrap_or_else(|e| e.into_inner());
        shard.insert(s.agent_id.into_boxed_str(), entry);
    }

    /// A committed registration: a new agent starts `UNKNOWN`; registering
    /// again keeps the state, refreshes the lease and undoes a
    /// deregistration (as `INSERT_AGENT` / `UPDATE_AGENT` do).
    pub fn registered(&self, reg: &Registration, now: Micros, created: bool) {
        let id = reg.agent_id.as_str();
        if created {
            self.load(AgentState {
                agent_id: id.to_owned(),
                current: StateRecord {
                    state: UNKNOWN.to_owned(),
                    details: None,
                    timestamp: now,
                    received_at: now,
                },
                last_seen: now,
                ttl_secs: reg.ttl_secs,
                deregistered_at: None,
                event_index: None,
            });
        } else {
            self.update(id, |e| {
                e.last_seen = e.last_seen.max(now);
                e.ttl_secs = reg.ttl_secs.or(e.ttl_secs);
                e.deregistered_at = None;
            });
        }
    }

    /// A committed change of the agent's own lease.
    pub fn lease_set(&self, id: &str, ttl_secs: Option<i64>) {
        self.update(id, |e| e.ttl_secs = ttl_secs);
    }

    /// A committed deregistration (the first one's time is kept).
    pub fn deregistered(&self, id: &str, now: Micros) {
        self.update(id, |e| {
            e.deregistered_at.get_or_insert(now);
        });
    }

    /// A committed state report: `last_seen` as the database returned it,
    /// and the report itself if it became the current state.
    pub fn reported(&self, r: &StateReport, became_current: bool, last_seen: Micros) {
        self.update(r.agent_id.as_str(), |e| {
            e.last_seen = last_seen;
            if became_current {
                e.current = StateRecord {
                    state: r.state.clone(),
                    details: r.details.clone(),
                    timestamp: r.timestamp,
                    received_at: r.received_at,
                };
            }
        });
    }

    /// Committed events about agents: `(agent id, feed index)` pairs.
    pub fn indexed(&self, events: &[(String, i64)]) {
        for (id, idx) in events {
            self.update(id, |e| {
                e.event_index = Some(e.event_index.map_or(*idx, |old| old.max(*idx)));
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::agent::AgentId;

    use crate::store::test_registration as reg;

    fn report(id: &str, state: &str, ts: Micros, at: Micros) -> StateReport {
        StateReport {
            agent_id: AgentId::parse(id).expect("id"),
            state: state.into(),
            details: None,
            timestamp: ts,
            received_at: at,
        }
    }

    #[test]
    fn follows_an_agents_life() {
        let c = CurrentStates::default();
        assert!(c.get("a1").is_none());
        c.registered(&reg("a1", Some(30)), 10, true);
        let s = c.get("a1").expect("registered");
        assert_eq!(
            (s.current.state.as_str(), s.last_seen, s.ttl_secs),
            ("UNKNOWN", 10, Some(30))
        );

        c.reported(&report("a1", "idle", 5, 20), true, 20);
        c.reported(&report("a1", "active", 4, 25), false, 25);
        let s = c.get("a1").expect("known");
        assert_eq!(
            (s.current.state.as_str(), s.current.timestamp, s.last_seen),
            ("idle", 5, 25)
        );

        c.indexed(&[("a1".into(), 7), ("a1".into(), 3), ("nobody".into(), 9)]);
        assert_eq!(c.get("a1").expect("known").event_index, Some(7));
        assert!(c.get("nobody").is_none(), "events never invent agents");

        c.deregistered("a1", 30);
        c.deregistered("a1", 40);
        assert_eq!(c.get("a1").expect("kept").deregistered_at, Some(30));

        c.registered(&reg("a1", None), 50, false);
        let s = c.get("a1").expect("known");
        assert_eq!(
            (s.deregistered_at, s.ttl_secs, s.last_seen),
            (None, Some(30), 50),
            "a registration naming no TTL keeps the lease"
        );
        c.lease_set("a1", None);
        assert_eq!(c.get("a1").expect("known").ttl_secs, None);
        assert_eq!(s.current.state, "idle", "registering again keeps the state");
    }
}
