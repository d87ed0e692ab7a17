//! `tollgate serve`: the gRPC services (distribution, quota, approvals and
//! admin, one port), the HTTP port (health, readiness, metrics) and the
//! optional admission webhook port ([`webhook`]) over one shared
//! [`ControlPlane`], which this module holds. Starting them ([`start`]) and
//! the clean stop ([`Running::shutdown`]) are in `running.rs`.

mod admin;
pub mod admission;
mod approvals;
mod authorize;
mod distributed;
mod distribution;
pub mod drain;
mod http;
mod page;
mod quota;
mod restart;
mod rollouts;
mod running;
mod stored_limits;
mod tokens;
pub mod webhook;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::watch;
use tollgate_policy::GrantKey;

use crate::approvals::Approvals;
use crate::auth::Authority;
use crate::auth::bootstrap::{self, BootstrapError, Bootstrapped};
use crate::metrics::Metrics;
use crate::quota::AllocatorConfig;
use crate::status::Fleet;
use crate::store::{PolicyStore, RolloutStore, SqliteStore, StoreError, StoredVersion};
use crate::tls::{NodeIdentity, TlsError, TlsFiles};
use admission::{Limits, StreamAdmission};
use drain::Drain;
pub use quota::MAX_BUCKETS_PER_REPORT;

/// The file in the data dir holding the first admin token, when the control
/// plane generated it.
pub use crate::auth::bootstrap::ADMIN_TOKEN_FILE as ADMIN_TOKEN;
use quota::QuotaLedger;
pub use restart::{QUOTA_MARKER, QUOTA_NODES};
pub use running::{Running, start};

/// How to run the control plane.
#[derive(Debug, Clone)]
pub struct Config {
    pub grpc: SocketAddr,
    pub http: Option<SocketAddr>,
    /// Where the SQLite store lives.
    pub data: PathBuf,
    /// A sent version unacknowledged this long makes its node STALE.
    pub stale_after: Duration,
    /// Streams that may be in their opening handshake at once; more wait
    /// (up to [`ADMISSION_WAIT`]) and are then refused with UNAVAILABLE.
    pub max_opening_streams: usize,
    /// Streams that may wait for one of those places; more are refused with
    /// UNAVAILABLE at once.
    pub max_waiting_streams: usize,
    /// Lease timing for fleet-wide limits; a start learns for
    /// `lease_ttl + grace` before granting anything new.
    pub quota: AllocatorConfig,
    /// TLS on both ports; `None`: plaintext.
    pub tls: Option<TlsFiles>,
    /// Where a stream's node id comes from.
    pub node_identity: NodeIdentity,
    /// A file holding the first admin token, stored when the store has no
    /// token at all; `None`: generate one into `<data>/admin-token`.
    pub bootstrap_token_file: Option<PathBuf>,
    /// Where people reach the HTTP port (approval pages are under
    /// `/approvals/ID`); `None`: `http(s)://<the bound --http address>`.
    pub public_url: Option<String>,
    /// POST each new approval request here (see
    /// [`crate::approvals::webhook`]).
    pub approval_webhook: Option<String>,
    /// The webhook's signing secret; `None`: generated into
    /// `<data>/approval-webhook-secret`.
    pub approval_webhook_secret_file: Option<PathBuf>,
    /// Serve the Kubernetes admission webhook (sidecar injection) too.
    pub webhook: Option<webhook::WebhookConfig>,
}

impl Config {
    pub fn new(grpc: SocketAddr, data: PathBuf) -> Self {
        Self {
            grpc,
            http: None,
            data,
            stale_after: Duration::from_secs(10),
            max_opening_streams: 256,
            max_waiting_streams: 1024,
            quota: AllocatorConfig::default(),
            tls: None,
            node_identity: NodeIdentity::Declared,
            bootstrap_token_file: None,
            public_url: None,
            approval_webhook: None,
            approval_webhook_secret_file: None,
            webhook: None,
        }
    }
}

/// How long an opening stream waits for admission before UNAVAILABLE.
pub const ADMISSION_WAIT: Duration = Duration::from_secs(5);

/// Why the control plane could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Bootstrap(#[from] BootstrapError),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("the gRPC server stopped: {0}")]
    Grpc(#[from] tonic::transport::Error),
    #[error("the gRPC server task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error(transparent)]
    Webhook(#[from] crate::approvals::webhook::WebhookError),
    #[error(transparent)]
    Rollout(#[from] crate::rollout::record::RecordError),
}

/// The version every node should run: as sent on the wire (derived once
/// per version by the `distributed` module), and as stored.
#[derive(Debug)]
pub struct Latest {
    pub version: u64,
    /// SHA-256 of `content`: what nodes report, ACK and NACK.
    pub content_hash: String,
    /// The bundle as sent, its grants keyed.
    pub content: Bytes,
    /// Sent beside `content`; empty when it has no keyed grants.
    pub grant_key: Bytes,
    /// The operator's form, as stored: what `push --server` merges into.
    pub stored: Bytes,
}

impl Latest {
    /// Version `v`, prepared for sending with `key`.
    pub fn new(v: StoredVersion, key: &GrantKey) -> Self {
        let sent = distributed::distribute(&v.content, &v.content_hash, key);
        Self {
            version: v.version,
            content_hash: sent.content_hash,
            content: sent.content,
            grant_key: sent.grant_key,
            stored: Bytes::from(v.content),
        }
    }
}

/// State shared by every service.
pub struct ControlPlane {
    store: Arc<dyn PolicyStore>,
    latest: watch::Sender<Option<Arc<Latest>>>,
    /// Keys the grants of every bundle sent (see [`distributed`]).
    grant_key: GrantKey,
    fleet: Fleet,
    metrics: Metrics,
    /// Pushes are serialized so versions reach the watch in order.
    push_lock: tokio::sync::Mutex<()>,
    admission: StreamAdmission,
    drain: Drain,
    /// Fleet-wide limits: one allocator, started with this process.
    quota: QuotaLedger,
    /// The limits of stored versions, which quota reports are accounted by.
    limits: stored_limits::StoredLimits,
    /// Operator tokens, checked on every admin call.
    auth: Authority,
    nonce_prefix: u64,
    nonce_seq: AtomicU64,
    /// Where a stream's node id comes from.
    node_identity: NodeIdentity,
    /// The fleet's approval requests.
    pub approvals: Arc<Approvals>,
    /// Approvers signed in to the approval page.
    logins: page::session::Logins,
    /// `--public-url`, or `http(s)://<http addr>`; set once the HTTP port
    /// is bound.
    public_url: std::sync::OnceLock<String>,
    /// The newest staged rollout and what each node should run under it.
    rollouts: rollouts::Rollouts,
}

impl ControlPlane {
    /// Opens the store in `config.data`, loads the latest version and the
    /// operator tokens (storing the first admin token if there is none).
    pub fn open(config: &Config) -> Result<Self, ServeError> {
        let store = SqliteStore::open(&config.data)?;
        let grant_key = distributed::grant_key(&store, crate::status::unix_now())?;
        // What every node is sent: the newest version not staged for a
        // rollout.
        let latest = store
            .served()?
            .map(|v| Arc::new(Latest::new(v, &grant_key)));
        let rollouts = rollouts::Rollouts::open(store.rollouts()?.first())?;
        match bootstrap::bootstrap(
            &store,
            &config.data,
            config.bootstrap_token_file.as_deref(),
            crate::status::unix_now(),
        )? {
            Bootstrapped::Already => {
                if let Some(file) = &config.bootstrap_token_file {
                    tracing::info!(
                        file = %file.display(),
                        "the store already holds operator tokens; --bootstrap-token-file is not used"
                    );
                }
            }
            Bootstrapped::FromFile => {
                tracing::info!(
                    "stored the token in --bootstrap-token-file as admin token 'bootstrap'"
                )
            }
            Bootstrapped::Generated(path) => tracing::info!(
                file = %path.display(),
                "no operator token yet: generated admin token 'bootstrap'; pass this file to the CLI \
                 with --token-file"
            ),
        }
        let auth = Authority::new(store.tokens()?);
        let metrics = Metrics::new();
        metrics
            .latest_version
            .set(latest.as_ref().map_or(0, |l| l.version as i64));
        let store: Arc<dyn PolicyStore> = Arc::new(store);
        let approvals = Arc::new(Approvals::open(store.clone(), metrics.approvals.clone())?);
        Ok(Self {
            store,
            latest: watch::Sender::new(latest),
            grant_key,
            fleet: Fleet::new(config.stale_after),
            metrics,
            push_lock: tokio::sync::Mutex::new(()),
            admission: StreamAdmission::new(Limits {
                opening: config.max_opening_streams,
                waiting: config.max_waiting_streams,
                wait: ADMISSION_WAIT,
            }),
            drain: Drain::new(),
            quota: QuotaLedger::new(
                config.quota,
                config.data.join(QUOTA_MARKER),
                config.data.join(QUOTA_NODES),
            ),
            limits: stored_limits::StoredLimits::default(),
            auth,
            nonce_prefix: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64),
            nonce_seq: AtomicU64::new(0),
            node_identity: config.node_identity.clone(),
            approvals,
            logins: page::session::Logins::default(),
            public_url: std::sync::OnceLock::new(),
            rollouts,
        })
    }

    /// Where people reach the HTTP port, without a trailing slash: the
    /// approval page of request ID is `<public_url>/approvals/ID`. Empty
    /// before the control plane has started.
    pub fn public_url(&self) -> &str {
        self.public_url.get().map_or("", String::as_str)
    }

    /// A nonce no other response of this or an earlier process carried.
    fn next_nonce(&self) -> String {
        let n = self.nonce_seq.fetch_add(1, Ordering::Relaxed);
        format!("{:x}-{n:x}", self.nonce_prefix)
    }

    /// Runs a store call on the blocking pool.
    async fn store<R: Send + 'static>(
        &self,
        f: impl FnOnce(&dyn PolicyStore) -> Result<R, StoreError> + Send + 'static,
    ) -> Result<R, tonic::Status> {
        let store = self.store.clone();
        match tokio::task::spawn_blocking(move || f(&*store)).await {
            Ok(r) => r.map_err(store_status),
            Err(e) => Err(tonic::Status::internal(format!("store task failed: {e}"))),
        }
    }
}

/// How long a new node stream may take to send its first message.
const FIRST_MESSAGE_WAIT: Duration = Duration::from_secs(10);

/// A node stream let in: counted for the drain, holding its admission place
/// until its opening is done.
pub(crate) struct Opened<T> {
    pub tracked: drain::Tracked,
    pub permit: tokio::sync::OwnedSemaphorePermit,
    pub certs: Option<Arc<Vec<tokio_rustls::rustls::pki_types::CertificateDer<'static>>>>,
    pub inbound: tonic::Streaming<T>,
    /// Its first message.
    pub first: T,
}

impl ControlPlane {
    /// What every node stream (policy, quota) does first: refused while the
    /// control plane stops, let in through [`StreamAdmission`] (a fleet
    /// reconnecting at once queues here instead of piling up work), then its
    /// first `message` ("request", "quota report") within
    /// [`FIRST_MESSAGE_WAIT`].
    pub(crate) async fn open_node_stream<T>(
        &self,
        request: tonic::Request<tonic::Streaming<T>>,
        message: &str,
    ) -> Result<Opened<T>, tonic::Status> {
        let Some(tracked) = self.drain.track() else {
            return Err(distribution::shutting_down());
        };
        let permit = match self.admission.admit().await {
            Ok(permit) => permit,
            Err(refused) => {
                self.metrics.streams_refused.inc();
                return Err(tonic::Status::unavailable(refused.to_string()));
            }
        };
        let certs = request.peer_certs();
        let mut inbound = request.into_inner();
        let first = match tokio::time::timeout(FIRST_MESSAGE_WAIT, inbound.message()).await {
            Ok(Ok(Some(first))) => first,
            Ok(Ok(None)) => {
                return Err(tonic::Status::invalid_argument(format!(
                    "the stream closed before its first {message}"
                )));
            }
            Ok(Err(status)) => return Err(status),
            Err(_) => {
                return Err(tonic::Status::deadline_exceeded(format!(
                    "no first {message} within {FIRST_MESSAGE_WAIT:?} of opening the stream"
                )));
            }
        };
        Ok(Opened {
            tracked,
            permit,
            certs,
            inbound,
            first,
        })
    }

    /// The node a `stream` ("policy", "quota", "approvals", "rollouts")
    /// speaks for: the one its first `message` names (refused without a
    /// non-empty id), if the connection that presented `certs` may speak for
    /// it (see [`crate::tls::peer::admit`]). Returns the node, with the
    /// namespace a certificate proved, and the verified SPIFFE id ("" when
    /// ids are taken as declared). Refusals are logged: a certificate
    /// speaking for another node is an attack or a misconfigured sidecar.
    pub(crate) fn admit_node(
        &self,
        stream: &str,
        message: &str,
        certs: Option<Arc<Vec<tokio_rustls::rustls::pki_types::CertificateDer<'static>>>>,
        node: Option<&tollgate_proto::v1::Node>,
    ) -> Result<(tollgate_proto::v1::Node, String), tonic::Status> {
        let mut node = node.filter(|n| !n.id.is_empty()).cloned().ok_or_else(|| {
            tonic::Status::invalid_argument(format!(
                "the {message} must carry node, with a non-empty node.id (the sidecar's node id)"
            ))
        })?;
        match crate::tls::peer::admit(&self.node_identity, certs, &mut node) {
            Ok(peer) => Ok((node, peer.map(|p| p.spiffe_id).unwrap_or_default())),
            Err(status) => {
                self.metrics.streams_unauthenticated.inc();
                tracing::warn!(node = %node.id, stream, "{} stream refused: {}", stream, status.message());
                Err(status)
            }
        }
    }
}

/// The one place store errors become gRPC statuses.
fn store_status(e: StoreError) -> tonic::Status {
    if let StoreError::TokenNameTaken(_) = e {
        return tonic::Status::already_exists(e.to_string());
    }
    tracing::error!(error = %e, "policy store");
    tonic::Status::internal(e.to_string())
}
