//! ARCHITECTURE.md §6: a call that policy denies never reaches the upstream, whatever
//! its encoding — duplicate or escaped keys, case and Unicode variants of the
//! tool name or the method, batches, the legacy SSE message endpoint, very
//! large or deeply nested bodies — and bad input gets a clear HTTP and
//! JSON-RPC answer while the sidecar keeps serving.
//!
//! Each attempt goes through `tollgate-sidecar` to a [`Recorder`], which
//! keeps every request it receives: an attempt passes when the client got the
//! expected answer, nothing new reached the recorder (or, in a batch, only
//! the allowed message did), and an allowed call right after still works.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use serde_json::{Value, json};
use tollgate_e2e::legacy_sse::SseClient;
use tollgate_e2e::net::{self, Reply};
use tollgate_e2e::recorder::{Recorded, Recorder, called};
use tollgate_e2e::{Sidecar, sidecar};

const DENY_REASON: &str = "Deleting is not allowed for agents.";
/// `--max-body` of the sidecars here.
const MAX_BODY: usize = 64 * 1024;
/// SHA-256 of `test`, the grant token of [`bundle_with_grants`].
const TEST_TOKEN_SHA256: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

/// Default allow, `delete_*` denied, `debug_*` hidden.
fn policy() -> Value {
    json!({
        "version": "1",
        "default": "allow",
        "hide": ["debug_*"],
        "tools": { "delete_*": { "action": "deny", "reason": DENY_REASON } }
    })
}

/// A recorder behind a sidecar enforcing `policy` (`/mcp` → the recorder's
/// Streamable HTTP endpoint).
struct Setup {
    // Declared first so the sidecar stops before the recorder.
    sidecar: Sidecar,
    recorder: Recorder,
}

fn setup(policy: &Value) -> Setup {
    let recorder = Recorder::start();
    let sidecar = sidecar::builder()
        .upstream(recorder.url())
        .policy(policy)
        .arg("--max-body")
        .arg(MAX_BODY.to_string())
        .start();
    Setup { sidecar, recorder }
}

/// A `tools/call` body with id 7 whose `name` is the raw JSON text `name_json`.
fn call_body(name_json: &str) -> String {
    format!(
        r#"{{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{{"name":{name_json},"arguments":{{"message":"hi"}}}}}}"#
    )
}

/// A JSON value nested `depth` objects deep.
fn nested(depth: usize) -> String {
    format!("{}1{}", r#"{"a":"#.repeat(depth), "}".repeat(depth))
}

/// Extra request headers.
type Headers<'a> = &'a [(&'a str, &'a str)];

/// POSTs `body` as JSON to the sidecar's `path`.
fn post(addr: SocketAddr, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Reply {
    let mut all = vec![
        ("Content-Type", "application/json"),
        ("Accept", "application/json, text/event-stream"),
    ];
    all.extend_from_slice(headers);
    net::request(addr, "POST", path, &all, Some(body))
        .unwrap_or_else(|e| panic!("POST {path} to the sidecar: {e}"))
}

/// The reply's body as one JSON-RPC message (or batch).
fn json_of(label: &str, reply: &Reply) -> Value {
    serde_json::from_slice(&reply.body).unwrap_or_else(|e| {
        panic!(
            "{label}: the reply ({}) is not JSON ({e}): {}",
            reply.status,
            reply.text()
        )
    })
}

/// What a client must get for an attempt.
#[derive(Debug, Clone, Copy)]
enum Expect {
    /// HTTP 200 and an `isError` result: `Denied by policy: <DENY_REASON>`.
    Denied,
    /// HTTP 200 and the JSON-RPC error `-32602 Unknown tool: …`.
    Hidden,
    /// This HTTP status and JSON-RPC error code.
    Error(u16, i64),
}

/// Checks one JSON-RPC answer that came with HTTP `status`.
fn check_answer(label: &str, expect: Expect, status: u16, msg: &Value) {
    match expect {
        Expect::Denied => {
            assert_eq!(status, 200, "{label}: {msg}");
            assert_eq!(msg["result"]["isError"], json!(true), "{label}: {msg}");
            assert_eq!(
                msg["result"]["content"][0]["text"],
                json!(format!("Denied by policy: {DENY_REASON}")),
                "{label}: {msg}"
            );
            assert_eq!(
                msg["result"]["_meta"]["tollgate/decision"]["decision"],
                json!("deny"),
                "{label}: {msg}"
            );
        }
        Expect::Hidden => {
            assert_eq!(status, 200, "{label}: {msg}");
            assert!(msg.get("result").is_none(), "{label}: {msg}");
            assert_eq!(msg["error"]["code"], json!(-32602), "{label}: {msg}");
            assert!(
                msg["error"]["message"]
                    .as_str()
                    .is_some_and(|m| m.starts_with("Unknown tool: ")),
                "{label}: {msg}"
            );
        }
        Expect::Error(want_status, code) => {
            assert_eq!(status, want_status, "{label}: {msg}");
            assert!(msg.get("result").is_none(), "{label}: {msg}");
            assert_eq!(msg["error"]["code"], json!(code), "{label}: {msg}");
            assert!(
                msg["error"]["message"]
                    .as_str()
                    .is_some_and(|m| !m.is_empty()),
                "{label}: an error without a message: {msg}"
            );
        }
    }
}

/// Asserts nothing reached the recorder since `mark`.
fn assert_nothing_reached(label: &str, recorder: &Recorder, mark: usize) {
    let reached: Vec<String> = recorder
        .since(mark)
        .iter()
        .map(|r| format!("{} {} {}", r.method, r.target, r.text()))
        .collect();
    assert!(
        reached.is_empty(),
        "{label}: reached the upstream:\n{}",
        reached.join("\n")
    );
}

/// An allowed `echo` through the sidecar reaches the upstream and comes
/// back: the sidecar still serves.
fn allowed_call_works(label: &str, s: &mut Setup) {
    s.sidecar.process().assert_running();
    let mark = s.recorder.count();
    let reply = post(
        s.sidecar.listen,
        "/mcp",
        &[],
        call_body(r#""echo""#).as_bytes(),
    );
    let msg = json_of(label, &reply);
    assert_eq!(reply.status, 200, "{label}, then echo: {msg}");
    assert_eq!(
        msg["result"]["content"][0]["text"],
        json!(called("echo")),
        "{label}, then echo: {msg}"
    );
    let calls: Vec<String> = s
        .recorder
        .since(mark)
        .iter()
        .flat_map(Recorded::tool_calls)
        .collect();
    assert_eq!(calls, ["echo"], "{label}, then echo");
}

/// One attempt on the Streamable HTTP endpoint.
fn attempt(s: &mut Setup, label: &str, headers: &[(&str, &str)], body: &[u8], expect: Expect) {
    let mark = s.recorder.count();
    let reply = post(s.sidecar.listen, "/mcp", headers, body);
    let msg = json_of(label, &reply);
    check_answer(label, expect, reply.status, &msg);
    if !matches!(expect, Expect::Error(..)) {
        assert_eq!(msg["id"], json!(7), "{label}: the answer's id: {msg}");
    }
    assert_nothing_reached(label, &s.recorder, mark);
    allowed_call_works(label, s);
}

#[test]
fn a_denied_call_never_reaches_the_upstream_whatever_its_encoding() {
    let mut s = setup(&policy());
    use Expect::{Denied, Error, Hidden};
    let call = call_body;
    #[rustfmt::skip]
    let cases: &[(&str, &str, Expect)] = &[
        // Duplicate keys: parsers disagree on which one wins, so neither may.
        ("duplicate params.name, allowed first", r#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"echo","name":"delete_x"}}"#, Error(400, -32600)),
        ("duplicate params.name, denied first", r#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"delete_x","name":"echo"}}"#, Error(400, -32600)),
        ("duplicate method, tools/call last", r#"{"jsonrpc":"2.0","id":7,"method":"tools/list","method":"tools/call","params":{"name":"delete_x"}}"#, Error(400, -32600)),
        ("duplicate method, tools/call first", r#"{"jsonrpc":"2.0","id":7,"method":"tools/call","method":"ping","params":{"name":"delete_x"}}"#, Error(400, -32600)),
        ("duplicate params", r#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"echo"},"params":{"name":"delete_x"}}"#, Error(400, -32600)),
        // The same duplicates with an escaped key.
        (r#"escaped duplicate "n\u0061me""#, r#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"echo","n\u0061me":"delete_x"}}"#, Error(400, -32600)),
        (r#"escaped duplicate "m\u0065thod""#, r#"{"jsonrpc":"2.0","id":7,"method":"ping","m\u0065thod":"tools/call","params":{"name":"delete_x"}}"#, Error(400, -32600)),
        (r#"escaped duplicate "p\u0061rams""#, r#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"echo"},"p\u0061rams":{"name":"delete_x"}}"#, Error(400, -32600)),
        // Escapes and case in the name: judged as the upstream reads it.
        (r#"Unicode-escaped name "\u0064elete_x""#, &call(r#""\u0064elete_x""#), Denied),
        ("fully escaped name", &call(r#""\u0064\u0065\u006c\u0065\u0074\u0065\u005f\u0078""#), Denied),
        ("upper-case name DELETE_X", &call(r#""DELETE_X""#), Denied),
        ("mixed-case name Delete_X", &call(r#""Delete_X""#), Denied),
        // Escapes and case in the method.
        ("method Tools/Call", r#"{"jsonrpc":"2.0","id":7,"method":"Tools/Call","params":{"name":"delete_x"}}"#, Denied),
        ("method TOOLS/CALL, name DELETE_X", r#"{"jsonrpc":"2.0","id":7,"method":"TOOLS/CALL","params":{"name":"DELETE_X"}}"#, Denied),
        (r#"escaped method "tools\/call""#, r#"{"jsonrpc":"2.0","id":7,"method":"tools\/call","params":{"name":"delete_x"}}"#, Denied),
        (r#"Unicode-escaped method "\u0074ools/call""#, r#"{"jsonrpc":"2.0","id":7,"method":"\u0074ools/call","params":{"name":"delete_x"}}"#, Denied),
        // Hidden tools, however spelled, are unknown.
        ("hidden debug_x", &call(r#""debug_x""#), Hidden),
        ("hidden DEBUG_X", &call(r#""DEBUG_X""#), Hidden),
        (r#"hidden "\u0064ebug_x""#, &call(r#""\u0064ebug_x""#), Hidden),
    ];
    for (label, body, expect) in cases {
        attempt(&mut s, label, &[], body.as_bytes(), *expect);
    }

    // A tools/call notification (no id) is judged too; it may be answered
    // (an isError result) or just accepted, but never forwarded.
    let label = "denied call as a notification";
    let mark = s.recorder.count();
    let reply = post(
        s.sidecar.listen,
        "/mcp",
        &[],
        br#"{"jsonrpc":"2.0","method":"tools/call","params":{"name":"delete_x"}}"#,
    );
    match reply.status {
        202 => {}
        _ => check_answer(label, Denied, reply.status, &json_of(label, &reply)),
    }
    assert_nothing_reached(label, &s.recorder, mark);
    allowed_call_works(label, &mut s);
}

#[test]
fn headers_that_disagree_with_the_body_are_refused() {
    let mut s = setup(&policy());
    let denied = call_body(r#""delete_x""#);
    let allowed = call_body(r#""echo""#);
    #[rustfmt::skip]
    let cases: &[(&str, Headers<'_>, &str)] = &[
        ("Mcp-Name echo, body delete_x", &[("Mcp-Name", "echo")], &denied),
        ("Mcp-Name delete_x, body echo", &[("Mcp-Name", "delete_x")], &allowed),
        ("Mcp-Method tools/list, body tools/call delete_x", &[("Mcp-Method", "tools/list")], &denied),
    ];
    for (label, headers, body) in cases {
        attempt(
            &mut s,
            label,
            headers,
            body.as_bytes(),
            Expect::Error(400, -32020),
        );
    }
}

#[test]
fn bodies_that_cannot_be_read_safely_are_refused() {
    let mut s = setup(&policy());
    let echo = call_body(r#""echo""#);
    let deep_args = |name: &str| {
        format!(
            r#"{{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{{"name":"{name}","arguments":{}}}}}"#,
            nested(200)
        )
    };
    let oversized = format!(
        r#"{{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{{"name":"echo","arguments":{{"pad":"{}"}}}}}}"#,
        "x".repeat(MAX_BODY + 1)
    );
    let (unreadable, not_rpc, too_large) = (
        Expect::Error(400, -32700),
        Expect::Error(400, -32600),
        Expect::Error(413, -32600),
    );
    #[rustfmt::skip]
    let cases: Vec<(&str, String, Expect)> = vec![
        ("malformed JSON", r#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"delete_x""#.into(), unreadable),
        ("an allowed call, then a denied one, unframed", format!("{echo}{}", call_body(r#""delete_x""#)), unreadable),
        ("a byte-order mark before a denied call", format!("\u{feff}{}", call_body(r#""delete_x""#)), unreadable),
        ("an empty body", String::new(), unreadable),
        ("a JSON string, not a message", r#""tools/call""#.into(), not_rpc),
        ("an empty batch", "[]".into(), not_rpc),
        ("deeply nested arguments of an allowed tool", deep_args("echo"), not_rpc),
        ("deeply nested arguments of a denied tool", deep_args("delete_x"), not_rpc),
        ("a body over --max-body", oversized, too_large),
    ];
    for (label, body, expect) in &cases {
        attempt(&mut s, label, &[], body.as_bytes(), *expect);
    }

    // Over --max-body without a Content-Length: a chunked body is cut off
    // while it is read.
    let label = "a chunked body over --max-body";
    let mark = s.recorder.count();
    let pad = "x".repeat(MAX_BODY);
    let chunks = [
        r#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"echo","arguments":{"pad":""#,
        pad.as_str(),
        r#""}}}"#,
    ];
    let (status, body) = post_chunked(s.sidecar.listen, "/mcp", &chunks);
    let msg: Value = serde_json::from_slice(&body).unwrap_or_else(|e| {
        panic!(
            "{label}: not JSON ({e}): {}",
            String::from_utf8_lossy(&body)
        )
    });
    check_answer(label, Expect::Error(413, -32600), status, &msg);
    assert_nothing_reached(label, &s.recorder, mark);
    allowed_call_works(label, &mut s);

    // A denied name split across chunks is judged on the whole body.
    let label = "a denied call split across chunks";
    let mark = s.recorder.count();
    let chunks = [
        r#"{"jsonrpc":"2.0","id":7,"method":"tools/ca"#,
        r#"ll","params":{"name":"del"#,
        r#"ete_x","arguments":{}}}"#,
    ];
    let (status, body) = post_chunked(s.sidecar.listen, "/mcp", &chunks);
    let msg: Value = serde_json::from_slice(&body).unwrap_or_else(|e| panic!("{label}: {e}"));
    check_answer(label, Expect::Denied, status, &msg);
    assert_nothing_reached(label, &s.recorder, mark);

    // An allowed one reaches the upstream whole.
    let label = "an allowed call split across chunks";
    let mark = s.recorder.count();
    let chunks = [
        r#"{"jsonrpc":"2.0","id":8,"method":"tools/call","params":{"na"#,
        r#"me":"echo","arguments":{"message":"in "#,
        r#"three parts"}}}"#,
    ];
    let (status, body) = post_chunked(s.sidecar.listen, "/mcp", &chunks);
    let msg: Value = serde_json::from_slice(&body).unwrap_or_else(|e| panic!("{label}: {e}"));
    assert_eq!(status, 200, "{label}: {msg}");
    assert_eq!(
        msg["result"]["content"][0]["text"],
        json!(called("echo")),
        "{label}: {msg}"
    );
    let reached = s.recorder.since(mark);
    assert_eq!(reached.len(), 1, "{label}");
    assert_eq!(
        reached[0].messages(),
        vec![json!({"jsonrpc": "2.0", "id": 8, "method": "tools/call",
                    "params": {"name": "echo", "arguments": {"message": "in three parts"}}})],
        "{label}"
    );
}

/// POSTs a chunked body; returns the status and the reply's body (read up to
/// its `Content-Length`, as the sidecar may close without reading the rest).
fn post_chunked(addr: SocketAddr, path: &str, chunks: &[&str]) -> (u16, Vec<u8>) {
    let mut stream = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap_or_else(|e| panic!("{e}"));
    let mut out = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Accept: application/json, text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    .into_bytes();
    for c in chunks {
        out.extend_from_slice(format!("{:x}\r\n{c}\r\n", c.len()).as_bytes());
    }
    out.extend_from_slice(b"0\r\n\r\n");
    // The sidecar may answer and close before it has read everything.
    let _ = stream.write_all(&out);
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader
        .read_line(&mut line)
        .unwrap_or_else(|e| panic!("reading the status line: {e}"));
    let status = line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line: {line:?}"));
    let mut length = 0;
    loop {
        line.clear();
        reader
            .read_line(&mut line)
            .unwrap_or_else(|e| panic!("reading headers: {e}"));
        let l = line.trim();
        if l.is_empty() {
            break;
        }
        if let Some((n, v)) = l.split_once(':')
            && n.eq_ignore_ascii_case("content-length")
        {
            length = v.trim().parse().unwrap_or(0);
        }
    }
    let mut body = vec![0; length];
    reader
        .read_exact(&mut body)
        .unwrap_or_else(|e| panic!("reading the body: {e}"));
    (status, body)
}

/// The answer with this id in a batch reply.
fn by_id<'a>(label: &str, batch: &'a Value, id: i64) -> &'a Value {
    batch
        .as_array()
        .and_then(|items| items.iter().find(|m| m["id"] == json!(id)))
        .unwrap_or_else(|| panic!("{label}: no answer with id {id} in {batch}"))
}

#[test]
fn a_denied_call_in_a_batch_never_reaches_the_upstream() {
    let mut s = setup(&policy());
    let call = |id: u32, name: &str| {
        format!(
            r#"{{"jsonrpc":"2.0","id":{id},"method":"tools/call","params":{{"name":{name},"arguments":{{}}}}}}"#
        )
    };

    // Allowed and denied together: only the allowed message goes upstream.
    for (label, denied) in [
        ("batch: echo and delete_x", r#""delete_x""#),
        ("batch: echo and DELETE_X", r#""DELETE_X""#),
        (r#"batch: echo and "\u0064elete_x""#, r#""\u0064elete_x""#),
    ] {
        let mark = s.recorder.count();
        let body = format!("[{},{}]", call(1, r#""echo""#), call(2, denied));
        let reply = post(s.sidecar.listen, "/mcp", &[], body.as_bytes());
        let batch = json_of(label, &reply);
        assert_eq!(reply.status, 200, "{label}: {batch}");
        assert_eq!(
            by_id(label, &batch, 1)["result"]["content"][0]["text"],
            json!(called("echo")),
            "{label}: {batch}"
        );
        check_answer(label, Expect::Denied, 200, by_id(label, &batch, 2));
        let reached = s.recorder.since(mark);
        assert_eq!(reached.len(), 1, "{label}: {reached:?}");
        let forwarded = &reached[0];
        assert_eq!(forwarded.tool_calls(), ["echo"], "{label}: {forwarded:?}");
        assert_eq!(forwarded.messages().len(), 1, "{label}: {forwarded:?}");
        let text = forwarded.text().to_ascii_lowercase();
        assert!(
            !text.contains("delete") && !text.contains(r"\u0064"),
            "{label}: the forwarded batch mentions the denied call: {}",
            forwarded.text()
        );
        allowed_call_works(label, &mut s);
    }

    // Allowed and hidden together.
    let label = "batch: echo and debug_x";
    let mark = s.recorder.count();
    let body = format!("[{},{}]", call(1, r#""echo""#), call(2, r#""debug_x""#));
    let reply = post(s.sidecar.listen, "/mcp", &[], body.as_bytes());
    let batch = json_of(label, &reply);
    check_answer(label, Expect::Hidden, reply.status, by_id(label, &batch, 2));
    let calls: Vec<String> = s
        .recorder
        .since(mark)
        .iter()
        .flat_map(Recorded::tool_calls)
        .collect();
    assert_eq!(calls, ["echo"], "{label}");

    // Every message refused: nothing is forwarded at all.
    let label = "batch: only refused calls";
    let mark = s.recorder.count();
    let body = format!(
        "[{},{},{}]",
        call(1, r#""delete_x""#),
        call(2, r#""Delete_X""#),
        call(3, r#""debug_x""#)
    );
    let reply = post(s.sidecar.listen, "/mcp", &[], body.as_bytes());
    let batch = json_of(label, &reply);
    check_answer(label, Expect::Denied, reply.status, by_id(label, &batch, 1));
    check_answer(label, Expect::Denied, reply.status, by_id(label, &batch, 2));
    check_answer(label, Expect::Hidden, reply.status, by_id(label, &batch, 3));
    assert_nothing_reached(label, &s.recorder, mark);
    allowed_call_works(label, &mut s);

    // One unreadable message refuses the whole batch, the allowed call too.
    for (label, bad) in [
        (
            "batch: echo and a duplicate name",
            r#"{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"echo","name":"delete_x"}}"#
                .to_owned(),
        ),
        (
            "batch: echo and a duplicate method",
            r#"{"jsonrpc":"2.0","id":2,"method":"ping","method":"tools/call","params":{"name":"delete_x"}}"#
                .to_owned(),
        ),
        (
            "batch: echo and deeply nested arguments",
            format!(
                r#"{{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{{"name":"echo","arguments":{}}}}}"#,
                nested(200)
            ),
        ),
    ] {
        let mark = s.recorder.count();
        let body = format!("[{},{bad}]", call(1, r#""echo""#));
        let reply = post(s.sidecar.listen, "/mcp", &[], body.as_bytes());
        check_answer(
            label,
            Expect::Error(400, -32600),
            reply.status,
            &json_of(label, &reply),
        );
        assert_nothing_reached(label, &s.recorder, mark);
        allowed_call_works(label, &mut s);
    }
}

#[test]
fn a_denied_call_never_reaches_the_upstream_over_legacy_sse() {
    let recorder = Recorder::start();
    let mut sidecar = sidecar::builder()
        .upstream(format!("ev=sse:{}", recorder.sse_url()))
        .policy(&policy())
        .start();
    let mut sse = SseClient::open(sidecar.listen, "/mcp/ev/sse", &[]);
    assert!(
        sse.endpoint.starts_with("/mcp/ev/message?"),
        "the endpoint event names {:?}, not the sidecar's own message endpoint",
        sse.endpoint
    );
    let endpoint = sse.endpoint.clone();
    let upstream_posts = |recorder: &Recorder, mark: usize| -> Vec<Recorded> {
        recorder
            .since(mark)
            .into_iter()
            .filter(|r| r.method == "POST")
            .collect()
    };
    let mut next_id = 100;
    let mut call = |name: &str| {
        next_id += 1;
        (
            next_id,
            format!(
                r#"{{"jsonrpc":"2.0","id":{next_id},"method":"tools/call","params":{{"name":{name},"arguments":{{}}}}}}"#
            ),
        )
    };
    let echo_works = |sse: &mut SseClient, sidecar: &mut Sidecar, label: &str, id: i64| {
        sidecar.process().assert_running();
        let mark = recorder.count();
        let body = format!(
            r#"{{"jsonrpc":"2.0","id":{id},"method":"tools/call","params":{{"name":"echo","arguments":{{}}}}}}"#
        );
        let reply = post(sidecar.listen, &endpoint, &[], body.as_bytes());
        assert_eq!(reply.status, 202, "{label}, then echo: {}", reply.text());
        let msg = sse.answer(label, id);
        assert_eq!(
            msg["result"]["content"][0]["text"],
            json!(called("echo")),
            "{label}, then echo: {msg}"
        );
        let calls: Vec<String> = upstream_posts(&recorder, mark)
            .iter()
            .flat_map(Recorded::tool_calls)
            .collect();
        assert_eq!(calls, ["echo"], "{label}, then echo");
    };

    // Refused by policy: 202 for the POST, the answer on the stream.
    #[rustfmt::skip]
    let refused = [
        ("legacy: delete_x", r#""delete_x""#, Expect::Denied),
        ("legacy: DELETE_X", r#""DELETE_X""#, Expect::Denied),
        (r#"legacy: "\u0064elete_x""#, r#""\u0064elete_x""#, Expect::Denied),
        ("legacy: hidden debug_x", r#""debug_x""#, Expect::Hidden),
    ];
    for (i, (label, name, expect)) in refused.into_iter().enumerate() {
        let mark = recorder.count();
        let (id, body) = call(name);
        let reply = post(sidecar.listen, &endpoint, &[], body.as_bytes());
        assert_eq!(reply.status, 202, "{label}: {}", reply.text());
        let msg = sse.answer(label, id);
        check_answer(label, expect, 200, &msg);
        assert_nothing_reached(label, &recorder, mark);
        echo_works(&mut sse, &mut sidecar, label, 1000 + i as i64);
    }

    // A denied call in a batch: the allowed one is forwarded alone.
    let label = "legacy: batch of echo and delete_x";
    let mark = recorder.count();
    let (echo_id, echo) = call(r#""echo""#);
    let (denied_id, denied) = call(r#""delete_x""#);
    let reply = post(
        sidecar.listen,
        &endpoint,
        &[],
        format!("[{echo},{denied}]").as_bytes(),
    );
    assert!(
        reply.status == 200 || reply.status == 202,
        "{label}: {} {}",
        reply.status,
        reply.text()
    );
    check_answer(label, Expect::Denied, 200, &sse.answer(label, denied_id));
    assert_eq!(
        sse.answer(label, echo_id)["result"]["content"][0]["text"],
        json!(called("echo")),
        "{label}"
    );
    let posts = upstream_posts(&recorder, mark);
    assert_eq!(posts.len(), 1, "{label}: {posts:?}");
    assert_eq!(posts[0].tool_calls(), ["echo"], "{label}: {posts:?}");
    assert!(
        !posts[0].text().to_ascii_lowercase().contains("delete"),
        "{label}: {}",
        posts[0].text()
    );

    // Unreadable bodies and disagreeing headers: an HTTP error, nothing forwarded.
    let (_, dup) = call(r#""echo","name":"delete_x""#);
    let (_, denied) = call(r#""delete_x""#);
    let deep = format!(
        r#"{{"jsonrpc":"2.0","id":5,"method":"tools/call","params":{{"name":"echo","arguments":{}}}}}"#,
        nested(200)
    );
    let malformed = r#"{"jsonrpc":"2.0","id":5,"method":"tools/call","params":{"name":"delete_x""#;
    #[rustfmt::skip]
    let errors: [(&str, Headers<'_>, &str, Expect); 4] = [
        ("legacy: duplicate name", &[], &dup, Expect::Error(400, -32600)),
        ("legacy: deeply nested arguments", &[], &deep, Expect::Error(400, -32600)),
        ("legacy: malformed JSON", &[], malformed, Expect::Error(400, -32700)),
        ("legacy: Mcp-Name disagrees", &[("Mcp-Name", "echo")], &denied, Expect::Error(400, -32020)),
    ];
    for (i, (label, headers, body, expect)) in errors.into_iter().enumerate() {
        let mark = recorder.count();
        let reply = post(sidecar.listen, &endpoint, headers, body.as_bytes());
        check_answer(label, expect, reply.status, &json_of(label, &reply));
        assert_nothing_reached(label, &recorder, mark);
        echo_works(&mut sse, &mut sidecar, label, 2000 + i as i64);
    }

    // A message endpoint of no open session is refused.
    let label = "legacy: unknown session";
    let mark = recorder.count();
    let reply = post(
        sidecar.listen,
        "/mcp/ev/message?tg=nosuchsession",
        &[],
        call(r#""delete_x""#).1.as_bytes(),
    );
    check_answer(
        label,
        Expect::Error(404, -32600),
        reply.status,
        &json_of(label, &reply),
    );
    assert_nothing_reached(label, &recorder, mark);

    // Over the whole run, the upstream saw echo calls only.
    let every_call: Vec<String> = recorder
        .requests()
        .iter()
        .flat_map(Recorded::tool_calls)
        .collect();
    assert!(
        every_call.iter().all(|n| n == "echo"),
        "the upstream received {every_call:?}"
    );
}

/// [`policy`] for servers `rec` and `ev`, and one grant, token `test`.
fn bundle_with_grants() -> Value {
    json!({
        "servers": { "rec": policy(), "ev": policy() },
        "grants": { "ci": { "token_sha256": TEST_TOKEN_SHA256, "labels": { "team": "qa" } } }
    })
}

#[test]
fn with_grants_a_token_is_required_and_never_forwarded() {
    let recorder = Recorder::start();
    let mut sidecar = sidecar::builder()
        .upstream(format!("rec={}", recorder.url()))
        .upstream(format!("ev=sse:{}", recorder.sse_url()))
        .policy(&bundle_with_grants())
        .start();
    let echo = call_body(r#""echo""#);
    let denied = call_body(r#""delete_x""#);

    // No token, or one no grant has: 401, whatever the call.
    #[rustfmt::skip]
    let cases: [(&str, Headers<'_>, &str); 4] = [
        ("no token, echo", &[], &echo),
        ("no token, delete_x", &[], &denied),
        ("unknown token, echo", &[("Authorization", "Bearer not-the-token")], &echo),
        ("an empty bearer token, echo", &[("Authorization", "Bearer ")], &echo),
    ];
    for (label, headers, body) in cases {
        let mark = recorder.count();
        let reply = post(sidecar.listen, "/mcp/rec", headers, body.as_bytes());
        check_answer(
            label,
            Expect::Error(401, -32011),
            reply.status,
            &json_of(label, &reply),
        );
        assert_nothing_reached(label, &recorder, mark);
    }

    // The grant's token: allowed, and the token stays with the sidecar.
    let auth = [("Authorization", "Bearer test")];
    let label = "the grant's token, echo";
    let mark = recorder.count();
    let reply = post(sidecar.listen, "/mcp/rec", &auth, echo.as_bytes());
    let msg = json_of(label, &reply);
    assert_eq!(reply.status, 200, "{label}: {msg}");
    assert_eq!(
        msg["result"]["content"][0]["text"],
        json!(called("echo")),
        "{label}: {msg}"
    );
    let label = "the grant's token, delete_x";
    let reply = post(sidecar.listen, "/mcp/rec", &auth, denied.as_bytes());
    check_answer(label, Expect::Denied, reply.status, &json_of(label, &reply));

    // A GET on the Streamable HTTP endpoint is passed through, without the token.
    let reply = net::request(
        sidecar.listen,
        "GET",
        "/mcp/rec",
        &[("Accept", "text/event-stream"), auth[0]],
        None,
    )
    .unwrap_or_else(|e| panic!("GET /mcp/rec: {e}"));
    assert_eq!(
        reply.status,
        405,
        "the recorder's answer to GET: {}",
        reply.text()
    );
    let unauthenticated_get = net::request(
        sidecar.listen,
        "GET",
        "/mcp/rec",
        &[("Accept", "text/event-stream")],
        None,
    )
    .unwrap_or_else(|e| panic!("GET /mcp/rec: {e}"));
    assert_eq!(unauthenticated_get.status, 401, "GET without a token");

    // The legacy transport: the stream and its messages need the token too.
    let mark_sse = recorder.count();
    let without = net::request(
        sidecar.listen,
        "GET",
        "/mcp/ev/sse",
        &[("Accept", "text/event-stream")],
        None,
    )
    .unwrap_or_else(|e| panic!("GET /mcp/ev/sse: {e}"));
    assert_eq!(without.status, 401, "legacy stream without a token");
    assert_nothing_reached("legacy stream without a token", &recorder, mark_sse);
    let mut sse = SseClient::open(sidecar.listen, "/mcp/ev/sse", &auth);
    let endpoint = sse.endpoint.clone();
    let label = "legacy message without a token";
    let before = recorder.count();
    let reply = post(sidecar.listen, &endpoint, &[], denied.as_bytes());
    check_answer(
        label,
        Expect::Error(401, -32011),
        reply.status,
        &json_of(label, &reply),
    );
    assert_nothing_reached(label, &recorder, before);
    let reply = post(sidecar.listen, &endpoint, &auth, echo.as_bytes());
    assert_eq!(reply.status, 202, "legacy echo with the token");
    assert_eq!(
        sse.answer("legacy echo with the token", 7)["result"]["content"][0]["text"],
        json!(called("echo"))
    );

    let reached = recorder.since(mark);
    assert!(
        reached
            .iter()
            .any(|r| r.method == "GET" && r.target == "/mcp"),
        "the GET was not passed through: {reached:?}"
    );
    assert!(
        reached
            .iter()
            .any(|r| r.method == "POST" && r.target.starts_with("/message?")),
        "the legacy message was not passed through: {reached:?}"
    );
    for r in &reached {
        assert_eq!(
            r.header("authorization"),
            None,
            "the grant token reached the upstream: {} {}",
            r.method,
            r.target
        );
        assert!(
            !r.headers.iter().any(|(_, v)| v.contains("Bearer test")),
            "the grant token reached the upstream in another header: {r:?}"
        );
    }
    let calls: Vec<String> = reached.iter().flat_map(Recorded::tool_calls).collect();
    assert_eq!(calls, ["echo", "echo"], "{reached:?}");
    sidecar.process().assert_running();
}

#[test]
fn without_grants_the_authorization_header_is_the_upstreams() {
    let s = setup(&policy());
    let mark = s.recorder.count();
    let reply = post(
        s.sidecar.listen,
        "/mcp",
        &[("Authorization", "Bearer for-the-upstream")],
        call_body(r#""echo""#).as_bytes(),
    );
    assert_eq!(reply.status, 200, "{}", reply.text());
    let reached = s.recorder.since(mark);
    assert_eq!(reached.len(), 1, "{reached:?}");
    assert_eq!(
        reached[0].header("authorization"),
        Some("Bearer for-the-upstream"),
        "with no grants configured the sidecar must pass Authorization through: {:?}",
        reached[0].headers
    );
}

/// Only POST bodies on the MCP endpoint are judged, so no other request may
/// carry a body to the upstream: a `tools/call` in the body of a GET or a
/// DELETE, or POSTed to an OAuth discovery path — which an upstream that
/// resolves dot segments (WHATWG URL parsing, as in Deno, Bun or Workers)
/// routes to its MCP endpoint — must not reach the upstream either.
#[test]
fn a_denied_call_sent_around_the_mcp_endpoint_never_reaches_the_upstream() {
    let mut s = setup(&policy());
    let denied = call_body(r#""delete_x""#);
    let cases = [
        ("GET", "/mcp"),
        ("DELETE", "/mcp"),
        ("POST", "/.well-known/oauth-authorization-server"),
        ("POST", "/.well-known/oauth-protected-resource/mcp"),
        ("POST", "/.well-known/oauth-x/../../mcp"),
        ("POST", "/.well-known/oauth-x/%2e%2e/%2e%2e/mcp"),
    ];
    let mut leaks = Vec::new();
    for (method, path) in cases {
        let mark = s.recorder.count();
        let reply = net::request(
            s.sidecar.listen,
            method,
            path,
            &[
                ("Content-Type", "application/json"),
                ("Accept", "application/json, text/event-stream"),
            ],
            Some(denied.as_bytes()),
        )
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        for r in s.recorder.since(mark) {
            if !r.body.is_empty() {
                leaks.push(format!(
                    "{method} {path} (answered {} {}) reached the upstream as {} {} with body {}",
                    reply.status,
                    reply.text().trim(),
                    r.method,
                    r.target,
                    r.text()
                ));
            }
        }
        allowed_call_works(&format!("{method} {path}"), &mut s);
    }
    assert!(leaks.is_empty(), "{}", leaks.join("\n"));
}
