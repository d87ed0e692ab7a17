//! Bundles sent to nodes name grant tokens by a hash keyed per deployment:
//! no `token_sha256` of the pushed policy reaches a node, the key comes
//! beside the bundle, it survives a restart on the same data dir, and
//! another data dir has another key.

#![allow(clippy::unwrap_used)]

mod common;

use common::{FakeSidecar, admin, push, start, wait_for};
use tollgate_policy::GrantKey;
use tollgate_proto::v1::node_state::State;
use tollgate_proto::v1::{GetVersionRequest, PolicyResponse, PolicyVersion};

/// Two token hashes, as an operator writes them in a policy.
const ALICE_SHA256: &str = "1b2a2bac9c1d5b0fe96e9e77b1f43ea7a83d8e43c7e35e7b2b5a6b0b7a3e2c1d";
const BOB_SHA256: &str = "6b6e8f0f2c5c4d3b2a190817f6e5d4c3b2a1908f7e6d5c4b3a29180f7e6d5c4b";

fn bundle() -> String {
    format!(
        r#"{{"servers": {{"books": {{"version": "1", "default": "allow"}}}},
            "grants": {{
                "alice": {{"token_sha256": "{ALICE_SHA256}", "labels": {{"team": "qa"}}}},
                "bob": {{"token_sha256": "{BOB_SHA256}"}}
            }}}}"#
    )
}

/// Asserts that `got` carries no token hash of the pushed policy, and returns
/// its key.
fn check_keyed(got: &PolicyResponse) -> GrantKey {
    let text = String::from_utf8(got.bundle.clone()).unwrap();
    for plain in [ALICE_SHA256, BOB_SHA256] {
        assert!(
            !text.contains(plain),
            "a pushed token hash was sent:\n{text}"
        );
    }
    assert!(!text.contains("\"token_sha256\""), "{text}");
    assert!(text.contains("\"token_hmac_sha256\""), "{text}");
    let key = GrantKey::from_slice(&got.grant_key).expect("a 32-byte grant key beside the bundle");
    // The bundle is what the hash says, and it identifies the same grants
    // with the key.
    assert_eq!(
        got.content_hash,
        tollgate_controlplane::store::content_hash(&got.bundle)
    );
    let value: serde_json::Value = serde_json::from_slice(&got.bundle).unwrap();
    let compiled = tollgate_policy::load_distributed(&value, Some(&key)).unwrap();
    assert_eq!(
        compiled.grant_for_token_sha256(ALICE_SHA256).map(|g| &**g),
        Some("alice")
    );
    assert_eq!(
        compiled.grant_for_token_sha256(BOB_SHA256).map(|g| &**g),
        Some("bob")
    );
    assert_eq!(
        compiled.grant_labels("alice").and_then(|l| l.get("team")),
        Some(&"qa".to_owned())
    );
    key
}

/// Version `n` as stored (what `tollgate policy show` prints).
async fn version_as_stored(admin: &mut common::Admin, n: u64) -> PolicyVersion {
    admin
        .get_version(GetVersionRequest { version: n })
        .await
        .unwrap()
        .into_inner()
}

#[tokio::test]
async fn nodes_get_keyed_grants_and_operators_see_what_they_pushed() {
    let dir = tempfile::tempdir().unwrap();
    let cp = start(dir.path()).await;
    let mut admin = admin(cp.grpc_addr).await;
    assert!(push(&mut admin, &bundle()).await.accepted);
    let mut node = FakeSidecar::connect(cp.grpc_addr, "a", None).await;
    let got = node.recv().await;
    check_keyed(&got);
    node.ack(&got).await;
    wait_for(&mut admin, "a", |n| n.state == State::Synced as i32).await;

    // The stored version is the operator's, token hashes and all.
    let stored = version_as_stored(&mut admin, 1).await;
    let text = String::from_utf8(stored.content).unwrap();
    assert!(
        text.contains(ALICE_SHA256) && text.contains(BOB_SHA256),
        "{text}"
    );
    assert_ne!(stored.content_hash, got.content_hash);

    // A bundle without grants is sent as stored, with no key.
    assert!(
        push(
            &mut admin,
            r#"{"servers": {"books": {"version": "1", "default": "deny"}}}"#
        )
        .await
        .accepted
    );
    let plain = node.recv().await;
    assert!(plain.grant_key.is_empty());
    let stored = version_as_stored(&mut admin, 2).await;
    assert_eq!(plain.bundle, stored.content);
    assert_eq!(plain.content_hash, stored.content_hash);
    cp.shutdown().await.unwrap();
}

#[tokio::test]
async fn pushing_a_keyed_bundle_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let cp = start(dir.path()).await;
    let mut admin = admin(cp.grpc_addr).await;
    let keyed = bundle().replace("token_sha256", "token_hmac_sha256");
    let refused = push(&mut admin, &keyed).await;
    assert!(!refused.accepted);
    assert!(
        refused
            .errors
            .iter()
            .any(|e| e.pointer == "/grants/alice/token_hmac_sha256"
                && e.message.contains("`token_sha256`")),
        "{refused:?}"
    );
    cp.shutdown().await.unwrap();
}

#[tokio::test]
async fn the_key_is_kept_by_the_data_dir_so_a_restart_resends_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let cp = start(dir.path()).await;
    let mut client = admin(cp.grpc_addr).await;
    push(&mut client, &bundle()).await;
    let mut node = FakeSidecar::connect(cp.grpc_addr, "a", None).await;
    let before = node.recv().await;
    let key = check_keyed(&before);
    node.ack(&before).await;
    wait_for(&mut client, "a", |n| n.state == State::Synced as i32).await;
    drop(node);
    cp.shutdown().await.unwrap();

    // Same data dir: same key, same bundle, same hash, so a node that runs
    // it is sent nothing and shows SYNCED.
    let cp = start(dir.path()).await;
    let mut client = admin(cp.grpc_addr).await;
    let mut node = FakeSidecar::connect(
        cp.grpc_addr,
        "a",
        Some((before.version, before.content_hash.clone())),
    )
    .await;
    node.expect_nothing().await;
    let row = wait_for(&mut client, "a", |n| n.connected).await;
    assert_eq!(
        (row.state, row.applied_version),
        (State::Synced as i32, before.version)
    );
    let mut fresh = FakeSidecar::connect(cp.grpc_addr, "b", None).await;
    let after = fresh.recv().await;
    assert_eq!(check_keyed(&after), key);
    assert_eq!(
        (&after.bundle, &after.content_hash),
        (&before.bundle, &before.content_hash)
    );
    cp.shutdown().await.unwrap();

    // Another data dir: another deployment, another key, other hashes.
    let other_dir = tempfile::tempdir().unwrap();
    let cp = start(other_dir.path()).await;
    let mut client = admin(cp.grpc_addr).await;
    push(&mut client, &bundle()).await;
    let mut node = FakeSidecar::connect(cp.grpc_addr, "a", None).await;
    let elsewhere = node.recv().await;
    assert_ne!(check_keyed(&elsewhere), key);
    assert_ne!(elsewhere.content_hash, before.content_hash);
    cp.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_node_running_the_stored_form_is_sent_the_keyed_one() {
    // A node that a control plane of an earlier release sent the version in
    // its stored form (token_sha256) is sent the keyed form, once.
    let dir = tempfile::tempdir().unwrap();
    let cp = start(dir.path()).await;
    let mut client = admin(cp.grpc_addr).await;
    push(&mut client, &bundle()).await;
    let stored = version_as_stored(&mut client, 1).await;
    let mut node = FakeSidecar::connect(cp.grpc_addr, "old", Some((1, stored.content_hash))).await;
    let got = node.recv().await;
    check_keyed(&got);
    node.ack(&got).await;
    wait_for(&mut client, "old", |n| n.state == State::Synced as i32).await;
    cp.shutdown().await.unwrap();
}
