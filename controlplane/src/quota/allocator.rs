//! The allocator: buckets of holders, accounting on every report, and a
//! max-min fair split of what is left of each window.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use tokio::time::Instant;

use super::consumed::Consumed;
use super::holder::Holder;
use super::{
    AllocatorConfig, BucketKey, HeldLease, HolderKey, Lease, LimitSpec, QuotaError, Report,
};

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

/// What a report's bucket needs to know of the allocator.
struct Grants {
    /// Nothing new is granted: a node an earlier control plane served has
    /// not reported yet.
    awaiting: bool,
    config: AllocatorConfig,
}

#[derive(Debug, Clone)]
struct Bucket {
    spec: LimitSpec,
    version: u64,
    /// The longest window this bucket has had: consumption is kept that long.
    horizon: Duration,
    learning_until: Instant,
    /// What the sum of consumption and reservations is held under: `max`,
    /// or more while draining after `max` shrank or the window grew.
    ceiling: u64,
    consumed: Consumed,
    /// Few per bucket: scanned linearly.
    holders: Vec<Holder>,
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

impl Bucket {
    fn new(now: Instant, report: &Report, learning_until: Instant) -> Self {
        Self {
            spec: report.spec,
            version: report.policy_version,
            horizon: report.spec.window,
            learning_until,
            ceiling: report.spec.max,
            consumed: Consumed::new(now, report.spec.window),
            holders: Vec::new(),
        }
    }

    /// The holders' reservations at `now`: leases, and fallback capacity.
    fn reserved(&self, now: Instant) -> u64 {
        self.holders.iter().fold(0u64, |sum, h| {
            sum.saturating_add(h.reservation())
                .saturating_add(h.fallback_reservation(now))
        })
    }

    /// The newest policy version sets the spec. After a smaller `max` or a
    /// longer window the sum may stand above `max`: the ceiling starts from
    /// wherever the next [`Bucket::settle`] finds it, and drains from there.
    fn adopt_spec(&mut self, report: &Report, learning_until: Instant) {
        if report.policy_version <= self.version || report.spec == self.spec {
            self.version = self.version.max(report.policy_version);
            return;
        }
        self.version = report.policy_version;
        if report.spec.max < self.spec.max || report.spec.window > self.spec.window {
            self.ceiling = u64::MAX;
        }
        if report.spec.window != self.spec.window {
            self.consumed.set_window(report.spec.window);
            self.horizon = self.horizon.max(report.spec.window);
            self.learning_until = self.learning_until.max(learning_until);
        }
        self.spec = report.spec;
    }

    /// `report` with what it asks and holds capped at the bucket's `max`: no
    /// holder wants more than the whole window, nor holds a lease beyond
    /// what it admitted plus `max` (what a lease of an earlier control plane
    /// could allow at most, taken as reported while learning).
    fn bounded(&self, report: &Report) -> Report {
        let max = self.spec.max;
        Report {
            demand: report.demand.min(max),
            standby: report.standby.min(max),
            held: report.held.map(|h| HeldLease {
                seq: h.seq,
                granted_total: h
                    .granted_total
                    .min(report.admitted_total.saturating_add(max)),
            }),
            ..report.clone()
        }
    }

    /// Charges every holder whose accounting expiry has passed, and drops
    /// consumption older than the horizon.
    fn expire(&mut self, now: Instant) {
        for h in &mut self.holders {
            h.expire(now, &mut self.consumed);
        }
        self.consumed.expire(now, self.horizon);
    }

    /// Leased consumption in the window and every reservation.
    fn sum(&self, now: Instant) -> u64 {
        self.consumed
            .in_window(now, self.spec.window)
            .leased
            .saturating_add(self.reserved(now))
    }

    /// Lowers the ceiling toward `max` as the sum drains. A fallback
    /// reservation that begins lifts the sum by time alone, maybe above
    /// `max`: as after a shrink, the ceiling starts from the sum and drains,
    /// and nothing new is granted meanwhile.
    fn settle(&mut self, now: Instant) {
        for h in &mut self.holders {
            let fallback = h.fallback_reservation(now);
            if fallback > h.noticed_fallback {
                self.ceiling = u64::MAX;
            }
            h.noticed_fallback = fallback;
        }
        let sum = self.sum(now);
        self.ceiling = self.spec.max.max(self.ceiling.min(sum));
    }

    fn report(
        &mut self,
        now: Instant,
        key: &HolderKey,
        report: &Report,
        grants: &Grants,
        learning_until: Instant,
        next_seq: &mut u64,
    ) -> Result<Lease, QuotaError> {
        let config = &grants.config;
        self.adopt_spec(report, learning_until);
        let report = &self.bounded(report);
        self.expire(now);
        let ttl = config.lease_ttl.min(self.spec.window);
        let lifetime = ttl + config.grace;

        let (i, holds_lease) = match self.holders.iter().position(|h| h.node_id == key.node_id) {
            Some(i)
                if self.holders[i].epoch == key.epoch
                    && report.admitted_total >= self.holders[i].admitted()
                    && report.unleased_total >= self.holders[i].unleased() =>
            {
                self.holders[i].order_after(*next_seq);
                let holds = self.holders[i].account(
                    now,
                    self.spec.window,
                    lifetime,
                    report,
                    &mut self.consumed,
                );
                (i, holds)
            }
            Some(i) if self.holders[i].epoch == key.epoch => {
                // Its counts went down: the sidecar forgot this bucket (idle,
                // no live lease) and started it again. As for a new process,
                // with no epoch to refuse.
                let closed_epoch = self.holders[i].closed_epoch;
                self.holders[i].close(now, &mut self.consumed);
                let (mut holder, holds) = self.arrive(now, key, report, lifetime, *next_seq);
                holder.closed_epoch = closed_epoch;
                self.holders[i] = holder;
                (i, holds)
            }
            Some(i) => {
                if self.holders[i].closed_epoch == Some(key.epoch) {
                    return Err(QuotaError::ClosedEpoch {
                        node_id: key.node_id.clone(),
                        epoch: key.epoch,
                    });
                }
                let closed = self.holders[i].epoch;
                self.holders[i].close(now, &mut self.consumed);
                let (mut holder, holds) = self.arrive(now, key, report, lifetime, *next_seq);
                holder.closed_epoch = Some(closed);
                self.holders[i] = holder;
                (i, holds)
            }
            None => {
                let (holder, holds) = self.arrive(now, key, report, lifetime, *next_seq);
                self.holders.push(holder);
                (self.holders.len() - 1, holds)
            }
        };
        self.settle(now);

        let relearning = grants.awaiting || now < self.learning_until;
        let granted_total = if relearning {
            // Renew what it holds, nothing more; while a node of the
            // earlier control plane is silent, not even that: it may be
            // admitting on fallback, and what the earlier control plane
            // granted before reserving for it must not outlive its leases.
            let h = &self.holders[i];
            if grants.awaiting {
                h.admitted()
            } else if holds_lease {
                h.top().max(h.admitted())
            } else {
                h.admitted()
            }
        } else {
            self.grant(now, i)
        };
        // A zero horizon: no fallback, nothing to reserve.
        let fallback = if config.fallback_horizon.is_zero() {
            0
        } else {
            self.spec.max / self.holders.len().max(1) as u64
        };
        // Its sidecar falls back no earlier than this after receiving the
        // lease, and for at most `fallback_for` more from the lease's end
        // (see the module docs).
        let fallback_after = lifetime * 2 + self.spec.window;
        let fallback_for = config.fallback_horizon;
        let fallback_until = now + lifetime + fallback_after + fallback_for + self.spec.window;
        let seq = self.holders[i].sent(now, granted_total, lifetime, fallback, fallback_until);
        // A larger fallback than it was sent before (fewer holders) may lift
        // a reservation under way: its sidecar can use it only a wait after
        // receipt, as when a reservation begins.
        self.settle(now);
        if relearning {
            // A renewal of what an earlier control plane granted is bounded
            // by that one's sum, not by the fallback reservations this one
            // began: with them the sum may pass `max`. Those leases end
            // before any of these holders may fall back, and nothing new is
            // granted until the sum has drained under `max`.
            self.ceiling = self.ceiling.max(self.sum(now));
        }
        *next_seq = seq.saturating_add(1);
        Ok(Lease {
            seq,
            granted_total,
            ttl,
            refresh: config.refresh,
            fallback,
            fallback_after,
            fallback_for,
        })
    }

    /// A process this bucket has not seen, and whether it holds a live
    /// lease. Its calls in the trailing window (`window_admitted`: made under
    /// leases this allocator did not send, or without a lease) become
    /// consumption, while learning and after.
    fn arrive(
        &mut self,
        now: Instant,
        key: &HolderKey,
        report: &Report,
        lifetime: Duration,
        next_seq: u64,
    ) -> (Holder, bool) {
        let learning = now < self.learning_until;
        let mut holder = Holder::arrive(now, key, report, lifetime, learning);
        holder.order_after(next_seq);
        if report.window_admitted > 0 {
            // Calls no grant of this allocator accounted for (or accounted
            // for already, and now twice) may lift the sum above `max`. As
            // after a shrink, the ceiling starts from wherever the caller's
            // `settle` finds the sum and drains from there; nothing new is
            // granted meanwhile, since grants leave room only under `max`.
            self.ceiling = u64::MAX;
        }
        if learning {
            self.consumed
                .push(now, super::consumed::Used::leased(report.window_admitted));
            holder.denied = report.denied;
            (holder, report.held.is_some())
        } else {
            // Its calls in the trailing window may have been made under leases
            // of a control plane that ran before this one (a sidecar that came
            // back only after learning ended) or without a lease: counted, so
            // nothing is granted against them. Calls this allocator already
            // counted (a holder forgotten less than a window after its last
            // call) are counted twice, which errs on the safe side.
            self.consumed
                .push(now, super::consumed::Used::leased(report.window_admitted));
            let holds = holder.account(now, self.spec.window, lifetime, report, &mut self.consumed);
            (holder, holds)
        }
    }

    /// The cumulative total for holder `i`'s next lease: its max-min fair
    /// share of what the window has left, within what is free; or, if more,
    /// its standby ask out of what is free and no other holder's demand
    /// wants. An idle holder's lease therefore shrinks to nothing as soon as
    /// a busy one wants the room.
    fn grant(&self, now: Instant, i: usize) -> u64 {
        let max = self.spec.max;
        let used = self.consumed.in_window(now, self.spec.window).total();
        let holder = &self.holders[i];
        let own = holder.reservation();
        // Every fallback reservation, its own too: its sidecar may fall
        // back again as soon as its stream breaks.
        let others = self.reserved(now).saturating_sub(own);
        // The new reservation is max(old, additional): keeping additional
        // within `room` keeps consumed + Σ reservation ≤ max (or, if the sum
        // is already above after a shrink, lets this one only shrink).
        let room = max.saturating_sub(used.saturating_add(others));
        let share = self
            .fair_share(max.saturating_sub(used), holder.demand)
            .min(room);
        let wanted = self
            .holders
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .fold(0u64, |sum, (_, h)| sum.saturating_add(h.unmet()));
        let spare = room.saturating_sub(share).saturating_sub(wanted);
        let additional = share.max(holder.standby.min(spare));
        holder.admitted().saturating_add(additional)
    }

    /// A holder's max-min fair share of `pool` given its `demand`: the
    /// water level over the demands of active holders (each gets
    /// `min(demand, level)`, the shares summing to at most `pool`). The few
    /// units the integer level leaves over (fewer than the holders above
    /// it) go one each to the next holders to renew, so a small window is
    /// not left unused.
    fn fair_share(&self, pool: u64, demand: u64) -> u64 {
        // Few holders want capacity at a time, however many are idle: the
        // search runs over those few.
        let demands: Vec<u64> = self
            .holders
            .iter()
            .filter(|h| h.is_active())
            .map(|h| h.demand)
            .collect();
        let share = |level: u64| {
            demands
                .iter()
                .fold(0u64, |sum, d| sum.saturating_add((*d).min(level)))
        };
        if share(u64::MAX) <= pool {
            return demand;
        }
        // The largest level whose shares fit: share(lo) ≤ pool < share(hi).
        let (mut lo, mut hi) = (0u64, pool.saturating_add(1));
        while hi - lo > 1 {
            let mid = lo + (hi - lo) / 2;
            if share(mid) <= pool {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        let spare = pool - share(lo);
        demand.min(lo + u64::from(spare > 0))
    }
}

#[cfg(test)]
#[path = "allocator_tests.rs"]
mod tests;
