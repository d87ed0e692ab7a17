//! One fleet bucket as this sidecar holds it: its identity, the lease and
//! fallback the control plane last gave it, and its counts.

use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

use hashbrown::Equivalent;
use tollgate_policy::Charge;
use tollgate_policy::document::{OnUnavailable, Scope};
use tollgate_policy::limits::SlidingWindow;

/// A fleet bucket's identity: what reports and leases name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseKey {
    /// The upstream server the limit belongs to.
    pub server: Box<str>,
    /// The limit's counter id.
    pub counter: Arc<str>,
    /// `grant`, `session` or `global` (never `pod`: counted locally).
    pub scope: Scope,
    /// The grant or session it counts; empty for `global`.
    pub key: Box<str>,
}

impl LeaseKey {
    /// The bucket `c` charges.
    pub(super) fn of(c: &Charge<'_>) -> Self {
        Self {
            server: c.server.into(),
            counter: Arc::clone(c.counter),
            scope: c.scope,
            key: c.key.into(),
        }
    }
}

impl Hash for LeaseKey {
    fn hash<H: Hasher>(&self, h: &mut H) {
        hash_parts(h, &self.server, &self.counter, self.scope, &self.key);
    }
}

fn hash_parts<H: Hasher>(h: &mut H, server: &str, counter: &str, scope: Scope, key: &str) {
    server.hash(h);
    counter.hash(h);
    scope.hash(h);
    key.hash(h);
}

/// A look-up key borrowed from a [`Charge`].
pub(super) struct ChargeKey<'a, 'c>(pub(super) &'a Charge<'c>);

impl Hash for ChargeKey<'_, '_> {
    fn hash<H: Hasher>(&self, h: &mut H) {
        let c = self.0;
        hash_parts(h, c.server, c.counter, c.scope, c.key);
    }
}

impl Equivalent<LeaseKey> for ChargeKey<'_, '_> {
    fn equivalent(&self, k: &LeaseKey) -> bool {
        let c = self.0;
        c.scope == k.scope
            && c.key == &*k.key
            && c.server == &*k.server
            && **c.counter == *k.counter
    }
}

/// The lease a bucket holds.
#[derive(Debug, Clone, Copy)]
pub(super) struct Held {
    pub(super) seq: u64,
    pub(super) granted_total: u64,
    /// When it stops being usable, on the counters' clock.
    pub(super) expires: Duration,
}

/// What the newest lease allows on fallback: `capacity` calls per window,
/// from `from` until `until` (on the counters' clock). The control plane
/// reserves that much for this sidecar over that span and no longer.
#[derive(Debug, Clone, Copy)]
pub(super) struct Fallback {
    pub(super) capacity: u64,
    pub(super) from: Duration,
    pub(super) until: Duration,
}

/// One fleet bucket, as this sidecar sees it.
#[derive(Debug)]
pub(super) struct LeaseBucket {
    pub(super) max: u64,
    pub(super) window: Duration,
    pub(super) on_unavailable: OnUnavailable,
    pub(super) lease: Option<Held>,
    /// The last lease seq taken on the current stream (a new stream starts afresh).
    pub(super) taken_seq: Option<u64>,
    /// Calls admitted under leases since this process started.
    pub(super) admitted_total: u64,
    /// Calls admitted without a valid lease.
    pub(super) unleased_total: u64,
    /// Calls refused since the last report.
    pub(super) denied: u64,
    /// Calls asked for (admitted or refused) since the last report.
    pub(super) hits: u64,
    /// Leased admissions over the recent window (to re-learn after a control-plane restart).
    pub(super) leased_window: SlidingWindow,
    /// Unleased admissions over the recent window (the fallback budget).
    pub(super) unleased_window: SlidingWindow,
    /// The fallback the control plane last set.
    pub(super) fallback: Option<Fallback>,
    /// The last call, to forget idle buckets.
    pub(super) last_hit: Duration,
    /// A call was refused for want of lease capacity since the last report.
    pub(super) starved: bool,
    /// Demand asked for even without calls: the bundle names this bucket, so
    /// its first call should find a lease already there.
    pub(super) standing: u64,
    /// A bucket of this node's own grant (a bundle without grants).
    pub(super) own: bool,
    /// The last report sent before this bucket was created. A lease answering
    /// that report or an earlier one was for a bucket of the same name this
    /// sidecar forgot (its counts started again at zero): it is ignored.
    pub(super) born_after: u64,
}

impl LeaseBucket {
    pub(super) fn new(c: &Charge<'_>, now: Duration, born_after: u64) -> Self {
        Self {
            max: c.max,
            window: c.window,
            on_unavailable: c.on_unavailable,
            lease: None,
            taken_seq: None,
            admitted_total: 0,
            unleased_total: 0,
            denied: 0,
            hits: 0,
            leased_window: SlidingWindow::default(),
            unleased_window: SlidingWindow::default(),
            fallback: None,
            last_hit: now,
            starved: false,
            standing: 0,
            own: false,
            born_after,
        }
    }

    pub(super) fn valid_lease(&self, now: Duration) -> Option<Held> {
        self.lease.filter(|l| now < l.expires)
    }
}

/// What one bucket says about one call.
#[derive(Debug, Clone, Copy)]
pub(super) enum BucketAnswer {
    Leased,
    Unleased,
    Refused(Duration),
}

/// What a bucket asks for with no calls (its standby). A shared bucket asks
/// for its one standing call only while it was created or called within its
/// window: a sidecar that stopped calling stops asking (its next call waits
/// a round trip). A bucket of the node's own grant keeps asking
/// for all of it: no other sidecar can use it.
pub(super) fn standing_demand(b: &LeaseBucket, now: Duration) -> u64 {
    if b.own || now.saturating_sub(b.last_hit) < b.window {
        b.standing
    } else {
        0
    }
}

pub(super) fn same_bucket(a: &Charge<'_>, b: &Charge<'_>) -> bool {
    a.scope == b.scope && a.key == b.key && a.server == b.server && **a.counter == **b.counter
}
