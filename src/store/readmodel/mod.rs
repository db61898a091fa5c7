//! The read model: every agent's registration, current state and lease, in
//! memory, in every process, on both backends. State reads, agent reads and
//! the listing's state filter are answered from it without touching the
//! database (docs/guarantees.md, "Reads").
//!
//! How it stays true:
//! - it is loaded whole, from one database snapshot, when the store opens
//!   (before the service answers anything), together with the feed index
//!   that snapshot is at ([`ReadModel::loaded_through`]); the change feed
//!   of the process starts there, so it misses nothing committed after;
//! - this process's own commits are applied right after they commit and
//!   before they are acknowledged (read-your-writes on one replica), with
//!   the feed index each of their events got;
//! - every other replica's commits arrive through the change feed the
//!   process tails anyway, applied before the feed moves its head past
//!   them (`apply.rs`), so a read that reports index N reflects every
//!   change up to N.
//!
//! A change reaches the model twice (its own commit, then the feed), or
//! its parts in either order when two commits of one process race to
//! apply. Each group of fields therefore remembers the feed index of the
//! change that last set it, and an older change never overwrites a newer
//! one: the current state, the registration details, the registered /
//! deregistered flag and the lease are judged separately, since commits
//! about one agent take its row lock and so are indexed in commit order.
//! `last_seen` only ever moves forward.

mod apply;

use std::collections::hash_map::RandomState;
use std::collections::{BTreeSet, HashMap};
use std::hash::BuildHasher;
use std::ops::Bound;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, RwLock};

pub use apply::Change;

use super::{Agent, AgentQuery, AgentState, Liveness};
use crate::domain::audit::AuditKind;
use crate::domain::event::EventKind;
use crate::domain::state::{StateRecord, UNKNOWN};
use crate::domain::time::Micros;

/// Independent locks, so that report batches and reads rarely meet.
const SHARDS: usize = 64;

/// Ids taken from the state index at a time by a listing.
const LIST_STEP: usize = 256;

/// Feed indexes of the newest change applied to each group of fields.
#[derive(Debug, Clone, Copy)]
struct Applied {
    state: i64,
    details: i64,
    registered: i64,
    lease: i64,
}

impl Applied {
    fn all(index: i64) -> Self {
        Self {
            state: index,
            details: index,
            registered: index,
            lease: index,
        }
    }
}

/// What is kept per agent (its id is the key).
#[derive(Debug)]
struct Entry {
    registration: Text,
    registered_at: Micros,
    updated_at: Micros,
    deregistered_at: Option<Micros>,
    last_seen: Micros,
    ttl_secs: Option<i64>,
    current: StateRecord,
    applied: Applied,
    /// Newest feed index about the agent (0: none seen since loading).
    event_index: i64,
}

/// The registration's text fields in one allocation (about 250 bytes per
/// agent less than a string each at a million agents): name, version,
/// contact endpoint, capabilities (JSON array), metadata (JSON object).
#[derive(Debug)]
struct Text {
    text: Box<str>,
    ends: [u32; 4],
}

impl Text {
    fn new(d: &Details<'_>) -> Self {
        let parts = [d.name, d.version, d.contact_endpoint, d.capabilities];
        let mut text =
            String::with_capacity(parts.iter().map(|p| p.len()).sum::<usize>() + d.metadata.len());
        let mut ends = [0u32; 4];
        for (end, part) in ends.iter_mut().zip(parts) {
            text.push_str(part);
            // Fields are bounded by the request body limit, far below 4 GiB.
            *end = u32::try_from(text.len()).unwrap_or(u32::MAX);
        }
        text.push_str(d.metadata);
        Self {
            text: text.into(),
            ends,
        }
    }

    fn part(&self, i: usize) -> &str {
        let start = if i == 0 { 0 } else { self.ends[i - 1] as usize };
        let end = self.ends.get(i).map_or(self.text.len(), |e| *e as usize);
        self.text.get(start..end).unwrap_or("")
    }

    fn name(&self) -> &str {
        self.part(0)
    }
    fn version(&self) -> &str {
        self.part(1)
    }
    fn contact_endpoint(&self) -> &str {
        self.part(2)
    }
    fn capabilities(&self) -> &str {
        self.part(3)
    }
    fn metadata(&self) -> &str {
        self.part(4)
    }
}

/// An agent's registration details as a change carries them.
#[derive(Debug, Clone, Copy)]
pub struct Details<'a> {
    /// Its name.
    pub name: &'a str,
    /// Its version.
    pub version: &'a str,
    /// Where it is reached.
    pub contact_endpoint: &'a str,
    /// A JSON array of strings.
    pub capabilities: &'a str,
    /// A JSON object.
    pub metadata: &'a str,
    /// Its own lease; `None` keeps the one it has.
    pub ttl_secs: Option<i64>,
}

/// Entries are boxed: a shard's table has up to twice as many slots as
/// agents, and a slot is then a pointer, not a whole entry.
type Shard = RwLock<HashMap<Arc<str>, Box<Entry>>>;

/// Every agent, by id, and the ids in each current state, in id order.
#[derive(Debug)]
pub struct ReadModel {
    shards: Box<[Shard]>,
    hasher: RandomState,
    /// Agents by current state, for the listing's state filter. Taken
    /// after a shard's lock, never before.
    by_state: RwLock<HashMap<Box<str>, BTreeSet<Arc<str>>>>,
    /// The feed index the loaded snapshot was at.
    loaded_through: AtomicI64,
}

impl Default for ReadModel {
    fn default() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| RwLock::default()).collect(),
            hasher: RandomState::new(),
            by_state: RwLock::default(),
            loaded_through: AtomicI64::new(0),
        }
    }
}

// A poisoned lock means a panic mid-update elsewhere; every update leaves
// the maps whole (plain assignments and inserts), so they are used as they
// are.
fn read<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|e| e.into_inner())
}

fn write<T>(l: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|e| e.into_inner())
}

impl ReadModel {
    fn shard(&self, id: &str) -> &Shard {
        let i = (self.hasher.hash_one(id) as usize) % self.shards.len();
        &self.shards[i]
    }

    /// The feed index the loaded snapshot was at: the change feed starts
    /// after it.
    pub fn loaded_through(&self) -> i64 {
        self.loaded_through.load(Ordering::Acquire)
    }

    /// Note the feed index of the snapshot [`load`](Self::load) was given.
    pub fn set_loaded_through(&self, index: i64) {
        self.loaded_through.store(index, Ordering::Release);
    }

    /// How many agents it holds (registered or not).
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| read(s).len()).sum()
    }

    /// Whether it holds no agent.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Add an agent as loaded from a snapshot at feed index `index`.
    pub fn load(&self, a: Agent, index: i64) {
        let id: Arc<str> = Arc::from(a.agent_id.as_str());
        let capabilities = serde_json::to_string(&a.capabilities).unwrap_or_else(|_| "[]".into());
        let metadata = serde_json::to_string(&a.metadata).unwrap_or_else(|_| "{}".into());
        let entry = Entry {
            registration: Text::new(&Details {
                name: &a.name,
                version: &a.version,
                contact_endpoint: &a.contact_endpoint,
                capabilities: &capabilities,
                metadata: &metadata,
                ttl_secs: None,
            }),
            registered_at: a.registered_at,
            updated_at: a.updated_at,
            deregistered_at: a.deregistered_at,
            last_seen: a.last_seen,
            ttl_secs: a.ttl_secs,
            current: a.current,
            applied: Applied::all(index),
            event_index: 0,
        };
        self.insert(id, Box::new(entry));
    }

    fn insert(&self, id: Arc<str>, entry: Box<Entry>) {
        let mut shard = write(self.shard(&id));
        let state: Box<str> = entry.current.state.as_str().into();
        if let Some(old) = shard.insert(id.clone(), entry) {
            self.move_state(&id, &old.current.state, &state);
        } else {
            write(&self.by_state).entry(state).or_default().insert(id);
        }
    }

    /// Keep the state index in step with a change of `id`'s state.
    fn move_state(&self, id: &Arc<str>, from: &str, to: &str) {
        if from == to {
            return;
        }
        let mut by_state = write(&self.by_state);
        if let Some(set) = by_state.get_mut(from) {
            set.remove(id);
            if set.is_empty() {
                by_state.remove(from);
            }
        }
        by_state.entry(to.into()).or_default().insert(id.clone());
    }

    /// The agent's current state, if it is known (registered now or before).
    pub fn get_state(&self, id: &str) -> Option<AgentState> {
        let shard = read(self.shard(id));
        shard.get(id).map(|e| AgentState {
            agent_id: id.to_owned(),
            current: e.current.clone(),
            last_seen: e.last_seen,
            ttl_secs: e.ttl_secs,
            deregistered_at: e.deregistered_at,
            event_index: (e.event_index > 0).then_some(e.event_index),
        })
    }

    /// The agent, if it is known (registered now or before).
    pub fn get_agent(&self, id: &str) -> Option<Agent> {
        let shard = read(self.shard(id));
        shard.get(id).map(|e| agent_of(id, e))
    }

    /// A page of the agents in state `state` (`q.state`), ordered by id,
    /// filtered as `q` says (the listing, docs/api.md).
    pub fn list_in_state(&self, state: &str, q: &AgentQuery, live: &Liveness) -> Vec<Agent> {
        let limit = q.limit as usize;
        let mut out = Vec::with_capacity(limit.min(LIST_STEP));
        let mut after: Option<Arc<str>> = q.after.as_deref().map(Arc::from);
        while out.len() < limit {
            // A step of ids at a time, so the state index is never held
            // while entries are looked at.
            let ids: Vec<Arc<str>> = {
                let by_state = read(&self.by_state);
                let Some(set) = by_state.get(state) else {
                    break;
                };
                let from = match &after {
                    Some(a) => Bound::Excluded(&**a),
                    None => Bound::Unbounded,
                };
                set.range::<str, _>((from, Bound::Unbounded))
                    .take(LIST_STEP)
                    .cloned()
                    .collect()
            };
            let Some(last) = ids.last().cloned() else {
                break;
            };
            for id in ids {
                let shard = read(self.shard(&id));
                let Some(e) = shard.get(&*id) else { continue };
                // The state may have moved on since the step was taken.
                if e.current.state == state && matches(e, q, live) {
                    out.push(agent_of(&id, e));
                    if out.len() == limit {
                        break;
                    }
                }
            }
            after = Some(last);
        }
        out
    }

    /// Apply one change to agent `id`, as of feed index `index` (see the
    /// module docs for the order rules). A change about an agent it does
    /// not hold is ignored, but for a registration, which adds it.
    pub fn apply(&self, id: &str, index: i64, change: Change<'_>) {
        let mut shard = write(self.shard(id));
        let Some(e) = shard.get_mut(id) else {
            if let Change::Registered { details, at } = change {
                drop(shard);
                self.insert(Arc::from(id), new_entry(&details, at, index));
            }
            return;
        };
        e.event_index = e.event_index.max(index);
        let mut moved = None;
        match change {
            Change::Registered { details, at } => {
                e.last_seen = e.last_seen.max(at);
                if index > e.applied.details {
                    e.applied.details = index;
                    e.registration = Text::new(&details);
                    e.updated_at = at;
                }
                if index > e.applied.registered {
                    e.applied.registered = index;
                    e.deregistered_at = None;
                }
                if let (Some(ttl), true) = (details.ttl_secs, index > e.applied.lease) {
                    e.applied.lease = index;
                    e.ttl_secs = Some(ttl);
                }
            }
            Change::Deregistered { at } => {
                if index > e.applied.registered {
                    e.applied.registered = index;
                    e.deregistered_at.get_or_insert(at);
                }
            }
            Change::State { record, sighting } => {
                if sighting {
                    e.last_seen = e.last_seen.max(record.received_at);
                }
                if index > e.applied.state {
                    e.applied.state = index;
                    let from = std::mem::replace(&mut e.current, record);
                    if from.state != e.current.state {
                        moved = Some((from.state, e.current.state.clone()));
                    }
                }
            }
            Change::Seen { at } => e.last_seen = e.last_seen.max(at),
            Change::Lease { ttl_secs } => {
                if index > e.applied.lease {
                    e.applied.lease = index;
                    e.ttl_secs = ttl_secs;
                }
            }
            Change::Other => {}
        }
        if let Some((from, to)) = moved {
            // The id shared with the shard's key, not a copy of it.
            if let Some((key, _)) = shard.get_key_value(id) {
                self.move_state(key, &from, &to);
            }
        }
    }

    /// A sighting that no event announces (a late report): `last_seen`
    /// moves forward.
    pub fn seen(&self, id: &str, at: Micros) {
        if let Some(e) = write(self.shard(id)).get_mut(id) {
            e.last_seen = e.last_seen.max(at);
        }
    }

    /// Whether an event of `kind` about `id` at feed index `index` would
    /// change more than the agent's feed index: false for one already
    /// applied (this process's own, repeated by the feed), so that the
    /// feed need not parse it again.
    pub fn is_news(&self, id: &str, index: i64, kind: EventKind) -> bool {
        let shard = read(self.shard(id));
        let Some(e) = shard.get(id) else {
            return kind == EventKind::AgentRegistered;
        };
        match kind {
            EventKind::AgentState => index > e.applied.state,
            EventKind::AgentDeregistered => index > e.applied.registered,
            EventKind::AgentRegistered => index > e.applied.details,
            EventKind::Audit(AuditKind::AgentLeaseSet) => index > e.applied.lease,
            EventKind::AgentFresh => true,
            _ => false,
        }
    }

    /// Whether a registration of `id` at feed index `index` has yet to
    /// be applied (its details are then read from the database).
    pub fn lacks_registration(&self, id: &str, index: i64) -> bool {
        read(self.shard(id))
            .get(id)
            .is_none_or(|e| index > e.applied.details)
    }
}

/// A new agent: `UNKNOWN` since `at`.
fn new_entry(d: &Details<'_>, at: Micros, index: i64) -> Box<Entry> {
    Box::new(Entry {
        registration: Text::new(d),
        registered_at: at,
        updated_at: at,
        deregistered_at: None,
        last_seen: at,
        ttl_secs: d.ttl_secs,
        current: StateRecord {
            state: UNKNOWN.to_owned(),
            details: None,
            timestamp: at,
            received_at: at,
        },
        applied: Applied::all(index),
        event_index: index,
    })
}

/// Whether `e` passes the listing's filters other than the state.
fn matches(e: &Entry, q: &AgentQuery, live: &Liveness) -> bool {
    if !q.include_deregistered && e.deregistered_at.is_some() {
        return false;
    }
    if let Some(stale) = q.stale {
        if live.holds_stale(e.deregistered_at, e.last_seen, e.ttl_secs, q.now) != stale {
            return false;
        }
    }
    if let Some(cap) = &q.capability {
        return super::decode_capabilities(e.registration.capabilities()).contains(cap);
    }
    true
}

fn agent_of(id: &str, e: &Entry) -> Agent {
    Agent {
        agent_id: id.to_owned(),
        name: e.registration.name().to_owned(),
        version: e.registration.version().to_owned(),
        capabilities: super::decode_capabilities(e.registration.capabilities()),
        contact_endpoint: e.registration.contact_endpoint().to_owned(),
        metadata: super::decode_metadata(e.registration.metadata()),
        registered_at: e.registered_at,
        updated_at: e.updated_at,
        deregistered_at: e.deregistered_at,
        last_seen: e.last_seen,
        ttl_secs: e.ttl_secs,
        current: e.current.clone(),
    }
}

#[cfg(test)]
mod tests;
