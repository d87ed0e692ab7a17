//! What one decision costs: `FleetCounters::acquire` under a valid lease (the
//! fleet's hot path) against `LocalCounters::acquire` (a pod limit, or a
//! standalone sidecar) on the same charge, both through `&dyn Counters` as
//! the sidecar calls them, on one thread.

use std::hint::black_box;
use std::time::{Duration, Instant};

use tollgate_policy::{Admission, Charge, Counters};

/// Decisions between two readings of the clock. The sidecar reads it once a
/// request; here it would cost as much as the decision itself and hide the
/// difference between the stores, so both loops read it this rarely.
const CLOCK_EVERY: u64 = 256;

/// One timed run.
#[derive(Debug, Clone, Copy)]
pub struct Run {
    pub ns_per_decision: f64,
    /// Decisions that did not admit: with a valid lease and a limit far above
    /// the calls made, none should.
    pub refused: u64,
}

/// Every run of both stores, in the order made.
#[derive(Debug, Default)]
pub struct Latency {
    pub fleet: Vec<Run>,
    pub local: Vec<Run>,
}

fn time(counters: &dyn Counters, charges: &[Charge<'_>], origin: Instant, n: u64) -> Run {
    let mut refused = 0;
    let started = Instant::now();
    let mut now = origin.elapsed();
    for i in 0..n {
        if i % CLOCK_EVERY == 0 {
            now = origin.elapsed();
        }
        if black_box(counters.acquire(black_box(charges), now)) != Admission::Admitted {
            refused += 1;
        }
    }
    let took = started.elapsed();
    Run {
        ns_per_decision: took.as_nanos() as f64 / n.max(1) as f64,
        refused,
    }
}

/// `warmup` decisions on each store, then `rounds` rounds of `iterations` on
/// each, alternating which goes first so drift in the machine's speed falls
/// on both alike. `origin` is `fleet`'s clock origin (its leases' expiry is on
/// that clock); `local` reads the same clock.
pub fn measure(
    fleet: &dyn Counters,
    local: &dyn Counters,
    charge: Charge<'_>,
    origin: Instant,
    iterations: u64,
    warmup: u64,
    rounds: u32,
) -> Latency {
    let charges = [charge];
    time(fleet, &charges, origin, warmup);
    time(local, &charges, origin, warmup);
    let mut out = Latency::default();
    for r in 0..rounds {
        if r % 2 == 0 {
            out.fleet.push(time(fleet, &charges, origin, iterations));
            out.local.push(time(local, &charges, origin, iterations));
        } else {
            out.local.push(time(local, &charges, origin, iterations));
            out.fleet.push(time(fleet, &charges, origin, iterations));
        }
    }
    out
}

/// Calls `fleet` until `streak` decisions in a row are admitted, pausing a
/// millisecond after each refusal so the reporter can take the lock and the
/// larger lease the refusal asked for. False if that takes past `deadline`.
///
/// A sidecar's first lease on a bucket is a standing one of a single call;
/// the lease sized to this loop's demand comes one round trip after the
/// first refusal.
pub fn prime(
    fleet: &dyn Counters,
    charge: Charge<'_>,
    origin: Instant,
    streak: u64,
    deadline: Instant,
) -> bool {
    let charges = [charge];
    let mut admitted = 0;
    while admitted < streak {
        if fleet.acquire(&charges, origin.elapsed()) == Admission::Admitted {
            admitted += 1;
        } else if Instant::now() >= deadline {
            return false;
        } else {
            admitted = 0;
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    true
}

/// The median of `runs`' ns per decision (0 for none).
pub fn median(runs: &[Run]) -> f64 {
    let mut v: Vec<f64> = runs.iter().map(|r| r.ns_per_decision).collect();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}
