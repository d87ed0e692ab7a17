//! Why the bridge refuses a request, and the one place that turns a refusal
//! into an HTTP status and a JSON-RPC error body.

use http::{HeaderValue, Method, Response, StatusCode, header};

use crate::mcp::answer::{self, code};
use crate::mcp::peek::PeekError;
use crate::upstream::http::{Body, full};

/// Why the bridge refused a request; each maps to one HTTP status and one
/// JSON-RPC error in [`BridgeError::response`].
#[derive(Debug, thiserror::Error)]
pub(super) enum BridgeError {
    #[error("no MCP endpoint at {0}; the stdio bridge serves /mcp")]
    NotFound(String),
    #[error("{0} is not part of MCP's Streamable HTTP transport; use POST, GET or DELETE")]
    MethodNotAllowed(Method),
    #[error("the request body is larger than the stdio bridge accepts ({0} bytes)")]
    TooLarge(usize),
    #[error("could not read the request body: {0}")]
    Body(String),
    #[error(transparent)]
    Peek(#[from] PeekError),
    #[error(
        "no Mcp-Session-Id header: send `initialize` alone, without a session id, to start a session"
    )]
    MissingSession,
    #[error("`initialize` starts a session and must be sent alone, not in a batch")]
    InitializeInBatch,
    #[error(
        "session not found: it ended (DELETE, idle timeout, or the stdio server exited); send \
         `initialize` to start a new one"
    )]
    UnknownSession,
    #[error("request id {0} is already in use in this session; give each request a new id")]
    DuplicateId(String),
    #[error(
        "the stdio server `{server}` already runs {max} sessions, the most the bridge allows; end \
         unused sessions with DELETE and retry"
    )]
    TooManySessions { server: String, max: usize },
    #[error(
        "this caller already has {max} sessions open on stdio server `{server}`, the most one grant may; end one (DELETE) before initializing another"
    )]
    TooManySessionsForGrant { server: String, max: usize },
    #[error("cannot start the stdio server `{server}` (`{command}`): {reason}")]
    Spawn {
        server: String,
        command: String,
        reason: String,
    },
    #[error("this session already has a GET stream open; close it before opening another")]
    StreamOpen,
    #[error("a GET opens an event stream: send `Accept: text/event-stream`")]
    NotAcceptable,
}

impl BridgeError {
    fn status(&self) -> StatusCode {
        match self {
            BridgeError::NotFound(_) | BridgeError::UnknownSession => StatusCode::NOT_FOUND,
            BridgeError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            BridgeError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            BridgeError::Body(_)
            | BridgeError::Peek(_)
            | BridgeError::MissingSession
            | BridgeError::InitializeInBatch
            | BridgeError::DuplicateId(_) => StatusCode::BAD_REQUEST,
            BridgeError::TooManySessions { .. } => StatusCode::SERVICE_UNAVAILABLE,
            BridgeError::TooManySessionsForGrant { .. } => StatusCode::TOO_MANY_REQUESTS,
            BridgeError::Spawn { .. } => StatusCode::BAD_GATEWAY,
            BridgeError::StreamOpen => StatusCode::CONFLICT,
            BridgeError::NotAcceptable => StatusCode::NOT_ACCEPTABLE,
        }
    }

    fn code(&self) -> i32 {
        match self {
            BridgeError::Peek(e) => e.code(),
            BridgeError::TooManySessions { .. }
            | BridgeError::TooManySessionsForGrant { .. }
            | BridgeError::Spawn { .. } => code::UPSTREAM_UNAVAILABLE,
            _ => code::INVALID_REQUEST,
        }
    }

    pub(super) fn response(&self) -> Response<Body> {
        let mut resp = Response::new(full(answer::error(None, self.code(), &self.to_string())));
        *resp.status_mut() = self.status();
        let headers = resp.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if let BridgeError::MethodNotAllowed(_) = self {
            headers.insert(header::ALLOW, HeaderValue::from_static("GET, POST, DELETE"));
        }
        resp
    }
}
