//! [`RemoteBroker`]: approvals kept by the control plane, over the
//! `StreamApprovals` stream on the shared connection. The sidecar files its
//! requests there, asks it to use an approval when a call is retried (single
//! use fleet-wide), and hears every decision on a request it filed, which
//! wakes the held call at once.
//!
//! Never forward on doubt: a use the control plane does not answer within
//! [`ANSWER_TIMEOUT`] (or while the stream is down) is not granted. After a
//! reconnect the sidecar files again its own requests still pending (the
//! control plane answers a duplicate id as already stored).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};
use tollgate_proto::v1::approvals_client::ApprovalsClient;
use tollgate_proto::v1::{self as pb, approvals_down, approvals_up};
use tonic::transport::Channel;

use super::backoff::{Backoff, BackoffConfig};
use super::connection::Connection;
use super::stream::{ControlStream, End, Recovery, classify, keep_open, requests};
use crate::approvals::events::Events;
use crate::approvals::local::{MAX_PENDING, check_fields};
use crate::approvals::{
    ApprovalRecord, ApprovalState, BoxFuture, Broker, CallKey, DecideError, UseOutcome, now_ms,
};

/// How long a file or a use waits for the control plane's answer.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);
/// The largest approvals message accepted from the control plane.
const MAX_MESSAGE_BYTES: usize = 1 << 20;
/// Why a request was not filed while the stream is down.
const NOT_OPEN: &str =
    "the approvals stream to the control plane is not open (is it reachable?); call again shortly";
/// How long this node remembers requests it filed after they end.
const KEEP_ENDED_MS: i64 = 3_600_000;

/// The control plane's approvals, as a [`Broker`].
#[derive(Debug)]
pub struct RemoteBroker {
    up: mpsc::Sender<pb::ApprovalsUp>,
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    inner: Mutex<Waiting>,
    /// Bumped on every decision heard: waiters look again.
    changed: watch::Sender<u64>,
    events: Events,
    /// Whether the stream is open: while it is not, nothing is queued (a
    /// use sent late could spend an approval no call is waiting for).
    open: AtomicBool,
}

/// Answers awaited and the requests this node filed.
#[derive(Debug, Default)]
struct Waiting {
    seq: u64,
    uses: HashMap<u64, oneshot::Sender<UseOutcome>>,
    filed: HashMap<String, oneshot::Sender<Result<(), String>>>,
    mine: HashMap<String, ApprovalRecord>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Waiting> {
        // Every critical section leaves the maps consistent.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Applies one message from the control plane.
    fn receive(&self, down: pb::ApprovalsDown) {
        match down.kind {
            Some(approvals_down::Kind::Filed(f)) => {
                if let Some(tx) = self.lock().filed.remove(&f.id) {
                    let _ = tx.send(if f.error.is_empty() {
                        Ok(())
                    } else {
                        Err(f.error)
                    });
                }
            }
            Some(approvals_down::Kind::Use(answer)) => {
                let waiter = self.lock().uses.remove(&answer.seq);
                if let Some(tx) = waiter {
                    let _ = tx.send(use_outcome(&answer));
                }
            }
            Some(approvals_down::Kind::Decided(a)) => {
                let Some(record) = record(&a) else { return };
                let mut w = self.lock();
                // Only requests this node filed are kept (and bounded).
                if let Some(mine) = w.mine.get_mut(&record.id) {
                    let event = match record.state {
                        ApprovalState::Approved => Some("approved"),
                        ApprovalState::Denied => Some("denied"),
                        ApprovalState::Expired => Some("expired"),
                        _ => None,
                    };
                    *mine = record.clone();
                    if let Some(e) = event {
                        self.events.record(&record, e);
                    }
                }
                let pending = pending(&w);
                drop(w);
                self.events.pending(pending);
                self.changed.send_modify(|n| *n += 1);
            }
            None => {}
        }
    }

    /// Forgets ended requests and gives up on every awaited answer (the
    /// stream ended: their callers treat it as not granted).
    fn stream_ended(&self) {
        let now = now_ms();
        let mut w = self.lock();
        w.uses.clear();
        w.filed.clear();
        w.mine.retain(|_, r| {
            r.state == ApprovalState::Pending
                || r.expires_ms.max(r.decided_ms) + KEEP_ENDED_MS > now
        });
    }
}

fn pending(w: &Waiting) -> usize {
    w.mine
        .values()
        .filter(|r| r.state == ApprovalState::Pending)
        .count()
}

impl RemoteBroker {
    /// A broker and the stream that serves it (run it with
    /// [`ApprovalsStream::run`]).
    pub fn new(node: pb::Node, events: Events) -> (Self, ApprovalsStream) {
        let (tx, rx) = mpsc::channel(256);
        let shared = Arc::new(Shared {
            inner: Mutex::default(),
            changed: watch::Sender::new(0),
            events,
            open: AtomicBool::new(false),
        });
        let stream = ApprovalsStream {
            node,
            rx,
            shared: Arc::clone(&shared),
            control_plane: String::new(),
        };
        (Self { up: tx, shared }, stream)
    }

    async fn file_remote(&self, record: ApprovalRecord) -> Result<(), String> {
        check_fields(&record)?;
        let (tx, rx) = oneshot::channel();
        {
            let mut w = self.shared.lock();
            if pending(&w) >= MAX_PENDING {
                return Err(format!(
                    "this sidecar has {MAX_PENDING} approval requests pending; decide some with \
                     `tollgate approvals list` or let them expire"
                ));
            }
            w.filed.insert(record.id.clone(), tx);
        }
        let sent = self.send(up(approvals_up::Kind::Request(request(&record))));
        let answer = if sent {
            tokio::time::timeout(ANSWER_TIMEOUT, rx)
                .await
                .ok()
                .and_then(Result::ok)
        } else {
            None
        };
        self.shared.lock().filed.remove(&record.id);
        match answer {
            Some(Ok(())) => {
                let mut w = self.shared.lock();
                w.mine.insert(record.id.clone(), record.clone());
                let n = pending(&w);
                drop(w);
                self.shared.events.record(&record, "requested");
                self.shared.events.pending(n);
                Ok(())
            }
            Some(Err(e)) => Err(format!("the control plane refused it: {e}")),
            None if !sent => Err(NOT_OPEN.to_owned()),
            None => Err(format!(
                "the control plane did not confirm it within {} s (is it reachable?); call again",
                ANSWER_TIMEOUT.as_secs()
            )),
        }
    }

    /// Queues `message` for the control plane; false when the stream is not
    /// open or its queue is full.
    fn send(&self, message: pb::ApprovalsUp) -> bool {
        self.shared.open.load(Ordering::Acquire) && self.up.try_send(message).is_ok()
    }

    async fn use_remote(&self, call: &CallKey, named: Option<&str>) -> UseOutcome {
        let (tx, rx) = oneshot::channel();
        let seq = {
            let mut w = self.shared.lock();
            w.seq += 1;
            let seq = w.seq;
            w.uses.insert(seq, tx);
            seq
        };
        let message = up(approvals_up::Kind::Use(pb::UseApproval {
            seq,
            grant: call.grant.clone(),
            server: call.server.clone(),
            tool: call.tool.clone(),
            arguments_sha256: call.arguments_sha256.clone(),
            approval_id: named.unwrap_or_default().to_owned(),
        }));
        let answer = if self.send(message) {
            tokio::time::timeout(ANSWER_TIMEOUT, rx)
                .await
                .ok()
                .and_then(Result::ok)
        } else {
            None
        };
        self.shared.lock().uses.remove(&seq);
        match answer {
            Some(out) => {
                if let UseOutcome::Granted(r) = &out {
                    self.shared.events.record(r, "used");
                }
                out
            }
            // No answer: not granted. The call's own pending request, if
            // this node filed one, is what the agent is told about.
            None => self
                .latest_mine(call)
                .map_or(UseOutcome::None, UseOutcome::Found),
        }
    }

    fn latest_mine(&self, call: &CallKey) -> Option<ApprovalRecord> {
        self.shared
            .lock()
            .mine
            .values()
            .filter(|r| r.call == *call && r.state == ApprovalState::Pending)
            .max_by_key(|r| r.created_ms)
            .cloned()
    }

    async fn wait_remote(&self, id: &str, timeout: Duration) -> Option<ApprovalRecord> {
        let mut changes = self.shared.changed.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let record = self.shared.lock().mine.get(id).cloned()?;
            if record.state != ApprovalState::Pending {
                return Some(record);
            }
            tokio::select! {
                changed = changes.changed() => {
                    if changed.is_err() {
                        return None;
                    }
                }
                () = tokio::time::sleep_until(deadline) => return None,
            }
        }
    }
}

impl Broker for RemoteBroker {
    fn file(&self, record: ApprovalRecord) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(self.file_remote(record))
    }

    fn use_for<'a>(
        &'a self,
        call: &'a CallKey,
        named: Option<&'a str>,
    ) -> BoxFuture<'a, UseOutcome> {
        Box::pin(self.use_remote(call, named))
    }

    fn wait<'a>(&'a self, id: &'a str, timeout: Duration) -> BoxFuture<'a, Option<ApprovalRecord>> {
        Box::pin(self.wait_remote(id, timeout))
    }

    fn list(&self, state: Option<ApprovalState>) -> BoxFuture<'_, Vec<ApprovalRecord>> {
        let mut out: Vec<ApprovalRecord> = self
            .shared
            .lock()
            .mine
            .values()
            .filter(|r| state.is_none_or(|s| r.state == s))
            .cloned()
            .collect();
        out.sort_by_key(|r| std::cmp::Reverse(r.created_ms));
        Box::pin(async move { out })
    }

    fn get<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Option<ApprovalRecord>> {
        let out = self.shared.lock().mine.get(id).cloned();
        Box::pin(async move { out })
    }

    fn decide<'a>(
        &'a self,
        id: &'a str,
        _approve: bool,
        _reason: &'a str,
        _by: &'a str,
    ) -> BoxFuture<'a, Result<ApprovalRecord, DecideError>> {
        let id = id.to_owned();
        Box::pin(async move { Err(DecideError::Remote(id)) })
    }
}

/// The stream task behind a [`RemoteBroker`].
#[derive(Debug)]
pub struct ApprovalsStream {
    node: pb::Node,
    rx: mpsc::Receiver<pb::ApprovalsUp>,
    shared: Arc<Shared>,
    control_plane: String,
}

impl ApprovalsStream {
    /// Keeps the stream open over `connection`; runs until the task is dropped.
    pub async fn run(mut self, connection: Arc<Connection>, backoff: BackoffConfig) {
        connection.url().clone_into(&mut self.control_plane);
        keep_open(connection, self, backoff).await;
    }
}

impl ControlStream for ApprovalsStream {
    async fn session(&mut self, channel: Channel, backoff: &mut Backoff) -> End {
        let mut grpc = ApprovalsClient::new(channel)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        let (tx, rx) = mpsc::channel(64);
        let mut hello = up(approvals_up::Kind::Hello(pb::Hello {}));
        hello.node = Some(self.node.clone());
        if tx.try_send(hello).is_err() {
            return End::Closed;
        }
        let mut inbound = match grpc.stream_approvals(requests(rx)).await {
            Ok(r) => r.into_inner(),
            Err(s) => {
                if classify(s.code()) == Recovery::Refused {
                    backoff.saturate();
                }
                return End::Status(s);
            }
        };
        // Whatever was queued for a stream that ended is stale.
        while self.rx.try_recv().is_ok() {}
        self.shared.open.store(true, Ordering::Release);
        // Pending requests are filed again: the control plane may have lost them.
        let refile: Vec<pb::ApprovalsUp> = self
            .shared
            .lock()
            .mine
            .values()
            .filter(|r| r.state == ApprovalState::Pending)
            .map(|r| up(approvals_up::Kind::Request(request(r))))
            .collect();
        for m in refile {
            if tx.send(m).await.is_err() {
                return End::Closed;
            }
        }
        loop {
            tokio::select! {
                message = inbound.message() => match message {
                    Ok(Some(down)) => {
                        backoff.reset();
                        self.shared.receive(down);
                    }
                    Ok(None) => return End::Closed,
                    Err(s) => return End::Status(s),
                },
                next = self.rx.recv() => match next {
                    Some(m) => {
                        if tx.send(m).await.is_err() {
                            return End::Closed;
                        }
                    }
                    // The broker is gone: nothing more to send.
                    None => return End::Closed,
                },
            }
        }
    }

    fn ended(&mut self, end: &End, _backoff: &mut Backoff) {
        self.shared.open.store(false, Ordering::Release);
        self.shared.stream_ended();
        tracing::warn!(
            control_plane = %self.control_plane,
            "the approvals stream ended ({end}); held calls are answered pending until it is back"
        );
    }
}

fn up(kind: approvals_up::Kind) -> pb::ApprovalsUp {
    pb::ApprovalsUp {
        node: None,
        kind: Some(kind),
    }
}

/// A request on the wire.
pub fn request(r: &ApprovalRecord) -> pb::ApprovalRequest {
    pb::ApprovalRequest {
        id: r.id.clone(),
        node: r.node.clone(),
        server: r.call.server.clone(),
        grant: r.call.grant.clone(),
        session: r.session.clone(),
        tool: r.call.tool.clone(),
        arguments_sha256: r.call.arguments_sha256.clone(),
        arguments_json: r.arguments_json.clone(),
        policy_version: r.policy_version.clone(),
        rule: r.rule.clone(),
        created_unix_ms: r.created_ms,
        expires_unix_ms: r.expires_ms,
    }
}

/// A request and its state from the wire; `None` without a request, an
/// unknown state, or a field over the limit (hostile or broken input).
pub fn record(a: &pb::Approval) -> Option<ApprovalRecord> {
    let q = a.request.as_ref()?;
    let state = state(a.state)?;
    let r = ApprovalRecord {
        id: q.id.clone(),
        call: CallKey {
            grant: q.grant.clone(),
            server: q.server.clone(),
            tool: q.tool.clone(),
            arguments_sha256: q.arguments_sha256.clone(),
        },
        node: q.node.clone(),
        session: q.session.clone(),
        arguments_json: q.arguments_json.clone(),
        policy_version: q.policy_version.clone(),
        rule: q.rule.clone(),
        created_ms: q.created_unix_ms,
        expires_ms: q.expires_unix_ms,
        state,
        reason: a.reason.clone(),
        decided_by: a.decided_by.clone(),
        decided_ms: a.decided_unix_ms,
        used_by: a.used_by.clone(),
        used_ms: a.used_unix_ms,
    };
    let short = |s: &str| s.len() <= crate::approvals::local::MAX_FIELD;
    (check_fields(&r).is_ok() && short(&r.reason) && short(&r.decided_by) && short(&r.used_by))
        .then_some(r)
}

fn state(n: i32) -> Option<ApprovalState> {
    Some(match pb::ApprovalState::try_from(n).ok()? {
        pb::ApprovalState::Pending => ApprovalState::Pending,
        pb::ApprovalState::Approved => ApprovalState::Approved,
        pb::ApprovalState::Denied => ApprovalState::Denied,
        pb::ApprovalState::Expired => ApprovalState::Expired,
        pb::ApprovalState::Used => ApprovalState::Used,
        pb::ApprovalState::Unspecified => return None,
    })
}

/// What a `UseAnswer` means. Granted only when it names the approval used
/// and carries its record; anything unclear is not granted.
pub fn use_outcome(answer: &pb::UseAnswer) -> UseOutcome {
    let found = answer.approval.as_ref().and_then(record);
    if !answer.approval_id.is_empty() {
        return match found {
            Some(mut r) if r.id == answer.approval_id => {
                r.state = ApprovalState::Used;
                UseOutcome::Granted(r)
            }
            _ => UseOutcome::None,
        };
    }
    match (state(answer.state), found) {
        (Some(_), Some(r)) => UseOutcome::Found(r),
        _ => UseOutcome::None,
    }
}

#[cfg(test)]
#[path = "approvals_tests.rs"]
mod tests;
