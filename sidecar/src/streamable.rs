//! The Streamable HTTP transport: POST judged and forwarded (or answered),
//! GET and DELETE passed through, `tools/list` results filtered on the way
//! back and the sidecar's answers merged into the upstream's reply.

use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Response, StatusCode, Uri, header, request};
use http_body_util::BodyExt;
use hyper::body::Incoming;

use crate::approvals::hold::{self, HeldCall, Resolution};
use crate::approvals::sessions::declares_url_elicitation;
use crate::forward::{Outgoing, forward, pass_through};
use crate::judge::{self, Judged};
use crate::mcp::list_filter;
use crate::reply::{self, RequestError};
use crate::snapshot::{self, Snapshot};
use crate::sse_filter::{self, is_event_stream};
use crate::state::{Route, Sidecar};
use crate::upstream::http::{Body, HttpUpstream, full};

/// One request to a Streamable HTTP endpoint.
pub async fn handle(
    sc: &Sidecar,
    route: &Arc<Route>,
    up: &HttpUpstream,
    parts: request::Parts,
    body: Incoming,
) -> Response<Body> {
    let target = up.target();
    match parts.method {
        Method::POST => post(sc, route, up, target, parts, body).await,
        Method::GET | Method::DELETE => {
            drop(body);
            Box::pin(get_or_delete(sc, route, up, target, parts))
                .await
                .unwrap_or_else(RequestError::into_response)
        }
        method => RequestError::StreamableMethod(method).into_response(),
    }
}

/// A POST: judged; what is allowed is forwarded, the rest answered here.
async fn post(
    sc: &Sidecar,
    route: &Arc<Route>,
    up: &HttpUpstream,
    target: Uri,
    mut parts: request::Parts,
    body: Incoming,
) -> Response<Body> {
    let judged = match judge::inspect(sc, route, &parts.headers, body).await {
        Ok(j) => j,
        Err(e) => return e.into_response(),
    };
    let Judged {
        snapshot,
        grant,
        verdicts,
        forward: forward_body,
        lists,
        batch,
        id,
        body,
        initialize,
    } = judged;
    let held_forwarded = forward_body.is_none() && !batch && verdicts.held().is_some();
    let forward_body = match forward_body {
        Some(b) => b,
        None => match (batch, verdicts.held()) {
            (false, Some(held)) => {
                let call = HeldCall {
                    server: &route.server,
                    snapshot: &snapshot,
                    grant: &grant,
                    session: judge::session_id(&parts.headers).ok().flatten(),
                    headers: &parts.headers,
                    refused: held,
                    message: &body,
                };
                match Box::pin(hold::resolve(&sc.approvals, call)).await {
                    Resolution::Forward(b) => b,
                    Resolution::Answer(json) => {
                        return reply::answer_response(&json, reply::prefers_sse(&parts.headers));
                    }
                }
            }
            // No message goes upstream.
            _ => return reply::answered(&verdicts, batch, &parts.headers),
        },
    };
    let url_elicitation = initialize && declares_url_elicitation(&body);
    let out = Outgoing {
        method: Method::POST,
        target,
        headers: std::mem::take(&mut parts.headers),
        body: forward_body,
        id,
        caller: Some(&grant),
    };
    let resp = match forward(sc, route, up, &snapshot, out).await {
        Ok(r) => r,
        Err(e) => return e.into_response(),
    };
    if url_elicitation
        && let Some(Ok(session)) = resp.headers().get(judge::SESSION).map(|v| v.to_str())
    {
        let evicted = sc.approvals.url_sessions.insert(session);
        sc.metrics.evicted("url_elicitation_sessions", evicted);
    }
    // An approved held call was the request's one message: its reply is the
    // upstream's.
    if held_forwarded || (lists == 0 && verdicts.all_forwarded()) {
        return resp;
    }
    // Boxed: only lists and batches with refusals come here, and the common
    // path's future stays small.
    let answers = reply::refusals(&verdicts);
    let listing = snapshot::listing(snapshot, Arc::clone(&route.server), grant);
    Box::pin(finish(sc, route, resp, lists, answers, listing))
        .await
        .unwrap_or_else(RequestError::into_response)
}

/// Filters `tools/list` results and merges the sidecar's own answers into an
/// upstream response.
async fn finish(
    sc: &Sidecar,
    route: &Arc<Route>,
    resp: Response<Body>,
    lists: usize,
    answers: Vec<Bytes>,
    listing: impl Fn(&str, Option<&tollgate_policy::Annotations>) -> tollgate_policy::Listing
    + Send
    + Sync
    + 'static,
) -> Result<Response<Body>, RequestError> {
    if is_event_stream(resp.headers()) {
        return Ok(sse_filter::filter_stream(
            &sc.list_ids,
            route,
            resp,
            Some(lists),
            answers,
            listing,
        ));
    }
    let (mut parts, body) = resp.into_parts();
    if !parts.status.is_success() {
        // The upstream refused the forwarded part (e.g. a server without batch
        // support): its answer stands; refused calls were not forwarded.
        return Ok(Response::from_parts(parts, body));
    }
    if parts.status == StatusCode::ACCEPTED {
        // Only notifications and responses were forwarded: reply with the answers.
        if answers.is_empty() {
            return Ok(Response::from_parts(parts, body));
        }
        return Ok(reply::answer_response(
            &reply::join_array(answers.iter().map(|b| &b[..])),
            false,
        ));
    }
    let collected = collect_limited(body, sc.max_response).await.map_err(|e| {
        sc.metrics.upstream_error(&route.server);
        RequestError::Upstream {
            id: None,
            message: format!(
                "reading the response of upstream server `{}` failed: {e}",
                route.server
            ),
        }
    })?;
    let mut out = collected;
    if lists > 0 {
        let filtered = list_filter::filter(&out, &sc.list_ids, &listing);
        route.learn(filtered.seen);
        if let Some(f) = filtered.bytes {
            out = Bytes::from(f);
        }
    }
    if !answers.is_empty() {
        out = reply::merge_json(&out, &answers);
    }
    parts.headers.remove(header::CONTENT_LENGTH);
    Ok(Response::from_parts(parts, full(out)))
}

/// Reads a whole response body of at most `max` bytes.
async fn collect_limited(mut body: Body, max: usize) -> Result<Bytes, String> {
    let mut out = bytes::BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| e.to_string())?;
        if let Ok(data) = frame.into_data() {
            if out.len() + data.len() > max {
                return Err(format!("the response is larger than {max} bytes"));
            }
            out.extend_from_slice(&data);
        }
    }
    Ok(out.freeze())
}

/// GET (the server's stream) and DELETE (end the session): no message to
/// judge, but the caller must be identified and the session id well formed.
async fn get_or_delete(
    sc: &Sidecar,
    route: &Arc<Route>,
    up: &HttpUpstream,
    target: Uri,
    parts: request::Parts,
) -> Result<Response<Body>, RequestError> {
    let snapshot: Arc<Snapshot> = sc.policy.load();
    let grant = sc.caller(&snapshot, &parts.headers, || None)?;
    judge::session_id(&parts.headers)?;
    let get = parts.method == Method::GET;
    let resp = pass_through(sc, route, up, target, parts, &snapshot).await;
    // A GET stream may replay `tools/list` replies (`Last-Event-ID`):
    // they are filtered like the POST stream's first pass.
    if get && resp.status().is_success() && is_event_stream(resp.headers()) {
        let listing = snapshot::listing(snapshot, Arc::clone(&route.server), grant);
        return Ok(sse_filter::filter_stream(
            &sc.list_ids,
            route,
            resp,
            None,
            Vec::new(),
            listing,
        ));
    }
    Ok(resp)
}
