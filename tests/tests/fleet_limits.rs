//! Fleet-wide limits as whole binaries (issue 5): `tollgate serve` and many
//! `tollgate-sidecar --control-plane …` in front of one recording upstream.
//! Every sidecar decides each call from its lease, and the limit holds across
//! the fleet:
//!
//! - twenty sidecars share a `global` limit of 100 per minute; 1,000 calls
//!   spread unevenly over them inside one window: at most 100 reach the
//!   upstream, and at least 95 (the leases follow the demand);
//! - a `grant` limit shared by three pods that carry the same grant holds
//!   across them;
//! - the control plane killed mid-window: once their leases end the sidecars
//!   admit nothing on fallback before two lease lifetimes and a window have
//!   passed (the time the control plane needs to reserve their fallback);
//!   restarted after their leases ended, it grants nothing until every node
//!   it served before has reported, and then nothing more than what is left
//!   of `max`;
//! - one of three pods cut off from the control plane (its link cut, the pod
//!   running): connected and cut-off pods together admit at most `max` in
//!   any window, the cut-off one on fallback within what is reserved for it.
//!
//! The control plane runs with short leases (`--lease-ttl 2s --lease-grace
//! 500ms`) so that its re-learning after a start takes 2.5 s, not 11 s.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tollgate_e2e::controlplane::ControlPlane;
use tollgate_e2e::link::Link;
use tollgate_e2e::net;
use tollgate_e2e::recorder::Recorder;
use tollgate_e2e::{Scratch, Sidecar, sidecar};

/// How long a new control plane re-learns before it grants anything new:
/// its lease ttl plus its grace (see [`CP_ARGS`]), and a margin.
const LEARNING: Duration = Duration::from_millis(3500);
/// Short leases, so tests wait seconds, not tens of seconds.
const CP_ARGS: [&str; 4] = ["--lease-ttl", "2s", "--lease-grace", "500ms"];

struct Fleet {
    // Sidecars first: they stop before the control plane.
    sidecars: Vec<Sidecar>,
    cp: ControlPlane,
    recorder: Recorder,
    _state: Vec<Scratch>,
    started: Instant,
}

impl Fleet {
    fn start(nodes: usize, policy: &Value) -> Fleet {
        let cp = ControlPlane::start_with_args(&CP_ARGS);
        // Its learning period began before this.
        let started = Instant::now();
        let recorder = Recorder::start();
        let state: Vec<Scratch> = (0..nodes)
            .map(|i| Scratch::new(&format!("lim-{i}")))
            .collect();
        let sidecars = (0..nodes)
            .map(|i| {
                sidecar::builder()
                    .upstream(recorder.url())
                    .node_id(format!("lim-{i:02}"))
                    .control_plane(cp.url(), state[i].path())
                    .start()
            })
            .collect();
        let fleet = Fleet {
            sidecars,
            cp,
            recorder,
            _state: state,
            started,
        };
        push_and_wait(&fleet.cp, policy, &fleet.sidecars);
        fleet
    }

    /// Waits out the control plane's learning period, then one refresh so
    /// every sidecar holds its standing lease.
    fn wait_learning(&self) {
        wait_until(self.started + LEARNING + Duration::from_millis(1500));
    }

    /// `n` calls, round robin over the sidecars, `gap` apart; how many were admitted.
    fn calls(&self, n: u64, gap: Duration, first_id: u64) -> usize {
        (0..n)
            .filter(|i| {
                let sc = &self.sidecars[*i as usize % self.sidecars.len()];
                let ok = call(sc.listen, first_id + i, None);
                std::thread::sleep(gap);
                ok
            })
            .count()
    }

    /// `tollgate limits --json`.
    fn limits(&self) -> Value {
        let out = self.cp.cli(&["limits", "--json"]);
        assert!(out.status.success(), "tollgate limits: {}", out.stderr);
        serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", out.stdout))
    }
}

/// Pushes `policy` and waits until every sidecar enforces it.
fn push_and_wait(cp: &ControlPlane, policy: &Value, sidecars: &[Sidecar]) {
    let version = cp.push(policy);
    let want = format!("ready: policy v{version}");
    let deadline = Instant::now() + Duration::from_secs(30);
    for sc in sidecars {
        while sc.readiness().trim() != want {
            assert!(
                Instant::now() < deadline,
                "a sidecar is not enforcing v{version}: {}",
                sc.readiness()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn wait_until(t: Instant) {
    if let Some(left) = t.checked_duration_since(Instant::now()) {
        std::thread::sleep(left);
    }
}

/// One `tools/call echo` through `addr`; whether it was admitted.
fn call(addr: SocketAddr, id: u64, token: Option<&str>) -> bool {
    let body = json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
                      "params": {"name": "echo", "arguments": {"message": "hi"}}});
    let bearer = token.map(|t| format!("Bearer {t}"));
    let mut headers = vec![
        ("content-type", "application/json"),
        ("accept", "application/json, text/event-stream"),
    ];
    if let Some(b) = &bearer {
        headers.push(("authorization", b.as_str()));
    }
    let reply = net::request(
        addr,
        "POST",
        "/mcp",
        &headers,
        Some(body.to_string().as_bytes()),
    )
    .unwrap_or_else(|e| panic!("POST to {addr}: {e}"));
    assert_eq!(reply.status, 200, "{}", reply.text());
    let msg: Value = serde_json::from_slice(&reply.body).unwrap_or_else(|e| panic!("{e}"));
    let result = &msg["result"];
    if result["isError"] == json!(true) {
        let decision = &result["_meta"]["tollgate/decision"]["decision"];
        assert_eq!(decision, "rate_limited", "an unexpected refusal: {msg}");
        false
    } else {
        true
    }
}

fn echo_calls(recorder: &Recorder) -> usize {
    recorder
        .requests()
        .iter()
        .flat_map(|r| r.tool_calls())
        .filter(|name| name == "echo")
        .count()
}

#[test]
fn twenty_sidecars_hold_a_global_limit_of_100_exactly() {
    let policy = json!({"version": "1", "default": "allow", "tools": {"echo": {"limits": [
        {"counter": "echo", "window": "minute", "max": 100, "scope": "global"}
    ]}}});
    let fleet = Fleet::start(20, &policy);
    fleet.wait_learning();
    // Uneven: three hot sidecars take 20 shares each, seventeen take 1.
    let weights: Vec<usize> = (0..20).map(|i| if i < 3 { 20 } else { 1 }).collect();
    let schedule: Vec<usize> = weights
        .iter()
        .enumerate()
        .flat_map(|(i, w)| std::iter::repeat_n(i, *w))
        .collect();
    let started = Instant::now();
    let mut admitted = 0;
    let mut per_node = [0usize; 20];
    for n in 0..1000u64 {
        // Interleave the nodes (31 is prime to the schedule's 77 slots, so
        // every slot comes round); spread the calls over a few refresh intervals.
        let node = schedule[(n as usize * 31) % schedule.len()];
        if call(fleet.sidecars[node].listen, n, None) {
            admitted += 1;
            per_node[node] += 1;
        }
        std::thread::sleep(Duration::from_millis(4));
    }
    let took = started.elapsed();
    let reached = echo_calls(&fleet.recorder);
    eprintln!("admitted {admitted} of 1000 in {took:?}; per node {per_node:?}");
    assert!(
        took < Duration::from_secs(50),
        "the calls must fall in one window"
    );
    assert_eq!(
        reached, admitted,
        "what reached the upstream is what was admitted"
    );
    assert!(admitted <= 100, "the fleet admitted {admitted} > 100");
    assert!(
        admitted >= 95,
        "the fleet admitted only {admitted} of a budget of 100"
    );
    let limits = fleet.cp.cli(&["limits", "--json"]);
    assert!(limits.status.success(), "{}", limits.stderr);
    eprintln!("tollgate limits --json: {}", limits.stdout);
}

#[test]
fn a_grant_limit_holds_across_pods_with_the_same_grant() {
    use sha2::{Digest, Sha256};
    let token = "tok-agent-7";
    let sha = format!("{:x}", Sha256::digest(token.as_bytes()));
    let policy = json!({
        "servers": {"default": {"version": "1", "default": "allow", "tools": {"echo": {
            "rate_limit": {"max": 12, "window": "minute"}
        }}}},
        "grants": {"agent-7": {"token_sha256": sha}}
    });
    let fleet = Fleet::start(3, &policy);
    fleet.wait_learning();
    let mut admitted = 0;
    for n in 0..90u64 {
        if call(fleet.sidecars[n as usize % 3].listen, n, Some(token)) {
            admitted += 1;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(echo_calls(&fleet.recorder), admitted);
    assert!(
        admitted <= 12,
        "three pods admitted {admitted} > 12 for one grant"
    );
    assert!(admitted >= 11, "only {admitted} of 12 admitted");
}

#[test]
fn a_control_plane_lost_mid_window_keeps_the_fallback_bound_and_relearns_without_over_granting() {
    const MAX: usize = 50;
    const NODES: usize = 5;
    // A five-minute window: the whole scenario falls inside one.
    let policy = json!({"version": "1", "default": "allow", "tools": {"echo": {"limits": [
        {"counter": "echo", "window": 300, "max": MAX, "scope": "global"}
    ]}}});
    let mut fleet = Fleet::start(NODES, &policy);
    fleet.wait_learning();
    let window_start = Instant::now();

    let before = fleet.calls(30, Duration::from_millis(20), 0);
    // Every sidecar has held a lease, so each knows its fallback.
    let holders = fleet.limits()["buckets"][0]["holders"]
        .as_array()
        .map_or(0, Vec::len);
    assert_eq!(holders, NODES);

    fleet.cp.kill();
    let killed = Instant::now();
    // Past every lease's end (2 s from its report): on_unavailable decides,
    // and fallback may not start before two lease lifetimes and the
    // five-minute window have passed.
    std::thread::sleep(Duration::from_millis(3000));
    let during = fleet.calls(100, Duration::from_millis(5), 1000);
    for sc in &mut fleet.sidecars {
        sc.process().assert_running();
    }
    assert_eq!(
        during, 0,
        "fallback admitted calls before the control plane could have reserved them"
    );

    // Past the end its data dir notes for the leases it sent (a report's
    // time + ttl + grace + 2 s): the new control plane has no lease to
    // re-learn, only the five nodes it must hear from before granting, since
    // only their reports tell what they admitted on fallback.
    wait_until(killed + Duration::from_millis(5000));
    fleet.cp.restart();
    let restarted = Instant::now();
    // While the sidecars come back one by one, then while it re-learns and
    // after: nothing beyond what is left of MAX once every call admitted so
    // far is counted. Calls keep coming as they reconnect, so a lease granted
    // to the first one back, before the others told of their fallback calls,
    // would be used.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut relearning = 0;
    let mut id = 2000;
    loop {
        relearning += fleet.calls(10, Duration::from_millis(5), id);
        id += 10;
        let l = fleet.limits();
        let connected = l["buckets"][0]["holders"]
            .as_array()
            .map_or(0, |h| h.iter().filter(|h| h["connected"] == true).count());
        if connected == NODES {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the sidecars did not come back: {l}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    relearning += fleet.calls(20, Duration::from_millis(5), id);
    wait_until(restarted + LEARNING + Duration::from_millis(1500));
    let after = fleet.calls(50, Duration::from_millis(20), 1_000_000);
    assert!(
        window_start.elapsed() < Duration::from_secs(250),
        "still one window"
    );
    let reached = echo_calls(&fleet.recorder);
    eprintln!(
        "admitted: before the loss {before}, on fallback {during}, while re-learning {relearning}, after {after}; upstream saw {reached}"
    );
    assert_eq!(reached, before + during + relearning + after);
    assert!(
        relearning + after <= MAX.saturating_sub(before + during),
        "after the restart {} more were admitted, though the window had already admitted {} of {MAX}",
        relearning + after,
        before + during
    );
}

#[test]
fn one_busy_sidecar_among_23_idle_ones_is_admitted_the_whole_global_limit() {
    const MAX: usize = 20;
    let policy = json!({"version": "1", "default": "allow", "tools": {"echo": {"limits": [
        {"counter": "echo", "window": "minute", "max": MAX, "scope": "global"}
    ]}}});
    let fleet = Fleet::start(24, &policy);
    fleet.wait_learning();
    // Every idle sidecar has asked for its standing call by now; one calls
    // every 50 ms for 12 s, all inside one window.
    let window_start = Instant::now();
    let busy = fleet.sidecars[0].listen;
    let mut busy_admitted = 0;
    let mut id = 0;
    while window_start.elapsed() < Duration::from_secs(12) {
        busy_admitted += usize::from(call(busy, id, None));
        id += 1;
        std::thread::sleep(Duration::from_millis(50));
    }
    // Then every sidecar calls, the idle ones too: the window is spent.
    let rest = fleet.calls(48, Duration::from_millis(10), 100_000);
    assert!(
        window_start.elapsed() < Duration::from_secs(50),
        "the calls must fall in one window"
    );
    let reached = echo_calls(&fleet.recorder);
    eprintln!(
        "the busy sidecar: {busy_admitted} of {id} admitted; then {rest} of 48 over the fleet; upstream saw {reached}"
    );
    assert_eq!(reached, busy_admitted + rest);
    assert!(
        busy_admitted * 100 >= MAX * 95,
        "one busy sidecar among 23 idle ones was admitted {busy_admitted} of a global {MAX} per minute"
    );
    assert!(
        busy_admitted + rest <= MAX,
        "the fleet admitted {} > {MAX} in one window",
        busy_admitted + rest
    );
}

#[test]
fn a_second_sidecar_with_a_node_id_in_use_is_refused_and_the_first_keeps_its_leases() {
    let policy = json!({"version": "1", "default": "allow", "tools": {"echo": {"limits": [
        {"counter": "echo", "window": "minute", "max": 100, "scope": "global"}
    ]}}});
    let mut fleet = Fleet::start(1, &policy);
    fleet.wait_learning();
    assert!(call(fleet.sidecars[0].listen, 0, None));
    // A second process started with the same node id.
    let state = Scratch::new("lim-twin");
    let twin = sidecar::builder()
        .upstream(fleet.recorder.url())
        .node_id("lim-00")
        .control_plane(fleet.cp.url(), state.path())
        .start();
    // The twin tries its quota stream; the first one keeps reporting. Calls
    // through the first sidecar over two lease lifetimes (2.5 s each) all
    // find its lease.
    let mut admitted = 0;
    for n in 1..=25u64 {
        admitted += usize::from(call(fleet.sidecars[0].listen, n, None));
        std::thread::sleep(Duration::from_millis(200));
    }
    let status = fleet.cp.status();
    let row = status
        .as_array()
        .and_then(|rows| rows.iter().find(|r| r["node"] == "lim-00"))
        .cloned()
        .unwrap_or_else(|| panic!("no row for lim-00: {status}"));
    eprintln!("the first sidecar: {admitted} of 25 admitted; status: {row}");
    assert_eq!(admitted, 25, "the first sidecar lost its lease to the twin");
    let conflict = row["quota_conflict"].as_str().unwrap_or_default();
    assert!(
        conflict.contains("lim-00") && conflict.contains("--node-id"),
        "tollgate status shows the conflict: {row}"
    );
    fleet.sidecars.push(twin);
    fleet._state.push(state);
}

/// One call through one pod: when it was sent and answered, and whether it
/// was admitted.
struct Sent {
    pod: usize,
    sent: Instant,
    answered: Instant,
    admitted: bool,
}

/// The most admitted calls that certainly fell inside one window: calls
/// sent after the window's start and answered by its end (a call is
/// admitted somewhere in between), over every window ending at an answer.
fn most_in_a_window(calls: &[Sent], window: Duration) -> usize {
    let admitted: Vec<&Sent> = calls.iter().filter(|c| c.admitted).collect();
    admitted
        .iter()
        .map(|end| {
            admitted
                .iter()
                .filter(|c| c.answered <= end.answered && c.sent + window > end.answered)
                .count()
        })
        .max()
        .unwrap_or(0)
}

#[test]
fn a_pod_cut_off_from_the_control_plane_keeps_the_fleet_within_max() {
    const MAX: usize = 30;
    const WINDOW: Duration = Duration::from_secs(3);
    // Leases of 2 s + 500 ms; a cut-off pod waits two of those and a window
    // (8 s) after its newest lease, then falls back for at most 4 s.
    let cp = ControlPlane::start_with_args(&[
        "--lease-ttl",
        "2s",
        "--lease-grace",
        "500ms",
        "--fallback-horizon",
        "4s",
    ]);
    let recorder = Recorder::start();
    let link = Link::to(cp.grpc);
    let state: Vec<Scratch> = (0..3).map(|i| Scratch::new(&format!("part-{i}"))).collect();
    let pods: Vec<Sidecar> = (0..3)
        .map(|i| {
            let url = if i == 2 { link.url() } else { cp.url() };
            sidecar::builder()
                .upstream(recorder.url())
                .node_id(format!("part-{i}"))
                .control_plane(url, state[i].path())
                .start()
        })
        .collect();
    let policy = json!({"version": "1", "default": "allow", "tools": {"echo": {"limits": [
        {"counter": "echo", "window": 3, "max": MAX, "scope": "global", "on_unavailable": "fallback"}
    ]}}});
    push_and_wait(&cp, &policy, &pods);
    // Every pod busy, round robin, every 5 ms: far more than the limit.
    // The third pod's link to the control plane is cut after 4 s; the calls
    // go on past the end of its fallback.
    let started = Instant::now();
    let mut cut_at = None;
    let mut calls = Vec::new();
    let mut id = 0u64;
    while started.elapsed() < Duration::from_secs(22) {
        if cut_at.is_none() && started.elapsed() >= Duration::from_secs(4) {
            link.cut();
            cut_at = Some(Instant::now());
        }
        for (pod, sc) in pods.iter().enumerate() {
            let sent = Instant::now();
            let admitted = call(sc.listen, id, None);
            calls.push(Sent {
                pod,
                sent,
                answered: Instant::now(),
                admitted,
            });
            id += 1;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let cut_at = cut_at.unwrap_or(started);
    let admitted = calls.iter().filter(|c| c.admitted).count();
    // Past its lease's end (2 s after its last report), every call the cut-off
    // pod admits is on fallback.
    let on_fallback = calls
        .iter()
        .filter(|c| c.pod == 2 && c.admitted && c.sent > cut_at + Duration::from_secs(3))
        .count();
    let connected_after = calls
        .iter()
        .filter(|c| c.pod < 2 && c.admitted && c.sent > cut_at)
        .count();
    let most = most_in_a_window(&calls, WINDOW);
    eprintln!(
        "{} calls, {admitted} admitted; after the cut, {connected_after} by the connected pods and {on_fallback} on fallback by the cut-off one; at most {most} in a window",
        calls.len()
    );
    assert_eq!(echo_calls(&recorder), admitted);
    assert!(
        on_fallback > 0,
        "the cut-off pod admitted nothing on fallback"
    );
    assert!(connected_after > 0, "the connected pods admitted nothing");
    assert!(
        most <= MAX,
        "{most} calls admitted in one window over the three pods, over max {MAX}"
    );
    drop(pods);
}
