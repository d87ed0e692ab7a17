//! `tollgate-sidecar` as a test peer: a policy file in a scratch directory,
//! free loopback ports for MCP and admin, a decision log to read back, and
//! the built-in demo upstream (`tollgate-sidecar demo-upstream`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::bins;
use crate::net::{self, free_addr};
use crate::process::{self, Process};
use crate::scratch::Scratch;

/// How long a started process gets to listen / become ready.
const STARTUP: Duration = Duration::from_secs(30);

/// Starts building a sidecar: `tollgate_e2e::sidecar::builder().upstream(url).policy(&json).start()`.
pub fn builder() -> SidecarBuilder {
    SidecarBuilder::default()
}

/// The settings of a sidecar to start.
#[derive(Debug, Default)]
pub struct SidecarBuilder {
    upstreams: Vec<String>,
    policy: Option<String>,
    args: Vec<String>,
    env: Vec<(String, String)>,
    node_id: Option<String>,
    wait_ready: bool,
}

impl SidecarBuilder {
    /// An `--upstream` (`URL`, `NAME=URL`, `NAME=sse:URL`, `NAME=stdio:CMD`).
    pub fn upstream(mut self, spec: impl Into<String>) -> Self {
        self.upstreams.push(spec.into());
        self
    }

    /// The policy (a document or a bundle), written to `policy.json`.
    pub fn policy(mut self, policy: &Value) -> Self {
        self.policy = Some(policy.to_string());
        self
    }

    /// The policy file's text as is (e.g. an invalid one).
    pub fn policy_text(mut self, text: impl Into<String>) -> Self {
        self.policy = Some(text.into());
        self
    }

    /// Another command-line argument (e.g. `--log-arguments`).
    pub fn arg(mut self, arg: impl Into<String>) -> Self {
        self.args.push(arg.into());
        self
    }

    /// `--node-id` (default `e2e-node`).
    pub fn node_id(mut self, id: impl Into<String>) -> Self {
        self.node_id = Some(id.into());
        self
    }

    /// Fleet mode: `--control-plane URL --state-dir DIR` (use no
    /// [`policy`](Self::policy) with it).
    pub fn control_plane(self, url: impl Into<String>, state_dir: &std::path::Path) -> Self {
        self.arg("--control-plane")
            .arg(url)
            .arg("--state-dir")
            .arg(state_dir.display().to_string())
    }

    /// Makes [`start`](Self::start) wait for `/readyz` even without a policy
    /// file (e.g. in fleet mode, once the control plane has sent a bundle or
    /// the state dir holds one).
    pub fn wait_ready(mut self) -> Self {
        self.wait_ready = true;
        self
    }

    /// An environment variable for the process (`TOLLGATE_LOG=debug`).
    pub fn env(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.push((name.into(), value.into()));
        self
    }

    /// Starts the sidecar and waits until it serves: `/readyz` is 200 when a
    /// policy was given (or [`wait_ready`](Self::wait_ready)), `/healthz`
    /// otherwise. Panics with its output if it
    /// exits or does not get there in time.
    pub fn start(self) -> Sidecar {
        let scratch = Scratch::new("sidecar");
        let listen = free_addr();
        let admin = free_addr();
        let decision_log = scratch.join("decisions.jsonl");
        let policy_path = scratch.join("policy.json");
        let mut cmd = process::command(bins::sidecar());
        cmd.arg("--listen")
            .arg(listen.to_string())
            .arg("--admin")
            .arg(admin.to_string())
            .arg("--decision-log")
            .arg(&decision_log)
            .arg("--node-id")
            .arg(self.node_id.as_deref().unwrap_or("e2e-node"))
            .arg("--policy-poll-ms")
            .arg("100");
        if let Some(text) = &self.policy {
            write_atomically(&policy_path, text);
            cmd.arg("--policy").arg(&policy_path);
        }
        for u in &self.upstreams {
            cmd.arg("--upstream").arg(u);
        }
        cmd.args(&self.args);
        if std::env::var_os("TOLLGATE_LOG").is_none() {
            cmd.env("TOLLGATE_LOG", "info");
        }
        // Plain text in failure reports.
        cmd.env("NO_COLOR", "1");
        for (n, v) in &self.env {
            cmd.env(n, v);
        }
        let mut process = Process::spawn("tollgate-sidecar", cmd);
        let endpoint = if self.policy.is_some() || self.wait_ready {
            "/readyz"
        } else {
            "/healthz"
        };
        wait_for_status(admin, endpoint, 200, &mut process, STARTUP);
        net::wait_for_port(listen, &mut process, STARTUP);
        Sidecar {
            process,
            listen,
            admin,
            decision_log,
            policy_path,
            scratch,
        }
    }
}

/// A running sidecar; stopped on drop.
#[derive(Debug)]
pub struct Sidecar {
    // Declared first so it is stopped before the scratch directory goes.
    process: Process,
    /// Where agents connect (MCP).
    pub listen: SocketAddr,
    /// Health, readiness and metrics.
    pub admin: SocketAddr,
    /// The decision log file.
    pub decision_log: PathBuf,
    /// The policy file it watches.
    pub policy_path: PathBuf,
    scratch: Scratch,
}

impl Sidecar {
    /// `http://<listen><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.listen)
    }

    /// The unnamed upstream's endpoint, `http://<listen>/mcp`.
    pub fn mcp_url(&self) -> String {
        self.url("/mcp")
    }

    /// A named upstream's endpoint, `http://<listen>/mcp/<name>`.
    pub fn mcp_url_of(&self, name: &str) -> String {
        self.url(&format!("/mcp/{name}"))
    }

    /// The process (its output, whether it still runs).
    pub fn process(&mut self) -> &mut Process {
        &mut self.process
    }

    /// Its scratch directory.
    pub fn scratch(&self) -> &Scratch {
        &self.scratch
    }

    /// The `/readyz` body (e.g. `ready: policy sha256:…`).
    pub fn readiness(&self) -> String {
        net::get(self.admin, "/readyz")
            .map(|r| r.text())
            .unwrap_or_else(|e| format!("(unreachable: {e})"))
    }

    /// `/metrics` (OpenMetrics text).
    pub fn metrics(&self) -> String {
        net::get(self.admin, "/metrics")
            .unwrap_or_else(|e| panic!("GET /metrics: {e}"))
            .text()
    }

    /// Replaces the policy file and waits until the sidecar reports another
    /// policy version in force (so give a policy that differs).
    pub fn set_policy(&mut self, policy: &Value) {
        let before = self.readiness();
        write_atomically(&self.policy_path, &policy.to_string());
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.readiness() == before {
            self.process.assert_running();
            assert!(
                Instant::now() < deadline,
                "the sidecar did not load the new policy within 10 s (still {before:?}); its output:\n{}",
                self.process.output()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The decision records written so far, waiting up to 5 s for at least
    /// `at_least` of them (the log is written off the request path).
    pub fn decisions(&self, at_least: usize) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let records: Vec<Value> = std::fs::read_to_string(&self.decision_log)
                .unwrap_or_default()
                .lines()
                .filter(|l| !l.trim().is_empty())
                .map(|l| {
                    serde_json::from_str(l)
                        .unwrap_or_else(|e| panic!("a decision record is not JSON ({e}): {l}"))
                })
                .collect();
            if records.len() >= at_least || Instant::now() >= deadline {
                return records;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// The sidecar's built-in demo MCP server (`tollgate-sidecar demo-upstream`).
#[derive(Debug)]
pub struct DemoUpstream {
    process: Process,
    /// Where it listens.
    pub addr: SocketAddr,
}

impl DemoUpstream {
    /// Starts it on a free loopback port and waits until it listens.
    pub fn start() -> DemoUpstream {
        let addr = free_addr();
        let mut cmd = process::command(bins::sidecar());
        cmd.arg("demo-upstream")
            .arg("--listen")
            .arg(addr.to_string())
            .env("NO_COLOR", "1");
        let mut process = Process::spawn("demo-upstream", cmd);
        net::wait_for_port(addr, &mut process, STARTUP);
        DemoUpstream { process, addr }
    }

    /// Its MCP endpoint, `http://<addr>/mcp`.
    pub fn url(&self) -> String {
        format!("http://{}/mcp", self.addr)
    }

    /// The process.
    pub fn process(&mut self) -> &mut Process {
        &mut self.process
    }
}

/// Polls `GET path` until it answers `status`.
fn wait_for_status(
    addr: SocketAddr,
    path: &str,
    status: u16,
    process: &mut Process,
    timeout: Duration,
) {
    let deadline = Instant::now() + timeout;
    let mut last;
    loop {
        match net::get(addr, path) {
            Ok(r) if r.status == status => return,
            Ok(r) => last = format!("{} {}", r.status, r.text().trim()),
            Err(e) => last = e.to_string(),
        }
        process.assert_running();
        assert!(
            Instant::now() < deadline,
            "{} did not answer {status} on http://{addr}{path} within {timeout:?} (last: {last}); its output:\n{}",
            process.name(),
            process.output()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Writes `text` to `path` through a temporary file and a rename, so a
/// watcher never reads half a file.
fn write_atomically(path: &std::path::Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap_or_else(|e| panic!("cannot write {}: {e}", tmp.display()));
    std::fs::rename(&tmp, path)
        .unwrap_or_else(|e| panic!("cannot rename {} to {}: {e}", tmp.display(), path.display()));
}
