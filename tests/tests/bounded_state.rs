//! What a caller can make the sidecar keep is bounded: header bytes per
//! request, the length of a session id, and the number of session-scoped
//! limit buckets; a session never shares a bucket with a grant.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tollgate_e2e::controlplane::metric;
use tollgate_e2e::legacy_sse::SseClient;
use tollgate_e2e::net::{self, Reply};
use tollgate_e2e::recorder::Recorder;
use tollgate_e2e::{Sidecar, sidecar};

/// `echo`: one call a minute per session.
fn policy() -> Value {
    json!({
        "version": "1",
        "default": "allow",
        "tools": { "echo": { "limits": [
            { "counter": "echo_per_session", "window": "minute", "max": 1, "scope": "session" }
        ] } }
    })
}

const CALL: &str = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","arguments":{"message":"hi"}}}"#;

fn call(addr: SocketAddr, extra: &[(&str, &str)]) -> std::io::Result<Reply> {
    let mut headers = vec![
        ("Content-Type", "application/json"),
        ("Accept", "application/json, text/event-stream"),
    ];
    headers.extend_from_slice(extra);
    net::request(addr, "POST", "/mcp", &headers, Some(CALL.as_bytes()))
}

fn decision(reply: &Reply) -> String {
    let v: Value = serde_json::from_slice(&reply.body).unwrap_or_default();
    match v["result"]["_meta"]["tollgate/decision"]["decision"].as_str() {
        Some(d) => d.to_owned(),
        None if reply.status == 200 => "allow".to_owned(),
        None => format!("HTTP {}: {}", reply.status, reply.text()),
    }
}

/// The sidecar's peak resident memory, from /proc.
fn peak_rss_kib(sidecar: &mut Sidecar) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", sidecar.process().id()))
        .unwrap_or_else(|e| panic!("reading the sidecar's /proc status: {e}"));
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no VmHWM in {status}"))
}

/// Runs `f(i)` for i in 0..n on 8 threads.
fn in_parallel(n: usize, f: impl Fn(usize) + Sync) {
    std::thread::scope(|s| {
        for t in 0..8 {
            let f = &f;
            s.spawn(move || {
                for i in (t..n).step_by(8) {
                    f(i);
                }
            });
        }
    });
}

#[test]
fn ten_thousand_sessions_with_100_kb_headers_stay_within_64_mib() {
    let recorder = Recorder::start();
    let mut sidecar = sidecar::builder()
        .upstream(recorder.url())
        .policy(&policy())
        .arg("--max-session-buckets")
        .arg("1000")
        .start();
    let addr = sidecar.listen;

    // 10,000 sessions, each request with 100 KB of headers: refused at the
    // header cap (64 KiB), nothing kept.
    let pad = "x".repeat(5_000);
    in_parallel(10_000, |i| {
        let session = format!("big-{i:05}-{}", "s".repeat(200));
        let names: Vec<String> = (0..20).map(|h| format!("X-Pad-{h}")).collect();
        let mut headers: Vec<(&str, &str)> =
            names.iter().map(|n| (n.as_str(), pad.as_str())).collect();
        headers.push(("Mcp-Session-Id", &session));
        // The sidecar may close before the whole head is written.
        if let Ok(reply) = call(addr, &headers) {
            assert_eq!(reply.status, 431, "request {i}: {}", reply.text());
        }
    });
    // 10,000 distinct sessions that each make their one call: all admitted,
    // and at most 1,000 buckets kept.
    in_parallel(10_000, |i| {
        let session = format!("session-{i:05}");
        let reply =
            call(addr, &[("Mcp-Session-Id", &session)]).unwrap_or_else(|e| panic!("call {i}: {e}"));
        assert_eq!(decision(&reply), "allow", "session {i}");
    });
    let rss = peak_rss_kib(&mut sidecar);
    eprintln!("the sidecar's peak RSS after 20,000 sessions: {} KiB", rss);
    assert!(
        rss < 64 * 1024,
        "the sidecar's peak RSS was {} MiB after 10,000 sessions",
        rss / 1024
    );
    // Evictions are reported by the 10 s sweep: the cap of 1,000 is rounded
    // up to 63 buckets in each of 16 shards, so at least 10,000 - 1,008
    // buckets did not fit.
    let name = "tollgate_state_evictions_total{state=\"session_buckets\"}";
    let until = Instant::now() + Duration::from_secs(25);
    loop {
        let text = sidecar.metrics();
        let evicted = if text.lines().any(|l| l.starts_with(name)) {
            metric(&text, name)
        } else {
            0.0
        };
        if evicted >= 8_992.0 {
            break;
        }
        assert!(
            Instant::now() < until,
            "{evicted} session buckets evicted of 10,000 over a cap of 1,000"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    sidecar.process().assert_running();
}

#[test]
fn session_ids_are_bounded_and_never_share_a_bucket_with_a_grant() {
    let recorder = Recorder::start();
    let sidecar = sidecar::builder()
        .upstream(recorder.url())
        .policy(&policy())
        .node_id("pod-7")
        .start();
    let addr = sidecar.listen;
    // Without a session, the call counts per grant (here the node id).
    let reply = call(addr, &[]).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(decision(&reply), "allow");
    let reply = call(addr, &[]).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(decision(&reply), "rate_limited");
    // A session named like the grant has a budget of its own.
    let reply = call(addr, &[("Mcp-Session-Id", "pod-7")]).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        decision(&reply),
        "allow",
        "a session named like the grant shared its bucket"
    );

    // Session ids are 1 to 256 visible ASCII characters.
    let long = "s".repeat(257);
    for bad in [long.as_str(), "two words"] {
        let reply = call(addr, &[("Mcp-Session-Id", bad)]).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(reply.status, 400, "{}", reply.text());
        let v: Value = serde_json::from_slice(&reply.body).unwrap_or_default();
        assert_eq!(v["error"]["code"], json!(-32600), "{v}");
    }
    let longest = "s".repeat(256);
    let reply = call(addr, &[("Mcp-Session-Id", &longest)]).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(decision(&reply), "allow");
}

#[test]
fn legacy_sessions_past_the_cap_are_refused_until_one_closes() {
    let recorder = Recorder::start();
    let sidecar = sidecar::builder()
        .upstream(format!("rec=sse:{}", recorder.sse_url()))
        .policy(&policy())
        .arg("--max-legacy-sessions")
        .arg("2")
        .start();
    let addr = sidecar.listen;
    let first = SseClient::open(addr, "/mcp/rec/sse", &[]);
    let _second = SseClient::open(addr, "/mcp/rec/sse", &[]);
    let third = net::request(
        addr,
        "GET",
        "/mcp/rec/sse",
        &[("Accept", "text/event-stream")],
        None,
    )
    .unwrap_or_else(|e| panic!("GET /mcp/rec/sse: {e}"));
    assert_eq!(third.status, 503, "{}", third.text());
    assert!(
        third.text().contains("--max-legacy-sessions"),
        "{}",
        third.text()
    );
    drop(first);
    // The closed stream's session goes once the sidecar sees it end; then a
    // new stream is served (each probe closes its own stream at once).
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        match stream_status(addr, "/mcp/rec/sse") {
            200 => break,
            503 if Instant::now() < until => std::thread::sleep(Duration::from_millis(100)),
            other => panic!("after one session closed, a new stream got {other}"),
        }
    }
}

/// The status of `GET path` as an SSE stream (the stream is then closed).
fn stream_status(addr: SocketAddr, path: &str) -> u16 {
    use std::io::{BufRead, BufReader, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect: {e}"));
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n\r\n"
    )
    .unwrap_or_else(|e| panic!("GET {path}: {e}"));
    let mut line = String::new();
    let _ = BufReader::new(s).read_line(&mut line);
    line.split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}
