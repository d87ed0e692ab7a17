//! The control plane in-process on 127.0.0.1:0, driven by real tonic
//! clients: fake sidecars speaking the distribution protocol and the admin
//! client the CLI uses.

#![allow(clippy::unwrap_used)]

mod common;

use common::{FakeSidecar, admin, nodes, policy, push, start, wait_for};
use tollgate_proto::v1::node_state::State;
use tollgate_proto::v1::policy_distribution_client::PolicyDistributionClient;
use tollgate_proto::v1::{ListVersionsRequest, PolicyRequest, PushPolicyRequest};

fn state(s: State) -> impl Fn(&tollgate_proto::v1::NodeState) -> bool {
    move |n| n.state == s as i32
}

#[tokio::test]
async fn pushes_reach_the_sidecar_and_acks_make_it_synced() {
    let dir = tempfile::tempdir().unwrap();
    let cp = start(dir.path()).await;
    let mut admin = admin(cp.grpc_addr).await;
    let mut sidecar = FakeSidecar::connect(cp.grpc_addr, "a", None).await;
    wait_for(&mut admin, "a", state(State::NotSent)).await;

    let v1 = push(&mut admin, &policy("one")).await;
    assert!(v1.accepted && v1.created && v1.version == 1, "{v1:?}");
    let got = sidecar.recv().await;
    assert_eq!(got.version, 1);
    assert_eq!(got.content_hash.len(), 64);
    assert!(String::from_utf8_lossy(&got.bundle).contains("\"one\""));
    sidecar.ack(&got).await;
    let row = wait_for(&mut admin, "a", state(State::Synced)).await;
    assert_eq!(row.applied_version, 1);
    assert!(row.connected && row.last_ack_at > 0);
    assert_eq!(row.node.unwrap().labels["app"], "demo");

    // Identical content (whatever its spacing) is not a new version.
    let again = push(&mut admin, &policy("one").replace(' ', "  ")).await;
    assert!(
        again.accepted && !again.created && again.version == 1,
        "{again:?}"
    );
    sidecar.expect_nothing().await;

    let v2 = push(&mut admin, &policy("two")).await;
    assert_eq!(v2.version, 2);
    let got2 = sidecar.recv().await;
    assert_eq!(got2.version, 2);
    assert_ne!(got2.nonce, got.nonce);
    sidecar.ack(&got2).await;
    wait_for(&mut admin, "a", |n| {
        n.applied_version == 2 && n.state == State::Synced as i32
    })
    .await;
    cp.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_nacked_version_is_never_resent_but_the_next_one_is_delivered() {
    let dir = tempfile::tempdir().unwrap();
    let cp = start(dir.path()).await;
    let mut admin = admin(cp.grpc_addr).await;
    push(&mut admin, &policy("one")).await;
    let mut sidecar = FakeSidecar::connect(cp.grpc_addr, "picky", None).await;
    let v1 = sidecar.recv().await;
    sidecar.ack(&v1).await;

    push(&mut admin, &policy("two")).await;
    let v2 = sidecar.recv().await;
    sidecar.nack(&v2, "cannot compile").await;
    let row = wait_for(&mut admin, "picky", state(State::Error)).await;
    assert_eq!((row.applied_version, row.sent_version), (1, 2));
    assert_eq!(
        row.nack_error,
        "cannot compile; /tools: refused by the test"
    );
    assert!(row.last_nack_at > 0);

    // Its next request (reporting it still runs v1) gets nothing back.
    sidecar.request("", None).await;
    sidecar.expect_nothing().await;
    // Nor after reconnecting: the refusal is remembered per node.
    drop(sidecar);
    let mut sidecar = FakeSidecar::connect(cp.grpc_addr, "picky", Some((1, v1.content_hash))).await;
    sidecar.expect_nothing().await;

    push(&mut admin, &policy("three")).await;
    let v3 = sidecar.recv().await;
    assert_eq!(v3.version, 3);
    sidecar.ack(&v3).await;
    let row = wait_for(&mut admin, "picky", state(State::Synced)).await;
    assert_eq!(row.applied_version, 3);
    cp.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_stale_nonce_is_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let cp = start(dir.path()).await;
    let mut admin = admin(cp.grpc_addr).await;
    push(&mut admin, &policy("one")).await;
    let mut sidecar = FakeSidecar::connect(cp.grpc_addr, "slow", None).await;
    let v1 = sidecar.recv().await;
    push(&mut admin, &policy("two")).await;
    let v2 = sidecar.recv().await;

    // A late answer to v1, even a NACK, changes nothing and sends nothing.
    sidecar.nack(&v1, "late").await;
    sidecar.expect_nothing().await;
    let row = wait_for(&mut admin, "slow", |_| true).await;
    assert_eq!(row.state, State::NotSent as i32);
    assert_eq!((row.sent_version, row.nack_error.as_str()), (2, ""));

    sidecar.ack(&v2).await;
    let row = wait_for(&mut admin, "slow", state(State::Synced)).await;
    assert_eq!(row.applied_version, 2);
    cp.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_sidecar_reconnecting_with_the_latest_hash_gets_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let cp = start(dir.path()).await;
    let mut admin = admin(cp.grpc_addr).await;
    push(&mut admin, &policy("one")).await;
    let mut first = FakeSidecar::connect(cp.grpc_addr, "b", None).await;
    let v1 = first.recv().await;
    first.ack(&v1).await;
    wait_for(&mut admin, "b", state(State::Synced)).await;
    drop(first);
    wait_for(&mut admin, "b", |n| !n.connected).await;

    let mut again = FakeSidecar::connect(cp.grpc_addr, "b", Some((1, v1.content_hash))).await;
    again.expect_nothing().await;
    let row = wait_for(&mut admin, "b", |n| n.connected).await;
    assert_eq!((row.state, row.applied_version), (State::Synced as i32, 1));

    // A sidecar whose hash differs gets the bundle.
    let mut other = FakeSidecar::connect(cp.grpc_addr, "c", Some((1, "0".repeat(64)))).await;
    assert_eq!(other.recv().await.version, 1);
    cp.shutdown().await.unwrap();
}

#[tokio::test]
async fn an_invalid_push_is_refused_with_every_error_and_stores_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let cp = start(dir.path()).await;
    let mut admin = admin(cp.grpc_addr).await;
    let mut sidecar = FakeSidecar::connect(cp.grpc_addr, "a", None).await;
    let bad = push(
        &mut admin,
        r#"{"version": "1", "default": "maybe", "tools": 3}"#,
    )
    .await;
    assert!(!bad.accepted && bad.version == 0, "{bad:?}");
    let pointers: Vec<&str> = bad.errors.iter().map(|e| e.pointer.as_str()).collect();
    assert!(
        pointers.contains(&"/default") && pointers.contains(&"/tools"),
        "{bad:?}"
    );
    let versions = admin
        .list_versions(ListVersionsRequest {})
        .await
        .unwrap()
        .into_inner()
        .versions;
    assert!(versions.is_empty());
    sidecar.expect_nothing().await;

    // --server into a single document is refused too, with the reason.
    push(&mut admin, &policy("one")).await;
    let refused = admin
        .push_policy(PushPolicyRequest {
            content: policy("two").into_bytes(),
            server: "files".to_owned(),
            message: String::new(),
            ..PushPolicyRequest::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!refused.accepted);
    assert!(
        refused.errors[0].message.contains("single policy document"),
        "{refused:?}"
    );
    cp.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_server_push_replaces_one_server_in_the_latest_bundle() {
    let dir = tempfile::tempdir().unwrap();
    let cp = start(dir.path()).await;
    let mut admin = admin(cp.grpc_addr).await;
    let bundle = format!(
        r#"{{"servers": {{"a": {}, "b": {}}}}}"#,
        policy("x"),
        policy("y")
    );
    assert_eq!(push(&mut admin, &bundle).await.version, 1);
    let resp = admin
        .push_policy(PushPolicyRequest {
            content: policy("z").into_bytes(),
            server: "b".to_owned(),
            message: "b gets z".to_owned(),
            ..PushPolicyRequest::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(resp.accepted && resp.version == 2, "{resp:?}");
    let mut sidecar = FakeSidecar::connect(cp.grpc_addr, "s", None).await;
    let got: serde_json::Value = serde_json::from_slice(&sidecar.recv().await.bundle).unwrap();
    assert!(got["servers"]["a"]["tools"]["x"].is_object());
    assert!(got["servers"]["b"]["tools"]["z"].is_object());
    assert!(got["servers"]["b"]["tools"]["y"].is_null());
    cp.shutdown().await.unwrap();
}

#[tokio::test]
async fn versions_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let cp = start(dir.path()).await;
    let mut client = admin(cp.grpc_addr).await;
    push(&mut client, &policy("one")).await;
    push(&mut client, &policy("two")).await;
    cp.shutdown().await.unwrap();

    let cp = start(dir.path()).await;
    let mut client = admin(cp.grpc_addr).await;
    let versions = client
        .list_versions(ListVersionsRequest {})
        .await
        .unwrap()
        .into_inner()
        .versions;
    assert_eq!(
        versions.iter().map(|v| v.version).collect::<Vec<_>>(),
        [1, 2]
    );
    // The latest is what a new sidecar gets, and numbering continues.
    let mut sidecar = FakeSidecar::connect(cp.grpc_addr, "a", None).await;
    assert_eq!(sidecar.recv().await.version, 2);
    assert_eq!(push(&mut client, &policy("three")).await.version, 3);
    assert!(nodes(&mut client).await.len() == 1);
    cp.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_first_request_without_a_node_is_invalid() {
    let dir = tempfile::tempdir().unwrap();
    let cp = start(dir.path()).await;
    let mut client = PolicyDistributionClient::connect(common::url(cp.grpc_addr))
        .await
        .unwrap();
    let first = PolicyRequest::default();
    let err = client
        .stream_policy(tokio_stream::iter(vec![first]))
        .await
        .expect_err("refused");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    cp.shutdown().await.unwrap();
}

#[tokio::test]
async fn health_and_metrics_are_served_over_http() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().unwrap();
    let cp = start(dir.path()).await;
    let mut admin = admin(cp.grpc_addr).await;
    push(&mut admin, &policy("one")).await;
    let mut sidecar = FakeSidecar::connect(cp.grpc_addr, "m", None).await;
    let v1 = sidecar.recv().await;
    sidecar.ack(&v1).await;
    wait_for(&mut admin, "m", state(State::Synced)).await;

    let get = |path: &'static str| async move {
        let mut s = tokio::net::TcpStream::connect(cp.http_addr.unwrap())
            .await
            .unwrap();
        let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    };
    assert!(get("/healthz").await.starts_with("HTTP/1.1 200"));
    assert!(get("/readyz").await.starts_with("HTTP/1.1 200"));
    let metrics = get("/metrics").await;
    for line in [
        "tollgate_controlplane_connected_nodes 1",
        "tollgate_controlplane_acks_total 1",
        "tollgate_controlplane_latest_version 1",
        "tollgate_controlplane_pushes_total 1",
    ] {
        assert!(metrics.contains(line), "{line} missing in {metrics}");
    }
    cp.shutdown().await.unwrap();
}
