//! Longer than 500 lines: one simulation. The simulated sidecars, network
//! and control-plane restarts are a single state machine (`Sim`) that every
//! property here drives; its parts are only read together.
//!
//! The allocator driven by simulated sidecars that keep the contract in the
//! module docs (cumulative leases, seqs per stream, reports in order), over
//! a network that delays and drops leases, with partitions, sidecar restarts
//! and control-plane restarts. Checked after every step: the allocator's own
//! invariant, and, from the log of every admission, that no trailing window
//! holds more than `max` calls admitted under leases.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashSet, VecDeque};
use std::time::Duration;

use proptest::prelude::*;
use tokio::time::Instant;

use super::{
    Allocator, AllocatorConfig, BucketKey, HeldLease, HolderKey, Lease, LimitSpec, QuotaError,
    Report,
};

/// SplitMix64: the simulation's fine-grained randomness, seeded by proptest.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..=n`.
    fn upto(&mut self, n: u64) -> u64 {
        self.next() % (n + 1)
    }

    fn chance(&mut self, per_mille: u64) -> bool {
        self.next() % 1000 < per_mille
    }
}

/// Times are milliseconds since the simulation's start.
#[derive(Debug, Clone)]
struct Params {
    max: u64,
    window: u64,
    ttl: u64,
    refresh: u64,
    grace: u64,
    /// Leases lost, per mille.
    loss: u64,
    /// A lease's ttl runs from the sending of the report it answers (the
    /// quota stream's rule), and leases may take any time. Otherwise it runs
    /// from receipt, and leases must arrive within `grace`.
    ttl_from_report: bool,
    /// The longest a lease takes; half of them take that long.
    lease_delay: u64,
    /// The longest a report takes (beyond `grace` in strict mode: the
    /// allocator assumes nothing about reports).
    report_delay: u64,
    /// `learn_whole_window`: sidecars may restart or be cut off at any time.
    /// Without it, as the module docs require, every sidecar reports before
    /// learning ends: partitions heal at a control-plane restart, none starts
    /// while learning, and sidecar processes never end.
    strict: bool,
    seed: u64,
    /// Calls per second each node attempts.
    rates: Vec<u32>,
}

#[derive(Debug, Clone)]
enum Op {
    Run(u64),
    RestartControlPlane,
    RestartSidecar(usize),
    /// Cuts a node off for a while: at once, or (`true`) the moment its
    /// next lease arrives, when no other lease is in flight to it.
    Partition(usize, u64, bool),
    SetRate(usize, u32),
    /// The sidecar forgets the bucket and starts its counts again, as it
    /// does with an idle one: no live lease, nothing in its window.
    Forget(usize),
}

#[derive(Debug)]
enum Event {
    Call(usize),
    /// A last-moment sidecar spends what is left of lease `seq`.
    Spend(usize, u64),
    /// The periodic report.
    Report(usize),
    Connect(usize),
    ReportArrives {
        node: usize,
        stream: u64,
        sent_at: u64,
        generation: u64,
        holder: HolderKey,
        report: Report,
    },
    LeaseArrives {
        node: usize,
        stream: u64,
        /// When the report it answers was sent.
        report_sent: u64,
        lease: Lease,
    },
    Tick,
}

/// An event at a time; the heap pops the earliest, ties in schedule order.
#[derive(Debug)]
struct Scheduled {
    at: u64,
    id: u64,
    event: Event,
}

impl PartialEq for Scheduled {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.id) == (other.at, other.id)
    }
}

impl Eq for Scheduled {}

impl PartialOrd for Scheduled {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Scheduled {
    fn cmp(&self, other: &Self) -> Ordering {
        (other.at, other.id).cmp(&(self.at, self.id))
    }
}

#[derive(Debug, Clone, Copy)]
struct HeldSim {
    seq: u64,
    granted_total: u64,
    until: u64,
}

/// One node: the sidecar process running on it now.
#[derive(Debug)]
struct Sidecar {
    key: HolderKey,
    admitted: u64,
    unleased: u64,
    denied: u64,
    lease: Option<HeldSim>,
    stream: Option<u64>,
    /// The last seq taken on the current stream.
    last_seq: u64,
    /// When it last started its counts (process start, or a forgotten
    /// bucket started again): it takes no lease answering an older report.
    counts_since: u64,
    fallback: u64,
    fallback_log: VecDeque<u64>,
    /// Its own admissions under leases in the trailing window.
    leased_log: VecDeque<u64>,
    rate: u32,
    /// Spends what is left of each lease just before it ends: the worst
    /// moment the contract allows.
    last_moment: bool,
    /// Cut off from the control plane until then.
    cut_until: u64,
    /// A cut for this long waits for the next lease.
    cut_on_lease: Option<u64>,
    /// Messages on a stream arrive in order: the earliest the next may.
    report_free: u64,
    lease_free: u64,
}

impl Sidecar {
    fn live(&self, now: u64) -> Option<HeldSim> {
        self.lease.filter(|l| now < l.until)
    }
}

/// Drops times at or before `now - window` from the front.
fn slide(log: &mut VecDeque<u64>, now: u64, window: u64) {
    while log.front().is_some_and(|&t| t + window <= now) {
        log.pop_front();
    }
}

struct Sim {
    p: Params,
    rng: Rng,
    now: u64,
    base: Instant,
    config: AllocatorConfig,
    alloc: Allocator,
    /// Bumped at each control-plane restart: reports in flight are lost.
    generation: u64,
    learning_until: u64,
    sidecars: Vec<Sidecar>,
    queue: BinaryHeap<Scheduled>,
    next_id: u64,
    next_stream: u64,
    /// Streams cut by a partition: what is in flight on them is lost.
    cut: HashSet<u64>,
    /// Every call admitted under a lease, fleet-wide, in the trailing window.
    truth: VecDeque<u64>,
    /// Every call admitted under a lease, ever.
    log: Vec<u64>,
}

fn bucket() -> BucketKey {
    BucketKey {
        server: "s".to_owned(),
        counter: "c".to_owned(),
        scope_key: String::new(),
    }
}

impl Sim {
    fn new(p: Params) -> Self {
        let config = AllocatorConfig {
            lease_ttl: Duration::from_millis(p.ttl),
            refresh: Duration::from_millis(p.refresh),
            grace: Duration::from_millis(p.grace),
            learn_whole_window: p.strict,
            // Fallback reservations come and go with the partitions; the
            // log checks leased calls (`partition_tests` counts fallback
            // calls too, with sidecars that keep its span).
            ..AllocatorConfig::default()
        };
        let base = Instant::now();
        let mut sim = Self {
            rng: Rng(p.seed),
            now: 0,
            base,
            config,
            alloc: Allocator::new(base, config),
            generation: 0,
            learning_until: 0,
            sidecars: Vec::new(),
            queue: BinaryHeap::new(),
            next_id: 0,
            next_stream: 0,
            cut: HashSet::new(),
            truth: VecDeque::new(),
            log: Vec::new(),
            p,
        };
        sim.learning_until = sim.learning_end();
        for n in 0..sim.p.rates.len() {
            let epoch = sim.rng.next();
            sim.sidecars.push(Sidecar {
                key: HolderKey {
                    node_id: format!("node-{n}"),
                    epoch,
                },
                admitted: 0,
                unleased: 0,
                denied: 0,
                lease: None,
                stream: None,
                last_seq: 0,
                counts_since: 0,
                fallback: 0,
                fallback_log: VecDeque::new(),
                leased_log: VecDeque::new(),
                rate: sim.p.rates[n],
                last_moment: sim.rng.chance(300),
                cut_until: 0,
                cut_on_lease: None,
                report_free: 0,
                lease_free: 0,
            });
            let (connect, call, report) = (
                sim.rng.upto(100),
                sim.rng.upto(1000),
                sim.rng.upto(sim.p.refresh),
            );
            sim.at(connect, Event::Connect(n));
            sim.at(call, Event::Call(n));
            sim.at(report, Event::Report(n));
        }
        sim.at(sim.p.refresh, Event::Tick);
        sim
    }

    fn learning_end(&self) -> u64 {
        let mut end = self.now + self.p.ttl + self.p.grace;
        if self.p.strict {
            end += self.p.window;
        }
        end
    }

    fn instant(&self) -> Instant {
        self.base + Duration::from_millis(self.now)
    }

    fn at(&mut self, at: u64, event: Event) {
        self.next_id += 1;
        self.queue.push(Scheduled {
            at,
            id: self.next_id,
            event,
        });
    }

    /// The ttl the allocator gives: capped at the window.
    fn ttl(&self) -> u64 {
        self.p.ttl.min(self.p.window)
    }

    fn apply(&mut self, op: &Op) -> Result<(), String> {
        let nodes = self.sidecars.len();
        match *op {
            Op::Run(d) => return self.run_until(self.now + d),
            Op::SetRate(n, rate) => self.sidecars[n % nodes].rate = rate,
            Op::Forget(n) => {
                let (now, window) = (self.now, self.p.window);
                let s = &mut self.sidecars[n % nodes];
                slide(&mut s.leased_log, now, window);
                if s.live(now).is_none() && s.leased_log.is_empty() {
                    s.counts_since = now;
                    s.admitted = 0;
                    s.unleased = 0;
                    s.lease = None;
                    s.last_seq = 0;
                    s.fallback_log.clear();
                }
            }
            Op::RestartControlPlane => {
                self.alloc = Allocator::new(self.instant(), self.config);
                self.generation += 1;
                self.learning_until = self.learning_end();
                for n in 0..nodes {
                    let s = &mut self.sidecars[n];
                    s.stream = None;
                    if !self.p.strict {
                        s.cut_until = s.cut_until.min(self.now);
                    }
                    let at = self.now + self.rng.upto(100);
                    self.at(at, Event::Connect(n));
                }
            }
            Op::RestartSidecar(n) => {
                if !self.p.strict {
                    return Ok(());
                }
                let n = n % nodes;
                let epoch = self.rng.next();
                let s = &mut self.sidecars[n];
                if s.stream.take().is_some() {
                    self.alloc.disconnect(&s.key);
                }
                s.key.epoch = epoch;
                s.counts_since = self.now;
                s.admitted = 0;
                s.unleased = 0;
                s.denied = 0;
                s.lease = None;
                s.fallback = 0;
                s.fallback_log.clear();
                s.leased_log.clear();
                let at = self.now + self.rng.upto(500);
                self.at(at, Event::Connect(n));
            }
            Op::Partition(n, d, on_lease) => {
                let n = n % nodes;
                if on_lease {
                    self.sidecars[n].cut_on_lease = Some(d);
                } else {
                    self.cut_off(n, d);
                }
            }
        }
        self.check()
    }

    fn cut_off(&mut self, n: usize, d: u64) {
        if !self.p.strict && self.now < self.learning_until {
            return;
        }
        let s = &mut self.sidecars[n];
        s.cut_until = s.cut_until.max(self.now + d);
        if let Some(stream) = s.stream.take() {
            self.cut.insert(stream);
            self.alloc.disconnect(&s.key);
        }
        let at = s.cut_until + self.rng.upto(100);
        self.at(at, Event::Connect(n));
    }

    fn run_until(&mut self, end: u64) -> Result<(), String> {
        while self.queue.peek().is_some_and(|e| e.at <= end) {
            let Some(Scheduled { at, event, .. }) = self.queue.pop() else {
                break;
            };
            self.now = at;
            self.handle(event)?;
        }
        self.now = end;
        self.check()
    }

    fn check(&self) -> Result<(), String> {
        self.alloc
            .check_invariant(self.instant())
            .map_err(|e| format!("at {} ms: {e}", self.now))
    }

    fn handle(&mut self, event: Event) -> Result<(), String> {
        match event {
            Event::Call(n) => self.call(n)?,
            Event::Spend(n, seq) => {
                let s = &self.sidecars[n];
                if s.rate > 0 && s.live(self.now).is_some_and(|l| l.seq == seq) {
                    for _ in s.admitted..s.live(self.now).map_or(0, |l| l.granted_total) {
                        self.admit(n)?;
                    }
                }
            }
            Event::Report(n) => {
                let next = self.now + self.p.refresh / 2 + self.rng.upto(self.p.refresh / 2);
                self.at(next, Event::Report(n));
                let s = &self.sidecars[n];
                if s.stream.is_some() && self.now >= s.cut_until {
                    self.send_report(n);
                }
            }
            Event::Connect(n) => {
                let s = &mut self.sidecars[n];
                if s.stream.is_some() {
                    return Ok(());
                }
                if self.now < s.cut_until {
                    let at = s.cut_until;
                    self.at(at, Event::Connect(n));
                    return Ok(());
                }
                self.next_stream += 1;
                s.stream = Some(self.next_stream);
                s.last_seq = 0;
                s.report_free = self.now;
                s.lease_free = self.now;
                self.send_report(n);
            }
            Event::ReportArrives {
                node,
                stream,
                sent_at,
                generation,
                holder,
                report,
            } => {
                if generation != self.generation || self.cut.contains(&stream) {
                    return Ok(());
                }
                match self
                    .alloc
                    .report(self.instant(), &holder, &bucket(), &report)
                {
                    Ok(lease) => {
                        let s = &self.sidecars[node];
                        if s.stream == Some(stream) && !self.rng.chance(self.p.loss) {
                            let delay = if self.rng.chance(500) {
                                self.p.lease_delay
                            } else {
                                self.rng.upto(self.p.lease_delay)
                            };
                            let arrives = (self.now + delay).max(s.lease_free);
                            self.sidecars[node].lease_free = arrives;
                            self.at(
                                arrives,
                                Event::LeaseArrives {
                                    node,
                                    stream,
                                    report_sent: sent_at,
                                    lease,
                                },
                            );
                        }
                    }
                    Err(QuotaError::ClosedEpoch { .. }) => {}
                    Err(e) => return Err(e.to_string()),
                }
                self.check()?;
            }
            Event::LeaseArrives {
                node,
                stream,
                report_sent,
                lease,
            } => {
                let now = self.now;
                let ttl = u64::try_from(lease.ttl.as_millis()).unwrap_or(u64::MAX);
                let until = if self.p.ttl_from_report {
                    report_sent + ttl
                } else {
                    now + ttl
                };
                let s = &mut self.sidecars[node];
                if s.stream == Some(stream) && lease.seq <= s.last_seq {
                    // Its sidecar would ignore it, and every lease after.
                    return Err(format!(
                        "at {now} ms: node {node} got seq {} after {} on one stream",
                        lease.seq, s.last_seq
                    ));
                }
                if s.stream == Some(stream)
                    && now >= s.cut_until
                    && lease.seq > s.last_seq
                    && report_sent >= s.counts_since
                    && now < until
                {
                    s.last_seq = lease.seq;
                    s.fallback = lease.fallback;
                    s.lease = Some(HeldSim {
                        seq: lease.seq,
                        granted_total: lease.granted_total,
                        until,
                    });
                    let cut = s.cut_on_lease.take();
                    if s.last_moment {
                        self.at(until - 1, Event::Spend(node, lease.seq));
                    }
                    if let Some(d) = cut {
                        self.cut_off(node, d);
                    }
                }
            }
            Event::Tick => {
                self.alloc.tick(self.instant());
                let next = self.now + self.p.refresh;
                self.at(next, Event::Tick);
                self.check()?;
            }
        }
        Ok(())
    }

    fn call(&mut self, n: usize) -> Result<(), String> {
        let (now, window) = (self.now, self.p.window);
        let rate = u64::from(self.sidecars[n].rate);
        if rate == 0 {
            self.at(now + 500, Event::Call(n));
            return Ok(());
        }
        let next = now + 1 + self.rng.upto(2000 / rate);
        self.at(next, Event::Call(n));
        let s = &mut self.sidecars[n];
        match s.live(now) {
            // A last-moment sidecar holds its calls until its lease is about
            // to end (see `Event::Spend`).
            Some(_) if s.last_moment => {}
            Some(l) if s.admitted < l.granted_total => return self.admit(n),
            None if s.stream.is_none() => {
                slide(&mut s.fallback_log, now, window);
                if (s.fallback_log.len() as u64) < s.fallback {
                    s.unleased += 1;
                    s.fallback_log.push_back(now);
                } else {
                    s.denied += 1;
                }
            }
            _ => s.denied += 1,
        }
        Ok(())
    }

    /// Admits one call under node `n`'s lease and checks the ground truth.
    fn admit(&mut self, n: usize) -> Result<(), String> {
        let (now, window) = (self.now, self.p.window);
        let s = &mut self.sidecars[n];
        s.admitted += 1;
        slide(&mut s.leased_log, now, window);
        s.leased_log.push_back(now);
        slide(&mut self.truth, now, window);
        self.truth.push_back(now);
        self.log.push(now);
        if self.truth.len() as u64 > self.p.max {
            return Err(format!(
                "at {now} ms: {} calls admitted under leases in the window ({window} ms), max {}",
                self.truth.len(),
                self.p.max
            ));
        }
        Ok(())
    }

    fn send_report(&mut self, n: usize) {
        let (now, window, ttl) = (self.now, self.p.window, self.ttl());
        let delay = self.rng.upto(self.p.report_delay);
        let s = &mut self.sidecars[n];
        let Some(stream) = s.stream else {
            return;
        };
        slide(&mut s.leased_log, now, window);
        let rate = u64::from(s.rate);
        let report = Report {
            policy_version: 1,
            spec: LimitSpec {
                max: self.p.max,
                window: Duration::from_millis(window),
            },
            admitted_total: s.admitted,
            unleased_total: s.unleased,
            denied: std::mem::take(&mut s.denied),
            held: s.live(now).map(|l| HeldLease {
                seq: l.seq,
                granted_total: l.granted_total,
            }),
            demand: (rate * ttl / 1000).max(rate.min(1)),
            standby: 0,
            window_admitted: s.leased_log.len() as u64,
        };
        let arrives = (now + delay).max(s.report_free);
        s.report_free = arrives;
        let holder = s.key.clone();
        let generation = self.generation;
        self.at(
            arrives,
            Event::ReportArrives {
                node: n,
                stream,
                sent_at: now,
                generation,
                holder,
                report,
            },
        );
    }
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (100u64..8_000).prop_map(Op::Run),
        1 => Just(Op::RestartControlPlane),
        1 => any::<usize>().prop_map(Op::RestartSidecar),
        3 => (any::<usize>(), 100u64..15_000, any::<bool>())
            .prop_map(|(n, d, on_lease)| Op::Partition(n, d, on_lease)),
        2 => (any::<usize>(), 0u32..=30).prop_map(|(n, r)| Op::SetRate(n, r)),
        1 => any::<usize>().prop_map(Op::Forget),
    ]
}

fn params() -> impl Strategy<Value = Params> {
    (
        // Mostly modest rates; some nodes hot enough to take freed capacity
        // the moment it is granted.
        prop::collection::vec(prop_oneof![3 => 0u32..=30, 1 => 100u32..=200], 1..=20),
        1u64..=60,
        prop::sample::select(vec![1_000u64, 2_000, 5_000, 10_000, 30_000]),
        1_500u64..=10_000,
        200u64..=1_000,
        100u64..=1_000,
        0u64..=300,
        any::<bool>(),
        any::<bool>(),
        any::<u64>(),
    )
        .prop_map(
            |(rates, max, window, ttl, refresh, grace, loss, ttl_from_report, strict, seed)| {
                Params {
                    max,
                    window,
                    ttl,
                    refresh,
                    grace,
                    loss,
                    ttl_from_report,
                    // Beyond `grace` where the contract allows it.
                    lease_delay: if ttl_from_report { 3 * grace } else { grace },
                    report_delay: if strict { 3 * grace } else { grace },
                    strict,
                    seed,
                    rates,
                }
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig {
        // PROPTEST_CASES raises it for a longer search.
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(256),
        ..ProptestConfig::default()
    })]

    #[test]
    fn no_trailing_window_admits_more_than_max_under_leases(
        p in params(),
        ops in prop::collection::vec(op(), 1..30),
    ) {
        let window = p.window;
        let mut sim = Sim::new(p);
        for op in &ops {
            sim.apply(op).map_err(TestCaseError::fail)?;
        }
        sim.apply(&Op::Run(2 * window)).map_err(TestCaseError::fail)?;
    }
}

/// Three nodes at `rate` calls per second each against 300 a minute, for
/// eight minutes: the calls admitted in each whole minute after the first.
fn admitted_per_minute(rate: u32) -> Vec<u64> {
    let window = 60_000;
    let mut sim = Sim::new(Params {
        max: 300,
        window,
        ttl: 10_000,
        refresh: 1_000,
        grace: 1_000,
        loss: 0,
        ttl_from_report: true,
        lease_delay: 20,
        report_delay: 20,
        strict: false,
        seed: 7,
        rates: vec![rate; 3],
    });
    sim.apply(&Op::Run(8 * window)).expect("no violation");
    (1..8)
        .map(|k| {
            let minute = k * window..(k + 1) * window;
            sim.log.iter().filter(|a| minute.contains(a)).count() as u64
        })
        .collect()
}

/// Steady demand above `max` (3× and 12×): after the first window (which
/// starts with the allocator's learning period), every window admits at
/// least 95 % of `max`.
#[test]
fn a_fleet_over_its_limit_uses_at_least_95_percent_of_every_window() {
    for rate in [5, 20] {
        let minutes = admitted_per_minute(rate);
        assert!(
            minutes.iter().all(|&n| n * 100 >= 95 * 300 && n <= 300),
            "{rate}/s on each of 3 nodes: {minutes:?}"
        );
    }
}
