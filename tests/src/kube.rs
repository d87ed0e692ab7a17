//! Kubernetes objects in tests, without a cluster: the pinned `kubectl`
//! (Debian's kubernetes-client 1.20 with kustomize v2.0.3, unpacked under
//! `tests/peers/kubernetes-client` by `scripts/install-peers.sh`), YAML
//! streams read into JSON values, and the typed round-trip that proves a
//! document holds only fields the Kubernetes API structs (`k8s-openapi`) know.
//!
//! The round-trip: a document is dispatched on `apiVersion` and `kind` to its
//! typed struct, deserialized, serialized back, and compared with the
//! original. A field the struct does not know (a typo, a field of a newer API
//! version) is dropped by the deserializer, so it shows up as the first
//! difference, named by its JSON pointer.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::Resource;
use k8s_openapi::api::{admissionregistration, apps, batch, core, networking, policy, rbac};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ListMeta;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::bins::workspace_root;
use crate::process;

/// How long one `kubectl kustomize` may take (it reads local files only).
const KUSTOMIZE_TIMEOUT: Duration = Duration::from_secs(60);

/// The kubectl of Debian's kubernetes-client package, unpacked by
/// `scripts/install-peers.sh`. The oldest kubectl the manifests are meant to
/// work with, used whatever other kubectl the machine has.
#[derive(Debug, Clone)]
pub struct Kubectl {
    path: PathBuf,
}

impl Kubectl {
    /// The unpacked kubectl. If it is missing this panics, saying to run
    /// `scripts/install-peers.sh` — unless `TOLLGATE_SKIP_PEERS=1`, when it
    /// prints "skipped" and returns `None` (the test then returns).
    /// `TOLLGATE_PEERS_DIR` overrides the peers' folder (default `tests/peers`).
    pub fn require() -> Option<Kubectl> {
        let peers = std::env::var_os("TOLLGATE_PEERS_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| workspace_root().join("tests").join("peers"));
        let path = peers.join("kubernetes-client/usr/bin/kubectl");
        if path.is_file() {
            return Some(Kubectl { path });
        }
        if std::env::var("TOLLGATE_SKIP_PEERS").is_ok_and(|v| v == "1") {
            println!("skipped: Debian's kubectl is not unpacked (TOLLGATE_SKIP_PEERS=1)");
            return None;
        }
        panic!(
            "Debian's kubectl (kubernetes-client) is not unpacked at {}: run \
             scripts/install-peers.sh (or set TOLLGATE_SKIP_PEERS=1 to skip the tests that need it)",
            path.display()
        );
    }

    /// The binary.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `kubectl kustomize DIR`: the rendered YAML stream, or what kubectl
    /// said (exit status and stderr) when it failed.
    pub fn kustomize(&self, dir: &Path) -> Result<String, String> {
        let mut cmd = process::command(&self.path);
        cmd.arg("kustomize").arg(dir);
        let done = process::run("kubectl kustomize", cmd, None, KUSTOMIZE_TIMEOUT);
        if done.status.success() {
            Ok(done.stdout)
        } else {
            Err(format!(
                "kubectl kustomize {} exited with {}:\n{}",
                dir.display(),
                done.status,
                done.stderr.trim_end()
            ))
        }
    }
}

/// The documents of a YAML stream, as JSON values (empty documents skipped).
pub fn documents(yaml: &str) -> Result<Vec<Value>, String> {
    serde_saphyr::from_multiple::<Value>(yaml).map_err(|e| format!("not valid YAML: {e}"))
}

/// Where a document and its typed round-trip part.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mismatch {
    /// The JSON pointer (RFC 6901) in the document; empty for the whole document.
    pub pointer: String,
    /// What differs.
    pub message: String,
}

impl fmt::Display for Mismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let at = if self.pointer.is_empty() {
            "(document)"
        } else {
            &self.pointer
        };
        write!(f, "{at}: {}", self.message)
    }
}

type RoundTrip = fn(&Value) -> Result<Value, String>;

/// The kinds the round-trip knows, by `apiVersion` and `kind`.
fn typed_kinds() -> Vec<(&'static str, &'static str, RoundTrip)> {
    fn entry<T: Resource + DeserializeOwned + Serialize>() -> (&'static str, &'static str, RoundTrip)
    {
        (T::API_VERSION, T::KIND, typed::<T>)
    }
    vec![
        entry::<core::v1::Namespace>(),
        entry::<core::v1::ServiceAccount>(),
        entry::<core::v1::Service>(),
        entry::<core::v1::ConfigMap>(),
        entry::<core::v1::Secret>(),
        entry::<core::v1::PersistentVolumeClaim>(),
        entry::<core::v1::Pod>(),
        entry::<apps::v1::Deployment>(),
        entry::<apps::v1::StatefulSet>(),
        entry::<apps::v1::ReplicaSet>(),
        entry::<apps::v1::DaemonSet>(),
        entry::<batch::v1::Job>(),
        entry::<batch::v1::CronJob>(),
        entry::<networking::v1::NetworkPolicy>(),
        entry::<admissionregistration::v1::MutatingWebhookConfiguration>(),
        entry::<admissionregistration::v1::ValidatingWebhookConfiguration>(),
        entry::<rbac::v1::Role>(),
        entry::<rbac::v1::RoleBinding>(),
        entry::<rbac::v1::ClusterRole>(),
        entry::<rbac::v1::ClusterRoleBinding>(),
        entry::<policy::v1::PodDisruptionBudget>(),
    ]
}

fn typed<T: DeserializeOwned + Serialize>(doc: &Value) -> Result<Value, String> {
    let value: T = serde_json::from_value(doc.clone()).map_err(|e| e.to_string())?;
    serde_json::to_value(&value).map_err(|e| format!("does not serialize back: {e}"))
}

/// Checks that `doc` is a Kubernetes object this crate's typed structs hold
/// completely: it deserializes into the struct its `apiVersion` and `kind`
/// name, and serializing that struct gives the document back. A `v1` `List`
/// is checked item by item. The only normalisation: object members whose
/// value is `null` are removed from the original first, because a null is
/// how YAML and JSON write "absent" (the API server reads it so) and the
/// typed structs never write one back.
pub fn round_trip(doc: &Value) -> Result<(), Mismatch> {
    let original = without_nulls(doc);
    let field = |name: &str| original.get(name).and_then(Value::as_str).unwrap_or("");
    let (api_version, kind) = (field("apiVersion"), field("kind"));
    if api_version.is_empty() || kind.is_empty() {
        return Err(Mismatch {
            pointer: String::new(),
            message: "not a Kubernetes object: it needs apiVersion and kind".into(),
        });
    }
    if (api_version, kind) == ("v1", "List") {
        return list_round_trip(&original);
    }
    let Some((_, _, typed)) = typed_kinds()
        .into_iter()
        .find(|(v, k, _)| (*v, *k) == (api_version, kind))
    else {
        return Err(Mismatch {
            pointer: String::new(),
            message: format!(
                "apiVersion {api_version} kind {kind} is not a kind the typed round-trip knows \
                 (add it to typed_kinds in tests/src/kube.rs)"
            ),
        });
    };
    let back = typed(&original).map_err(|e| Mismatch {
        pointer: String::new(),
        message: format!("does not deserialize as {api_version} {kind}: {e}"),
    })?;
    match first_difference(&original, &back, String::new()) {
        Some(m) => Err(m),
        None => Ok(()),
    }
}

fn list_round_trip(list: &Value) -> Result<(), Mismatch> {
    let Some(members) = list.as_object() else {
        return Err(Mismatch {
            pointer: String::new(),
            message: "a List must be an object".into(),
        });
    };
    for (key, value) in members {
        let pointer = format!("/{}", escape(key));
        match key.as_str() {
            "apiVersion" | "kind" => {}
            "metadata" => {
                let back = typed::<ListMeta>(value).map_err(|e| Mismatch {
                    pointer: pointer.clone(),
                    message: format!("not a ListMeta: {e}"),
                })?;
                if let Some(m) = first_difference(value, &back, pointer) {
                    return Err(m);
                }
            }
            "items" => {
                let Some(items) = value.as_array() else {
                    return Err(Mismatch {
                        pointer,
                        message: "items must be a sequence".into(),
                    });
                };
                for (i, item) in items.iter().enumerate() {
                    round_trip(item).map_err(|m| Mismatch {
                        pointer: format!("/items/{i}{}", m.pointer),
                        message: m.message,
                    })?;
                }
            }
            _ => {
                return Err(Mismatch {
                    pointer,
                    message: "a List has only apiVersion, kind, metadata and items".into(),
                });
            }
        }
    }
    Ok(())
}

/// `value` with every object member whose value is `null` removed, at any depth.
fn without_nulls(value: &Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k.clone(), without_nulls(v)))
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(without_nulls).collect()),
        other => other.clone(),
    }
}

/// The first place where `original` and `back` (its typed round-trip) differ.
pub fn first_difference(original: &Value, back: &Value, pointer: String) -> Option<Mismatch> {
    let mismatch = |pointer: String, message: String| Some(Mismatch { pointer, message });
    match (original, back) {
        (Value::Object(a), Value::Object(b)) => {
            for (key, value) in a {
                let at = format!("{pointer}/{}", escape(key));
                match b.get(key) {
                    None => {
                        return mismatch(
                            at,
                            "dropped by the typed struct: not a field of this kind \
                             (misspelled, or misplaced)"
                                .into(),
                        );
                    }
                    Some(other) => {
                        if let Some(m) = first_difference(value, other, at) {
                            return Some(m);
                        }
                    }
                }
            }
            // The typed structs write apiVersion and kind on objects embedded
            // in others (a StatefulSet's volumeClaimTemplates) where a
            // document may leave them out: not a difference below the top.
            let embedded = !pointer.is_empty();
            b.keys()
                .find(|k| {
                    !a.contains_key(*k) && !(embedded && (*k == "apiVersion" || *k == "kind"))
                })
                .and_then(|key| {
                    mismatch(
                        format!("{pointer}/{}", escape(key)),
                        "added by the typed struct (not in the document)".into(),
                    )
                })
        }
        (Value::Array(a), Value::Array(b)) => {
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                if let Some(m) = first_difference(x, y, format!("{pointer}/{i}")) {
                    return Some(m);
                }
            }
            (a.len() != b.len()).then(|| Mismatch {
                pointer,
                message: format!("{} items in the document, {} after", a.len(), b.len()),
            })
        }
        (a, b) if a == b => None,
        (a, b) => mismatch(pointer, format!("{a} in the document, {b} after")),
    }
}

/// A JSON pointer segment (RFC 6901): `~` as `~0`, `/` as `~1`.
fn escape(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}
