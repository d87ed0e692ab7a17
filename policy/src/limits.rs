//! Rate limits: sliding windows, and the counter store behind a trait.
//!
//! A [`SlidingWindow`] splits time into slots of width `w = ceil(T / SLOTS)`
//! for a window of length `T`, and keeps per slot the number of admitted calls
//! and the time of the latest. A slot counts against the window ending at
//! `now` while its latest call is inside `(now - T, now]`. That count is never
//! less than the true number of calls in the last `T`, so **no window of
//! length `T` ever holds more than `max` admitted calls**, whatever the arrival
//! times; the price is that a call may be refused up to one slot (`T / 64`)
//! early. Memory is bounded by `SLOTS + 1` slots per bucket, whatever `max` is.
//!
//! The clock is injected: every method takes `now`, the time since an
//! arbitrary fixed epoch, so tests are deterministic and the sidecar can use a
//! monotonic clock.

use std::collections::VecDeque;
use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use hashbrown::{Equivalent, HashMap};

use crate::document::{OnUnavailable, Scope};

/// Slots per window.
pub const SLOTS: u64 = 64;

/// One bucket's admitted calls over its recent window.
#[derive(Debug, Clone, Default)]
pub struct SlidingWindow {
    /// Oldest first.
    slots: VecDeque<Slot>,
    /// Sum of the counts in `slots`.
    total: u64,
}

#[derive(Debug, Clone, Copy)]
struct Slot {
    index: u64,
    /// Time of the latest call in the slot, in milliseconds.
    latest: u64,
    count: u64,
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl SlidingWindow {
    /// Drops slots whose latest call is outside the window ending at `now`.
    fn expire(&mut self, now: Duration, window: Duration) {
        let (now, t) = (millis(now), millis(window));
        while let Some(slot) = self.slots.front() {
            if slot.latest.saturating_add(t) > now {
                break;
            }
            self.total -= slot.count;
            self.slots.pop_front();
        }
    }

    /// How many calls count against the window ending at `now`.
    pub fn count(&mut self, now: Duration, window: Duration) -> u64 {
        self.expire(now, window);
        self.total
    }

    /// `None` if one more call fits under `max`; else how long until it would.
    pub fn check(&mut self, now: Duration, window: Duration, max: u64) -> Option<Duration> {
        self.expire(now, window);
        if self.total < max {
            return None;
        }
        // Find the slot whose expiry brings the count below `max`.
        let excess = self.total + 1 - max;
        let mut freed = 0;
        for slot in &self.slots {
            freed += slot.count;
            if freed >= excess {
                let free_at = slot.latest.saturating_add(millis(window));
                return Some(Duration::from_millis(
                    free_at.saturating_sub(millis(now)).max(1),
                ));
            }
        }
        // Only a `max` of 0 gets here; validation forbids it.
        Some(window)
    }

    /// Counts one admitted call at `now`.
    pub fn charge(&mut self, now: Duration, window: Duration) {
        let width = millis(window).div_ceil(SLOTS).max(1);
        // Rounded up: truncated, a call at 7.6 ms would leave a 1 s window at
        // 1007 ms instead of 1007.6 ms, and one more call would fit in it.
        let now = u64::try_from(now.as_nanos().div_ceil(1_000_000)).unwrap_or(u64::MAX);
        let index = now / width;
        match self.slots.back_mut() {
            Some(slot) if slot.index == index => {
                slot.count += 1;
                slot.latest = slot.latest.max(now);
            }
            _ => self.slots.push_back(Slot {
                index,
                latest: now,
                count: 1,
            }),
        }
        self.total += 1;
    }

    /// True when nothing counts against a window ending at `now`.
    pub fn is_idle(&mut self, now: Duration, window: Duration) -> bool {
        self.count(now, window) == 0
    }
}

/// One limit a call must pass: which bucket, and the limit's window and max.
#[derive(Debug, Clone, Copy)]
pub struct Charge<'a> {
    /// The counter's id (unique within the bundle).
    pub counter: &'a Arc<str>,
    /// The server the call is for: counters are kept per server.
    pub server: &'a str,
    /// The limit's scope.
    pub scope: Scope,
    /// The scope's key: the grant id, the session id, or `""` for pod/global.
    pub key: &'a str,
    /// The window's length.
    pub window: Duration,
    /// Calls admitted in any window.
    pub max: u64,
    /// What a fleet store does while it cannot renew this bucket's lease.
    pub on_unavailable: OnUnavailable,
}

impl Charge<'_> {
    fn same_bucket(&self, other: &Charge<'_>) -> bool {
        self.scope == other.scope
            && self.key == other.key
            && self.server == other.server
            && *self.counter == *other.counter
    }
}

/// The answer of a counter store to one call's charges.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Every limit admitted the call, and each was charged once.
    Admitted,
    /// The limit at `index` refused; nothing was charged.
    Refused {
        /// Index into the charges passed.
        index: usize,
        /// When that limit would admit the call.
        retry_after: Duration,
    },
}

/// A store of counters. Implementations must be all-or-nothing: a call is
/// charged against every limit or against none.
pub trait Counters: Send + Sync + std::fmt::Debug {
    /// Admits one call against every charge (charges naming the same bucket
    /// count once), or refuses it and charges nothing.
    fn acquire(&self, charges: &[Charge<'_>], now: Duration) -> Admission;
}

/// A bucket's identity in a store.
#[derive(Debug, Clone, PartialEq, Eq)]
struct BucketKey {
    counter: Arc<str>,
    server: Box<str>,
    scope: Scope,
    key: Box<str>,
}

impl Hash for BucketKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        hash_parts(&self.counter, &self.server, self.scope, &self.key, state);
    }
}

fn hash_parts<H: Hasher>(counter: &str, server: &str, scope: Scope, key: &str, state: &mut H) {
    counter.hash(state);
    server.hash(state);
    scope.hash(state);
    key.hash(state);
}

/// A borrowed bucket key, for look-ups that allocate nothing.
struct BucketRef<'a>(&'a Charge<'a>);

impl Hash for BucketRef<'_> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        hash_parts(
            self.0.counter,
            self.0.server,
            self.0.scope,
            self.0.key,
            state,
        );
    }
}

impl Equivalent<BucketKey> for BucketRef<'_> {
    fn equivalent(&self, key: &BucketKey) -> bool {
        self.0.scope == key.scope
            && *self.0.key == *key.key
            && *self.0.server == *key.server
            && **self.0.counter == *key.counter
    }
}

const SHARDS: usize = 16;

/// A bucket and its window's length (kept so idle buckets can be swept).
#[derive(Debug)]
struct Bucket {
    calls: SlidingWindow,
    window: Duration,
}

/// One shard: buckets, and how many of them are session-scoped.
#[derive(Debug, Default)]
struct ShardMap {
    buckets: HashMap<BucketKey, Bucket>,
    sessions: usize,
}

type Shard = Mutex<ShardMap>;

/// Counters kept in this process: sharded maps, so calls on different
/// buckets rarely wait for one another.
///
/// Session-scoped buckets are bounded: any caller can open sessions, so
/// their number is capped ([`LocalCounters::with_session_cap`]); when a shard
/// is full, a new session's bucket takes the place of an idle one, else of
/// another session's. Dropping a session's count gives that session no more
/// than a new session would have. Grant, pod and global buckets are never
/// evicted (their number is bounded by the bundle); [`LocalCounters::sweep`]
/// forgets every bucket whose window is empty.
#[derive(Debug)]
pub struct LocalCounters {
    shards: Box<[Shard]>,
    hasher: hashbrown::DefaultHashBuilder,
    /// Session buckets per shard.
    session_cap: usize,
    evicted: std::sync::atomic::AtomicU64,
}

impl Default for LocalCounters {
    fn default() -> Self {
        Self::new()
    }
}

/// Session buckets kept by default (about 16 MiB at the most).
pub const DEFAULT_SESSION_BUCKETS: usize = 65_536;

impl LocalCounters {
    /// An empty store keeping up to [`DEFAULT_SESSION_BUCKETS`] session buckets.
    pub fn new() -> Self {
        Self::with_session_cap(DEFAULT_SESSION_BUCKETS)
    }

    /// An empty store keeping up to about `max_session_buckets` session
    /// buckets (rounded up to a multiple of the shard count).
    pub fn with_session_cap(max_session_buckets: usize) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            hasher: hashbrown::DefaultHashBuilder::default(),
            session_cap: max_session_buckets.div_ceil(SHARDS).max(1),
            evicted: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Session buckets dropped so far to make room for new sessions.
    pub fn evicted(&self) -> u64 {
        self.evicted.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn shard_of(&self, charge: &Charge<'_>) -> usize {
        (self.hasher.hash_one(BucketRef(charge)) as usize) % SHARDS
    }

    /// Calls counted against the bucket in the window ending at `now`.
    pub fn count(&self, charge: &Charge<'_>, now: Duration) -> u64 {
        let mut shard = self.lock(self.shard_of(charge));
        shard
            .buckets
            .get_mut(&BucketRef(charge))
            .map_or(0, |b| b.calls.count(now, charge.window))
    }

    /// Forgets buckets with nothing left in their window; returns how many remain.
    pub fn sweep(&self, now: Duration) -> usize {
        let mut left = 0;
        for i in 0..SHARDS {
            let mut shard = self.lock(i);
            shard.sweep(now);
            left += shard.buckets.len();
        }
        left
    }

    fn lock(&self, i: usize) -> std::sync::MutexGuard<'_, ShardMap> {
        // A panic while holding a shard cannot leave a window half-updated in a
        // way that admits too much (charges are single increments), so go on.
        self.shards[i]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// A new bucket for `c` holding one call at `now`, in room made for it.
    fn insert(&self, shard: &mut ShardMap, c: &Charge<'_>, now: Duration) {
        if c.scope == Scope::Session {
            if shard.sessions >= self.session_cap {
                shard.sweep(now);
            }
            if shard.sessions >= self.session_cap && shard.evict_session() {
                self.evicted
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            shard.sessions += 1;
        }
        let mut calls = SlidingWindow::default();
        calls.charge(now, c.window);
        shard.buckets.insert(
            BucketKey {
                counter: Arc::clone(c.counter),
                server: c.server.into(),
                scope: c.scope,
                key: c.key.into(),
            },
            Bucket {
                calls,
                window: c.window,
            },
        );
    }
}

impl ShardMap {
    fn sweep(&mut self, now: Duration) {
        let mut sessions = 0;
        self.buckets.retain(|k, b| {
            let keep = !b.calls.is_idle(now, b.window);
            sessions += usize::from(keep && k.scope == Scope::Session);
            keep
        });
        self.sessions = sessions;
    }

    /// Drops one session bucket; false if there is none.
    fn evict_session(&mut self) -> bool {
        let Some(key) = self
            .buckets
            .keys()
            .find(|k| k.scope == Scope::Session)
            .cloned()
        else {
            return false;
        };
        self.buckets.remove(&key);
        self.sessions = self.sessions.saturating_sub(1);
        true
    }
}

impl Counters for LocalCounters {
    fn acquire(&self, charges: &[Charge<'_>], now: Duration) -> Admission {
        // One bucket (the usual case): one look-up for the check and the charge.
        if let [c] = charges {
            let mut shard = self.lock(self.shard_of(c));
            if let Some(bucket) = shard.buckets.get_mut(&BucketRef(c)) {
                if let Some(retry_after) = bucket.calls.check(now, c.window, c.max) {
                    return Admission::Refused {
                        index: 0,
                        retry_after,
                    };
                }
                bucket.calls.charge(now, c.window);
                bucket.window = c.window;
                return Admission::Admitted;
            }
            if c.max == 0 {
                return Admission::Refused {
                    index: 0,
                    retry_after: c.window,
                };
            }
            self.insert(&mut shard, c, now);
            return Admission::Admitted;
        }
        // Distinct buckets only, and their shards locked in ascending order.
        let mut distinct: smallvec::SmallVec<[(usize, usize); 4]> = smallvec::SmallVec::new();
        for (i, c) in charges.iter().enumerate() {
            if !distinct.iter().any(|&(j, _)| charges[j].same_bucket(c)) {
                distinct.push((i, self.shard_of(c)));
            }
        }
        let mut shard_ids: smallvec::SmallVec<[usize; 4]> =
            distinct.iter().map(|&(_, s)| s).collect();
        shard_ids.sort_unstable();
        shard_ids.dedup();
        let mut guards: smallvec::SmallVec<[_; 4]> =
            shard_ids.iter().map(|&s| self.lock(s)).collect();

        for &(i, shard) in &distinct {
            let c = &charges[i];
            // Every shard in `distinct` is in `shard_ids`, locked just above.
            let Ok(g) = shard_ids.binary_search(&shard) else {
                continue;
            };
            if let Some(bucket) = guards[g].buckets.get_mut(&BucketRef(c))
                && let Some(retry_after) = bucket.calls.check(now, c.window, c.max)
            {
                return Admission::Refused {
                    index: i,
                    retry_after,
                };
            }
            if c.max == 0 {
                return Admission::Refused {
                    index: i,
                    retry_after: c.window,
                };
            }
        }
        for &(i, shard) in &distinct {
            let c = &charges[i];
            // Every shard in `distinct` is in `shard_ids`, locked just above.
            let Ok(g) = shard_ids.binary_search(&shard) else {
                continue;
            };
            match guards[g].buckets.get_mut(&BucketRef(c)) {
                Some(bucket) => {
                    bucket.calls.charge(now, c.window);
                    bucket.window = c.window;
                }
                None => self.insert(&mut guards[g], c, now),
            }
        }
        Admission::Admitted
    }
}

#[cfg(test)]
#[path = "limits_tests.rs"]
mod tests;
