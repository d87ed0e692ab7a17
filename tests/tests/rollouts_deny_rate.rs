//! The deny-rate gate under live traffic, as whole binaries: ten sidecars
//! report their decisions per policy version every 200 ms
//! (`Rollouts.ReportDecisions`); a version that denies a tool the old one
//! allows is rolled out to 10 % while calls go through every sidecar over
//! plain HTTP, and the rollout pauses in its canary step naming the deny
//! rate — before the other nine nodes are sent it.
//!
//! - the same with `--shadow`: agents see only the live version's
//!   decisions (every call allowed) while the report lists what the new
//!   version would deny, per tool and decision pair, with samples naming the
//!   rule and the arguments' digest; the shadow phase pauses on it.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tollgate_e2e::controlplane::ControlPlane;
use tollgate_e2e::{DemoUpstream, Scratch, Sidecar, net, sidecar};

const NODES: usize = 10;
const TOOL: &str = "create_test_session_context";
const SETTLE: Duration = Duration::from_secs(45);

fn policy(action: &str) -> Value {
    json!({
        "version": "1",
        "default": "deny",
        "tools": { TOOL: { "action": action, "reason": "frozen" } }
    })
}

/// The JSON-RPC response with `id` in a body, JSON or an SSE stream.
fn answer(text: &str, id: u64) -> Value {
    std::iter::once(text)
        .chain(text.lines().filter_map(|l| l.strip_prefix("data:")))
        .filter_map(|d| serde_json::from_str::<Value>(d.trim()).ok())
        .find(|m| m["id"] == id)
        .unwrap_or_else(|| panic!("no JSON-RPC response with id {id} in: {text}"))
}

fn cli(cp: &ControlPlane, args: &[&str]) -> String {
    let out = cp.cli(args);
    assert!(
        out.status.success(),
        "tollgate {args:?}: {}{}",
        out.stdout,
        out.stderr
    );
    out.stdout
}

/// Ten sidecars on v1 (allowing [`TOOL`]) and v2 (denying it) staged.
fn fleet() -> (ControlPlane, DemoUpstream, Vec<Scratch>, Vec<Sidecar>, u64) {
    let mut cp = ControlPlane::start();
    let upstream = DemoUpstream::start();
    let state: Vec<Scratch> = (0..NODES)
        .map(|i| Scratch::new(&format!("deny-{i}")))
        .collect();
    let sidecars: Vec<Sidecar> = (0..NODES)
        .map(|i| {
            sidecar::builder()
                .upstream(upstream.url())
                .node_id(format!("deny-{i:02}"))
                .control_plane(cp.url(), state[i].path())
                .arg("--decision-report-interval")
                .arg("200ms")
                .start()
        })
        .collect();
    let v1 = cp.push(&policy("allow"));
    cp.wait_for_status("every sidecar on v1", SETTLE, |s| {
        s.as_array().is_some_and(|a| {
            a.len() == NODES
                && a.iter()
                    .all(|n| n["state"] == "SYNCED" && n["applied_version"] == v1)
        })
    });
    let files = Scratch::new("deny-files");
    let path = files.join("v2.json");
    std::fs::write(&path, policy("deny").to_string()).expect("write");
    cli(
        &cp,
        &["policy", "push", "--stage", path.to_str().expect("utf-8")],
    );
    (cp, upstream, state, sidecars, v1)
}

/// Calls [`TOOL`] through every sidecar, round after round, until the
/// rollout pauses; the paused status and every answer's `isError`.
fn traffic_until_paused(cp: &mut ControlPlane, sidecars: &[Sidecar]) -> (Value, Vec<bool>) {
    let sessions: Vec<String> = sidecars
        .iter()
        .map(|sc| net::open_mcp_session(sc.listen, "deny-rate-e2e").0)
        .collect();
    let deadline = Instant::now() + SETTLE;
    let mut n = 0u64;
    let mut errors = Vec::new();
    loop {
        for (sc, session) in sidecars.iter().zip(&sessions) {
            n += 1;
            let call = json!({
                "jsonrpc": "2.0", "id": n + 10, "method": "tools/call",
                "params": { "name": TOOL, "arguments": { "name": format!("c{n}") } }
            });
            let reply = net::post_mcp(sc.listen, Some(session), &call.to_string());
            assert_eq!(reply.status, 200, "{}", reply.text());
            errors.push(answer(&reply.text(), n + 10)["result"]["isError"] == true);
        }
        let status: Value = serde_json::from_str(cli(cp, &["rollout", "status", "--json"]).trim())
            .expect("status JSON");
        if status["state"] == "Paused" {
            return (status, errors);
        }
        cp.process().assert_running();
        assert!(Instant::now() < deadline, "never paused: {status:#}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_version_that_denies_a_tool_under_traffic_pauses_the_canary_step() {
    let (mut cp, _upstream, _state, sidecars, v1) = fleet();
    cli(
        &cp,
        &[
            "rollout",
            "start",
            "--version",
            &(v1 + 1).to_string(),
            "--steps",
            "10,50,100",
            "--bake",
            "1h",
            "--min-calls",
            "5",
            "--max-deny-rate-increase",
            "0.05",
        ],
    );
    let (paused, _) = traffic_until_paused(&mut cp, &sidecars);
    let reason = paused["reason"].as_str().unwrap_or_default();
    assert!(
        reason.starts_with("step 1 of 3 (Enforcing): deny rate 1.000"),
        "{reason}"
    );
    assert_eq!(paused["nodes_chosen"], 1, "{paused:#}");
    eprintln!("{}", cli(&cp, &["rollout", "status"]));
    // Nobody else was sent the version.
    let table = cp.status();
    let on_new = table
        .as_array()
        .into_iter()
        .flatten()
        .filter(|n| n["desired_version"] == v1 + 1)
        .count();
    assert_eq!(on_new, 1);
}

#[test]
fn a_shadow_reports_what_it_would_deny_while_agents_see_only_live_decisions() {
    let (mut cp, _upstream, _state, sidecars, v1) = fleet();
    cli(
        &cp,
        &[
            "rollout",
            "start",
            "--version",
            &(v1 + 1).to_string(),
            "--steps",
            "10,50,100",
            "--shadow",
            "1h",
            "--min-calls",
            "5",
        ],
    );
    let (paused, errors) = traffic_until_paused(&mut cp, &sidecars);
    // Agents saw only the live version's decisions: every call allowed.
    assert!(errors.iter().all(|e| !e), "a call was denied: {errors:?}");
    let reason = paused["reason"].as_str().unwrap_or_default();
    assert!(
        reason.starts_with("step 1 of 3 (Shadow): deny rate 1.000"),
        "{reason}"
    );
    let would = &paused["differences"][0];
    assert_eq!(
        (&would["tool"], &would["live"], &would["shadow"]),
        (&json!(TOOL), &json!("allow"), &json!("deny")),
        "{paused:#}"
    );
    let sample = &paused["samples"][0];
    assert_eq!(
        sample["shadow_rule"],
        format!("/tools/{TOOL}"),
        "{sample:#}"
    );
    assert_eq!(sample["arguments_sha256"].as_str().map(str::len), Some(64));
    let shown = cli(&cp, &["rollout", "status"]);
    assert!(shown.contains(&format!("{TOOL}: allow → deny")), "{shown}");
    eprintln!("{shown}");
}
