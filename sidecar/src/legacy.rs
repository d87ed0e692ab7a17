//! The legacy HTTP+SSE transport (MCP 2024-11-05).
//!
//! The client opens `GET <base>/sse`; the upstream's first event, `endpoint`,
//! names where to POST messages. The sidecar rewrites it to its own
//! `<base>/message?tg=<key>`, so every POST passes through policy; answers
//! travel back on the SSE stream, so the sidecar's own answers (refused calls)
//! are injected into that stream and `tools/list` results in it are filtered.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use http::header;
use http::{Method, Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Incoming;
use tokio::sync::mpsc;

use crate::enforce::{self, rpc_error};
use crate::mcp::answer::{self, code};
use crate::mcp::list_filter::{self, ListIds};
use crate::mcp::sse::{SseParser, write_event};
use crate::session_ids::SessionIds;
use crate::state::{Route, Sidecar};
use crate::upstream::http::{Body, BoxError, HttpUpstream};

/// Messages waiting to be injected into one SSE stream.
const INJECT_QUEUE: usize = 256;
/// The largest SSE event parsed on a legacy stream.
const MAX_EVENT: usize = 16 << 20;

/// The legacy sessions of one route. A session's key is 128 random bits,
/// and only the grant that opened its stream may post to it.
#[derive(Debug, Default)]
pub struct Sessions {
    map: Mutex<HashMap<String, Arc<Session>>>,
    keys: SessionIds,
}

/// One client's SSE stream.
#[derive(Debug)]
struct Session {
    /// The grant that opened the stream: the only one that may post to it.
    grant: Arc<str>,
    /// Where the upstream wants this session's messages (path and query).
    upstream_endpoint: Mutex<Option<String>>,
    inject: mpsc::Sender<Bytes>,
}

impl Sessions {
    /// Sessions open now.
    fn len(&self) -> usize {
        lock(&self.map).len()
    }

    fn get(&self, key: &str) -> Option<Arc<Session>> {
        lock(&self.map).get(key).cloned()
    }

    fn remove(&self, key: &str) {
        lock(&self.map).remove(key);
    }
}

/// `GET <base>/sse`: opens the upstream stream and relays it.
pub async fn stream(
    sc: &Sidecar,
    route: &Arc<Route>,
    up: &HttpUpstream,
    req: Request<Incoming>,
) -> Response<Body> {
    let snapshot = sc.policy.load();
    let (parts, _) = req.into_parts();
    let grant = match caller(sc, &parts.headers, snapshot.as_deref()) {
        Ok(g) => g,
        Err(resp) => return resp,
    };
    let full = || {
        sc.metrics.evicted("legacy_sessions", 1);
        rpc_error(
            StatusCode::SERVICE_UNAVAILABLE,
            None,
            code::UPSTREAM_UNAVAILABLE,
            &format!(
                "server `{}` has {} legacy SSE sessions open, the most this sidecar keeps (--max-legacy-sessions); retry later",
                route.server, sc.max_legacy_sessions
            ),
        )
    };
    if route.legacy.len() >= sc.max_legacy_sessions {
        return full();
    }
    let target = up.target();
    let resp = match enforce::forward(
        sc,
        route,
        up,
        Method::GET,
        target,
        parts.headers,
        snapshot.as_deref(),
        Bytes::new(),
        None,
        Some(&grant),
    )
    .await
    {
        Ok(r) => r,
        Err(resp) => return resp,
    };
    if !resp.status().is_success() {
        return resp;
    }
    let key = route.legacy.keys.next();
    let (tx, rx) = mpsc::channel(INJECT_QUEUE);
    let session = Arc::new(Session {
        grant: Arc::clone(&grant),
        upstream_endpoint: Mutex::new(None),
        inject: tx,
    });
    {
        let mut map = lock(&route.legacy.map);
        if map.len() >= sc.max_legacy_sessions {
            return full();
        }
        map.insert(key.clone(), Arc::clone(&session));
    }

    let (mut parts, body) = resp.into_parts();
    parts.headers.remove(header::CONTENT_LENGTH);
    let state = Relay {
        body,
        parser: SseParser::new(MAX_EVENT),
        inject: rx,
        session,
        key,
        route: Arc::clone(route),
        sse_path: up.url.path().to_owned(),
        grant,
        sc_policy: Arc::clone(&sc.policy),
        list_ids: sc.list_ids.clone(),
        ended: false,
    };
    let stream = futures_util::stream::unfold(state, |mut st| async move {
        let item = st.next().await?;
        Some((item, st))
    });
    Response::from_parts(parts, Body::boxed(StreamBody::new(stream)))
}

struct Relay {
    body: Body,
    parser: SseParser,
    inject: mpsc::Receiver<Bytes>,
    session: Arc<Session>,
    key: String,
    route: Arc<Route>,
    sse_path: String,
    grant: Arc<str>,
    sc_policy: Arc<crate::snapshot::LivePolicy>,
    list_ids: ListIds,
    ended: bool,
}

/// The session ends with its stream, however it ends: the upstream closing
/// it, or the client going away (hyper drops the body).
impl Drop for Relay {
    fn drop(&mut self) {
        self.route.legacy.remove(&self.key);
    }
}

impl Relay {
    async fn next(&mut self) -> Option<Result<Frame<Bytes>, BoxError>> {
        loop {
            match self.parser.next_event() {
                Ok(Some(event)) => return Some(Ok(Frame::data(self.rewrite(event)))),
                Ok(None) => {}
                Err(e) => return Some(Err(Box::new(e))),
            }
            if self.ended {
                return None;
            }
            tokio::select! {
                injected = self.inject.recv() => {
                    if let Some(bytes) = injected {
                        return Some(Ok(Frame::data(answer::sse_event(&bytes))));
                    }
                }
                frame = self.body.frame() => match frame {
                    Some(Ok(f)) => match f.into_data() {
                        Ok(data) => self.parser.push(data),
                        Err(other) => return Some(Ok(other)),
                    },
                    Some(Err(e)) => return Some(Err(e)),
                    None => {
                        self.ended = true;
                        // A last event without its blank line is still read
                        // by lenient clients: parse it like the others.
                        self.parser.push(Bytes::from_static(b"\n\n"));
                    }
                },
            }
        }
    }

    /// Rewrites the `endpoint` event and filters `tools/list` results.
    fn rewrite(&mut self, event: crate::mcp::sse::Event) -> Bytes {
        if event.event.as_deref() == Some("endpoint") {
            let upstream = resolve(&self.sse_path, event.data.trim());
            *lock(&self.session.upstream_endpoint) = Some(upstream);
            let ours = format!("{}/message?tg={}", self.route.path, self.key);
            return write_event(event.id.as_deref(), Some("endpoint"), &ours);
        }
        // Parsed whatever its spelling (`"\u0074ools"` is `"tools"`).
        if !ListIds::may_hold_list(event.data.as_bytes()) {
            return event.raw;
        }
        let filtered = list_filter::filter(
            event.data.as_bytes(),
            &self.list_ids,
            enforce::listing(self.sc_policy.load(), &self.route, Arc::clone(&self.grant)),
        );
        self.route.learn(filtered.seen);
        match filtered.bytes.and_then(|f| String::from_utf8(f).ok()) {
            Some(data) => write_event(event.id.as_deref(), event.event.as_deref(), &data),
            None => event.raw,
        }
    }
}

/// The grant of the caller, or the 401 to answer.
fn caller(
    sc: &Sidecar,
    headers: &http::HeaderMap,
    snapshot: Option<&crate::snapshot::Snapshot>,
) -> Result<Arc<str>, Response<Body>> {
    match snapshot {
        Some(s) => crate::identity::identify(headers, &sc.grant_header, &s.bundle, &sc.node_id)
            .map_err(|e| {
                rpc_error(
                    StatusCode::UNAUTHORIZED,
                    None,
                    code::UNAUTHENTICATED,
                    &e.to_string(),
                )
            }),
        None => Ok(Arc::clone(&sc.node_id)),
    }
}

/// A lock whose holder cannot leave its data half-changed (each critical
/// section is one insert, remove or clone), so poisoning is ignored.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The upstream's message endpoint as a path and query on the upstream.
fn resolve(sse_path: &str, endpoint: &str) -> String {
    if let Some(rest) = endpoint
        .strip_prefix("http://")
        .or_else(|| endpoint.strip_prefix("https://"))
    {
        return rest
            .find('/')
            .map_or_else(|| "/".to_owned(), |i| rest[i..].to_owned());
    }
    if endpoint.starts_with('/') {
        return endpoint.to_owned();
    }
    let dir = sse_path.rfind('/').map_or("", |i| &sse_path[..i]);
    format!("{dir}/{endpoint}")
}

/// `POST <base>/message?tg=<key>`: decided, then forwarded to the upstream's
/// endpoint for that session; refusals are answered on the session's stream.
pub async fn message(
    sc: &Sidecar,
    route: &Arc<Route>,
    up: &HttpUpstream,
    req: Request<Incoming>,
) -> Response<Body> {
    let key = req
        .uri()
        .query()
        .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("tg=")))
        .unwrap_or_default()
        .to_owned();
    let unknown = || {
        rpc_error(
            StatusCode::NOT_FOUND,
            None,
            code::INVALID_REQUEST,
            "unknown or closed SSE session; open the SSE stream again and POST to the endpoint it names",
        )
    };
    let Some(session) = route.legacy.get(&key) else {
        return unknown();
    };
    // Posting to another caller's session is answered as if it did not
    // exist: nothing is read, judged or forwarded.
    match caller(sc, req.headers(), sc.policy.load().as_deref()) {
        Ok(grant) if grant == session.grant => {}
        Ok(_) => return unknown(),
        Err(resp) => return resp,
    }
    let Some(endpoint) = lock(&session.upstream_endpoint).clone() else {
        return rpc_error(
            StatusCode::CONFLICT,
            None,
            code::INVALID_REQUEST,
            "the upstream has not named its message endpoint yet; retry shortly",
        );
    };
    let (parts, body) = req.into_parts();
    let judged = match enforce::inspect(sc, route, &parts.headers, body).await {
        Ok(j) => j,
        Err(resp) => return resp,
    };
    for a in enforce::replies(&judged.answers) {
        if session.inject.try_send(Bytes::copy_from_slice(a)).is_err() {
            return rpc_error(
                StatusCode::SERVICE_UNAVAILABLE,
                None,
                code::UPSTREAM_UNAVAILABLE,
                "the SSE stream for this session is closed or not reading; reconnect",
            );
        }
    }
    let Some(forward) = judged.forward else {
        return enforce::accepted();
    };
    let snapshot = judged.snapshot;
    let Some(target) = up.at(&endpoint) else {
        return rpc_error(
            StatusCode::BAD_GATEWAY,
            None,
            code::UPSTREAM_UNAVAILABLE,
            &format!(
                "upstream server `{}` named a message endpoint that is not a valid path ({endpoint:?}); check the server",
                route.server
            ),
        );
    };
    match enforce::forward(
        sc,
        route,
        up,
        Method::POST,
        target,
        parts.headers,
        snapshot.as_deref(),
        forward,
        None,
        Some(&judged.grant),
    )
    .await
    {
        Ok(r) | Err(r) => r,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_resolve_against_the_sse_path() {
        assert_eq!(
            resolve("/sse", "/messages?sessionId=a"),
            "/messages?sessionId=a"
        );
        assert_eq!(resolve("/x/sse", "messages?s=1"), "/x/messages?s=1");
        assert_eq!(
            resolve("/sse", "http://127.0.0.1:3001/messages?s=1"),
            "/messages?s=1"
        );
    }
}
