//! An injected pod, run here without a cluster: `tollgate inject` adds the
//! sidecar to a Pod manifest, and this test starts `tollgate-sidecar` with
//! exactly the injected container's arguments and downward-API environment
//! against a secured control plane, the app reaching
//! `@modelcontextprotocol/server-everything` through the `TOLLGATE_MCP_URL_*`
//! the injector gave it (the Python `mcp` SDK as the app).
//!
//! What a kubelet would provide is provided by the test, and said where it
//! is done: the volumes' paths are mapped to directories here (the identity
//! volume holds a certificate from `tollgate certs issue`, standing in for
//! cert-manager's CSI driver; the labels file is written as the downward API
//! writes it), and the pod's fixed loopback ports are mapped to free
//! 127.0.0.1 ports (a pod has a loopback of its own; this machine does not).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tollgate_e2e::controlplane::ControlPlane;
use tollgate_e2e::net::{self, free_addr};
use tollgate_e2e::process::{self, Process};
use tollgate_e2e::scratch::Scratch;
use tollgate_e2e::{Peers, Transport, bins};

const POD: &str = "agent-7f9c4-x2k8p";
const NAMESPACE: &str = "tools";

fn pod_manifest(upstream: &str) -> String {
    format!(
        "apiVersion: v1
kind: Pod
metadata:
  name: {POD}
  namespace: {NAMESPACE}
  labels:
    app: agent
    team: research
  annotations:
    tollgate.dev/upstreams: everything={upstream}
spec:
  containers:
    - name: agent
      image: agent:1.2
"
    )
}

/// The downward API's `metadata.labels` file: `key="value"` lines.
fn labels_file(labels: &serde_json::Map<String, Value>) -> String {
    labels
        .iter()
        .map(|(k, v)| format!("{k}={:?}\n", v.as_str().unwrap_or_default()))
        .collect()
}

/// Maps the pod's paths and ports to this machine's (see the file's doc).
struct PodMap {
    dirs: BTreeMap<&'static str, String>,
    ports: BTreeMap<String, String>,
}

impl PodMap {
    fn apply(&self, s: &str) -> String {
        let mut out = s.to_owned();
        for (from, to) in self.dirs.iter().map(|(f, t)| (*f, t.as_str())) {
            out = out.replace(from, to);
        }
        for (from, to) in &self.ports {
            out = out.replace(from, to);
        }
        out
    }
}

fn wait_ready(admin: SocketAddr, path: &str, sidecar: &mut Process) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if net::get(admin, path).is_ok_and(|r| r.status == 200) {
            return;
        }
        sidecar.assert_running();
        assert!(
            Instant::now() < deadline,
            "the startup probe {path} did not pass within 30 s; the sidecar's output:\n{}",
            sidecar.output()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn an_injected_pods_sidecar_joins_the_fleet_and_governs_the_apps_calls() {
    let Some(peers) = Peers::require() else {
        return;
    };
    let everything = peers.everything(Transport::StreamableHttp);
    let mut cp = ControlPlane::start_secured(&[]);
    cp.push(&json!({
        "version": "1",
        "default": "allow",
        "tools": { "get-sum": { "action": "deny", "reason": "Sums go through the ledger service." } }
    }));

    // `tollgate inject`, as an operator runs it.
    let scratch = Scratch::new("k8s-pod");
    let manifest = scratch.join("pod.yaml");
    std::fs::write(&manifest, pod_manifest(&everything.url())).expect("write manifest");
    let mut cmd = process::command(bins::tollgate());
    cmd.args(["inject", "-f"])
        .arg(&manifest)
        .args(["--control-plane", &cp.url()]);
    let out = process::run("tollgate inject", cmd, None, Duration::from_secs(30));
    assert!(out.status.success(), "inject failed:\n{}", out.stderr);
    assert!(
        out.stderr.contains("pod/agent-7f9c4-x2k8p injected"),
        "{}",
        out.stderr
    );
    let pod: Value = serde_saphyr::from_str(&out.stdout).expect("inject prints YAML");
    let sidecar = &pod["spec"]["initContainers"][0];
    assert_eq!(sidecar["name"], "tollgate-sidecar");
    assert_eq!(sidecar["restartPolicy"], "Always", "a native sidecar");
    assert_eq!(
        pod["metadata"]["labels"]["tollgate.dev/sidecar"],
        "injected"
    );

    // What the kubelet would mount.
    let dirs = BTreeMap::from([
        ("/etc/tollgate/identity", scratch.join("identity")),
        ("/etc/tollgate/podinfo", scratch.join("podinfo")),
        ("/var/run/tollgate", scratch.join("state")),
    ]);
    for dir in dirs.values() {
        std::fs::create_dir_all(dir).expect("mkdir");
    }
    let (cert, key) = cp.issue_node_cert(POD, NAMESPACE);
    let identity = &dirs["/etc/tollgate/identity"];
    std::fs::copy(&cert, identity.join("tls.crt")).expect("copy cert");
    std::fs::copy(&key, identity.join("tls.key")).expect("copy key");
    std::fs::copy(cp.certs_dir().join("ca.pem"), identity.join("ca.crt")).expect("copy ca");
    let labels = pod["metadata"]["labels"].as_object().expect("labels");
    std::fs::write(
        dirs["/etc/tollgate/podinfo"].join("labels"),
        labels_file(labels),
    )
    .expect("write labels");

    let (mcp, admin) = (free_addr(), free_addr());
    let map = PodMap {
        dirs: dirs
            .iter()
            .map(|(k, v)| (*k, v.to_string_lossy().into_owned()))
            .collect(),
        ports: BTreeMap::from([
            ("127.0.0.1:15080".to_owned(), mcp.to_string()),
            ("0.0.0.0:15090".to_owned(), admin.to_string()),
        ]),
    };

    // The sidecar container: its args as injected (paths and ports mapped),
    // its environment from the downward API.
    let mut cmd = process::command(bins::sidecar());
    for arg in sidecar["args"].as_array().expect("args") {
        cmd.arg(map.apply(arg.as_str().expect("arg")));
    }
    for var in sidecar["env"].as_array().expect("env") {
        let value = match var["valueFrom"]["fieldRef"]["fieldPath"].as_str() {
            Some("metadata.name") => POD,
            Some("metadata.namespace") => NAMESPACE,
            other => panic!("an env var the test cannot provide: {other:?} in {var}"),
        };
        cmd.env(var["name"].as_str().expect("name"), value);
    }
    let mut side = Process::spawn("injected-sidecar", cmd);
    let probe = sidecar["startupProbe"]["httpGet"]["path"]
        .as_str()
        .expect("startup probe");
    assert_eq!(sidecar["startupProbe"]["httpGet"]["port"], 15090);
    wait_ready(admin, probe, &mut side);

    // The fleet sees the pod: its node id, namespace and labels.
    let status = cp.wait_for_status("the pod SYNCED", Duration::from_secs(30), |s| {
        s.as_array().is_some_and(|rows| {
            rows.iter()
                .any(|r| r["node"] == POD && r["state"] == "SYNCED")
        })
    });
    let row = status
        .as_array()
        .and_then(|rows| rows.iter().find(|r| r["node"] == POD))
        .expect("the pod's row");
    assert_eq!(row["namespace"], NAMESPACE, "{row:#}");
    assert_eq!(row["labels"]["app"], "agent", "{row:#}");
    assert_eq!(row["labels"]["team"], "research", "{row:#}");
    assert_eq!(
        row["identity"], "spiffe://cluster.local/ns/tools/sa/default",
        "{row:#}"
    );

    // What an operator sees (printed for the README with --nocapture).
    let table = cp.cli(&["status"]);
    println!("$ tollgate status\n{}", table.stdout);
    let line = table.stdout.lines().find(|l| l.contains(POD));
    assert!(
        line.is_some_and(|l| l.contains("SYNCED")),
        "{}",
        table.stdout
    );

    // The app, with the environment the injector gave it.
    let env = pod["spec"]["containers"][0]["env"].as_array().expect("env");
    let url_of = |name: &str| {
        env.iter()
            .find(|e| e["name"] == name)
            .and_then(|e| e["value"].as_str())
            .map(|v| map.apply(v))
            .unwrap_or_else(|| panic!("no {name} in the app's env: {env:?}"))
    };
    let url = url_of("TOLLGATE_MCP_URL_EVERYTHING");
    assert_eq!(url, url_of("TOLLGATE_MCP_URL"));
    let out = peers.client().steps(
        &url,
        &json!([
            { "op": "call", "name": "echo", "arguments": { "message": "from the pod" } },
            { "op": "call", "name": "get-sum", "arguments": { "a": 1, "b": 2 } }
        ]),
    );
    let echo = &out["results"][0]["result"];
    assert!(
        echo["content"][0]["text"]
            .as_str()
            .is_some_and(|t| t.contains("from the pod")),
        "{out:#}"
    );
    let denied = &out["results"][1]["result"];
    assert_eq!(
        denied["_meta"]["tollgate/decision"]["decision"], "deny",
        "{out:#}"
    );
    assert!(denied.to_string().contains("ledger service"), "{out:#}");

    // Metrics are there for a scraper on the admin port.
    let metrics = net::get(admin, "/metrics").expect("metrics");
    assert_eq!(metrics.status, 200);
    assert!(Path::new(&map.apply("/var/run/tollgate")).exists());
}
