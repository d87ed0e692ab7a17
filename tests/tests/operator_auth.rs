//! Operator authentication as whole binaries: `tollgate serve` and the
//! `tollgate` CLI with operator tokens.
//!
//! - without a token every command fails with UNAUTHENTICATED, saying how to
//!   get one;
//! - a viewer token reads the status but cannot push (PERMISSION_DENIED,
//!   naming role admin);
//! - a revoked token fails on the very next command;
//! - `tollgate audit --json` shows the push, the refused push and the
//!   revocation with the tokens' names;
//! - the generated first admin token is 0600, and `--bootstrap-token-file`
//!   provides it instead.

use std::os::unix::fs::PermissionsExt;

use serde_json::{Value, json};
use tollgate_e2e::Scratch;
use tollgate_e2e::controlplane::ControlPlane;
use tollgate_e2e::process::Finished;

fn policy() -> Value {
    json!({ "version": "1", "default": "allow" })
}

fn assert_failed(out: &Finished, what: &str, needles: &[&str]) {
    assert!(
        !out.status.success(),
        "{what}: expected a failure, got success:\n{}{}",
        out.stdout,
        out.stderr
    );
    for needle in needles {
        assert!(
            out.stderr.contains(needle),
            "{what}: {needle:?} not in stderr:\n{}",
            out.stderr
        );
    }
}

fn assert_ok(out: &Finished, what: &str) {
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}{}",
        out.status,
        out.stdout,
        out.stderr
    );
}

/// `tollgate token create` as the first admin; the token from stdout.
fn create_token(cp: &ControlPlane, name: &str, role: &str) -> String {
    let out = cp.cli(&["token", "create", "--role", role, "--name", name]);
    assert_ok(&out, "tollgate token create");
    assert!(
        out.stderr.contains("shown only this once"),
        "{}",
        out.stderr
    );
    let token = out.stdout.trim().to_owned();
    assert!(
        token.starts_with("tgt_") && !token.contains('\n'),
        "stdout should be the token alone: {:?}",
        out.stdout
    );
    token
}

/// `tollgate <args…>` as the first admin: its stdout's JSON lines.
fn json_lines(cp: &ControlPlane, args: &[&str]) -> Vec<Value> {
    let out = cp.cli(args);
    assert_ok(&out, &format!("tollgate {}", args.join(" ")));
    out.stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

fn has(entries: &[Value], actor: &str, action: &str, target: &str, outcome: &str) -> bool {
    entries.iter().any(|e| {
        e["actor"] == actor
            && e["action"] == action
            && e["target"] == target
            && e["outcome"] == outcome
    })
}

#[test]
fn without_a_token_every_command_says_how_to_get_one() {
    let cp = ControlPlane::start();
    for args in [
        &["status"][..],
        &["policy", "versions"],
        &["limits"],
        &["audit"],
        &["token", "list"],
    ] {
        let out = cp.cli_without_token(args);
        assert_failed(
            &out,
            &format!("tollgate {}", args.join(" ")),
            &[
                "UNAUTHENTICATED",
                "--token-file",
                "TOLLGATE_TOKEN",
                "tollgate token create --role viewer --name NAME",
                "admin-token",
            ],
        );
    }
    let forged = format!("tgt_{}_{}", "0".repeat(16), "1".repeat(64));
    let out = cp.cli_with_token(&forged, &["status"]);
    assert_failed(
        &out,
        "a forged token",
        &["UNAUTHENTICATED", "unknown operator token"],
    );
    // The generated first admin token is the operator's alone.
    let mode = std::fs::metadata(cp.admin_token_file())
        .unwrap_or_else(|e| panic!("admin-token: {e}"))
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "admin-token is {:o}", mode & 0o777);
    assert!(cp.admin_token().starts_with("tgt_"));
}

#[test]
fn a_viewer_reads_but_cannot_push_and_a_revoked_token_fails_at_once() {
    let cp = ControlPlane::start();
    let version = cp.push(&policy());
    assert_eq!(version, 1);
    let viewer = create_token(&cp, "ci-view", "viewer");

    assert_ok(
        &cp.cli_with_token(&viewer, &["status", "--json"]),
        "status as a viewer",
    );
    assert_ok(
        &cp.cli_with_token(&viewer, &["policy", "show", "1"]),
        "show as a viewer",
    );
    let scratch = Scratch::new("operator-auth");
    let file = scratch.join("policy.json");
    std::fs::write(&file, policy().to_string()).unwrap_or_else(|e| panic!("{e}"));
    let path = file.to_str().unwrap_or_else(|| panic!("not UTF-8"));
    let out = cp.cli_with_token(&viewer, &["policy", "push", path]);
    assert_failed(
        &out,
        "push as a viewer",
        &[
            "PERMISSION_DENIED",
            "`policy push` needs role admin; token \"ci-view\" has role viewer",
        ],
    );
    let out = cp.cli_with_token(
        &viewer,
        &["token", "create", "--role", "admin", "--name", "me"],
    );
    assert_failed(
        &out,
        "token create as a viewer",
        &["PERMISSION_DENIED", "needs role admin"],
    );

    let out = cp.cli(&["token", "revoke", "ci-view"]);
    assert_ok(&out, "tollgate token revoke");
    let out = cp.cli_with_token(&viewer, &["status"]);
    assert_failed(
        &out,
        "status with a revoked token",
        &["UNAUTHENTICATED", "revoked"],
    );

    let tokens = json_lines(&cp, &["token", "list", "--json"]);
    let view = tokens
        .iter()
        .find(|t| t["name"] == "ci-view")
        .unwrap_or_else(|| panic!("ci-view not listed: {tokens:?}"));
    assert_eq!(view["role"], "viewer");
    assert!(view["revoked_at"].is_string(), "{view}");
    let secret = viewer.rsplit('_').next().unwrap_or_default();
    assert!(
        !tokens.iter().any(|t| t.to_string().contains(secret)),
        "a secret was listed"
    );

    let entries = json_lines(&cp, &["audit", "--json", "--since", "1h"]);
    assert!(
        has(
            &entries,
            "bootstrap",
            "policy.push",
            "version 1",
            "accepted"
        ),
        "{entries:#?}"
    );
    assert!(
        has(&entries, "bootstrap", "token.create", "ci-view", "created"),
        "{entries:#?}"
    );
    assert!(
        has(
            &entries,
            "ci-view",
            "policy.push",
            "bundle",
            "denied: needs role admin"
        ),
        "{entries:#?}"
    );
    assert!(
        has(&entries, "bootstrap", "token.revoke", "ci-view", "revoked"),
        "{entries:#?}"
    );
    for e in &entries {
        let at = e["at"].as_str().unwrap_or_default();
        assert!(at.len() == 20 && at.ends_with('Z'), "at is RFC 3339: {e}");
    }
}

#[test]
fn a_bootstrap_token_file_provides_the_first_admin_token() {
    let scratch = Scratch::new("bootstrap-token");
    let token = format!("tgt_{}_{}", "5a".repeat(8), "c3".repeat(32));
    let file = scratch.join("admin.token");
    std::fs::write(&file, format!("{token}\n")).unwrap_or_else(|e| panic!("{e}"));
    let path = file.to_str().unwrap_or_else(|| panic!("not UTF-8"));
    let mut cp = ControlPlane::start_with_args(&["--bootstrap-token-file", path]);
    assert!(!cp.admin_token_file().exists(), "nothing generated");
    let out = cp.cli_with_token(&token, &["token", "list"]);
    assert_ok(&out, "token list with the bootstrap token");
    assert!(out.stdout.contains("bootstrap"), "{}", out.stdout);

    // Once tokens exist, a changed file changes nothing.
    let other = format!("tgt_{}_{}", "6b".repeat(8), "d4".repeat(32));
    std::fs::write(&file, &other).unwrap_or_else(|e| panic!("{e}"));
    cp.restart();
    assert_ok(
        &cp.cli_with_token(&token, &["status"]),
        "the first token after a restart",
    );
    let out = cp.cli_with_token(&other, &["status"]);
    assert_failed(&out, "a later bootstrap file", &["UNAUTHENTICATED"]);
}
