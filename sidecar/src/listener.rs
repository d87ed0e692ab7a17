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

use http::{Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use tokio::net::TcpListener;

use crate::conn::ConnLimits;
use crate::enforce::{self, rpc_error};
use crate::identity::identify;
use crate::legacy;
use crate::mcp::answer::code;
use crate::sse_filter::{self, is_event_stream};
use crate::state::{Route, Sidecar, Upstream};
use crate::upstream::http::{Body, HttpUpstream};

/// Serves MCP on `listener`, within `limits`, until the task is dropped.
pub async fn serve(listener: TcpListener, sc: Arc<Sidecar>, limits: ConnLimits) {
    let metrics = Arc::clone(&sc.metrics);
    crate::conn::serve(listener, limits, metrics, move |req, peer| {
        let sc = Arc::clone(&sc);
        async move { handle(&sc, req, peer).await }
    })
    .await;
}

/// Routes one request.
pub async fn handle(sc: &Sidecar, req: Request<Incoming>, _peer: SocketAddr) -> Response<Body> {
    let started = std::time::Instant::now();
    let path = req.uri().path();
    if path.starts_with("/.well-known/oauth-") {
        return Box::pin(well_known(sc, req)).await;
    }
    let Some((route, rest)) = find_route(sc, path) else {
        return rpc_error(
            StatusCode::NOT_FOUND,
            None,
            code::INVALID_REQUEST,
            &format!(
                "no MCP server is served at {path}; this sidecar serves {}",
                served(sc)
            ),
        );
    };
    // Only the Streamable HTTP POST runs unboxed: a request's future is moved
    // whole at each hand-off, so the rarer paths (legacy SSE, GET streams,
    // discovery documents) live behind a pointer and keep it small.
    let endpoint = match (&route.upstream, rest, req.method()) {
        (Upstream::Http(_), "", _) => Endpoint::Streamable,
        (Upstream::LegacySse(up), "/sse", &Method::GET) => Endpoint::LegacyStream(up),
        (Upstream::LegacySse(up), "/message", &Method::POST) => Endpoint::LegacyMessage(up),
        _ => Endpoint::None,
    };
    let resp = match endpoint {
        Endpoint::Streamable => streamable(sc, route, req).await,
        Endpoint::LegacyStream(up) => Box::pin(legacy::stream(sc, route, up, req)).await,
        Endpoint::LegacyMessage(up) => Box::pin(legacy::message(sc, route, up, req)).await,
        Endpoint::None => rpc_error(
            StatusCode::NOT_FOUND,
            None,
            code::INVALID_REQUEST,
            &format!(
                "no MCP endpoint at {}; this sidecar serves {}",
                req.uri().path(),
                served(sc)
            ),
        ),
    };
    sc.metrics.request(&route.metrics, started.elapsed());
    resp
}

/// Which endpoint of a route a request is for, settled while its path is
/// still borrowed.
#[derive(Debug, Clone, Copy)]
enum Endpoint<'r> {
    Streamable,
    LegacyStream(&'r HttpUpstream),
    LegacyMessage(&'r HttpUpstream),
    None,
}

/// The Streamable HTTP endpoint: POST, GET, DELETE.
async fn streamable(sc: &Sidecar, route: &Arc<Route>, req: Request<Incoming>) -> Response<Body> {
    let Upstream::Http(up) = &route.upstream else {
        return rpc_error(
            StatusCode::NOT_FOUND,
            None,
            code::INVALID_REQUEST,
            "not a Streamable HTTP server",
        );
    };
    let target = up.target();
    let (parts, body) = req.into_parts();
    match parts.method {
        Method::POST => enforce::post(sc, route, up, target, parts, body).await,
        Method::GET | Method::DELETE => {
            let snapshot = sc.policy.load();
            let grant = match &snapshot {
                Some(s) => match identify(&parts.headers, &sc.grant_header, &s.bundle, &sc.node_id)
                {
                    Ok(g) => g,
                    Err(e) => {
                        return rpc_error(
                            StatusCode::UNAUTHORIZED,
                            None,
                            code::UNAUTHENTICATED,
                            &e.to_string(),
                        );
                    }
                },
                None => Arc::clone(&sc.node_id),
            };
            if let Err(resp) = enforce::session_id(&parts.headers) {
                return resp;
            }
            drop(body);
            let get = parts.method == Method::GET;
            let resp = Box::pin(enforce::pass_through(
                sc,
                route,
                up,
                target,
                parts,
                snapshot.clone(),
            ))
            .await;
            // A GET stream may replay `tools/list` replies (`Last-Event-ID`):
            // they are filtered like the POST stream's first pass.
            if get && resp.status().is_success() && is_event_stream(resp.headers()) {
                let listing = enforce::listing(snapshot, route, grant);
                return sse_filter::filter_stream(
                    &sc.list_ids,
                    route,
                    resp,
                    None,
                    Vec::new(),
                    listing,
                );
            }
            resp
        }
        _ => {
            let mut resp = rpc_error(
                StatusCode::METHOD_NOT_ALLOWED,
                None,
                code::INVALID_REQUEST,
                &format!(
                    "{} is not part of MCP's Streamable HTTP transport; use POST, GET or DELETE",
                    parts.method
                ),
            );
            resp.headers_mut().insert(
                header::ALLOW,
                http::HeaderValue::from_static("GET, POST, DELETE"),
            );
            resp
        }
    }
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
async fn well_known(sc: &Sidecar, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path().to_owned();
    if !matches!(*req.method(), Method::GET | Method::HEAD) {
        let mut resp = rpc_error(
            StatusCode::METHOD_NOT_ALLOWED,
            None,
            code::INVALID_REQUEST,
            "discovery documents are read with GET; MCP messages go to the MCP endpoint",
        );
        resp.headers_mut()
            .insert(header::ALLOW, http::HeaderValue::from_static("GET, HEAD"));
        return resp;
    }
    if has_dot_segment(&path) {
        return rpc_error(
            StatusCode::BAD_REQUEST,
            None,
            code::INVALID_REQUEST,
            "`.` and `..` path segments are not forwarded",
        );
    }
    let by_suffix = path
        .find("/mcp")
        .and_then(|i| find_route(sc, &path[i..]).map(|(r, _)| (r, i)));
    let (route, upstream_path) = match (by_suffix, sc.routes.len()) {
        (Some((r, i)), _) => (r, format!("{}{}", &path[..i], upstream_path(r))),
        (None, 1) => match sc.routes.values().next() {
            Some(r) => (r, path.clone()),
            None => return not_found(&path),
        },
        _ => return not_found(&path),
    };
    let (Upstream::Http(up) | Upstream::LegacySse(up)) = &route.upstream;
    let Some(target) = up.at(&upstream_path) else {
        return rpc_error(
            StatusCode::BAD_REQUEST,
            None,
            code::INVALID_REQUEST,
            &format!("{path} is not a path this sidecar forwards"),
        );
    };
    let route: &Route = route;
    let (parts, _) = req.into_parts();
    enforce::pass_through(sc, route, up, target, parts, sc.policy.load()).await
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

fn not_found(path: &str) -> Response<Body> {
    rpc_error(
        StatusCode::NOT_FOUND,
        None,
        code::INVALID_REQUEST,
        &format!("no upstream serves {path}"),
    )
}
