//! The injection webhook's wiring in a rendered install: the typed objects
//! it involves ([`Install`]) and the cross-checks between them
//! ([`webhook_problems`]): the webhook's service, port and path lead to the
//! port the control plane's `--webhook-addr` serves, the sidecars' control
//! plane URL is the Service's gRPC port, the NetworkPolicy admits the API
//! server on that port only, and the control plane's own namespace is
//! outside the webhook.

use std::collections::BTreeMap;

use k8s_openapi::Resource;
use k8s_openapi::api::admissionregistration::v1::{MutatingWebhookConfiguration, ServiceReference};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Container, Namespace, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::de::DeserializeOwned;
use serde_json::Value;

/// The webhook's name, as the full install creates it.
pub const WEBHOOK_CONFIG: &str = "tollgate-sidecar-injector";

/// The typed object of kind `T` named `name` in a render.
pub fn one<T: Resource + DeserializeOwned>(docs: &[Value], name: &str) -> T {
    let doc = docs
        .iter()
        .find(|d| {
            d.get("kind").and_then(Value::as_str) == Some(T::KIND)
                && d.pointer("/metadata/name").and_then(Value::as_str) == Some(name)
        })
        .unwrap_or_else(|| panic!("the render has no {} {name}", T::KIND));
    serde_json::from_value(doc.clone())
        .unwrap_or_else(|e| panic!("{} {name} does not deserialize: {e}", T::KIND))
}

/// The objects of the full install that the webhook's wiring involves.
#[derive(Debug, Clone)]
pub struct Install {
    pub namespace: Namespace,
    pub deployment: Deployment,
    pub service: Service,
    pub network_policy: NetworkPolicy,
    pub webhook: MutatingWebhookConfiguration,
}

impl Install {
    pub fn from_render(docs: &[Value]) -> Install {
        Install {
            namespace: one(docs, "tollgate-system"),
            deployment: one(docs, "tollgate-controlplane"),
            service: one(docs, "tollgate"),
            network_policy: one(docs, "tollgate-controlplane"),
            webhook: one(docs, WEBHOOK_CONFIG),
        }
    }

    fn container(&self) -> Option<&Container> {
        let spec = self.deployment.spec.as_ref()?.template.spec.as_ref()?;
        spec.containers.iter().find(|c| c.name == "controlplane")
    }
}

/// The value of `--NAME=VALUE` in `args`, if given exactly once.
fn flag<'a>(args: &'a [String], name: &str) -> Result<&'a str, String> {
    let prefix = format!("--{name}=");
    let values: Vec<&str> = args
        .iter()
        .filter_map(|a| a.strip_prefix(&prefix))
        .collect();
    match values.as_slice() {
        [one] => Ok(one),
        [] => Err(format!(
            "the control plane's args have no --{name}=…: {args:?}"
        )),
        _ => Err(format!(
            "--{name} is given {} times: {args:?}",
            values.len()
        )),
    }
}

fn port_of(addr: &str) -> Option<i32> {
    addr.rsplit_once(':')?.1.parse().ok()
}

/// Everything that must agree for the API server to reach the control
/// plane's webhook, and what the webhook must admit and how it must fail;
/// one line per problem (none: the install is wired right).
pub fn webhook_problems(install: &Install) -> Vec<String> {
    let mut problems = Vec::new();
    let Some(container) = install.container() else {
        return vec!["the Deployment has no container named controlplane".into()];
    };
    let args = container.args.clone().unwrap_or_default();
    if container.command.is_some() || args.first().map(String::as_str) != Some("serve") {
        problems.push(format!(
            "the control plane must run the image's entrypoint with `serve …`: command {:?}, args {args:?}",
            container.command
        ));
    }
    if let Err(e) = flag(&args, "tls-cert") {
        problems.push(format!("the webhook serves HTTPS with --tls-cert: {e}"));
    }
    let listen = match flag(&args, "webhook-addr").map(port_of) {
        Ok(Some(port)) => port,
        Ok(None) => {
            problems.push(format!("--webhook-addr has no port: {args:?}"));
            return problems;
        }
        Err(e) => {
            problems.push(e);
            return problems;
        }
    };
    // The container port that --webhook-addr listens on, by name.
    let ports = container.ports.clone().unwrap_or_default();
    let container_port = ports.iter().find(|p| p.container_port == listen);
    let Some(port_name) = container_port.and_then(|p| p.name.clone()) else {
        problems.push(format!(
            "no named container port is {listen}, the port of --webhook-addr: {ports:?}"
        ));
        return problems;
    };

    let hooks = install.webhook.webhooks.clone().unwrap_or_default();
    let [hook] = hooks.as_slice() else {
        problems.push(format!("expected one webhook, found {}", hooks.len()));
        return problems;
    };
    let service_ref = hook.client_config.service.as_ref();
    let Some(service_ref) = service_ref else {
        problems.push("the webhook's clientConfig names no service".into());
        return problems;
    };
    if hook.client_config.ca_bundle.is_some() {
        problems.push(
            "the webhook's caBundle is in the manifest: every kubectl apply would put it back over \
             the operator's (or cert-manager's) CA"
                .into(),
        );
    }
    let service_name = install.service.metadata.name.as_deref().unwrap_or("");
    let service_ns = install.service.metadata.namespace.as_deref().unwrap_or("");
    if (service_ref.name.as_str(), service_ref.namespace.as_str()) != (service_name, service_ns) {
        problems.push(format!(
            "the webhook calls service {}/{}, the control plane's Service is {service_ns}/{service_name}",
            service_ref.namespace, service_ref.name
        ));
    }
    if service_ref.path.as_deref() != Some("/inject") {
        problems.push(format!(
            "the webhook's path is {:?}, the control plane serves /inject",
            service_ref.path
        ));
    }
    let called = service_ref.port.unwrap_or(443);
    let service_ports = install
        .service
        .spec
        .as_ref()
        .and_then(|s| s.ports.clone())
        .unwrap_or_default();
    match service_ports.iter().find(|p| p.port == called) {
        None => problems.push(format!(
            "the webhook calls port {called}, which the Service does not expose: {service_ports:?}"
        )),
        Some(p) => {
            let reaches = match &p.target_port {
                Some(IntOrString::String(name)) => *name == port_name,
                Some(IntOrString::Int(n)) => *n == listen,
                None => p.port == listen,
            };
            if !reaches {
                problems.push(format!(
                    "Service port {called} targets {:?}, not the webhook's container port \
                     {port_name} ({listen})",
                    p.target_port
                ));
            }
        }
    }

    // The sidecars' control-plane URL: https, this Service, its gRPC port.
    match flag(&args, "inject-control-plane") {
        Err(e) => problems.push(e),
        Ok(url) => {
            let grpc = service_ports
                .iter()
                .find(|p| p.name.as_deref() == Some("grpc"));
            let want = grpc.map(|p| format!("https://{service_name}.{service_ns}.svc:{}", p.port));
            if want.as_deref() != Some(url) {
                problems.push(format!(
                    "--inject-control-plane={url}, but the Service's gRPC port is reached at {want:?}"
                ));
            }
        }
    }

    // What the webhook admits and how it fails.
    let expect = |what: &str, got: String, want: &str, problems: &mut Vec<String>| {
        if got != want {
            problems.push(format!("the webhook's {what} is {got}, expected {want}"));
        }
    };
    expect(
        "admissionReviewVersions",
        format!("{:?}", hook.admission_review_versions),
        "[\"v1\"]",
        &mut problems,
    );
    expect(
        "sideEffects",
        hook.side_effects.clone(),
        "None",
        &mut problems,
    );
    expect(
        "timeoutSeconds",
        format!("{:?}", hook.timeout_seconds),
        "Some(5)",
        &mut problems,
    );
    expect(
        "failurePolicy",
        format!("{:?}", hook.failure_policy),
        "Some(\"Fail\")",
        &mut problems,
    );
    expect(
        "reinvocationPolicy",
        format!("{:?}", hook.reinvocation_policy),
        "Some(\"IfNeeded\")",
        &mut problems,
    );
    let rules: Vec<String> = hook
        .rules
        .iter()
        .flatten()
        .map(|r| {
            format!(
                "{:?} {:?} {:?} {:?}",
                r.operations, r.api_groups, r.api_versions, r.resources
            )
        })
        .collect();
    let want_rule = r#"Some(["CREATE"]) Some([""]) Some(["v1"]) Some(["pods"])"#;
    if rules != [want_rule] {
        problems.push(format!(
            "the webhook's rules are {rules:?}, expected only {want_rule}"
        ));
    }
    let selects = |labels: Option<&BTreeMap<String, String>>| {
        hook.namespace_selector
            .as_ref()
            .and_then(|s| s.match_labels.as_ref())
            .is_some_and(|want| {
                want.iter()
                    .all(|(k, v)| labels.and_then(|l| l.get(k)) == Some(v))
            })
    };
    let enabled: BTreeMap<String, String> =
        [("tollgate.dev/inject".to_owned(), "enabled".to_owned())].into();
    if !selects(Some(&enabled)) {
        problems.push(format!(
            "the webhook's namespaceSelector {:?} does not select namespaces labelled tollgate.dev/inject=enabled",
            hook.namespace_selector
        ));
    }
    // The control plane's pods must never need the webhook they serve: with
    // failurePolicy Fail it could never start again.
    if selects(install.namespace.metadata.labels.as_ref()) {
        problems.push(
            "the webhook's namespaceSelector selects tollgate-system: the control plane would need itself to start"
                .into(),
        );
    }
    let opt_out = hook
        .object_selector
        .as_ref()
        .and_then(|s| s.match_expressions.clone())
        .unwrap_or_default();
    if !opt_out.iter().any(|e| {
        e.key == "tollgate.dev/inject"
            && e.operator == "NotIn"
            && e.values.as_deref() == Some(&["disabled".to_owned()][..])
    }) {
        problems.push(format!(
            "the webhook's objectSelector does not exclude pods labelled tollgate.dev/inject=disabled: {:?}",
            hook.object_selector
        ));
    }

    // The NetworkPolicy selects the control plane and admits anyone on the
    // webhook port (the API server's source address varies by cluster), and
    // on no other port.
    let pod_labels = install
        .deployment
        .spec
        .as_ref()
        .and_then(|s| s.template.metadata.as_ref())
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    let policy = install.network_policy.spec.clone().unwrap_or_default();
    let selected = policy
        .pod_selector
        .as_ref()
        .and_then(|s| s.match_labels.as_ref())
        .is_some_and(|want| want.iter().all(|(k, v)| pod_labels.get(k) == Some(v)));
    if !selected {
        problems.push(format!(
            "the NetworkPolicy's podSelector {:?} does not select the control plane's pods {pod_labels:?}",
            policy.pod_selector
        ));
    }
    let is_webhook_port = |p: &IntOrString| match p {
        IntOrString::String(name) => *name == port_name,
        IntOrString::Int(n) => *n == listen,
    };
    let open_rules: Vec<_> = policy
        .ingress
        .iter()
        .flatten()
        .filter(|r| r.from.as_ref().is_none_or(Vec::is_empty))
        .collect();
    let open_ports: Vec<Option<&IntOrString>> = open_rules
        .iter()
        .flat_map(|r| match &r.ports {
            Some(ports) if !ports.is_empty() => ports.iter().map(|p| p.port.as_ref()).collect(),
            _ => vec![None],
        })
        .collect();
    if open_ports.is_empty() || !open_ports.iter().all(|p| p.is_some_and(is_webhook_port)) {
        problems.push(format!(
            "the NetworkPolicy must admit any source on the webhook port ({port_name}) and on it \
             only; ports open to any source: {open_ports:?}"
        ));
    }
    problems
}

/// The Service the (first) webhook calls, to break it in a copy.
pub fn webhook_service(install: &mut Install) -> Option<&mut ServiceReference> {
    let hook = install.webhook.webhooks.as_mut()?.first_mut()?;
    hook.client_config.service.as_mut()
}
