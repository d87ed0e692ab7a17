//! The gRPC service: one task per quota stream, and the tick.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tollgate_proto::v1::quota_server::Quota;
use tollgate_proto::v1::{QuotaLeases, QuotaReport};
use tonic::{Request, Response, Status, Streaming};

use super::super::ControlPlane;
use super::super::Opened;
use super::super::drain::{Latch, Tracked};
use super::ledger::OpenError;
use super::{MAX_BUCKETS_PER_REPORT, TICK};
use crate::quota::HolderKey;

/// Answers queued per stream. One answer per report, and the stream reads
/// the next report only once the answer is queued, so a sidecar that stops
/// reading stops being read.
const ANSWER_BUFFER: usize = 4;

/// How long a refused stream waits for room to send its status.
const REFUSAL_WAIT: Duration = Duration::from_secs(1);

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
        let Opened {
            tracked,
            permit,
            certs,
            inbound,
            first,
        } = cp.open_node_stream(request, "quota report").await?;
        let (node, _) = cp.admit_node("quota", "first quota report", certs, first.node.as_ref())?;
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
