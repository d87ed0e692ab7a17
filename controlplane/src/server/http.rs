//! The HTTP port: `/healthz`, `/readyz`, `/metrics`, and the approval page
//! (`/approvals`, `/login`; see [`super::page`]).
//!
//! It is bound only after the store opened and the gRPC port listens, so
//! whenever it answers the control plane is ready.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use super::ControlPlane;
use crate::tls::{NodeIdentity, ReloadingConfig, acceptor};

/// Serves the HTTP port; with `tls`, each connection's handshake first.
pub async fn serve(
    listener: TcpListener,
    cp: Arc<ControlPlane>,
    tls: Option<Arc<ReloadingConfig>>,
) {
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "http accept");
                continue;
            }
        };
        let cp = cp.clone();
        let tls = tls.as_ref().map(|t| t.current());
        let secure = tls.is_some();
        tokio::spawn(async move {
            let svc = service_fn(move |req| answer(req, cp.clone(), secure));
            let http = http1::Builder::new();
            let _ = match tls {
                Some(config) => match acceptor::handshake(config, stream).await {
                    Some(tls) => http.serve_connection(TokioIo::new(tls), svc).await,
                    None => return,
                },
                None => http.serve_connection(TokioIo::new(stream), svc).await,
            };
        });
    }
}

/// `ready`, and what a development setup gives up.
fn readiness(cp: &ControlPlane) -> String {
    match cp.node_identity {
        NodeIdentity::Verified { .. } => "ready\n".to_owned(),
        NodeIdentity::Declared => "ready (insecure-dev: node ids are not verified; any client \
                                   that reaches the gRPC port can speak for any node)\n"
            .to_owned(),
    }
}

async fn answer(
    req: Request<Incoming>,
    cp: Arc<ControlPlane>,
    secure: bool,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if super::page::serves(req.uri().path()) {
        return Ok(super::page::respond(req, &cp, secure).await);
    }
    let (status, content_type, body) = match req.uri().path() {
        "/healthz" => (StatusCode::OK, "text/plain", "ok\n".to_owned()),
        "/readyz" => (StatusCode::OK, "text/plain", readiness(&cp)),
        "/metrics" => {
            cp.metrics.connected_nodes.set(cp.fleet.connected() as i64);
            cp.metrics.quota_buckets.set(cp.quota.buckets() as i64);
            (
                StatusCode::OK,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                cp.metrics.encode(),
            )
        }
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found\n".to_owned(),
        ),
    };
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    Ok(resp)
}
