//! Lease accounting, free of the wire: [`FleetCounters`] holds every fleet
//! bucket's lease and counts, says what to report ([`BucketReport`]) and
//! takes what the control plane granted ([`Leases`]). Plain Rust types only;
//! [`super::wire`] converts them to and from `tollgate.v1` messages.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use hashbrown::HashMap;
use tokio::sync::Notify;
use tollgate_policy::document::Scope;
use tollgate_policy::{Charge, FleetBucket, LocalCounters};

use super::bucket::{ChargeKey, Fallback, Held, LeaseBucket, LeaseKey, standing_demand};
use super::{DEFAULT_REFRESH, EARLY_REPORT_GAP};
use crate::metrics::Metrics;

/// What one bucket tells the control plane.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BucketReport {
    /// Which bucket.
    pub bucket: LeaseKey,
    /// The control plane's version number of the bundle in force (0: none of its).
    pub policy_version: u64,
    /// The limit as this sidecar enforces it.
    pub max: u64,
    /// Its window.
    pub window: Duration,
    /// Calls admitted under leases since this process started.
    pub admitted_total: u64,
    /// Calls admitted without a valid lease since this process started.
    pub unleased_total: u64,
    /// Calls refused since the last report.
    pub denied: u64,
    /// The lease held, if still valid.
    pub held: Option<HeldLease>,
    /// Calls it expects to want over the next lease period.
    pub demand: u64,
    /// Calls asked for with no call behind them (a standing lease).
    pub standby: u64,
    /// Calls admitted over the window, leased or not.
    pub window_admitted: u64,
}

/// A lease a report says it holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeldLease {
    /// The lease's number on the stream it came on.
    pub seq: u64,
    /// Calls it allows in all, counted from this process's start.
    pub granted_total: u64,
}

/// One lease the control plane granted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseGrant {
    /// Which bucket.
    pub bucket: LeaseKey,
    /// Its number on this stream (a later lease has a larger one).
    pub seq: u64,
    /// Calls it allows in all, counted from this process's start.
    pub granted_total: u64,
    /// How long it is usable, from when the report it answers was sent.
    pub ttl: Duration,
    /// How often the control plane wants reports (none: unchanged).
    pub refresh: Option<Duration>,
    /// Calls per window allowed on fallback.
    pub fallback: u64,
    /// Fallback starts this long after the lease's receipt ...
    pub fallback_after: Duration,
    /// ... and ends this long after the lease's end, plus `fallback_after`.
    pub fallback_for: Duration,
}

/// The leases answering one report.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Leases {
    /// The report they answer.
    pub answers_report: u64,
    /// One per bucket the control plane accounted.
    pub grants: Vec<LeaseGrant>,
}

/// Everything behind the lock.
#[derive(Debug)]
pub(super) struct FleetState {
    pub(super) buckets: HashMap<LeaseKey, LeaseBucket>,
    /// The quota stream is open.
    pub(super) connected: bool,
    /// The refresh interval the control plane asked for.
    pub(super) refresh: Duration,
    /// The last report sent.
    pub(super) report_seq: u64,
}

/// The sidecar's counters in fleet mode (see the [`super`] module doc).
#[derive(Debug)]
pub struct FleetCounters {
    pub(super) local: LocalCounters,
    pub(super) metrics: Arc<Metrics>,
    state: Mutex<FleetState>,
    pub(super) wake: Notify,
    origin: Instant,
    epoch: u64,
}

impl FleetCounters {
    /// Counters whose clock starts at `origin` (the sidecar's counter clock).
    pub fn new(origin: Instant, metrics: Arc<Metrics>) -> Self {
        Self {
            local: LocalCounters::new(),
            metrics,
            state: Mutex::new(FleetState {
                buckets: HashMap::new(),
                connected: false,
                refresh: DEFAULT_REFRESH,
                report_seq: 0,
            }),
            wake: Notify::new(),
            origin,
            // Not zero, so a report with epoch 0 is recognisably malformed.
            epoch: fastrand::u64(1..),
        }
    }

    /// The clock origin.
    pub fn origin(&self) -> Instant {
        self.origin
    }

    /// This process's epoch (sent with every report).
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    pub(super) fn now(&self) -> Duration {
        self.origin.elapsed()
    }

    pub(super) fn lock(&self) -> MutexGuard<'_, FleetState> {
        // A panic while holding the lock leaves counts, not broken invariants.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// What every live bucket reports, and forgets idle ones. Call
    /// [`FleetCounters::reported`] with the last report number that carried them.
    pub(super) fn report(&self, version: u64, now: Duration) -> Vec<BucketReport> {
        let mut state = self.lock();
        let refresh = state.refresh;
        let mut buckets = Vec::new();
        let mut capacity = 0u64;
        state.buckets.retain(|k, b| {
            let held = b.valid_lease(now);
            if let Some(l) = held {
                capacity += l.granted_total.saturating_sub(b.admitted_total);
            }
            let idle = now.saturating_sub(b.last_hit) > b.window.max(refresh * 2);
            if held.is_none() && b.hits == 0 && b.standing == 0 && idle {
                return false;
            }
            // What it expects to want over the next lease period (about ten
            // refresh intervals): its recent rate; when calls went unserved
            // (a first call, a lease run dry), as much as the control plane
            // can spare — its fair share keeps that from starving other nodes.
            // A standing ask goes apart: it is served only from what no
            // node's calls want.
            let demand = match (b.hits, b.starved) {
                (0, _) => 0,
                (hits, true) => hits.saturating_mul(10).max(b.max),
                (hits, false) => hits.saturating_mul(10),
            };
            b.starved = false;
            buckets.push(BucketReport {
                bucket: k.clone(),
                policy_version: version,
                max: b.max,
                window: b.window,
                admitted_total: b.admitted_total,
                unleased_total: b.unleased_total,
                denied: b.denied,
                held: held.map(|l| HeldLease {
                    seq: l.seq,
                    granted_total: l.granted_total,
                }),
                demand,
                standby: standing_demand(b, now),
                // Every call it admitted in the window, leased or not: what a
                // control plane that has not seen this process must count.
                window_admitted: b.leased_window.count(now, b.window)
                    + b.unleased_window.count(now, b.window),
            });
            b.denied = 0;
            b.hits = 0;
            true
        });
        self.metrics.quota_capacity(capacity);
        buckets
    }

    /// The reports up to `last_seq` are built: a bucket created from now on
    /// ignores leases answering them (they were for a predecessor it forgot).
    pub(super) fn reported(&self, last_seq: u64) {
        let mut state = self.lock();
        state.report_seq = state.report_seq.max(last_seq);
    }

    /// Asks for a small standing lease on each of `known` (the bundle's
    /// fleet buckets), so that their first calls are admitted at once; other
    /// buckets lose their standing demand.
    pub(super) fn stand_by(&self, known: &[FleetBucket], node_grant: &str, now: Duration) {
        let mut state = self.lock();
        for b in state.buckets.values_mut() {
            b.standing = 0;
        }
        for f in known {
            let charge = Charge {
                counter: &f.counter,
                server: &f.server,
                scope: f.scope,
                key: &f.key,
                window: f.window,
                max: f.max,
                on_unavailable: f.on_unavailable,
            };
            if !state.buckets.contains_key(&ChargeKey(&charge)) {
                let key = LeaseKey::of(&charge);
                let born_after = state.report_seq;
                state
                    .buckets
                    .insert(key, LeaseBucket::new(&charge, now, born_after));
            }
            if let Some(b) = state.buckets.get_mut(&ChargeKey(&charge)) {
                // A bucket of this node's own grant (a bundle without grants)
                // is this sidecar's alone: all of it. A shared one: one call,
                // so the first is admitted at once. Either is asked as standby,
                // which the control plane grants only from what no busy
                // sidecar wants: idle sidecars hold nothing back from busy ones.
                b.own = f.scope == Scope::Grant && *f.key == *node_grant;
                b.standing = if b.own { f.max } else { 1 };
            }
        }
    }

    /// Takes the leases of one answer; `sent` is when the report it answers
    /// was sent (on the counters' clock).
    pub(super) fn take(&self, answer: &Leases, sent: Duration) -> usize {
        // Received now, and no earlier than the report it answers was sent.
        let received = self.now().max(sent);
        let mut state = self.lock();
        let mut taken = 0;
        for lease in &answer.grants {
            let Some(b) = state.buckets.get_mut(&lease.bucket) else {
                continue;
            };
            if answer.answers_report <= b.born_after || b.taken_seq.is_some_and(|s| lease.seq <= s)
            {
                continue;
            }
            b.taken_seq = Some(lease.seq);
            let expires = sent + lease.ttl;
            b.lease = Some(Held {
                seq: lease.seq,
                granted_total: lease.granted_total,
                expires,
            });
            b.fallback = Some(Fallback {
                capacity: lease.fallback,
                from: received + lease.fallback_after,
                until: expires + lease.fallback_after + lease.fallback_for,
            });
            taken += 1;
            if let Some(refresh) = lease.refresh {
                state.refresh = refresh.max(EARLY_REPORT_GAP);
            }
        }
        taken
    }

    /// A new stream: leases from it are taken afresh (held ones stay valid).
    pub(super) fn stream_opened(&self) {
        let mut state = self.lock();
        state.connected = true;
        for b in state.buckets.values_mut() {
            b.taken_seq = None;
        }
    }

    pub(super) fn stream_closed(&self) {
        self.lock().connected = false;
    }

    pub(super) fn refresh(&self) -> Duration {
        self.lock().refresh
    }
}

/// The control plane's version number of a bundle in force (`v7` → 7); 0 for
/// a policy that did not come from it.
pub(super) fn policy_version(label: &str) -> u64 {
    label
        .strip_prefix('v')
        .unwrap_or(label)
        .parse()
        .unwrap_or(0)
}

#[cfg(test)]
#[path = "leases_tests.rs"]
mod tests;
