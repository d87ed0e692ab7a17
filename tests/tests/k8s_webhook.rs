//! The Kubernetes admission webhook as a whole binary: `tollgate serve
//! --webhook-addr` with `tollgate certs init` certificates, sent the
//! AdmissionReview requests recorded in `tests/fixtures/k8s/admission/` as a
//! real API server sends them, over HTTPS trusting the CA.
//!
//! - a pod create (labelled, with an upstreams annotation; unlabelled and
//!   named by generateName; a dry run) is allowed with a JSONPatch, and the
//!   patch applied to the pod gives exactly what `tollgate inject -f -`
//!   prints for that pod with the same options;
//! - an opted-out pod is allowed unpatched; malformed reviews (not JSON, no
//!   request, admission.k8s.io/v1beta1, not a Pod) are denied with a message
//!   naming the problem, and the server keeps answering;
//! - an oversized body is refused with 413, GET with 405, another path with
//!   404, plaintext HTTP never gets an answer; the counter of reviews moved;
//! - its own certificate (`--webhook-cert`), rotated on disk, serves the
//!   next connection without a restart;
//! - without a certificate or a control plane URL, serve refuses to start.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use tollgate_e2e::controlplane::ControlPlane;
use tollgate_e2e::https::Client;
use tollgate_e2e::net::{self, Reply, free_addr};
use tollgate_e2e::{Scratch, bins, process};

/// The injection options, given alike to the webhook and `tollgate inject`.
const IMAGE: &str = "registry.example/tollgate:e2e";
const CONTROL_PLANE: &str = "https://tollgate.tollgate-system.svc:50051";
const CA_CONFIG_MAP: &str = "tollgate-ca";
const DEFAULT_UPSTREAM: &str = "tools=http://tools.tools.svc:8080/mcp";

/// The pod creates the webhook patches.
const INJECTED: [&str; 3] = [
    "pod-create.json",
    "pod-create-no-labels.json",
    "pod-dry-run.json",
];

/// Malformed reviews and a word their denial must name.
const MALFORMED: [(&str, &str); 4] = [
    ("malformed-not-json.json", "json"),
    ("malformed-no-request.json", "request"),
    ("malformed-v1beta1.json", "v1"),
    ("malformed-not-a-pod.json", "pod"),
];

fn fixture_path(name: &str) -> PathBuf {
    bins::workspace_root()
        .join("tests/fixtures/k8s/admission")
        .join(name)
}

fn fixture(name: &str) -> Vec<u8> {
    let path = fixture_path(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

fn fixture_json(name: &str) -> Value {
    serde_json::from_slice(&fixture(name)).unwrap_or_else(|e| panic!("{name} is not JSON: {e}"))
}

/// POSTs `body` to `/inject` as the API server does (with its `timeout`
/// query).
fn post(client: &Client, hook: SocketAddr, body: &[u8]) -> Reply {
    client
        .request(
            hook,
            "POST",
            "/inject?timeout=10s",
            &[("Content-Type", "application/json")],
            Some(body),
        )
        .unwrap_or_else(|e| panic!("POST /inject to {hook}: {e}"))
}

/// POSTs a fixture and returns its AdmissionReview answer's `response`,
/// after checking the envelope (200, JSON, AdmissionReview v1).
fn review(client: &Client, hook: SocketAddr, name: &str) -> Value {
    let reply = post(client, hook, &fixture(name));
    assert_eq!(reply.status, 200, "{name}: {}", reply.text());
    assert!(
        reply
            .header("content-type")
            .is_some_and(|t| t.starts_with("application/json")),
        "{name}: {:?}",
        reply.headers
    );
    let answer: Value = serde_json::from_slice(&reply.body)
        .unwrap_or_else(|e| panic!("{name}: the answer is not JSON ({e}): {}", reply.text()));
    assert_eq!(
        answer["apiVersion"], "admission.k8s.io/v1",
        "{name}: {answer:#}"
    );
    assert_eq!(answer["kind"], "AdmissionReview", "{name}: {answer:#}");
    answer["response"].clone()
}

/// The JSON Patch in an allowed response. The API server reads `patch` as
/// Go's `[]byte`: a base64 string, or an array of byte values; either is
/// taken.
fn patch_of(name: &str, response: &Value) -> json_patch::Patch {
    assert_eq!(response["patchType"], "JSONPatch", "{name}: {response:#}");
    let bytes: Vec<u8> = match &response["patch"] {
        Value::Array(_) => serde_json::from_value(response["patch"].clone())
            .unwrap_or_else(|e| panic!("{name}: the patch is not bytes ({e}): {response:#}")),
        other => {
            serde_json::from_value::<k8s_openapi::ByteString>(other.clone())
                .unwrap_or_else(|e| panic!("{name}: the patch is not base64 ({e}): {response:#}"))
                .0
        }
    };
    serde_json::from_slice(&bytes).unwrap_or_else(|e| {
        panic!(
            "{name}: the patch is not a JSON Patch ({e}): {}",
            String::from_utf8_lossy(&bytes)
        )
    })
}

/// What `tollgate inject -f -` prints for `object` (JSON in, JSON out),
/// with the options the webhook was given.
fn inject_cli(name: &str, object: &Value) -> Value {
    let mut cmd = Command::new(bins::tollgate());
    cmd.args([
        "inject",
        "-f",
        "-",
        "--control-plane",
        CONTROL_PLANE,
        "--image",
        IMAGE,
        "--ca-config-map",
        CA_CONFIG_MAP,
        "--upstream",
        DEFAULT_UPSTREAM,
    ])
    .env("NO_COLOR", "1");
    let input = object.to_string();
    let out = process::run(
        "tollgate inject",
        cmd,
        Some(input.as_bytes()),
        Duration::from_secs(30),
    );
    assert!(
        out.status.success(),
        "{name}: tollgate inject failed ({}):\n{}{}",
        out.status,
        out.stdout,
        out.stderr
    );
    serde_json::from_str(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{name}: tollgate inject printed no JSON for JSON input ({e}):\n{}",
            out.stdout
        )
    })
}

/// An injected pod's review: allowed, same uid, and the patch applied to
/// the pod is what `tollgate inject` makes of it. Returns the patch.
fn assert_injected(client: &Client, hook: SocketAddr, name: &str) -> json_patch::Patch {
    let request = fixture_json(name);
    let response = review(client, hook, name);
    assert_eq!(
        response["uid"], request["request"]["uid"],
        "{name}: {response:#}"
    );
    assert_eq!(response["allowed"], true, "{name}: {response:#}");
    let patch = patch_of(name, &response);
    assert!(!patch.0.is_empty(), "{name}: an empty patch for a new pod");
    let mut pod = request["request"]["object"].clone();
    json_patch::patch(&mut pod, &patch)
        .unwrap_or_else(|e| panic!("{name}: the patch does not apply to the pod: {e}"));
    let expected = inject_cli(name, &request["request"]["object"]);
    assert_eq!(
        pod, expected,
        "{name}: the webhook's patch and `tollgate inject` disagree"
    );
    patch
}

/// The sample `tollgate_controlplane_webhook_reviews_total{outcome="…"}`.
fn reviews_counted(metrics: &str, outcome: &str) -> f64 {
    let prefix = format!("tollgate_controlplane_webhook_reviews_total{{outcome=\"{outcome}\"}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no {prefix}sample in:\n{metrics}"))
}

#[test]
fn the_webhook_answers_reviews_with_the_patch_tollgate_inject_applies() {
    let hook = free_addr();
    let hook_arg = hook.to_string();
    // Secured: --client-ca is given, yet the webhook asks no client
    // certificate (this client has none).
    let cp = ControlPlane::start_secured(&[
        "--webhook-addr",
        &hook_arg,
        "--inject-image",
        IMAGE,
        "--inject-control-plane",
        CONTROL_PLANE,
        "--inject-ca-config-map",
        CA_CONFIG_MAP,
        "--inject-upstream",
        DEFAULT_UPSTREAM,
    ]);
    let client = Client::trusting(&cp.certs_dir().join("ca.pem"));
    let mut reviews = 0.0;

    // The recorded pods are what a real API server sends: they read into
    // the typed Pod.
    for name in INJECTED.iter().chain(["pod-opt-out.json"].iter()) {
        let object = fixture_json(name)["request"]["object"].clone();
        serde_json::from_value::<k8s_openapi::api::core::v1::Pod>(object)
            .unwrap_or_else(|e| panic!("{name}: the recorded object is not a Pod: {e}"));
    }

    // Pod creates: patched exactly as `tollgate inject` injects them.
    let mut patches = Vec::new();
    for name in INJECTED {
        patches.push(assert_injected(&client, hook, name));
        reviews += 1.0;
    }
    // A dry run is answered like the create it rehearses.
    assert_eq!(
        patches[2], patches[0],
        "a dry run got another patch than the same pod's create"
    );

    // Opted out: allowed, no patch.
    let response = review(&client, hook, "pod-opt-out.json");
    reviews += 1.0;
    assert_eq!(
        response["uid"],
        fixture_json("pod-opt-out.json")["request"]["uid"]
    );
    assert_eq!(response["allowed"], true, "{response:#}");
    assert!(
        response.get("patch").is_none_or(Value::is_null),
        "an opted-out pod was patched: {response:#}"
    );

    // Malformed: denied with a message naming the problem; each followed
    // by a good review, still answered.
    for (name, word) in MALFORMED {
        let response = review(&client, hook, name);
        reviews += 1.0;
        assert_eq!(response["allowed"], false, "{name}: {response:#}");
        let message = response["status"]["message"].as_str().unwrap_or("");
        assert!(
            message.to_lowercase().contains(word),
            "{name}: the denial does not name {word:?}: {response:#}"
        );
        if name == "malformed-v1beta1.json" {
            // Says which version it takes, beyond naming the one it got.
            assert!(
                message.replace("v1beta1", "").contains("v1"),
                "{name}: the denial does not say v1 is required: {response:#}"
            );
        }
        if name == "malformed-not-a-pod.json" {
            // Its uid could be read: echoed, so the API server shows the message.
            assert_eq!(response["uid"], fixture_json(name)["request"]["uid"]);
        }
        assert_injected(&client, hook, "pod-create.json");
        reviews += 1.0;
    }
    // HTTP-level refusals, each saying what to do.
    let too_large = (4 << 20) + 1;
    let reply = client
        .request(
            hook,
            "POST",
            "/inject",
            &[
                ("Content-Type", "application/json"),
                ("Content-Length", &too_large.to_string()),
            ],
            None,
        )
        .unwrap_or_else(|e| panic!("an oversized POST: {e}"));
    assert_eq!(reply.status, 413, "{}", reply.text());
    assert!(reply.text().contains("4 MiB"), "{}", reply.text());

    let reply = client
        .get(hook, "/inject")
        .unwrap_or_else(|e| panic!("GET /inject: {e}"));
    assert_eq!(reply.status, 405, "{}", reply.text());
    assert_eq!(reply.header("allow"), Some("POST"));
    assert!(reply.text().contains("POST /inject"), "{}", reply.text());

    let reply = client
        .request(
            hook,
            "POST",
            "/mutate",
            &[("Content-Type", "application/json")],
            Some(&fixture("pod-create.json")),
        )
        .unwrap_or_else(|e| panic!("POST /mutate: {e}"));
    assert_eq!(reply.status, 404, "{}", reply.text());
    assert!(reply.text().contains("/inject"), "{}", reply.text());

    let reply = client
        .request(
            hook,
            "POST",
            "/inject",
            &[("Content-Type", "text/plain")],
            Some(&fixture("pod-create.json")),
        )
        .unwrap_or_else(|e| panic!("POST /inject as text/plain: {e}"));
    assert_eq!(reply.status, 415, "{}", reply.text());

    let healthz = client
        .get(hook, "/healthz")
        .unwrap_or_else(|e| panic!("GET /healthz: {e}"));
    assert_eq!((healthz.status, healthz.text().as_str()), (200, "ok\n"));

    // Plaintext HTTP to the TLS port: the handshake fails, no HTTP answer.
    let plain = net::request(
        hook,
        "POST",
        "/inject",
        &[("Content-Type", "application/json")],
        Some(&fixture("pod-create.json")),
    );
    assert!(
        plain.is_err(),
        "plaintext HTTP got an HTTP answer: {plain:?}"
    );
    assert_injected(&client, hook, "pod-create.json");
    reviews += 1.0;

    // Every review answered was counted, by what it came to.
    let metrics = client
        .get(cp.http, "/metrics")
        .unwrap_or_else(|e| panic!("GET /metrics: {e}"))
        .text();
    let count =
        |outcomes: &[&str]| -> f64 { outcomes.iter().map(|o| reviews_counted(&metrics, o)).sum() };
    let all = [
        "injected",
        "updated",
        "unchanged",
        "skipped",
        "refused",
        "invalid",
    ];
    assert_eq!(count(&all), reviews, "{metrics}");
    let patched = (INJECTED.len() + MALFORMED.len() + 1) as f64;
    assert_eq!(count(&["injected"]), patched, "{metrics}");
    assert_eq!(count(&["skipped"]), 1.0, "the opt-out: {metrics}");
    assert_eq!(count(&["invalid"]), MALFORMED.len() as f64, "{metrics}");
}

#[test]
fn serve_refuses_a_webhook_without_a_certificate_or_a_control_plane_url() {
    let scratch = Scratch::new("webhook-refusals");
    let hook = free_addr().to_string();
    let grpc = free_addr().to_string();
    let serve = |more: &[&str]| {
        let mut cmd = Command::new(bins::tollgate());
        cmd.args(["serve", "--insecure-dev", "--grpc", &grpc, "--data"])
            .arg(scratch.join("data"))
            .args(["--webhook-addr", &hook])
            .args(more)
            .env("NO_COLOR", "1");
        process::run("tollgate serve", cmd, None, Duration::from_secs(30))
    };

    let out = serve(&["--inject-control-plane", CONTROL_PLANE]);
    assert!(!out.status.success(), "served without a certificate");
    assert!(
        out.stderr.contains("--webhook-cert") && out.stderr.contains("HTTPS only"),
        "{}",
        out.stderr
    );

    let certs = scratch.join("certs");
    certs_init(&certs);
    let cert = certs.join("control-plane.pem");
    let key = certs.join("control-plane-key.pem");
    let (cert, key) = (cert.to_string_lossy(), key.to_string_lossy());
    let out = serve(&["--webhook-cert", &cert, "--webhook-key", &key]);
    assert!(
        !out.status.success(),
        "served without --inject-control-plane"
    );
    assert!(
        out.stderr.contains("--inject-control-plane"),
        "{}",
        out.stderr
    );
}

/// `tollgate certs init DIR --san localhost`.
fn certs_init(dir: &Path) {
    let mut init = Command::new(bins::tollgate());
    init.arg("certs")
        .arg("init")
        .arg(dir)
        .args(["--san", "localhost"]);
    let made = process::run("tollgate certs init", init, None, Duration::from_secs(30));
    assert!(made.status.success(), "{}{}", made.stdout, made.stderr);
}

/// Renames a copy of `from` over `to` (how a rotated secret appears).
fn replace(from: &Path, to: &Path) {
    let tmp = to.with_extension("rotating");
    std::fs::copy(from, &tmp).unwrap_or_else(|e| panic!("copy {}: {e}", from.display()));
    std::fs::rename(&tmp, to).unwrap_or_else(|e| panic!("rename to {}: {e}", to.display()));
}

#[test]
fn a_rotated_webhook_certificate_serves_the_next_connection() {
    let scratch = Scratch::new("webhook-certs");
    let (first, second) = (scratch.join("first"), scratch.join("second"));
    certs_init(&first);
    certs_init(&second);
    // The webhook's own files (as a mounted secret), apart from any --tls-cert.
    let (cert, key) = (scratch.join("webhook.pem"), scratch.join("webhook-key.pem"));
    replace(&first.join("control-plane.pem"), &cert);
    replace(&first.join("control-plane-key.pem"), &key);
    let hook = free_addr();
    let (hook_arg, cert_arg, key_arg) = (
        hook.to_string(),
        cert.to_string_lossy().into_owned(),
        key.to_string_lossy().into_owned(),
    );
    let mut cp = ControlPlane::start_with_args(&[
        "--webhook-addr",
        &hook_arg,
        "--webhook-cert",
        &cert_arg,
        "--webhook-key",
        &key_arg,
        "--inject-control-plane",
        CONTROL_PLANE,
    ]);
    let pid = cp.process().id();
    let old = Client::trusting(&first.join("ca.pem"));
    let new = Client::trusting(&second.join("ca.pem"));
    let healthz = |client: &Client| client.get(hook, "/healthz").map(|r| r.status);
    assert_eq!(healthz(&old).ok(), Some(200));
    assert!(
        healthz(&new).is_err(),
        "a client trusting another CA was served"
    );

    replace(&second.join("control-plane.pem"), &cert);
    replace(&second.join("control-plane-key.pem"), &key);
    let deadline = Instant::now() + Duration::from_secs(15);
    while healthz(&new).ok() != Some(200) {
        cp.process().assert_running();
        assert!(
            Instant::now() < deadline,
            "the rotated certificate was never served"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        healthz(&old).is_err(),
        "a client trusting only the old CA still connected after the rotation"
    );
    assert_eq!(cp.process().id(), pid, "served by the same process");
}
