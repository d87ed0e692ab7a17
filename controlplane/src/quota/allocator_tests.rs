//! The allocator's leases and fair shares, against a model sidecar that
//! keeps the contract in the module docs. The model and helpers here serve
//! `allocator_expiry_tests.rs` (expiry, epochs) and
//! `allocator_restart_tests.rs` (learning, the wait after a restart) too.

use std::time::Duration;

use tokio::time::Instant;

use super::super::{
    AllocatorConfig, BucketKey, HeldLease, HolderKey, Lease, LimitSpec, QuotaError, Report,
};
use super::{Allocator, BucketView};

pub(super) const MAX: u64 = 100;
pub(super) const WINDOW: Duration = Duration::from_secs(60);
pub(super) const SPEC: LimitSpec = LimitSpec {
    max: MAX,
    window: WINDOW,
};
/// The default ttl (10 s) + grace (1 s): a lease's accounting lifetime, and
/// the learning period.
pub(super) const LIFETIME: Duration = Duration::from_secs(11);

pub(super) const fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

pub(super) const fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

pub(super) fn bucket() -> BucketKey {
    BucketKey {
        server: "github".to_owned(),
        counter: "create_issue/limits/0".to_owned(),
        scope_key: String::new(),
    }
}

/// The default timing, without fallback (a zero horizon): these tests are
/// about leases; `partition_tests` covers fallback.
pub(super) fn leases_only() -> AllocatorConfig {
    AllocatorConfig {
        fallback_horizon: Duration::ZERO,
        ..AllocatorConfig::default()
    }
}

/// An allocator past its learning period, and the time then.
pub(super) fn ready() -> (Allocator, Instant) {
    let start = Instant::now();
    (Allocator::new(start, leases_only()), start + LIFETIME)
}

/// A sidecar process as the contract describes it: admits while under its
/// lease's total and before receipt + ttl; takes a lease with a greater seq.
#[derive(Debug, Clone)]
pub(super) struct Sidecar {
    pub(super) key: HolderKey,
    pub(super) admitted: u64,
    pub(super) unleased: u64,
    pub(super) lease: Option<(Lease, Instant)>,
    pub(super) last_seq: u64,
    pub(super) spec: LimitSpec,
    pub(super) version: u64,
    /// Its standing ask (calls with no call behind them).
    pub(super) standby: u64,
}

impl Sidecar {
    pub(super) fn new(node: &str, epoch: u64) -> Self {
        Self {
            key: HolderKey {
                node_id: node.to_owned(),
                epoch,
            },
            admitted: 0,
            unleased: 0,
            lease: None,
            last_seq: 0,
            spec: SPEC,
            version: 1,
            standby: 0,
        }
    }

    pub(super) fn live(&self, now: Instant) -> Option<Lease> {
        self.lease
            .filter(|(l, at)| now < *at + l.ttl)
            .map(|(l, _)| l)
    }

    pub(super) fn receive(&mut self, now: Instant, lease: Lease) {
        if lease.seq > self.last_seq {
            self.last_seq = lease.seq;
            self.lease = Some((lease, now));
        }
    }

    /// Admits up to `n` calls at `now`; returns how many it admitted.
    pub(super) fn admit(&mut self, now: Instant, n: u64) -> u64 {
        let room = self
            .live(now)
            .map_or(0, |l| l.granted_total.saturating_sub(self.admitted));
        let took = room.min(n);
        self.admitted += took;
        took
    }

    pub(super) fn report(&self, now: Instant, demand: u64) -> Report {
        Report {
            policy_version: self.version,
            spec: self.spec,
            admitted_total: self.admitted,
            unleased_total: self.unleased,
            denied: 0,
            held: self.live(now).map(|l| HeldLease {
                seq: l.seq,
                granted_total: l.granted_total,
            }),
            demand,
            standby: self.standby,
            window_admitted: 0,
        }
    }

    /// Reports and takes the answer at once.
    pub(super) fn sync(&mut self, alloc: &mut Allocator, now: Instant, demand: u64) -> Lease {
        let lease = self.send(alloc, now, demand);
        self.receive(now, lease);
        lease
    }

    /// Reports; the answer is left in flight.
    pub(super) fn send(&self, alloc: &mut Allocator, now: Instant, demand: u64) -> Lease {
        let lease = alloc
            .report(now, &self.key, &bucket(), &self.report(now, demand))
            .expect("report accepted");
        alloc.check_invariant(now).expect("invariant");
        lease
    }

    /// Calls it may still admit under its lease.
    pub(super) fn room(&self, now: Instant) -> u64 {
        self.live(now)
            .map_or(0, |l| l.granted_total.saturating_sub(self.admitted))
    }
}

pub(super) fn view(alloc: &Allocator, now: Instant) -> BucketView {
    alloc.snapshot(now).into_iter().next().expect("one bucket")
}

#[test]
fn a_first_holder_is_served_at_once_up_to_its_demand() {
    let (mut alloc, now) = ready();
    let mut a = Sidecar::new("a", 1);
    let lease = a.sync(&mut alloc, now, 30);
    assert_eq!(lease.granted_total, 30);
    assert_eq!(lease.ttl, secs(10));
    assert_eq!(lease.refresh, secs(1));
    assert_eq!(lease.fallback, 0, "a zero horizon: no fallback");
    assert_eq!(a.admit(now, 50), 30);
    // More demand than the limit: all of what the window has left.
    let lease = a.sync(&mut alloc, now + secs(1), 500);
    assert_eq!(lease.granted_total, MAX);
    assert!(lease.seq > 1);
}

#[test]
fn the_ttl_is_capped_at_the_window() {
    let (mut alloc, now) = ready();
    let mut a = Sidecar::new("a", 1);
    a.spec.window = secs(2);
    assert_eq!(a.sync(&mut alloc, now, 1).ttl, secs(2));
}

#[test]
fn a_holder_that_shrinks_frees_nothing_until_it_acknowledges() {
    let (mut alloc, mut now) = ready();
    let mut a = Sidecar::new("a", 1);
    let mut b = Sidecar::new("b", 1);
    assert_eq!(a.sync(&mut alloc, now, MAX).granted_total, MAX);
    // B arrives: everything is reserved by A.
    now += ms(100);
    assert_eq!(b.sync(&mut alloc, now, MAX).granted_total, 0);
    // A renews: its fair share is half. The smaller lease is in flight, and
    // A keeps admitting under the one it holds.
    now += ms(100);
    let shrunk = a.send(&mut alloc, now, MAX);
    assert_eq!(shrunk.granted_total, MAX / 2);
    assert_eq!(a.admit(now, 80), 80);
    // Until A says it holds the smaller lease, B gets nothing.
    now += ms(100);
    assert_eq!(b.sync(&mut alloc, now, MAX).granted_total, 0);
    assert_eq!(view(&alloc, now).reserved, MAX);
    // A receives it (it has already passed its total) and reports.
    a.receive(now, shrunk);
    assert_eq!(a.admit(now, 1), 0);
    now += ms(100);
    a.sync(&mut alloc, now, 0);
    // 80 consumed, A at its total and idle: B may have the other 20.
    now += ms(100);
    assert_eq!(b.sync(&mut alloc, now, MAX).granted_total, 20);
    assert_eq!(b.admit(now, 100), 20);
    assert_eq!(a.admitted + b.admitted, MAX);
}

#[test]
fn two_hot_holders_share_the_window_evenly() {
    let (mut alloc, start) = ready();
    let mut a = Sidecar::new("a", 1);
    let mut b = Sidecar::new("b", 1);
    // In the first window A asks first and, B's demand unknown yet, takes
    // it all; from then on what the window frees is split between both.
    let mut per_window = [[0u64; 2]; 4];
    for tick in 0..240u64 {
        let now = start + secs(tick) + ms(20);
        for (i, s) in [&mut a, &mut b].into_iter().enumerate() {
            let at = now + ms(300 * i as u64);
            s.sync(&mut alloc, at, 1_000);
            per_window[(tick / 60) as usize][i] += s.admit(at, u64::MAX);
        }
    }
    for (w, [x, y]) in per_window.iter().enumerate().skip(1) {
        assert!(x + y <= MAX, "window {w}: {x} + {y}");
        assert!(x + y >= MAX * 95 / 100, "window {w}: {x} + {y}");
        assert!(
            (40..=60).contains(x) && (40..=60).contains(y),
            "window {w}: {x} / {y}"
        );
    }
}

#[test]
fn an_idle_holder_is_reclaimed_at_its_next_renewal() {
    let (mut alloc, mut now) = ready();
    let mut a = Sidecar::new("a", 1);
    let mut b = Sidecar::new("b", 1);
    assert_eq!(a.sync(&mut alloc, now, 70).granted_total, 70);
    assert_eq!(a.admit(now, 10), 10);
    now += secs(1);
    assert_eq!(b.sync(&mut alloc, now, 80).granted_total, 30);
    // A goes idle: its renewal covers what it admitted and nothing more.
    now += secs(1);
    assert_eq!(a.sync(&mut alloc, now, 0).granted_total, 10);
    assert_eq!(a.room(now), 0);
    // Its reservation drops when it says it holds the smaller lease.
    now += ms(500);
    a.sync(&mut alloc, now, 0);
    now += ms(500);
    // B gets the rest of the window (its 30 were unused: 90 left of 100).
    assert_eq!(b.sync(&mut alloc, now, 200).granted_total, 90);
}

#[test]
fn capacity_returns_as_the_window_slides() {
    let (mut alloc, start) = ready();
    let mut a = Sidecar::new("a", 1);
    a.sync(&mut alloc, start, MAX);
    a.admit(start, 60);
    a.sync(&mut alloc, start + secs(1), MAX);
    a.admit(start + secs(1), 40);
    let reported = start + secs(2);
    assert_eq!(a.sync(&mut alloc, reported, MAX).granted_total, MAX);
    // The 60 were stamped at their report (1 s), the 40 at 2 s.
    let first = start + secs(1);
    assert_eq!(
        a.sync(&mut alloc, first + WINDOW - ms(1), MAX)
            .granted_total,
        MAX
    );
    assert_eq!(
        a.sync(&mut alloc, first + WINDOW, MAX).granted_total,
        MAX + 60
    );
    assert_eq!(
        a.sync(&mut alloc, reported + WINDOW, MAX).granted_total,
        2 * MAX
    );
}

#[test]
fn a_smaller_max_grants_nothing_until_the_sum_is_under_it() {
    let (mut alloc, mut now) = ready();
    let mut a = Sidecar::new("a", 1);
    let mut b = Sidecar::new("b", 1);
    a.sync(&mut alloc, now, 50);
    b.sync(&mut alloc, now, 50);
    a.admit(now, 30);
    b.admit(now, 30);
    // Version 2 halves the limit: 60 consumed, 40 reserved, max 50.
    for s in [&mut a, &mut b] {
        s.version = 2;
        s.spec.max = 50;
    }
    now += secs(1);
    let shrunk = now;
    assert_eq!(a.sync(&mut alloc, now, 50).granted_total, 30);
    assert_eq!(b.sync(&mut alloc, now, 50).granted_total, 30);
    let v = view(&alloc, now);
    assert_eq!((v.max, v.policy_version), (50, 2));
    // A sidecar still on version 1 does not bring the old limit back.
    let mut stale = Sidecar::new("c", 1);
    assert_eq!(stale.sync(&mut alloc, now + ms(1), 50).granted_total, 0);
    assert_eq!(view(&alloc, now).max, 50);
    alloc.disconnect(&stale.key);
    // Renewals grant nothing new while the 60 (stamped at `shrunk`) are in
    // the window; then 50 is free again, shared.
    while now + secs(5) < shrunk + WINDOW {
        now += secs(5);
        assert_eq!(a.sync(&mut alloc, now, 50).granted_total, 30);
        assert_eq!(b.sync(&mut alloc, now, 50).granted_total, 30);
    }
    now = shrunk + WINDOW;
    assert_eq!(a.sync(&mut alloc, now, 50).granted_total, 30 + 25);
    assert_eq!(b.sync(&mut alloc, now, 50).granted_total, 30 + 25);
    assert_eq!(a.admit(now, 50) + b.admit(now, 50), 50);
}

#[test]
fn a_disconnected_holder_keeps_its_reservation_until_expiry_but_not_its_share() {
    let (mut alloc, now) = ready();
    let mut a = Sidecar::new("a", 1);
    let mut b = Sidecar::new("b", 1);
    assert_eq!(a.sync(&mut alloc, now, 60).granted_total, 60);
    alloc.disconnect(&a.key);
    assert_eq!(b.sync(&mut alloc, now + secs(1), 100).granted_total, 40);
    // Expired unused: charged whole until A comes back or the window slides.
    let later = now + LIFETIME;
    alloc.tick(later);
    let v = view(&alloc, later);
    assert_eq!((v.consumed, v.reserved), (60, 40));
    let mut at = later;
    while at < later + WINDOW {
        assert_eq!(b.sync(&mut alloc, at, 100).granted_total, 40);
        at += secs(5);
    }
    assert_eq!(b.sync(&mut alloc, at, 100).granted_total, 100);
}

#[test]
fn unleased_calls_count_against_grants() {
    let (mut alloc, now) = ready();
    let mut a = Sidecar::new("a", 1);
    a.sync(&mut alloc, now, 0);
    a.unleased = 70;
    assert_eq!(a.sync(&mut alloc, now + secs(1), 100).granted_total, 30);
    let v = view(&alloc, now + secs(1));
    assert_eq!((v.consumed, v.unleased), (70, 70));
}

#[test]
fn a_zero_window_is_refused() {
    let (mut alloc, now) = ready();
    let mut a = Sidecar::new("a", 1);
    a.spec.window = Duration::ZERO;
    let err = alloc
        .report(now, &a.key, &bucket(), &a.report(now, 1))
        .expect_err("refused");
    assert!(matches!(err, QuotaError::ZeroWindow { .. }));
}

#[test]
fn fair_shares_fill_small_demands_first() {
    let (mut alloc, now) = ready();
    let mut nodes: Vec<Sidecar> = ["a", "b", "c"].iter().map(|n| Sidecar::new(n, 1)).collect();
    // Register demands without granting: all three report idle first.
    for s in &mut nodes {
        s.sync(&mut alloc, now, 0);
    }
    let demands = [10, 60, 60];
    let mut granted = Vec::new();
    for (s, d) in nodes.iter_mut().zip(demands) {
        granted.push(s.sync(&mut alloc, now + ms(1), d).granted_total);
    }
    // Only the reporter's demand is fresh: a gets 10 (its demand), b sees
    // a's 10 and c idle, so 60; c gets the remaining 30 (its fair share of
    // 90 would be 45, but b's reservation leaves 30).
    assert_eq!(granted, [10, 60, 30]);
    // On renewal b is cut to its fair share (45), and once acknowledged c
    // gets its 45.
    nodes[1].sync(&mut alloc, now + ms(2), 60);
    nodes[1].sync(&mut alloc, now + ms(3), 60);
    assert_eq!(nodes[2].sync(&mut alloc, now + ms(4), 60).granted_total, 45);
}

#[test]
fn a_standby_ask_is_served_from_spare_capacity() {
    let (mut alloc, now) = ready();
    let mut idle = Sidecar::new("idle", 1);
    idle.standby = 1;
    assert_eq!(idle.sync(&mut alloc, now, 0).granted_total, 1);
    // Its first call finds the lease there.
    assert_eq!(idle.admit(now, 1), 1);
}

/// One holder calling far more than `MAX` a window among `idle` holders
/// that each ask for a standing call, all reporting every second for four
/// windows: what the busy one is admitted per window after the first.
fn one_busy_among(idle: usize) -> Vec<u64> {
    let (mut alloc, start) = ready();
    let mut idlers: Vec<Sidecar> = (0..idle)
        .map(|i| {
            let mut s = Sidecar::new(&format!("idle-{i:04}"), 1);
            s.standby = 1;
            s
        })
        .collect();
    // The idle ones first: uncontended, the first MAX of them get their call.
    for s in &mut idlers {
        s.sync(&mut alloc, start, 0);
    }
    let standing: u64 = idlers.iter().map(|s| s.room(start)).sum();
    assert_eq!(
        standing,
        MAX.min(idle as u64),
        "standby from spare capacity"
    );
    let mut busy = Sidecar::new("busy", 1);
    let mut per_window = vec![0u64; 4];
    for tick in 0..240u64 {
        let now = start + secs(tick) + ms(10);
        for (i, s) in idlers.iter_mut().enumerate() {
            s.sync(&mut alloc, now + ms(i as u64 % 900), 0);
        }
        let at = now + ms(950);
        busy.sync(&mut alloc, at, 1_000);
        per_window[(tick / 60) as usize] += busy.admit(at, u64::MAX);
    }
    per_window
}

#[test]
fn one_busy_holder_among_idle_ones_is_admitted_the_whole_limit_after_the_first_seconds() {
    for idle in [1, 23, 200] {
        let per_window = one_busy_among(idle);
        // From the first window on, idle holders give their standing calls
        // back within two renewals of the busy one's demand.
        assert!(
            per_window[0] >= MAX * 95 / 100,
            "{idle} idle: {per_window:?}"
        );
        for (w, n) in per_window.iter().enumerate() {
            assert!(*n <= MAX, "{idle} idle, window {w}: {n}");
            assert!(*n >= MAX * 95 / 100, "{idle} idle, window {w}: {n}");
        }
    }
}

#[test]
fn a_report_cannot_widen_its_lease_nor_ask_for_more_than_max() {
    let (mut alloc, mut now) = ready();
    let mut a = Sidecar::new("a", 1);
    let mut b = Sidecar::new("b", 1);
    assert_eq!(a.sync(&mut alloc, now, MAX / 2).granted_total, MAX / 2);
    now += ms(100);
    assert_eq!(b.sync(&mut alloc, now, MAX / 2).granted_total, MAX / 2);
    // A says the lease it was sent allows a million calls.
    now += ms(100);
    let mut forged = a.report(now, u64::MAX);
    forged.held = forged.held.map(|h| HeldLease {
        granted_total: 1_000_000,
        ..h
    });
    alloc
        .report(now, &a.key, &bucket(), &forged)
        .expect("accounted");
    alloc.check_invariant(now).expect("the limit holds");
    let v = view(&alloc, now);
    assert_eq!(v.reserved, MAX, "{v:?}");
    assert_eq!(v.holders[0].demand, MAX, "a demand above max counts as max");
    // Nor does a lease it was never sent.
    now += ms(100);
    forged.held = Some(HeldLease {
        seq: 9_999,
        granted_total: 1_000_000,
    });
    alloc
        .report(now, &a.key, &bucket(), &forged)
        .expect("accounted");
    alloc.check_invariant(now).expect("the limit holds");
    assert!(view(&alloc, now).reserved <= MAX);
}
