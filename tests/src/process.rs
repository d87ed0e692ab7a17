//! A child process that a test owns: its stdout and stderr are collected
//! (and printed into the test's output if the test fails), and it is stopped
//! when dropped — SIGTERM, then SIGKILL after a grace period — so no test
//! leaves an orphan behind.
//!
//! Children are started through `setpriv --pdeathsig KILL` where util-linux
//! has it, so they die with the thread that started them even if the test
//! process is killed before any `Drop` runs.

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

/// How long a process gets to exit after SIGTERM before it is killed.
const GRACE: Duration = Duration::from_secs(3);

/// A `Command` for `program` that dies with the thread that spawns it
/// (where `setpriv --pdeathsig` is available; a plain `Command` elsewhere).
pub fn command(program: impl AsRef<Path>) -> Command {
    match setpriv() {
        Some(setpriv) => {
            let mut c = Command::new(setpriv);
            c.args(["--pdeathsig", "KILL", "--"]).arg(program.as_ref());
            c
        }
        None => Command::new(program.as_ref()),
    }
}

fn setpriv() -> Option<&'static Path> {
    static SETPRIV: OnceLock<Option<&'static Path>> = OnceLock::new();
    *SETPRIV.get_or_init(|| {
        ["/usr/bin/setpriv", "/bin/setpriv"]
            .into_iter()
            .map(Path::new)
            .find(|p| p.is_file())
    })
}

/// A running child process, stopped on drop.
#[derive(Debug)]
pub struct Process {
    name: String,
    child: Child,
    output: Arc<Mutex<String>>,
    exited: Option<ExitStatus>,
}

impl Process {
    /// Spawns `cmd` (stdin closed, stdout and stderr collected). `name`
    /// labels its output in failure reports.
    pub fn spawn(name: &str, mut cmd: Command) -> Process {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name} ({cmd:?}): {e}"));
        let output = Arc::new(Mutex::new(String::new()));
        if let Some(out) = child.stdout.take() {
            collect(out, "", Arc::clone(&output));
        }
        if let Some(err) = child.stderr.take() {
            collect(err, "[stderr] ", Arc::clone(&output));
        }
        Process {
            name: name.to_owned(),
            child,
            output,
            exited: None,
        }
    }

    /// The label given at spawn.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The process id.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// Everything the process printed so far (stderr lines marked `[stderr]`).
    pub fn output(&self) -> String {
        self.output
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The exit status, if the process has exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        if self.exited.is_none() {
            self.exited = self.child.try_wait().ok().flatten();
        }
        self.exited
    }

    /// Panics, with the process's output, if it has exited.
    pub fn assert_running(&mut self) {
        if let Some(status) = self.exited() {
            panic!(
                "{} exited early ({status}); its output:\n{}",
                self.name,
                self.output()
            );
        }
    }

    /// Waits until the output contains `needle`; panics after `timeout` or
    /// if the process exits first.
    pub fn wait_for_output(&mut self, needle: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            if self.output().contains(needle) {
                return;
            }
            self.assert_running();
            assert!(
                Instant::now() < deadline,
                "{} did not print {needle:?} within {timeout:?}; its output:\n{}",
                self.name,
                self.output()
            );
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// Stops the process: SIGTERM, then SIGKILL after a grace period. Returns
    /// its exit status. Idempotent.
    pub fn stop(&mut self) -> Option<ExitStatus> {
        if let Some(s) = self.exited() {
            return Some(s);
        }
        // SIGTERM lets the sidecar shut down cleanly (and stop its stdio children).
        let termed = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if termed {
            let deadline = Instant::now() + GRACE;
            while Instant::now() < deadline {
                if let Some(s) = self.exited() {
                    return Some(s);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let _ = self.child.kill();
        self.exited = self.child.wait().ok();
        self.exited
    }
}

impl Process {
    /// Kills the process at once (SIGKILL: no chance to clean up, like a
    /// crashed or OOM-killed pod) and waits for it. Returns its exit status.
    pub fn kill(&mut self) -> Option<ExitStatus> {
        if let Some(s) = self.exited() {
            return Some(s);
        }
        let _ = self.child.kill();
        self.exited = self.child.wait().ok();
        self.exited
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.stop();
        if std::thread::panicking() {
            // Test output capture shows this only for the failing test.
            eprintln!(
                "---- {} (pid {}) output ----\n{}---- end of {} ----",
                self.name,
                self.child.id(),
                self.output(),
                self.name
            );
        }
    }
}

/// Appends each line of `from` to `into`, on a thread of its own (it ends
/// when the pipe closes).
fn collect(from: impl Read + Send + 'static, prefix: &'static str, into: Arc<Mutex<String>>) {
    std::thread::spawn(move || {
        let mut reader = BufReader::new(from);
        let mut line = Vec::new();
        loop {
            line.clear();
            match reader.read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let text = String::from_utf8_lossy(&line);
                    let mut out = into.lock().unwrap_or_else(PoisonError::into_inner);
                    out.push_str(prefix);
                    out.push_str(text.trim_end_matches(['\r', '\n']));
                    out.push('\n');
                }
            }
        }
    });
}

/// The result of a process run to completion by [`run`].
#[derive(Debug)]
pub struct Finished {
    /// Its exit status.
    pub status: ExitStatus,
    /// What it printed on stdout.
    pub stdout: String,
    /// What it printed on stderr.
    pub stderr: String,
}

/// Runs `cmd` to completion with `stdin` as its input; kills it and panics
/// after `timeout`.
pub fn run(name: &str, mut cmd: Command, stdin: Option<&[u8]>, timeout: Duration) -> Finished {
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {name} ({cmd:?}): {e}"));
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        let input = input.to_vec();
        std::thread::spawn(move || {
            use std::io::Write;
            let _ = pipe.write_all(&input);
        });
    }
    let stdout = read_all(child.stdout.take());
    let stderr = read_all(child.stderr.take());
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Ok(Some(s)) = child.try_wait() {
            break s;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{name} did not finish within {timeout:?} ({cmd:?}); stderr so far:\n{}",
                stderr.join().unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Finished {
        status,
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    }
}

fn read_all(pipe: Option<impl Read + Send + 'static>) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(mut p) = pipe {
            let _ = p.read_to_end(&mut buf);
        }
        String::from_utf8_lossy(&buf).into_owned()
    })
}
