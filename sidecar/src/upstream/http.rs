//! An upstream reached over HTTP (Streamable HTTP, or the legacy SSE transport).
//!
//! Requests go to the configured upstream and nowhere else: to its URL's
//! path and query (the client's query string is not forwarded: MCP defines
//! none), with `Host` set to its authority. A Host-routing hop behind the
//! sidecar therefore runs a call on the server whose policy judged it. The
//! client's `Host` travels as `X-Forwarded-Host` (replacing any the client
//! sent, and `Forwarded` is dropped), for an upstream that builds public URLs.
//! Other headers pass unchanged — `Origin` included, so the upstream's own
//! DNS-rebinding checks still see what the client sent — except the
//! hop-by-hop headers a proxy must not pass on, and the grant header when
//! grants are configured (a caller's token is never forwarded upstream).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, Uri};
use http_body::{Frame, SizeHint};
use http_body_util::Full;
use http_body_util::combinators::BoxBody;
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// Any error from a body.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The body the sidecar sends and returns. The two shapes of the request
/// path — bytes in hand, and an upstream response relayed as it streams —
/// are held as they are; only bodies the sidecar builds as streams (SSE
/// filters, stdio bridges) are boxed.
#[derive(Debug)]
pub enum Body {
    /// Bytes in hand.
    Full(Full<Bytes>),
    /// An upstream response's body, relayed frame by frame.
    Upstream(Incoming),
    /// Any other body.
    Boxed(BoxBody<Bytes, BoxError>),
}

impl Body {
    /// Boxes a body the sidecar builds.
    pub fn boxed<B>(body: B) -> Self
    where
        B: http_body::Body<Data = Bytes, Error = BoxError> + Send + Sync + 'static,
    {
        Body::Boxed(BoxBody::new(body))
    }
}

impl http_body::Body for Body {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            Body::Full(b) => Pin::new(b).poll_frame(cx).map_err(|e| match e {}),
            Body::Upstream(b) => Pin::new(b).poll_frame(cx).map_err(box_error),
            Body::Boxed(b) => Pin::new(b).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Body::Full(b) => b.is_end_stream(),
            Body::Upstream(b) => b.is_end_stream(),
            Body::Boxed(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Body::Full(b) => b.size_hint(),
            Body::Upstream(b) => b.size_hint(),
            Body::Boxed(b) => b.size_hint(),
        }
    }
}

/// A body of these bytes.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    Body::Full(Full::new(bytes.into()))
}

/// Boxes a body error.
pub fn box_error<E: std::error::Error + Send + Sync + 'static>(e: E) -> BoxError {
    Box::new(e)
}

/// Why a request did not get an upstream response.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// Connecting or exchanging failed.
    #[error("could not reach upstream server `{server}` at {url}: {reason}")]
    Unreachable {
        /// The server's name.
        server: String,
        /// Its URL.
        url: String,
        /// What failed.
        reason: String,
    },
}

/// An upstream: a server reached over HTTP with a pooled client, or one
/// served inside the sidecar's process.
#[derive(Debug, Clone)]
pub struct HttpUpstream {
    /// The server's name.
    pub server: String,
    /// The upstream's MCP endpoint.
    pub url: Uri,
    host: Option<HeaderValue>,
    transport: Transport,
}

// One per route, made at start and borrowed by requests, never moved on the
// request path: its size does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
enum Transport {
    Http(Client<HttpConnector, Body>),
    InProcess(Arc<dyn InProcess>),
}

/// A server the sidecar runs itself (the stdio bridge): requests reach it
/// by a call within the process, never over a socket another local process
/// could reach around the policy.
pub trait InProcess: Send + Sync + std::fmt::Debug {
    /// Answers one request.
    fn call(&self, req: Request<Body>) -> Pin<Box<dyn Future<Output = Response<Body>> + Send>>;
}

/// The grant a forwarded request was judged for, as a request extension
/// for in-process upstreams (nothing travels on the wire).
#[derive(Debug, Clone)]
pub struct Caller(pub Arc<str>);

/// Headers that belong to one connection, not to the message (RFC 9110 §7.6.1).
const HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

impl HttpUpstream {
    /// A client for `url` (plain `http://`: the upstream is in the same pod).
    pub fn new(server: &str, url: Uri) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(256)
            .build(connector);
        Self::with_transport(server, url, Transport::Http(client))
    }

    /// An upstream served in this process by `service`, at `url` (its
    /// authority is only a name).
    pub fn in_process(server: &str, url: Uri, service: Arc<dyn InProcess>) -> Self {
        Self::with_transport(server, url, Transport::InProcess(service))
    }

    fn with_transport(server: &str, url: Uri, transport: Transport) -> Self {
        let host = url
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok());
        Self {
            server: server.to_owned(),
            url,
            host,
            transport,
        }
    }

    /// The upstream's endpoint, as configured (path and query).
    pub fn target(&self) -> Uri {
        self.url.clone()
    }

    /// `path_and_query` (absolute: the legacy transport's message endpoint,
    /// a discovery document) on the upstream, or `None` if it is not a valid
    /// request target.
    pub fn at(&self, path_and_query: &str) -> Option<Uri> {
        let mut parts = self.url.clone().into_parts();
        parts.path_and_query = Some(path_and_query.parse().ok()?);
        Uri::from_parts(parts).ok()
    }

    /// Sends a request (method, URI and headers already set by the caller
    /// through [`forwarded_headers`]); the response streams back.
    pub async fn send(&self, req: Request<Body>) -> Result<Response<Body>, UpstreamError> {
        match &self.transport {
            Transport::Http(client) => {
                client
                    .request(req)
                    .await
                    .map(relay)
                    .map_err(|e| UpstreamError::Unreachable {
                        server: self.server.clone(),
                        url: self.url.to_string(),
                        reason: error_chain(&e),
                    })
            }
            Transport::InProcess(service) => Ok(service.call(req).await),
        }
    }

    /// The `Host` the upstream expects.
    pub fn host(&self) -> Option<&HeaderValue> {
        self.host.as_ref()
    }
}

/// `X-Forwarded-Host`: the `Host` the client sent.
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// A request's headers made ready for the upstream, in place: without
/// hop-by-hop headers, `Host` set to `host` (the upstream's authority) with
/// the client's as `X-Forwarded-Host`, and without `strip` (the grant header).
pub fn forwarded_headers(
    mut out: HeaderMap,
    host: Option<&HeaderValue>,
    strip: Option<&HeaderName>,
) -> HeaderMap {
    strip_hop_by_hop(&mut out);
    // Only the sidecar's word on where the request was sent goes upstream.
    out.remove(header::FORWARDED);
    out.remove(&X_FORWARDED_HOST);
    let client_host = out.remove(header::HOST);
    // An http:// upstream always has an authority; without one the client's
    // Host is not forwarded in its place.
    if let Some(h) = host {
        if let Some(c) = client_host {
            out.insert(X_FORWARDED_HOST.clone(), c);
        }
        out.insert(header::HOST, h.clone());
    }
    if let Some(name) = strip {
        out.remove(name);
    }
    out
}

/// A copy of `from` without hop-by-hop headers (also those `Connection` names).
pub fn without_hop_by_hop(from: &HeaderMap) -> HeaderMap {
    let mut out = from.clone();
    strip_hop_by_hop(&mut out);
    out
}

/// Removes hop-by-hop headers in place.
pub fn strip_hop_by_hop(out: &mut HeaderMap) {
    // Most messages carry none: one pass over the names instead of a removal
    // (a hash look-up) per hop-by-hop name.
    if !out.keys().any(|k| HOP_BY_HOP.contains(k)) {
        return;
    }
    let named: Vec<HeaderName> = out
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for name in HOP_BY_HOP.iter().chain(&named) {
        out.remove(name);
    }
}

/// An upstream response as the sidecar's response, streamed.
pub fn relay(resp: Response<Incoming>) -> Response<Body> {
    let (mut parts, body) = resp.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    Response::from_parts(parts, Body::Upstream(body))
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
