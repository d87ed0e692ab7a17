//! The admission webhook's answer: an `admission.k8s.io/v1` AdmissionReview
//! in, an AdmissionReview with a JSONPatch (from [`super::patch_object`]) out.

use base64::prelude::{BASE64_STANDARD, Engine as _};
use kube_core::DynamicObject;
use kube_core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview, Operation};
use serde::Deserialize;
use serde_json::Value;

use super::{Options, Outcome, patch_object};

const API_VERSION: &str = "admission.k8s.io/v1";

/// What a review came to, for metrics and logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reviewed {
    /// The AdmissionReview to send back (JSON).
    pub body: Vec<u8>,
    /// injected, updated, unchanged, skipped, refused (the pod cannot be
    /// injected as configured) or invalid (the review itself is malformed).
    pub outcome: &'static str,
    /// The request's uid ("" when it could not be read).
    pub uid: String,
    /// The request's namespace ("" when it could not be read).
    pub namespace: String,
    /// Whether the request was a dry run.
    pub dry_run: bool,
}

/// Answers one AdmissionReview body. Never fails: a review that cannot be
/// read is answered allowed=false with a message saying what was wrong.
pub fn review(body: &[u8], opts: &Options) -> Vec<u8> {
    review_with_outcome(body, opts).body
}

/// As [`review`], saying what it came to and which request it was (for
/// logs, without the pod).
pub fn review_with_outcome(body: &[u8], opts: &Options) -> Reviewed {
    let raw: Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(e) => return invalid("", format!("the body is not JSON: {e}")),
    };
    let mut reviewed = review_value(&raw, opts);
    let request = raw.get("request");
    let field = |name: &str| request.and_then(|r| r.get(name));
    reviewed.namespace = field("namespace")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned();
    reviewed.dry_run = field("dryRun").and_then(Value::as_bool) == Some(true);
    reviewed
}

fn review_value(raw: &Value, opts: &Options) -> Reviewed {
    let uid = raw
        .pointer("/request/uid")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned();
    let api_version = raw.get("apiVersion").and_then(Value::as_str).unwrap_or("");
    if api_version != API_VERSION
        || raw.get("kind").and_then(Value::as_str) != Some("AdmissionReview")
    {
        return invalid(
            &uid,
            format!(
                "expected kind AdmissionReview, apiVersion {API_VERSION} (got {api_version:?}): set admissionReviewVersions: [v1] in the MutatingWebhookConfiguration"
            ),
        );
    }
    let review = match AdmissionReview::<DynamicObject>::deserialize(raw) {
        Ok(r) => r,
        Err(e) => return invalid(&uid, format!("the AdmissionReview does not read: {e}")),
    };
    let request: AdmissionRequest<DynamicObject> = match review.try_into() {
        Ok(r) => r,
        Err(_) => return invalid(&uid, "the AdmissionReview has no request".into()),
    };
    let response = AdmissionResponse::from(&request);
    if !request.kind.group.is_empty()
        || request.kind.kind != "Pod"
        || request.sub_resource.is_some()
    {
        return answer(
            response.deny(format!(
                "Tollgate's injector handles pods; it was sent {}/{} {}: limit the MutatingWebhookConfiguration's rules to pods",
                request.kind.group, request.kind.version, request.kind.kind
            )),
            "invalid",
            uid,
        );
    }
    if request.operation != Operation::Create {
        return answer(response, "skipped", uid);
    }
    let Some(object) = raw.pointer("/request/object") else {
        return invalid(&uid, "the CREATE request has no object".into());
    };
    match patch_object(object, opts) {
        Err(e) => answer(
            response.deny(format!(
                "Tollgate could not inject its sidecar at {e}; fix the pod, or annotate it tollgate.dev/inject: disabled"
            )),
            "refused",
            uid,
        ),
        Ok(injection) => {
            let outcome = injection
                .reports
                .first()
                .map(|r| r.outcome.clone())
                .unwrap_or(Outcome::Unchanged);
            let mut response = response;
            let warnings: Vec<String> = injection
                .reports
                .iter()
                .flat_map(|r| r.warnings.iter().cloned())
                .chain(match &outcome {
                    Outcome::Skipped(why) if !why.starts_with(super::pod::INJECT) => {
                        Some(format!("tollgate: sidecar not injected: {why}"))
                    }
                    _ => None,
                })
                .collect();
            if !warnings.is_empty() {
                response.warnings = Some(warnings);
            }
            if !injection.patch.0.is_empty() {
                response = match response.with_patch(injection.patch) {
                    Ok(r) => r,
                    Err(e) => return invalid(&uid, format!("the patch could not be written: {e}")),
                };
            }
            answer(response, outcome.label(), uid)
        }
    }
}

fn invalid(uid: &str, message: String) -> Reviewed {
    let mut response = AdmissionResponse::invalid(message);
    response.uid = uid.to_owned();
    answer(response, "invalid", uid.to_owned())
}

fn answer(response: AdmissionResponse, outcome: &'static str, uid: String) -> Reviewed {
    let mut review = response.into_review();
    // Always answer in v1, whatever the request's types said.
    review.types.api_version = API_VERSION.to_owned();
    review.types.kind = "AdmissionReview".to_owned();
    let mut value = serde_json::to_value(&review).unwrap_or(Value::Null);
    // The API's `patch` is bytes, which Kubernetes' JSON writes as base64.
    if let Some(patch) = value.pointer_mut("/response/patch") {
        let bytes: Vec<u8> = patch
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|b| b.as_u64())
                    .map(|b| b as u8)
                    .collect()
            })
            .unwrap_or_default();
        *patch = Value::String(BASE64_STANDARD.encode(bytes));
    }
    let body = serde_json::to_vec(&value).unwrap_or_else(|_| {
        br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","response":{"uid":"","allowed":false}}"#.to_vec()
    });
    Reviewed {
        body,
        outcome,
        uid,
        namespace: String::new(),
        dry_run: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_review_says_which_request_it_was_without_the_pod() {
        let opts = Options::new("https://tollgate.tollgate-system.svc:50051");
        let body = br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"u-1","namespace":"agents","dryRun":true,"operation":"DELETE","kind":{"group":"","version":"v1","kind":"Pod"},"resource":{"group":"","version":"v1","resource":"pods"},"userInfo":{},"object":null,"oldObject":null}}"#;
        let reviewed = review_with_outcome(body, &opts);
        assert_eq!(
            (
                reviewed.uid.as_str(),
                reviewed.namespace.as_str(),
                reviewed.dry_run
            ),
            ("u-1", "agents", true)
        );
        let unread = review_with_outcome(b"not json", &opts);
        assert!(unread.uid.is_empty() && unread.namespace.is_empty());
        assert_eq!(unread.outcome, "invalid");
    }
}
