//! The quota stream in-process on 127.0.0.1:0, driven by real tonic
//! `QuotaClient`s standing in for sidecar processes, and read back through
//! the admin API (`ListLimits`) and `/metrics`.

#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::quota::{
    QuotaSidecar, SERVER, bucket, limits, limits_policy, runs_version, serve_policy,
    wait_for_bucket,
};
use common::{WAIT, admin, earlier_leases, start, start_with};
use tokio::time::Instant;
use tollgate_controlplane::quota::AllocatorConfig;
use tollgate_controlplane::server::MAX_BUCKETS_PER_REPORT;
use tollgate_proto::v1::{BucketReport, Lease, LeaseHeld, Node, QuotaReport};

/// Leases of 200 ms and a grace of 100 ms: a start learns for 300 ms.
fn short_leases() -> AllocatorConfig {
    AllocatorConfig {
        lease_ttl: Duration::from_millis(200),
        refresh: Duration::from_millis(100),
        grace: Duration::from_millis(100),
        learn_whole_window: false,
        fallback_horizon: Duration::from_secs(5),
    }
}

async fn get(addr: SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

/// Polls `/metrics` until it has `line`.
async fn wait_for_metric(http: SocketAddr, line: &str) {
    let deadline = Instant::now() + WAIT;
    loop {
        let metrics = get(http, "/metrics").await;
        if metrics.contains(line) {
            return;
        }
        assert!(Instant::now() < deadline, "{line} never in {metrics}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A sidecar process using its leases as a real one would: it admits calls
/// only under a lease still valid by its own clock (ttl from the sending of
/// the report it answers), at most `STEP` between two reports.
struct Process {
    sidecar: QuotaSidecar,
    admitted: u64,
    /// The lease it admits under and until when.
    lease: Option<(Lease, Instant)>,
}

const STEP: u64 = 7;
const MAX: u64 = 100;

impl Process {
    fn valid(&self, now: Instant) -> Option<&Lease> {
        self.lease
            .as_ref()
            .filter(|(_, until)| now < *until)
            .map(|(lease, _)| lease)
    }

    /// Calls it may still admit now.
    fn outstanding(&self, now: Instant) -> u64 {
        self.valid(now)
            .map_or(0, |l| l.granted_total.saturating_sub(self.admitted))
    }

    fn report_of(&self, now: Instant) -> BucketReport {
        let mut b = bucket("writes", "global", "", MAX, 60_000);
        b.admitted_total = self.admitted;
        b.demand = 80;
        b.held = self.valid(now).map(|l| LeaseHeld {
            seq: l.seq,
            granted_total: l.granted_total,
        });
        b
    }

    /// Admits what its lease allows (up to `STEP`), reports, takes the lease.
    async fn round(&mut self) -> Lease {
        let now = Instant::now();
        self.admitted += self.outstanding(now).min(STEP);
        let sent = Instant::now();
        let answer = self.sidecar.report(vec![self.report_of(sent)]).await;
        assert!(answer.errors.is_empty(), "{answer:?}");
        self.take(sent, &answer.leases)
    }

    fn take(&mut self, sent: Instant, leases: &[Lease]) -> Lease {
        let [lease] = leases else {
            panic!("one lease expected: {leases:?}")
        };
        if let Some((held, _)) = &self.lease {
            assert!(lease.seq > held.seq, "{lease:?} after {held:?}");
        }
        assert_eq!(lease.ttl_ms, 200);
        assert_eq!(lease.refresh_ms, 100);
        self.lease = Some((lease.clone(), sent + Duration::from_millis(lease.ttl_ms)));
        lease.clone()
    }
}

/// Σ admitted + Σ still admissible under valid leases, across the fleet.
fn committed(fleet: &[Process]) -> u64 {
    let now = Instant::now();
    fleet.iter().map(|p| p.admitted + p.outstanding(now)).sum()
}

#[tokio::test]
async fn two_sidecars_share_a_global_limit_exactly_after_learning() {
    let dir = tempfile::tempdir().unwrap();
    // Leases of an earlier control plane may be in use for one short lease.
    let q = short_leases();
    earlier_leases(dir.path(), q.lease_ttl + q.grace);
    let cp = start_with(dir.path(), |c| c.quota = q).await;
    let mut admin = admin(cp.grpc_addr).await;
    serve_policy(cp.grpc_addr, &limits_policy(MAX), &["a", "b"]).await;

    let mut fleet = Vec::new();
    for (node, epoch) in [("a", 11), ("b", 22)] {
        let p = Process {
            sidecar: QuotaSidecar::connect(cp.grpc_addr, node, epoch, vec![])
                .await
                .0,
            admitted: 0,
            lease: None,
        };
        fleet.push(p);
    }
    // The first reports: right after the start, holding nothing.
    let mut first = Vec::new();
    for p in &mut fleet {
        first.push(p.round().await);
    }
    let learning = limits(&mut admin, "").await[0].learning;
    if learning {
        // Still learning after both reports: nothing new was granted.
        assert!(first.iter().all(|l| l.granted_total == 0), "{first:?}");
    } else {
        eprintln!("learning ended before the first reports were read back; skipped that check");
    }
    wait_for_bucket(&mut admin, "writes", |b| !b.learning).await;

    // Both use their leases until the fleet has admitted MAX calls; at no
    // point may what was admitted plus what may still be admitted pass MAX.
    let mut got_capacity = [false; 2];
    let deadline = Instant::now() + Duration::from_secs(10);
    while fleet.iter().map(|p| p.admitted).sum::<u64>() < MAX {
        assert!(
            Instant::now() < deadline,
            "the fleet admitted only {} of {MAX} calls: {:?}",
            fleet.iter().map(|p| p.admitted).sum::<u64>(),
            limits(&mut admin, "").await
        );
        for i in 0..fleet.len() {
            let lease = fleet[i].round().await;
            got_capacity[i] |= lease.granted_total > fleet[i].admitted;
            let sum = committed(&fleet);
            assert!(sum <= MAX, "{sum} admitted or admissible across the fleet");
        }
    }
    assert_eq!(got_capacity, [true, true], "both sidecars got capacity");
    assert_eq!(fleet.iter().map(|p| p.admitted).sum::<u64>(), MAX);

    // The window is spent: the next leases allow nothing more.
    for p in &mut fleet {
        let lease = p.round().await;
        assert_eq!(lease.granted_total, p.admitted, "{lease:?}");
        assert_eq!(lease.fallback, MAX / 2);
    }
    let b = &limits(&mut admin, SERVER).await[0];
    assert_eq!((b.consumed, b.reserved), (MAX, 0), "{b:?}");
    cp.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_stream_without_node_or_epoch_is_invalid_and_an_epoch_change_ends_it() {
    let dir = tempfile::tempdir().unwrap();
    let cp = start(dir.path()).await;
    let no_node = QuotaReport {
        epoch: 1,
        buckets: vec![bucket("writes", "global", "", 10, 1_000)],
        ..Default::default()
    };
    let err = QuotaSidecar::open(cp.grpc_addr, no_node)
        .await
        .err()
        .unwrap();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("must carry node"), "{err}");

    let no_epoch = QuotaReport {
        node: Some(Node {
            id: "a".to_owned(),
            ..Default::default()
        }),
        ..Default::default()
    };
    let err = QuotaSidecar::open(cp.grpc_addr, no_epoch)
        .await
        .err()
        .unwrap();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("non-zero epoch"), "{err}");

    // A stream is one process: a report from another epoch ends it.
    let (mut a, _) = QuotaSidecar::connect(cp.grpc_addr, "a", 5, vec![]).await;
    a.send_as(6, vec![]).await;
    let err = a.next().await.err().unwrap();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("epoch 5"), "{err}");
    cp.shutdown().await.unwrap();
}

#[tokio::test]
async fn invalid_buckets_come_back_as_errors_and_the_rest_get_leases() {
    let dir = tempfile::tempdir().unwrap();
    let cp = start(dir.path()).await;
    serve_policy(cp.grpc_addr, &limits_policy(100), &["a"]).await;
    let buckets = vec![
        bucket("unknown", "global", "", 10, 60_000),
        bucket("uploads", "grant", "g1", 10, 60_000),
        bucket("local", "pod", "", 10, 60_000),
        bucket("keyed", "global", "g1", 10, 60_000),
        BucketReport::default(),
    ];
    let (mut a, answer) = QuotaSidecar::connect(cp.grpc_addr, "a", 1, buckets).await;
    assert_eq!(answer.leases.len(), 1, "{answer:?}");
    let id = answer.leases[0].bucket.clone().unwrap();
    assert_eq!((id.counter.as_str(), id.key.as_str()), ("uploads", "g1"));
    let errors = answer.errors;
    assert_eq!(errors.len(), 4, "{errors:?}");
    assert!(
        errors[0].contains("files/unknown")
            && errors[0].contains("policy version 1 has no limit with counter \"unknown\""),
        "{errors:?}"
    );
    assert!(errors[1].contains("scope \"pod\""), "{errors:?}");
    assert!(
        errors[2].contains("a global bucket has no key"),
        "{errors:?}"
    );
    assert!(errors[3].contains("without its bucket"), "{errors:?}");

    // Too many buckets in one report: one error, nothing accounted, and
    // the stream stays open.
    let many = (0..=MAX_BUCKETS_PER_REPORT)
        .map(|i| bucket(&format!("c{i}"), "global", "", 10, 60_000))
        .collect();
    let answer = a.report(many).await;
    assert!(answer.leases.is_empty());
    assert_eq!(answer.errors.len(), 1);
    assert!(
        answer.errors[0].contains("at most 10000 buckets per report"),
        "{answer:?}"
    );
    let mut admin = admin(cp.grpc_addr).await;
    assert_eq!(limits(&mut admin, "").await.len(), 1);
    let answer = a
        .report(vec![bucket("uploads", "grant", "g1", 10, 60_000)])
        .await;
    assert_eq!(answer.leases.len(), 1, "{answer:?}");
    cp.shutdown().await.unwrap();
}

#[tokio::test]
async fn list_limits_shows_each_bucket_and_its_holders() {
    let dir = tempfile::tempdir().unwrap();
    // Leases of an earlier control plane may be in use for 11 s: learning
    // lasts through the whole test.
    earlier_leases(dir.path(), Duration::from_secs(11));
    let cp = start(dir.path()).await;
    let mut admin = admin(cp.grpc_addr).await;
    serve_policy(cp.grpc_addr, &limits_policy(100), &["a", "b"]).await;

    // `a` held a lease from a previous control plane: 40 calls, 10 used.
    let mut held = bucket("writes", "global", "", 100, 60_000);
    held.admitted_total = 10;
    held.window_admitted = 10;
    held.demand = 30;
    held.held = Some(LeaseHeld {
        seq: 3,
        granted_total: 40,
    });
    let reads = bucket("reads", "session", "s1", 5, 1_000);
    let (_a, answer) = QuotaSidecar::connect(cp.grpc_addr, "a", 7, vec![held, reads]).await;
    // While learning it is renewed at what it holds, never more.
    assert_eq!(answer.leases[0].granted_total, 40, "{answer:?}");
    assert_eq!(answer.leases[1].granted_total, 0, "{answer:?}");
    let mut wants = bucket("writes", "global", "", 100, 60_000);
    wants.demand = 50;
    let (_b, answer) = QuotaSidecar::connect(cp.grpc_addr, "b", 8, vec![wants]).await;
    assert_eq!(answer.leases[0].granted_total, 0, "{answer:?}");

    let all = limits(&mut admin, "").await;
    let keys: Vec<_> = all
        .iter()
        .map(|b| (b.counter.as_str(), b.key.as_str()))
        .collect();
    assert_eq!(keys, [("reads", "s1"), ("writes", "")]);
    let w = &all[1];
    assert_eq!(w.server, SERVER);
    assert_eq!((w.max, w.window_ms, w.policy_version), (100, 60_000, 1));
    assert_eq!((w.consumed, w.unleased, w.reserved), (10, 0, 30));
    assert!(w.learning);
    let nodes: Vec<_> = w
        .holders
        .iter()
        .map(|h| (h.node_id.as_str(), h.epoch))
        .collect();
    assert_eq!(nodes, [("a", 7), ("b", 8)]);
    let (a, b) = (&w.holders[0], &w.holders[1]);
    assert!(a.connected && b.connected);
    assert_eq!(
        (a.reservation, a.granted_total, a.admitted_total, a.demand),
        (30, 40, 10, 30)
    );
    assert_eq!((b.reservation, b.granted_total, b.demand), (0, 0, 50));
    assert!(
        !a.expired && (9_000..=11_000).contains(&a.expires_in_ms),
        "{a:?}"
    );

    // The server filter.
    assert_eq!(limits(&mut admin, SERVER).await.len(), 2);
    assert!(limits(&mut admin, "other").await.is_empty());

    let metrics = get(cp.http_addr.unwrap(), "/metrics").await;
    for line in [
        "tollgate_controlplane_quota_reports_total 2",
        "tollgate_controlplane_quota_leases_total 3",
        "tollgate_controlplane_quota_buckets 2",
        "tollgate_controlplane_quota_streams 2",
        "tollgate_controlplane_quota_bucket_errors_total 0",
    ] {
        assert!(metrics.contains(line), "{line} missing in {metrics}");
    }
    cp.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_sidecar_going_away_shows_disconnected_but_a_replaced_stream_does_not() {
    let dir = tempfile::tempdir().unwrap();
    let cp = start(dir.path()).await;
    let http = cp.http_addr.unwrap();
    let mut admin = admin(cp.grpc_addr).await;
    serve_policy(cp.grpc_addr, &limits_policy(100), &["a", "b"]).await;
    let writes = || vec![bucket("writes", "global", "", 100, 60_000)];
    let (a, _) = QuotaSidecar::connect(cp.grpc_addr, "a", 1, writes()).await;
    let (b, _) = QuotaSidecar::connect(cp.grpc_addr, "b", 2, writes()).await;
    wait_for_metric(http, "tollgate_controlplane_quota_streams 2").await;

    drop(b);
    let w = wait_for_bucket(&mut admin, "writes", |w| {
        w.holders.iter().any(|h| h.node_id == "b" && !h.connected)
    })
    .await;
    assert!(w.holders[0].connected, "a is still connected: {w:?}");
    wait_for_metric(http, "tollgate_controlplane_quota_streams 1").await;

    // `a` reconnects (same process) before its old stream is seen closing:
    // the old stream's end does not mark it disconnected.
    let (_a2, _) = QuotaSidecar::connect(cp.grpc_addr, "a", 1, vec![]).await;
    wait_for_metric(http, "tollgate_controlplane_quota_streams 2").await;
    drop(a);
    wait_for_metric(http, "tollgate_controlplane_quota_streams 1").await;
    let w = &limits(&mut admin, "").await[0];
    assert_eq!(w.holders[0].node_id, "a");
    assert!(w.holders[0].connected, "{w:?}");
    cp.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_stopping_control_plane_ends_quota_streams_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let cp = start(dir.path()).await;
    serve_policy(cp.grpc_addr, &limits_policy(100), &["a"]).await;
    let (mut a, _) = QuotaSidecar::connect(
        cp.grpc_addr,
        "a",
        1,
        vec![bucket("writes", "global", "", 100, 60_000)],
    )
    .await;
    let stopping = tokio::spawn(cp.shutdown());
    // The stream ends with status OK; the sidecar reconnects with backoff.
    assert!(a.next().await.unwrap().is_none());
    stopping.await.unwrap().unwrap();
}

/// The first report of process `epoch` of node `node`, on `writes`.
fn opening(node: &str, epoch: u64) -> QuotaReport {
    let mut writes = bucket("writes", "global", "", 100, 60_000);
    writes.demand = 10;
    QuotaReport {
        node: Some(Node {
            id: node.to_owned(),
            ..Default::default()
        }),
        epoch,
        buckets: vec![writes],
        report_seq: 1,
    }
}

#[tokio::test]
async fn a_second_process_with_a_reporting_node_id_is_refused_and_let_in_once_the_first_is_gone() {
    let dir = tempfile::tempdir().unwrap();
    let cp = start_with(dir.path(), |c| c.quota = short_leases()).await;
    serve_policy(cp.grpc_addr, &limits_policy(100), &["a"]).await;
    let mut first = QuotaSidecar::open(cp.grpc_addr, opening("a", 1))
        .await
        .unwrap();
    assert_eq!(first.answer().await.leases.len(), 1);
    // Another process with node id `a` while the first reports: refused,
    // and the first keeps its holder and its leases.
    let err = QuotaSidecar::open(cp.grpc_addr, opening("a", 2))
        .await
        .err()
        .unwrap();
    assert_eq!(err.code(), tonic::Code::AlreadyExists);
    assert!(err.message().contains("--node-id"), "{err}");
    let mut writes = bucket("writes", "global", "", 100, 60_000);
    writes.demand = 10;
    let answer = first.report(vec![writes]).await;
    assert!(answer.errors.is_empty(), "{answer:?}");
    assert_eq!(answer.leases.len(), 1);
    // Silent for longer than a lease's lifetime (ttl + grace, 300 ms), as
    // a process that died without its stream closing: the next one is let in.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let mut second = QuotaSidecar::open(cp.grpc_addr, opening("a", 2))
        .await
        .unwrap();
    assert!(second.answer().await.errors.is_empty());
    drop(first);
    // Gone for good: a third process is let in once the second's stream ends.
    drop(second);
    let deadline = Instant::now() + WAIT;
    loop {
        match QuotaSidecar::open(cp.grpc_addr, opening("a", 3)).await {
            Ok(mut third) => {
                assert!(third.answer().await.errors.is_empty());
                break;
            }
            Err(err) => {
                assert_eq!(err.code(), tonic::Code::AlreadyExists);
                assert!(Instant::now() < deadline, "never let in: {err}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
    cp.shutdown().await.unwrap();
}

/// A `writes` report under `version` stating `max` per `window_ms`, asking
/// for `demand`.
fn writes_under(version: u64, max: u64, window_ms: u64, demand: u64) -> BucketReport {
    let mut b = bucket("writes", "global", "", max, window_ms);
    b.policy_version = version;
    b.demand = demand;
    b
}

#[tokio::test]
async fn a_report_stating_a_higher_limit_is_held_to_the_stored_one() {
    let dir = tempfile::tempdir().unwrap();
    let cp = start(dir.path()).await;
    let mut admin = admin(cp.grpc_addr).await;
    // Version 1 allows 10 writes a minute.
    serve_policy(cp.grpc_addr, &limits_policy(10), &["a", "b"]).await;

    // Both nodes say version 1 allows 1,000 an hour, and want all of it.
    let claim = || vec![writes_under(1, 1_000, 3_600_000, 1_000)];
    let (_a, first) = QuotaSidecar::connect(cp.grpc_addr, "a", 1, claim()).await;
    assert!(first.errors.is_empty(), "{first:?}");
    let (_b, second) = QuotaSidecar::connect(cp.grpc_addr, "b", 2, claim()).await;
    assert!(second.errors.is_empty(), "{second:?}");
    let granted = first.leases[0].granted_total + second.leases[0].granted_total;
    assert_eq!(
        granted, 10,
        "the fleet holds the stored max: {first:?} {second:?}"
    );
    // Fallback is shared out of the stored max too.
    assert_eq!(second.leases[0].fallback, 5, "{second:?}");
    let w = &limits(&mut admin, SERVER).await[0];
    assert_eq!((w.max, w.window_ms, w.policy_version), (10, 60_000, 1));
    cp.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_report_under_a_version_never_sent_to_the_node_gets_an_error_line_and_no_lease() {
    let dir = tempfile::tempdir().unwrap();
    let cp = start(dir.path()).await;
    let mut admin = admin(cp.grpc_addr).await;
    let v1 = serve_policy(cp.grpc_addr, &limits_policy(100), &["a"]).await;
    // Version 2 raises writes to 1,000; `a` has no policy stream open, so it
    // is never sent version 2.
    let v2 = serve_policy(cp.grpc_addr, &limits_policy(1_000), &[]).await;
    assert_eq!((v1.0, v2.0), (1, 2));

    let mut uploads = bucket("uploads", "grant", "g1", 10, 60_000);
    uploads.policy_version = 7;
    let reads = bucket("reads", "session", "s1", 5, 1_000);
    let report = vec![writes_under(2, 1_000, 60_000, 1_000), uploads, reads];
    let (mut a, answer) = QuotaSidecar::connect(cp.grpc_addr, "a", 1, report).await;
    // Only the bucket under version 1, which `a` runs, is accounted.
    let leased: Vec<_> = answer
        .leases
        .iter()
        .map(|l| l.bucket.as_ref().unwrap().counter.as_str())
        .collect();
    assert_eq!(leased, ["reads"], "{answer:?}");
    let [not_sent, not_stored] = &answer.errors[..] else {
        panic!("two error lines expected: {answer:?}");
    };
    assert!(
        not_sent.contains("files/writes")
            && not_sent.contains("node a reported it under policy version 2")
            && not_sent.contains("has not sent to that node"),
        "{not_sent}"
    );
    assert!(
        not_stored.contains("files/uploads")
            && not_stored.contains("policy version 7, which this control plane never stored")
            && not_stored.contains("tollgate policy push"),
        "{not_stored}"
    );
    let counters: Vec<_> = limits(&mut admin, "")
        .await
        .into_iter()
        .map(|b| b.counter)
        .collect();
    assert_eq!(counters, ["reads"]);

    // Once its policy stream sends it version 2, `a`'s reports under it
    // are accounted by version 2 as stored.
    let mut policy = common::FakeSidecar::connect(cp.grpc_addr, "a", Some(v1)).await;
    let sent = policy.recv().await;
    assert_eq!(sent.version, 2);
    policy.ack(&sent).await;
    let answer = a.report(vec![writes_under(2, 1_000, 60_000, 1_000)]).await;
    assert!(answer.errors.is_empty(), "{answer:?}");
    assert_eq!(answer.leases[0].granted_total, 1_000, "{answer:?}");
    let w = wait_for_bucket(&mut admin, "writes", |_| true).await;
    assert_eq!((w.max, w.policy_version), (1_000, 2));
    cp.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_node_still_running_a_stored_version_after_a_restart_keeps_its_leases() {
    let dir = tempfile::tempdir().unwrap();
    let cp = start(dir.path()).await;
    let v1 = serve_policy(cp.grpc_addr, &limits_policy(100), &["a"]).await;
    // `a` refuses version 2 and keeps running version 1.
    let mut policy = common::FakeSidecar::connect(cp.grpc_addr, "a", Some(v1.clone())).await;
    serve_policy(cp.grpc_addr, &limits_policy(50), &[]).await;
    let sent = policy.recv().await;
    policy.nack(&sent, "not today").await;
    common::wait_for(&mut admin(cp.grpc_addr).await, "a", |n| {
        !n.nack_error.is_empty()
    })
    .await;
    drop(policy);
    cp.shutdown().await.unwrap();

    // The control plane restarts on its data dir. `a`'s policy stream comes
    // back saying it runs version 1 (not the latest): its reports under
    // version 1 are accounted by version 1 as stored.
    let cp = start(dir.path()).await;
    runs_version(cp.grpc_addr, "a", &v1).await;
    let (_a, answer) =
        QuotaSidecar::connect(cp.grpc_addr, "a", 1, vec![writes_under(1, 100, 60_000, 30)]).await;
    assert!(answer.errors.is_empty(), "{answer:?}");
    assert_eq!(answer.leases[0].granted_total, 30, "{answer:?}");
    // A node claiming version 1 with content that is not version 1's is
    // not taken at its word.
    runs_version(cp.grpc_addr, "b", &(1, "0".repeat(64))).await;
    let (_b, answer) =
        QuotaSidecar::connect(cp.grpc_addr, "b", 2, vec![writes_under(1, 100, 60_000, 30)]).await;
    assert!(answer.leases.is_empty(), "{answer:?}");
    assert!(
        answer.errors[0].contains("has not sent to that node"),
        "{answer:?}"
    );
    cp.shutdown().await.unwrap();
}
