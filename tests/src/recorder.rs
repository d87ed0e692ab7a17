//! A recording MCP upstream: a minimal in-process MCP server on a loopback
//! port that keeps every HTTP request it receives (method, path, headers,
//! body), so a test can assert what reached the upstream — and, above all,
//! what did not.
//!
//! It speaks both HTTP transports at once:
//!
//! - Streamable HTTP at `POST /mcp`, answering in JSON (one message or a
//!   batch; `202 Accepted` when nothing needs an answer);
//! - the legacy HTTP+SSE transport (2024-11-05): `GET /sse` opens a stream
//!   whose first event, `endpoint`, names `/message?sessionId=<n>`; a
//!   `POST /message?sessionId=<n>` is answered `202 Accepted`, and its
//!   JSON-RPC answers travel on that session's stream.
//!
//! It knows three tools, [`TOOLS`]: `tools/call` of one of them answers
//! `called <name>` (see [`called`]); any other name is the JSON-RPC error
//! `-32602 Unknown tool: <name>`, as a real server says. Every request is
//! recorded, whatever its path or method — including the ones it answers 404.
//!
//! Plain threads and blocking sockets: the e2e crate has no async runtime.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use serde_json::{Value, json};

/// The tools the recorder lists and answers.
pub const TOOLS: [&str; 3] = ["delete_x", "echo", "debug_x"];

/// The text of the recorder's answer to a `tools/call` of `tool`.
pub fn called(tool: &str) -> String {
    format!("called {tool}")
}

/// One HTTP request as the recorder received it.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// `GET`, `POST`, …
    pub method: String,
    /// The request target: path and query.
    pub target: String,
    /// Header names (lower-cased) and values, in order.
    pub headers: Vec<(String, String)>,
    /// The body, de-chunked.
    pub body: Vec<u8>,
}

impl Recorded {
    /// The first header of that (lower-case) name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The JSON-RPC messages of the body (one, or a batch's), as an ordinary
    /// parser reads them (the last of duplicate keys wins); empty if the body
    /// is not JSON.
    pub fn messages(&self) -> Vec<Value> {
        match serde_json::from_slice::<Value>(&self.body) {
            Ok(Value::Array(items)) => items,
            Ok(v) => vec![v],
            Err(_) => Vec::new(),
        }
    }

    /// The tool names of the `tools/call` messages in the body.
    pub fn tool_calls(&self) -> Vec<String> {
        self.messages()
            .iter()
            .filter(|m| m["method"] == json!("tools/call"))
            .map(|m| m["params"]["name"].as_str().unwrap_or("").to_owned())
            .collect()
    }
}

/// A running recorder; stops accepting (and closes its SSE streams) on drop.
#[derive(Debug)]
pub struct Recorder {
    addr: SocketAddr,
    shared: Arc<Shared>,
}

#[derive(Debug, Default)]
struct Shared {
    requests: Mutex<Vec<Recorded>>,
    /// Open legacy SSE streams by session id.
    sessions: Mutex<HashMap<String, TcpStream>>,
    next_session: AtomicU64,
    stopping: AtomicBool,
}

impl Recorder {
    /// Starts a recorder on a fresh 127.0.0.1 port.
    pub fn start() -> Recorder {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .unwrap_or_else(|e| panic!("the recorder cannot bind a loopback port: {e}"));
        let addr = listener
            .local_addr()
            .unwrap_or_else(|e| panic!("the recorder's address: {e}"));
        let shared = Arc::new(Shared::default());
        let accepting = Arc::clone(&shared);
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                if accepting.stopping.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(stream) = stream else { continue };
                let _ = stream.set_nodelay(true);
                let shared = Arc::clone(&accepting);
                std::thread::spawn(move || serve_connection(stream, &shared));
            }
        });
        Recorder { addr, shared }
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Its Streamable HTTP endpoint, `http://<addr>/mcp`.
    pub fn url(&self) -> String {
        format!("http://{}/mcp", self.addr)
    }

    /// Its legacy SSE endpoint, `http://<addr>/sse`.
    pub fn sse_url(&self) -> String {
        format!("http://{}/sse", self.addr)
    }

    /// Every request received so far, in arrival order.
    pub fn requests(&self) -> Vec<Recorded> {
        self.shared.requests().clone()
    }

    /// How many requests it has received: a mark for [`Recorder::since`].
    pub fn count(&self) -> usize {
        self.shared.requests().len()
    }

    /// The requests received after `mark` (a [`Recorder::count`]).
    pub fn since(&self, mark: usize) -> Vec<Recorded> {
        self.shared
            .requests()
            .get(mark..)
            .map(<[Recorded]>::to_vec)
            .unwrap_or_default()
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        // Wakes the accept loop so it sees the flag.
        let _ = TcpStream::connect(self.addr);
        let sessions = std::mem::take(
            &mut *self
                .shared
                .sessions
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        );
        for stream in sessions.values() {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }
}

impl Shared {
    fn requests(&self) -> std::sync::MutexGuard<'_, Vec<Recorded>> {
        self.requests.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Serves requests on one connection (keep-alive) until the peer closes it.
fn serve_connection(stream: TcpStream, shared: &Shared) {
    let Ok(read_half) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(read_half);
    let mut writer = stream;
    while let Some(req) = read_request(&mut reader) {
        shared.requests().push(req.clone());
        let path = req.target.split('?').next().unwrap_or("");
        let written = match (req.method.as_str(), path) {
            ("POST", "/mcp") => match answer_body(&req.body) {
                Some(Ok(json)) => respond(&mut writer, 200, "application/json", json.as_bytes()),
                Some(Err(json)) => respond(&mut writer, 400, "application/json", json.as_bytes()),
                None => respond(&mut writer, 202, "text/plain", b""),
            },
            ("GET", "/sse") => {
                open_session(writer, shared);
                // The stream is the session's now; wait for the peer to go.
                let mut sink = [0u8; 1024];
                while reader.read(&mut sink).is_ok_and(|n| n > 0) {}
                return;
            }
            ("POST", "/message") => legacy_message(&mut writer, shared, &req),
            ("GET" | "DELETE", "/mcp") => {
                respond(&mut writer, 405, "text/plain", b"method not allowed")
            }
            _ => respond(&mut writer, 404, "text/plain", b"not found"),
        };
        if written.is_err() {
            return;
        }
    }
}

/// Reads one request; `None` at the end of the connection or on bad input.
fn read_request(reader: &mut BufReader<TcpStream>) -> Option<Recorded> {
    let mut line = String::new();
    if reader.read_line(&mut line).ok()? == 0 {
        return None;
    }
    let mut words = line.split_whitespace();
    let method = words.next()?.to_owned();
    let target = words.next()?.to_owned();
    let mut headers = Vec::new();
    loop {
        line.clear();
        if reader.read_line(&mut line).ok()? == 0 {
            return None;
        }
        let l = line.trim_end_matches(['\r', '\n']);
        if l.is_empty() {
            break;
        }
        let (n, v) = l.split_once(':')?;
        headers.push((n.trim().to_ascii_lowercase(), v.trim().to_owned()));
    }
    let header = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
    };
    let body = if header("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        read_chunked(reader)?
    } else {
        let len: usize = header("content-length")
            .map(|v| v.parse().ok())
            .unwrap_or(Some(0))?;
        let mut body = vec![0u8; len];
        reader.read_exact(&mut body).ok()?;
        body
    };
    Some(Recorded {
        method,
        target,
        headers,
        body,
    })
}

fn read_chunked(reader: &mut BufReader<TcpStream>) -> Option<Vec<u8>> {
    let mut body = Vec::new();
    let mut line = String::new();
    loop {
        line.clear();
        reader.read_line(&mut line).ok()?;
        let size = usize::from_str_radix(line.split(';').next()?.trim(), 16).ok()?;
        if size == 0 {
            // Trailers, then the empty line.
            loop {
                line.clear();
                if reader.read_line(&mut line).ok()? == 0 || line.trim().is_empty() {
                    return Some(body);
                }
            }
        }
        let start = body.len();
        body.resize(start + size, 0);
        reader.read_exact(&mut body[start..]).ok()?;
        line.clear();
        reader.read_line(&mut line).ok()?;
    }
}

fn respond(w: &mut TcpStream, status: u16, content_type: &str, body: &[u8]) -> std::io::Result<()> {
    let reason = match status {
        200 => "OK",
        202 => "Accepted",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        _ => "Status",
    };
    let head = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    w.write_all(head.as_bytes())?;
    w.write_all(body)?;
    w.flush()
}

/// The JSON answer to a body: `Some(Ok)` with the answers, `Some(Err)` with a
/// parse error, `None` when nothing needs an answer.
fn answer_body(body: &[u8]) -> Option<Result<String, String>> {
    match serde_json::from_slice::<Value>(body) {
        Err(e) => Some(Err(error(
            &Value::Null,
            -32700,
            &format!("parse error: {e}"),
        )
        .to_string())),
        Ok(Value::Array(items)) => {
            let answers: Vec<Value> = items.iter().filter_map(answer).collect();
            (!answers.is_empty()).then(|| Ok(Value::Array(answers).to_string()))
        }
        Ok(message) => answer(&message).map(|a| Ok(a.to_string())),
    }
}

/// The answer to one message; `None` for notifications and responses.
fn answer(message: &Value) -> Option<Value> {
    let id = message.get("id").filter(|id| !id.is_null())?;
    let method = message.get("method").and_then(Value::as_str)?;
    let params = &message["params"];
    let result = match method {
        "initialize" => json!({
            "protocolVersion": params["protocolVersion"].as_str().unwrap_or("2025-03-26"),
            "capabilities": { "tools": {} },
            "serverInfo": { "name": "tollgate-e2e-recorder", "version": "1" }
        }),
        "tools/list" => json!({
            "tools": TOOLS.iter().map(|name| json!({
                "name": name,
                "description": format!("the recorder's {name}"),
                "inputSchema": { "type": "object" }
            })).collect::<Vec<_>>()
        }),
        "tools/call" => {
            let name = params["name"].as_str().unwrap_or("");
            if !TOOLS.contains(&name) {
                return Some(error(id, -32602, &format!("Unknown tool: {name}")));
            }
            json!({ "content": [{ "type": "text", "text": called(name) }], "isError": false })
        }
        "ping" => json!({}),
        other => return Some(error(id, -32601, &format!("Method not found: {other}"))),
    };
    Some(json!({ "jsonrpc": "2.0", "id": id, "result": result }))
}

fn error(id: &Value, code: i32, message: &str) -> Value {
    json!({ "jsonrpc": "2.0", "id": id, "error": { "code": code, "message": message } })
}

/// Answers `GET /sse`: a chunked event stream whose first event names the
/// session's message endpoint; the stream is kept for the session's answers.
fn open_session(mut stream: TcpStream, shared: &Shared) {
    let id = shared.next_session.fetch_add(1, Ordering::Relaxed) + 1;
    let head = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n\
                Transfer-Encoding: chunked\r\n\r\n";
    let endpoint = format!("event: endpoint\ndata: /message?sessionId={id}\n\n");
    if stream.write_all(head.as_bytes()).is_err() || write_chunk(&mut stream, &endpoint).is_err() {
        return;
    }
    shared
        .sessions
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .insert(id.to_string(), stream);
}

fn write_chunk(stream: &mut TcpStream, data: &str) -> std::io::Result<()> {
    stream.write_all(format!("{:x}\r\n{data}\r\n", data.len()).as_bytes())?;
    stream.flush()
}

/// Answers `POST /message?sessionId=<n>`: 202, with the answers on the stream.
fn legacy_message(w: &mut TcpStream, shared: &Shared, req: &Recorded) -> std::io::Result<()> {
    let session = req
        .target
        .split_once('?')
        .and_then(|(_, q)| q.split('&').find_map(|kv| kv.strip_prefix("sessionId=")))
        .unwrap_or("");
    let mut sessions = shared
        .sessions
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    let Some(stream) = sessions.get_mut(session) else {
        return respond(w, 404, "text/plain", b"unknown session");
    };
    match answer_body(&req.body) {
        Some(Err(json)) => respond(w, 400, "application/json", json.as_bytes()),
        answered => {
            if let Some(Ok(json)) = answered
                && write_chunk(stream, &format!("event: message\ndata: {json}\n\n")).is_err()
            {
                sessions.remove(session);
                return respond(w, 404, "text/plain", b"the session's stream is closed");
            }
            respond(w, 202, "text/plain", b"Accepted")
        }
    }
}
