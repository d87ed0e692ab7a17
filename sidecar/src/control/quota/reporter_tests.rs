//! The quota stream task against a quota server double over real gRPC on
//! loopback.

use std::time::{Duration, Instant};

use tollgate_policy::document::{OnUnavailable, Scope};
use tollgate_policy::{Admission, Charge, Counters};
use tollgate_proto::MAX_BUCKETS_PER_REPORT;
use tollgate_proto::v1::QuotaLeases;

use super::*;
use crate::control::connection::Connection;

const MIN: Duration = Duration::from_secs(60);

fn admitted(c: &FleetCounters, charges: &[Charge<'_>], now: Duration) -> bool {
    c.acquire(charges, now) == Admission::Admitted
}

/// A quota server on 127.0.0.1 that answers as the control plane does: a
/// report over [`MAX_BUCKETS_PER_REPORT`] buckets gets one error and no
/// lease; otherwise every bucket gets a lease of 5 more calls.
mod double {
    use std::pin::Pin;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use futures_util::Stream;
    use tollgate_proto::v1::Lease;
    use tollgate_proto::v1::quota_server::{Quota, QuotaServer};
    use tonic::{Request, Response, Status, Streaming};

    use super::*;

    pub struct QuotaDouble {
        /// The most buckets one report carried.
        pub largest: Arc<AtomicUsize>,
    }

    type Answers = Pin<Box<dyn Stream<Item = Result<QuotaLeases, Status>> + Send>>;

    #[tonic::async_trait]
    impl Quota for QuotaDouble {
        type StreamQuotaStream = Answers;

        async fn stream_quota(
            &self,
            request: Request<Streaming<QuotaReport>>,
        ) -> Result<Response<Answers>, Status> {
            let largest = Arc::clone(&self.largest);
            let mut inbound = request.into_inner();
            let answers = async_stream(move |tx| async move {
                while let Ok(Some(report)) = inbound.message().await {
                    largest.fetch_max(report.buckets.len(), Ordering::Relaxed);
                    let mut answer = QuotaLeases {
                        leases: Vec::new(),
                        answers_report: report.report_seq,
                        errors: Vec::new(),
                    };
                    if report.buckets.len() > MAX_BUCKETS_PER_REPORT {
                        answer.errors.push("too many buckets".into());
                    } else {
                        answer.leases = report
                            .buckets
                            .iter()
                            .map(|b| Lease {
                                bucket: b.bucket.clone(),
                                seq: report.report_seq,
                                granted_total: b.admitted_total + 5,
                                ttl_ms: 60_000,
                                refresh_ms: 100,
                                fallback: 1,
                                fallback_after_ms: 0,
                                fallback_for_ms: 60_000,
                            })
                            .collect();
                    }
                    if tx.send(Ok(answer)).await.is_err() {
                        return;
                    }
                }
            });
            Ok(Response::new(answers))
        }
    }

    /// The answers a task produces on a channel, as a stream.
    fn async_stream<F, Fut>(f: F) -> Answers
    where
        F: FnOnce(mpsc::Sender<Result<QuotaLeases, Status>>) -> Fut,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let (tx, rx) = mpsc::channel(4);
        tokio::spawn(f(tx));
        Box::pin(futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|a| (a, rx))
        }))
    }

    /// Serves the double on 127.0.0.1; its address.
    pub async fn serve(double: QuotaDouble) -> std::net::SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1");
        let addr = listener.local_addr().expect("local addr");
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(QuotaServer::new(double))
                .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
        );
        addr
    }
}

#[tokio::test]
async fn a_sidecar_with_more_buckets_than_one_report_carries_splits_them_and_keeps_every_lease() {
    use std::sync::atomic::Ordering;
    let largest = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let addr = double::serve(double::QuotaDouble {
        largest: Arc::clone(&largest),
    })
    .await;
    let metrics = Arc::new(Metrics::new());
    let fc = Arc::new(FleetCounters::new(Instant::now(), Arc::clone(&metrics)));
    let id: Arc<str> = Arc::from("s:calls");
    let sessions: Vec<String> = (0..=MAX_BUCKETS_PER_REPORT)
        .map(|i| format!("session-{i}"))
        .collect();
    fn charge_of<'a>(id: &'a Arc<str>, key: &'a str) -> Charge<'a> {
        Charge {
            counter: id,
            server: "s",
            scope: Scope::Session,
            key,
            window: MIN,
            max: 100,
            on_unavailable: OnUnavailable::Deny,
        }
    }
    // One call in each of 10,001 sessions before the stream is up: 10,001
    // buckets for the first report.
    for s in &sessions {
        fc.acquire(&[charge_of(&id, s)], fc.now());
    }
    let connection = Arc::new(Connection::new(&format!("http://{addr}"), None).expect("dial"));
    let node = Node {
        id: "pod-1".into(),
        ..Default::default()
    };
    let reporter = Reporter::new(
        node,
        Arc::clone(&fc),
        Arc::new(LivePolicy::default()),
        metrics,
        vec!["s".into()],
    );
    let task = tokio::spawn(reporter.run(connection, BackoffConfig::default()));
    // Every session's bucket gets its lease: a call in each is admitted.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let leased = |fc: &FleetCounters| {
        let now = fc.now();
        fc.lock()
            .buckets
            .values()
            .filter(|b| b.valid_lease(now).is_some())
            .count()
    };
    while leased(&fc) < sessions.len() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    task.abort();
    assert_eq!(
        leased(&fc),
        sessions.len(),
        "every bucket holds a lease (largest report: {} buckets)",
        largest.load(Ordering::Relaxed)
    );
    assert!(largest.load(Ordering::Relaxed) <= MAX_BUCKETS_PER_REPORT);
    assert!(admitted(&fc, &[charge_of(&id, &sessions[0])], fc.now()));
    assert!(admitted(
        &fc,
        &[charge_of(&id, &sessions[MAX_BUCKETS_PER_REPORT])],
        fc.now()
    ));
}
