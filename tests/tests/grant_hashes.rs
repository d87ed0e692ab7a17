//! Grant tokens through the fleet as whole binaries: `tollgate serve` keys
//! every grant's token hash with its deployment's grant key before sending a
//! bundle, and `tollgate-sidecar --control-plane …` identifies callers with
//! the key that came beside it.
//!
//! - a caller with a grant's token is identified (its grant's policy
//!   decides, the decision record names it); a token no grant has is
//!   refused with 401;
//! - the bundle in the sidecar's state dir holds no token hash of the pushed
//!   policy, only keyed ones; the key is in its own owner-only file;
//! - a sidecar restarted while the control plane is down still identifies
//!   callers, from its state dir.

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tollgate_e2e::controlplane::ControlPlane;
use tollgate_e2e::net::{self, Reply};
use tollgate_e2e::recorder::Recorder;
use tollgate_e2e::{Scratch, Sidecar, sidecar};

const CI_TOKEN: &str = "tok-ci-5f2a";
const OPS_TOKEN: &str = "tok-ops-91c3";

fn sha256_hex(token: &str) -> String {
    format!("{:x}", Sha256::digest(token.as_bytes()))
}

/// The server's policy denies `echo`; grant `ci`'s own policy allows it;
/// grant `ops` has none, so the server's decides its calls.
fn policy() -> Value {
    json!({
        "servers": {"default": {"version": "1", "default": "deny",
            "tools": {"echo": {"action": "deny", "reason": "only ci may echo"}}}},
        "grants": {
            "ci": {
                "token_sha256": sha256_hex(CI_TOKEN),
                "labels": {"team": "build"},
                "policies": {"default": {"version": "1", "default": "deny",
                    "tools": {"echo": {}}}}
            },
            "ops": {"token_sha256": sha256_hex(OPS_TOKEN)}
        }
    })
}

fn sidecar(cp: &ControlPlane, recorder: &Recorder, state: &Scratch, ready: bool) -> Sidecar {
    let mut b = sidecar::builder()
        .upstream(recorder.url())
        .node_id("grants-a")
        .control_plane(cp.url(), state.path());
    if ready {
        b = b.wait_ready();
    }
    b.start()
}

/// `tools/call echo` through the sidecar at `addr` with `token`.
fn call(addr: SocketAddr, id: u64, token: &str) -> Reply {
    let body = json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
                      "params": {"name": "echo", "arguments": {"message": "hi"}}});
    let bearer = format!("Bearer {token}");
    net::post_mcp_with(addr, &[("Authorization", &bearer)], &body.to_string())
}

/// The decision in a 200 reply: `allow` (the upstream answered) or the
/// refusal's decision.
fn decision(reply: &Reply) -> String {
    assert_eq!(reply.status, 200, "{}", reply.text());
    let msg: Value = serde_json::from_slice(&reply.body).unwrap_or_else(|e| panic!("{e}"));
    let result = &msg["result"];
    if result["isError"] == json!(true) {
        let decision = &result["_meta"]["tollgate/decision"]["decision"];
        decision.as_str().unwrap_or("?").to_owned()
    } else {
        "allow".to_owned()
    }
}

/// Asserts who the sidecar takes each token for: `ci` is allowed (its
/// grant's policy), `ops` is denied (the server's), an unknown token is 401.
fn assert_identifies(sc: &Sidecar, first_id: u64, via: &str) {
    assert_eq!(
        decision(&call(sc.listen, first_id, CI_TOKEN)),
        "allow",
        "{via}: ci"
    );
    assert_eq!(
        decision(&call(sc.listen, first_id + 1, OPS_TOKEN)),
        "deny",
        "{via}: ops"
    );
    let wrong = call(sc.listen, first_id + 2, "tok-nobody");
    assert_eq!(
        wrong.status,
        401,
        "{via}: an unknown token: {}",
        wrong.text()
    );
    // Nor does a grant's token hash work as a token.
    let hash = call(sc.listen, first_id + 3, &sha256_hex(CI_TOKEN));
    assert_eq!(hash.status, 401, "{via}: a token hash: {}", hash.text());
}

/// Waits until `sc`'s `/readyz` names `version`.
fn wait_version(sc: &Sidecar, version: u64) {
    let want = format!("ready: policy v{version}");
    let deadline = Instant::now() + Duration::from_secs(15);
    while sc.readiness().trim() != want {
        assert!(
            Instant::now() < deadline,
            "the sidecar is not enforcing v{version}: {}",
            sc.readiness()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn callers_are_identified_through_keyed_bundles_and_from_the_state_dir() {
    let mut cp = ControlPlane::start();
    let recorder = Recorder::start();
    let state = Scratch::new("grant-hashes");
    let sc = sidecar(&cp, &recorder, &state, false);
    let version = cp.push(&policy());
    wait_version(&sc, version);

    assert_identifies(&sc, 1, "a control-plane bundle");
    let decisions = sc.decisions(2);
    let grants: Vec<&Value> = decisions.iter().map(|d| &d["grant"]).collect();
    assert!(
        grants.contains(&&json!("ci")) && grants.contains(&&json!("ops")),
        "decision records name the grants: {decisions:?}"
    );
    let reached = recorder
        .requests()
        .iter()
        .flat_map(|r| r.tool_calls())
        .filter(|t| t == "echo")
        .count();
    assert_eq!(reached, 1, "only ci's call reaches the upstream");

    // What the sidecar keeps: keyed hashes only, the key in a file of its own.
    let saved = std::fs::read_to_string(state.join("bundle.json")).expect("a saved bundle");
    for token in [CI_TOKEN, OPS_TOKEN] {
        let plain = sha256_hex(token);
        assert!(
            !saved.contains(&plain),
            "the state dir's bundle holds a pushed token hash:\n{saved}"
        );
    }
    assert!(!saved.contains("\"token_sha256\""), "{saved}");
    assert!(saved.contains("\"token_hmac_sha256\""), "{saved}");
    let key = std::fs::metadata(state.join("grant.key")).expect("the grant key is kept");
    assert_eq!(key.len(), 32);
    assert_eq!(key.permissions().mode() & 0o777, 0o600);
    // The operator still sees the policy as pushed.
    let shown = cp.cli(&["policy", "show", &version.to_string()]);
    assert!(shown.status.success(), "{}", shown.stderr);
    assert!(
        shown.stdout.contains(&sha256_hex(CI_TOKEN)),
        "{}",
        shown.stdout
    );

    // The control plane goes away, the sidecar restarts: it identifies
    // callers from its state dir alone.
    cp.stop();
    drop(sc);
    let sc = sidecar(&cp, &recorder, &state, true);
    assert_eq!(sc.readiness().trim(), format!("ready: policy v{version}"));
    assert_identifies(&sc, 10, "the state dir, control plane down");
}
