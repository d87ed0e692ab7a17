//! The control plane's TLS: a server configuration re-read whenever its
//! files change, and the accept loop that hands finished handshakes to the
//! gRPC server.
//!
//! Files are checked (modification time, size, inode) as each connection
//! is accepted, so a rotated certificate — a renewed Kubernetes secret, a
//! `tollgate certs` run — serves the next connection without a restart.
//! A rotation caught half-written keeps the previous configuration and is
//! tried again on the next connection. Open connections keep the
//! certificate they were made with.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{self, RootCertStore, ServerConfig};
use tokio_rustls::server::TlsStream;

/// How long a client may take to finish its TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Handshakes in flight at once; past this, new connections wait in the
/// kernel's accept queue.
const MAX_HANDSHAKES: usize = 1024;

/// Where the serving certificate, its key and (for mTLS) the CA of client
/// certificates are.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Clients may present a certificate from this CA (verified in the
    /// handshake); one from another CA is refused. Whether a service needs
    /// one is up to the service (policy and quota streams do, operators use
    /// tokens).
    pub client_ca: Option<PathBuf>,
}

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {what}; expected PEM (as `tollgate certs init` writes)")]
    Pem { path: String, what: String },
    #[error("TLS configuration: {0}")]
    Config(#[from] rustls::Error),
    #[error("--client-ca {path}: {reason}")]
    ClientCa { path: String, reason: String },
}

/// The file stamps a configuration was built from.
type Stamps = Vec<Option<(SystemTime, u64, u64)>>;

/// A server configuration kept in step with its files.
pub struct ReloadingConfig {
    files: TlsFiles,
    alpn: Vec<Vec<u8>>,
    current: Mutex<(Stamps, Arc<ServerConfig>)>,
}

impl ReloadingConfig {
    /// Reads the files now; an error here stops the start.
    pub fn load(files: TlsFiles, alpn: &[&[u8]]) -> Result<Self, TlsError> {
        let alpn: Vec<Vec<u8>> = alpn.iter().map(|p| p.to_vec()).collect();
        let stamps = stamps(&files);
        let config = build(&files, &alpn)?;
        Ok(Self {
            files,
            alpn,
            current: Mutex::new((stamps, config)),
        })
    }

    /// The configuration for the next connection: re-read first if a file
    /// changed since it was built.
    pub fn current(&self) -> Arc<ServerConfig> {
        let mut current = match self.current.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        let now = stamps(&self.files);
        if now != current.0 {
            match build(&self.files, &self.alpn) {
                Ok(config) => {
                    tracing::info!(cert = %self.files.cert.display(), "TLS files changed: serving the new certificate to new connections");
                    *current = (now, config);
                }
                Err(e) => {
                    // Tried again on the next connection (the stamps stay old).
                    tracing::warn!(
                        "TLS files changed but cannot be used yet, keeping the previous certificate: {e}"
                    );
                }
            }
        }
        Arc::clone(&current.1)
    }
}

fn stamps(files: &TlsFiles) -> Stamps {
    use std::os::unix::fs::MetadataExt;
    [
        Some(&files.cert),
        Some(&files.key),
        files.client_ca.as_ref(),
    ]
    .into_iter()
    .flatten()
    .map(|p| {
        std::fs::metadata(p)
            .ok()
            .and_then(|m| Some((m.modified().ok()?, m.len(), m.ino())))
    })
    .collect()
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.display().to_string(),
        source,
    })
}

/// Every certificate in a PEM file.
pub fn certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem {
            path: path.display().to_string(),
            what: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Pem {
            path: path.display().to_string(),
            what: "no CERTIFICATE block".into(),
        });
    }
    Ok(certs)
}

fn build(files: &TlsFiles, alpn: &[Vec<u8>]) -> Result<Arc<ServerConfig>, TlsError> {
    let chain = certs(&files.cert)?;
    let key = PrivateKeyDer::from_pem_slice(&read(&files.key)?).map_err(|e| TlsError::Pem {
        path: files.key.display().to_string(),
        what: e.to_string(),
    })?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    let builder = match &files.client_ca {
        Some(path) => {
            let mut roots = RootCertStore::empty();
            for cert in certs(path)? {
                roots.add(cert).map_err(|e| TlsError::ClientCa {
                    path: path.display().to_string(),
                    reason: e.to_string(),
                })?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .allow_unauthenticated()
                .build()
                .map_err(|e| TlsError::ClientCa {
                    path: path.display().to_string(),
                    reason: e.to_string(),
                })?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_single_cert(chain, key)?;
    config.alpn_protocols = alpn.to_vec();
    Ok(Arc::new(config))
}

/// Finishes one TLS handshake within [`HANDSHAKE_TIMEOUT`]; `None` (logged
/// at debug: scanners and plaintext clients are common) if it fails.
pub async fn handshake(config: Arc<ServerConfig>, tcp: TcpStream) -> Option<TlsStream<TcpStream>> {
    let peer = tcp.peer_addr().ok();
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, TlsAcceptor::from(config).accept(tcp)).await {
        Ok(Ok(tls)) => Some(tls),
        Ok(Err(e)) => {
            tracing::debug!(?peer, "TLS handshake refused: {e}");
            None
        }
        Err(_) => {
            tracing::debug!(
                ?peer,
                "TLS handshake not finished within {HANDSHAKE_TIMEOUT:?}"
            );
            None
        }
    }
}

/// Accepts on `listener`, finishes handshakes concurrently, and yields the
/// finished connections in the order they finish. When the returned
/// receiver is dropped (the server stopped accepting), the listener is
/// closed and `closed` is dropped.
pub fn incoming(
    listener: TcpListener,
    config: Arc<ReloadingConfig>,
    closed: oneshot::Sender<()>,
) -> mpsc::Receiver<std::io::Result<TlsStream<TcpStream>>> {
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        let _closed = closed;
        let handshakes = Arc::new(tokio::sync::Semaphore::new(MAX_HANDSHAKES));
        loop {
            let permit = tokio::select! {
                () = tx.closed() => return,
                p = handshakes.clone().acquire_owned() => match p {
                    Ok(p) => p,
                    Err(_) => return,
                },
            };
            let tcp = tokio::select! {
                () = tx.closed() => return,
                accepted = listener.accept() => match accepted {
                    Ok((tcp, _)) => tcp,
                    Err(e) => {
                        // Out of descriptors and the like: pause rather than spin.
                        tracing::warn!(error = %e, "gRPC accept");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let _ = tcp.set_nodelay(true);
            let (tx, config) = (tx.clone(), config.current());
            tokio::spawn(async move {
                let _permit = permit;
                if let Some(tls) = handshake(config, tcp).await {
                    let _ = tx.send(Ok(tls)).await;
                }
            });
        }
    });
    rx
}
