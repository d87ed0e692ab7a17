//! Approvals across the fleet: a request filed by one sidecar is decided on
//! the control plane, and the approval is used exactly once, whichever
//! sidecar the agent's retry lands on.
//!
//! Real peers: the `tollgate` control plane, two `tollgate-sidecar`s in fleet
//! mode, server-everything as the upstream of both; calls by hand over
//! Streamable HTTP (the JSON-RPC an agent sends) and through the Python `mcp`
//! SDK client, decided with `tollgate approvals approve|deny`.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tollgate_e2e::controlplane::ControlPlane;
use tollgate_e2e::net;
use tollgate_e2e::peers::{Peers, Transport};
use tollgate_e2e::scratch::Scratch;
use tollgate_e2e::sidecar::{self, Sidecar};

/// The agent's bearer token: the same caller (grant `ci-agent`) on every sidecar.
const TOKEN: &str = "ci-agent-token";

/// A bundle: `echo` needs approval on the unnamed upstream, and one grant.
fn policy(hold: &str) -> Value {
    let digest: String = Sha256::digest(TOKEN.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    json!({
        "servers": {"default": {
            "version": "1",
            "default": "allow",
            "tools": {
                "echo": {"action": "require_approval", "approval": {"timeout": "10m", "hold": hold}}
            }
        }},
        "grants": {"ci-agent": {"token_sha256": digest}}
    })
}

fn fleet_sidecar(cp: &ControlPlane, upstream: SocketAddr, node: &str, state: &Scratch) -> Sidecar {
    sidecar::builder()
        .upstream(format!("http://{upstream}/mcp"))
        .node_id(node)
        .control_plane(cp.url(), state.path())
        .arg("--approval-url")
        .arg(format!("http://{}", cp.http))
        .wait_ready()
        .start()
}

/// One `tools/call` of `echo` as the agent, in a new session: the reply's JSON.
fn echo(addr: SocketAddr, message: &str) -> Value {
    let bearer = format!("Bearer {TOKEN}");
    let init = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {},
        "clientInfo": {"name": "approvals-fleet-test", "version": "1"}}});
    let opened = net::post_mcp_with(addr, &[("Authorization", &bearer)], &init.to_string());
    assert_eq!(opened.status, 200, "initialize: {}", opened.text());
    let session = opened
        .header("mcp-session-id")
        .unwrap_or_else(|| panic!("no session id: {:?}", opened.headers))
        .to_owned();
    let with = [
        ("Authorization", bearer.as_str()),
        ("Mcp-Session-Id", session.as_str()),
    ];
    let done = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
    net::post_mcp_with(addr, &with, &done.to_string());
    let body = json!({"jsonrpc": "2.0", "id": 3, "method": "tools/call",
                      "params": {"name": "echo", "arguments": {"message": message}}});
    net::post_mcp_with(addr, &with, &body.to_string()).message()
}

fn text_of(v: &Value) -> String {
    v["result"]["content"][0]["text"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// The approval id a pending answer names (`_meta`, or any `ap_…` in it).
fn approval_id(v: &Value) -> String {
    let s = v.to_string();
    let at = s
        .find("ap_")
        .unwrap_or_else(|| panic!("no approval id in {v}"));
    s[at..at + 29].to_owned()
}

fn list(cp: &ControlPlane) -> Vec<Value> {
    let out = cp.cli(&["approvals", "list", "--json"]);
    assert!(
        out.status.success(),
        "approvals list: {}{}",
        out.stdout,
        out.stderr
    );
    out.stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .flat_map(|v| match v {
            Value::Array(items) => items,
            other => vec![other],
        })
        .collect()
}

fn state_of(cp: &ControlPlane, id: &str) -> String {
    list(cp)
        .iter()
        .find(|r| r["id"] == id)
        .and_then(|r| r["state"].as_str())
        .unwrap_or("(missing)")
        .to_owned()
}

#[test]
fn an_approval_filed_on_one_sidecar_is_used_once_on_another() {
    let Some(peers) = Peers::require() else {
        return;
    };
    let everything = peers.everything(Transport::StreamableHttp);
    let cp = ControlPlane::start();
    cp.push(&policy("0s"));
    let (sa, sb) = (
        Scratch::new("fleet-approvals-a"),
        Scratch::new("fleet-approvals-b"),
    );
    let a = fleet_sidecar(&cp, everything.addr, "pod-a", &sa);
    let b = fleet_sidecar(&cp, everything.addr, "pod-b", &sb);

    // pod-a files the request; nothing reaches the upstream.
    let pending = echo(a.listen, "deploy");
    assert!(
        !text_of(&pending).contains("Echo:"),
        "not forwarded before approval: {pending}"
    );
    let id = approval_id(&pending);
    let listed = list(&cp);
    let record = listed
        .iter()
        .find(|r| r["id"] == id.as_str())
        .unwrap_or_else(|| panic!("{id} not listed: {listed:?}"));
    assert_eq!(
        record["node"], "pod-a",
        "the request names the node that filed it: {record}"
    );
    assert_eq!(record["state"], "pending");

    let out = cp.cli(&["approvals", "approve", &id, "--reason", "go"]);
    assert!(
        out.status.success(),
        "approve: {}{}",
        out.stdout,
        out.stderr
    );

    // The retry lands on pod-b: forwarded once, with the real result.
    let used = echo(b.listen, "deploy");
    assert_eq!(
        text_of(&used),
        "Echo: deploy",
        "forwarded on the other sidecar: {used}"
    );
    assert_eq!(state_of(&cp, &id), "used");
    // Again, on either sidecar: a new request, nothing forwarded.
    for (name, addr) in [("pod-a", a.listen), ("pod-b", b.listen)] {
        let again = echo(addr, "deploy");
        assert!(
            !text_of(&again).contains("Echo:"),
            "{name}: used once only: {again}"
        );
        assert_ne!(approval_id(&again), id, "{name}: a new request");
    }
    // Approving twice is refused, naming who decided.
    let twice = cp.cli(&["approvals", "approve", &id]);
    assert!(!twice.status.success(), "a second approve must fail");
    assert!(twice.stderr.contains("used"), "{}", twice.stderr);
}

#[test]
fn a_held_call_completes_when_approved_through_the_cli() {
    let Some(peers) = Peers::require() else {
        return;
    };
    let everything = peers.everything(Transport::StreamableHttp);
    let cp = ControlPlane::start();
    cp.push(&policy("60s"));
    let state = Scratch::new("fleet-approvals-held");
    let a = fleet_sidecar(&cp, everything.addr, "pod-a", &state);

    let addr = a.listen;
    let held = std::thread::spawn(move || echo(addr, "held"));
    let deadline = Instant::now() + Duration::from_secs(30);
    let id = loop {
        if let Some(r) = list(&cp).into_iter().find(|r| r["state"] == "pending") {
            break r["id"].as_str().unwrap_or_default().to_owned();
        }
        assert!(Instant::now() < deadline, "no pending request within 30 s");
        std::thread::sleep(Duration::from_millis(100));
    };
    let out = cp.cli(&["approvals", "approve", &id]);
    assert!(
        out.status.success(),
        "approve: {}{}",
        out.stdout,
        out.stderr
    );
    let reply = held.join().expect("the held call");
    assert_eq!(
        text_of(&reply),
        "Echo: held",
        "the held call completes: {reply}"
    );
    assert_eq!(state_of(&cp, &id), "used");
}

/// One call through the Python `mcp` SDK client in its own session: its result.
fn sdk_call(peers: &Peers, url: &str, tool: &str, arguments: Value) -> Value {
    let out = peers.client().steps(
        url,
        &json!([{ "op": "call", "name": tool, "arguments": arguments }]),
    );
    let result = out["results"][0]["result"].clone();
    assert!(result.is_object(), "{tool}: no result: {out:#}");
    result
}

/// A pending answer's approval id (also in its `_meta`).
fn sdk_pending(result: &Value) -> String {
    assert_eq!(result["isError"], true, "not a pending answer: {result:#}");
    let meta = &result["_meta"]["tollgate.dev/approval"];
    assert_eq!(meta["state"], "pending", "{result:#}");
    meta["id"].as_str().unwrap_or_default().to_owned()
}

fn cli_ok(cp: &ControlPlane, args: &[&str]) -> String {
    let out = cp.cli(args);
    assert!(
        out.status.success(),
        "tollgate {args:?}: {}{}",
        out.stdout,
        out.stderr
    );
    out.stdout
}

#[test]
fn the_python_sdk_flow_decided_through_the_control_plane_cli() {
    let Some(peers) = Peers::require() else {
        return;
    };
    let everything = peers.everything(Transport::StreamableHttp);
    let cp = ControlPlane::start();
    cp.push(&json!({
        "version": "1",
        "default": "allow",
        "tools": {
            "echo": {"action": "require_approval", "approval": {"timeout": "10m", "hold": "30s"}},
            "get-sum": {"action": "require_approval", "approval": {"timeout": "10m"}},
            "get-env": {"action": "require_approval", "approval": {"timeout": "1s"}}
        }
    }));
    let state = Scratch::new("fleet-approvals-sdk");
    let sc = fleet_sidecar(&cp, everything.addr, "pod-a", &state);
    let url = sc.mcp_url();

    // Held, and approved through the CLI during the hold: the SDK gets the real result.
    let held = {
        let (peers, url) = (peers.clone(), url.clone());
        std::thread::spawn(move || sdk_call(&peers, &url, "echo", json!({"message": "now"})))
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let id0 = loop {
        if let Some(r) = list(&cp).into_iter().find(|r| r["state"] == "pending") {
            break r["id"].as_str().unwrap_or_default().to_owned();
        }
        assert!(Instant::now() < deadline, "no pending request within 30 s");
        std::thread::sleep(Duration::from_millis(100));
    };
    let said = cli_ok(
        &cp,
        &["approvals", "approve", &id0, "--reason", "looks fine"],
    );
    assert!(said.contains(&format!("approved {id0}")), "{said}");
    let result = held.join().expect("the held call");
    assert_eq!(result["content"][0]["text"], "Echo: now", "{result:#}");

    // Not held: pending at once; approved; the same call goes through once.
    let sum = json!({"a": 2, "b": 3});
    let id1 = sdk_pending(&sdk_call(&peers, &url, "get-sum", sum.clone()));
    cli_ok(&cp, &["approvals", "approve", &id1]);
    let through = sdk_call(&peers, &url, "get-sum", sum.clone());
    assert!(
        through["content"][0]["text"]
            .as_str()
            .is_some_and(|t| t.contains('5')),
        "the upstream's sum: {through:#}"
    );
    // Again: a new request.
    let id2 = sdk_pending(&sdk_call(&peers, &url, "get-sum", sum.clone()));
    assert_ne!(id2, id1);
    // Other arguments: another request.
    let id3 = sdk_pending(&sdk_call(&peers, &url, "get-sum", json!({"a": 2, "b": 4})));
    assert_ne!(id3, id2);
    // Denied through the CLI: the agent gets the reason.
    cli_ok(
        &cp,
        &[
            "approvals",
            "deny",
            &id2,
            "--reason",
            "not during the freeze",
        ],
    );
    let told = sdk_call(&peers, &url, "get-sum", sum);
    assert_eq!(told["isError"], true, "{told:#}");
    let text = told["content"][0]["text"].as_str().unwrap_or_default();
    assert!(text.contains("not during the freeze"), "{told:#}");
    // Expired (1 s): approving is refused, and the next call files a new request.
    let id4 = sdk_pending(&sdk_call(&peers, &url, "get-env", json!({})));
    let deadline = Instant::now() + Duration::from_secs(10);
    while state_of(&cp, &id4) != "expired" {
        assert!(Instant::now() < deadline, "{id4} did not expire");
        std::thread::sleep(Duration::from_millis(100));
    }
    let late = cp.cli(&["approvals", "approve", &id4]);
    assert!(
        !late.status.success() && late.stderr.contains("expired"),
        "{}",
        late.stderr
    );
    let id5 = sdk_pending(&sdk_call(&peers, &url, "get-env", json!({})));
    assert_ne!(id5, id4);
    // Unknown ids are refused, saying how to list them.
    let unknown = cp.cli(&["approvals", "approve", &format!("ap_{}", "a".repeat(26))]);
    assert!(
        !unknown.status.success() && unknown.stderr.contains("approvals list"),
        "{}",
        unknown.stderr
    );
}
