//! The MCP-facing HTTP server and its routes.
//!
//! | path | what |
//! |---|---|
//! | `/mcp` | the single unnamed upstream (server `default`) |
//! | `/mcp/<name>` | the upstream named `<name>` |
//! | `<base>/sse`, `<base>/message` | the legacy HTTP+SSE transport of a `sse:` upstream |
//! | `/.well-known/oauth-*` | passed through to the upstream (the one named by a path suffix `/mcp/<name>`, or the only one) |

use std::net::SocketAddr;
use std::sync::Arc;

use http::{Method, Request, Response};
use hyper::body::Incoming;
use tokio::net::TcpListener;

use crate::conn::ConnLimits;
use crate::forward::pass_through;
use crate::legacy_sse::{self, sessions::SseSessions};
use crate::reply::RequestError;
use crate::state::{Route, Sidecar, Upstream};
use crate::streamable;
use crate::upstream::http::{Body, HttpUpstream};

/// What the MCP listener serves with: the shared state and the legacy
/// transport's sessions.
#[derive(Debug)]
pub struct Server {
    /// The sidecar's shared state.
    pub sc: Arc<Sidecar>,
    /// Open legacy SSE sessions, for every route.
    pub legacy: Arc<SseSessions>,
}

impl Server {
    /// A server over `sc`, with no session open.
    pub fn new(sc: Arc<Sidecar>) -> Self {
        Self {
            sc,
            legacy: Arc::default(),
        }
    }
}

/// Serves MCP on `listener`, within `limits`, until the task is dropped.
pub async fn serve(listener: TcpListener, sc: Arc<Sidecar>, limits: ConnLimits) {
    let metrics = Arc::clone(&sc.metrics);
    let server = Arc::new(Server::new(sc));
    crate::conn::serve(listener, limits, metrics, move |req, peer| {
        let server = Arc::clone(&server);
        async move { handle(&server, req, peer).await }
    })
    .await;
}

/// Routes one request.
pub async fn handle(server: &Server, req: Request<Incoming>, _peer: SocketAddr) -> Response<Body> {
    let sc = &*server.sc;
    let started = std::time::Instant::now();
    let path = req.uri().path();
    if path.starts_with("/.well-known/oauth-") {
        return Box::pin(well_known(sc, req))
            .await
            .unwrap_or_else(RequestError::into_response);
    }
    let Some((route, rest)) = find_route(sc, path) else {
        return RequestError::NoServer {
            path: path.to_owned(),
            served: served(sc),
        }
        .into_response();
    };
    // Only the Streamable HTTP endpoint runs unboxed: a request's future is
    // moved whole at each hand-off, so the rarer paths (legacy SSE, discovery
    // documents) live behind a pointer and keep it small.
    let endpoint = match (&route.upstream, rest, req.method()) {
        (Upstream::Http(up), "", _) => Endpoint::Streamable(up),
        (Upstream::LegacySse(up), "/sse", &Method::GET) => Endpoint::LegacyStream(up),
        (Upstream::LegacySse(up), "/message", &Method::POST) => Endpoint::LegacyMessage(up),
        _ => Endpoint::None,
    };
    let resp = match endpoint {
        Endpoint::Streamable(up) => {
            let (parts, body) = req.into_parts();
            streamable::handle(sc, route, up, parts, body).await
        }
        Endpoint::LegacyStream(up) => {
            Box::pin(legacy_sse::stream(sc, &server.legacy, route, up, req))
                .await
                .unwrap_or_else(RequestError::into_response)
        }
        Endpoint::LegacyMessage(up) => {
            Box::pin(legacy_sse::message(sc, &server.legacy, route, up, req))
                .await
                .unwrap_or_else(RequestError::into_response)
        }
        Endpoint::None => RequestError::NoEndpoint {
            path: req.uri().path().to_owned(),
            served: served(sc),
        }
        .into_response(),
    };
    sc.metrics.request(&route.metrics, started.elapsed());
    resp
}

/// Which endpoint of a route a request is for, settled while its path is
/// still borrowed.
#[derive(Debug, Clone, Copy)]
enum Endpoint<'r> {
    Streamable(&'r HttpUpstream),
    LegacyStream(&'r HttpUpstream),
    LegacyMessage(&'r HttpUpstream),
    None,
}

/// `/mcp` → the unnamed route; `/mcp/<name>[/rest]` → the named one.
fn find_route<'s, 'p>(sc: &'s Sidecar, path: &'p str) -> Option<(&'s Arc<Route>, &'p str)> {
    let after = path.strip_prefix("/mcp")?;
    if let Some(route) = sc.routes.get("") {
        return matches!(after, "" | "/" | "/sse" | "/message")
            .then(|| (route, after.trim_end_matches('/')));
    }
    let named = after.strip_prefix('/')?;
    let (name, rest) = match named.find('/') {
        Some(i) => (&named[..i], &named[i..]),
        None => (named, ""),
    };
    let rest = if rest == "/" { "" } else { rest };
    sc.routes.get(name).map(|r| (r, rest))
}

fn served(sc: &Sidecar) -> String {
    let mut names: Vec<String> = sc
        .routes
        .keys()
        .map(|n| {
            if n.is_empty() {
                "/mcp".to_owned()
            } else {
                format!("/mcp/{n}")
            }
        })
        .collect();
    names.sort();
    names.join(", ")
}

/// OAuth discovery documents belong to the upstream: pass them through.
async fn well_known(sc: &Sidecar, req: Request<Incoming>) -> Result<Response<Body>, RequestError> {
    let path = req.uri().path().to_owned();
    if !matches!(*req.method(), Method::GET | Method::HEAD) {
        return Err(RequestError::DiscoveryMethod);
    }
    if has_dot_segment(&path) {
        return Err(RequestError::DotSegment);
    }
    let by_suffix = path
        .find("/mcp")
        .and_then(|i| find_route(sc, &path[i..]).map(|(r, _)| (r, i)));
    let (route, upstream_path) = match (by_suffix, sc.routes.len()) {
        (Some((r, i)), _) => (r, format!("{}{}", &path[..i], upstream_path(r))),
        (None, 1) => match sc.routes.values().next() {
            Some(r) => (r, path.clone()),
            None => return Err(RequestError::NoUpstream(path)),
        },
        _ => return Err(RequestError::NoUpstream(path)),
    };
    let (Upstream::Http(up) | Upstream::LegacySse(up)) = &route.upstream;
    let target = up
        .at(&upstream_path)
        .ok_or_else(|| RequestError::NotForwarded(path.clone()))?;
    let route: &Route = route;
    let (parts, _) = req.into_parts();
    Ok(pass_through(sc, route, up, target, parts, &sc.policy.load()).await)
}

/// Whether a path has a `.` or `..` segment, plain or percent-encoded.
fn has_dot_segment(path: &str) -> bool {
    path.split('/').any(|seg| {
        let decoded = seg.to_ascii_lowercase().replace("%2e", ".");
        decoded == "." || decoded == ".."
    })
}

fn upstream_path(route: &Route) -> String {
    let (Upstream::Http(up) | Upstream::LegacySse(up)) = &route.upstream;
    let p = up.url.path();
    if p == "/" {
        String::new()
    } else {
        p.to_owned()
    }
}
