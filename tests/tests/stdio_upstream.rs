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

/// The TCP ports a process listens on, from its socket descriptors and the
/// kernel's table of listening sockets.
fn listening_ports(pid: u32) -> Vec<u16> {
    let inodes: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap_or_else(|e| panic!("reading /proc/{pid}/fd: {e}"))
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter_map(|l| {
            let l = l.to_string_lossy().into_owned();
            Some(l.strip_prefix("socket:[")?.strip_suffix(']')?.to_owned())
        })
        .collect();
    let mut ports = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let text = std::fs::read_to_string(table).unwrap_or_default();
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            // State 0A is LISTEN; field 9 is the inode.
            if f.len() > 9 && f[3] == "0A" && inodes.iter().any(|i| i == f[9]) {
                let port = f[1]
                    .rsplit(':')
                    .next()
                    .and_then(|p| u16::from_str_radix(p, 16).ok());
                ports.extend(port);
            }
        }
    }
    ports.sort_unstable();
    ports
}

/// The bridge to a stdio server is reached inside the sidecar's process: no
/// local process can open an MCP session with the stdio server around the
/// policy, as it could while the bridge listened on a loopback port.
#[test]
fn a_stdio_server_is_reachable_only_through_the_policy() {
    let Some(peers) = Peers::require() else {
        return;
    };
    let mut sidecar = sidecar::builder()
        .upstream(format!("ev=stdio:{}", peers.everything_stdio_command()))
        .policy(&json!({
            "version": "1",
            "default": "allow",
            "tools": { "echo": { "action": "deny", "reason": "No echo." } }
        }))
        .start();
    let pid = sidecar.process().id();
    let mut want = vec![sidecar.listen.port(), sidecar.admin.port()];
    want.sort_unstable();
    assert_eq!(
        listening_ports(pid),
        want,
        "the sidecar listens on more than its MCP and admin ports"
    );
    // And the stdio server still serves, with the policy in front.
    let out = peers.client().steps(
        &sidecar.mcp_url_of("ev"),
        &json!([{ "op": "call", "name": "echo", "arguments": { "message": "x" } }]),
    );
    assert_eq!(
        out["results"][0]["result"]["content"][0]["text"],
        json!("Denied by policy: No echo."),
        "{out:#}"
    );
}
