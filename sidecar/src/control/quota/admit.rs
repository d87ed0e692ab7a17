//! Deciding a call from the leases held: [`FleetCounters`] as the policy
//! engine's [`Counters`] (the rules are in the [`super`] module doc).

use std::time::Duration;

use tollgate_policy::document::{OnUnavailable, Scope};
use tollgate_policy::{Admission, Charge, Counters};

use super::bucket::{BucketAnswer, ChargeKey, LeaseBucket, LeaseKey, same_bucket};
use super::leases::FleetCounters;

impl FleetCounters {
    fn verdict(
        b: &mut LeaseBucket,
        now: Duration,
        connected: bool,
        refresh: Duration,
    ) -> BucketAnswer {
        if let Some(l) = b.valid_lease(now) {
            return if b.admitted_total < l.granted_total {
                BucketAnswer::Leased
            } else {
                // When this sidecar alone has spent the window (a bucket of
                // its own grant), its own count says when room comes back;
                // otherwise the fleet's does, learned at the next renewal.
                let own = b.leased_window.check(now, b.window, b.max);
                BucketAnswer::Refused(own.unwrap_or(refresh).max(refresh))
            };
        }
        if connected {
            return BucketAnswer::Refused(refresh);
        }
        match b.on_unavailable {
            OnUnavailable::Deny => BucketAnswer::Refused(refresh),
            OnUnavailable::Allow => BucketAnswer::Unleased,
            OnUnavailable::Fallback => {
                // Only what the control plane reserved for this sidecar:
                // nothing before its first lease, nor before or after the
                // span its newest lease names.
                let Some(f) = b.fallback else {
                    return BucketAnswer::Refused(refresh);
                };
                if now < f.from {
                    return BucketAnswer::Refused(f.from - now);
                }
                if now >= f.until {
                    return BucketAnswer::Refused(refresh);
                }
                match b.unleased_window.check(now, b.window, f.capacity) {
                    None => BucketAnswer::Unleased,
                    Some(retry_after) => BucketAnswer::Refused(retry_after),
                }
            }
        }
    }

    /// One fleet charge (the usual case): one look-up, decided and charged in place.
    fn acquire_one(&self, c: &Charge<'_>, now: Duration) -> Admission {
        let mut state = self.lock();
        let (connected, refresh, report_seq) = (state.connected, state.refresh, state.report_seq);
        let b = match state.buckets.get_mut(&ChargeKey(c)) {
            Some(b) => b,
            None => {
                // A first call: the reporter asks for a lease at once.
                self.wake.notify_one();
                let key = LeaseKey::of(c);
                state
                    .buckets
                    .entry(key)
                    .or_insert_with(|| LeaseBucket::new(c, now, report_seq))
            }
        };
        b.max = c.max;
        b.window = c.window;
        b.on_unavailable = c.on_unavailable;
        b.last_hit = now;
        b.hits += 1;
        match Self::verdict(b, now, connected, refresh) {
            BucketAnswer::Leased => {
                b.admitted_total += 1;
                b.leased_window.charge(now, b.window);
                if connected && b.lease.is_some_and(|l| b.admitted_total >= l.granted_total) {
                    self.wake.notify_one();
                }
                Admission::Admitted
            }
            BucketAnswer::Unleased => {
                self.metrics.quota_unleased();
                b.unleased_total += 1;
                b.unleased_window.charge(now, b.window);
                Admission::Admitted
            }
            BucketAnswer::Refused(retry_after) => {
                b.denied += 1;
                if connected {
                    b.starved = true;
                    self.wake.notify_one();
                }
                Admission::Refused {
                    index: 0,
                    retry_after,
                }
            }
        }
    }
}

impl Counters for FleetCounters {
    fn acquire(&self, charges: &[Charge<'_>], now: Duration) -> Admission {
        if charges.iter().all(|c| c.scope == Scope::Pod) {
            return self.local.acquire(charges, now);
        }
        if let [c] = charges {
            return self.acquire_one(c, now);
        }
        let mut state = self.lock();
        let (connected, refresh) = (state.connected, state.refresh);
        // Check every distinct fleet bucket first: all or nothing.
        let mut verdicts: smallvec::SmallVec<[(usize, BucketAnswer); 4]> =
            smallvec::SmallVec::new();
        for (i, c) in charges.iter().enumerate() {
            if c.scope == Scope::Pod || charges[..i].iter().any(|p| same_bucket(p, c)) {
                continue;
            }
            if !state.buckets.contains_key(&ChargeKey(c)) {
                // A first call: the reporter asks for a lease at once.
                self.wake.notify_one();
                let key = LeaseKey::of(c);
                let born_after = state.report_seq;
                state
                    .buckets
                    .insert(key, LeaseBucket::new(c, now, born_after));
            }
            let Some(b) = state.buckets.get_mut(&ChargeKey(c)) else {
                continue;
            };
            // The newest policy's limit.
            b.max = c.max;
            b.window = c.window;
            b.on_unavailable = c.on_unavailable;
            b.last_hit = now;
            let v = Self::verdict(b, now, connected, refresh);
            if let BucketAnswer::Refused(retry_after) = v {
                b.denied += 1;
                b.hits += 1;
                if connected {
                    b.starved = true;
                    self.wake.notify_one();
                }
                return Admission::Refused {
                    index: i,
                    retry_after,
                };
            }
            verdicts.push((i, v));
        }
        // Then the pod-scoped ones, locally.
        let pods: smallvec::SmallVec<[(usize, Charge<'_>); 4]> = charges
            .iter()
            .enumerate()
            .filter(|(_, c)| c.scope == Scope::Pod)
            .map(|(i, c)| (i, *c))
            .collect();
        if !pods.is_empty() {
            let only: smallvec::SmallVec<[Charge<'_>; 4]> = pods.iter().map(|(_, c)| *c).collect();
            if let Admission::Refused { index, retry_after } = self.local.acquire(&only, now) {
                return Admission::Refused {
                    index: pods[index].0,
                    retry_after,
                };
            }
        }
        // Every limit admits: charge the fleet buckets.
        let mut dry = false;
        for (i, v) in verdicts {
            let c = &charges[i];
            let Some(b) = state.buckets.get_mut(&ChargeKey(c)) else {
                continue;
            };
            b.hits += 1;
            match v {
                BucketAnswer::Leased => {
                    b.admitted_total += 1;
                    b.leased_window.charge(now, b.window);
                    dry |= b.lease.is_some_and(|l| b.admitted_total >= l.granted_total);
                }
                BucketAnswer::Unleased => {
                    self.metrics.quota_unleased();
                    b.unleased_total += 1;
                    b.unleased_window.charge(now, b.window);
                }
                BucketAnswer::Refused(_) => {}
            }
        }
        if dry && connected {
            self.wake.notify_one();
        }
        Admission::Admitted
    }
}
