//! One POSTed MCP body: peek → identify → decide every `tools/call` →
//! forward what is allowed, answer the rest → filter `tools/list` results.
//!
//! A refused call is never forwarded, whatever the body's shape: a single
//! refused call is answered here; in a batch, only the allowed messages are
//! forwarded and the answers are merged into the upstream's reply.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, request};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use tollgate_policy::{Arguments, Call, Decision, Outcome};

use crate::decision_log::{DecisionRecord, now_rfc3339};
use crate::identity::identify;
use crate::mcp::answer::{self, code};
use crate::mcp::encoding;
use crate::mcp::list_filter::{self, ListIds};
use crate::mcp::peek::{Kind, Message, Peeked, peek};
use crate::snapshot::Snapshot;
use crate::state::{Route, Sidecar};
use crate::upstream::http::{Body, Caller, HttpUpstream, forwarded_headers, full};

/// The `Mcp-Session-Id` header.
pub const SESSION: HeaderName = HeaderName::from_static("mcp-session-id");
/// The `Mcp-Method` header (2026-07-28): must name the body's method.
static MCP_METHOD: HeaderName = HeaderName::from_static("mcp-method");
/// The `Mcp-Name` header (2026-07-28): must name the body's tool.
static MCP_NAME: HeaderName = HeaderName::from_static("mcp-name");

/// Handles a POST to an MCP endpoint (Streamable HTTP, or the legacy
/// transport's message endpoint when `target` names it).
pub async fn post(
    sc: &Sidecar,
    route: &Arc<Route>,
    up: &HttpUpstream,
    target: Uri,
    mut parts: request::Parts,
    body: Incoming,
) -> Response<Body> {
    let judged = match inspect(sc, route, &parts.headers, body).await {
        Ok(j) => j,
        Err(resp) => return resp,
    };
    let Some(forward_body) = judged.forward else {
        // Every message was a refused call: nothing goes upstream.
        let sse = prefers_sse(&parts.headers);
        return match (judged.batch, replies(&judged.answers).next()) {
            // Refused notifications get no reply.
            (_, None) => accepted(),
            (false, Some(one)) => answer_response(one, sse),
            (true, Some(_)) => answer_response(&join_array(replies(&judged.answers)), sse),
        };
    };
    let Judged {
        snapshot,
        grant,
        answers,
        lists,
        id: judged_id,
        ..
    } = judged;

    let headers = std::mem::take(&mut parts.headers);
    let resp = match forward(
        sc,
        route,
        up,
        Method::POST,
        target,
        headers,
        snapshot.as_deref(),
        forward_body,
        judged_id.as_deref(),
        Some(&grant),
    )
    .await
    {
        Ok(r) => r,
        Err(resp) => return resp,
    };
    if lists == 0 && answers.is_empty() {
        return resp;
    }
    // Boxed: only lists and batches with refusals come here, and the common
    // path's future stays small.
    Box::pin(finish(
        sc,
        route,
        resp,
        lists,
        answers,
        listing(snapshot, route, grant),
    ))
    .await
}

/// `grant`'s view of `route`'s tools under `snapshot` (nothing without a policy).
pub fn listing(
    snapshot: Option<Arc<Snapshot>>,
    route: &Route,
    grant: Arc<str>,
) -> impl Fn(&str, Option<&tollgate_policy::Annotations>) -> tollgate_policy::Listing
+ Send
+ Sync
+ 'static {
    let server = Arc::clone(&route.server);
    move |name, annotations| match &snapshot {
        Some(s) => s.bundle.listing(&server, &grant, name, annotations),
        None => tollgate_policy::Listing::Denied,
    }
}

/// A POSTed body read, peeked and judged: what goes upstream and what the
/// sidecar answers itself.
#[derive(Debug)]
pub struct Judged {
    /// The policy it was judged by.
    pub snapshot: Option<Arc<Snapshot>>,
    /// The caller's grant.
    pub grant: Arc<str>,
    /// Answers to the refused calls, by message index.
    pub answers: Vec<(usize, Bytes)>,
    /// What to forward: the body, or a batch of the messages not refused;
    /// `None` when every message was a refused call.
    pub forward: Option<Bytes>,
    /// `tools/list` requests forwarded, each under a [`ListIds`] token in
    /// place of its id (their replies are filtered and get the id back).
    pub lists: usize,
    /// Whether the body was a batch.
    pub batch: bool,
    /// A single message's raw id (a slice of the body), for error replies.
    pub id: Option<Bytes>,
}

/// Reads a POSTed body and judges it, or returns the error reply: 415 for a
/// body not declared as uncompressed UTF-8 (unread), 408 for a body slower
/// than `--body-timeout-ms`, 413 for a body over `--max-body`, 400 for what the peek cannot read or headers that disagree
/// with it, 401 for an unidentified caller where grants are set.
pub async fn inspect(
    sc: &Sidecar,
    route: &Route,
    headers: &HeaderMap,
    body: Incoming,
) -> Result<Judged, Response<Body>> {
    encoding::check(headers).map_err(|e| {
        rpc_error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            None,
            code::INVALID_REQUEST,
            &e.to_string(),
        )
    })?;
    let bytes = match tokio::time::timeout(sc.body_timeout, read_body(body, headers, sc.max_body))
        .await
    {
        Ok(read) => read?,
        Err(_) => {
            return Err(rpc_error(
                StatusCode::REQUEST_TIMEOUT,
                None,
                code::INVALID_REQUEST,
                &format!(
                    "the request body did not arrive within {} ms; send it at once (this sidecar's --body-timeout-ms)",
                    sc.body_timeout.as_millis()
                ),
            ));
        }
    };
    let peeked = peek(&bytes)
        .map_err(|e| rpc_error(StatusCode::BAD_REQUEST, None, e.code(), &e.to_string()))?;
    let snapshot = sc.policy.load();
    let grant = identify_caller(sc, headers, &snapshot, &peeked)?;
    let session = session_id(headers)?;
    if let Peeked::Single(m) = &peeked {
        check_headers(headers, m)?;
    }
    let messages = peeked.messages();
    let answers = judge(sc, route, session, messages, snapshot.as_deref(), &grant);
    let (batch, id) = match &peeked {
        Peeked::Single(m) => (false, m.id.map(|raw| bytes.slice_ref(raw.get().as_bytes()))),
        Peeked::Batch(_) => (true, None),
    };
    let (forward, lists) = if answers.len() < messages.len() {
        let (body, lists) = forward_body(&bytes, batch, messages, &answers, &sc.list_ids);
        (Some(body), lists)
    } else {
        (None, 0)
    };
    Ok(Judged {
        snapshot,
        grant,
        answers,
        forward,
        lists,
        batch,
        id,
    })
}

/// The annotations a tool is judged by until its server has listed it
/// (after a restart, or a call made before any `tools/list`): MCP's defaults,
/// not read-only and possibly destructive, the strictest the server's hints
/// could make it. Only a pinned class, or a financial or execute name, ranks
/// before them.
static UNSEEN: tollgate_policy::Annotations = tollgate_policy::Annotations {
    read_only_hint: Some(false),
    destructive_hint: Some(true),
    idempotent_hint: None,
    open_world_hint: None,
};

/// The longest `Mcp-Session-Id` accepted, in bytes.
pub const MAX_SESSION_ID: usize = 256;

/// The request's MCP session id, or the 400 to answer for one that is
/// longer than [`MAX_SESSION_ID`] or not visible ASCII (MCP's rule).
pub fn session_id(headers: &HeaderMap) -> Result<Option<&str>, Response<Body>> {
    let Some(value) = headers.get(&SESSION) else {
        return Ok(None);
    };
    let bytes = value.as_bytes();
    if !bytes.is_empty()
        && bytes.len() <= MAX_SESSION_ID
        && bytes.iter().all(|b| (0x21..=0x7e).contains(b))
    {
        // Visible ASCII is UTF-8.
        return Ok(value.to_str().ok());
    }
    Err(rpc_error(
        StatusCode::BAD_REQUEST,
        None,
        code::INVALID_REQUEST,
        &format!(
            "the Mcp-Session-Id header must be 1 to {MAX_SESSION_ID} visible ASCII characters; this one has {} bytes{}",
            bytes.len(),
            if bytes.iter().all(|b| (0x21..=0x7e).contains(b)) {
                ""
            } else {
                " and other characters"
            }
        ),
    ))
}

/// The caller's grant, or the 401 to answer.
fn identify_caller(
    sc: &Sidecar,
    headers: &HeaderMap,
    snapshot: &Option<Arc<Snapshot>>,
    peeked: &Peeked<'_>,
) -> Result<Arc<str>, Response<Body>> {
    match snapshot {
        Some(s) => identify(headers, &sc.grant_header, &s.bundle, &sc.node_id).map_err(|e| {
            let id = peeked.messages().first().and_then(|m| m.id);
            rpc_error(
                StatusCode::UNAUTHORIZED,
                id,
                code::UNAUTHENTICATED,
                &e.to_string(),
            )
        }),
        None => Ok(Arc::clone(&sc.node_id)),
    }
}

/// Decides every `tools/call` among `messages`; returns the answers to the
/// refused ones, by message index. Records every decision.
fn judge(
    sc: &Sidecar,
    route: &Route,
    session: Option<&str>,
    messages: &[Message<'_>],
    snapshot: Option<&Snapshot>,
    grant: &Arc<str>,
) -> Vec<(usize, Bytes)> {
    // Session-scoped limits count per grant and session: two grants using
    // one session id, or a session named like a grant, never share a bucket
    // (a header value cannot hold the separator).
    let session_key = session.map(|s| format!("{grant}\u{1f}{s}"));
    let mut answers: Vec<(usize, Bytes)> = Vec::new();
    let catalog = route.catalog.load();
    for (i, m) in messages.iter().enumerate() {
        let Some(call) = &m.call else { continue };
        let known = catalog.tools.get(&*call.name);
        // Timing is only reported in the decision log.
        let started = sc.log.enabled().then(Instant::now);
        let decision = match snapshot {
            Some(s) => s.bundle.decide(
                &Call {
                    server: &route.server,
                    tool: &call.name,
                    arguments: call.arguments.map_or(Arguments::None, Arguments::Raw),
                    grant,
                    session: session_key.as_deref(),
                    annotations: match known {
                        Some(t) => t.annotations.as_ref(),
                        None => Some(&UNSEEN),
                    },
                },
                sc.now(),
                &*sc.counters,
            ),
            None => no_policy(),
        };
        let micros = started.map_or(0, |t| t.elapsed().as_micros() as u64);
        let version = snapshot.map_or_else(|| Arc::from("(none)"), |s| Arc::clone(&s.version));
        let refused = decision.enforced() != Outcome::Allow;
        let id = if refused || sc.log.enabled() {
            sc.decision_id()
        } else {
            String::new()
        };
        route.counters(known).count(decision.outcome);
        if decision.enforced() != Outcome::Allow && m.kind == Kind::Notification {
            // Not forwarded, and, being a notification, not answered.
            answers.push((i, Bytes::new()));
        } else if decision.enforced() != Outcome::Allow {
            answers.push((
                i,
                answer::refusal(m.id, &call.name, &decision, &id, &version),
            ));
        }
        if sc.log.enabled() {
            sc.log.record(DecisionRecord {
                id,
                time: now_rfc3339(),
                policy_version: version,
                server: Arc::clone(&route.server),
                grant: Arc::clone(grant),
                session: session.map(str::to_owned),
                method: "tools/call",
                tool: call.name.to_string(),
                arguments_sha256: String::new(),
                arguments: None,
                raw_arguments: call.arguments.map(ToOwned::to_owned),
                decision: decision.outcome.as_str(),
                shadow: decision.shadow,
                rule: decision.rule,
                reason: decision.reason,
                retry_after_ms: decision.retry_after.map(|r| r.as_millis() as u64),
                micros,
            });
        }
    }
    answers
}

/// The body to forward — the original bytes, or the messages not refused
/// (a batch stays a batch) — with each `tools/list` request's id replaced by
/// its token; and how many such requests it carries.
fn forward_body<'b>(
    bytes: &Bytes,
    batch: bool,
    messages: &[Message<'b>],
    answers: &[(usize, Bytes)],
    ids: &ListIds,
) -> (Bytes, usize) {
    let refused = |i: usize| answers.iter().any(|(j, _)| *j == i);
    let is_list = |m: &Message<'_>| m.kind == Kind::Request && m.method() == "tools/list";
    let forwarded = || {
        messages
            .iter()
            .enumerate()
            .filter(move |(i, _)| !refused(*i))
            .map(|(_, m)| m)
    };
    let lists = forwarded().filter(|m| is_list(m)).count();
    if answers.is_empty() && lists == 0 {
        return (bytes.clone(), 0);
    }
    let rewritten = |m: &Message<'b>| -> Cow<'b, [u8]> {
        match m.id.filter(|_| is_list(m)) {
            Some(id) => {
                with_token(m.raw, id.get().as_bytes(), ids).map_or(m.raw.into(), Into::into)
            }
            None => m.raw.into(),
        }
    };
    let body = if batch {
        let parts: Vec<Cow<'_, [u8]>> = forwarded().map(rewritten).collect();
        join_array(parts.iter().map(|p| &p[..]))
    } else {
        match forwarded().next() {
            Some(m) => Bytes::from(rewritten(m).into_owned()),
            None => Bytes::new(),
        }
    };
    (body, lists)
}

/// `raw` with `id` (a slice of it) replaced by its [`ListIds`] token, or
/// `None` if `id` does not lie within `raw`. A message left with the
/// client's id still has its reply filtered, by the strictest view.
fn with_token(raw: &[u8], id: &[u8], ids: &ListIds) -> Option<Vec<u8>> {
    let start = (id.as_ptr() as usize).checked_sub(raw.as_ptr() as usize)?;
    let end = start.checked_add(id.len())?;
    let (before, after) = (raw.get(..start)?, raw.get(end..)?);
    let token = ids.token(id);
    let mut out = Vec::with_capacity(raw.len() + token.len());
    out.extend_from_slice(before);
    out.extend_from_slice(&token);
    out.extend_from_slice(after);
    Some(out)
}

/// Filters `tools/list` results and merges the sidecar's own answers into an
/// upstream response.
async fn finish(
    sc: &Sidecar,
    route: &Arc<Route>,
    resp: Response<Body>,
    lists: usize,
    answers: Vec<(usize, Bytes)>,
    listing: impl Fn(&str, Option<&tollgate_policy::Annotations>) -> tollgate_policy::Listing
    + Send
    + Sync
    + 'static,
) -> Response<Body> {
    if crate::sse_filter::is_event_stream(resp.headers()) {
        return crate::sse_filter::filter_stream(
            &sc.list_ids,
            route,
            resp,
            Some(lists),
            answers,
            listing,
        );
    }
    let (mut parts, body) = resp.into_parts();
    if !parts.status.is_success() {
        // The upstream refused the forwarded part (e.g. a server without batch
        // support): its answer stands; refused calls were not forwarded.
        return Response::from_parts(parts, body);
    }
    if parts.status == StatusCode::ACCEPTED {
        // Only notifications and responses were forwarded: reply with the answers.
        if replies(&answers).next().is_none() {
            return Response::from_parts(parts, body);
        }
        return answer_response(&join_array(replies(&answers)), false);
    }
    let collected = match collect_limited(body, sc.max_response).await {
        Ok(c) => c,
        Err(e) => {
            sc.metrics.upstream_error(&route.server);
            return rpc_error(
                StatusCode::BAD_GATEWAY,
                None,
                code::UPSTREAM_UNAVAILABLE,
                &format!(
                    "reading the response of upstream server `{}` failed: {e}",
                    route.server
                ),
            );
        }
    };
    let mut out = collected.clone();
    if lists > 0 {
        let filtered = list_filter::filter(&out, &sc.list_ids, &listing);
        route.learn(filtered.seen);
        if let Some(f) = filtered.bytes {
            out = Bytes::from(f);
        }
    }
    if !answers.is_empty() {
        out = merge_json(&out, &answers);
    }
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, full(out))
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

/// The sidecar's replies among `answers` (a refused notification has none).
pub fn replies(answers: &[(usize, Bytes)]) -> impl Iterator<Item = &[u8]> {
    answers
        .iter()
        .map(|(_, b)| &b[..])
        .filter(|b| !b.is_empty())
}

/// `202 Accepted` with no body: what a POST of notifications gets.
pub fn accepted() -> Response<Body> {
    let mut resp = Response::new(full(Bytes::new()));
    *resp.status_mut() = StatusCode::ACCEPTED;
    resp
}

/// Appends answers to a JSON reply (an array, or one message).
fn merge_json(reply: &[u8], answers: &[(usize, Bytes)]) -> Bytes {
    let items: Vec<&serde_json::value::RawValue> =
        match serde_json::from_slice::<Vec<&serde_json::value::RawValue>>(reply) {
            Ok(items) => items,
            Err(_) => match serde_json::from_slice::<&serde_json::value::RawValue>(reply) {
                Ok(one) => vec![one],
                Err(_) => Vec::new(),
            },
        };
    join_array(
        items
            .iter()
            .map(|r| r.get().as_bytes())
            .chain(replies(answers)),
    )
}

/// `[a,b,…]` from raw JSON texts.
pub fn join_array<'a>(items: impl Iterator<Item = &'a [u8]>) -> Bytes {
    let mut out = Vec::with_capacity(256);
    out.push(b'[');
    for (i, item) in items.enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(item);
    }
    out.push(b']');
    Bytes::from(out)
}

/// The decision when no valid policy has loaded: deny everything.
fn no_policy() -> Decision {
    Decision {
        outcome: Outcome::Deny,
        rule: Arc::from("(no policy loaded)"),
        reason: Some(Arc::from(
            "the sidecar has no valid policy yet and denies every call until one loads; check its --policy file or control plane",
        )),
        retry_after: None,
        limit: None,
        approval: None,
        class: None,
        shadow: false,
    }
}

/// `Mcp-Method` and `Mcp-Name` must agree with the body, or a router that
/// trusts the headers could be told one thing while the server does another.
fn check_headers(headers: &HeaderMap, m: &Message<'_>) -> Result<(), Response<Body>> {
    let header = |name| headers.get(name).map(|v| v.to_str().unwrap_or("\u{fffd}"));
    if let Some(method) = header(&MCP_METHOD)
        && m.kind != Kind::Response
        && method != m.method()
    {
        return Err(rpc_error(
            StatusCode::BAD_REQUEST,
            m.id,
            code::HEADER_MISMATCH,
            &format!(
                "the Mcp-Method header ({method:?}) does not match the body's method ({:?}); send the same method in both",
                m.method()
            ),
        ));
    }
    if let (Some(name), Some(call)) = (header(&MCP_NAME), &m.call)
        && name != call.name
    {
        return Err(rpc_error(
            StatusCode::BAD_REQUEST,
            m.id,
            code::HEADER_MISMATCH,
            &format!(
                "the Mcp-Name header ({name:?}) does not match the tool named in the body ({:?}); send the same name in both",
                call.name
            ),
        ));
    }
    Ok(())
}

/// Reads a request body of at most `max` bytes, or answers 413/400.
pub async fn read_body(
    body: Incoming,
    headers: &HeaderMap,
    max: usize,
) -> Result<Bytes, Response<Body>> {
    let too_large = || {
        rpc_error(
            StatusCode::PAYLOAD_TOO_LARGE,
            None,
            code::INVALID_REQUEST,
            &format!(
                "the request body is larger than this sidecar accepts ({max} bytes); send a smaller message or raise --max-body"
            ),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max as u64) {
        return Err(too_large());
    }
    // A small body usually arrives as one frame: keep it as it came, without
    // the copy a collector would make; append further frames only when needed.
    let mut body = std::pin::pin!(Limited::new(body, max));
    let mut first: Option<Bytes> = None;
    let mut rest = bytes::BytesMut::new();
    let read = loop {
        match body.frame().await {
            None => break Ok(()),
            Some(Err(e)) => break Err(e),
            Some(Ok(frame)) => {
                let Ok(data) = frame.into_data() else {
                    continue; // trailers
                };
                match &first {
                    None => first = Some(data),
                    Some(f) => {
                        if rest.is_empty() {
                            rest.extend_from_slice(f);
                        }
                        rest.extend_from_slice(&data);
                    }
                }
                // The declared length is in: done, without waiting for the
                // connection to report the body's end (one more wake-up).
                if http_body::Body::is_end_stream(&*body) {
                    break Ok(());
                }
            }
        }
    };
    match read {
        Ok(()) if rest.is_empty() => Ok(first.unwrap_or_default()),
        Ok(()) => Ok(rest.freeze()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(too_large()),
        Err(e) => Err(rpc_error(
            StatusCode::BAD_REQUEST,
            None,
            code::INVALID_REQUEST,
            &format!("could not read the request body: {e}"),
        )),
    }
}

/// Whether the client accepts only SSE (then the sidecar's answers are SSE).
fn prefers_sse(headers: &HeaderMap) -> bool {
    let accept = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect::<Vec<_>>()
        .join(",");
    accept.contains("text/event-stream")
        && !accept.contains("application/json")
        && !accept.contains("*/*")
}

/// A 200 reply carrying the sidecar's own JSON-RPC message(s).
pub fn answer_response(json: &[u8], sse: bool) -> Response<Body> {
    let (ct, body) = if sse {
        ("text/event-stream", answer::sse_event(json))
    } else {
        ("application/json", Bytes::copy_from_slice(json))
    };
    let mut resp = Response::new(full(body));
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(ct));
    resp
}

/// An HTTP error whose body is a JSON-RPC error.
pub fn rpc_error(
    status: StatusCode,
    id: Option<&serde_json::value::RawValue>,
    code: i32,
    message: &str,
) -> Response<Body> {
    let mut resp = Response::new(full(answer::error(id, code, message)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

/// Forwards a request that carries no MCP message (GET streams, DELETE,
/// discovery documents), without any body the client sent.
pub async fn pass_through(
    sc: &Sidecar,
    route: &Route,
    up: &HttpUpstream,
    target: Uri,
    parts: request::Parts,
    snapshot: Option<Arc<Snapshot>>,
) -> Response<Body> {
    // GET, DELETE and discovery documents carry no message: a body sent with
    // them is dropped, never forwarded unjudged.
    match forward(
        sc,
        route,
        up,
        parts.method,
        target,
        parts.headers,
        snapshot.as_deref(),
        Bytes::new(),
        None,
        None,
    )
    .await
    {
        Ok(r) => r,
        Err(resp) => resp,
    }
}

/// Sends a request upstream with the client's headers, less hop-by-hop ones
/// and the grant header when the bundle has grants. Upstream failures are
/// counted; an unreachable upstream is answered 502 naming the server
/// (with `id`, the request's raw JSON-RPC id, when there is one).
#[allow(clippy::too_many_arguments)]
pub async fn forward(
    sc: &Sidecar,
    route: &Route,
    up: &HttpUpstream,
    method: Method,
    target: Uri,
    headers: HeaderMap,
    snapshot: Option<&Snapshot>,
    body: Bytes,
    id: Option<&[u8]>,
    caller: Option<&Arc<str>>,
) -> Result<Response<Body>, Response<Body>> {
    let strip = snapshot
        .filter(|s| s.bundle.has_grants())
        .map(|_| &sc.grant_header);
    // The body may differ from the client's (a batch without refused calls, a
    // GET's body dropped): a Content-Length that does not state the length of
    // what is sent is removed, and hyper writes the right one.
    let length_stands = {
        let mut lengths = headers.get_all(header::CONTENT_LENGTH).iter();
        let first = lengths.next().and_then(|v| v.to_str().ok());
        lengths.next().is_none() && first.and_then(|v| v.parse::<usize>().ok()) == Some(body.len())
    };
    let mut req = Request::new(full(body));
    *req.method_mut() = method;
    *req.uri_mut() = target;
    *req.headers_mut() = forwarded_headers(headers, up.host(), strip);
    if !length_stands {
        req.headers_mut().remove(header::CONTENT_LENGTH);
    }
    if let Some(grant) = caller {
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
            // The id was read by the peek: parsed again only for this reply.
            let id = id.and_then(|raw| serde_json::from_slice(raw).ok());
            Err(rpc_error(
                StatusCode::BAD_GATEWAY,
                id,
                code::UPSTREAM_UNAVAILABLE,
                &e.to_string(),
            ))
        }
    }
}
