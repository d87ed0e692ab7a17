//! A fake sidecar's quota stream: a real tonic `QuotaClient` reporting
//! buckets and reading leases.

use std::net::SocketAddr;

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tollgate_proto::v1::quota_client::QuotaClient;
use tollgate_proto::v1::{
    BucketId, BucketReport, FleetBucket, GetVersionRequest, ListLimitsRequest, Node, QuotaLeases,
    QuotaReport,
};
use tonic::{Status, Streaming};

use super::{FakeSidecar, WAIT, push, url};

/// The server every test bucket is on.
pub const SERVER: &str = "files";

/// The limits the tests' buckets are accounted by, as a single policy
/// document (its counters are named as written, on every server): a
/// `global` `writes` of `writes_max` per minute, a `session` `reads` of 5
/// per second, a `grant` `uploads` of 10 per minute and a `pod` `local`.
pub fn limits_policy(writes_max: u64) -> String {
    format!(
        r#"{{"version": "1", "default": "allow", "tools": {{
            "write": {{"limits": [{{"counter": "writes", "window": "minute", "max": {writes_max}, "scope": "global"}}]}},
            "read": {{"limits": [{{"counter": "reads", "window": "second", "max": 5, "scope": "session"}}]}},
            "upload": {{"limits": [{{"counter": "uploads", "window": "minute", "max": 10, "scope": "grant"}}]}},
            "local": {{"limits": [{{"counter": "local", "window": "minute", "max": 10, "scope": "pod"}}]}}
        }}}}"#
    )
}

/// Pushes `policy` and has each of `nodes` say on its policy stream that it
/// runs it, as a sidecar does on connecting, so the control plane accepts
/// their quota reports under it; the pushed version and content hash.
pub async fn serve_policy(addr: SocketAddr, policy: &str, nodes: &[&str]) -> (u64, String) {
    let mut admin = super::admin(addr).await;
    let pushed = push(&mut admin, policy).await;
    assert!(pushed.accepted, "{pushed:?}");
    let stored = admin
        .get_version(GetVersionRequest {
            version: pushed.version,
        })
        .await
        .unwrap()
        .into_inner();
    let runs = (stored.version, stored.content_hash);
    for node in nodes {
        runs_version(addr, node, &runs).await;
    }
    runs
}

/// Node `node` says on its policy stream that it runs `runs` (version,
/// content hash). The control plane keeps that once the stream has opened,
/// after it closes too.
pub async fn runs_version(addr: SocketAddr, node: &str, runs: &(u64, String)) {
    FakeSidecar::connect(addr, node, Some(runs.clone())).await;
}

/// A report on `counter` (scope `scope`, key `key`) under policy version 1,
/// stating a limit of `max` calls per `window_ms` (the node's word: the
/// control plane accounts the bucket by version 1 as it stored it), with
/// nothing admitted and nothing held yet.
pub fn bucket(counter: &str, scope: &str, key: &str, max: u64, window_ms: u64) -> BucketReport {
    BucketReport {
        bucket: Some(BucketId {
            server: SERVER.to_owned(),
            counter: counter.to_owned(),
            scope: scope.to_owned(),
            key: key.to_owned(),
        }),
        policy_version: 1,
        max,
        window_ms,
        ..Default::default()
    }
}

/// One sidecar process's end of a quota stream.
pub struct QuotaSidecar {
    pub node: String,
    pub epoch: u64,
    tx: mpsc::Sender<QuotaReport>,
    rx: Streaming<QuotaLeases>,
    seq: u64,
}

impl QuotaSidecar {
    /// Opens a stream whose first report (naming the node) carries
    /// `buckets`; the stream and the answer to that report.
    pub async fn connect(
        addr: SocketAddr,
        node: &str,
        epoch: u64,
        buckets: Vec<BucketReport>,
    ) -> (Self, QuotaLeases) {
        let first = QuotaReport {
            node: Some(Node {
                id: node.to_owned(),
                ..Default::default()
            }),
            epoch,
            buckets,
            report_seq: 1,
        };
        let mut sidecar = Self::open(addr, first).await.unwrap();
        sidecar.node = node.to_owned();
        sidecar.epoch = epoch;
        let answer = sidecar.answer().await;
        (sidecar, answer)
    }

    /// Opens a stream with `first` as its first report; the call's error
    /// when the control plane refuses the stream.
    pub async fn open(addr: SocketAddr, first: QuotaReport) -> Result<Self, Status> {
        let mut client = QuotaClient::connect(url(addr)).await.unwrap();
        let (tx, rx) = mpsc::channel(4);
        let seq = first.report_seq;
        let epoch = first.epoch;
        tx.send(first).await.unwrap();
        let rx = client
            .stream_quota(ReceiverStream::new(rx))
            .await?
            .into_inner();
        Ok(Self {
            node: String::new(),
            epoch,
            tx,
            rx,
            seq,
        })
    }

    /// Sends the next report (no node, this process's epoch).
    pub async fn send(&mut self, buckets: Vec<BucketReport>) {
        self.send_as(self.epoch, buckets).await;
    }

    /// Sends the next report with `epoch`.
    pub async fn send_as(&mut self, epoch: u64, buckets: Vec<BucketReport>) {
        self.seq += 1;
        self.tx
            .send(QuotaReport {
                node: None,
                epoch,
                buckets,
                report_seq: self.seq,
            })
            .await
            .unwrap();
    }

    /// Reports `buckets` and returns the answer.
    pub async fn report(&mut self, buckets: Vec<BucketReport>) -> QuotaLeases {
        self.send(buckets).await;
        self.answer().await
    }

    /// The answer to the last report sent.
    pub async fn answer(&mut self) -> QuotaLeases {
        let answer = self
            .next()
            .await
            .unwrap()
            .expect("the quota stream is open");
        assert_eq!(answer.answers_report, self.seq, "{answer:?}");
        answer
    }

    /// The next message, or the end of the stream (`Ok(None)`: status OK).
    pub async fn next(&mut self) -> Result<Option<QuotaLeases>, Status> {
        tokio::time::timeout(WAIT, self.rx.message())
            .await
            .expect("an answer or the end of the quota stream in time")
    }
}

/// Every bucket the control plane lists (of `server`, unless empty).
pub async fn limits(admin: &mut super::Admin, server: &str) -> Vec<FleetBucket> {
    admin
        .list_limits(ListLimitsRequest {
            server: server.to_owned(),
        })
        .await
        .unwrap()
        .into_inner()
        .buckets
}

/// Polls `ListLimits` until the bucket of `counter` satisfies `ok`.
pub async fn wait_for_bucket(
    admin: &mut super::Admin,
    counter: &str,
    ok: impl Fn(&FleetBucket) -> bool,
) -> FleetBucket {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let found = limits(admin, "")
            .await
            .into_iter()
            .find(|b| b.counter == counter && ok(b));
        if let Some(b) = found {
            return b;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "bucket {counter} never reached the expected state: {:?}",
            limits(admin, "").await
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}
