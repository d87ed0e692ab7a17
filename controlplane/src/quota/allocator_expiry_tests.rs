//! The allocator's expiry: leases that ran out unreported are charged and
//! refunded, a new epoch closes the old process, and ticks forget what is
//! past. Uses the model sidecar in `allocator_tests.rs`.

use super::super::QuotaError;
use super::tests::{LIFETIME, MAX, Sidecar, WINDOW, bucket, ms, ready, secs, view};

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
