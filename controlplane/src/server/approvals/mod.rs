//! `Approvals.StreamApprovals`: the nodes' side of the fleet's approval
//! requests ([`crate::approvals`]).
//!
//! Per stream: the first message names the node, admitted like a policy or
//! quota stream (the proved node id replaces whatever a request says). Each
//! `ApprovalRequest` is answered `Filed` (with the reason when refused),
//! each `UseApproval` by a `UseAnswer` with the same `seq`. Every decision
//! or expiry of a request the node filed is pushed as `decided`, on every
//! stream the node has open; on (re)connecting, the node first hears the
//! decisions it may have missed ([`Approvals::decided_for`]). Messages are
//! handled one at a time and answers go through a small buffer: a node that
//! floods without reading its answers is slowed, not buffered for.

pub(super) mod operators;
pub(super) mod wire;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tollgate_policy::approvals::{ApprovalRecord, ApprovalState, UseOutcome};
use tollgate_proto::v1::{
    self as pb, ApprovalsDown, ApprovalsUp, Filed, UseAnswer, approvals_down, approvals_up,
};
use tonic::{Request, Response, Status, Streaming};

use super::drain::Latch;
use super::{ControlPlane, Opened};
use crate::approvals::Approvals;

/// Answers queued for a node before its stream's reading waits.
const ANSWER_BUFFER: usize = 16;
/// How long a refusing stream waits to queue its closing status.
const REFUSAL_WAIT: Duration = Duration::from_secs(1);
/// The largest message either way: a request's arguments (64 KiB) and its
/// other fields (1 KiB each), with room to spare.
pub const MAX_MESSAGE_BYTES: usize = 256 * 1024;

pub struct ApprovalsService {
    cp: Arc<ControlPlane>,
}

impl ApprovalsService {
    pub fn new(cp: Arc<ControlPlane>) -> Self {
        Self { cp }
    }
}

#[tonic::async_trait]
impl pb::approvals_server::Approvals for ApprovalsService {
    type StreamApprovalsStream = ReceiverStream<Result<ApprovalsDown, Status>>;

    async fn stream_approvals(
        &self,
        request: Request<Streaming<ApprovalsUp>>,
    ) -> Result<Response<Self::StreamApprovalsStream>, Status> {
        let cp = self.cp.clone();
        let Opened {
            tracked,
            permit,
            certs,
            inbound,
            first,
        } = cp.open_node_stream(request, "approvals message").await?;
        let (node, _) = cp.admit_node(
            "approvals",
            "first approvals message",
            certs,
            first.node.as_ref(),
        )?;
        let (tx, rx) = mpsc::channel(ANSWER_BUFFER);
        tokio::spawn(async move {
            let node = node.id;
            // Subscribed before the replay is read: nothing decided in
            // between is missed (at worst it is sent twice).
            let changes = cp.approvals.subscribe();
            let mut stream = NodeStream {
                approvals: &cp.approvals,
                node: &node,
                tx: &tx,
                draining: cp.drain.latch(),
            };
            let open = cp.metrics.approvals.streams.clone();
            open.inc();
            tracing::info!(node = %node, "approvals stream opened");
            let mut end = stream.on_message(first).await;
            if end.is_none() {
                end = stream.replay().await;
            }
            drop(permit);
            if end.is_none() {
                end = Some(stream.serve(inbound, changes).await);
            }
            match end {
                Some(End::Refused(status)) => {
                    tracing::warn!(node = %node, error = status.message(), "approvals stream refused");
                    let _ = tokio::time::timeout(REFUSAL_WAIT, tx.send(Err(status))).await;
                }
                Some(End::Drained) => {
                    tracing::debug!(node = %node, "approvals stream ended: the control plane is stopping")
                }
                _ => tracing::info!(node = %node, "approvals stream closed"),
            }
            open.dec();
            // Dropping `tx` ends the response stream; only then is the
            // stream no longer counted open.
            drop(tx);
            drop(tracked);
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

/// Why a stream stopped.
enum End {
    /// The node closed it, or went away.
    Closed,
    /// The control plane is stopping.
    Drained,
    /// The stream ends with this status.
    Refused(Status),
}

/// One node's open stream.
struct NodeStream<'a> {
    approvals: &'a Approvals,
    node: &'a str,
    tx: &'a mpsc::Sender<Result<ApprovalsDown, Status>>,
    draining: Latch,
}

impl NodeStream<'_> {
    /// Handles messages and pushes the node's decisions until the stream
    /// ends.
    async fn serve(
        &mut self,
        mut inbound: Streaming<ApprovalsUp>,
        mut changes: broadcast::Receiver<ApprovalRecord>,
    ) -> End {
        loop {
            let end = tokio::select! {
                msg = inbound.message() => match msg {
                    Ok(Some(msg)) => self.on_message(msg).await,
                    Ok(None) => Some(End::Closed),
                    Err(status) => {
                        tracing::debug!(node = %self.node, %status, "approvals stream failed");
                        Some(End::Closed)
                    }
                },
                change = changes.recv() => match change {
                    Ok(record) if is_decision_for(&record, self.node) => {
                        self.send(decided(record)).await
                    }
                    Ok(_) => None,
                    Err(broadcast::error::RecvError::Lagged(missed)) => {
                        tracing::warn!(node = %self.node, missed, "approvals stream fell behind; resending its decisions");
                        self.replay().await
                    }
                    Err(broadcast::error::RecvError::Closed) => Some(End::Drained),
                },
                () = self.tx.closed() => Some(End::Closed),
                () = self.draining.set() => Some(End::Drained),
            };
            if let Some(end) = end {
                return end;
            }
        }
    }

    /// Pushes every decision the node may have missed.
    async fn replay(&mut self) -> Option<End> {
        for record in self.approvals.decided_for(self.node) {
            if let Some(end) = self.send(decided(record)).await {
                return Some(end);
            }
        }
        None
    }

    async fn on_message(&mut self, msg: ApprovalsUp) -> Option<End> {
        let answer = match msg.kind {
            Some(approvals_up::Kind::Hello(_)) => return None,
            Some(approvals_up::Kind::Request(request)) => {
                let id = request.id.clone();
                let record = wire::request_to_record(request, self.node);
                let error = match self.approvals.file(record).await {
                    Ok(()) => String::new(),
                    Err(e) => {
                        tracing::warn!(node = %self.node, error = %e, "approval request refused");
                        e.to_string()
                    }
                };
                approvals_down::Kind::Filed(Filed { id, error })
            }
            Some(approvals_up::Kind::Use(u)) => {
                let call = wire::use_to_call(&u);
                let only = Some(u.approval_id.as_str()).filter(|id| !id.is_empty());
                let outcome = match self.approvals.use_for(&call, only, self.node).await {
                    Ok(outcome) => outcome,
                    // Not let through on doubt: the node's pending use
                    // times out, and its retry finds the approval used.
                    Err(e) => return Some(End::Refused(Status::unavailable(e.to_string()))),
                };
                approvals_down::Kind::Use(use_answer(u.seq, outcome))
            }
            None => approvals_down::Kind::Filed(Filed {
                id: String::new(),
                error: "an approvals message must carry hello, request or use; this one carries \
                        none (a newer sidecar than this control plane?)"
                    .to_owned(),
            }),
        };
        self.send(answer).await
    }

    async fn send(&mut self, kind: approvals_down::Kind) -> Option<End> {
        let msg = ApprovalsDown { kind: Some(kind) };
        tokio::select! {
            sent = self.tx.send(Ok(msg)) => sent.err().map(|_| End::Closed),
            () = self.draining.set() => Some(End::Drained),
        }
    }
}

/// A decision or expiry of a request `node` filed: what its streams push.
fn is_decision_for(r: &ApprovalRecord, node: &str) -> bool {
    r.node == node
        && matches!(
            r.state,
            ApprovalState::Approved | ApprovalState::Denied | ApprovalState::Expired
        )
}

fn decided(r: ApprovalRecord) -> approvals_down::Kind {
    approvals_down::Kind::Decided(wire::record_to_proto(r))
}

fn use_answer(seq: u64, outcome: UseOutcome) -> UseAnswer {
    match outcome {
        UseOutcome::Granted(r) => UseAnswer {
            seq,
            approval_id: r.id.clone(),
            state: pb::ApprovalState::Used.into(),
            approval: Some(wire::record_to_proto(r)),
        },
        UseOutcome::Found(r) => UseAnswer {
            seq,
            approval_id: String::new(),
            state: wire::state_to_proto(r.state).into(),
            approval: Some(wire::record_to_proto(r)),
        },
        UseOutcome::None => UseAnswer {
            seq,
            approval_id: String::new(),
            state: pb::ApprovalState::Unspecified.into(),
            approval: None,
        },
    }
}
