//! The child process behind one session: spawning it in a process group of
//! its own, writing its stdin, reading its stdout line by line into the
//! session, forwarding its stderr to the log, and stopping the group when the
//! session ends.

use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::AsyncWriteExt;
use tokio::process::{Child, ChildStderr, ChildStdin, ChildStdout, Command};
use tokio::sync::{OwnedSemaphorePermit, mpsc, watch};
use tokio::task::JoinHandle;

use super::lines::{Line, Lines};
use super::session::{Destination, Session, destination, one_line};
use super::{Bridge, lock};
use crate::mcp::answer::{self, code};
use crate::mcp::peek;

/// One stderr line longer than this is cut.
const MAX_STDERR_LINE: usize = 16 << 10;
/// How long output still in the pipe is read after the child exited (a
/// grandchild may hold stdout open).
const DRAIN: Duration = Duration::from_secs(1);

/// Starts `sh -c <command>` with its stdio piped; an error is the reason it
/// could not start.
pub(super) fn spawn(
    command: &str,
) -> Result<(Child, ChildStdin, ChildStdout, ChildStderr), String> {
    // A group of its own, so that stopping the session reaches whatever
    // the command line started, not only the shell.
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(command)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| e.to_string())?;
    let (Some(stdin), Some(stdout), Some(stderr)) =
        (child.stdin.take(), child.stdout.take(), child.stderr.take())
    else {
        return Err("its stdio pipes were not set up".into());
    };
    Ok((child, stdin, stdout, stderr))
}

/// The task that owns one child: routes its output, and ends the session.
pub(super) struct Run {
    pub(super) bridge: Arc<Bridge>,
    pub(super) session: Arc<Session>,
    pub(super) writer: JoinHandle<()>,
    /// Released when the child has exited.
    pub(super) _permit: OwnedSemaphorePermit,
}

/// What woke the session's task.
enum Step {
    Stop,
    Exited(std::io::Result<ExitStatus>),
    Line(std::io::Result<Option<Line>>),
    Idle,
}

/// Why a session ended.
enum End {
    Exited(std::io::Result<ExitStatus>),
    Closed,
    Idle,
    ReadFailed(std::io::Error),
}

impl Run {
    pub(super) async fn run(
        self,
        mut child: Child,
        stdout: ChildStdout,
        mut stopped: watch::Receiver<bool>,
    ) {
        let limits = self.bridge.limits.clone();
        let mut lines = Lines::new(stdout, limits.max_line);
        let end = loop {
            let idle_at = self.session.routing().last_active + limits.idle;
            let step = tokio::select! {
                _ = stopped.wait_for(|s| *s) => Step::Stop,
                status = child.wait() => Step::Exited(status),
                line = lines.next() => Step::Line(line),
                _ = tokio::time::sleep_until(idle_at) => Step::Idle,
            };
            match step {
                Step::Stop => break End::Closed,
                Step::Exited(status) => {
                    let drain = async {
                        while let Ok(Some(line)) = lines.next().await {
                            self.route(line).await;
                        }
                    };
                    let _ = tokio::time::timeout(DRAIN, drain).await;
                    break End::Exited(status);
                }
                Step::Line(Ok(Some(line))) => {
                    let stop = tokio::select! {
                        _ = self.route(line) => false,
                        _ = stopped.wait_for(|s| *s) => true,
                    };
                    if stop {
                        break End::Closed;
                    }
                }
                Step::Line(Ok(None)) => break End::Exited(self.exit_status(&mut child).await),
                Step::Line(Err(e)) => break End::ReadFailed(e),
                Step::Idle if self.session.is_idle(limits.idle) => break End::Idle,
                Step::Idle => {}
            }
        };
        self.end(end, child).await;
    }

    /// Routes one line of the child's stdout.
    async fn route(&self, line: Line) {
        let server = &self.bridge.server;
        let session = &self.session.id;
        let line = match line {
            Line::Complete(l) => l,
            Line::TooLong(prefix) => {
                tracing::warn!(%server, %session,
                    "skipping a line of more than {} bytes from the stdio server: {}…",
                    self.bridge.limits.max_line, preview(&prefix));
                return;
            }
        };
        let text = line.trim_ascii();
        if text.is_empty() {
            return;
        }
        let peeked = match peek::peek(text) {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(%server, %session,
                    "skipping a line from the stdio server that is not a JSON-RPC message ({e}): {}",
                    preview(text));
                return;
            }
        };
        let out: Vec<(Destination, Bytes)> = peeked
            .messages()
            .iter()
            .map(|m| (destination(m), answer::sse_event(&one_line(m.raw))))
            .collect();
        drop(peeked);
        for (to, event) in out {
            let delivered = self
                .session
                .deliver(&to, event, self.bridge.limits.backlog)
                .await;
            if let (false, Destination::Response(id)) = (delivered, &to) {
                tracing::debug!(%server, %session, "dropping the response to request {id}: no client waits for it");
            }
        }
    }

    async fn exit_status(&self, child: &mut Child) -> std::io::Result<ExitStatus> {
        match tokio::time::timeout(self.bridge.limits.grace, child.wait()).await {
            Ok(status) => status,
            // stdout closed but the process lives on: it cannot answer.
            Err(_) => self.shut_down(child).await,
        }
    }

    /// Stops a child that is still running: stdin closed, then SIGTERM and
    /// SIGKILL to its process group, each after the grace period.
    async fn shut_down(&self, child: &mut Child) -> std::io::Result<ExitStatus> {
        self.writer.abort();
        let grace = self.bridge.limits.grace;
        if let Ok(status) = tokio::time::timeout(grace, child.wait()).await {
            return status;
        }
        // The group cannot be reused while its leader is not reaped, which
        // only `wait` does.
        if let Some(pgid) = child.id() {
            signal_group("TERM", pgid).await;
            if let Ok(status) = tokio::time::timeout(grace, child.wait()).await {
                return status;
            }
            signal_group("KILL", pgid).await;
        }
        let _ = child.start_kill();
        child.wait().await
    }

    async fn end(self, end: End, mut child: Child) {
        let server = &self.bridge.server;
        let session = &self.session.id;
        {
            let mut sessions = lock(&self.bridge.sessions);
            if sessions
                .get(session)
                .is_some_and(|s| Arc::ptr_eq(s, &self.session))
            {
                sessions.remove(session);
            }
        }
        let streams = {
            let mut r = self.session.routing();
            r.ended = true;
            r.get = None;
            r.backlog.clear();
            std::mem::take(&mut r.streams)
        };
        let reason = match end {
            End::Exited(status) => {
                self.writer.abort();
                if status.as_ref().is_ok_and(ExitStatus::success) {
                    tracing::info!(%server, %session, "the stdio server exited");
                } else {
                    tracing::warn!(%server, %session, "the stdio server exited: {}", describe_ref(&status));
                }
                let status = describe_ref(&status);
                format!("the stdio server `{server}` exited: {status}")
            }
            End::ReadFailed(e) => {
                let status = describe(self.shut_down(&mut child).await);
                tracing::warn!(%server, %session, "cannot read the stdio server's output ({e}); stopped it: {status}");
                format!("the stdio server `{server}` could not be read ({e}) and was stopped")
            }
            End::Closed | End::Idle => {
                let why = if let End::Idle = end {
                    format!("it was idle for {} s", self.bridge.limits.idle.as_secs())
                } else {
                    "the client closed it".to_owned()
                };
                let status = describe(self.shut_down(&mut child).await);
                tracing::info!(%server, %session, "session ended ({why}); the stdio server stopped: {status}");
                format!("the session with the stdio server `{server}` ended: {why}")
            }
        };
        for s in streams {
            for w in &s.waiting {
                let error = answer::error(Some(&w.id), code::UPSTREAM_UNAVAILABLE, &reason);
                // Best effort: a client that stopped reading does not hold the end up.
                let _ = s.tx.try_send(answer::sse_event(&error));
            }
        }
    }
}

fn describe(status: std::io::Result<ExitStatus>) -> String {
    describe_ref(&status)
}

fn describe_ref(status: &std::io::Result<ExitStatus>) -> String {
    match status {
        Ok(s) => s.to_string(),
        Err(e) => format!("its exit status is unknown ({e})"),
    }
}

/// Sends `signal` to a process group through the shell's `kill`, the one
/// way to signal a group without unsafe code.
async fn signal_group(signal: &str, pgid: u32) {
    let status = Command::new("sh")
        .arg("-c")
        .arg(format!("kill -s {signal} -- -{pgid}"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .await;
    if let Err(e) = status {
        tracing::debug!("cannot signal process group {pgid}: {e}");
    }
}

fn preview(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(&bytes[..bytes.len().min(200)]);
    text.into_owned()
}

pub(super) async fn write_stdin(mut stdin: ChildStdin, mut rx: mpsc::Receiver<Bytes>) {
    while let Some(line) = rx.recv().await {
        if let Err(e) = stdin.write_all(&line).await {
            // The child is gone; reading its stdout ends the session.
            tracing::debug!("cannot write to the stdio server: {e}");
            return;
        }
    }
}

pub(super) async fn forward_stderr(server: String, session: String, stderr: ChildStderr) {
    let mut lines = Lines::new(stderr, MAX_STDERR_LINE);
    while let Ok(Some(line)) = lines.next().await {
        let (text, cut) = match &line {
            Line::Complete(l) => (l, ""),
            Line::TooLong(l) => (l, "…"),
        };
        let text = String::from_utf8_lossy(text.trim_ascii_end());
        tracing::info!(target: "stdio_server", %server, %session, "{text}{cut}");
    }
}
