//! The secured control plane as whole binaries: `tollgate certs init` and
//! `issue`, `tollgate serve --tls-cert --tls-key --client-ca`, sidecars
//! with `--ca --cert --key`, and the CLI with `--ca`.
//!
//! - a sidecar's node identity comes from its certificate: node A's
//!   certificate cannot open a stream as node B, and the status table shows
//!   the SPIFFE id each node proved;
//! - a plaintext client, a client with no certificate and a client whose
//!   certificate comes from another CA are refused;
//! - certificates rotated on disk are used by the next connection, on both
//!   sides, without a restart of the process that reads them.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tollgate_e2e::controlplane::ControlPlane;
use tollgate_e2e::{DemoUpstream, Scratch, Sidecar, sidecar};

/// How long a sidecar may take to show up SYNCED.
const SYNC: Duration = Duration::from_secs(15);
/// How long a sidecar may take to reconnect after the control plane's
/// restart (its backoff starts small after a working stream).
const RECONNECT: Duration = Duration::from_secs(40);
/// How long a refused sidecar is given to (not) show up.
const REFUSED_FOR: Duration = Duration::from_secs(3);

fn policy() -> Value {
    json!({
        "version": "1",
        "default": "deny",
        "tools": { "create_test_session_context": { "action": "allow" } }
    })
}

fn path(p: &Path) -> String {
    p.display().to_string()
}

/// A fleet-mode sidecar for `node_id` with these TLS files.
fn sidecar(
    cp: &ControlPlane,
    url: &str,
    node_id: &str,
    upstream: &DemoUpstream,
    tls: &[(&str, &Path)],
) -> (Sidecar, Scratch) {
    let state = Scratch::new("state");
    let mut b = sidecar::builder()
        .node_id(node_id)
        .upstream(upstream.url())
        .control_plane(url, &state.join("state"));
    for (flag, file) in tls {
        b = b.arg(*flag).arg(path(file));
    }
    let _ = cp;
    (b.start(), state)
}

/// The status row of `node`, if the control plane has one.
fn row(cp: &ControlPlane, node: &str) -> Option<Value> {
    cp.status()
        .as_array()
        .and_then(|rows| rows.iter().find(|r| r["node"] == node).cloned())
}

/// Waits for `process` output containing `needle`, then checks the
/// control plane never got a row for `node`.
fn assert_refused(cp: &ControlPlane, side: &mut Sidecar, node: &str, needle: &str) {
    side.process().wait_for_output(needle, SYNC);
    std::thread::sleep(REFUSED_FOR);
    assert!(
        row(cp, node).is_none(),
        "{node} got a status row: {:?}",
        row(cp, node)
    );
}

#[test]
fn node_identity_comes_from_the_certificate() {
    let mut cp = ControlPlane::start_secured(&[]);
    let upstream = DemoUpstream::start();
    let (a_cert, a_key) = cp.issue_node_cert("node-a", "agents");
    let ca = cp.certs_dir().join("ca.pem");
    cp.push(&policy());
    let url = cp.url();

    // Node A with its own certificate: SYNCED, with the identity it proved,
    // and its namespace taken from the certificate.
    let (mut a, _a_state) = sidecar(
        &cp,
        &url,
        "node-a",
        &upstream,
        &[("--ca", &ca), ("--cert", &a_cert), ("--key", &a_key)],
    );
    let status = cp.wait_for_status("node-a SYNCED", SYNC, |s| {
        s.as_array().is_some_and(|rows| {
            rows.iter()
                .any(|r| r["node"] == "node-a" && r["state"] == "SYNCED")
        })
    });
    let a_row = row(&cp, "node-a").unwrap_or_else(|| panic!("no node-a in {status:#}"));
    assert_eq!(
        a_row["identity"], "spiffe://cluster.local/ns/agents/sa/default",
        "{a_row:#}"
    );
    assert_eq!(a_row["namespace"], "agents", "{a_row:#}");

    // Node A's certificate claiming to be node B: refused, no row for B.
    let (mut b, _b_state) = sidecar(
        &cp,
        &url,
        "node-b",
        &upstream,
        &[("--ca", &ca), ("--cert", &a_cert), ("--key", &a_key)],
    );
    assert_refused(
        &cp,
        &mut b,
        "node-b",
        "only speak for the node its certificate names",
    );
    drop(b);

    // No client certificate at all: refused, and told how to get one.
    let (mut none, _n_state) = sidecar(&cp, &url, "node-n", &upstream, &[("--ca", &ca)]);
    assert_refused(&cp, &mut none, "node-n", "tollgate certs issue");
    drop(none);

    // Plaintext to the TLS port: never a stream.
    let (mut plain, _p_state) = sidecar(
        &cp,
        &cp.url().replace("https", "http"),
        "node-p",
        &upstream,
        &[],
    );
    assert_refused(&cp, &mut plain, "node-p", "the policy stream failed");
    drop(plain);

    // A certificate from another CA: the handshake fails.
    let other = Scratch::new("other-ca");
    let other_dir = other.join("certs");
    let out = cp.run_cli(&["certs", "init", &path(&other_dir)]);
    assert!(out.status.success(), "{}{}", out.stdout, out.stderr);
    let out = cp.run_cli(&[
        "certs",
        "issue",
        "--dir",
        &path(&other_dir),
        "--node",
        "node-x",
        "--namespace",
        "agents",
    ]);
    assert!(out.status.success(), "{}{}", out.stdout, out.stderr);
    let (mut foreign, _f_state) = sidecar(
        &cp,
        &url,
        "node-x",
        &upstream,
        &[
            ("--ca", &ca),
            ("--cert", &other_dir.join("node-x.pem")),
            ("--key", &other_dir.join("node-x-key.pem")),
        ],
    );
    assert_refused(&cp, &mut foreign, "node-x", "the policy stream failed");
    drop(foreign);

    // The CLI over plaintext, and over TLS without the right CA, fails.
    let plain_cli = std::process::Command::new(tollgate_e2e::bins::tollgate())
        .args(["--addr", &cp.url().replace("https", "http"), "status"])
        .env("TOLLGATE_TOKEN_FILE", cp.admin_token_file())
        .output()
        .expect("run tollgate");
    assert!(!plain_cli.status.success());
    let wrong_ca = std::process::Command::new(tollgate_e2e::bins::tollgate())
        .args([
            "--addr",
            &cp.url(),
            "--ca",
            &path(&other_dir.join("ca.pem")),
            "status",
        ])
        .env("TOLLGATE_TOKEN_FILE", cp.admin_token_file())
        .output()
        .expect("run tollgate");
    assert!(!wrong_ca.status.success());

    // Node A was never disturbed.
    a.process().assert_running();
    assert_eq!(
        row(&cp, "node-a").map(|r| r["connected"].clone()),
        Some(json!(true))
    );
    assert!(
        cp.process().output().contains("stream refused"),
        "the control plane logs refused streams:\n{}",
        cp.process().output()
    );
}

#[test]
fn rotated_certificates_serve_the_next_connection() {
    let mut cp = ControlPlane::start_secured(&[]);
    let upstream = DemoUpstream::start();
    let dir = cp.certs_dir().to_owned();
    let ca = dir.join("ca.pem");
    cp.push(&policy());
    let pid = cp.process().id();

    // The sidecar's certificate, in files of its own that get rotated.
    let files = Scratch::new("node-files");
    let (issued_cert, issued_key) = cp.issue_node_cert("node-r", "agents");
    let (cert, key) = (files.join("node.pem"), files.join("node-key.pem"));
    std::fs::copy(&issued_cert, &cert).expect("copy cert");
    std::fs::copy(&issued_key, &key).expect("copy key");
    let (mut side, _state) = sidecar(
        &cp,
        &cp.url(),
        "node-r",
        &upstream,
        &[("--ca", &ca), ("--cert", &cert), ("--key", &key)],
    );
    cp.wait_for_status("node-r SYNCED", SYNC, |s| {
        s.as_array().is_some_and(|rows| {
            rows.iter().any(|r| {
                r["node"] == "node-r"
                    && r["identity"] == "spiffe://cluster.local/ns/agents/sa/default"
            })
        })
    });

    // Server side: the control plane's certificate from a brand new CA
    // replaces its files; the next connection is served with it, by the
    // same process.
    let next = Scratch::new("next-ca");
    let next_dir = next.join("certs");
    let out = cp.run_cli(&["certs", "init", &path(&next_dir)]);
    assert!(out.status.success(), "{}{}", out.stdout, out.stderr);
    let saved = Scratch::new("saved");
    for name in ["control-plane.pem", "control-plane-key.pem"] {
        std::fs::copy(dir.join(name), saved.join(name)).expect("save");
    }
    replace(
        &next_dir.join("control-plane.pem"),
        &dir.join("control-plane.pem"),
    );
    replace(
        &next_dir.join("control-plane-key.pem"),
        &dir.join("control-plane-key.pem"),
    );
    let status_with = |ca: &Path| {
        std::process::Command::new(tollgate_e2e::bins::tollgate())
            .args(["--addr", &cp.url(), "--ca", &path(ca), "status", "--json"])
            .env("TOLLGATE_TOKEN_FILE", cp.admin_token_file())
            .output()
            .expect("run tollgate")
    };
    let deadline = Instant::now() + SYNC;
    while !status_with(&next_dir.join("ca.pem")).status.success() {
        assert!(
            Instant::now() < deadline,
            "the rotated certificate was never served"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let old = status_with(&ca);
    assert!(
        !old.status.success(),
        "a client trusting only the old CA still connected after the rotation"
    );
    assert_eq!(cp.process().id(), pid, "served by the same process");
    // Back to a certificate from the CA the sidecar trusts.
    replace(
        &saved.join("control-plane.pem"),
        &dir.join("control-plane.pem"),
    );
    replace(
        &saved.join("control-plane-key.pem"),
        &dir.join("control-plane-key.pem"),
    );

    // Client side: a new certificate for the same node (another service
    // account) replaces the sidecar's files; its next connection (after the
    // control plane's restart) presents it, without a sidecar restart.
    let side_pid = side.process().id();
    let out = cp.run_cli(&[
        "certs",
        "issue",
        "--dir",
        &path(&dir),
        "--node",
        "node-r",
        "--namespace",
        "agents",
        "--service-account",
        "rotated",
        "--out",
        &path(&files.join("new")),
    ]);
    assert!(out.status.success(), "{}{}", out.stdout, out.stderr);
    replace(&files.join("new/node-r.pem"), &cert);
    replace(&files.join("new/node-r-key.pem"), &key);
    cp.restart();
    cp.wait_for_status("node-r back with the rotated certificate", RECONNECT, |s| {
        s.as_array().is_some_and(|rows| {
            rows.iter().any(|r| {
                r["node"] == "node-r"
                    && r["connected"] == true
                    && r["identity"] == "spiffe://cluster.local/ns/agents/sa/rotated"
            })
        })
    });
    assert_eq!(
        side.process().id(),
        side_pid,
        "the sidecar was not restarted"
    );
}

/// Renames a copy of `from` over `to` (how a rotated secret appears).
fn replace(from: &Path, to: &Path) {
    let tmp = to.with_extension("rotating");
    std::fs::copy(from, &tmp).unwrap_or_else(|e| panic!("copy {}: {e}", from.display()));
    std::fs::rename(&tmp, to).unwrap_or_else(|e| panic!("rename to {}: {e}", to.display()));
}

#[test]
fn development_mode_is_asked_for_and_said() {
    // Neither --client-ca nor --insecure-dev: no start, and the error says
    // what to give.
    let data = Scratch::new("no-identity");
    let out = std::process::Command::new(tollgate_e2e::bins::tollgate())
        .args(["serve", "--grpc", "127.0.0.1:0", "--data"])
        .arg(data.join("data"))
        .output()
        .expect("run tollgate serve");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "started without node identity");
    assert!(
        stderr.contains("--client-ca") && stderr.contains("--insecure-dev"),
        "{stderr}"
    );

    // --insecure-dev (the harness's default): /readyz and the log say so.
    let mut cp = ControlPlane::start();
    let ready = tollgate_e2e::net::get(cp.http, "/readyz").expect("readyz");
    assert_eq!(ready.status, 200);
    assert!(ready.text().contains("insecure-dev"), "{}", ready.text());
    assert!(
        cp.process()
            .output()
            .contains("node ids are taken as declared"),
        "{}",
        cp.process().output()
    );
}
