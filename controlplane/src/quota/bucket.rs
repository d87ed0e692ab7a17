//! One fleet-wide bucket: its holders, accounting on every report, and a
//! max-min fair split of what is left of its window. The allocator keeps
//! one per bucket key.

use std::time::Duration;

use tokio::time::Instant;

use super::consumed::Consumed;
use super::holder::Holder;
use super::{AllocatorConfig, HeldLease, HolderKey, Lease, LimitSpec, QuotaError, Report};

/// What a report's bucket needs to know of the allocator.
pub(super) struct Grants {
    /// Nothing new is granted: a node an earlier control plane served has
    /// not reported yet.
    pub(super) awaiting: bool,
    pub(super) config: AllocatorConfig,
}

/// One bucket: its spec, what was consumed in its windows, its holders.
#[derive(Debug, Clone)]
pub(super) struct Bucket {
    pub(super) spec: LimitSpec,
    pub(super) version: u64,
    /// The longest window this bucket has had: consumption is kept that long.
    pub(super) horizon: Duration,
    pub(super) learning_until: Instant,
    /// What the sum of consumption and reservations is held under: `max`,
    /// or more while draining after `max` shrank or the window grew.
    pub(super) ceiling: u64,
    pub(super) consumed: Consumed,
    /// Few per bucket: scanned linearly.
    pub(super) holders: Vec<Holder>,
}

impl Bucket {
    pub(super) fn new(now: Instant, report: &Report, learning_until: Instant) -> Self {
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
    pub(super) fn reserved(&self, now: Instant) -> u64 {
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
    pub(super) fn expire(&mut self, now: Instant) {
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
    pub(super) fn settle(&mut self, now: Instant) {
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

    pub(super) fn report(
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
