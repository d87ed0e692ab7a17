//! Sending a request upstream, for every transport: the client's headers
//! less hop-by-hop ones (and the grant header where grants are set), the
//! configured upstream path, and an unreachable upstream counted and refused
//! naming the server.

use std::sync::Arc;

use bytes::Bytes;
use http::header::{self, HeaderMap};
use http::{Method, Request, Response, Uri, request};

use crate::reply::RequestError;
use crate::snapshot::Snapshot;
use crate::state::{Route, Sidecar};
use crate::upstream::http::{Body, Caller, HttpUpstream, forwarded_headers, full};

/// One request to send upstream.
#[derive(Debug)]
pub struct Outgoing<'a> {
    /// The method.
    pub method: Method,
    /// The upstream URL.
    pub target: Uri,
    /// The client's headers.
    pub headers: HeaderMap,
    /// The body (empty for GET and DELETE).
    pub body: Bytes,
    /// The request's raw JSON-RPC id, for the error reply.
    pub id: Option<Bytes>,
    /// The caller's grant, when known (the stdio bridge keys sessions by it).
    pub caller: Option<&'a Arc<str>>,
}

/// Sends `out` upstream. Upstream failures are counted; an unreachable
/// upstream is refused with an error naming the server.
pub async fn forward(
    sc: &Sidecar,
    route: &Route,
    up: &HttpUpstream,
    snapshot: &Snapshot,
    out: Outgoing<'_>,
) -> Result<Response<Body>, RequestError> {
    let strip = snapshot.has_grants().then_some(&sc.grant_header);
    // The body may differ from the client's (a batch without refused calls, a
    // GET's body dropped): a Content-Length that does not state the length of
    // what is sent is removed, and hyper writes the right one.
    let length_stands = {
        let mut lengths = out.headers.get_all(header::CONTENT_LENGTH).iter();
        let first = lengths.next().and_then(|v| v.to_str().ok());
        lengths.next().is_none()
            && first.and_then(|v| v.parse::<usize>().ok()) == Some(out.body.len())
    };
    let mut req = Request::new(full(out.body));
    *req.method_mut() = out.method;
    *req.uri_mut() = out.target;
    *req.headers_mut() = forwarded_headers(out.headers, up.host(), strip);
    if !length_stands {
        req.headers_mut().remove(header::CONTENT_LENGTH);
    }
    if let Some(grant) = out.caller {
        req.extensions_mut().insert(Caller(Arc::clone(grant)));
    }
    match up.send(req).await {
        Ok(r) => {
            if r.status().is_server_error() {
                sc.metrics.upstream_error(&route.server);
            }
            Ok(r)
        }
        Err(e) => {
            sc.metrics.upstream_error(&route.server);
            Err(RequestError::Upstream {
                id: out.id,
                message: e.to_string(),
            })
        }
    }
}

/// Forwards a request that carries no MCP message (GET streams, DELETE,
/// discovery documents), without any body the client sent: a body sent
/// with them is dropped, never forwarded unjudged.
pub async fn pass_through(
    sc: &Sidecar,
    route: &Route,
    up: &HttpUpstream,
    target: Uri,
    parts: request::Parts,
    snapshot: &Snapshot,
) -> Response<Body> {
    let out = Outgoing {
        method: parts.method,
        target,
        headers: parts.headers,
        body: Bytes::new(),
        id: None,
        caller: None,
    };
    forward(sc, route, up, snapshot, out)
        .await
        .unwrap_or_else(RequestError::into_response)
}
