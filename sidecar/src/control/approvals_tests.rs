//! Tests of the approvals stream's wire conversions and of a broker whose
//! stream is closed or silent.

use super::*;

fn sample() -> ApprovalRecord {
    ApprovalRecord {
        id: "ap_abcdefghijklmnopqrstuvwxyz".into(),
        call: CallKey {
            grant: "ci".into(),
            server: "files".into(),
            tool: "delete".into(),
            arguments_sha256: "ab".repeat(32),
        },
        node: "n1".into(),
        session: "s1".into(),
        arguments_json: String::new(),
        policy_version: "v3".into(),
        rule: "/tools/delete".into(),
        created_ms: 1_000,
        expires_ms: 601_000,
        state: ApprovalState::Denied,
        reason: "no".into(),
        decided_by: "bob".into(),
        decided_ms: 2_000,
        used_by: String::new(),
        used_ms: 0,
    }
}

fn on_wire(r: &ApprovalRecord, state: pb::ApprovalState) -> pb::Approval {
    pb::Approval {
        request: Some(request(r)),
        state: state as i32,
        reason: r.reason.clone(),
        decided_by: r.decided_by.clone(),
        decided_unix_ms: r.decided_ms,
        used_by: r.used_by.clone(),
        used_unix_ms: r.used_ms,
    }
}

#[test]
fn records_survive_the_wire() {
    let r = sample();
    assert_eq!(
        record(&on_wire(&r, pb::ApprovalState::Denied)),
        Some(r.clone())
    );
    assert_eq!(record(&on_wire(&r, pb::ApprovalState::Unspecified)), None);
    let mut long = r.clone();
    long.call.tool = "t".repeat(2000);
    assert_eq!(record(&on_wire(&long, pb::ApprovalState::Pending)), None);
}

#[test]
fn only_a_named_approval_with_its_record_is_granted() {
    let r = sample();
    let granted = pb::UseAnswer {
        seq: 1,
        approval_id: r.id.clone(),
        state: pb::ApprovalState::Used as i32,
        approval: Some(on_wire(&r, pb::ApprovalState::Used)),
    };
    assert!(matches!(use_outcome(&granted), UseOutcome::Granted(g) if g.id == r.id));
    // A grant naming another approval, or without a record: not granted.
    let confused = pb::UseAnswer {
        approval_id: "ap_other".into(),
        ..granted.clone()
    };
    assert_eq!(use_outcome(&confused), UseOutcome::None);
    let bare = pb::UseAnswer {
        approval: None,
        ..granted
    };
    assert_eq!(use_outcome(&bare), UseOutcome::None);
    let denied = pb::UseAnswer {
        seq: 2,
        approval_id: String::new(),
        state: pb::ApprovalState::Denied as i32,
        approval: Some(on_wire(&r, pb::ApprovalState::Denied)),
    };
    assert!(matches!(use_outcome(&denied), UseOutcome::Found(f) if f.reason == "no"));
    let none = pb::UseAnswer {
        seq: 3,
        ..Default::default()
    };
    assert_eq!(use_outcome(&none), UseOutcome::None);
}

#[tokio::test(start_paused = true)]
async fn an_unanswered_use_is_not_granted() {
    let metrics = Arc::new(crate::metrics::Metrics::new());
    let events = Events::new(
        Arc::clone(&metrics),
        crate::decision_log::DecisionLog::disabled(metrics),
    );
    let (broker, _stream) = RemoteBroker::new(pb::Node::default(), events);
    let r = sample();
    // The stream is not open: not granted, not filed, at once.
    assert_eq!(broker.use_for(&r.call, None).await, UseOutcome::None);
    let pending = ApprovalRecord {
        state: ApprovalState::Pending,
        ..r
    };
    let filed = broker.file(pending.clone()).await;
    assert!(
        filed
            .unwrap_err()
            .contains("stream to the control plane is not open")
    );
    // Open but silent: after the timeout, not granted either.
    broker.shared.open.store(true, Ordering::Release);
    assert_eq!(broker.use_for(&pending.call, None).await, UseOutcome::None);
    let silent = broker.file(pending.clone()).await;
    assert!(silent.unwrap_err().contains("did not confirm"));
}
