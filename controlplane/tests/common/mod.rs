//! A fake sidecar: a real tonic client speaking the distribution protocol,
//! and helpers to start a control plane in-process on 127.0.0.1:0.

#![allow(dead_code, clippy::unwrap_used)]

pub mod quota;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
pub use tollgate_controlplane::cli::remote::Admin;
use tollgate_controlplane::cli::remote::Bearer;
use tollgate_controlplane::server::{self, Config, Running};
use tollgate_proto::v1::admin_client::AdminClient;
use tollgate_proto::v1::policy_distribution_client::PolicyDistributionClient;
use tollgate_proto::v1::{
    ErrorDetail, FieldError, Node, NodeState, NodeStatusRequest, PolicyRequest, PolicyResponse,
    PushPolicyRequest, PushPolicyResponse,
};
use tonic::Streaming;

/// The first admin token of each control plane these tests started, by
/// gRPC address: what [`admin`] sends.
static ADMIN_TOKENS: Mutex<BTreeMap<SocketAddr, String>> = Mutex::new(BTreeMap::new());

/// Reads the first admin token the control plane at `addr` wrote to
/// `<data>/admin-token`, for [`admin`].
pub fn remember_admin_token(addr: SocketAddr, data: &Path) -> String {
    let path = data.join(server::ADMIN_TOKEN);
    let token = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .trim()
        .to_owned();
    ADMIN_TOKENS.lock().unwrap().insert(addr, token.clone());
    token
}

/// An admin client of the control plane at `addr` with `token`.
pub async fn admin_with(addr: SocketAddr, token: &str) -> Admin {
    let channel = tonic::transport::Endpoint::from_shared(url(addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    AdminClient::with_interceptor(channel, Bearer::token(token).unwrap())
}

pub const WAIT: Duration = Duration::from_secs(5);

pub async fn start(data: &Path) -> Running {
    start_with(data, |_| {}).await
}

/// Starts a control plane with `config` changed by `change`.
pub async fn start_with(data: &Path, change: impl FnOnce(&mut Config)) -> Running {
    let mut config = Config::new("127.0.0.1:0".parse().unwrap(), data.to_path_buf());
    config.http = Some("127.0.0.1:0".parse().unwrap());
    change(&mut config);
    let running = server::start(config).await.unwrap();
    remember_admin_token(running.grpc_addr, data);
    running
}

/// Leaves in `data` the note an earlier control plane writes before sending
/// leases: they may be in use for `left` more, so the next start re-learns
/// that long.
#[allow(dead_code)]
pub fn earlier_leases(data: &Path, left: std::time::Duration) {
    std::fs::create_dir_all(data).unwrap();
    let until = std::time::SystemTime::now() + left;
    let ms = until
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis();
    std::fs::write(data.join(server::QUOTA_MARKER), format!("{ms}\n")).unwrap();
}

pub fn url(addr: SocketAddr) -> String {
    format!("http://{addr}")
}

/// The first admin token of the control plane at `addr` (see
/// [`remember_admin_token`]).
pub fn admin_token(addr: SocketAddr) -> String {
    ADMIN_TOKENS
        .lock()
        .unwrap()
        .get(&addr)
        .cloned()
        .unwrap_or_else(|| panic!("no admin token known for {addr}: start it with common::start"))
}

/// An admin client of the control plane at `addr` (started by these
/// helpers) with its first admin token.
pub async fn admin(addr: SocketAddr) -> Admin {
    admin_with(addr, &admin_token(addr)).await
}

pub async fn push(admin: &mut Admin, content: &str) -> PushPolicyResponse {
    admin
        .push_policy(PushPolicyRequest {
            content: content.as_bytes().to_vec(),
            server: String::new(),
            message: String::new(),
            ..PushPolicyRequest::default()
        })
        .await
        .unwrap()
        .into_inner()
}

/// A policy document whose only tool is `tool`.
pub fn policy(tool: &str) -> String {
    format!(r#"{{"version": "1", "default": "deny", "tools": {{"{tool}": {{}}}}}}"#)
}

pub async fn nodes(admin: &mut Admin) -> Vec<NodeState> {
    admin
        .node_status(NodeStatusRequest {})
        .await
        .unwrap()
        .into_inner()
        .nodes
}

/// Polls the status table until node `id`'s row satisfies `ok`.
pub async fn wait_for(admin: &mut Admin, id: &str, ok: impl Fn(&NodeState) -> bool) -> NodeState {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let rows = nodes(admin).await;
        let row = rows
            .into_iter()
            .find(|n| n.node.as_ref().is_some_and(|n| n.id == id));
        if let Some(row) = row.filter(|r| ok(r)) {
            return row;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "node {id} never reached the expected status: {:?}",
            nodes(admin).await
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A sidecar's end of one distribution stream.
pub struct FakeSidecar {
    pub id: String,
    tx: mpsc::Sender<PolicyRequest>,
    rx: Streaming<PolicyResponse>,
    /// What it runs: (version, content hash).
    pub runs: Option<(u64, String)>,
}

impl FakeSidecar {
    /// Opens a stream reporting that it runs `runs`.
    pub async fn connect(addr: SocketAddr, id: &str, runs: Option<(u64, String)>) -> Self {
        let mut client = PolicyDistributionClient::connect(url(addr)).await.unwrap();
        let (tx, rx) = mpsc::channel(4);
        let (version_info, content_hash) = runs
            .clone()
            .map(|(v, h)| (v.to_string(), h))
            .unwrap_or_default();
        tx.send(PolicyRequest {
            node: Some(Node {
                id: id.to_owned(),
                labels: [("app".to_owned(), "demo".to_owned())].into(),
                ..Default::default()
            }),
            version_info,
            content_hash,
            response_nonce: String::new(),
            error_detail: None,
        })
        .await
        .unwrap();
        let rx = client
            .stream_policy(ReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner();
        Self {
            id: id.to_owned(),
            tx,
            rx,
            runs,
        }
    }

    pub async fn recv(&mut self) -> PolicyResponse {
        tokio::time::timeout(WAIT, self.rx.message())
            .await
            .expect("a response in time")
            .unwrap()
            .expect("the stream is open")
    }

    /// The next message or the end of the stream (`Ok(None)`: ended with
    /// status OK).
    pub async fn next(&mut self) -> Result<Option<PolicyResponse>, tonic::Status> {
        tokio::time::timeout(WAIT, self.rx.message())
            .await
            .expect("a response or the end of the stream in time")
    }

    /// Asserts nothing arrives for a while.
    pub async fn expect_nothing(&mut self) {
        let got = tokio::time::timeout(Duration::from_millis(300), self.rx.message()).await;
        assert!(got.is_err(), "expected no response, got {got:?}");
    }

    pub async fn request(&mut self, nonce: &str, error: Option<&str>) {
        let (version_info, content_hash) = self
            .runs
            .clone()
            .map(|(v, h)| (v.to_string(), h))
            .unwrap_or_default();
        self.tx
            .send(PolicyRequest {
                node: None,
                version_info,
                content_hash,
                response_nonce: nonce.to_owned(),
                error_detail: error.map(|m| ErrorDetail {
                    message: m.to_owned(),
                    errors: vec![FieldError {
                        pointer: "/tools".to_owned(),
                        message: "refused by the test".to_owned(),
                    }],
                }),
            })
            .await
            .unwrap();
    }

    pub async fn ack(&mut self, resp: &PolicyResponse) {
        self.runs = Some((resp.version, resp.content_hash.clone()));
        self.request(&resp.nonce, None).await;
    }

    pub async fn nack(&mut self, resp: &PolicyResponse, message: &str) {
        self.request(&resp.nonce, Some(message)).await;
    }
}
