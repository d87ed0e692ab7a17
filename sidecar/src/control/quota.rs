//! Fleet-wide limits (ARCHITECTURE.md §4, stream 2): limits with scope `grant`,
//! `session` or `global` are decided from leases the control plane hands out
//! over the quota stream; `pod` limits stay local.
//!
//! [`FleetCounters`] is the sidecar's counter store in fleet mode. A call is
//! decided at once from what the sidecar holds — never waiting for the network:
//!
//! - **A valid lease** (received, ttl not run out): admit while the bucket's
//!   count of calls admitted under leases is below the lease's cumulative
//!   `granted_total`; once it is reached, refuse until a larger lease arrives
//!   (the reporter asks for one at once).
//! - **No valid lease while the stream is up** (the bucket's first call, or
//!   a renewal still on its way): refuse, and report at once. The control
//!   plane answers within one round trip; the refusal's `retry_after` says so.
//! - **No valid lease and the control plane unreachable**: the limit's
//!   `on_unavailable` decides — `fallback` counts locally against the fallback
//!   capacity its newest lease set (`max` ÷ the nodes the control plane
//!   knew), only from `fallback_after` after that lease's receipt until
//!   `fallback_after + fallback_for` after its end, the span over which the
//!   control plane reserves that capacity for it (nothing before its first
//!   lease: nothing is reserved for it); `deny` refuses, `allow` admits.
//!   Calls admitted without a lease are counted (`unleased_total`) and
//!   reported when the stream is back.
//!
//! A lease's ttl runs from when the sidecar *sent* the report it answers, which
//! is no later than when the control plane sent it: the sidecar stops using a
//! lease no later than the control plane stops counting it as outstanding,
//! whatever the network delay (see `tollgate-controlplane`'s `quota` module for
//! why the fleet then never admits more than `max` in any window).
//!
//! [`Reporter`] keeps the quota stream open over the shared connection
//! ([`super::connection`]): every refresh interval it reports
//! every live bucket (admitted, refused, the lease held, the demand), at once
//! when a bucket is first hit or its lease runs dry, and takes the leases that
//! come back.

use std::collections::VecDeque;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use hashbrown::{Equivalent, HashMap};
use tokio::sync::{Notify, mpsc};
use tollgate_policy::document::{OnUnavailable, Scope};
use tollgate_policy::limits::SlidingWindow;
use tollgate_policy::{Admission, Charge, Counters, FleetBucket, LocalCounters};
use tollgate_proto::v1::quota_client::QuotaClient;
use tollgate_proto::v1::{BucketId, BucketReport, LeaseHeld, Node, QuotaLeases, QuotaReport};
use tollgate_proto::{MAX_BUCKETS_PER_REPORT, MAX_QUOTA_MESSAGE_BYTES, MAX_REPORT_BYTES};
use tonic::transport::Channel;

use super::connection::Connection;
use super::stream::{ControlStream, End, Recovery, classify, keep_open, requests};

use crate::control::backoff::{Backoff, BackoffConfig};
use crate::metrics::Metrics;
use crate::snapshot::LivePolicy;

/// How often to report before the control plane has said (its leases carry it).
const DEFAULT_REFRESH: Duration = Duration::from_secs(1);
/// The shortest gap between two reports sent early (first hit, dry lease).
const EARLY_REPORT_GAP: Duration = Duration::from_millis(20);
/// How often the reporter looks for a new bundle in force.
const POLICY_WATCH: Duration = Duration::from_millis(100);
/// Reports whose send time is remembered, to time the leases answering them
/// (a sidecar with many buckets sends several reports at once).
const SENT_REMEMBERED: usize = 256;

/// A fleet bucket's identity.
#[derive(Debug, Clone, PartialEq, Eq)]
struct LeaseKey {
    server: Box<str>,
    counter: Arc<str>,
    scope: Scope,
    key: Box<str>,
}

impl Hash for LeaseKey {
    fn hash<H: Hasher>(&self, h: &mut H) {
        hash_parts(h, &self.server, &self.counter, self.scope, &self.key);
    }
}

fn hash_parts<H: Hasher>(h: &mut H, server: &str, counter: &str, scope: Scope, key: &str) {
    server.hash(h);
    counter.hash(h);
    scope.hash(h);
    key.hash(h);
}

/// A look-up key borrowed from a [`Charge`].
struct ChargeKey<'a, 'c>(&'a Charge<'c>);

impl Hash for ChargeKey<'_, '_> {
    fn hash<H: Hasher>(&self, h: &mut H) {
        let c = self.0;
        hash_parts(h, c.server, c.counter, c.scope, c.key);
    }
}

impl Equivalent<LeaseKey> for ChargeKey<'_, '_> {
    fn equivalent(&self, k: &LeaseKey) -> bool {
        let c = self.0;
        c.scope == k.scope
            && c.key == &*k.key
            && c.server == &*k.server
            && **c.counter == *k.counter
    }
}

/// The lease a bucket holds.
#[derive(Debug, Clone, Copy)]
struct Held {
    seq: u64,
    granted_total: u64,
    /// When it stops being usable, on the counters' clock.
    expires: Duration,
}

/// What the newest lease allows on fallback: `capacity` calls per window,
/// from `from` until `until` (on the counters' clock). The control plane
/// reserves that much for this sidecar over that span and no longer.
#[derive(Debug, Clone, Copy)]
struct Fallback {
    capacity: u64,
    from: Duration,
    until: Duration,
}

/// One fleet bucket, as this sidecar sees it.
#[derive(Debug)]
struct LeaseBucket {
    max: u64,
    window: Duration,
    on_unavailable: OnUnavailable,
    lease: Option<Held>,
    /// The last lease seq taken on the current stream (a new stream starts afresh).
    taken_seq: Option<u64>,
    /// Calls admitted under leases since this process started.
    admitted_total: u64,
    /// Calls admitted without a valid lease.
    unleased_total: u64,
    /// Calls refused since the last report.
    denied: u64,
    /// Calls asked for (admitted or refused) since the last report.
    hits: u64,
    /// Leased admissions over the recent window (to re-learn after a control-plane restart).
    leased_window: SlidingWindow,
    /// Unleased admissions over the recent window (the fallback budget).
    unleased_window: SlidingWindow,
    /// The fallback the control plane last set.
    fallback: Option<Fallback>,
    /// The last call, to forget idle buckets.
    last_hit: Duration,
    /// A call was refused for want of lease capacity since the last report.
    starved: bool,
    /// Demand asked for even without calls: the bundle names this bucket, so
    /// its first call should find a lease already there.
    standing: u64,
    /// A bucket of this node's own grant (a bundle without grants).
    own: bool,
    /// The last report sent before this bucket was created. A lease answering
    /// that report or an earlier one was for a bucket of the same name this
    /// sidecar forgot (its counts started again at zero): it is ignored.
    born_after: u64,
}

impl LeaseBucket {
    fn new(c: &Charge<'_>, now: Duration, born_after: u64) -> Self {
        Self {
            max: c.max,
            window: c.window,
            on_unavailable: c.on_unavailable,
            lease: None,
            taken_seq: None,
            admitted_total: 0,
            unleased_total: 0,
            denied: 0,
            hits: 0,
            leased_window: SlidingWindow::default(),
            unleased_window: SlidingWindow::default(),
            fallback: None,
            last_hit: now,
            starved: false,
            standing: 0,
            own: false,
            born_after,
        }
    }

    fn valid_lease(&self, now: Duration) -> Option<Held> {
        self.lease.filter(|l| now < l.expires)
    }
}

/// What one bucket says about one call.
#[derive(Debug, Clone, Copy)]
enum Verdict {
    Leased,
    Unleased,
    Refused(Duration),
}

/// Everything behind the lock.
#[derive(Debug)]
struct FleetState {
    buckets: HashMap<LeaseKey, LeaseBucket>,
    /// The quota stream is open.
    connected: bool,
    /// The refresh interval the control plane asked for.
    refresh: Duration,
    /// The last report built.
    report_seq: u64,
}

/// The sidecar's counters in fleet mode (see the module doc).
#[derive(Debug)]
pub struct FleetCounters {
    local: LocalCounters,
    metrics: Arc<Metrics>,
    state: Mutex<FleetState>,
    wake: Notify,
    origin: Instant,
    epoch: u64,
}

impl FleetCounters {
    /// Counters whose clock starts at `origin` (the sidecar's counter clock).
    pub fn new(origin: Instant, metrics: Arc<Metrics>) -> Self {
        Self {
            local: LocalCounters::new(),
            metrics,
            state: Mutex::new(FleetState {
                buckets: HashMap::new(),
                connected: false,
                refresh: DEFAULT_REFRESH,
                report_seq: 0,
            }),
            wake: Notify::new(),
            origin,
            // Not zero, so a report with epoch 0 is recognisably malformed.
            epoch: fastrand::u64(1..),
        }
    }

    /// The clock origin.
    pub fn origin(&self) -> Instant {
        self.origin
    }

    /// This process's epoch (sent with every report).
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    fn now(&self) -> Duration {
        self.origin.elapsed()
    }

    fn lock(&self) -> MutexGuard<'_, FleetState> {
        // A panic while holding the lock leaves counts, not broken invariants.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn verdict(b: &mut LeaseBucket, now: Duration, connected: bool, refresh: Duration) -> Verdict {
        if let Some(l) = b.valid_lease(now) {
            return if b.admitted_total < l.granted_total {
                Verdict::Leased
            } else {
                // When this sidecar alone has spent the window (a bucket of
                // its own grant), its own count says when room comes back;
                // otherwise the fleet's does, learned at the next renewal.
                let own = b.leased_window.check(now, b.window, b.max);
                Verdict::Refused(own.unwrap_or(refresh).max(refresh))
            };
        }
        if connected {
            return Verdict::Refused(refresh);
        }
        match b.on_unavailable {
            OnUnavailable::Deny => Verdict::Refused(refresh),
            OnUnavailable::Allow => Verdict::Unleased,
            OnUnavailable::Fallback => {
                // Only what the control plane reserved for this sidecar:
                // nothing before its first lease, nor before or after the
                // span its newest lease names.
                let Some(f) = b.fallback else {
                    return Verdict::Refused(refresh);
                };
                if now < f.from {
                    return Verdict::Refused(f.from - now);
                }
                if now >= f.until {
                    return Verdict::Refused(refresh);
                }
                match b.unleased_window.check(now, b.window, f.capacity) {
                    None => Verdict::Unleased,
                    Some(retry_after) => Verdict::Refused(retry_after),
                }
            }
        }
    }

    /// Builds the reports of every live bucket, numbered from `first_seq`,
    /// and forgets idle ones. One report carries at most
    /// [`MAX_BUCKETS_PER_REPORT`] buckets and about [`MAX_REPORT_BYTES`]: the
    /// control plane refuses a larger report whole, so a sidecar with more
    /// buckets splits them rather than losing every lease. Never empty (a
    /// report with no bucket still says the sidecar is there).
    fn report(&self, first_seq: u64, version: u64, now: Duration) -> Vec<QuotaReport> {
        let mut state = self.lock();
        let refresh = state.refresh;
        let mut buckets = Vec::new();
        let mut capacity = 0u64;
        state.buckets.retain(|k, b| {
            let held = b.valid_lease(now);
            if let Some(l) = held {
                capacity += l.granted_total.saturating_sub(b.admitted_total);
            }
            let idle = now.saturating_sub(b.last_hit) > b.window.max(refresh * 2);
            if held.is_none() && b.hits == 0 && b.standing == 0 && idle {
                return false;
            }
            // What it expects to want over the next lease period (about ten
            // refresh intervals): its recent rate; when calls went unserved
            // (a first call, a lease run dry), as much as the control plane
            // can spare — its fair share keeps that from starving other nodes.
            // A standing ask goes apart: it is served only from what no
            // node's calls want.
            let demand = match (b.hits, b.starved) {
                (0, _) => 0,
                (hits, true) => hits.saturating_mul(10).max(b.max),
                (hits, false) => hits.saturating_mul(10),
            };
            b.starved = false;
            buckets.push(BucketReport {
                bucket: Some(BucketId {
                    server: k.server.to_string(),
                    counter: k.counter.to_string(),
                    scope: k.scope.as_str().to_owned(),
                    key: k.key.to_string(),
                }),
                policy_version: version,
                max: b.max,
                window_ms: u64::try_from(b.window.as_millis()).unwrap_or(u64::MAX),
                admitted_total: b.admitted_total,
                unleased_total: b.unleased_total,
                denied: b.denied,
                held: held.map(|l| LeaseHeld {
                    seq: l.seq,
                    granted_total: l.granted_total,
                }),
                demand,
                standby: standing_demand(b, now),
                // Every call it admitted in the window, leased or not: what a
                // control plane that has not seen this process must count.
                window_admitted: b.leased_window.count(now, b.window)
                    + b.unleased_window.count(now, b.window),
            });
            b.denied = 0;
            b.hits = 0;
            true
        });
        self.metrics.quota_capacity(capacity);
        let reports = split(buckets, first_seq, self.epoch);
        let last = first_seq + reports.len() as u64 - 1;
        state.report_seq = state.report_seq.max(last);
        reports
    }

    /// Asks for a small standing lease on each of `known` (the bundle's
    /// fleet buckets), so that their first calls are admitted at once; other
    /// buckets lose their standing demand.
    fn stand_by(&self, known: &[FleetBucket], node_grant: &str, now: Duration) {
        let mut state = self.lock();
        for b in state.buckets.values_mut() {
            b.standing = 0;
        }
        for f in known {
            let charge = Charge {
                counter: &f.counter,
                server: &f.server,
                scope: f.scope,
                key: &f.key,
                window: f.window,
                max: f.max,
                on_unavailable: f.on_unavailable,
            };
            if !state.buckets.contains_key(&ChargeKey(&charge)) {
                let key = LeaseKey {
                    server: f.server.as_str().into(),
                    counter: Arc::clone(&f.counter),
                    scope: f.scope,
                    key: f.key.as_ref().into(),
                };
                let born_after = state.report_seq;
                state
                    .buckets
                    .insert(key, LeaseBucket::new(&charge, now, born_after));
            }
            if let Some(b) = state.buckets.get_mut(&ChargeKey(&charge)) {
                // A bucket of this node's own grant (a bundle without grants)
                // is this sidecar's alone: all of it. A shared one: one call,
                // so the first is admitted at once. Either is asked as standby,
                // which the control plane grants only from what no busy
                // sidecar wants: idle sidecars hold nothing back from busy ones.
                b.own = f.scope == Scope::Grant && *f.key == *node_grant;
                b.standing = if b.own { f.max } else { 1 };
            }
        }
    }

    /// Takes the leases of one answer; `sent` is when the report it answers
    /// was sent (on the counters' clock).
    fn take(&self, answer: &QuotaLeases, sent: Duration) -> usize {
        // Received now, and no earlier than the report it answers was sent.
        let received = self.now().max(sent);
        let mut state = self.lock();
        let mut taken = 0;
        for lease in &answer.leases {
            let Some(id) = &lease.bucket else { continue };
            let Some(scope) = scope_of(&id.scope) else {
                continue;
            };
            let probe = LeaseKey {
                server: id.server.as_str().into(),
                counter: Arc::from(id.counter.as_str()),
                scope,
                key: id.key.as_str().into(),
            };
            let Some(b) = state.buckets.get_mut(&probe) else {
                continue;
            };
            if answer.answers_report <= b.born_after || b.taken_seq.is_some_and(|s| lease.seq <= s)
            {
                continue;
            }
            b.taken_seq = Some(lease.seq);
            let expires = sent + Duration::from_millis(lease.ttl_ms);
            b.lease = Some(Held {
                seq: lease.seq,
                granted_total: lease.granted_total,
                expires,
            });
            let after = Duration::from_millis(lease.fallback_after_ms);
            b.fallback = Some(Fallback {
                capacity: lease.fallback,
                from: received + after,
                until: expires + after + Duration::from_millis(lease.fallback_for_ms),
            });
            taken += 1;
            if lease.refresh_ms > 0 {
                state.refresh = Duration::from_millis(lease.refresh_ms).max(EARLY_REPORT_GAP);
            }
        }
        taken
    }

    /// A new stream: leases from it are taken afresh (held ones stay valid).
    fn stream_opened(&self) {
        let mut state = self.lock();
        state.connected = true;
        for b in state.buckets.values_mut() {
            b.taken_seq = None;
        }
    }

    fn stream_closed(&self) {
        self.lock().connected = false;
    }

    fn refresh(&self) -> Duration {
        self.lock().refresh
    }
}

/// What a bucket asks for with no calls (its standby). A shared bucket asks
/// for its one standing call only while it was created or called within its
/// window: a sidecar that stopped calling stops asking (its next call waits
/// a round trip). A bucket of the node's own grant keeps asking
/// for all of it: no other sidecar can use it.
fn standing_demand(b: &LeaseBucket, now: Duration) -> u64 {
    if b.own || now.saturating_sub(b.last_hit) < b.window {
        b.standing
    } else {
        0
    }
}

/// An upper bound of a bucket report's encoded size: its strings, and the
/// most its tags, lengths and integers can take.
fn encoded_bound(b: &BucketReport) -> usize {
    let strings = b.bucket.as_ref().map_or(0, |id| {
        id.server.len() + id.counter.len() + id.scope.len() + id.key.len()
    });
    strings + 192
}

/// `buckets` in reports of at most [`MAX_BUCKETS_PER_REPORT`] buckets and
/// about [`MAX_REPORT_BYTES`] each, numbered from `first_seq`; at least one.
fn split(buckets: Vec<BucketReport>, first_seq: u64, epoch: u64) -> Vec<QuotaReport> {
    let mut reports = vec![QuotaReport {
        node: None,
        epoch,
        buckets: Vec::new(),
        report_seq: first_seq,
    }];
    let mut bytes = 0;
    for b in buckets {
        let size = encoded_bound(&b);
        let full = reports.last().is_some_and(|r| {
            r.buckets.len() == MAX_BUCKETS_PER_REPORT
                || (!r.buckets.is_empty() && bytes + size > MAX_REPORT_BYTES)
        });
        if full {
            reports.push(QuotaReport {
                node: None,
                epoch,
                buckets: Vec::new(),
                report_seq: first_seq + reports.len() as u64,
            });
            bytes = 0;
        }
        bytes += size;
        if let Some(r) = reports.last_mut() {
            r.buckets.push(b);
        }
    }
    reports
}

/// The control plane's version number of a bundle in force (`v7` → 7); 0 for
/// a policy that did not come from it.
fn policy_version(label: &str) -> u64 {
    label
        .strip_prefix('v')
        .unwrap_or(label)
        .parse()
        .unwrap_or(0)
}

fn same_bucket(a: &Charge<'_>, b: &Charge<'_>) -> bool {
    a.scope == b.scope && a.key == b.key && a.server == b.server && **a.counter == **b.counter
}

fn scope_of(s: &str) -> Option<Scope> {
    match s {
        "grant" => Some(Scope::Grant),
        "session" => Some(Scope::Session),
        "global" => Some(Scope::Global),
        _ => None,
    }
}

impl FleetCounters {
    /// One fleet charge (the usual case): one look-up, decided and charged in place.
    fn acquire_one(&self, c: &Charge<'_>, now: Duration) -> Admission {
        let mut state = self.lock();
        let (connected, refresh, report_seq) = (state.connected, state.refresh, state.report_seq);
        let b = match state.buckets.get_mut(&ChargeKey(c)) {
            Some(b) => b,
            None => {
                // A first call: the reporter asks for a lease at once.
                self.wake.notify_one();
                let key = LeaseKey {
                    server: c.server.into(),
                    counter: Arc::clone(c.counter),
                    scope: c.scope,
                    key: c.key.into(),
                };
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
            Verdict::Leased => {
                b.admitted_total += 1;
                b.leased_window.charge(now, b.window);
                if connected && b.lease.is_some_and(|l| b.admitted_total >= l.granted_total) {
                    self.wake.notify_one();
                }
                Admission::Admitted
            }
            Verdict::Unleased => {
                self.metrics.quota_unleased();
                b.unleased_total += 1;
                b.unleased_window.charge(now, b.window);
                Admission::Admitted
            }
            Verdict::Refused(retry_after) => {
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
        let mut verdicts: smallvec::SmallVec<[(usize, Verdict); 4]> = smallvec::SmallVec::new();
        for (i, c) in charges.iter().enumerate() {
            if c.scope == Scope::Pod || charges[..i].iter().any(|p| same_bucket(p, c)) {
                continue;
            }
            if !state.buckets.contains_key(&ChargeKey(c)) {
                // A first call: the reporter asks for a lease at once.
                self.wake.notify_one();
                let key = LeaseKey {
                    server: c.server.into(),
                    counter: Arc::clone(c.counter),
                    scope: c.scope,
                    key: c.key.into(),
                };
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
            if let Verdict::Refused(retry_after) = v {
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
                Verdict::Leased => {
                    b.admitted_total += 1;
                    b.leased_window.charge(now, b.window);
                    dry |= b.lease.is_some_and(|l| b.admitted_total >= l.granted_total);
                }
                Verdict::Unleased => {
                    self.metrics.quota_unleased();
                    b.unleased_total += 1;
                    b.unleased_window.charge(now, b.window);
                }
                Verdict::Refused(_) => {}
            }
        }
        if dry && connected {
            self.wake.notify_one();
        }
        Admission::Admitted
    }
}

/// Keeps the quota stream open (see the module doc).
#[derive(Debug)]
pub struct Reporter {
    /// For logs: where the stream goes.
    control_plane: String,
    node: Node,
    counters: Arc<FleetCounters>,
    store: Arc<LivePolicy>,
    metrics: Arc<Metrics>,
    /// The servers this sidecar serves, and its grant when the bundle has none.
    servers: Vec<String>,
    node_grant: Arc<str>,
    report_seq: u64,
    /// (report_seq, sent at) of recent reports.
    sent: VecDeque<(u64, Duration)>,
}

impl Reporter {
    /// A reporter for `counters`, speaking for `node`.
    pub fn new(
        node: Node,
        counters: Arc<FleetCounters>,
        store: Arc<LivePolicy>,
        metrics: Arc<Metrics>,
        servers: Vec<String>,
    ) -> Self {
        let node_grant = Arc::from(node.id.as_str());
        Self {
            control_plane: String::new(),
            servers,
            node_grant,
            node,
            counters,
            store,
            metrics,
            report_seq: 0,
            sent: VecDeque::with_capacity(SENT_REMEMBERED),
        }
    }

    /// Keeps the stream open over `connection`; runs until the task is dropped.
    pub async fn run(mut self, connection: Arc<Connection>, backoff: BackoffConfig) {
        connection.url().clone_into(&mut self.control_plane);
        keep_open(connection, self, backoff).await;
    }

    /// The policy version in force, after standing by on its fleet buckets.
    fn version(&self, now: Duration) -> u64 {
        let Some(snapshot) = self.store.load() else {
            return 0;
        };
        let servers: Vec<&str> = self.servers.iter().map(String::as_str).collect();
        let known = snapshot.bundle.fleet_buckets(&servers, &self.node_grant);
        self.counters.stand_by(&known, &self.node_grant, now);
        policy_version(&snapshot.version)
    }

    /// The next reports (one, unless the buckets fill more); the first of a
    /// stream names the node.
    fn next_reports(&mut self, first: bool) -> Vec<QuotaReport> {
        let now = self.counters.now();
        let version = self.version(now);
        let mut reports = self.counters.report(self.report_seq + 1, version, now);
        if first && let Some(r) = reports.first_mut() {
            r.node = Some(self.node.clone());
        }
        for r in &reports {
            self.report_seq = r.report_seq;
            if self.sent.len() == SENT_REMEMBERED {
                self.sent.pop_front();
            }
            self.sent.push_back((r.report_seq, now));
            self.metrics.quota_report();
        }
        reports
    }

    /// Sends the next reports on `tx`; false once the stream is gone.
    async fn send_reports(&mut self, tx: &mpsc::Sender<QuotaReport>) -> bool {
        for report in self.next_reports(false) {
            if tx.send(report).await.is_err() {
                return false;
            }
        }
        true
    }
}

impl ControlStream for Reporter {
    async fn session(&mut self, channel: Channel, backoff: &mut Backoff) -> End {
        let mut grpc = QuotaClient::new(channel)
            .max_decoding_message_size(MAX_QUOTA_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_QUOTA_MESSAGE_BYTES);
        let (tx, rx) = mpsc::channel(4);
        // The first reports are queued before the stream opens: the channel
        // takes what it can hold, the rest follow once the stream is up.
        let mut first = self.next_reports(true).into_iter();
        for report in first.by_ref().take(4) {
            if tx.try_send(report).is_err() {
                return End::Closed;
            }
        }
        let rest: Vec<QuotaReport> = first.collect();
        let mut inbound = match grpc.stream_quota(requests(rx)).await {
            Ok(r) => r.into_inner(),
            Err(s) => {
                // Refused (identity, permission): retry from the backoff cap,
                // as the policy stream does.
                if classify(s.code()) == Recovery::Refused {
                    backoff.saturate();
                }
                return End::Status(s);
            }
        };
        self.counters.stream_opened();
        self.metrics.quota_connected(true);
        for report in rest {
            if tx.send(report).await.is_err() {
                return End::Closed;
            }
        }
        let mut last_sent = Instant::now();
        let mut policy = self.store.load();
        let mut watch = tokio::time::interval(POLICY_WATCH);
        // A report is wanted early (a first call, a lease run dry): sent
        // EARLY_REPORT_GAP after the last one rather than a refresh after.
        let mut early = false;
        loop {
            let due = if early {
                last_sent + EARLY_REPORT_GAP
            } else {
                last_sent + self.counters.refresh()
            };
            tokio::select! {
                // Answers first: a busy sidecar wakes the reporter on every
                // refused call, and leases left unread behind its reports
                // would reach it too late to use.
                biased;
                message = inbound.message() => match message {
                    Ok(Some(answer)) => {
                        backoff.reset();
                        for e in &answer.errors {
                            tracing::warn!("the control plane did not account a fleet bucket: {e}");
                        }
                        let sent = self
                            .sent
                            .iter()
                            .find(|(seq, _)| *seq == answer.answers_report)
                            .map(|(_, at)| *at);
                        // A lease answering a report no longer remembered is
                        // too old to time safely: it is dropped.
                        if let Some(sent) = sent {
                            let n = self.counters.take(&answer, sent);
                            self.metrics.quota_leases(n);
                        }
                    }
                    Ok(None) => return End::Closed,
                    Err(s) => return End::Status(s),
                },
                () = tokio::time::sleep_until(due.into()) => {
                    if !self.send_reports(&tx).await {
                        return End::Closed;
                    }
                    last_sent = Instant::now();
                    early = false;
                }
                _ = watch.tick() => {
                    // A new bundle may name new fleet buckets: ask for their
                    // standing leases now rather than at the next interval.
                    let now_in_force = self.store.load();
                    let changed = match (&policy, &now_in_force) {
                        (Some(a), Some(b)) => !Arc::ptr_eq(a, b),
                        (None, None) => false,
                        _ => true,
                    };
                    if changed {
                        policy = now_in_force;
                        if !self.send_reports(&tx).await {
                            return End::Closed;
                        }
                        last_sent = Instant::now();
                        early = false;
                    }
                }
                // Early, but not more often than EARLY_REPORT_GAP.
                () = self.counters.wake.notified(), if !early => early = true,
            }
        }
    }

    fn ended(&mut self, end: &End, _backoff: &mut Backoff) {
        self.counters.stream_closed();
        self.metrics.quota_connected(false);
        tracing::warn!(
            control_plane = %self.control_plane,
            "the quota stream ended ({end}); fleet-wide limits use their leases until they run out, then on_unavailable"
        );
    }
}

#[cfg(test)]
#[path = "quota_tests.rs"]
mod tests;
