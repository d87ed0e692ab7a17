//! The default install (`kubectl apply -k deploy/kubernetes`), run here
//! without a cluster: Debian's `kubectl kustomize` renders it, and
//! `tollgate serve` is started with exactly the rendered Deployment's
//! arguments. It must come up, take the bootstrap token the Secret would
//! mount, answer the CLI over TLS, and serve the injection webhook with the
//! options the manifest gives, so a flag the manifests name that the binary
//! does not take, or a mounted path it does not read, fails here.
//!
//! What the kubelet would provide is provided by the test: the Secrets'
//! files are made by `tollgate certs init` and written to a scratch
//! directory the container's paths are mapped to, and the container's
//! `0.0.0.0` ports are mapped to free 127.0.0.1 ports.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tollgate_e2e::bins;
use tollgate_e2e::https::Client;
use tollgate_e2e::kube::{self, Kubectl};
use tollgate_e2e::net::free_addr;
use tollgate_e2e::process::{self, Process};
use tollgate_e2e::scratch::Scratch;

fn wait_ready(client: &Client, http: SocketAddr, cp: &mut Process) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if client.get(http, "/readyz").is_ok_and(|r| r.status == 200) {
            return;
        }
        cp.assert_running();
        assert!(
            Instant::now() < deadline,
            "the control plane was not ready within 30 s:\n{}",
            cp.output()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn the_rendered_deployment_starts_a_control_plane_that_serves_the_webhook() {
    let Some(kubectl) = Kubectl::require() else {
        return;
    };
    let rendered = kubectl
        .kustomize(&bins::workspace_root().join("deploy/kubernetes"))
        .unwrap_or_else(|e| panic!("{e}"));
    let docs = kube::documents(&rendered).expect("rendered YAML");
    let deployment = docs
        .iter()
        .find(|d| d["kind"] == "Deployment")
        .expect("a Deployment");
    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    let args: Vec<String> = container["args"]
        .as_array()
        .expect("args")
        .iter()
        .map(|a| a.as_str().expect("a string").to_owned())
        .collect();

    // The Secrets' files, as the kubelet would mount them.
    let scratch = Scratch::new("k8s-install");
    let certs = scratch.join("certs");
    let mut init = process::command(bins::tollgate());
    init.args(["certs", "init"]).arg(&certs);
    let out = process::run("certs init", init, None, Duration::from_secs(30));
    assert!(out.status.success(), "{}", out.stderr);
    let token = "tgt_0123456789abcdef_".to_owned() + &"5a".repeat(32);
    let token_file = scratch.join("token");
    std::fs::write(&token_file, &token).expect("token");
    let path = |p: std::path::PathBuf| p.to_string_lossy().into_owned();
    let (grpc, http, hook) = (free_addr(), free_addr(), free_addr());
    let map = [
        (
            "/etc/tollgate/tls/tls.crt",
            path(certs.join("control-plane.pem")),
        ),
        (
            "/etc/tollgate/tls/tls.key",
            path(certs.join("control-plane-key.pem")),
        ),
        ("/etc/tollgate/tls/ca.crt", path(certs.join("ca.pem"))),
        ("/etc/tollgate/bootstrap/token", path(token_file.clone())),
        ("/var/lib/tollgate", path(scratch.join("data"))),
        ("0.0.0.0:50051", grpc.to_string()),
        ("0.0.0.0:9902", http.to_string()),
        ("0.0.0.0:9443", hook.to_string()),
    ];
    let mapped: Vec<String> = args
        .iter()
        .map(|a| {
            map.iter()
                .fold(a.clone(), |a, (from, to)| a.replace(from, to))
        })
        .collect();
    for (from, _) in &map {
        assert!(
            args.iter().any(|a| a.contains(from)),
            "the Deployment no longer names {from}: {args:?} (update this test's mapping)"
        );
    }
    let mut cmd = process::command(bins::tollgate());
    cmd.args(&mapped);
    let mut cp = Process::spawn("controlplane-from-manifest", cmd);
    let client = Client::trusting(&certs.join("ca.pem"));
    wait_ready(&client, http, &mut cp);

    // The operator's CLI with the bootstrap token, over TLS.
    let mut status = process::command(bins::tollgate());
    status
        .args(["--addr", &format!("https://localhost:{}", grpc.port())])
        .arg("--ca")
        .arg(certs.join("ca.pem"))
        .arg("--token-file")
        .arg(&token_file)
        .arg("status");
    let out = process::run("tollgate status", status, None, Duration::from_secs(30));
    assert!(
        out.status.success(),
        "the bootstrap token from the Secret does not work:\n{}\n{}",
        out.stderr,
        cp.output()
    );

    // The webhook, answering a pod's review with the manifest's options.
    let review = json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "b1f2c0de-0000-4000-8000-000000000001",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": "agents",
            "operation": "CREATE",
            "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller"},
            "object": {
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"generateName": "agent-", "namespace": "agents",
                    "annotations": {"tollgate.dev/upstreams": "files=http://files.tools.svc:8080/mcp"}},
                "spec": {"containers": [{"name": "agent", "image": "agent:1"}]}
            },
            "dryRun": false
        }
    });
    let body = serde_json::to_vec(&review).expect("review");
    let reply = client
        .request(
            hook,
            "POST",
            "/inject",
            &[("Content-Type", "application/json")],
            Some(&body),
        )
        .expect("POST /inject");
    assert_eq!(reply.status, 200, "{}", reply.text());
    let answer: Value = serde_json::from_slice(&reply.body).expect("JSON");
    assert_eq!(answer["response"]["allowed"], true, "{answer:#}");
    let patch = answer["response"]["patch"]
        .as_str()
        .expect("a base64 patch");
    let patch = base64_json(patch);
    let sidecar_args = patch
        .as_array()
        .and_then(|ops| {
            ops.iter()
                .find(|op| op["path"] == "/spec/initContainers")
                .and_then(|op| op["value"][0]["args"].as_array())
        })
        .unwrap_or_else(|| panic!("no sidecar in the patch: {patch:#}"));
    let control_plane = args
        .iter()
        .find_map(|a| a.strip_prefix("--inject-control-plane="))
        .expect("the manifest names the control plane");
    for want in [
        format!("--control-plane={control_plane}"),
        "--ca=/etc/tollgate/ca/ca.crt".to_owned(),
        "--cert=/etc/tollgate/identity/tls.crt".to_owned(),
        "--upstream=files=http://files.tools.svc:8080/mcp".to_owned(),
    ] {
        assert!(
            sidecar_args.iter().any(|a| a == want.as_str()),
            "{want} not in the injected sidecar's args: {sidecar_args:?}"
        );
    }
}

fn base64_json(s: &str) -> Value {
    let bytes: k8s_openapi::ByteString =
        serde_json::from_value(Value::String(s.to_owned())).expect("base64");
    serde_json::from_slice(&bytes.0).expect("a JSON patch")
}
