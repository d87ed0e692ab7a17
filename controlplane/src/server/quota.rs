//! `Quota.StreamQuota`: fleet-wide rate limits as leases, one stream per
//! sidecar process, over the control plane's one [`Allocator`].
//!
//! Per stream: the first report names the node and the process's epoch (the
//! allocator's [`HolderKey`]); every report is answered by one
//! [`QuotaLeases`] echoing its `report_seq`, with a lease per bucket the
//! allocator accepted and an error line per bucket it did not. Each bucket
//! is accounted by its limit in the policy version it names, as stored, and
//! only under a version given to that node (see `stored_limits`). When the
//! stream ends, however it ends, the process is marked disconnected: its
//! leases stay accounted until they expire, its demand stops counting.
//!
//! The allocator is created when the control plane starts; it re-learns
//! while an earlier control plane's leases may be in use, and waits for the
//! nodes that one served (see [`crate::quota`] and `restart`); a
//! background task expires leases every [`TICK`]. Streams are let in through the same
//! [`StreamAdmission`](super::admission::StreamAdmission) as policy streams and end
//! cleanly when the control plane drains.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use tokio::sync::{OwnedSemaphorePermit, mpsc};
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tollgate_proto::v1::quota_server::Quota;
use tollgate_proto::v1::{
    BucketId, BucketReport, FleetBucket, FleetHolder, Lease as LeaseProto, QuotaLeases, QuotaReport,
};
use tonic::{Request, Response, Status, Streaming};

use super::ControlPlane;
use super::distribution::shutting_down;
use super::drain::{Latch, Tracked};
use super::restart::marker::LeaseMarker;
use super::restart::served_nodes::{AWAIT_SERVED, ServedNodes};
use super::stored_limits::Versions;
use crate::metrics::Metrics;
use crate::quota::{
    Allocator, AllocatorConfig, BucketKey, BucketView, HeldLease, HolderKey, Lease, Report,
};

/// How often leases past their expiry are charged and old consumption is
/// forgotten.
pub const TICK: Duration = Duration::from_secs(1);

/// The most buckets one report may name. A sidecar with more batches them
/// over several reports; a larger report is answered with one error and
/// nothing in it is accounted.
pub use tollgate_proto::MAX_BUCKETS_PER_REPORT;

/// Answers queued per stream. One answer per report, and the stream reads
/// the next report only once the answer is queued, so a sidecar that stops
/// reading stops being read.
const ANSWER_BUFFER: usize = 4;

/// How long a refused stream waits for room to send its status.
const REFUSAL_WAIT: Duration = Duration::from_secs(1);

/// How long a new stream may take to send its first report.
const FIRST_REPORT_WAIT: Duration = Duration::from_secs(10);

/// The scopes counted across the fleet (`pod` is counted by each sidecar).
const FLEET_SCOPES: [&str; 3] = ["grant", "session", "global"];

/// The control plane's fleet-wide accounting: the allocator and which
/// stream each sidecar process reports on.
pub struct QuotaLedger {
    state: Mutex<State>,
}

struct State {
    allocator: Allocator,
    marker: LeaseMarker,
    served: ServedNodes,
    config: AllocatorConfig,
    /// The latest stream of each node, so a stream that ends after the same
    /// process opened a new one does not mark it disconnected, and a second
    /// process with the node's id is refused while the first one reports.
    streams: HashMap<String, Stream>,
    next_stream: u64,
    /// The latest time handed to the allocator.
    last: Instant,
}

/// A node's latest quota stream.
struct Stream {
    epoch: u64,
    id: u64,
    /// When it last reported.
    last_report: Instant,
}

/// Why a quota stream was not let in.
#[derive(Debug)]
pub(super) enum OpenError {
    /// Another process of the node reports on a live stream: the message
    /// for the refused process and the node's status row.
    Conflict(String),
    Failed(Status),
}

impl State {
    /// Now, read under the lock: the allocator needs times that never go
    /// backwards between calls, which times read before taking the lock
    /// (by racing streams, or the tick's scheduled instants) do not ensure.
    fn now(&mut self) -> Instant {
        self.last = self.last.max(Instant::now());
        self.last
    }
}

impl QuotaLedger {
    /// An allocator started now. It re-learns until the leases an earlier
    /// control plane on this data dir sent have all ended (`marker` says
    /// when), and grants nothing new until every node that one served
    /// (`served` lists them) has reported: for [`AWAIT_SERVED`], and on each
    /// bucket, while one is still silent, until the calls it may admit on
    /// fallback (bounded by the marker's time) are out of the bucket's
    /// window. With neither (a new data dir), it grants at once.
    pub fn new(config: AllocatorConfig, marker: PathBuf, served: PathBuf) -> Self {
        let now = Instant::now();
        let marker = LeaseMarker::open(marker);
        let prior_end = marker.prior_end(now);
        if let Some(end) = prior_end.filter(|end| *end > now) {
            tracing::info!(
                "leases an earlier control plane sent may be in use for {:?} more: re-learning what the sidecars hold until then",
                end - now
            );
        }
        let mut allocator = Allocator::resume(now, config, prior_end);
        let (served, prior_nodes) = ServedNodes::open(served, now);
        if !prior_nodes.is_empty() {
            tracing::info!(
                nodes = prior_nodes.len(),
                "an earlier control plane served quota to these nodes: granting nothing new until each has reported what it admitted on fallback (for {AWAIT_SERVED:?}; for a node still silent then, until the calls it may admit on fallback are out of each bucket's window)"
            );
            allocator.await_nodes(prior_nodes, now + AWAIT_SERVED);
            // A node silent past that wait may be cut off and still admit
            // on fallback until its last lease's end + its wait + the
            // horizon: each bucket keeps waiting until those calls are out
            // of its window.
            if let Some(end) = prior_end {
                allocator.await_fallback(end);
            }
        }
        Self {
            state: Mutex::new(State {
                allocator,
                marker,
                served,
                config,
                streams: HashMap::new(),
                next_stream: 0,
                last: now,
            }),
        }
    }

    /// The state, unless an allocator call panicked while holding it: then
    /// its sums may be half-updated and no lease it computes can be trusted.
    fn lock(&self) -> Result<MutexGuard<'_, State>, Status> {
        self.state.lock().map_err(|_| {
            tracing::error!("the quota allocator panicked earlier; refusing quota calls");
            Status::internal(
                "the control plane's quota allocator failed earlier and its accounting can no \
                 longer be trusted; restart the control plane (sidecars apply their \
                 on_unavailable setting meanwhile)",
            )
        })
    }

    /// Registers a new stream of `holder`: the id to end it with, and whether
    /// it is the first of a process (not a reconnect of the latest). Refused
    /// while another process of the node reports on a live stream (one that
    /// reported within a lease's lifetime): two sidecars sharing a node id
    /// would otherwise close each other's leases in turn. A restarted
    /// sidecar whose predecessor's stream was not seen to end is let in once
    /// that stream has been silent that long.
    fn open(&self, holder: &HolderKey) -> Result<(u64, bool), OpenError> {
        let mut state = self.lock().map_err(OpenError::Failed)?;
        let now = state.now();
        let silence = state.config.lease_ttl + state.config.grace;
        if let Some(live) = state.streams.get(&holder.node_id)
            && live.epoch != holder.epoch
            && now.saturating_duration_since(live.last_report) < silence
        {
            return Err(OpenError::Conflict(format!(
                "node {node}: a sidecar process (epoch {new}) opened a quota stream while another \
                 process with the same node id (epoch {old}) reports on a live one; it was \
                 refused so that it does not take over that process's leases. Two sidecars run \
                 with node id {node}: give each its own --node-id. (A restarted sidecar is let in \
                 once its predecessor's stream has been silent for {silence:?}.)",
                node = holder.node_id,
                new = holder.epoch,
                old = live.epoch,
            )));
        }
        state.next_stream += 1;
        let id = state.next_stream;
        let new_process = state
            .streams
            .get(&holder.node_id)
            .is_none_or(|s| s.epoch != holder.epoch);
        state.streams.insert(
            holder.node_id.clone(),
            Stream {
                epoch: holder.epoch,
                id,
                last_report: now,
            },
        );
        // Written down before its first lease (and fallback) is sent.
        state.served.connected(&holder.node_id);
        Ok((id, new_process))
    }

    /// Stream `id` of `holder` ended: the process is disconnected unless it
    /// has opened another stream since.
    fn close(&self, holder: &HolderKey, id: u64) {
        let Ok(mut state) = self.lock() else { return };
        let now = state.now();
        state.served.disconnected(&holder.node_id, now);
        if state
            .streams
            .get(&holder.node_id)
            .is_some_and(|s| s.id == id)
        {
            state.streams.remove(&holder.node_id);
            state.allocator.disconnect(holder);
        }
    }

    /// Accounts every bucket of one report, received now, under one lock,
    /// each by the limit of the version it names as `versions` resolved it.
    fn account(
        &self,
        holder: &HolderKey,
        report: &QuotaReport,
        versions: &mut Versions,
        metrics: &Metrics,
    ) -> Result<QuotaLeases, Status> {
        let mut answer = QuotaLeases {
            leases: Vec::new(),
            answers_report: report.report_seq,
            errors: Vec::new(),
        };
        let n = report.buckets.len();
        if n > MAX_BUCKETS_PER_REPORT {
            metrics.quota_bucket_errors.inc_by(n as u64);
            answer.errors.push(format!(
                "the report names {n} buckets, more than the {MAX_BUCKETS_PER_REPORT} one report \
                 may carry; nothing in it was accounted: send at most {MAX_BUCKETS_PER_REPORT} \
                 buckets per report"
            ));
            return Ok(answer);
        }
        answer.leases.reserve(n);
        // Parsed, and their limits looked up, before taking the lock.
        let parsed: Vec<_> = report.buckets.iter().map(|b| parse(b, versions)).collect();
        let mut state = self.lock()?;
        let now = state.now();
        if let Some(stream) = state.streams.get_mut(&holder.node_id)
            && stream.epoch == holder.epoch
        {
            stream.last_report = now;
        }
        // Before any lease goes out: note until when it may be used, so a
        // control plane started after this one re-learns that long.
        let longest = state.config.lease_ttl + state.config.grace;
        if let Err(e) = state.marker.cover(SystemTime::now() + longest) {
            tracing::error!(
                "cannot note until when leases are in use ({e}); a control plane restarted on this data dir may grant too early"
            );
        }
        for bucket in parsed {
            let result = bucket.and_then(|(id, key, r)| {
                state
                    .allocator
                    .report(now, holder, &key, &r)
                    .map(|lease| lease_proto(id, lease))
                    .map_err(|e| format!("{}: {e}", name(id)))
            });
            match result {
                Ok(lease) => answer.leases.push(lease),
                Err(error) => answer.errors.push(error),
            }
        }
        drop(state);
        metrics.quota_leases.inc_by(answer.leases.len() as u64);
        metrics
            .quota_bucket_errors
            .inc_by(answer.errors.len() as u64);
        Ok(answer)
    }

    /// Charges expired leases and forgets what left every window; names the
    /// nodes an earlier control plane served still silent once
    /// [`AWAIT_SERVED`] has passed; forgets served nodes that are gone and
    /// can no longer admit on fallback.
    pub fn tick(&self) {
        if let Ok(mut guard) = self.lock() {
            let now = guard.now();
            let state = &mut *guard;
            state.allocator.tick(now);
            let allocator = &state.allocator;
            state.served.prune(now, || allocator.may_fall_back(now));
            let silent = state.allocator.give_up_waiting(now);
            if !silent.is_empty() {
                tracing::warn!(
                    nodes = ?silent,
                    "{} node(s) an earlier control plane served have not reported within {AWAIT_SERVED:?}: each bucket grants nothing new until the calls they may admit on fallback are out of its window",
                    silent.len()
                );
            }
        }
    }

    /// Every bucket (of `server`, unless it is empty) as it stands now.
    pub fn list(&self, server: &str) -> Result<Vec<FleetBucket>, Status> {
        let (views, now) = {
            let mut state = self.lock()?;
            let now = state.now();
            (state.allocator.snapshot(now), now)
        };
        Ok(views
            .into_iter()
            .filter(|v| server.is_empty() || v.key.server == server)
            .map(|v| bucket_proto(v, now))
            .collect())
    }

    /// Buckets tracked now.
    pub fn buckets(&self) -> usize {
        self.lock().map_or(0, |mut state| {
            let now = state.now();
            state.allocator.snapshot(now).len()
        })
    }
}

/// Expires leases every [`TICK`] until the control plane drains.
pub async fn tick(cp: Arc<ControlPlane>) {
    let mut draining = cp.drain.latch();
    let mut every = tokio::time::interval(TICK);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = every.tick() => cp.quota.tick(),
            () = draining.set() => return,
        }
    }
}

/// A bucket report as the allocator takes it, with the limit of the version
/// it names as stored (the report's `max` and `window_ms` are the node's and
/// are not read), or why it cannot be.
fn parse<'a>(
    b: &'a BucketReport,
    versions: &mut Versions,
) -> Result<(&'a BucketId, BucketKey, Report), String> {
    let Some(id) = b.bucket.as_ref() else {
        return Err("a bucket report without its bucket (server, counter, scope, key)".to_owned());
    };
    if id.server.is_empty() || id.counter.is_empty() {
        return Err(format!(
            "{}: a bucket needs its server and counter; both must be non-empty",
            name(id)
        ));
    }
    if !FLEET_SCOPES.contains(&id.scope.as_str()) {
        return Err(format!(
            "{}: scope {:?} is not counted across the fleet; expected grant, session or global",
            name(id),
            id.scope
        ));
    }
    if id.scope == "global" && !id.key.is_empty() {
        return Err(format!(
            "{}: a global bucket has no key, but {:?} was given; send key \"\"",
            name(id),
            id.key
        ));
    }
    let spec = versions
        .spec(b.policy_version, id)
        .map_err(|e| format!("{}: {e}", name(id)))?;
    let key = BucketKey {
        server: id.server.clone(),
        counter: id.counter.clone(),
        scope_key: id.key.clone(),
    };
    let report = Report {
        policy_version: b.policy_version,
        spec,
        admitted_total: b.admitted_total,
        unleased_total: b.unleased_total,
        denied: b.denied,
        held: b.held.as_ref().map(|h| HeldLease {
            seq: h.seq,
            granted_total: h.granted_total,
        }),
        demand: b.demand,
        standby: b.standby,
        window_admitted: b.window_admitted,
    };
    Ok((id, key, report))
}

/// `server/counter` with its scope and key, for error lines.
fn name(id: &BucketId) -> String {
    if id.key.is_empty() {
        format!("bucket {}/{} ({})", id.server, id.counter, id.scope)
    } else {
        format!(
            "bucket {}/{} ({} {:?})",
            id.server, id.counter, id.scope, id.key
        )
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn lease_proto(id: &BucketId, lease: Lease) -> LeaseProto {
    LeaseProto {
        bucket: Some(id.clone()),
        seq: lease.seq,
        granted_total: lease.granted_total,
        ttl_ms: millis(lease.ttl),
        refresh_ms: millis(lease.refresh),
        fallback: lease.fallback,
        fallback_after_ms: millis(lease.fallback_after),
        fallback_for_ms: millis(lease.fallback_for),
    }
}

fn bucket_proto(v: BucketView, now: Instant) -> FleetBucket {
    FleetBucket {
        server: v.key.server,
        counter: v.key.counter,
        key: v.key.scope_key,
        policy_version: v.policy_version,
        max: v.max,
        window_ms: millis(v.window),
        consumed: v.consumed,
        unleased: v.unleased,
        reserved: v.reserved,
        learning: v.learning,
        holders: v
            .holders
            .into_iter()
            .map(|h| FleetHolder {
                node_id: h.node_id,
                epoch: h.epoch,
                connected: h.connected,
                reservation: h.reservation,
                granted_total: h.granted_total,
                admitted_total: h.admitted_total,
                demand: h.demand,
                expires_in_ms: if h.expired {
                    0
                } else {
                    millis(h.expires.saturating_duration_since(now))
                },
                expired: h.expired,
                unleased_total: h.unleased_total,
                denied: h.denied,
            })
            .collect(),
    }
}

pub struct QuotaService {
    cp: Arc<ControlPlane>,
}

impl QuotaService {
    pub fn new(cp: Arc<ControlPlane>) -> Self {
        Self { cp }
    }
}

#[tonic::async_trait]
impl Quota for QuotaService {
    type StreamQuotaStream = ReceiverStream<Result<QuotaLeases, Status>>;

    async fn stream_quota(
        &self,
        request: Request<Streaming<QuotaReport>>,
    ) -> Result<Response<Self::StreamQuotaStream>, Status> {
        let cp = self.cp.clone();
        let Some(tracked) = cp.drain.track() else {
            return Err(shutting_down());
        };
        let permit = match cp.admission.admit().await {
            Ok(permit) => permit,
            Err(refused) => {
                cp.metrics.streams_refused.inc();
                return Err(Status::unavailable(refused.to_string()));
            }
        };
        let certs = request.peer_certs();
        let mut inbound = request.into_inner();
        let first = match tokio::time::timeout(FIRST_REPORT_WAIT, inbound.message()).await {
            Ok(Ok(Some(first))) => first,
            Ok(Ok(None)) => {
                return Err(Status::invalid_argument(
                    "the quota stream closed before its first report",
                ));
            }
            Ok(Err(status)) => return Err(status),
            Err(_) => {
                return Err(Status::deadline_exceeded(
                    "no first quota report within 10s of opening the stream",
                ));
            }
        };
        let mut node = first
            .node
            .clone()
            .filter(|n| !n.id.is_empty())
            .ok_or_else(|| {
                Status::invalid_argument(
                    "the first quota report must carry node, with a non-empty node.id (the \
                     sidecar's node id)",
                )
            })?;
        cp.admit_node("quota", certs, &mut node)?;
        let node_id = node.id;
        if first.epoch == 0 {
            return Err(Status::invalid_argument(format!(
                "node {node_id}: the first quota report must carry a non-zero epoch, random per \
                 sidecar process, so a restarted sidecar's counts are not taken for its \
                 predecessor's"
            )));
        }
        let holder = HolderKey {
            node_id,
            epoch: first.epoch,
        };
        let id = match cp.quota.open(&holder) {
            Ok((id, new_process)) => {
                if new_process {
                    cp.fleet.update(&holder.node_id, |n| n.quota_resolved());
                }
                id
            }
            Err(OpenError::Failed(status)) => return Err(status),
            Err(OpenError::Conflict(conflict)) => {
                tracing::warn!(node = %holder.node_id, "{conflict}");
                cp.fleet.update(&holder.node_id, |n| {
                    n.quota_conflict(conflict.clone(), crate::status::unix_now())
                });
                return Err(Status::already_exists(conflict));
            }
        };
        let (tx, rx) = mpsc::channel(ANSWER_BUFFER);
        tokio::spawn(run(cp, holder, id, inbound, first, tx, permit, tracked));
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

/// Why a stream stopped.
enum End {
    /// The sidecar closed it, or went away.
    Closed,
    /// The control plane is stopping.
    Drained,
    /// The sidecar broke the protocol: the stream ends with this status.
    Refused(Status),
}

/// Serves one stream until it ends, then marks the process disconnected.
#[allow(clippy::too_many_arguments)]
async fn run(
    cp: Arc<ControlPlane>,
    holder: HolderKey,
    id: u64,
    mut inbound: Streaming<QuotaReport>,
    first: QuotaReport,
    tx: mpsc::Sender<Result<QuotaLeases, Status>>,
    permit: OwnedSemaphorePermit,
    tracked: Tracked,
) {
    cp.metrics.quota_streams.inc();
    tracing::info!(node = %holder.node_id, epoch = holder.epoch, "quota stream opened");
    let mut draining = cp.drain.latch();
    let mut end = on_report(&cp, &holder, first, &tx, &mut draining).await;
    // The opening handshake is over once the first answer is queued.
    drop(permit);
    while end.is_none() {
        end = tokio::select! {
            msg = inbound.message() => match msg {
                Ok(Some(report)) => on_report(&cp, &holder, report, &tx, &mut draining).await,
                Ok(None) => Some(End::Closed),
                Err(status) => {
                    tracing::debug!(node = %holder.node_id, %status, "quota stream failed");
                    Some(End::Closed)
                }
            },
            () = tx.closed() => Some(End::Closed),
            () = draining.set() => Some(End::Drained),
        };
    }
    cp.quota.close(&holder, id);
    cp.metrics.quota_streams.dec();
    match end {
        Some(End::Refused(status)) => {
            tracing::warn!(node = %holder.node_id, error = status.message(), "quota stream refused");
            // Ends the response stream with that status, unless the sidecar
            // has stopped reading (or is gone).
            let _ = tokio::time::timeout(REFUSAL_WAIT, tx.send(Err(status))).await;
        }
        Some(End::Drained) => {
            tracing::debug!(node = %holder.node_id, "quota stream ended: the control plane is stopping");
        }
        _ => tracing::info!(node = %holder.node_id, "quota stream closed"),
    }
    // Dropping `tx` ends the response stream (with status OK unless a
    // status was queued); only then is the stream no longer counted open.
    drop(tx);
    drop(tracked);
}

/// Accounts one report and queues its answer; `Some` when the stream ends.
async fn on_report(
    cp: &ControlPlane,
    holder: &HolderKey,
    report: QuotaReport,
    tx: &mpsc::Sender<Result<QuotaLeases, Status>>,
    draining: &mut Latch,
) -> Option<End> {
    if report.epoch != 0 && report.epoch != holder.epoch {
        return Some(End::Refused(Status::invalid_argument(format!(
            "node {}: a quota stream belongs to one sidecar process, opened with epoch {}, but \
             this report carries epoch {}; open a new stream for the new process",
            holder.node_id, holder.epoch, report.epoch
        ))));
    }
    cp.metrics.quota_reports.inc();
    // A report over the bucket cap is refused whole: nothing to look up.
    let named: std::collections::BTreeSet<u64> = if report.buckets.len() <= MAX_BUCKETS_PER_REPORT {
        report.buckets.iter().map(|b| b.policy_version).collect()
    } else {
        Default::default()
    };
    let mut versions = cp.limits.resolve(cp, &holder.node_id, named).await;
    let answer = match cp
        .quota
        .account(holder, &report, &mut versions, &cp.metrics)
    {
        Ok(answer) => answer,
        Err(status) => return Some(End::Refused(status)),
    };
    tokio::select! {
        sent = tx.send(Ok(answer)) => sent.err().map(|_| End::Closed),
        () = draining.set() => Some(End::Drained),
    }
}
