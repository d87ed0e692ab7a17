//! The legacy HTTP+SSE transport (MCP 2024-11-05).
//!
//! The client opens `GET <base>/sse`; the upstream's first event, `endpoint`,
//! names where to POST messages. The sidecar rewrites it to its own
//! `<base>/message?tg=<key>` ([`relay`]), so every POST passes through
//! policy; answers travel back on the SSE stream, so the sidecar's own
//! answers (refused calls) are injected into that stream and `tools/list`
//! results in it are filtered. The open sessions are this transport's own
//! table ([`sessions`]).

pub mod relay;
pub mod sessions;

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Method, Request, Response, header};
use http_body_util::StreamBody;
use hyper::body::Incoming;
use tokio::sync::mpsc;

use crate::approvals::hold::{self, HeldCall, Resolution};
use crate::forward::{Outgoing, forward};
use crate::judge;
use crate::reply::{self, RequestError};
use crate::state::{Route, Sidecar};
use crate::upstream::http::{Body, HttpUpstream};
use relay::Relay;
use sessions::{SseSession, SseSessions, lock};

/// Messages waiting to be injected into one SSE stream.
const INJECT_QUEUE: usize = 256;

/// `GET <base>/sse`: opens the upstream stream and relays it.
pub async fn stream(
    sc: &Sidecar,
    sessions: &Arc<SseSessions>,
    route: &Arc<Route>,
    up: &HttpUpstream,
    req: Request<Incoming>,
) -> Result<Response<Body>, RequestError> {
    let snapshot = sc.policy.load();
    let (parts, _) = req.into_parts();
    let grant = sc.caller(&snapshot, &parts.headers, || None)?;
    let full = || {
        sc.metrics.evicted("legacy_sessions", 1);
        RequestError::LegacySessionsFull {
            server: route.server.to_string(),
            max: sc.max_legacy_sessions,
        }
    };
    let route_path: Arc<str> = route.path.as_str().into();
    if sessions.open_on(&route_path) >= sc.max_legacy_sessions {
        return Err(full());
    }
    let out = Outgoing {
        method: Method::GET,
        target: up.target(),
        headers: parts.headers,
        body: Bytes::new(),
        id: None,
        caller: Some(&grant),
    };
    let resp = forward(sc, route, up, &snapshot, out).await?;
    if !resp.status().is_success() {
        return Ok(resp);
    }
    let (tx, rx) = mpsc::channel(INJECT_QUEUE);
    let session = Arc::new(SseSession {
        route: route_path,
        grant,
        upstream_endpoint: Mutex::new(None),
        inject: tx,
    });
    let Some(key) = sessions.insert(Arc::clone(&session), sc.max_legacy_sessions) else {
        return Err(full());
    };

    let (mut parts, body) = resp.into_parts();
    parts.headers.remove(header::CONTENT_LENGTH);
    let relay = Relay::new(relay::Parts {
        body,
        inject: rx,
        session,
        sessions: Arc::clone(sessions),
        key,
        route: Arc::clone(route),
        sse_path: up.url.path().to_owned(),
        policy: Arc::clone(&sc.policy),
        list_ids: sc.list_ids.clone(),
    });
    let stream = futures_util::stream::unfold(relay, |mut st| async move {
        let item = st.next().await?;
        Some((item, st))
    });
    Ok(Response::from_parts(
        parts,
        Body::boxed(StreamBody::new(stream)),
    ))
}

/// `POST <base>/message?tg=<key>`: judged, then forwarded to the upstream's
/// endpoint for that session; refusals are answered on the session's stream.
pub async fn message(
    sc: &Sidecar,
    sessions: &SseSessions,
    route: &Arc<Route>,
    up: &HttpUpstream,
    req: Request<Incoming>,
) -> Result<Response<Body>, RequestError> {
    let key = req
        .uri()
        .query()
        .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("tg=")))
        .unwrap_or_default();
    let session = sessions
        .get(&route.path, key)
        .ok_or(RequestError::LegacyUnknownSession)?;
    // Posting to another caller's session is answered as if it did not
    // exist: nothing is read, judged or forwarded.
    if sc.caller(&sc.policy.load(), req.headers(), || None)? != session.grant {
        return Err(RequestError::LegacyUnknownSession);
    }
    let endpoint = lock(&session.upstream_endpoint)
        .clone()
        .ok_or(RequestError::LegacyEndpointPending)?;
    let (parts, body) = req.into_parts();
    let judged = judge::inspect(sc, route, &parts.headers, body).await?;
    // A single held call: the POST stays open while it is held, and the
    // answer (or the upstream's, once approved) comes on the stream.
    let held = match judged.verdicts.held().filter(|_| !judged.batch) {
        Some(refused) => {
            let call = HeldCall {
                server: &route.server,
                snapshot: &judged.snapshot,
                grant: &judged.grant,
                session: None,
                headers: &parts.headers,
                refused,
                message: &judged.body,
            };
            match Box::pin(hold::resolve(&sc.approvals, call)).await {
                Resolution::Forward(b) => Some(b),
                Resolution::Answer(a) => {
                    if session.inject.try_send(a).is_err() {
                        return Err(RequestError::LegacyStreamClosed);
                    }
                    return Ok(reply::accepted());
                }
            }
        }
        None => None,
    };
    if held.is_none() {
        for a in reply::refusals(&judged.verdicts) {
            if session.inject.try_send(a).is_err() {
                return Err(RequestError::LegacyStreamClosed);
            }
        }
    }
    let Some(forward_body) = held.or(judged.forward) else {
        return Ok(reply::accepted());
    };
    let target = up
        .at(&endpoint)
        .ok_or_else(|| RequestError::LegacyBadEndpoint {
            server: route.server.to_string(),
            endpoint: endpoint.clone(),
        })?;
    let out = Outgoing {
        method: Method::POST,
        target,
        headers: parts.headers,
        body: forward_body,
        id: None,
        caller: Some(&judged.grant),
    };
    forward(sc, route, up, &judged.snapshot, out).await
}
