//! The keys the service accepts: the bootstrap admin key from
//! configuration, and managed keys from the store behind a short in-memory
//! cache, so that authentication on the hot path (state reports, thousands
//! a second) costs a hash and a map lookup, not a query.
//!
//! - A managed key is read from the store at most once per [`CACHE_TTL`]
//!   per process. Revoking through this process updates its cache at once;
//!   other replicas hear of it from the store (PostgreSQL NOTIFY, see
//!   [`run_key_follower`]) and drop their copy, within milliseconds.
//!   [`CACHE_TTL`] bounds how long a copy outlives a change that was not
//!   heard (after the connection that hears them comes back, every copy is
//!   marked stale and read again on use).
//! - When a key was last used is written off the request path, at most once
//!   per [`USE_RESOLUTION`] per key, by [`KeyRing::flush_usage`] (run by a
//!   background task).
//! - Whether a key is revoked or expired is told only to a caller that
//!   presented its right secret; any other wrong key gets the same 401 as a
//!   key that never existed.
//! - A key id the store does not hold is remembered as missing for
//!   [`CACHE_TTL`], so guessing ids does not cost a query each.
//! - Failed authentications are counted per client address: past a burst
//!   the address is throttled (429 `too_many_failures`). While it is, a
//!   token is checked only if it is the bootstrap key or names a key this
//!   process holds, fresh or stale (no query for guesses); valid keys keep
//!   working.
//! - Each key may hold only so many event streams and blocking reads open
//!   at once ([`KeyRing::open_stream`]).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use subtle::ConstantTimeEq;
use tokio_util::sync::CancellationToken;

use super::ratelimit::{FailureThrottle, RateLimiter, SharedLimiter};
use crate::domain::apikey::{digest, parse_token, Access, ApiKey, KeyStatus, Permission, Role};
use crate::domain::audit::Actor;
use crate::domain::time::{now_micros, Micros};
use crate::error::{ApiError, ErrorCode};
use crate::store::{KeyChange, Store, StoreError};
use tokio::sync::broadcast;

/// How long a managed key read from the store is trusted before it is read
/// again: the longest another replica keeps accepting a key revoked here
/// when it could not hear of the revocation.
pub const CACHE_TTL: Duration = Duration::from_secs(5);
/// Last-used times are recorded at most this often per key.
pub const USE_RESOLUTION: Duration = Duration::from_secs(60);
/// How often pending last-used times are written.
pub const FLUSH_EVERY: Duration = Duration::from_secs(2);
/// Past this many cached keys (or ids known to be missing), stale entries
/// are dropped (and, if that is not enough, all of them: they are read
/// again on use).
const MAX_CACHED: usize = 10_000;
/// Event streams and blocking reads one key may hold at once, unless the
/// key or the server says otherwise.
pub const DEFAULT_MAX_STREAMS: u32 = 16;
/// Failed authentications from one address before it is throttled, unless
/// the server says otherwise.
pub const DEFAULT_FAILURE_BURST: u32 = 20;
/// `Retry-After` of a key at its stream cap: a slot comes back only when
/// one of its streams or blocking reads ends.
const STREAM_RETRY_SECS: u64 = 5;

/// Who is calling, once authenticated.
#[derive(Debug, Clone)]
pub struct Principal {
    role: Role,
    /// The managed key, or `None` for the bootstrap key.
    key: Option<Arc<ApiKey>>,
}

impl Principal {
    /// The bootstrap admin key.
    pub fn bootstrap() -> Self {
        Self {
            role: Role::Admin,
            key: None,
        }
    }

    /// The caller's role.
    pub fn role(&self) -> Role {
        self.role
    }

    /// The managed key's id (`None` for the bootstrap key).
    pub fn key_id(&self) -> Option<&str> {
        self.key.as_deref().map(|k| k.key_id.as_str())
    }

    /// Who this is, for the audit trail: the managed key by id, name and
    /// role, or the bootstrap key.
    pub fn actor(&self) -> Actor {
        match self.key.as_deref() {
            Some(k) => Actor::key(k),
            None => Actor::bootstrap(),
        }
    }

    /// The agents an agent key may act for; `None` for every other role.
    pub fn agent_scope(&self) -> Option<&[String]> {
        match (self.role, &self.key) {
            (Role::Agent, Some(k)) => Some(&k.agent_ids),
            (Role::Agent, None) => Some(&[]),
            _ => None,
        }
    }

    /// Whether the caller may act for `agent` (always, unless an agent key).
    pub fn covers_agent(&self, agent: &str) -> bool {
        self.agent_scope()
            .is_none_or(|scope| scope.iter().any(|a| a == agent))
    }

    /// 403 unless the caller's role grants `p` everywhere.
    pub fn require(&self, p: Permission) -> Result<(), ApiError> {
        match self.role.access(p) {
            Access::All => Ok(()),
            _ => Err(forbidden(self.role, p)),
        }
    }

    /// 403 unless the caller's role grants `p` for `agent`.
    pub fn require_for_agent(&self, p: Permission, agent: &str) -> Result<(), ApiError> {
        match self.role.access(p) {
            Access::All => Ok(()),
            Access::Scoped if self.covers_agent(agent) => Ok(()),
            Access::Scoped => Err(ApiError::new(
                ErrorCode::Forbidden,
                format!(
                    "This API key may not {} (agent outside its scope)",
                    p.describe()
                ),
            )),
            Access::Denied => Err(forbidden(self.role, p)),
        }
    }
}

/// The 403 of a role that lacks a right.
pub fn forbidden(role: Role, p: Permission) -> ApiError {
    ApiError::new(
        ErrorCode::Forbidden,
        format!(
            "A key with role '{}' may not {}",
            role.as_str(),
            p.describe()
        ),
    )
}

struct Cached {
    key: Arc<ApiKey>,
    fetched: Instant,
    /// A change to this key was heard since it was read: the next use
    /// reads it again. Its id stays known, so that a throttled address
    /// keeps having it checked.
    stale: bool,
}

impl Cached {
    fn fresh(&self) -> bool {
        !self.stale && self.fetched.elapsed() < CACHE_TTL
    }
}

#[derive(Default)]
struct Usage {
    /// When this process last queued a write for the key.
    marked: HashMap<String, Instant>,
    /// Writes not done yet.
    pending: HashMap<String, Micros>,
}

/// The accepted keys. Shared by every request of the process.
pub struct KeyRing {
    bootstrap: [u8; 32],
    store: Arc<dyn Store>,
    cache: Mutex<HashMap<String, Cached>>,
    usage: Mutex<Usage>,
    limiter: RateLimiter,
    /// Where replicas share the database: the limits kept there (else
    /// `limiter` alone, in memory).
    shared: Option<SharedLimiter>,
    /// Key ids the store did not hold, and when that was learnt.
    missing: Mutex<HashMap<String, Instant>>,
    /// Failed authentications per client address.
    failures: FailureThrottle,
    /// Open streams and blocking reads per key (the bootstrap key is "").
    streams: Mutex<HashMap<String, u32>>,
    /// Cap on those of a key without its own `max_streams`.
    default_max_streams: u32,
    /// Woken whenever a key is (re)read into the cache, revocations here
    /// included: open streams check their key again at once.
    changed: tokio::sync::Notify,
    /// Counts the changes heard from other processes ([`KeyRing::forget`]).
    generation: AtomicU64,
}

/// A stream or blocking read counted against its key's cap; the slot is
/// given back when this is dropped.
pub struct StreamSlot {
    ring: Arc<KeyRing>,
    key: String,
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let mut streams = lock(&self.ring.streams);
        if let Some(n) = streams.get_mut(&self.key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                streams.remove(&self.key);
            }
        }
    }
}

impl std::fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeyRing(***)")
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn invalid_key() -> ApiError {
    ApiError::new(ErrorCode::InvalidApiKey, "Invalid API key")
}

/// The 429 of a client address throttled for failing to authenticate.
fn too_many_failures(wait: u64) -> ApiError {
    ApiError::new(
        ErrorCode::TooManyFailures,
        "Too many failed authentications from this address; retry later",
    )
    .with_retry_after(wait)
}

/// The 401 for a key in `status`; `None` while it is usable.
fn refusal(status: KeyStatus) -> Option<ApiError> {
    match status {
        KeyStatus::Active => None,
        KeyStatus::Revoked => Some(ApiError::new(
            ErrorCode::KeyRevoked,
            "This API key has been revoked",
        )),
        KeyStatus::Expired => Some(ApiError::new(
            ErrorCode::KeyExpired,
            "This API key has expired",
        )),
    }
}

impl KeyRing {
    /// A ring with the bootstrap admin key and the store's managed keys,
    /// limiting keys without their own rate limit to `default_rate_limit`
    /// requests a second (`None`: unlimited).
    pub fn new(
        bootstrap_key: &str,
        store: Arc<dyn Store>,
        default_rate_limit: Option<u32>,
    ) -> Self {
        Self {
            bootstrap: digest(bootstrap_key),
            store,
            cache: Mutex::new(HashMap::new()),
            usage: Mutex::new(Usage::default()),
            limiter: RateLimiter::new(default_rate_limit),
            shared: None,
            missing: Mutex::new(HashMap::new()),
            failures: FailureThrottle::new(DEFAULT_FAILURE_BURST),
            streams: Mutex::new(HashMap::new()),
            default_max_streams: DEFAULT_MAX_STREAMS,
            changed: tokio::sync::Notify::new(),
            generation: AtomicU64::new(0),
        }
    }

    /// Cap keys without their own `max_streams` at `n` streams and blocking
    /// reads each.
    pub fn with_max_streams(mut self, n: u32) -> Self {
        self.default_max_streams = n;
        self
    }

    /// Keep rate limits in the store, shared with every process on the
    /// same database (`true` where replicas may share it: PostgreSQL).
    pub fn with_shared_rate_limits(mut self, shared: bool) -> Self {
        self.shared = shared.then(|| SharedLimiter::new(self.store.clone()));
        self
    }

    /// Throttle a client address after `burst` failed authentications.
    pub fn with_failure_burst(mut self, burst: u32) -> Self {
        self.failures = FailureThrottle::new(burst);
        self
    }

    /// Take one of `principal`'s stream slots for as long as the returned
    /// slot lives; 429 `too_many_streams` when its key holds all of them.
    pub fn open_stream(self: &Arc<Self>, principal: &Principal) -> Result<StreamSlot, ApiError> {
        let key = principal.key_id().unwrap_or_default().to_owned();
        let cap = principal
            .key
            .as_deref()
            .and_then(|k| k.max_streams)
            .unwrap_or(self.default_max_streams);
        let mut streams = lock(&self.streams);
        let open = streams.entry(key.clone()).or_default();
        if *open >= cap {
            return Err(ApiError::new(
                ErrorCode::TooManyStreams,
                format!(
                    "This API key already holds {cap} event streams and blocking reads \
                     (its limit); close one or retry later"
                ),
            )
            .with_retry_after(STREAM_RETRY_SECS));
        }
        *open += 1;
        drop(streams);
        Ok(StreamSlot {
            ring: self.clone(),
            key,
        })
    }

    /// Refuse a failed authentication from `peer`: the failure is counted,
    /// and an address that was already throttled gets 429
    /// `too_many_failures` instead of `refused`.
    pub fn refuse(&self, peer: Option<IpAddr>, refused: ApiError) -> ApiError {
        match peer.and_then(|ip| self.failures.fail(ip, Instant::now())) {
            Some(wait) => too_many_failures(wait),
            None => refused,
        }
    }

    /// Resolves, with the 401 a new request would get, once `principal`'s
    /// key is no longer accepted: revoked, expired or deleted. Revoked
    /// through this process, that is at once; through another replica,
    /// within [`CACHE_TTL`]. Never, for the bootstrap key. For requests that
    /// outlive their authentication (event streams, blocking reads). A
    /// store that cannot answer keeps the key: a database blip must not cut
    /// every open stream.
    pub async fn key_withdrawn(&self, principal: &Principal) -> ApiError {
        let Some(key) = principal.key.as_deref() else {
            return std::future::pending().await;
        };
        loop {
            let changed = self.changed.notified();
            match self.lookup(&key.key_id).await {
                Ok(Some(k)) => {
                    if let Some(refused) = refusal(k.status(now_micros())) {
                        return refused;
                    }
                }
                Ok(None) => return invalid_key(),
                Err(_) => {}
            }
            tokio::select! {
                () = changed => {}
                () = tokio::time::sleep(CACHE_TTL) => {}
            }
        }
    }

    /// Authenticate a bearer token and take a token from its rate limit.
    pub async fn authenticate(&self, token: &str) -> Result<Principal, ApiError> {
        self.authenticate_from(token, None).await
    }

    /// As [`authenticate`](Self::authenticate), for a request from `peer`:
    /// failures are counted against the address, and a throttled address
    /// has only tokens checked that need no query (see the module notes).
    pub async fn authenticate_from(
        &self,
        token: &str,
        peer: Option<IpAddr>,
    ) -> Result<Principal, ApiError> {
        if let Some(ip) = peer {
            if let Some(wait) = self.failures.throttled(ip, Instant::now()) {
                if !self.known(token) {
                    return Err(too_many_failures(wait));
                }
            }
        }
        let principal = match self.resolve(token).await {
            Ok(p) => p,
            Err(e) if e.status() == axum::http::StatusCode::UNAUTHORIZED => {
                return Err(self.refuse(peer, e))
            }
            Err(e) => return Err(e),
        };
        let bucket = principal.key_id().unwrap_or("");
        let own = principal.key.as_deref().and_then(|k| k.rate_limit);
        let now = Instant::now();
        let checked = match &self.shared {
            Some(shared) => shared.check(&self.limiter, bucket, own, now).await,
            None => self.limiter.check(bucket, own, now),
        };
        if let Err(wait) = checked {
            return Err(ApiError::new(
                ErrorCode::RateLimited,
                "This API key is over its rate limit; retry later",
            )
            .with_retry_after(wait));
        }
        Ok(principal)
    }

    async fn resolve(&self, token: &str) -> Result<Principal, ApiError> {
        if bool::from(digest(token).ct_eq(&self.bootstrap)) {
            return Ok(Principal::bootstrap());
        }
        let Some(t) = parse_token(token) else {
            return Err(invalid_key());
        };
        let Some(key) = self.lookup(t.key_id).await? else {
            return Err(invalid_key());
        };
        if !key.secret_matches(t.secret) {
            return Err(invalid_key());
        }
        let now = now_micros();
        if let Some(refused) = refusal(key.status(now)) {
            return Err(refused);
        }
        self.mark_used(&key.key_id, now);
        Ok(Principal {
            role: key.role,
            key: Some(key),
        })
    }

    /// Whether `token` can be checked without a query: the bootstrap key,
    /// or a token naming a key this process holds.
    fn known(&self, token: &str) -> bool {
        bool::from(digest(token).ct_eq(&self.bootstrap))
            || parse_token(token).is_some_and(|t| lock(&self.cache).contains_key(t.key_id))
    }

    /// The key `key_id`, from the cache while fresh, else from the store.
    /// An id the store lacked is not asked for again within [`CACHE_TTL`].
    async fn lookup(&self, key_id: &str) -> Result<Option<Arc<ApiKey>>, ApiError> {
        if let Some(c) = lock(&self.cache).get(key_id) {
            if c.fresh() {
                return Ok(Some(c.key.clone()));
            }
        }
        if lock(&self.missing)
            .get(key_id)
            .is_some_and(|at| at.elapsed() < CACHE_TTL)
        {
            return Ok(None);
        }
        // A change heard while the read is in flight may be newer than
        // what it returns: then the answer serves this request only.
        let generation = self.generation.load(Ordering::Acquire);
        match self.store.get_key(key_id).await {
            Ok(key) => Ok(Some(self.cache_key(key, Some(generation)))),
            Err(StoreError::NotFound { .. }) => {
                let mut cache = lock(&self.cache);
                cache.remove(key_id);
                if self.generation.load(Ordering::Acquire) != generation {
                    return Ok(None);
                }
                let mut missing = lock(&self.missing);
                if missing.len() >= MAX_CACHED {
                    missing.retain(|_, at| at.elapsed() < CACHE_TTL);
                    if missing.len() >= MAX_CACHED {
                        missing.clear();
                    }
                }
                missing.insert(key_id.to_owned(), Instant::now());
                Ok(None)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Put `key` in the cache as just read (after a revocation here, so
    /// that this process refuses it at once).
    pub fn remember(&self, key: ApiKey) -> Arc<ApiKey> {
        self.cache_key(key, None)
    }

    /// Put `key` in the cache, unless it was read as of `generation` and a
    /// change has been heard since (it may be older than that change).
    fn cache_key(&self, key: ApiKey, generation: Option<u64>) -> Arc<ApiKey> {
        let key = Arc::new(key);
        let mut cache = lock(&self.cache);
        if generation.is_some_and(|g| g != self.generation.load(Ordering::Acquire)) {
            return key;
        }
        lock(&self.missing).remove(&key.key_id);
        if cache.len() >= MAX_CACHED {
            cache.retain(|_, c| c.fresh());
            if cache.len() >= MAX_CACHED {
                cache.clear();
            }
        }
        cache.insert(
            key.key_id.clone(),
            Cached {
                key: key.clone(),
                fetched: Instant::now(),
                stale: false,
            },
        );
        drop(cache);
        self.changed.notify_waiters();
        key
    }

    /// Mark stale what this process holds of the keys `change` names
    /// (another process created or revoked them): the next use reads them
    /// again, and open streams check their key at once. Their ids stay
    /// known (see [`KeyRing::known`]): a change says a key's content may
    /// differ, not that its id is a guess.
    pub fn forget(&self, change: &KeyChange) {
        // Under the cache's lock, so that a read racing with the change
        // either lands before it (and is marked stale here) or sees the new
        // generation (and is not cached).
        let mut cache = lock(&self.cache);
        self.generation.fetch_add(1, Ordering::AcqRel);
        match change {
            KeyChange::Key(id) => {
                if let Some(c) = cache.get_mut(id) {
                    c.stale = true;
                }
                lock(&self.missing).remove(id);
            }
            KeyChange::All => {
                cache.values_mut().for_each(|c| c.stale = true);
                lock(&self.missing).clear();
            }
        }
        drop(cache);
        self.changed.notify_waiters();
    }

    fn mark_used(&self, key_id: &str, now: Micros) {
        let mut usage = lock(&self.usage);
        let due = usage
            .marked
            .get(key_id)
            .is_none_or(|t| t.elapsed() >= USE_RESOLUTION);
        if due {
            usage.marked.insert(key_id.to_owned(), Instant::now());
            usage.pending.insert(key_id.to_owned(), now);
        }
    }

    /// The last-used time this process knows of for `key_id` but may not
    /// have written yet.
    pub fn pending_use(&self, key_id: &str) -> Option<Micros> {
        lock(&self.usage).pending.get(key_id).copied()
    }

    /// Write pending last-used times. They stay pending (and visible to
    /// [`pending_use`](Self::pending_use)) until written, and are kept for
    /// the next attempt when the write fails.
    pub async fn flush_usage(&self) {
        let batch: Vec<(String, Micros)> = lock(&self.usage)
            .pending
            .iter()
            .map(|(id, at)| (id.clone(), *at))
            .collect();
        if batch.is_empty() {
            return;
        }
        match self.store.record_key_use(&batch).await {
            Ok(()) => {
                let mut usage = lock(&self.usage);
                for (id, at) in batch {
                    if usage.pending.get(&id) == Some(&at) {
                        usage.pending.remove(&id);
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, keys = batch.len(), "could not record API key use; will retry");
            }
        }
    }
}

/// Until `stop`, drop the keys other processes create or revoke from the
/// cache as the store hears of them (see the module notes).
pub async fn run_key_follower(keys: Arc<KeyRing>, stop: CancellationToken) {
    let mut changes = keys.store.key_changes();
    loop {
        let change = tokio::select! {
            _ = stop.cancelled() => return,
            c = changes.recv() => c,
        };
        match change {
            Ok(change) => keys.forget(&change),
            // Changes were dropped: forget every key.
            Err(broadcast::error::RecvError::Lagged(_)) => keys.forget(&KeyChange::All),
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}

/// Write last-used times every [`FLUSH_EVERY`] until `stop`, then once more.
pub async fn run_usage_flusher(keys: Arc<KeyRing>, stop: CancellationToken) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(FLUSH_EVERY) => keys.flush_usage().await,
        }
    }
    keys.flush_usage().await;
}

#[cfg(test)]
mod tests;
