//! The sidecar's behaviour at its edges, as a whole binary: before any valid
//! policy it denies every call and is not ready; an unreachable upstream is a
//! 502 naming the server; an invalid policy file keeps the last good one;
//! unknown paths and methods get clear errors; decisions are counted per tool.

use serde_json::{Value, json};
use tollgate_e2e::net::{self, Reply, free_addr};
use tollgate_e2e::sidecar;

const CALL: &str = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","arguments":{"message":"hi"}}}"#;

fn post(addr: std::net::SocketAddr, path: &str, body: &str) -> Reply {
    net::request(
        addr,
        "POST",
        path,
        &[
            ("content-type", "application/json"),
            ("accept", "application/json, text/event-stream"),
        ],
        Some(body.as_bytes()),
    )
    .unwrap_or_else(|e| panic!("POST {path}: {e}"))
}

fn json_of(r: &Reply) -> Value {
    serde_json::from_slice(&r.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", r.text()))
}

#[test]
fn without_a_valid_policy_every_call_is_denied_and_not_ready() {
    // The upstream is never contacted: nothing listens there.
    let nowhere = free_addr();
    let mut sc = sidecar::builder()
        .upstream(format!("http://{nowhere}/mcp"))
        .start();
    let ready = net::get(sc.admin, "/readyz").unwrap();
    assert_eq!(ready.status, 503, "{}", ready.text());
    assert!(ready.text().contains("no valid policy"), "{}", ready.text());

    let r = post(sc.listen, "/mcp", CALL);
    assert_eq!(r.status, 200, "{}", r.text());
    let v = json_of(&r);
    assert_eq!(v["id"], 1);
    assert_eq!(v["result"]["isError"], true, "{v}");
    assert_eq!(
        v["result"]["_meta"]["tollgate/decision"]["rule"],
        "(no policy loaded)"
    );

    // An invalid policy still leaves it unready.
    std::fs::write(
        &sc.policy_path,
        r#"{"version": "1", "default": "allow", "tools": {"x": {"limts": []}}}"#,
    )
    .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1500));
    assert_eq!(net::get(sc.admin, "/readyz").unwrap().status, 503);
    sc.process().assert_running();
}

#[test]
fn an_unreachable_upstream_is_a_502_naming_the_server() {
    let nowhere = free_addr();
    let sc = sidecar::builder()
        .upstream(format!("billing=http://{nowhere}/mcp"))
        .policy(&json!({"version": "1", "default": "allow"}))
        .start();
    let r = post(sc.listen, "/mcp/billing", CALL);
    assert_eq!(r.status, 502, "{}", r.text());
    let v = json_of(&r);
    assert_eq!(v["id"], 1);
    let message = v["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("upstream server `billing`"), "{message}");
    assert!(message.contains(&nowhere.to_string()), "{message}");
    assert!(
        sc.metrics()
            .contains("tollgate_upstream_errors_total{server=\"billing\"} 1"),
        "{}",
        sc.metrics()
    );
}

#[test]
fn routes_and_methods_are_answered_clearly() {
    let nowhere = free_addr();
    let sc = sidecar::builder()
        .upstream(format!("a=http://{nowhere}/mcp"))
        .policy(&json!({"version": "1", "default": "allow"}))
        .start();
    let r = post(sc.listen, "/mcp/nope", CALL);
    assert_eq!(r.status, 404);
    assert!(
        json_of(&r)["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("/mcp/a"),
        "{}",
        r.text()
    );
    let r = net::request(sc.listen, "PUT", "/mcp/a", &[], Some(b"{}")).unwrap();
    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow"), Some("GET, POST, DELETE"));
    let r = net::get(sc.admin, "/healthz").unwrap();
    assert_eq!((r.status, r.text().as_str()), (200, "ok\n"));
}

#[test]
fn decisions_are_counted_by_server_tool_and_outcome() {
    let up = tollgate_e2e::recorder::Recorder::start();
    let sc = sidecar::builder()
        .upstream(format!("books={}", up.url()))
        .policy(
            &json!({"version": "1", "default": "allow", "tools": {"delete_x": {"action": "deny"}}}),
        )
        .start();
    let call = |name: &str| {
        let body = json!({"jsonrpc": "2.0", "id": 7, "method": "tools/call",
                          "params": {"name": name, "arguments": {}}});
        let r = post(sc.listen, "/mcp/books", &body.to_string());
        assert_eq!(r.status, 200, "{}", r.text());
    };
    let line = |tool: &str, decision: &str, n: u32| {
        format!(
            "tollgate_decisions_total{{server=\"books\",tool=\"{tool}\",decision=\"{decision}\"}} {n}"
        )
    };
    // Before the server has listed its tools, names are counted as unlisted.
    let tool = "echo";
    call(tool);
    call("delete_x");
    let m = sc.metrics();
    assert!(m.contains(&line("(unlisted)", "allow", 1)), "{m}");
    assert!(m.contains(&line("(unlisted)", "deny", 1)), "{m}");
    // Once listed, a tool has its own series.
    let list = r#"{"jsonrpc":"2.0","id":2,"method":"tools/list"}"#;
    assert_eq!(post(sc.listen, "/mcp/books", list).status, 200);
    call(tool);
    call(tool);
    let m = sc.metrics();
    assert!(m.contains(&line(tool, "allow", 2)), "{m}");
    assert!(m.contains(&line("(unlisted)", "allow", 1)), "{m}");
    assert!(
        m.contains("tollgate_request_duration_seconds_count{server=\"books\"} 5"),
        "{m}"
    );
}
