use super::*;

use proptest::prelude::*;

const fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

const fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

fn charge<'a>(
    counter: &'a Arc<str>,
    scope: Scope,
    key: &'a str,
    window: Duration,
    max: u64,
) -> Charge<'a> {
    Charge {
        counter,
        server: "s",
        scope,
        key,
        window,
        max,
        on_unavailable: OnUnavailable::Fallback,
    }
}

/// `check` then `charge`, as a store does for one limit.
fn admit(w: &mut SlidingWindow, now: Duration, window: Duration, max: u64) -> Option<Duration> {
    let refused = w.check(now, window, max);
    if refused.is_none() {
        w.charge(now, window);
    }
    refused
}

// ---- SlidingWindow ----------------------------------------------------------

#[test]
fn a_burst_at_one_instant_waits_exactly_one_window() {
    let mut w = SlidingWindow::default();
    for i in 0..5 {
        assert_eq!(admit(&mut w, secs(10), secs(60), 5), None, "call {i}");
    }
    assert_eq!(w.count(secs(10), secs(60)), 5);
    assert_eq!(w.check(secs(10), secs(60), 5), Some(secs(60)));
    assert_eq!(w.check(secs(40), secs(60), 5), Some(secs(30)));
    assert_eq!(w.check(secs(70) - ms(1), secs(60), 5), Some(ms(1)));
    // At the retry time every one of them has left the window.
    assert_eq!(w.check(secs(70), secs(60), 5), None);
    assert_eq!(w.count(secs(70), secs(60)), 0);
}

#[test]
fn retry_after_points_at_the_call_whose_expiry_frees_room() {
    // Window 64 s: slots of exactly 1 s.
    let window = secs(64);
    let mut w = SlidingWindow::default();
    for at in [0, 1_000, 2_000, 3_000] {
        assert_eq!(admit(&mut w, ms(at), window, 4), None);
    }
    // One more at 10 s waits for the call at 0 s to leave (at 64 s).
    assert_eq!(w.check(secs(10), window, 4), Some(secs(54)));
    // With a max of 2, two must leave: the second one leaves at 65 s.
    assert_eq!(w.check(secs(10), window, 3), Some(secs(55)));
    assert_eq!(w.check(secs(10), window, 2), Some(secs(56)));
}

#[test]
fn calls_expire_when_the_window_has_passed_them() {
    let window = secs(60);
    let mut w = SlidingWindow::default();
    w.charge(secs(0), window);
    w.charge(secs(30), window);
    assert_eq!(w.count(secs(59), window), 2);
    // The window is (now - 60 s, now]: a call exactly 60 s old is out.
    assert_eq!(w.count(secs(60), window), 1);
    assert!(!w.is_idle(secs(60), window));
    assert_eq!(w.count(secs(90) - ms(1), window), 1);
    assert_eq!(w.count(secs(90), window), 0);
    assert!(w.is_idle(secs(90), window));
}

#[test]
fn a_slot_is_counted_until_its_latest_call_leaves() {
    // Slots of 1 s: calls at 0 ms and 999 ms share one, which is kept until
    // 64.999 s, so a call may be refused up to one slot early (never late).
    let window = secs(64);
    let mut w = SlidingWindow::default();
    assert_eq!(admit(&mut w, ms(0), window, 2), None);
    assert_eq!(admit(&mut w, ms(999), window, 2), None);
    assert_eq!(w.check(ms(64_500), window, 2), Some(ms(499)));
    assert_eq!(w.check(ms(64_999), window, 2), None);
}

#[test]
fn memory_is_bounded_by_the_slot_count() {
    let window = secs(60);
    let mut w = SlidingWindow::default();
    for i in 0..10_000 {
        assert_eq!(admit(&mut w, ms(i * 7), window, u64::MAX), None);
    }
    assert!(w.slots.len() as u64 <= SLOTS + 1, "{} slots", w.slots.len());
    assert_eq!(w.total, w.slots.iter().map(|s| s.count).sum::<u64>());
}

// ---- LocalCounters ----------------------------------------------------------

#[test]
fn buckets_are_keyed_by_counter_scope_and_key() {
    let store = LocalCounters::new();
    let c: Arc<str> = "c".into();
    let d: Arc<str> = "d".into();
    let window = secs(60);
    let g1 = charge(&c, Scope::Grant, "g1", window, 1);
    let g2 = charge(&c, Scope::Grant, "g2", window, 1);
    let s1 = charge(&c, Scope::Session, "g1", window, 1);
    let other = charge(&d, Scope::Grant, "g1", window, 1);
    for ch in [g1, g2, s1, other] {
        assert_eq!(store.acquire(&[ch], secs(1)), Admission::Admitted);
        assert_eq!(store.count(&ch, secs(1)), 1);
    }
    for ch in [g1, g2, s1, other] {
        assert_eq!(
            store.acquire(&[ch], secs(1)),
            Admission::Refused {
                index: 0,
                retry_after: secs(60)
            }
        );
        assert_eq!(store.count(&ch, secs(1)), 1);
    }
}

#[test]
fn a_bucket_named_twice_in_one_call_is_charged_once() {
    let store = LocalCounters::new();
    let c: Arc<str> = "c".into();
    let ch = charge(&c, Scope::Pod, "", secs(10), 2);
    assert_eq!(store.acquire(&[ch, ch], secs(0)), Admission::Admitted);
    assert_eq!(store.count(&ch, secs(0)), 1);
    assert_eq!(store.acquire(&[ch, ch, ch], secs(0)), Admission::Admitted);
    assert_eq!(store.count(&ch, secs(0)), 2);
    assert_eq!(
        store.acquire(&[ch, ch], secs(0)),
        Admission::Refused {
            index: 0,
            retry_after: secs(10)
        }
    );
}

#[test]
fn a_refusal_names_the_limit_and_charges_nothing() {
    let store = LocalCounters::new();
    let (a, b): (Arc<str>, Arc<str>) = ("a".into(), "b".into());
    let wide = charge(&a, Scope::Global, "", secs(60), 10);
    let narrow = charge(&b, Scope::Grant, "g", secs(60), 1);
    assert_eq!(store.acquire(&[narrow], secs(0)), Admission::Admitted);
    assert_eq!(
        store.acquire(&[wide, narrow], secs(5)),
        Admission::Refused {
            index: 1,
            retry_after: secs(55)
        }
    );
    assert_eq!(store.count(&wide, secs(5)), 0, "refused: nothing charged");
    assert_eq!(store.count(&narrow, secs(5)), 1);
    assert_eq!(
        store.acquire(&[wide, narrow], secs(60)),
        Admission::Admitted
    );
    assert_eq!(store.count(&wide, secs(60)), 1);
    assert_eq!(store.count(&narrow, secs(60)), 1);
}

#[test]
fn a_max_of_zero_refuses_without_a_bucket() {
    let store = LocalCounters::new();
    let c: Arc<str> = "c".into();
    let zero = charge(&c, Scope::Grant, "g", secs(30), 0);
    assert_eq!(
        store.acquire(&[zero], secs(0)),
        Admission::Refused {
            index: 0,
            retry_after: secs(30)
        }
    );
    assert_eq!(store.count(&zero, secs(0)), 0);
}

#[test]
fn sweep_forgets_idle_buckets() {
    let store = LocalCounters::new();
    let names: Vec<Arc<str>> = (0..40).map(|i| Arc::from(format!("c{i}"))).collect();
    for (i, name) in names.iter().enumerate() {
        let ch = charge(name, Scope::Grant, "g", secs(60), 5);
        assert_eq!(store.acquire(&[ch], secs(i as u64)), Admission::Admitted);
    }
    assert_eq!(store.sweep(secs(39)), 40);
    // At 70 s the calls made at 10 s and before have left every window.
    assert_eq!(store.sweep(secs(70)), 29);
    assert_eq!(store.sweep(secs(200)), 0);
    // A forgotten bucket starts afresh.
    let ch = charge(&names[0], Scope::Grant, "g", secs(60), 5);
    assert_eq!(store.count(&ch, secs(200)), 0);
}

#[test]
fn session_buckets_are_capped_and_grant_buckets_never_evicted() {
    let store = LocalCounters::with_session_cap(64);
    let c: Arc<str> = "c".into();
    let grant = charge(&c, Scope::Grant, "g", secs(60), 1);
    assert_eq!(store.acquire(&[grant], secs(0)), Admission::Admitted);
    let ids: Vec<String> = (0..10_000).map(|i| format!("s{i}")).collect();
    for id in &ids {
        let s = charge(&c, Scope::Session, id, secs(60), 1);
        assert_eq!(store.acquire(&[s], secs(1)), Admission::Admitted);
    }
    // At most 64 session buckets (4 a shard), and the grant's bucket.
    let kept = store.sweep(secs(2));
    assert!(kept <= 64 + 1, "{kept} buckets kept");
    assert_eq!(store.evicted(), 10_000 - (kept as u64 - 1));
    // The grant's limit still holds: its bucket was never evicted.
    assert!(matches!(
        store.acquire(&[grant], secs(3)),
        Admission::Refused { .. }
    ));
    // The newest session keeps its count.
    let last = charge(&c, Scope::Session, &ids[9_999], secs(60), 1);
    assert!(matches!(
        store.acquire(&[last], secs(3)),
        Admission::Refused { .. }
    ));
}

#[test]
fn a_full_shard_drops_idle_session_buckets_before_live_ones() {
    let store = LocalCounters::with_session_cap(16);
    let c: Arc<str> = "c".into();
    let ids: Vec<String> = (0..200).map(|i| format!("s{i}")).collect();
    for id in &ids {
        let s = charge(&c, Scope::Session, id, secs(1), 1);
        assert_eq!(store.acquire(&[s], secs(0)), Admission::Admitted);
    }
    let evicted = store.evicted();
    // A minute later every earlier bucket is idle: room is made by the sweep.
    for id in &ids {
        let s = charge(&c, Scope::Session, id, secs(1), 1);
        assert_eq!(store.acquire(&[s], secs(60)), Admission::Admitted);
    }
    assert!(
        store.evicted() - evicted < 200,
        "idle buckets were evicted as if live"
    );
}

// ---- properties -------------------------------------------------------------

/// Admitted calls in `(t - window, t]`, for each admitted `t`, at most.
fn busiest_window(admitted: &[Duration], window: Duration) -> usize {
    admitted
        .iter()
        .map(|&t| {
            admitted
                .iter()
                .filter(|&&a| a <= t && a + window > t)
                .count()
        })
        .max()
        .unwrap_or(0)
}

/// Non-decreasing arrival times from gaps in microseconds (so calls also
/// fall between the store's milliseconds).
fn arrivals(gaps: &[u64]) -> Vec<Duration> {
    gaps.iter()
        .scan(Duration::ZERO, |t, &gap| {
            *t += Duration::from_micros(gap);
            Some(*t)
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// No window of the limit's length ever holds more than `max` admitted calls.
    #[test]
    fn no_window_admits_more_than_max(
        window_ms in 1u64..5_000,
        max in 1u64..12,
        gaps in prop::collection::vec(
            prop_oneof![Just(0u64), 0u64..2_000, 0u64..200_000, 0u64..8_000_000],
            1..300,
        ),
    ) {
        let window = ms(window_ms);
        let store = LocalCounters::new();
        let c: Arc<str> = "c".into();
        let ch = charge(&c, Scope::Grant, "g", window, max);
        let mut admitted = Vec::new();
        for now in arrivals(&gaps) {
            if store.acquire(&[ch], now) == Admission::Admitted {
                admitted.push(now);
            }
        }
        let busiest = busiest_window(&admitted, window);
        prop_assert!(busiest as u64 <= max, "{} calls in one window of {:?}: {:?}", busiest, window, admitted);
    }

    /// A refused call is admitted at `now + retry_after`, and not a
    /// millisecond before, when nothing else happens in between.
    #[test]
    fn retry_after_is_exact(
        window_ms in 1u64..5_000,
        max in 1u64..12,
        gaps in prop::collection::vec(prop_oneof![Just(0u64), 0u64..2_000, 0u64..200_000], 1..200),
    ) {
        let window = ms(window_ms);
        let mut w = SlidingWindow::default();
        for now in arrivals(&gaps) {
            if let Some(retry) = admit(&mut w, now, window, max) {
                prop_assert!(retry >= ms(1));
                prop_assert!(retry <= window + ms(1), "{:?} for a window of {:?}", retry, window);
                let mut later = w.clone();
                prop_assert_eq!(later.check(now + retry, window, max), None);
                let mut sooner = w.clone();
                prop_assert!(sooner.check(now + retry - ms(1), window, max).is_some());
            }
        }
    }

    /// Two limits in one call: when one refuses, neither is charged; when both
    /// admit, each is charged once.
    #[test]
    fn all_or_nothing(
        windows in (1u64..3_000, 1u64..3_000),
        maxes in (1u64..6, 1u64..6),
        steps in prop::collection::vec((0u64..400_000, 0u8..3), 1..200),
    ) {
        let store = LocalCounters::new();
        let (a, b): (Arc<str>, Arc<str>) = ("a".into(), "b".into());
        let ca = charge(&a, Scope::Grant, "g", ms(windows.0), maxes.0);
        let cb = charge(&b, Scope::Session, "s", ms(windows.1), maxes.1);
        let mut now = Duration::ZERO;
        for (gap, which) in steps {
            now += Duration::from_micros(gap);
            // Calls on one bucket alone make the two diverge.
            let charges: &[Charge<'_>] = match which {
                0 => &[ca, cb],
                1 => &[ca],
                _ => &[cb],
            };
            let before = (store.count(&ca, now), store.count(&cb, now));
            let admission = store.acquire(charges, now);
            let after = (store.count(&ca, now), store.count(&cb, now));
            match admission {
                Admission::Refused { index, .. } => {
                    prop_assert!(index < charges.len());
                    prop_assert_eq!(after, before, "refused, yet charged");
                }
                Admission::Admitted => {
                    let charged_a = u64::from(which != 2);
                    let charged_b = u64::from(which != 1);
                    prop_assert_eq!(after, (before.0 + charged_a, before.1 + charged_b));
                }
            }
            prop_assert!(after.0 <= maxes.0 && after.1 <= maxes.1);
        }
    }
}
