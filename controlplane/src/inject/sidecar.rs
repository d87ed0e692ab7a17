//! What injection adds to a pod, as typed Kubernetes objects: the sidecar
//! container (a native sidecar: an init container that keeps running), its
//! volumes, and the environment the app's containers are given.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    CSIVolumeSource, Capabilities, ConfigMapVolumeSource, Container, ContainerPort,
    DownwardAPIVolumeFile, DownwardAPIVolumeSource, EmptyDirVolumeSource, EnvVar, EnvVarSource,
    HTTPGetAction, KeyToPath, ObjectFieldSelector, Probe, ResourceRequirements, SeccompProfile,
    SecurityContext, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::Options;
use super::upstreams::{MCP_PORT, MCP_URL_ENV, Upstream};

/// The injected container's name; an init container by this name is Tollgate's.
pub const CONTAINER: &str = "tollgate-sidecar";
/// The sidecar's health, readiness and metrics port (probed by the kubelet,
/// scraped by Prometheus; its approval endpoints answer loopback only).
pub const ADMIN_PORT: u16 = 15090;
/// The volumes injection owns: replaced as a whole when they differ.
pub const VOLUMES: [&str; 4] = [STATE_VOLUME, PODINFO_VOLUME, CA_VOLUME, IDENTITY_VOLUME];

const STATE_VOLUME: &str = "tollgate-state";
const STATE_DIR: &str = "/var/run/tollgate";
const PODINFO_VOLUME: &str = "tollgate-podinfo";
const PODINFO_DIR: &str = "/etc/tollgate/podinfo";
const CA_VOLUME: &str = "tollgate-ca";
const CA_DIR: &str = "/etc/tollgate/ca";
const IDENTITY_VOLUME: &str = "tollgate-identity";
const IDENTITY_DIR: &str = "/etc/tollgate/identity";
/// The sidecar image's non-root user (distroless `nonroot`).
const USER: i64 = 65532;

/// The sidecar container for these options and upstreams.
pub fn container(opts: &Options, upstreams: &[Upstream]) -> Container {
    let mut args = vec![
        format!("--listen=127.0.0.1:{MCP_PORT}"),
        format!("--admin=0.0.0.0:{ADMIN_PORT}"),
        format!("--control-plane={}", opts.control_plane),
        format!("--state-dir={STATE_DIR}"),
        format!("--labels-file={PODINFO_DIR}/labels"),
    ];
    let mut mounts = vec![
        mount(STATE_VOLUME, STATE_DIR, false),
        mount(PODINFO_VOLUME, PODINFO_DIR, true),
    ];
    if opts.ca_config_map.is_some() {
        args.push(format!("--ca={CA_DIR}/ca.crt"));
        mounts.push(mount(CA_VOLUME, CA_DIR, true));
    }
    if opts.identity_issuer.is_some() {
        if opts.ca_config_map.is_none() {
            args.push(format!("--ca={IDENTITY_DIR}/ca.crt"));
        }
        args.push(format!("--cert={IDENTITY_DIR}/tls.crt"));
        args.push(format!("--key={IDENTITY_DIR}/tls.key"));
        mounts.push(mount(IDENTITY_VOLUME, IDENTITY_DIR, true));
    }
    args.extend(upstreams.iter().map(|u| format!("--upstream={}", u.arg())));
    Container {
        name: CONTAINER.to_owned(),
        image: Some(opts.image.clone()),
        args: Some(args),
        env: Some(vec![
            field_env("POD_NAME", "metadata.name"),
            field_env("POD_NAMESPACE", "metadata.namespace"),
        ]),
        ports: Some(vec![ContainerPort {
            name: Some("tollgate-admin".to_owned()),
            container_port: i32::from(ADMIN_PORT),
            protocol: Some("TCP".to_owned()),
            ..Default::default()
        }]),
        // A native sidecar: started before the app's containers, kept
        // running beside them, stopped after them (a Job still completes).
        restart_policy: Some("Always".to_owned()),
        // The app's containers start only once a valid policy is loaded.
        startup_probe: Some(probe("/readyz", 1, 120)),
        readiness_probe: Some(probe("/readyz", 5, 3)),
        liveness_probe: Some(probe("/healthz", 10, 6)),
        // Measured: 16.8 MiB peak RSS under load (bench/run.sh); the session
        // buckets and decision-log queue are bounded well under the limit.
        resources: Some(ResourceRequirements {
            requests: Some(BTreeMap::from([
                ("cpu".to_owned(), Quantity("20m".to_owned())),
                ("memory".to_owned(), Quantity("32Mi".to_owned())),
            ])),
            limits: Some(BTreeMap::from([(
                "memory".to_owned(),
                Quantity("128Mi".to_owned()),
            )])),
            ..Default::default()
        }),
        security_context: Some(SecurityContext {
            run_as_non_root: Some(true),
            run_as_user: Some(USER),
            run_as_group: Some(USER),
            read_only_root_filesystem: Some(true),
            allow_privilege_escalation: Some(false),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".to_owned()]),
                ..Default::default()
            }),
            seccomp_profile: Some(SeccompProfile {
                type_: "RuntimeDefault".to_owned(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        volume_mounts: Some(mounts),
        ..Default::default()
    }
}

/// The volumes the sidecar mounts.
pub fn volumes(opts: &Options) -> Vec<Volume> {
    let mut out = vec![
        Volume {
            name: STATE_VOLUME.to_owned(),
            empty_dir: Some(EmptyDirVolumeSource {
                size_limit: Some(Quantity("16Mi".to_owned())),
                ..Default::default()
            }),
            ..Default::default()
        },
        Volume {
            name: PODINFO_VOLUME.to_owned(),
            downward_api: Some(DownwardAPIVolumeSource {
                items: Some(vec![DownwardAPIVolumeFile {
                    path: "labels".to_owned(),
                    field_ref: Some(ObjectFieldSelector {
                        field_path: "metadata.labels".to_owned(),
                        ..Default::default()
                    }),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        },
    ];
    if let Some(name) = &opts.ca_config_map {
        out.push(Volume {
            name: CA_VOLUME.to_owned(),
            config_map: Some(ConfigMapVolumeSource {
                name: name.clone(),
                items: Some(vec![KeyToPath {
                    key: "ca.crt".to_owned(),
                    path: "ca.crt".to_owned(),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        });
    }
    if let Some(issuer) = &opts.identity_issuer {
        // A per-pod certificate from cert-manager's CSI driver, naming the
        // pod (the node id) and its SPIFFE identity, as the control plane's
        // --client-ca check expects.
        out.push(Volume {
            name: IDENTITY_VOLUME.to_owned(),
            csi: Some(CSIVolumeSource {
                driver: "csi.cert-manager.io".to_owned(),
                read_only: Some(true),
                volume_attributes: Some(BTreeMap::from([
                    ("csi.cert-manager.io/issuer-name".to_owned(), issuer.clone()),
                    (
                        "csi.cert-manager.io/issuer-kind".to_owned(),
                        "ClusterIssuer".to_owned(),
                    ),
                    (
                        "csi.cert-manager.io/dns-names".to_owned(),
                        "${POD_NAME}".to_owned(),
                    ),
                    (
                        "csi.cert-manager.io/uri-sans".to_owned(),
                        format!(
                            "spiffe://{}/ns/${{POD_NAMESPACE}}/sa/${{SERVICE_ACCOUNT_NAME}}",
                            opts.trust_domain
                        ),
                    ),
                ])),
                ..Default::default()
            }),
            ..Default::default()
        });
    }
    out
}

/// What the app's containers are told: `TOLLGATE_MCP_URL` (the first
/// upstream's endpoint) and `TOLLGATE_MCP_URL_<NAME>` for each named one.
pub fn app_env(upstreams: &[Upstream]) -> Vec<EnvVar> {
    let mut out = Vec::new();
    if let Some(first) = upstreams.first() {
        out.push(value_env(MCP_URL_ENV.to_owned(), first.local_url()));
    }
    for u in upstreams.iter().filter(|u| u.name.is_some()) {
        out.push(value_env(u.env_name(), u.local_url()));
    }
    out
}

/// Whether an app container's variable is one injection owns.
pub fn owns_env(name: &str) -> bool {
    name == MCP_URL_ENV
        || name
            .strip_prefix(MCP_URL_ENV)
            .is_some_and(|rest| rest.starts_with('_'))
}

fn mount(name: &str, path: &str, read_only: bool) -> VolumeMount {
    VolumeMount {
        name: name.to_owned(),
        mount_path: path.to_owned(),
        read_only: read_only.then_some(true),
        ..Default::default()
    }
}

fn probe(path: &str, period: i32, failures: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.to_owned()),
            port: IntOrString::Int(i32::from(ADMIN_PORT)),
            ..Default::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(failures),
        ..Default::default()
    }
}

fn field_env(name: &str, field: &str) -> EnvVar {
    EnvVar {
        name: name.to_owned(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: field.to_owned(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn value_env(name: String, value: String) -> EnvVar {
    EnvVar {
        name,
        value: Some(value),
        ..Default::default()
    }
}
