//! Starting and stopping: [`start`] binds the ports and serves the gRPC
//! services, the HTTP port and the admission webhook over one
//! [`ControlPlane`]; [`Running`] stops them cleanly.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_stream::Stream;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tollgate_proto::v1::admin_server::AdminServer;
use tollgate_proto::v1::approvals_server::ApprovalsServer;
use tollgate_proto::v1::policy_distribution_server::PolicyDistributionServer;
use tollgate_proto::v1::quota_server::QuotaServer;
use tollgate_proto::v1::rollouts_server::RolloutsServer;

use super::{
    Config, ControlPlane, ServeError, admin, approvals, distribution, http, quota, rollouts,
    webhook as admission_webhook,
};
use crate::approvals::webhook;
use crate::tls::{NodeIdentity, ReloadingConfig, TlsFiles, acceptor};

/// How long a stopping control plane waits for its connections to close
/// after ending every stream, before dropping them.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// A running control plane.
pub struct Running {
    pub grpc_addr: SocketAddr,
    pub http_addr: Option<SocketAddr>,
    /// The admission webhook's port, when served.
    pub webhook_addr: Option<SocketAddr>,
    pub control_plane: Arc<ControlPlane>,
    /// Tells the gRPC server to stop accepting and close its connections
    /// once their streams are done.
    stop_accepting: Option<oneshot::Sender<()>>,
    /// Resolves when the gRPC listener has been closed.
    listener_closed: Option<oneshot::Receiver<()>>,
    grpc: Option<JoinHandle<Result<(), tonic::transport::Error>>>,
    http: Option<JoinHandle<()>>,
    webhook: Option<JoinHandle<()>>,
}

/// The gRPC listener's connections; dropping it (when the server stops
/// accepting) closes the listener and resolves [`Running::listener_closed`].
struct Accepting {
    inner: TcpListenerStream,
    _closed: oneshot::Sender<()>,
}

impl Stream for Accepting {
    type Item = std::io::Result<TcpStream>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        Pin::new(&mut self.inner).poll_next(cx)
    }
}

/// Opens the store, binds both ports and serves until [`Running::shutdown`].
pub async fn start(config: Config) -> Result<Running, ServeError> {
    let cp = Arc::new(ControlPlane::open(&config)?);
    // Read before anything listens: a missing certificate stops the start.
    let webhook_tls = config
        .webhook
        .as_ref()
        .map(admission_webhook::tls)
        .transpose()?;
    // Checked before anything listens: a bad URL or secret stops the start.
    let hook = match &config.approval_webhook {
        Some(url) => {
            let (secret, from) =
                webhook::secret(config.approval_webhook_secret_file.as_deref(), &config.data)?;
            Some((webhook::Webhook::new(url, secret, "")?, url.clone(), from))
        }
        None => None,
    };
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
    let (stop_accepting, stop) = oneshot::channel::<()>();
    let (closed, listener_closed) = oneshot::channel::<()>();
    let router = tonic::transport::Server::builder()
        .add_service(PolicyDistributionServer::new(
            distribution::Distribution::new(cp.clone()),
        ))
        .add_service(
            QuotaServer::new(quota::QuotaService::new(cp.clone()))
                .max_decoding_message_size(tollgate_proto::MAX_QUOTA_MESSAGE_BYTES)
                .max_encoding_message_size(tollgate_proto::MAX_QUOTA_MESSAGE_BYTES),
        )
        .add_service(
            ApprovalsServer::new(approvals::ApprovalsService::new(cp.clone()))
                .max_decoding_message_size(approvals::MAX_MESSAGE_BYTES)
                .max_encoding_message_size(approvals::MAX_MESSAGE_BYTES),
        )
        .add_service(
            RolloutsServer::new(rollouts::reports::ReportService::new(cp.clone()))
                .max_decoding_message_size(rollouts::reports::MAX_REPORT_BYTES),
        )
        .add_service(AdminServer::new(admin::AdminService::new(cp.clone())));
    let stopped = async {
        let _ = stop.await;
    };
    let (grpc, http_tls) = match &config.tls {
        Some(files) => {
            let grpc_tls = Arc::new(ReloadingConfig::load(files.clone(), &[b"h2"])?);
            // The HTTP port asks no client certificate: probes and scrapers
            // have none.
            let http_files = TlsFiles {
                client_ca: None,
                ..files.clone()
            };
            let http_tls = Arc::new(ReloadingConfig::load(http_files, &[b"http/1.1"])?);
            let incoming = ReceiverStream::new(acceptor::incoming(grpc_listener, grpc_tls, closed));
            (
                tokio::spawn(router.serve_with_incoming_shutdown(incoming, stopped)),
                Some(http_tls),
            )
        }
        None => {
            let incoming = Accepting {
                inner: TcpListenerStream::new(grpc_listener),
                _closed: closed,
            };
            (
                tokio::spawn(router.serve_with_incoming_shutdown(incoming, stopped)),
                None,
            )
        }
    };
    // Both end by themselves when the control plane drains.
    tokio::spawn(quota::tick(cp.clone()));
    tokio::spawn(rollouts::drive(cp.clone()));
    let mut draining = cp.drain.latch();
    tokio::spawn(
        cp.approvals
            .clone()
            .run_sweeper(async move { draining.set().await }),
    );
    // Bound before the HTTP port: whenever that answers, so does this.
    let (webhook_task, webhook_addr) = match (&config.webhook, webhook_tls) {
        (Some(injecting), Some(tls)) => {
            let listener = listen(injecting.addr).await?;
            let bound = listener.local_addr().map_err(|source| ServeError::Listen {
                addr: injecting.addr,
                source,
            })?;
            let serving =
                admission_webhook::serve(listener, cp.clone(), tls, injecting.inject.clone());
            tracing::info!(
                addr = %bound,
                path = admission_webhook::INJECT_PATH,
                control_plane = injecting.inject.control_plane,
                image = injecting.inject.image,
                "admission webhook serving: pods are injected with the sidecar"
            );
            (Some(tokio::spawn(serving)), Some(bound))
        }
        _ => (None, None),
    };
    let (http, http_addr) = match config.http {
        Some(addr) => {
            let listener = listen(addr).await?;
            let bound = listener
                .local_addr()
                .map_err(|source| ServeError::Listen { addr, source })?;
            (
                Some(tokio::spawn(http::serve(listener, cp.clone(), http_tls))),
                Some(bound),
            )
        }
        None => (None, None),
    };
    let public_url = match (&config.public_url, http_addr) {
        (Some(url), _) => url.trim_end_matches('/').to_owned(),
        (None, Some(addr)) => {
            let scheme = if config.tls.is_some() {
                "https"
            } else {
                "http"
            };
            format!("{scheme}://{addr}")
        }
        (None, None) => String::new(),
    };
    let _ = cp.public_url.set(public_url.clone());
    if let Some((mut hook, url, from)) = hook {
        hook.link_pages_under(&public_url);
        tracing::info!(
            url,
            secret = %from.display(),
            "approval webhook: each new request is POSTed there, signed with the secret in this file"
        );
        let mut draining = cp.drain.latch();
        tokio::spawn(hook.run(
            cp.approvals.clone(),
            cp.metrics.approvals.clone(),
            async move { draining.set().await },
        ));
    }
    tracing::info!(
        %grpc_addr,
        ?http_addr,
        data = %config.data.display(),
        tls = config.tls.is_some(),
        "control plane serving"
    );
    match &config.node_identity {
        NodeIdentity::Verified { trust_domain } => tracing::info!(
            trust_domain,
            "node identity from client certificates: a stream may only speak for the node its \
             certificate names"
        ),
        NodeIdentity::Declared => tracing::warn!(
            "--insecure-dev: node ids are taken as declared; anything that reaches the gRPC port \
             can speak for any node. Use --client-ca outside development"
        ),
    }
    Ok(Running {
        grpc_addr,
        http_addr,
        webhook_addr,
        control_plane: cp,
        stop_accepting: Some(stop_accepting),
        listener_closed: Some(listener_closed),
        grpc: Some(grpc),
        http,
        webhook: webhook_task,
    })
}

impl Running {
    /// Serves until `stop` resolves, then shuts down cleanly
    /// ([`shutdown`](Self::shutdown)). Returns early with the error if the
    /// gRPC server fails first.
    pub async fn serve_until(mut self, stop: impl Future<Output = ()>) -> Result<(), ServeError> {
        let mut failed = None;
        if let Some(grpc) = self.grpc.as_mut() {
            tokio::select! {
                ended = grpc => {
                    self.grpc = None;
                    failed = match ended {
                        Ok(Ok(())) => None,
                        Ok(Err(e)) => Some(ServeError::Grpc(e)),
                        Err(e) => Some(ServeError::Task(e)),
                    };
                    tracing::error!("the gRPC server stopped by itself; shutting down");
                }
                () = stop => {}
            }
        }
        // Flush the store even after a failure.
        let stopped = self.shutdown().await;
        match failed {
            Some(e) => Err(e),
            None => stopped,
        }
    }

    /// Stops cleanly, in this order: stop accepting connections; end every
    /// open policy stream, quota stream and status watch with status OK (sidecars see the
    /// stream end and reconnect with their backoff, to this control plane
    /// once it is back or to another replica); wait for the connections to
    /// close (up to [`SHUTDOWN_GRACE`], then drop them); flush the store.
    ///
    /// Streams end only after the listener is closed, so a sidecar that
    /// reconnects at once does not land on this stopping process.
    pub async fn shutdown(mut self) -> Result<(), ServeError> {
        let cp = self.control_plane.clone();
        tracing::info!(
            open_streams = cp.drain.open(),
            "shutting down: no new connections; ending every open stream"
        );
        if let Some(tx) = self.stop_accepting.take() {
            let _ = tx.send(());
        }
        if let Some(closed) = self.listener_closed.take() {
            // Resolves (with an error: the sender is dropped, never used)
            // once the server drops the listener.
            let _ = tokio::time::timeout(SHUTDOWN_GRACE, closed).await;
        }
        cp.drain.start();
        if let Some(mut grpc) = self.grpc.take() {
            match tokio::time::timeout(SHUTDOWN_GRACE, &mut grpc).await {
                Ok(Ok(Ok(()))) => {}
                Ok(Ok(Err(e))) => {
                    tracing::warn!(error = %e, "the gRPC server stopped with an error")
                }
                Ok(Err(e)) => tracing::warn!(error = %e, "the gRPC server task failed"),
                Err(_) => {
                    tracing::warn!(
                        grace = ?SHUTDOWN_GRACE,
                        "connections still open after the grace period; dropping them"
                    );
                    grpc.abort();
                }
            }
        }
        if !cp.drain.idle(SHUTDOWN_GRACE).await {
            tracing::warn!(
                open_streams = cp.drain.open(),
                "streams still finishing after the grace period; stopping anyway"
            );
        }
        if let Some(http) = self.http.take() {
            http.abort();
        }
        if let Some(task) = self.webhook.take() {
            task.abort();
        }
        let store = cp.store.clone();
        tokio::task::spawn_blocking(move || store.flush()).await??;
        tracing::info!("control plane stopped cleanly");
        Ok(())
    }
}
