//! Human approvals on a standalone sidecar, with real peers: the Python
//! `mcp` SDK client calls `@modelcontextprotocol/server-everything`'s
//! `echo` (over Streamable HTTP, legacy HTTP+SSE and stdio) through a
//! sidecar whose policy requires approval for it, and a person decides on
//! the sidecar's admin port.

use std::thread;

use serde_json::{Value, json};
use tollgate_e2e::approvals::{self, id_in};
use tollgate_e2e::{Peers, Transport, net, sidecar};

/// `echo` needs an approval (open 10 minutes) held `hold`; `get-sum` needs
/// one that expires after 1 s.
fn policy(hold: &str) -> Value {
    json!({
        "version": "1",
        "default": "allow",
        "tools": {
            "echo": { "action": "require_approval", "approval": { "timeout": "10m", "hold": hold } },
            "get-sum": { "action": "require_approval", "approval": { "timeout": "1s", "hold": "0s" } }
        }
    })
}

fn text_of(result: &Value) -> &str {
    result["content"][0]["text"].as_str().unwrap_or_default()
}

/// One call through the Python client in its own session; its result.
fn call(peers: &Peers, url: &str, tool: &str, arguments: Value) -> Value {
    let out = peers.client().steps(
        url,
        &json!([{ "op": "call", "name": tool, "arguments": arguments }]),
    );
    let step = &out["results"][0];
    assert!(
        step.get("result").is_some(),
        "the call of {tool} did not return a result: {out:#}"
    );
    step["result"].clone()
}

/// The pending answer's approval id, checked against its `_meta`.
fn pending_id(result: &Value) -> String {
    assert_eq!(result["isError"], true, "not a pending answer: {result:#}");
    let meta = &result["_meta"]["tollgate.dev/approval"];
    assert_eq!(meta["state"], "pending", "{result:#}");
    let id = id_in(text_of(result)).unwrap_or_else(|| panic!("no ap_ id in {result:#}"));
    assert_eq!(meta["id"], id.as_str(), "{result:#}");
    assert!(
        meta["url"]
            .as_str()
            .is_some_and(|u| u.ends_with(&format!("/approvals/{id}"))),
        "{result:#}"
    );
    id
}

#[test]
fn an_approval_given_during_the_hold_lets_the_sdk_call_complete() {
    let Some(peers) = Peers::require() else {
        return;
    };
    let everything = peers.everything(Transport::StreamableHttp);
    let sidecar = sidecar::builder()
        .upstream(everything.url())
        .policy(&policy("60s"))
        .start();
    let url = sidecar.mcp_url();
    let client = peers.client();
    let running = thread::spawn(move || {
        client.steps(
            &url,
            &json!([{ "op": "call", "name": "echo", "arguments": { "message": "held then approved" } }]),
        )
    });
    let request = approvals::wait_new_pending(sidecar.admin, &[]);
    assert_eq!(request["tool"], "echo", "{request:#}");
    assert_eq!(request["grant"], "e2e-node", "{request:#}");
    let id = request["id"].as_str().unwrap_or_default().to_owned();
    approvals::approve(sidecar.admin, &id);
    let out = running.join().expect("the client thread");
    // The SDK and server-everything settle on a handshake revision (the
    // discover probe falls back to initialize), so the SDK sees a plain
    // tool result: the upstream's own.
    assert_ne!(out["protocol_version"], "2026-07-28", "{out:#}");
    let result = &out["results"][0]["result"];
    assert_eq!(text_of(result), "Echo: held then approved", "{out:#}");
    assert_ne!(result["isError"], true, "{out:#}");

    let record = approvals::get(sidecar.admin, &id);
    let record: Value = serde_json::from_slice(&record.body).expect("JSON");
    assert_eq!(record["state"], "used", "{record:#}");
    assert_eq!(record["decided_by"], "alice", "{record:#}");

    // One decision-log record per event, each naming the request.
    let events: Vec<String> = sidecar
        .decisions(5)
        .iter()
        .filter(|r| r["approval_id"] == id.as_str())
        .map(|r| r["event"].as_str().unwrap_or_default().to_owned())
        .collect();
    for e in ["requested", "held", "approved", "used"] {
        assert!(events.iter().any(|x| x == e), "no `{e}` event: {events:?}");
    }
    let metrics = sidecar.metrics();
    assert!(
        metrics.contains("tollgate_approvals_total{event=\"used\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("tollgate_approvals_pending 0"),
        "{metrics}"
    );
}

#[test]
fn approvals_are_single_use_per_call_and_denials_and_expiry_are_told() {
    let Some(peers) = Peers::require() else {
        return;
    };
    let everything = peers.everything(Transport::StreamableHttp);
    let sidecar = sidecar::builder()
        .upstream(everything.url())
        .policy(&policy("0s"))
        .start();
    let url = sidecar.mcp_url();
    let admin = sidecar.admin;

    // Not approved in time: pending, with the request's id and page.
    let first = call(&peers, &url, "echo", json!({ "message": "once" }));
    let id1 = pending_id(&first);
    assert!(
        text_of(&first).contains(&format!("http://{admin}/approvals/{id1}")),
        "{first:#}"
    );
    // Calling again before anyone decides finds the same request.
    let again = call(&peers, &url, "echo", json!({ "message": "once" }));
    assert_eq!(pending_id(&again), id1);

    // Approved: the same call goes through once, with the upstream's result.
    approvals::approve(admin, &id1);
    let through = call(&peers, &url, "echo", json!({ "message": "once" }));
    assert_eq!(text_of(&through), "Echo: once", "{through:#}");
    // Once: the next identical call needs a new request.
    let next = call(&peers, &url, "echo", json!({ "message": "once" }));
    let id2 = pending_id(&next);
    assert_ne!(id2, id1);

    // Other arguments are another call: another request.
    let other = call(&peers, &url, "echo", json!({ "message": "twice" }));
    let id3 = pending_id(&other);
    assert_ne!(id3, id2);
    // Approving that one does not let the first arguments through.
    approvals::approve(admin, &id3);
    let still = call(&peers, &url, "echo", json!({ "message": "once" }));
    assert_eq!(pending_id(&still), id2);

    // Denied: the agent is told who denied it and why.
    let denied = approvals::decide(
        admin,
        &id2,
        "deny",
        &json!({ "reason": "not on a Sunday", "by": "bob" }),
    );
    assert_eq!(denied.status, 200, "{}", denied.text());
    let told = call(&peers, &url, "echo", json!({ "message": "once" }));
    assert_eq!(told["isError"], true, "{told:#}");
    assert!(
        text_of(&told).contains(&format!("{id2} was denied by bob: not on a Sunday")),
        "{told:#}"
    );

    // Expired (1 s): the next call files a new request.
    let sum = call(&peers, &url, "get-sum", json!({ "a": 1, "b": 2 }));
    let id4 = pending_id(&sum);
    wait_state(admin, &id4, "expired");
    let late = approvals::decide(admin, &id4, "approve", &json!({}));
    assert_eq!(late.status, 409, "{}", late.text());
    assert!(late.text().contains("expired already"), "{}", late.text());
    let renewed = call(&peers, &url, "get-sum", json!({ "a": 1, "b": 2 }));
    assert_ne!(pending_id(&renewed), id4);
}

#[test]
fn legacy_sse_clients_are_held_and_answered_on_their_stream() {
    let Some(peers) = Peers::require() else {
        return;
    };
    let everything = peers.everything(Transport::Sse);
    let sidecar = sidecar::builder()
        .upstream(format!("ev=sse:{}", everything.url()))
        .policy(&policy("0s"))
        .start();
    let url = sidecar.url("/mcp/ev/sse");
    let call_sse = |message: &str| -> Value {
        let out = peers.client().legacy_sse().steps(
            &url,
            &json!([{ "op": "call", "name": "echo", "arguments": { "message": message } }]),
        );
        out["results"][0]["result"].clone()
    };
    let first = call_sse("over sse");
    let id = pending_id(&first);
    approvals::approve(sidecar.admin, &id);
    let through = call_sse("over sse");
    assert_eq!(text_of(&through), "Echo: over sse", "{through:#}");
    let again = call_sse("over sse");
    assert_ne!(pending_id(&again), id);
}

#[test]
fn a_stdio_server_gets_the_approved_call_once() {
    let Some(peers) = Peers::require() else {
        return;
    };
    let sidecar = sidecar::builder()
        .upstream(format!("ev=stdio:{}", peers.everything_stdio_command()))
        .policy(&policy("0s"))
        .start();
    let url = sidecar.mcp_url_of("ev");
    let first = call(&peers, &url, "echo", json!({ "message": "to a child" }));
    let id = pending_id(&first);
    approvals::approve(sidecar.admin, &id);
    let through = call(&peers, &url, "echo", json!({ "message": "to a child" }));
    assert_eq!(text_of(&through), "Echo: to a child", "{through:#}");
    let again = call(&peers, &url, "echo", json!({ "message": "to a child" }));
    assert_ne!(pending_id(&again), id);
}

#[test]
fn a_client_that_declared_url_elicitation_is_sent_to_the_approval_page() {
    let Some(peers) = Peers::require() else {
        return;
    };
    let everything = peers.everything(Transport::StreamableHttp);
    let sidecar = sidecar::builder()
        .upstream(everything.url())
        .policy(&policy("0s"))
        .start();
    let init = net::post_mcp(
        sidecar.listen,
        None,
        r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{"elicitation":{"url":{}}},"clientInfo":{"name":"e2e","version":"1"}}}"#,
    );
    assert_eq!(init.status, 200, "{}", init.text());
    let session = init.header("mcp-session-id").expect("a session").to_owned();
    let done = net::post_mcp(
        sidecar.listen,
        Some(&session),
        r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#,
    );
    assert_eq!(done.status, 202, "{}", done.text());
    let reply = net::post_mcp(
        sidecar.listen,
        Some(&session),
        r#"{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"echo","arguments":{"message":"hi"}}}"#,
    );
    let body = json_of(&reply);
    assert_eq!(body["error"]["code"], -32042, "{body:#}");
    let elicitation = &body["error"]["data"]["elicitations"][0];
    assert_eq!(elicitation["mode"], "url", "{body:#}");
    let id = elicitation["elicitationId"].as_str().unwrap_or_default();
    assert_eq!(
        elicitation["url"],
        format!("http://{}/approvals/{id}", sidecar.admin),
        "{body:#}"
    );
    let pending = approvals::list(sidecar.admin, Some("pending"));
    assert_eq!(pending.len(), 1, "{pending:#?}");
    assert_eq!(pending[0]["id"], id);
}

/// The JSON body of a reply (or of its single SSE event).
fn json_of(reply: &net::Reply) -> Value {
    let text = reply.text();
    let data = text
        .lines()
        .find_map(|l| l.strip_prefix("data: "))
        .unwrap_or(&text);
    serde_json::from_str(data).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// Waits until request `id` is in `state` (the sidecar expires it on its
/// own clock; 30 s at most).
fn wait_state(admin: std::net::SocketAddr, id: &str, state: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let r: Value = serde_json::from_slice(&approvals::get(admin, id).body).expect("JSON");
        if r["state"] == state {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{id} is not {state} after 30 s: {r:#}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}
