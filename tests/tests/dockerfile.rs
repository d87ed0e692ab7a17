//! Tollgate's container image build (`Dockerfile`), checked as far as this
//! machine allows: there is no Docker daemon, and the image's release build
//! (fat LTO, one codegen unit) takes minutes, so neither runs here. What is
//! checked: the build stage's `cargo build` names the workspace's two
//! binaries with `--release --locked`, `Cargo.lock` is current (`cargo
//! metadata --locked`, which fails where `cargo build --locked` would), both
//! binaries are copied into the runtime stage, the build image's Rust is at
//! least the workspace's `rust-version`, the image's entrypoint and user are
//! what the control plane's Deployment runs, `.dockerignore` leaves build
//! output and the test peers out of the build context, and the binaries need
//! no shared library beyond what the distroless runtime has (glibc, libgcc).

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use k8s_openapi::api::apps::v1::Deployment;
use serde_json::Value;
use tollgate_e2e::bins::{self, workspace_root};
use tollgate_e2e::kube;

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// The Dockerfile's instructions, continuation lines joined.
fn dockerfile() -> Vec<String> {
    let text = read(&workspace_root().join("Dockerfile"));
    let mut lines = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('#') || (line.is_empty() && current.is_empty()) {
            continue;
        }
        match line.strip_suffix('\\') {
            Some(head) => {
                current.push_str(head.trim_end());
                current.push(' ');
            }
            None => {
                current.push_str(line);
                lines.push(std::mem::take(&mut current));
            }
        }
    }
    lines
}

/// The `[[bin]]` targets of the workspace's packages (`cargo metadata
/// --locked`, which also fails if Cargo.lock is not current, as the
/// Dockerfile's `cargo build --locked` would).
fn workspace_binaries() -> BTreeSet<String> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let out = Command::new(&cargo)
        .current_dir(workspace_root())
        .args(["metadata", "--format-version=1", "--locked", "--offline"])
        .output()
        .unwrap_or_else(|e| panic!("cannot run cargo metadata: {e}"));
    assert!(
        out.status.success(),
        "cargo metadata --locked failed, so the Dockerfile's `cargo build --locked` would too \
         (update Cargo.lock):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("cargo metadata printed no JSON: {e}"));
    // The whole graph is resolved (not --no-deps): only then does --locked check the lock file.
    let members: BTreeSet<&str> = meta
        .get("workspace_members")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    meta.get("packages")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|p| {
            p.get("id")
                .and_then(Value::as_str)
                .is_some_and(|id| members.contains(id))
        })
        .flat_map(|p| {
            p.get("targets")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
        })
        .filter(|t| {
            t.get("kind")
                .and_then(Value::as_array)
                .is_some_and(|k| k.iter().any(|k| k == "bin"))
        })
        .filter_map(|t| t.get("name").and_then(Value::as_str).map(str::to_owned))
        .collect()
}

#[test]
fn the_dockerfile_builds_the_binaries_the_deployment_runs() {
    let lines = dockerfile();
    let build = lines
        .iter()
        .find(|l| l.starts_with("RUN cargo build"))
        .unwrap_or_else(|| panic!("the Dockerfile has no `RUN cargo build`: {lines:#?}"));
    let words: Vec<&str> = build.split_whitespace().collect();
    for needed in ["--release", "--locked"] {
        assert!(words.contains(&needed), "the build lacks {needed}: {build}");
    }
    let bins: BTreeSet<String> = words
        .windows(2)
        .filter(|w| w[0] == "--bin")
        .map(|w| w[1].to_owned())
        .collect();
    let want: BTreeSet<String> = ["tollgate", "tollgate-sidecar"].map(String::from).into();
    assert_eq!(bins, want, "the image must hold both binaries: {build}");
    let known = workspace_binaries();
    assert!(
        bins.is_subset(&known),
        "the Dockerfile builds {bins:?}; the workspace's binaries are {known:?}"
    );
    for bin in &bins {
        assert!(
            words.contains(&format!("target/release/{bin}").as_str()),
            "the build stage does not copy target/release/{bin}: {build}"
        );
        let copied = lines
            .iter()
            .any(|l| l.starts_with("COPY --from=build") && l.contains(&format!("/out/{bin}")));
        assert!(
            copied,
            "the runtime stage does not copy /out/{bin}: {lines:#?}"
        );
    }

    // The toolchain image is at least the workspace's rust-version.
    let from_rust = lines
        .iter()
        .find_map(|l| l.strip_prefix("FROM rust:"))
        .unwrap_or_else(|| panic!("no `FROM rust:` build stage: {lines:#?}"));
    let image_version: Vec<u32> = from_rust
        .split(['-', ' '])
        .next()
        .unwrap_or("")
        .split('.')
        .filter_map(|n| n.parse().ok())
        .collect();
    let manifest = read(&workspace_root().join("Cargo.toml"));
    let rust_version: Vec<u32> = manifest
        .lines()
        .find_map(|l| l.trim().strip_prefix("rust-version = "))
        .map(|v| {
            v.trim_matches('"')
                .split('.')
                .filter_map(|n| n.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    assert!(
        !rust_version.is_empty() && image_version >= rust_version,
        "the build image rust:{from_rust} is older than the workspace's rust-version {rust_version:?}"
    );

    // The Deployment runs the image's entrypoint as the image's user.
    let entrypoint = lines
        .iter()
        .find_map(|l| l.strip_prefix("ENTRYPOINT "))
        .unwrap_or_else(|| panic!("no ENTRYPOINT: {lines:#?}"));
    assert_eq!(entrypoint, r#"["/usr/local/bin/tollgate"]"#);
    let user = lines
        .iter()
        .find_map(|l| l.strip_prefix("USER "))
        .unwrap_or_else(|| panic!("no USER: {lines:#?}"));
    let base = workspace_root().join("deploy/kubernetes/base/deployment.yaml");
    let docs = kube::documents(&read(&base)).unwrap_or_else(|e| panic!("{}: {e}", base.display()));
    let [doc] = docs.as_slice() else {
        panic!(
            "{}: expected one document, found {}",
            base.display(),
            docs.len()
        );
    };
    let deployment: Deployment = serde_json::from_value(doc.clone())
        .unwrap_or_else(|e| panic!("{}: not a Deployment: {e}", base.display()));
    let pod = deployment
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .unwrap_or_else(|| panic!("{}: no pod template", base.display()));
    let context = pod.security_context.as_ref();
    let runs_as = format!(
        "{}:{}",
        context.and_then(|c| c.run_as_user).unwrap_or(-1),
        context.and_then(|c| c.run_as_group).unwrap_or(-1)
    );
    assert_eq!(
        user, runs_as,
        "the image's USER and the Deployment's runAsUser:runAsGroup differ"
    );
    let container = pod
        .containers
        .iter()
        .find(|c| c.name == "controlplane")
        .unwrap_or_else(|| panic!("{}: no container controlplane", base.display()));
    assert!(
        container.command.is_none()
            && container
                .args
                .as_ref()
                .and_then(|a| a.first())
                .map(String::as_str)
                == Some("serve"),
        "the Deployment must run the image's entrypoint (tollgate) with `serve …`: {:?} {:?}",
        container.command,
        container.args
    );

    // The build context leaves out build output and the test peers.
    let ignored = read(&workspace_root().join(".dockerignore"));
    for path in [
        "target/",
        "tests/peers/kubernetes-client/",
        "tests/peers/node_modules/",
    ] {
        assert!(
            ignored.lines().any(|l| l.trim() == path),
            ".dockerignore does not leave out {path}"
        );
    }
}

/// The shared libraries the runtime image (distroless `cc-debian12`: glibc
/// and libgcc) provides.
const RUNTIME_LIBRARIES: [&str; 9] = [
    "linux-vdso.so.1",
    "ld-linux-x86-64.so.2",
    "libc.so.6",
    "libm.so.6",
    "libpthread.so.0",
    "libdl.so.2",
    "librt.so.1",
    "libutil.so.1",
    "libgcc_s.so.1",
];

#[test]
fn the_binaries_need_only_libraries_the_distroless_runtime_has() {
    // The debug build links the same system libraries as the image's release
    // build: a crate that links a system library (OpenSSL, say) shows up here.
    for bin in [bins::tollgate(), bins::sidecar()] {
        let out = Command::new("ldd")
            .arg(&bin)
            .output()
            .unwrap_or_else(|e| panic!("cannot run ldd (libc-bin): {e}"));
        assert!(
            out.status.success(),
            "ldd {} failed: {}",
            bin.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        let listing = String::from_utf8_lossy(&out.stdout);
        let needed: Vec<&str> = listing
            .lines()
            .filter_map(|l| l.split_whitespace().next())
            .map(|lib| lib.rsplit('/').next().unwrap_or(lib))
            .collect();
        assert!(
            needed.contains(&"libc.so.6"),
            "ldd {} lists no libc: {listing}",
            bin.display()
        );
        let foreign: Vec<&&str> = needed
            .iter()
            .filter(|lib| !RUNTIME_LIBRARIES.contains(lib))
            .collect();
        assert!(
            foreign.is_empty(),
            "{} needs {foreign:?}, which the distroless cc runtime image may not have: install \
             it in the image or link it statically, then list it here",
            bin.display()
        );
    }
}
