//! The README's first command, `scripts/up`, as a person runs it: in
//! development mode and with `--tls` (certificates, TLS, node identity from
//! the sidecar's certificate, the CLI with the first admin token). Each run
//! brings everything up on free loopback ports, shows a call allowed, one
//! denied and the 31st rate-limited, and exits (`TOLLGATE_UP_EXIT=1`).

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use tollgate_e2e::net::free_addr;
use tollgate_e2e::process;

/// Building (a no-op after the harness's build) and the demo's calls.
const UP_TIMEOUT: Duration = Duration::from_secs(300);

fn up(args: &[&str]) -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut cmd = Command::new("bash");
    cmd.arg(root.join("scripts/up"))
        .args(args)
        .current_dir(&root);
    for var in [
        "MCP_PORT",
        "ADMIN_PORT",
        "DEMO_PORT",
        "GRPC_PORT",
        "CP_HTTP_PORT",
    ] {
        cmd.env(var, free_addr().port().to_string());
    }
    cmd.env("TOLLGATE_UP_EXIT", "1")
        .env_remove("TOLLGATE_ADDR")
        .env_remove("TOLLGATE_CA")
        .env_remove("TOLLGATE_TOKEN")
        .env_remove("TOLLGATE_TOKEN_FILE");
    let out = process::run("scripts/up", cmd, None, UP_TIMEOUT);
    assert!(
        out.status.success(),
        "scripts/up {args:?} failed ({}):\n{}{}",
        out.status,
        out.stdout,
        out.stderr
    );
    out.stdout
}

/// The demo's three calls came out as the README says.
fn assert_demo(out: &str) {
    let line = |prefix: &str| {
        out.lines()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no line {prefix:?} in:\n{out}"))
    };
    assert!(
        line("-- create_test_session_context (allowed):").contains("\"id\":\"ts-1\""),
        "{out}"
    );
    assert!(
        line("-- delete_test_session (denied):").contains("Denied by policy"),
        "{out}"
    );
    assert!(
        line("-- create_test_session_context, 31st call:").contains("Rate limit"),
        "{out}"
    );
    assert!(out.contains("SYNCED"), "{out}");
}

#[test]
fn scripts_up_brings_tollgate_up_in_development_mode() {
    let out = up(&[]);
    assert!(out.contains("development mode (--insecure-dev)"), "{out}");
    assert_demo(&out);
}

#[test]
fn scripts_up_tls_brings_up_the_secured_setup() {
    let out = up(&["--tls"]);
    assert!(out.contains("== secured: TLS"), "{out}");
    assert!(out.contains("TOLLGATE_ADDR=https://127.0.0.1:"), "{out}");
    assert_demo(&out);
}
