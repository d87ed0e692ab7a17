//! The operators' side of approvals in the admin API: list, watch and
//! decide (the `Admin` methods in `admin.rs` check the role, then call
//! these). The one place an [`ApprovalError`] becomes a gRPC status.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tollgate_policy::approvals::{ApprovalError, ApprovalState};
use tollgate_proto::v1::{
    Approval, DecideApprovalRequest, ListApprovalsRequest, ListApprovalsResponse,
    WatchApprovalsResponse,
};
use tonic::Status;
use tonic::metadata::MetadataMap;

use super::super::ControlPlane;
use super::super::authorize::Action;
use super::wire;
use crate::approvals::bounds::MAX_FIELD;
use crate::auth::Principal;
use crate::role::Role;

/// How often a watch checks its token again.
const RECHECK: Duration = Duration::from_secs(1);

/// The watch's response stream.
pub type Watch = ReceiverStream<Result<WatchApprovalsResponse, Status>>;

/// The requests in the asked state (all for UNSPECIFIED).
pub fn list(
    cp: &ControlPlane,
    req: &ListApprovalsRequest,
) -> Result<ListApprovalsResponse, Status> {
    let state = filter(req)?;
    Ok(ListApprovalsResponse {
        approvals: snapshot(cp, state),
    })
}

/// The list, then each request as it is filed or changes, until the caller
/// goes away, its token stops being valid, or the control plane stops.
pub fn watch(
    cp: Arc<ControlPlane>,
    metadata: MetadataMap,
    req: &ListApprovalsRequest,
) -> Result<Watch, Status> {
    let state = filter(req)?;
    let Some(tracked) = cp.drain.track() else {
        return Err(super::super::distribution::shutting_down());
    };
    let (tx, rx) = mpsc::channel(16);
    let mut changes = cp.approvals.subscribe();
    tokio::spawn(async move {
        // Counted open until this task ends; dropped after `tx`.
        let _tracked = tracked;
        let tx = tx;
        let mut draining = cp.drain.latch();
        let mut recheck = tokio::time::interval(RECHECK);
        let mut next = Some(whole(&cp, state));
        loop {
            if let Some(msg) = next.take()
                && tx.send(Ok(msg)).await.is_err()
            {
                return;
            }
            tokio::select! {
                biased;
                () = draining.set() => return,
                change = changes.recv() => next = match change {
                    Ok(record) => Some(WatchApprovalsResponse {
                        snapshot: false,
                        approvals: vec![wire::record_to_proto(record)],
                    }),
                    Err(broadcast::error::RecvError::Lagged(_)) => Some(whole(&cp, state)),
                    Err(broadcast::error::RecvError::Closed) => return,
                },
                _ = recheck.tick() => {
                    if let Err(e) = cp.auth.check(&metadata, Role::Viewer, Action::ApprovalsRead.command()) {
                        let _ = tx.send(Err(e.into())).await;
                        return;
                    }
                }
                () = tx.closed() => return,
            }
        }
    });
    Ok(ReceiverStream::new(rx))
}

/// Decides as `who`; the audit trail records it (in the core).
pub async fn decide(
    cp: &ControlPlane,
    who: &Principal,
    req: DecideApprovalRequest,
) -> Result<Approval, Status> {
    if req.reason.len() > MAX_FIELD {
        return Err(Status::invalid_argument(format!(
            "the reason is {} bytes; keep it under {MAX_FIELD}",
            req.reason.len()
        )));
    }
    cp.approvals
        .decide(&req.id, req.approve, &req.reason, &who.name)
        .await
        .map(wire::record_to_proto)
        .map_err(status)
}

/// The one place a refused decision becomes a status.
fn status(e: ApprovalError) -> Status {
    match e {
        ApprovalError::Unknown(_) => Status::not_found(e.to_string()),
        ApprovalError::NotPending { .. } => Status::failed_precondition(e.to_string()),
        ApprovalError::NoReason(_) => Status::invalid_argument(e.to_string()),
        ApprovalError::Duplicate(_) => Status::already_exists(e.to_string()),
    }
}

fn filter(req: &ListApprovalsRequest) -> Result<Option<ApprovalState>, Status> {
    if req.state == 0 {
        return Ok(None);
    }
    wire::state_from_proto(req.state).map(Some).ok_or_else(|| {
        Status::invalid_argument(format!(
            "approval state {} is not one this control plane knows (pending, approved, denied, \
             expired, used)",
            req.state
        ))
    })
}

fn snapshot(cp: &ControlPlane, state: Option<ApprovalState>) -> Vec<Approval> {
    cp.approvals
        .list(state)
        .into_iter()
        .map(wire::record_to_proto)
        .collect()
}

fn whole(cp: &ControlPlane, state: Option<ApprovalState>) -> WatchApprovalsResponse {
    WatchApprovalsResponse {
        snapshot: true,
        approvals: snapshot(cp, state),
    }
}
