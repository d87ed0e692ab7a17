//! `tollgate serve`: the gRPC services (distribution and admin, one port)
//! and the HTTP port (health, readiness, metrics) over one shared
//! [`ControlPlane`].

mod admin;
pub mod admission;
mod distribution;
mod http;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::TcpListenerStream;
use tollgate_proto::v1::admin_server::AdminServer;
use tollgate_proto::v1::policy_distribution_server::PolicyDistributionServer;

use crate::metrics::Metrics;
use crate::status::Fleet;
use crate::store::{PolicyStore, SqliteStore, StoreError, StoredVersion};
use admission::{Admission, Limits};

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
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// The version every node should run, as sent on the wire.
#[derive(Debug)]
pub struct Latest {
    pub version: u64,
    pub content_hash: String,
    pub content: Bytes,
}

impl From<StoredVersion> for Latest {
    fn from(v: StoredVersion) -> Self {
        Self {
            version: v.version,
            content_hash: v.content_hash,
            content: Bytes::from(v.content),
        }
    }
}

/// State shared by every service.
pub struct ControlPlane {
    store: Arc<dyn PolicyStore>,
    latest: watch::Sender<Option<Arc<Latest>>>,
    fleet: Fleet,
    metrics: Metrics,
    /// Pushes are serialized so versions reach the watch in order.
    push_lock: tokio::sync::Mutex<()>,
    admission: Admission,
    nonce_prefix: u64,
    nonce_seq: AtomicU64,
}

impl ControlPlane {
    /// Opens the store in `config.data` and loads the latest version.
    pub fn open(config: &Config) -> Result<Self, StoreError> {
        let store = SqliteStore::open(&config.data)?;
        let latest = store.latest()?.map(|v| Arc::new(Latest::from(v)));
        let metrics = Metrics::new();
        metrics
            .latest_version
            .set(latest.as_ref().map_or(0, |l| l.version as i64));
        Ok(Self {
            store: Arc::new(store),
            latest: watch::Sender::new(latest),
            fleet: Fleet::new(config.stale_after),
            metrics,
            push_lock: tokio::sync::Mutex::new(()),
            admission: Admission::new(Limits {
                opening: config.max_opening_streams,
                waiting: config.max_waiting_streams,
                wait: ADMISSION_WAIT,
            }),
            nonce_prefix: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64),
            nonce_seq: AtomicU64::new(0),
        })
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

/// The one place store errors become gRPC statuses.
fn store_status(e: StoreError) -> tonic::Status {
    tracing::error!(error = %e, "policy store");
    tonic::Status::internal(e.to_string())
}

/// A running control plane.
pub struct Running {
    pub grpc_addr: SocketAddr,
    pub http_addr: Option<SocketAddr>,
    pub control_plane: Arc<ControlPlane>,
    shutdown: Option<oneshot::Sender<()>>,
    grpc: JoinHandle<Result<(), tonic::transport::Error>>,
    http: Option<JoinHandle<()>>,
}

/// Opens the store, binds both ports and serves until [`Running::shutdown`].
pub async fn start(config: Config) -> Result<Running, ServeError> {
    let cp = Arc::new(ControlPlane::open(&config)?);
    let listen = |addr| async move {
        TcpListener::bind(addr)
            .await
            .map_err(|source| ServeError::Listen { addr, source })
    };
    let grpc_listener = listen(config.grpc).await?;
    let grpc_addr = grpc_listener
        .local_addr()
        .map_err(|source| ServeError::Listen {
            addr: config.grpc,
            source,
        })?;
    let (shutdown, stop) = oneshot::channel::<()>();
    let grpc = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(PolicyDistributionServer::new(
                distribution::Distribution::new(cp.clone()),
            ))
            .add_service(AdminServer::new(admin::AdminService::new(cp.clone())))
            .serve_with_incoming_shutdown(TcpListenerStream::new(grpc_listener), async {
                let _ = stop.await;
            }),
    );
    let (http, http_addr) = match config.http {
        Some(addr) => {
            let listener = listen(addr).await?;
            let bound = listener
                .local_addr()
                .map_err(|source| ServeError::Listen { addr, source })?;
            (
                Some(tokio::spawn(http::serve(listener, cp.clone()))),
                Some(bound),
            )
        }
        None => (None, None),
    };
    tracing::info!(%grpc_addr, ?http_addr, data = %config.data.display(), "control plane serving");
    Ok(Running {
        grpc_addr,
        http_addr,
        control_plane: cp,
        shutdown: Some(shutdown),
        grpc,
        http,
    })
}

impl Running {
    /// Serves until the gRPC server stops.
    pub async fn wait(mut self) -> anyhow::Result<()> {
        (&mut self.grpc).await??;
        Ok(())
    }

    /// Stops serving: gracefully for up to two seconds, then by force (open
    /// policy streams would otherwise hold the server forever).
    pub async fn shutdown(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if tokio::time::timeout(Duration::from_secs(2), &mut self.grpc)
            .await
            .is_err()
        {
            self.grpc.abort();
        }
        if let Some(http) = self.http.take() {
            http.abort();
        }
    }
}
