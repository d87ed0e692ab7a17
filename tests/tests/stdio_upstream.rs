//! server-everything as a stdio MCP server (`--upstream ev=stdio:<command>`),
//! wrapped by the sidecar as a child process, driven by the Python `mcp` SDK
//! client over Streamable HTTP.

use serde_json::json;
use tollgate_e2e::{Peers, sidecar};

#[test]
fn the_sdk_client_sees_the_policy_on_a_stdio_server() {
    let Some(peers) = Peers::require() else {
        return;
    };
    let sidecar = sidecar::builder()
        .upstream(format!("ev=stdio:{}", peers.everything_stdio_command()))
        .policy(&json!({
            "version": "1",
            "default": "allow",
            "hide": ["get-env"],
            "tools": {
                "get-sum": { "action": "deny", "reason": "Arithmetic goes through the calculator service." }
            }
        }))
        .start();
    let out = peers.client().steps(
        &sidecar.mcp_url_of("ev"),
        &json!([
            { "op": "list" },
            { "op": "call", "name": "echo", "arguments": { "message": "over stdio" } },
            { "op": "call", "name": "get-sum", "arguments": { "a": 1, "b": 2 } },
            { "op": "call", "name": "get-env", "arguments": {} }
        ]),
    );
    let results = &out["results"];
    let names: Vec<&str> = results[0]["tools"]
        .as_array()
        .unwrap_or_else(|| panic!("no tools: {out:#}"))
        .iter()
        .filter_map(|t| t["name"].as_str())
        .collect();
    assert!(names.contains(&"echo"), "{names:?}");
    assert!(
        !names.contains(&"get-sum") && !names.contains(&"get-env"),
        "{names:?}"
    );
    assert_eq!(
        results[1]["result"]["content"][0]["text"],
        json!("Echo: over stdio"),
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
        results[2]["result"]["content"][0]["text"],
        json!("Denied by policy: Arithmetic goes through the calculator service.")
    );
    assert_eq!(
        results[3]["error"]["code"],
        json!(-32602),
        "{:#}",
        results[3]
    );
}
