//! Clients that connect and then say nothing, or send their headers or body
//! a little at a time, are cut off at the sidecar's deadlines, and while they
//! wait, allowed calls from other clients are served. Past the connection cap
//! new connections are closed as they are accepted.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tollgate_e2e::controlplane::metric;
use tollgate_e2e::net;
use tollgate_e2e::recorder::Recorder;
use tollgate_e2e::{Sidecar, sidecar};

const CALL: &str = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","arguments":{"message":"hi"}}}"#;

fn policy() -> Value {
    json!({ "version": "1", "default": "allow" })
}

fn allowed_call_works(label: &str, sidecar: &Sidecar, recorder: &Recorder) {
    let mark = recorder.count();
    let reply = net::request(
        sidecar.listen,
        "POST",
        "/mcp",
        &[
            ("Content-Type", "application/json"),
            ("Accept", "application/json, text/event-stream"),
        ],
        Some(CALL.as_bytes()),
    )
    .unwrap_or_else(|e| panic!("{label}: an allowed call failed: {e}"));
    assert_eq!(reply.status, 200, "{label}: {}", reply.text());
    assert!(
        recorder
            .since(mark)
            .iter()
            .any(|r| r.text().contains("echo")),
        "{label}: the allowed call did not reach the upstream"
    );
}

/// Opens a connection and writes `prefix` (possibly nothing) to it.
fn open(addr: SocketAddr, prefix: &str) -> TcpStream {
    let mut s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    if !prefix.is_empty() {
        s.write_all(prefix.as_bytes())
            .unwrap_or_else(|e| panic!("write to {addr}: {e}"));
    }
    s
}

/// Whether the server closed `s` (after any reply) before `deadline`.
fn closed_by(s: &mut TcpStream, deadline: Instant) -> (bool, Vec<u8>) {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return (false, got);
        }
        let _ = s.set_read_timeout(Some(left.min(Duration::from_millis(500))));
        match s.read(&mut buf) {
            Ok(0) => return (true, got),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return (true, got),
        }
    }
}

/// Waits until the sidecar holds at least `n` MCP connections.
fn wait_for_open(sidecar: &Sidecar, n: f64) {
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let open = metric_of(sidecar, "tollgate_connections_open{listener=\"mcp\"}");
        if open >= n {
            return;
        }
        assert!(
            Instant::now() < until,
            "the sidecar holds {open} connections, not {n}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A sample of the sidecar's metrics; 0 before its first value.
fn metric_of(sidecar: &Sidecar, name: &str) -> f64 {
    let text = sidecar.metrics();
    if text.lines().any(|l| l.starts_with(name)) {
        metric(&text, name)
    } else {
        0.0
    }
}

#[test]
fn two_thousand_idle_connections_are_cut_off_while_allowed_calls_are_served() {
    let recorder = Recorder::start();
    let mut sidecar = sidecar::builder()
        .upstream(recorder.url())
        .policy(&policy())
        .arg("--header-timeout-ms")
        .arg("15000")
        .arg("--body-timeout-ms")
        .arg("15000")
        .start();
    let addr = sidecar.listen;
    // Silent, headers begun and never ended, and a body that never comes.
    let partial_head = "POST /mcp HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n";
    let partial_body = format!(
        "POST /mcp HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{}",
        CALL.len(),
        &CALL[..10]
    );
    let started = Instant::now();
    let mut idle: Vec<(&str, TcpStream)> = Vec::new();
    for i in 0..2_000 {
        let (kind, prefix) = match i % 4 {
            0 | 1 => ("silent", ""),
            2 => ("partial headers", partial_head),
            _ => ("partial body", partial_body.as_str()),
        };
        idle.push((kind, open(addr, prefix)));
        if (i + 1) % 250 == 0 {
            // At the pace the listener accepts, so the kernel's accept queue
            // never overflows (a debug build accepts slower than this loop connects).
            wait_for_open(&sidecar, (i + 1) as f64);
        }
    }
    for i in 0..20 {
        allowed_call_works(
            &format!("call {i} among 2,000 idle connections"),
            &sidecar,
            &recorder,
        );
    }

    // Every idle connection is closed by the sidecar soon after its deadline;
    // a body that never arrives is answered 408 first.
    let deadline = started + Duration::from_secs(15 + 20);
    let mut still_open = Vec::new();
    for (i, (kind, s)) in idle.iter_mut().enumerate() {
        let (closed, got) = closed_by(s, deadline);
        if !closed {
            still_open.push((i, *kind));
        }
        if *kind == "partial body" {
            let text = String::from_utf8_lossy(&got);
            assert!(
                text.starts_with("HTTP/1.1 408"),
                "connection {i} ({kind}): {text}"
            );
        }
    }
    assert!(
        still_open.is_empty(),
        "{} idle connections were never closed (first: {:?})",
        still_open.len(),
        &still_open[..still_open.len().min(5)]
    );
    allowed_call_works("after the idle connections", &sidecar, &recorder);
    sidecar.process().assert_running();
}

#[test]
fn connections_past_the_cap_are_closed_as_they_are_accepted() {
    let recorder = Recorder::start();
    let sidecar = sidecar::builder()
        .upstream(recorder.url())
        .policy(&policy())
        .arg("--max-connections")
        .arg("100")
        .start();
    let addr = sidecar.listen;
    let mut held: Vec<TcpStream> = (0..100).map(|_| open(addr, "")).collect();
    // The harness's own probe of the port may have held a slot for a moment
    // and turned one of these away: top up until the sidecar holds 100, and
    // still does a moment later.
    let until = Instant::now() + Duration::from_secs(10);
    let refused =
        |s: &Sidecar| metric_of(s, "tollgate_connections_refused_total{listener=\"mcp\"}");
    let holding = |s: &Sidecar| metric_of(s, "tollgate_connections_open{listener=\"mcp\"}");
    let mut accounted = 100.0;
    let mut steady = 0;
    while steady < 5 {
        let (now, gone) = (holding(&sidecar), refused(&sidecar));
        steady = if now >= 100.0 { steady + 1 } else { 0 };
        if now < 100.0 && now + gone >= accounted {
            held.push(open(addr, ""));
            accounted += 1.0;
        }
        assert!(
            Instant::now() < until,
            "the sidecar holds {now} of 100 connections"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let before = refused(&sidecar);
    let mut extra: Vec<TcpStream> = (0..20).map(|_| open(addr, "")).collect();
    for (i, s) in extra.iter_mut().enumerate() {
        let (closed, _) = closed_by(s, Instant::now() + Duration::from_secs(5));
        assert!(
            closed,
            "connection {} past the cap of 100 was kept open",
            100 + i
        );
    }
    assert_eq!(refused(&sidecar) - before, 20.0);
    held.clear();
    let until = Instant::now() + Duration::from_secs(10);
    while metric_of(&sidecar, "tollgate_connections_open{listener=\"mcp\"}") > 0.0 {
        assert!(
            Instant::now() < until,
            "closed connections were still counted open"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    allowed_call_works("once the held connections closed", &sidecar, &recorder);
}
