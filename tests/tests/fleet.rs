//! Fleet mode as whole binaries (issue 4): `tollgate serve`, three
//! `tollgate-sidecar --control-plane …` each with its own state dir, the
//! sidecar's demo MCP server as the upstream, and plain JSON-RPC over HTTP
//! through each sidecar.
//!
//! - a push reaches every sidecar: all `SYNCED` in `tollgate status --json`
//!   and enforcing it; the next push changes what they enforce;
//! - the sidecars outlive the control plane: they keep enforcing the last
//!   bundle, a sidecar restarted meanwhile enforces it from its state dir at
//!   once, and after the control plane's restart they are `SYNCED` again
//!   without any bundle being resent;
//! - an invalid push is refused with its errors and changes nothing;
//! - each sidecar holds one connection to the control plane, shared by its
//!   policy and quota streams, before and after the control plane's restart.
//!
//! (A node that NACKs is covered in `controlplane/tests/distribution.rs`.)

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tollgate_e2e::controlplane::{self, ControlPlane};
use tollgate_e2e::net::{self, Reply};
use tollgate_e2e::{DemoUpstream, Scratch, Sidecar, sidecar};

/// The tool every scenario calls (the demo server's).
const TOOL: &str = "create_test_session_context";
/// The reason v2 gives for denying it.
const V2_REASON: &str = "v2: test sessions are frozen during the incident";
/// The sidecars' node ids.
const NODES: [&str; 3] = ["fleet-a", "fleet-b", "fleet-c"];
/// How long a push may take to reach every sidecar (the goal is < 1 s).
const SYNC: Duration = Duration::from_secs(10);
/// How long the sidecars may take to come back after the control plane's
/// restart: their backoff grows towards 30 s (full jitter) while it is down.
const RESYNC: Duration = Duration::from_secs(40);

/// v1: allows the tool.
fn policy_v1() -> Value {
    json!({
        "version": "1",
        "default": "deny",
        "tools": { TOOL: { "action": "allow" } }
    })
}

/// v2: denies it, with [`V2_REASON`].
fn policy_v2() -> Value {
    json!({
        "version": "1",
        "default": "deny",
        "tools": { TOOL: { "action": "deny", "reason": V2_REASON } }
    })
}

/// A control plane, the demo upstream and three sidecars connected to both.
struct Fleet {
    // Sidecars first: they stop before the control plane and the upstream.
    sidecars: Vec<Sidecar>,
    cp: ControlPlane,
    upstream: DemoUpstream,
    /// One state dir per node, outliving its sidecar.
    state: Vec<Scratch>,
}

impl Fleet {
    /// Starts everything; no policy is pushed yet, so the sidecars are live
    /// but not ready.
    fn start() -> Fleet {
        let cp = ControlPlane::start();
        let upstream = DemoUpstream::start();
        let state: Vec<Scratch> = NODES.iter().map(|n| Scratch::new(n)).collect();
        let mut fleet = Fleet {
            sidecars: Vec::new(),
            cp,
            upstream,
            state,
        };
        for i in 0..NODES.len() {
            let sc = fleet.sidecar(i, false);
            fleet.sidecars.push(sc);
        }
        fleet
    }

    /// Starts node `i`'s sidecar (on fresh ports, with its state dir);
    /// with `ready`, waits for `/readyz` too.
    fn sidecar(&self, i: usize, ready: bool) -> Sidecar {
        let mut b = sidecar::builder()
            .upstream(self.upstream.url())
            .node_id(NODES[i])
            .control_plane(self.cp.url(), self.state[i].path())
            .arg("--labels")
            .arg(format!("app=e2e,slot={i}"));
        if ready {
            b = b.wait_ready();
        }
        b.start()
    }

    /// Pushes `policy` and waits until every node is `SYNCED` on it in
    /// `tollgate status --json` and each sidecar's `/readyz` names it.
    fn push_and_sync(&mut self, policy: &Value) -> u64 {
        let version = self.cp.push(policy);
        let started = Instant::now();
        self.wait_synced(version, SYNC, "after the push");
        wait_readiness(&mut self.sidecars, version, SYNC);
        eprintln!(
            "version {version} SYNCED on {} nodes in {:?}",
            NODES.len(),
            started.elapsed()
        );
        version
    }

    /// Waits until every node is connected and `SYNCED` on `version`.
    fn wait_synced(&mut self, version: u64, timeout: Duration, what: &str) -> Value {
        self.cp.wait_for_status(
            &format!("{what}: all nodes SYNCED on version {version}"),
            timeout,
            |s| NODES.iter().all(|n| synced(s, n, version)),
        )
    }
}

/// Whether `node` is in `status`, connected, `SYNCED`, applying `version`.
fn synced(status: &Value, node: &str, version: u64) -> bool {
    status.as_array().into_iter().flatten().any(|n| {
        n["node"] == node
            && n["state"] == "SYNCED"
            && n["connected"] == true
            && n["applied_version"] == version
    })
}

/// Waits until each sidecar's `/readyz` is `ready: policy v<version>`.
fn wait_readiness(sidecars: &mut [Sidecar], version: u64, timeout: Duration) {
    let want = format!("ready: policy v{version}");
    let deadline = Instant::now() + timeout;
    for sc in sidecars {
        while sc.readiness().trim() != want {
            sc.process().assert_running();
            assert!(
                Instant::now() < deadline,
                "/readyz of {} is {:?}, not {want:?}",
                sc.admin,
                sc.readiness()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// A Streamable HTTP MCP session with the demo server, through a sidecar.
struct Session {
    addr: SocketAddr,
    id: String,
    next: u64,
}

impl Session {
    /// `initialize` and `notifications/initialized` through the sidecar at `addr`.
    fn open(addr: SocketAddr) -> Session {
        let init = json!({
            "jsonrpc": "2.0", "id": 0, "method": "initialize",
            "params": {
                "protocolVersion": "2025-06-18",
                "capabilities": {},
                "clientInfo": { "name": "tollgate-fleet-e2e", "version": "0" }
            }
        });
        let reply = post(addr, None, &init);
        assert_eq!(reply.status, 200, "initialize: {}", reply.text());
        let id = reply
            .header("mcp-session-id")
            .unwrap_or_else(|| panic!("initialize: no mcp-session-id in {:?}", reply.headers))
            .to_owned();
        let answer = message(&reply, 0);
        assert!(answer["result"]["serverInfo"].is_object(), "{answer}");
        let note = json!({ "jsonrpc": "2.0", "method": "notifications/initialized" });
        let r = post(addr, Some(&id), &note);
        assert!(
            r.status == 202 || r.status == 200,
            "initialized: {}",
            r.text()
        );
        Session { addr, id, next: 1 }
    }

    /// `tools/call TOOL {name}`: the JSON-RPC response.
    fn call(&mut self, name: &str) -> Value {
        let id = self.next;
        self.next += 1;
        let call = json!({
            "jsonrpc": "2.0", "id": id, "method": "tools/call",
            "params": { "name": TOOL, "arguments": { "name": name } }
        });
        let reply = post(self.addr, Some(&self.id), &call);
        assert_eq!(reply.status, 200, "tools/call: {}", reply.text());
        message(&reply, id)
    }
}

fn post(addr: SocketAddr, session: Option<&str>, body: &Value) -> Reply {
    let mut headers = vec![
        ("content-type", "application/json"),
        ("accept", "application/json, text/event-stream"),
        ("mcp-protocol-version", "2025-06-18"),
    ];
    if let Some(s) = session {
        headers.push(("mcp-session-id", s));
    }
    net::request(
        addr,
        "POST",
        "/mcp",
        &headers,
        Some(body.to_string().as_bytes()),
    )
    .unwrap_or_else(|e| panic!("POST http://{addr}/mcp: {e}"))
}

/// The JSON-RPC message with `id` in a reply, whether a JSON body or an SSE stream.
fn message(reply: &Reply, id: u64) -> Value {
    let text = reply.text();
    let sse = reply
        .header("content-type")
        .is_some_and(|t| t.starts_with("text/event-stream"));
    let candidates: Vec<Value> = if sse {
        text.lines()
            .filter_map(|l| l.strip_prefix("data:"))
            .filter_map(|d| serde_json::from_str(d.trim()).ok())
            .collect()
    } else {
        serde_json::from_str(&text).into_iter().collect()
    };
    candidates
        .into_iter()
        .find(|m: &Value| m["id"] == id)
        .unwrap_or_else(|| panic!("no JSON-RPC response with id {id} in: {text}"))
}

/// Asserts the upstream answered the call (the policy allowed it).
fn assert_allowed(answer: &Value, name: &str, via: &str) {
    let result = &answer["result"];
    assert!(
        result["isError"] != true && result["structuredContent"]["name"] == name,
        "{via}: expected the demo server's answer, got {answer}"
    );
}

/// Asserts the sidecar refused the call with v2's reason and version.
fn assert_denied_by_v2(answer: &Value, version: u64, via: &str) {
    let result = &answer["result"];
    let decision = &result["_meta"]["tollgate/decision"];
    assert!(
        result["isError"] == true
            && result["content"][0]["text"] == format!("Denied by policy: {V2_REASON}")
            && decision["decision"] == "deny"
            && decision["policy_version"] == format!("v{version}"),
        "{via}: expected v{version}'s refusal, got {answer}"
    );
}

/// A sidecar counter (no labels) from its `/metrics`.
fn sidecar_metric(sc: &Sidecar, name: &str) -> f64 {
    controlplane::metric(&sc.metrics(), name)
}

/// The control plane's gRPC port.
fn control_plane_port(cp: &ControlPlane) -> u16 {
    let url = cp.url();
    let port = url.rsplit(':').next().and_then(|p| p.parse().ok());
    port.unwrap_or_else(|| panic!("no port in {url}"))
}

/// Established TCP connections from process `pid` to `port` on loopback:
/// its socket inodes (`/proc/PID/fd`) matched in the TCP tables.
fn connections_to(pid: u32, port: u16) -> usize {
    let inodes: std::collections::HashSet<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("the sidecar's fds")
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter_map(|l| {
            let l = l.to_string_lossy().into_owned();
            Some(l.strip_prefix("socket:[")?.strip_suffix(']')?.to_owned())
        })
        .collect();
    let remote = format!(":{port:04X}");
    ["tcp", "tcp6"]
        .iter()
        .filter_map(|t| std::fs::read_to_string(format!("/proc/{pid}/net/{t}")).ok())
        .flat_map(|table| {
            table
                .lines()
                .skip(1)
                .map(|l| l.split_whitespace().map(str::to_owned).collect::<Vec<_>>())
                .collect::<Vec<_>>()
        })
        // Columns: sl, local, remote, state (01: ESTABLISHED), …, inode (9).
        .filter(|c| {
            c.len() > 9 && c[2].ends_with(&remote) && c[3] == "01" && inodes.contains(&c[9])
        })
        .count()
}

/// Waits until both streams of `sc` are open, then checks they share one
/// connection to the control plane's gRPC `port`.
fn assert_one_connection(sc: &mut Sidecar, port: u16, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    let open = |sc: &Sidecar| {
        sidecar_metric(sc, "tollgate_control_plane_connected") == 1.0
            && sidecar_metric(sc, "tollgate_quota_stream_connected") == 1.0
    };
    while !open(sc) {
        assert!(
            Instant::now() < deadline,
            "{}: the policy and quota streams are not both open",
            sc.admin
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let pid = sc.process().id();
    assert_eq!(
        connections_to(pid, port),
        1,
        "{}: the policy and quota streams share one connection",
        sc.admin
    );
}

#[test]
fn a_push_reaches_every_sidecar_and_the_next_one_changes_what_they_enforce() {
    let mut fleet = Fleet::start();
    for sc in &fleet.sidecars {
        let r = net::get(sc.admin, "/readyz").unwrap_or_else(|e| panic!("/readyz: {e}"));
        assert_eq!(r.status, 503, "ready before any push: {}", r.text());
    }
    let status = fleet.cp.status();
    for n in NODES {
        let row = status
            .as_array()
            .and_then(|a| a.iter().find(|r| r["node"] == n))
            .unwrap_or_else(|| panic!("{n} missing from the status before any push: {status}"));
        assert_eq!(row["state"], "NOT_SENT", "{row}");
        assert_eq!(row["labels"]["app"], "e2e", "{row}");
    }

    let v1 = fleet.push_and_sync(&policy_v1());
    assert_eq!(v1, 1);
    let grpc = control_plane_port(&fleet.cp);
    for sc in &mut fleet.sidecars {
        assert_one_connection(sc, grpc, SYNC);
    }
    let mut sessions: Vec<Session> = fleet
        .sidecars
        .iter()
        .map(|s| Session::open(s.listen))
        .collect();
    for (i, s) in sessions.iter_mut().enumerate() {
        assert_allowed(&s.call(&format!("v1-{i}")), &format!("v1-{i}"), NODES[i]);
    }

    let v2 = fleet.push_and_sync(&policy_v2());
    assert_eq!(v2, 2);
    for (i, s) in sessions.iter_mut().enumerate() {
        assert_denied_by_v2(&s.call(&format!("v2-{i}")), v2, NODES[i]);
    }
    for sc in &fleet.sidecars {
        assert_eq!(sidecar_metric(sc, "tollgate_bundles_applied_total"), 2.0);
    }
    // Pushing v2 again is a no-op naming the existing version.
    assert_eq!(fleet.cp.push(&policy_v2()), 2);
    assert_eq!(
        fleet.cp.metric("tollgate_controlplane_bundles_sent_total"),
        6.0,
        "two versions to three nodes, nothing more"
    );
}

#[test]
fn sidecars_outlive_the_control_plane_and_resync_without_a_resend() {
    let mut fleet = Fleet::start();
    fleet.push_and_sync(&policy_v1());
    let v2 = fleet.push_and_sync(&policy_v2());

    // The control plane goes away: every sidecar notices, keeps v2, serves.
    fleet.cp.stop();
    let deadline = Instant::now() + Duration::from_secs(10);
    for sc in &fleet.sidecars {
        while sidecar_metric(sc, "tollgate_control_plane_connected") != 0.0 {
            assert!(
                Instant::now() < deadline,
                "{} still reports its stream open 10 s after the control plane stopped",
                sc.admin
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    wait_readiness(&mut fleet.sidecars, v2, Duration::ZERO);
    for (i, sc) in fleet.sidecars.iter().enumerate() {
        let mut s = Session::open(sc.listen);
        assert_denied_by_v2(&s.call("while-down"), v2, NODES[i]);
    }

    // Restart one sidecar while the control plane is still down: it is
    // ready at once from its state dir and enforces v2.
    let last = NODES.len() - 1;
    drop(fleet.sidecars.pop());
    let restarted = fleet.sidecar(last, true);
    assert_eq!(restarted.readiness().trim(), format!("ready: policy v{v2}"));
    assert_denied_by_v2(
        &Session::open(restarted.listen).call("restarted"),
        v2,
        "the restarted sidecar",
    );
    assert_eq!(
        sidecar_metric(&restarted, "tollgate_bundles_applied_total"),
        0.0,
        "restored from the state dir, not received"
    );
    fleet.sidecars.push(restarted);
    let applied_before: Vec<f64> = fleet
        .sidecars
        .iter()
        .map(|s| sidecar_metric(s, "tollgate_bundles_applied_total"))
        .collect();
    assert_eq!(applied_before, [2.0, 2.0, 0.0]);

    // The control plane comes back on the same store: everyone reconnects
    // and is SYNCED on v2 without being sent anything.
    fleet.cp.restart();
    let started = Instant::now();
    fleet.wait_synced(v2, RESYNC, "after the control plane's restart");
    eprintln!(
        "all nodes SYNCED {:?} after the control plane's restart",
        started.elapsed()
    );
    // A resend would have been counted before the node could report SYNCED
    // on it; look once more a moment later anyway.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        fleet.cp.metric("tollgate_controlplane_bundles_sent_total"),
        0.0,
        "the restarted control plane resent a bundle to a node that runs it"
    );
    let applied_after: Vec<f64> = fleet
        .sidecars
        .iter()
        .map(|s| sidecar_metric(s, "tollgate_bundles_applied_total"))
        .collect();
    assert_eq!(
        applied_after, applied_before,
        "a sidecar applied a bundle again"
    );
    for sc in &fleet.sidecars {
        assert_eq!(sidecar_metric(sc, "tollgate_control_plane_connected"), 1.0);
    }
    // Both streams came back through one new connection.
    let grpc = control_plane_port(&fleet.cp);
    for sc in &mut fleet.sidecars {
        assert_one_connection(sc, grpc, RESYNC);
    }
    for (i, sc) in fleet.sidecars.iter().enumerate() {
        assert_denied_by_v2(&Session::open(sc.listen).call("after"), v2, NODES[i]);
    }
    let status = fleet.cp.status();
    assert_eq!(
        status.as_array().map(Vec::len),
        Some(NODES.len()),
        "{status:#}"
    );
}

#[test]
fn an_invalid_push_is_refused_with_its_errors_and_changes_nothing() {
    let mut fleet = Fleet::start();
    let v1 = fleet.push_and_sync(&policy_v1());
    let versions_before = fleet.cp.cli(&["policy", "versions"]);
    assert!(versions_before.status.success(), "{versions_before:?}");

    let (out, file) = fleet.cp.push_text(&format!(
        r#"{{"version": "1", "default": "maybe", "tools": {{"{TOOL}": {{"limts": []}}}}}}"#
    ));
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let shown = file.display().to_string();
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert!(
        lines.iter().all(|l| l.starts_with(&format!("{shown}: /"))),
        "every line names the file and a pointer: {}",
        out.stdout
    );
    for pointer in ["/default", &format!("/tools/{TOOL}/limts")] {
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with(&format!("{shown}: {pointer}: "))),
            "no error at {pointer}: {}",
            out.stdout
        );
    }

    let versions_after = fleet.cp.cli(&["policy", "versions"]);
    assert_eq!(versions_after.stdout, versions_before.stdout);
    assert_eq!(
        fleet
            .cp
            .metric("tollgate_controlplane_pushes_refused_total"),
        1.0
    );
    assert_eq!(
        fleet.cp.metric("tollgate_controlplane_latest_version"),
        v1 as f64
    );
    // Nothing reached the fleet.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        fleet.cp.metric("tollgate_controlplane_bundles_sent_total"),
        NODES.len() as f64
    );
    let status = fleet.wait_synced(v1, Duration::ZERO, "after the refused push");
    assert_eq!(status.as_array().map(Vec::len), Some(NODES.len()));
    for sc in &fleet.sidecars {
        assert_eq!(sc.readiness().trim(), format!("ready: policy v{v1}"));
        assert_eq!(sidecar_metric(sc, "tollgate_bundles_applied_total"), 1.0);
    }
}
