//! Judging one POSTed MCP body: read it (bounded), peek → identify → decide
//! every `tools/call` → a [`Verdict`] per message and the body to forward.
//!
//! A refused call is never forwarded, whatever the body's shape: in a batch
//! only the messages whose verdict is [`Verdict::Forward`] go upstream. This
//! module renders no reply; the transports act on the verdicts and
//! [`crate::reply`] builds the replies.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use tollgate_policy::{Arguments, Call, Outcome};

use crate::approvals::canonical::{canonical_json, sha256_hex};
use crate::decision_log::{DecisionRecord, now_rfc3339};
use crate::mcp::encoding;
use crate::mcp::list_filter::ListIds;
use crate::mcp::peek::{Kind, Message, Peeked, peek};
use crate::reply::{McpHeader, RequestError};
use crate::rollout_report::Difference;
use crate::snapshot::{Shadow, Snapshot};
use crate::state::{Route, Sidecar};
use crate::verdict::{RefusedCall, Verdict, Verdicts};

/// The `Mcp-Session-Id` header.
pub const SESSION: HeaderName = HeaderName::from_static("mcp-session-id");
/// The `Mcp-Method` header (2026-07-28): must name the body's method.
static MCP_METHOD: HeaderName = HeaderName::from_static("mcp-method");
/// The `Mcp-Name` header (2026-07-28): must name the body's tool.
static MCP_NAME: HeaderName = HeaderName::from_static("mcp-name");

/// A POSTed body read, peeked and judged.
#[derive(Debug)]
pub struct Judged {
    /// The policy it was judged by.
    pub snapshot: Arc<Snapshot>,
    /// The caller's grant.
    pub grant: Arc<str>,
    /// What happens to each message.
    pub verdicts: Verdicts,
    /// What to forward: the body, or a batch of the forwarded messages;
    /// `None` when no message is forwarded.
    pub forward: Option<Bytes>,
    /// `tools/list` requests forwarded, each under a [`ListIds`] token in
    /// place of its id (their replies are filtered and get the id back).
    pub lists: usize,
    /// Whether the body was a batch.
    pub batch: bool,
    /// A single message's raw id (a slice of the body), for error replies.
    pub id: Option<Bytes>,
    /// The body as received (a held call is read from it).
    pub body: Bytes,
    /// Whether the body is a single `initialize` request.
    pub initialize: bool,
}

/// Reads a POSTed body and judges it. Refused: a body not declared as
/// uncompressed UTF-8 (unread), slower than `--body-timeout-ms`, over
/// `--max-body`, that the peek cannot read or whose headers disagree with
/// it, and an unidentified caller where grants are set.
pub async fn inspect(
    sc: &Sidecar,
    route: &Route,
    headers: &HeaderMap,
    body: Incoming,
) -> Result<Judged, RequestError> {
    encoding::check(headers).map_err(|e| RequestError::Encoding(e.to_string()))?;
    let bytes = tokio::time::timeout(sc.body_timeout, read_body(body, headers, sc.max_body))
        .await
        .map_err(|_| RequestError::BodyTimeout(sc.body_timeout))??;
    let peeked = peek(&bytes)?;
    let raw_id = |m: &Message<'_>| m.id.map(|raw| bytes.slice_ref(raw.get().as_bytes()));
    let snapshot = sc.policy.load();
    let first_id = || peeked.messages().first().and_then(raw_id);
    let grant = sc.caller(&snapshot, headers, first_id)?;
    let session = session_id(headers)?;
    if let Peeked::Single(m) = &peeked {
        check_headers(headers, m, || raw_id(m))?;
    }
    let messages = peeked.messages();
    let verdicts = judge(sc, route, session, messages, &snapshot, &grant, &bytes);
    let (batch, id) = match &peeked {
        Peeked::Single(m) => (false, raw_id(m)),
        Peeked::Batch(_) => (true, None),
    };
    let initialize = matches!(&peeked, Peeked::Single(m) if m.method() == "initialize");
    let (forward, lists) = if verdicts.not_forwarded() < messages.len() {
        let (body, lists) = forward_body(&bytes, batch, messages, &verdicts, &sc.list_ids);
        (Some(body), lists)
    } else {
        (None, 0)
    };
    Ok(Judged {
        snapshot,
        grant,
        verdicts,
        forward,
        lists,
        batch,
        id,
        body: bytes.clone(),
        initialize,
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

/// The request's MCP session id; refused when longer than
/// [`MAX_SESSION_ID`] or not visible ASCII (MCP's rule).
pub fn session_id(headers: &HeaderMap) -> Result<Option<&str>, RequestError> {
    let Some(value) = headers.get(&SESSION) else {
        return Ok(None);
    };
    let bytes = value.as_bytes();
    let visible = bytes.iter().all(|b| (0x21..=0x7e).contains(b));
    if !bytes.is_empty() && bytes.len() <= MAX_SESSION_ID && visible {
        // Visible ASCII is UTF-8.
        return Ok(value.to_str().ok());
    }
    Err(RequestError::SessionId {
        max: MAX_SESSION_ID,
        len: bytes.len(),
        visible,
    })
}

/// Decides every `tools/call` among `messages` into a verdict per message.
/// Records every decision: in the log and metrics, in the snapshot's
/// per-version tally (fleet mode: one atomic add), and, when a shadow
/// version is in force, decides the call with it too (see [`decide_shadow`]).
fn judge(
    sc: &Sidecar,
    route: &Route,
    session: Option<&str>,
    messages: &[Message<'_>],
    snapshot: &Snapshot,
    grant: &Arc<str>,
    body: &Bytes,
) -> Verdicts {
    // Session-scoped limits count per grant and session: two grants using
    // one session id, or a session named like a grant, never share a bucket
    // (a header value cannot hold the separator).
    let session_key = session.map(|s| format!("{grant}\u{1f}{s}"));
    let mut verdicts = Verdicts::default();
    let catalog = route.catalog.load();
    for (i, m) in messages.iter().enumerate() {
        let Some(call) = &m.call else { continue };
        let known = catalog.tools.get(&*call.name);
        // Timing is only reported in the decision log.
        let started = sc.log.enabled().then(Instant::now);
        let judged = Call {
            server: &route.server,
            tool: &call.name,
            arguments: call.arguments.map_or(Arguments::None, Arguments::Raw),
            grant,
            session: session_key.as_deref(),
            annotations: match known {
                Some(t) => t.annotations.as_ref(),
                None => Some(&UNSEEN),
            },
        };
        let now = sc.now();
        let decision = snapshot.decide(&judged, now, &*sc.counters);
        let micros = started.map_or(0, |t| t.elapsed().as_micros() as u64);
        if let Some(tally) = snapshot.tally() {
            tally.count(decision.outcome);
        }
        if let Some(shadow) = snapshot.shadow() {
            decide_shadow(shadow, &judged, now, &decision, call.arguments);
        }
        let version = snapshot.version();
        let enforced = decision.enforced();
        let mut id = if enforced != Outcome::Allow || sc.log.enabled() {
            sc.decision_id()
        } else {
            String::new()
        };
        route.counters(known).count(decision.outcome);
        if sc.log.enabled() {
            sc.log.record(DecisionRecord {
                id: if enforced == Outcome::Allow {
                    std::mem::take(&mut id)
                } else {
                    id.clone()
                },
                time: now_rfc3339(),
                policy_version: Arc::clone(version),
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
                rule: Arc::clone(&decision.rule),
                reason: decision.reason.clone(),
                retry_after_ms: decision.retry_after.map(|r| r.as_millis() as u64),
                micros,
                approval_id: None,
                event: None,
            });
        }
        if enforced == Outcome::Allow {
            continue;
        }
        let refused = RefusedCall {
            // Not answered when it is a notification.
            id: (m.kind != Kind::Notification)
                .then(|| m.id.map(|raw| body.slice_ref(raw.get().as_bytes())))
                .map(Option::unwrap_or_default),
            tool: call.name.as_ref().into(),
            decision,
            decision_id: id,
            policy_version: Arc::clone(version),
        };
        verdicts.push(
            i,
            if enforced == Outcome::RequireApproval {
                Verdict::Hold(refused)
            } else {
                Verdict::Answer(refused)
            },
        );
    }
    verdicts
}

/// Decides `call` with the shadow version too, which the agent never sees,
/// and records it when it differs from the live `decision`. A shadow
/// evaluates no limit (every limit admits its calls), so a call the live
/// version rate-limited and the shadow allows is no difference: the shadow
/// cannot tell whether its own limits would have refused it.
fn decide_shadow(
    shadow: &Shadow,
    call: &Call<'_>,
    now: std::time::Duration,
    decision: &tollgate_policy::Decision,
    arguments: Option<&serde_json::value::RawValue>,
) {
    let would = shadow.decide(call, now);
    let unknowable = decision.outcome == Outcome::RateLimited && would.outcome == Outcome::Allow;
    if would.outcome == decision.outcome || unknowable {
        return;
    }
    let difference = Difference {
        server: call.server,
        tool: call.tool,
        grant: call.grant,
        live: decision,
        shadow: &would,
    };
    shadow.decisions().differ(&difference, || {
        canonical_json(arguments)
            .map(|c| sha256_hex(&c))
            .unwrap_or_default()
    });
}

/// The body to forward — the original bytes, or the forwarded messages (a
/// batch stays a batch) — with each `tools/list` request's id replaced by
/// its token; and how many such requests it carries.
fn forward_body<'b>(
    bytes: &Bytes,
    batch: bool,
    messages: &[Message<'b>],
    verdicts: &Verdicts,
    ids: &ListIds,
) -> (Bytes, usize) {
    let is_list = |m: &Message<'_>| m.kind == Kind::Request && m.method() == "tools/list";
    let forwarded = || {
        messages
            .iter()
            .enumerate()
            .filter(move |(i, _)| verdicts.forwards(*i))
            .map(|(_, m)| m)
    };
    let lists = forwarded().filter(|m| is_list(m)).count();
    if verdicts.all_forwarded() && lists == 0 {
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
        crate::reply::join_array(parts.iter().map(|p| &p[..]))
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

/// `Mcp-Method` and `Mcp-Name` must agree with the body, or a router that
/// trusts the headers could be told one thing while the server does another.
fn check_headers(
    headers: &HeaderMap,
    m: &Message<'_>,
    id: impl Fn() -> Option<Bytes>,
) -> Result<(), RequestError> {
    let header = |name| headers.get(name).map(|v| v.to_str().unwrap_or("\u{fffd}"));
    if let Some(method) = header(&MCP_METHOD)
        && m.kind != Kind::Response
        && method != m.method()
    {
        return Err(RequestError::HeaderMismatch {
            id: id(),
            header: McpHeader::Method,
            sent: method.to_owned(),
            body: m.method().to_owned(),
        });
    }
    if let (Some(name), Some(call)) = (header(&MCP_NAME), &m.call)
        && name != call.name
    {
        return Err(RequestError::HeaderMismatch {
            id: id(),
            header: McpHeader::Name,
            sent: name.to_owned(),
            body: call.name.to_string(),
        });
    }
    Ok(())
}

/// Reads a request body of at most `max` bytes.
pub async fn read_body(
    body: Incoming,
    headers: &HeaderMap,
    max: usize,
) -> Result<Bytes, RequestError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max as u64) {
        return Err(RequestError::BodyTooLarge(max));
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
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            Err(RequestError::BodyTooLarge(max))
        }
        Err(e) => Err(RequestError::BodyUnreadable(e.to_string())),
    }
}

#[cfg(test)]
#[path = "judge_tests.rs"]
mod tests;
