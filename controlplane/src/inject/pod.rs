//! The patch for one pod template: what a pod (or a workload's template)
//! needs so it runs the sidecar, computed from its typed form, written as
//! JSON Patch operations against its raw form.

use std::collections::BTreeMap;

use json_patch::jsonptr::PointerBuf;
use json_patch::{AddOperation, PatchOperation, ReplaceOperation};
use k8s_openapi::api::core::v1::{EnvVar, PodSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::Serialize;
use serde_json::Value;

use super::sidecar::{self, CONTAINER, VOLUMES};
use super::upstreams::{self, ANNOTATION as UPSTREAMS};
use super::{InjectError, Options, Outcome};

/// The pod annotation (or label) that opts a pod out: `disabled`.
pub const INJECT: &str = "tollgate.dev/inject";
/// The label an injected pod carries (the control plane's NetworkPolicy admits it).
pub const SIDECAR_LABEL: &str = "tollgate.dev/sidecar";
/// The annotation recording the injector's version.
pub const VERSION_ANNOTATION: &str = "tollgate.dev/sidecar-version";

/// A pod template: where it is in the object, and its two readings.
pub struct Template<'a> {
    /// JSON pointer of the template (the object itself for a Pod).
    pub at: PointerBuf,
    pub raw: &'a Value,
    pub meta: Option<&'a ObjectMeta>,
    pub spec: Option<&'a PodSpec>,
}

/// The operations that inject `template`.
pub fn patch(t: &Template, opts: &Options) -> Result<(Outcome, Vec<PatchOperation>), InjectError> {
    let annotations = t.meta.and_then(|m| m.annotations.as_ref());
    let labels = t.meta.and_then(|m| m.labels.as_ref());
    if [annotations, labels]
        .into_iter()
        .flatten()
        .any(|m| m.get(INJECT).is_some_and(|v| v == "disabled"))
    {
        return Ok((Outcome::Skipped(format!("{INJECT}: disabled")), Vec::new()));
    }
    let Some(spec) = t.spec else {
        return Err(t.error("/spec", "the pod template has no spec".into()));
    };
    if spec.host_network == Some(true) {
        return Ok((
            Outcome::Skipped(
                "hostNetwork: the sidecar's ports would be the node's; not injected".into(),
            ),
            Vec::new(),
        ));
    }
    let upstreams = match annotations.and_then(|a| a.get(UPSTREAMS)) {
        Some(value) => upstreams::parse_annotation(value).map_err(|message| {
            let mut pointer = t.pointer("/metadata/annotations");
            pointer.push_back(UPSTREAMS);
            InjectError {
                pointer: pointer.to_string(),
                message,
            }
        })?,
        None => upstreams::parse(opts.upstreams.iter().map(String::as_str))
            .map_err(|e| t.error("", format!("the injector's default upstreams: {e}")))?,
    };
    if upstreams.is_empty() {
        return Ok((
            Outcome::Skipped(format!(
                "no upstreams: annotate the pod template with {UPSTREAMS}: NAME=URL"
            )),
            Vec::new(),
        ));
    }

    let mut ops = Vec::new();
    let had_sidecar = spec
        .init_containers
        .iter()
        .flatten()
        .any(|c| c.name == CONTAINER);

    // The sidecar first among init containers, so those after it can use it.
    let desired = sidecar::container(opts, &upstreams);
    let others = raw_items(t.raw, "/spec/initContainers")
        .into_iter()
        .filter(|c| name_of(c) != Some(CONTAINER));
    let init: Vec<Value> = std::iter::once(to_value(&desired))
        .chain(others.cloned())
        .collect();
    set_array(t, "/spec/initContainers", init, &mut ops);

    let mut volumes: Vec<Value> = raw_items(t.raw, "/spec/volumes")
        .into_iter()
        .filter(|v| !name_of(v).is_some_and(|n| VOLUMES.contains(&n)))
        .cloned()
        .collect();
    volumes.extend(sidecar::volumes(opts).iter().map(to_value));
    set_array(t, "/spec/volumes", volumes, &mut ops);

    let env = sidecar::app_env(&upstreams);
    for i in 0..spec.containers.len() {
        app_container(t, i, &env, &mut ops);
    }

    let version = env!("CARGO_PKG_VERSION");
    if t.raw.get("metadata").is_none_or(Value::is_null) {
        let metadata = serde_json::json!({
            "labels": { SIDECAR_LABEL: "injected" },
            "annotations": { VERSION_ANNOTATION: version },
        });
        add_at(t, "/metadata", metadata, &mut ops);
    } else {
        set_key(t, "labels", SIDECAR_LABEL, "injected", labels, &mut ops);
        set_key(
            t,
            "annotations",
            VERSION_ANNOTATION,
            version,
            annotations,
            &mut ops,
        );
    }

    let outcome = match (ops.is_empty(), had_sidecar) {
        (true, _) => Outcome::Unchanged,
        (false, true) => Outcome::Updated,
        (false, false) => Outcome::Injected,
    };
    Ok((outcome, ops))
}

impl Template<'_> {
    fn error(&self, rel: &str, message: String) -> InjectError {
        InjectError {
            pointer: format!("{}{rel}", self.at),
            message,
        }
    }

    fn pointer(&self, rel: &str) -> PointerBuf {
        let mut p = self.at.clone();
        for token in rel.split('/').filter(|s| !s.is_empty()) {
            p.push_back(token);
        }
        p
    }
}

/// The app container's env with Tollgate's variables set (others kept as given).
fn app_container(t: &Template, i: usize, env: &[EnvVar], ops: &mut Vec<PatchOperation>) {
    let rel = format!("/spec/containers/{i}/env");
    let mut out: Vec<Value> = raw_items(t.raw, &rel)
        .into_iter()
        .filter(|e| !name_of(e).is_some_and(sidecar::owns_env))
        .cloned()
        .collect();
    out.extend(env.iter().map(to_value));
    set_array(t, &rel, out, ops);
}

/// Sets the array at `rel` to `want` unless what is there already has every
/// field `want` gives (fields the API server defaults are not differences).
fn set_array(t: &Template, rel: &str, want: Vec<Value>, ops: &mut Vec<PatchOperation>) {
    let have = t.raw.pointer(rel);
    let want = Value::Array(want);
    match have {
        Some(have) if covers(have, &want) => {}
        Some(Value::Array(_)) => ops.push(PatchOperation::Replace(ReplaceOperation {
            path: t.pointer(rel),
            value: want,
        })),
        _ if want.as_array().is_some_and(Vec::is_empty) => {}
        _ => add_at(t, rel, want, ops),
    }
}

/// Adds `value` at `rel`, creating a missing `metadata` or `spec` parent.
fn add_at(t: &Template, rel: &str, value: Value, ops: &mut Vec<PatchOperation>) {
    let (parent, key) = rel.rsplit_once('/').unwrap_or(("", rel));
    if !parent.is_empty() && t.raw.pointer(parent).is_none_or(Value::is_null) {
        let mut object = serde_json::Map::new();
        object.insert(key.to_owned(), value);
        return add_at(t, parent, Value::Object(object), ops);
    }
    ops.push(PatchOperation::Add(AddOperation {
        path: t.pointer(rel),
        value,
    }));
}

/// Sets one label or annotation.
fn set_key(
    t: &Template,
    map: &str,
    key: &str,
    value: &str,
    have: Option<&BTreeMap<String, String>>,
    ops: &mut Vec<PatchOperation>,
) {
    if have.and_then(|m| m.get(key)).is_some_and(|v| v == value) {
        return;
    }
    let rel = format!("/metadata/{map}");
    if have.is_none() || t.raw.pointer(&rel).is_none_or(Value::is_null) {
        let object = serde_json::json!({ key: value });
        return add_at(t, &rel, object, ops);
    }
    let mut path = t.pointer(&rel);
    path.push_back(key);
    ops.push(PatchOperation::Add(AddOperation {
        path,
        value: Value::String(value.to_owned()),
    }));
}

/// Whether `have` has everything `want` has: same keys with covering values
/// in objects, same length and covering elements in arrays.
fn covers(have: &Value, want: &Value) -> bool {
    match (have, want) {
        (Value::Object(h), Value::Object(w)) => w
            .iter()
            .all(|(k, wv)| h.get(k).is_some_and(|hv| covers(hv, wv))),
        (Value::Array(h), Value::Array(w)) => {
            h.len() == w.len() && h.iter().zip(w).all(|(hv, wv)| covers(hv, wv))
        }
        _ => have == want,
    }
}

fn raw_items<'a>(raw: &'a Value, rel: &str) -> Vec<&'a Value> {
    raw.pointer(rel)
        .and_then(Value::as_array)
        .map(|a| a.iter().collect())
        .unwrap_or_default()
}

fn name_of(item: &Value) -> Option<&str> {
    item.get("name").and_then(Value::as_str)
}

fn to_value<T: Serialize>(item: &T) -> Value {
    // The typed API structs serialize to JSON without fail (string keys,
    // no non-finite floats).
    serde_json::to_value(item).unwrap_or(Value::Null)
}

#[cfg(test)]
mod tests {
    use super::covers;
    use serde_json::json;

    #[test]
    fn defaulted_fields_are_not_differences() {
        let want = json!([{"name": "a", "args": ["x"]}]);
        let have = json!([{"name": "a", "args": ["x"], "imagePullPolicy": "IfNotPresent"}]);
        assert!(covers(&have, &want));
        assert!(!covers(&want, &have));
        assert!(!covers(&json!([{"name": "a", "args": ["y"]}]), &want));
        assert!(!covers(&json!([]), &want));
    }
}
