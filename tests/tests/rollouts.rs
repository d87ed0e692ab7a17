//! Staged rollouts as whole binaries (issue 15): `tollgate serve`, ten
//! `tollgate-sidecar --control-plane …` processes with their own state dirs
//! and labels, the demo MCP server upstream, and the operator CLI.
//!
//! - a version staged with `policy push --stage` reaches nobody; `rollout
//!   start --steps 10,50,100 --bake …` moves one node, then five, then ten,
//!   each step only after its nodes ACKed and baked; `rollout rollback`
//!   returns every node to the old version, SYNCED on it and enforcing it;
//! - the node a step chose keeps its place when its sidecar restarts and
//!   when the control plane restarts mid-rollout (placement is a pure
//!   function of the rollout and node ids, the rollout is stored).
//!
//! (A node refusing a chosen version, and the shadow phase with decision
//! reports, are covered with tonic nodes in `controlplane/tests/rollouts.rs`.)

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tollgate_e2e::controlplane::ControlPlane;
use tollgate_e2e::{DemoUpstream, Process, Scratch, Sidecar, bins, sidecar};

/// How many sidecars.
const NODES: usize = 10;
/// How long the fleet may take to reach a state (a push reaches it in well
/// under a second; sidecars back off up to 30 s while the control plane is
/// down).
const SETTLE: Duration = Duration::from_secs(45);

fn node_id(i: usize) -> String {
    format!("rollout-{i:02}")
}

fn policy(tag: &str) -> Value {
    json!({
        "version": "1",
        "default": "deny",
        "tools": { "echo": { "action": "allow" }, tag: { "action": "allow" } }
    })
}

struct Fleet {
    sidecars: Vec<Option<Sidecar>>,
    cp: ControlPlane,
    upstream: DemoUpstream,
    state: Vec<Scratch>,
    files: Scratch,
}

impl Fleet {
    fn start() -> Fleet {
        let cp = ControlPlane::start();
        let upstream = DemoUpstream::start();
        let state = (0..NODES).map(|i| Scratch::new(&node_id(i))).collect();
        let mut fleet = Fleet {
            sidecars: Vec::new(),
            cp,
            upstream,
            state,
            files: Scratch::new("rollout-files"),
        };
        for i in 0..NODES {
            let sc = fleet.sidecar(i);
            fleet.sidecars.push(Some(sc));
        }
        fleet
    }

    fn sidecar(&self, i: usize) -> Sidecar {
        sidecar::builder()
            .upstream(self.upstream.url())
            .node_id(node_id(i))
            .control_plane(self.cp.url(), self.state[i].path())
            .arg("--labels")
            .arg(format!("app=e2e,slot={i}"))
            .start()
    }

    /// `tollgate <args…>`, which must succeed; its stdout.
    fn cli(&self, args: &[&str]) -> String {
        let out = self.cp.cli(args);
        assert!(
            out.status.success(),
            "tollgate {args:?} failed ({}):\n{}{}",
            out.status,
            out.stdout,
            out.stderr
        );
        out.stdout
    }

    /// `policy push --stage` of `policy`; its version.
    fn stage(&self, policy: &Value) -> u64 {
        let path = self.files.join("staged.json");
        std::fs::write(&path, policy.to_string()).expect("write the policy file");
        let out = self.cli(&[
            "policy",
            "push",
            "--stage",
            path.to_str().expect("utf-8 path"),
        ]);
        // `staged version N; roll it out with …`
        out.split_whitespace()
            .nth(2)
            .and_then(|n| n.trim_end_matches(';').parse().ok())
            .unwrap_or_else(|| panic!("no version in: {out}"))
    }

    fn rollout(&self) -> Value {
        let out = self.cli(&["rollout", "status", "--json"]);
        serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"))
    }

    /// Node ids whose `desired_version` and `applied_version` are both
    /// `version`, SYNCED and connected; panics if any node wants `version`
    /// without running it yet (`None`, to wait).
    fn on(status: &Value, version: u64) -> Option<Vec<String>> {
        let mut out = Vec::new();
        for n in status.as_array().into_iter().flatten() {
            if n["desired_version"] != version {
                continue;
            }
            if n["applied_version"] != version || n["state"] != "SYNCED" || n["connected"] != true {
                return None;
            }
            out.push(n["node"].as_str().unwrap_or_default().to_owned());
        }
        out.sort();
        Some(out)
    }

    /// Waits until exactly `count` nodes run `version` (desired and
    /// applied, SYNCED) and every other of the ten is SYNCED on `other`.
    fn wait_split(&mut self, version: u64, count: usize, other: u64, what: &str) -> Vec<String> {
        let status = self.cp.wait_for_status(what, SETTLE, |s| {
            s.as_array().is_some_and(|a| a.len() == NODES)
                && Self::on(s, version).is_some_and(|on| on.len() == count)
                && (version == other
                    || Self::on(s, other).is_some_and(|on| on.len() == NODES - count))
        });
        Self::on(&status, version).unwrap_or_default()
    }

    /// `tollgate rollout status --watch`, running until stopped.
    fn watch(&self) -> Process {
        let mut cmd = std::process::Command::new(bins::tollgate());
        cmd.arg("--addr")
            .arg(self.cp.url())
            .args(["rollout", "status", "--watch"])
            .env("TOLLGATE_TOKEN_FILE", self.cp.admin_token_file())
            .env("NO_COLOR", "1");
        Process::spawn("tollgate rollout status --watch", cmd)
    }

    fn wait_rollout(&self, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + SETTLE;
        loop {
            let r = self.rollout();
            if ok(&r) {
                return r;
            }
            assert!(Instant::now() < deadline, "never: {what}; last: {r:#}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

#[test]
fn steps_move_one_then_five_then_ten_sidecars_and_rollback_returns_every_one() {
    let mut fleet = Fleet::start();
    let v1 = fleet.cp.push(&policy("one"));
    fleet.wait_split(v1, NODES, v1, "every sidecar SYNCED on v1");
    let v2 = fleet.stage(&policy("two"));
    assert_eq!(v2, v1 + 1);
    // Staged: nobody is sent it.
    fleet.wait_split(v1, NODES, v1, "still every sidecar on v1");

    let started = fleet.cli(&[
        "rollout",
        "start",
        "--version",
        &v2.to_string(),
        "--steps",
        "10,50,100",
        "--bake",
        "5s",
        "--min-calls",
        "0",
    ]);
    assert!(
        started.starts_with("started rollout r1 of version 2"),
        "{started}"
    );
    let mut watch = fleet.watch();

    let mut chosen: Vec<Vec<String>> = Vec::new();
    for (step, count) in [(1u64, 1usize), (2, 5), (3, 10)] {
        let on = fleet.wait_split(v2, count, v1, &format!("step {step}: {count} on v2"));
        let r = fleet.rollout();
        assert!(
            r["step"] == step || (step == 3 && r["state"] == "Completed"),
            "{r:#}"
        );
        eprintln!("step {step}:\n{}", fleet.cli(&["rollout", "status"]));
        if let Some(before) = chosen.last() {
            assert!(before.iter().all(|n| on.contains(n)), "{before:?} ⊄ {on:?}");
        }
        chosen.push(on);
    }
    let done = fleet.wait_rollout("completed", |r| r["state"] == "Completed");
    assert_eq!(
        (
            done["nodes_at_target"].clone(),
            done["nodes_chosen"].clone()
        ),
        (json!(10), json!(10))
    );

    // The watch printed every step as it happened, and the end.
    watch.wait_for_output("status:  Completed", SETTLE);
    let watched = watch.output();
    watch.stop();
    for step in [
        "step:    1 of 3 (10%)",
        "step:    2 of 3 (50%)",
        "step:    3 of 3 (100%)",
    ] {
        assert!(
            watched.contains(step),
            "no {step:?} in the watch:\n{watched}"
        );
    }
    eprintln!("tollgate rollout status --watch:\n{watched}");

    fleet.cli(&["rollout", "rollback"]);
    fleet.wait_split(v1, NODES, v1, "every sidecar back on v1");
    let back = fleet.wait_rollout("rolled back", |r| r["nodes_at_target"] == 10);
    assert_eq!(back["state"], "RolledBack");
    // The sidecars enforce v1 again.
    for sc in fleet.sidecars.iter().flatten() {
        let deadline = Instant::now() + SETTLE;
        while sc.readiness().trim() != format!("ready: policy v{v1}") {
            assert!(Instant::now() < deadline, "{:?}", sc.readiness());
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    // Audited.
    let audit = fleet.cli(&["audit"]);
    assert!(
        audit.contains("rollout.start") && audit.contains("rollout.act"),
        "{audit}"
    );
}

#[test]
fn the_chosen_sidecar_keeps_its_place_across_its_restart_and_the_control_planes() {
    let mut fleet = Fleet::start();
    let v1 = fleet.cp.push(&policy("one"));
    fleet.wait_split(v1, NODES, v1, "every sidecar SYNCED on v1");
    let v2 = fleet.stage(&policy("two"));
    fleet.cli(&[
        "rollout",
        "start",
        "--version",
        &v2.to_string(),
        "--steps",
        "10,50,100",
        "--bake",
        "1h",
    ]);
    let first = fleet.wait_split(v2, 1, v1, "one sidecar on v2");
    let i: usize = first[0]
        .trim_start_matches("rollout-")
        .parse()
        .expect("a node index");

    // Its sidecar restarts: it comes back on v2 (from its state dir) and
    // stays chosen.
    fleet.sidecars[i] = None;
    fleet.sidecars[i] = Some(fleet.sidecar(i));
    assert_eq!(
        fleet.wait_split(v2, 1, v1, "after the sidecar's restart"),
        first
    );

    // The control plane restarts mid-rollout: the same node, still step 1.
    fleet.cp.restart();
    assert_eq!(
        fleet.wait_split(v2, 1, v1, "after the control plane's restart"),
        first
    );
    let r = fleet.rollout();
    assert_eq!(
        (r["id"].clone(), r["state"].clone(), r["step"].clone()),
        (json!("r1"), json!("Progressing"), json!(1))
    );
    // A plain push is refused while it runs, naming it.
    let path = fleet.files.join("plain.json");
    std::fs::write(&path, policy("three").to_string()).expect("write");
    let out = fleet
        .cp
        .cli(&["policy", "push", path.to_str().expect("utf-8")]);
    assert!(!out.status.success());
    assert!(
        out.stderr.contains("rollout r1 of version 2"),
        "{}",
        out.stderr
    );
}
