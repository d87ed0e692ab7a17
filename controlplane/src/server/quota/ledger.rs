//! The ledger: the one allocator, the quota streams open now, and what
//! the restart-safety files say, behind one lock.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard};
use std::time::SystemTime;

use tokio::time::Instant;
use tollgate_proto::v1::{FleetBucket, QuotaLeases, QuotaReport};
use tonic::Status;

use super::super::restart::marker::LeaseMarker;
use super::super::restart::served_nodes::{AWAIT_SERVED, ServedNodes};
use super::super::stored_limits::Versions;
use super::MAX_BUCKETS_PER_REPORT;
use super::wire::{bucket_proto, lease_proto, name, parse};
use crate::metrics::Metrics;
use crate::quota::{Allocator, AllocatorConfig, HolderKey};

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
    pub(super) fn open(&self, holder: &HolderKey) -> Result<(u64, bool), OpenError> {
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
    pub(super) fn close(&self, holder: &HolderKey, id: u64) {
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
    pub(super) fn account(
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
