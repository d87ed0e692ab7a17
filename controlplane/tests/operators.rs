//! Operator tokens over real gRPC: every admin call needs a token with a
//! high enough role; token changes and pushes land in the audit trail, and
//! a revoked token is refused from the very next call.

#![allow(clippy::unwrap_used)]

mod common;

use common::{admin, admin_with, policy, push, start};
use tollgate_proto::v1::admin_client::AdminClient;
use tollgate_proto::v1::{
    CreateTokenRequest, ListAuditRequest, ListTokensRequest, NodeStatusRequest, PushPolicyRequest,
    RevokeTokenRequest,
};
use tonic::Code;

async fn try_create(
    admin: &mut common::Admin,
    name: &str,
    role: &str,
) -> Result<String, tonic::Status> {
    let created = admin
        .create_token(CreateTokenRequest {
            name: name.to_owned(),
            role: role.to_owned(),
        })
        .await?;
    Ok(created.into_inner().token)
}

async fn create(admin: &mut common::Admin, name: &str, role: &str) -> String {
    try_create(admin, name, role).await.unwrap()
}

fn push_request(tool: &str) -> PushPolicyRequest {
    PushPolicyRequest {
        content: policy(tool).into_bytes(),
        server: String::new(),
        message: "why".to_owned(),
        ..PushPolicyRequest::default()
    }
}

/// (actor, action, target, outcome) of every audit entry.
async fn trail(admin: &mut common::Admin) -> Vec<(String, String, String, String)> {
    admin
        .list_audit(ListAuditRequest { since: 0 })
        .await
        .unwrap()
        .into_inner()
        .entries
        .into_iter()
        .map(|e| (e.actor, e.action, e.target, e.outcome))
        .collect()
}

fn row(actor: &str, action: &str, target: &str, outcome: &str) -> (String, String, String, String) {
    (
        actor.to_owned(),
        action.to_owned(),
        target.to_owned(),
        outcome.to_owned(),
    )
}

#[tokio::test]
async fn a_call_without_a_valid_token_is_unauthenticated_and_not_audited() {
    let dir = tempfile::tempdir().unwrap();
    let cp = start(dir.path()).await;
    let mut bare = AdminClient::connect(common::url(cp.grpc_addr))
        .await
        .unwrap();
    let err = bare.node_status(NodeStatusRequest {}).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    assert!(err.message().contains("tollgate token create"), "{err:?}");
    assert!(err.message().contains("admin-token"), "{err:?}");
    let err = bare.push_policy(push_request("a")).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);

    let forged = format!("tgt_{}_{}", "1".repeat(16), "2".repeat(64));
    let mut forger = admin_with(cp.grpc_addr, &forged).await;
    let err = forger.push_policy(push_request("a")).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    let mut malformed = admin_with(cp.grpc_addr, "hunter2").await;
    let err = malformed
        .node_status(NodeStatusRequest {})
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    assert!(err.message().contains("malformed"), "{err:?}");

    let mut root = admin(cp.grpc_addr).await;
    assert_eq!(
        trail(&mut root).await,
        [row("bootstrap", "token.create", "bootstrap", "created")],
        "only the bootstrap token's creation"
    );
    cp.shutdown().await.unwrap();
}

#[tokio::test]
async fn roles_nest_and_a_refused_push_is_audited() {
    let dir = tempfile::tempdir().unwrap();
    let cp = start(dir.path()).await;
    let addr = cp.grpc_addr;
    let mut root = admin(addr).await;
    let viewer = create(&mut root, "ci-view", "viewer").await;
    let approver = create(&mut root, "lead", "approver").await;
    for token in [&viewer, &approver] {
        let mut c = admin_with(addr, token).await;
        c.node_status(NodeStatusRequest {}).await.unwrap();
        let err = c.push_policy(push_request("a")).await.unwrap_err();
        assert_eq!(err.code(), Code::PermissionDenied);
        assert!(err.message().contains("needs role admin"), "{err:?}");
        let err = c.list_tokens(ListTokensRequest {}).await.unwrap_err();
        assert_eq!(err.code(), Code::PermissionDenied);
    }
    let mut c = admin_with(addr, &viewer).await;
    let err = c.push_policy(push_request("a")).await.unwrap_err();
    assert_eq!(
        err.message(),
        "`policy push` needs role admin; token \"ci-view\" has role viewer; ask an admin for a \
         token with role admin"
    );
    // A viewer reads the audit trail.
    let entries = trail(&mut c).await;
    assert!(
        entries.contains(&row(
            "ci-view",
            "policy.push",
            "bundle",
            "denied: needs role admin"
        )),
        "{entries:?}"
    );
    let pushed = push(&mut root, &policy("a")).await;
    assert!(pushed.created);
    push(&mut root, &policy("a")).await;
    let refused = push(&mut root, "{").await;
    assert!(!refused.accepted);
    let entries = trail(&mut root).await;
    let pushes: Vec<_> = entries
        .iter()
        .filter(|e| e.0 == "bootstrap" && e.1 == "policy.push")
        .map(|e| (e.2.as_str(), e.3.as_str()))
        .collect();
    assert_eq!(
        pushes,
        [
            ("version 1", "accepted"),
            ("version 1", "unchanged"),
            ("bundle", "refused")
        ]
    );
    cp.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_revoked_token_is_refused_at_once_and_the_last_admin_is_kept() {
    let dir = tempfile::tempdir().unwrap();
    let cp = start(dir.path()).await;
    let addr = cp.grpc_addr;
    let mut root = admin(addr).await;
    let ops = create(&mut root, "ops", "admin").await;
    let mut ops_client = admin_with(addr, &ops).await;
    ops_client.node_status(NodeStatusRequest {}).await.unwrap();
    let mut watch = ops_client
        .watch_status(NodeStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    watch.message().await.unwrap().expect("the first table");

    let err = try_create(&mut root, "ops", "viewer").await.unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists, "{err:?}");
    let err = try_create(&mut root, "x", "root").await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    let err = try_create(&mut root, "no spaces", "viewer")
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");

    let revoked = root
        .revoke_token(RevokeTokenRequest {
            token: "ops".to_owned(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(revoked.name, "ops");
    assert!(revoked.revoked_at > 0);
    // The very next call, on the same connection.
    let err = ops_client
        .node_status(NodeStatusRequest {})
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    assert!(err.message().contains("revoked"), "{err:?}");
    // A watch opened before the revocation ends within a refresh.
    let ended = tokio::time::timeout(std::time::Duration::from_secs(5), async {
        loop {
            match watch.message().await {
                Ok(Some(_)) => continue,
                other => return other,
            }
        }
    })
    .await
    .expect("the watch ended");
    let err = ended.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");

    let err = root
        .revoke_token(RevokeTokenRequest {
            token: "bootstrap".to_owned(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains("last live admin"), "{err:?}");
    let err = root
        .revoke_token(RevokeTokenRequest {
            token: "nobody".to_owned(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");

    let tokens = root
        .list_tokens(ListTokensRequest {})
        .await
        .unwrap()
        .into_inner()
        .tokens;
    let names: Vec<_> = tokens
        .iter()
        .map(|t| (t.name.as_str(), t.role.as_str(), t.revoked_at > 0))
        .collect();
    assert_eq!(
        names,
        [("bootstrap", "admin", false), ("ops", "admin", true)]
    );
    cp.shutdown().await.unwrap();

    // Revocation and the trail survive a restart.
    let cp = start(dir.path()).await;
    let mut ops_client = admin_with(cp.grpc_addr, &ops).await;
    let err = ops_client
        .node_status(NodeStatusRequest {})
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    let entries = trail(&mut admin(cp.grpc_addr).await).await;
    assert!(
        entries.contains(&row("bootstrap", "token.revoke", "ops", "revoked")),
        "{entries:?}"
    );
    cp.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_given_bootstrap_token_is_the_first_admin() {
    let dir = tempfile::tempdir().unwrap();
    let token = format!("tgt_{}_{}", "ab".repeat(8), "cd".repeat(32));
    let file = dir.path().join("given-token");
    std::fs::write(&file, format!("{token}\n")).unwrap();
    let data = dir.path().join("data");
    let mut config =
        tollgate_controlplane::server::Config::new("127.0.0.1:0".parse().unwrap(), data.clone());
    config.bootstrap_token_file = Some(file);
    let cp = tollgate_controlplane::server::start(config).await.unwrap();
    assert!(!data.join("admin-token").exists());
    let mut c = admin_with(cp.grpc_addr, &token).await;
    create(&mut c, "ci", "viewer").await;
    cp.shutdown().await.unwrap();
}
