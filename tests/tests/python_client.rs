//! The Python `mcp` SDK 2.x client, through the sidecar, to
//! `@modelcontextprotocol/server-everything` over Streamable HTTP: what an
//! agent built on the official SDK sees of a policy.

use serde_json::{Value, json};
use tollgate_e2e::{Peers, Transport, sidecar};

/// `echo` allowed; `get-sum` denied with a reason; `get-tiny-image` limited to
/// 3 calls a minute; `get-env` hidden; everything else allowed by default.
fn policy() -> Value {
    json!({
        "version": "1",
        "default": "allow",
        "hide": ["get-env"],
        "tools": {
            "echo": { "action": "allow" },
            "get-sum": { "action": "deny", "reason": "Arithmetic goes through the calculator service." },
            "get-tiny-image": { "rate_limit": { "max": 3, "window": 60 } }
        }
    })
}

fn tool_names(list: &Value) -> Vec<String> {
    let tools = list["tools"]
        .as_array()
        .unwrap_or_else(|| panic!("a tools/list step without tools: {list}"));
    let mut names: Vec<String> = tools
        .iter()
        .map(|t| t["name"].as_str().unwrap_or_default().to_owned())
        .collect();
    names.sort();
    names
}

fn text_of(result: &Value) -> &str {
    result["content"][0]["text"].as_str().unwrap_or_default()
}

#[test]
fn the_sdk_client_sees_the_policy_through_the_sidecar() {
    let Some(peers) = Peers::require() else {
        return;
    };
    let everything = peers.everything(Transport::StreamableHttp);
    let sidecar = sidecar::builder()
        .upstream(everything.url())
        .policy(&policy())
        .start();
    let client = peers.client();

    let direct = client.steps(&everything.url(), &json!([{ "op": "list" }]));
    let upstream_tools = tool_names(&direct["results"][0]);
    for t in ["echo", "get-sum", "get-tiny-image", "get-env"] {
        assert!(
            upstream_tools.iter().any(|n| n == t),
            "server-everything no longer has `{t}`: {upstream_tools:?}"
        );
    }

    let out = client.steps(
        &sidecar.mcp_url(),
        &json!([
            { "op": "list" },
            { "op": "call", "name": "echo", "arguments": { "message": "hello through tollgate" } },
            { "op": "call", "name": "get-sum", "arguments": { "a": 1, "b": 2 } },
            { "op": "call", "name": "get-tiny-image", "arguments": {}, "repeat": 4 },
            { "op": "call", "name": "get-env", "arguments": {} }
        ]),
    );
    let results = out["results"]
        .as_array()
        .unwrap_or_else(|| panic!("no results: {out}"));
    assert_eq!(results.len(), 8, "{out:#}");

    // tools/list: the upstream's tools less the denied and the hidden one.
    let expected: Vec<String> = upstream_tools
        .iter()
        .filter(|n| *n != "get-sum" && *n != "get-env")
        .cloned()
        .collect();
    assert_eq!(
        tool_names(&results[0]),
        expected,
        "tools/list through the sidecar"
    );

    // echo: allowed, the upstream's own answer.
    let echo = &results[1]["result"];
    assert_eq!(echo["isError"], json!(false), "echo: {:#}", results[1]);
    assert_eq!(text_of(echo), "Echo: hello through tollgate");

    // get-sum: denied with the policy's reason, as an isError result.
    let denied = &results[2]["result"];
    assert_eq!(denied["isError"], json!(true), "get-sum: {:#}", results[2]);
    assert_eq!(
        text_of(denied),
        "Denied by policy: Arithmetic goes through the calculator service."
    );
    let details = &denied["_meta"]["tollgate/decision"];
    assert_eq!(details["decision"], json!("deny"), "{denied:#}");
    assert_eq!(details["rule"], json!("/tools/get-sum"), "{denied:#}");

    // get-tiny-image: 3 allowed (the upstream's image), the 4th rate-limited.
    for (i, r) in results[3..6].iter().enumerate() {
        let res = &r["result"];
        assert_eq!(
            res["isError"],
            json!(false),
            "get-tiny-image call {}: {r:#}",
            i + 1
        );
        assert!(
            res["content"]
                .as_array()
                .is_some_and(|c| c.iter().any(|b| b["type"] == json!("image"))),
            "get-tiny-image call {} has no image: {r:#}",
            i + 1
        );
    }
    let limited = &results[6]["result"];
    assert_eq!(
        limited["isError"],
        json!(true),
        "4th get-tiny-image: {:#}",
        results[6]
    );
    assert!(
        text_of(limited).starts_with("Rate limit: 3 calls per "),
        "4th get-tiny-image: {limited:#}"
    );
    let details = &limited["_meta"]["tollgate/decision"];
    assert_eq!(details["decision"], json!("rate_limited"), "{limited:#}");
    assert!(
        details["retry_after_ms"]
            .as_u64()
            .is_some_and(|ms| ms > 0 && ms <= 60_000),
        "{limited:#}"
    );

    // get-env: hidden, so an unknown-tool JSON-RPC error, as for a tool that does not exist.
    let hidden = &results[7];
    assert!(hidden.get("result").is_none(), "get-env: {hidden:#}");
    assert_eq!(
        hidden["error"]["code"],
        json!(-32602),
        "get-env: {hidden:#}"
    );
    assert_eq!(
        hidden["error"]["message"],
        json!("Unknown tool: get-env"),
        "{hidden:#}"
    );

    // Every call was decided and recorded, by the rule that made it.
    let records = sidecar.decisions(8);
    let seen: Vec<(String, String, String)> = records
        .iter()
        .map(|r| {
            (
                r["tool"].as_str().unwrap_or_default().to_owned(),
                r["decision"].as_str().unwrap_or_default().to_owned(),
                r["rule"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    let want = |tool: &str, decision: &str| {
        seen.iter()
            .filter(|(t, d, _)| t == tool && d == decision)
            .count()
    };
    assert_eq!(want("echo", "allow"), 1, "{seen:?}");
    assert_eq!(want("get-sum", "deny"), 1, "{seen:?}");
    assert_eq!(want("get-tiny-image", "allow"), 3, "{seen:?}");
    assert_eq!(want("get-tiny-image", "rate_limited"), 1, "{seen:?}");
    assert_eq!(want("get-env", "hidden"), 1, "{seen:?}");
    assert_eq!(seen.len(), 7, "{seen:?}");
}

/// The SDK's `mode="auto"` first POSTs `server/discover` (with
/// `Mcp-Method: server/discover`); a 2025-era server answers with an error
/// and the SDK falls back to `initialize`. Through the sidecar the probe must
/// be passed through like any other method, and the fallback must land on
/// the same protocol version as without the sidecar.
#[test]
fn the_discover_probe_falls_back_to_initialize_through_the_sidecar() {
    let Some(peers) = Peers::require() else {
        return;
    };
    let everything = peers.everything(Transport::StreamableHttp);
    let sidecar = sidecar::builder()
        .upstream(everything.url())
        .policy(&policy())
        .start();
    let client = peers.client().trace();
    let steps = json!([{ "op": "call", "name": "echo", "arguments": { "message": "x" } }]);

    let direct = client.steps(&everything.url(), &steps);
    let through = client.steps(&sidecar.mcp_url(), &steps);

    let exchanges = |out: &Value| -> Vec<(String, String, u64)> {
        out["http"]
            .as_array()
            .unwrap_or_else(|| panic!("no trace: {out}"))
            .iter()
            .map(|h| {
                (
                    h["method"].as_str().unwrap_or_default().to_owned(),
                    h["mcp_method"]
                        .as_array()
                        .and_then(|m| m.first())
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_owned(),
                    h["status"].as_u64().unwrap_or(0),
                )
            })
            .collect()
    };
    let (d, t) = (exchanges(&direct), exchanges(&through));
    assert_eq!(
        d.first().map(|e| e.1.as_str()),
        Some("server/discover"),
        "the SDK no longer probes server/discover first: {d:?}"
    );
    assert_eq!(
        t.first(),
        d.first(),
        "the probe's answer differs through the sidecar"
    );
    assert_eq!(
        t.get(1),
        d.get(1),
        "the fallback initialize differs through the sidecar"
    );
    assert_eq!(through["protocol_version"], direct["protocol_version"]);
    assert_eq!(text_of(&through["results"][0]["result"]), "Echo: x");
}

/// The same policy over the legacy HTTP+SSE transport (2024-11-05):
/// server-everything in `sse` mode behind `--upstream ev=sse:URL`, the SDK's
/// SSE client at the sidecar's `/mcp/ev/sse`.
#[test]
fn the_sdk_client_sees_the_policy_over_legacy_sse() {
    let Some(peers) = Peers::require() else {
        return;
    };
    let everything = peers.everything(Transport::Sse);
    let sidecar = sidecar::builder()
        .upstream(format!("ev=sse:{}", everything.url()))
        .policy(&policy())
        .start();
    let out = peers.client().legacy_sse().steps(
        &sidecar.url("/mcp/ev/sse"),
        &json!([
            { "op": "list" },
            { "op": "call", "name": "echo", "arguments": { "message": "over sse" } },
            { "op": "call", "name": "get-sum", "arguments": { "a": 1, "b": 2 } },
            { "op": "call", "name": "get-env", "arguments": {} }
        ]),
    );
    let results = &out["results"];
    let names = tool_names(&results[0]);
    assert!(names.iter().any(|n| n == "echo"), "{names:?}");
    assert!(
        !names.iter().any(|n| n == "get-sum" || n == "get-env"),
        "{names:?}"
    );
    assert_eq!(
        text_of(&results[1]["result"]),
        "Echo: over sse",
        "{:#}",
        results[1]
    );
    assert_eq!(
        results[2]["result"]["isError"],
        json!(true),
        "{:#}",
        results[2]
    );
    assert_eq!(
        text_of(&results[2]["result"]),
        "Denied by policy: Arithmetic goes through the calculator service."
    );
    assert_eq!(
        results[3]["error"]["code"],
        json!(-32602),
        "{:#}",
        results[3]
    );
}
