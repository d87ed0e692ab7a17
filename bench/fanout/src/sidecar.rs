//! One simulated sidecar: a real tonic client on one `StreamPolicy` stream.
//!
//! It opens the stream with its node identity, then answers every response
//! with an ACK (the response's nonce, and the version and content hash it now
//! runs) — what `tollgate-sidecar` does, minus compiling the bundle. When it
//! has ACKed the version the benchmark is waiting for, it stamps the time on
//! the shared [`Board`].

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::{Semaphore, mpsc};
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tollgate_proto::v1::policy_distribution_client::PolicyDistributionClient;
use tollgate_proto::v1::{Node, PolicyRequest};
use tonic::Code;
use tonic::transport::Channel;

/// Attempts to open a stream the control plane refuses with UNAVAILABLE
/// (its admission throttle) before the node gives up.
const OPEN_ATTEMPTS: u32 = 8;
/// Backoff between those attempts: full jitter, doubling from this base…
const OPEN_BACKOFF_BASE: Duration = Duration::from_millis(100);
/// …up to this cap.
const OPEN_BACKOFF_CAP: Duration = Duration::from_secs(2);

/// What every simulated sidecar reports, shared with the benchmark driver.
///
/// The driver sets [`Board::expect`] before pushing a version; each node
/// that ACKs that version stamps `acked_at` (nanoseconds since `epoch`) and
/// counts itself in `reached`.
pub struct Board {
    epoch: Instant,
    target: AtomicU64,
    reached: AtomicUsize,
    acked_at: Box<[AtomicU64]>,
    opened: AtomicUsize,
    refused: AtomicUsize,
    failed: AtomicUsize,
}

impl Board {
    pub fn new(nodes: usize) -> Self {
        Self {
            epoch: Instant::now(),
            target: AtomicU64::new(u64::MAX),
            reached: AtomicUsize::new(0),
            acked_at: (0..nodes).map(|_| AtomicU64::new(0)).collect(),
            opened: AtomicUsize::new(0),
            refused: AtomicUsize::new(0),
            failed: AtomicUsize::new(0),
        }
    }

    /// From now on, count ACKs of `version`. Call before `version` exists
    /// on the control plane, so no ACK of it can be missed.
    pub fn expect(&self, version: u64) {
        for slot in &self.acked_at[..] {
            slot.store(0, Ordering::Relaxed);
        }
        self.reached.store(0, Ordering::SeqCst);
        self.target.store(version, Ordering::SeqCst);
    }

    /// Nodes that have ACKed the expected version.
    pub fn reached(&self) -> usize {
        self.reached.load(Ordering::SeqCst)
    }

    /// Streams open now; open attempts refused with UNAVAILABLE so far;
    /// nodes whose stream failed for good.
    pub fn streams(&self) -> (usize, usize, usize) {
        (
            self.opened.load(Ordering::SeqCst),
            self.refused.load(Ordering::SeqCst),
            self.failed.load(Ordering::SeqCst),
        )
    }

    /// How long after `since` each node ACKed the expected version, sorted;
    /// nodes that have not are left out.
    pub fn ack_delays(&self, since: Instant) -> Vec<Duration> {
        let since = since.saturating_duration_since(self.epoch);
        let mut out: Vec<Duration> = self
            .acked_at
            .iter()
            .map(|a| a.load(Ordering::SeqCst))
            .filter(|&ns| ns != 0)
            .map(|ns| Duration::from_nanos(ns).saturating_sub(since))
            .collect();
        out.sort_unstable();
        out
    }

    /// How long after `since` node `index` ACKed the expected version;
    /// `None` if it has not.
    pub fn acked_after(&self, index: usize, since: Instant) -> Option<Duration> {
        let since = since.saturating_duration_since(self.epoch);
        let ns = self.acked_at.get(index)?.load(Ordering::SeqCst);
        (ns != 0).then(|| Duration::from_nanos(ns).saturating_sub(since))
    }

    fn acked(&self, index: usize, version: u64) {
        if version != self.target.load(Ordering::SeqCst) {
            return;
        }
        // At least 1 ns, so 0 keeps meaning "not yet".
        let ns = (self.epoch.elapsed().as_nanos() as u64).max(1);
        if let Some(slot) = self.acked_at.get(index)
            && slot.swap(ns, Ordering::SeqCst) == 0
        {
            self.reached.fetch_add(1, Ordering::SeqCst);
        }
    }
}

/// Who this simulated sidecar is.
pub struct Identity {
    pub index: usize,
    pub id: String,
    pub labels: Vec<(String, String)>,
}

/// Runs one node until its stream ends. `open` bounds how many nodes are
/// opening their stream at once.
pub async fn run(me: Identity, channel: Channel, board: Arc<Board>, open: Arc<Semaphore>) {
    let mut client = PolicyDistributionClient::new(channel);
    let mut attempt = 0;
    let (tx, mut inbound) = loop {
        let (tx, rx) = mpsc::channel(2);
        let first = PolicyRequest {
            node: Some(Node {
                id: me.id.clone(),
                labels: me.labels.iter().cloned().collect(),
                build: "fanout-bench".to_owned(),
                ..Default::default()
            }),
            ..Default::default()
        };
        // The receiver is alive (held just above), so this cannot fail.
        let _ = tx.send(first).await;
        let opened = {
            let _permit = open.acquire().await;
            client.stream_policy(ReceiverStream::new(rx)).await
        };
        match opened {
            Ok(response) => break (tx, response.into_inner()),
            Err(status) if status.code() == Code::Unavailable && attempt + 1 < OPEN_ATTEMPTS => {
                board.refused.fetch_add(1, Ordering::SeqCst);
                let cap = OPEN_BACKOFF_BASE
                    .saturating_mul(1 << attempt)
                    .min(OPEN_BACKOFF_CAP);
                tokio::time::sleep(cap.mul_f64(fastrand::f64())).await;
                attempt += 1;
            }
            Err(status) => {
                eprintln!("fanout: node {} could not open its stream: {status}", me.id);
                board.failed.fetch_add(1, Ordering::SeqCst);
                return;
            }
        }
    };
    board.opened.fetch_add(1, Ordering::SeqCst);
    loop {
        match inbound.message().await {
            Ok(Some(resp)) => {
                let ack = PolicyRequest {
                    node: None,
                    version_info: resp.version.to_string(),
                    content_hash: resp.content_hash,
                    response_nonce: resp.nonce,
                    error_detail: None,
                };
                if tx.send(ack).await.is_err() {
                    break;
                }
                board.acked(me.index, resp.version);
            }
            Ok(None) => break,
            Err(status) => {
                // The control plane going away at the end is expected; any
                // other failure shows up as a node that never ACKs.
                if status.code() != Code::Unavailable && status.code() != Code::Unknown {
                    eprintln!("fanout: node {} stream failed: {status}", me.id);
                }
                break;
            }
        }
    }
    board.opened.fetch_sub(1, Ordering::SeqCst);
}
