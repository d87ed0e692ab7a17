use std::time::{Duration, Instant};

use tollgate_policy::document::{OnUnavailable, Scope};
use tollgate_policy::{Admission, Counters};
use tollgate_proto::v1::{LeaseHeld, QuotaReport};

use super::super::wire;
use super::*;

const MIN: Duration = Duration::from_secs(60);

fn counter() -> Arc<str> {
    Arc::from("s:calls")
}

fn charge<'a>(
    counter: &'a Arc<str>,
    scope: Scope,
    max: u64,
    on_unavailable: OnUnavailable,
) -> Charge<'a> {
    Charge {
        counter,
        server: "s",
        scope,
        key: if scope == Scope::Global { "" } else { "agent" },
        window: MIN,
        max,
        on_unavailable,
    }
}

fn lease(seq: u64, granted_total: u64, ttl: Duration, fallback: u64) -> LeaseGrant {
    LeaseGrant {
        bucket: LeaseKey {
            server: "s".into(),
            counter: counter(),
            scope: Scope::Global,
            key: "".into(),
        },
        seq,
        granted_total,
        ttl,
        refresh: Some(Duration::from_secs(1)),
        fallback,
        // On fallback at once once it has ended, for a minute.
        fallback_after: Duration::ZERO,
        fallback_for: Duration::from_secs(60),
    }
}

fn answer(grants: Vec<LeaseGrant>) -> Leases {
    Leases {
        grants,
        answers_report: 1,
    }
}

/// The bundle's one fleet bucket: `s:calls`, global, 100 a minute.
fn global_bucket() -> FleetBucket {
    FleetBucket {
        server: "s".into(),
        counter: counter(),
        scope: Scope::Global,
        key: Arc::from(""),
        window: MIN,
        max: 100,
        on_unavailable: OnUnavailable::Fallback,
    }
}

fn admitted(c: &FleetCounters, charges: &[Charge<'_>], now: Duration) -> bool {
    c.acquire(charges, now) == Admission::Admitted
}

fn at(s: u64) -> Duration {
    Duration::from_secs(s)
}

/// The one report a sidecar with few buckets sends, as the control plane gets it.
fn one_report(fc: &FleetCounters, seq: u64, version: u64, now: Duration) -> QuotaReport {
    let mut reports = wire::reports(fc.report(version, now), seq, fc.epoch());
    assert_eq!(reports.len(), 1, "{reports:?}");
    fc.reported(seq);
    reports.remove(0)
}

#[test]
fn a_first_call_waits_for_a_lease_then_the_lease_bounds_admissions() {
    let fc = FleetCounters::new(Instant::now(), Arc::new(Metrics::new()));
    fc.stream_opened();
    let id = counter();
    let g = [charge(&id, Scope::Global, 100, OnUnavailable::Fallback)];
    // No lease yet while the stream is up: refused, and a report is due at once.
    assert!(!admitted(&fc, &g, at(1)));
    assert_eq!(fc.take(&answer(vec![lease(1, 2, at(10), 5)]), at(1)), 1);
    assert!(admitted(&fc, &g, at(2)));
    assert!(admitted(&fc, &g, at(2)));
    // Two granted, two used: the third waits for a larger lease (a renewal away).
    assert_eq!(
        fc.acquire(&g, at(2)),
        Admission::Refused {
            index: 0,
            retry_after: Duration::from_secs(1)
        }
    );
    assert_eq!(fc.take(&answer(vec![lease(2, 3, at(10), 5)]), at(2)), 1);
    assert!(admitted(&fc, &g, at(3)));
    let state = fc.lock();
    let b = state.buckets.values().next().unwrap();
    assert_eq!((b.admitted_total, b.unleased_total), (3, 0));
    assert_eq!(b.denied, 2);
}

#[test]
fn a_lease_runs_out_at_ttl_from_the_report_it_answers() {
    let fc = FleetCounters::new(Instant::now(), Arc::new(Metrics::new()));
    fc.stream_opened();
    let id = counter();
    let g = [charge(&id, Scope::Global, 100, OnUnavailable::Allow)];
    assert!(!admitted(&fc, &g, at(0)));
    // The report went out at 5 s; the lease lasts 10 s from then.
    fc.take(&answer(vec![lease(1, 50, at(10), 5)]), at(5));
    assert!(admitted(&fc, &g, at(14)));
    // Expired while the stream is still up: refused until renewed, whatever on_unavailable says.
    assert!(!admitted(&fc, &g, at(15)));
}

#[test]
fn stale_leases_on_one_stream_are_ignored_and_a_new_stream_starts_afresh() {
    let fc = FleetCounters::new(Instant::now(), Arc::new(Metrics::new()));
    fc.stream_opened();
    let id = counter();
    let g = [charge(&id, Scope::Global, 100, OnUnavailable::Fallback)];
    assert!(!admitted(&fc, &g, at(0)));
    assert_eq!(fc.take(&answer(vec![lease(5, 10, at(10), 5)]), at(0)), 1);
    // An older lease arriving late on the same stream changes nothing.
    assert_eq!(fc.take(&answer(vec![lease(4, 1, at(10), 5)]), at(0)), 0);
    assert_eq!(
        fc.lock()
            .buckets
            .values()
            .next()
            .unwrap()
            .lease
            .unwrap()
            .seq,
        5
    );
    // A new stream (a restarted control plane numbers from 1 again).
    fc.stream_closed();
    fc.stream_opened();
    assert_eq!(fc.take(&answer(vec![lease(1, 10, at(10), 5)]), at(1)), 1);
}

#[test]
fn unreachable_control_plane_follows_on_unavailable() {
    let id = counter();
    for (mode, expect_admitted) in [
        (OnUnavailable::Fallback, 3),
        (OnUnavailable::Deny, 0),
        (OnUnavailable::Allow, 10),
    ] {
        let fc = FleetCounters::new(Instant::now(), Arc::new(Metrics::new()));
        fc.stream_opened();
        let g = [charge(&id, Scope::Global, 100, mode)];
        assert!(!admitted(&fc, &g, at(0)));
        // Fallback capacity 3 per window; the lease has run out by 20 s.
        fc.take(&answer(vec![lease(1, 0, at(10), 3)]), at(0));
        fc.stream_closed();
        let n = (0..10).filter(|_| admitted(&fc, &g, at(20))).count();
        assert_eq!(n, expect_admitted, "{mode:?}");
        {
            let state = fc.lock();
            let b = state.buckets.values().next().unwrap();
            assert_eq!(b.unleased_total, expect_admitted as u64, "{mode:?}");
            assert_eq!(b.admitted_total, 0, "{mode:?}");
        }
        let report = one_report(&fc, 2, 1, at(20));
        assert_eq!(
            report.buckets[0].window_admitted, expect_admitted as u64,
            "{mode:?}: unleased calls are in the window count"
        );
        let metrics = fc.metrics.encode();
        let line = format!("tollgate_quota_unleased_admissions_total {expect_admitted}");
        assert!(metrics.contains(&line), "{mode:?}: {metrics}");
    }
}

#[test]
fn fallback_before_any_lease_admits_nothing() {
    // The control plane has reserved nothing for this sidecar.
    let fc = FleetCounters::new(Instant::now(), Arc::new(Metrics::new()));
    let id = counter();
    let g = [charge(&id, Scope::Global, 4, OnUnavailable::Fallback)];
    assert!(!admitted(&fc, &g, at(1)));
    assert!(!admitted(&fc, &g, at(62)));
}

#[test]
fn fallback_admits_only_over_the_span_its_newest_lease_names() {
    let fc = FleetCounters::new(Instant::now(), Arc::new(Metrics::new()));
    fc.stream_opened();
    let id = counter();
    let g = [charge(&id, Scope::Global, 100, OnUnavailable::Fallback)];
    assert!(!admitted(&fc, &g, at(0)));
    // Sent at 5 s, ended at 15 s; fallback from receipt + 30 s (35 s) until
    // its end + 30 s + 60 s (105 s), 2 calls per window.
    let mut l = lease(1, 0, at(10), 2);
    l.fallback_after = at(30);
    l.fallback_for = at(60);
    fc.take(&answer(vec![l]), at(5));
    fc.stream_closed();
    assert!(!admitted(&fc, &g, at(20)), "not yet reserved for it");
    assert_eq!(
        fc.acquire(&g, at(20)),
        Admission::Refused {
            index: 0,
            retry_after: at(15)
        },
        "refused until its fallback may start"
    );
    let n = (0..5).filter(|_| admitted(&fc, &g, at(35))).count();
    assert_eq!(n, 2, "its capacity per window");
    assert!(admitted(&fc, &g, at(100)), "a window later, again");
    assert!(!admitted(&fc, &g, at(105)), "past its horizon");
    assert!(!admitted(&fc, &g, at(200)));
}

#[test]
fn pod_limits_stay_local_and_a_call_is_charged_all_or_nothing() {
    let fc = FleetCounters::new(Instant::now(), Arc::new(Metrics::new()));
    fc.stream_opened();
    let id = counter();
    let pod_id: Arc<str> = Arc::from("s:pod");
    let both = [
        charge(&id, Scope::Global, 100, OnUnavailable::Fallback),
        charge(&pod_id, Scope::Pod, 1, OnUnavailable::Fallback),
    ];
    assert!(!admitted(&fc, &both, at(0)));
    fc.take(&answer(vec![lease(1, 10, at(10), 5)]), at(0));
    assert!(admitted(&fc, &both, at(1)));
    // The pod limit refuses the second: the fleet bucket is not charged for it.
    assert_eq!(
        fc.acquire(&both, at(1)),
        Admission::Refused {
            index: 1,
            retry_after: fc_retry(&fc, &both[1..], at(1))
        }
    );
    assert_eq!(fc.lock().buckets.values().next().unwrap().admitted_total, 1);
}

/// What the local store says for a pod charge (its retry_after).
fn fc_retry(fc: &FleetCounters, pod: &[Charge<'_>], now: Duration) -> Duration {
    match fc.local.acquire(pod, now) {
        Admission::Refused { retry_after, .. } => retry_after,
        Admission::Admitted => panic!("the pod limit should be spent"),
    }
}

#[test]
fn reports_carry_totals_the_held_lease_and_demand_and_forget_idle_buckets() {
    let fc = FleetCounters::new(Instant::now(), Arc::new(Metrics::new()));
    fc.stream_opened();
    let id = counter();
    let g = [charge(&id, Scope::Global, 100, OnUnavailable::Fallback)];
    let now = fc.now();
    assert!(!admitted(&fc, &g, now));
    fc.take(&answer(vec![lease(1, 5, at(10), 5)]), now);
    for _ in 0..3 {
        assert!(admitted(&fc, &g, now));
    }
    let report = one_report(&fc, 7, 42, now);
    let metrics = fc.metrics.encode();
    assert!(
        metrics.contains("tollgate_quota_lease_capacity 2"),
        "{metrics}"
    );
    assert_eq!(report.report_seq, 7);
    assert_eq!(report.epoch, fc.epoch());
    let b = &report.buckets[0];
    assert_eq!(b.policy_version, 42);
    assert_eq!((b.max, b.window_ms), (100, 60_000));
    assert_eq!((b.admitted_total, b.unleased_total, b.denied), (3, 0, 1));
    assert_eq!(
        b.held,
        Some(LeaseHeld {
            seq: 1,
            granted_total: 5
        })
    );
    assert_eq!(b.window_admitted, 3);
    // A call went unserved (the first): it asks for what can be spared.
    assert_eq!(b.demand, 100, "{b:?}");
    let id = b.bucket.as_ref().unwrap();
    assert_eq!(
        (id.server.as_str(), id.scope.as_str(), id.key.as_str()),
        ("s", "global", "")
    );
    // Quiet since: still reported while it holds a lease, with no demand.
    assert!(admitted(&fc, &g, now));
    let report = one_report(&fc, 8, 42, now + at(1));
    assert_eq!(report.buckets[0].demand, 10, "its recent rate");
    let report = one_report(&fc, 8, 42, now + at(1));
    assert_eq!(report.buckets.len(), 1);
    assert_eq!(report.buckets[0].demand, 0);
    assert_eq!(report.buckets[0].denied, 0);
    // Its lease over (11 s) but called within the window: still reported, holding nothing.
    let report = one_report(&fc, 9, 42, now + at(30));
    assert_eq!(report.buckets.len(), 1);
    assert_eq!(report.buckets[0].held, None);
    // No lease, no call for over a window: forgotten.
    let report = one_report(&fc, 10, 42, now + at(61));
    assert!(report.buckets.is_empty(), "{report:?}");
    assert!(fc.lock().buckets.is_empty());
}

#[test]
fn the_bundles_buckets_ask_for_a_standing_lease_before_any_call() {
    let fc = FleetCounters::new(Instant::now(), Arc::new(Metrics::new()));
    fc.stream_opened();
    let known = [global_bucket()];
    fc.stand_by(&known, "pod-1", at(0));
    let report = one_report(&fc, 1, 3, at(0));
    assert_eq!(report.buckets.len(), 1);
    assert_eq!(report.buckets[0].standby, 1, "one call, before any call");
    assert_eq!(report.buckets[0].demand, 0, "no call behind it");
    fc.take(&answer(vec![lease(1, 1, at(10), 5)]), at(0));
    // The first call finds the lease there.
    let id = counter();
    let g = [charge(&id, Scope::Global, 100, OnUnavailable::Fallback)];
    assert!(admitted(&fc, &g, at(1)));
    // Still listed long after, while the bundle names it; dropped once it does not.
    assert_eq!(one_report(&fc, 2, 3, at(500)).buckets.len(), 1);
    fc.stand_by(&[], "pod-1", at(500));
    assert!(one_report(&fc, 3, 3, at(600)).buckets.is_empty());

    // The node's own grant bucket (a bundle without grants) asks for all of it.
    let own = [FleetBucket {
        scope: Scope::Grant,
        key: Arc::from("pod-1"),
        ..known[0].clone()
    }];
    fc.stand_by(&own, "pod-1", at(600));
    assert_eq!(one_report(&fc, 4, 3, at(600)).buckets[0].standby, 100);
}

#[test]
fn a_lease_for_a_forgotten_bucket_is_not_applied_to_its_successor() {
    let fc = FleetCounters::new(Instant::now(), Arc::new(Metrics::new()));
    fc.stream_opened();
    let id = counter();
    let g = [charge(&id, Scope::Global, 100, OnUnavailable::Fallback)];
    assert!(!admitted(&fc, &g, at(0)));
    // Report 1 names the bucket; then the bucket goes idle and is forgotten.
    let _ = one_report(&fc, 1, 3, at(0));
    let _ = one_report(&fc, 2, 3, at(200));
    assert!(fc.lock().buckets.is_empty());
    // A call creates it again (its counts start from zero) …
    assert!(!admitted(&fc, &g, at(201)));
    // … and a lease answering report 1 (sized for the old counts) arrives late.
    let mut late = answer(vec![lease(9, 50, at(600), 5)]);
    late.answers_report = 1;
    assert_eq!(fc.take(&late, at(0)), 0, "a lease for the forgotten bucket");
    // A lease answering a report sent since is taken.
    let _ = one_report(&fc, 3, 3, at(201));
    let mut fresh = answer(vec![lease(10, 5, at(10), 5)]);
    fresh.answers_report = 3;
    assert_eq!(fc.take(&fresh, at(201)), 1);
    assert!(admitted(&fc, &g, at(202)));
}

#[test]
fn a_sidecar_that_spent_the_whole_window_itself_says_when_room_comes_back() {
    let fc = FleetCounters::new(Instant::now(), Arc::new(Metrics::new()));
    fc.stream_opened();
    let id = counter();
    let g = [charge(&id, Scope::Global, 3, OnUnavailable::Fallback)];
    assert!(!admitted(&fc, &g, at(0)));
    fc.take(&answer(vec![lease(1, 3, at(30), 3)]), at(0));
    for s in [1, 2, 3] {
        assert!(admitted(&fc, &g, at(s)));
    }
    match fc.acquire(&g, at(4)) {
        Admission::Refused { retry_after, .. } => {
            assert!(
                retry_after > at(50) && retry_after <= at(57),
                "{retry_after:?}"
            )
        }
        Admission::Admitted => panic!("over the lease"),
    }
}

#[test]
fn the_policy_version_sent_is_the_control_planes_number() {
    assert_eq!(policy_version("v7"), 7);
    assert_eq!(
        policy_version(&crate::control::client::version_label(42)),
        42
    );
    assert_eq!(policy_version("sha256:0123abcd"), 0);
}

#[test]
fn a_shared_bucket_idle_for_a_window_gives_its_standing_call_back() {
    let fc = FleetCounters::new(Instant::now(), Arc::new(Metrics::new()));
    fc.stream_opened();
    let known = [global_bucket()];
    fc.stand_by(&known, "pod-1", at(0));
    assert_eq!(one_report(&fc, 1, 3, at(30)).buckets[0].standby, 1);
    // A window without a call: no standing demand.
    fc.stand_by(&known, "pod-1", at(61));
    assert_eq!(one_report(&fc, 2, 3, at(61)).buckets[0].standby, 0);
    // Its own grant's bucket keeps asking for all of it.
    let own = [FleetBucket {
        scope: Scope::Grant,
        key: Arc::from("pod-1"),
        ..known[0].clone()
    }];
    fc.stand_by(&own, "pod-1", at(61));
    let report = one_report(&fc, 3, 3, at(500));
    let own_demand = report
        .buckets
        .iter()
        .find(|b| b.bucket.as_ref().is_some_and(|id| id.scope == "grant"))
        .map(|b| b.standby);
    assert_eq!(own_demand, Some(100));
}
