//! The mutating admission webhook's port (`serve --webhook-addr`): HTTPS
//! only, `POST /inject` with an `admission.k8s.io/v1` AdmissionReview in,
//! the AdmissionReview [`crate::inject::admission::review`] answers out
//! (a JSONPatch adding the sidecar, the same patch `tollgate inject`
//! applies). `/healthz` answers `ok`; anything else is refused with a
//! plain-text line saying what this port serves.
//!
//! The Kubernetes API server is the only expected client, but whatever
//! reaches the port is read as hostile: connections, header time, body size
//! and body time are bounded, and the certificate is re-read when its files
//! change (a rotated Kubernetes secret serves the next connection). No
//! client certificate is asked for: the API server presents none by default.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;

use super::ControlPlane;
use crate::inject;
use crate::tls::{ReloadingConfig, TlsFiles, acceptor};

/// The path the MutatingWebhookConfiguration's service points at.
pub const INJECT_PATH: &str = "/inject";

/// The largest AdmissionReview read, in bytes: a pod with many containers
/// and its managed fields fits many times over (etcd stores objects up to
/// 1.5 MiB); past it the answer is 413.
pub const MAX_REVIEW_BYTES: usize = 4 << 20;

/// How long a client may take to send a request's headers; also how long
/// an idle kept-alive connection stays open.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a client may take to send a request's body once its headers
/// arrived (the API server's own webhook timeout is at most 30 s).
const BODY_TIMEOUT: Duration = Duration::from_secs(10);

/// Connections served at once; past this, new ones wait in the kernel's
/// accept queue. Bounds the memory bodies can take to this many times
/// [`MAX_REVIEW_BYTES`].
const MAX_CONNECTIONS: usize = 64;

/// How the webhook is served.
#[derive(Debug, Clone)]
pub struct WebhookConfig {
    pub addr: SocketAddr,
    /// The serving certificate and key (`client_ca` is not used: no client
    /// certificate is asked for).
    pub tls: TlsFiles,
    /// How injected sidecars are configured.
    pub inject: inject::Options,
}

/// The webhook's TLS configuration, read now: a missing or unreadable
/// certificate stops the start.
pub fn tls(config: &WebhookConfig) -> Result<Arc<ReloadingConfig>, crate::tls::TlsError> {
    let files = TlsFiles {
        client_ca: None,
        ..config.tls.clone()
    };
    Ok(Arc::new(ReloadingConfig::load(files, &[b"http/1.1"])?))
}

/// Serves the webhook port until the task is dropped.
pub async fn serve(
    listener: TcpListener,
    cp: Arc<ControlPlane>,
    tls: Arc<ReloadingConfig>,
    opts: inject::Options,
) {
    let opts = Arc::new(opts);
    let connections = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(permit) = connections.clone().acquire_owned().await else {
            return;
        };
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                // Out of descriptors and the like: pause rather than spin.
                tracing::warn!(error = %e, "webhook accept");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let (cp, opts, config) = (cp.clone(), opts.clone(), tls.current());
        tokio::spawn(async move {
            let _permit = permit;
            let Some(tls) = acceptor::handshake(config, stream).await else {
                return;
            };
            let svc = service_fn(move |req| answer(req, cp.clone(), opts.clone()));
            let _ = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(tls), svc)
                .await;
        });
    }
}

async fn answer(
    req: Request<Incoming>,
    cp: Arc<ControlPlane>,
    opts: Arc<inject::Options>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    Ok(match (req.uri().path(), req.method()) {
        (INJECT_PATH, &Method::POST) => inject(req, &cp, opts).await,
        (INJECT_PATH, _) => {
            let mut resp = plain(
                StatusCode::METHOD_NOT_ALLOWED,
                "the admission webhook takes POST /inject with an admission.k8s.io/v1 \
                 AdmissionReview (as the Kubernetes API server sends it)\n",
            );
            resp.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("POST"));
            resp
        }
        ("/healthz", &Method::GET) => plain(StatusCode::OK, "ok\n"),
        _ => plain(
            StatusCode::NOT_FOUND,
            "not found: this port serves the admission webhook at POST /inject (point the \
             MutatingWebhookConfiguration's service path there) and GET /healthz\n",
        ),
    })
}

/// One review: the body read (bounded in size and time), answered by the
/// injection core on the blocking pool (a large pod is parsed and patched
/// there), counted and logged.
async fn inject(
    req: Request<Incoming>,
    cp: &ControlPlane,
    opts: Arc<inject::Options>,
) -> Response<Full<Bytes>> {
    let json = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|t| t.split(';').next())
        .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json"));
    if !json {
        return plain(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "send the AdmissionReview as Content-Type: application/json\n",
        );
    }
    // A declared length past the bound is refused before anything is read.
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_REVIEW_BYTES as u64) {
        return too_large();
    }
    let read = Limited::new(req.into_body(), MAX_REVIEW_BYTES).collect();
    let body = match tokio::time::timeout(BODY_TIMEOUT, read).await {
        Ok(Ok(collected)) => collected.to_bytes(),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => return too_large(),
        Ok(Err(_)) => {
            return plain(
                StatusCode::BAD_REQUEST,
                "the AdmissionReview did not arrive whole; send it again\n",
            );
        }
        Err(_) => {
            return plain(
                StatusCode::REQUEST_TIMEOUT,
                "the AdmissionReview did not arrive within 10 s; send it again\n",
            );
        }
    };
    let answered =
        tokio::task::spawn_blocking(move || inject::admission::review_with_outcome(&body, &opts))
            .await;
    let reviewed = match answered {
        Ok(a) => a,
        Err(e) => {
            tracing::error!(error = %e, "the admission review task failed");
            return plain(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the review could not be answered; see the control plane's log\n",
            );
        }
    };
    let outcome = reviewed.outcome;
    cp.metrics.webhook_review(outcome);
    tracing::debug!(
        uid = reviewed.uid,
        namespace = reviewed.namespace,
        dry_run = reviewed.dry_run,
        outcome,
        "admission review"
    );
    let mut resp = Response::new(Full::new(Bytes::from(reviewed.body)));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

fn too_large() -> Response<Full<Bytes>> {
    plain(
        StatusCode::PAYLOAD_TOO_LARGE,
        "the AdmissionReview is larger than 4 MiB; this webhook is for pods, whose reviews are \
         far smaller (check the MutatingWebhookConfiguration's rules select pods only)\n",
    )
}

fn plain(status: StatusCode, text: &'static str) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from_static(text.as_bytes())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}
