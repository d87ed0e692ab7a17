//! A node's side of the approvals stream, as a raw tonic client of a
//! running `tollgate serve`: files requests, asks to use approvals, and
//! collects the decisions the control plane pushes.

#![allow(dead_code)] // Each test file uses a part.

use std::collections::VecDeque;
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tollgate_proto::v1::approvals_client::ApprovalsClient;
use tollgate_proto::v1::{
    Approval, ApprovalRequest, ApprovalsDown, ApprovalsUp, Filed, Hello, Node, UseAnswer,
    UseApproval, approvals_down, approvals_up,
};
use tonic::transport::{Channel, Endpoint};

/// How long an answer or a pushed decision may take.
const ANSWER: Duration = Duration::from_secs(10);

/// One open approvals stream speaking for a node.
pub struct ApprovalsNode {
    pub id: String,
    up: mpsc::Sender<ApprovalsUp>,
    down: tonic::Streaming<ApprovalsDown>,
    /// Decisions pushed while waiting for an answer.
    decided: VecDeque<Approval>,
    seq: u64,
}

impl ApprovalsNode {
    /// Opens a stream to `url` (`http://…`) as node `id` (declared: the
    /// control plane runs with `--insecure-dev`).
    pub async fn connect(url: &str, id: &str) -> ApprovalsNode {
        let channel = Endpoint::from_shared(url.to_owned())
            .unwrap_or_else(|e| panic!("{url}: {e}"))
            .connect()
            .await
            .unwrap_or_else(|e| panic!("cannot reach the control plane at {url}: {e}"));
        Self::open(channel, id)
            .await
            .unwrap_or_else(|e| panic!("node {id}: StreamApprovals refused: {e}"))
    }

    /// Opens a stream on `channel` declaring node `id`; the control plane's
    /// refusal if it does not let it in.
    pub async fn open(channel: Channel, id: &str) -> Result<ApprovalsNode, tonic::Status> {
        let mut client = ApprovalsClient::new(channel);
        let (up, rx) = mpsc::channel(16);
        up.send(ApprovalsUp {
            node: Some(Node {
                id: id.to_owned(),
                ..Node::default()
            }),
            kind: Some(approvals_up::Kind::Hello(Hello {})),
        })
        .await
        .unwrap_or_else(|e| panic!("{e}"));
        let down = client
            .stream_approvals(ReceiverStream::new(rx))
            .await?
            .into_inner();
        Ok(ApprovalsNode {
            id: id.to_owned(),
            up,
            down,
            decided: VecDeque::new(),
            seq: 0,
        })
    }

    /// Files `request` and returns the control plane's answer.
    pub async fn file(&mut self, request: ApprovalRequest) -> Filed {
        self.send(approvals_up::Kind::Request(request)).await;
        loop {
            match self.next().await {
                approvals_down::Kind::Filed(f) => return f,
                approvals_down::Kind::Decided(d) => self.decided.push_back(d),
                other => panic!("node {}: expected Filed, got {other:?}", self.id),
            }
        }
    }

    /// Asks to use an approval for the call of `request` (and, if given,
    /// the approval `named`).
    pub async fn use_approval(&mut self, request: &ApprovalRequest, named: &str) -> UseAnswer {
        self.seq += 1;
        let seq = self.seq;
        self.send(approvals_up::Kind::Use(UseApproval {
            seq,
            grant: request.grant.clone(),
            server: request.server.clone(),
            tool: request.tool.clone(),
            arguments_sha256: request.arguments_sha256.clone(),
            approval_id: named.to_owned(),
        }))
        .await;
        loop {
            match self.next().await {
                approvals_down::Kind::Use(u) => {
                    assert_eq!(u.seq, seq, "node {}: a UseAnswer for another seq", self.id);
                    return u;
                }
                approvals_down::Kind::Decided(d) => self.decided.push_back(d),
                other => panic!("node {}: expected UseAnswer, got {other:?}", self.id),
            }
        }
    }

    /// The next decision pushed to this node.
    pub async fn decided(&mut self) -> Approval {
        if let Some(d) = self.decided.pop_front() {
            return d;
        }
        match self.next().await {
            approvals_down::Kind::Decided(d) => d,
            other => panic!("node {}: expected a decision, got {other:?}", self.id),
        }
    }

    async fn send(&mut self, kind: approvals_up::Kind) {
        self.up
            .send(ApprovalsUp {
                node: None,
                kind: Some(kind),
            })
            .await
            .unwrap_or_else(|_| panic!("node {}: the stream is closed", self.id));
    }

    async fn next(&mut self) -> approvals_down::Kind {
        match tokio::time::timeout(ANSWER, self.down.message()).await {
            Ok(Ok(Some(ApprovalsDown { kind: Some(kind) }))) => kind,
            Ok(Ok(Some(_))) => panic!("node {}: a message without a kind", self.id),
            Ok(Ok(None)) => panic!("node {}: the stream ended", self.id),
            Ok(Err(status)) => panic!("node {}: the stream failed: {status}", self.id),
            Err(_) => panic!("node {}: nothing within {ANSWER:?}", self.id),
        }
    }
}

/// A new request from a sidecar: `tool` on server `files` for grant `ci`,
/// with `arguments` (their canonical JSON shown to approvers), expiring
/// `ttl` from now.
pub fn request(tool: &str, arguments: &str, ttl: Duration) -> ApprovalRequest {
    let now = now_ms();
    ApprovalRequest {
        id: new_id(),
        node: "whatever-the-node-says".to_owned(),
        server: "files".to_owned(),
        grant: "ci".to_owned(),
        session: String::new(),
        tool: tool.to_owned(),
        arguments_sha256: sha256(arguments),
        arguments_json: arguments.to_owned(),
        policy_version: "1".to_owned(),
        rule: "/tools/delete".to_owned(),
        created_unix_ms: now,
        expires_unix_ms: now + ttl.as_millis() as i64,
    }
}

/// `ap_` and 26 random characters of lowercase base32.
pub fn new_id() -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz234567";
    let random: String = (0..26)
        .map(|_| ALPHABET[fastrand::usize(..ALPHABET.len())] as char)
        .collect();
    format!("ap_{random}")
}

pub fn sha256(text: &str) -> String {
    Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
