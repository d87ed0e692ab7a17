//! Tests of [`LocalBroker`]: waiting wakes on a decision, single use, and
//! the pending cap.

use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::decision_log::DecisionLog;
use crate::metrics::Metrics;

fn broker() -> Arc<LocalBroker> {
    let metrics = Arc::new(Metrics::new());
    let events = Events::new(Arc::clone(&metrics), DecisionLog::disabled(metrics));
    Arc::new(LocalBroker::new("n1".into(), events))
}

fn call(digest: &str) -> CallKey {
    CallKey {
        grant: "ci".into(),
        server: "files".into(),
        tool: "delete".into(),
        arguments_sha256: digest.into(),
    }
}

fn request(id: &str, digest: &str) -> ApprovalRecord {
    let now = now_ms();
    ApprovalRecord {
        id: id.into(),
        call: call(digest),
        node: "n1".into(),
        session: String::new(),
        arguments_json: String::new(),
        policy_version: "v1".into(),
        rule: "/rules/0".into(),
        created_ms: now,
        expires_ms: now + 600_000,
        state: ApprovalState::Pending,
        reason: String::new(),
        decided_by: String::new(),
        decided_ms: 0,
        used_by: String::new(),
        used_ms: 0,
    }
}

#[tokio::test]
async fn a_waiter_wakes_when_the_request_is_decided_and_it_is_used_once() {
    let b = broker();
    b.file(request("ap_1", "aa")).await.unwrap();
    let waiter = {
        let b = Arc::clone(&b);
        tokio::spawn(async move { b.wait("ap_1", Duration::from_secs(3600)).await })
    };
    tokio::task::yield_now().await;
    b.decide("ap_1", true, "", "alice").await.unwrap();
    let decided = waiter.await.unwrap().unwrap();
    assert_eq!(decided.state, ApprovalState::Approved);
    assert!(matches!(
        b.use_for(&call("aa"), None).await,
        UseOutcome::Granted(_)
    ));
    assert!(matches!(
        b.use_for(&call("aa"), None).await,
        UseOutcome::Found(r) if r.state == ApprovalState::Used
    ));
    assert!(matches!(
        b.decide("ap_1", false, "no", "bob").await,
        Err(DecideError::Ledger(_))
    ));
}

#[tokio::test(start_paused = true)]
async fn an_undecided_wait_ends_at_its_timeout() {
    let b = broker();
    b.file(request("ap_1", "aa")).await.unwrap();
    assert_eq!(b.wait("ap_1", Duration::from_secs(5)).await, None);
    assert_eq!(b.wait("ap_unknown", Duration::from_secs(5)).await, None);
}

#[tokio::test]
async fn pending_requests_and_fields_are_bounded() {
    let b = broker();
    for i in 0..MAX_PENDING {
        b.file(request(&format!("ap_{i}"), &format!("{i}")))
            .await
            .unwrap();
    }
    let full = b.file(request("ap_x", "x")).await.unwrap_err();
    assert!(full.contains("1000 approval requests pending"), "{full}");
    let mut long = request("ap_y", "y");
    long.call.tool = "t".repeat(MAX_FIELD + 1);
    let b = broker();
    let err = b.file(long).await.unwrap_err();
    assert!(err.contains("tool is 1025 bytes"), "{err}");
}
