//! `PolicyDistribution.StreamPolicy`: one stream per sidecar, state of the
//! world with one resource (the sidecar's whole bundle).
//!
//! Per stream: the first request names the node; the version it should run
//! (the served one, or a rollout's choice for it, perhaps with a shadow
//! beside it: see [`super::rollouts`]) is sent unless the node already runs
//! it or refused it;
//! every response carries a fresh nonce; a request echoing the last nonce is
//! an ACK (or a NACK with `error_detail`); any other nonce is stale and
//! ignored; a newly pushed version, or a rollout moving on, reaches every
//! stream through a watch.
//!
//! Refusals are written to the store when they arrive and read back when a
//! node first connects to this process, so a restart does not make the
//! control plane resend a version a node refused. Streams are let in
//! through [`StreamAdmission`](super::admission::StreamAdmission) and end cleanly when
//! the control plane drains.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, mpsc, watch};
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tollgate_proto::v1::policy_distribution_server::PolicyDistribution;
use tollgate_proto::v1::{ErrorDetail, Node, PolicyRequest, PolicyResponse};
use tonic::{Request, Response, Status, Streaming};

use super::Opened;
use super::distributed::distribute;
use super::drain::{Latch, Tracked};
use super::{ControlPlane, Latest};
use crate::rollout::Desired;
use crate::status::{NodeStatus, Session, unix_now};
use crate::store::Nack;

/// Responses queued per stream. The stream sends at most one bundle per
/// answer or push, so a small bound is enough; a slow reader only slows
/// its own stream.
const RESPONSE_BUFFER: usize = 4;

pub struct Distribution {
    cp: Arc<ControlPlane>,
}

impl Distribution {
    pub fn new(cp: Arc<ControlPlane>) -> Self {
        Self { cp }
    }
}

#[tonic::async_trait]
impl PolicyDistribution for Distribution {
    type StreamPolicyStream = ReceiverStream<Result<PolicyResponse, Status>>;

    async fn stream_policy(
        &self,
        request: Request<Streaming<PolicyRequest>>,
    ) -> Result<Response<Self::StreamPolicyStream>, Status> {
        let cp = self.cp.clone();
        let Opened {
            tracked,
            permit,
            certs,
            inbound,
            first,
        } = cp.open_node_stream(request, "request").await?;
        let (node, identity) =
            cp.admit_node("policy", "first request", certs, first.node.as_ref())?;
        // Once per node and process: what it refused before, perhaps before
        // a restart. Read inside the admission permit, so a storm of
        // reconnects reads the store a bounded number at a time.
        let stored = if cp.fleet.needs_memory(&node.id) {
            let id = node.id.clone();
            match cp.store(move |s| s.nacks(&id)).await {
                Ok(nacks) => Some(nacks),
                Err(status) => {
                    return Err(Status::unavailable(format!(
                        "cannot read node {}'s refused versions, so cannot tell what may be \
                         sent to it: {}; retry with backoff",
                        node.id,
                        status.message()
                    )));
                }
            }
        } else {
            None
        };
        // Before the stream counts as open: which stored version the node
        // runs, so that its quota reports under it are accepted from the start.
        let running = if first.response_nonce.is_empty() {
            stored_version_run(&cp, &node.id, &first).await
        } else {
            None
        };
        let (tx, rx) = mpsc::channel(RESPONSE_BUFFER);
        let stream = NodeStream::open(cp, (node, identity), stored, running, tx, &first);
        tokio::spawn(stream.run(inbound, first, permit, tracked));
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

/// Refuses a stream opened while the control plane stops.
pub(super) fn shutting_down() -> Status {
    Status::unavailable("the control plane is shutting down; retry with backoff")
}

/// One node's open stream.
struct NodeStream {
    cp: Arc<ControlPlane>,
    id: String,
    session: Session,
    tx: mpsc::Sender<Result<PolicyResponse, Status>>,
    latest: watch::Receiver<Option<Arc<Latest>>>,
    /// Set when the control plane stops: the stream ends.
    draining: Latch,
    /// Wakes when a rollout may change what this node should run.
    rollouts: watch::Receiver<u64>,
    /// The node's labels, which rollouts select by.
    labels: std::collections::HashMap<String, String>,
    /// The last response sent on this stream.
    last_sent: Option<Sent>,
    /// The content hash the node last reported running.
    reported_hash: String,
}

/// The stream can no longer send: the node went away.
struct Closed;

/// A response sent: its nonce, what it carried, and the content hashes of
/// its live bundle and of the bundle an answer concerns (the shadow's when
/// there is one: a refusal of the pair is recorded against the new version).
#[derive(Clone)]
struct Sent {
    nonce: String,
    desired: Desired,
    refusable: (u64, String),
}

/// The stored version a node's report (a request without a nonce) says it
/// runs, if its content hash is that version's: the latest's, or the one its
/// `version_info` names, read back from the store — in the form this
/// control plane sends, or as stored (what a control plane that did not key
/// grants sent). `None` for anything else
/// — a policy that did not come from this control plane, or a store that
/// cannot be read (logged; the node's quota reports under that version are
/// then refused until it is sent a version or reports again).
async fn stored_version_run(cp: &ControlPlane, node: &str, req: &PolicyRequest) -> Option<u64> {
    if req.content_hash.is_empty() {
        return None;
    }
    let latest = cp.latest.borrow().clone()?;
    if latest.content_hash == req.content_hash {
        return Some(latest.version);
    }
    let version: u64 = req.version_info.parse().ok()?;
    if version == 0 {
        return None;
    }
    let key = cp.grant_key.clone();
    let reported = req.content_hash.clone();
    // Keying the version is CPU work: done on the blocking pool with the read.
    let runs = cp.store(move |s| {
        Ok(s.get(version)?.is_some_and(|v| {
            v.content_hash == reported
                || distribute(&v.content, &v.content_hash, &key).content_hash == reported
        }))
    });
    match runs.await {
        Ok(runs) => runs.then_some(version),
        Err(status) => {
            tracing::warn!(
                node,
                version,
                "cannot read the version the node says it runs, so its quota reports under it \
                 are refused until it reports again: {}",
                status.message()
            );
            None
        }
    }
}

/// What a node's report of what it runs (a request without a nonce) says
/// about its row, given the latest version.
fn apply_report(row: &mut NodeStatus, latest: Option<&Latest>, req: &PolicyRequest) {
    let Some(latest) = latest else { return };
    if latest.content_hash == req.content_hash {
        row.runs(latest.version);
    } else {
        row.still_refuses(latest.version, req.version_info.parse().ok());
    }
}

impl NodeStream {
    fn open(
        cp: Arc<ControlPlane>,
        (node, identity): (Node, String),
        stored: Option<Vec<Nack>>,
        running: Option<u64>,
        tx: mpsc::Sender<Result<PolicyResponse, Status>>,
        first: &PolicyRequest,
    ) -> Self {
        let id = node.id.clone();
        let labels = node.labels.clone();
        let latest = cp.latest.subscribe();
        let rollouts = cp.rollouts.subscribe();
        // The node's first report (what it runs) is applied as it connects.
        let report = first.response_nonce.is_empty();
        let current = latest.borrow().clone();
        let session = cp.fleet.connect_with(node, identity, stored, |row| {
            if report {
                apply_report(row, current.as_deref(), first);
            }
            if let Some(version) = running {
                row.given(version);
            }
        });
        let draining = cp.drain.latch();
        tracing::info!(node = %id, "policy stream opened");
        Self {
            cp,
            id,
            session,
            tx,
            latest,
            rollouts,
            labels,
            draining,
            last_sent: None,
            reported_hash: if report {
                first.content_hash.clone()
            } else {
                String::new()
            },
        }
    }

    async fn run(
        mut self,
        mut inbound: Streaming<PolicyRequest>,
        first: PolicyRequest,
        permit: OwnedSemaphorePermit,
        tracked: Tracked,
    ) {
        let opened = if first.response_nonce.is_empty() {
            // Its report was applied when the stream opened.
            self.send_latest().await
        } else {
            self.on_request(first).await
        };
        drop(permit);
        let mut drained = false;
        if opened.is_ok() {
            loop {
                let step = tokio::select! {
                    msg = inbound.message() => match msg {
                        Ok(Some(req)) => self.on_request(req).await,
                        Ok(None) => Err(Closed),
                        Err(status) => {
                            tracing::debug!(node = %self.id, %status, "policy stream failed");
                            Err(Closed)
                        }
                    },
                    changed = self.latest.changed() => match changed {
                        Ok(()) => self.send_latest().await,
                        Err(_) => Err(Closed),
                    },
                    changed = self.rollouts.changed() => match changed {
                        Ok(()) => self.send_latest().await,
                        Err(_) => Err(Closed),
                    },
                    () = self.tx.closed() => Err(Closed),
                    () = self.draining.set() => {
                        drained = true;
                        Err(Closed)
                    }
                };
                if step.is_err() {
                    break;
                }
            }
        }
        self.cp.fleet.disconnect(&self.id, self.session);
        if drained {
            tracing::debug!(node = %self.id, "policy stream ended: the control plane is stopping");
        } else {
            tracing::info!(node = %self.id, "policy stream closed");
        }
        // Dropping `self.tx` ends the response stream with status OK; only
        // then is the stream no longer counted as open.
        drop(self);
        drop(tracked);
    }

    async fn on_request(&mut self, req: PolicyRequest) -> Result<(), Closed> {
        if req.response_nonce.is_empty() {
            // Not an answer: the node says what it runs (on connect, or
            // after reconnecting).
            let running = stored_version_run(&self.cp, &self.id, &req).await;
            let latest = self.latest.borrow().clone();
            self.cp.fleet.update(&self.id, |n| {
                apply_report(n, latest.as_deref(), &req);
                if let Some(version) = running {
                    n.given(version);
                }
            });
            self.reported_hash = req.content_hash;
        } else {
            let Some(Sent {
                nonce,
                desired,
                refusable: (version, content_hash),
            }) = self.last_sent.clone()
            else {
                self.cp.metrics.stale_nonces.inc();
                return Ok(());
            };
            if req.response_nonce != nonce {
                // Answers an older response: ignore it entirely.
                self.cp.metrics.stale_nonces.inc();
                return Ok(());
            }
            self.reported_hash = req.content_hash;
            match req.error_detail {
                Some(detail) => {
                    let error = describe(&detail);
                    tracing::warn!(node = %self.id, version, %error, "NACK");
                    self.cp.metrics.nacks.inc();
                    let nack = Nack {
                        version,
                        content_hash,
                        error,
                        at: unix_now(),
                    };
                    self.remember(&nack).await;
                    self.cp.fleet.update(&self.id, |n| n.nacked(nack));
                }
                None => {
                    self.cp.metrics.acks.inc();
                    self.cp.fleet.update(&self.id, |n| {
                        n.acked(desired.version, unix_now());
                        n.acked_shadow(desired.shadow.unwrap_or(0));
                    });
                }
            }
        }
        self.send_latest().await
    }

    /// Sends what the node should run (the served version, or a rollout's
    /// choice, with a shadow beside it) unless the node runs it, was already
    /// sent it on this stream, or refused it.
    async fn send_latest(&mut self) -> Result<(), Closed> {
        let Some(served) = self.latest.borrow_and_update().clone() else {
            return Ok(());
        };
        self.rollouts.borrow_and_update();
        let want = self
            .cp
            .rollouts
            .desired(&self.id, &self.labels, served.version);
        let (runs, applied_shadow) = self
            .cp
            .fleet
            .update(&self.id, |n| {
                n.desire(want);
                let view = n.view(0);
                (view.runs, view.runs.and_then(|r| r.shadow))
            })
            .unwrap_or((None, None));
        if self.last_sent.as_ref().is_some_and(|s| s.desired == want) {
            return Ok(());
        }
        let bundle = |version| {
            let cp = self.cp.clone();
            async move { cp.rollouts.bundle(&cp, version).await }
        };
        let (live, shadow) = match (bundle(want.version).await, want.shadow) {
            (Ok(live), None) => (live, None),
            (Ok(live), Some(s)) => match bundle(s).await {
                Ok(shadow) => (live, Some(shadow)),
                Err(status) => return self.unsendable(want, &status),
            },
            (Err(status), _) => return self.unsendable(want, &status),
        };
        let refusable = shadow.as_ref().unwrap_or(&live);
        let refused = self
            .cp
            .fleet
            .read(&self.id, |n| {
                !n.accepts(live.version, &live.content_hash)
                    || !n.accepts(refusable.version, &refusable.content_hash)
            })
            .unwrap_or(false);
        let running = live.content_hash == self.reported_hash
            && applied_shadow == want.shadow
            && runs.is_some_and(|r| r.version == want.version);
        if refused || running {
            return Ok(());
        }
        // Given before it is sent: the node may report under it as soon as
        // it has it.
        self.cp.fleet.update(&self.id, |n| {
            n.given(live.version);
            if let Some(s) = &shadow {
                n.given(s.version);
            }
        });
        let nonce = self.cp.next_nonce();
        let response = PolicyResponse {
            version: live.version,
            content_hash: live.content_hash.clone(),
            nonce: nonce.clone(),
            rollout_id: String::new(),
            bundle: live.content.to_vec(),
            grant_key: live.grant_key.to_vec(),
            shadow_version: shadow.as_ref().map_or(0, |s| s.version),
            shadow_content_hash: shadow
                .as_ref()
                .map_or_else(String::new, |s| s.content_hash.clone()),
            shadow_bundle: shadow
                .as_ref()
                .map_or_else(Vec::new, |s| s.content.to_vec()),
        };
        self.tx.send(Ok(response)).await.map_err(|_| Closed)?;
        self.last_sent = Some(Sent {
            nonce,
            desired: want,
            refusable: (refusable.version, refusable.content_hash.clone()),
        });
        self.cp.metrics.bundles_sent.inc();
        self.cp
            .fleet
            .update(&self.id, |n| n.sent(live.version, Instant::now()));
        Ok(())
    }

    /// A version the node should run cannot be read: logged, nothing sent;
    /// the next change or answer tries again.
    fn unsendable(&self, want: Desired, status: &Status) -> Result<(), Closed> {
        tracing::warn!(
            node = %self.id,
            version = want.version,
            "cannot prepare the version the node should run; it keeps what it runs: {}",
            status.message()
        );
        Ok(())
    }

    /// Writes a refusal to the store, so that no later process resends it.
    ///
    /// Awaited here, before the refusal shows in the status table: NACKs are
    /// rare, the write runs on the blocking pool, and only this node's
    /// stream waits. So a node shown ERROR has its refusal on disk, and a
    /// stopping control plane, which waits for every stream to end, flushes
    /// the store only after it. A failed write is logged and the refusal
    /// still holds in memory; only a restart would forget it.
    async fn remember(&self, nack: &Nack) {
        let id = self.id.clone();
        let stored = nack.clone();
        if let Err(status) = self.cp.store(move |s| s.record_nack(&id, &stored)).await {
            tracing::error!(
                node = %self.id,
                version = nack.version,
                "cannot store the refusal; it holds until the control plane restarts: {}",
                status.message()
            );
        }
    }
}

/// A NACK's message and field errors on one line, for the status table.
fn describe(detail: &ErrorDetail) -> String {
    let mut out = detail.message.clone();
    for e in &detail.errors {
        if !out.is_empty() {
            out.push_str("; ");
        }
        let at = if e.pointer.is_empty() {
            "/"
        } else {
            &e.pointer
        };
        out.push_str(&format!("{at}: {}", e.message));
    }
    if out.is_empty() {
        out.push_str("refused without a message");
    }
    out
}
