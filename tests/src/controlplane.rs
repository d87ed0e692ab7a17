//! `tollgate serve` as a test peer: the control plane on free loopback ports
//! with its store in a scratch directory, stoppable (cleanly, SIGTERM) or
//! killable (SIGKILL) and restartable on the same ports and the same store,
//! plus the operator CLI (`tollgate policy push`, `tollgate status --json`,
//! …) pointed at it, as the first admin (the token the control plane wrote
//! to `<data>/admin-token`) or with another operator token.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::bins;
use crate::net::{self, free_addr};
use crate::process::{self, Finished, Process};
use crate::scratch::Scratch;

/// How long a started control plane gets to answer `/readyz`.
const STARTUP: Duration = Duration::from_secs(30);
/// How long one CLI command may run.
const CLI_TIMEOUT: Duration = Duration::from_secs(30);

/// A control plane; stopped on drop, its store removed with its scratch
/// directory (kept if the test fails).
#[derive(Debug)]
pub struct ControlPlane {
    // Declared first so it is stopped before the scratch directory goes.
    process: Option<Process>,
    /// gRPC: policy distribution and the admin API.
    pub grpc: SocketAddr,
    /// `/healthz`, `/readyz`, `/metrics`.
    pub http: SocketAddr,
    /// `--stale-after`, if given.
    stale_after: Option<String>,
    /// More `tollgate serve` arguments, given on every start.
    args: Vec<String>,
    /// How many times it was started (labels its output).
    starts: u32,
    /// Secured: TLS on both ports and node identity from client
    /// certificates, with the `tollgate certs init` directory here.
    certs: Option<PathBuf>,
    scratch: Scratch,
}

impl ControlPlane {
    /// Starts `tollgate serve` on free ports with an empty store and waits
    /// until `/readyz` answers.
    pub fn start() -> ControlPlane {
        Self::start_with_stale_after(None)
    }

    /// As [`start`](Self::start), with `--stale-after` (e.g. `"2s"`).
    pub fn start_with_stale_after(stale_after: Option<&str>) -> ControlPlane {
        Self::start_with(stale_after, &[])
    }

    /// As [`start`](Self::start), with more `tollgate serve` arguments
    /// (e.g. `["--max-opening-streams", "2"]`), kept across restarts.
    pub fn start_with_args(args: &[&str]) -> ControlPlane {
        Self::start_with(None, args)
    }

    fn start_with(stale_after: Option<&str>, args: &[&str]) -> ControlPlane {
        let mut cp = Self::new(stale_after, args);
        cp.restart();
        cp
    }

    fn new(stale_after: Option<&str>, args: &[&str]) -> ControlPlane {
        ControlPlane {
            process: None,
            grpc: free_addr(),
            http: free_addr(),
            stale_after: stale_after.map(str::to_owned),
            args: args.iter().map(|a| (*a).to_owned()).collect(),
            starts: 0,
            certs: None,
            scratch: Scratch::new("controlplane"),
        }
    }

    /// A secured control plane: `tollgate certs init` in its scratch
    /// directory, then `tollgate serve` with TLS on both ports and node
    /// identity from client certificates (`--client-ca`). Without
    /// [`start_secured`](Self::start_secured) the control plane runs with
    /// `--insecure-dev`.
    pub fn start_secured(args: &[&str]) -> ControlPlane {
        let mut cp = Self::new(None, args);
        let dir = cp.scratch.join("certs");
        let out = cp.run_cli(&["certs", "init", path_str(&dir)]);
        assert!(
            out.status.success(),
            "tollgate certs init failed:\n{}{}",
            out.stdout,
            out.stderr
        );
        cp.certs = Some(dir);
        cp.restart();
        cp
    }

    /// The `tollgate certs init` directory of a secured control plane.
    pub fn certs_dir(&self) -> &Path {
        self.certs
            .as_deref()
            .unwrap_or_else(|| panic!("the control plane is not secured (start_secured)"))
    }

    /// `tollgate certs issue` for a node; returns its certificate and key.
    pub fn issue_node_cert(&self, node: &str, namespace: &str) -> (PathBuf, PathBuf) {
        let dir = self.certs_dir();
        let out = self.run_cli(&[
            "certs",
            "issue",
            "--dir",
            path_str(dir),
            "--node",
            node,
            "--namespace",
            namespace,
        ]);
        assert!(
            out.status.success(),
            "tollgate certs issue failed:\n{}{}",
            out.stdout,
            out.stderr
        );
        (
            dir.join(format!("{node}.pem")),
            dir.join(format!("{node}-key.pem")),
        )
    }

    /// `http://<grpc>` (`https://` when secured): what sidecars take as
    /// `--control-plane` and the CLI as `--addr`.
    pub fn url(&self) -> String {
        match self.certs {
            Some(_) => format!("https://{}", self.grpc),
            None => format!("http://{}", self.grpc),
        }
    }

    /// The store's directory (`--data`); it outlives restarts.
    pub fn data_dir(&self) -> PathBuf {
        self.scratch.join("data")
    }

    /// The running process; panics while stopped.
    pub fn process(&mut self) -> &mut Process {
        self.process
            .as_mut()
            .unwrap_or_else(|| panic!("the control plane is stopped"))
    }

    /// Whether it runs (started and not stopped; it may have crashed).
    pub fn is_started(&self) -> bool {
        self.process.is_some()
    }

    /// Stops it cleanly (SIGTERM: `tollgate serve` ends every stream,
    /// flushes its store and exits; SIGKILL if it takes more than 3 s).
    /// Returns how it ended; `None` if it was not running.
    pub fn stop(&mut self) -> Option<Ended> {
        let mut p = self.process.take()?;
        let status = p.stop();
        Some(Ended {
            status,
            output: p.output(),
        })
    }

    /// Kills it (SIGKILL: an abrupt end, like a crashed or OOM-killed pod).
    /// Idempotent.
    pub fn kill(&mut self) {
        if let Some(mut p) = self.process.take() {
            p.kill();
        }
    }

    /// Stops it if it runs, then starts it again on the same ports and the
    /// same data dir and waits until `/readyz` answers.
    pub fn restart(&mut self) {
        self.stop();
        self.starts += 1;
        let mut cmd = process::command(bins::tollgate());
        cmd.arg("serve")
            .arg("--grpc")
            .arg(self.grpc.to_string())
            .arg("--http")
            .arg(self.http.to_string())
            .arg("--data")
            .arg(self.data_dir());
        if let Some(s) = &self.stale_after {
            cmd.arg("--stale-after").arg(s);
        }
        match &self.certs {
            Some(dir) => {
                cmd.arg("--tls-cert")
                    .arg(dir.join("control-plane.pem"))
                    .arg("--tls-key")
                    .arg(dir.join("control-plane-key.pem"))
                    .arg("--client-ca")
                    .arg(dir.join("ca.pem"));
            }
            None => {
                cmd.arg("--insecure-dev");
            }
        }
        cmd.args(&self.args);
        if std::env::var_os("RUST_LOG").is_none() {
            cmd.env("RUST_LOG", "info");
        }
        cmd.env("NO_COLOR", "1");
        let mut process = Process::spawn(&format!("tollgate serve #{}", self.starts), cmd);
        // The HTTP port is bound only once the store is open and gRPC
        // listens, so a 200 here (an open port, when it speaks TLS) means
        // ready. Binding the same ports again right after a stop can race
        // the old sockets: that shows up as an early exit, reported with
        // the output.
        let deadline = Instant::now() + STARTUP;
        loop {
            let ready = match self.certs {
                Some(_) => std::net::TcpStream::connect(self.http).is_ok(),
                None => net::get(self.http, "/readyz").is_ok_and(|r| r.status == 200),
            };
            if ready {
                break;
            }
            process.assert_running();
            assert!(
                Instant::now() < deadline,
                "tollgate serve did not answer /readyz on {} within {STARTUP:?}; its output:\n{}",
                self.http,
                process.output()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        self.process = Some(process);
    }

    /// The file `tollgate serve` wrote the first admin token to (absent
    /// when it was started with `--bootstrap-token-file`).
    pub fn admin_token_file(&self) -> PathBuf {
        self.data_dir().join("admin-token")
    }

    /// The first admin token, as written to [`admin_token_file`](Self::admin_token_file).
    pub fn admin_token(&self) -> String {
        let path = self.admin_token_file();
        std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
            .trim()
            .to_owned()
    }

    /// Runs `tollgate --addr <url> <args…>` to completion as the first admin
    /// (`TOLLGATE_TOKEN_FILE=<data>/admin-token`), with `--ca` when secured.
    pub fn cli(&self, args: &[&str]) -> Finished {
        let mut cmd = self.cli_command(args);
        cmd.env("TOLLGATE_TOKEN_FILE", self.admin_token_file());
        process::run("tollgate", cmd, None, CLI_TIMEOUT)
    }

    /// As [`cli`](Self::cli), with `token` (in `TOLLGATE_TOKEN`) instead.
    pub fn cli_with_token(&self, token: &str, args: &[&str]) -> Finished {
        let mut cmd = self.cli_command(args);
        cmd.env("TOLLGATE_TOKEN", token);
        process::run("tollgate", cmd, None, CLI_TIMEOUT)
    }

    /// As [`cli`](Self::cli), with no operator token at all.
    pub fn cli_without_token(&self, args: &[&str]) -> Finished {
        process::run("tollgate", self.cli_command(args), None, CLI_TIMEOUT)
    }

    /// `tollgate --addr <url> <args…>` with no token and no `TOLLGATE_*`
    /// settings from the test's own environment.
    fn cli_command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(bins::tollgate());
        cmd.arg("--addr").arg(self.url());
        if let Some(dir) = &self.certs {
            cmd.arg("--ca").arg(dir.join("ca.pem"));
        }
        cmd.args(args);
        cmd.env("NO_COLOR", "1")
            .env_remove("TOLLGATE_ADDR")
            .env_remove("TOLLGATE_CA")
            .env_remove("TOLLGATE_TOKEN")
            .env_remove("TOLLGATE_TOKEN_FILE");
        cmd
    }

    /// Runs `tollgate <args…>` with nothing added (offline commands).
    pub fn run_cli(&self, args: &[&str]) -> Finished {
        let mut cmd = Command::new(bins::tollgate());
        cmd.args(args).env("NO_COLOR", "1");
        process::run("tollgate", cmd, None, CLI_TIMEOUT)
    }

    /// Writes `text` to a fresh file in the scratch directory and runs
    /// `tollgate policy push FILE` on it; returns the finished command and
    /// the file's path (the CLI names it in error lines).
    pub fn push_text(&self, text: &str) -> (Finished, PathBuf) {
        static N: AtomicU32 = AtomicU32::new(0);
        let path = self
            .scratch
            .join(&format!("push-{}.json", N.fetch_add(1, Ordering::Relaxed)));
        std::fs::write(&path, text)
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
        let out = self.cli(&["policy", "push", path_str(&path)]);
        (out, path)
    }

    /// Pushes `policy` and returns the version the control plane gave it
    /// (a new one, or the existing one for identical content). Panics with
    /// the CLI's output if the push is refused.
    pub fn push(&self, policy: &Value) -> u64 {
        let (out, _) = self.push_text(&policy.to_string());
        assert!(
            out.status.success(),
            "tollgate policy push failed ({}):\n{}{}",
            out.status,
            out.stdout,
            out.stderr
        );
        // `pushed version N` or `unchanged: version N`.
        out.stdout
            .trim()
            .rsplit(' ')
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no version in the push output: {:?}", out.stdout))
    }

    /// `tollgate status --json`: one object per node, as an array.
    pub fn status(&self) -> Value {
        let out = self.cli(&["status", "--json"]);
        assert!(
            out.status.success(),
            "tollgate status --json failed ({}):\n{}{}",
            out.status,
            out.stdout,
            out.stderr
        );
        Value::Array(
            out.stdout
                .lines()
                .filter(|l| !l.trim().is_empty())
                .map(|l| {
                    serde_json::from_str(l)
                        .unwrap_or_else(|e| panic!("a status line is not JSON ({e}): {l}"))
                })
                .collect(),
        )
    }

    /// Polls [`status`](Self::status) until `done` holds for it; panics with
    /// the last status and the control plane's output after `timeout`.
    pub fn wait_for_status(
        &mut self,
        what: &str,
        timeout: Duration,
        done: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let status = self.status();
            if done(&status) {
                return status;
            }
            self.process().assert_running();
            assert!(
                Instant::now() < deadline,
                "{what}: not reached within {timeout:?}; last status:\n{status:#}\ncontrol plane output:\n{}",
                self.process().output()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `/metrics` (OpenMetrics text).
    pub fn metrics(&self) -> String {
        net::get(self.http, "/metrics")
            .unwrap_or_else(|e| panic!("GET /metrics of the control plane: {e}"))
            .text()
    }

    /// The value of the sample named `name` (no labels) in `/metrics`.
    pub fn metric(&self, name: &str) -> f64 {
        metric(&self.metrics(), name)
    }
}

/// How a stopped control plane ended.
#[derive(Debug)]
pub struct Ended {
    /// Its exit status (`None` if it could not be collected).
    pub status: Option<ExitStatus>,
    /// Everything it printed (stderr lines marked `[stderr]`).
    pub output: String,
}

/// The value of the unlabelled sample `name` in an OpenMetrics text; panics
/// with the text if there is none.
pub fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no sample {name} in:\n{text}"))
}

fn path_str(path: &Path) -> &str {
    path.to_str()
        .unwrap_or_else(|| panic!("{} is not UTF-8", path.display()))
}
