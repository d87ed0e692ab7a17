//! Every reply the sidecar builds itself, in one place (ARCHITECTURE.md §2):
//! the answers to refused calls, rendered from their [`Verdict`]s, and the
//! refusals of whole requests, each a [`RequestError`] with one conversion to
//! an HTTP response carrying a JSON-RPC error.

use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Response, StatusCode};
use serde_json::value::RawValue;

use crate::mcp::answer::{self, code};
use crate::mcp::peek::PeekError;
use crate::upstream::http::{Body, full};
use crate::verdict::{RefusedCall, Verdicts};

/// Why a whole request is refused or failed. Each variant says what
/// happened and what to do; [`RequestError::into_response`] picks the HTTP
/// status and JSON-RPC code.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// The body is not declared as uncompressed UTF-8 (it is not read).
    #[error("{0}")]
    Encoding(String),
    /// The body did not arrive within `--body-timeout-ms`.
    #[error(
        "the request body did not arrive within {} ms; send it at once (this sidecar's --body-timeout-ms)",
        .0.as_millis()
    )]
    BodyTimeout(Duration),
    /// The body is over `--max-body`.
    #[error(
        "the request body is larger than this sidecar accepts ({0} bytes); send a smaller message or raise --max-body"
    )]
    BodyTooLarge(usize),
    /// The connection failed while the body was read.
    #[error("could not read the request body: {0}")]
    BodyUnreadable(String),
    /// The body is not something the peek can read safely.
    #[error("{0}")]
    Unreadable(PeekError),
    /// Grants are configured and the caller presented no known token.
    #[error("{message}")]
    Unidentified {
        /// The request's raw JSON-RPC id, if known.
        id: Option<Bytes>,
        /// Why.
        message: String,
    },
    /// An `Mcp-Session-Id` that is too long or not visible ASCII.
    #[error(
        "the Mcp-Session-Id header must be 1 to {max} visible ASCII characters; this one has {len} bytes{}",
        if *.visible { "" } else { " and other characters" }
    )]
    SessionId {
        /// The longest accepted.
        max: usize,
        /// Its length.
        len: usize,
        /// Whether every byte was visible ASCII.
        visible: bool,
    },
    /// `Mcp-Method` or `Mcp-Name` disagrees with the body.
    #[error(
        "the {} header ({sent:?}) does not match the {} ({body:?}); send the same {} in both",
        header.name(), header.what(), header.noun()
    )]
    HeaderMismatch {
        /// The request's raw JSON-RPC id.
        id: Option<Bytes>,
        /// Which header.
        header: McpHeader,
        /// The header's value.
        sent: String,
        /// What the body says.
        body: String,
    },
    /// The upstream could not be reached or failed; the message names it.
    #[error("{message}")]
    Upstream {
        /// The request's raw JSON-RPC id, if known.
        id: Option<Bytes>,
        /// What failed.
        message: String,
    },
    /// No route serves the path.
    #[error("no MCP server is served at {path}; this sidecar serves {served}")]
    NoServer {
        /// The path asked for.
        path: String,
        /// The paths served.
        served: String,
    },
    /// A route's path with no endpoint for the method or suffix.
    #[error("no MCP endpoint at {path}; this sidecar serves {served}")]
    NoEndpoint {
        /// The path asked for.
        path: String,
        /// The paths served.
        served: String,
    },
    /// A method Streamable HTTP does not have.
    #[error("{0} is not part of MCP's Streamable HTTP transport; use POST, GET or DELETE")]
    StreamableMethod(Method),
    /// A discovery document asked for with another method than GET or HEAD.
    #[error("discovery documents are read with GET; MCP messages go to the MCP endpoint")]
    DiscoveryMethod,
    /// A discovery path with `.` or `..` segments.
    #[error("`.` and `..` path segments are not forwarded")]
    DotSegment,
    /// A discovery path that cannot be forwarded.
    #[error("{0} is not a path this sidecar forwards")]
    NotForwarded(String),
    /// No upstream serves a discovery path.
    #[error("no upstream serves {0}")]
    NoUpstream(String),
    /// A server already has `--max-legacy-sessions` legacy SSE sessions.
    #[error(
        "server `{server}` has {max} legacy SSE sessions open, the most this sidecar keeps (--max-legacy-sessions); retry later"
    )]
    LegacySessionsFull {
        /// The server.
        server: String,
        /// The cap.
        max: usize,
    },
    /// A legacy message POST for a session that does not exist, is closed or
    /// is another caller's.
    #[error(
        "unknown or closed SSE session; open the SSE stream again and POST to the endpoint it names"
    )]
    LegacyUnknownSession,
    /// The upstream has not sent its `endpoint` event yet.
    #[error("the upstream has not named its message endpoint yet; retry shortly")]
    LegacyEndpointPending,
    /// The session's SSE stream cannot take the sidecar's answers.
    #[error("the SSE stream for this session is closed or not reading; reconnect")]
    LegacyStreamClosed,
    /// The upstream's `endpoint` event named no usable path.
    #[error(
        "upstream server `{server}` named a message endpoint that is not a valid path ({endpoint:?}); check the server"
    )]
    LegacyBadEndpoint {
        /// The server.
        server: String,
        /// What it named.
        endpoint: String,
    },
}

/// A header that must repeat what the body says (MCP 2026-07-28).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum McpHeader {
    /// `Mcp-Method`: the body's method.
    Method,
    /// `Mcp-Name`: the tool the body calls.
    Name,
}

impl McpHeader {
    fn name(self) -> &'static str {
        match self {
            Self::Method => "Mcp-Method",
            Self::Name => "Mcp-Name",
        }
    }

    fn what(self) -> &'static str {
        match self {
            Self::Method => "body's method",
            Self::Name => "tool named in the body",
        }
    }

    fn noun(self) -> &'static str {
        match self {
            Self::Method => "method",
            Self::Name => "name",
        }
    }
}

impl From<PeekError> for RequestError {
    fn from(e: PeekError) -> Self {
        Self::Unreadable(e)
    }
}

impl RequestError {
    /// The HTTP status this refusal is answered with.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::Encoding(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::BodyTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            Self::BodyTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::BodyUnreadable(_)
            | Self::Unreadable(_)
            | Self::SessionId { .. }
            | Self::HeaderMismatch { .. }
            | Self::DotSegment
            | Self::NotForwarded(_) => StatusCode::BAD_REQUEST,
            Self::Unidentified { .. } => StatusCode::UNAUTHORIZED,
            Self::Upstream { .. } | Self::LegacyBadEndpoint { .. } => StatusCode::BAD_GATEWAY,
            Self::NoServer { .. }
            | Self::NoEndpoint { .. }
            | Self::NoUpstream(_)
            | Self::LegacyUnknownSession => StatusCode::NOT_FOUND,
            Self::StreamableMethod(_) | Self::DiscoveryMethod => StatusCode::METHOD_NOT_ALLOWED,
            Self::LegacySessionsFull { .. } | Self::LegacyStreamClosed => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Self::LegacyEndpointPending => StatusCode::CONFLICT,
        }
    }

    /// The JSON-RPC error code.
    pub fn code(&self) -> i32 {
        match self {
            Self::Unreadable(e) => e.code(),
            Self::Unidentified { .. } => code::UNAUTHENTICATED,
            Self::HeaderMismatch { .. } => code::HEADER_MISMATCH,
            Self::Upstream { .. }
            | Self::LegacyBadEndpoint { .. }
            | Self::LegacySessionsFull { .. }
            | Self::LegacyStreamClosed => code::UPSTREAM_UNAVAILABLE,
            _ => code::INVALID_REQUEST,
        }
    }

    fn id(&self) -> Option<&Bytes> {
        match self {
            Self::Unidentified { id, .. }
            | Self::HeaderMismatch { id, .. }
            | Self::Upstream { id, .. } => id.as_ref(),
            _ => None,
        }
    }

    /// The response: the status, a JSON-RPC error body naming what happened,
    /// and `Allow` for a wrong method.
    pub fn into_response(self) -> Response<Body> {
        let id = self.id().and_then(|raw| raw_id(raw));
        let mut resp = Response::new(full(answer::error(id, self.code(), &self.to_string())));
        *resp.status_mut() = self.status();
        let headers = resp.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        match self {
            Self::StreamableMethod(_) => {
                headers.insert(header::ALLOW, HeaderValue::from_static("GET, POST, DELETE"));
            }
            Self::DiscoveryMethod => {
                headers.insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
            }
            _ => {}
        }
        resp
    }
}

impl From<RequestError> for Response<Body> {
    fn from(e: RequestError) -> Self {
        e.into_response()
    }
}

/// A raw JSON-RPC id kept as bytes, read back as JSON.
fn raw_id(raw: &[u8]) -> Option<&RawValue> {
    serde_json::from_slice(raw).ok()
}

/// The reply to a refused call: an `isError` result (or the unknown-tool
/// error for a hidden tool); empty for a notification, which gets none.
pub fn refusal(r: &RefusedCall) -> Bytes {
    let Some(id) = &r.id else {
        return Bytes::new();
    };
    answer::refusal(
        raw_id(id),
        &r.tool,
        &r.decision,
        &r.decision_id,
        &r.policy_version,
    )
}

/// The replies to a request's refused calls, in message order (none for
/// refused notifications).
pub fn refusals(verdicts: &Verdicts) -> Vec<Bytes> {
    verdicts
        .refused()
        .map(refusal)
        .filter(|b| !b.is_empty())
        .collect()
}

/// The reply to a request none of whose messages went upstream: the one
/// answer, an array of them for a batch, or `202 Accepted` when only
/// notifications were refused.
pub fn answered(verdicts: &Verdicts, batch: bool, headers: &HeaderMap) -> Response<Body> {
    let answers = refusals(verdicts);
    let sse = prefers_sse(headers);
    match (batch, answers.first()) {
        (_, None) => accepted(),
        (false, Some(one)) => answer_response(one, sse),
        (true, Some(_)) => answer_response(&join_array(answers.iter().map(|b| &b[..])), sse),
    }
}

/// `202 Accepted` with no body: what a POST of notifications gets.
pub fn accepted() -> Response<Body> {
    let mut resp = Response::new(full(Bytes::new()));
    *resp.status_mut() = StatusCode::ACCEPTED;
    resp
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

/// Appends answers to a JSON reply (an array, or one message).
pub fn merge_json(reply: &[u8], answers: &[Bytes]) -> Bytes {
    let items: Vec<&RawValue> = match serde_json::from_slice::<Vec<&RawValue>>(reply) {
        Ok(items) => items,
        Err(_) => match serde_json::from_slice::<&RawValue>(reply) {
            Ok(one) => vec![one],
            Err(_) => Vec::new(),
        },
    };
    join_array(
        items
            .iter()
            .map(|r| r.get().as_bytes())
            .chain(answers.iter().map(|b| &b[..])),
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

/// Whether the client accepts only SSE (then the sidecar's answers are SSE).
pub fn prefers_sse(headers: &HeaderMap) -> bool {
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

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt;

    use super::*;

    async fn body(resp: Response<Body>) -> serde_json::Value {
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        serde_json::from_slice(&bytes).unwrap()
    }

    #[tokio::test]
    async fn each_refusal_has_one_status_code_and_message() {
        let cases: Vec<(RequestError, StatusCode, i32)> = vec![
            (
                RequestError::BodyTooLarge(10),
                StatusCode::PAYLOAD_TOO_LARGE,
                code::INVALID_REQUEST,
            ),
            (
                RequestError::Unidentified {
                    id: Some(Bytes::from_static(b"\"a\"")),
                    message: "no token".into(),
                },
                StatusCode::UNAUTHORIZED,
                code::UNAUTHENTICATED,
            ),
            (
                RequestError::HeaderMismatch {
                    id: Some(Bytes::from_static(b"7")),
                    header: McpHeader::Name,
                    sent: "a".into(),
                    body: "b".into(),
                },
                StatusCode::BAD_REQUEST,
                code::HEADER_MISMATCH,
            ),
            (
                RequestError::Upstream {
                    id: None,
                    message: "down".into(),
                },
                StatusCode::BAD_GATEWAY,
                code::UPSTREAM_UNAVAILABLE,
            ),
            (
                RequestError::LegacyEndpointPending,
                StatusCode::CONFLICT,
                code::INVALID_REQUEST,
            ),
        ];
        for (e, status, rpc_code) in cases {
            let text = e.to_string();
            let resp = e.into_response();
            assert_eq!(resp.status(), status, "{text}");
            let json = body(resp).await;
            assert_eq!(json["error"]["code"], rpc_code, "{text}");
            assert_eq!(json["error"]["message"], text.as_str());
        }
        let mismatch = RequestError::HeaderMismatch {
            id: Some(Bytes::from_static(b"7")),
            header: McpHeader::Name,
            sent: "a".into(),
            body: "b".into(),
        };
        assert_eq!(
            mismatch.to_string(),
            "the Mcp-Name header (\"a\") does not match the tool named in the body (\"b\"); send the same name in both"
        );
        assert_eq!(body(mismatch.into_response()).await["id"], 7);
    }

    #[test]
    fn a_wrong_method_says_which_are_allowed() {
        let resp = RequestError::StreamableMethod(Method::PUT).into_response();
        assert_eq!(resp.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(resp.headers()[header::ALLOW], "GET, POST, DELETE");
        let resp = RequestError::DiscoveryMethod.into_response();
        assert_eq!(resp.headers()[header::ALLOW], "GET, HEAD");
    }
}
