//! Loopback sockets for tests: free ports, waiting until a port accepts, and
//! a tiny blocking HTTP/1.1 client (`Connection: close`, `Content-Length` or
//! chunked replies) for admin endpoints and hand-made MCP requests.

use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::process::Process;

/// A loopback address with a port that was free a moment ago. Never hands
/// out the same port twice in one test process.
pub fn free_addr() -> SocketAddr {
    static GIVEN: Mutex<Option<HashSet<u16>>> = Mutex::new(None);
    for _ in 0..100 {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .unwrap_or_else(|e| panic!("cannot bind a loopback port: {e}"));
        let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
        let mut given = GIVEN.lock().unwrap_or_else(PoisonError::into_inner);
        if given.get_or_insert_with(HashSet::new).insert(addr.port()) {
            return addr;
        }
    }
    panic!("no fresh loopback port after 100 tries")
}

/// Waits until `addr` accepts TCP connections; panics (with the process's
/// output) if `process` exits first or `timeout` passes.
pub fn wait_for_port(addr: SocketAddr, process: &mut Process, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return;
        }
        process.assert_running();
        assert!(
            Instant::now() < deadline,
            "{} did not listen on {addr} within {timeout:?}; its output:\n{}",
            process.name(),
            process.output()
        );
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// An HTTP reply.
#[derive(Debug, Clone)]
pub struct Reply {
    /// The status code.
    pub status: u16,
    /// Header names (lower-cased) and values, in order.
    pub headers: Vec<(String, String)>,
    /// The body, de-chunked.
    pub body: Vec<u8>,
}

impl Reply {
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

    /// The one JSON-RPC message of an MCP reply: the JSON body, or the
    /// first `data:` line of an SSE body. Panics, showing the body, if it
    /// is neither.
    pub fn message(&self) -> serde_json::Value {
        let text = self.text();
        let json = text
            .lines()
            .find_map(|l| l.strip_prefix("data:"))
            .unwrap_or(&text)
            .trim();
        serde_json::from_str(json).unwrap_or_else(|e| panic!("not a JSON-RPC reply ({e}): {text}"))
    }
}

/// `GET http://addr{path}`.
pub fn get(addr: SocketAddr, path: &str) -> std::io::Result<Reply> {
    request(addr, "GET", path, &[], None)
}

/// One HTTP/1.1 request on a fresh connection (`Connection: close`); the
/// whole reply is read, so do not use it on a stream that stays open.
pub fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> std::io::Result<Reply> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    // The caller's own `Host`, if it gives one, instead of the address.
    let mut head = format!("{method} {path} HTTP/1.1\r\nConnection: close\r\n");
    if !headers.iter().any(|(n, _)| n.eq_ignore_ascii_case("host")) {
        head.push_str(&format!("Host: {addr}\r\n"));
    }
    for (n, v) in headers {
        head.push_str(&format!("{n}: {v}\r\n"));
    }
    if let Some(b) = body {
        head.push_str(&format!("Content-Length: {}\r\n", b.len()));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes())?;
    if let Some(b) = body {
        stream.write_all(b)?;
    }
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    parse(&raw)
}

/// Parses a whole HTTP/1.1 reply (read to the connection's end).
pub(crate) fn parse(raw: &[u8]) -> std::io::Result<Reply> {
    let bad = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_owned());
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| bad("no end of headers in the reply"))?;
    let head = String::from_utf8_lossy(&raw[..end]);
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("no status line"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let rest = &raw[end + 4..];
    let chunked = headers
        .iter()
        .any(|(n, v)| n == "transfer-encoding" && v.eq_ignore_ascii_case("chunked"));
    let body = if chunked {
        dechunk(rest).ok_or_else(|| bad("a malformed chunked body"))?
    } else {
        rest.to_vec()
    };
    Ok(Reply {
        status,
        headers,
        body,
    })
}

fn dechunk(mut rest: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let eol = rest.windows(2).position(|w| w == b"\r\n")?;
        let size_text = std::str::from_utf8(&rest[..eol]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        rest = &rest[eol + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(rest.get(..size)?);
        rest = rest.get(size + 2..)?;
    }
}

/// POSTs one MCP message to `/mcp` on `addr` (JSON, accepting JSON or SSE),
/// in the session `session` if given.
pub fn post_mcp(addr: SocketAddr, session: Option<&str>, body: &str) -> Reply {
    match session {
        Some(s) => post_mcp_with(addr, &[("Mcp-Session-Id", s)], body),
        None => post_mcp_with(addr, &[], body),
    }
}

/// As [`post_mcp`], with more headers (`Authorization`, …).
pub fn post_mcp_with(addr: SocketAddr, more: &[(&str, &str)], body: &str) -> Reply {
    let mut headers = vec![
        ("Content-Type", "application/json"),
        ("Accept", "application/json, text/event-stream"),
    ];
    headers.extend_from_slice(more);
    request(addr, "POST", "/mcp", &headers, Some(body.as_bytes()))
        .unwrap_or_else(|e| panic!("POST /mcp to {addr}: {e}"))
}

/// Opens an MCP session on `/mcp` at `addr` by hand (`initialize`, then
/// `notifications/initialized`): the session id and the `initialize` reply.
pub fn open_mcp_session(addr: SocketAddr, client: &str) -> (String, Reply) {
    let init = post_mcp(
        addr,
        None,
        &format!(
            r#"{{"jsonrpc":"2.0","id":1,"method":"initialize","params":{{"protocolVersion":"2025-06-18","capabilities":{{}},"clientInfo":{{"name":"{client}","version":"1"}}}}}}"#
        ),
    );
    assert_eq!(init.status, 200, "initialize: {}", init.text());
    let session = init
        .header("mcp-session-id")
        .unwrap_or_else(|| panic!("no session id: {:?}", init.headers))
        .to_owned();
    let done = post_mcp(
        addr,
        Some(&session),
        r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#,
    );
    assert_eq!(
        done.status,
        202,
        "notifications/initialized: {}",
        done.text()
    );
    (session, init)
}
