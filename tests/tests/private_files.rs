//! What Tollgate writes to disk is its own: the control plane's data dir,
//! the sidecar's state dir and decision log are owner-only. A saved bundle
//! that was cut short is refused, and the sidecar denies every call until the
//! control plane answers, rather than crash or enforce less; a bundle that
//! cannot be saved is logged and counted.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tollgate_e2e::controlplane::{ControlPlane, metric};
use tollgate_e2e::{DemoUpstream, Scratch, Sidecar, sidecar};

fn policy() -> Value {
    json!({ "version": "1", "default": "allow" })
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

/// Every file and directory under `dir` (itself included) is closed to
/// group and others.
fn assert_private(what: &str, dir: &Path) {
    assert_eq!(mode(dir), 0o700, "{what}: {}", dir.display());
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap_or_else(|e| panic!("{e}")).path();
        let m = mode(&path);
        assert_eq!(m & 0o077, 0, "{what}: {} is {m:o}", path.display());
        if path.is_dir() {
            assert_private(what, &path);
        }
    }
}

fn wait_until(what: &str, timeout: Duration, mut ok: impl FnMut() -> bool) {
    let until = Instant::now() + timeout;
    while !ok() {
        assert!(Instant::now() < until, "{what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn fleet_sidecar(cp: &ControlPlane, upstream: &DemoUpstream, state: &Path, ready: bool) -> Sidecar {
    let b = sidecar::builder()
        .upstream(upstream.url())
        .node_id("files-node")
        .control_plane(cp.url(), state);
    if ready { b.wait_ready() } else { b }.start()
}

#[test]
fn data_and_state_are_owner_only_and_a_cut_bundle_is_refused() {
    let mut cp = ControlPlane::start();
    let upstream = DemoUpstream::start();
    let state = Scratch::new("files-state");
    std::fs::set_permissions(state.path(), std::fs::Permissions::from_mode(0o755))
        .unwrap_or_else(|e| panic!("{e}"));
    let version = cp.push(&policy());
    let mut sc = fleet_sidecar(&cp, &upstream, state.path(), true);
    assert_eq!(sc.readiness().trim(), format!("ready: policy v{version}"));
    wait_until(
        "the bundle was never saved",
        Duration::from_secs(10),
        || state.path().join("bundle.meta.json").exists(),
    );

    assert_private("the control plane's data dir", &cp.data_dir());
    assert_private("the sidecar's state dir", state.path());
    let log = sc.scratch().path().join("decisions.jsonl");
    if log.exists() {
        assert_eq!(mode(&log), 0o600, "the decision log");
    }

    // The sidecar stops, the control plane goes away, and the saved bundle
    // is cut in half: the sidecar comes back denying, not crashing.
    sc.process().stop();
    cp.kill();
    let bundle = state.path().join("bundle.json");
    let bytes = std::fs::read(&bundle).unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(&bundle, &bytes[..bytes.len() / 2]).unwrap_or_else(|e| panic!("{e}"));
    let mut sc = fleet_sidecar(&cp, &upstream, state.path(), false);
    std::thread::sleep(Duration::from_millis(500));
    sc.process().assert_running();
    assert!(
        sc.readiness().starts_with("not ready"),
        "a cut bundle must not be enforced: {}",
        sc.readiness()
    );
    assert!(
        sc.process()
            .output()
            .contains("the saved bundle is unusable"),
        "no log line says why the saved bundle was refused:\n{}",
        sc.process().output()
    );
    let reply = tollgate_e2e::net::request(
        sc.listen,
        "POST",
        "/mcp",
        &[("Content-Type", "application/json"), ("Accept", "application/json")],
        Some(
            br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"list_test_sessions","arguments":{}}}"#,
        ),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let v: Value = serde_json::from_slice(&reply.body).unwrap_or_default();
    assert_eq!(v["result"]["isError"], json!(true), "{}", reply.text());
    assert_eq!(
        v["result"]["_meta"]["tollgate/decision"]["rule"],
        json!("(no policy loaded)"),
        "{v}"
    );
    // Once the control plane is back, the sidecar is ready again.
    cp.restart();
    wait_until(
        "the sidecar never got the policy back",
        Duration::from_secs(40),
        || sc.readiness().trim() == format!("ready: policy v{version}"),
    );
}

#[test]
fn a_bundle_that_cannot_be_saved_is_logged_and_counted() {
    let cp = ControlPlane::start();
    let upstream = DemoUpstream::start();
    let state = Scratch::new("files-unsaveable");
    // Where the bundle's temporary file goes stands a directory: every save fails.
    std::fs::create_dir(state.path().join(".bundle.json.tmp")).unwrap_or_else(|e| panic!("{e}"));
    cp.push(&policy());
    let mut sc = fleet_sidecar(&cp, &upstream, state.path(), true);
    wait_until(
        "the failed save was not counted",
        Duration::from_secs(10),
        || {
            let text = sc.metrics();
            text.contains("tollgate_state_save_failures_total")
                && metric(&text, "tollgate_state_save_failures_total") >= 1.0
        },
    );
    assert!(
        sc.process().output().contains("cannot save policy v"),
        "{}",
        sc.process().output()
    );
    // The policy is in force all the same.
    assert!(sc.readiness().starts_with("ready"), "{}", sc.readiness());
}
