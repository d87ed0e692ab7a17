//! The allocator after a start: learning what an earlier control plane's
//! leases allowed, and waiting for the nodes it served before granting.
//! Uses the model sidecar in `allocator_tests.rs`.

use tokio::time::Instant;

use super::super::{AllocatorConfig, Lease, LimitSpec, Report};
use super::Allocator;
use super::tests::{LIFETIME, MAX, Sidecar, WINDOW, bucket, leases_only, ms, ready, secs, view};

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
