//! `tollgate inject`'s golden outputs (controlplane/tests/fixtures/inject)
//! as Kubernetes' own tooling reads them: Debian's `kubectl kustomize`
//! (Go's YAML reader) renders each one into the same objects this project's
//! YAML reader sees, and every object round-trips through the typed
//! Kubernetes structs with no field lost.

use std::path::{Path, PathBuf};

use serde_json::Value;
use tollgate_e2e::bins::workspace_root;
use tollgate_e2e::kube::{self, Kubectl};
use tollgate_e2e::scratch::Scratch;

fn goldens() -> Vec<PathBuf> {
    let dir = workspace_root().join("controlplane/tests/fixtures/inject");
    let mut out: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.to_string_lossy().contains(".injected."))
        .collect();
    out.sort();
    out
}

/// The objects of a stream, Lists opened into their items.
fn objects(docs: Vec<Value>) -> Vec<Value> {
    let mut out = Vec::new();
    for doc in docs {
        match (doc["apiVersion"].as_str(), doc["kind"].as_str()) {
            (Some("v1"), Some("List")) => {
                out.extend(doc["items"].as_array().cloned().unwrap_or_default());
            }
            _ => out.push(doc),
        }
    }
    out.sort_by_key(|o| format!("{}/{}", o["kind"], o["metadata"]["name"]));
    out
}

fn read_objects(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let docs = if path.extension().is_some_and(|e| e == "json") {
        vec![serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))]
    } else {
        kube::documents(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    };
    objects(docs)
}

#[test]
fn kubectl_reads_every_injected_output_as_tollgate_wrote_it() {
    let Some(kubectl) = Kubectl::require() else {
        return;
    };
    let goldens = goldens();
    assert!(goldens.len() >= 9, "golden files missing: {goldens:?}");
    for golden in goldens {
        let name = golden
            .file_name()
            .expect("name")
            .to_string_lossy()
            .into_owned();
        let ours = read_objects(&golden);
        for (i, object) in ours.iter().enumerate() {
            if let Err(m) = kube::round_trip(object) {
                panic!("{name} object {i}: {m}");
            }
        }
        let dir = Scratch::new("k8s-injected");
        std::fs::copy(&golden, dir.join(&name)).expect("copy");
        std::fs::write(
            dir.join("kustomization.yaml"),
            format!("resources:\n  - {name}\n"),
        )
        .expect("kustomization");
        let rendered = kubectl
            .kustomize(dir.path())
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let theirs = objects(kube::documents(&rendered).unwrap_or_else(|e| panic!("{name}: {e}")));
        assert_eq!(ours, theirs, "{name}: kubectl reads it differently");
    }
}
