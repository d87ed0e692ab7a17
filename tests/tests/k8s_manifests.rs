//! Tollgate's Kubernetes manifests (`deploy/kubernetes`), checked without a
//! cluster:
//!
//! - every YAML file under `deploy/` is a kustomization, a JSON Patch a
//!   kustomization names, or a resource a kustomization lists, and every
//!   resource's documents round-trip through the typed Kubernetes API
//!   structs (`tollgate_e2e::kube::round_trip`: no unknown field, no typo);
//! - Debian's kubectl 1.20 (kustomize v2.0.3, the oldest the manifests
//!   support) renders every kustomization, each output document round-trips,
//!   and each holds exactly the objects expected;
//! - in the full install (`kubectl apply -k deploy/kubernetes`) the
//!   injection webhook's service, port and path lead to the port the control
//!   plane's `--webhook-addr` serves, the NetworkPolicy lets the API server
//!   in, and the control plane's own namespace is outside the webhook;
//! - negative controls: a misspelled field is reported with its JSON pointer,
//!   also when it went through kustomize, and a miswired webhook port is
//!   reported by the cross-checks.
//!
//! The Dockerfile is checked by `dockerfile.rs`.

#[path = "k8s_manifests/webhook.rs"]
mod webhook;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde_json::Value;
use tollgate_e2e::Scratch;
use tollgate_e2e::bins::workspace_root;
use tollgate_e2e::kube::{self, Kubectl};
use webhook::{Install, WEBHOOK_CONFIG, webhook_problems, webhook_service};

fn deploy_dir() -> PathBuf {
    workspace_root().join("deploy")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// Every file under `dir` whose name ends in `.yaml` or `.yml`, sorted.
fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let entries = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()));
        for entry in entries {
            let path = entry
                .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
                .path();
            if path.is_dir() {
                pending.push(path);
            } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
                found.push(path);
            }
        }
    }
    found.sort();
    found
}

/// What one `kustomization.yaml` refers to, as paths.
#[derive(Debug, Default)]
struct Kustomization {
    /// Its folder.
    dir: PathBuf,
    /// Files under `resources:`.
    resources: Vec<PathBuf>,
    /// Patch files (`patchesJson6902[].path`, `patchesStrategicMerge`, `patches[].path`).
    patches: Vec<PathBuf>,
}

fn kustomizations() -> Vec<Kustomization> {
    let mut found = Vec::new();
    for file in yaml_files(&deploy_dir()) {
        if file.file_name().is_none_or(|n| n != "kustomization.yaml") {
            continue;
        }
        let dir = file.parent().unwrap_or(Path::new("/")).to_path_buf();
        let docs =
            kube::documents(&read(&file)).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        let [doc] = docs.as_slice() else {
            panic!(
                "{}: expected one document, found {}",
                file.display(),
                docs.len()
            );
        };
        let strings = |key: &str| -> Vec<String> {
            doc.get(key)
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|v| v.as_str().or_else(|| v.get("path")?.as_str()))
                .map(str::to_owned)
                .collect()
        };
        let mut k = Kustomization {
            dir: dir.clone(),
            ..Kustomization::default()
        };
        k.resources = strings("resources").iter().map(|r| dir.join(r)).collect();
        for key in ["patchesJson6902", "patchesStrategicMerge", "patches"] {
            k.patches.extend(strings(key).iter().map(|p| dir.join(p)));
        }
        found.push(k);
    }
    found
}

/// Checks each document of a YAML stream with the typed round-trip; one
/// line per failing document, naming `source`, the document and the pointer.
fn round_trip_stream(source: &str, yaml: &str) -> Vec<String> {
    let docs = match kube::documents(yaml) {
        Ok(docs) => docs,
        Err(e) => return vec![format!("{source}: {e}")],
    };
    if docs.is_empty() {
        return vec![format!("{source}: no documents")];
    }
    docs.iter()
        .enumerate()
        .filter_map(|(i, doc)| {
            kube::round_trip(doc).err().map(|m| {
                let kind = doc.get("kind").and_then(Value::as_str).unwrap_or("?");
                let name = doc
                    .pointer("/metadata/name")
                    .and_then(Value::as_str)
                    .unwrap_or("?");
                format!("{source}: document {i} ({kind} {name}): {m}")
            })
        })
        .collect()
}

#[test]
fn every_manifest_under_deploy_is_a_typed_object_that_round_trips() {
    let kustomizations = kustomizations();
    let patches: BTreeSet<PathBuf> = kustomizations
        .iter()
        .flat_map(|k| k.patches.clone())
        .collect();
    let listed: BTreeSet<PathBuf> = kustomizations
        .iter()
        .flat_map(|k| k.resources.clone())
        .collect();
    let resources: BTreeSet<PathBuf> = yaml_files(&deploy_dir())
        .into_iter()
        .filter(|f| f.file_name().is_some_and(|n| n != "kustomization.yaml"))
        .filter(|f| !patches.contains(f))
        .collect();
    assert!(
        resources.len() >= 7,
        "expected the control plane's objects and the webhook under deploy/, found {resources:?}"
    );
    // A file no kustomization lists is never installed: a forgotten or misnamed resource.
    assert_eq!(
        resources, listed,
        "the YAML files under deploy/ (left) and the resources the kustomizations list (right) differ"
    );

    let mut failures = Vec::new();
    for file in &resources {
        let shown = file.strip_prefix(workspace_root()).unwrap_or(file);
        failures.extend(round_trip_stream(&shown.display().to_string(), &read(file)));
    }
    for file in &patches {
        let shown = file.strip_prefix(workspace_root()).unwrap_or(file);
        match kube::documents(&read(file)).map(|docs| {
            docs.into_iter()
                .map(serde_json::from_value::<json_patch::Patch>)
                .collect::<Result<Vec<_>, _>>()
        }) {
            Ok(Ok(docs)) if docs.len() == 1 && !docs[0].0.is_empty() => {}
            Ok(Ok(docs)) => failures.push(format!(
                "{}: expected one non-empty JSON Patch, found {} documents",
                shown.display(),
                docs.len()
            )),
            Ok(Err(e)) => failures.push(format!("{}: not a JSON Patch: {e}", shown.display())),
            Err(e) => failures.push(format!("{}: {e}", shown.display())),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// (kind, namespace, name) of every object a render holds.
type Objects = BTreeSet<(String, String, String)>;

fn objects(docs: &[Value]) -> Objects {
    let field = |doc: &Value, pointer: &str| {
        doc.pointer(pointer)
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned()
    };
    docs.iter()
        .map(|d| {
            (
                field(d, "/kind"),
                field(d, "/metadata/namespace"),
                field(d, "/metadata/name"),
            )
        })
        .collect()
}

fn control_plane_objects() -> Objects {
    [
        ("Namespace", "", "tollgate-system"),
        ("ServiceAccount", "tollgate-system", "tollgate-controlplane"),
        ("PersistentVolumeClaim", "tollgate-system", "tollgate-data"),
        ("Deployment", "tollgate-system", "tollgate-controlplane"),
        ("Service", "tollgate-system", "tollgate"),
        ("NetworkPolicy", "tollgate-system", "tollgate-controlplane"),
    ]
    .into_iter()
    .map(|(k, ns, n)| (k.to_owned(), ns.to_owned(), n.to_owned()))
    .collect()
}

fn render(kubectl: &Kubectl, dir: &Path) -> Vec<Value> {
    let yaml = kubectl.kustomize(dir).unwrap_or_else(|e| panic!("{e}"));
    let failures = round_trip_stream(&format!("kubectl kustomize {}", dir.display()), &yaml);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    kube::documents(&yaml).unwrap_or_else(|e| panic!("kubectl kustomize {}: {e}", dir.display()))
}

#[test]
fn kubectl_kustomize_renders_every_kustomization_into_the_expected_typed_objects() {
    let Some(kubectl) = Kubectl::require() else {
        return;
    };
    let k8s = deploy_dir().join("kubernetes");
    let mut full = control_plane_objects();
    full.insert((
        "MutatingWebhookConfiguration".into(),
        String::new(),
        WEBHOOK_CONFIG.into(),
    ));
    let expected: BTreeMap<PathBuf, Objects> = [
        (k8s.clone(), full),
        (k8s.join("base"), control_plane_objects()),
        (k8s.join("overlays/dev"), control_plane_objects()),
        (k8s.join("overlays/secured"), control_plane_objects()),
    ]
    .into_iter()
    .collect();
    let found: BTreeSet<PathBuf> = kustomizations().into_iter().map(|k| k.dir).collect();
    assert_eq!(
        found,
        expected.keys().cloned().collect::<BTreeSet<_>>(),
        "the kustomizations under deploy/ (left) are not the ones this test knows (right): \
         add the new one's expected objects"
    );
    for (dir, want) in &expected {
        let docs = render(&kubectl, dir);
        assert_eq!(
            &objects(&docs),
            want,
            "kubectl kustomize {} rendered other objects than expected (kind, namespace, name)",
            dir.display()
        );
    }
}

fn full_install(kubectl: &Kubectl) -> Install {
    Install::from_render(&render(kubectl, &deploy_dir().join("kubernetes")))
}

#[test]
fn the_full_install_wires_the_injection_webhook_to_the_control_plane() {
    let Some(kubectl) = Kubectl::require() else {
        return;
    };
    let install = full_install(&kubectl);
    let problems = webhook_problems(&install);
    assert!(problems.is_empty(), "{}", problems.join("\n"));

    let spec = install
        .deployment
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref());
    assert_eq!(
        spec.and_then(|s| s.automount_service_account_token),
        Some(false),
        "the control plane calls no Kubernetes API: its pod must not mount a service account token"
    );
}

#[test]
fn the_webhook_cross_checks_catch_a_miswired_install() {
    let Some(kubectl) = Kubectl::require() else {
        return;
    };
    let install = full_install(&kubectl);

    // Each breakage, applied to a copy of the real install, and what the report must name.
    type Break = fn(&mut Install);
    let breakages: [(&str, Break, &str); 6] = [
        (
            "the manifest sets a caBundle",
            |i| {
                if let Some(hook) = i.webhook.webhooks.as_mut().and_then(|w| w.first_mut()) {
                    hook.client_config.ca_bundle = Some(k8s_openapi::ByteString(Vec::new()));
                }
            },
            "caBundle is in the manifest",
        ),
        (
            "the webhook calls another Service port",
            |i| {
                if let Some(svc) = webhook_service(i) {
                    svc.port = Some(8443);
                }
            },
            "calls port 8443",
        ),
        (
            "the control plane listens on another port",
            |i| {
                if let Some(c) = i
                    .deployment
                    .spec
                    .as_mut()
                    .and_then(|s| s.template.spec.as_mut())
                    .and_then(|s| s.containers.first_mut())
                {
                    for a in c.args.iter_mut().flatten() {
                        if a.starts_with("--webhook-addr=") {
                            *a = "--webhook-addr=0.0.0.0:9444".into();
                        }
                    }
                }
            },
            "no named container port is 9444",
        ),
        (
            "the webhook has another path",
            |i| {
                if let Some(svc) = webhook_service(i) {
                    svc.path = Some("/mutate".into());
                }
            },
            "path is Some(\"/mutate\")",
        ),
        (
            "the control plane's namespace is labelled for injection",
            |i| {
                i.namespace
                    .metadata
                    .labels
                    .get_or_insert_with(BTreeMap::new)
                    .insert("tollgate.dev/inject".into(), "enabled".into());
            },
            "selects tollgate-system",
        ),
        (
            "the NetworkPolicy opens the gRPC port to anyone",
            |i| {
                if let Some(rule) = i
                    .network_policy
                    .spec
                    .as_mut()
                    .and_then(|s| s.ingress.as_mut())
                    .and_then(|r| r.first_mut())
                {
                    rule.from = None;
                }
            },
            "ports open to any source",
        ),
    ];
    for (what, breakage, named) in breakages {
        let mut broken = install.clone();
        breakage(&mut broken);
        let problems = webhook_problems(&broken);
        assert!(
            problems.iter().any(|p| p.contains(named)),
            "{what}: expected a problem naming {named:?}, got {problems:#?}"
        );
    }
}

const DEPLOYMENT_WITH_TYPO: &str = "\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: app
spec:
  replica: 1
  selector:
    matchLabels: {app: app}
  template:
    metadata:
      labels: {app: app}
    spec:
      containers:
        - name: app
          image: app:1
";

#[test]
fn a_misspelled_field_is_reported_with_its_json_pointer() {
    let doc = |yaml: &str| -> Value {
        let docs = kube::documents(yaml).unwrap_or_else(|e| panic!("{e}:\n{yaml}"));
        docs.into_iter().next().unwrap_or(Value::Null)
    };
    let typo = doc(DEPLOYMENT_WITH_TYPO);
    let fixed = doc(&DEPLOYMENT_WITH_TYPO.replace("replica:", "replicas:"));
    assert_eq!(
        kube::round_trip(&fixed),
        Ok(()),
        "the corrected Deployment must pass"
    );

    let cases = [
        (typo.clone(), "/spec/replica", "dropped by the typed struct"),
        (
            doc(&DEPLOYMENT_WITH_TYPO
                .replace("replica:", "replicas:")
                .replace(
                    "image: app:1",
                    "image: app:1\n          imagePulPolicy: Always",
                )),
            "/spec/template/spec/containers/0/imagePulPolicy",
            "dropped by the typed struct",
        ),
        (
            doc(&DEPLOYMENT_WITH_TYPO.replace(
                "  name: app\n",
                "  name: app\n  labels:\n    app.kubernetes.io/name: app\n  label: {}\n",
            )),
            "/metadata/label",
            "dropped by the typed struct",
        ),
        (
            doc("apiVersion: v1\nkind: Servce\nmetadata: {name: x}\n"),
            "",
            "not a kind the typed round-trip knows",
        ),
        (
            doc(
                "apiVersion: v1\nkind: Service\nmetadata: {name: x}\nspec:\n  ports:\n    - port: web\n",
            ),
            "",
            "does not deserialize as v1 Service",
        ),
        (
            serde_json::json!({"apiVersion": "v1", "kind": "List", "items": [fixed.clone(), typo.clone()]}),
            "/items/1/spec/replica",
            "dropped by the typed struct",
        ),
    ];
    for (document, pointer, message) in cases {
        match kube::round_trip(&document) {
            Ok(()) => panic!("expected a difference at {pointer:?} in {document}"),
            Err(m) => assert!(
                m.pointer == pointer && m.message.contains(message),
                "expected {pointer:?} ({message}), got {m}"
            ),
        }
    }
}

#[test]
fn kustomize_output_keeps_a_misspelled_field_and_the_round_trip_catches_it() {
    let Some(kubectl) = Kubectl::require() else {
        return;
    };
    let scratch = Scratch::new("kustomize-typo");
    let write = |name: &str, text: &str| {
        std::fs::write(scratch.join(name), text)
            .unwrap_or_else(|e| panic!("cannot write {name}: {e}"));
    };
    write("deployment.yaml", DEPLOYMENT_WITH_TYPO);
    write(
        "kustomization.yaml",
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n\
         namespace: apps\nresources:\n  - deployment.yaml\n",
    );
    let yaml = kubectl
        .kustomize(scratch.path())
        .unwrap_or_else(|e| panic!("{e}"));
    let failures = round_trip_stream("kustomized", &yaml);
    assert!(
        failures.len() == 1 && failures[0].contains("/spec/replica: dropped by the typed struct"),
        "kustomize passes unknown fields through; the round-trip must report /spec/replica, got \
         {failures:?} for:\n{yaml}"
    );
}
