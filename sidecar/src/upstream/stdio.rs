//! stdio MCP servers, served over Streamable HTTP on a loopback port so that
//! the rest of the sidecar treats them like any HTTP upstream.
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

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::hash::BuildHasher;
use std::io::Read;
use std::pin::Pin;
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Uri, header};
use http_body::Frame;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde_json::Value;
use serde_json::value::RawValue;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::mcp::answer::{self, code};
use crate::mcp::peek::{self, Kind, Message, PeekError};
use crate::upstream::http::{Body, BoxError, full};

const SESSION_HEADER: &str = "mcp-session-id";

/// The bridge's bounds. Sizes are in bytes, buffers in messages.
#[derive(Debug, Clone)]
struct Limits {
    /// Sessions (child processes) running at once.
    max_sessions: usize,
    /// A POST body.
    max_body: usize,
    /// One line of the child's stdout; a longer one is skipped.
    max_line: usize,
    /// Messages queued on one POST or GET stream before the child waits.
    stream_buffer: usize,
    /// Messages kept for a GET stream not open yet; the oldest go first.
    backlog: usize,
    /// A session with no request and no open stream for this long ends.
    idle: Duration,
    /// How long a child gets to exit after stdin closes, and after SIGTERM.
    grace: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_sessions: 64,
            max_body: 16 << 20,
            max_line: 16 << 20,
            stream_buffer: 64,
            backlog: 256,
            idle: Duration::from_secs(30 * 60),
            grace: Duration::from_secs(5),
        }
    }
}

/// One stderr line longer than this is cut.
const MAX_STDERR_LINE: usize = 16 << 10;
/// POST bodies waiting to be written to one child's stdin.
const STDIN_BUFFER: usize = 64;
/// How long output still in the pipe is read after the child exited (a
/// grandchild may hold stdout open).
const DRAIN: Duration = Duration::from_secs(1);

/// Starts the bridge for `command` and returns the URL it serves.
pub async fn bridge(server: &str, command: &str) -> anyhow::Result<Uri> {
    start(server, command, Limits::default()).await
}

async fn start(server: &str, command: &str, limits: Limits) -> anyhow::Result<Uri> {
    if command.trim().is_empty() {
        anyhow::bail!("--upstream {server}=stdio: needs a command line after `stdio:`");
    }
    let listener = TcpListener::bind(("127.0.0.1", 0))
        .await
        .with_context(|| format!("cannot listen on a loopback port for stdio server `{server}`"))?;
    let addr = listener.local_addr()?;
    let bridge = Arc::new(Bridge {
        server: server.to_owned(),
        command: command.to_owned(),
        slots: Arc::new(Semaphore::new(limits.max_sessions)),
        limits,
        sessions: Mutex::new(HashMap::new()),
        ids: SessionIds::new(),
    });
    tokio::spawn(serve(listener, bridge));
    tracing::info!(server, %addr, "bridging the stdio server `{command}` over Streamable HTTP");
    Ok(format!("http://{addr}/mcp").parse()?)
}

async fn serve(listener: TcpListener, bridge: Arc<Bridge>) {
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(server = %bridge.server, "stdio bridge: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let bridge = Arc::clone(&bridge);
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let bridge = Arc::clone(&bridge);
                async move { Ok::<_, Infallible>(bridge.handle(req).await) }
            });
            let builder = auto::Builder::new(TokioExecutor::new());
            if let Err(e) = builder
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!("stdio bridge connection ended: {e}");
            }
        });
    }
}

/// Why the bridge refused a request; each maps to one HTTP status and one
/// JSON-RPC error in [`BridgeError::response`].
#[derive(Debug, thiserror::Error)]
enum BridgeError {
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
            BridgeError::Spawn { .. } => StatusCode::BAD_GATEWAY,
            BridgeError::StreamOpen => StatusCode::CONFLICT,
            BridgeError::NotAcceptable => StatusCode::NOT_ACCEPTABLE,
        }
    }

    fn code(&self) -> i32 {
        match self {
            BridgeError::Peek(e) => e.code(),
            BridgeError::TooManySessions { .. } | BridgeError::Spawn { .. } => {
                code::UPSTREAM_UNAVAILABLE
            }
            _ => code::INVALID_REQUEST,
        }
    }

    fn response(&self) -> Response<Body> {
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

impl Bridge {
    async fn handle(self: Arc<Self>, req: Request<Incoming>) -> Response<Body> {
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

    async fn post(self: &Arc<Self>, req: Request<Incoming>) -> Result<Response<Body>, BridgeError> {
        let (parts, body) = req.into_parts();
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
            None if initialize && messages.len() == 1 => (self.open()?, true),
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

    /// Starts a child and its session.
    fn open(self: &Arc<Self>) -> Result<Arc<Session>, BridgeError> {
        let permit = Arc::clone(&self.slots).try_acquire_owned().map_err(|_| {
            BridgeError::TooManySessions {
                server: self.server.clone(),
                max: self.limits.max_sessions,
            }
        })?;
        let spawn_error = |reason: String| BridgeError::Spawn {
            server: self.server.clone(),
            command: self.command.clone(),
            reason,
        };
        // A group of its own, so that stopping the session reaches whatever
        // the command line started, not only the shell.
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(&self.command)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| spawn_error(e.to_string()))?;
        let (Some(stdin), Some(stdout), Some(stderr)) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            return Err(spawn_error("its stdio pipes were not set up".into()));
        };
        let id = self.ids.next();
        tracing::info!(server = %self.server, session = %id, pid = child.id(), "started the stdio server");
        let (stdin_tx, stdin_rx) = mpsc::channel(STDIN_BUFFER);
        let (stop, stopped) = watch::channel(false);
        let session = Arc::new(Session {
            id: id.clone(),
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

/// One MCP session: one child process and the streams its output goes to.
struct Session {
    id: String,
    stdin: mpsc::Sender<Bytes>,
    /// Set to end the session (DELETE, or a failed first POST).
    stop: watch::Sender<bool>,
    routing: Mutex<Routing>,
}

/// Where the child's messages go. Locked briefly, never across an await.
struct Routing {
    /// The child is gone or going: no new messages or streams.
    ended: bool,
    /// Open POST streams, oldest first.
    streams: Vec<PostStream>,
    next_stream: u64,
    get: Option<mpsc::Sender<Bytes>>,
    /// Messages for a GET stream not open yet.
    backlog: VecDeque<Bytes>,
    last_active: Instant,
}

struct PostStream {
    id: u64,
    tx: mpsc::Sender<Bytes>,
    /// The requests it carried that are not answered yet.
    waiting: Vec<Waiting>,
    /// The progress tokens its requests gave, canonical JSON.
    progress: Vec<String>,
}

struct Waiting {
    /// The id as canonical JSON, to match the child's response.
    key: String,
    id: Box<RawValue>,
}

/// Where one of the child's messages is to go.
enum Destination {
    Response(String),
    Progress(String),
    Any,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Channel {
    Post(u64),
    Get,
}

enum Pick {
    Send(Channel, mpsc::Sender<Bytes>, Bytes),
    /// Kept for the next GET stream.
    Backlogged,
    /// A response to no open stream's request (its client went away, or
    /// cancelled it): nobody waits for it.
    Orphan,
    Ended,
}

impl Session {
    fn routing(&self) -> MutexGuard<'_, Routing> {
        lock(&self.routing)
    }

    /// Writes a POST's messages to the child: 202 when it has no requests,
    /// else an event stream that ends once they are all answered.
    async fn post(
        &self,
        messages: &[Message<'_>],
        stream_buffer: usize,
    ) -> Result<Response<Body>, BridgeError> {
        let mut waiting: Vec<Waiting> = Vec::new();
        let mut progress = Vec::new();
        let mut cancelled = Vec::new();
        for m in messages {
            match (m.kind, m.id) {
                (Kind::Request, Some(id)) => {
                    let key = canonical(id);
                    if waiting.iter().any(|w| w.key == key) {
                        return Err(BridgeError::DuplicateId(key));
                    }
                    if let Some(token) =
                        field(m.raw, "progressToken", "/params/_meta/progressToken")
                    {
                        progress.push(token.to_string());
                    }
                    waiting.push(Waiting {
                        key,
                        id: id.to_owned(),
                    });
                }
                _ if m.method() == "notifications/cancelled" => {
                    if let Some(id) = field(m.raw, "requestId", "/params/requestId") {
                        cancelled.push(id.to_string());
                    }
                }
                _ => {}
            }
        }
        let events = {
            let mut r = self.routing();
            if r.ended {
                return Err(BridgeError::UnknownSession);
            }
            r.last_active = Instant::now();
            for key in &cancelled {
                r.answered(key);
            }
            if let Some(w) = waiting.iter().find(|w| {
                r.streams
                    .iter()
                    .any(|s| s.waiting.iter().any(|o| o.key == w.key))
            }) {
                return Err(BridgeError::DuplicateId(w.key.clone()));
            }
            if waiting.is_empty() {
                None
            } else {
                let (tx, rx) = mpsc::channel(stream_buffer);
                r.next_stream += 1;
                let id = r.next_stream;
                r.streams.push(PostStream {
                    id,
                    tx,
                    waiting,
                    progress,
                });
                Some(rx)
            }
        };
        // One write for the whole POST: it waits for room in the queue at
        // most once, and the child reads the POSTs in the order they came.
        let mut lines = Vec::with_capacity(messages.iter().map(|m| m.raw.len() + 1).sum());
        for m in messages {
            lines.extend(one_line(m.raw));
            lines.push(b'\n');
        }
        if self.stdin.send(Bytes::from(lines)).await.is_err() && events.is_none() {
            // The child is going. Requests registered above are answered
            // by the session's end; a POST without requests is refused.
            return Err(BridgeError::UnknownSession);
        }
        Ok(match events {
            None => {
                let mut resp = Response::new(full(Bytes::new()));
                *resp.status_mut() = StatusCode::ACCEPTED;
                resp
            }
            Some(rx) => event_stream(Events {
                first: VecDeque::new(),
                rx,
            }),
        })
    }

    /// Sends one of the child's messages where it belongs, waiting while
    /// that stream is full; false if it was dropped. A stream whose client
    /// went away is forgotten and the message goes to the next choice.
    async fn deliver(&self, to: &Destination, mut event: Bytes, backlog: usize) -> bool {
        loop {
            let (channel, tx, e) = match self.routing().pick(to, event, backlog) {
                Pick::Send(channel, tx, e) => (channel, tx, e),
                Pick::Backlogged => return true,
                Pick::Orphan | Pick::Ended => return false,
            };
            match tx.send(e).await {
                Ok(()) => return true,
                Err(mpsc::error::SendError(e)) => {
                    self.routing().forget(channel);
                    if let Destination::Response(_) = to {
                        return false;
                    }
                    event = e;
                }
            }
        }
    }

    /// Whether nothing has happened for `idle`. An open stream counts as
    /// activity, so its session's next check is `idle` from now.
    fn is_idle(&self, idle: Duration) -> bool {
        let mut r = self.routing();
        if !r.streams.is_empty() || r.get.as_ref().is_some_and(|g| !g.is_closed()) {
            r.last_active = Instant::now();
            return false;
        }
        r.last_active.elapsed() >= idle
    }
}

impl Routing {
    fn pick(&mut self, to: &Destination, event: Bytes, backlog: usize) -> Pick {
        if self.ended {
            return Pick::Ended;
        }
        self.last_active = Instant::now();
        let stream = match to {
            Destination::Response(key) => {
                let Some(i) = self
                    .streams
                    .iter()
                    .position(|s| s.waiting.iter().any(|w| w.key == *key))
                else {
                    return Pick::Orphan;
                };
                let s = &mut self.streams[i];
                let id = s.id;
                s.waiting.retain(|w| w.key != *key);
                // The last answer takes the stream's sender with it, so the
                // stream ends once it is sent.
                let tx = if s.waiting.is_empty() {
                    self.streams.remove(i).tx
                } else {
                    s.tx.clone()
                };
                return Pick::Send(Channel::Post(id), tx, event);
            }
            Destination::Progress(token) => self
                .streams
                .iter()
                .rev()
                .find(|s| s.progress.contains(token))
                .or(self.streams.last()),
            Destination::Any => self.streams.last(),
        };
        if let Some(s) = stream {
            return Pick::Send(Channel::Post(s.id), s.tx.clone(), event);
        }
        if let Some(g) = &self.get {
            return Pick::Send(Channel::Get, g.clone(), event);
        }
        if self.backlog.len() >= backlog {
            tracing::warn!(
                "no GET stream has read the last {backlog} server messages; dropping the oldest"
            );
            self.backlog.pop_front();
        }
        self.backlog.push_back(event);
        Pick::Backlogged
    }

    fn forget(&mut self, channel: Channel) {
        match channel {
            Channel::Post(id) => self.streams.retain(|s| s.id != id),
            Channel::Get => self.get = None,
        }
    }

    /// A request answered or cancelled: its stream ends if it was the last.
    fn answered(&mut self, key: &str) {
        for s in &mut self.streams {
            s.waiting.retain(|w| w.key != key);
        }
        self.streams.retain(|s| !s.waiting.is_empty());
    }
}

/// The task that owns one child: routes its output, and ends the session.
struct Run {
    bridge: Arc<Bridge>,
    session: Arc<Session>,
    writer: JoinHandle<()>,
    /// Released when the child has exited.
    _permit: OwnedSemaphorePermit,
}

/// What woke the session's task.
enum Step {
    Stop,
    Exited(std::io::Result<ExitStatus>),
    Line(std::io::Result<Option<Line>>),
    Idle,
}

/// Why a session ended.
enum End {
    Exited(std::io::Result<ExitStatus>),
    Closed,
    Idle,
    ReadFailed(std::io::Error),
}

impl Run {
    async fn run(self, mut child: Child, stdout: ChildStdout, mut stopped: watch::Receiver<bool>) {
        let limits = self.bridge.limits.clone();
        let mut lines = Lines::new(stdout, limits.max_line);
        let end = loop {
            let idle_at = self.session.routing().last_active + limits.idle;
            let step = tokio::select! {
                _ = stopped.wait_for(|s| *s) => Step::Stop,
                status = child.wait() => Step::Exited(status),
                line = lines.next() => Step::Line(line),
                _ = tokio::time::sleep_until(idle_at) => Step::Idle,
            };
            match step {
                Step::Stop => break End::Closed,
                Step::Exited(status) => {
                    let drain = async {
                        while let Ok(Some(line)) = lines.next().await {
                            self.route(line).await;
                        }
                    };
                    let _ = tokio::time::timeout(DRAIN, drain).await;
                    break End::Exited(status);
                }
                Step::Line(Ok(Some(line))) => {
                    let stop = tokio::select! {
                        _ = self.route(line) => false,
                        _ = stopped.wait_for(|s| *s) => true,
                    };
                    if stop {
                        break End::Closed;
                    }
                }
                Step::Line(Ok(None)) => break End::Exited(self.exit_status(&mut child).await),
                Step::Line(Err(e)) => break End::ReadFailed(e),
                Step::Idle if self.session.is_idle(limits.idle) => break End::Idle,
                Step::Idle => {}
            }
        };
        self.end(end, child).await;
    }

    /// Routes one line of the child's stdout.
    async fn route(&self, line: Line) {
        let server = &self.bridge.server;
        let session = &self.session.id;
        let line = match line {
            Line::Complete(l) => l,
            Line::TooLong(prefix) => {
                tracing::warn!(%server, %session,
                    "skipping a line of more than {} bytes from the stdio server: {}…",
                    self.bridge.limits.max_line, preview(&prefix));
                return;
            }
        };
        let text = line.trim_ascii();
        if text.is_empty() {
            return;
        }
        let peeked = match peek::peek(text) {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(%server, %session,
                    "skipping a line from the stdio server that is not a JSON-RPC message ({e}): {}",
                    preview(text));
                return;
            }
        };
        let out: Vec<(Destination, Bytes)> = peeked
            .messages()
            .iter()
            .map(|m| (destination(m), answer::sse_event(&one_line(m.raw))))
            .collect();
        drop(peeked);
        for (to, event) in out {
            let delivered = self
                .session
                .deliver(&to, event, self.bridge.limits.backlog)
                .await;
            if let (false, Destination::Response(id)) = (delivered, &to) {
                tracing::debug!(%server, %session, "dropping the response to request {id}: no client waits for it");
            }
        }
    }

    async fn exit_status(&self, child: &mut Child) -> std::io::Result<ExitStatus> {
        match tokio::time::timeout(self.bridge.limits.grace, child.wait()).await {
            Ok(status) => status,
            // stdout closed but the process lives on: it cannot answer.
            Err(_) => self.shut_down(child).await,
        }
    }

    /// Stops a child that is still running: stdin closed, then SIGTERM and
    /// SIGKILL to its process group, each after the grace period.
    async fn shut_down(&self, child: &mut Child) -> std::io::Result<ExitStatus> {
        self.writer.abort();
        let grace = self.bridge.limits.grace;
        if let Ok(status) = tokio::time::timeout(grace, child.wait()).await {
            return status;
        }
        // The group cannot be reused while its leader is not reaped, which
        // only `wait` does.
        if let Some(pgid) = child.id() {
            signal_group("TERM", pgid).await;
            if let Ok(status) = tokio::time::timeout(grace, child.wait()).await {
                return status;
            }
            signal_group("KILL", pgid).await;
        }
        let _ = child.start_kill();
        child.wait().await
    }

    async fn end(self, end: End, mut child: Child) {
        let server = &self.bridge.server;
        let session = &self.session.id;
        {
            let mut sessions = lock(&self.bridge.sessions);
            if sessions
                .get(session)
                .is_some_and(|s| Arc::ptr_eq(s, &self.session))
            {
                sessions.remove(session);
            }
        }
        let streams = {
            let mut r = self.session.routing();
            r.ended = true;
            r.get = None;
            r.backlog.clear();
            std::mem::take(&mut r.streams)
        };
        let reason = match end {
            End::Exited(status) => {
                self.writer.abort();
                if status.as_ref().is_ok_and(ExitStatus::success) {
                    tracing::info!(%server, %session, "the stdio server exited");
                } else {
                    tracing::warn!(%server, %session, "the stdio server exited: {}", describe_ref(&status));
                }
                let status = describe_ref(&status);
                format!("the stdio server `{server}` exited: {status}")
            }
            End::ReadFailed(e) => {
                let status = describe(self.shut_down(&mut child).await);
                tracing::warn!(%server, %session, "cannot read the stdio server's output ({e}); stopped it: {status}");
                format!("the stdio server `{server}` could not be read ({e}) and was stopped")
            }
            End::Closed | End::Idle => {
                let why = if let End::Idle = end {
                    format!("it was idle for {} s", self.bridge.limits.idle.as_secs())
                } else {
                    "the client closed it".to_owned()
                };
                let status = describe(self.shut_down(&mut child).await);
                tracing::info!(%server, %session, "session ended ({why}); the stdio server stopped: {status}");
                format!("the session with the stdio server `{server}` ended: {why}")
            }
        };
        for s in streams {
            for w in &s.waiting {
                let error = answer::error(Some(&w.id), code::UPSTREAM_UNAVAILABLE, &reason);
                // Best effort: a client that stopped reading does not hold the end up.
                let _ = s.tx.try_send(answer::sse_event(&error));
            }
        }
    }
}

fn describe(status: std::io::Result<ExitStatus>) -> String {
    describe_ref(&status)
}

fn describe_ref(status: &std::io::Result<ExitStatus>) -> String {
    match status {
        Ok(s) => s.to_string(),
        Err(e) => format!("its exit status is unknown ({e})"),
    }
}

/// Sends `signal` to a process group through the shell's `kill`, the one
/// way to signal a group without unsafe code.
async fn signal_group(signal: &str, pgid: u32) {
    let status = Command::new("sh")
        .arg("-c")
        .arg(format!("kill -s {signal} -- -{pgid}"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .await;
    if let Err(e) = status {
        tracing::debug!("cannot signal process group {pgid}: {e}");
    }
}

fn destination(m: &Message<'_>) -> Destination {
    match (m.kind, m.id) {
        (Kind::Response, Some(id)) => Destination::Response(canonical(id)),
        (Kind::Notification, _) if m.method() == "notifications/progress" => {
            match field(m.raw, "progressToken", "/params/progressToken") {
                Some(token) => Destination::Progress(token.to_string()),
                None => Destination::Any,
            }
        }
        _ => Destination::Any,
    }
}

/// A JSON value as canonical text, so that `1` and `1.0`, or escapes in
/// strings, compare as the child's JSON library will have read them.
fn canonical(raw: &RawValue) -> String {
    serde_json::from_str::<Value>(raw.get())
        .map(|v| v.to_string())
        .unwrap_or_else(|_| raw.get().to_owned())
}

/// The value at `pointer` in a message, parsed only if `name` occurs in it.
fn field(raw: &[u8], name: &str, pointer: &str) -> Option<Value> {
    if !raw.windows(name.len()).any(|w| w == name.as_bytes()) {
        return None;
    }
    let value: Value = serde_json::from_slice(raw).ok()?;
    value.pointer(pointer).filter(|v| !v.is_null()).cloned()
}

/// A message on one line. In valid JSON a raw CR or LF can only be
/// whitespace between tokens (inside strings they are escaped), so replacing
/// them keeps the message as it was.
fn one_line(raw: &[u8]) -> Vec<u8> {
    raw.trim_ascii()
        .iter()
        .map(|&b| if b == b'\r' || b == b'\n' { b' ' } else { b })
        .collect()
}

fn preview(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(&bytes[..bytes.len().min(200)]);
    text.into_owned()
}

fn event_stream(events: Events) -> Response<Body> {
    let mut resp = Response::new(events.boxed());
    let headers = resp.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    resp
}

/// An SSE body: `first`, then what arrives on `rx` until every sender is gone.
struct Events {
    first: VecDeque<Bytes>,
    rx: mpsc::Receiver<Bytes>,
}

impl http_body::Body for Events {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Some(event) = self.first.pop_front() {
            return Poll::Ready(Some(Ok(Frame::data(event))));
        }
        self.rx
            .poll_recv(cx)
            .map(|event| event.map(|e| Ok(Frame::data(e))))
    }
}

async fn write_stdin(mut stdin: ChildStdin, mut rx: mpsc::Receiver<Bytes>) {
    while let Some(line) = rx.recv().await {
        if let Err(e) = stdin.write_all(&line).await {
            // The child is gone; reading its stdout ends the session.
            tracing::debug!("cannot write to the stdio server: {e}");
            return;
        }
    }
}

async fn forward_stderr(server: String, session: String, stderr: tokio::process::ChildStderr) {
    let mut lines = Lines::new(stderr, MAX_STDERR_LINE);
    while let Ok(Some(line)) = lines.next().await {
        let (text, cut) = match &line {
            Line::Complete(l) => (l, ""),
            Line::TooLong(l) => (l, "…"),
        };
        let text = String::from_utf8_lossy(text.trim_ascii_end());
        tracing::info!(target: "stdio_server", %server, %session, "{text}{cut}");
    }
}

/// One line read, without its `\n`.
enum Line {
    Complete(Vec<u8>),
    /// A line over the limit: its first bytes; the rest was skipped.
    TooLong(Vec<u8>),
}

/// Newline-delimited reading with a bound on one line.
struct Lines<R> {
    reader: BufReader<R>,
    buf: Vec<u8>,
    max: usize,
    overflow: bool,
}

impl<R: AsyncRead + Unpin> Lines<R> {
    fn new(reader: R, max: usize) -> Self {
        Lines {
            reader: BufReader::new(reader),
            buf: Vec::new(),
            max,
            overflow: false,
        }
    }

    /// The next line, or `None` at the end. Cancel safe: a partial line
    /// stays in `self` for the next call.
    async fn next(&mut self) -> std::io::Result<Option<Line>> {
        loop {
            let chunk = self.reader.fill_buf().await?;
            if chunk.is_empty() {
                if self.buf.is_empty() && !self.overflow {
                    return Ok(None);
                }
                return Ok(Some(self.take()));
            }
            let newline = chunk.iter().position(|&b| b == b'\n');
            let part = &chunk[..newline.unwrap_or(chunk.len())];
            let room = self.max.saturating_sub(self.buf.len());
            if part.len() > room {
                self.overflow = true;
            }
            self.buf.extend_from_slice(&part[..part.len().min(room)]);
            let used = newline.map_or(chunk.len(), |i| i + 1);
            self.reader.consume(used);
            if newline.is_some() {
                return Ok(Some(self.take()));
            }
        }
    }

    fn take(&mut self) -> Line {
        let line = std::mem::take(&mut self.buf);
        if std::mem::take(&mut self.overflow) {
            Line::TooLong(line)
        } else {
            Line::Complete(line)
        }
    }
}

/// Session ids: SHA-256 over a 256-bit random seed and a counter, so they
/// are unique and cannot be guessed from one another.
struct SessionIds {
    seed: [u8; 32],
    next: AtomicU64,
}

impl SessionIds {
    fn new() -> Self {
        let mut seed = [0u8; 32];
        let read = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut seed));
        if let Err(e) = read {
            // std's hasher keys come from the OS's random source too.
            tracing::debug!("cannot read /dev/urandom ({e}); seeding session ids from std");
            let keys = std::collections::hash_map::RandomState::new();
            for (i, chunk) in seed.chunks_mut(8).enumerate() {
                chunk.copy_from_slice(&keys.hash_one(i).to_le_bytes());
            }
        }
        SessionIds {
            seed,
            next: AtomicU64::new(0),
        }
    }

    fn next(&self) -> String {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let digest = Sha256::new()
            .chain_update(self.seed)
            .chain_update(n.to_le_bytes())
            .finalize();
        digest[..16].iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// Locks a mutex, also after a panic elsewhere: every critical section here
/// leaves the data consistent at each step.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
#[path = "stdio_tests.rs"]
mod tests;
