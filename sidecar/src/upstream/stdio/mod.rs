//! stdio MCP servers, served over Streamable HTTP inside the sidecar's
//! process, so that the rest of the sidecar treats them like any HTTP
//! upstream. The bridge listens on no socket: requests reach it by a call
//! ([`InProcess`]), so no other local process can talk to a stdio server
//! around the policy.
//!
//! The bridge does no policy: the sidecar decides in front of it. It runs one
//! child process per MCP session (`sh -c <command>`, in a process group of its
//! own): an `initialize` without `Mcp-Session-Id` starts one, `DELETE` or an
//! idle timeout stops it, and when it exits the session ends, so the client's
//! next request gets 404 and it re-initializes, which starts a new child.
//!
//! Messages are newline-delimited JSON-RPC on the child's stdin and stdout
//! (MCP stdio transport). Each line the child prints goes, in order, to:
//! - a response: the POST stream that carried its request (matched by id); a
//!   POST stream ends once every request it carried is answered or cancelled;
//! - `notifications/progress`: the POST stream whose request gave the token;
//! - anything else (notifications, server→client requests such as
//!   elicitation): the most recent open POST stream, else the session's GET
//!   stream, else a bounded backlog the next GET stream starts with.
//!
//! Every buffer is bounded; a full stream makes the child wait (backpressure
//! reaches only the session that is slow to read).
//!
//! By file: this one serves HTTP and starts sessions; `session` routes the
//! child's messages to the streams; `child` runs the process; `events` is the
//! SSE body; `lines` reads bounded lines; `error`
//! turns refusals into responses.

mod child;
mod error;
mod events;
mod lines;
mod session;

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Uri, header};
use http_body_util::{BodyExt, Limited};
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::time::Instant;

use self::child::{Run, forward_stderr, write_stdin};
use self::error::BridgeError;
use self::events::{Events, event_stream};
use self::session::{Routing, Session};
use crate::mcp::peek;
use crate::session_ids::SessionIds;
use crate::upstream::http::{Body, Caller, HttpUpstream, InProcess, full};

const SESSION_HEADER: &str = "mcp-session-id";

/// The bridge's bounds. Sizes are in bytes, buffers in messages.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Sessions (child processes) running at once.
    pub max_sessions: usize,
    /// Sessions one grant may have running at once.
    pub max_sessions_per_grant: usize,
    /// A POST body.
    pub max_body: usize,
    /// One line of the child's stdout; a longer one is skipped.
    pub max_line: usize,
    /// Messages queued on one POST or GET stream before the child waits.
    pub stream_buffer: usize,
    /// Messages kept for a GET stream not open yet; the oldest go first.
    pub backlog: usize,
    /// A session with no request and no open stream for this long ends.
    pub idle: Duration,
    /// How long a child gets to exit after stdin closes, and after SIGTERM.
    pub grace: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_sessions: 64,
            max_sessions_per_grant: 8,
            max_body: 16 << 20,
            max_line: 16 << 20,
            stream_buffer: 64,
            backlog: 256,
            idle: Duration::from_secs(30 * 60),
            grace: Duration::from_secs(5),
        }
    }
}

/// POST bodies waiting to be written to one child's stdin.
const STDIN_BUFFER: usize = 64;

/// The bridge for `command`, as an upstream served in this process.
pub fn bridge(server: &str, command: &str, limits: Limits) -> anyhow::Result<HttpUpstream> {
    let bridge = start(server, command, limits)?;
    let url: Uri = "http://stdio.invalid/mcp".parse()?;
    tracing::info!(server, "bridging the stdio server `{command}` in process");
    Ok(HttpUpstream::in_process(
        server,
        url,
        Arc::new(Handle(bridge)),
    ))
}

fn start(server: &str, command: &str, limits: Limits) -> anyhow::Result<Arc<Bridge>> {
    if command.trim().is_empty() {
        anyhow::bail!("--upstream {server}=stdio: needs a command line after `stdio:`");
    }
    Ok(Arc::new(Bridge {
        server: server.to_owned(),
        command: command.to_owned(),
        slots: Arc::new(Semaphore::new(limits.max_sessions)),
        limits,
        sessions: Mutex::new(HashMap::new()),
        ids: SessionIds::new(),
    }))
}

/// The bridge as the sidecar calls it.
#[derive(Debug)]
struct Handle(Arc<Bridge>);

impl InProcess for Handle {
    fn call(&self, req: Request<Body>) -> Pin<Box<dyn Future<Output = Response<Body>> + Send>> {
        Box::pin(Arc::clone(&self.0).handle(req))
    }
}

/// One stdio server command line and its running sessions.
struct Bridge {
    server: String,
    command: String,
    limits: Limits,
    sessions: Mutex<HashMap<String, Arc<Session>>>,
    /// One permit per running child, held until it has exited.
    slots: Arc<Semaphore>,
    ids: SessionIds,
}

impl std::fmt::Debug for Bridge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bridge")
            .field("server", &self.server)
            .finish_non_exhaustive()
    }
}

impl Bridge {
    async fn handle(self: Arc<Self>, req: Request<Body>) -> Response<Body> {
        let result = if req.uri().path() != "/mcp" {
            Err(BridgeError::NotFound(req.uri().path().to_owned()))
        } else {
            match *req.method() {
                Method::POST => self.post(req).await,
                Method::GET => self.get(req.headers()),
                Method::DELETE => self.delete(req.headers()),
                ref m => Err(BridgeError::MethodNotAllowed(m.clone())),
            }
        };
        result.unwrap_or_else(|e| e.response())
    }

    async fn post(self: &Arc<Self>, req: Request<Body>) -> Result<Response<Body>, BridgeError> {
        let (parts, body) = req.into_parts();
        let grant = parts.extensions.get::<Caller>().map(|c| Arc::clone(&c.0));
        let body = match Limited::new(body, self.limits.max_body).collect().await {
            Ok(c) => c.to_bytes(),
            Err(e) if e.is::<http_body_util::LengthLimitError>() => {
                return Err(BridgeError::TooLarge(self.limits.max_body));
            }
            Err(e) => return Err(BridgeError::Body(e.to_string())),
        };
        let peeked = peek::peek(&body)?;
        let messages = peeked.messages();
        let initialize = messages.iter().any(|m| m.method() == "initialize");
        let (session, fresh) = match session_id(&parts.headers) {
            Some(id) => (self.session(id)?, false),
            None if initialize && messages.len() == 1 => (self.open(grant)?, true),
            None if initialize => return Err(BridgeError::InitializeInBatch),
            None => return Err(BridgeError::MissingSession),
        };
        let result = session.post(messages, self.limits.stream_buffer).await;
        match result {
            Ok(mut resp) if fresh => {
                if let Ok(v) = HeaderValue::from_str(&session.id) {
                    resp.headers_mut().insert(SESSION_HEADER, v);
                }
                Ok(resp)
            }
            Err(e) if fresh => {
                session.stop.send_replace(true);
                Err(e)
            }
            r => r,
        }
    }

    fn get(&self, headers: &HeaderMap) -> Result<Response<Body>, BridgeError> {
        let accept = headers
            .get_all(header::ACCEPT)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| v.contains("text/event-stream") || v.contains("*/*"));
        if !accept {
            return Err(BridgeError::NotAcceptable);
        }
        let session = self.session(session_id(headers).ok_or(BridgeError::MissingSession)?)?;
        let (tx, rx) = mpsc::channel(self.limits.stream_buffer);
        let backlog = {
            let mut r = session.routing();
            if r.ended {
                return Err(BridgeError::UnknownSession);
            }
            if r.get.as_ref().is_some_and(|g| !g.is_closed()) {
                return Err(BridgeError::StreamOpen);
            }
            r.get = Some(tx);
            r.last_active = Instant::now();
            std::mem::take(&mut r.backlog)
        };
        Ok(event_stream(Events { first: backlog, rx }))
    }

    fn delete(&self, headers: &HeaderMap) -> Result<Response<Body>, BridgeError> {
        let id = session_id(headers).ok_or(BridgeError::MissingSession)?;
        let session = lock(&self.sessions)
            .remove(id)
            .ok_or(BridgeError::UnknownSession)?;
        session.stop.send_replace(true);
        let mut resp = Response::new(full(Bytes::new()));
        *resp.status_mut() = StatusCode::NO_CONTENT;
        Ok(resp)
    }

    fn session(&self, id: &str) -> Result<Arc<Session>, BridgeError> {
        lock(&self.sessions)
            .get(id)
            .cloned()
            .ok_or(BridgeError::UnknownSession)
    }

    /// Starts a child and its session for `grant`.
    fn open(self: &Arc<Self>, grant: Option<Arc<str>>) -> Result<Arc<Session>, BridgeError> {
        let per_grant = lock(&self.sessions)
            .values()
            .filter(|s| s.grant == grant)
            .count();
        if per_grant >= self.limits.max_sessions_per_grant {
            return Err(BridgeError::TooManySessionsForGrant {
                server: self.server.clone(),
                max: self.limits.max_sessions_per_grant,
            });
        }
        let permit = Arc::clone(&self.slots).try_acquire_owned().map_err(|_| {
            BridgeError::TooManySessions {
                server: self.server.clone(),
                max: self.limits.max_sessions,
            }
        })?;
        let (child, stdin, stdout, stderr) =
            child::spawn(&self.command).map_err(|reason| BridgeError::Spawn {
                server: self.server.clone(),
                command: self.command.clone(),
                reason,
            })?;
        let id = self.ids.next();
        tracing::info!(server = %self.server, session = %id, pid = child.id(), "started the stdio server");
        let (stdin_tx, stdin_rx) = mpsc::channel(STDIN_BUFFER);
        let (stop, stopped) = watch::channel(false);
        let session = Arc::new(Session {
            id: id.clone(),
            grant,
            stdin: stdin_tx,
            stop,
            routing: Mutex::new(Routing {
                ended: false,
                streams: Vec::new(),
                next_stream: 0,
                get: None,
                backlog: VecDeque::new(),
                last_active: Instant::now(),
            }),
        });
        lock(&self.sessions).insert(id.clone(), Arc::clone(&session));
        let writer = tokio::spawn(write_stdin(stdin, stdin_rx));
        tokio::spawn(forward_stderr(self.server.clone(), id, stderr));
        let run = Run {
            bridge: Arc::clone(self),
            session: Arc::clone(&session),
            writer,
            _permit: permit,
        };
        tokio::spawn(run.run(child, stdout, stopped));
        Ok(session)
    }
}

fn session_id(headers: &HeaderMap) -> Option<&str> {
    // A value that is not text cannot name a session: it is looked up as
    // given, and not found.
    headers
        .get(SESSION_HEADER)
        .map(|v| v.to_str().unwrap_or("\u{0}"))
}

/// Locks a mutex, also after a panic elsewhere: every critical section here
/// leaves the data consistent at each step.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests;
