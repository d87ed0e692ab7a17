//! Approvals for 2026-07-28 clients (multi round-trip requests), over raw
//! HTTP, to a recording upstream that shows what was forwarded: a held
//! call answers `input_required` with a URL elicitation and a sealed
//! `requestState`; the retry carrying it goes through once approved; a
//! changed, foreign or expired state is refused and nothing is forwarded.
//! Also the admin port's refusals, which never forward anything either.

use serde_json::{Value, json};
use tollgate_e2e::approvals;
use tollgate_e2e::recorder::{Recorder, called};
use tollgate_e2e::{net, sidecar};

/// `echo` needs an approval (10 minutes, not held); `delete_x` one that
/// expires after 1 s.
fn policy() -> Value {
    json!({
        "version": "1",
        "default": "allow",
        "tools": {
            "echo": { "action": "require_approval", "approval": { "timeout": "10m", "hold": "0s" } },
            "delete_x": { "action": "require_approval", "approval": { "timeout": "1s" } }
        }
    })
}

/// A 2026-07-28 `tools/call` that declares URL elicitation, with the retry
/// fields when `state` is given.
fn call(id: u64, tool: &str, arguments: &Value, state: Option<&str>) -> String {
    let mut params = json!({
        "name": tool,
        "arguments": arguments,
        "_meta": {
            "io.modelcontextprotocol/protocolVersion": "2026-07-28",
            "io.modelcontextprotocol/clientCapabilities": { "elicitation": { "url": {} } }
        }
    });
    if let Some(s) = state {
        params["requestState"] = json!(s);
        params["inputResponses"] = json!({ "approval": { "action": "accept" } });
    }
    json!({ "jsonrpc": "2.0", "id": id, "method": "tools/call", "params": params }).to_string()
}

fn post(sc: &tollgate_e2e::Sidecar, body: &str) -> Value {
    let reply = net::post_mcp_with(sc.listen, &[("MCP-Protocol-Version", "2026-07-28")], body);
    assert_eq!(reply.status, 200, "{}", reply.text());
    let text = reply.text();
    let data = text
        .lines()
        .find_map(|l| l.strip_prefix("data: "))
        .unwrap_or(&text);
    serde_json::from_str(data).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

fn tool_calls(recorder: &Recorder) -> Vec<Value> {
    recorder
        .requests()
        .iter()
        .flat_map(|r| r.messages())
        .filter(|m| m["method"] == "tools/call")
        .collect()
}

/// The approval id and sealed state of an `input_required` answer.
fn input_required(answer: &Value) -> (String, String) {
    let result = &answer["result"];
    assert_eq!(result["resultType"], "input_required", "{answer:#}");
    let request = &result["inputRequests"]["approval"];
    assert_eq!(request["method"], "elicitation/create", "{answer:#}");
    assert_eq!(request["params"]["mode"], "url", "{answer:#}");
    let id = request["params"]["elicitationId"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        request["params"]["url"]
            .as_str()
            .is_some_and(|u| u.ends_with(&format!("/approvals/{id}"))),
        "{answer:#}"
    );
    let state = result["requestState"]
        .as_str()
        .unwrap_or_else(|| panic!("no requestState: {answer:#}"))
        .to_owned();
    assert!(state.starts_with("tg1."), "{state}");
    (id, state)
}

fn error_text(answer: &Value) -> String {
    assert_eq!(answer["result"]["isError"], true, "{answer:#}");
    answer["result"]["content"][0]["text"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

#[test]
fn a_2026_client_retries_with_the_sealed_state_and_gets_the_result_once() {
    let recorder = Recorder::start();
    let sc = sidecar::builder()
        .upstream(recorder.url())
        .policy(&policy())
        .arg("--approval-url")
        .arg("https://tollgate.example.com/")
        .start();
    let args = json!({ "message": "hi" });

    let first = post(&sc, &call(1, "echo", &args, None));
    let (id, state) = input_required(&first);
    // The page named is --approval-url's.
    assert_eq!(
        first["result"]["inputRequests"]["approval"]["params"]["url"],
        format!("https://tollgate.example.com/approvals/{id}"),
        "{first:#}"
    );
    // Before anyone decides, the retry is still waiting: same request.
    let (same, _) = input_required(&post(&sc, &call(2, "echo", &args, Some(&state))));
    assert_eq!(same, id);

    // A changed state: refused, plainly.
    let mut bytes = state.clone().into_bytes();
    let at = bytes.len() / 2;
    bytes[at] = if bytes[at] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(bytes).expect("ASCII");
    let text = error_text(&post(&sc, &call(3, "echo", &args, Some(&tampered))));
    assert!(text.contains("failed its integrity check"), "{text}");
    // A state for other arguments: refused as another call's.
    let other = json!({ "message": "other" });
    let text = error_text(&post(&sc, &call(4, "echo", &other, Some(&state))));
    assert!(text.contains("issued for another call"), "{text}");
    assert!(text.contains(&id), "{text}");
    // Not a state at all.
    let text = error_text(&post(&sc, &call(5, "echo", &args, Some("garbage"))));
    assert!(text.contains("malformed"), "{text}");
    assert!(
        tool_calls(&recorder).is_empty(),
        "forwarded before approval"
    );

    approvals::approve(sc.admin, &id);
    let done = post(&sc, &call(6, "echo", &args, Some(&state)));
    assert_eq!(
        done["result"]["content"][0]["text"],
        called("echo"),
        "{done:#}"
    );
    let forwarded = tool_calls(&recorder);
    assert_eq!(forwarded.len(), 1, "{forwarded:#?}");
    // The state and responses were the sidecar's: the upstream gets the call.
    assert_eq!(forwarded[0]["params"]["arguments"], args);
    assert!(forwarded[0]["params"].get("requestState").is_none());
    assert!(forwarded[0]["params"].get("inputResponses").is_none());

    // Used: the same state again files a new request, forwarding nothing.
    let (new_id, _) = input_required(&post(&sc, &call(7, "echo", &args, Some(&state))));
    assert_ne!(new_id, id);
    assert_eq!(tool_calls(&recorder).len(), 1);
}

#[test]
fn an_expired_state_and_bad_decisions_are_refused_and_forward_nothing() {
    let recorder = Recorder::start();
    let sc = sidecar::builder()
        .upstream(recorder.url())
        .policy(&policy())
        .start();
    let args = json!({ "path": "/tmp/x" });
    let (id, state) = input_required(&post(&sc, &call(1, "delete_x", &args, None)));
    wait_expired(sc.admin, &id);
    let text = error_text(&post(&sc, &call(2, "delete_x", &args, Some(&state))));
    assert!(
        text.contains(&format!("expired with approval {id}")),
        "{text}"
    );

    // The admin port's refusals.
    let unknown = approvals::decide(
        sc.admin,
        "ap_aaaaaaaaaaaaaaaaaaaaaaaaaa",
        "approve",
        &json!({}),
    );
    assert_eq!(unknown.status, 404, "{}", unknown.text());
    assert!(
        unknown.text().contains("no approval request"),
        "{}",
        unknown.text()
    );
    assert_eq!(approvals::get(sc.admin, "nonsense").status, 404);
    let late = approvals::decide(sc.admin, &id, "approve", &json!({}));
    assert_eq!(late.status, 409, "{}", late.text());

    let (echo_id, _) = input_required(&post(&sc, &call(3, "echo", &json!({}), None)));
    let no_reason = approvals::decide(sc.admin, &echo_id, "deny", &json!({}));
    assert_eq!(no_reason.status, 400, "{}", no_reason.text());
    assert!(
        no_reason.text().contains("needs a reason"),
        "{}",
        no_reason.text()
    );
    approvals::approve(sc.admin, &echo_id);
    let twice = approvals::decide(sc.admin, &echo_id, "approve", &json!({}));
    assert_eq!(twice.status, 409, "{}", twice.text());
    assert!(
        twice.text().contains("approved already (by alice)"),
        "{}",
        twice.text()
    );

    // A held call inside a batch is answered at once, never forwarded.
    let batch = format!("[{}]", call(4, "echo", &json!({ "message": "b" }), None));
    let reply = net::post_mcp(sc.listen, None, &batch);
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert!(reply.text().contains("not in a batch"), "{}", reply.text());

    assert!(
        tool_calls(&recorder).is_empty(),
        "forwarded: {:#?}",
        tool_calls(&recorder)
    );
}

/// Waits until request `id` has expired on the sidecar's clock (30 s at most).
fn wait_expired(admin: std::net::SocketAddr, id: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let r: Value = serde_json::from_slice(&approvals::get(admin, id).body).expect("JSON");
        if r["state"] == "expired" {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{id} did not expire: {r:#}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}
