//! The stream client against a control plane over real gRPC on loopback.
//!
//! The real control plane (`controlplane/`) is being written concurrently and
//! cannot run here yet, so [`ControlPlaneDouble`] stands in: a minimal tonic
//! `PolicyDistribution` server, generated from the same proto, that hands
//! each stream to the test, which plays the server's side of the protocol by
//! hand. Replace it with the real server in the whole-binary tests of issue 4.
//!
//! Longer than 500 lines: the in-process control plane and every scenario of
//! the policy stream against it (live bundles, keys, restarts, shadows).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures_util::Stream;
use tokio::sync::{mpsc, oneshot};
use tollgate_proto::v1::policy_distribution_server::{
    PolicyDistribution, PolicyDistributionServer,
};
use tollgate_proto::v1::{Node, PolicyRequest, PolicyResponse};
use tonic::{Request, Response, Status, Streaming};

use super::*;
use crate::control::backoff::BackoffConfig;
use crate::control::{FleetConfig, connect};
use crate::rollout_report::Decisions;
use tonic::Code;

const V1: &str = r#"{"version": "1", "default": "allow"}"#;
const INVALID: &str = r#"{"version": "1", "default": "maybe", "tools": {"x": {"limits": [{"window": "fortnight"}]}}}"#;
const WAIT: Duration = Duration::from_secs(10);
/// A shadow version that denies `echo` where [`V1`] allows it.
const DENY_ECHO: &str = r#"{"version": "1", "default": "allow", "tools": {"echo": {"action": "deny", "reason": "echo is retired"}}}"#;

/// One stream the double accepted: the sidecar's requests, and where the
/// test writes the server's responses.
struct Session {
    requests: Streaming<PolicyRequest>,
    responses: mpsc::Sender<Result<PolicyResponse, Status>>,
}

impl Session {
    async fn next(&mut self) -> PolicyRequest {
        tokio::time::timeout(WAIT, self.requests.message())
            .await
            .expect("the sidecar sends a request in time")
            .expect("the request stream is healthy")
            .expect("the request stream is open")
    }

    async fn send(&self, version: u64, bundle: &str, nonce: &str) {
        self.send_keyed(version, bundle, nonce, &[]).await;
    }

    /// Sends `bundle` with `grant_key` beside it.
    async fn send_keyed(&self, version: u64, bundle: &str, nonce: &str, grant_key: &[u8]) {
        let response = PolicyResponse {
            version,
            content_hash: content_hash(bundle.as_bytes()),
            nonce: nonce.into(),
            rollout_id: String::new(),
            bundle: bundle.as_bytes().to_vec(),
            grant_key: grant_key.to_vec(),
            ..PolicyResponse::default()
        };
        self.responses.send(Ok(response)).await.unwrap();
    }
}

struct Service(mpsc::UnboundedSender<Session>);

#[tonic::async_trait]
impl PolicyDistribution for Service {
    type StreamPolicyStream =
        Pin<Box<dyn Stream<Item = Result<PolicyResponse, Status>> + Send + 'static>>;

    async fn stream_policy(
        &self,
        request: Request<Streaming<PolicyRequest>>,
    ) -> Result<Response<Self::StreamPolicyStream>, Status> {
        let (tx, rx) = mpsc::channel(4);
        self.0
            .send(Session {
                requests: request.into_inner(),
                responses: tx,
            })
            .map_err(|_| Status::unavailable("the test is over"))?;
        let out =
            futures_util::stream::unfold(
                rx,
                |mut rx| async move { rx.recv().await.map(|r| (r, rx)) },
            );
        Ok(Response::new(Box::pin(out)))
    }
}

/// A control plane on its own runtime and thread, so [`ControlPlaneDouble::kill`]
/// drops every connection at once, like a killed process.
struct ControlPlaneDouble {
    addr: SocketAddr,
    sessions: mpsc::UnboundedReceiver<Session>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ControlPlaneDouble {
    /// Serves on `addr` (port 0: any free port).
    fn start(addr: SocketAddr) -> Self {
        let (sessions_tx, sessions) = mpsc::unbounded_channel();
        let (stop, stop_rx) = oneshot::channel::<()>();
        let (bound_tx, bound_rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                // SO_REUSEADDR, so a restart can take the port its killed
                // predecessor left in TIME_WAIT.
                let socket = tokio::net::TcpSocket::new_v4().unwrap();
                socket.set_reuseaddr(true).unwrap();
                socket.bind(addr).unwrap();
                let listener = socket.listen(128).unwrap();
                bound_tx.send(listener.local_addr().unwrap()).unwrap();
                let server = tonic::transport::Server::builder()
                    .add_service(PolicyDistributionServer::new(Service(sessions_tx)))
                    .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener));
                tokio::select! {
                    r = server => r.unwrap(),
                    _ = stop_rx => {}
                }
            });
            // Dropping the runtime here drops every connection task.
        });
        let addr = bound_rx.recv_timeout(WAIT).unwrap();
        Self {
            addr,
            sessions,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    async fn session(&mut self) -> Session {
        tokio::time::timeout(WAIT, self.sessions.recv())
            .await
            .expect("the sidecar opens a stream in time")
            .unwrap()
    }

    fn kill(mut self) -> SocketAddr {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
        self.addr
    }
}

fn fleet_config(addr: SocketAddr, state_dir: &std::path::Path) -> FleetConfig {
    FleetConfig {
        control_plane: format!("http://{addr}"),
        node: Node {
            id: "pod-a".into(),
            pod: "pod-a".into(),
            namespace: "agents".into(),
            labels: HashMap::from([("app".into(), "agent".into())]),
            build: env!("CARGO_PKG_VERSION").into(),
        },
        state_dir: Some(state_dir.to_owned()),
        backoff: BackoffConfig {
            base: Duration::from_millis(20),
            cap: Duration::from_millis(200),
        },
        tls: None,
    }
}

/// Stops the sidecar's task and the control plane, then starts a sidecar on
/// the same state dir: whatever it enforces comes from disk alone.
fn restart_offline(
    task: tokio::task::JoinHandle<()>,
    session: Session,
    cp: ControlPlaneDouble,
    state_dir: &std::path::Path,
) -> (Arc<LivePolicy>, tokio::task::JoinHandle<()>) {
    task.abort();
    drop(session);
    let addr = cp.kill();
    let store = Arc::new(LivePolicy::default());
    let task = start(
        fleet_config(addr, state_dir),
        Arc::clone(&store),
        Arc::new(Metrics::new()),
    )
    .unwrap();
    (store, task)
}

/// Starts the policy stream on a connection of its own.
fn start(
    config: FleetConfig,
    store: Arc<LivePolicy>,
    metrics: Arc<Metrics>,
) -> Result<tokio::task::JoinHandle<()>, crate::control::ControlError> {
    let connection = connect(&config)?;
    let decisions = Arc::new(Decisions::new(Arc::clone(&metrics)));
    crate::control::start(config, &connection, store, metrics, decisions)
}

fn version(store: &LivePolicy) -> Option<String> {
    store
        .load()
        .is_loaded()
        .then(|| store.load().version().to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn applies_acks_nacks_reconnects_and_restores() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cp = ControlPlaneDouble::start("127.0.0.1:0".parse().unwrap());
    let store = Arc::new(LivePolicy::default());
    let metrics = Arc::new(Metrics::new());
    let task = start(
        fleet_config(cp.addr, tmp.path()),
        Arc::clone(&store),
        Arc::clone(&metrics),
    )
    .unwrap();
    assert!(!store.is_ready(), "before any bundle: deny all, not ready");

    // The first request names the node and runs nothing.
    let mut s = cp.session().await;
    let first = s.next().await;
    let node = first.node.expect("the first request names the node");
    assert_eq!(
        (node.id.as_str(), node.namespace.as_str()),
        ("pod-a", "agents")
    );
    assert_eq!(node.labels["app"], "agent");
    assert_eq!(node.build, env!("CARGO_PKG_VERSION"));
    assert_eq!(
        (first.version_info.as_str(), first.content_hash.as_str()),
        ("", "")
    );
    assert!(first.response_nonce.is_empty() && first.error_detail.is_none());

    // v1 is applied, persisted, then ACKed with its nonce and hash.
    s.send(1, V1, "n1").await;
    let ack = s.next().await;
    let h1 = content_hash(V1.as_bytes());
    assert_eq!(ack.response_nonce, "n1");
    assert_eq!(ack.version_info, "1");
    assert_eq!(ack.content_hash, h1);
    assert!(ack.error_detail.is_none() && ack.node.is_none());
    assert_eq!(version(&store).as_deref(), Some("v1"));
    let saved = StateDir::open(tmp.path()).unwrap().load().unwrap().unwrap();
    assert_eq!(
        (saved.version, saved.content_hash.as_str()),
        (1, h1.as_str())
    );

    // An invalid bundle is NACKed with every error, and v1 stays.
    s.send(2, INVALID, "n2").await;
    let nack = s.next().await;
    assert_eq!(nack.response_nonce, "n2");
    assert_eq!(nack.version_info, "1", "a NACK reports what still runs");
    assert_eq!(nack.content_hash, h1);
    let detail = nack.error_detail.expect("a NACK carries error_detail");
    assert!(detail.errors.len() >= 2, "{detail:?}");
    assert!(detail.errors.iter().all(|e| !e.message.is_empty()));
    assert!(
        detail.errors.iter().any(|e| e.pointer == "/default"),
        "{detail:?}"
    );
    assert_eq!(version(&store).as_deref(), Some("v1"));

    // A bundle whose content does not match its hash is refused too.
    let forged = PolicyResponse {
        version: 3,
        content_hash: h1.clone(),
        nonce: "n3".into(),
        rollout_id: String::new(),
        bundle: br#"{"version": "1", "default": "deny"}"#.to_vec(),
        grant_key: Vec::new(),
        ..PolicyResponse::default()
    };
    s.responses.send(Ok(forged)).await.unwrap();
    let nack = s.next().await;
    assert_eq!(nack.response_nonce, "n3");
    assert!(nack.error_detail.unwrap().message.contains("content_hash"));
    assert_eq!(version(&store).as_deref(), Some("v1"));
    let text = metrics.encode();
    assert!(text.contains("tollgate_bundles_applied_total 1"), "{text}");
    assert!(text.contains("tollgate_bundles_refused_total 2"), "{text}");
    assert!(
        text.contains("tollgate_control_plane_connected 1"),
        "{text}"
    );

    // Kill the control plane: the sidecar keeps v1 and retries with backoff;
    // a new control plane on the same address gets a stream that reports v1.
    drop(s);
    let addr = cp.kill();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(version(&store).as_deref(), Some("v1"));
    assert!(
        metrics
            .encode()
            .contains("tollgate_control_plane_connected 0")
    );
    let mut cp = ControlPlaneDouble::start(addr);
    let mut s = cp.session().await;
    let hello = s.next().await;
    assert!(hello.node.is_some());
    assert_eq!(hello.version_info, "1");
    assert_eq!(hello.content_hash, h1);
    assert!(hello.response_nonce.is_empty());

    // Restart the sidecar with the control plane down: v1 at once, from disk.
    let (store, task) = restart_offline(task, s, cp, tmp.path());
    assert_eq!(version(&store).as_deref(), Some("v1"));
    assert!(store.is_ready());
    task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyed_bundles_need_their_key_and_restore_with_it() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cp = ControlPlaneDouble::start("127.0.0.1:0".parse().unwrap());
    let store = Arc::new(LivePolicy::default());
    let task = start(
        fleet_config(cp.addr, tmp.path()),
        Arc::clone(&store),
        Arc::new(Metrics::new()),
    )
    .unwrap();
    let mut s = cp.session().await;
    let _hello = s.next().await;

    let key = tollgate_policy::GrantKey::new([11; 32]);
    let mut keyed = serde_json::json!({
        "servers": {"s": {"version": "1", "default": "allow"}},
        // SHA-256 of "test".
        "grants": {"ci": {"token_sha256":
            "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"}}
    });
    tollgate_policy::key_grant_tokens(&mut keyed, &key);
    let keyed = keyed.to_string();

    // Without the key: refused, saying what is missing.
    s.send(1, &keyed, "n1").await;
    let nack = s.next().await;
    let detail = nack.error_detail.expect("a NACK");
    assert!(
        detail
            .message
            .contains("without the control plane's grant_key"),
        "{detail:?}"
    );
    // A key of the wrong length: refused too.
    s.send_keyed(1, &keyed, "n2", &[11; 16]).await;
    let detail = s.next().await.error_detail.expect("a NACK");
    assert!(
        detail.message.contains("grant_key is 16 bytes"),
        "{detail:?}"
    );
    assert!(!store.is_ready());

    // With it: applied, and callers are identified.
    s.send_keyed(1, &keyed, "n3", key.as_bytes()).await;
    let ack = s.next().await;
    assert!(ack.error_detail.is_none(), "{:?}", ack.error_detail);
    let grant = |store: &LivePolicy| {
        let snapshot = store.load();
        snapshot
            .bundle()
            .expect("a policy in force")
            .grant_for_token(b"test")
            .map(|g| g.to_string())
    };
    assert_eq!(grant(&store).as_deref(), Some("ci"));
    let saved = StateDir::open(tmp.path()).unwrap().load().unwrap().unwrap();
    assert_eq!(saved.grant_key, Some(key));

    // Restarted with the control plane down, it identifies callers from disk.
    let (store, task) = restart_offline(task, s, cp, tmp.path());
    assert_eq!(grant(&store).as_deref(), Some("ci"));
    task.abort();
}

#[tokio::test]
async fn corrupt_state_dir_is_ignored_and_denies_all() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = StateDir::open(tmp.path()).unwrap();
    dir.save(&SavedBundle {
        version: 4,
        content_hash: content_hash(V1.as_bytes()),
        bytes: V1.as_bytes().to_vec(),
        grant_key: None,
    })
    .unwrap();
    std::fs::write(tmp.path().join("bundle.json"), "{garbage").unwrap();
    let store = Arc::new(LivePolicy::default());
    // Nothing listens on port 1 on loopback: the client just keeps retrying.
    let task = start(
        fleet_config("127.0.0.1:1".parse().unwrap(), tmp.path()),
        Arc::clone(&store),
        Arc::new(Metrics::new()),
    )
    .unwrap();
    assert!(!store.is_ready());
    task.abort();
}

#[test]
fn status_classification() {
    for code in [
        Code::Unavailable,
        Code::Internal,
        Code::Unknown,
        Code::Cancelled,
        Code::DeadlineExceeded,
        Code::ResourceExhausted,
    ] {
        assert_eq!(classify(code), Recovery::Transient, "{code:?}");
    }
    for code in [
        Code::InvalidArgument,
        Code::PermissionDenied,
        Code::Unauthenticated,
        Code::Unimplemented,
    ] {
        assert_eq!(classify(code), Recovery::Refused, "{code:?}");
    }
}

/// `bundle` as version `version`, with `shadow` (version, bundle, claimed
/// hash) beside it.
fn with_shadow(
    version: u64,
    bundle: &str,
    nonce: &str,
    shadow: Option<(u64, &str, String)>,
) -> PolicyResponse {
    let (shadow_version, shadow_bundle, shadow_content_hash) = match shadow {
        Some((v, b, h)) => (v, b.as_bytes().to_vec(), h),
        None => (0, Vec::new(), String::new()),
    };
    PolicyResponse {
        version,
        content_hash: content_hash(bundle.as_bytes()),
        nonce: nonce.into(),
        bundle: bundle.as_bytes().to_vec(),
        shadow_version,
        shadow_content_hash,
        shadow_bundle,
        ..PolicyResponse::default()
    }
}

/// How `store`'s shadow decides a call of `tool` (`None`: no shadow).
fn shadow_decides(store: &LivePolicy, tool: &str) -> Option<tollgate_policy::Outcome> {
    let snapshot = store.load();
    let call = tollgate_policy::Call {
        server: "default",
        tool,
        arguments: tollgate_policy::Arguments::None,
        grant: "pod-a",
        session: None,
        annotations: None,
    };
    snapshot
        .shadow()
        .map(|s| s.decide(&call, Duration::ZERO).outcome)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shadow_is_applied_with_its_live_bundle_nacked_with_it_and_dropped_without_it() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cp = ControlPlaneDouble::start("127.0.0.1:0".parse().unwrap());
    let store = Arc::new(LivePolicy::default());
    let task = start(
        fleet_config(cp.addr, tmp.path()),
        Arc::clone(&store),
        Arc::new(Metrics::new()),
    )
    .unwrap();
    let mut s = cp.session().await;
    s.next().await;
    let h1 = content_hash(V1.as_bytes());
    let hd = content_hash(DENY_ECHO.as_bytes());

    // v1 with v2 as its shadow: one ACK for both, both in one snapshot.
    let response = with_shadow(1, V1, "n1", Some((2, DENY_ECHO, hd.clone())));
    s.responses.send(Ok(response)).await.unwrap();
    let ack = s.next().await;
    assert_eq!(ack.response_nonce, "n1");
    assert!(ack.error_detail.is_none(), "{:?}", ack.error_detail);
    assert_eq!(
        (ack.version_info.as_str(), ack.content_hash.as_str()),
        ("1", h1.as_str())
    );
    assert_eq!(version(&store).as_deref(), Some("v1"));
    assert_eq!(store.load().shadow().map(|s| s.version()), Some(2));
    assert_eq!(
        shadow_decides(&store, "echo"),
        Some(tollgate_policy::Outcome::Deny)
    );
    assert_eq!(
        shadow_decides(&store, "add"),
        Some(tollgate_policy::Outcome::Allow)
    );

    // A new live version whose shadow does not compile: NACKed naming the
    // shadow; neither is swapped in (v1 and its shadow stay).
    let response = with_shadow(
        3,
        DENY_ECHO,
        "n2",
        Some((4, INVALID, content_hash(INVALID.as_bytes()))),
    );
    s.responses.send(Ok(response)).await.unwrap();
    let nack = s.next().await;
    assert_eq!(nack.response_nonce, "n2");
    assert_eq!(nack.version_info, "1", "a NACK reports what still runs");
    let detail = nack.error_detail.expect("a NACK carries error_detail");
    assert!(detail.message.contains("shadow, version 4"), "{detail:?}");
    assert!(
        detail.errors.iter().any(|e| e.pointer == "/default"),
        "{detail:?}"
    );
    assert_eq!(version(&store).as_deref(), Some("v1"));
    assert_eq!(store.load().shadow().map(|s| s.version()), Some(2));

    // A shadow whose content does not match its hash is refused too.
    let response = with_shadow(3, DENY_ECHO, "n3", Some((4, V1, hd.clone())));
    s.responses.send(Ok(response)).await.unwrap();
    let nack = s.next().await;
    let detail = nack.error_detail.expect("a NACK carries error_detail");
    assert!(detail.message.contains("shadow_content_hash"), "{detail:?}");
    assert_eq!(version(&store).as_deref(), Some("v1"));

    // A response without a shadow drops it.
    s.responses
        .send(Ok(with_shadow(1, V1, "n4", None)))
        .await
        .unwrap();
    let ack = s.next().await;
    assert!(ack.error_detail.is_none(), "{:?}", ack.error_detail);
    assert_eq!(version(&store).as_deref(), Some("v1"));
    assert!(store.load().shadow().is_none(), "no shadow any more");
    assert_eq!(shadow_decides(&store, "echo"), None);
    task.abort();
}
