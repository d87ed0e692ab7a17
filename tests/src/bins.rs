//! The workspace's binaries (`tollgate-sidecar`, `tollgate`), built once per
//! test process.
//!
//! Cargo builds another package's binaries for `cargo test` only when that
//! package has integration tests of its own, and `cargo test -p tollgate-e2e`
//! never rebuilds them, so a binary found in the target directory may be
//! missing or stale. The first call here therefore runs
//! `cargo build --workspace --bins --tests` into the target directory this
//! test binary was built in: `--tests` keeps the feature resolution of
//! `cargo test --workspace` (dev-dependencies included), so the build reuses
//! every artifact the test run made and only links what is missing — a no-op
//! taking about a second when all is fresh.
//!
//! Overrides: `TOLLGATE_SIDECAR_BIN` / `TOLLGATE_BIN` name a binary to use
//! as is; `TOLLGATE_E2E_BUILD=0` skips the build and uses what is there.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The sidecar binary.
pub const SIDECAR: &str = "tollgate-sidecar";
/// The control plane and operator CLI binary.
pub const TOLLGATE: &str = "tollgate";

/// The path of `tollgate-sidecar`, built if needed (panics if it cannot be).
pub fn sidecar() -> PathBuf {
    binary(SIDECAR, "TOLLGATE_SIDECAR_BIN")
}

/// The path of `tollgate`, built if needed (panics if it cannot be).
pub fn tollgate() -> PathBuf {
    binary(TOLLGATE, "TOLLGATE_BIN")
}

/// The workspace root (the folder holding the top `Cargo.toml`).
pub fn workspace_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

fn binary(name: &str, env: &str) -> PathBuf {
    if let Some(p) = std::env::var_os(env) {
        let p = PathBuf::from(p);
        assert!(p.is_file(), "{env}={} is not a file", p.display());
        return p;
    }
    let dir = match built() {
        Ok(dir) => dir,
        Err(e) => panic!("{e}"),
    };
    let path = dir.join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    assert!(
        path.is_file(),
        "{} is missing after the build; build it with `cargo build --bin {name}` or set {env}",
        path.display()
    );
    path
}

/// The profile directory (e.g. `target/debug`) holding fresh binaries.
fn built() -> &'static Result<PathBuf, String> {
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BUILT.get_or_init(|| {
        let profile_dir = profile_dir()?;
        if std::env::var("TOLLGATE_E2E_BUILD").is_ok_and(|v| v == "0") {
            return Ok(profile_dir);
        }
        build(&profile_dir)?;
        Ok(profile_dir)
    })
}

/// `<target>/<profile>`: this test binary runs from `<target>/<profile>/deps/`.
fn profile_dir() -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find the test binary: {e}"))?;
    let deps = exe.parent().ok_or("the test binary has no folder")?;
    let profile = if deps.file_name().is_some_and(|n| n == "deps") {
        deps.parent().ok_or("the deps folder has no parent")?
    } else {
        deps
    };
    Ok(profile.to_path_buf())
}

fn build(profile_dir: &Path) -> Result<(), String> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| env!("CARGO").into());
    let target_dir = profile_dir
        .parent()
        .ok_or("the profile folder has no parent")?;
    let mut cmd = Command::new(&cargo);
    cmd.current_dir(workspace_root())
        .args(["build", "--quiet", "--workspace", "--bins", "--tests"])
        .arg("--target-dir")
        .arg(target_dir);
    match profile_dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") | None => {}
        Some("release") => {
            cmd.arg("--release");
        }
        Some(other) => {
            cmd.args(["--profile", other]);
        }
    }
    let started = std::time::Instant::now();
    let out = cmd
        .output()
        .map_err(|e| format!("cannot run {}: {e}", Path::new(&cargo).display()))?;
    if !out.status.success() {
        return Err(format!(
            "building the workspace's binaries failed ({cmd:?}, {}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let took = started.elapsed();
    if took.as_secs() >= 5 {
        eprintln!("tollgate-e2e: built the workspace's binaries in {took:.1?}");
    }
    Ok(())
}
