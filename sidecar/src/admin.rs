//! The admin endpoints (loopback by default): `/healthz` (the process
//! serves), `/readyz` (a valid policy is loaded), `/metrics` (Prometheus).

use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use tokio::net::TcpListener;

use crate::conn::ConnLimits;
use crate::metrics::Metrics;
use crate::snapshot::LivePolicy;
use crate::upstream::http::Body;

/// Serves the admin endpoints until the task is dropped, with the MCP
/// listener's header deadline and caps, and at most 64 connections.
pub async fn serve(listener: TcpListener, policy: Arc<LivePolicy>, metrics: Arc<Metrics>) {
    let limits = ConnLimits {
        name: "admin",
        max_connections: 64,
        ..ConnLimits::default()
    };
    let m = Arc::clone(&metrics);
    crate::conn::serve(listener, limits, m, move |req, _peer| {
        let resp = respond(&req, &policy, &metrics).map(Body::Full);
        async move { resp }
    })
    .await;
}

fn respond(
    req: &Request<Incoming>,
    policy: &LivePolicy,
    metrics: &Metrics,
) -> Response<Full<Bytes>> {
    let (status, content_type, body) = match req.uri().path() {
        "/healthz" => (StatusCode::OK, "text/plain", "ok\n".to_owned()),
        "/readyz" => match policy.load() {
            s if s.is_loaded() => (
                StatusCode::OK,
                "text/plain",
                format!("ready: policy {}\n", s.version()),
            ),
            _ => (
                StatusCode::SERVICE_UNAVAILABLE,
                "text/plain",
                "not ready: no valid policy loaded yet; every call is denied\n".to_owned(),
            ),
        },
        "/metrics" => (
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            metrics.encode(),
        ),
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found: try /healthz, /readyz or /metrics\n".to_owned(),
        ),
    };
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    if let Ok(v) = header::HeaderValue::from_str(content_type) {
        resp.headers_mut().insert(header::CONTENT_TYPE, v);
    }
    resp
}
