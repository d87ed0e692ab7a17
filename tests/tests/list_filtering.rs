//! `tools/list` replies are filtered whatever the upstream does with the
//! request id: server-everything (Node) parses ids and writes them back as
//! JavaScript numbers, so `2.0` comes back as `2`; and its event store
//! replays earlier replies on a GET stream resumed with `Last-Event-ID`.
//! Either way the client sees the filtered list under the id it sent.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tollgate_e2e::net::{self, Reply};
use tollgate_e2e::{Peers, Transport, sidecar};

/// Everything allowed; `get-env` hidden.
fn policy() -> Value {
    json!({ "version": "1", "default": "allow", "hide": ["get-env"] })
}

/// The `data:` payloads of an SSE text, and the `id:` of each event.
fn events(text: &str) -> Vec<(Option<String>, String)> {
    text.replace("\r\n", "\n")
        .split("\n\n")
        .filter_map(|block| {
            let id = block
                .lines()
                .find_map(|l| l.strip_prefix("id:").map(|v| v.trim().to_owned()));
            let data: Vec<&str> = block
                .lines()
                .filter_map(|l| {
                    l.strip_prefix("data:")
                        .map(|v| v.strip_prefix(' ').unwrap_or(v))
                })
                .collect();
            (!data.is_empty()).then(|| (id, data.join("\n")))
        })
        .collect()
}

/// The reply to a JSON-RPC request as raw text (JSON or the SSE event carrying it).
fn reply_text(label: &str, reply: &Reply) -> String {
    assert_eq!(reply.status, 200, "{label}: {}", reply.text());
    let text = reply.text();
    if reply
        .header("content-type")
        .is_some_and(|c| c.starts_with("text/event-stream"))
    {
        events(&text)
            .into_iter()
            .map(|(_, data)| data)
            .find(|d| d.contains("\"result\"") || d.contains("\"error\""))
            .unwrap_or_else(|| panic!("{label}: no reply in the stream: {text}"))
    } else {
        text
    }
}

fn tool_names(label: &str, text: &str) -> Vec<String> {
    let v: Value = serde_json::from_str(text).unwrap_or_else(|e| panic!("{label}: {e}: {text}"));
    v["result"]["tools"]
        .as_array()
        .unwrap_or_else(|| panic!("{label}: no tools in {text}"))
        .iter()
        .map(|t| t["name"].as_str().unwrap_or_default().to_owned())
        .collect()
}

/// `GET /mcp` as an SSE stream, read until `enough` holds or 10 s pass.
fn read_stream(
    addr: SocketAddr,
    headers: &[(&str, &str)],
    enough: impl Fn(&str) -> bool,
) -> String {
    let mut stream = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    let mut head = format!("GET /mcp HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n");
    for (n, v) in headers {
        head.push_str(&format!("{n}: {v}\r\n"));
    }
    head.push_str("\r\n");
    stream
        .write_all(head.as_bytes())
        .unwrap_or_else(|e| panic!("GET /mcp: {e}"));
    stream
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap_or_else(|e| panic!("{e}"));
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut raw = Vec::new();
    let mut buf = [0u8; 8192];
    while Instant::now() < deadline && !enough(&body_so_far(&raw)) {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => raw.extend_from_slice(&buf[..n]),
            Err(_) => {}
        }
    }
    body_so_far(&raw)
}

/// The complete chunks of a chunked response read so far, as text.
fn body_so_far(raw: &[u8]) -> String {
    let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") else {
        return String::new();
    };
    let mut rest = &raw[end + 4..];
    let mut body = Vec::new();
    while let Some(line_end) = rest.windows(2).position(|w| w == b"\r\n") {
        let size = std::str::from_utf8(&rest[..line_end])
            .ok()
            .and_then(|s| usize::from_str_radix(s.trim(), 16).ok());
        let Some(size) = size.filter(|n| *n > 0 && rest.len() >= line_end + 2 + *n) else {
            break;
        };
        body.extend_from_slice(&rest[line_end + 2..line_end + 2 + size]);
        rest = rest.get(line_end + 4 + size..).unwrap_or_default();
    }
    String::from_utf8_lossy(&body).into_owned()
}

#[test]
fn list_replies_are_filtered_whatever_the_upstream_does_with_the_id() {
    let Some(peers) = Peers::require() else {
        return;
    };
    let everything = peers.everything(Transport::StreamableHttp);
    let sidecar = sidecar::builder()
        .upstream(everything.url())
        .policy(&policy())
        .start();
    let addr = sidecar.listen;

    let (session, init) = net::open_mcp_session(addr, "list-filtering");
    let first_event = events(&init.text())
        .into_iter()
        .find_map(|(id, _)| id)
        .unwrap_or_else(|| panic!("the initialize reply has no event id: {}", init.text()));

    // The upstream answers `2.0` as `2`: the reply is still filtered, and
    // carries the id as the client wrote it.
    for id in ["2.0", "3", r#""list-\u0034""#] {
        let body = format!(r#"{{"jsonrpc":"2.0","id":{id},"method":"tools/list"}}"#);
        let text = reply_text(id, &net::post_mcp(addr, Some(&session), &body));
        assert!(
            text.contains(&format!(r#""id":{id}"#)),
            "the client's id {id} must come back as it was sent: {text}"
        );
        let names = tool_names(id, &text);
        assert!(names.iter().any(|n| n == "echo"), "{id}: {names:?}");
        assert!(
            !names.iter().any(|n| n == "get-env"),
            "{id}: the hidden get-env was listed: {names:?}"
        );
    }

    // A resumed GET stream replays the list replies: filtered too.
    let replay = read_stream(
        addr,
        &[
            ("Mcp-Session-Id", &session),
            ("Last-Event-ID", &first_event),
        ],
        |t| t.matches("\"tools\"").count() >= 3,
    );
    let lists: Vec<String> = events(&replay)
        .into_iter()
        .map(|(_, d)| d)
        .filter(|d| d.contains("\"tools\""))
        .collect();
    assert_eq!(
        lists.len(),
        3,
        "the replay should hold the three list replies: {replay}"
    );
    for (text, id) in lists.iter().zip(["2.0", "3", r#""list-\u0034""#]) {
        assert!(
            text.contains(&format!(r#""id":{id}"#)),
            "replayed with another id than {id}: {text}"
        );
        let names = tool_names("replay", text);
        assert!(
            !names.iter().any(|n| n == "get-env"),
            "the replay listed the hidden get-env: {names:?}"
        );
        assert!(names.iter().any(|n| n == "echo"), "{names:?}");
    }
}
