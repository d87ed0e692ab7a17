//! `tollgate serve` and the fleet commands (`policy push | versions | show |
//! diff`, `status`, `limits`), run as the real binary.

#![allow(clippy::unwrap_used)]

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::FakeSidecar;
use common::quota::{QuotaSidecar, bucket, limits_policy, serve_policy};
use tollgate_proto::v1::LeaseHeld;

/// A `tollgate serve` child, killed on drop.
struct Served {
    child: Child,
    addr: SocketAddr,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn serve(data: &Path) -> Served {
    let mut child = Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(["serve", "--insecure-dev", "--grpc", "127.0.0.1:0", "--data"])
        .arg(data)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .trim()
        .strip_prefix("tollgate control plane: grpc ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .parse()
        .unwrap();
    common::remember_admin_token(addr, data);
    Served { child, addr }
}

fn tollgate(addr: SocketAddr, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .env("TOLLGATE_ADDR", common::url(addr))
        .env("TOLLGATE_TOKEN", common::admin_token(addr))
        .env_remove("TOLLGATE_TOKEN_FILE")
        .args(args)
        .output()
        .unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn example(name: &str) -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../examples")
        .join(name)
        .to_string_lossy()
        .into_owned()
}

#[test]
fn push_versions_show_diff_and_status_against_a_served_control_plane() {
    let dir = tempfile::tempdir().unwrap();
    let served = serve(&dir.path().join("data"));
    let addr = served.addr;

    let seed = example("seed-policy.json");
    let out = tollgate(addr, &["policy", "push", &seed, "-m", "seed"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(stdout(&out), "pushed version 1\n");
    let out = tollgate(addr, &["policy", "push", &seed]);
    assert_eq!(stdout(&out), "unchanged: version 1\n");

    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, r#"{"version": "1", "default": "maybe"}"#).unwrap();
    let out = tollgate(addr, &["policy", "push", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        stdout(&out).starts_with(&format!("{}: /default: ", bad.display())),
        "{}",
        stdout(&out)
    );

    let full = example("full-policy.json");
    let out = tollgate(addr, &["policy", "push", &full, "--message", "full"]);
    assert_eq!(stdout(&out), "pushed version 2\n");

    let out = tollgate(addr, &["policy", "versions"]);
    let text = stdout(&out);
    let rows: Vec<&str> = text.lines().skip(1).collect();
    assert_eq!(rows.len(), 2, "{text}");
    assert!(
        rows[0].starts_with("1 ") && rows[0].ends_with("seed"),
        "{text}"
    );
    assert!(
        rows[1].starts_with("2 ") && rows[1].ends_with("full"),
        "{text}"
    );

    let out = tollgate(addr, &["policy", "show", "1"]);
    assert!(out.status.success(), "{out:?}");
    let shown: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(shown["tools"]["create_test_session_context"].is_object());
    let out = tollgate(addr, &["policy", "show", "9"]);
    assert_eq!(out.status.code(), Some(2));

    let out = tollgate(addr, &["policy", "diff", "1", "2"]);
    assert!(out.status.success(), "{out:?}");
    assert!(
        stdout(&out).lines().any(|l| l.starts_with("+ /tools/")),
        "{}",
        stdout(&out)
    );

    // A sidecar applies version 2; `status` shows it.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let _sidecar = rt.block_on(async {
        let mut sidecar = FakeSidecar::connect(addr, "pod-1", None).await;
        let v2 = sidecar.recv().await;
        sidecar.ack(&v2).await;
        let mut admin = common::admin(addr).await;
        common::wait_for(&mut admin, "pod-1", |n| n.applied_version == 2).await;
        sidecar
    });
    let out = tollgate(addr, &["status"]);
    let text = stdout(&out);
    let row = text
        .lines()
        .find(|l| l.starts_with("pod-1"))
        .unwrap_or_default();
    assert!(
        row.contains("app=demo") && row.contains("SYNCED") && row.contains(" 2 "),
        "{text}"
    );
    let out = tollgate(addr, &["status", "--json"]);
    let row: serde_json::Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    assert_eq!(row["node"], "pod-1");
    assert_eq!(row["state"], "SYNCED");
    assert_eq!(row["applied_version"], 2);
    assert_eq!(row["connected"], true);
}

#[test]
fn fleet_commands_say_when_no_control_plane_answers() {
    let out = Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(["--addr", "http://127.0.0.1:9", "policy", "versions"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot reach the control plane at http://127.0.0.1:9"),
        "{err}"
    );
}

#[test]
fn limits_shows_the_buckets_sidecars_report_and_their_leases() {
    let dir = tempfile::tempdir().unwrap();
    // An earlier control plane on this data dir sent leases that may be in
    // use for 30 s more: this one starts by re-learning.
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let until = std::time::SystemTime::now() + std::time::Duration::from_secs(30);
    let ms = until
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis();
    std::fs::write(
        data.join(tollgate_controlplane::server::QUOTA_MARKER),
        format!("{ms}\n"),
    )
    .unwrap();
    let served = serve(&data);
    let addr = served.addr;
    let out = tollgate(addr, &["limits"]);
    assert!(out.status.success(), "{out:?}");
    assert!(
        stdout(&out).starts_with("no fleet-wide limits reported"),
        "{}",
        stdout(&out)
    );

    // A sidecar process reports a global bucket, holding a lease of 12
    // calls (4 used) from before the control plane started: it is
    // re-learning, so that lease is renewed as it is.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let _sidecar = rt.block_on(async {
        serve_policy(addr, &limits_policy(30), &["pod-1"]).await;
        let mut b = bucket("writes", "global", "", 30, 60_000);
        b.admitted_total = 4;
        b.window_admitted = 4;
        b.demand = 10;
        b.held = Some(LeaseHeld {
            seq: 2,
            granted_total: 12,
        });
        let (sidecar, answer) = QuotaSidecar::connect(addr, "pod-1", 42, vec![b]).await;
        assert_eq!(answer.leases[0].granted_total, 12, "{answer:?}");
        sidecar
    });

    let out = tollgate(addr, &["limits"]);
    assert!(out.status.success(), "{out:?}");
    let text = stdout(&out);
    let rows: Vec<Vec<&str>> = text
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(rows.len(), 4, "{text}");
    assert_eq!(rows[0][0], "SERVER", "{text}");
    assert_eq!(
        rows[1],
        ["files", "writes", "-", "30/1m", "4", "8", "yes"],
        "{text}"
    );
    assert_eq!(rows[2][0], "NODE", "{text}");
    assert_eq!(rows[3][..5], ["pod-1", "yes", "8", "12", "4"], "{text}");
    assert!(rows[3][5].ends_with('s'), "{text}");

    let out = tollgate(addr, &["limits", "--json"]);
    let v: serde_json::Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    let b = &v["buckets"][0];
    assert_eq!(
        (b["server"].as_str(), b["max"].as_u64()),
        (Some("files"), Some(30))
    );
    assert_eq!(b["learning"], true);
    assert_eq!(b["holders"][0]["node_id"], "pod-1");
    assert_eq!(b["holders"][0]["epoch"], 42);
    assert_eq!(b["holders"][0]["granted_total"], 12);

    let out = tollgate(addr, &["limits", "--server", "other"]);
    assert_eq!(
        stdout(&out).lines().next(),
        Some(
            "no fleet-wide limits reported for server other (sidecars report a bucket once a \
             call hits it)"
        )
    );

    // --watch prints the table again every second until stopped.
    let mut watch = Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .env("TOLLGATE_ADDR", common::url(addr))
        .env("TOLLGATE_TOKEN", common::admin_token(addr))
        .env_remove("TOLLGATE_TOKEN_FILE")
        .args(["limits", "--watch"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = mpsc::channel();
    let lines = BufReader::new(watch.stdout.take().unwrap()).lines();
    std::thread::spawn(move || {
        for line in lines.map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let mut tables = 0;
    while tables < 2 {
        let line = rx
            .recv_timeout(Duration::from_secs(5))
            .expect("--watch prints the table again within 5 s");
        tables += usize::from(line.starts_with("files "));
    }
    let _ = watch.kill();
    let _ = watch.wait();
}

#[test]
fn limits_says_which_address_did_not_answer() {
    let out = Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(["--addr", "http://127.0.0.1:9", "limits"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(
            "cannot reach the control plane at http://127.0.0.1:9 (set --addr or TOLLGATE_ADDR)"
        ),
        "{err}"
    );
}
