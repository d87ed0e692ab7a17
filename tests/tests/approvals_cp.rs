//! Approvals on the control plane as whole binaries: `tollgate serve`, the
//! `tollgate approvals` CLI, and raw gRPC clients speaking for nodes on the
//! Approvals stream.
//!
//! - a filed request is listed; approving it pushes the decision to the
//!   filing node; a retry uses it once, fleet-wide (a second node gets it,
//!   the first then finds it USED);
//! - deny needs a reason; unknown ids, double decisions and decisions
//!   after expiry fail with clear errors and a non-zero exit;
//! - a node reconnecting hears the decisions it missed; a restart of the
//!   control plane keeps every request and its state;
//! - hostile requests (a 2 KiB tool name, a bad id) are refused with the
//!   reason and nothing is stored;
//! - `tollgate approvals list --watch` prints the list, then each request
//!   as it is filed and decided;
//! - with mTLS, a node's certificate files only as that node.

#[path = "approvals_cp/node.rs"]
mod node;

use std::time::{Duration, Instant};

use node::{ApprovalsNode, request};
use serde_json::Value;
use tollgate_e2e::controlplane::ControlPlane;
use tollgate_e2e::process::Finished;
use tollgate_proto::v1::ApprovalState;

/// How long the sweep may take to expire a request.
const EXPIRY_WAIT: Duration = Duration::from_secs(10);

fn cli(cp: &ControlPlane, args: &[&str]) -> Finished {
    tokio::task::block_in_place(|| cp.cli(args))
}

fn cli_as(cp: &ControlPlane, token: &str, args: &[&str]) -> Finished {
    tokio::task::block_in_place(|| cp.cli_with_token(token, args))
}

fn ok(out: Finished, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}{}",
        out.status,
        out.stdout,
        out.stderr
    );
    out.stdout
}

fn failed(out: Finished, what: &str, needles: &[&str]) {
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

/// `tollgate approvals list --json [more…]`, by id.
fn listed(cp: &ControlPlane, more: &[&str]) -> Vec<Value> {
    let mut args = vec!["approvals", "list", "--json"];
    args.extend_from_slice(more);
    ok(cli(cp, &args), "tollgate approvals list --json")
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

fn state_of(cp: &ControlPlane, id: &str) -> Option<String> {
    listed(cp, &[])
        .into_iter()
        .find(|a| a["id"] == id)
        .map(|a| a["state"].as_str().unwrap_or_default().to_owned())
}

fn token(cp: &ControlPlane, name: &str, role: &str) -> String {
    let out = cli(cp, &["token", "create", "--role", role, "--name", name]);
    ok(out, "tollgate token create").trim().to_owned()
}

/// The sample `tollgate_controlplane_approvals_total{event="…"}`.
fn events(cp: &ControlPlane, event: &str) -> f64 {
    labelled(
        &cp.metrics(),
        "tollgate_controlplane_approvals_total",
        "event",
        event,
    )
}

fn labelled(text: &str, name: &str, label: &str, value: &str) -> f64 {
    let prefix = format!("{name}{{{label}=\"{value}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0)
}

const ARGS: &str = r#"{"path":"/srv/reports"}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approved_once_pushed_to_the_node_and_used_once_fleet_wide() {
    let cp = ControlPlane::start();
    let alice = token(&cp, "alice", "approver");
    let viewer = token(&cp, "val", "viewer");
    let mut a = ApprovalsNode::connect(&cp.url(), "node-a").await;
    let req = request("delete", ARGS, Duration::from_secs(600));
    let id = req.id.clone();
    let filed = a.file(req.clone()).await;
    assert_eq!((filed.id.as_str(), filed.error.as_str()), (id.as_str(), ""));

    // The table shows who wants what; the JSON has the stream's node id,
    // not the one the request claimed.
    let table = ok(
        cli_as(&cp, &viewer, &["approvals", "list"]),
        "approvals list",
    );
    let header = table.lines().next().unwrap_or_default();
    for column in [
        "ID",
        "STATE",
        "NODE",
        "GRANT",
        "SERVER",
        "TOOL",
        "ARGS",
        "AGE/EXPIRES",
        "DECIDED BY",
    ] {
        assert!(header.contains(column), "{column} not in {header:?}");
    }
    let row = table
        .lines()
        .find(|l| l.starts_with(&id))
        .unwrap_or_else(|| panic!("{id} not listed:\n{table}"));
    for cell in [
        "pending",
        "node-a",
        "ci",
        "files",
        "delete",
        &req.arguments_sha256[..12],
    ] {
        assert!(row.contains(cell), "{cell:?} not in {row:?}");
    }
    let json = listed(&cp, &["--state", "pending"]);
    assert_eq!(json.len(), 1, "{json:?}");
    assert_eq!(json[0]["node"], "node-a");
    assert_eq!(json[0]["arguments"]["path"], "/srv/reports");
    assert!(listed(&cp, &["--state", "approved"]).is_empty());

    // Not yet approved: a retry finds it pending.
    let early = a.use_approval(&req, "").await;
    assert_eq!(
        (early.approval_id.as_str(), early.state),
        ("", ApprovalState::Pending as i32)
    );

    // A viewer cannot decide; a deny needs a reason.
    failed(
        cli_as(&cp, &viewer, &["approvals", "approve", &id]),
        "approve as a viewer",
        &["PERMISSION_DENIED", "approver"],
    );
    failed(
        cli_as(&cp, &alice, &["approvals", "deny", &id]),
        "deny without --reason",
        &["--reason"],
    );
    failed(
        cli_as(&cp, &alice, &["approvals", "deny", &id, "--reason", "  "]),
        "deny with a blank reason",
        &["INVALID_ARGUMENT", "needs a reason"],
    );

    let said = ok(
        cli_as(&cp, &alice, &["approvals", "approve", &id]),
        "approve",
    );
    assert_eq!(
        said.trim(),
        format!("approved {id} (call ci → files.delete, by alice)")
    );
    let pushed = a.decided().await;
    assert_eq!(pushed.state, ApprovalState::Approved as i32);
    assert_eq!(pushed.decided_by, "alice");
    assert_eq!(
        pushed.request.as_ref().map(|r| r.id.as_str()),
        Some(id.as_str())
    );

    // Single use, fleet-wide: the retry lands on node b and goes through;
    // node a's retry then finds it used.
    let mut b = ApprovalsNode::connect(&cp.url(), "node-b").await;
    let granted = b.use_approval(&req, "").await;
    assert_eq!(granted.approval_id, id);
    let again = a.use_approval(&req, &id).await;
    assert_eq!(
        (again.approval_id.as_str(), again.state),
        ("", ApprovalState::Used as i32)
    );
    let used = again.approval.unwrap_or_default();
    assert_eq!(used.used_by, "node-b");
    let other_args = request("delete", r#"{"path":"/"}"#, Duration::from_secs(600));
    let none = b.use_approval(&other_args, "").await;
    assert_eq!(
        (none.approval_id.as_str(), none.state),
        ("", ApprovalState::Unspecified as i32)
    );

    failed(
        cli_as(&cp, &alice, &["approvals", "approve", &id]),
        "approve twice",
        &["FAILED_PRECONDITION", "is used already (by alice)"],
    );
    failed(
        cli_as(
            &cp,
            &alice,
            &["approvals", "approve", "ap_aaaaaaaaaaaaaaaaaaaaaaaaaa"],
        ),
        "approve an unknown id",
        &[
            "NOT_FOUND",
            "no approval request ap_aaaaaaaaaaaaaaaaaaaaaaaaaa",
            "tollgate approvals list",
        ],
    );

    assert_eq!(
        [
            events(&cp, "filed"),
            events(&cp, "approved"),
            events(&cp, "used")
        ],
        [1.0, 1.0, 1.0]
    );
    assert_eq!(cp.metric("tollgate_controlplane_approvals_pending"), 0.0);
    assert_eq!(cp.metric("tollgate_controlplane_approval_streams"), 2.0);
    let audit = ok(cli(&cp, &["audit", "--json"]), "audit");
    assert!(
        audit.lines().any(|l| l.contains("\"approval.approve\"")
            && l.contains("\"alice\"")
            && l.contains(&id)
            && l.contains("\"approved\"")),
        "the approval is not in the audit trail:\n{audit}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expiry_reconnects_restarts_and_hostile_requests() {
    let mut cp = ControlPlane::start();
    let bob = token(&cp, "bob", "approver");
    let mut a = ApprovalsNode::connect(&cp.url(), "node-a").await;

    // Expired by the sweep, pushed to the node; too late to approve.
    let short = request("delete", ARGS, Duration::from_millis(1500));
    assert_eq!(a.file(short.clone()).await.error, "");
    let expired = a.decided().await;
    assert_eq!(expired.state, ApprovalState::Expired as i32);
    failed(
        cli_as(&cp, &bob, &["approvals", "approve", &short.id]),
        "approve after expiry",
        &["FAILED_PRECONDITION", "is expired already"],
    );

    // A node away while its request is decided hears it on reconnecting.
    let mut c = ApprovalsNode::connect(&cp.url(), "node-c").await;
    let missed = request("write", ARGS, Duration::from_secs(600));
    assert_eq!(c.file(missed.clone()).await.error, "");
    drop(c);
    let said = ok(
        cli_as(
            &cp,
            &bob,
            &[
                "approvals",
                "deny",
                &missed.id,
                "--reason",
                "not on Fridays",
            ],
        ),
        "deny",
    );
    assert_eq!(
        said.trim(),
        format!(
            "denied {} (call ci → files.write, by bob): not on Fridays",
            missed.id
        )
    );
    let mut c = ApprovalsNode::connect(&cp.url(), "node-c").await;
    let replayed = c.decided().await;
    assert_eq!(replayed.state, ApprovalState::Denied as i32);
    assert_eq!(replayed.reason, "not on Fridays");

    // Hostile requests: refused with the reason, nothing stored.
    let mut long = request(&"t".repeat(2048), ARGS, Duration::from_secs(600));
    let refused = a.file(long.clone()).await;
    assert!(
        refused
            .error
            .contains("field `tool` is 2048 bytes, over the limit of 1024"),
        "{refused:?}"
    );
    long.id = "ap_NOT-BASE32".to_owned();
    long.tool = "delete".to_owned();
    let refused = a.file(long).await;
    assert!(refused.error.contains("26 lowercase base32"), "{refused:?}");
    let mut lying = request("delete", ARGS, Duration::from_secs(600));
    lying.arguments_json = r#"{"path":"/harmless"}"#.to_owned();
    let refused = a.file(lying).await;
    assert!(refused.error.contains("does not hash"), "{refused:?}");
    let pending = request("read", ARGS, Duration::from_secs(600));
    assert_eq!(a.file(pending.clone()).await.error, "");
    let duplicate = a.file(pending.clone()).await;
    assert!(duplicate.error.contains("exists already"), "{duplicate:?}");
    assert_eq!(listed(&cp, &[]).len(), 3, "only the three valid requests");

    // A restart keeps every request and where it stands.
    drop(a);
    drop(c);
    cp.restart();
    let deadline = Instant::now() + EXPIRY_WAIT;
    while state_of(&cp, &short.id).is_none() {
        assert!(Instant::now() < deadline, "the requests did not come back");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(state_of(&cp, &short.id).as_deref(), Some("expired"));
    assert_eq!(state_of(&cp, &missed.id).as_deref(), Some("denied"));
    assert_eq!(state_of(&cp, &pending.id).as_deref(), Some("pending"));
    let ok_line = ok(
        cli_as(
            &cp,
            &bob,
            &["approvals", "approve", &pending.id, "--reason", "fine"],
        ),
        "approve after the restart",
    );
    assert!(ok_line.contains("by bob): fine"), "{ok_line}");
    let mut a = ApprovalsNode::connect(&cp.url(), "node-a").await;
    let granted = a.use_approval(&pending, &pending.id).await;
    assert_eq!(granted.approval_id, pending.id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_prints_requests_as_they_are_filed_and_decided() {
    let cp = ControlPlane::start();
    let mut a = ApprovalsNode::connect(&cp.url(), "node-a").await;
    let before = request("read", ARGS, Duration::from_secs(600));
    assert_eq!(a.file(before.clone()).await.error, "");

    let mut cmd = std::process::Command::new(tollgate_e2e::bins::tollgate());
    cmd.args([
        "--addr",
        &cp.url(),
        "approvals",
        "list",
        "--watch",
        "--json",
    ])
    .env("TOLLGATE_TOKEN_FILE", cp.admin_token_file())
    .env_remove("TOLLGATE_TOKEN");
    let mut watch = tollgate_e2e::Process::spawn("tollgate approvals list --watch", cmd);
    // The list first, then each change.
    tokio::task::block_in_place(|| watch.wait_for_output(&before.id, EXPIRY_WAIT));
    let after = request("write", ARGS, Duration::from_secs(600));
    assert_eq!(a.file(after.clone()).await.error, "");
    tokio::task::block_in_place(|| watch.wait_for_output(&after.id, EXPIRY_WAIT));
    ok(
        cli(
            &cp,
            &[
                "approvals",
                "deny",
                &after.id,
                "--reason",
                "no writes today",
            ],
        ),
        "deny",
    );
    tokio::task::block_in_place(|| watch.wait_for_output("no writes today", EXPIRY_WAIT));
    let output = watch.output();
    let denied: Vec<Value> = output
        .lines()
        .filter(|l| l.contains(&after.id))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert_eq!(
        denied
            .iter()
            .map(|v| v["state"].clone())
            .collect::<Vec<_>>(),
        ["pending", "denied"],
        "{output}"
    );
    assert_eq!(denied[1]["decided_by"], "bootstrap");
    watch.assert_running();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_mtls_a_node_files_only_as_the_node_its_certificate_names() {
    use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};
    let cp = tokio::task::block_in_place(|| ControlPlane::start_secured(&[]));
    let (cert, key) = tokio::task::block_in_place(|| cp.issue_node_cert("node-a", "agents"));
    let read =
        |p: &std::path::Path| std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(read(&cp.certs_dir().join("ca.pem"))))
        .identity(Identity::from_pem(read(&cert), read(&key)));
    let channel = Endpoint::from_shared(cp.url())
        .and_then(|e| e.tls_config(tls))
        .unwrap_or_else(|e| panic!("{e}"))
        .connect()
        .await
        .unwrap_or_else(|e| panic!("cannot reach {}: {e}", cp.url()));

    let refused = ApprovalsNode::open(channel.clone(), "node-b")
        .await
        .err()
        .unwrap_or_else(|| panic!("node-a's certificate spoke for node-b"));
    assert!(
        refused
            .message()
            .contains("only speak for the node its certificate names"),
        "{refused}"
    );

    let mut a = ApprovalsNode::open(channel, "node-a")
        .await
        .unwrap_or_else(|e| panic!("node-a refused: {e}"));
    let req = request("delete", ARGS, Duration::from_secs(600));
    assert_eq!(a.file(req.clone()).await.error, "");
    let listed = listed(&cp, &[]);
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["node"], "node-a");
}
