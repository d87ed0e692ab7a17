//! A fast MCP upstream: every POST is answered with a small fixed
//! `tools/call` result (`application/json`) that echoes the request's id.
//! HTTP/1.1 with keep-alive, one thread (the benchmark pins it to a core).
//!
//! It reads the whole body and parses it for the id, as any real server
//! must; nothing else is done, so its cost per request is near the floor.

#![forbid(unsafe_code)]

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::net::TcpListener;
use tollgate_loadtest::Flags;

const USAGE: &str = "upstream --listen 127.0.0.1:18101";

#[derive(Deserialize)]
struct Rpc<'a> {
    #[serde(borrow, default)]
    id: Option<&'a RawValue>,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let flags = Flags::from_env(USAGE);
    let listen: SocketAddr = flags.get("listen", "127.0.0.1:18101".parse()?);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let listener = TcpListener::bind(listen).await?;
        eprintln!("upstream: MCP on http://{listen}/mcp");
        loop {
            let (stream, _) = listener.accept().await?;
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                let _ = http1::Builder::new()
                    .keep_alive(true)
                    .serve_connection(TokioIo::new(stream), service_fn(answer))
                    .await;
            });
        }
    })
}

async fn answer(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    if req.method() != Method::POST {
        return Ok(plain(StatusCode::METHOD_NOT_ALLOWED, "POST only\n"));
    }
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return Ok(plain(StatusCode::BAD_REQUEST, "unreadable body\n")),
    };
    let id = match serde_json::from_slice::<Rpc<'_>>(&body) {
        Ok(rpc) => rpc.id.map_or("null", RawValue::get).to_owned(),
        Err(_) => return Ok(plain(StatusCode::BAD_REQUEST, "not JSON-RPC\n")),
    };
    let json = format!(
        r#"{{"jsonrpc":"2.0","id":{id},"result":{{"content":[{{"type":"text","text":"3 issues found"}}],"isError":false}}}}"#
    );
    let mut resp = Response::new(Full::new(Bytes::from(json)));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Ok(resp)
}

fn plain(status: StatusCode, text: &'static str) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from_static(text.as_bytes())));
    *resp.status_mut() = status;
    resp
}
