//! The allocator: every fleet-wide bucket, the restart wait before anything
//! new is granted, and what operators see. Each bucket's accounting and fair
//! split is in `bucket.rs`.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use tokio::time::Instant;

use super::bucket::{Bucket, Grants};
use super::{AllocatorConfig, BucketKey, HolderKey, Lease, QuotaError, Report};

/// Leases for every fleet-wide bucket. See the module docs for the contract
/// and why the limits hold. Every method takes the current time, which must
/// never go backwards between calls.
#[derive(Debug)]
pub struct Allocator {
    config: AllocatorConfig,
    /// Until when leases an earlier control plane sent may be in use
    /// (`None`: none can be, nothing to re-learn).
    prior_leases_end: Option<Instant>,
    /// Nodes an earlier control plane served that have not reported to this
    /// one: until each has (or `awaiting_until` passes, and then the span in
    /// which it may admit on fallback), nothing new is granted, since they
    /// may have admitted calls on fallback.
    awaiting: HashSet<String>,
    awaiting_until: Instant,
    /// When every lease the earlier control plane sent had ended (`None`:
    /// not known): a node silent since may admit on fallback until this +
    /// its wait + the horizon, counted in windows a window more.
    prior_leases_ended: Option<Instant>,
    /// The nodes still silent at `awaiting_until` were named.
    named_silent: bool,
    /// The seq of the next lease, whatever its bucket and holder.
    next_seq: u64,
    buckets: HashMap<BucketKey, Bucket>,
}

/// One bucket as an operator sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BucketView {
    pub key: BucketKey,
    pub policy_version: u64,
    pub max: u64,
    pub window: Duration,
    /// Calls counted against the window ending now (leased and not).
    pub consumed: u64,
    /// Of which admitted without a lease.
    pub unleased: u64,
    /// Sum of the holders' reservations.
    pub reserved: u64,
    /// Still re-learning after a restart: nothing new is granted.
    pub learning: bool,
    /// Sorted by node id.
    pub holders: Vec<HolderView>,
}

/// One sidecar process in a bucket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HolderView {
    pub node_id: String,
    pub epoch: u64,
    pub connected: bool,
    /// Calls it may still admit (or has admitted) unreported.
    pub reservation: u64,
    /// The highest total any of its leases allows.
    pub granted_total: u64,
    pub admitted_total: u64,
    pub unleased_total: u64,
    pub demand: u64,
    /// Denied calls summed over its reports.
    pub denied: u64,
    /// The allocator's expiry of its leases.
    pub expires: Instant,
    /// Its leases expired unreported.
    pub expired: bool,
}

impl Allocator {
    /// An allocator started at `now`, learning until `now + lease_ttl + grace`.
    pub fn new(now: Instant, config: AllocatorConfig) -> Self {
        Self::resume(now, config, Some(now + config.lease_ttl + config.grace))
    }

    /// An allocator started at `now` after a control plane whose leases all
    /// end by `prior_leases_end` (`None`: it sent none that can still be in
    /// use, as with a new data dir): it learns until then, and not at all
    /// without one.
    pub fn resume(
        now: Instant,
        config: AllocatorConfig,
        prior_leases_end: Option<Instant>,
    ) -> Self {
        Self {
            config,
            prior_leases_end: prior_leases_end.filter(|end| *end > now),
            awaiting: HashSet::new(),
            awaiting_until: now,
            prior_leases_ended: None,
            named_silent: false,
            next_seq: 1,
            buckets: HashMap::new(),
        }
    }

    /// Grants nothing new until every node of `nodes` (those an earlier
    /// control plane served) has reported, or until `until`: a node cut off
    /// from that control plane may have admitted calls on fallback that only
    /// its report tells. A node's report counts once it is accounted, so the
    /// last one's calls are in before anything is granted. Nodes still silent
    /// at `until` are given up on ([`Allocator::give_up_waiting`]).
    pub fn await_nodes(&mut self, nodes: impl IntoIterator<Item = String>, until: Instant) {
        self.awaiting.extend(nodes);
        self.awaiting_until = self.awaiting_until.max(until);
    }

    /// The nodes [`Allocator::await_nodes`] names were last sent a lease by
    /// an earlier control plane whose leases had all ended by `ended` (its
    /// marker, even if long past). One that stays silent may be cut off and
    /// admitting on fallback until `ended + fallback_after + fallback_for`,
    /// calls counted in a window until a window later: a bucket grants
    /// nothing new while any of them is silent, until then (see the module
    /// docs). Assumes the earlier control plane ran with the same ttl, grace
    /// and fallback horizon.
    pub fn await_fallback(&mut self, ended: Instant) {
        self.prior_leases_ended = Some(
            self.prior_leases_ended
                .map_or(ended, |before| before.max(ended)),
        );
    }

    /// Until when a node silent since the earlier control plane may have
    /// fallback calls in a window of a bucket with this window.
    fn silent_fallback_end(&self, window: Duration) -> Option<Instant> {
        let ended = self.prior_leases_ended?;
        let lifetime = self.config.lease_ttl.min(window) + self.config.grace;
        let fallback_after = lifetime * 2 + window;
        Some(ended + fallback_after + self.config.fallback_horizon + window)
    }

    /// Still waiting, on a bucket with this window, for a node an earlier
    /// control plane served.
    fn is_awaiting(&self, now: Instant, window: Duration) -> bool {
        !self.awaiting.is_empty()
            && (now < self.awaiting_until
                || self
                    .silent_fallback_end(window)
                    .is_some_and(|end| now < end))
    }

    /// The longest window of any bucket known now.
    fn longest_window(&self) -> Duration {
        self.buckets
            .values()
            .map(|b| b.horizon.max(b.spec.window))
            .max()
            .unwrap_or_default()
    }

    /// The nodes that may still admit on fallback calls that count in a
    /// window of a bucket known now: those holding (or having held) leases
    /// here whose fallback reservation has not ended, and those an earlier
    /// control plane served that have not reported and are still waited
    /// for. O(holders).
    pub fn may_fall_back(&self, now: Instant) -> HashSet<&str> {
        let mut nodes: HashSet<&str> = self
            .buckets
            .values()
            .flat_map(|b| &b.holders)
            .filter(|h| h.fallback_until().is_some_and(|until| now < until))
            .map(|h| h.node_id.as_str())
            .collect();
        if self.is_awaiting(now, self.longest_window()) {
            nodes.extend(self.awaiting.iter().map(String::as_str));
        }
        nodes
    }

    /// Once the first wait for nodes has run out: the nodes that have not
    /// reported, sorted, named once (an empty list otherwise). Buckets keep
    /// waiting for them while their fallback calls may be in a window.
    pub fn give_up_waiting(&mut self, now: Instant) -> Vec<String> {
        if self.named_silent || self.awaiting.is_empty() || now < self.awaiting_until {
            return Vec::new();
        }
        self.named_silent = true;
        let mut silent: Vec<String> = self.awaiting.iter().cloned().collect();
        silent.sort();
        silent
    }

    /// Until when a bucket with this window is learning.
    /// (`now` when it has nothing to re-learn.)
    fn learning_until(&self, now: Instant, window: Duration) -> Instant {
        match self.prior_leases_end {
            None => now,
            Some(until) if self.config.learn_whole_window => until + window,
            Some(until) => until,
        }
    }

    /// True while this allocator re-learns after its start (for the whole
    /// window more per bucket with `learn_whole_window`).
    pub fn is_learning(&self, now: Instant) -> bool {
        self.prior_leases_end.is_some_and(|end| now < end) || self.is_awaiting(now, Duration::ZERO)
    }

    /// Accounts one sidecar's report on one bucket, received at `now`, and
    /// answers with its next lease. O(holders in the bucket).
    pub fn report(
        &mut self,
        now: Instant,
        holder: &HolderKey,
        key: &BucketKey,
        report: &Report,
    ) -> Result<Lease, QuotaError> {
        if report.spec.window.is_zero() {
            return Err(QuotaError::ZeroWindow {
                counter: key.counter.clone(),
            });
        }
        let learning_until = self.learning_until(now, report.spec.window);
        // This report is accounted before the lease is computed: when it is
        // the last awaited node's, its calls are in and granting may resume.
        self.awaiting.remove(&holder.node_id);
        let window = self
            .buckets
            .get(key)
            .map_or(report.spec.window, |b| b.horizon.max(report.spec.window));
        let grants = Grants {
            awaiting: self.is_awaiting(now, window),
            config: self.config,
        };
        let next_seq = &mut self.next_seq;
        if let Some(bucket) = self.buckets.get_mut(key) {
            return bucket.report(now, holder, report, &grants, learning_until, next_seq);
        }
        self.buckets
            .entry(key.clone())
            .or_insert_with(|| Bucket::new(now, report, learning_until))
            .report(now, holder, report, &grants, learning_until, next_seq)
    }

    /// The process's stream closed. Its reservations stay until their
    /// accounting expiry; its demand no longer counts in fair shares.
    pub fn disconnect(&mut self, holder: &HolderKey) {
        for bucket in self.buckets.values_mut() {
            for h in &mut bucket.holders {
                if h.node_id == holder.node_id && h.epoch == holder.epoch {
                    h.connected = false;
                    h.demand = 0;
                    h.standby = 0;
                }
            }
        }
    }

    /// Expires leases past their accounting expiry, forgets consumption out
    /// of every window, holders expired a horizon ago, and buckets left
    /// with neither. Call it about every `refresh`.
    pub fn tick(&mut self, now: Instant) {
        self.buckets.retain(|_, bucket| {
            bucket.expire(now);
            bucket.settle(now);
            let horizon = bucket.horizon;
            bucket.holders.retain(|h| {
                h.expired_at()
                    .is_none_or(|at| super::consumed::within(at, horizon, now))
                    || h.fallback_until().is_some_and(|until| now < until)
            });
            !(bucket.holders.is_empty() && bucket.consumed.is_empty())
        });
    }

    /// Checks `leased consumption in window + Σ reservation ≤ ceiling` for
    /// every bucket, where the ceiling is `max` except while draining after
    /// `max` shrank. Meant for tests and self-checks.
    pub fn check_invariant(&self, now: Instant) -> Result<(), String> {
        for (key, bucket) in &self.buckets {
            let leased = bucket.consumed.in_window(now, bucket.spec.window).leased;
            let reserved = bucket.reserved(now);
            // A fallback reservation that began since the bucket was last
            // settled lifts the ceiling at the next settle.
            let begun = bucket.holders.iter().fold(0u64, |sum, h| {
                sum.saturating_add(
                    h.fallback_reservation(now)
                        .saturating_sub(h.noticed_fallback),
                )
            });
            if leased.saturating_add(reserved) > bucket.ceiling.saturating_add(begun) {
                return Err(format!(
                    "bucket {}/{}/{:?}: {leased} consumed + {reserved} reserved > {} (max {})",
                    key.server, key.counter, key.scope_key, bucket.ceiling, bucket.spec.max
                ));
            }
            if bucket.ceiling < bucket.spec.max {
                return Err(format!(
                    "bucket {}/{}/{:?}: ceiling {} under max {}",
                    key.server, key.counter, key.scope_key, bucket.ceiling, bucket.spec.max
                ));
            }
        }
        Ok(())
    }

    /// Every bucket, sorted by key, as it stands at `now`.
    pub fn snapshot(&self, now: Instant) -> Vec<BucketView> {
        let mut views: Vec<BucketView> = self
            .buckets
            .iter()
            .map(|(key, b)| {
                let used = b.consumed.in_window(now, b.spec.window);
                let mut holders: Vec<HolderView> = b
                    .holders
                    .iter()
                    .map(|h| HolderView {
                        node_id: h.node_id.clone(),
                        epoch: h.epoch,
                        connected: h.connected,
                        reservation: h.reservation(),
                        granted_total: h.top(),
                        admitted_total: h.admitted(),
                        unleased_total: h.unleased(),
                        demand: h.demand,
                        denied: h.denied,
                        expires: h.expires(),
                        expired: h.expired_at().is_some() || now >= h.expires(),
                    })
                    .collect();
                holders.sort_by(|a, b| a.node_id.cmp(&b.node_id));
                BucketView {
                    key: key.clone(),
                    policy_version: b.version,
                    max: b.spec.max,
                    window: b.spec.window,
                    consumed: used.total(),
                    unleased: used.unleased,
                    reserved: b.reserved(now),
                    learning: self.is_awaiting(now, b.horizon.max(b.spec.window))
                        || now < b.learning_until,
                    holders,
                }
            })
            .collect();
        views.sort_by(|a, b| a.key.cmp(&b.key));
        views
    }
}

#[cfg(test)]
#[path = "allocator_expiry_tests.rs"]
mod expiry_tests;
#[cfg(test)]
#[path = "allocator_restart_tests.rs"]
mod restart_tests;
#[cfg(test)]
#[path = "allocator_tests.rs"]
mod tests;
