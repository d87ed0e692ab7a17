//! `tollgate inject`'s core against golden files: each workload kind, a List,
//! a multi-document stream, an opt-out, an upgrade from an older sidecar;
//! idempotency; unknown fields kept; the webhook's JSONPatch giving exactly
//! the CLI's result; errors that name the field. (Every golden output read
//! back through the typed Kubernetes structs, and by Debian's kubectl, is
//! `tests/tests/k8s_injected.rs`.)
//!
//! `TOLLGATE_BLESS=1 cargo test -p tollgate-controlplane --test inject`
//! rewrites the golden files (review the diff before committing).

use std::path::{Path, PathBuf};

use base64::prelude::{BASE64_STANDARD, Engine as _};
use serde_json::{Value, json};
use tollgate_controlplane::inject::{self, Options, Outcome, admission, text};

/// Every fixture with a golden file.
const ALL: [&str; 9] = [
    "deployment.yaml",
    "statefulset.yaml",
    "daemonset.yaml",
    "job.yaml",
    "cronjob.yaml",
    "pod.yaml",
    "list.json",
    "multi.yaml",
    "upgrade.yaml",
];

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/inject")
}

/// The options every golden file was made with (the CLI's defaults plus one
/// default upstream).
fn options() -> Options {
    let mut opts = Options::new("https://tollgate.tollgate-system.svc:50051");
    opts.identity_issuer = Some("tollgate".into());
    opts.upstreams = vec!["tools=http://mcp.tools.svc:3001/mcp".into()];
    opts
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn golden_path(input: &str) -> PathBuf {
    let (stem, ext) = input.rsplit_once('.').expect("fixture has an extension");
    fixtures().join(format!("{stem}.injected.{ext}"))
}

/// Injects a fixture, checks it against its golden file, and returns the
/// outcomes (one per workload, in order).
fn golden(input: &str) -> Vec<Outcome> {
    let injected = text::inject(&read(&fixtures().join(input)), &options())
        .unwrap_or_else(|e| panic!("{input}: {e}"));
    let path = golden_path(input);
    if std::env::var_os("TOLLGATE_BLESS").is_some() {
        std::fs::write(&path, &injected.text).expect("write golden");
    }
    assert_eq!(
        injected.text,
        read(&path),
        "{input}: the injected output differs from {} (TOLLGATE_BLESS=1 rewrites it)",
        path.display()
    );
    injected
        .reports
        .into_iter()
        .map(|(_, r)| r.outcome)
        .collect()
}

fn skipped(outcome: &Outcome, why: &str) -> bool {
    matches!(outcome, Outcome::Skipped(reason) if reason.contains(why))
}

#[test]
fn each_workload_kind_is_injected_as_its_golden_file_says() {
    // One workload each: Deployment, StatefulSet, DaemonSet, Job, CronJob, Pod.
    for input in &ALL[..6] {
        assert_eq!(golden(input), [Outcome::Injected], "{input}");
    }
    assert_eq!(golden("list.json"), [Outcome::Injected, Outcome::Injected]);
}

#[test]
fn a_stream_passes_other_kinds_through_and_honours_opt_out_and_host_network() {
    let outcomes = golden("multi.yaml");
    assert_eq!(outcomes.len(), 3, "{outcomes:?}");
    assert_eq!(outcomes[0], Outcome::Injected);
    assert!(
        skipped(&outcomes[1], "tollgate.dev/inject: disabled"),
        "{outcomes:?}"
    );
    assert!(skipped(&outcomes[2], "hostNetwork"), "{outcomes:?}");
    // The opted-out and host-network workloads are exactly as given.
    let input: Vec<Value> =
        serde_saphyr::from_multiple(&read(&fixtures().join("multi.yaml"))).expect("fixture");
    let output: Vec<Value> =
        serde_saphyr::from_multiple(&read(&golden_path("multi.yaml"))).expect("golden");
    assert_eq!(input.len(), output.len());
    for i in [0, 1, 3, 4] {
        assert_eq!(input[i], output[i], "document {i} changed");
    }
}

#[test]
fn an_older_sidecar_is_brought_up_to_date_and_the_apps_own_parts_are_kept() {
    assert_eq!(golden("upgrade.yaml"), [Outcome::Updated]);
    let pod: Value = serde_saphyr::from_str(&read(&golden_path("upgrade.yaml"))).expect("golden");
    let init = pod["spec"]["initContainers"].as_array().expect("init");
    let names: Vec<&str> = init.iter().filter_map(|c| c["name"].as_str()).collect();
    assert_eq!(names, ["tollgate-sidecar", "migrate"]);
    assert_eq!(init[0]["image"], inject::DEFAULT_IMAGE);
    assert_eq!(
        pod["metadata"]["annotations"]["tollgate.dev/sidecar-version"],
        env!("CARGO_PKG_VERSION")
    );
    let volumes: Vec<&str> = pod["spec"]["volumes"]
        .as_array()
        .expect("volumes")
        .iter()
        .filter_map(|v| v["name"].as_str())
        .collect();
    assert!(volumes.contains(&"cache"), "{volumes:?}");
    assert!(!volumes.contains(&"tollgate-ca"), "{volumes:?}");
    let env = &pod["spec"]["containers"][0]["env"];
    assert_eq!(env[0], json!({"name": "MODE", "value": "on"}));
    assert_eq!(env[1]["value"], "http://127.0.0.1:15080/mcp/files");
}

#[test]
fn injecting_twice_changes_nothing() {
    for input in ALL {
        let once = read(&golden_path(input));
        let twice = text::inject(&once, &options()).expect("inject again");
        assert_eq!(twice.text, once, "{input}: a second injection changed it");
        for (doc, report) in &twice.reports {
            assert!(
                matches!(report.outcome, Outcome::Unchanged | Outcome::Skipped(_)),
                "{input} document {doc}: {report:?}"
            );
        }
    }
}

#[test]
fn an_api_server_defaulted_pod_counts_as_injected() {
    // What a stored pod looks like: the API server filled in defaults.
    let mut pod: Value = serde_saphyr::from_str(&read(&golden_path("pod.yaml"))).expect("golden");
    let sidecar = &mut pod["spec"]["initContainers"][0];
    sidecar["imagePullPolicy"] = json!("IfNotPresent");
    sidecar["terminationMessagePath"] = json!("/dev/termination-log");
    sidecar["startupProbe"]["timeoutSeconds"] = json!(1);
    let injection = inject::patch_object(&pod, &options()).expect("inject");
    assert!(injection.patch.0.is_empty(), "{:?}", injection.patch);
    assert_eq!(injection.reports[0].outcome, Outcome::Unchanged);
}

#[test]
fn fields_this_build_does_not_know_are_kept() {
    let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
        "spec": {"futureField": {"a": 1}, "containers": [
            {"name": "c", "image": "i", "futureContainerField": true}]}});
    let injection = inject::patch_object(&pod, &options()).expect("inject");
    let mut out = pod.clone();
    json_patch::patch(&mut out, &injection.patch).expect("patch applies");
    assert_eq!(out["spec"]["futureField"], json!({"a": 1}));
    assert_eq!(out["spec"]["containers"][0]["futureContainerField"], true);
    assert_eq!(out["spec"]["initContainers"][0]["name"], "tollgate-sidecar");
}

/// An AdmissionReview as the API server sends it for `pod`.
fn review_of(pod: &Value, dry_run: bool) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": "tools",
            "operation": "CREATE",
            "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller"},
            "object": pod,
            "oldObject": null,
            "dryRun": dry_run,
        }
    }))
    .expect("review")
}

#[test]
fn the_webhooks_patch_gives_exactly_what_the_cli_gives() {
    for input in ["pod.yaml", "upgrade.yaml"] {
        let pod: Value = serde_saphyr::from_str(&read(&fixtures().join(input))).expect("fixture");
        let want: Value = serde_saphyr::from_str(&read(&golden_path(input))).expect("golden");
        for dry_run in [false, true] {
            let answer: Value =
                serde_json::from_slice(&admission::review(&review_of(&pod, dry_run), &options()))
                    .expect("answer is JSON");
            let response = &answer["response"];
            assert!(response.get("patch").is_some(), "{input}: {answer}");
            assert_eq!(answer["apiVersion"], "admission.k8s.io/v1");
            assert_eq!(response["uid"], "705ab4f5-6393-11e8-b7cc-42010a800002");
            assert_eq!(response["allowed"], true, "{answer}");
            assert_eq!(response["patchType"], "JSONPatch");
            let patch = BASE64_STANDARD
                .decode(response["patch"].as_str().expect("patch"))
                .expect("base64");
            let patch: json_patch::Patch = serde_json::from_slice(&patch).expect("a JSON Patch");
            let mut got = pod.clone();
            json_patch::patch(&mut got, &patch).expect("applies");
            assert_eq!(got, want, "{input} dry_run={dry_run}");
        }
    }
}

#[test]
fn bad_input_is_refused_naming_the_field() {
    let bad_annotation = json!({"apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "d"}, "spec": {"selector": {}, "template": {
            "metadata": {"annotations": {"tollgate.dev/upstreams": "files=ftp://x"}},
            "spec": {"containers": [{"name": "c", "image": "i"}]}}}});
    let err = inject::patch_object(&bad_annotation, &options()).expect_err("refused");
    assert_eq!(
        err.pointer,
        "/spec/template/metadata/annotations/tollgate.dev~1upstreams"
    );
    assert!(err.message.contains("http://"), "{err}");

    let not_a_list = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
        "spec": {"containers": [{"name": "c", "image": 7}]}});
    let err = inject::patch_object(&not_a_list, &options()).expect_err("refused");
    assert_eq!(err.pointer, "/spec/containers/0/image", "{err}");

    let err = text::inject("kind: Deployment\nspec: [unclosed", &options()).expect_err("refused");
    assert!(err.to_string().contains("YAML"), "{err}");
    // Hostile YAML: an alias bomb and deep nesting are refused, not expanded.
    let mut bomb =
        String::from("apiVersion: v1\nkind: ConfigMap\ndata:\n  a0: &a0 [x,x,x,x,x,x,x,x,x,x]\n");
    for i in 1..10 {
        let refs = vec![format!("*a{}", i - 1); 10].join(",");
        bomb.push_str(&format!("  a{i}: &a{i} [{refs}]\n"));
    }
    let err = text::inject(&bomb, &options()).expect_err("alias bomb");
    assert!(err.to_string().contains("budget"), "{err}");
    let deep = format!("a: {}{}", "[".repeat(200), "]".repeat(200));
    assert!(text::inject(&deep, &options()).is_err());
    let err = text::inject("apiVersion: v1\nmetadata: {}\n", &options()).expect_err("no kind");
    assert!(err.to_string().contains("document 0"), "{err}");
}
