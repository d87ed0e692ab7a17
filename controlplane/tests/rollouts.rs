//! Staged rollouts against the control plane in-process, with real tonic
//! clients as nodes: each node ACKs what it is sent (one refuses a chosen
//! version), reports decisions over `Rollouts.ReportDecisions`, and the
//! admin client the CLI uses starts, watches and acts on the rollout.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use common::{Admin, WAIT, admin, nodes, policy, push, start, url};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tollgate_controlplane::rollout::placement::place;
use tollgate_proto::v1::node_state::State;
use tollgate_proto::v1::policy_distribution_client::PolicyDistributionClient;
use tollgate_proto::v1::rollouts_client::RolloutsClient;
use tollgate_proto::v1::{
    DecisionReport, ErrorDetail, GetRolloutRequest, Node, PolicyRequest, PolicyResponse,
    PushPolicyRequest, RolloutActionRequest, RolloutStatus, ShadowDifference, ShadowSample,
    StartRolloutRequest, VersionCounts,
};

/// What a node was last sent.
#[derive(Default)]
struct Seen {
    last: Option<PolicyResponse>,
}

/// A node that ACKs everything it is sent, except `refuse` (a version it
/// NACKs, live or shadow). Its stream lives until the control plane ends it.
async fn node(
    addr: SocketAddr,
    id: &str,
    labels: &[(&str, &str)],
    runs: Option<(u64, String)>,
    refuse: Option<u64>,
) -> Arc<Mutex<Seen>> {
    let mut client = PolicyDistributionClient::connect(url(addr)).await.unwrap();
    let (tx, rx) = mpsc::channel(4);
    let (version_info, content_hash) = runs.map(|(v, h)| (v.to_string(), h)).unwrap_or_default();
    let labels: HashMap<String, String> = labels
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    tx.send(PolicyRequest {
        node: Some(Node {
            id: id.to_owned(),
            labels,
            ..Node::default()
        }),
        version_info: version_info.clone(),
        content_hash: content_hash.clone(),
        ..PolicyRequest::default()
    })
    .await
    .unwrap();
    let mut inbound = client
        .stream_policy(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let seen = Arc::new(Mutex::new(Seen::default()));
    let out = seen.clone();
    tokio::spawn(async move {
        let (mut version_info, mut content_hash) = (version_info, content_hash);
        while let Ok(Some(resp)) = inbound.message().await {
            let refused = refuse.is_some_and(|r| r == resp.version || (resp.shadow_version == r));
            let error_detail = refused.then(|| ErrorDetail {
                message: "refused by the test".to_owned(),
                errors: Vec::new(),
            });
            if !refused {
                version_info = resp.version.to_string();
                content_hash = resp.content_hash.clone();
            }
            let answer = PolicyRequest {
                version_info: version_info.clone(),
                content_hash: content_hash.clone(),
                response_nonce: resp.nonce.clone(),
                error_detail,
                ..PolicyRequest::default()
            };
            seen.lock().unwrap().last = Some(resp);
            if tx.send(answer).await.is_err() {
                break;
            }
        }
    });
    out
}

fn ids(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("node-{i:02}")).collect()
}

/// Node ids by desired version, from the status table.
async fn desired(admin: &mut Admin) -> BTreeMap<String, (u64, u64, i32)> {
    nodes(admin)
        .await
        .into_iter()
        .map(|n| {
            let id = n.node.map(|n| n.id).unwrap_or_default();
            (id, (n.desired_version, n.applied_version, n.state))
        })
        .collect()
}

/// Polls the status table until `ok` holds for it.
async fn wait_table(
    admin: &mut Admin,
    what: &str,
    ok: impl Fn(&BTreeMap<String, (u64, u64, i32)>) -> bool,
) -> BTreeMap<String, (u64, u64, i32)> {
    let deadline = tokio::time::Instant::now() + WAIT * 4;
    loop {
        let table = desired(admin).await;
        if ok(&table) {
            return table;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never: {what}; table (desired, applied, state): {table:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

async fn rollout(admin: &mut Admin) -> RolloutStatus {
    admin
        .get_rollout(GetRolloutRequest::default())
        .await
        .unwrap()
        .into_inner()
}

async fn wait_rollout(
    admin: &mut Admin,
    what: &str,
    ok: impl Fn(&RolloutStatus) -> bool,
) -> RolloutStatus {
    let deadline = tokio::time::Instant::now() + WAIT * 4;
    loop {
        let r = rollout(admin).await;
        if ok(&r) {
            return r;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never: {what}; {r:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

async fn stage(admin: &mut Admin, content: &str) -> u64 {
    let r = admin
        .push_policy(PushPolicyRequest {
            content: content.as_bytes().to_vec(),
            stage: true,
            ..PushPolicyRequest::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(r.accepted && r.created, "{r:?}");
    r.version
}

fn start_request(version: u64, steps: &[f64], bake_ms: i64) -> StartRolloutRequest {
    StartRolloutRequest {
        version,
        steps: steps.to_vec(),
        bake_ms,
        max_deny_rate_increase: 0.05,
        ack_timeout_ms: 10_000,
        ..StartRolloutRequest::default()
    }
}

fn synced_on(version: u64) -> impl Fn(&BTreeMap<String, (u64, u64, i32)>) -> bool {
    move |t| {
        t.values()
            .all(|(d, a, s)| *d == version && *a == version && *s == State::Synced as i32)
    }
}

#[tokio::test]
async fn steps_move_one_then_five_then_ten_nodes_and_rollback_returns_them_all() {
    let dir = tempfile::tempdir().unwrap();
    let cp = start(dir.path()).await;
    let mut admin = admin(cp.grpc_addr).await;
    push(&mut admin, &policy("one")).await;
    let mut held = Vec::new();
    for id in ids(10) {
        held.push(node(cp.grpc_addr, &id, &[("app", "demo")], None, None).await);
    }
    wait_table(&mut admin, "all on 1", |t| t.len() == 10 && synced_on(1)(t)).await;
    let v2 = stage(&mut admin, &policy("two")).await;
    assert_eq!(v2, 2);
    // Staged: stored, sent to nobody.
    let table = desired(&mut admin).await;
    assert!(synced_on(1)(&table), "{table:?}");

    // A plain push during a rollout is refused, naming it.
    let started = admin
        .start_rollout(start_request(2, &[10.0, 50.0, 100.0], 1_500))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (started.id.as_str(), started.step, started.steps_total),
        ("r1", 1, 3)
    );
    let refused = admin
        .push_policy(PushPolicyRequest {
            content: policy("three").into_bytes(),
            ..PushPolicyRequest::default()
        })
        .await
        .unwrap_err();
    assert!(
        refused.message().contains("rollout r1 of version 2"),
        "{refused:?}"
    );

    let mut lowest: Vec<String> = ids(10);
    lowest.sort_by(|a, b| place("r1", a).total_cmp(&place("r1", b)));
    let mut seen_at = Vec::new();
    for (step, count) in [(1u32, 1usize), (2, 5), (3, 10)] {
        let r = wait_rollout(&mut admin, &format!("step {step}"), |r| r.step == step).await;
        assert_eq!(r.nodes_chosen as usize, count, "{r:?}");
        let table = wait_table(&mut admin, &format!("{count} nodes on 2"), |t| {
            t.values().filter(|(d, a, _)| *d == 2 && *a == 2).count() == count
        })
        .await;
        let on_new: Vec<String> = table
            .iter()
            .filter(|(_, (d, _, _))| *d == 2)
            .map(|(id, _)| id.clone())
            .collect();
        let mut expected = lowest[..count].to_vec();
        expected.sort();
        assert_eq!(on_new, expected, "step {step} chose the lowest places");
        seen_at.push(on_new);
    }
    assert!(seen_at[1].contains(&seen_at[0][0]), "the 10 % node stays");
    let done = wait_rollout(&mut admin, "completed", |r| r.state == "Completed").await;
    assert_eq!((done.nodes_at_target, done.nodes_chosen), (10, 10));
    wait_table(&mut admin, "all on 2", synced_on(2)).await;

    let back = admin
        .act_on_rollout(RolloutActionRequest {
            id: "r1".to_owned(),
            action: "rollback".to_owned(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(back.state, "RolledBack");
    wait_table(&mut admin, "all back on 1", synced_on(1)).await;
    let r = wait_rollout(&mut admin, "rollback tracked", |r| r.nodes_at_target == 10).await;
    assert_eq!(r.nodes_chosen, 10);
    drop(held);
    cp.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_refusal_pauses_the_step_naming_the_node_and_rollback_settles_it() {
    let dir = tempfile::tempdir().unwrap();
    let cp = start(dir.path()).await;
    let mut admin = admin(cp.grpc_addr).await;
    push(&mut admin, &policy("one")).await;
    let mut ordered = ids(10);
    ordered.sort_by(|a, b| place("r1", a).total_cmp(&place("r1", b)));
    let picky = ordered[0].clone();
    let mut held = Vec::new();
    for id in ids(10) {
        let refuse = (id == picky).then_some(2);
        held.push(node(cp.grpc_addr, &id, &[], None, refuse).await);
    }
    wait_table(&mut admin, "all on 1", |t| t.len() == 10 && synced_on(1)(t)).await;
    stage(&mut admin, &policy("two")).await;
    admin
        .start_rollout(start_request(2, &[10.0, 50.0, 100.0], 60_000))
        .await
        .unwrap();
    let paused = wait_rollout(&mut admin, "paused", |r| r.state == "Paused").await;
    assert_eq!(paused.step, 1);
    assert!(
        paused
            .reason
            .contains(&format!("node {picky} refused version 2")),
        "{}",
        paused.reason
    );
    let row = wait_table(&mut admin, "the refusal shows", |t| {
        t[&picky].2 == State::Error as i32
    })
    .await;
    assert_eq!(row[&picky].1, 1);
    // Rollback returns the fleet; the refusing node, which never left 1,
    // is SYNCED again once it runs what it should.
    admin
        .act_on_rollout(RolloutActionRequest {
            id: String::new(),
            action: "rollback".to_owned(),
        })
        .await
        .unwrap();
    wait_table(&mut admin, "every node SYNCED on 1", synced_on(1)).await;
    drop(held);
    cp.shutdown().await.unwrap();
}

#[tokio::test]
async fn the_chosen_node_is_the_same_after_reconnects_and_a_control_plane_restart() {
    let dir = tempfile::tempdir().unwrap();
    let cp = start(dir.path()).await;
    let mut admin = admin(cp.grpc_addr).await;
    push(&mut admin, &policy("one")).await;
    let mut held = Vec::new();
    for id in ids(10) {
        held.push(node(cp.grpc_addr, &id, &[], None, None).await);
    }
    wait_table(&mut admin, "all on 1", |t| t.len() == 10 && synced_on(1)(t)).await;
    stage(&mut admin, &policy("two")).await;
    admin
        .start_rollout(start_request(2, &[10.0, 50.0, 100.0], 600_000))
        .await
        .unwrap();
    let before = wait_table(&mut admin, "one node on 2", |t| {
        t.values().filter(|(d, a, _)| *d == 2 && *a == 2).count() == 1
    })
    .await;
    let chosen: Vec<&String> = before
        .iter()
        .filter(|(_, v)| v.0 == 2)
        .map(|(k, _)| k)
        .collect();
    let chosen = chosen[0].clone();
    let hashes: HashMap<String, (u64, String)> = held
        .iter()
        .zip(ids(10))
        .map(|(s, id)| {
            let last = s.lock().unwrap().last.clone().unwrap();
            (id, (last.version, last.content_hash))
        })
        .collect();
    drop(held);
    cp.shutdown().await.unwrap();

    let cp = start(dir.path()).await;
    let mut admin = common::admin(cp.grpc_addr).await;
    let mut held = Vec::new();
    for id in ids(10) {
        held.push(node(cp.grpc_addr, &id, &[], Some(hashes[&id].clone()), None).await);
    }
    let r = rollout(&mut admin).await;
    assert_eq!(
        (r.id.as_str(), r.state.as_str(), r.step),
        ("r1", "Progressing", 1)
    );
    let after = wait_table(&mut admin, "resumed where it was", |t| {
        t.len() == 10
            && t.values().all(|(_, _, s)| *s == State::Synced as i32)
            && t.values().filter(|(d, _, _)| *d == 2).count() == 1
    })
    .await;
    assert_eq!(after[&chosen].0, 2, "the same node after the restart");
    drop(held);
    cp.shutdown().await.unwrap();
}

#[tokio::test]
async fn the_shadow_goes_to_chosen_nodes_only_and_their_differences_show_in_status() {
    let dir = tempfile::tempdir().unwrap();
    let cp = start(dir.path()).await;
    let mut admin = admin(cp.grpc_addr).await;
    push(&mut admin, &policy("one")).await;
    let inside = node(cp.grpc_addr, "canary", &[("zone", "a")], None, None).await;
    let outside = node(cp.grpc_addr, "other", &[("zone", "b")], None, None).await;
    wait_table(&mut admin, "both on 1", |t| t.len() == 2 && synced_on(1)(t)).await;
    stage(&mut admin, &policy("two")).await;
    let mut req = start_request(2, &[100.0], 60_000);
    req.shadow_ms = 600_000;
    req.selector = [("zone".to_owned(), "a".to_owned())].into();
    admin.start_rollout(req).await.unwrap();
    wait_rollout(&mut admin, "the shadow ACKed", |r| {
        r.phase == "Shadow" && r.nodes_at_target == 1
    })
    .await;
    let got = inside.lock().unwrap().last.clone().unwrap();
    assert_eq!((got.version, got.shadow_version), (1, 2));
    assert!(String::from_utf8_lossy(&got.shadow_bundle).contains("\"two\""));
    let other = outside.lock().unwrap().last.clone().unwrap();
    assert_eq!((other.version, other.shadow_version), (1, 0));

    let mut reports = RolloutsClient::connect(url(cp.grpc_addr)).await.unwrap();
    let report = DecisionReport {
        node: Some(Node {
            id: "canary".to_owned(),
            ..Node::default()
        }),
        versions: vec![
            VersionCounts {
                version: 1,
                calls: 7,
                ..VersionCounts::default()
            },
            VersionCounts {
                version: 2,
                shadow: true,
                calls: 7,
                denied: 3,
                ..VersionCounts::default()
            },
        ],
        differences: vec![ShadowDifference {
            server: "files".to_owned(),
            tool: "write_file".to_owned(),
            live: "allow".to_owned(),
            shadow: "deny".to_owned(),
            count: 3,
        }],
        samples: vec![ShadowSample {
            server: "files".to_owned(),
            tool: "write_file".to_owned(),
            live: "allow".to_owned(),
            shadow: "deny".to_owned(),
            shadow_rule: "/servers/files/tools/write_file".to_owned(),
            arguments_sha256: "ab".repeat(32),
            ..ShadowSample::default()
        }],
        until_unix_ms: 1,
    };
    let ack = reports
        .report_decisions(report.clone())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ack.error, "");
    let r = rollout(&mut admin).await;
    assert_eq!(r.differences.len(), 1);
    assert_eq!(
        (r.differences[0].tool.as_str(), r.differences[0].count),
        ("write_file", 3)
    );
    assert_eq!(r.samples[0].shadow_rule, "/servers/files/tools/write_file");
    assert_eq!((r.new_calls, r.new_denied, r.old_calls), (7, 3, 7));
    let shown = tollgate_controlplane::cli::rollout::text(&r);
    assert!(shown.contains("files/write_file: allow → deny"), "{shown}");

    // Too many samples in one report: refused, nothing counted.
    let mut big = report;
    big.samples = vec![ShadowSample::default(); 21];
    let ack = reports.report_decisions(big).await.unwrap().into_inner();
    assert!(ack.error.contains("21 samples"), "{ack:?}");
    assert_eq!(rollout(&mut admin).await.differences[0].count, 3);
    drop((inside, outside));
    cp.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_viewer_reads_rollouts_but_only_an_admin_starts_or_acts_and_both_are_audited() {
    let dir = tempfile::tempdir().unwrap();
    let cp = start(dir.path()).await;
    let mut admin = admin(cp.grpc_addr).await;
    push(&mut admin, &policy("one")).await;
    stage(&mut admin, &policy("two")).await;
    let token = admin
        .create_token(tollgate_proto::v1::CreateTokenRequest {
            name: "watcher".to_owned(),
            role: "viewer".to_owned(),
        })
        .await
        .unwrap()
        .into_inner()
        .token;
    let mut viewer = common::admin_with(cp.grpc_addr, &token).await;
    let denied = viewer
        .start_rollout(start_request(2, &[100.0], 1_000))
        .await
        .unwrap_err();
    assert_eq!(denied.code(), tonic::Code::PermissionDenied, "{denied:?}");
    admin
        .start_rollout(start_request(2, &[50.0, 100.0], 600_000))
        .await
        .unwrap();
    assert_eq!(rollout(&mut viewer).await.id, "r1");
    let denied = viewer
        .act_on_rollout(RolloutActionRequest {
            id: "r1".to_owned(),
            action: "abort".to_owned(),
        })
        .await
        .unwrap_err();
    assert_eq!(denied.code(), tonic::Code::PermissionDenied);
    admin
        .act_on_rollout(RolloutActionRequest {
            id: "r1".to_owned(),
            action: "pause".to_owned(),
        })
        .await
        .unwrap();
    let trail = admin
        .list_audit(tollgate_proto::v1::ListAuditRequest { since: 0 })
        .await
        .unwrap()
        .into_inner();
    let seen: Vec<(String, String, String)> = trail
        .entries
        .iter()
        .map(|e| (e.actor.clone(), e.action.clone(), e.outcome.clone()))
        .collect();
    assert!(
        seen.contains(&(
            "bootstrap".to_owned(),
            "rollout.start".to_owned(),
            "started".to_owned()
        )) && seen.contains(&(
            "bootstrap".to_owned(),
            "rollout.act".to_owned(),
            "pause".to_owned()
        )) && seen
            .iter()
            .any(|(a, act, o)| a == "watcher" && act == "rollout.start" && o.starts_with("denied")),
        "{seen:?}"
    );
    cp.shutdown().await.unwrap();
}
