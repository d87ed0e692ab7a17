//! One stream to the control plane, kept open forever over the shared
//! [`Connection`]: the reconnect loop every stream (policy, quota, and the
//! ones to come) runs, and how a stream's end is classified.
//!
//! A stream plugs in by implementing [`ControlStream`]: what one session does
//! on a channel, and what to do (log, metrics) when one ends. [`keep_open`]
//! does the rest: take the shared channel, run a session, report the
//! connection broken when the end says so, wait a [`Backoff`] delay, start
//! over. Each stream keeps its own backoff, and decides itself what resets
//! it (a response, an answer) and what saturates it (a refusal).

use std::future::Future;
use std::sync::Arc;

use tonic::Code;
use tonic::transport::Channel;

use super::backoff::{Backoff, BackoffConfig};
use super::connection::{Connection, Unreachable};

/// A stream [`keep_open`] can keep open.
pub trait ControlStream: Send {
    /// Opens the stream on `channel` and runs it until it ends. Resets
    /// `backoff` on whatever proves the control plane serves the stream; may
    /// saturate it.
    fn session(
        &mut self,
        channel: Channel,
        backoff: &mut Backoff,
    ) -> impl Future<Output = End> + Send;

    /// After every end, before the delay: logs and state. May saturate `backoff`.
    fn ended(&mut self, end: &End, backoff: &mut Backoff);
}

/// Runs `stream` forever over `connection`; returns only when the task is dropped.
pub async fn keep_open<S: ControlStream>(
    connection: Arc<Connection>,
    mut stream: S,
    config: BackoffConfig,
) {
    let mut backoff = Backoff::new(config);
    loop {
        let end = match connection.link().await {
            Ok(link) => {
                let end = stream.session(link.channel(), &mut backoff).await;
                if end.breaks_connection() {
                    connection.broken(&link).await;
                }
                end
            }
            Err(unreachable) => End::Unreachable(unreachable),
        };
        stream.ended(&end, &mut backoff);
        let delay = backoff.wait().await;
        tracing::debug!(?delay, "reconnecting to the control plane");
    }
}

/// How a stream ended.
#[derive(Debug)]
pub enum End {
    /// There was no connection to open it on.
    Unreachable(Unreachable),
    /// The stream failed or was refused with a status.
    Status(tonic::Status),
    /// The control plane closed the stream cleanly.
    Closed,
}

impl End {
    /// The connection may be gone or stale: the status came from the
    /// transport, not from the control plane; the control plane closed the
    /// stream (it does so when it stops, and its successor must be dialled
    /// with the TLS files as they are now); or it refused the identity the
    /// connection presented (a rotated certificate needs a new handshake).
    /// The next session dials again. A status the control plane sent on a
    /// live connection (overload, a refused request) leaves it in use.
    fn breaks_connection(&self) -> bool {
        match self {
            End::Status(s) => {
                std::error::Error::source(s).is_some()
                    || matches!(s.code(), Code::PermissionDenied | Code::Unauthenticated)
            }
            End::Closed => true,
            End::Unreachable(_) => false,
        }
    }
}

impl std::fmt::Display for End {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            End::Unreachable(Unreachable::Setup(e)) => f.write_str(e),
            End::Unreachable(Unreachable::Connect(e)) => write!(f, "cannot connect: {}", chain(e)),
            End::Status(s) => write!(f, "{:?}: {}", s.code(), s.message()),
            End::Closed => f.write_str("closed by the control plane"),
        }
    }
}

/// How to recover from a stream that ended with a status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recovery {
    /// A passing fault (restart, overload, network): retry with backoff.
    Transient,
    /// The control plane refused us (bad node identity, no permission, wrong
    /// service): log loudly, but still retry, from the backoff cap. Exiting
    /// would crash-loop the pod and take its traffic down although the last
    /// good policy is still enforceable, and the fix (an operator correcting
    /// the control plane's config or RBAC) needs no sidecar restart.
    Refused,
}

/// Which statuses are passing faults and which mean the control plane refused us.
pub fn classify(code: Code) -> Recovery {
    match code {
        Code::InvalidArgument
        | Code::PermissionDenied
        | Code::Unauthenticated
        | Code::FailedPrecondition
        | Code::NotFound
        | Code::Unimplemented
        | Code::OutOfRange
        | Code::AlreadyExists => Recovery::Refused,
        Code::Ok
        | Code::Unavailable
        | Code::Internal
        | Code::Unknown
        | Code::Cancelled
        | Code::DeadlineExceeded
        | Code::ResourceExhausted
        | Code::Aborted
        | Code::DataLoss => Recovery::Transient,
    }
}

/// An error and its causes (tonic's transport error alone says only "transport error").
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// What a session sends on `rx`, as the request half of a stream.
pub fn requests<T: Send + 'static>(
    rx: tokio::sync::mpsc::Receiver<T>,
) -> impl futures_util::Stream<Item = T> + Send {
    futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|r| (r, rx)) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transport_failures_closes_and_identity_refusals_break_the_connection() {
        let sent = |code| End::Status(tonic::Status::new(code, "from the control plane"));
        assert!(
            !sent(Code::Unavailable).breaks_connection(),
            "a server status"
        );
        assert!(!sent(Code::ResourceExhausted).breaks_connection());
        assert!(sent(Code::PermissionDenied).breaks_connection());
        assert!(sent(Code::Unauthenticated).breaks_connection());
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset");
        let transport = tonic::Status::from_error(Box::new(io));
        assert!(End::Status(transport).breaks_connection());
        assert!(End::Closed.breaks_connection(), "a stopping control plane");
    }
}
