//! How the sidecar's listeners take connections: a cap on how many are open
//! at once, a deadline for each request's headers, caps on header bytes and
//! on HTTP/2 streams per connection. A client that connects and says nothing,
//! or sends its headers a byte at a time, is cut off at the deadline and
//! holds one slot until then; a flood of such connections past the cap is
//! closed as it is accepted, so calls already connected keep being served.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use crate::metrics::Metrics;

/// The bounds of one listener.
#[derive(Debug, Clone, Copy)]
pub struct ConnLimits {
    /// The listener's name in metrics (`mcp`, `admin`).
    pub name: &'static str,
    /// Connections open at once; more are closed as they are accepted.
    pub max_connections: usize,
    /// How long a client has to send a request's headers, from its
    /// connection (or the end of its previous request) on; an idle
    /// keep-alive connection is closed after it too.
    pub header_timeout: Duration,
    /// The most header bytes a request may carry (431 past it on HTTP/1).
    pub max_header_bytes: usize,
    /// HTTP/2 streams open at once on one connection.
    pub max_streams: u32,
}

impl Default for ConnLimits {
    fn default() -> Self {
        Self {
            name: "mcp",
            max_connections: 10_000,
            header_timeout: Duration::from_secs(10),
            max_header_bytes: 64 << 10,
            max_streams: 100,
        }
    }
}

impl ConnLimits {
    /// An HTTP/1 and HTTP/2 server connection builder with these bounds.
    pub fn builder(&self) -> auto::Builder<TokioExecutor> {
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(self.header_timeout)
            // hyper's floor for its read buffer is 8 KiB.
            .max_buf_size(self.max_header_bytes.max(8192));
        builder
            .http2()
            .timer(TokioTimer::new())
            .max_concurrent_streams(self.max_streams)
            .max_header_list_size(u32::try_from(self.max_header_bytes).unwrap_or(u32::MAX))
            .keep_alive_interval(Some(self.header_timeout))
            .keep_alive_timeout(self.header_timeout);
        builder
    }
}

/// Serves `listener` with `handle` until the task is dropped.
pub async fn serve<H, F>(
    listener: TcpListener,
    limits: ConnLimits,
    metrics: Arc<Metrics>,
    handle: H,
) where
    H: Fn(Request<Incoming>, SocketAddr) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<crate::upstream::http::Body>> + Send + 'static,
{
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let builder = Arc::new(limits.builder());
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                // Out of file descriptors and the like: wait, do not spin.
                tracing::warn!("accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            metrics.connection_refused(limits.name);
            tracing::debug!(%peer, "connection refused: {} open", limits.max_connections);
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let (handle, builder, metrics) =
            (handle.clone(), Arc::clone(&builder), Arc::clone(&metrics));
        tokio::spawn(async move {
            let _open = metrics.connection_opened(limits.name);
            // The protocol is told by the first bytes, which hyper waits for
            // without a deadline: wait here, with one.
            if !first_bytes(&stream, limits.header_timeout).await {
                tracing::debug!(%peer, "connection closed: nothing sent in {:?}", limits.header_timeout);
                return;
            }
            let service = service_fn(move |req| {
                let resp = handle(req, peer);
                async move { Ok::<_, Infallible>(resp.await) }
            });
            if let Err(e) = builder
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(%peer, "connection ended: {e}");
            }
            drop(slot);
        });
    }
}

/// Whether the client sent anything within `timeout`.
async fn first_bytes(stream: &TcpStream, timeout: Duration) -> bool {
    let mut byte = [0u8; 1];
    matches!(
        tokio::time::timeout(timeout, stream.peek(&mut byte)).await,
        Ok(Ok(n)) if n > 0
    )
}
