//! The control plane stopping and starting again on the same data dir, in
//! process: refusals outlive it, and a stop ends every stream cleanly.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::{FakeSidecar, admin, policy, push, start, wait_for};
use tollgate_proto::v1::NodeStatusRequest;
use tollgate_proto::v1::node_state::State;

#[tokio::test]
async fn a_refusal_survives_a_restart_and_the_next_version_still_arrives() {
    let dir = tempfile::tempdir().unwrap();
    let cp = start(dir.path()).await;
    let mut client = admin(cp.grpc_addr).await;
    push(&mut client, &policy("one")).await;
    let mut picky = FakeSidecar::connect(cp.grpc_addr, "picky", None).await;
    let v1 = picky.recv().await;
    picky.ack(&v1).await;
    push(&mut client, &policy("two")).await;
    let v2 = picky.recv().await;
    picky.nack(&v2, "cannot compile").await;
    let before = wait_for(&mut client, "picky", |n| n.state == State::Error as i32).await;
    drop(picky);
    cp.shutdown().await.unwrap();

    // A new process on the same store: the node reconnects still running
    // v1. Nothing is sent, and it is ERROR with the refusal it sent the
    // previous process.
    let cp = start(dir.path()).await;
    let mut client = admin(cp.grpc_addr).await;
    let runs = Some((1, v1.content_hash.clone()));
    let mut picky = FakeSidecar::connect(cp.grpc_addr, "picky", runs.clone()).await;
    picky.expect_nothing().await;
    let row = wait_for(&mut client, "picky", |n| n.connected).await;
    assert_eq!(row.state, State::Error as i32, "{row:?}");
    assert_eq!((row.applied_version, row.sent_version), (1, 2));
    assert_eq!(
        row.nack_error,
        "cannot compile; /tools: refused by the test"
    );
    assert_eq!(row.last_nack_at, before.last_nack_at);

    // The refusal is that node's only: another node running v1 gets v2.
    let mut other = FakeSidecar::connect(cp.grpc_addr, "other", runs).await;
    assert_eq!(other.recv().await.version, 2);

    // The next version reaches the node that refused v2.
    push(&mut client, &policy("three")).await;
    let v3 = picky.recv().await;
    assert_eq!(v3.version, 3);
    picky.ack(&v3).await;
    let row = wait_for(&mut client, "picky", |n| n.state == State::Synced as i32).await;
    assert_eq!(row.applied_version, 3);
    cp.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_stop_ends_every_stream_cleanly_and_closes_the_port() {
    let dir = tempfile::tempdir().unwrap();
    let cp = start(dir.path()).await;
    let addr = cp.grpc_addr;
    let mut client = admin(addr).await;
    push(&mut client, &policy("one")).await;
    let mut sidecars = Vec::new();
    for id in ["a", "b", "c"] {
        let mut s = FakeSidecar::connect(addr, id, None).await;
        let v1 = s.recv().await;
        s.ack(&v1).await;
        wait_for(&mut client, id, |n| n.state == State::Synced as i32).await;
        sidecars.push(s);
    }
    let mut watch = client
        .watch_status(NodeStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(watch.message().await.unwrap().is_some());

    let started = Instant::now();
    cp.shutdown().await.unwrap();
    // The streams were ended, not waited out for the grace period.
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "the stop took {:?}",
        started.elapsed()
    );
    for s in &mut sidecars {
        let end = s.next().await;
        assert!(
            matches!(end, Ok(None)),
            "{}: expected the stream to end with status OK, got {end:?}",
            s.id
        );
    }
    let end = tokio::time::timeout(common::WAIT, watch.message())
        .await
        .unwrap();
    assert!(matches!(end, Ok(None)), "status watch: {end:?}");
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "the gRPC port still accepts connections"
    );
}
