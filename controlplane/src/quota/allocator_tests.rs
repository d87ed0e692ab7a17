use std::time::Duration;

use tokio::time::Instant;

use super::super::{
    AllocatorConfig, BucketKey, HeldLease, HolderKey, Lease, LimitSpec, QuotaError, Report,
};
use super::{Allocator, BucketView};

const MAX: u64 = 100;
const WINDOW: Duration = Duration::from_secs(60);
const SPEC: LimitSpec = LimitSpec {
    max: MAX,
    window: WINDOW,
};
/// The default ttl (10 s) + grace (1 s): a lease's accounting lifetime, and
/// the learning period.
const LIFETIME: Duration = Duration::from_secs(11);

const fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

const fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn bucket() -> BucketKey {
    BucketKey {
        server: "github".to_owned(),
        counter: "create_issue/limits/0".to_owned(),
        scope_key: String::new(),
    }
}

/// The default timing, without fallback (a zero horizon): these tests are
/// about leases; `partition_tests` covers fallback.
fn leases_only() -> AllocatorConfig {
    AllocatorConfig {
        fallback_horizon: Duration::ZERO,
        ..AllocatorConfig::default()
    }
}

/// An allocator past its learning period, and the time then.
fn ready() -> (Allocator, Instant) {
    let start = Instant::now();
    (Allocator::new(start, leases_only()), start + LIFETIME)
}

/// A sidecar process as the contract describes it: admits while under its
/// lease's total and before receipt + ttl; takes a lease with a greater seq.
#[derive(Debug, Clone)]
struct Sidecar {
    key: HolderKey,
    admitted: u64,
    unleased: u64,
    lease: Option<(Lease, Instant)>,
    last_seq: u64,
    spec: LimitSpec,
    version: u64,
    /// Its standing ask (calls with no call behind them).
    standby: u64,
}

impl Sidecar {
    fn new(node: &str, epoch: u64) -> Self {
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

    fn live(&self, now: Instant) -> Option<Lease> {
        self.lease
            .filter(|(l, at)| now < *at + l.ttl)
            .map(|(l, _)| l)
    }

    fn receive(&mut self, now: Instant, lease: Lease) {
        if lease.seq > self.last_seq {
            self.last_seq = lease.seq;
            self.lease = Some((lease, now));
        }
    }

    /// Admits up to `n` calls at `now`; returns how many it admitted.
    fn admit(&mut self, now: Instant, n: u64) -> u64 {
        let room = self
            .live(now)
            .map_or(0, |l| l.granted_total.saturating_sub(self.admitted));
        let took = room.min(n);
        self.admitted += took;
        took
    }

    fn report(&self, now: Instant, demand: u64) -> Report {
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
    fn sync(&mut self, alloc: &mut Allocator, now: Instant, demand: u64) -> Lease {
        let lease = self.send(alloc, now, demand);
        self.receive(now, lease);
        lease
    }

    /// Reports; the answer is left in flight.
    fn send(&self, alloc: &mut Allocator, now: Instant, demand: u64) -> Lease {
        let lease = alloc
            .report(now, &self.key, &bucket(), &self.report(now, demand))
            .expect("report accepted");
        alloc.check_invariant(now).expect("invariant");
        lease
    }

    /// Calls it may still admit under its lease.
    fn room(&self, now: Instant) -> u64 {
        self.live(now)
            .map_or(0, |l| l.granted_total.saturating_sub(self.admitted))
    }
}

fn view(alloc: &Allocator, now: Instant) -> BucketView {
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
fn an_expired_lease_is_charged_whole_then_refunded_once_its_holder_is_back() {
    let (mut alloc, start) = ready();
    let mut a = Sidecar::new("a", 1);
    let mut b = Sidecar::new("b", 1);
    assert_eq!(a.sync(&mut alloc, start, MAX).granted_total, MAX);
    a.admit(start, 30);
    // A's report from 9 s (30 admitted) is delayed past the expiry, and A
    // admits 10 more before its lease ends at 10 s.
    let late = a.report(start + secs(9), MAX);
    a.admit(start + secs(9) + ms(500), 10);
    assert_eq!(a.room(start + secs(10)), 0);

    // At 11 s the whole lease is charged: nothing is free.
    let expired = start + LIFETIME;
    alloc.tick(expired);
    alloc.check_invariant(expired).expect("invariant");
    let v = view(&alloc, expired);
    assert_eq!((v.consumed, v.reserved), (MAX, 0));
    assert!(v.holders[0].expired);
    assert_eq!(b.sync(&mut alloc, expired, 50).granted_total, 0);

    // The late report: no refund yet (A may have admitted after sending it).
    let now = expired + secs(1);
    let lease = alloc
        .report(now, &a.key, &bucket(), &late)
        .expect("accepted");
    alloc.check_invariant(now).expect("invariant");
    // The 30 it reports stay charged at the expiry; the other 70 move to
    // its reservation (A may have admitted more after sending), within which
    // it gets its fair share of what the window has left: 35 of 70.
    let v = view(&alloc, now);
    assert_eq!((v.consumed, v.reserved), (30, 70));
    assert_eq!(lease.granted_total, 30 + 35);
    a.receive(now, lease);
    assert_eq!(a.admit(now, 100), 25);

    // A report holding the new lease was sent after the expiry: 40 admitted
    // before it; now 65 in all, with the new lease.
    let now = now + secs(1);
    assert_eq!(a.sync(&mut alloc, now, 0).granted_total, 65);
    let v = view(&alloc, now);
    assert_eq!((v.consumed, v.reserved), (65, 0));
    assert_eq!(b.sync(&mut alloc, now, 100).granted_total, 35);
}

#[test]
fn an_expiry_charge_stays_in_the_window_as_long_as_the_last_call_it_covers() {
    let (mut alloc, start) = ready();
    let mut a = Sidecar::new("a", 1);
    let mut b = Sidecar::new("b", 1);
    b.sync(&mut alloc, start, 0);
    // A's lease takes the full grace to arrive, and A, cut off, spends it in
    // the last millisecond of its ttl: 1 ms before the allocator's expiry.
    let lease = a.send(&mut alloc, start, MAX);
    a.receive(start + secs(1), lease);
    let last = start + LIFETIME - ms(1);
    assert_eq!(a.admit(last, MAX), MAX);
    alloc.tick(start + LIFETIME);
    // Until that call has left B's trailing window, B gets nothing.
    let mut at = start + LIFETIME;
    while at < last + WINDOW {
        assert_eq!(
            b.sync(&mut alloc, at, MAX).granted_total,
            0,
            "at {:?}",
            at - start
        );
        at += secs(1);
    }
    assert_eq!(b.sync(&mut alloc, last + WINDOW, MAX).granted_total, 0);
    assert_eq!(
        b.sync(&mut alloc, last + WINDOW + ms(1), MAX).granted_total,
        MAX
    );
}

#[test]
fn calls_a_revived_holder_may_have_made_since_its_expiry_are_stamped_when_reported() {
    let (mut alloc, t0) = ready();
    let mut a = Sidecar::new("a", 1);
    assert_eq!(a.sync(&mut alloc, t0, 40).granted_total, 40);
    a.admit(t0, 10);
    // Silent past its expiry (11 s): the 40 are charged at 11 s. Back at
    // 12 s, it reports the 10 and gets a new lease, which it spends at once.
    let back = t0 + secs(12);
    assert_eq!(a.sync(&mut alloc, back, 40).granted_total, 50);
    assert_eq!(a.admit(back, 100), 40);
    // Its report after that lease ended (10 s from receipt) but before the
    // allocator's expiry of it holds no lease: those 40 calls may be new.
    let late = back + ms(10_500);
    assert!(a.live(late).is_none());
    a.sync(&mut alloc, late, 0);
    // When the first charge leaves the window, the 40 made at 12 s are still
    // in it: a newcomer gets only the rest.
    let mut b = Sidecar::new("b", 1);
    assert_eq!(
        b.sync(&mut alloc, t0 + LIFETIME + WINDOW + ms(500), MAX)
            .granted_total,
        60
    );
}

#[test]
fn counts_that_go_down_start_the_holder_again() {
    let (mut alloc, now) = ready();
    let mut a = Sidecar::new("a", 1);
    assert_eq!(a.sync(&mut alloc, now, 60).granted_total, 60);
    a.admit(now, 60);
    a.sync(&mut alloc, now + secs(1), 0);
    // The sidecar forgets the idle bucket and starts it again from 0, in the
    // same process: its new lease counts from 0, within what is left.
    a.admitted = 0;
    a.lease = None;
    a.last_seq = 0;
    assert_eq!(a.sync(&mut alloc, now + secs(30), 100).granted_total, 40);
    assert_eq!(a.admit(now + secs(30), 100), 40);
}

#[test]
fn a_new_epoch_closes_the_old_process_and_its_late_reports_are_refused() {
    let (mut alloc, mut now) = ready();
    let mut old = Sidecar::new("a", 7);
    assert_eq!(old.sync(&mut alloc, now, MAX).granted_total, MAX);
    old.admit(now, 20);
    now += secs(1);
    old.sync(&mut alloc, now, MAX);
    let late = old.report(now + ms(500), MAX);

    // The process restarts. What the old one held is charged now.
    now += secs(1);
    let mut new = Sidecar::new("a", 8);
    assert_eq!(new.sync(&mut alloc, now, MAX).granted_total, 0);
    let v = view(&alloc, now);
    assert_eq!((v.consumed, v.reserved), (MAX, 0));
    assert_eq!(v.holders.len(), 1);
    assert_eq!(v.holders[0].epoch, 8);

    let err = alloc
        .report(now + ms(1), &old.key, &bucket(), &late)
        .expect_err("refused");
    assert_eq!(
        err,
        QuotaError::ClosedEpoch {
            node_id: "a".to_owned(),
            epoch: 7
        }
    );
    // The window slides past the charge: the new process gets it all.
    assert_eq!(new.sync(&mut alloc, now + WINDOW, MAX).granted_total, MAX);
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
fn learning_renews_what_is_held_and_gives_new_holders_nothing() {
    // The previous allocator granted A up to 100; A admitted 40, all within
    // its window.
    let start = Instant::now();
    let mut alloc = Allocator::new(start, leases_only());
    assert!(alloc.is_learning(start));
    let mut a = Sidecar::new("a", 1);
    let held = Lease {
        seq: 7,
        granted_total: MAX,
        ttl: secs(10),
        refresh: secs(1),
        fallback: MAX,
        fallback_after: secs(82),
        fallback_for: secs(300),
    };
    a.receive(start, held);
    a.admit(start, 40);
    let mut report = a.report(start, MAX);
    report.window_admitted = 40;
    let lease = alloc
        .report(start, &a.key, &bucket(), &report)
        .expect("accepted");
    assert_eq!((lease.seq, lease.granted_total), (8, MAX));
    a.receive(start, lease);
    alloc.check_invariant(start).expect("invariant");

    let mut b = Sidecar::new("b", 1);
    assert_eq!(b.sync(&mut alloc, start + secs(1), 50).granted_total, 0);
    // A renews at the same total, however much it asks for.
    a.admit(start + secs(2), 60);
    assert_eq!(a.sync(&mut alloc, start + secs(2), 500).granted_total, MAX);
    let v = view(&alloc, start + secs(2));
    assert!(v.learning);
    assert_eq!((v.consumed, v.reserved), (MAX, 0));

    // Learning over: the window is full, so still nothing until it slides.
    let after = start + LIFETIME;
    assert!(!alloc.is_learning(after));
    assert_eq!(b.sync(&mut alloc, after, 50).granted_total, 0);
    assert_eq!(b.sync(&mut alloc, start + WINDOW, 50).granted_total, 40);
}

#[test]
fn learning_gives_a_holder_without_a_lease_nothing() {
    let start = Instant::now();
    let mut alloc = Allocator::new(start, leases_only());
    let mut a = Sidecar::new("a", 1);
    a.admitted = 12;
    let lease = a.sync(&mut alloc, start, 50);
    assert_eq!(lease.granted_total, 12);
    assert_eq!(a.room(start), 0);
    assert_eq!(a.sync(&mut alloc, start + LIFETIME, 50).granted_total, 62);
}

#[test]
fn learning_for_a_whole_window_holds_new_grants_that_long() {
    let start = Instant::now();
    let config = AllocatorConfig {
        learn_whole_window: true,
        ..leases_only()
    };
    let mut alloc = Allocator::new(start, config);
    let mut a = Sidecar::new("a", 1);
    assert_eq!(a.sync(&mut alloc, start + LIFETIME, 50).granted_total, 0);
    let end = start + LIFETIME + WINDOW;
    assert_eq!(a.sync(&mut alloc, end - ms(1), 50).granted_total, 0);
    assert_eq!(a.sync(&mut alloc, end, 50).granted_total, 50);
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
fn tick_forgets_expired_holders_and_idle_buckets_after_a_window() {
    let (mut alloc, now) = ready();
    let mut a = Sidecar::new("a", 1);
    a.sync(&mut alloc, now, 10);
    a.admit(now, 10);
    a.sync(&mut alloc, now + secs(1), 0);
    alloc.tick(now + secs(12));
    assert_eq!(view(&alloc, now + secs(12)).holders.len(), 1);
    alloc.tick(now + secs(12) + WINDOW);
    assert!(alloc.snapshot(now + secs(12) + WINDOW).is_empty());
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
fn a_holder_first_seen_after_learning_brings_its_windows_calls() {
    // A sidecar that came back only after learning ended: the 70 calls it made
    // in the window (under an earlier control plane's leases, or on fallback)
    // count, so nothing is granted against them.
    let (mut alloc, now) = ready();
    let a = Sidecar::new("a", 1);
    let mut report = a.report(now, 100);
    report.admitted_total = 40;
    report.unleased_total = 30;
    report.window_admitted = 70;
    let lease = alloc
        .report(now, &a.key, &bucket(), &report)
        .expect("accepted");
    alloc.check_invariant(now).expect("invariant");
    assert_eq!(lease.granted_total - report.admitted_total, 30);
    assert_eq!(view(&alloc, now).consumed, 70);
}

#[test]
fn without_leases_from_an_earlier_control_plane_nothing_is_relearned() {
    let now = Instant::now();
    let mut alloc = Allocator::resume(now, leases_only(), None);
    assert!(!alloc.is_learning(now));
    let mut a = Sidecar::new("a", 1);
    assert_eq!(a.sync(&mut alloc, now, 30).granted_total, 30);

    // Leases that end in 3 s: learning lasts exactly that long.
    let mut alloc = Allocator::resume(now, leases_only(), Some(now + secs(3)));
    let mut b = Sidecar::new("b", 1);
    assert!(alloc.is_learning(now + ms(2999)));
    assert_eq!(b.sync(&mut alloc, now, 30).granted_total, 0);
    assert!(!alloc.is_learning(now + secs(3)));
    assert_eq!(b.sync(&mut alloc, now + secs(3), 30).granted_total, 30);
}

/// A report of `n` calls admitted on fallback within the window.
fn on_fallback(s: &Sidecar, now: Instant, n: u64) -> Report {
    let mut report = s.report(now, 10);
    report.unleased_total = n;
    report.window_admitted = n;
    report
}

#[test]
fn after_a_restart_nothing_is_granted_until_every_node_served_before_has_reported() {
    // The earlier control plane's leases have ended, but its five nodes were
    // cut off from it and admitted 16 calls each on fallback: 80 of 50.
    let spec = LimitSpec {
        max: 50,
        window: secs(300),
    };
    let now = Instant::now();
    let mut alloc = Allocator::resume(now, leases_only(), None);
    let names = ["a", "b", "c", "d", "e"];
    alloc.await_nodes(names.map(str::to_owned), now + secs(35));
    assert!(alloc.is_learning(now));
    let mut fleet: Vec<Sidecar> = names.iter().map(|n| Sidecar::new(n, 7)).collect();
    for s in &mut fleet {
        s.spec = spec;
    }
    for (i, s) in fleet.iter().enumerate() {
        let at = now + ms(100 * i as u64);
        let lease = alloc
            .report(at, &s.key, &bucket(), &on_fallback(s, at, 16))
            .expect("accepted");
        // The fallback calls alone pass `max`; what the allocator adds must
        // be nothing.
        alloc.check_invariant(at).expect("invariant");
        assert_eq!(view(&alloc, at).reserved, 0);
        // Before the last one reported, the first ones would have been
        // granted from a window that looked 34 calls short of full.
        assert_eq!(
            lease.granted_total, 0,
            "{} was granted while others were silent",
            s.key.node_id
        );
    }
    assert!(!alloc.is_learning(now + secs(1)));
    assert_eq!(view(&alloc, now + secs(1)).consumed, 80);
    // Every node heard from, the window is over-full: still nothing.
    let at = now + secs(2);
    let lease = alloc
        .report(
            at,
            &fleet[0].key,
            &bucket(),
            &on_fallback(&fleet[0], at, 16),
        )
        .expect("accepted");
    assert_eq!(lease.granted_total, 0);
    assert!(alloc.give_up_waiting(at).is_empty());
}

#[test]
fn nodes_that_never_come_back_are_waited_for_until_the_deadline_only() {
    let now = Instant::now();
    let mut alloc = Allocator::resume(now, leases_only(), None);
    alloc.await_nodes(["gone".to_owned(), "also-gone".to_owned()], now + secs(35));
    let mut a = Sidecar::new("a", 1);
    assert_eq!(a.sync(&mut alloc, now, 30).granted_total, 0);
    assert!(alloc.give_up_waiting(now + ms(34_999)).is_empty());
    assert!(view(&alloc, now + ms(34_999)).learning);
    assert_eq!(a.sync(&mut alloc, now + ms(34_999), 30).granted_total, 0);
    // At the deadline granting resumes, and the silent nodes are named once.
    assert_eq!(
        alloc.give_up_waiting(now + secs(35)),
        ["also-gone".to_owned(), "gone".to_owned()]
    );
    assert!(alloc.give_up_waiting(now + secs(36)).is_empty());
    assert!(!view(&alloc, now + secs(35)).learning);
    assert_eq!(a.sync(&mut alloc, now + secs(35), 30).granted_total, 30);
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
