//! Sidecar injection: adds Tollgate's sidecar to a pod template, for
//! `tollgate inject` and the mutating admission webhook alike.
//!
//! Every object is read into the typed Kubernetes API structs; what changes is
//! expressed as a JSON Patch (RFC 6902) against the object as it was given, so
//! fields this build does not know are kept, the webhook answers with exactly
//! the patch the CLI applies, and an already-injected object gives an empty
//! patch.

pub mod admission;
pub mod pod;
pub mod sidecar;
pub mod text;
pub mod upstreams;

use json_patch::jsonptr::PointerBuf;
use json_patch::{Patch, PatchOperation};
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::{Pod, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::de::DeserializeOwned;
use serde_json::Value;

use pod::Template;

/// The default sidecar image: this build's version.
pub const DEFAULT_IMAGE: &str = concat!("tollgate:", env!("CARGO_PKG_VERSION"));

/// How injected sidecars are configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// The sidecar's container image.
    pub image: String,
    /// The control plane's gRPC URL as pods reach it.
    pub control_plane: String,
    /// A ConfigMap (in the workload's namespace) whose `ca.crt` verifies an
    /// https:// control plane.
    pub ca_config_map: Option<String>,
    /// A cert-manager ClusterIssuer that issues each pod's client
    /// certificate through cert-manager's CSI driver (for a control plane
    /// that checks node identity with --client-ca).
    pub identity_issuer: Option<String>,
    /// The SPIFFE trust domain of those certificates.
    pub trust_domain: String,
    /// Upstreams for workloads without a `tollgate.dev/upstreams` annotation
    /// (`NAME=URL` or a bare URL).
    pub upstreams: Vec<String>,
}

impl Options {
    /// Options for a control plane at `control_plane`, with defaults for the rest.
    pub fn new(control_plane: impl Into<String>) -> Options {
        Options {
            image: DEFAULT_IMAGE.to_owned(),
            control_plane: control_plane.into(),
            ca_config_map: None,
            identity_issuer: None,
            trust_domain: crate::tls::certs::DEFAULT_TRUST_DOMAIN.to_owned(),
            upstreams: Vec::new(),
        }
    }
}

/// What injection did to one workload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The sidecar was added.
    Injected,
    /// An older or different sidecar was brought up to date.
    Updated,
    /// Already injected as these options would: nothing changed.
    Unchanged,
    /// Not injected, and why (opt-out, no pod template, no upstreams).
    Skipped(String),
}

impl Outcome {
    /// A short word for logs and metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Outcome::Injected => "injected",
            Outcome::Updated => "updated",
            Outcome::Unchanged => "unchanged",
            Outcome::Skipped(_) => "skipped",
        }
    }
}

/// Why a workload could not be injected.
#[derive(Debug, thiserror::Error)]
#[error("{pointer}: {message}")]
pub struct InjectError {
    /// Where in the object (a JSON pointer; empty for the whole object).
    pub pointer: String,
    /// What is wrong and what to do.
    pub message: String,
}

/// One workload's result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// `kind/name` (`kind/generateName*` or `kind` when unnamed).
    pub what: String,
    pub outcome: Outcome,
    /// Things the operator should fix that did not stop injection.
    pub warnings: Vec<String>,
}

/// The patch that injects one object, and a report per workload in it (a
/// List has several; kinds without a pod template pass with no report).
#[derive(Debug, Default)]
pub struct Injection {
    pub patch: Patch,
    pub reports: Vec<Report>,
}

/// Computes the injection patch for one object of any kind.
pub fn patch_object(object: &Value, opts: &Options) -> Result<Injection, InjectError> {
    let mut out = Injection::default();
    add_object(object, PointerBuf::new(), opts, 0, &mut out)?;
    Ok(out)
}

/// Lists in lists: deeper than this is refused.
const MAX_NESTING: usize = 4;

fn add_object(
    object: &Value,
    at: PointerBuf,
    opts: &Options,
    depth: usize,
    out: &mut Injection,
) -> Result<(), InjectError> {
    let err = |pointer: String, message: String| InjectError { pointer, message };
    let Some(map) = object.as_object() else {
        return Err(err(
            at.to_string(),
            "not a Kubernetes object (expected a mapping with apiVersion and kind)".into(),
        ));
    };
    let field = |k: &str| map.get(k).and_then(Value::as_str).unwrap_or("");
    let (api_version, kind) = (field("apiVersion"), field("kind"));
    match (api_version, kind) {
        ("v1", "List") => {
            if depth >= MAX_NESTING {
                return Err(err(
                    at.to_string(),
                    format!("Lists nested deeper than {MAX_NESTING}"),
                ));
            }
            let items = map.get("items").and_then(Value::as_array);
            for (i, item) in items.into_iter().flatten().enumerate() {
                let mut item_at = at.clone();
                item_at.push_back("items");
                item_at.push_back(i);
                add_object(item, item_at, opts, depth + 1, out)?;
            }
            Ok(())
        }
        ("v1", "Pod") => {
            let pod: Pod = typed(object, &at)?;
            let template = PodTemplateSpec {
                metadata: Some(pod.metadata.clone()),
                spec: pod.spec,
            };
            add_template(&pod.metadata, None, &template, object, at, "", opts, out)
        }
        ("apps/v1", "Deployment") => workload(object, at, TEMPLATE, opts, out, |d: Deployment| {
            (d.metadata, d.spec.map(|s| s.template))
        }),
        ("apps/v1", "StatefulSet") => {
            workload(object, at, TEMPLATE, opts, out, |s: StatefulSet| {
                (s.metadata, s.spec.map(|s| s.template))
            })
        }
        ("apps/v1", "DaemonSet") => workload(object, at, TEMPLATE, opts, out, |d: DaemonSet| {
            (d.metadata, d.spec.map(|s| s.template))
        }),
        ("apps/v1", "ReplicaSet") => workload(object, at, TEMPLATE, opts, out, |r: ReplicaSet| {
            (r.metadata, r.spec.and_then(|s| s.template))
        }),
        ("batch/v1", "Job") => workload(object, at, TEMPLATE, opts, out, |j: Job| {
            (j.metadata, j.spec.map(|s| s.template))
        }),
        ("batch/v1", "CronJob") => {
            let rel = "/spec/jobTemplate/spec/template";
            workload(object, at, rel, opts, out, |c: CronJob| {
                let t = c.spec.and_then(|s| s.job_template.spec).map(|s| s.template);
                (c.metadata, t)
            })
        }
        (_, "") => Err(err(
            at.to_string(),
            "no kind: every document must have apiVersion and kind".into(),
        )),
        // Services, ConfigMaps and the rest pass through unchanged.
        _ => Ok(()),
    }
}

/// Where a workload's pod template is.
const TEMPLATE: &str = "/spec/template";

/// A workload of type `T`, whose metadata and pod template `parts` gives.
fn workload<T: DeserializeOwned>(
    object: &Value,
    at: PointerBuf,
    rel: &str,
    opts: &Options,
    out: &mut Injection,
    parts: impl FnOnce(T) -> (ObjectMeta, Option<PodTemplateSpec>),
) -> Result<(), InjectError> {
    let (meta, template) = parts(typed(object, &at)?);
    let Some(template) = template else {
        return Err(InjectError {
            pointer: format!("{at}{rel}"),
            message: "the workload has no pod template".into(),
        });
    };
    add_template(&meta, Some(rel), &template, object, at, rel, opts, out)
}

#[allow(clippy::too_many_arguments)]
fn add_template(
    meta: &ObjectMeta,
    workload_rel: Option<&str>,
    template: &PodTemplateSpec,
    object: &Value,
    at: PointerBuf,
    rel: &str,
    opts: &Options,
    out: &mut Injection,
) -> Result<(), InjectError> {
    let kind = object.get("kind").and_then(Value::as_str).unwrap_or("");
    let name = meta
        .name
        .clone()
        .or_else(|| meta.generate_name.as_ref().map(|g| format!("{g}*")));
    let what = match name {
        Some(name) => format!("{}/{name}", kind.to_ascii_lowercase()),
        None => kind.to_ascii_lowercase(),
    };
    let mut warnings = Vec::new();
    if let Some(rel) = workload_rel {
        // Only the pod template's annotations count: the webhook sees pods.
        for key in [pod::INJECT, upstreams::ANNOTATION] {
            if meta
                .annotations
                .as_ref()
                .is_some_and(|a| a.contains_key(key))
            {
                warnings.push(format!(
                    "{what}: annotation {key} on the {kind}'s metadata has no effect; put it on {rel}/metadata/annotations"
                ));
            }
        }
    }
    let mut template_at = at;
    for token in rel.split('/').filter(|t| !t.is_empty()) {
        template_at.push_back(token);
    }
    let raw = object.pointer(rel).unwrap_or(&Value::Null);
    let t = Template {
        at: template_at,
        raw,
        meta: template.metadata.as_ref(),
        spec: template.spec.as_ref(),
    };
    let (outcome, ops): (Outcome, Vec<PatchOperation>) = pod::patch(&t, opts)?;
    out.patch.0.extend(ops);
    out.reports.push(Report {
        what,
        outcome,
        warnings,
    });
    Ok(())
}

/// Reads `object` into its typed struct; an error names the field by JSON pointer.
fn typed<T: DeserializeOwned>(object: &Value, at: &PointerBuf) -> Result<T, InjectError> {
    serde_path_to_error::deserialize(object).map_err(|e| {
        let mut pointer = at.clone();
        for segment in e.path().iter() {
            match segment {
                serde_path_to_error::Segment::Seq { index } => pointer.push_back(*index),
                serde_path_to_error::Segment::Map { key } => pointer.push_back(key.as_str()),
                serde_path_to_error::Segment::Enum { variant } => {
                    pointer.push_back(variant.as_str())
                }
                serde_path_to_error::Segment::Unknown => {}
            }
        }
        InjectError {
            pointer: pointer.to_string(),
            message: format!("does not read as a Kubernetes object: {}", e.into_inner()),
        }
    })
}
