//! A bare pass-through proxy: the ceiling a Rust proxy built like the
//! sidecar can reach.
//!
//! Same server and client as the sidecar (hyper-util's `auto` server
//! builder, the pooled legacy client with `TCP_NODELAY` and 256 idle
//! connections per host, tokio's multi-threaded runtime with one worker per
//! core it may run on) but no peek, no policy and no metrics: each request's
//! body streams to the upstream unread, with only the URI and `Host`
//! rewritten, and the response streams back unread.

#![forbid(unsafe_code)]

use std::net::SocketAddr;

use bytes::Bytes;
use http::uri::{Authority, Scheme};
use http::{HeaderValue, Request, Response, StatusCode, Uri, header};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tollgate_loadtest::Flags;

const USAGE: &str = "passthrough --listen 127.0.0.1:18102 --upstream 127.0.0.1:18101";

type Body = Either<Incoming, Full<Bytes>>;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let flags = Flags::from_env(USAGE);
    let listen: SocketAddr = flags.get("listen", "127.0.0.1:18102".parse()?);
    let upstream: Authority = flags.get("upstream", "127.0.0.1:18101".parse()?);
    let host = HeaderValue::from_str(upstream.as_str())?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let client: Client<HttpConnector, Incoming> = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(256)
            .build(connector);
        let listener = TcpListener::bind(listen).await?;
        eprintln!("passthrough: http://{listen} → http://{upstream}");
        loop {
            let (stream, _) = listener.accept().await?;
            let _ = stream.set_nodelay(true);
            let client = client.clone();
            let upstream = upstream.clone();
            let host = host.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req: Request<Incoming>| {
                    forward(client.clone(), upstream.clone(), host.clone(), req)
                });
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    })
}

async fn forward(
    client: Client<HttpConnector, Incoming>,
    upstream: Authority,
    host: HeaderValue,
    mut req: Request<Incoming>,
) -> Result<Response<Body>, std::convert::Infallible> {
    let mut parts = req.uri().clone().into_parts();
    parts.scheme = Some(Scheme::HTTP);
    parts.authority = Some(upstream);
    match Uri::from_parts(parts) {
        Ok(uri) => *req.uri_mut() = uri,
        Err(e) => return Ok(error(StatusCode::BAD_REQUEST, e.to_string())),
    }
    req.headers_mut().insert(header::HOST, host);
    Ok(match client.request(req).await {
        Ok(resp) => resp.map(Either::Left),
        Err(e) => error(StatusCode::BAD_GATEWAY, e.to_string()),
    })
}

fn error(status: StatusCode, text: String) -> Response<Body> {
    let mut resp = Response::new(Either::Right(Full::new(Bytes::from(text))));
    *resp.status_mut() = status;
    resp
}
