//! The admin endpoints (loopback by default): `/healthz` (the process
//! serves), `/readyz` (a valid policy is loaded), `/metrics` (Prometheus),
//! and `/approvals` ([`crate::approvals::admin_api`]).

use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use tokio::net::TcpListener;

use crate::approvals::admin_api::{self, AdminApprovals};
use crate::conn::ConnLimits;
use crate::metrics::Metrics;
use crate::snapshot::LivePolicy;
use crate::upstream::http::Body;

/// Serves the admin endpoints until the task is dropped, with the MCP
/// listener's header deadline and caps, and at most 64 connections.
pub async fn serve(
    listener: TcpListener,
    policy: Arc<LivePolicy>,
    metrics: Arc<Metrics>,
    approvals: AdminApprovals,
) {
    let limits = ConnLimits {
        name: "admin",
        max_connections: 64,
        ..ConnLimits::default()
    };
    let m = Arc::clone(&metrics);
    crate::conn::serve(listener, limits, m, move |req, peer| {
        let approvals = approvals.clone();
        let plain = (!admin_api::serves(req.uri().path()))
            .then(|| respond(&req, &policy, &metrics).map(Body::Full));
        async move {
            match plain {
                Some(resp) => resp,
                None => approval(req, peer, &approvals).await.map(Body::Full),
            }
        }
    })
    .await;
}

/// An `/approvals` request: its body (bounded) read, then answered as JSON.
async fn approval(
    req: Request<Incoming>,
    peer: std::net::SocketAddr,
    approvals: &AdminApprovals,
) -> Response<Full<Bytes>> {
    let (parts, body) = req.into_parts();
    let read = crate::judge::read_body(body, &parts.headers, admin_api::MAX_BODY);
    let body = match tokio::time::timeout(std::time::Duration::from_secs(10), read).await {
        Ok(Ok(b)) => b,
        Ok(Err(e)) => {
            return json_response(
                StatusCode::BAD_REQUEST,
                &serde_json::json!({"error": e.to_string()}),
            );
        }
        Err(_) => {
            return json_response(
                StatusCode::REQUEST_TIMEOUT,
                &serde_json::json!({"error": "the request body did not arrive within 10 s"}),
            );
        }
    };
    let (status, json) = admin_api::handle(
        approvals,
        peer,
        &parts.method,
        parts.uri.path(),
        parts.uri.query(),
        &body,
    )
    .await;
    json_response(status, &json)
}

fn json_response(status: StatusCode, json: &serde_json::Value) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(json.to_string())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    resp
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
            "not found: try /healthz, /readyz, /metrics or /approvals\n".to_owned(),
        ),
    };
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    if let Ok(v) = header::HeaderValue::from_str(content_type) {
        resp.headers_mut().insert(header::CONTENT_TYPE, v);
    }
    resp
}
