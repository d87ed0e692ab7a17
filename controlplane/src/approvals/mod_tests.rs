use super::*;
use crate::store::SqliteStore;

fn open(dir: &std::path::Path) -> (Approvals, ApprovalMetrics) {
    let metrics = ApprovalMetrics::default();
    let store: Arc<dyn PolicyStore> = Arc::new(SqliteStore::open(dir).expect("store"));
    (
        Approvals::open(store, metrics.clone()).expect("open"),
        metrics,
    )
}

/// A valid id: the digits of `n` as letters, padded.
fn id(n: u32) -> String {
    let letters: String = n
        .to_string()
        .bytes()
        .map(|d| (d - b'0' + b'b') as char)
        .collect();
    format!("ap_{letters:a>26}")
}

const ARGS: &str = r#"{"path":"/tmp/x"}"#;

fn call() -> CallKey {
    CallKey {
        grant: "ci".into(),
        server: "files".into(),
        tool: "delete".into(),
        arguments_sha256: crate::store::content_hash(ARGS.as_bytes()),
    }
}

fn request(id: &str, node: &str) -> ApprovalRecord {
    let now = now_ms();
    ApprovalRecord {
        id: id.into(),
        call: call(),
        node: node.into(),
        session: String::new(),
        arguments_json: ARGS.into(),
        policy_version: "3".into(),
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

fn event(m: &ApprovalMetrics, e: &str) -> u64 {
    m.events
        .get_or_create(&vec![("event".to_owned(), e.to_owned())])
        .get()
}

#[tokio::test]
async fn filed_decided_and_used_once_survives_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (a, m) = open(dir.path());
    let mut changes = a.subscribe();
    a.file(request(&id(1), "n1")).await.expect("file");
    assert_eq!(
        changes.recv().await.expect("filed").state,
        ApprovalState::Pending
    );
    assert_eq!(m.pending.get(), 1);
    assert_eq!(
        a.list(Some(ApprovalState::Pending))
            .iter()
            .map(|r| r.id.clone())
            .collect::<Vec<_>>(),
        [id(1)]
    );
    let decided = a.decide(&id(1), true, "", "alice").await.expect("approve");
    assert_eq!(
        (decided.state, decided.decided_by.as_str()),
        (ApprovalState::Approved, "alice")
    );
    assert_eq!(changes.recv().await.expect("decided"), decided);
    assert_eq!(m.pending.get(), 0);
    assert_eq!(a.decided_for("n1"), std::slice::from_ref(&decided));
    assert!(a.decided_for("n2").is_empty());
    drop(a);

    // A restart keeps the decision; the use is single across "nodes".
    let (a, m) = open(dir.path());
    assert_eq!(a.get(&id(1)).expect("kept").state, ApprovalState::Approved);
    match a.use_for(&call(), None, "n2").await.expect("use") {
        UseOutcome::Granted(r) => assert_eq!(r.used_by, "n2"),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        a.use_for(&call(), None, "n1").await.expect("again"),
        UseOutcome::Found(r) if r.state == ApprovalState::Used
    ));
    assert_eq!(event(&m, "used"), 1);
    drop(a);
    let (a, _) = open(dir.path());
    assert_eq!(a.get(&id(1)).expect("kept").state, ApprovalState::Used);
    assert!(a.decided_for("n1").is_empty());
}

#[tokio::test]
async fn decisions_are_audited_and_refusals_name_the_reason() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (a, m) = open(dir.path());
    a.file(request(&id(2), "n1")).await.expect("file");
    let e = a.decide(&id(2), false, "  ", "bob").await.unwrap_err();
    assert_eq!(e, ApprovalError::NoReason(id(2)));
    a.decide(&id(2), false, "too risky", "bob")
        .await
        .expect("deny");
    let e = a.decide(&id(2), true, "", "alice").await.unwrap_err();
    assert!(e.to_string().contains("denied already (by bob)"), "{e}");
    assert!(matches!(
        a.decide(&id(9), true, "", "alice").await,
        Err(ApprovalError::Unknown(_))
    ));
    assert_eq!(event(&m, "denied"), 1);
    let store = SqliteStore::open(dir.path()).expect("store");
    let trail = store.audit_since(0, 10).expect("audit");
    let rows: Vec<(&str, &str, &str)> = trail
        .iter()
        .map(|e| (e.actor.as_str(), e.action.as_str(), e.outcome.as_str()))
        .collect();
    assert_eq!(
        rows,
        [
            ("bob", "approval.deny", "refused"),
            ("bob", "approval.deny", "denied"),
            ("alice", "approval.approve", "refused"),
            ("alice", "approval.approve", "refused"),
        ]
    );
    assert!(trail[1].detail.contains("too risky"), "{:?}", trail[1]);
}

#[tokio::test]
async fn hostile_requests_are_refused_and_nothing_is_stored() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (a, _) = open(dir.path());
    let mut long_tool = request(&id(3), "n1");
    long_tool.call.tool = "x".repeat(2048);
    let mut bad_id = request("ap_UPPER", "n1");
    bad_id.id = "ap_AAAAAAAAAAAAAAAAAAAAAAAAAA".into();
    let mut big_args = request(&id(4), "n1");
    big_args.arguments_json = format!("\"{}\"", "a".repeat(70_000));
    let mut other_args = request(&id(5), "n1");
    other_args.arguments_json = r#"{"path":"/"}"#.into();
    let mut past = request(&id(6), "n1");
    past.expires_ms = now_ms() - 1;
    let mut far = request(&id(7), "n1");
    far.expires_ms = far.created_ms + bounds::MAX_LIFETIME_MS + 1;
    let mut no_tool = request(&id(8), "n1");
    no_tool.call.tool.clear();
    for (r, says) in [
        (
            long_tool,
            "field `tool` is 2048 bytes, over the limit of 1024",
        ),
        (bad_id, "26 lowercase base32"),
        (big_args, "`arguments_json` is 70002 bytes"),
        (other_args, "does not hash to `arguments_sha256`"),
        (past, "already expired"),
        (far, "more than 24 h"),
        (no_tool, "`tool` is empty"),
    ] {
        let e = a.file(r).await.unwrap_err().to_string();
        assert!(e.contains(says), "{e}");
    }
    assert!(a.list(None).is_empty());
    a.file(request(&id(3), "n1")).await.expect("file");
    let again = a.file(request(&id(3), "n2")).await.unwrap_err();
    assert!(again.to_string().contains("exists already"), "{again}");
    drop(a);
    let store = SqliteStore::open(dir.path()).expect("store");
    assert_eq!(store.approvals().expect("rows").len(), 1);
}

#[tokio::test]
async fn a_node_has_at_most_a_thousand_pending() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (a, _) = open(dir.path());
    {
        // Filled straight into the ledger: a thousand store writes add
        // nothing to what is tested.
        let mut book = a.book();
        for n in 0..bounds::MAX_PENDING_PER_NODE {
            let mut r = request(&format!("ap_{n:0>26}"), "n1");
            r.call.arguments_sha256 = format!("{n:064x}");
            book.file(r).expect("file");
        }
    }
    let e = a.file(request(&id(1), "n1")).await.unwrap_err();
    assert!(e.to_string().contains("node n1 has 1000"), "{e}");
    a.file(request(&id(1), "n2")).await.expect("another node");
    // One decided: room for one more.
    let first = format!("ap_{:0>26}", 0);
    a.decide(&first, false, "no", "bob").await.expect("deny");
    a.file(request(&id(2), "n1")).await.expect("room again");
    assert!(a.file(request(&id(3), "n1")).await.is_err());
    assert_eq!(a.metrics.pending.get(), 1_001);
}

#[tokio::test]
async fn the_sweep_expires_stores_announces_and_later_forgets() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (a, m) = open(dir.path());
    let r = request(&id(1), "n1");
    let expires = r.expires_ms;
    a.file(r).await.expect("file");
    let mut changes = a.subscribe();
    a.sweep(expires).await;
    let expired = changes.recv().await.expect("expired");
    assert_eq!(expired.state, ApprovalState::Expired);
    assert_eq!((m.pending.get(), event(&m, "expired")), (0, 1));
    let late = a.decide(&id(1), true, "", "alice").await.unwrap_err();
    assert!(late.to_string().contains("expired already"), "{late}");

    a.sweep(expires + KEEP_ENDED_MS).await;
    assert!(a.get(&id(1)).is_some(), "kept for 7 days");
    a.sweep(expires + KEEP_ENDED_MS + 1).await;
    assert!(a.get(&id(1)).is_none());
    drop(a);
    let (a, _) = open(dir.path());
    assert!(a.list(None).is_empty(), "forgotten in the store too");
}
