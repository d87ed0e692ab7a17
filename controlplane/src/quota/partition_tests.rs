//! A partition counted call by call: three sidecars share a global limit;
//! two are busy, the third is cut off from the control plane (its stream
//! ends, the pod keeps running) and admits on fallback as its last lease
//! allows. Every call admitted anywhere — under a lease or on fallback — is
//! logged, and no trailing window may hold more than `max`.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

use super::{
    Allocator, AllocatorConfig, BucketKey, HeldLease, HolderKey, Lease, LimitSpec, Report,
};

const MAX: u64 = 30;
const WINDOW: Duration = Duration::from_secs(60);
const STEP: Duration = Duration::from_millis(250);

fn bucket() -> BucketKey {
    BucketKey {
        server: "files".to_owned(),
        counter: "writes".to_owned(),
        scope_key: String::new(),
    }
}

/// A sidecar as the quota stream runs it: takes each lease on receipt (no
/// delay here), admits under it until report + ttl, and on fallback once
/// the lease has ended while it is cut off.
struct Node {
    key: HolderKey,
    busy: bool,
    admitted: u64,
    unleased: u64,
    /// The lease it holds, when it received it, and when it ends.
    lease: Option<(Lease, Instant, Instant)>,
    /// Its fallback admissions, for its own per-window count.
    fallback_log: VecDeque<Instant>,
    /// Its admissions under leases, for the trailing-window count it
    /// reports to a control plane that first sees it.
    leased_log: VecDeque<Instant>,
    cut: bool,
}

impl Node {
    fn new(name: &str, busy: bool) -> Self {
        Self {
            key: HolderKey {
                node_id: name.to_owned(),
                epoch: 1,
            },
            busy,
            admitted: 0,
            unleased: 0,
            lease: None,
            fallback_log: VecDeque::new(),
            leased_log: VecDeque::new(),
            cut: false,
        }
    }

    fn held(&self, now: Instant) -> Option<Lease> {
        self.lease
            .filter(|(_, _, end)| now < *end)
            .map(|(lease, _, _)| lease)
    }

    fn report(&self, now: Instant) -> Report {
        Report {
            policy_version: 1,
            spec: LimitSpec {
                max: MAX,
                window: WINDOW,
            },
            admitted_total: self.admitted,
            unleased_total: self.unleased,
            denied: 0,
            held: self.held(now).map(|l| HeldLease {
                seq: l.seq,
                granted_total: l.granted_total,
            }),
            demand: if self.busy { MAX } else { 0 },
            standby: 1,
            window_admitted: self
                .leased_log
                .iter()
                .filter(|t| **t + WINDOW > now)
                .count() as u64,
        }
    }

    /// Whether its last lease lets it admit on fallback at `now`.
    fn may_fall_back(&self, now: Instant) -> Option<u64> {
        let (lease, received, end) = self.lease?;
        let from = received + lease.fallback_after;
        let until = end + lease.fallback_after + lease.fallback_for;
        (now >= from && now < until).then_some(lease.fallback)
    }

    /// Admits what it may at `now`, logging each call in `calls`.
    fn call(&mut self, now: Instant, calls: &mut Vec<Instant>) {
        if let Some(lease) = self.held(now) {
            if self.busy {
                while self.admitted < lease.granted_total {
                    self.admitted += 1;
                    self.leased_log.push_back(now);
                    calls.push(now);
                }
            }
            return;
        }
        if !self.cut {
            return;
        }
        while self
            .fallback_log
            .front()
            .is_some_and(|t| *t + WINDOW <= now)
        {
            self.fallback_log.pop_front();
        }
        let Some(cap) = self.may_fall_back(now) else {
            return;
        };
        while (self.fallback_log.len() as u64) < cap {
            self.fallback_log.push_back(now);
            self.unleased += 1;
            calls.push(now);
        }
    }
}

/// The most calls in any trailing window, and the window's end.
fn busiest_window(calls: &[Instant]) -> (usize, Instant) {
    let mut best = (0, calls.first().copied().unwrap_or_else(Instant::now));
    let mut start = 0;
    for (end, t) in calls.iter().enumerate() {
        while calls[start] + WINDOW <= *t {
            start += 1;
        }
        if end + 1 - start > best.0 {
            best = (end + 1 - start, *t);
        }
    }
    best
}

/// One step of the simulation at `now`: the third pod is cut off (and
/// turns busy) from 20 s after `start`; every pod admits what it may,
/// the connected ones report once a second, staggered, and admit again;
/// then the allocator ticks. Whether a lease was sent.
fn advance(
    alloc: &mut Allocator,
    nodes: &mut [Node; 3],
    start: Instant,
    now: Instant,
    step: u64,
    calls: &mut Vec<Instant>,
) -> bool {
    if now >= start + Duration::from_secs(20) && !nodes[2].cut {
        nodes[2].cut = true;
        nodes[2].busy = true;
        alloc.disconnect(&nodes[2].key);
    }
    for node in nodes.iter_mut() {
        node.call(now, calls);
    }
    let mut sent = false;
    for (i, node) in nodes.iter_mut().enumerate() {
        if node.cut || !(step + i as u64).is_multiple_of(4) {
            continue;
        }
        let report = node.report(now);
        let lease = alloc
            .report(now, &node.key, &bucket(), &report)
            .unwrap_or_else(|e| panic!("{e}"));
        node.lease = Some((lease, now, now + lease.ttl));
        sent = true;
    }
    for node in nodes.iter_mut() {
        node.call(now, calls);
    }
    alloc.tick(now);
    sent
}

#[test]
fn connected_and_partitioned_pods_never_exceed_max_in_a_window() {
    let start = Instant::now();
    let config = AllocatorConfig::default();
    let mut alloc = Allocator::resume(start, config, None);
    // Two busy pods spend the window; the third is idle, then cut off after
    // 20 s and calls on fallback for as long as its lease lets it.
    let mut nodes = [
        Node::new("pod-a", true),
        Node::new("pod-b", true),
        Node::new("pod-c", false),
    ];
    let mut calls = Vec::new();
    let mut now = start;
    let end = start + Duration::from_secs(900);
    let mut step = 0u64;
    while now < end {
        advance(&mut alloc, &mut nodes, start, now, step, &mut calls);
        alloc
            .check_invariant(now)
            .unwrap_or_else(|e| panic!("at {:?}: {e}", now - start));
        now += STEP;
        step += 1;
    }
    let fallback = nodes[2].unleased;
    let (most, at) = busiest_window(&calls);
    assert!(
        fallback > 0,
        "the partitioned pod admitted nothing on fallback"
    );
    assert!(
        most as u64 <= MAX,
        "{most} calls in the window ending {:?} after the start, over max {MAX} ({fallback} on fallback in all)",
        at - start
    );
}

#[test]
fn a_lease_bounds_its_fallback_in_rate_and_time() {
    let start = Instant::now();
    let config = AllocatorConfig::default();
    let mut alloc = Allocator::resume(start, config, None);
    let nodes = [Node::new("pod-a", true), Node::new("pod-b", false)];
    let mut lease = None;
    for node in &nodes {
        lease = Some(
            alloc
                .report(start, &node.key, &bucket(), &node.report(start))
                .unwrap_or_else(|e| panic!("{e}")),
        );
    }
    let lease = lease.unwrap_or_else(|| unreachable!("two reports"));
    // max ÷ the two holders; two lifetimes (ttl 10 s + grace 1 s) and the
    // window before it may start; the horizon after.
    assert_eq!(lease.fallback, MAX / 2);
    assert_eq!(lease.fallback_after, Duration::from_secs(22) + WINDOW);
    assert_eq!(lease.fallback_for, config.fallback_horizon);
}

#[test]
fn a_silent_holder_stays_reserved_until_its_fallback_is_out_of_every_window() {
    let start = Instant::now();
    let config = AllocatorConfig::default();
    let mut alloc = Allocator::resume(start, config, None);
    let c = Node::new("pod-c", false);
    let lease = alloc
        .report(start, &c.key, &bucket(), &c.report(start))
        .unwrap_or_else(|e| panic!("{e}"));
    alloc.disconnect(&c.key);
    let lifetime = Duration::from_secs(11);
    let from = start + lifetime;
    let until = start + lifetime + lease.fallback_after + lease.fallback_for + WINDOW;
    let second = Duration::from_secs(1);
    let reserved = |alloc: &mut Allocator, at: Instant| {
        alloc.tick(at);
        alloc
            .snapshot(at)
            .first()
            .map_or(0, |bucket| bucket.reserved)
    };
    // Its standing lease (one call) until it ends; then its whole
    // fallback capacity, until its fallback calls are out of every window.
    assert_eq!(reserved(&mut alloc, from - second), lease.granted_total);
    assert_eq!(reserved(&mut alloc, from + second), lease.fallback);
    assert_eq!(reserved(&mut alloc, until - second), lease.fallback);
    assert_eq!(reserved(&mut alloc, until + second), 0);
}

#[test]
fn a_control_plane_restarted_while_a_pod_is_cut_off_leaves_room_for_its_fallback() {
    // As above, but the control plane restarts 150 s in, while pod-c is cut
    // off and admitting on fallback; it never reports to the new one. The
    // new one knows the nodes served and when the last lease ended (its
    // data dir), nothing of pod-c's reservation.
    let start = Instant::now();
    let config = AllocatorConfig::default();
    let lifetime = config.lease_ttl + config.grace;
    let mut alloc = Allocator::resume(start, config, None);
    let mut nodes = [
        Node::new("pod-a", true),
        Node::new("pod-b", true),
        Node::new("pod-c", false),
    ];
    let restart = start + Duration::from_secs(150);
    let mut restarted = None;
    // When the last lease sent has ended: the marker.
    let mut leases_end = start;
    let mut calls = Vec::new();
    let mut fallback_before = 0;
    let mut now = start;
    let end = start + Duration::from_secs(900);
    let mut step = 0u64;
    while now < end {
        if now >= restart && restarted.is_none() {
            restarted = Some(now);
            fallback_before = nodes[2].unleased;
            alloc = Allocator::resume(now, config, Some(leases_end));
            alloc.await_nodes(
                nodes.iter().map(|n| n.key.node_id.clone()),
                now + Duration::from_secs(35),
            );
            alloc.await_fallback(leases_end);
        }
        if advance(&mut alloc, &mut nodes, start, now, step, &mut calls) {
            leases_end = leases_end.max(now + lifetime);
        }
        now += STEP;
        step += 1;
    }
    let restarted = restarted.unwrap_or_else(|| unreachable!("restarted at 150 s"));
    let after = calls.iter().filter(|t| **t >= restarted).count() as u64;
    let fallback_after = nodes[2].unleased - fallback_before;
    assert!(
        fallback_after > 0,
        "pod-c admitted nothing on fallback after the restart"
    );
    assert!(
        after > fallback_after,
        "the connected pods were never granted again after the restart"
    );
    let (most, at) = busiest_window(&calls);
    assert!(
        most as u64 <= MAX,
        "{most} calls in the window ending {:?} after the start, over max {MAX} ({fallback_after} on fallback after the restart)",
        at - start
    );
}

#[test]
fn a_node_silent_since_a_restart_is_waited_for_until_its_fallback_is_out_of_the_window() {
    let start = Instant::now();
    let config = AllocatorConfig::default();
    // The earlier control plane's last lease ended 30 s before the restart.
    let ended = start;
    let now = start + Duration::from_secs(30);
    let mut alloc = Allocator::resume(now, config, Some(ended));
    alloc.await_nodes(["pod-c".to_owned()], now + Duration::from_secs(35));
    alloc.await_fallback(ended);
    let lifetime = config.lease_ttl + config.grace;
    let until = ended + lifetime * 2 + WINDOW + config.fallback_horizon + WINDOW;
    let second = Duration::from_secs(1);
    let mut a = Node::new("pod-a", true);
    // pod-a reports every second from `from` to `at` (so it says which
    // lease it holds) and is answered at once: its last grant.
    let mut from = now;
    let mut granted = |alloc: &mut Allocator, at: Instant| {
        let mut total = 0;
        while from <= at {
            alloc.tick(from);
            let lease = alloc
                .report(from, &a.key, &bucket(), &a.report(from))
                .unwrap_or_else(|e| panic!("{e}"));
            a.lease = Some((lease, from, from + lease.ttl));
            total = lease.granted_total;
            from += second;
        }
        from = at + second;
        total
    };
    assert_eq!(granted(&mut alloc, now), 0);
    // Named once the first wait is over, and still waited for.
    let after_wait = now + Duration::from_secs(35);
    assert_eq!(alloc.give_up_waiting(after_wait), ["pod-c".to_owned()]);
    assert!(alloc.give_up_waiting(after_wait).is_empty());
    assert_eq!(granted(&mut alloc, after_wait), 0);
    assert!(alloc.may_fall_back(until - second).contains("pod-c"));
    assert_eq!(granted(&mut alloc, until - second), 0);
    assert!(alloc.snapshot(until - second).iter().all(|b| b.learning));
    // Its fallback calls are out of every window: granted again, and the
    // node may be forgotten.
    assert_eq!(granted(&mut alloc, until), MAX);
    assert!(!alloc.may_fall_back(until).contains("pod-c"));
}
